//! A deployment directory, read once: its `.env`, its compose project and the registry it
//! pulls from, and the options every operator task takes to name it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::adapters::compose::Compose;
use crate::adapters::dotenv::DotEnv;
use crate::adapters::registry::{Backoff, Credentials, Registry, RegistryAddress};
use crate::plan::Command;
use crate::plan::runner::Runner;
use crate::stack::env_check::{self, Level};
use crate::stack::history::HISTORY_FILE;
use crate::stack::lock::{LOCK_FILE, LockArgs};

// Where a deployment is: the options every operator task takes.
#[derive(Args, Clone, Debug)]
pub struct DeploymentArgs {
    /// The deployment directory holding docker-compose.yml and .env [default: the repository's docker/].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The compose project name [default: the one compose itself gives the directory:
    /// COMPOSE_PROJECT_NAME, else the compose file's `name:`, else the directory's name].
    #[arg(long, value_name = "NAME")]
    pub project: Option<String>,
}

/// How long `up --wait` may take until every service is healthy.
pub const DEFAULT_TIMEOUT: u64 = 300;

// What the tasks that change the running stack (deploy, update, rollback, restore) share:
// how long to wait for health, a dry run, and the deploy lock.
#[derive(Args, Clone, Copy, Debug)]
pub struct ChangeArgs {
    /// Seconds to wait for every service to become healthy.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub lock: LockArgs,
}

/// A deployment directory, read once: its `.env` and the compose project.
pub struct Deployment {
    pub dir: PathBuf,
    pub env: DotEnv,
    pub compose: Compose,
}

impl Deployment {
    /// Opens the deployment `args` names: the directory with a compose file and a `.env` that
    /// parses; `runner` reads compose's resolution of the file.
    pub fn open(args: &DeploymentArgs, runner: &dyn Runner) -> Result<Deployment> {
        Deployment::open_with(args, runner, false)
    }

    /// [`Deployment::open`] with `env check` first: every problem is printed, and errors stop
    /// there, before compose reads the file (its own complaint about a bad `.env` would name
    /// the compose file's interpolation, not the variable and its fix).
    pub fn open_checked(args: &DeploymentArgs, runner: &dyn Runner) -> Result<Deployment> {
        Deployment::open_with(args, runner, true)
    }

    fn open_with(args: &DeploymentArgs, runner: &dyn Runner, check: bool) -> Result<Deployment> {
        let dir = env_check::deployment_dir(args.dir.clone());
        crate::adapters::compose::compose_file(&dir)?;
        let dir = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
        let env_path = dir.join(".env");
        if !env_path.is_file() {
            bail!("{} does not exist: run `cargo xtask env init --dir {}` first", env_path.display(), dir.display());
        }
        // With the check, `.env` is read once, by the check, and that reading is the one used.
        let env = if check {
            let (_, env, problems) = env_check::check_dir(runner, &dir)?;
            refuse_problems(&env_path, &problems)?;
            env
        } else {
            DotEnv::read(&env_path)?
        };
        let compose = Compose::open(&dir, args.project.clone(), &env, runner)?;
        if check {
            refuse_a_second_stack(&compose, runner)?;
        }
        let shadowed: Vec<&str> = env
            .entries()
            .filter(|entry| std::env::var(&entry.key).is_ok_and(|value| value != entry.value))
            .map(|entry| entry.key.as_str())
            .collect();
        if !shadowed.is_empty() {
            eprintln!(
                "note: ignoring {} from your environment: the deployment uses {} only",
                shadowed.join(", "),
                env_path.display()
            );
        }
        Ok(Deployment { dir, env, compose })
    }

    pub fn env_path(&self) -> PathBuf {
        self.dir.join(".env")
    }

    pub fn history_path(&self) -> PathBuf {
        self.dir.join(HISTORY_FILE)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    /// `.env`'s `IMAGE_TAG`.
    pub fn current_tag(&self) -> Option<String> {
        self.env.get("IMAGE_TAG").filter(|tag| !tag.is_empty()).map(str::to_string)
    }

    /// The registry of `.env`, and the credentials to reach it: `.env`'s NEXUS_USERNAME and
    /// NEXUS_PASSWORD, else the environment's, else the docker client's login. `login` tells
    /// whether they came from `.env` or the environment (so `docker login` should use them).
    pub fn registry(&self) -> Result<(RegistryAddress, Option<Credentials>, bool)> {
        let setting = self
            .env
            .get("NEXUS_REGISTRY")
            .filter(|value| !value.is_empty())
            .with_context(|| format!("NEXUS_REGISTRY is not set in {}", self.env_path().display()))?;
        let address = RegistryAddress::parse(setting)?;
        let from_dotenv: crate::adapters::ci_env::Env = ["NEXUS_USERNAME", "NEXUS_PASSWORD"]
            .iter()
            .filter_map(|key| Some((key.to_string(), self.env.get(key)?.to_string())))
            .collect();
        let from_dotenv = Credentials::from_env(&from_dotenv)
            .with_context(|| format!("the registry login in {} is incomplete", self.env_path().display()))?;
        if let Some(credentials) = from_dotenv {
            return Ok((address, Some(credentials), true));
        }
        let explicit = Credentials::from_env(&crate::adapters::ci_env::process_env())?;
        if explicit.is_some() {
            return Ok((address, explicit, true));
        }
        // A credential helper is a process; this runs it without a runner parameter, to keep the
        // change to this module small (the tasks calling it could pass theirs).
        let found = Credentials::find(&address, &crate::plan::runner::Processes::new())?;
        Ok((address, found, false))
    }

    /// Checks that `tag` exists in the registry for every image of ours the services run (the
    /// compose file says which), before anything changes: a cleanup policy may have deleted a
    /// tag that a rollback wants.
    pub fn check_tag_exists(&self, tag: &str) -> Result<()> {
        if !crate::images::tags::is_valid_image_tag(tag) {
            bail!("{tag:?} is not an image tag ([A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128 characters)");
        }
        let (address, credentials, _) = self.registry()?;
        let registry = Registry::new(address.clone(), credentials, Backoff::STANDARD);
        let repositories = repositories_in(&self.compose.images, &address, self.env.get("IMAGE_TAG"));
        if repositories.is_empty() {
            bail!(
                "{} runs no image from {address} tagged with IMAGE_TAG (NEXUS_REGISTRY and IMAGE_TAG in {}): its \
                 images are {}",
                self.compose.file.display(),
                self.env_path().display(),
                self.compose.images.join(", ")
            );
        }
        let mut missing = Vec::new();
        for repository in repositories {
            if registry.manifest_digest(&repository, tag)?.is_none() {
                missing.push(repository);
            }
        }
        if !missing.is_empty() {
            bail!(
                "tag {tag} is not in the registry {address} for {} (never pushed, or deleted by a cleanup policy): \
                 nothing was changed",
                missing.join(", ")
            );
        }
        Ok(())
    }

    /// The `docker login` to run before pulling, when `.env` or the environment holds a login.
    pub fn login(&self) -> Result<Option<Command>> {
        let (address, credentials, explicit) = self.registry()?;
        Ok(match (credentials, explicit) {
            (Some(credentials), true) => Some(crate::adapters::docker::login_with(
                &self.compose.program,
                &address.host,
                &credentials.username,
                credentials.password,
            )),
            _ => None,
        })
    }

    /// Where the frontend answers, as an operator would open it.
    pub fn url(&self) -> String {
        let port = self.env.get("FRONTEND_PORT").filter(|port| !port.is_empty()).unwrap_or("3000");
        let host = engine_host(std::env::var("DOCKER_HOST").ok().as_deref()).unwrap_or_else(|| {
            match self.env.get("FRONTEND_BIND").filter(|bind| !bind.is_empty()) {
                Some("0.0.0.0") | Some("::") | None => "localhost".to_string(),
                Some(bind) => bind.to_string(),
            }
        });
        format!("http://{host}:{port}")
    }
}

/// What `env check` found in `path`: every problem is printed, and errors stop here.
fn refuse_problems(path: &Path, problems: &[env_check::Problem]) -> Result<()> {
    let errors: Vec<_> = problems.iter().filter(|problem| problem.level == Level::Error).collect();
    if !errors.is_empty() {
        print!("{}", env_check::report(path, problems));
        let more =
            if errors.len() > 1 { format!(" (and {} more, listed above)", errors.len() - 1) } else { String::new() };
        bail!(
            "{} is not ready: {}{more}; fix it and run again (`cargo xtask env check` lists the problems)",
            path.display(),
            errors[0].message
        );
    }
    for problem in problems {
        eprintln!("{problem}");
    }
    Ok(())
}

/// Refuses to start a second stack beside the one compose itself names this directory: a
/// `--project` other than compose's own name, while containers of compose's project exist
/// (started by hand with `docker compose up`, say), would get new, empty volumes.
fn refuse_a_second_stack(compose: &Compose, runner: &dyn Runner) -> Result<()> {
    let Some(project) = compose.project.as_deref().filter(|project| *project != compose.name) else {
        return Ok(());
    };
    let containers = runner
        .read(&compose.containers_of(&compose.name))
        .with_context(|| format!("cannot list the containers of compose project {}", compose.name))?;
    if !containers.trim().is_empty() {
        bail!(
            "--project {project} would start a second stack with empty volumes: the project compose names {}              ({}) has {} container(s); drop --project to adopt it, or remove that stack first",
            compose.dir.display(),
            compose.name,
            containers.lines().count()
        );
    }
    Ok(())
}

/// The host of a remote engine (`ssh://user@host:22`, `tcp://host:2376`), `None` when local.
pub fn engine_host(docker_host: Option<&str>) -> Option<String> {
    let rest = docker_host?.split_once("://").filter(|(scheme, _)| *scheme == "ssh" || *scheme == "tcp")?.1;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.split(':').next().unwrap_or(host)
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// The repositories below `address` that `images` (compose's resolved `image:` values) name
/// with the deployed tag `current_tag`, each once: `127.0.0.1:5000/intric/backend:1.2` →
/// `intric/backend`. Those are the images a new IMAGE_TAG changes; the others (the database's,
/// Redis's, even a stand-in in the same registry) keep their own tags and are not checked.
fn repositories_in(images: &[String], address: &RegistryAddress, current_tag: Option<&str>) -> Vec<String> {
    let prefix = format!("{address}/");
    let mut repositories: Vec<String> = Vec::new();
    for image in images {
        let Some(path) = image.strip_prefix(&prefix) else { continue };
        let (repository, tag) = path.split_once(':').unwrap_or((path, "latest"));
        let follows_image_tag = current_tag.is_none_or(|current| current == tag);
        if follows_image_tag && !repository.is_empty() && !repositories.iter().any(|known| known == repository) {
            repositories.push(repository.to_string());
        }
    }
    repositories
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repositories_to_check_are_those_of_the_registry_the_services_run() {
        let address = RegistryAddress::parse("nexus.example:8082").unwrap();
        let images: Vec<String> = [
            "nexus.example:8082/intric/frontend:1.2",
            "nexus.example:8082/intric/backend:1.2",
            "nexus.example:8082/lab/postgres:lab",
            "pgvector/pgvector:pg16",
            "redis",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            repositories_in(&images, &address, Some("1.2")),
            ["intric/frontend", "intric/backend"],
            "the published layout: the worker and db-init run the backend image; the stand-in keeps its tag"
        );
        assert_eq!(repositories_in(&images, &address, None).len(), 3, "without IMAGE_TAG: all from the registry");
    }

    #[test]
    fn another_project_beside_a_running_stack_is_refused() {
        let running = || {
            crate::plan::runner::Recording::replying(|shown| {
                assert!(shown.ends_with("label=com.docker.compose.project=intric"), "{shown}");
                Ok("0123456789ab\nba9876543210".into())
            })
        };
        let error = refuse_a_second_stack(&Compose::for_tests(Some("prod")), &running()).unwrap_err().to_string();
        assert!(error.starts_with("--project prod would start a second stack"), "{error}");
        assert!(error.contains("(intric) has 2 container(s)") && !error.contains('\n'), "{error}");
        // Compose's own name, or no --project: nothing to compare, nothing asked.
        for project in [None, Some("intric")] {
            let runner = running();
            refuse_a_second_stack(&Compose::for_tests(project), &runner).unwrap();
            assert!(runner.executed().is_empty());
        }
        // Nothing runs under compose's name: --project starts a stack of its own.
        let empty = crate::plan::runner::Recording::replying(|_| Ok(String::new()));
        refuse_a_second_stack(&Compose::for_tests(Some("prod")), &empty).unwrap();
    }

    #[test]
    fn remote_engine_hosts() {
        assert_eq!(engine_host(Some("ssh://ops@server.example:2222")).as_deref(), Some("server.example"));
        assert_eq!(engine_host(Some("tcp://10.0.0.5:2376")).as_deref(), Some("10.0.0.5"));
        assert_eq!(engine_host(Some("unix:///var/run/docker.sock")), None);
        assert_eq!(engine_host(None), None);
    }
}
