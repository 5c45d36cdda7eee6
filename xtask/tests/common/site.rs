//! A deployment site for the end-to-end tests of the operator tasks (`e2e.rs`, `deploy_e2e.rs`,
//! `zero_downtime_e2e.rs`, `swarm_e2e.rs`): a temporary deployment directory holding the
//! repository's `docker-compose.yml` and `.env.example`, driven by the xtask under a compose
//! project or a swarm stack of the test's own.
//!
//! What differs between the two modes is data ([`Mode`]): how the site is taken down (`docker
//! compose down --volumes`, or `docker stack rm` and then the stack's volumes once its
//! containers are gone), how the database's container is found, and what is shown when a test
//! fails. The site is taken down before it is used (a run killed earlier may have left it up) and
//! again when dropped, also when the test fails.

use std::cell::RefCell;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use super::*;

/// How a site's stack runs on the engine.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// A Docker Compose project.
    Compose,
    /// A Docker Swarm stack.
    Swarm,
}

/// The named volumes of the compose file, which a swarm stack prefixes with its name.
const VOLUMES: [&str; 3] = ["postgres_data", "redis_data", "backend_data"];

/// A deployment directory and the compose project or swarm stack `name` deployed from it.
pub struct Site {
    dir: tempfile::TempDir,
    name: String,
    mode: Mode,
    /// Everything the xtask printed, shown when a test fails and searched for secrets.
    shown: RefCell<String>,
}

impl Site {
    /// A fresh site for the compose project or swarm stack `name`, taken down first.
    pub fn new(name: &str, mode: Mode) -> Site {
        let dir = tempfile::tempdir().unwrap();
        for file in ["docker-compose.yml", ".env.example"] {
            std::fs::copy(workspace().join("docker").join(file), dir.path().join(file)).unwrap();
        }
        let site = Site { dir, name: name.to_string(), mode, shown: Default::default() };
        site.take_down();
        site
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The compose project's or swarm stack's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// From now on the site runs in `mode` (a deployment moved from swarm back to compose): its
    /// database is found, and it is taken down, that way.
    pub fn switch_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// `env init`, then `settings` written into `.env` (each must be a setting `.env` has).
    pub fn init_env(&self, settings: &[(&str, &str)]) {
        self.ok(&["env", "init"]);
        for (key, value) in settings {
            self.set(key, value);
        }
    }

    /// Sets `key`, which `.env` must already have, to `value`.
    pub fn set(&self, key: &str, value: &str) {
        let path = self.path().join(".env");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().any(|line| line.starts_with(&format!("{key}="))), "{key} in .env");
        set_env_var(&path, key, value);
    }

    /// What `.env` sets `key` to (empty when nothing).
    pub fn env_value(&self, key: &str) -> String {
        let text = std::fs::read_to_string(self.path().join(".env")).unwrap();
        text.lines().find_map(|line| line.strip_prefix(&format!("{key}="))).unwrap_or_default().to_string()
    }

    /// The xtask with `--dir` (and `--project`) of this site; its output is recorded.
    pub fn xtask(&self, args: &[&str]) -> Output {
        let output = xtask_in(self.path(), &self.name, args);
        self.record(&output);
        output
    }

    /// Runs the xtask, which must succeed; its standard output and error together.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.xtask(args);
        assert_success(&output, &args.join(" "));
        format!("{}{}", stdout(&output), stderr(&output))
    }

    /// Runs the xtask, which must succeed; its standard output only.
    pub fn stdout(&self, args: &[&str]) -> String {
        let output = self.xtask(args);
        assert_success(&output, &args.join(" "));
        stdout(&output)
    }

    /// Starts the xtask on this site in the background, its output going to the file `log` in
    /// the deployment directory (see [`Site::log`]).
    pub fn spawn(&self, args: &[&str], log: &str) -> Child {
        let file = std::fs::File::create(self.path().join(log)).unwrap();
        let dir = self.path().to_str().unwrap();
        let args = [args, &["--dir", dir, "--project", &self.name]].concat();
        xtask_command(&args, &[], self.path())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap()
    }

    /// What a process started by [`Site::spawn`] wrote to `log`; it is recorded.
    pub fn log(&self, log: &str) -> String {
        let text = std::fs::read_to_string(self.path().join(log)).unwrap_or_default();
        self.shown.borrow_mut().push_str(&text);
        text
    }

    fn record(&self, output: &Output) {
        let mut shown = self.shown.borrow_mut();
        shown.push_str(&stdout(output));
        shown.push_str(&stderr(output));
    }

    /// Everything the xtask printed on this site so far.
    pub fn shown(&self) -> String {
        self.shown.borrow().clone()
    }

    /// `docker compose` on this site's project.
    pub fn compose(&self, args: &[&str]) -> Output {
        assert_eq!(self.mode, Mode::Compose, "docker compose on a swarm site");
        compose_in(self.path(), &self.name, args)
    }

    /// [`Site::compose`] that must succeed: everything it printed.
    pub fn compose_ok(&self, args: &[&str]) -> String {
        let output = self.compose(args);
        assert_success(&output, &format!("docker compose {}", args.join(" ")));
        format!("{}{}", stdout(&output), stderr(&output))
    }

    /// The running container of the database.
    fn db_container(&self) -> String {
        let listed = match self.mode {
            Mode::Compose => self.compose(&["ps", "--quiet", "db"]),
            Mode::Swarm => {
                let filter = format!("label=com.docker.swarm.service.name={}_db", self.name);
                run("docker", &["ps", "--quiet", "--filter", "status=running", "--filter", &filter], self.path())
            }
        };
        assert_success(&listed, "finding the db container");
        let id = stdout(&listed).split_whitespace().next().map(str::to_string);
        id.unwrap_or_else(|| panic!("no running db container of {}", self.name))
    }

    /// SQL in the database as the deployment's Postgres user (from `.env`), with `psql` in the
    /// db container: the rows it prints, unaligned, without headers.
    pub fn sql(&self, sql: &str) -> String {
        let (user, database) = (self.env_value("POSTGRES_USER"), self.env_value("POSTGRES_DB"));
        let container = self.db_container();
        let args = ["exec", &container, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", &user, "-d", &database];
        let output = run("docker", &[&args[..], &["-tA", "-c", sql]].concat(), self.path());
        assert_success(&output, sql);
        stdout(&output).trim().to_string()
    }

    /// The deploy history's records, oldest first.
    pub fn history(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path().join(".deploy-history.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The deploy history's last record.
    pub fn last_record(&self) -> serde_json::Value {
        self.history().pop().expect("a deploy history")
    }

    /// Asserts that the update that gave `failed` failed and was rolled back to `tag`: it says
    /// so, `.env` names `tag` again and the history records the rollback. Its standard error.
    pub fn assert_rolled_back(&self, failed: &Output, tag: &str) -> String {
        let error = stderr(failed);
        assert!(!failed.status.success(), "the update succeeded:\n{error}");
        assert!(error.contains(&format!("failed and was rolled back to {tag}, which is running again")), "{error}");
        assert_eq!(self.env_value("IMAGE_TAG"), tag);
        assert_eq!(self.last_record()["result"], "rolled-back");
        error
    }

    /// Removes the stack with its volumes, what ever state it is in.
    fn take_down(&self) {
        if let Mode::Swarm = self.mode {
            run("docker", &["stack", "rm", &self.name], self.path());
            // The volumes can go once the tasks' containers are gone.
            let filter = format!("label=com.docker.stack.namespace={}", self.name);
            for _ in 0..60 {
                let left = run("docker", &["ps", "--all", "--quiet", "--filter", &filter], self.path());
                if stdout(&left).trim().is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        compose_in(self.path(), &self.name, &["--profile", "init", "down", "--volumes", "--remove-orphans"]);
        // Volumes a swarm stack made (also under a site that moved to compose mode since),
        // which compose leaves: they carry no compose labels.
        for volume in VOLUMES {
            run("docker", &["volume", "rm", &format!("{}_{volume}", self.name)], self.path());
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let (what, state) = match self.mode {
                Mode::Compose => ("compose logs", self.compose(&["logs", "--no-color", "--tail", "40"])),
                Mode::Swarm => {
                    ("docker stack ps", run("docker", &["stack", "ps", &self.name, "--no-trunc"], self.path()))
                }
            };
            eprintln!("--- {what}\n{}", stdout(&state));
            eprintln!("--- xtask output\n{}", self.shown.borrow());
        }
        self.take_down();
    }
}

/// The settings of `.env` that point a site at the lab: `registry` (a namespace below the lab
/// registry) with the lab's login, the tag `tag`, the lab's stand-ins for Postgres, Redis and
/// the edge, and an LLM key `llm_key` (the backend needs one).
pub fn lab_settings<'a>(
    lab: &'a BTreeMap<String, String>,
    registry: &'a str,
    tag: &'a str,
    llm_key: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("NEXUS_REGISTRY", registry),
        ("NEXUS_USERNAME", lab["NEXUS_USERNAME"].as_str()),
        ("NEXUS_PASSWORD", lab["NEXUS_PASSWORD"].as_str()),
        ("IMAGE_TAG", tag),
        ("POSTGRES_IMAGE", lab["POSTGRES_IMAGE"].as_str()),
        ("REDIS_IMAGE", lab["REDIS_IMAGE"].as_str()),
        ("EDGE_IMAGE", lab["NGINX_IMAGE"].as_str()),
        ("OPENAI_API_KEY", llm_key),
    ]
}
