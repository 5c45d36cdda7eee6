//! Runs the operator tasks' commands against a compose project through the plan's runner,
//! showing each command before it runs and its output as it comes.

use anyhow::Result;

use crate::adapters::compose::Compose;
use crate::plan::Command;
use crate::plan::runner::{Pipe, Runner};

/// Runs steps against a compose project. The deploy lock watches `runner`, so the docker
/// commands it starts are recorded where a successor taking over a stale lock finds them.
pub struct Executor<'a> {
    pub compose: &'a Compose,
    pub runner: &'a dyn Runner,
    pub timeout: u64,
}

/// The database's migration state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbState {
    /// No `alembic_version` table: never initialized.
    Uninitialized,
    /// At this revision (empty when the table is empty).
    At(String),
}

impl Executor<'_> {
    /// Runs `command` with its output shown.
    pub fn run(&self, command: &Command) -> Result<()> {
        eprintln!("$ {command}");
        self.runner.run(command, &mut |line| eprintln!("{line}"))
    }

    /// Runs `pipe` (a database dump or load) with its standard error shown.
    pub fn pipe(&self, pipe: &Pipe) -> Result<()> {
        eprintln!("$ {pipe}");
        self.runner.pipe(pipe)
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
            eprintln!(
                "migrations: the database is at revision {revision}, which this image does not know \
                 (a newer version migrated it): skipped"
            );
            return Ok(());
        }
        self.run(upgrade)
    }
}
