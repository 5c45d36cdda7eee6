//! Base images by digest: each image a Dockerfile's `FROM` lines pull (after build-arg
//! substitution) resolved to the digest it names now, so that the digest goes into the inputs
//! digest and an updated base rebuilds while an unchanged one still skips.
//!
//! Each reference is asked of its registry: one HEAD (GET where HEAD is refused) through the
//! registry adapter, with the credentials of the environment or the docker login; a Docker Hub
//! reference (`python:3.10-slim`) of `registry-1.docker.io` (anonymously: HEAD requests do not
//! count against its pull limits), except in a dry run, which stays offline and quick. One the
//! registry does not answer for comes from the local engine (`docker image inspect`: its id,
//! the digest of its config; `docker` gives the client only when asked, so that a build that
//! needs no docker detects none), which is what a build without `--pull` starts from. What neither
//! knows is unknown: a build then never reuses an image.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::adapters::docker::Docker;
use crate::adapters::registry::{Backoff, Credentials, Registry, RegistryAddress, at_once};
use crate::plan::runner::Runner;

/// An image reference split into where it lives and what it names.
#[derive(Debug, PartialEq, Eq)]
struct Reference<'a> {
    /// `host[:port]` when the first path component names one (it has a `.` or `:`, or is
    /// `localhost`), as docker decides; `None` for Docker Hub.
    host: Option<&'a str>,
    repository: &'a str,
    /// The tag or `sha256:` digest (`latest` when none is written).
    reference: &'a str,
}

fn split(image: &str) -> Reference<'_> {
    let (host, rest) = match image.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (Some(first), rest),
        _ => (None, image),
    };
    let (repository, reference) = match rest.split_once('@') {
        Some((repository, digest)) => (repository, digest),
        None => match rest.rfind(':') {
            Some(colon) if !rest[colon..].contains('/') => (&rest[..colon], &rest[colon + 1..]),
            _ => (rest, "latest"),
        },
    };
    Reference { host, repository, reference }
}

/// Where Docker Hub's registry API is, and how long a build waits for it: a machine without
/// Docker Hub (this lab, an air-gapped runner) should lose seconds, not minutes.
const DOCKER_HUB: &str = "registry-1.docker.io";
const DOCKER_HUB_PATIENCE: Duration = Duration::from_secs(5);

/// Resolves every reference of `images` once; `None` where the digest is unknown. A dry run
/// waits at most `patience` for each registry request. A base on the registry `known` talks to
/// (with the same login) is asked through it, sharing its learned login challenge.
pub fn resolve<'a, 'd>(
    runner: &dyn Runner,
    docker: &(dyn Fn() -> Option<&'d Docker> + Sync),
    known: Option<&Registry>,
    images: impl IntoIterator<Item = &'a String>,
    patience: Option<Duration>,
) -> BTreeMap<String, Option<String>> {
    // Each base is a round trip to its registry (two with the first login challenge), so all
    // are asked at once.
    let unique: Vec<&String> = images.into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    // No call fails (an unknown digest is `None`), so only a panic could come back: pass it on.
    let digests = at_once(&unique, |image| Ok(resolve_one(runner, docker, known, image, patience)))
        .expect("resolving a base image's digest panicked");
    unique.into_iter().cloned().zip(digests).collect()
}

fn resolve_one<'d>(
    runner: &dyn Runner,
    docker: &(dyn Fn() -> Option<&'d Docker> + Sync),
    known: Option<&Registry>,
    image: &str,
    patience: Option<Duration>,
) -> Option<String> {
    let Reference { host, repository, reference } = split(image);
    if reference.starts_with("sha256:") {
        return Some(reference.to_string());
    }
    // Where to ask: the reference's own registry; Docker Hub's for the rest, but not in a dry run.
    let official;
    let asked = match host {
        Some(host) => Some((host, repository, patience)),
        None if patience.is_some() => None,
        None => {
            // Official images live under `library/` in the API.
            official = if repository.contains('/') { repository.to_string() } else { format!("library/{repository}") };
            Some((DOCKER_HUB, official.as_str(), Some(DOCKER_HUB_PATIENCE)))
        }
    };
    let from_registry = asked.and_then(|(host, repository, patience)| {
        let address = RegistryAddress::parse(host).ok()?;
        let credentials = credentials_for(&address, runner);
        let registry = match (patience, known.and_then(|known| known.sibling(&address, &credentials))) {
            (Some(timeout), _) => Registry::impatient(address, credentials, timeout),
            (None, Some(shared)) => shared,
            (None, None) => Registry::new(address, credentials, Backoff::STANDARD),
        };
        registry.manifest_digest(repository, reference).ok().flatten()
    });
    from_registry.or_else(|| {
        runner
            .read(&docker()?.command().args(["image", "inspect", "--format", "{{.Id}}", image]))
            .ok()
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty())
    })
}

/// The login to ask `address` with: NEXUS_USERNAME and NEXUS_PASSWORD only for the registry
/// NEXUS_REGISTRY names (they must not go to Docker Hub or any other host), else the docker
/// client's own login for the host, else none.
fn credentials_for(address: &RegistryAddress, runner: &dyn Runner) -> Option<Credentials> {
    let env = crate::adapters::ci_env::process_env();
    let nexus = env.get("NEXUS_REGISTRY").and_then(|setting| RegistryAddress::parse(setting).ok());
    let found = match nexus {
        Some(nexus) if nexus.host == address.host => Credentials::find(address, runner),
        _ => Credentials::from_docker_config(address, runner),
    };
    found.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::docker::Builder;
    use crate::plan::runner::Recording;

    #[test]
    fn references_split_as_docker_reads_them() {
        let split3 = |image| {
            let Reference { host, repository, reference } = split(image);
            (host, repository, reference)
        };
        assert_eq!(split3("127.0.0.1:5000/lab/python:lab"), (Some("127.0.0.1:5000"), "lab/python", "lab"));
        assert_eq!(split3("python:3.10-slim"), (None, "python", "3.10-slim"));
        assert_eq!(split3("pgvector/pgvector"), (None, "pgvector/pgvector", "latest"));
        assert_eq!(split3("localhost/x@sha256:ab"), (Some("localhost"), "x", "sha256:ab"));
        assert_eq!(split3("nexus:8083/library/node"), (Some("nexus:8083"), "library/node", "latest"));
    }

    #[test]
    fn in_a_dry_run_docker_hub_images_come_from_the_local_engine_or_stay_unknown() {
        let docker = Docker { program: "docker".into(), builder: Builder::Legacy, engine_version: "20.10.24".into() };
        let runner = Recording::replying(|shown| {
            if shown.contains("python:3.10") { Ok("sha256:local\n".into()) } else { Err("No such image".into()) }
        });
        let images = ["python:3.10".to_string(), "node:22".to_string(), "x@sha256:pinned".to_string()];
        // As a dry run: Docker Hub is not asked.
        let digests = resolve(&runner, &|| Some(&docker), None, &images, Some(Duration::from_secs(1)));
        assert_eq!(digests["python:3.10"].as_deref(), Some("sha256:local"));
        assert_eq!(digests["node:22"], None);
        assert_eq!(digests["x@sha256:pinned"].as_deref(), Some("sha256:pinned"), "a pinned digest needs no asking");
        assert_eq!(runner.executed().len(), 2, "{:?}", runner.executed());
    }
}
