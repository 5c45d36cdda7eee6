//! The same stack on Docker Swarm (`--swarm`): the stack file made from compose's own
//! resolution of `docker-compose.yml` (`docker compose config --format json`, `.env`
//! interpolated), the swarm steps of deploy and update, how they run, and the swarm status.
//!
//! The translation ([`translate`]) handles what `docker stack deploy` ignores or refuses:
//! - services with `profiles` (db-init) are not in the stack: db-init runs once, as a one-off
//!   `docker run --rm` on the stack's attachable overlay network, after db and redis are
//!   healthy and only when the database was never initialized; migrations run the same way;
//! - `depends_on` is dropped: the steps order db and redis (deployed first, from a stack file
//!   of their own), db-init, then the app services;
//! - `restart` becomes `deploy.restart_policy`; `container_name`, `build` and `pull_policy`
//!   are dropped; healthchecks are kept (a task counts as running only once it is healthy);
//! - backend, worker and frontend update `start-first` with `failure_action: rollback`, a
//!   `monitor` of one healthcheck interval after the health gate, and the same rollback
//!   config; `--replicas` scales them;
//! - every service is reached through DNS round robin (`endpoint_mode: dnsrr`), which the
//!   nginx proxies ask every 2 s, as in compose mode, not through a virtual IP (that needs
//!   IPVS in the kernel, which the lab's machines lack);
//! - db and redis update `stop-first`, one replica, pinned to a node labelled
//!   `intric.data=true` (deploy labels this node when no node has the label, and says so);
//! - published ports are published by the node the edge runs on (`mode: host`; the ingress
//!   routing mesh needs virtual IPs), on every interface: a port compose binds to loopback
//!   only (the backend's debugging port) is not published; the edge updates `stop-first`;
//! - compose's inline `configs` content goes to files beside the stack file, each named after
//!   its content's digest (swarm configs cannot change in place);
//! - `.env`'s values stay in the environment of the services, in the stack file (mode 0600,
//!   in `DIR/.swarm/`, never printed): `docker stack deploy` reads it, no argv carries them.
//!
//! What the steps run (argv in `adapters::swarm`): `docker info` and `docker node ls|update`
//! (a manager, the data label), `docker stack deploy`, `docker service inspect|ps` each second
//! while waiting, `docker ps` and `docker exec` of `psql`/`pg_dump` in the db task's container,
//! and `docker run --rm` of the backend image for db-init and the migrations.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::adapters::clock;
use crate::adapters::compose::{Compose, PRINT_MIGRATIONS, STATELESS};
use crate::adapters::swarm::{DATA_LABEL, Stack};
use crate::plan::runner::Runner;
use crate::plan::{Command, Secret};
use crate::stack::database::{self, RestoreTarget, WRITERS};
use crate::stack::executor::{DbState, Executor};
use crate::stack::status;

/// The services that keep state: one replica each, stopped before their replacement starts,
/// on the labelled node.
pub const STATEFUL: [&str; 2] = ["db", "redis"];

/// Where the generated files of a deployment go: `DIR/.swarm/`.
pub fn swarm_dir(deployment_dir: &Path) -> PathBuf {
    deployment_dir.join(".swarm")
}

/// `docker compose config --format json` of the deployment, with `tag` as `IMAGE_TAG` when
/// given: compose's own resolution of the file, `.env` interpolated.
pub fn resolved_config(compose: &Compose, tag: Option<&str>) -> Command {
    let command = compose.command(["--profile", "init", "config", "--format", "json"]);
    match tag {
        Some(tag) => command.env("IMAGE_TAG", tag),
        None => command,
    }
}

/// The one-off container db-init and the migrations run in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneOff {
    /// The backend image of the version.
    pub image: String,
    /// db-init's command.
    pub db_init: Vec<String>,
    /// Its `--env-file`: db-init's environment (the backend's settings), mode 0600.
    pub env_file: PathBuf,
}

/// What [`translate`] makes: the files to write into the swarm directory, and what else the
/// steps need from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmFiles {
    /// `DIR/.swarm`.
    pub dir: PathBuf,
    /// File name → contents; every one mode 0600.
    pub files: Vec<(String, Secret)>,
    /// The stack file of every service.
    pub stack_file: PathBuf,
    /// The stack file of db and redis only, deployed first.
    pub data_file: PathBuf,
    /// The services in the stack file, each with its image.
    pub services: BTreeMap<String, String>,
    pub one_off: OneOff,
    /// Said before anything runs (ports not published, ...).
    pub notes: Vec<String>,
}

/// `5s`, `1m30s`, `500ms`, `1h` (Go durations, as compose prints them) in whole seconds.
pub fn duration_seconds(text: &str) -> Option<u64> {
    let (mut total, mut number) = (0f64, String::new());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let value: f64 = number.parse().ok()?;
        number.clear();
        total += match c {
            'h' => value * 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                value / 1000.0
            }
            'm' => value * 60.0,
            's' => value,
            _ => return None,
        };
    }
    number.is_empty().then_some(total.ceil() as u64)
}

/// Compose escapes a literal `$` as `$$` in what it prints; files that nothing interpolates
/// again (configs, the one-off's env file) get the literal.
fn unescape(text: &str) -> String {
    text.replace("$$", "$")
}

fn is_loopback(host_ip: &str) -> bool {
    host_ip.starts_with("127.") || host_ip == "::1" || host_ip == "localhost"
}

/// `restart` as a swarm restart policy.
fn restart_policy(restart: Option<&str>) -> Value {
    match restart.unwrap_or("always") {
        "no" => json!({"condition": "none"}),
        on_failure if on_failure.starts_with("on-failure") => match on_failure.split_once(':') {
            Some((_, attempts)) => {
                json!({"condition": "on-failure", "max_attempts": attempts.parse::<u64>().unwrap_or(0)})
            }
            None => json!({"condition": "on-failure"}),
        },
        _ => json!({"condition": "any", "delay": "5s"}),
    }
}

/// The update `monitor` of a service: one healthcheck interval (compose's default, 30 s,
/// without one), at least 5 s. Swarm counts a task with a healthcheck as running only once it
/// is healthy, so the health gate needs no monitor; the monitor adds one more check after it,
/// so a task that dies or fails right after its first success is rolled back too, without
/// making every update wait interval × retries per service.
fn monitor_seconds(service: &Value) -> u64 {
    let interval = service["healthcheck"]["interval"].as_str().and_then(duration_seconds).unwrap_or(30);
    interval.max(5)
}

/// One service of compose's resolution as a swarm service; `replicas` for a stateless one.
fn swarm_service(name: &str, compose: &Map<String, Value>, replicas: u32, notes: &mut Vec<String>) -> Value {
    let mut service = compose.clone();
    let restart = service.get("restart").and_then(Value::as_str).map(str::to_string);
    for key in ["build", "depends_on", "container_name", "restart", "profiles", "pull_policy"] {
        service.remove(key);
    }
    service.retain(|_, value| !value.is_null());
    let mut deploy = service.remove("deploy").and_then(|d| d.as_object().cloned()).unwrap_or_default();
    if deploy.get("placement").and_then(Value::as_object).is_some_and(Map::is_empty) {
        deploy.remove("placement");
    }
    // The stack file's schema wants CPUs as strings; compose prints numbers.
    if let Some(resources) = deploy.get_mut("resources").and_then(Value::as_object_mut) {
        for part in resources.values_mut() {
            if let Some(cpus) = part.get("cpus").and_then(Value::as_f64) {
                part["cpus"] = json!(cpus.to_string());
            }
        }
    }
    deploy.insert("restart_policy".into(), restart_policy(restart.as_deref()));
    let monitor = format!("{}s", monitor_seconds(&Value::Object(compose.clone())));
    let publishes = compose.get("ports").and_then(Value::as_array).is_some_and(|ports| !ports.is_empty());
    if STATEFUL.contains(&name) {
        deploy.insert("replicas".into(), json!(1));
        deploy.insert("update_config".into(), json!({"parallelism": 1, "order": "stop-first"}));
        deploy.insert("placement".into(), json!({"constraints": [format!("node.labels.{DATA_LABEL} == true")]}));
    } else if publishes {
        // A port published on the host cannot be bound twice on one node.
        deploy.insert("update_config".into(), json!({"parallelism": 1, "order": "stop-first"}));
    } else {
        let rolling = json!({"parallelism": 1, "order": "start-first", "monitor": monitor, "delay": "0s"});
        let mut update = rolling.clone();
        update["failure_action"] = json!("rollback");
        deploy.insert("update_config".into(), update);
        deploy.insert("rollback_config".into(), rolling);
        if STATELESS.contains(&name) {
            deploy.insert("replicas".into(), json!(replicas));
        }
    }
    // Every service is reached by its tasks' addresses (DNS round robin), which the proxies
    // ask Docker's DNS for every 2 s, as in compose mode: no virtual IP, which needs IPVS in
    // the kernel (absent on the lab's machines) and hides the tasks a rollout switches between.
    deploy.insert("endpoint_mode".into(), json!("dnsrr"));
    service.insert("deploy".into(), Value::Object(deploy));
    if let Some(ports) = service.remove("ports").and_then(|ports| ports.as_array().cloned()) {
        let mut published = Vec::new();
        for mut port in ports {
            let host_ip = port["host_ip"].as_str().unwrap_or("").to_string();
            let number = port["published"].as_str().and_then(|p| p.parse::<u64>().ok()).or(port["published"].as_u64());
            if is_loopback(&host_ip) {
                notes.push(format!(
                    "note: {name}'s port {} is bound to {host_ip} in compose mode; swarm publishes on \
                     every interface, so it is not published",
                    number.map_or("?".to_string(), |n| n.to_string())
                ));
                continue;
            }
            if let Some(port) = port.as_object_mut() {
                port.remove("host_ip");
                // The ingress routing mesh needs virtual IPs: the edge's node publishes it.
                port.insert("mode".into(), json!("host"));
                if let Some(number) = number {
                    port.insert("published".into(), json!(number));
                }
            }
            published.push(port);
        }
        if !published.is_empty() {
            service.insert("ports".into(), Value::Array(published));
        }
    }
    Value::Object(service)
}

/// The env file of `environment` (`KEY=VALUE` lines, as `docker run --env-file` reads them).
fn env_file(service: &str, environment: &Value) -> Result<String> {
    let mut text = String::new();
    for (key, value) in environment.as_object().into_iter().flatten() {
        let value = unescape(value.as_str().unwrap_or(""));
        if value.contains('\n') {
            bail!("{service}'s {key} holds a line break, which `docker run --env-file` cannot pass");
        }
        text.push_str(&format!("{key}={value}\n"));
    }
    Ok(text)
}

/// Compose's resolution `config` (JSON) of the deployment in `dir` as the stack `stack`'s
/// files: see the module documentation. `replicas` scales the stateless services (1 each
/// by default).
pub fn translate(config: &str, dir: &Path, stack: &Stack, replicas: &BTreeMap<String, u32>) -> Result<SwarmFiles> {
    let config: Value =
        serde_json::from_str(config).context("`docker compose config --format json` printed no JSON")?;
    let swarm_dir = swarm_dir(dir);
    let mut notes = Vec::new();
    let mut services = Map::new();
    let mut one_off = None;
    for (name, service) in config["services"].as_object().into_iter().flatten() {
        let service = service.as_object().cloned().unwrap_or_default();
        if service.get("profiles").and_then(Value::as_array).is_some_and(|profiles| !profiles.is_empty()) {
            if name == "db-init" {
                let command = service.get("command").and_then(Value::as_array).cloned().unwrap_or_default();
                one_off = Some((
                    command.iter().filter_map(|word| word.as_str().map(unescape)).collect::<Vec<String>>(),
                    env_file(name, service.get("environment").unwrap_or(&Value::Null))?,
                ));
            }
            continue;
        }
        let count = replicas.get(name).copied().unwrap_or(1);
        services.insert(name.clone(), swarm_service(name, &service, count, &mut notes));
    }
    if let Some(name) = replicas.keys().find(|name| !services.contains_key(*name)) {
        bail!("--replicas names {name}, which is not a service of the compose file");
    }
    let (db_init, env) = one_off.context("the compose file has no db-init service (profile `init`) to run once")?;
    let image = config["services"]["backend"]["image"]
        .as_str()
        .context("the compose file's backend service has no image")?
        .to_string();
    let mut files = Vec::new();
    let mut configs = Map::new();
    for (name, definition) in config["configs"].as_object().into_iter().flatten() {
        let Some(content) = definition["content"].as_str() else {
            configs.insert(name.clone(), definition.clone());
            continue;
        };
        let content = unescape(content);
        let digest = format!("{:x}", Sha256::digest(content.as_bytes()));
        let file = format!("{name}.conf");
        configs.insert(
            name.clone(),
            json!({"name": format!("{}_{name}-{}", stack.name, &digest[..12]), "file": swarm_dir.join(&file)}),
        );
        files.push((file, Secret::new(format!("config {name}"), content)));
    }
    let mut networks = Map::new();
    for name in config["networks"].as_object().into_iter().flatten().map(|(name, _)| name) {
        let mut network = json!({"driver": "overlay", "attachable": true});
        if name == "default" {
            network["name"] = json!(stack.network());
        }
        networks.insert(name.clone(), network);
    }
    let top = |services: Map<String, Value>| {
        json!({
            "version": "3.8",
            "services": services,
            "networks": networks,
            "volumes": config["volumes"].clone(),
            "configs": configs,
        })
    };
    let data: Map<String, Value> = services
        .iter()
        .filter(|(name, _)| STATEFUL.contains(&name.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let names: BTreeMap<String, String> = services
        .iter()
        .map(|(name, service)| (name.clone(), service["image"].as_str().unwrap_or("").to_string()))
        .collect();
    let render = |value: Value| serde_json::to_string_pretty(&value).map(|text| text + "\n");
    files.push(("stack.json".into(), Secret::new("the stack file", render(top(services))?)));
    files.push(("data.json".into(), Secret::new("the stack file of db and redis", render(top(data))?)));
    files.push(("db-init.env".into(), Secret::new("db-init's environment", env)));
    Ok(SwarmFiles {
        stack_file: swarm_dir.join("stack.json"),
        data_file: swarm_dir.join("data.json"),
        one_off: OneOff { image, db_init, env_file: swarm_dir.join("db-init.env") },
        dir: swarm_dir,
        files,
        services: names,
        notes,
    })
}

/// `backend=3`: a stateless service and its number of replicas.
pub fn parse_replicas(text: &str) -> Result<(String, u32)> {
    let (service, count) = text.split_once('=').with_context(|| format!("--replicas {text:?}: use SERVICE=N"))?;
    if !STATELESS.contains(&service) {
        bail!("--replicas {text:?}: only {} scale (db and redis run once)", STATELESS.join(", "));
    }
    let count: u32 =
        count.parse().ok().filter(|n| *n >= 1).with_context(|| format!("--replicas {text:?}: N is a number ≥ 1"))?;
    Ok((service.to_string(), count))
}

/// One swarm step of an operator plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwarmAction {
    /// Refuses unless the engine is a swarm manager; labels it `intric.data=true` when no
    /// node has that label, and says so.
    Prepare,
    /// The generated files written into `dir` (mode 0700), each atomically, mode 0600.
    WriteFiles { dir: PathBuf, files: Vec<(String, Secret)> },
    /// Waits until every task of `services` runs (healthy) the image given, and fails when
    /// swarm rolled one back (its spec names another image again) or paused its update.
    Converge { services: BTreeMap<String, String>, timeout: u64 },
    /// db-init in a one-off container when the database has no `alembic_version` table yet,
    /// else the migrations.
    InitOrMigrate(OneOff),
    /// The migrations of `one_off`'s image, unless the database is at a revision it does not know.
    Migrate(OneOff),
    /// A backup of the database to `path`, through `pg_dump` in the db task's container.
    Backup { path: PathBuf },
    /// The database restored from the (verified) backup at `path` as in compose mode, through
    /// `psql` in the db task's container, with backend and worker scaled to 0 meanwhile.
    Restore { path: PathBuf },
    /// Refuses when the migrations of `one_off`'s image after the database's revision drop or
    /// rename a column or table, as in compose mode.
    CheckMigrations(OneOff),
}

/// A swarm step and the stack it acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmStep {
    pub stack: Stack,
    pub action: SwarmAction,
}

impl fmt::Display for SwarmStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stack = &self.stack;
        match &self.action {
            SwarmAction::Prepare => write!(
                f,
                "refuse unless this engine is a swarm manager ({}); if no node has the label {DATA_LABEL}=true: {}",
                stack.swarm_state(),
                stack.label_data_node("<this node>")
            ),
            SwarmAction::WriteFiles { dir, files } => {
                let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
                write!(
                    f,
                    "write {} into {} (mode 600; the stack file from compose's resolution)",
                    names.join(", "),
                    dir.display()
                )
            }
            SwarmAction::Converge { services, timeout } => {
                let services: Vec<String> =
                    services.iter().map(|(service, image)| format!("{service} ({})", status::tag_of(image))).collect();
                write!(
                    f,
                    "wait (at most {timeout} s) until every task of {} runs that tag, healthy; fail if swarm rolled \
                     one back",
                    services.join(", ")
                )
            }
            SwarmAction::InitOrMigrate(one_off) => write!(
                f,
                "if the database has no alembic_version table: {}\n       else: {}",
                db_init(stack, one_off),
                migrate(stack, one_off)
            ),
            SwarmAction::Migrate(one_off) => {
                write!(f, "unless the image does not know the database's revision: {}", migrate(stack, one_off))
            }
            SwarmAction::CheckMigrations(one_off) => write!(
                f,
                "refuse if the new image's migrations after the database's revision drop or rename a column or \
                 table (--allow-downtime overrides): {}",
                list_migrations(stack, one_off)
            ),
            SwarmAction::Backup { path } => write!(
                f,
                "back up the database (pg_dump in the db task's container | gzip, checked, then renamed) to {}",
                path.display()
            ),
            SwarmAction::Restore { path } => write!(
                f,
                "scale {} and {} to 0; load {} into a new database (psql in the db task's container); swap it \
                 in; scale them back and wait until their tasks are healthy",
                stack.service("backend"),
                stack.service("worker"),
                path.display()
            ),
        }
    }
}

fn db_init(stack: &Stack, one_off: &OneOff) -> Command {
    stack
        .run_once(&one_off.image, &one_off.env_file, one_off.db_init.iter().cloned())
        .hint("db-init failed: its output above says why (database settings in .env?)")
}

fn list_migrations(stack: &Stack, one_off: &OneOff) -> Command {
    stack
        .run_once(&one_off.image, &one_off.env_file, ["python", "-c", PRINT_MIGRATIONS])
        .hint("reading the new backend image's migrations failed: its output above says why")
}

fn migrate(stack: &Stack, one_off: &OneOff) -> Command {
    stack
        .run_once(&one_off.image, &one_off.env_file, ["alembic", "upgrade", "head"])
        .hint("the migrations failed: their output above says why")
}

/// A restore on swarm: `psql` in the db task's `container`, and the [`WRITERS`] scaled to 0
/// and back to the replicas and image the swarm reported for them before (`writers`).
struct SwarmDatabase<'a> {
    stack: &'a Stack,
    container: String,
    writers: BTreeMap<String, Progress>,
}

impl RestoreTarget for SwarmDatabase<'_> {
    fn start_database(&self, _: &Executor) -> Result<()> {
        // Its container was found running, and swarm keeps it so.
        Ok(())
    }

    fn in_database(&self, args: Vec<String>) -> Command {
        self.stack.exec(&self.container, args)
    }

    fn stop_writers(&self, exec: &Executor) -> Result<()> {
        let stopped: Vec<(String, usize)> = self.writers.keys().map(|service| (service.clone(), 0)).collect();
        exec.run(&self.stack.scale(&stopped, true).hint("scaling backend and worker to 0 failed"))
    }

    fn start_all(&self, exec: &Executor) -> Result<()> {
        let counts: Vec<(String, usize)> =
            self.writers.iter().map(|(service, progress)| (service.clone(), progress.replicas)).collect();
        exec.run(&self.stack.scale(&counts, false).hint("scaling backend and worker back failed"))?;
        let images = self.writers.iter().map(|(service, progress)| (service.clone(), progress.image.clone())).collect();
        exec.converge(self.stack, &images, exec.timeout)
    }
}

/// One service as the swarm reports it while converging.
struct Progress {
    image: String,
    replicas: usize,
    update: String,
    running_new: usize,
    tasks: usize,
}

/// The image without its digest: the tasks show the tag, the spec the tag and digest.
fn without_digest(image: &str) -> &str {
    image.split('@').next().unwrap_or(image)
}

impl Executor<'_> {
    pub fn perform_swarm(&self, step: &SwarmStep) -> Result<()> {
        let stack = &step.stack;
        match &step.action {
            SwarmAction::Prepare => self.prepare_swarm(stack),
            SwarmAction::WriteFiles { dir, files } => {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                set_mode(dir, 0o700)?;
                for (name, contents) in files {
                    crate::plan::write_atomically(&dir.join(name), contents.expose().as_bytes(), 0o600)?;
                }
                Ok(())
            }
            SwarmAction::Converge { services, timeout } => self.converge(stack, services, *timeout),
            SwarmAction::InitOrMigrate(one_off) => match self.swarm_db_state(stack)? {
                DbState::Uninitialized => {
                    self.say("the database was never initialized: running db-init once");
                    self.run(&db_init(stack, one_off))
                }
                DbState::At(revision) => {
                    self.say(&format!(
                        "the database is initialized (revision {revision}): running the image's migrations"
                    ));
                    self.swarm_migrate(stack, one_off)
                }
            },
            SwarmAction::Migrate(one_off) => self.swarm_migrate(stack, one_off),
            SwarmAction::CheckMigrations(one_off) => {
                self.check_migrations_at(self.swarm_db_state(stack)?, &list_migrations(stack, one_off))
            }
            SwarmAction::Backup { path } => {
                let id = self.db_container(stack)?;
                database::dump_with(self, stack.exec(&id, self.compose.database.dump()), path)?;
                self.say(&format!("backup: {}", path.display()));
                Ok(())
            }
            SwarmAction::Restore { path } => {
                let container = self.db_container(stack)?;
                let writers: Vec<String> = WRITERS.map(String::from).to_vec();
                let writers = self.swarm_progress(stack, &writers, 0)?;
                database::restore_from(self, &SwarmDatabase { stack, container, writers }, path)
            }
        }
    }

    fn prepare_swarm(&self, stack: &Stack) -> Result<()> {
        let state = self.read(&stack.swarm_state())?;
        let words: Vec<&str> = state.split_whitespace().collect();
        let ["active", "true", node] = words[..] else {
            bail!(
                "this docker engine is not a swarm manager ({}): run `docker swarm init` (or point DOCKER_HOST \
                 at a manager) first",
                state.trim()
            );
        };
        if self.read(&stack.data_nodes())?.trim().is_empty() {
            self.say(&format!(
                "no node has the label {DATA_LABEL}=true: labelling this one ({node}), where db and redis will run"
            ));
            self.run(&stack.label_data_node(node))?;
        }
        Ok(())
    }

    /// The ID of the db task's running container (on this engine: a single-node swarm, or the
    /// labelled node as DOCKER_HOST).
    fn db_container(&self, stack: &Stack) -> Result<String> {
        let ids = self.read(&stack.container_of("db"))?;
        ids.split_whitespace().next().map(str::to_string).with_context(|| {
            let db = stack.service("db");
            // The dump and the load run in the db task's container, which only its node's engine
            // reaches: on a swarm of several nodes, that is the one labelled for the data.
            format!(
                "no running container of {db} on this engine: is the stack deployed here? On a swarm of several \
                 nodes, run this on the node labelled {DATA_LABEL}=true, where the db task runs (`docker service ps \
                 {db}` names it)"
            )
        })
    }

    fn swarm_sql(&self, stack: &Stack, id: &str, sql: &str) -> Result<String> {
        self.read(&stack.exec(id, self.compose.database.query(None, sql)))
    }

    fn swarm_db_state(&self, stack: &Stack) -> Result<DbState> {
        let id = self.db_container(stack)?;
        let exists = self.swarm_sql(stack, &id, "select to_regclass('public.alembic_version') is not null")?;
        if exists.trim() != "t" {
            return Ok(DbState::Uninitialized);
        }
        let revision =
            self.swarm_sql(stack, &id, "select coalesce(string_agg(version_num, ','), '') from alembic_version")?;
        Ok(DbState::At(revision.trim().to_string()))
    }

    fn swarm_migrate(&self, stack: &Stack, one_off: &OneOff) -> Result<()> {
        if let DbState::At(revision) = self.swarm_db_state(stack)?
            && !revision.is_empty()
            && self.read(&stack.run_once(&one_off.image, &one_off.env_file, ["alembic", "show", &revision])).is_err()
        {
            self.say(&format!(
                "migrations: the database is at revision {revision}, which this image does not know \
                 (a newer version migrated it): skipped"
            ));
            return Ok(());
        }
        self.run(&migrate(stack, one_off))
    }

    /// Waits until every task of `services` runs its service's image (swarm counts a task as
    /// running once its healthcheck passes), printing a line per service when its progress
    /// changes; fails when swarm rolled an update back or paused it.
    fn converge(&self, stack: &Stack, services: &BTreeMap<String, String>, timeout: u64) -> Result<()> {
        // Updates that started before this step are not this one's (a rollback long ago).
        let since = clock::now_unix() - 2;
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let mut shown: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let names: Vec<String> = services.keys().cloned().collect();
            let progress = self.swarm_progress(stack, &names, since)?;
            let mut waiting: Vec<String> = services
                .keys()
                .filter(|service| !progress.contains_key(*service))
                .map(|service| format!("{service}: no such service"))
                .collect();
            for (service, p) in &progress {
                let line = format!(
                    "{service}: {} of {} task(s) run {} ({} running in all){}",
                    p.running_new,
                    p.replicas,
                    status::tag_of(&p.image),
                    p.tasks,
                    if p.update.is_empty() { String::new() } else { format!(", update {}", p.update) }
                );
                if shown.get(service) != Some(&line) {
                    self.say(&line);
                    shown.insert(service.clone(), line.clone());
                }
                let rolled_back = services.get(service).is_some_and(|image| without_digest(image) != p.image);
                match p.update.as_str() {
                    _ if rolled_back => bail!(
                        "swarm rolled {service} back: its new tasks did not get healthy (see `docker service ps {}`)",
                        stack.service(service)
                    ),
                    "rollback_started" | "rollback_paused" => bail!(
                        "swarm rolled {service} back: its new tasks did not get healthy (see `docker service ps {}`)",
                        stack.service(service)
                    ),
                    "paused" => {
                        bail!("swarm paused the update of {service} (`docker service ps {}`)", stack.service(service))
                    }
                    _ => {}
                }
                if p.running_new != p.replicas || p.tasks != p.replicas || p.update == "updating" {
                    waiting.push(line);
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the swarm services did not converge within {timeout} s: {}", waiting.join("; "));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn swarm_progress(&self, stack: &Stack, services: &[String], since: i64) -> Result<BTreeMap<String, Progress>> {
        let states = self.read(&stack.services_state(services))?;
        let tasks = self.read(&stack.running_tasks(services))?;
        let tasks: Vec<Value> = tasks.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
        let mut progress = BTreeMap::new();
        for line in states.lines().filter(|line| !line.trim().is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [name, image, replicas, update, started] = words[..] else {
                bail!("`docker service inspect` printed {line:?}, not name, image, replicas, update state and start");
            };
            let service = name.strip_prefix(&format!("{}_", stack.name)).unwrap_or(name).to_string();
            let mine: Vec<&Value> = tasks
                .iter()
                .filter(|task| task["Name"].as_str().is_some_and(|task| task.starts_with(&format!("{name}."))))
                .collect();
            let running_new = mine
                .iter()
                .filter(|task| without_digest(task["Image"].as_str().unwrap_or("")) == without_digest(image))
                .filter(|task| task["CurrentState"].as_str().is_some_and(|state| state.starts_with("Running")))
                .count();
            let recent = started.parse::<i64>().is_ok_and(|started| started >= since);
            progress.insert(
                service,
                Progress {
                    image: without_digest(image).to_string(),
                    replicas: replicas.parse().unwrap_or(1),
                    update: if recent && update != "-" { update.to_string() } else { String::new() },
                    running_new,
                    tasks: mine.len(),
                },
            );
        }
        Ok(progress)
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<()> {
    Ok(())
}

/// The swarm status: per service its replicas running of desired, and each task meant to run
/// with the tag it runs and its state; during a rollout old and new tasks show side by side.
pub fn swarm_report(stack: &Stack, runner: &dyn Runner) -> Result<String> {
    let services = runner.read(&stack.services_json())?;
    let services: Vec<Value> = services.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let names: Vec<String> = services
        .iter()
        .filter_map(|service| service["Name"].as_str())
        .map(|name| name.strip_prefix(&format!("{}_", stack.name)).unwrap_or(name).to_string())
        .collect();
    let tasks = if names.is_empty() { String::new() } else { runner.read(&stack.running_tasks(&names))? };
    let tasks: Vec<Value> = tasks.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    Ok(render_swarm(&stack.name, &services, &tasks))
}

/// The swarm status table from `docker stack services` and `docker service ps` (pure).
pub fn render_swarm(stack: &str, services: &[Value], tasks: &[Value]) -> String {
    let mut rows: Vec<[String; 5]> = Vec::new();
    for service in services {
        let name = service["Name"].as_str().unwrap_or("");
        let short = name.strip_prefix(&format!("{stack}_")).unwrap_or(name);
        let replicas = service["Replicas"].as_str().unwrap_or("-").to_string();
        let mine: Vec<&Value> = tasks
            .iter()
            .filter(|task| task["Name"].as_str().is_some_and(|t| t.starts_with(&format!("{name}."))))
            .collect();
        if mine.is_empty() {
            rows.push([short.to_string(), replicas.clone(), "-".into(), "-".into(), "no task running".into()]);
        }
        for task in mine {
            let id = task["ID"].as_str().unwrap_or("");
            rows.push([
                short.to_string(),
                replicas.clone(),
                id[..id.len().min(12)].to_string(),
                status::tag_of(without_digest(task["Image"].as_str().unwrap_or(""))),
                task["CurrentState"].as_str().unwrap_or("").to_string(),
            ]);
        }
    }
    status::table(&format!("stack {stack} (swarm)"), ["SERVICE", "REPLICAS", "TASK", "TAG", "STATE"], &rows)
}

/// Prints the swarm status at the end of a task that succeeded; failing to show it does not fail the task.
pub fn print_swarm_report(stack: &Stack, runner: &dyn Runner) {
    match swarm_report(stack, runner) {
        Ok(table) => print!("{table}"),
        Err(error) => eprintln!("warning: cannot show the swarm status: {error:#}"),
    }
}

// Running the stack on Docker Swarm: the options of deploy, update, rollback and status.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SwarmArgs {
    /// Run the stack on Docker Swarm (`docker stack deploy`, from the same compose file). The
    /// history records it: later commands on the directory use swarm without the flag.
    #[arg(long)]
    pub swarm: bool,
    /// With --swarm: replicas of a stateless service (backend, worker, frontend), e.g.
    /// `--replicas backend=3`; repeatable [default: as many as run now, else 1].
    #[arg(long, value_name = "SERVICE=N", value_parser = parse_replicas)]
    pub replicas: Vec<(String, u32)>,
}

impl SwarmArgs {
    /// The stack when the deployment runs on swarm: `--swarm`, or the history's last record
    /// says so; `None` for compose mode.
    pub fn stack(&self, compose: &Compose, history: &[crate::stack::history::Record]) -> Result<Option<Stack>> {
        let recorded = history.last().is_some_and(|record| record.mode.as_deref() == Some("swarm"));
        if !self.swarm && !recorded {
            if !self.replicas.is_empty() {
                bail!("--replicas needs --swarm (compose mode runs one container per service)");
            }
            return Ok(None);
        }
        if recorded && !self.swarm {
            eprintln!("note: the deploy history says this deployment runs on Docker Swarm: using swarm");
        }
        Ok(Some(Stack::of(compose)))
    }

    /// The replicas of each stateless service: `--replicas`, else as many as run now.
    pub fn replicas(&self, stack: &Stack, runner: &dyn Runner) -> BTreeMap<String, u32> {
        let mut replicas: BTreeMap<String, u32> = self.replicas.iter().cloned().collect();
        for service in STATELESS {
            if replicas.contains_key(service) {
                continue;
            }
            let running = runner.read(&stack.replicas_of(service)).ok().and_then(|text| text.trim().parse().ok());
            if let Some(count) = running {
                replicas.insert(service.to_string(), count);
            }
        }
        replicas
    }
}

/// A hand-written `docker compose config --format json` of the stack at `tag`, as compose
/// prints it (interpolated, `$` escaped as `$$`), for the tests here and of the plans.
#[cfg(test)]
pub fn config_for_tests(tag: &str) -> String {
    let backend_env =
        json!({"POSTGRES_HOST": "db", "POSTGRES_PASSWORD": "canary-pw-0123456789", "JWT_TOKEN_PREFIX": "a$$b"});
    json!({
        "name": "intric",
        "x-logging": {"driver": "json-file"},
        "services": {
            "db": {
                "image": "pg:16", "restart": "unless-stopped",
                "environment": {"POSTGRES_PASSWORD": "canary-pw-0123456789", "POSTGRES_USER": "intric"},
                "volumes": [{"type": "volume", "source": "postgres_data", "target": "/var/lib/postgresql/data"}],
                "healthcheck": {"test": ["CMD-SHELL", "pg_isready -U \"$${POSTGRES_USER}\""], "interval": "5s", "retries": 10},
                "deploy": {"resources": {"limits": {"cpus": 1.0, "memory": "1073741824"}}, "placement": {}},
                "networks": {"default": null}, "command": null, "entrypoint": null
            },
            "redis": {"image": "redis:7", "restart": "unless-stopped", "networks": {"default": null}},
            "backend": {
                "image": format!("r/intric/backend:{tag}"), "restart": "unless-stopped",
                "build": {"context": "../backend", "target": "backend"},
                "container_name": "intric-backend",
                "environment": backend_env,
                "depends_on": {"db": {"condition": "service_healthy", "required": true}},
                "healthcheck": {"test": ["CMD", "python", "-c", "..."], "interval": "5s", "retries": 6, "start_period": "20s"},
                "networks": {"default": null}
            },
            "worker": {
                "image": format!("r/intric/worker:{tag}"), "restart": "on-failure:3",
                "healthcheck": {"interval": "10s", "retries": 4}, "networks": {"default": null}
            },
            "frontend": {"image": format!("r/intric/frontend:{tag}"), "restart": "always", "networks": {"default": null}},
            "edge": {
                "image": "nginx:1", "restart": "unless-stopped",
                "ports": [
                    {"mode": "ingress", "host_ip": "0.0.0.0", "target": 3000, "published": "24600", "protocol": "tcp"},
                    {"mode": "ingress", "host_ip": "127.0.0.1", "target": 8123, "published": "24601", "protocol": "tcp"}
                ],
                "configs": [{"source": "edge-nginx", "target": "/etc/nginx/conf.d/default.conf"}],
                "networks": {"default": null}
            },
            "db-init": {
                "image": format!("r/intric/backend:{tag}"), "profiles": ["init"], "restart": "no",
                "command": ["python", "init_db.py"], "environment": backend_env,
                "depends_on": {"db": {"condition": "service_healthy"}}, "networks": {"default": null}
            }
        },
        "networks": {"default": {"name": "intric_default", "ipam": {}}},
        "volumes": {"postgres_data": {"name": "intric_postgres_data"}},
        "configs": {"edge-nginx": {"name": "intric_edge-nginx", "content": "set $$frontend http://frontend:3000;\n"}}
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack() -> Stack {
        Stack { program: "docker".into(), name: "intric".into() }
    }

    fn translated(replicas: &[(&str, u32)]) -> (SwarmFiles, Value) {
        let replicas = replicas.iter().map(|(service, count)| (service.to_string(), *count)).collect();
        let files = translate(&config_for_tests("1.0.0"), Path::new("/srv/intric"), &stack(), &replicas).unwrap();
        let stack_file = files.files.iter().find(|(name, _)| name == "stack.json").unwrap();
        let value = serde_json::from_str(stack_file.1.expose()).unwrap();
        (files, value)
    }

    #[test]
    fn durations_as_compose_prints_them() {
        assert_eq!(duration_seconds("5s"), Some(5));
        assert_eq!(duration_seconds("1m30s"), Some(90));
        assert_eq!(duration_seconds("1h0m0s"), Some(3600));
        assert_eq!(duration_seconds("500ms"), Some(1));
        assert_eq!(duration_seconds("5"), None);
        assert_eq!(duration_seconds("5x"), None);
    }

    #[test]
    fn what_swarm_ignores_or_refuses_is_translated() {
        let (files, stack_file) = translated(&[]);
        let services = &stack_file["services"];
        assert!(stack_file.get("name").is_none() && stack_file.get("x-logging").is_none());
        assert_eq!(stack_file["version"], "3.8");
        let names: Vec<&String> = services.as_object().unwrap().keys().collect();
        assert_eq!(names, ["backend", "db", "edge", "frontend", "redis", "worker"], "db-init is a one-off");
        let backend = &services["backend"];
        for dropped in ["build", "depends_on", "container_name", "restart"] {
            assert!(backend.get(dropped).is_none(), "{dropped} dropped: {backend}");
        }
        assert!(services["db"].get("command").is_none(), "nulls dropped");
        assert_eq!(backend["healthcheck"]["retries"], 6, "healthchecks kept");
        assert_eq!(backend["deploy"]["restart_policy"]["condition"], "any");
        assert_eq!(
            services["worker"]["deploy"]["restart_policy"],
            json!({"condition": "on-failure", "max_attempts": 3})
        );
        assert_eq!(services["db"]["deploy"]["resources"]["limits"]["cpus"], "1", "CPUs as a string");
        assert_eq!(backend["environment"]["JWT_TOKEN_PREFIX"], "a$$b", "docker stack deploy interpolates once more");
        assert_eq!(files.one_off.db_init, ["python", "init_db.py"]);
        assert_eq!(files.one_off.image, "r/intric/backend:1.0.0");
        let env = files.files.iter().find(|(name, _)| name == "db-init.env").unwrap().1.expose().to_string();
        assert!(env.contains("JWT_TOKEN_PREFIX=a$b\n") && env.contains("POSTGRES_HOST=db\n"), "{env}");
    }

    #[test]
    fn stateless_services_roll_start_first_and_data_stays_on_the_labelled_node() {
        let (_, stack_file) = translated(&[("backend", 3)]);
        let services = &stack_file["services"];
        for (service, replicas, monitor) in [("backend", 3, "5s"), ("worker", 1, "10s"), ("frontend", 1, "30s")] {
            let deploy = &services[service]["deploy"];
            assert_eq!(deploy["replicas"], replicas, "{service}");
            assert_eq!(deploy["update_config"]["order"], "start-first", "{service}");
            assert_eq!(deploy["update_config"]["failure_action"], "rollback", "{service}");
            assert_eq!(deploy["update_config"]["monitor"], monitor, "{service}: one healthcheck interval");
            assert_eq!(deploy["rollback_config"]["order"], "start-first", "{service}");
        }
        for service in ["db", "redis"] {
            let deploy = &services[service]["deploy"];
            assert_eq!(
                (deploy["replicas"].as_u64(), deploy["update_config"]["order"].as_str()),
                (Some(1), Some("stop-first"))
            );
            assert_eq!(deploy["placement"]["constraints"], json!(["node.labels.intric.data == true"]));
        }
        for service in ["db", "backend", "edge"] {
            assert_eq!(services[service]["deploy"]["endpoint_mode"], "dnsrr", "{service}: no virtual IP");
        }
        assert_eq!(services["edge"]["deploy"]["update_config"]["order"], "stop-first", "host ports are bound once");
    }

    #[test]
    fn ports_configs_networks_and_the_data_file() {
        let (files, stack_file) = translated(&[]);
        assert_eq!(
            stack_file["services"]["edge"]["ports"],
            json!([{"mode": "host", "target": 3000, "published": 24600, "protocol": "tcp"}]),
            "the loopback-only port is not published on every interface"
        );
        assert!(
            files.notes.iter().any(|note| note.contains("edge's port 24601 is bound to 127.0.0.1")),
            "{:?}",
            files.notes
        );
        let config = &stack_file["configs"]["edge-nginx"];
        assert!(config["name"].as_str().unwrap().starts_with("intric_edge-nginx-"), "named by its content: {config}");
        assert_eq!(config["file"], "/srv/intric/.swarm/edge-nginx.conf");
        let content = files.files.iter().find(|(name, _)| name == "edge-nginx.conf").unwrap().1.expose().to_string();
        assert_eq!(content, "set $frontend http://frontend:3000;\n", "the literal `$`");
        assert_eq!(
            stack_file["networks"]["default"],
            json!({"driver": "overlay", "attachable": true, "name": "intric_swarm"})
        );
        assert_eq!(stack_file["volumes"]["postgres_data"]["name"], "intric_postgres_data", "compose mode's data");
        let data = files.files.iter().find(|(name, _)| name == "data.json").unwrap().1.expose().to_string();
        let data: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(data["services"].as_object().unwrap().keys().collect::<Vec<_>>(), ["db", "redis"]);
        assert_eq!(files.services["backend"], "r/intric/backend:1.0.0");
        assert!(!format!("{files:?}").contains("canary"), "the files' contents are secrets");
    }

    #[test]
    fn replicas_scale_stateless_services_only() {
        assert_eq!(parse_replicas("backend=3").unwrap(), ("backend".to_string(), 3));
        assert!(parse_replicas("db=2").unwrap_err().to_string().contains("only backend, worker, frontend"));
        assert!(parse_replicas("backend=0").is_err());
        assert!(parse_replicas("backend").is_err());
    }

    #[test]
    fn the_swarm_status_shows_old_and_new_tasks_side_by_side() {
        let services =
            [json!({"Name": "intric_backend", "Replicas": "1/1"}), json!({"Name": "intric_db", "Replicas": "0/1"})];
        let tasks = [
            json!({"ID": "aaaaaaaaaaaaaaaa", "Name": "intric_backend.1", "Image": "r/intric/backend:1.0.0@sha256:1", "CurrentState": "Running 2 minutes ago"}),
            json!({"ID": "bbbbbbbbbbbbbbbb", "Name": "intric_backend.1", "Image": "r/intric/backend:1.1.0", "CurrentState": "Starting 3 seconds ago"}),
        ];
        let table = render_swarm("intric", &services, &tasks);
        assert!(table.contains("backend  1/1       aaaaaaaaaaaa  1.0.0  Running 2 minutes ago"), "{table}");
        assert!(table.contains("backend  1/1       bbbbbbbbbbbb  1.1.0  Starting 3 seconds ago"), "{table}");
        assert!(table.contains("db       0/1       -             -      no task running"), "{table}");
    }
}
