//! The docker compose adapter: the argv of every `docker compose` command the operator tasks
//! (`deploy`, `update`, `rollback`, `backup`, `restore`, `status`) run against a deployment
//! directory, and the one place that runs them.
//!
//! - Every command names the compose file and the project directory explicitly, and the project
//!   when `--project` was given, so the xtask can run from anywhere.
//! - Everything goes through the docker client, so `DOCKER_HOST` (also `ssh://`) is honoured:
//!   nothing assumes the engine is local. No host path is ever mounted into a container; database
//!   dumps stream through `docker compose exec -T` to this side.
//! - Compose reads the deployment's variables from `.env` itself, so no secret is ever on a
//!   command line. Compose prefers a variable of the caller's environment over `.env`; the
//!   commands here remove every variable that `.env` defines from their environment
//!   ([`Command::env_remove`]), so the deployment is exactly what `.env` says (a stray
//!   `IMAGE_TAG` in the shell would otherwise silently deploy another version).
//! - Every command is an argv, run by the plan's runner; nothing goes through a shell. The
//!   database's user and name, which `psql` and `pg_dump` need, come from compose's own
//!   resolution of the file (`docker compose config`), read once when the project is opened.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::adapters::docker;
use crate::adapters::dotenv::DotEnv;
use crate::plan::Command;
use crate::plan::runner::Runner;

/// The compose file names compose itself looks for, in its order of preference.
const COMPOSE_FILES: [&str; 4] = ["compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml"];

/// The services of the stack, in start order; `db-init` is the one-off of profile `init`.
pub const SERVICES: [&str; 6] = ["db", "redis", "backend", "worker", "frontend", "edge"];

/// The services an update replaces beside the running containers: they keep no state, and
/// traffic reaches them through Docker's DNS, which follows the containers that run.
pub const STATELESS: [&str; 3] = ["backend", "worker", "frontend"];

/// What [`Compose::container_states`] prints per container: name, state, health (`none`
/// without a healthcheck) and how often the engine restarted it.
const CONTAINER_STATE: &str =
    "{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}}";

/// The Python that prints a backend image's alembic migration files as one JSON object (file
/// name → text).
pub const PRINT_MIGRATIONS: &str = "import json, pathlib; print(json.dumps({p.name: p.read_text() \
    for p in sorted(pathlib.Path('alembic/versions').glob('*.py'))}))";

/// What `pg_dump` writes last in a plain-format dump: a dump without it was cut short.
pub const DUMP_COMPLETE: &str = "-- PostgreSQL database dump complete";

/// A compose project: the deployment directory, its compose file and the project name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compose {
    /// The docker client (`docker`, found on PATH).
    pub program: String,
    pub dir: PathBuf,
    pub file: PathBuf,
    /// `--project`, when given; `None` leaves the name to compose ([`Compose::name`]).
    pub project: Option<String>,
    /// The project name compose itself resolves for this directory without `--project`
    /// (`COMPOSE_PROJECT_NAME`, else the file's `name:`, else the directory's name normalised),
    /// from `docker compose config`: the name of a stack started by hand with `docker compose up`.
    pub name: String,
    /// The variables `.env` defines: removed from every compose process's environment.
    pub isolated: Vec<String>,
    /// The `db` service's PostgreSQL user and database, as compose resolves them.
    pub database: Database,
    /// The images the services run, as compose resolves them (registry and tag from `.env`),
    /// each once: what a deploy needs from the registry (the published worker runs the backend
    /// image, so that layout has no worker image).
    pub images: Vec<String>,
}

/// The stack's PostgreSQL user and database name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Database {
    pub user: String,
    pub name: String,
}

impl Database {
    /// From `docker compose config --format json`: the `db` service's `POSTGRES_USER` and
    /// `POSTGRES_DB`, with the defaults of the PostgreSQL image where they are not set.
    pub fn from_config(config: &str) -> Result<Database> {
        let config: serde_json::Value =
            serde_json::from_str(config).context("`docker compose config --format json` printed no JSON")?;
        let environment = &config["services"]["db"]["environment"];
        let variable = |key: &str| environment.get(key).and_then(serde_json::Value::as_str).filter(|v| !v.is_empty());
        let user = variable("POSTGRES_USER").unwrap_or("postgres").to_string();
        let name = variable("POSTGRES_DB").unwrap_or(&user).to_string();
        Ok(Database { user, name })
    }

    /// `psql` running one SQL statement as the stack's user on `database` (the stack's
    /// database when `None`), printing the result unaligned. The SQL is one argument. Run in
    /// the database's container: compose's `db` service, or the swarm db task's container.
    pub fn query(&self, database: Option<&str>, sql: &str) -> Vec<String> {
        let database = database.unwrap_or(&self.name);
        let args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", &self.user, "-d", database, "-tA", "-c", sql];
        args.map(String::from).to_vec()
    }

    /// `pg_dump` of the stack's database to standard output, plain SQL.
    pub fn dump(&self) -> Vec<String> {
        ["pg_dump", "--no-owner", "--no-privileges", "-U", &self.user, "-d", &self.name].map(String::from).to_vec()
    }

    /// `psql` reading a plain dump from standard input into database `database`, in one
    /// transaction that stops at the first error; what the statements print is dropped.
    pub fn load(&self, database: &str) -> Vec<String> {
        let args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-U", &self.user, "-d"];
        args.into_iter().chain([database, "-o", "/dev/null"]).map(String::from).collect()
    }
}

/// The distinct `image:` of the services in `docker compose config --format json`, in the
/// order compose prints them.
pub fn service_images(config: &str) -> Result<Vec<String>> {
    let config: serde_json::Value =
        serde_json::from_str(config).context("`docker compose config --format json` printed no JSON")?;
    let mut images: Vec<String> = Vec::new();
    for service in config["services"].as_object().into_iter().flat_map(|services| services.values()) {
        if let Some(image) = service["image"].as_str()
            && !images.iter().any(|known| known == image)
        {
            images.push(image.to_string());
        }
    }
    Ok(images)
}

/// The compose file in `dir`, by compose's own order of preference, if there is one.
pub fn find_compose_file(dir: &Path) -> Option<PathBuf> {
    COMPOSE_FILES.iter().map(|name| dir.join(name)).find(|path| path.is_file())
}

/// The compose file in `dir`, or a one-line error naming what is missing.
pub fn compose_file(dir: &Path) -> Result<PathBuf> {
    if !dir.exists() {
        bail!("the deployment directory {} does not exist (pass --dir DIR)", dir.display());
    }
    if !dir.is_dir() {
        bail!("{} is not a directory (--dir takes the deployment directory holding docker-compose.yml)", dir.display());
    }
    find_compose_file(dir).with_context(|| {
        format!(
            "{} holds no compose file (docker-compose.yml): copy the repository's docker/docker-compose.yml there",
            dir.display()
        )
    })
}

/// `docker compose --file F config --no-interpolate --format json`: compose's own reading of a
/// source file (the `build:` sections of `build` and `check`), with paths resolved and anchors
/// merged but variables left as written, because the required variables of a deployment
/// (`${JWT_SECRET:?...}`) are not set where images are built. With `plugin` (see
/// [`compose_plugin`]), the plugin itself runs it, as compose v2 allows.
pub fn source_config(plugin: Option<&Path>, file: &Path) -> Command {
    let dir = file.parent().unwrap_or(Path::new("."));
    let command = match plugin {
        Some(plugin) => Command::new(plugin.display().to_string()),
        None => Command::new("docker").arg("compose"),
    };
    command
        .arg("--file")
        .arg(file.display().to_string())
        .arg("--project-directory")
        .arg(dir.display().to_string())
        .args(["config", "--no-interpolate", "--format", "json"])
        .hint(format!(
            "compose cannot read {}; `docker compose --file {} config` says why",
            file.display(),
            file.display()
        ))
}

/// The compose plugin `docker compose` would run (see [`docker::cli_plugin`]). Running it
/// directly reads a compose file in about half the time: the client's own start and its scan
/// of the plugins (a process per plugin) go. Only plugin directories count: a `docker-compose`
/// on PATH may be compose v1, which has no JSON.
pub fn compose_plugin(env: &crate::adapters::ci_env::Env) -> Option<PathBuf> {
    docker::cli_plugin(env, "compose")
}

impl Compose {
    /// The project in `dir` (which must hold a compose file), isolated to the variables of `env`;
    /// `runner` reads compose's resolution of the file once.
    pub fn open(dir: &Path, project: Option<String>, env: &DotEnv, runner: &dyn Runner) -> Result<Compose> {
        let file = compose_file(dir)?;
        if let Some(project) = &project
            && !is_valid_project_name(project)
        {
            bail!("--project {project:?} is not a compose project name (lowercase letters, digits, `-` and `_`)");
        }
        let mut compose = Compose {
            program: "docker".into(),
            dir: dir.to_path_buf(),
            file,
            project: None,
            name: String::new(),
            isolated: env.entries().map(|entry| entry.key.clone()).collect(),
            database: Database { user: String::new(), name: String::new() },
            images: Vec::new(),
        };
        // Read without `--project`, so that `name` is compose's own choice, which `--project`
        // may then differ from (the adoption check of `deploy` compares the two).
        let config = runner
            .read(&compose.command(["config", "--format", "json"]))
            .with_context(|| format!("compose cannot read {}", compose.file.display()))?;
        compose.database = Database::from_config(&config)?;
        compose.images = service_images(&config)?;
        compose.name = project_of_config(&config)?;
        compose.project = project;
        Ok(compose)
    }

    /// The project name as compose will use it: `--project`, else compose's own.
    pub fn project_name(&self) -> &str {
        self.project.as_deref().unwrap_or(&self.name)
    }

    /// The ids of every container, running or not, of compose project `project`.
    pub fn containers_of(&self, project: &str) -> Command {
        Command::new(&self.program)
            .args(["ps", "--all", "--quiet", "--filter"])
            .arg(format!("label=com.docker.compose.project={project}"))
    }

    /// `docker compose --file F --project-directory D [--project-name P] ARGS...`.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut command = Command::new(&self.program)
            .args(["compose", "--file"])
            .arg(self.file.display().to_string())
            .arg("--project-directory")
            .arg(self.dir.display().to_string());
        if let Some(project) = &self.project {
            command = command.args(["--project-name", project]);
        }
        for key in &self.isolated {
            command = command.env_remove(key.clone());
        }
        command.args(args)
    }

    /// Pulls every image of the stack (with `tag` instead of `.env`'s `IMAGE_TAG` when given).
    pub fn pull(&self, tag: Option<&str>) -> Command {
        let mut command = self.command(["--profile", "init", "pull", "--quiet"]);
        if let Some(tag) = tag {
            command = command.env("IMAGE_TAG", tag);
        }
        command.hint(
            "pulling the images failed: check the tag and the registry login \
             (NEXUS_USERNAME/NEXUS_PASSWORD in .env, or `docker login`)",
        )
    }

    /// Starts `services` (all when empty), waits until each is healthy for at most `timeout` s.
    pub fn up(&self, services: &[&str], timeout: u64) -> Command {
        let mut command = self.command(["up", "--detach", "--wait", "--wait-timeout"]).arg(timeout.to_string());
        if services.is_empty() {
            command = command.arg("--remove-orphans");
        }
        command.args(services.iter().copied()).hint(format!(
            "the services did not all become healthy within {timeout} s: see `docker compose logs` in {}",
            self.dir.display()
        ))
    }

    /// Stops `services` (their containers stay, so `up` starts them again).
    pub fn stop(&self, services: &[&str]) -> Command {
        self.command(["stop"]).args(services.iter().copied()).hint("stopping the services failed")
    }

    /// The one-off `db-init` (profile `init`): migrations to head, then the idempotent seed.
    pub fn db_init(&self) -> Command {
        self.command(["--profile", "init", "run", "--rm", "-T", "db-init"])
            .hint("db-init failed: its output above says why (database settings in .env?)")
    }

    /// Runs the migrations of the backend image `.env` names, in a one-off container of that
    /// image (not the running container, which has the old migrations).
    pub fn migrate(&self) -> Command {
        self.backend_once(["alembic", "upgrade", "head"]).hint("the migrations failed: their output above says why")
    }

    /// Succeeds when the backend image `.env` names knows migration `revision`. It does not when
    /// a newer version migrated the database (as after a rollback): then nothing is migrated.
    pub fn knows_revision(&self, revision: &str) -> Command {
        self.backend_once(["alembic", "show", revision])
    }

    /// Prints the alembic migration files of the backend image with `tag` as one JSON object
    /// (file name → text), from a one-off container of that image.
    pub fn migration_files(&self, tag: &str) -> Command {
        self.backend_once(["python", "-c", PRINT_MIGRATIONS])
            .env("IMAGE_TAG", tag)
            .hint("reading the new backend image's migrations failed: its output above says why")
    }

    fn backend_once<const N: usize>(&self, command: [&str; N]) -> Command {
        self.command(["run", "--rm", "--no-deps", "-T", "backend"]).args(command)
    }

    /// `args` run in the `db` service's container, standard input attached (a dump's load
    /// reads it): [`Database::query`], [`Database::dump`] or [`Database::load`].
    pub fn in_db(&self, args: Vec<String>) -> Command {
        self.command(["exec", "-T", "db"]).args(args)
    }

    /// Runs one SQL statement in the `db` container as the stack's user on `database` (the
    /// stack's database when `None`), printing the result unaligned. The SQL is one argument.
    pub fn sql(&self, database: Option<&str>, sql: &str) -> Command {
        self.in_db(self.database.query(database, sql))
    }

    /// `pg_dump` of the stack's database to standard output, plain SQL.
    pub fn dump(&self) -> Command {
        self.in_db(self.database.dump())
    }

    /// The IDs of the containers of `service`, running or not, one per line.
    pub fn container_ids(&self, service: &str) -> Command {
        self.command(["ps", "--all", "--quiet", service])
    }

    /// Starts containers of `service` (to `count` in all) from the configuration `.env` names
    /// now, beside the ones running, which stay as they are; no other service is touched or
    /// waited for (one service per command: compose would wait for a sibling's health).
    pub fn start_beside(&self, service: &str, count: usize) -> Command {
        self.command(["up", "--detach", "--no-deps", "--no-recreate", "--scale"])
            .arg(format!("{service}={count}"))
            .arg(service)
            .hint(format!(
                "starting a new {service} container failed: see `docker compose logs` in {}",
                self.dir.display()
            ))
    }

    /// Name, state, health and restart count of each container in `ids`, one line each.
    pub fn container_states(&self, ids: &[String]) -> Command {
        Command::new(&self.program).args(["inspect", "--format", CONTAINER_STATE]).args(ids.iter().cloned())
    }

    /// Stops the containers `ids`, each given `grace` seconds to finish what it serves. `-t`
    /// is `--time` to the 20.10 client and `--timeout` to newer ones, which deprecate `--time`.
    pub fn stop_containers(&self, ids: &[String], grace: u64) -> Command {
        Command::new(&self.program).args(["stop", "-t"]).arg(grace.to_string()).args(ids.iter().cloned())
    }

    /// Removes the (stopped) containers `ids`.
    pub fn remove_containers(&self, ids: &[String]) -> Command {
        Command::new(&self.program).arg("rm").args(ids.iter().cloned())
    }

    /// The stack's containers, one JSON object per line (or one array, on older compose).
    pub fn ps_json(&self) -> Command {
        self.command(["ps", "--all", "--format", "json"])
    }
}

#[cfg(test)]
impl Compose {
    /// A project in `/srv/intric` that compose names `intric`, for tests of what runs against it.
    pub fn for_tests(project: Option<&str>) -> Compose {
        Compose {
            program: "docker".into(),
            dir: "/srv/intric".into(),
            file: "/srv/intric/docker-compose.yml".into(),
            project: project.map(str::to_string),
            name: "intric".into(),
            isolated: vec!["IMAGE_TAG".into(), "POSTGRES_PASSWORD".into()],
            database: Database { user: "intric_user".into(), name: "intric".into() },
            images: Vec::new(),
        }
    }
}

/// The top-level `name` of `docker compose config --format json`: the project name compose
/// resolved.
pub fn project_of_config(config: &str) -> Result<String> {
    let config: serde_json::Value =
        serde_json::from_str(config).context("`docker compose config --format json` printed no JSON")?;
    config["name"]
        .as_str()
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .context("`docker compose config --format json` printed no project name (compose v2 is needed)")
}

/// Compose's rule for project names: lowercase letters, digits, dashes and underscores,
/// starting with a letter or digit.
pub fn is_valid_project_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compose_plugin_is_found_where_the_docker_client_looks_first() {
        let (config, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for dir in [config.path().to_path_buf(), home.path().join(".docker")] {
            std::fs::create_dir_all(dir.join("cli-plugins")).unwrap();
            std::fs::write(dir.join("cli-plugins/docker-compose"), "").unwrap();
        }
        let env = |pairs: &[(&str, &Path)]| {
            pairs.iter().map(|(key, value)| (key.to_string(), value.display().to_string())).collect()
        };
        let both = env(&[("DOCKER_CONFIG", config.path()), ("HOME", home.path())]);
        assert_eq!(compose_plugin(&both), Some(config.path().join("cli-plugins/docker-compose")));
        let home_only = env(&[("HOME", home.path())]);
        assert_eq!(compose_plugin(&home_only), Some(home.path().join(".docker/cli-plugins/docker-compose")));
        let plugin = home.path().join(".docker/cli-plugins/docker-compose");
        let direct = source_config(Some(&plugin), Path::new("/repo/docker/docker-compose.yml")).to_string();
        assert!(
            direct.starts_with(&format!(
                "{} --file /repo/docker/docker-compose.yml --project-directory /repo/docker config",
                plugin.display()
            )),
            "{direct}"
        );
        let through_docker = source_config(None, Path::new("/repo/docker-compose.yml")).to_string();
        assert!(through_docker.starts_with("docker compose --file /repo/docker-compose.yml"), "{through_docker}");
    }

    #[test]
    fn service_images_are_listed_once_each() {
        let config = r#"{"services": {"backend": {"image": "r/intric/backend:1"}, "db-init": {"image": "r/intric/backend:1"},
            "db": {"image": "pg"}, "builder-only": {"build": {}}}}"#;
        assert_eq!(service_images(config).unwrap(), ["r/intric/backend:1", "pg"]);
    }

    fn compose(project: Option<&str>) -> Compose {
        Compose::for_tests(project)
    }

    #[test]
    fn commands_name_file_directory_and_project() {
        let up = compose(Some("intric-e2e")).up(&[], 120);
        assert_eq!(
            up.to_string(),
            "docker compose --file /srv/intric/docker-compose.yml --project-directory /srv/intric \
             --project-name intric-e2e up --detach --wait --wait-timeout 120 --remove-orphans"
        );
        let db = compose(None).up(&["db"], 60);
        assert!(db.to_string().ends_with("--project-directory /srv/intric up --detach --wait --wait-timeout 60 db"));
    }

    #[test]
    fn a_new_tag_is_pulled_through_the_environment_not_by_editing_env() {
        let pull = compose(None).pull(Some("1.2.3"));
        assert_eq!(pull.env, [("IMAGE_TAG".to_string(), "1.2.3".to_string())]);
        assert_eq!(pull.env_remove, ["IMAGE_TAG", "POSTGRES_PASSWORD"], "every .env variable is removed");
    }

    #[test]
    fn sql_and_dumps_name_the_user_and_database_and_no_password() {
        let c = compose(None);
        for command in [c.sql(None, "select 1"), c.dump(), c.in_db(c.database.load("intric_restore"))] {
            let shown = command.to_string();
            assert!(shown.contains(" -U intric_user -d intric") && !shown.contains("PASSWORD"), "{shown}");
        }
        assert_eq!(c.sql(Some("template1"), "select 'x'").args.last().unwrap(), "select 'x'");
        assert!(c.sql(Some("template1"), "select 1").to_string().contains("-d template1"));
    }

    #[test]
    fn the_database_comes_from_compose_config() {
        let config = r#"{"services": {"db": {"environment": {"POSTGRES_USER": "app", "POSTGRES_DB": "intric"}}}}"#;
        assert_eq!(Database::from_config(config).unwrap(), Database { user: "app".into(), name: "intric".into() });
        // The PostgreSQL image's defaults: user `postgres`, database named after the user.
        let bare = r#"{"services": {"db": {"environment": {"POSTGRES_PASSWORD": "x"}}}}"#;
        assert_eq!(Database::from_config(bare).unwrap(), Database { user: "postgres".into(), name: "postgres".into() });
        assert!(Database::from_config("not json").is_err());
    }

    #[test]
    fn the_project_name_is_compose_s_own_unless_given() {
        assert_eq!(project_of_config(r#"{"name": "intric-adopt-7", "services": {}}"#).unwrap(), "intric-adopt-7");
        assert!(project_of_config(r#"{"services": {}}"#).is_err());
        assert_eq!(compose(None).project_name(), "intric");
        assert_eq!(compose(Some("other")).project_name(), "other");
        assert_eq!(
            compose(None).containers_of("intric").to_string(),
            "docker ps --all --quiet --filter label=com.docker.compose.project=intric"
        );
    }

    #[test]
    fn project_names() {
        assert!(is_valid_project_name("intric-deploy_e2e2"));
        assert!(!is_valid_project_name("Intric"));
        assert!(!is_valid_project_name("-x"));
        assert!(!is_valid_project_name(""));
    }
}
