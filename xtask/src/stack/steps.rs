//! The steps that change a running stack (pull, start, initialize or migrate the database,
//! back up, switch `IMAGE_TAG`, replace the stateless services beside the running ones,
//! restore), the plans of deploy and update made of them, and how each step is performed.
//!
//! An update replaces backend, worker and frontend without downtime: their new containers
//! start beside the old ones, and the old ones stop only once the new ones are healthy (see
//! [`Executor::replace`]); db and redis are never doubled, and the edge proxy, which owns the
//! host ports, is never replaced. Migrations run first, with the new image, while the old
//! version serves, so they must only add (see [`crate::stack::migrations`]); an update whose
//! migrations drop or rename something is refused before anything changes, unless it is one
//! with downtime (`--allow-downtime`: the containers are recreated in place, as `up` does).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::adapters::clock;
use crate::adapters::compose::{Compose, STATELESS};
use crate::adapters::dotenv::DotEnv;
use crate::adapters::swarm::Stack;
use crate::plan::{Command, Failure, Plan, Recovery, Secret};
use crate::stack::database;
use crate::stack::executor::{DbState, Executor};
use crate::stack::swarm::{STATEFUL, SwarmAction, SwarmFiles, SwarmStep};

/// One step of an operator plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StackStep {
    /// An external command (compose, docker login).
    Run(Command),
    /// `db-init` when the database has no `alembic_version` table yet, else the migrations.
    InitOrMigrate { db_init: Command, migrate: Command },
    /// The migrations of the backend image that `.env` names, unless the database is at a
    /// revision that image does not know (a newer version migrated it).
    Migrate(Command),
    /// A backup of the database to `path`.
    Backup { path: PathBuf },
    /// Backups in `dir` beyond the newest `keep` removed, and dumps a killed backup left
    /// half-written there a day ago or earlier.
    PruneBackups { dir: PathBuf, keep: usize },
    /// `.env` rewritten (atomically, mode 0600) with `IMAGE_TAG=tag`.
    SetTag { path: PathBuf, tag: String, contents: Secret },
    /// The database restored from the backup at `path`.
    Restore { path: PathBuf },
    /// Refuses when the migrations of the new backend image (`list` prints them) after the
    /// database's revision drop or rename a column or table.
    CheckMigrations { list: Command },
    /// `services` replaced without downtime: `starts`, one per service (shown with `--scale
    /// S=2`; it is N+1 where S has N containers), then, once the new ones are healthy, `drain`
    /// seconds and the old ones stopped and removed.
    Replace { services: Vec<String>, starts: Vec<Command>, drain: u64, timeout: u64 },
    /// A step of the stack on Docker Swarm (`--swarm`).
    Swarm(SwarmStep),
}

impl fmt::Display for StackStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StackStep::Run(command) => write!(f, "{command}"),
            StackStep::InitOrMigrate { db_init, migrate } => {
                write!(f, "if the database has no alembic_version table: {db_init}\n       else: {migrate}")
            }
            StackStep::Migrate(command) => {
                write!(f, "unless the image does not know the database's revision: {command}")
            }
            StackStep::Backup { path } => {
                write!(f, "back up the database (pg_dump | gzip, checked, then renamed) to {}", path.display())
            }
            StackStep::PruneBackups { dir, keep } => write!(
                f,
                "remove backups in {} beyond the newest {keep}, and partial ones older than a day",
                dir.display()
            ),
            StackStep::SetTag { path, tag, contents } => {
                write!(f, "write {} with IMAGE_TAG={tag} (mode 600) from {contents}", path.display())
            }
            StackStep::Restore { path } => write!(
                f,
                "stop backend and worker; load {} into a new database; swap it in; start the stack",
                path.display()
            ),
            StackStep::CheckMigrations { list } => write!(
                f,
                "refuse if the new image's migrations after the database's revision drop or rename a column or \
                 table (--allow-downtime overrides): {list}"
            ),
            StackStep::Replace { services, starts, drain, timeout } => {
                writeln!(f, "start new {} containers beside the running ones:", services.join(", "))?;
                for start in starts {
                    writeln!(f, "       {start}")?;
                }
                write!(
                    f,
                    "       wait (at most {timeout} s) until they are healthy; if one never is, stop and remove \
                     them (the old ones keep serving)\n       \
                     else after {drain} s stop the old ones (docker stop -t {drain}) and remove them (docker rm)"
                )
            }
            StackStep::Swarm(step) => write!(f, "{step}"),
        }
    }
}

/// Deploy: login, pull, start the database, initialize or migrate it, start everything.
pub fn plan_deploy(compose: &Compose, login: Option<Command>, timeout: u64) -> Plan<StackStep> {
    let mut steps: Vec<StackStep> = login.into_iter().map(StackStep::Run).collect();
    steps.push(StackStep::Run(compose.pull(None)));
    steps.push(StackStep::Run(compose.up(&["db", "redis"], timeout)));
    steps.push(StackStep::InitOrMigrate { db_init: compose.db_init(), migrate: compose.migrate() });
    steps.push(StackStep::Run(compose.up(&[], timeout)));
    Plan { steps, recovery: None }
}

/// Everything an update decides from.
pub struct UpdateInputs<'a> {
    pub compose: &'a Compose,
    pub env_path: PathBuf,
    pub env: &'a DotEnv,
    pub from_tag: String,
    pub to_tag: String,
    pub login: Option<Command>,
    pub backup_path: PathBuf,
    pub timeout: u64,
    pub restore_on_failure: bool,
    /// Recreate the containers in place (`up`) instead of replacing them beside the old ones.
    pub allow_downtime: bool,
    /// Seconds the old containers keep serving after the new ones are healthy, and then have
    /// to finish what they serve once stopped.
    pub drain: u64,
}

/// `.env` with `IMAGE_TAG=tag`, as a step.
fn set_tag(path: &Path, env: &DotEnv, tag: &str) -> Result<StackStep> {
    let mut env = env.clone();
    env.set("IMAGE_TAG", tag)?;
    Ok(StackStep::SetTag {
        path: path.to_path_buf(),
        tag: tag.to_string(),
        contents: Secret::new(".env", env.render()),
    })
}

/// Update (and rollback): pull the new images first and check their migrations (nothing
/// changes yet), back up, then switch: `.env`, the migrations, the stateless services replaced
/// beside the running ones (or, with `allow_downtime`, recreated in place), then `up` for the
/// rest (which finds nothing to change unless the compose file did).
pub fn plan_update(inputs: &UpdateInputs) -> Result<Plan<StackStep>> {
    let compose = inputs.compose;
    let mut steps: Vec<StackStep> = inputs.login.clone().into_iter().map(StackStep::Run).collect();
    steps.push(StackStep::Run(compose.pull(Some(&inputs.to_tag))));
    steps.push(StackStep::Run(compose.up(&["db"], inputs.timeout)));
    if !inputs.allow_downtime {
        steps.push(StackStep::CheckMigrations { list: compose.migration_files(&inputs.to_tag) });
    }
    steps.push(StackStep::Backup { path: inputs.backup_path.clone() });
    let point_of_no_return = steps.len();
    steps.push(set_tag(&inputs.env_path, inputs.env, &inputs.to_tag)?);
    steps.push(StackStep::Migrate(compose.migrate()));
    if !inputs.allow_downtime {
        steps.push(StackStep::Replace {
            services: STATELESS.iter().map(|service| service.to_string()).collect(),
            starts: STATELESS.iter().map(|service| compose.start_beside(service, 2)).collect(),
            drain: inputs.drain,
            timeout: inputs.timeout,
        });
    }
    steps.push(StackStep::Run(compose.up(&[], inputs.timeout)));
    let mut on_failure = vec![set_tag(&inputs.env_path, inputs.env, &inputs.from_tag)?];
    if inputs.restore_on_failure {
        on_failure.push(StackStep::Restore { path: inputs.backup_path.clone() });
    } else {
        on_failure.push(StackStep::Run(compose.up(&[], inputs.timeout)));
    }
    Ok(Plan { steps, recovery: Some(Recovery { from: point_of_no_return, steps: on_failure }) })
}

/// A swarm step of `stack`.
fn swarm(stack: &Stack, action: SwarmAction) -> StackStep {
    StackStep::Swarm(SwarmStep { stack: stack.clone(), action })
}

/// `deploy --swarm`: login, check the swarm (and label the data node), write the stack files,
/// deploy db and redis and wait until they are healthy, db-init once (or the migrations),
/// then deploy every service and wait until each runs its image, healthy.
pub fn plan_swarm_deploy(stack: &Stack, files: &SwarmFiles, login: Option<Command>, timeout: u64) -> Plan<StackStep> {
    let mut steps: Vec<StackStep> = login.into_iter().map(StackStep::Run).collect();
    steps.push(swarm(stack, SwarmAction::Prepare));
    steps.push(swarm(stack, SwarmAction::WriteFiles { dir: files.dir.clone(), files: files.files.clone() }));
    steps.push(StackStep::Run(stack.deploy(&files.data_file)));
    let data = files.services.iter().filter(|(service, _)| STATEFUL.contains(&service.as_str()));
    let data = data.map(|(service, image)| (service.clone(), image.clone())).collect();
    steps.push(swarm(stack, SwarmAction::Converge { services: data, timeout }));
    steps.push(swarm(stack, SwarmAction::InitOrMigrate(files.one_off.clone())));
    steps.push(StackStep::Run(stack.deploy(&files.stack_file)));
    steps.push(swarm(stack, SwarmAction::Converge { services: files.services.clone(), timeout }));
    Plan { steps, recovery: None }
}

/// Everything a swarm update decides from: `from` and `to` are the stack files of the two tags.
pub struct SwarmUpdateInputs<'a> {
    pub stack: &'a Stack,
    pub env_path: PathBuf,
    pub env: &'a DotEnv,
    pub from_tag: String,
    pub to_tag: String,
    pub from: &'a SwarmFiles,
    pub to: &'a SwarmFiles,
    pub login: Option<Command>,
    pub backup_path: PathBuf,
    pub timeout: u64,
    pub restore_on_failure: bool,
    /// Skip the check that the new migrations only add (the old tasks may fail against the
    /// migrated database until swarm replaces them).
    pub allow_downtime: bool,
}

/// `update --swarm` (and rollback): check that the new image's migrations only add (unless
/// `allow_downtime`), back up, then switch: `.env`, the new stack files, the
/// migrations with the new backend image while the old version serves, `docker stack
/// deploy` (swarm starts each new task beside the old one and stops the old one once the new
/// one is healthy, or rolls the service back), and wait for it. When that fails, `.env` and
/// the stack files of the old tag come back and are deployed the same way, and with
/// `restore_on_failure` the backup is restored then.
pub fn plan_swarm_update(inputs: &SwarmUpdateInputs) -> Result<Plan<StackStep>> {
    let stack = inputs.stack;
    let mut steps: Vec<StackStep> = inputs.login.clone().into_iter().map(StackStep::Run).collect();
    steps.push(swarm(stack, SwarmAction::Prepare));
    if !inputs.allow_downtime {
        steps.push(swarm(stack, SwarmAction::CheckMigrations(inputs.to.one_off.clone())));
    }
    steps.push(swarm(stack, SwarmAction::Backup { path: inputs.backup_path.clone() }));
    let point_of_no_return = steps.len();
    let switch = |tag: &str, files: &SwarmFiles| -> Result<Vec<StackStep>> {
        Ok(vec![
            set_tag(&inputs.env_path, inputs.env, tag)?,
            swarm(stack, SwarmAction::WriteFiles { dir: files.dir.clone(), files: files.files.clone() }),
        ])
    };
    let deploy = |files: &SwarmFiles| {
        [
            StackStep::Run(stack.deploy(&files.stack_file)),
            swarm(stack, SwarmAction::Converge { services: files.services.clone(), timeout: inputs.timeout }),
        ]
    };
    steps.extend(switch(&inputs.to_tag, inputs.to)?);
    steps.push(swarm(stack, SwarmAction::Migrate(inputs.to.one_off.clone())));
    steps.extend(deploy(inputs.to));
    let mut on_failure = switch(&inputs.from_tag, inputs.from)?;
    on_failure.extend(deploy(inputs.from));
    if inputs.restore_on_failure {
        // Once the old version runs again: its writers stop for the swap, as `restore` does.
        on_failure.push(swarm(stack, SwarmAction::Restore { path: inputs.backup_path.clone() }));
    }
    Ok(Plan { steps, recovery: Some(Recovery { from: point_of_no_return, steps: on_failure }) })
}

impl Executor<'_> {
    pub fn perform(&self, action: &StackStep) -> Result<()> {
        match action {
            StackStep::Run(command) => self.run(command),
            StackStep::InitOrMigrate { db_init, migrate } => match self.db_state()? {
                DbState::Uninitialized => {
                    self.say("the database was never initialized: running db-init");
                    self.run(db_init)
                }
                DbState::At(revision) => {
                    self.say(&format!(
                        "the database is initialized (revision {revision}): running the image's migrations"
                    ));
                    self.migrate(migrate)
                }
            },
            StackStep::Migrate(command) => self.migrate(command),
            StackStep::Backup { path } => {
                let path = path.clone();
                database::dump_to(self, &path)?;
                self.say(&format!("backup: {}", path.display()));
                Ok(())
            }
            StackStep::SetTag { path, contents, .. } => {
                crate::plan::write_atomically(path, contents.expose().as_bytes(), 0o600)
            }
            StackStep::PruneBackups { dir, keep } => database::prune(dir, *keep, clock::now_unix()),
            StackStep::Restore { path } => database::restore_from(self, self.compose, path),
            StackStep::CheckMigrations { list } => self.check_migrations(list),
            StackStep::Replace { services, drain, .. } => {
                let services: Vec<&str> = services.iter().map(String::as_str).collect();
                self.replace(&services, *drain)
            }
            StackStep::Swarm(step) => self.perform_swarm(step),
        }
    }

    /// Runs `plan`, and its recovery when a step at or after its point of no return fails.
    pub fn execute(&self, plan: &Plan<StackStep>) -> std::result::Result<(), Failure> {
        let count = plan.steps.len() + plan.recovery.as_ref().map_or(0, |recovery| recovery.steps.len());
        let mut number = 0;
        let result = plan.execute_with(|step| {
            number += 1;
            self.progress.step(number, count, &step.to_string());
            self.perform(step)
        });
        self.progress.finish(result.is_ok());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compose() -> Compose {
        Compose {
            program: "docker".into(),
            dir: "/srv/intric".into(),
            file: "/srv/intric/docker-compose.yml".into(),
            project: None,
            name: "intric".into(),
            isolated: vec![],
            database: crate::adapters::compose::Database { user: "postgres".into(), name: "intric".into() },
            images: Vec::new(),
        }
    }

    fn env() -> DotEnv {
        DotEnv::parse(Path::new("/srv/intric/.env"), "IMAGE_TAG=1.0.0\nPOSTGRES_PASSWORD=canary-pw-0123456789\n")
            .unwrap()
    }

    fn update_inputs<'a>(compose: &'a Compose, env: &'a DotEnv, restore: bool) -> UpdateInputs<'a> {
        UpdateInputs {
            compose,
            env_path: "/srv/intric/.env".into(),
            env,
            from_tag: "1.0.0".into(),
            to_tag: "1.1.0".into(),
            login: Some(crate::adapters::docker::login_with(
                "docker",
                "r:5000",
                "ci",
                Secret::new("NEXUS_PASSWORD", "canary-pw"),
            )),
            backup_path: "/srv/intric/backups/intric_20260101T000000Z.sql.gz".into(),
            timeout: 90,
            restore_on_failure: restore,
            allow_downtime: false,
            drain: 3,
        }
    }

    /// A short name for each step, to compare orders.
    fn names(steps: &[StackStep]) -> Vec<String> {
        steps
            .iter()
            .map(|step| match step {
                StackStep::Run(command) => {
                    let words: Vec<&str> = command.args.iter().map(String::as_str).collect();
                    match words.iter().position(|word| ["up", "pull", "login", "stop"].contains(word)) {
                        Some(index) if words[index] == "up" && words.contains(&"db") => "up db".into(),
                        Some(index) => words[index].to_string(),
                        None => words.join(" "),
                    }
                }
                StackStep::InitOrMigrate { .. } => "init-or-migrate".into(),
                StackStep::Migrate(_) => "migrate".into(),
                StackStep::Backup { .. } => "backup".into(),
                StackStep::PruneBackups { .. } => "prune".into(),
                StackStep::SetTag { tag, .. } => format!("set {tag}"),
                StackStep::Restore { .. } => "restore".into(),
                StackStep::CheckMigrations { .. } => "check migrations".into(),
                StackStep::Replace { .. } => "replace".into(),
                StackStep::Swarm(step) => match &step.action {
                    SwarmAction::Prepare => "prepare".into(),
                    SwarmAction::WriteFiles { .. } => "write files".into(),
                    SwarmAction::Converge { services, .. } => {
                        format!("converge {}", services.keys().cloned().collect::<Vec<_>>().join(" "))
                    }
                    SwarmAction::InitOrMigrate(_) => "init-or-migrate".into(),
                    SwarmAction::Migrate(_) => "migrate".into(),
                    SwarmAction::Backup { .. } => "backup".into(),
                    SwarmAction::Restore { .. } => "restore".into(),
                    SwarmAction::CheckMigrations(_) => "check migrations".into(),
                },
            })
            .collect()
    }

    #[test]
    fn update_checks_and_backs_up_before_changing_env_then_migrates_and_replaces_beside() {
        let (compose, env) = (compose(), env());
        let plan = plan_update(&update_inputs(&compose, &env, false)).unwrap();
        assert_eq!(
            names(&plan.steps),
            ["login", "pull", "up db", "check migrations", "backup", "set 1.1.0", "migrate", "replace", "up"]
        );
        let recovery = plan.recovery.as_ref().unwrap();
        assert_eq!(recovery.from, 5, "failures before .env changes need no rollback");
        assert_eq!(names(&recovery.steps), ["set 1.0.0", "up"]);
        let StackStep::Run(pull) = &plan.steps[1] else { panic!() };
        assert_eq!(pull.env, [("IMAGE_TAG".to_string(), "1.1.0".to_string())], "pulled before .env changes");
        let StackStep::CheckMigrations { list } = &plan.steps[3] else { panic!() };
        assert_eq!(list.env, pull.env, "the new image's migrations, before .env changes");
        let StackStep::Migrate(migrate) = &plan.steps[6] else { panic!() };
        assert!(migrate.args.windows(4).any(|w| w == ["run", "--rm", "--no-deps", "-T"]), "a one-off container");
        let StackStep::Replace { services, starts, drain, .. } = &plan.steps[7] else { panic!() };
        assert_eq!((services.join(" "), *drain), ("backend worker frontend".to_string(), 3));
        let starts: Vec<String> = starts.iter().map(|start| start.to_string()).collect();
        for (start, service) in starts.iter().zip(["backend", "worker", "frontend"]) {
            let scaled = format!("up --detach --no-deps --no-recreate --scale {service}=2 {service}");
            assert!(start.ends_with(&scaled), "db, redis and the edge are never doubled: {start}");
        }
        let StackStep::Run(up) = &plan.steps[8] else { panic!() };
        assert!(up.args.contains(&"--wait".into()) && up.args.contains(&"--remove-orphans".into()));
        assert!(up.args.windows(2).any(|w| w == ["--wait-timeout", "90"]));
    }

    #[test]
    fn with_downtime_allowed_an_update_recreates_in_place_unchecked() {
        let (compose, env) = (compose(), env());
        let inputs = UpdateInputs { allow_downtime: true, ..update_inputs(&compose, &env, false) };
        let plan = plan_update(&inputs).unwrap();
        assert_eq!(names(&plan.steps), ["login", "pull", "up db", "backup", "set 1.1.0", "migrate", "up"]);
        assert_eq!(plan.recovery.as_ref().unwrap().from, 4);
    }

    #[test]
    fn a_failed_update_restores_the_database_only_when_asked() {
        let (compose, env) = (compose(), env());
        let plan = plan_update(&update_inputs(&compose, &env, true)).unwrap();
        let recovery = plan.recovery.as_ref().unwrap();
        assert_eq!(names(&recovery.steps), ["set 1.0.0", "restore"]);
        let StackStep::SetTag { contents, .. } = &recovery.steps[0] else { panic!() };
        assert!(contents.expose().starts_with("IMAGE_TAG=1.0.0\nPOSTGRES_PASSWORD="));
        let StackStep::SetTag { contents, .. } = &plan.steps[5] else { panic!() };
        assert!(contents.expose().starts_with("IMAGE_TAG=1.1.0\n"));
    }

    #[test]
    fn plans_print_no_secret() {
        let (compose, env) = (compose(), env());
        let plan = plan_update(&update_inputs(&compose, &env, true)).unwrap();
        let shown = format!("{plan}{plan:?}");
        assert!(!shown.contains("canary"), "{shown}");
        assert!(shown.contains("if step 6 or a later one fails:"), "{shown}");
    }

    #[test]
    fn deploy_initializes_or_migrates_then_starts_everything() {
        let plan = plan_deploy(&compose(), None, 60);
        assert_eq!(names(&plan.steps), ["pull", "up db", "init-or-migrate", "up"]);
        assert!(plan.recovery.is_none());
        let StackStep::InitOrMigrate { db_init, .. } = &plan.steps[2] else { panic!() };
        assert!(db_init.to_string().ends_with("--profile init run --rm -T db-init"));
    }
}
