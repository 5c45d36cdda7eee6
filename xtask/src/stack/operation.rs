//! The operator tasks' plans, whole: `deploy`, `update` (and `rollback`, an update to an
//! earlier tag), `backup` and `restore` are each one [`StackPlan`], built once from inputs read
//! once (the deployment, how the deploy lock stands, the history, the registry login), shown by
//! `--dry-run` and run by [`TaskPlan::execute`] exactly as shown.
//!
//! Running one: take the deploy lock as the plan found it (free, or a stale lock taken over
//! and its holder's run recorded in the history as interrupted); run the steps (and the
//! recovery, when a step after the point of no return fails) with the lock recording the docker
//! commands running; append the outcome to the history; release the lock; show the status
//! report and one last line. `backup` takes no lock and records nothing: it changes no service.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Result, anyhow};

use crate::adapters::clock;
use crate::adapters::compose::Compose;
use crate::adapters::swarm::Stack;
use crate::plan::runner::Runner;
use crate::plan::{Command, Failure, Plan, TaskPlan};
use crate::stack::Deployment;
use crate::stack::executor::Executor;
use crate::stack::history::{Outcome, Record, append_history, record_interrupted};
use crate::stack::lock::{Found, Holder, Lock, holder};
use crate::stack::status::print_report;
use crate::stack::steps::{
    StackStep, SwarmUpdateInputs, UpdateInputs, plan_deploy, plan_swarm_deploy, plan_swarm_update, plan_update,
};
use crate::stack::swarm::{SwarmAction, SwarmFiles, SwarmStep, print_swarm_report};

/// What an operator task does, with what it reports and records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Deploy {
        /// The tag of the last successful change in the history, if any.
        from_tag: Option<String>,
        tag: String,
    },
    Update {
        /// `update` or `rollback`.
        command: &'static str,
        from_tag: String,
        to_tag: String,
        /// The backup taken before the switch.
        backup: PathBuf,
        restore_on_failure: bool,
    },
    Backup {
        path: PathBuf,
    },
    Restore {
        file: PathBuf,
        /// `.env`'s `IMAGE_TAG`; without one, nothing goes into the history (it keys on tags).
        tag: Option<String>,
    },
}

/// Taking the deploy lock, as the plan found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockStep {
    pub path: PathBuf,
    pub found: Found,
    /// This process, as the lock file will name it.
    pub holder: Holder,
}

/// One operator task, whole: see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackPlan {
    pub operation: Operation,
    pub compose: Compose,
    pub timeout: u64,
    /// The deploy lock, for every task but `backup`.
    pub lock: Option<LockStep>,
    pub steps: Plan<StackStep>,
    /// The deploy history, `DIR/.deploy-history.jsonl`.
    pub history: PathBuf,
    /// Where the frontend answers, for the last line.
    pub url: String,
    /// Said before anything runs.
    pub notes: Vec<String>,
    /// The swarm stack, when the deployment runs on Docker Swarm (`--swarm`): the history
    /// records the mode, and the status shown at the end is the swarm's.
    pub swarm: Option<Stack>,
}

/// What every plan that changes the stack is made from, read once by its task.
pub struct Inputs<'a> {
    pub deployment: &'a Deployment,
    /// How the deploy lock stands.
    pub lock: Found,
    /// The `docker login` to run before pulling, if any.
    pub login: Option<Command>,
    pub timeout: u64,
    /// Where the frontend answers.
    pub url: String,
}

impl Inputs<'_> {
    fn lock_step(&self, holder: Holder) -> Option<LockStep> {
        Some(LockStep { path: self.deployment.lock_path(), found: self.lock.clone(), holder })
    }

    fn plan(&self, operation: Operation, lock: Option<LockStep>, steps: Plan<StackStep>) -> StackPlan {
        StackPlan {
            operation,
            compose: self.deployment.compose.clone(),
            timeout: self.timeout,
            lock,
            steps,
            history: self.deployment.history_path(),
            url: self.url.clone(),
            notes: Vec::new(),
            swarm: None,
        }
    }
}

/// The tag an update of a deployment at `current` goes back to when it fails. After an
/// interrupted update (its stale lock is taken over) `.env` may already name the tag it was
/// going to; then the tag to go back to is the one that run started from.
pub fn resume_from(current: &str, lock: &Found) -> String {
    match lock.stale() {
        Some(Holder { to_tag: Some(to), from_tag: Some(from), .. }) if to == current => from.clone(),
        _ => current.to_string(),
    }
}

/// `deploy`: the tag `.env` names; `from_tag` is the history's last good one.
pub fn deploy(inputs: Inputs, from_tag: Option<String>, tag: String) -> StackPlan {
    let steps = plan_deploy(&inputs.deployment.compose, inputs.login.clone(), inputs.timeout);
    let lock = inputs.lock_step(holder("deploy", from_tag.clone(), Some(tag.clone())));
    inputs.plan(Operation::Deploy { from_tag, tag }, lock, steps)
}

/// How an update switches the containers to the new version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    /// Recreate them in place (a short outage) instead of starting new ones beside them.
    pub allow_downtime: bool,
    /// Seconds the old containers keep serving once the new ones are healthy.
    pub drain: u64,
}

/// The backup an update takes before it switches, and whether a failure after that puts the
/// database back from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateBackup {
    pub path: PathBuf,
    pub restore_on_failure: bool,
}

/// `update` or `rollback` (`command`) from `.env`'s `current` tag to `to_tag`, backing up to
/// `backup` first.
pub fn update(
    inputs: Inputs,
    command: &'static str,
    current: &str,
    to_tag: &str,
    UpdateBackup { path: backup, restore_on_failure }: UpdateBackup,
    switch: Switch,
) -> Result<StackPlan> {
    let from_tag = resume_from(current, &inputs.lock);
    let steps = plan_update(&UpdateInputs {
        compose: &inputs.deployment.compose,
        env_path: inputs.deployment.env_path(),
        env: &inputs.deployment.env,
        from_tag: from_tag.clone(),
        to_tag: to_tag.to_string(),
        login: inputs.login.clone(),
        backup_path: backup.clone(),
        timeout: inputs.timeout,
        restore_on_failure,
        allow_downtime: switch.allow_downtime,
        drain: switch.drain,
    })?;
    let lock = inputs.lock_step(holder(command, Some(from_tag.clone()), Some(to_tag.to_string())));
    let mut plan = inputs.plan(
        Operation::Update {
            command,
            from_tag: from_tag.clone(),
            to_tag: to_tag.to_string(),
            backup,
            restore_on_failure,
        },
        lock,
        steps,
    );
    if from_tag == to_tag {
        let containers = if switch.allow_downtime { "recreate what changed" } else { "replace the containers" };
        plan.notes
            .push(format!("note: {to_tag} is already the deployed tag: updating anyway (pull, migrate, {containers})"));
    }
    Ok(plan)
}

/// `deploy --swarm` of `files` (the stack files of `.env`'s tag) as `stack`.
pub fn swarm_deploy(
    inputs: Inputs,
    stack: Stack,
    files: &SwarmFiles,
    from_tag: Option<String>,
    tag: String,
) -> StackPlan {
    let steps = plan_swarm_deploy(&stack, files, inputs.login.clone(), inputs.timeout);
    let lock = inputs.lock_step(holder("deploy", from_tag.clone(), Some(tag.clone())));
    let mut plan = inputs.plan(Operation::Deploy { from_tag, tag }, lock, steps);
    plan.notes.extend(files.notes.iter().cloned());
    plan.swarm = Some(stack);
    plan
}

/// `update --swarm` or `rollback --swarm` (`command`) from `.env`'s `current` tag (stack files
/// `from`) to `to_tag` (stack files `to`), backing up first.
pub fn swarm_update(
    inputs: Inputs,
    stack: Stack,
    command: &'static str,
    current: &str,
    (to_tag, from, to): (&str, &SwarmFiles, &SwarmFiles),
    UpdateBackup { path: backup, restore_on_failure }: UpdateBackup,
    allow_downtime: bool,
) -> Result<StackPlan> {
    let from_tag = resume_from(current, &inputs.lock);
    let steps = plan_swarm_update(&SwarmUpdateInputs {
        stack: &stack,
        env_path: inputs.deployment.env_path(),
        env: &inputs.deployment.env,
        from_tag: from_tag.clone(),
        to_tag: to_tag.to_string(),
        from,
        to,
        login: inputs.login.clone(),
        backup_path: backup.clone(),
        timeout: inputs.timeout,
        restore_on_failure,
        allow_downtime,
    })?;
    let lock = inputs.lock_step(holder(command, Some(from_tag.clone()), Some(to_tag.to_string())));
    let operation = Operation::Update { command, from_tag, to_tag: to_tag.to_string(), backup, restore_on_failure };
    let mut plan = inputs.plan(operation, lock, steps);
    plan.notes.extend(to.notes.iter().cloned());
    plan.swarm = Some(stack);
    Ok(plan)
}

/// `restore` of the (verified) backup `file`, on the swarm `stack` when the deployment runs on one.
pub fn restore(inputs: Inputs, stack: Option<Stack>, file: PathBuf) -> StackPlan {
    let tag = inputs.deployment.current_tag();
    let step = match &stack {
        Some(stack) => swarm_step(stack, SwarmAction::Restore { path: file.clone() }),
        None => StackStep::Restore { path: file.clone() },
    };
    let lock = inputs.lock_step(holder("restore", tag.clone(), None));
    let mut plan = inputs.plan(Operation::Restore { file, tag }, lock, Plan { steps: vec![step], recovery: None });
    plan.swarm = stack;
    plan
}

/// `backup` to `path`, then pruning its directory to the newest `keep`; on the swarm `stack`
/// when the deployment runs on one.
pub fn backup(deployment: &Deployment, stack: Option<Stack>, path: PathBuf, keep: usize) -> StackPlan {
    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
    let dump = match &stack {
        Some(stack) => swarm_step(stack, SwarmAction::Backup { path: path.clone() }),
        None => StackStep::Backup { path: path.clone() },
    };
    let steps = Plan { steps: vec![dump, StackStep::PruneBackups { dir, keep }], recovery: None };
    StackPlan {
        operation: Operation::Backup { path },
        compose: deployment.compose.clone(),
        timeout: crate::stack::DEFAULT_TIMEOUT,
        lock: None,
        steps,
        history: deployment.history_path(),
        url: String::new(),
        notes: Vec::new(),
        swarm: stack,
    }
}

fn swarm_step(stack: &Stack, action: SwarmAction) -> StackStep {
    StackStep::Swarm(SwarmStep { stack: stack.clone(), action })
}

impl Operation {
    /// The history record of how it ended (`failure` is `None` when it succeeded), for the
    /// tasks that keep one.
    fn record(&self, failure: Option<&Failure>, started: i64) -> Option<Record> {
        let result = match failure {
            None => Outcome::Ok,
            Some(Failure::Recovered(_)) => Outcome::RolledBack,
            Some(Failure::Unchanged(_) | Failure::RecoveryFailed(..)) => Outcome::Failed,
        };
        let detail = failure.map(|failure| match failure {
            Failure::Unchanged(error) | Failure::Recovered(error) => format!("{error:#}"),
            Failure::RecoveryFailed(error, second) => format!("{error:#}; rollback: {second:#}"),
        });
        match self {
            Operation::Deploy { from_tag, tag } => {
                Some(Record::new("deploy", from_tag.clone(), tag.clone(), result, started, None, detail))
            }
            Operation::Update { command, from_tag, to_tag, backup, .. } => {
                // A failure before the switch changed nothing, and the backup is not a way back.
                let backup = (!matches!(failure, Some(Failure::Unchanged(_)))).then_some(backup.as_path());
                Some(Record::new(command, Some(from_tag.clone()), to_tag.clone(), result, started, backup, detail))
            }
            Operation::Backup { .. } => None,
            Operation::Restore { file, tag } => {
                let tag = tag.clone()?;
                Some(Record::new("restore", Some(tag.clone()), tag, result, started, Some(file), detail))
            }
        }
    }

    /// The last line when it succeeded.
    fn done(&self, url: &str) -> String {
        match self {
            Operation::Deploy { tag, .. } => format!("deployed {tag}: {url}"),
            Operation::Update { command, from_tag, to_tag, backup, .. } => {
                format!("{command} {from_tag} -> {to_tag} done: {url} (backup: {})", backup.display())
            }
            Operation::Backup { path } => path.display().to_string(),
            Operation::Restore { file, .. } => format!("restored {}", file.display()),
        }
    }

    /// The error when it failed: what happened, and what state the stack is in.
    fn failed(&self, failure: Failure, swarm: Option<&Stack>) -> anyhow::Error {
        match self {
            Operation::Deploy { tag, .. } => failure.into_error().context(format!("deploy of {tag} failed")),
            Operation::Update { command, from_tag, to_tag, backup, restore_on_failure } => update_failed(
                failure,
                (command, from_tag, to_tag),
                &backup.display().to_string(),
                *restore_on_failure,
                swarm,
            ),
            Operation::Backup { .. } | Operation::Restore { .. } => failure.into_error(),
        }
    }
}

/// How an update (or rollback) from `from_tag` to `to_tag` that backed up to `backup` failed,
/// and what the operator has now.
fn update_failed(
    failure: Failure,
    (command, from_tag, to_tag): (&str, &str, &str),
    backup: &str,
    restore_on_failure: bool,
    swarm: Option<&Stack>,
) -> anyhow::Error {
    // Swarm's tasks say what happened where compose has its logs.
    let restore = format!(" (`cargo xtask restore {backup} --yes` restores it)");
    let logs = match swarm {
        None => "`docker compose logs`".to_string(),
        Some(stack) => format!("`docker stack ps {}`", stack.name),
    };
    match failure {
        Failure::Unchanged(error) => error.context(format!("{command} to {to_tag} failed before changing anything")),
        Failure::Recovered(error) => {
            let database = if restore_on_failure {
                format!("the database was restored from {backup}")
            } else {
                format!("the database was NOT restored; its backup from before the {command} is {backup}{restore}")
            };
            anyhow!(
                "{command} to {to_tag} failed and was rolled back to {from_tag}, which is running again; \
                 {database}; the cause: {error:#}"
            )
        }
        Failure::RecoveryFailed(error, second) => anyhow!(
            "{command} to {to_tag} failed ({error:#}), and putting {from_tag} back failed too ({second:#}): \
             .env names {from_tag}; the backup from before the {command} is {backup}; \
             check {logs} and run `cargo xtask deploy` once the cause is fixed"
        ),
    }
}

impl fmt::Display for StackPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for note in &self.notes {
            writeln!(f, "{note}")?;
        }
        if let Some(LockStep { path, found, .. }) = &self.lock {
            writeln!(f, "first: {}", found.taking(path))?;
            if let Some(stale) = found.stale().filter(|stale| stale.to_tag.is_some()) {
                writeln!(f, "       and record its {} as interrupted in {}", stale.command, self.history.display())?;
            }
            if let (Some(stale), Operation::Update { from_tag, .. }) = (found.stale(), &self.operation)
                && stale.from_tag.as_ref() == Some(from_tag)
            {
                writeln!(f, "       its {} started from {from_tag}: the tag to go back to", stale.command)?;
            }
        }
        write!(f, "{}", self.steps)?;
        let finish = match &self.operation {
            Operation::Backup { .. } => "then: print the backup's path".to_string(),
            operation => {
                let record = match operation {
                    Operation::Restore { tag: None, .. } => String::new(),
                    _ => format!("append the outcome to {}; ", self.history.display()),
                };
                format!(
                    "then: {record}release the lock; when it succeeded, show the status of project {}",
                    self.compose.project_name()
                )
            }
        };
        writeln!(f, "{finish}")
    }
}

impl TaskPlan for StackPlan {
    type Output = ();

    fn execute(&self, runner: &dyn Runner) -> Result<()> {
        for note in &self.notes {
            eprintln!("{note}");
        }
        let lock = match &self.lock {
            Some(LockStep { path, found, holder }) => {
                let lock = Lock::take(path, holder.clone(), found, self.timeout)?;
                if let Some(stale) = found.stale() {
                    record_interrupted(&self.history, stale)?;
                }
                Some(lock)
            }
            None => None,
        };
        let started = clock::now_unix();
        if let Some(lock) = &lock {
            runner.watch(Some(lock.watcher()));
        }
        let result = Executor::new(&self.compose, runner, self.timeout).execute(&self.steps);
        runner.watch(None);
        if let Some(mut record) = self.operation.record(result.as_ref().err(), started) {
            record.mode = self.swarm.as_ref().map(|_| "swarm".to_string());
            append_history(&self.history, &record)?;
        }
        match result {
            Ok(()) => {
                drop(lock);
                // A backup takes no lock and changes nothing to report.
                match (&self.swarm, self.lock.is_some()) {
                    (Some(stack), true) => print_swarm_report(stack, runner),
                    (None, true) => print_report(&self.compose, runner),
                    (_, false) => {}
                }
                println!("{}", self.operation.done(&self.url));
                Ok(())
            }
            Err(failure) => Err(self.operation.failed(failure, self.swarm.as_ref())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::adapters::compose::{DUMP_COMPLETE, Database, STATELESS};
    use crate::adapters::dotenv::DotEnv;
    use crate::plan::runner::Recording;
    use crate::stack::history::read_history;
    use crate::stack::lock::{LockArgs, current_host, inspect};

    const ZERO_DOWNTIME: Switch = Switch { allow_downtime: false, drain: 0 };

    const ENV: &str = "IMAGE_TAG=1.0.0\nPOSTGRES_PASSWORD=canary-pw-0123456789\n";

    /// A deployment in `dir` whose `.env` names `tag`, written to disk as a task finds it.
    fn deployment(dir: &Path, tag: &str) -> Deployment {
        let mut env = DotEnv::parse(&dir.join(".env"), ENV).unwrap();
        env.set("IMAGE_TAG", tag).unwrap();
        std::fs::write(dir.join(".env"), env.render()).unwrap();
        let compose = Compose {
            program: "docker".into(),
            dir: dir.to_path_buf(),
            file: dir.join("docker-compose.yml"),
            project: Some("ops-test".into()),
            name: "intric".into(),
            isolated: vec!["IMAGE_TAG".into(), "POSTGRES_PASSWORD".into()],
            database: Database { user: "intric".into(), name: "intric".into() },
            images: Vec::new(),
        };
        Deployment { dir: dir.to_path_buf(), env, compose }
    }

    fn inputs(deployment: &Deployment) -> Inputs<'_> {
        Inputs {
            deployment,
            lock: inspect(&deployment.lock_path(), LockArgs::default()).unwrap(),
            login: None,
            timeout: 60,
            url: "http://localhost:3000".into(),
        }
    }

    /// The engine as these tests script it: an initialized database at revision 0001 that the
    /// images know, a `pg_dump` that writes its (partial) file, complete dumps, and `fail`
    /// (the end of a command as shown) failing the first time it runs.
    fn engine(dir: &Path, fail: Option<String>) -> Recording {
        scripted(dir, fail, "healthy", SAFE_MIGRATIONS)
    }

    /// The migration files of the images in [`engine`]: the initial one only.
    const SAFE_MIGRATIONS: &str = r#"{"0001_initial.py": "revision = \"0001\"\ndown_revision = None\n"}"#;

    /// The container IDs of the stateless services before the update (`old-backend`, ...) and
    /// the ones the update starts beside them (`new-backend`, ...).
    fn containers(age: &str) -> Vec<String> {
        STATELESS.iter().map(|service| format!("{age}-{service}")).collect()
    }

    /// [`engine`], with the new containers' health as `health` and the new image's migration
    /// files `migrations` (JSON, as the one-off container prints them).
    fn scripted(dir: &Path, fail: Option<String>, health: &'static str, migrations: &'static str) -> Recording {
        let dir = dir.to_path_buf();
        let failed = AtomicBool::new(false);
        let listed = std::sync::Mutex::new(std::collections::BTreeSet::new());
        Recording::replying(move |shown| {
            if fail.as_ref().is_some_and(|fail| shown.ends_with(fail.as_str())) && !failed.swap(true, Ordering::SeqCst)
            {
                return Err("container ops-test-backend-1 is unhealthy".into());
            }
            if shown.contains(" pg_dump ") {
                let partial = shown.split(" > ").nth(1).unwrap().trim_end_matches(" (mode 600)");
                std::fs::write(Path::new(partial), "").unwrap();
                assert!(partial.starts_with(dir.to_str().unwrap()));
            }
            Ok(match shown {
                _ if shown.contains("to_regclass") => "t".into(),
                _ if shown.contains("string_agg(version_num") => "0001".into(),
                _ if shown.contains("gzip -dc") => DUMP_COMPLETE.into(),
                _ if shown.contains("select current_database()") => "intric".into(),
                _ if shown.contains("alembic/versions") => migrations.into(),
                _ if shown.contains(" ps --all --quiet ") => {
                    // Before its start, a service has its old container; after, the new one too.
                    let service = shown.rsplit(' ').next().unwrap();
                    let started = listed.lock().unwrap().insert(service.to_string());
                    if started { format!("old-{service}") } else { format!("old-{service}\nnew-{service}") }
                }
                _ if shown.starts_with("docker inspect ") => {
                    STATELESS.iter().map(|service| format!("/ops-test-{service}-2 running {health} 0\n")).collect()
                }
                _ => String::new(),
            })
        })
    }

    /// The commands that ran which the printed plan shows as steps of their own, in order.
    fn shown_steps(plan: &StackPlan, executed: &[String]) -> Vec<String> {
        let printed = plan.to_string();
        executed
            .iter()
            .filter(|command| printed.lines().any(|line| line.ends_with(command.as_str())))
            .cloned()
            .collect()
    }

    fn strings(commands: &[Command]) -> Vec<String> {
        commands.iter().map(Command::to_string).collect()
    }

    /// What the database-state check runs: whether alembic's table exists, then its revision.
    fn db_state(compose: &Compose) -> Vec<Command> {
        vec![
            compose.sql(None, "select to_regclass('public.alembic_version') is not null"),
            compose.sql(None, "select coalesce(string_agg(version_num, ','), '') from alembic_version"),
        ]
    }

    /// What a migration runs: the state, whether the image knows the revision, the upgrade.
    fn migration(compose: &Compose) -> Vec<Command> {
        [db_state(compose), vec![compose.knows_revision("0001"), compose.migrate()]].concat()
    }

    /// What a backup to `path` runs: the dump into the partial file, then its two checks.
    fn backup_commands(compose: &Compose, path: &Path) -> Vec<String> {
        let partial = path.with_file_name(format!(".{}.partial", path.file_name().unwrap().to_string_lossy()));
        let dump = crate::plan::runner::Pipe {
            commands: vec![compose.dump(), Command::new("gzip").arg("-c")],
            input: None,
            output: Some(partial.clone()),
        };
        let gzip = |flag: &str| Command::new("gzip").arg(flag).arg(partial.display().to_string()).to_string();
        vec![dump.to_string(), gzip("-t"), gzip("-dc")]
    }

    fn env_tag(dir: &Path) -> String {
        DotEnv::read(&dir.join(".env")).unwrap().get("IMAGE_TAG").unwrap().to_string()
    }

    #[test]
    fn deploy_runs_the_commands_it_shows_then_records_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let site = deployment(dir.path(), "1.0.0");
        let plan = deploy(inputs(&site), None, "1.0.0".into());
        let engine = engine(dir.path(), None);
        plan.execute(&engine).unwrap();
        let c = &site.compose;
        let executed = engine.executed();
        let expected = [
            strings(&[c.pull(None), c.up(&["db", "redis"], 60)]),
            strings(&[db_state(c), migration(c)].concat()),
            strings(&[c.up(&[], 60), c.ps_json()]),
        ]
        .concat();
        assert_eq!(executed, expected);
        assert_eq!(
            shown_steps(&plan, &executed),
            strings(&[c.pull(None), c.up(&["db", "redis"], 60), c.migrate(), c.up(&[], 60)])
        );
        let history = read_history(&site.history_path()).unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!((history[0].command.as_str(), history[0].to_tag.as_str()), ("deploy", "1.0.0"));
        assert_eq!(history[0].result, Outcome::Ok);
        assert!(!site.lock_path().exists(), "released");
        let shown = plan.to_string();
        assert!(shown.starts_with(&format!("first: take the deploy lock {}\n", site.lock_path().display())), "{shown}");
        assert!(
            shown.ends_with(
                ".deploy-history.jsonl; release the lock; when it succeeded, show the status of project ops-test\n"
            ),
            "{shown}"
        );
    }

    /// The commands of an update from 1.0.0 to 1.1.0 up to the switch of `.env`.
    fn before_the_switch(site: &Deployment, backup: &Path) -> Vec<String> {
        let c = &site.compose;
        let check = [db_state(c), vec![c.migration_files("1.1.0")]].concat();
        [strings(&[vec![c.pull(Some("1.1.0")), c.up(&["db"], 60)], check].concat()), backup_commands(c, backup)]
            .concat()
    }

    /// What replacing the stateless services runs up to the new containers' health check:
    /// their containers now, per service, the start beside them, their containers then.
    fn starting_beside(c: &Compose) -> Vec<Command> {
        let mut commands: Vec<Command> = STATELESS
            .iter()
            .flat_map(|service| [c.container_ids(service), c.start_beside(service, 2), c.container_ids(service)])
            .collect();
        commands.push(c.container_states(&containers("new")));
        commands
    }

    /// What a replacement whose new containers got healthy runs.
    fn replacing(c: &Compose) -> Vec<Command> {
        let old = containers("old");
        [starting_beside(c), vec![c.stop_containers(&old, 0), c.remove_containers(&old)]].concat()
    }

    /// The plan of `update` of `site` from 1.0.0 to 1.1.0, backing up to `backup`.
    fn update_to_1_1_0(site: &Deployment, backup: &Path, restore_on_failure: bool) -> StackPlan {
        let backup = UpdateBackup { path: backup.to_path_buf(), restore_on_failure };
        update(inputs(site), "update", "1.0.0", "1.1.0", backup, ZERO_DOWNTIME).unwrap()
    }

    #[test]
    fn update_runs_the_commands_it_shows_switches_env_and_keeps_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let site = deployment(dir.path(), "1.0.0");
        let backup = dir.path().join("backups/intric_20260101T000000Z.sql.gz");
        let plan = update_to_1_1_0(&site, &backup, false);
        let engine = engine(dir.path(), None);
        plan.execute(&engine).unwrap();
        let c = &site.compose;
        let executed = engine.executed();
        let after = strings(&[migration(c), replacing(c), vec![c.up(&[], 60), c.ps_json()]].concat());
        assert_eq!(executed, [before_the_switch(&site, &backup), after].concat());
        let starts = STATELESS.map(|service| c.start_beside(service, 2));
        let shown = [
            vec![c.pull(Some("1.1.0")), c.up(&["db"], 60), c.migration_files("1.1.0"), c.migrate()],
            starts.to_vec(),
            vec![c.up(&[], 60)],
        ];
        assert_eq!(shown_steps(&plan, &executed), strings(&shown.concat()));
        assert_eq!(env_tag(dir.path()), "1.1.0");
        assert!(backup.is_file(), "the checked dump was renamed into place");
        let record = read_history(&site.history_path()).unwrap().pop().unwrap();
        assert_eq!((record.result, record.from_tag.as_deref()), (Outcome::Ok, Some("1.0.0")));
        assert_eq!(record.backup, Some(backup.display().to_string()));
    }

    /// An update from 1.0.0 to 1.1.0 whose final `up --wait` fails the first time: its
    /// directory, deployment, backup path, printed plan, what ran, and the error.
    struct FailedUpdate {
        dir: tempfile::TempDir,
        site: Deployment,
        backup: PathBuf,
        plan: StackPlan,
        executed: Vec<String>,
        error: String,
    }

    fn failed_update(restore_on_failure: bool) -> FailedUpdate {
        let dir = tempfile::tempdir().unwrap();
        let site = deployment(dir.path(), "1.0.0");
        let backup = dir.path().join("backups/intric_20260101T000000Z.sql.gz");
        let plan = update_to_1_1_0(&site, &backup, restore_on_failure);
        let engine = engine(dir.path(), Some(site.compose.up(&[], 60).to_string()));
        let error = plan.execute(&engine).unwrap_err().to_string();
        FailedUpdate { executed: engine.executed(), dir, site, backup, plan, error }
    }

    #[test]
    fn an_update_failing_after_the_switch_puts_env_back_and_starts_the_stack_again() {
        let FailedUpdate { dir, site, backup, plan, executed, error } = failed_update(false);
        let c = &site.compose;
        let up = c.up(&[], 60).to_string();
        assert!(error.contains("failed and was rolled back to 1.0.0") && error.contains("NOT restored"), "{error}");
        let switched = [strings(&migration(c)), strings(&replacing(c))].concat();
        let expected = [before_the_switch(&site, &backup), switched, vec![up.clone(), up.clone()]].concat();
        assert_eq!(executed, expected, "the failed `up`, then the recovery's");
        assert_eq!(shown_steps(&plan, &executed).last(), Some(&up));
        assert!(
            plan.to_string()
                .contains(&format!("if step 5 or a later one fails:\n  1. write {}", site.env_path().display()))
        );
        assert_eq!(env_tag(dir.path()), "1.0.0", ".env names the previous tag again");
        let record = read_history(&site.history_path()).unwrap().pop().unwrap();
        assert_eq!(record.result, Outcome::RolledBack);
        assert!(record.detail.unwrap().contains("unhealthy"));
        assert!(!site.lock_path().exists());
    }

    #[test]
    fn with_restore_on_failure_the_backup_is_restored_after_env_is_put_back() {
        let FailedUpdate { dir, site, backup, executed, error, .. } = failed_update(true);
        let c = &site.compose;
        let up = c.up(&[], 60).to_string();
        assert!(error.contains(&format!("the database was restored from {}", backup.display())), "{error}");
        let switched = before_the_switch(&site, &backup).len() + migration(c).len() + replacing(c).len() + 1;
        let recovery = &executed[switched..];
        assert_eq!(recovery.first(), Some(&c.up(&["db"], 60).to_string()));
        assert_eq!(recovery[1], c.sql(None, "select current_database()").to_string());
        assert_eq!(recovery[2], c.stop(&["backend", "worker"]).to_string());
        let load = format!("gzip -dc | {} < {}", c.in_db(c.database.load("intric_restore")), backup.display());
        assert!(recovery.contains(&load), "{recovery:#?}");
        let swap = c.sql(Some("template1"), "alter database \"intric_restore\" rename to \"intric\"").to_string();
        assert!(recovery.iter().position(|c| *c == swap) > recovery.iter().position(|c| *c == load));
        assert_eq!(recovery.last(), Some(&up), "the stack is started again");
        assert_eq!(env_tag(dir.path()), "1.0.0");
    }

    #[test]
    fn new_containers_that_never_get_healthy_are_removed_and_the_old_ones_keep_serving() {
        let dir = tempfile::tempdir().unwrap();
        let site = deployment(dir.path(), "1.0.0");
        let backup = dir.path().join("backups/intric_20260101T000000Z.sql.gz");
        let plan = update_to_1_1_0(&site, &backup, false);
        let engine = scripted(dir.path(), None, "unhealthy", SAFE_MIGRATIONS);
        let error = plan.execute(&engine).unwrap_err().to_string();
        assert!(error.contains("rolled back to 1.0.0") && error.contains("ops-test-backend-2 is unhealthy"), "{error}");
        let c = &site.compose;
        let new = containers("new");
        let replaced =
            [strings(&starting_beside(c)), strings(&[c.stop_containers(&new, 0), c.remove_containers(&new)])];
        let expected = [
            before_the_switch(&site, &backup),
            strings(&migration(c)),
            replaced.concat(),
            vec![c.up(&[], 60).to_string()],
        ];
        assert_eq!(engine.executed(), expected.concat(), "only the new containers stop; the recovery's `up`");
        assert!(!engine.executed().iter().any(|command| command.contains("old-")), "the old ones are never touched");
        assert_eq!(env_tag(dir.path()), "1.0.0");
        let record = read_history(&site.history_path()).unwrap().pop().unwrap();
        assert_eq!(record.result, Outcome::RolledBack);
    }

    #[test]
    fn an_update_whose_migrations_drop_a_column_is_refused_before_anything_changes() {
        let dir = tempfile::tempdir().unwrap();
        let site = deployment(dir.path(), "1.0.0");
        let backup = dir.path().join("backups/intric_20260101T000000Z.sql.gz");
        let plan = update_to_1_1_0(&site, &backup, false);
        let dropping = r#"{"0001_initial.py": "revision = \"0001\"\n", "0002_drop.py": "revision = \"0002\"\ndown_revision = \"0001\"\ndef upgrade():\n    op.drop_column(\"jobs\", \"text\")\n"}"#;
        let engine = scripted(dir.path(), None, "healthy", dropping);
        let error = format!("{:#}", plan.execute(&engine).unwrap_err());
        assert!(error.starts_with("update to 1.1.0 failed before changing anything"), "{error}");
        assert!(error.contains("0002_drop.py:4: op.drop_column(\"jobs\", \"text\")"), "{error}");
        assert!(error.contains("--allow-downtime"), "{error}");
        let c = &site.compose;
        let checked = strings(
            &[vec![c.pull(Some("1.1.0")), c.up(&["db"], 60)], db_state(c), vec![c.migration_files("1.1.0")]].concat(),
        );
        assert_eq!(engine.executed()[..checked.len()], checked, "the check runs before the backup");
        assert_eq!(engine.executed().len(), checked.len(), "nothing after the check");
        assert_eq!(env_tag(dir.path()), "1.0.0");
        assert!(!backup.exists());
        let record = read_history(&site.history_path()).unwrap().pop().unwrap();
        assert_eq!((record.result, record.backup), (Outcome::Failed, None));
    }

    #[test]
    fn a_stale_lock_decides_the_tag_to_go_back_to() {
        let stale = |from: &str, to: &str| Found::Stale {
            holder: Holder { from_tag: Some(from.into()), to_tag: Some(to.into()), ..holder("update", None, None) },
            contents: String::new(),
        };
        assert_eq!(resume_from("1.1.0", &Found::Free), "1.1.0");
        assert_eq!(resume_from("1.1.0", &stale("1.0.0", "1.1.0")), "1.0.0", ".env was switched before it died");
        assert_eq!(resume_from("1.0.0", &stale("1.0.0", "1.1.0")), "1.0.0", "it died before the switch");
        assert_eq!(resume_from("1.2.0", &stale("1.0.0", "1.1.0")), "1.2.0", "someone changed .env since");
        let dir = tempfile::tempdir().unwrap();
        let site = deployment(dir.path(), "1.1.0");
        let backup = dir.path().join("backups/intric_20260101T000000Z.sql.gz");
        let inputs = Inputs { lock: stale("1.0.0", "1.1.0"), ..inputs(&site) };
        let backup = UpdateBackup { path: backup, restore_on_failure: false };
        let plan = update(inputs, "update", "1.1.0", "1.1.0", backup, ZERO_DOWNTIME).unwrap();
        assert!(matches!(&plan.operation, Operation::Update { from_tag, .. } if from_tag == "1.0.0"));
        let recovery = plan.steps.recovery.as_ref().unwrap();
        assert!(matches!(&recovery.steps[0], StackStep::SetTag { tag, .. } if tag == "1.0.0"));
        assert_eq!(plan.lock.as_ref().unwrap().holder.from_tag.as_deref(), Some("1.0.0"), "the lock names it too");
        let shown = plan.to_string();
        assert!(shown.contains(".deploy.lock left by pid "), "{shown}");
        assert!(shown.contains("that process is gone; wait for the docker commands it left running"), "{shown}");
        assert!(shown.contains("its update started from 1.0.0: the tag to go back to"), "{shown}");
    }

    #[test]
    fn rerunning_a_killed_update_takes_over_its_lock_and_records_it_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let site = deployment(dir.path(), "1.1.0");
        // A dead pid on this host: no process has pid u32::MAX - 1.
        let dead = Holder {
            pid: u32::MAX - 1,
            host: current_host(),
            from_tag: Some("1.0.0".into()),
            to_tag: Some("1.1.0".into()),
            ..holder("update", None, None)
        };
        std::fs::write(site.lock_path(), dead.to_json()).unwrap();
        let backup = dir.path().join("backups/intric_20260101T000000Z.sql.gz");
        let backup = UpdateBackup { path: backup, restore_on_failure: false };
        let plan = update(inputs(&site), "rollback", "1.1.0", "1.0.0", backup, ZERO_DOWNTIME).unwrap();
        assert!(matches!(&plan.operation, Operation::Update { from_tag, .. } if from_tag == "1.0.0"));
        let engine = engine(dir.path(), None);
        plan.execute(&engine).unwrap();
        let history = read_history(&site.history_path()).unwrap();
        assert_eq!(history.len(), 2);
        assert!(history[0].detail.as_deref().unwrap().starts_with("interrupted: pid 4294967294"), "{history:?}");
        assert_eq!((history[0].command.as_str(), history[0].result), ("update", Outcome::Failed));
        assert_eq!((history[1].command.as_str(), history[1].result), ("rollback", Outcome::Ok));
        assert_eq!(env_tag(dir.path()), "1.0.0");
        assert!(!site.lock_path().exists());
    }

    #[test]
    fn a_lock_taken_between_planning_and_running_refuses_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let site = deployment(dir.path(), "1.0.0");
        let plan = deploy(inputs(&site), None, "1.0.0".into());
        let other = holder("update", Some("1.0.0".into()), Some("1.1.0".into()));
        std::fs::write(site.lock_path(), other.to_json()).unwrap();
        let engine = engine(dir.path(), None);
        let error = plan.execute(&engine).unwrap_err().to_string();
        assert!(error.contains("holds the lock"), "{error}");
        assert!(engine.executed().is_empty());
        assert!(!site.history_path().exists());
    }

    #[test]
    fn backup_runs_the_dump_it_shows_then_prunes_without_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let site = deployment(dir.path(), "1.0.0");
        let backups = dir.path().join("backups");
        std::fs::create_dir(&backups).unwrap();
        for old in ["intric_20250101T000000Z.sql.gz", "intric_20250102T000000Z.sql.gz"] {
            std::fs::write(backups.join(old), "").unwrap();
        }
        let path = backups.join("intric_20260101T000000Z.sql.gz");
        let plan = backup(&site, None, path.clone(), 2);
        let engine = engine(dir.path(), None);
        plan.execute(&engine).unwrap();
        assert_eq!(engine.executed(), backup_commands(&site.compose, &path));
        let mut left: Vec<String> =
            std::fs::read_dir(&backups).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["intric_20250102T000000Z.sql.gz", "intric_20260101T000000Z.sql.gz"]);
        assert!(!site.history_path().exists() && plan.lock.is_none());
        assert!(plan.to_string().contains("back up the database (pg_dump | gzip, checked, then renamed) to "));
    }

    #[test]
    fn restore_runs_its_steps_under_the_lock_and_records_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let site = deployment(dir.path(), "1.0.0");
        let file = dir.path().join("intric_20260101T000000Z.sql.gz");
        let plan = restore(inputs(&site), None, file.clone());
        let engine = engine(dir.path(), None);
        plan.execute(&engine).unwrap();
        let c = &site.compose;
        let executed = engine.executed();
        assert_eq!(
            executed[..3],
            strings(&[c.up(&["db"], 60), c.sql(None, "select current_database()"), c.stop(&["backend", "worker"])])
        );
        let load = c.in_db(c.database.load("intric_restore"));
        assert!(executed.contains(&format!("gzip -dc | {load} < {}", file.display())));
        assert_eq!(executed[executed.len() - 2..], strings(&[c.up(&[], 60), c.ps_json()]));
        let record = read_history(&site.history_path()).unwrap().pop().unwrap();
        assert_eq!((record.command.as_str(), record.backup), ("restore", Some(file.display().to_string())));
        assert!(plan.to_string().contains(&format!("load {} into a new database", file.display())));
    }

    #[test]
    fn a_dry_run_runs_nothing_and_prints_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let site = deployment(dir.path(), "1.0.0");
        let login = crate::adapters::docker::login_with(
            "docker",
            "r:5000",
            "ci",
            crate::plan::Secret::new("NEXUS_PASSWORD", "canary-registry"),
        );
        let inputs = Inputs { login: Some(login), ..inputs(&site) };
        let backup = dir.path().join("backups/intric_20260101T000000Z.sql.gz");
        let backup = UpdateBackup { path: backup, restore_on_failure: true };
        let plan = update(inputs, "update", "1.0.0", "1.1.0", backup, ZERO_DOWNTIME).unwrap();
        let engine = engine(dir.path(), None);
        assert!(crate::plan::show_or_run(&plan, true, &engine).unwrap().is_none());
        assert!(engine.executed().is_empty());
        let shown = format!("{plan}{plan:?}");
        assert!(!shown.contains("canary"), "{shown}");
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, [".env"]);
    }

    /// The swarm engine as these tests script it: a manager whose nodes have no data label, a
    /// database initialized or not, services that run the images of the stack file written in
    /// `dir` (but `rolled_back` back on its 1.0.0 image), each task running.
    fn swarm_engine(
        dir: &Path,
        initialized: bool,
        rolled_back: Option<&'static str>,
        migrations: &'static str,
    ) -> Recording {
        let dir = dir.to_path_buf();
        Recording::replying(move |shown| {
            if shown.contains(" pg_dump ") {
                let partial = shown.split(" > ").nth(1).unwrap().trim_end_matches(" (mode 600)");
                std::fs::write(Path::new(partial), "").unwrap();
            }
            let image = |service: &str| {
                let file = std::fs::read_to_string(dir.join(".swarm/stack.json")).unwrap();
                let file: serde_json::Value = serde_json::from_str(&file).unwrap();
                let image = file["services"][service]["image"].as_str().unwrap().to_string();
                if rolled_back == Some(service) { image.replace("1.1.0", "1.0.0") } else { image }
            };
            let services = || shown.split(' ').filter_map(|word| word.strip_prefix("ops-test_")).collect::<Vec<_>>();
            Ok(match shown {
                _ if shown.contains("{{.Swarm.LocalNodeState}}") => "active true node-1".into(),
                _ if shown.contains("to_regclass") => if initialized { "t" } else { "f" }.into(),
                _ if shown.contains("string_agg(version_num") => "0001".into(),
                _ if shown.contains("gzip -dc") => DUMP_COMPLETE.into(),
                _ if shown.contains("select current_database()") => "intric".into(),
                _ if shown.contains("alembic/versions") => migrations.into(),
                _ if shown.starts_with("docker ps --quiet") => "db-container".into(),
                _ if shown.starts_with("docker service inspect") && shown.contains("{{.Spec.Name}}") => services()
                    .iter()
                    .map(|service| format!("ops-test_{service} {}@sha256:1 1 completed 0\n", image(service)))
                    .collect(),
                _ if shown.starts_with("docker service ps") => services()
                    .iter()
                    .map(|service| {
                        let task = serde_json::json!({"Name": format!("ops-test_{service}.1"), "Image": image(service),
                            "CurrentState": "Running 1 second ago"});
                        format!("{task}\n")
                    })
                    .collect(),
                _ => String::new(),
            })
        })
    }

    fn swarm_files(site: &Deployment, tag: &str) -> SwarmFiles {
        let stack = Stack { program: "docker".into(), name: "ops-test".into() };
        crate::stack::swarm::translate(
            &crate::stack::swarm::config_for_tests(tag),
            &site.dir,
            &stack,
            &Default::default(),
        )
        .unwrap()
    }

    /// The commands that change something, which the printed plan must show, in order.
    fn swarm_changes(executed: &[String]) -> Vec<String> {
        let changes = ["docker login", "docker node update", "docker stack deploy", "docker run "];
        let is_change = |command: &&String| {
            changes.iter().any(|change| command.starts_with(change)) && !command.contains("alembic show")
        };
        executed.iter().filter(is_change).cloned().collect()
    }

    fn assert_shown_in_order(plan: &StackPlan, commands: &[String]) {
        let shown = plan.to_string();
        let mut rest = shown.as_str();
        for command in commands {
            let at =
                rest.find(command.as_str()).unwrap_or_else(|| panic!("`{command}` ran, not shown there:\n{shown}"));
            rest = &rest[at + command.len()..];
        }
    }

    #[test]
    fn a_swarm_deploy_runs_db_init_once_after_the_data_services_then_the_stack() {
        let dir = tempfile::tempdir().unwrap();
        let site = deployment(dir.path(), "1.0.0");
        let stack = Stack { program: "docker".into(), name: "ops-test".into() };
        let plan = swarm_deploy(inputs(&site), stack, &swarm_files(&site, "1.0.0"), None, "1.0.0".into());
        let engine = swarm_engine(dir.path(), false, None, SAFE_MIGRATIONS);
        plan.execute(&engine).unwrap();
        let changes = swarm_changes(&engine.executed());
        let swarm = dir.path().join(".swarm");
        let init = format!(
            "docker run --rm --network ops-test_swarm --env-file {} r/intric/backend:1.0.0 python init_db.py",
            swarm.join("db-init.env").display()
        );
        let deploy = |file: &str| {
            format!(
                "docker stack deploy --with-registry-auth --resolve-image always --compose-file {} ops-test",
                swarm.join(file).display()
            )
        };
        let label = "docker node update --label-add intric.data=true node-1".to_string();
        assert_eq!(changes, [label, deploy("data.json"), init, deploy("stack.json")]);
        assert_shown_in_order(&plan, &changes[1..]);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&swarm), mode(&swarm.join("stack.json"))), (0o700, 0o600));
        let record = read_history(&site.history_path()).unwrap().pop().unwrap();
        assert_eq!((record.result, record.mode.as_deref()), (Outcome::Ok, Some("swarm")));
        let shown = format!("{plan}{plan:?}");
        assert!(!shown.contains("canary"), "no .env value in the plan: {shown}");

        let again = swarm_engine(dir.path(), true, None, SAFE_MIGRATIONS);
        let stack = Stack { program: "docker".into(), name: "ops-test".into() };
        let plan = swarm_deploy(inputs(&site), stack, &swarm_files(&site, "1.0.0"), None, "1.0.0".into());
        plan.execute(&again).unwrap();
        let runs: Vec<String> =
            swarm_changes(&again.executed()).into_iter().filter(|c| c.starts_with("docker run")).collect();
        assert_eq!(runs.len(), 1, "db-init does not run again, the migrations do: {runs:?}");
        assert!(runs[0].ends_with("alembic upgrade head"), "{runs:?}");
    }

    #[test]
    fn on_swarm_backup_dumps_in_the_db_task_and_restore_scales_the_writers_around_the_swap() {
        let dir = tempfile::tempdir().unwrap();
        let site = deployment(dir.path(), "1.0.0");
        let stack = || Stack { program: "docker".into(), name: "ops-test".into() };
        // Deployed first: the engine's answers read the services' images from its stack file.
        let deployed = swarm_deploy(inputs(&site), stack(), &swarm_files(&site, "1.0.0"), None, "1.0.0".into());
        deployed.execute(&swarm_engine(dir.path(), false, None, SAFE_MIGRATIONS)).unwrap();
        let path = dir.path().join("backups/intric_20260101T000000Z.sql.gz");

        let plan = backup(&site, Some(stack()), path.clone(), 10);
        let engine = swarm_engine(dir.path(), true, None, SAFE_MIGRATIONS);
        plan.execute(&engine).unwrap();
        let dump = "docker exec -i db-container pg_dump --no-owner --no-privileges -U intric -d intric";
        assert!(engine.executed().iter().any(|c| c.starts_with(dump)), "{:#?}", engine.executed());
        assert!(path.is_file() && plan.lock.is_none());
        assert!(plan.to_string().contains("pg_dump in the db task's container"), "{plan}");
        // Where no db task runs on this engine (another node of the swarm has it), it says where.
        let elsewhere = Recording::replying(|_| Ok(String::new()));
        let error = format!("{:#}", backup(&site, Some(stack()), path.clone(), 10).execute(&elsewhere).unwrap_err());
        assert!(error.contains("run this on the node labelled intric.data=true"), "{error}");

        let plan = restore(inputs(&site), Some(stack()), path.clone());
        let engine = swarm_engine(dir.path(), true, None, SAFE_MIGRATIONS);
        plan.execute(&engine).unwrap();
        let executed = engine.executed();
        let at = |start: &str| {
            executed.iter().position(|c| c.starts_with(start)).unwrap_or_else(|| panic!("no {start}: {executed:#?}"))
        };
        let stopped = at("docker service scale --detach=false ops-test_backend=0 ops-test_worker=0");
        let loaded =
            at("gzip -dc | docker exec -i db-container psql -X -q -v ON_ERROR_STOP=1 --single-transaction -U intric");
        let rename = r#"-d template1 -tA -c 'alter database "intric" rename to "intric_before_restore"'"#;
        let renamed =
            executed.iter().position(|c| c.starts_with("docker exec -i db-container psql") && c.ends_with(rename));
        let renamed = renamed.unwrap_or_else(|| panic!("no rename: {executed:#?}"));
        let started = at("docker service scale --detach ops-test_backend=1 ops-test_worker=1");
        assert!(stopped < loaded && loaded < renamed && renamed < started, "{executed:#?}");
        assert!(executed[started..].iter().any(|c| c.starts_with("docker service ps")), "waits for healthy tasks");
        let record = read_history(&site.history_path()).unwrap().pop().unwrap();
        assert_eq!((record.command.as_str(), record.mode.as_deref()), ("restore", Some("swarm")), "still on swarm");
        assert!(plan.to_string().contains("scale ops-test_backend and ops-test_worker to 0"), "{plan}");
    }

    /// A deployment at 1.0.0 in a new directory, its backup path, and its plan of `update --swarm` to 1.1.0
    /// (which restores that backup when it fails, if `restore_on_failure`).
    fn swarm_update_1_1_0(restore_on_failure: bool) -> (tempfile::TempDir, Deployment, PathBuf, StackPlan) {
        let dir = tempfile::tempdir().unwrap();
        let site = deployment(dir.path(), "1.0.0");
        let backup = dir.path().join("backups/intric_20260101T000000Z.sql.gz");
        let stack = Stack { program: "docker".into(), name: "ops-test".into() };
        let (from, to) = (swarm_files(&site, "1.0.0"), swarm_files(&site, "1.1.0"));
        let update_backup = UpdateBackup { path: backup.clone(), restore_on_failure };
        let plan =
            swarm_update(inputs(&site), stack, "update", "1.0.0", ("1.1.0", &from, &to), update_backup, false).unwrap();
        (dir, site, backup, plan)
    }

    #[test]
    fn a_swarm_update_that_swarm_rolls_back_puts_the_old_tag_back_and_says_so() {
        let (dir, site, backup, plan) = swarm_update_1_1_0(false);
        let engine = swarm_engine(dir.path(), true, Some("backend"), SAFE_MIGRATIONS);
        let error = plan.execute(&engine).unwrap_err().to_string();
        assert!(error.contains("failed and was rolled back to 1.0.0"), "{error}");
        assert!(error.contains("swarm rolled backend back"), "{error}");
        assert!(error.contains(&format!("`cargo xtask restore {} --yes` restores it", backup.display())), "{error}");
        let executed = engine.executed();
        let changes = swarm_changes(&executed);
        assert!(changes[0].starts_with("docker node update"), "the label, shown with `<this node>`: {changes:#?}");
        assert_shown_in_order(&plan, &changes[1..]);
        let deploys = changes.iter().filter(|c| c.starts_with("docker stack deploy")).count();
        assert_eq!(deploys, 2, "the new stack file, then the old one again: {changes:#?}");
        assert!(changes.iter().any(|c| c.ends_with("r/intric/backend:1.1.0 alembic upgrade head")), "{changes:#?}");
        let dump = executed.iter().position(|c| c.starts_with("docker exec -i db-container pg_dump")).unwrap();
        let first_deploy = executed.iter().position(|c| c.starts_with("docker stack deploy")).unwrap();
        assert!(dump < first_deploy, "backed up before the switch");
        assert!(backup.is_file());
        assert_eq!(env_tag(dir.path()), "1.0.0");
        let written = std::fs::read_to_string(dir.path().join(".swarm/stack.json")).unwrap();
        assert!(written.contains("r/intric/backend:1.0.0") && !written.contains("1.1.0"), "the old stack file is back");
        let record = read_history(&site.history_path()).unwrap().pop().unwrap();
        assert_eq!((record.result, record.mode.as_deref()), (Outcome::RolledBack, Some("swarm")));
    }

    #[test]
    fn with_restore_on_failure_a_rolled_back_swarm_update_restores_once_the_old_version_runs() {
        let (dir, site, backup, plan) = swarm_update_1_1_0(true);
        let engine = swarm_engine(dir.path(), true, Some("backend"), SAFE_MIGRATIONS);
        let error = plan.execute(&engine).unwrap_err().to_string();
        assert!(error.contains("failed and was rolled back to 1.0.0"), "{error}");
        assert!(error.contains(&format!("the database was restored from {}", backup.display())), "{error}");
        let executed = engine.executed();
        let at = |start: &str| {
            executed.iter().rposition(|c| c.starts_with(start)).unwrap_or_else(|| panic!("no {start}: {executed:#?}"))
        };
        let old_deployed = at("docker stack deploy");
        let stopped = at("docker service scale --detach=false ops-test_backend=0 ops-test_worker=0");
        let loaded = at("gzip -dc | docker exec -i db-container psql");
        let started = at("docker service scale --detach ops-test_backend=1 ops-test_worker=1");
        assert!(old_deployed < stopped && stopped < loaded && loaded < started, "{executed:#?}");
        assert_eq!(env_tag(dir.path()), "1.0.0");
        let record = read_history(&site.history_path()).unwrap().pop().unwrap();
        assert_eq!((record.result, record.mode.as_deref()), (Outcome::RolledBack, Some("swarm")));
        assert!(plan.to_string().contains("scale ops-test_backend and ops-test_worker to 0"), "{plan}");
    }

    #[test]
    fn a_swarm_update_whose_migrations_drop_a_column_is_refused_before_anything_changes() {
        let (dir, _, backup, plan) = swarm_update_1_1_0(false);
        let dropping = r#"{"0001_initial.py": "revision = \"0001\"\n", "0002_drop.py": "revision = \"0002\"\ndown_revision = \"0001\"\ndef upgrade():\n    op.drop_column(\"jobs\", \"text\")\n"}"#;
        let engine = swarm_engine(dir.path(), true, None, dropping);
        let error = format!("{:#}", plan.execute(&engine).unwrap_err());
        assert!(error.starts_with("update to 1.1.0 failed before changing anything"), "{error}");
        assert!(error.contains("0002_drop.py:4: op.drop_column"), "{error}");
        let list = engine.executed().into_iter().find(|c| c.contains("alembic/versions")).unwrap();
        assert!(list.contains(" r/intric/backend:1.1.0 python -c "), "the new image's migrations: {list}");
        assert!(swarm_changes(&engine.executed()).iter().all(|c| !c.starts_with("docker stack deploy")));
        assert!(!backup.exists() && !dir.path().join(".swarm").exists(), "nothing written");
        assert_eq!(env_tag(dir.path()), "1.0.0");
    }
}
