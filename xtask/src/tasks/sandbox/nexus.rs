//! `sandbox up --nexus`: a proxy in front of the lab registry that behaves like Sonatype Nexus 3
//! where Nexus differs from Distribution (path-based `dev` and `release` repositories, a Bearer
//! token realm, Disable redeploy, HEAD on manifests answering 404, tag pages without `Link`; see
//! the docstring of `docker/lab/nexus-proxy.py`), so that build and release can be tested against
//! those behaviours. It runs as a container on the host network, built from the lab's Python
//! stand-in, and forwards to the registry with the lab's login.
//!
//! The proxy is one per machine like the registry. `up --nexus` (re)starts it only when what it
//! would run changed, removing the image it replaces; `up` without `--nexus` leaves a running one alone unless the registry's
//! login or port changed under it; `env` adds its variables only while it runs.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::{LAB_USER, LabPaths, STATE_LABEL, local_name};
use crate::adapters::docker::{BuildSpec, Docker};
use crate::images::services::PYTHON;
use crate::plan::runner::Runner;
use crate::plan::{FileContents, Plan, Secret, Step};

const CONTAINER: &str = "intric-lab-nexus";
const IMAGE: &str = "intric-lab/nexus-proxy:lab";
/// The proxy container's label holding a digest of what it runs (its Dockerfile, program and
/// arguments), so a repeated `up --nexus` leaves a current proxy running.
const CONFIG_LABEL: &str = "org.intric.lab.nexus-config";
/// The label every proxy image is built with: a rebuild leaves the one before untagged (one
/// more `<none>` image after each, which keeps its layers from the engine's cleanup), and `up`
/// removes the untagged ones by it.
const IMAGE_LABEL: (&str, &str) = ("org.intric.lab.image", "nexus-proxy");
const DOCKERFILE: &str = "docker/lab/nexus-proxy.Dockerfile";
const PROGRAM: &str = "docker/lab/nexus-proxy.py";

/// The proxy `up --nexus` is to run.
pub(super) struct Wanted {
    /// `127.0.0.1:<port>`, where the proxy listens.
    pub address: String,
    /// The digest of what it would run, compared with the running container's label.
    pub fingerprint: String,
    /// A proxy with that fingerprint runs already, with the current login.
    pub current: bool,
}

/// What `up` knows about the proxy, read once.
pub(super) struct NexusInputs {
    /// With `--nexus`.
    pub wanted: Option<Wanted>,
    /// A proxy container exists, from an earlier `up --nexus`.
    pub exists: bool,
    /// That container forwards with a login or to a port the registry no longer has.
    pub stale: bool,
}

impl NexusInputs {
    #[cfg(test)]
    pub fn none() -> NexusInputs {
        NexusInputs { wanted: None, exists: false, stale: false }
    }
}

impl LabPaths {
    /// The proxy's variables (NEXUS_LAB_*), which `env` prints while the proxy runs.
    fn nexus_env(&self) -> std::path::PathBuf {
        self.dir.join("nexus.env")
    }
    /// The lab's login for the proxy, as a `docker run --env-file`: mode 0600.
    fn nexus_login(&self) -> std::path::PathBuf {
        self.dir.join("nexus-proxy.env")
    }
}

/// Reads the proxy's state; `port` is `--nexus-port` (or the registry's port + 1) with `--nexus`,
/// `None` without. `login_changed` tells that the registry gets a new password or port.
pub(super) fn read(
    runner: &dyn Runner,
    docker: &Docker,
    paths: &LabPaths,
    registry: &str,
    port: Option<u16>,
    login_changed: bool,
) -> Result<NexusInputs> {
    let state = docker.container_state(runner, CONTAINER);
    let wanted = match port {
        None => None,
        Some(port) => {
            let address = format!("127.0.0.1:{port}");
            let root = crate::adapters::workspace_root();
            let mut digest = Sha256::new();
            for file in [DOCKERFILE, PROGRAM] {
                let bytes = std::fs::read(root.join(file)).with_context(|| format!("cannot read {file}"))?;
                digest.update(&bytes);
            }
            digest.update(run_args(&address, registry, paths).join("\n"));
            let fingerprint = format!("{:x}", digest.finalize())[..24].to_string();
            let format = format!("{{{{index .Config.Labels \"{CONFIG_LABEL}\"}}}}");
            let label = state.as_ref().and_then(|_| {
                runner.read(&docker.command().args(["container", "inspect", "--format", &format, CONTAINER])).ok()
            });
            let current =
                state.as_deref() == Some("running") && label.as_deref() == Some(&fingerprint) && !login_changed;
            Some(Wanted { address, fingerprint, current })
        }
    };
    Ok(NexusInputs { wanted, exists: state.is_some(), stale: state.is_some() && login_changed })
}

/// The proxy's steps, after the registry answers `docker login`.
pub(super) fn plan(
    plan: &mut Plan,
    docker: &Docker,
    paths: &LabPaths,
    registry: &str,
    password: &Secret,
    inputs: &NexusInputs,
) {
    let Some(wanted) = &inputs.wanted else {
        if inputs.stale {
            // It would keep forwarding with the old login, or to a registry that is gone.
            plan.run(docker.command().args(["rm", "--force", CONTAINER]));
        }
        return;
    };
    if !wanted.current {
        let spec = BuildSpec {
            context: crate::adapters::workspace_root().join("docker/lab"),
            dockerfile: crate::adapters::workspace_root().join(DOCKERFILE),
            tags: vec![IMAGE.into()],
            build_args: vec![(PYTHON.variable.into(), local_name(&PYTHON))],
            labels: vec![(IMAGE_LABEL.0.into(), IMAGE_LABEL.1.into())],
            ..BuildSpec::default()
        };
        plan.run(docker.build(&spec).hint("building the Nexus look-alike failed; see the build output above"));
        let login = format!("NEXUS_PROXY_USERNAME={LAB_USER}\nNEXUS_PROXY_PASSWORD={}\n", password.expose());
        plan.write(paths.nexus_login(), FileContents::Secret(Secret::new("nexus-proxy.env", login)), 0o600);
        if inputs.exists {
            plan.run(docker.command().args(["rm", "--force", CONTAINER]));
        }
        let mut args = run_args(&wanted.address, registry, paths);
        // The label goes before the image name, which ends the `docker run` options.
        let image = args.iter().position(|arg| arg == IMAGE).expect("the image is named");
        args.splice(image..image, ["--label".to_string(), format!("{CONFIG_LABEL}={}", wanted.fingerprint)]);
        plan.run(docker.command().args(args));
        // Once no container runs it, the image this build replaced is untagged and unused.
        let label = format!("label={}={}", IMAGE_LABEL.0, IMAGE_LABEL.1);
        plan.run(docker.command().args(["image", "prune", "--force", "--filter", &label]));
    }
    plan.write(paths.nexus_env(), FileContents::Secret(Secret::new("nexus.env", env_text(&wanted.address))), 0o600);
    // The proxy's own Bearer login flow, as every client goes through it; it also leaves the
    // engine logged in to the proxy for `docker push`.
    plan.steps.push(Step::WaitFor { command: docker.login(&wanted.address, LAB_USER, password.clone()), seconds: 30 });
}

/// `docker run` of the proxy, without the fingerprint label.
fn run_args(address: &str, registry: &str, paths: &LabPaths) -> Vec<String> {
    let mut args: Vec<String> =
        ["run", "--detach", "--name", CONTAINER, "--restart", "unless-stopped", "--network", "host"]
            .map(String::from)
            .into();
    args.extend(["--env-file".to_string(), paths.nexus_login().display().to_string()]);
    args.extend(["--label".to_string(), format!("{STATE_LABEL}={}", paths.dir.display())]);
    args.extend([IMAGE.to_string(), "--listen".into(), address.into(), "--upstream".into(), registry.into()]);
    args
}

fn env_text(address: &str) -> String {
    format!("NEXUS_LAB_REGISTRY={address}/dev\nNEXUS_LAB_RELEASE_REGISTRY={address}/release\n")
}

/// The proxy's variables for `env`, when it runs.
pub(super) fn env_lines(runner: &dyn Runner, paths: &LabPaths) -> Option<String> {
    let text = std::fs::read_to_string(paths.nexus_env()).ok()?;
    let docker = Docker::detect(runner).ok()?;
    (docker.container_state(runner, CONTAINER).as_deref() == Some("running")).then_some(text)
}

/// `down`: the proxy goes with the registry.
pub(super) fn plan_down(runner: &dyn Runner, docker: &Docker, plan: &mut Plan) {
    if docker.container_state(runner, CONTAINER).is_some() {
        plan.run(docker.command().args(["rm", "--force", CONTAINER]));
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::tests::{inputs, paths};
    use super::*;

    pub(in crate::tasks::sandbox) fn wanted(current: bool) -> NexusInputs {
        let wanted = Wanted { address: "127.0.0.1:5001".into(), fingerprint: "f1ngerpr1nt".into(), current };
        NexusInputs { wanted: Some(wanted), exists: current, stale: false }
    }

    #[test]
    fn a_current_proxy_is_left_running_and_a_stale_one_is_removed() {
        let mut inputs = inputs(Vec::new());
        inputs.nexus = wanted(true);
        let shown = super::super::plan_up(&inputs, &paths()).to_string();
        assert!(!shown.contains("nexus-proxy.Dockerfile") && !shown.contains("--name intric-lab-nexus"), "{shown}");
        assert!(shown.contains("login --username lab --password-stdin 127.0.0.1:5001"), "{shown}");

        let mut changed = wanted(false);
        changed.exists = true;
        inputs.nexus = changed;
        let shown = super::super::plan_up(&inputs, &paths()).to_string();
        let removed = shown.find("rm --force intric-lab-nexus").expect("the old proxy goes");
        assert!(removed < shown.find("--name intric-lab-nexus").unwrap(), "{shown}");
        // The image built before this one, untagged now, goes too; only untagged ones go.
        let built = shown.find("--label org.intric.lab.image=nexus-proxy").expect("the image is labelled");
        let pruned = shown.find("image prune --force --filter label=org.intric.lab.image=nexus-proxy").unwrap();
        let started = shown.find("--name intric-lab-nexus").unwrap();
        assert!(built < started && started < pruned && !shown.contains("prune --all"), "{shown}");

        inputs.nexus = NexusInputs { wanted: None, exists: true, stale: true };
        let shown = super::super::plan_up(&inputs, &paths()).to_string();
        assert!(shown.contains("rm --force intric-lab-nexus") && !shown.contains("--name intric-lab-nexus"), "{shown}");
    }

    #[test]
    fn env_names_both_repositories() {
        assert_eq!(
            env_text("127.0.0.1:5001"),
            "NEXUS_LAB_REGISTRY=127.0.0.1:5001/dev\nNEXUS_LAB_RELEASE_REGISTRY=127.0.0.1:5001/release\n"
        );
    }
}
