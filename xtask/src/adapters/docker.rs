//! The Docker adapter: finds a working client and engine, and builds the argv of every docker
//! command the xtask runs (build, push, tag, login, run). It runs only the read-only queries
//! itself (`version`, `buildx version`, `buildx inspect`, `image inspect`, `container
//! inspect`); everything that changes state is
//! returned as a [`Command`] for a plan.
//!
//! Builds always use BuildKit: `docker buildx build` where the buildx plugin is installed,
//! otherwise a client older than 23 with `DOCKER_BUILDKIT=1` (Debian 12's `/usr/bin/docker` is
//! one). A newer client without buildx cannot build at all, so both are probed once at start.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::plan::runner::Runner;
use crate::plan::{Command, Secret};

/// How images are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builder {
    /// `docker buildx build`.
    Buildx,
    /// `DOCKER_BUILDKIT=1 docker build` on a client that still has the classic `build` command.
    Legacy,
}

impl fmt::Display for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Builder::Buildx => "buildx",
            Builder::Legacy => "legacy client with DOCKER_BUILDKIT=1",
        })
    }
}

/// A docker client that can talk to the engine and build with BuildKit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Docker {
    /// The client binary, as run: `docker` or an absolute path.
    pub program: String,
    pub builder: Builder,
    pub engine_version: String,
}

/// The docker client's plugin `name` (`docker-<name>`) where the client looks for plugins on
/// Linux: the user's directory (`$DOCKER_CONFIG/cli-plugins`, else `~/.docker/cli-plugins`),
/// then the system's.
pub fn cli_plugin(env: &crate::adapters::ci_env::Env, name: &str) -> Option<PathBuf> {
    let user = match (env.get("DOCKER_CONFIG"), env.get("HOME")) {
        (Some(config), _) if !config.is_empty() => Some(PathBuf::from(config)),
        (_, Some(home)) if !home.is_empty() => Some(Path::new(home).join(".docker")),
        _ => None,
    };
    let system = ["/usr/local/lib/docker", "/usr/local/libexec/docker", "/usr/lib/docker", "/usr/libexec/docker"];
    user.into_iter()
        .chain(system.into_iter().map(PathBuf::from))
        .map(|dir| dir.join(format!("cli-plugins/docker-{name}")))
        .find(|plugin| plugin.is_file())
}

/// The first major client version whose `docker build` needs the buildx plugin.
const FIRST_CLIENT_WITHOUT_CLASSIC_BUILD: u64 = 23;

/// Where Debian's docker.io package puts its client, which still builds with `DOCKER_BUILDKIT=1`.
const DEBIAN_CLIENT: &str = "/usr/bin/docker";

impl Docker {
    /// Checks that an engine answers and picks the client and builder to use. Whether buildx
    /// is there is read from the plugin directories (a file, not a process: every build pays
    /// for these probes, a no-op one most visibly); the clients' versions are asked at once.
    /// Only where no plugin file is found and no client builds the classic way is
    /// `docker buildx version` asked, for a buildx installed somewhere else.
    pub fn detect(runner: &dyn Runner) -> Result<Docker> {
        let plugin = cli_plugin(&crate::adapters::ci_env::process_env(), "buildx").is_some();
        let mut candidates = vec!["docker".to_string()];
        if !plugin && Path::new(DEBIAN_CLIENT).exists() {
            candidates.push(DEBIAN_CLIENT.to_string());
        }
        // Each candidate's client version; the first candidate's probe also asks the engine's.
        let versions: Vec<Option<String>> = std::thread::scope(|scope| {
            let asked: Vec<_> = candidates
                .iter()
                .enumerate()
                .map(|(index, program)| {
                    scope.spawn(move || {
                        let format =
                            if index == 0 { "{{.Client.Version}} {{.Server.Version}}" } else { "{{.Client.Version}}" };
                        runner.read(&Command::new(program).args(["version", "--format", format])).ok()
                    })
                })
                .collect();
            asked.into_iter().map(|version| version.join().ok().flatten()).collect()
        });
        let engine_version =
            versions[0].as_deref().and_then(|versions| versions.split_once(' ')).map(|(_, server)| server);
        let engine_version = match engine_version {
            Some(version) if !version.is_empty() => version.to_string(),
            _ => bail!(
                "no Docker engine answers (`docker version` failed): start one (`dockerd &`), \
                 or install it first (`bash ci/provision.sh` does both on Debian), or set DOCKER_HOST"
            ),
        };
        if plugin {
            return Ok(Docker { program: candidates[0].clone(), builder: Builder::Buildx, engine_version });
        }
        let classic = versions.iter().position(|version| {
            let client = version.as_deref().map(|versions| versions.split(' ').next().unwrap_or_default());
            client.and_then(major_version).is_some_and(|major| major < FIRST_CLIENT_WITHOUT_CLASSIC_BUILD)
        });
        if let Some(index) = classic {
            return Ok(Docker { program: candidates[index].clone(), builder: Builder::Legacy, engine_version });
        }
        if runner.read(&Command::new(&candidates[0]).args(["buildx", "version"])).is_ok() {
            return Ok(Docker { program: candidates[0].clone(), builder: Builder::Buildx, engine_version });
        }
        bail!(
            "no docker client here can run BuildKit builds: install the buildx plugin \
             (docker-buildx into ~/.docker/cli-plugins/), or a docker client older than 23 \
             (Debian 12's docker.io package provides {DEBIAN_CLIENT})"
        )
    }

    /// A docker command with this client.
    pub fn command(&self) -> Command {
        Command::new(&self.program)
    }

    /// The build command for `spec`, for this client's builder.
    pub fn build(&self, spec: &BuildSpec) -> Command {
        let mut command = match self.builder {
            Builder::Buildx => {
                let mut command = self.command().args(["buildx", "build"]);
                if let Some(builder) = &spec.builder {
                    command = command.args(["--builder", builder]);
                }
                // Without an output flag a container builder would keep the result in its
                // cache only; `--load` puts it into the engine's image store like the legacy path.
                command.arg(if spec.push { "--push" } else { "--load" }).args(["--provenance=false", "--sbom=false"])
            }
            Builder::Legacy => self.command().env("DOCKER_BUILDKIT", "1").arg("build"),
        };
        command = command.args(["--progress", "plain", "--file"]).arg(spec.dockerfile.display().to_string());
        if let Some(target) = &spec.target {
            command = command.args(["--target", target]);
        }
        for tag in &spec.tags {
            command = command.args(["--tag", tag]);
        }
        for (key, value) in &spec.build_args {
            command = command.args(["--build-arg".to_string(), format!("{key}={value}")]);
        }
        for (key, value) in &spec.labels {
            command = command.args(["--label".to_string(), format!("{key}={value}")]);
        }
        for image in &spec.cache_from {
            command = command.args(["--cache-from", image]);
        }
        for cache in &spec.cache_to {
            command = command.args(["--cache-to", cache]);
        }
        for secret in &spec.secrets {
            // BuildKit reads the value from the named environment variable of the client, so
            // the value is neither in argv nor in any layer.
            command = command.args(["--secret".to_string(), format!("id={},env={}", secret.id, secret.env)]);
        }
        if let Some(iidfile) = &spec.iidfile {
            command = command.arg("--iidfile").arg(iidfile.display().to_string());
        }
        if spec.no_cache {
            command = command.arg("--no-cache");
        }
        if spec.pull {
            command = command.arg("--pull");
        }
        command.arg(spec.context.display().to_string())
    }

    /// `docker login` with the password on standard input.
    pub fn login(&self, registry: &str, username: &str, password: Secret) -> Command {
        self.command()
            .args(["login", "--username", username, "--password-stdin", registry])
            .stdin(password)
            .hint(format!("login to {registry} as {username} failed: check the user name and password"))
    }

    /// Whether buildx builds with a builder that runs in its own container (the
    /// `docker-container`, `kubernetes` or `remote` drivers): such a builder has its own cache,
    /// which can be exported to the registry, unlike the engine's built-in `docker` driver.
    pub fn buildx_has_container_builder(&self, runner: &dyn Runner, builder: Option<&str>) -> bool {
        if self.builder != Builder::Buildx {
            return false;
        }
        let builder_args: Vec<&str> = builder.map(|name| vec!["--builder", name]).unwrap_or_default();
        let inspect = runner.read(&self.command().args(["buildx", "inspect"]).args(builder_args));
        inspect.is_ok_and(|text| {
            text.lines().any(|line| {
                line.strip_prefix("Driver:")
                    .is_some_and(|driver| matches!(driver.trim(), "docker-container" | "kubernetes" | "remote"))
            })
        })
    }

    /// Whether the engine has `image` (a name with tag, or an id).
    pub fn image_exists(&self, runner: &dyn Runner, image: &str) -> bool {
        runner.read(&self.command().args(["image", "inspect", "--format", "{{.Id}}", image])).is_ok()
    }

    /// The state of container `name` (`running`, `exited`, ...), or `None` if there is none.
    pub fn container_state(&self, runner: &dyn Runner, name: &str) -> Option<String> {
        runner.read(&self.command().args(["container", "inspect", "--format", "{{.State.Status}}", name])).ok()
    }
}

/// A BuildKit secret: the build sees the value of environment variable `env` as secret `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildSecret {
    pub id: String,
    pub env: String,
}

/// Everything that decides one `docker build`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildSpec {
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    pub target: Option<String>,
    pub tags: Vec<String>,
    pub build_args: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    pub cache_from: Vec<String>,
    /// buildx only: cache exports (`type=registry,ref=...`).
    pub cache_to: Vec<String>,
    pub secrets: Vec<BuildSecret>,
    /// buildx only: the builder instance to use.
    pub builder: Option<String>,
    /// buildx only: push straight from the builder instead of loading into the engine.
    pub push: bool,
    pub iidfile: Option<PathBuf>,
    pub no_cache: bool,
    pub pull: bool,
}

/// `docker login` with the password on standard input, for a client that need not build
/// (the operator tasks run `docker` from PATH, which may lack buildx).
pub fn login_with(program: &str, registry: &str, username: &str, password: Secret) -> Command {
    Command::new(program)
        .args(["login", "--username", username, "--password-stdin", registry])
        .stdin(password)
        .hint(format!("login to {registry} as {username} failed: check NEXUS_USERNAME and NEXUS_PASSWORD"))
}

/// The engine's version (`docker version`), e.g. `20.10.24+dfsg1`.
pub fn engine_version_command(program: &str) -> Command {
    Command::new(program).args(["version", "--format", "{{.Server.Version}}"])
}

/// The compose plugin's version, e.g. `2.40.3` or `v2.40.3`.
pub fn compose_version_command(program: &str) -> Command {
    Command::new(program).args(["compose", "version", "--short"])
}

/// The engine host's total memory in bytes and the engine's root directory, one per line.
pub fn engine_info_command(program: &str) -> Command {
    Command::new(program).args(["info", "--format", "{{.MemTotal}}\n{{.DockerRootDir}}"])
}

/// `docker container inspect` of `ids`, as a JSON array.
pub fn container_inspect_command<S: AsRef<str>>(program: &str, ids: &[S]) -> Command {
    Command::new(program).args(["container", "inspect"]).args(ids.iter().map(|id| id.as_ref().to_string()))
}

/// `docker image inspect` of `ids`, as a JSON array.
pub fn image_inspect_command<S: AsRef<str>>(program: &str, ids: &[S]) -> Command {
    Command::new(program).args(["image", "inspect"]).args(ids.iter().map(|id| id.as_ref().to_string()))
}

/// `major.minor` of a docker or compose version string (`v2.40.3`, `20.10.24+dfsg1`).
pub fn major_minor(version: &str) -> Option<(u64, u64)> {
    let version = version.trim().trim_start_matches('v');
    let mut parts = version.split(['.', '+', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|minor| minor.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// The major version of a docker version string such as `20.10.24+dfsg1` or `28.2.2`.
fn major_version(version: &str) -> Option<u64> {
    version.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker(builder: Builder) -> Docker {
        Docker { program: "docker".into(), builder, engine_version: "20.10.24".into() }
    }

    fn spec() -> BuildSpec {
        BuildSpec {
            context: "backend".into(),
            dockerfile: "backend/Dockerfile".into(),
            target: Some("worker".into()),
            tags: vec!["r:5000/intric/worker:sha-0123456789ab".into()],
            build_args: vec![("PYTHON_IMAGE".into(), "lab/python:3".into())],
            labels: vec![("org.opencontainers.image.title".into(), "intric worker".into())],
            secrets: vec![BuildSecret { id: "pip_index".into(), env: "PIP_INDEX_URL".into() }],
            ..BuildSpec::default()
        }
    }

    #[test]
    fn legacy_build_sets_buildkit_and_loads_into_engine() {
        let command = docker(Builder::Legacy).build(&spec());
        assert_eq!(command.env, [("DOCKER_BUILDKIT".to_string(), "1".to_string())]);
        assert_eq!(
            command.args,
            [
                "build",
                "--progress",
                "plain",
                "--file",
                "backend/Dockerfile",
                "--target",
                "worker",
                "--tag",
                "r:5000/intric/worker:sha-0123456789ab",
                "--build-arg",
                "PYTHON_IMAGE=lab/python:3",
                "--label",
                "org.opencontainers.image.title=intric worker",
                "--secret",
                "id=pip_index,env=PIP_INDEX_URL",
                "backend",
            ]
        );
    }

    #[test]
    fn buildx_build_pushes_or_loads_and_names_the_builder() {
        let mut spec = spec();
        spec.builder = Some("ci".into());
        let load = docker(Builder::Buildx).build(&spec);
        assert_eq!(load.args[..6], ["buildx", "build", "--builder", "ci", "--load", "--provenance=false"]);
        assert!(load.env.is_empty());
        spec.push = true;
        assert!(docker(Builder::Buildx).build(&spec).args.contains(&"--push".to_string()));
    }

    #[test]
    fn login_keeps_the_password_out_of_argv() {
        let command = docker(Builder::Legacy).login("r:5000", "ci", Secret::new("NEXUS_PASSWORD", "canary-pw"));
        assert!(!command.args.iter().any(|arg| arg.contains("canary-pw")));
        assert_eq!(command.stdin.as_ref().map(Secret::expose), Some("canary-pw"));
    }

    #[test]
    fn major_versions() {
        assert_eq!(major_version("20.10.24+dfsg1"), Some(20));
        assert_eq!(major_version("28.2.2"), Some(28));
        assert_eq!(major_version("dev"), None);
    }
}
