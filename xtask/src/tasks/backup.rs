//! `cargo xtask backup | restore`: dumps the stack's database into a verified, gzip'd backup,
//! pruning old ones; replaces the database with a backup (see `stack::database` for how).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::adapters::clock;
use crate::plan::runner::{Processes, Runner};
use crate::plan::{Failure, Plan};
use crate::stack::database::{DEFAULT_KEEP, check_writable, next_path, restore_from, verify};
use crate::stack::executor::Executor;
use crate::stack::history::{Outcome, Record, append_history, record_interrupted};
use crate::stack::lock::{Lock, holder};
use crate::stack::steps::Action;
use crate::stack::{DEFAULT_TIMEOUT, Deployment, LockArgs, Target};

#[derive(Args)]
#[command(after_help = "Examples:
  cargo xtask backup
  cargo xtask backup --dir /srv/intric --out /var/backups/intric --keep 30")]
pub struct BackupArgs {
    #[command(flatten)]
    pub target: Target,
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
  cargo xtask restore /var/backups/intric/intric_20260101T120000Z.sql.gz --dir /srv/intric --yes")]
pub struct RestoreArgs {
    #[command(flatten)]
    pub target: Target,
    /// The backup to restore: a file `cargo xtask backup` wrote.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Confirm that the stack's database is to be replaced by FILE's contents.
    #[arg(long)]
    pub yes: bool,
    /// Seconds to wait for every service to become healthy again.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    #[command(flatten)]
    pub lock: LockArgs,
}

pub fn run_backup(args: BackupArgs) -> Result<()> {
    let runner = Processes::new();
    let deployment = Deployment::open(&args.target, &runner)?;
    let out = args.out.clone().unwrap_or_else(|| deployment.dir.join("backups"));
    check_writable(&out)?;
    let path = next_path(&out, clock::now_unix());
    let keep = usize::try_from(args.keep).unwrap_or(usize::MAX);
    let plan = Plan {
        steps: vec![Action::Backup { path: path.clone() }, Action::PruneBackups { dir: out, keep }],
        recovery: None,
    };
    if args.dry_run {
        print!("{plan}");
        return Ok(());
    }
    let exec = Executor { compose: &deployment.compose, runner: &runner, timeout: DEFAULT_TIMEOUT };
    exec.execute(&plan).map_err(Failure::into_error)?;
    println!("{}", path.display());
    Ok(())
}

pub fn run_restore(args: RestoreArgs) -> Result<()> {
    let runner = Processes::new();
    let deployment = Deployment::open(&args.target, &runner)?;
    if !args.file.exists() {
        bail!(
            "{} does not exist: pass a backup file (`cargo xtask backup` writes them to DIR/backups)",
            args.file.display()
        );
    }
    if !args.yes {
        bail!(
            "restore replaces the whole database of project {} with {}: pass --yes to confirm",
            deployment.compose.project_name(),
            args.file.display()
        );
    }
    verify(&runner, &args.file)?;
    let tag = deployment.current_tag();
    let holder = holder("restore", tag.clone(), None);
    let (lock, stale) = Lock::acquire(&deployment.lock_path(), holder, args.timeout, args.lock)?;
    if let Some(stale) = &stale {
        record_interrupted(&deployment.history_path(), stale)?;
    }
    let started = std::time::Instant::now();
    runner.watch(Some(lock.watcher()));
    let result =
        restore_from(&Executor { compose: &deployment.compose, runner: &runner, timeout: args.timeout }, &args.file);
    runner.watch(None);
    if let Some(tag) = tag {
        append_history(
            &deployment.history_path(),
            &Record {
                time: clock::rfc3339(clock::now_unix()),
                user: crate::stack::lock::current_user(),
                command: "restore".into(),
                from_tag: Some(tag.clone()),
                to_tag: tag,
                result: if result.is_ok() { Outcome::Ok } else { Outcome::Failed },
                seconds: started.elapsed().as_secs(),
                backup: Some(args.file.display().to_string()),
                detail: result.as_ref().err().map(|error| format!("{error:#}")),
            },
        )?;
    }
    result?;
    drop(lock);
    crate::stack::status::print_report(&deployment, &runner);
    println!("restored {}", args.file.display());
    Ok(())
}
