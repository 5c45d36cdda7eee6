//! The deploy lock: `DIR/.deploy.lock`, created atomically with its holder in it (pid, user,
//! host, command, since, tags, and the pids of the docker commands it is running). A lock whose
//! holder's process is gone (same host, no `/proc/<pid>`, or a pid reused by a younger process)
//! is stale: it is taken over with a notice, after waiting for docker commands the dead holder
//! left running. A lock held by a live process refuses, naming it; one from another host, where
//! this tool cannot tell, is broken only with `--break-lock`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::adapters::clock;
use clap::Args;

use crate::plan::runner::Watcher;

pub const LOCK_FILE: &str = ".deploy.lock";

// The option of the tasks that take the deploy lock.
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct LockArgs {
    /// Take over a deploy lock whose holder ran on another host and is gone, or a lock file this
    /// tool did not write (a holder on this host is checked instead; a running one is never
    /// broken).
    #[arg(long)]
    pub break_lock: bool,
}

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

    /// `pid N (command, user U, host H, since T)`.
    pub fn describe(&self) -> String {
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
pub fn held_error(path: &Path, other: &Holder) -> anyhow::Error {
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

/// The deploy lock as a task finds it while reading its inputs: what its plan says it will do
/// with the lock. A lock held by a live holder is no such state: [`inspect`] refuses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// No lock file: the lock is taken.
    Free,
    /// A lock whose holder is gone (or, with `--break-lock`, ran on another host): it is taken
    /// over, after the docker commands it left running on this host ended. `contents` is the
    /// file as read, so that a lock someone else took meanwhile is never removed.
    Stale { holder: Holder, contents: String },
    /// A file this tool did not write, replaced as `--break-lock` says.
    Unreadable { contents: String },
}

impl Found {
    /// The holder whose lock is taken over, if any.
    pub fn stale(&self) -> Option<&Holder> {
        match self {
            Found::Stale { holder, .. } => Some(holder),
            Found::Free | Found::Unreadable { .. } => None,
        }
    }

    /// What taking the lock at `path` does, as a plan shows it.
    pub fn taking(&self, path: &Path) -> String {
        let path = path.display();
        match self {
            Found::Free => format!("take the deploy lock {path}"),
            Found::Stale { holder, .. } if holder.host != current_host() => {
                format!("break the deploy lock {path} of {} as --break-lock says", holder.describe())
            }
            Found::Stale { holder, .. } => format!(
                "take over the stale deploy lock {path} left by {}: that process is gone; wait for the \
                 docker commands it left running",
                holder.describe()
            ),
            Found::Unreadable { .. } => format!("replace {path}, which is not a lock this tool wrote (--break-lock)"),
        }
    }
}

/// Judges the lock file at `path` (its `contents`, `None` when there is none): pure, given
/// whether a holder runs on this host. A live holder, and a file this tool did not write
/// without `--break-lock`, refuse with the one-line error to show.
pub fn judge_found(
    path: &Path,
    contents: Option<String>,
    this_host: &str,
    alive: impl Fn(&Holder) -> bool,
    lock: LockArgs,
) -> Result<Found> {
    let Some(contents) = contents else { return Ok(Found::Free) };
    match judge_lock(&contents, this_host, alive, lock) {
        LockState::Held(other) => Err(held_error(path, &other)),
        LockState::Stale(holder) => Ok(Found::Stale { holder, contents }),
        LockState::Unreadable if lock.break_lock => Ok(Found::Unreadable { contents }),
        LockState::Unreadable => bail!(
            "{} exists but is not a lock this tool wrote: pass --break-lock if no deploy is running",
            path.display()
        ),
    }
}

/// Reads and judges the lock file at `path` (see [`judge_found`]); it changes nothing.
pub fn inspect(path: &Path, lock: LockArgs) -> Result<Found> {
    let contents = match std::fs::read_to_string(path) {
        Ok(contents) => Some(contents),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    judge_found(path, contents, &current_host(), holder_running, lock)
}

/// The deploy lock, held until dropped.
pub struct Lock {
    path: PathBuf,
    pub holder: Holder,
}

impl Lock {
    /// Takes the lock at `path` for `holder`, doing with the lock file what `found` (read when
    /// the plan was made) says. A lock file that changed since then refuses: another task
    /// started meanwhile, and its lock is not ours to remove.
    pub fn take(path: &Path, holder: Holder, found: &Found, wait_seconds: u64) -> Result<Lock> {
        match found {
            Found::Free => {}
            Found::Stale { holder: stale, contents } if stale.host != current_host() => {
                eprintln!(
                    "notice: breaking the lock of pid {} on host {} ({}, user {}, since {}) as --break-lock says",
                    stale.pid, stale.host, stale.command, stale.user, stale.since
                );
                remove_if_unchanged(path, contents)?;
            }
            Found::Stale { holder: stale, contents } => {
                eprintln!(
                    "notice: taking over the stale lock left by pid {} ({}, user {}, since {}): that process is gone",
                    stale.pid, stale.command, stale.user, stale.since
                );
                wait_for_leftovers(&stale.children, wait_seconds)?;
                remove_if_unchanged(path, contents)?;
            }
            Found::Unreadable { contents } => {
                eprintln!("notice: replacing {}, which is not a lock this tool wrote (--break-lock)", path.display());
                remove_if_unchanged(path, contents)?;
            }
        }
        if try_create(path, &holder.to_json())? {
            return Ok(Lock { path: path.to_path_buf(), holder });
        }
        match std::fs::read_to_string(path).ok().as_deref().and_then(Holder::parse) {
            Some(other) => Err(held_error(path, &other)),
            None => bail!("cannot take the lock {}: it changed just now; is another deploy starting?", path.display()),
        }
    }

    /// A runner's watcher that records in the lock file the processes it runs, so that a
    /// successor taking over a stale lock can wait for the docker commands they are.
    pub fn watcher(&self) -> Watcher {
        let (path, holder) = (self.path.clone(), std::sync::Mutex::new(self.holder.clone()));
        Box::new(move |pids| {
            let mut holder = holder.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            holder.children = pids.to_vec();
            // Best effort: the lock stays valid without the pids.
            let _ = crate::plan::write_atomically(&path, holder.to_json().as_bytes(), 0o644);
        })
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

/// Removes the lock file at `path` if it still holds `contents`; another task may have replaced
/// it since it was read, and then it is that task's lock: refuse.
fn remove_if_unchanged(path: &Path, contents: &str) -> Result<()> {
    match std::fs::read_to_string(path) {
        Ok(now) if now == contents => {
            std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => bail!("the lock {} changed since this task read it: another deploy started; run again", path.display()),
    }
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

pub use crate::adapters::{current_host, current_user};

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Inspects the lock, then takes it as found: what a task's plan does in two steps.
    fn acquire(path: &Path, holder: Holder, lock: LockArgs) -> Result<(Lock, Option<Holder>)> {
        let found = inspect(path, lock)?;
        Ok((Lock::take(path, holder, &found, 1)?, found.stale().cloned()))
    }

    #[test]
    fn what_a_plan_does_with_the_lock_it_found() {
        let path = Path::new("/srv/intric/.deploy.lock");
        let alive = |holder: &Holder| holder.pid == 10;
        let keep = LockArgs::default();
        assert_eq!(judge_found(path, None, "h", alive, keep).unwrap(), Found::Free);
        let here = current_host();
        let stale = judge_found(path, Some(holder_json(11, &here)), &here, alive, keep).unwrap();
        assert_eq!(stale.stale().map(|holder| holder.pid), Some(11));
        assert!(stale.taking(path).contains("/srv/intric/.deploy.lock left by pid 11 (update, user ops"));
        let theirs = judge_found(path, Some(holder_json(11, "b")), &here, alive, LockArgs { break_lock: true });
        assert!(theirs.unwrap().taking(path).starts_with("break the deploy lock /srv/intric/.deploy.lock of pid 11"));
        let held = judge_found(path, Some(holder_json(10, "h")), "h", alive, keep).unwrap_err().to_string();
        assert!(held.starts_with("another deployment task holds the lock /srv/intric/.deploy.lock: pid 10"), "{held}");
        let unreadable = judge_found(path, Some("x".into()), "h", alive, keep).unwrap_err().to_string();
        assert!(unreadable.ends_with("pass --break-lock if no deploy is running"), "{unreadable}");
        let replaced = judge_found(path, Some("x".into()), "h", alive, LockArgs { break_lock: true }).unwrap();
        assert_eq!(replaced, Found::Unreadable { contents: "x".into() });
    }

    #[test]
    fn a_lock_refuses_a_live_holder_and_takes_over_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let me = holder("update", None, Some("2".into()));
        let keep = LockArgs::default();
        let (lock, stale) = acquire(&path, me.clone(), keep).unwrap();
        assert!(stale.is_none());
        let error = acquire(&path, me.clone(), LockArgs { break_lock: true }).err().unwrap().to_string();
        assert!(error.contains(&format!("pid {} (update, user", std::process::id())), "{error}");
        drop(lock);
        assert!(!path.exists(), "released");
        // A dead pid on this host: no process has pid u32::MAX - 1.
        let dead = Holder { pid: u32::MAX - 1, host: current_host(), children: vec![], ..me.clone() };
        std::fs::write(&path, dead.to_json()).unwrap();
        let (lock, stale) = acquire(&path, me.clone(), keep).unwrap();
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
        let error = acquire(&path, me.clone(), LockArgs::default()).err().unwrap().to_string();
        assert!(error.contains("host workstation-b") && error.contains("pass --break-lock"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), theirs.to_json(), "refused: the lock is untouched");
        // Its children are pids on the other host: breaking does not wait for this host's pids.
        let (lock, broken) = acquire(&path, me.clone(), LockArgs { break_lock: true }).unwrap();
        assert_eq!(broken, Some(theirs), "the broken holder is returned, for the history");
        drop(lock);
        std::fs::write(&path, "not a lock").unwrap();
        assert!(acquire(&path, me.clone(), LockArgs::default()).is_err());
        let (lock, replaced) = acquire(&path, me, LockArgs { break_lock: true }).unwrap();
        assert_eq!(replaced, None);
        drop(lock);
    }
}
