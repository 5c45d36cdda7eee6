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
//!   commands here run with every variable that `.env` defines removed from their environment,
//!   so the deployment is exactly what `.env` says (a stray `IMAGE_TAG` in the shell would
//!   otherwise silently deploy another version).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::adapters::dotenv::DotEnv;
use crate::plan::Command;

/// The compose file names compose itself looks for, in its order of preference.
const COMPOSE_FILES: [&str; 4] = ["compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml"];

/// The services of the stack, in start order; `db-init` is the one-off of profile `init`.
pub const SERVICES: [&str; 5] = ["db", "redis", "backend", "worker", "frontend"];

/// What `pg_dump` writes last in a plain-format dump: a dump without it was cut short.
pub const DUMP_COMPLETE: &str = "-- PostgreSQL database dump complete";

/// A compose project: the deployment directory, its compose file and the project name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compose {
    /// The docker client (`docker`, found on PATH).
    pub program: String,
    pub dir: PathBuf,
    pub file: PathBuf,
    /// `--project`; `None` is the compose file's own `name:` (`intric`).
    pub project: Option<String>,
    /// The variables `.env` defines: removed from every compose process's environment.
    pub isolated: Vec<String>,
}

/// The compose file in `dir`, or a one-line error naming what is missing.
pub fn compose_file(dir: &Path) -> Result<PathBuf> {
    if !dir.exists() {
        bail!("the deployment directory {} does not exist (pass --dir DIR)", dir.display());
    }
    if !dir.is_dir() {
        bail!("{} is not a directory (--dir takes the deployment directory holding docker-compose.yml)", dir.display());
    }
    COMPOSE_FILES.iter().map(|name| dir.join(name)).find(|path| path.is_file()).with_context(|| {
        format!(
            "{} holds no compose file (docker-compose.yml): copy the repository's docker/docker-compose.yml there",
            dir.display()
        )
    })
}

impl Compose {
    /// The project in `dir` (which must hold a compose file), isolated to the variables of `env`.
    pub fn new(dir: &Path, project: Option<String>, env: &DotEnv) -> Result<Compose> {
        let file = compose_file(dir)?;
        if let Some(project) = &project
            && !is_valid_project_name(project)
        {
            bail!("--project {project:?} is not a compose project name (lowercase letters, digits, `-` and `_`)");
        }
        Ok(Compose {
            program: "docker".into(),
            dir: dir.to_path_buf(),
            file,
            project,
            isolated: env.entries().map(|entry| entry.key.clone()).collect(),
        })
    }

    /// The project name as compose will use it.
    pub fn project_name(&self) -> &str {
        self.project.as_deref().unwrap_or("intric")
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
    /// image (not the running container, which has the old migrations). `revision` is the
    /// database's current revision: when the image does not know it (the database was migrated
    /// by a newer version, as after a rollback), nothing is migrated and the script says so.
    pub fn migrate(&self, revision: &str) -> Command {
        const SCRIPT: &str = "if [ -n \"$1\" ] && ! alembic show \"$1\" >/dev/null 2>&1; then \
             echo \"migrations: the database is at revision $1, which this image does not know \
             (a newer version migrated it): skipped\"; else exec alembic upgrade head; fi";
        self.command(["run", "--rm", "--no-deps", "-T", "backend", "sh", "-c", SCRIPT, "migrate", revision])
            .hint("the migrations failed: their output above says why")
    }

    /// Runs one SQL statement in the `db` container as the stack's user on `database` (the
    /// stack's database when `None`), printing the result unaligned. The SQL is an argument of
    /// the shell inside the container, so it needs no quoting; the user and database names come
    /// from the container's own environment.
    pub fn sql(&self, database: Option<&str>, sql: &str) -> Command {
        let target = database.unwrap_or("$POSTGRES_DB");
        let script = format!("psql -X -q -v ON_ERROR_STOP=1 -U \"$POSTGRES_USER\" -d \"{target}\" -tA -c \"$1\"");
        self.command(["exec", "-T", "db", "sh", "-c", &script, "sql", sql])
    }

    /// `pg_dump` of the stack's database to standard output, plain SQL.
    pub fn dump(&self) -> Command {
        self.command([
            "exec",
            "-T",
            "db",
            "sh",
            "-c",
            "pg_dump --no-owner --no-privileges -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\"",
        ])
    }

    /// `psql` reading a plain dump from standard input into database `database` (a name
    /// relative to the stack's: `$POSTGRES_DB` expands inside the container), stopping at the
    /// first error.
    pub fn load(&self, database: &str) -> Command {
        let script = format!(
            "psql -X -q -v ON_ERROR_STOP=1 --single-transaction -U \"$POSTGRES_USER\" -d \"{database}\" >/dev/null"
        );
        self.command(["exec", "-T", "db", "sh", "-c", &script])
    }

    /// The stack's containers, one JSON object per line (or one array, on older compose).
    pub fn ps_json(&self) -> Command {
        self.command(["ps", "--all", "--format", "json"])
    }

    // -----------------------------------------------------------------------------------------
    // Running

    /// A process for `command`, with `.env`'s variables removed from its environment (and then
    /// the command's own variables set).
    pub fn process(&self, command: &Command) -> std::process::Command {
        let mut process = std::process::Command::new(&command.program);
        process.args(&command.args);
        for key in &self.isolated {
            process.env_remove(key);
        }
        for (key, value) in &command.env {
            process.env(key, value);
        }
        process
    }

    /// Starts `command` with its output shown; a secret standard input is written and closed.
    pub fn spawn(&self, command: &Command) -> Result<std::process::Child> {
        let mut process = self.process(command);
        process.stdin(if command.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        // Compose's progress is for people: it goes to standard error, like all our chatter.
        process.stdout(std::io::stderr());
        let mut child = process.spawn().with_context(|| format!("cannot run {}", command.program))?;
        if let (Some(secret), Some(mut stdin)) = (&command.stdin, child.stdin.take()) {
            stdin
                .write_all(secret.expose().as_bytes())
                .with_context(|| format!("cannot write to {}", command.program))?;
        }
        Ok(child)
    }

    /// Runs `command` and returns its standard output, trimmed; standard error is shown only
    /// when it fails (as part of the error).
    pub fn read(&self, command: &Command) -> Result<String> {
        let output = self
            .process(command)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", command.program))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("").trim();
            let hint = if command.hint.is_empty() { String::new() } else { format!(": {}", command.hint) };
            bail!("`{command}` failed ({}): {last}{hint}", output.status);
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// `command` as a duct expression (for pipes), with `.env`'s variables removed from its
    /// environment. Its standard input is not connected: the pipe decides.
    pub fn expression(&self, command: &Command) -> duct::Expression {
        let mut expression = duct::cmd(&command.program, &command.args);
        for key in &self.isolated {
            expression = expression.env_remove(key);
        }
        for (key, value) in &command.env {
            expression = expression.env(key, value);
        }
        expression
    }
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

    fn compose(project: Option<&str>) -> Compose {
        Compose {
            program: "docker".into(),
            dir: "/srv/intric".into(),
            file: "/srv/intric/docker-compose.yml".into(),
            project: project.map(str::to_string),
            isolated: vec!["IMAGE_TAG".into(), "POSTGRES_PASSWORD".into()],
        }
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
        let process = compose(None).process(&pull);
        let envs: Vec<_> = process.get_envs().map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned()))).collect();
        assert!(envs.contains(&("IMAGE_TAG".into(), Some("1.2.3".into()))), "{envs:?}");
        assert!(envs.contains(&("POSTGRES_PASSWORD".into(), None)), "removed: {envs:?}");
    }

    #[test]
    fn sql_and_dumps_name_no_user_password_or_database() {
        let c = compose(None);
        for command in [c.sql(None, "select 1"), c.dump(), c.load("$POSTGRES_DB")] {
            let shown = command.to_string();
            assert!(shown.contains("$POSTGRES_USER") && !shown.contains("PASSWORD"), "{shown}");
        }
        assert_eq!(c.sql(None, "select 'x'").args.last().unwrap(), "select 'x'");
    }

    #[test]
    fn project_names() {
        assert!(is_valid_project_name("intric-deploy_e2e2"));
        assert!(!is_valid_project_name("Intric"));
        assert!(!is_valid_project_name("-x"));
        assert!(!is_valid_project_name(""));
    }
}
