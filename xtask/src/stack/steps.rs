//! The steps that change a running stack (pull, start, initialize or migrate the database,
//! back up, switch `IMAGE_TAG`, restore), the plans of deploy and update made of them, and how
//! each step is performed.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::adapters::clock;
use crate::adapters::compose::Compose;
use crate::adapters::dotenv::DotEnv;
use crate::plan::{Command, Failure, Plan, Recovery, Secret};
use crate::stack::database;
use crate::stack::executor::{DbState, Executor};

/// One step of an operator plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
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
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Run(command) => write!(f, "{command}"),
            Action::InitOrMigrate { db_init, migrate } => {
                write!(f, "if the database has no alembic_version table: {db_init}\n       else: {migrate}")
            }
            Action::Migrate(command) => write!(f, "unless the image does not know the database's revision: {command}"),
            Action::Backup { path } => {
                write!(f, "back up the database (pg_dump | gzip, checked, then renamed) to {}", path.display())
            }
            Action::PruneBackups { dir, keep } => write!(
                f,
                "remove backups in {} beyond the newest {keep}, and partial ones older than a day",
                dir.display()
            ),
            Action::SetTag { path, tag, contents } => {
                write!(f, "write {} with IMAGE_TAG={tag} (mode 600) from {contents}", path.display())
            }
            Action::Restore { path } => write!(
                f,
                "stop backend and worker; load {} into a new database; swap it in; start the stack",
                path.display()
            ),
        }
    }
}

/// Deploy: login, pull, start the database, initialize or migrate it, start everything.
pub fn plan_deploy(compose: &Compose, login: Option<Command>, timeout: u64) -> Plan<Action> {
    let mut steps: Vec<Action> = login.into_iter().map(Action::Run).collect();
    steps.push(Action::Run(compose.pull(None)));
    steps.push(Action::Run(compose.up(&["db", "redis"], timeout)));
    steps.push(Action::InitOrMigrate { db_init: compose.db_init(), migrate: compose.migrate() });
    steps.push(Action::Run(compose.up(&[], timeout)));
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
}

/// `.env` with `IMAGE_TAG=tag`, as a step.
fn set_tag(path: &Path, env: &DotEnv, tag: &str) -> Result<Action> {
    let mut env = env.clone();
    env.set("IMAGE_TAG", tag)?;
    Ok(Action::SetTag { path: path.to_path_buf(), tag: tag.to_string(), contents: Secret::new(".env", env.render()) })
}

/// Update (and rollback): pull the new images first (nothing changes yet), back up, then switch.
pub fn plan_update(inputs: &UpdateInputs) -> Result<Plan<Action>> {
    let compose = inputs.compose;
    let mut steps: Vec<Action> = inputs.login.clone().into_iter().map(Action::Run).collect();
    steps.push(Action::Run(compose.pull(Some(&inputs.to_tag))));
    steps.push(Action::Run(compose.up(&["db"], inputs.timeout)));
    steps.push(Action::Backup { path: inputs.backup_path.clone() });
    let point_of_no_return = steps.len();
    steps.push(set_tag(&inputs.env_path, inputs.env, &inputs.to_tag)?);
    steps.push(Action::Migrate(compose.migrate()));
    steps.push(Action::Run(compose.up(&[], inputs.timeout)));
    let mut on_failure = vec![set_tag(&inputs.env_path, inputs.env, &inputs.from_tag)?];
    if inputs.restore_on_failure {
        on_failure.push(Action::Restore { path: inputs.backup_path.clone() });
    } else {
        on_failure.push(Action::Run(compose.up(&[], inputs.timeout)));
    }
    Ok(Plan { steps, recovery: Some(Recovery { from: point_of_no_return, steps: on_failure }) })
}

impl Executor<'_> {
    pub fn perform(&self, action: &Action) -> Result<()> {
        match action {
            Action::Run(command) => self.run(command),
            Action::InitOrMigrate { db_init, migrate } => match self.db_state()? {
                DbState::Uninitialized => {
                    eprintln!("the database was never initialized: running db-init");
                    self.run(db_init)
                }
                DbState::At(revision) => {
                    eprintln!("the database is initialized (revision {revision}): running the image's migrations");
                    self.migrate(migrate)
                }
            },
            Action::Migrate(command) => self.migrate(command),
            Action::Backup { path } => {
                let path = path.clone();
                database::dump_to(self, &path)?;
                eprintln!("backup: {}", path.display());
                Ok(())
            }
            Action::SetTag { path, contents, .. } => {
                crate::plan::write_atomically(path, contents.expose().as_bytes(), 0o600)
            }
            Action::PruneBackups { dir, keep } => database::prune(dir, *keep, clock::now_unix()),
            Action::Restore { path } => database::restore_from(self, path),
        }
    }

    /// Runs `plan`, and its recovery when a step at or after its point of no return fails.
    pub fn execute(&self, plan: &Plan<Action>) -> std::result::Result<(), Failure> {
        plan.execute_with(|step| self.perform(step))
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
        }
    }

    /// A short name for each step, to compare orders.
    fn names(steps: &[Action]) -> Vec<String> {
        steps
            .iter()
            .map(|step| match step {
                Action::Run(command) => {
                    let words: Vec<&str> = command.args.iter().map(String::as_str).collect();
                    match words.iter().position(|word| ["up", "pull", "login", "stop"].contains(word)) {
                        Some(index) if words[index] == "up" && words.contains(&"db") => "up db".into(),
                        Some(index) => words[index].to_string(),
                        None => words.join(" "),
                    }
                }
                Action::InitOrMigrate { .. } => "init-or-migrate".into(),
                Action::Migrate(_) => "migrate".into(),
                Action::Backup { .. } => "backup".into(),
                Action::PruneBackups { .. } => "prune".into(),
                Action::SetTag { tag, .. } => format!("set {tag}"),
                Action::Restore { .. } => "restore".into(),
            })
            .collect()
    }

    #[test]
    fn update_pulls_and_backs_up_before_changing_env_then_migrates_and_recreates() {
        let (compose, env) = (compose(), env());
        let plan = plan_update(&update_inputs(&compose, &env, false)).unwrap();
        assert_eq!(names(&plan.steps), ["login", "pull", "up db", "backup", "set 1.1.0", "migrate", "up"]);
        let recovery = plan.recovery.as_ref().unwrap();
        assert_eq!(recovery.from, 4, "failures before .env changes need no rollback");
        assert_eq!(names(&recovery.steps), ["set 1.0.0", "up"]);
        let Action::Run(pull) = &plan.steps[1] else { panic!() };
        assert_eq!(pull.env, [("IMAGE_TAG".to_string(), "1.1.0".to_string())], "pulled before .env changes");
        let Action::Migrate(migrate) = &plan.steps[5] else { panic!() };
        assert!(migrate.args.windows(4).any(|w| w == ["run", "--rm", "--no-deps", "-T"]), "a one-off container");
        let Action::Run(up) = &plan.steps[6] else { panic!() };
        assert!(up.args.contains(&"--wait".into()) && up.args.contains(&"--remove-orphans".into()));
        assert!(up.args.windows(2).any(|w| w == ["--wait-timeout", "90"]));
    }

    #[test]
    fn a_failed_update_restores_the_database_only_when_asked() {
        let (compose, env) = (compose(), env());
        let plan = plan_update(&update_inputs(&compose, &env, true)).unwrap();
        let recovery = plan.recovery.as_ref().unwrap();
        assert_eq!(names(&recovery.steps), ["set 1.0.0", "restore"]);
        let Action::SetTag { contents, .. } = &recovery.steps[0] else { panic!() };
        assert!(contents.expose().starts_with("IMAGE_TAG=1.0.0\nPOSTGRES_PASSWORD="));
        let Action::SetTag { contents, .. } = &plan.steps[4] else { panic!() };
        assert!(contents.expose().starts_with("IMAGE_TAG=1.1.0\n"));
    }

    #[test]
    fn plans_print_no_secret() {
        let (compose, env) = (compose(), env());
        let plan = plan_update(&update_inputs(&compose, &env, true)).unwrap();
        let shown = format!("{plan}{plan:?}");
        assert!(!shown.contains("canary"), "{shown}");
        assert!(shown.contains("if step 5 or a later one fails:"), "{shown}");
    }

    #[test]
    fn deploy_initializes_or_migrates_then_starts_everything() {
        let plan = plan_deploy(&compose(), None, 60);
        assert_eq!(names(&plan.steps), ["pull", "up db", "init-or-migrate", "up"]);
        assert!(plan.recovery.is_none());
        let Action::InitOrMigrate { db_init, .. } = &plan.steps[2] else { panic!() };
        assert!(db_init.to_string().ends_with("--profile init run --rm -T db-init"));
    }
}
