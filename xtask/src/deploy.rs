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

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::backup;
use crate::clock;
use crate::compose::Compose;
use crate::dotenv::DotEnv;
use crate::env::{self, Level};
use crate::images::Service;
use crate::plan::{Command, Failure, Plan, Recovery, Secret};
use crate::registry::{Backoff, Credentials, Registry, RegistryAddress};

/// Where a deployment is: the options every operator task takes.
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// The deployment directory holding docker-compose.yml and .env [default: the repository's docker/].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The compose project name [default: the compose file's own, `intric`].
    #[arg(long, value_name = "NAME")]
    pub project: Option<String>,
}

/// How long `up --wait` may take until every service is healthy.
pub const DEFAULT_TIMEOUT: u64 = 300;

/// The option of the tasks that take the deploy lock.
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct LockArgs {
    /// Take over a deploy lock whose holder ran on another host and is gone, or a lock file this
    /// tool did not write (a holder on this host is checked instead; a running one is never
    /// broken).
    #[arg(long)]
    pub break_lock: bool,
}

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

// ---------------------------------------------------------------------------------------------
// The deployment directory

/// A deployment directory, read once: its `.env` and the compose project.
pub struct Deployment {
    pub dir: PathBuf,
    pub env: DotEnv,
    pub compose: Compose,
}

impl Deployment {
    /// Opens `target`: the directory with a compose file and a `.env` that parses.
    pub fn open(target: &Target) -> Result<Deployment> {
        let dir = env::deployment_dir(target.dir.clone());
        crate::compose::compose_file(&dir)?;
        let dir = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
        let env_path = dir.join(".env");
        if !env_path.is_file() {
            bail!("{} does not exist: run `cargo xtask env init --dir {}` first", env_path.display(), dir.display());
        }
        let env = DotEnv::read(&env_path)?;
        let compose = Compose::new(&dir, target.project.clone(), &env)?;
        let shadowed: Vec<&str> = env
            .entries()
            .filter(|entry| std::env::var(&entry.key).is_ok_and(|value| value != entry.value))
            .map(|entry| entry.key.as_str())
            .collect();
        if !shadowed.is_empty() {
            eprintln!(
                "note: ignoring {} from your environment: the deployment uses {} only",
                shadowed.join(", "),
                env_path.display()
            );
        }
        Ok(Deployment { dir, env, compose })
    }

    /// [`Deployment::open`], then `env check`: every problem is printed, and errors stop here.
    pub fn open_checked(target: &Target) -> Result<Deployment> {
        let deployment = Deployment::open(target)?;
        let (_, problems) = env::check_dir(&deployment.dir)?;
        let path = deployment.env_path();
        let errors: Vec<_> = problems.iter().filter(|problem| problem.level == Level::Error).collect();
        if !errors.is_empty() {
            print!("{}", env::report(&path, &problems));
            let more = if errors.len() > 1 {
                format!(" (and {} more, listed above)", errors.len() - 1)
            } else {
                String::new()
            };
            bail!(
                "{} is not ready: {}{more}; fix it and run again (`cargo xtask env check` lists the problems)",
                path.display(),
                errors[0].message
            );
        }
        for problem in &problems {
            eprintln!("{problem}");
        }
        Ok(deployment)
    }

    pub fn env_path(&self) -> PathBuf {
        self.dir.join(".env")
    }

    pub fn history_path(&self) -> PathBuf {
        self.dir.join(HISTORY_FILE)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    /// `.env`'s `IMAGE_TAG`.
    pub fn current_tag(&self) -> Option<String> {
        self.env.get("IMAGE_TAG").filter(|tag| !tag.is_empty()).map(str::to_string)
    }

    /// The registry of `.env`, and the credentials to reach it: `.env`'s NEXUS_USERNAME and
    /// NEXUS_PASSWORD, else the environment's, else the docker client's login. `login` tells
    /// whether they came from `.env` or the environment (so `docker login` should use them).
    pub fn registry(&self) -> Result<(RegistryAddress, Option<Credentials>, bool)> {
        let setting = self
            .env
            .get("NEXUS_REGISTRY")
            .filter(|value| !value.is_empty())
            .with_context(|| format!("NEXUS_REGISTRY is not set in {}", self.env_path().display()))?;
        let address = RegistryAddress::parse(setting)?;
        let from_dotenv: crate::ci_env::Env = ["NEXUS_USERNAME", "NEXUS_PASSWORD"]
            .iter()
            .filter_map(|key| Some((key.to_string(), self.env.get(key)?.to_string())))
            .collect();
        let from_dotenv = Credentials::from_env(&from_dotenv)
            .with_context(|| format!("the registry login in {} is incomplete", self.env_path().display()))?;
        if let Some(credentials) = from_dotenv {
            return Ok((address, Some(credentials), true));
        }
        let explicit = Credentials::from_env(&crate::ci_env::process_env())?;
        if explicit.is_some() {
            return Ok((address, explicit, true));
        }
        let found = Credentials::find(&address)?;
        Ok((address, found, false))
    }

    /// Checks that `tag` exists in the registry for every image, before anything changes: a
    /// cleanup policy may have deleted a tag that a rollback wants.
    pub fn check_tag_exists(&self, tag: &str) -> Result<()> {
        if !crate::tags::is_valid_image_tag(tag) {
            bail!("{tag:?} is not an image tag ([A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128 characters)");
        }
        let (address, credentials, _) = self.registry()?;
        let registry = Registry::new(address.clone(), credentials, Backoff::STANDARD);
        let mut missing = Vec::new();
        for service in Service::ALL {
            if registry.manifest_digest(&service.repository(), tag)?.is_none() {
                missing.push(service.repository());
            }
        }
        if !missing.is_empty() {
            bail!(
                "tag {tag} is not in the registry {address} for {} (never pushed, or deleted by a cleanup policy): \
                 nothing was changed",
                missing.join(", ")
            );
        }
        Ok(())
    }

    /// The `docker login` to run before pulling, when `.env` or the environment holds a login.
    pub fn login(&self) -> Result<Option<Command>> {
        let (address, credentials, explicit) = self.registry()?;
        Ok(match (credentials, explicit) {
            (Some(credentials), true) => Some(crate::docker::login_with(
                &self.compose.program,
                &address.host,
                &credentials.username,
                credentials.password,
            )),
            _ => None,
        })
    }

    /// Where the frontend answers, as an operator would open it.
    pub fn url(&self) -> String {
        let port = self.env.get("FRONTEND_PORT").filter(|port| !port.is_empty()).unwrap_or("3000");
        let host = engine_host(std::env::var("DOCKER_HOST").ok().as_deref()).unwrap_or_else(|| {
            match self.env.get("FRONTEND_BIND").filter(|bind| !bind.is_empty()) {
                Some("0.0.0.0") | Some("::") | None => "localhost".to_string(),
                Some(bind) => bind.to_string(),
            }
        });
        format!("http://{host}:{port}")
    }
}

/// The host of a remote engine (`ssh://user@host:22`, `tcp://host:2376`), `None` when local.
pub fn engine_host(docker_host: Option<&str>) -> Option<String> {
    let rest = docker_host?.split_once("://").filter(|(scheme, _)| *scheme == "ssh" || *scheme == "tcp")?.1;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.split(':').next().unwrap_or(host)
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Who runs this: `$USER`, else `uid N`.
pub fn current_user() -> String {
    use std::os::unix::fs::MetadataExt;
    std::env::var("USER").ok().filter(|user| !user.is_empty()).unwrap_or_else(|| {
        std::fs::metadata("/proc/self").map_or_else(|_| "unknown".to_string(), |meta| format!("uid {}", meta.uid()))
    })
}

pub fn current_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|host| host.trim().to_string())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

// ---------------------------------------------------------------------------------------------
// History

pub const HISTORY_FILE: &str = ".deploy-history.jsonl";

/// How a deploy, update or rollback ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    /// It failed after changing something, and the previous tag was put back.
    RolledBack,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled-back",
        }
    }

    fn parse(text: &str) -> Option<Outcome> {
        [Outcome::Ok, Outcome::Failed, Outcome::RolledBack].into_iter().find(|outcome| outcome.as_str() == text)
    }
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    pub user: String,
    pub command: String,
    pub from_tag: Option<String>,
    pub to_tag: String,
    pub result: Outcome,
    pub seconds: u64,
    /// The backup taken before the change, if any.
    pub backup: Option<String>,
    /// What went wrong, for results other than ok.
    pub detail: Option<String>,
}

impl Record {
    /// The record as one line of JSON, with its newline.
    pub fn to_line(&self) -> String {
        let mut value = json!({
            "time": self.time,
            "user": self.user,
            "command": self.command,
            "from_tag": self.from_tag,
            "to_tag": self.to_tag,
            "result": self.result.as_str(),
            "seconds": self.seconds,
        });
        if let Some(backup) = &self.backup {
            value["backup"] = json!(backup);
        }
        if let Some(detail) = &self.detail {
            value["detail"] = json!(detail);
        }
        format!("{value}\n")
    }

    fn from_value(value: &Value) -> Option<Record> {
        let text = |key: &str| value[key].as_str().map(str::to_string);
        Some(Record {
            time: text("time")?,
            user: text("user")?,
            command: text("command")?,
            from_tag: text("from_tag"),
            to_tag: text("to_tag")?,
            result: Outcome::parse(value["result"].as_str()?)?,
            seconds: value["seconds"].as_u64()?,
            backup: text("backup"),
            detail: text("detail"),
        })
    }
}

/// Parses the history; a bad line is an error naming the file and line.
pub fn parse_history(path: &Path, text: &str) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str::<Value>(line).ok().as_ref().and_then(Record::from_value);
        match record {
            Some(record) => records.push(record),
            None => bail!(
                "{}:{}: not a deploy history record (time, user, command, from_tag, to_tag, result, seconds); \
                 fix or remove that line",
                path.display(),
                index + 1
            ),
        }
    }
    Ok(records)
}

pub fn read_history(path: &Path) -> Result<Vec<Record>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_history(path, &text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The tag to roll back to. The successful deploys, updates and rollbacks form a stack of
/// versions: a deploy or an update puts its tag on top; a rollback to T goes back to where T
/// was last on top, dropping the versions rolled back from. The answer is the newest tag on
/// that stack other than `current`, so a second rollback goes further back instead of
/// returning to the version the first one left.
pub fn previous_tag(records: &[Record], current: Option<&str>) -> Option<String> {
    let mut stack: Vec<&str> = Vec::new();
    for record in records.iter().filter(|record| record.result == Outcome::Ok) {
        let tag = record.to_tag.as_str();
        match record.command.as_str() {
            "rollback" => match stack.iter().rposition(|earlier| *earlier == tag) {
                Some(position) => stack.truncate(position + 1),
                None => stack.push(tag),
            },
            "deploy" | "update" if stack.last() != Some(&tag) => stack.push(tag),
            _ => {}
        }
    }
    stack.iter().rev().find(|tag| Some(**tag) != current).map(|tag| tag.to_string())
}

/// Appends `record` with one write to a file opened for appending, so concurrent writers never
/// interleave within a line and earlier lines are never rewritten.
pub fn append_history(path: &Path, record: &Record) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(record.to_line().as_bytes()).with_context(|| format!("cannot append to {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Lock

pub const LOCK_FILE: &str = ".deploy.lock";

/// Who holds the deploy lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub user: String,
    pub host: String,
    pub command: String,
    /// RFC 3339, UTC.
    pub since: String,
    pub from_tag: Option<String>,
    pub to_tag: Option<String>,
    /// The docker commands it is running now.
    pub children: Vec<u32>,
}

impl Holder {
    pub fn to_json(&self) -> String {
        let value = json!({
            "pid": self.pid,
            "user": self.user,
            "host": self.host,
            "command": self.command,
            "since": self.since,
            "from_tag": self.from_tag,
            "to_tag": self.to_tag,
            "children": self.children,
        });
        format!("{value}\n")
    }

    pub fn parse(text: &str) -> Option<Holder> {
        let value: Value = serde_json::from_str(text).ok()?;
        let text = |key: &str| value[key].as_str().map(str::to_string);
        Some(Holder {
            pid: u32::try_from(value["pid"].as_u64()?).ok()?,
            user: text("user")?,
            host: text("host")?,
            command: text("command")?,
            since: text("since")?,
            from_tag: text("from_tag"),
            to_tag: text("to_tag"),
            children: value["children"]
                .as_array()
                .map(|pids| pids.iter().filter_map(|pid| u32::try_from(pid.as_u64()?).ok()).collect())
                .unwrap_or_default(),
        })
    }

    fn describe(&self) -> String {
        format!("pid {} ({}, user {}, host {}, since {})", self.pid, self.command, self.user, self.host, self.since)
    }
}

/// What a lock file found in place means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockState {
    /// Its holder is running (or runs on another host, where we cannot tell).
    Held(Holder),
    /// Its holder's process is gone: it ran on this host, or on another one and the operator
    /// said so (`--break-lock`).
    Stale(Holder),
    /// Not a lock this tool wrote.
    Unreadable,
}

/// Judges a lock file's contents: pure, given whether a holder runs on this host and whether
/// the operator vouches that holders on other hosts are gone.
pub fn judge_lock(contents: &str, this_host: &str, alive: impl Fn(&Holder) -> bool, lock: LockArgs) -> LockState {
    match Holder::parse(contents) {
        None => LockState::Unreadable,
        Some(holder) if holder.host == this_host && !alive(&holder) => LockState::Stale(holder),
        Some(holder) if holder.host != this_host && lock.break_lock => LockState::Stale(holder),
        Some(holder) => LockState::Held(holder),
    }
}

/// The refusal for a lock `other` holds.
fn held_error(path: &Path, other: &Holder) -> anyhow::Error {
    let remedy = if other.host == current_host() {
        "wait for it to finish"
    } else {
        "wait for it to finish; if that process is gone, pass --break-lock"
    };
    anyhow!("another deployment task holds the lock {}: {}; {remedy}", path.display(), other.describe())
}

/// Whether `holder` still runs on this host: a process has its pid, and that process started
/// before the holder took the lock. A process that started later got the pid from a reboot or
/// pid reuse and is not the holder. Without `/proc` we cannot tell: assume it runs.
pub fn holder_running(holder: &Holder) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    if !Path::new(&format!("/proc/{}", holder.pid)).exists() {
        return false;
    }
    match (process_start(holder.pid), clock::parse_rfc3339(&holder.since)) {
        // Seconds of slack for the rounding of both times.
        (Some(started), Some(since)) => started <= since + 2,
        _ => true,
    }
}

/// When process `pid` started, in Unix seconds: boot time plus its start in clock ticks
/// (field 22 of `/proc/<pid>/stat`; Linux reports them at 100 per second to user space).
fn process_start(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let ticks: i64 = after_name.split_whitespace().nth(22 - 3)?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: i64 = boot.lines().find_map(|line| line.strip_prefix("btime "))?.trim().parse().ok()?;
    Some(boot + ticks / 100)
}

/// The deploy lock, held until dropped.
pub struct Lock {
    path: PathBuf,
    holder: Holder,
}

impl Lock {
    /// Takes the lock at `path` for `holder`. A live holder refuses with an error naming it; a
    /// stale one is taken over (after its leftover docker commands on this host ended) and
    /// returned. With `--break-lock`, an unreadable lock file is replaced too.
    pub fn acquire(path: &Path, holder: Holder, wait_seconds: u64, lock: LockArgs) -> Result<(Lock, Option<Holder>)> {
        let mut taken_over = None;
        for _ in 0..3 {
            if try_create(path, &holder.to_json())? {
                return Ok((Lock { path: path.to_path_buf(), holder }, taken_over));
            }
            let contents = match std::fs::read_to_string(path) {
                Ok(contents) => contents,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
            };
            match judge_lock(&contents, &current_host(), holder_running, lock) {
                LockState::Held(other) => return Err(held_error(path, &other)),
                LockState::Unreadable if lock.break_lock => {
                    eprintln!(
                        "notice: replacing {}, which is not a lock this tool wrote (--break-lock)",
                        path.display()
                    );
                    remove_if_unchanged(path, &contents)?;
                }
                LockState::Unreadable => bail!(
                    "{} exists but is not a lock this tool wrote: pass --break-lock if no deploy is running",
                    path.display()
                ),
                LockState::Stale(stale) if stale.host != current_host() => {
                    eprintln!(
                        "notice: breaking the lock of pid {} on host {} ({}, user {}, since {}) as --break-lock says",
                        stale.pid, stale.host, stale.command, stale.user, stale.since
                    );
                    remove_if_unchanged(path, &contents)?;
                    taken_over = Some(stale);
                }
                LockState::Stale(stale) => {
                    eprintln!(
                        "notice: taking over the stale lock left by pid {} ({}, user {}, since {}): that process is gone",
                        stale.pid, stale.command, stale.user, stale.since
                    );
                    wait_for_leftovers(&stale.children, wait_seconds)?;
                    remove_if_unchanged(path, &contents)?;
                    taken_over = Some(stale);
                }
            }
        }
        bail!("cannot take the lock {}: it keeps changing; is another deploy starting?", path.display())
    }

    /// Records the docker commands now running, so a successor can wait for them.
    pub fn set_children(&mut self, children: Vec<u32>) {
        self.holder.children = children;
        // Best effort: the lock stays valid without the pids.
        let _ = crate::plan::write_atomically(&self.path, self.holder.to_json().as_bytes(), 0o644);
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|text| Holder::parse(&text))
            .is_some_and(|holder| holder.pid == self.holder.pid && holder.since == self.holder.since);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes the lock file at `path` if it still holds `contents`: another task may have replaced it.
fn remove_if_unchanged(path: &Path, contents: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(contents) {
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// Creates `path` with `contents` only if it does not exist: the contents go to a temporary file
/// that is then hard-linked into place, so the lock never exists half-written.
fn try_create(path: &Path, contents: &str) -> Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let temporary = dir.join(format!(".deploy.lock.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temporary)
        .with_context(|| format!("cannot create the lock in {} (is the directory writable?)", dir.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(error).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// Waits until the docker commands a dead holder left running have ended.
fn wait_for_leftovers(children: &[u32], seconds: u64) -> Result<()> {
    let running = || children.iter().copied().filter(|pid| is_docker_process(*pid)).collect::<Vec<_>>();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut first = true;
    loop {
        let left = running();
        if left.is_empty() {
            return Ok(());
        }
        if first {
            let pids: Vec<String> = left.iter().map(u32::to_string).collect();
            eprintln!("notice: waiting for the docker commands it left running to end (pid {})", pids.join(", "));
            first = false;
        }
        if Instant::now() > deadline {
            bail!(
                "the docker commands left by the dead deploy still run after {seconds} s (pid {left:?}): stop them and run again"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn is_docker_process(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let text = String::from_utf8_lossy(&cmdline);
        text.contains("docker") || text.contains("gzip")
    })
}

// ---------------------------------------------------------------------------------------------
// Plans

/// One step of an operator plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// An external command (compose, docker login).
    Run(Command),
    /// `db-init` when the database has no `alembic_version` table yet, else the migrations.
    InitOrMigrate { db_init: Command, migrate: Command },
    /// The migrations of the backend image that `.env` names; the last argument of the command
    /// is replaced by the database's revision when it runs.
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
            Action::Migrate(command) => write!(f, "{command}"),
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

/// The placeholder for the database's revision in a planned migration.
pub const REVISION_PLACEHOLDER: &str = "<database revision>";

/// Deploy: login, pull, start the database, initialize or migrate it, start everything.
pub fn plan_deploy(compose: &Compose, login: Option<Command>, timeout: u64) -> Plan<Action> {
    let mut steps: Vec<Action> = login.into_iter().map(Action::Run).collect();
    steps.push(Action::Run(compose.pull(None)));
    steps.push(Action::Run(compose.up(&["db", "redis"], timeout)));
    steps.push(Action::InitOrMigrate { db_init: compose.db_init(), migrate: compose.migrate(REVISION_PLACEHOLDER) });
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
    steps.push(Action::Migrate(compose.migrate(REVISION_PLACEHOLDER)));
    steps.push(Action::Run(compose.up(&[], inputs.timeout)));
    let mut on_failure = vec![set_tag(&inputs.env_path, inputs.env, &inputs.from_tag)?];
    if inputs.restore_on_failure {
        on_failure.push(Action::Restore { path: inputs.backup_path.clone() });
    } else {
        on_failure.push(Action::Run(compose.up(&[], inputs.timeout)));
    }
    Ok(Plan { steps, recovery: Some(Recovery { from: point_of_no_return, steps: on_failure }) })
}

// ---------------------------------------------------------------------------------------------
// Running plans

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

    fn migrate(&mut self, planned: &Command) -> Result<()> {
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

    pub fn perform(&mut self, action: &Action) -> Result<()> {
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
                backup::dump_to(self, &path)?;
                eprintln!("backup: {}", path.display());
                Ok(())
            }
            Action::SetTag { path, contents, .. } => {
                crate::plan::write_atomically(path, contents.expose().as_bytes(), 0o600)
            }
            Action::PruneBackups { dir, keep } => backup::prune(dir, *keep, clock::now_unix()),
            Action::Restore { path } => backup::restore_from(self, path),
        }
    }

    /// Runs `plan`, and its recovery when a step at or after its point of no return fails.
    pub fn execute(&mut self, plan: &Plan<Action>) -> std::result::Result<(), Failure> {
        plan.execute_with(|step| self.perform(step))
    }
}

// ---------------------------------------------------------------------------------------------
// Tasks

/// This process as the lock's holder, running `command`.
pub fn holder(command: &str, from_tag: Option<String>, to_tag: Option<String>) -> Holder {
    Holder {
        pid: std::process::id(),
        user: current_user(),
        host: current_host(),
        command: command.to_string(),
        since: clock::rfc3339(clock::now_unix()),
        from_tag,
        to_tag,
        children: Vec::new(),
    }
}

/// Records in the history that a stale lock's holder was interrupted.
pub fn record_interrupted(deployment: &Deployment, stale: &Holder) -> Result<()> {
    let Some(to_tag) = stale.to_tag.clone() else { return Ok(()) };
    let since = clock::parse_rfc3339(&stale.since).unwrap_or_else(clock::now_unix);
    append_history(
        &deployment.history_path(),
        &Record {
            time: clock::rfc3339(clock::now_unix()),
            user: stale.user.clone(),
            command: stale.command.clone(),
            from_tag: stale.from_tag.clone(),
            to_tag,
            result: Outcome::Failed,
            seconds: u64::try_from(clock::now_unix() - since).unwrap_or(0),
            backup: None,
            detail: Some(format!("interrupted: pid {} ended without releasing the lock", stale.pid)),
        },
    )
}

pub fn run_deploy(args: DeployArgs) -> Result<()> {
    let deployment = Deployment::open_checked(&args.target)?;
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
    let (mut lock, stale) = Lock::acquire(
        &deployment.lock_path(),
        holder("deploy", from_tag.clone(), Some(tag.clone())),
        timeout,
        lock_args,
    )?;
    if let Some(stale) = &stale {
        record_interrupted(&deployment, stale)?;
    }
    let started = Instant::now();
    let result = Executor { compose: &deployment.compose, lock: Some(&mut lock), timeout }.execute(&plan);
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
            crate::status::print_report(&deployment);
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
    let deployment = Deployment::open_checked(&args.target)?;
    update(&deployment, "update", &args.tag, args.options)
}

pub fn run_rollback(args: RollbackArgs) -> Result<()> {
    let deployment = Deployment::open_checked(&args.target)?;
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
    update(&deployment, "rollback", &to, args.options)
}

/// An update of `deployment` to `to_tag` (`command` is `update` or `rollback`).
fn update(deployment: &Deployment, command: &str, to_tag: &str, options: UpdateOptions) -> Result<()> {
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
    backup::check_writable(&backup_dir)?;
    let now = clock::now_unix();
    let inputs = |from_tag: String| UpdateInputs {
        compose: &deployment.compose,
        env_path: deployment.env_path(),
        env: &deployment.env,
        from_tag,
        to_tag: to_tag.to_string(),
        login: None,
        backup_path: backup::next_path(&backup_dir, now),
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
        record_interrupted(deployment, stale)?;
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
    let result = Executor { compose: &deployment.compose, lock: Some(&mut lock), timeout }.execute(&plan);
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
            crate::status::print_report(deployment);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn compose() -> Compose {
        Compose {
            program: "docker".into(),
            dir: "/srv/intric".into(),
            file: "/srv/intric/docker-compose.yml".into(),
            project: None,
            isolated: vec![],
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
            login: Some(crate::docker::login_with(
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

    fn holder_json(pid: u32, host: &str) -> String {
        Holder {
            pid,
            user: "ops".into(),
            host: host.into(),
            command: "update".into(),
            since: "2026-01-01T00:00:00Z".into(),
            from_tag: Some("1.0.0".into()),
            to_tag: Some("1.1.0".into()),
            children: vec![77],
        }
        .to_json()
    }

    #[test]
    fn a_lock_is_stale_only_when_its_process_is_gone_on_this_host() {
        let alive = |holder: &Holder| holder.pid == 10;
        let keep = LockArgs::default();
        let break_lock = LockArgs { break_lock: true };
        assert!(
            matches!(judge_lock(&holder_json(10, "h"), "h", alive, keep), LockState::Held(holder) if holder.pid == 10)
        );
        let LockState::Stale(stale) = judge_lock(&holder_json(11, "h"), "h", alive, keep) else { panic!() };
        assert_eq!((stale.command.as_str(), stale.children.as_slice()), ("update", &[77][..]));
        assert!(matches!(judge_lock(&holder_json(11, "other"), "h", alive, keep), LockState::Held(_)), "cannot tell");
        assert!(matches!(judge_lock(&holder_json(11, "other"), "h", alive, break_lock), LockState::Stale(_)));
        assert!(
            matches!(judge_lock(&holder_json(10, "h"), "h", alive, break_lock), LockState::Held(_)),
            "a holder running on this host is never broken"
        );
        assert_eq!(judge_lock("", "h", alive, keep), LockState::Unreadable);
        assert_eq!(judge_lock("{\"pid\": \"x\"}", "h", alive, keep), LockState::Unreadable);
    }

    #[test]
    fn a_lock_refuses_a_live_holder_and_takes_over_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let me = holder("update", None, Some("2".into()));
        let keep = LockArgs::default();
        let (lock, stale) = Lock::acquire(&path, me.clone(), 1, keep).unwrap();
        assert!(stale.is_none());
        let error = Lock::acquire(&path, me.clone(), 1, LockArgs { break_lock: true }).err().unwrap().to_string();
        assert!(error.contains(&format!("pid {} (update, user", std::process::id())), "{error}");
        drop(lock);
        assert!(!path.exists(), "released");
        // A dead pid on this host: no process has pid u32::MAX - 1.
        let dead = Holder { pid: u32::MAX - 1, host: current_host(), children: vec![], ..me.clone() };
        std::fs::write(&path, dead.to_json()).unwrap();
        let (lock, stale) = Lock::acquire(&path, me.clone(), 1, keep).unwrap();
        assert_eq!(stale.unwrap().pid, u32::MAX - 1);
        assert_eq!(Holder::parse(&std::fs::read_to_string(&path).unwrap()).unwrap().pid, std::process::id());
        drop(lock);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary files left");
    }

    #[test]
    fn a_holder_runs_while_its_process_does_and_a_reused_pid_is_not_it() {
        let me = holder("update", None, Some("2".into()));
        assert!(holder_running(&me));
        let before_it_started = Holder { since: "2000-01-01T00:00:00Z".into(), ..me.clone() };
        assert!(!holder_running(&before_it_started), "the pid's process started after the lock was taken");
        let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let gone = Holder { pid: other.id(), ..me };
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(!holder_running(&gone), "a process that ended is no holder");
    }

    #[test]
    fn another_hosts_lock_is_broken_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let me = holder("update", Some("1".into()), Some("2".into()));
        let theirs =
            Holder { pid: 4242, host: "workstation-b".into(), children: vec![std::process::id()], ..me.clone() };
        std::fs::write(&path, theirs.to_json()).unwrap();
        let error = Lock::acquire(&path, me.clone(), 1, LockArgs::default()).err().unwrap().to_string();
        assert!(error.contains("host workstation-b") && error.contains("pass --break-lock"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), theirs.to_json(), "refused: the lock is untouched");
        // Its children are pids on the other host: breaking does not wait for this host's pids.
        let (lock, broken) = Lock::acquire(&path, me.clone(), 1, LockArgs { break_lock: true }).unwrap();
        assert_eq!(broken, Some(theirs), "the broken holder is returned, for the history");
        drop(lock);
        std::fs::write(&path, "not a lock").unwrap();
        assert!(Lock::acquire(&path, me.clone(), 1, LockArgs::default()).is_err());
        let (lock, replaced) = Lock::acquire(&path, me, 1, LockArgs { break_lock: true }).unwrap();
        assert_eq!(replaced, None);
        drop(lock);
    }

    fn record(command: &str, from: Option<&str>, to: &str, result: Outcome) -> Record {
        Record {
            time: "2026-01-01T00:00:00Z".into(),
            user: "ops".into(),
            command: command.into(),
            from_tag: from.map(str::to_string),
            to_tag: to.into(),
            result,
            seconds: 42,
            backup: None,
            detail: None,
        }
    }

    #[test]
    fn history_lines_are_json_with_the_agreed_fields_and_read_back() {
        let line = record("update", Some("1.0.0"), "1.1.0", Outcome::RolledBack).to_line();
        assert_eq!(
            line,
            "{\"command\":\"update\",\"from_tag\":\"1.0.0\",\"result\":\"rolled-back\",\"seconds\":42,\
             \"time\":\"2026-01-01T00:00:00Z\",\"to_tag\":\"1.1.0\",\"user\":\"ops\"}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HISTORY_FILE);
        append_history(&path, &record("deploy", None, "1.0.0", Outcome::Ok)).unwrap();
        append_history(&path, &record("update", Some("1.0.0"), "1.1.0", Outcome::Ok)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with("{\"command\":\"deploy\",\"from_tag\":null,"), "{text}");
        assert_eq!(read_history(&path).unwrap()[1], record("update", Some("1.0.0"), "1.1.0", Outcome::Ok));
        let error = parse_history(&path, "{\"time\":1}\n").unwrap_err().to_string();
        assert!(error.ends_with(".deploy-history.jsonl:1: not a deploy history record (time, user, command, from_tag, to_tag, result, seconds); fix or remove that line"), "{error}");
    }

    #[test]
    fn rollback_goes_to_the_last_good_tag_other_than_the_current_one() {
        let history = [
            record("deploy", None, "1", Outcome::Ok),
            record("update", Some("1"), "2", Outcome::Ok),
            record("update", Some("2"), "3", Outcome::RolledBack),
            record("restore", Some("2"), "2", Outcome::Ok),
        ];
        assert_eq!(previous_tag(&history, Some("2")).as_deref(), Some("1"));
        assert_eq!(previous_tag(&history[..1], Some("1")), None);
        assert_eq!(previous_tag(&[], Some("1")), None);
    }

    #[test]
    fn a_second_rollback_goes_further_back() {
        let mut history = vec![
            record("deploy", None, "1", Outcome::Ok),
            record("update", Some("1"), "2", Outcome::Ok),
            record("update", Some("2"), "3", Outcome::Ok),
        ];
        assert_eq!(previous_tag(&history, Some("3")).as_deref(), Some("2"));
        history.push(record("rollback", Some("3"), "2", Outcome::Ok));
        assert_eq!(previous_tag(&history, Some("2")).as_deref(), Some("1"), "not back to 3");
        history.push(record("rollback", Some("2"), "1", Outcome::Ok));
        assert_eq!(previous_tag(&history, Some("1")), None, "nothing was deployed before 1");
        // An update to a tag deployed before is a new version on top, not a rollback.
        history.push(record("update", Some("1"), "3", Outcome::Ok));
        assert_eq!(previous_tag(&history, Some("3")).as_deref(), Some("1"));
    }

    #[test]
    fn remote_engine_hosts() {
        assert_eq!(engine_host(Some("ssh://ops@server.example:2222")).as_deref(), Some("server.example"));
        assert_eq!(engine_host(Some("tcp://10.0.0.5:2376")).as_deref(), Some("10.0.0.5"));
        assert_eq!(engine_host(Some("unix:///var/run/docker.sock")), None);
        assert_eq!(engine_host(None), None);
    }
}
