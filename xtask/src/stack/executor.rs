//! Runs the operator tasks' commands against a compose project through the plan's runner,
//! showing their progress ([`StackProgress`]: live lines per service on a terminal, each command
//! and its output in a log); and replaces stateless
//! services without downtime (new containers beside the old ones, `docker inspect` until they
//! are healthy, then `docker stop` and `docker rm` of the old ones).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::adapters::compose::Compose;
use crate::plan::Command;
use crate::plan::runner::{Pipe, Runner};
use crate::stack::migrations;
use crate::stack::progress::{StackProgress, human_bytes};

/// Runs steps against a compose project. The deploy lock watches `runner`, so the docker
/// commands it starts are recorded where a successor taking over a stale lock finds them.
pub struct Executor<'a> {
    pub compose: &'a Compose,
    pub runner: &'a dyn Runner,
    pub timeout: u64,
    pub progress: StackProgress,
}

/// The database's migration state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbState {
    /// No `alembic_version` table: never initialized.
    Uninitialized,
    /// At this revision (empty when the table is empty).
    At(String),
}

impl<'a> Executor<'a> {
    /// An executor whose progress shows on this process's terminal, or as plain lines.
    pub fn new(compose: &'a Compose, runner: &'a dyn Runner, timeout: u64) -> Executor<'a> {
        Executor { compose, runner, timeout, progress: StackProgress::new(compose.project_name()) }
    }
}

impl Executor<'_> {
    /// Runs `command` with its progress shown.
    pub fn run(&self, command: &Command) -> Result<()> {
        self.progress.command(&command.to_string());
        self.runner.run(command, &mut |line| self.progress.output(line))
    }

    /// Runs `pipe` (a database dump or load) with its standard error shown and the bytes it
    /// moves shown as `what` (dumped, loaded), then said in total.
    pub fn pipe(&self, pipe: &Pipe, what: &str) -> Result<()> {
        self.progress.command(&pipe.to_string());
        let total = std::sync::atomic::AtomicU64::new(0);
        self.runner.pipe_counting(pipe, &|bytes| {
            total.store(bytes, std::sync::atomic::Ordering::Relaxed);
            self.progress.bytes(what, bytes);
        })?;
        let total = human_bytes(total.into_inner());
        self.say(&format!("database {what}: {total}"));
        Ok(())
    }

    /// A note of the tool's own, where the progress display leaves room for it.
    pub fn say(&self, message: &str) {
        self.progress.say(message);
    }

    /// Runs `command` and returns its output.
    pub fn read(&self, command: &Command) -> Result<String> {
        self.runner.read(command)
    }

    pub fn db_state(&self) -> Result<DbState> {
        let compose = self.compose;
        let exists = self.read(&compose.sql(None, "select to_regclass('public.alembic_version') is not null"))?;
        if exists.trim() != "t" {
            return Ok(DbState::Uninitialized);
        }
        let revision =
            self.read(&compose.sql(None, "select coalesce(string_agg(version_num, ','), '') from alembic_version"))?;
        Ok(DbState::At(revision.trim().to_string()))
    }

    /// Runs `upgrade` (the image's migrations), unless the database is at a revision the image
    /// does not know: a newer version migrated it (as after a rollback), so there is nothing
    /// this image may do.
    pub fn migrate(&self, upgrade: &Command) -> Result<()> {
        if let DbState::At(revision) = self.db_state()?
            && !revision.is_empty()
            && self.read(&self.compose.knows_revision(&revision)).is_err()
        {
            self.say(&format!(
                "migrations: the database is at revision {revision}, which this image does not know \
                 (a newer version migrated it): skipped"
            ));
            return Ok(());
        }
        self.run(upgrade)
    }

    /// Refuses an update without downtime whose migrations (the files `list` prints) drop or
    /// rename a column or table after the database's revision; a database never initialized
    /// has nothing the old version could miss.
    pub fn check_migrations(&self, list: &Command) -> Result<()> {
        self.check_migrations_at(self.db_state()?, list)
    }

    /// [`Executor::check_migrations`] of a database in `state` (read in the swarm's db task).
    pub fn check_migrations_at(&self, state: DbState, list: &Command) -> Result<()> {
        let DbState::At(revision) = state else {
            return Ok(());
        };
        let printed = self.read(list)?;
        let json = printed.lines().rev().find(|line| line.starts_with('{')).unwrap_or_default();
        let files: BTreeMap<String, String> =
            serde_json::from_str(json).with_context(|| format!("`{list}` printed no JSON object of files"))?;
        let found = migrations::contracting_changes(&files, &revision);
        if found.is_empty() {
            self.say(&format!("migrations: nothing after revision {revision} drops or renames; no downtime needed"));
            return Ok(());
        }
        bail!(
            "the new image's migrations after revision {revision} drop or rename what the running version uses \
             ({}): updating beside it would break it. Run the update with --allow-downtime, or ship the \
             drop or rename in a later release (expand/contract, see the README's Deploying section)",
            found.join("; ")
        )
    }

    /// Replaces the containers of `services` without downtime: one new container of each
    /// beside the running ones (from the configuration `.env` names now), and once every new
    /// one is healthy (the switch: Docker's DNS already names them, and the proxies ask it
    /// every 2 s), `drain` seconds for requests to the old ones to finish, then the old ones
    /// stopped (SIGTERM: they finish what they serve, within `drain` s) and removed. If a new
    /// container never gets healthy, the new ones are stopped and removed and the old ones,
    /// which never stopped serving, stay: that is the rollback.
    pub fn replace(&self, services: &[&str], drain: u64) -> Result<()> {
        let compose = self.compose;
        let (mut old, mut new) = (Vec::new(), Vec::new());
        let mut started = Ok(());
        for service in services {
            let before = ids(&self.read(&compose.container_ids(service))?);
            // One more than there are: after an interrupted update there may be two already.
            started = self.run(&compose.start_beside(service, before.len() + 1));
            let after = ids(&self.read(&compose.container_ids(service))?);
            new.extend(after.into_iter().filter(|id| !before.contains(id)));
            old.extend(before);
            if started.is_err() {
                break;
            }
        }
        if let Err(error) = started.and_then(|()| self.wait_healthy(&new)) {
            if !new.is_empty() {
                self.say("the new containers are not healthy: removing them; the old ones keep serving");
                self.run(&compose.stop_containers(&new, drain))?;
                self.run(&compose.remove_containers(&new))?;
            }
            return Err(error);
        }
        if !old.is_empty() {
            self.say(&format!("the new containers are healthy and serve; the old ones stop in {drain} s"));
            std::thread::sleep(Duration::from_secs(drain));
            self.run(&compose.stop_containers(&old, drain))?;
            self.run(&compose.remove_containers(&old))?;
        }
        Ok(())
    }

    /// Waits until every container of `ids` runs and is healthy (or has no healthcheck), for
    /// at most the timeout; one that is unhealthy, stopped or was restarted fails at once.
    fn wait_healthy(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            bail!("compose started no new container");
        }
        let deadline = Instant::now() + Duration::from_secs(self.timeout);
        loop {
            let states = self.read(&self.compose.container_states(ids))?;
            let mut waiting = Vec::new();
            for line in states.lines().filter(|line| !line.trim().is_empty()) {
                let words: Vec<&str> = line.split_whitespace().collect();
                let [name, state, health, restarts] = words[..] else {
                    bail!("`docker inspect` printed {line:?}, not name, state, health and restarts");
                };
                self.progress.health(name, state, health);
                let name = name.trim_start_matches('/');
                match (state, health) {
                    ("running", "healthy" | "none") if restarts == "0" => {}
                    (_, "unhealthy") => bail!("the new container {name} is unhealthy"),
                    _ if restarts != "0" => bail!("the new container {name} exited and was restarted ({restarts}x)"),
                    ("exited" | "dead", _) => bail!("the new container {name} exited"),
                    _ => waiting.push(format!("{name} ({state}, {health})")),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the new containers were not healthy within {} s: {}", self.timeout, waiting.join(", "));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The container IDs in `docker compose ps --quiet` output.
fn ids(output: &str) -> Vec<String> {
    output.lines().map(str::trim).filter(|id| !id.is_empty()).map(str::to_string).collect()
}
