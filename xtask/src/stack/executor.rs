//! Runs the operator tasks' commands against a compose project, recording the docker commands
//! it starts in the deploy lock, so that a successor taking over a stale lock can wait for them.

use anyhow::{Context, Result, bail};

use crate::adapters::compose::Compose;
use crate::plan::Command;
use crate::stack::lock::Lock;

/// Runs actions against a compose project, recording the docker commands it starts in the
/// lock (if any), so that a successor taking over a stale lock can wait for them.
pub struct Executor<'a> {
    pub compose: &'a Compose,
    pub lock: Option<&'a mut Lock>,
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
    fn started(&mut self, pids: Vec<u32>) {
        if let Some(lock) = self.lock.as_deref_mut() {
            lock.set_children(pids);
        }
    }

    /// Runs `command` with its output shown.
    pub fn run(&mut self, command: &Command) -> Result<()> {
        eprintln!("$ {command}");
        let mut child = self.compose.spawn(command)?;
        self.started(vec![child.id()]);
        let status = child.wait();
        self.started(Vec::new());
        let status = status.with_context(|| format!("cannot wait for {}", command.program))?;
        if status.success() {
            return Ok(());
        }
        if command.hint.is_empty() {
            bail!("`{command}` failed ({status})")
        } else {
            bail!("{} ({status})", command.hint)
        }
    }

    /// Runs a duct expression (a pipe), recording its pids.
    pub fn run_expression(&mut self, expression: &duct::Expression) -> Result<()> {
        let handle = expression.start()?;
        self.started(handle.pids());
        let result = handle.wait().map(|_| ());
        self.started(Vec::new());
        Ok(result?)
    }

    pub fn db_state(&self) -> Result<DbState> {
        let compose = self.compose;
        let exists = compose.read(&compose.sql(None, "select to_regclass('public.alembic_version') is not null"))?;
        if exists.trim() != "t" {
            return Ok(DbState::Uninitialized);
        }
        let revision = compose
            .read(&compose.sql(None, "select coalesce(string_agg(version_num, ','), '') from alembic_version"))?;
        Ok(DbState::At(revision.trim().to_string()))
    }

    pub fn migrate(&mut self, planned: &Command) -> Result<()> {
        let revision = match self.db_state()? {
            DbState::Uninitialized => String::new(),
            DbState::At(revision) => revision,
        };
        let mut command = planned.clone();
        if let Some(last) = command.args.last_mut() {
            *last = revision;
        }
        self.run(&command)
    }
}
