//! `cargo xtask deploy | update | rollback`: bring a deployment directory's compose stack to a
//! version, safely, and keep a record of what was deployed.
//!
//! Each task reads its inputs once (the directory, `.env` and its check, the deploy history,
//! the lock's state, the registry's answer on the target tag), builds one
//! [`StackPlan`](crate::stack::operation::StackPlan) (pure data, `stack::operation`) and runs
//! it through [`show_or_run`]; `--dry-run` prints that same plan instead.
//!
//! - `deploy`: login → pull → start `db` and `redis` → `db-init` when the database was never initialized
//!   (no `alembic_version` table), else the image's migrations → `up --wait` → status and URL.
//! - `update --tag T`: T must exist for all three images in the registry (cleanup policies
//!   delete tags) before anything happens; then the lock; pull T; refuse when T's migrations
//!   drop or rename something (`stack::migrations`); back up the database; write `IMAGE_TAG=T`
//!   into `.env`; migrate with T's backend image in a one-off container while the old version
//!   serves; start new backend, worker and frontend containers beside the old ones, wait until
//!   they are healthy, drain (`--drain`) and remove the old ones; `up --wait` for the rest. If a
//!   step after the backup fails, `.env` gets the previous tag back and the stack is started
//!   again (new containers that never got healthy are removed, the old ones never stopped; the
//!   backup is restored with `--restore-on-failure`). `--allow-downtime` skips the migration
//!   check and recreates the containers in place instead (`up --wait`).
//! - `rollback [--to T]`: an update to T, or to the last tag that was deployed successfully
//!   before the current one, from the history.
//! - `--swarm` (all three; recorded in the history, so later runs on the directory need not
//!   repeat it): the same stack on Docker Swarm, from a stack file made of compose's own
//!   resolution of the compose file (`stack::swarm`): deploy runs db and redis, db-init once,
//!   then the rest with `docker stack deploy`; update checks, backs up, migrates and lets
//!   swarm replace each task start-first, waiting until it completes or swarm rolls it back
//!   (then the old tag's stack files are deployed again, and with `--restore-on-failure` the
//!   backup is restored with backend and worker scaled to 0 meanwhile).
//!   `deploy --compose` is the way back, once the swarm stack is removed: the history then
//!   records compose mode again.
//!
//! The history is `DIR/.deploy-history.jsonl`, one JSON object per line, only ever appended.
//! The lock is `DIR/.deploy.lock`, created atomically with its holder in it (pid, user, host,
//! command, since, tags, and the pids of the docker commands it is running). A lock whose
//! holder's process is gone (same host, no `/proc/<pid>`) is stale: the plan says it takes it
//! over (after the docker commands the dead holder left running ended) and that an update goes
//! back to the tag the interrupted one started from, so re-running an update that was killed
//! converges. A lock held by a live process refuses while the inputs are read, naming it; one
//! from another host, where this tool cannot tell, is broken only with `--break-lock`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::adapters::clock;
use crate::adapters::swarm::Stack;
use crate::plan::runner::{Processes, Runner};
use crate::plan::show_or_run;
use crate::stack::history::{Outcome, Record, previous_tag, read_history};
use crate::stack::operation::{self, Inputs};
use crate::stack::swarm::{SwarmArgs, resolved_config, translate};
use crate::stack::{ChangeArgs, Deployment, DeploymentArgs, database, lock};

#[derive(Args)]
#[command(after_help = "Examples:
  cargo xtask deploy
  cargo xtask deploy --dir /srv/intric --timeout 600
  cargo xtask deploy --swarm --replicas backend=2
  docker stack rm intric && cargo xtask deploy --compose
  DOCKER_HOST=ssh://ops@server cargo xtask deploy --dir ./server-config")]
pub struct DeployArgs {
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    #[command(flatten)]
    pub change: ChangeArgs,
    #[command(flatten)]
    pub swarm: SwarmArgs,
    /// Deploy with Docker Compose where the history says the stack runs on Docker Swarm: the
    /// way back. Refuses while the swarm stack has services or containers on this engine
    /// (`docker stack rm NAME` first); its volumes stay, and compose uses them (same names).
    #[arg(long, conflicts_with_all = ["swarm", "replicas"])]
    pub compose: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:
  cargo xtask update --tag 1.4.0
  cargo xtask update --tag 1.4.0 --dir /srv/intric --restore-on-failure
  cargo xtask update --tag 1.4.0 --dry-run
  cargo xtask update --tag 1.4.0 --swarm")]
pub struct UpdateArgs {
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// The image tag to update to; it must exist in the registry for backend, worker and frontend.
    #[arg(long, value_name = "TAG")]
    pub tag: String,
    #[command(flatten)]
    pub options: UpdateOptions,
}

// What `update` and `rollback` share: they are the same operation with another target tag.
#[derive(Args)]
pub struct UpdateOptions {
    /// When it fails after the backup, also restore the database from that backup.
    #[arg(long)]
    pub restore_on_failure: bool,
    /// Where the backup taken first goes [default: DIR/backups].
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Recreate the containers in place (a short outage) instead of replacing them beside the
    /// running ones: needed when a migration drops or renames what the running version uses.
    #[arg(long)]
    pub allow_downtime: bool,
    /// Seconds the old containers keep serving once the new ones are healthy, and then have to
    /// finish what they serve: longer than the longest request.
    #[arg(long, value_name = "SECONDS", default_value_t = 3)]
    pub drain: u64,
    #[command(flatten)]
    pub change: ChangeArgs,
    #[command(flatten)]
    pub swarm: SwarmArgs,
}

#[derive(Args)]
#[command(after_help = "Examples:
  cargo xtask rollback
  cargo xtask rollback --to 1.3.2 --dir /srv/intric")]
pub struct RollbackArgs {
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// The tag to go back to [default: the last tag deployed successfully before the current one].
    #[arg(long, value_name = "TAG")]
    pub to: Option<String>,
    #[command(flatten)]
    pub options: UpdateOptions,
}

/// What deploy, update and rollback read first, the same way: the lock's state (a live holder
/// refuses here, before the registry is asked anything) and the registry login.
fn change_inputs<'a>(deployment: &'a Deployment, change: ChangeArgs) -> Result<Inputs<'a>> {
    Ok(Inputs {
        deployment,
        lock: lock::inspect(&deployment.lock_path(), change.lock)?,
        login: deployment.login()?,
        timeout: change.timeout,
        url: deployment.url(),
    })
}

pub fn run_deploy(args: DeployArgs) -> Result<()> {
    let runner = Processes::new();
    let deployment = Deployment::open_checked(&args.deployment, &runner)?;
    let tag = deployment.current_tag().context("IMAGE_TAG is not set in .env")?;
    let history = read_history(&deployment.history_path())?;
    let from_tag = history.iter().rev().find(|record| record.result == Outcome::Ok).map(|record| record.to_tag.clone());
    let stack = if args.compose {
        refuse_swarm_stack(&deployment, &runner)?;
        None
    } else {
        args.swarm.stack(&deployment.compose, &history)?
    };
    let inputs = change_inputs(&deployment, args.change)?;
    deployment.check_tag_exists(&tag)?;
    let plan = match stack {
        None => operation::deploy(inputs, from_tag, tag),
        Some(stack) => {
            refuse_running_compose_stack(&deployment, &runner)?;
            let replicas = args.swarm.replicas(&stack, &runner);
            let config = runner.read(&resolved_config(&deployment.compose, None))?;
            let files = translate(&config, &deployment.dir, &stack, &replicas)?;
            operation::swarm_deploy(inputs, stack, &files, from_tag, tag)
        }
    };
    show_or_run(&plan, args.change.dry_run, &runner).map(|_| ())
}

/// Refuses `--swarm` while the compose project of the directory has containers: both would
/// use the same volumes (the stack names them as compose does), and one database at a time.
fn refuse_running_compose_stack(deployment: &Deployment, runner: &Processes) -> Result<()> {
    let compose = &deployment.compose;
    let containers = runner.read(&compose.containers_of(compose.project_name()))?;
    if !containers.trim().is_empty() {
        anyhow::bail!(
            "compose project {} in {} has {} container(s): stop it first (`docker compose down` keeps the volumes, \
             which the swarm stack then uses)",
            compose.project_name(),
            deployment.dir.display(),
            containers.lines().count()
        );
    }
    Ok(())
}

/// Refuses `--compose` while the swarm stack of the directory has services (swarm would start
/// their tasks again) or containers on this engine (a db still stopping holds the volume that
/// compose's db would open too).
fn refuse_swarm_stack(deployment: &Deployment, runner: &Processes) -> Result<()> {
    let stack = Stack::of(&deployment.compose);
    // An engine that is no swarm manager has no services to list (and says so): that is an
    // answer too, and its containers are counted below all the same.
    let services = runner.read(&stack.services_json()).unwrap_or_default();
    let services = services.lines().filter(|line| !line.trim().is_empty()).count();
    let containers = runner.read(&stack.containers())?;
    let containers = containers.lines().filter(|line| !line.trim().is_empty()).count();
    if services > 0 || containers > 0 {
        anyhow::bail!(
            "swarm stack {} still has {services} service(s) and {containers} container(s) on this engine: remove it \
             first (`docker stack rm {}` keeps the volumes, which compose then uses) and run deploy --compose again \
             once `docker ps --all --filter label=com.docker.stack.namespace={}` lists nothing",
            stack.name,
            stack.name,
            stack.name
        );
    }
    Ok(())
}

pub fn run_update(args: UpdateArgs) -> Result<()> {
    let runner = Processes::new();
    let deployment = Deployment::open_checked(&args.deployment, &runner)?;
    let history = read_history(&deployment.history_path())?;
    update(&deployment, &history, &runner, "update", &args.tag, args.options)
}

pub fn run_rollback(args: RollbackArgs) -> Result<()> {
    let runner = Processes::new();
    let deployment = Deployment::open_checked(&args.deployment, &runner)?;
    let history = read_history(&deployment.history_path())?;
    let to = match args.to {
        Some(to) => to,
        None => previous_tag(&history, deployment.current_tag().as_deref()).with_context(|| {
            format!(
                "no earlier successful deployment in {} to roll back to: pass --to TAG",
                deployment.history_path().display()
            )
        })?,
    };
    update(&deployment, &history, &runner, "rollback", &to, args.options)
}

/// An update of `deployment` to `to_tag` (`command` is `update` or `rollback`): its inputs
/// read in the order that refuses soonest, then its one plan, shown or run.
fn update(
    deployment: &Deployment,
    history: &[Record],
    runner: &Processes,
    command: &'static str,
    to_tag: &str,
    options: UpdateOptions,
) -> Result<()> {
    let UpdateOptions { restore_on_failure, backup_dir, allow_downtime, drain, change, swarm } = options;
    let current = deployment.current_tag().context("IMAGE_TAG is not set in .env")?;
    let stack = swarm.stack(&deployment.compose, history)?;
    let inputs = change_inputs(deployment, change)?;
    deployment.check_tag_exists(to_tag)?;
    let backup_dir = backup_dir.unwrap_or_else(|| deployment.dir.join("backups"));
    database::check_writable(&backup_dir)?;
    let backup =
        operation::UpdateBackup { path: database::next_path(&backup_dir, clock::now_unix()), restore_on_failure };
    let plan = match stack {
        None => {
            let switch = operation::Switch { allow_downtime, drain };
            operation::update(inputs, command, &current, to_tag, backup, switch)?
        }
        Some(stack) => {
            let replicas = swarm.replicas(&stack, runner);
            let from_tag = operation::resume_from(&current, &inputs.lock);
            let files = |tag: &str| -> Result<_> {
                let config = runner.read(&resolved_config(&deployment.compose, Some(tag)))?;
                translate(&config, &deployment.dir, &stack, &replicas)
            };
            let (from, to) = (files(&from_tag)?, files(to_tag)?);
            operation::swarm_update(inputs, stack, command, &current, (to_tag, &from, &to), backup, allow_downtime)?
        }
    };
    show_or_run(&plan, change.dry_run, runner).map(|_| ())
}
