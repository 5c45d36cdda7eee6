//! The project's images. The ones we build come from the compose file, the single source of
//! truth the way `docker compose build` and `docker buildx bake` read it: each service with a
//! `build:` section is an image (context, Dockerfile, target, build args), named by its
//! `image:`; services without one run an image another service builds (the published worker
//! runs the backend image with its own `command:`). [`ComposeImages::read`] asks compose
//! itself (`docker compose config`, through the runner) and parses each Dockerfile once.
//!
//! Also the upstream base images the lab provides stand-ins for (`sandbox`), and the variables
//! that replace them in build args and compose.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde_json::Value;

use crate::adapters::ci_env::Env;
use crate::adapters::compose;
use crate::images::dockerfile::{Dockerfile, substitute};
use crate::plan::runner::Runner;

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

/// Our repository's three images by name: the fixed list `bench` and build's base images for
/// `bench` still use (`build`, `check`, `release` and the operator tasks read the compose file
/// instead).
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
}

/// Where the compose file is, when no `--compose FILE` says: our layout keeps it in `docker/`,
/// the published monorepo at the root (under one of the names compose itself looks for).
pub const COMPOSE_FILES: [&str; 5] =
    ["docker/docker-compose.yml", "compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml"];

/// The compose file of the repository at `repo`: `explicit` (relative to `repo`) when given,
/// else the first of [`COMPOSE_FILES`] that exists; one line naming what was looked for else.
pub fn compose_file(repo: &Path, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(explicit) = explicit {
        let file = repo.join(explicit);
        if !file.is_file() {
            bail!("--compose {}: no such file (in {})", explicit.display(), repo.display());
        }
        return Ok(file);
    }
    COMPOSE_FILES.iter().map(|name| repo.join(name)).find(|file| file.is_file()).with_context(|| {
        format!("{} has no compose file ({}): pass --compose FILE", repo.display(), COMPOSE_FILES.join(", "))
    })
}

/// One image we build: a compose service with a `build:` section.
#[derive(Clone, Debug)]
pub struct Image {
    /// The compose service that builds it (`backend`): what `build backend` selects, and what
    /// logs and summaries call it.
    pub name: String,
    /// The repository below the registry (`intric/backend`), from the service's `image:`.
    pub repository: String,
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    /// The Dockerfile parsed, for the plan's checks and the base images.
    pub parsed: Dockerfile,
    /// `build.target`; `None` builds the last stage (and the build passes no `--target`).
    pub target: Option<String>,
    /// `build.args`, their values substituted from the environment as compose would.
    pub args: Vec<(String, String)>,
    /// The image whose build should finish first: this one's target builds on that one's
    /// stage of the same Dockerfile (our worker on the backend), so built after it, every
    /// shared stage comes from BuildKit's cache instead of being built twice side by side.
    pub built_after: Option<String>,
}

impl Image {
    /// The build args passed but never declared by the Dockerfile, as warnings.
    pub fn ignored_args(&self) -> Vec<String> {
        self.args
            .iter()
            .filter(|(name, _)| !self.parsed.declares(name))
            .map(|(name, _)| format!("{name} is ignored by {}: it has no ARG {name}", self.parsed.shown))
            .collect()
    }
}

/// What the compose file says about the images we build: each once, in build order.
#[derive(Clone, Debug)]
pub struct ComposeImages {
    pub file: PathBuf,
    pub built: Vec<Image>,
}

impl ComposeImages {
    /// Asks compose for its reading of `file` and parses each Dockerfile it names.
    pub fn read(runner: &dyn Runner, file: &Path, env: &Env, repo: &Path) -> Result<ComposeImages> {
        let plugin = compose::compose_plugin(env);
        let config = runner.read(&compose::source_config(plugin.as_deref(), file))?;
        let read_dockerfile = |path: &Path| {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let shown = path.strip_prefix(repo).unwrap_or(path).display().to_string();
            Dockerfile::parse(&shown, &text)
        };
        ComposeImages::from_config(file, &config, env, &read_dockerfile)
    }

    /// The images of `config` (compose's JSON), with `env` for the variables in build args and
    /// `read_dockerfile` for each Dockerfile. Every problem is collected into one error.
    pub fn from_config(
        file: &Path,
        config: &str,
        env: &Env,
        read_dockerfile: &dyn Fn(&Path) -> Result<Dockerfile>,
    ) -> Result<ComposeImages> {
        let shown = file.display();
        let config: Value =
            serde_json::from_str(config).with_context(|| format!("compose printed no JSON for {shown}"))?;
        let services = config["services"].as_object().with_context(|| format!("{shown} has no services"))?;
        let lookup = |name: &str| env.get(name).cloned();
        let mut problems = Vec::new();
        let mut built: Vec<Image> = Vec::new();
        for (name, service) in services {
            let repository = service["image"].as_str().and_then(our_repository);
            let build = &service["build"];
            if build.is_null() {
                continue;
            }
            let Some(repository) = repository else {
                problems.push(format!(
                    "service {name} of {shown} has a build: section but no image: ${{NEXUS_REGISTRY}}/<repository>:${{IMAGE_TAG}}"
                ));
                continue;
            };
            // Two services building the same image (a worker repeating the backend's build:)
            // are one image.
            if built.iter().any(|image| image.repository == repository) {
                continue;
            }
            let context = PathBuf::from(build["context"].as_str().unwrap_or("."));
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            let target = build["target"].as_str().map(str::to_string);
            let args = build_args(&build["args"], &lookup);
            let parsed = match read_dockerfile(&dockerfile) {
                Ok(parsed) => parsed,
                Err(error) => {
                    problems.push(format!("image {name}: {error:#}"));
                    continue;
                }
            };
            if let Err(error) = parsed.stage(target.as_deref()) {
                problems.push(format!("image {name}: {error:#}"));
                continue;
            }
            built.push(Image {
                name: name.clone(),
                repository,
                context,
                dockerfile,
                parsed,
                target,
                args,
                built_after: None,
            });
        }
        if built.is_empty() && problems.is_empty() {
            problems.push(format!(
                "{shown} has no service with a build: section, so there is no image to build: add \
                 `build: {{ context: backend }}` (and `target:` where a Dockerfile has several) to the services \
                 whose images we build"
            ));
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        Ok(ComposeImages { file: file.to_path_buf(), built: in_build_order(built) })
    }

    /// The images `names` selects, in build order; all of them when `names` is empty. An
    /// unknown name is one line listing the images there are.
    pub fn select(&self, names: &[String]) -> Result<Vec<Image>> {
        let unknown: Vec<&String> =
            names.iter().filter(|name| !self.built.iter().any(|image| &image.name == *name)).collect();
        if !unknown.is_empty() {
            let known: Vec<&str> = self.built.iter().map(|image| image.name.as_str()).collect();
            bail!(
                "no image {} in {}: the images built there are {}",
                unknown.iter().map(|name| name.as_str()).collect::<Vec<_>>().join(", "),
                self.file.display(),
                known.join(", ")
            );
        }
        Ok(self.built.iter().filter(|image| names.is_empty() || names.contains(&image.name)).cloned().collect())
    }
}

/// The repository of an image reference of ours, `${NEXUS_REGISTRY}/intric/backend:${IMAGE_TAG}`
/// → `intric/backend`; `None` for images from elsewhere (the database's, Redis's).
fn our_repository(image: &str) -> Option<String> {
    let rest = ["${NEXUS_REGISTRY}", "$NEXUS_REGISTRY"].iter().find_map(|prefix| image.strip_prefix(prefix)).or_else(
        || image.strip_prefix("${NEXUS_REGISTRY:").and_then(|rest| rest.split_once('}').map(|(_, rest)| rest)),
    )?;
    // With the registry gone, the first `:` or `@` starts the tag or digest: a repository path
    // has neither (and a tag's own variables may hold anything).
    let path = rest.strip_prefix('/')?.split([':', '@']).next().unwrap_or_default();
    (!path.is_empty()).then(|| path.to_string())
}

/// `build.args`, as compose prints it without interpolation (`["KEY=value"]` or a map), each
/// value's variables substituted from the environment.
fn build_args(args: &Value, lookup: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let pairs: Vec<(String, String)> = match args {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|item| item.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
        Value::Object(map) => {
            map.iter().filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_string()))).collect()
        }
        _ => Vec::new(),
    };
    pairs.into_iter().map(|(key, value)| (key, substitute(&value, lookup))).collect()
}

/// `images` (sorted by name, as compose prints them) with each image that builds on another
/// placed right after it.
fn in_build_order(mut images: Vec<Image>) -> Vec<Image> {
    let snapshot = images.clone();
    for image in &mut images {
        image.built_after = snapshot
            .iter()
            .find(|other| {
                other.name != image.name
                    && other.dockerfile == image.dockerfile
                    && image.parsed.builds_on(image.target.as_deref(), other.target.as_deref())
            })
            .map(|other| other.name.clone());
    }
    let (first, later): (Vec<Image>, Vec<Image>) = images.into_iter().partition(|image| image.built_after.is_none());
    let mut ordered = Vec::new();
    for image in first {
        let name = image.name.clone();
        ordered.push(image);
        ordered.extend(later.iter().filter(|other| other.built_after.as_deref() == Some(name.as_str())).cloned());
    }
    ordered
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Our layout: the worker's stage builds on the backend's, the frontend has its own file.
    const OURS: &str = r#"{"services": {
        "backend": {"image": "${NEXUS_REGISTRY:?not set}/intric/backend:${IMAGE_TAG:?not set}",
            "build": {"context": "/ws/backend", "dockerfile": "Dockerfile", "target": "backend",
                      "args": ["PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.10-slim-bullseye}"]}},
        "db": {"image": "${POSTGRES_IMAGE:-pgvector/pgvector:pg16}"},
        "db-init": {"image": "${NEXUS_REGISTRY:?not set}/intric/backend:${IMAGE_TAG:?not set}"},
        "frontend": {"image": "${NEXUS_REGISTRY}/intric/frontend:${IMAGE_TAG}",
            "build": {"context": "/ws/frontend", "dockerfile": "Dockerfile", "target": "frontend"}},
        "worker": {"image": "${NEXUS_REGISTRY:?not set}/intric/worker:${IMAGE_TAG:?not set}",
            "build": {"context": "/ws/backend", "dockerfile": "Dockerfile", "target": "worker",
                      "args": {"PYTHON_IMAGE": "${PYTHON_IMAGE:-python:3.10-slim-bullseye}"}}}
    }}"#;

    fn dockerfiles(path: &Path) -> Result<Dockerfile> {
        let text = match path.to_str().unwrap() {
            "/ws/backend/Dockerfile" => {
                "ARG PYTHON_IMAGE=python:3.10-slim-bullseye\nFROM ${PYTHON_IMAGE} AS base\nFROM base AS backend\n\
                 FROM backend AS worker\nFROM base AS test\n"
            }
            "/ws/frontend/Dockerfile" => {
                "FROM node AS build\nFROM build AS test\nFROM nginx AS frontend\nCOPY --from=build /a /b\n"
            }
            other => bail!("cannot read {other}"),
        };
        Dockerfile::parse(path.to_str().unwrap(), text)
    }

    /// Our three images as compose describes them, in a workspace at `/ws`.
    pub(crate) fn ours(env: &Env) -> ComposeImages {
        ComposeImages::from_config(Path::new("/ws/docker/docker-compose.yml"), OURS, env, &dockerfiles).unwrap()
    }

    #[test]
    fn our_images_in_our_order_with_the_worker_after_the_backend() {
        let images = ours(&Env::new());
        let names: Vec<&str> = images.built.iter().map(|image| image.name.as_str()).collect();
        assert_eq!(names, ["backend", "worker", "frontend"]);
        let worker = &images.built[1];
        assert_eq!(worker.repository, "intric/worker");
        assert_eq!(worker.built_after.as_deref(), Some("backend"));
        assert_eq!(worker.target.as_deref(), Some("worker"));
        assert_eq!(worker.args, [("PYTHON_IMAGE".to_string(), "python:3.10-slim-bullseye".to_string())]);
        assert_eq!(images.built[2].built_after, None);
        let lab = ours(&Env::from([("PYTHON_IMAGE".to_string(), "lab/python:lab".to_string())]));
        assert_eq!(lab.built[0].args[0].1, "lab/python:lab", "the environment fills in the variables");
    }

    #[test]
    fn the_published_layout_builds_two_images_for_three_services() {
        let config = r#"{"services": {
            "backend": {"image": "${NEXUS_REGISTRY}/intric/backend:${IMAGE_TAG:-latest}",
                "build": {"context": "/ws/backend", "dockerfile": "Dockerfile"}},
            "worker": {"image": "${NEXUS_REGISTRY}/intric/backend:${IMAGE_TAG:-latest}", "command": ["arq", "x"]},
            "frontend": {"image": "${NEXUS_REGISTRY}/intric/frontend:${IMAGE_TAG:-latest}",
                "build": {"context": "/ws/frontend", "dockerfile": "Dockerfile"}}
        }}"#;
        let images =
            ComposeImages::from_config(Path::new("/ws/docker-compose.yml"), config, &Env::new(), &dockerfiles).unwrap();
        let names: Vec<(&str, Option<&str>)> =
            images.built.iter().map(|image| (image.name.as_str(), image.target.as_deref())).collect();
        assert_eq!(names, [("backend", None), ("frontend", None)], "no target: the last stage; no worker image");
        let error = images.select(&["worker".to_string()]).unwrap_err().to_string();
        assert_eq!(error, "no image worker in /ws/docker-compose.yml: the images built there are backend, frontend");
    }

    #[test]
    fn problems_with_the_images_are_reported_together() {
        let config = r#"{"services": {
            "backend": {"image": "${NEXUS_REGISTRY}/intric/backend:1",
                "build": {"context": "/ws/backend", "dockerfile": "Dockerfile", "target": "nope"}},
            "other": {"image": "x", "build": {"context": "/ws/other"}}
        }}"#;
        let error =
            ComposeImages::from_config(Path::new("c.yml"), config, &Env::new(), &dockerfiles).unwrap_err().to_string();
        assert!(
            error.contains(
                "image backend: /ws/backend/Dockerfile has no stage \"nope\"; its stages: base, backend, worker, test"
            ),
            "{error}"
        );
        assert!(error.contains("service other of c.yml has a build: section but no image:"), "{error}");
        assert_eq!(error.lines().count(), 1);
    }

    #[test]
    fn a_build_arg_the_dockerfile_does_not_declare_is_a_warning() {
        let images = ours(&Env::new());
        assert!(images.built[0].ignored_args().is_empty());
        let mut frontend = images.built[2].clone();
        frontend.args.push(("PYTHON_IMAGE".into(), "p".into()));
        assert_eq!(
            frontend.ignored_args(),
            ["PYTHON_IMAGE is ignored by /ws/frontend/Dockerfile: it has no ARG PYTHON_IMAGE"]
        );
    }

    #[test]
    fn our_repositories_are_those_below_the_registry_variable() {
        assert_eq!(
            our_repository("${NEXUS_REGISTRY:?x}/intric/backend:${IMAGE_TAG:?y}").as_deref(),
            Some("intric/backend")
        );
        assert_eq!(our_repository("$NEXUS_REGISTRY/intric/frontend").as_deref(), Some("intric/frontend"));
        assert_eq!(our_repository("${NEXUS_REGISTRY}/a/b@sha256:1").as_deref(), Some("a/b"));
        assert_eq!(our_repository("pgvector/pgvector:pg16"), None);
    }
}
