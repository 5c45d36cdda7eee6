//! `cargo xtask backup | restore`: dumps the stack's database into a verified, gzip'd backup,
//! pruning old ones; replaces the database with a backup (see `stack::database` for how), on
//! Docker Swarm when the deploy history says the deployment runs there.
//!
//! Each reads its inputs once (the directory, the deploy history, the backup directory's
//! writability or the backup file's check, the lock's state for restore) and builds one
//! [`StackPlan`](crate::stack::operation::StackPlan), shown by `--dry-run` and run otherwise.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::adapters::clock;
use crate::adapters::swarm::Stack;
use crate::plan::runner::Processes;
use crate::plan::show_or_run;
use crate::stack::database::{DEFAULT_KEEP, check_writable, next_path, verify};
use crate::stack::history::read_history;
use crate::stack::operation::{self, Inputs};
use crate::stack::swarm::SwarmArgs;
use crate::stack::{ChangeArgs, Deployment, DeploymentArgs, lock};

#[derive(Args)]
#[command(after_help = "Examples:
  cargo xtask backup
  cargo xtask backup --dir /srv/intric --out /var/backups/intric --keep 30")]
pub struct BackupArgs {
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// The directory for backups [default: DIR/backups].
    #[arg(long, value_name = "OUT")]
    pub out: Option<PathBuf>,
    /// How many backups to keep in OUT; older ones are removed after the new one is complete.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_KEEP, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: u64,
    /// Print what would happen and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:
  cargo xtask restore docker/backups/intric_20260101T120000Z.sql.gz --yes
  cargo xtask restore docker/backups/intric_20260101T120000Z.sql.gz --dry-run
  cargo xtask restore /var/backups/intric/intric_20260101T120000Z.sql.gz --dir /srv/intric --yes")]
pub struct RestoreArgs {
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// The backup to restore: a file `cargo xtask backup` wrote.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Confirm that the stack's database is to be replaced by FILE's contents (not needed with
    /// --dry-run, which checks FILE all the same).
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub change: ChangeArgs,
}

pub fn run_backup(args: BackupArgs) -> Result<()> {
    let runner = Processes::new();
    let deployment = Deployment::open(&args.deployment, &runner)?;
    let out = args.out.clone().unwrap_or_else(|| deployment.dir.join("backups"));
    check_writable(&out)?;
    let keep = usize::try_from(args.keep).unwrap_or(usize::MAX);
    let stack = recorded_swarm(&deployment)?;
    let plan = operation::backup(&deployment, stack, next_path(&out, clock::now_unix()), keep);
    show_or_run(&plan, args.dry_run, &runner).map(|_| ())
}

pub fn run_restore(args: RestoreArgs) -> Result<()> {
    let runner = Processes::new();
    let deployment = Deployment::open(&args.deployment, &runner)?;
    if !args.file.exists() {
        bail!(
            "{} does not exist: pass a backup file (`cargo xtask backup` writes them to DIR/backups)",
            args.file.display()
        );
    }
    if !args.yes && !args.change.dry_run {
        bail!(
            "restore replaces the whole database of project {} with {}: pass --yes to confirm",
            deployment.compose.project_name(),
            args.file.display()
        );
    }
    verify(&runner, &args.file)?;
    let inputs = Inputs {
        deployment: &deployment,
        lock: lock::inspect(&deployment.lock_path(), args.change.lock)?,
        login: None,
        timeout: args.change.timeout,
        url: deployment.url(),
    };
    let stack = recorded_swarm(&deployment)?;
    let plan = operation::restore(inputs, stack, args.file);
    show_or_run(&plan, args.change.dry_run, &runner).map(|_| ())
}

/// The swarm stack when the deploy history says the deployment runs on one (it says so).
fn recorded_swarm(deployment: &Deployment) -> Result<Option<Stack>> {
    let history = read_history(&deployment.history_path())?;
    SwarmArgs::default().stack(&deployment.compose, &history)
}
