//! `cargo xtask deploy | update | rollback`: bring a deployment directory's compose stack to a
//! version, safely, and keep a record of what was deployed.
//!
//! Each task reads its inputs once (the directory, `.env` and its check, the registry's answer
//! on the target tag, the deploy history, the lock), builds a [`Plan`] of [`Action`]s (pure data:
//! [`plan_deploy`], [`plan_update`]), and runs it; `--dry-run` prints that plan instead.
//!
//! - `deploy`: login → pull → start `db` and `redis` → `db-init` when the database was never initialized
//!   (no `alembic_version` table), else the image's migrations → `up --wait` → status and URL.
//! - `update --tag T`: T must exist for all three images in the registry (cleanup policies
//!   delete tags) before anything happens; then the lock; pull T; back up the database; write
//!   `IMAGE_TAG=T` into `.env`; migrate with T's backend image in a one-off container; `up
//!   --wait`. If a step after the backup fails, `.env` gets the previous tag back and the stack
//!   is started again (and the backup restored with `--restore-on-failure`).
//! - `rollback [--to T]`: an update to T, or to the last tag that was deployed successfully
//!   before the current one, from the history.
//!
//! The history is `DIR/.deploy-history.jsonl`, one JSON object per line, only ever appended.
//! The lock is `DIR/.deploy.lock`, created atomically with its holder in it (pid, user, host,
//! command, since, tags, and the pids of the docker commands it is running). A lock whose
//! holder's process is gone (same host, no `/proc/<pid>`) is stale: it is taken over with a
//! notice, after waiting for docker commands the dead holder left running, so re-running an
//! update that was killed converges. A lock held by a live process refuses, naming it; one
//! from another host, where this tool cannot tell, is broken only with `--break-lock`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use clap::Args;

use crate::adapters::clock;
use crate::plan::Failure;
use crate::plan::runner::{Processes, Runner};
use crate::stack::executor::Executor;
use crate::stack::history::{Outcome, Record, append_history, previous_tag, read_history, record_interrupted};
use crate::stack::lock::{Lock, LockState, current_host, current_user, held_error, holder, holder_running, judge_lock};
use crate::stack::steps::{Action, UpdateInputs, plan_deploy, plan_update};
use crate::stack::{DEFAULT_TIMEOUT, Deployment, LockArgs, Target, database};

#[derive(Args)]
#[command(after_help = "Examples:
  cargo xtask deploy
  cargo xtask deploy --dir /srv/intric --timeout 600
  DOCKER_HOST=ssh://ops@server cargo xtask deploy --dir ./server-config")]
pub struct DeployArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub change: ChangeArgs,
}

/// What deploy, update and rollback share: they change the running stack under the lock.
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

#[derive(Args)]
#[command(after_help = "Examples:
  cargo xtask update --tag 1.4.0
  cargo xtask update --tag 1.4.0 --dir /srv/intric --restore-on-failure
  cargo xtask update --tag 1.4.0 --dry-run")]
pub struct UpdateArgs {
    #[command(flatten)]
    pub target: Target,
    /// The image tag to update to; it must exist in the registry for backend, worker and frontend.
    #[arg(long, value_name = "TAG")]
    pub tag: String,
    #[command(flatten)]
    pub options: UpdateOptions,
}

/// What `update` and `rollback` share: they are the same operation with another target tag.
#[derive(Args)]
pub struct UpdateOptions {
    /// When it fails after the backup, also restore the database from that backup.
    #[arg(long)]
    pub restore_on_failure: bool,
    /// Where the backup taken first goes [default: DIR/backups].
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
    #[command(flatten)]
    pub change: ChangeArgs,
}

#[derive(Args)]
#[command(after_help = "Examples:
  cargo xtask rollback
  cargo xtask rollback --to 1.3.2 --dir /srv/intric")]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: Target,
    /// The tag to go back to [default: the last tag deployed successfully before the current one].
    #[arg(long, value_name = "TAG")]
    pub to: Option<String>,
    #[command(flatten)]
    pub options: UpdateOptions,
}

pub fn run_deploy(args: DeployArgs) -> Result<()> {
    let runner = Processes::new();
    let deployment = Deployment::open_checked(&args.target, &runner)?;
    let tag = deployment.current_tag().context("IMAGE_TAG is not set in .env")?;
    deployment.check_tag_exists(&tag)?;
    let ChangeArgs { timeout, dry_run, lock: lock_args } = args.change;
    let plan = plan_deploy(&deployment.compose, deployment.login()?, timeout);
    if dry_run {
        print!("{plan}");
        return Ok(());
    }
    let history = read_history(&deployment.history_path())?;
    let from_tag = history.iter().rev().find(|record| record.result == Outcome::Ok).map(|record| record.to_tag.clone());
    let (lock, stale) = Lock::acquire(
        &deployment.lock_path(),
        holder("deploy", from_tag.clone(), Some(tag.clone())),
        timeout,
        lock_args,
    )?;
    if let Some(stale) = &stale {
        record_interrupted(&deployment.history_path(), stale)?;
    }
    let started = Instant::now();
    runner.watch(Some(lock.watcher()));
    let result = Executor { compose: &deployment.compose, runner: &runner, timeout }.execute(&plan);
    runner.watch(None);
    let record = |result: Outcome, detail: Option<String>| Record {
        time: clock::rfc3339(clock::now_unix()),
        user: current_user(),
        command: "deploy".into(),
        from_tag: from_tag.clone(),
        to_tag: tag.clone(),
        result,
        seconds: started.elapsed().as_secs(),
        backup: None,
        detail,
    };
    match result {
        Ok(()) => {
            append_history(&deployment.history_path(), &record(Outcome::Ok, None))?;
            drop(lock);
            crate::stack::status::print_report(&deployment, &runner);
            println!("deployed {tag}: {}", deployment.url());
            Ok(())
        }
        Err(Failure::Unchanged(error) | Failure::Recovered(error) | Failure::RecoveryFailed(error, _)) => {
            append_history(&deployment.history_path(), &record(Outcome::Failed, Some(format!("{error:#}"))))?;
            Err(error.context(format!("deploy of {tag} failed")))
        }
    }
}

pub fn run_update(args: UpdateArgs) -> Result<()> {
    let runner = Processes::new();
    let deployment = Deployment::open_checked(&args.target, &runner)?;
    update(&deployment, &runner, "update", &args.tag, args.options)
}

pub fn run_rollback(args: RollbackArgs) -> Result<()> {
    let runner = Processes::new();
    let deployment = Deployment::open_checked(&args.target, &runner)?;
    let to = match args.to {
        Some(to) => to,
        None => {
            let history = read_history(&deployment.history_path())?;
            previous_tag(&history, deployment.current_tag().as_deref()).with_context(|| {
                format!(
                    "no earlier successful deployment in {} to roll back to: pass --to TAG",
                    deployment.history_path().display()
                )
            })?
        }
    };
    update(&deployment, &runner, "rollback", &to, args.options)
}

/// An update of `deployment` to `to_tag` (`command` is `update` or `rollback`).
fn update(
    deployment: &Deployment,
    runner: &Processes,
    command: &str,
    to_tag: &str,
    options: UpdateOptions,
) -> Result<()> {
    let UpdateOptions { restore_on_failure, backup_dir, change: ChangeArgs { timeout, dry_run, lock: lock_args } } =
        options;
    let current = deployment.current_tag().context("IMAGE_TAG is not set in .env")?;
    read_history(&deployment.history_path())?;
    if !dry_run && let Ok(text) = std::fs::read_to_string(deployment.lock_path()) {
        // Refuse a live holder before pulling anything; a stale one is handled by `acquire`.
        if let LockState::Held(other) = judge_lock(&text, &current_host(), holder_running, lock_args) {
            return Err(held_error(&deployment.lock_path(), &other));
        }
    }
    deployment.check_tag_exists(to_tag)?;
    let backup_dir = backup_dir.unwrap_or_else(|| deployment.dir.join("backups"));
    database::check_writable(&backup_dir)?;
    let now = clock::now_unix();
    let inputs = |from_tag: String| UpdateInputs {
        compose: &deployment.compose,
        env_path: deployment.env_path(),
        env: &deployment.env,
        from_tag,
        to_tag: to_tag.to_string(),
        login: None,
        backup_path: database::next_path(&backup_dir, now),
        timeout,
        restore_on_failure,
    };
    if dry_run {
        let plan = plan_update(&UpdateInputs { login: deployment.login()?, ..inputs(current) })?;
        print!("{plan}");
        return Ok(());
    }
    let (mut lock, stale) = Lock::acquire(
        &deployment.lock_path(),
        holder(command, Some(current.clone()), Some(to_tag.to_string())),
        timeout,
        lock_args,
    )?;
    // After an interrupted update `.env` may already name the new tag: the tag to go back to
    // is the one the interrupted run started from.
    let from_tag = match &stale {
        Some(stale) if stale.to_tag.as_deref() == Some(current.as_str()) && stale.from_tag.is_some() => {
            stale.from_tag.clone().unwrap()
        }
        _ => current.clone(),
    };
    if let Some(stale) = &stale {
        record_interrupted(&deployment.history_path(), stale)?;
    }
    lock.holder.from_tag = Some(from_tag.clone());
    lock.set_children(Vec::new());
    if from_tag == to_tag {
        eprintln!("note: {to_tag} is already the deployed tag: updating anyway (pull, migrate, recreate what changed)");
    }
    let plan = plan_update(&UpdateInputs { login: deployment.login()?, ..inputs(from_tag.clone()) })?;
    let backup_path = plan
        .steps
        .iter()
        .find_map(|step| match step {
            Action::Backup { path } => Some(path.clone()),
            _ => None,
        })
        .expect("an update backs up");
    let started = Instant::now();
    runner.watch(Some(lock.watcher()));
    let result = Executor { compose: &deployment.compose, runner, timeout }.execute(&plan);
    runner.watch(None);
    let record = |result: Outcome, backup: Option<&Path>, detail: Option<String>| Record {
        time: clock::rfc3339(clock::now_unix()),
        user: current_user(),
        command: command.to_string(),
        from_tag: Some(from_tag.clone()),
        to_tag: to_tag.to_string(),
        result,
        seconds: started.elapsed().as_secs(),
        backup: backup.map(|path| path.display().to_string()),
        detail,
    };
    let history = deployment.history_path();
    match result {
        Ok(()) => {
            append_history(&history, &record(Outcome::Ok, Some(&backup_path), None))?;
            drop(lock);
            crate::stack::status::print_report(deployment, runner);
            println!("{command} {from_tag} -> {to_tag} done: {} (backup: {})", deployment.url(), backup_path.display());
            Ok(())
        }
        Err(Failure::Unchanged(error)) => {
            append_history(&history, &record(Outcome::Failed, None, Some(format!("{error:#}"))))?;
            Err(error.context(format!("{command} to {to_tag} failed before changing anything")))
        }
        Err(Failure::Recovered(error)) => {
            append_history(&history, &record(Outcome::RolledBack, Some(&backup_path), Some(format!("{error:#}"))))?;
            let database = if restore_on_failure {
                format!("the database was restored from {}", backup_path.display())
            } else {
                format!(
                    "the database was NOT restored; its backup from before the {command} is {} \
                     (`cargo xtask restore {} --yes` restores it)",
                    backup_path.display(),
                    backup_path.display()
                )
            };
            Err(anyhow!(
                "{command} to {to_tag} failed and was rolled back to {from_tag}, which is running again; {database}; \
                 the cause: {error:#}"
            ))
        }
        Err(Failure::RecoveryFailed(error, second)) => {
            append_history(
                &history,
                &record(Outcome::Failed, Some(&backup_path), Some(format!("{error:#}; rollback: {second:#}"))),
            )?;
            Err(anyhow!(
                "{command} to {to_tag} failed ({error:#}), and putting {from_tag} back failed too ({second:#}): \
                 .env names {from_tag}; the backup from before the {command} is {}; \
                 check `docker compose logs` and run `cargo xtask deploy` once the cause is fixed",
                backup_path.display()
            ))
        }
    }
}
