//! The project's images: the three we build (backend, worker, frontend) and the upstream base
//! images they start from and run beside. One table, read by `build` (which build args a
//! Dockerfile takes), `sandbox` (which stand-ins to provide) and the repository rules.

use clap::ValueEnum;

/// An upstream image, and the variable that replaces it in Dockerfiles (a build arg) and in
/// compose (an environment variable).
#[derive(Debug, PartialEq, Eq)]
pub struct BaseImage {
    /// A short name: the lab calls its stand-in `intric-lab/<name>`.
    pub name: &'static str,
    pub variable: &'static str,
    pub upstream: &'static str,
}

pub const PYTHON: BaseImage =
    BaseImage { name: "python", variable: "PYTHON_IMAGE", upstream: "python:3.10-slim-bullseye" };
pub const NODE: BaseImage = BaseImage { name: "node", variable: "NODE_IMAGE", upstream: "node:22-slim" };
pub const NGINX: BaseImage = BaseImage { name: "nginx", variable: "NGINX_IMAGE", upstream: "nginx:stable-alpine-perl" };
pub const POSTGRES: BaseImage =
    BaseImage { name: "postgres", variable: "POSTGRES_IMAGE", upstream: "pgvector/pgvector:pg16" };
pub const REDIS: BaseImage = BaseImage { name: "redis", variable: "REDIS_IMAGE", upstream: "redis:7-alpine" };

/// Every base image: what the Dockerfiles build on and what compose runs beside our images.
pub const BASE_IMAGES: [&BaseImage; 5] = [&PYTHON, &NODE, &NGINX, &POSTGRES, &REDIS];

/// The images we build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Service {
    Backend,
    Worker,
    Frontend,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Backend, Service::Worker, Service::Frontend];

    pub fn name(self) -> &'static str {
        match self {
            Service::Backend => "backend",
            Service::Worker => "worker",
            Service::Frontend => "frontend",
        }
    }

    /// The repository below the registry: `intric/<service>`.
    pub fn repository(self) -> String {
        format!("intric/{}", self.name())
    }

    /// The build context, relative to the workspace root; its `Dockerfile` builds the image.
    pub fn context_dir(self) -> &'static str {
        match self {
            Service::Backend | Service::Worker => "backend",
            Service::Frontend => "frontend",
        }
    }

    /// The Dockerfile stage that is this image.
    pub fn target(self) -> &'static str {
        self.name()
    }

    /// The base images the Dockerfile takes as build args.
    pub fn base_images(self) -> &'static [&'static BaseImage] {
        match self {
            Service::Backend | Service::Worker => &[&PYTHON],
            Service::Frontend => &[&NODE, &NGINX],
        }
    }

    /// The image whose build must finish first. The worker's stage builds on the backend's in
    /// the same Dockerfile: built after it, every shared stage comes from BuildKit's cache
    /// instead of being built twice side by side.
    pub fn built_after(self) -> Option<Service> {
        match self {
            Service::Worker => Some(Service::Backend),
            Service::Backend | Service::Frontend => None,
        }
    }
}
