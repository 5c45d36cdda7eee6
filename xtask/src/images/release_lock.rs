//! The release lock: two releases never interleave, whichever machines or CI jobs run them.
//!
//! The lock lives where every release manager and CI job already looks: the git remote
//! (`origin`). Taking it pushes the tag `release-lock` ([`LOCK_REF`]) with
//! `--force-with-lease=refs/tags/release-lock:` (expected absent), which the remote checks as
//! it updates the ref, so of two releases at once exactly one gets it; the other is refused
//! before any image tag moves, naming the holder. The tag names a commit of its own (HEAD's
//! tree on top of HEAD, made by `git commit-tree`, so no local ref moves) whose message says
//! who holds the lock: version, user@host, pid, since when. A tag is what every Git host
//! accepts a push of (custom ref namespaces are refused or hidden by some); and since no
//! branch contains that commit, other clones' fetches do not pick the tag up along the way.
//! Releasing deletes the tag with a lease on our own commit, so a lock someone else broke and
//! took is never deleted by us. `--break-lock` replaces a lock left behind by a killed release
//! (with a lease on the commit it names, after saying whose it was and since when).
//!
//! It runs `git commit-tree`, `git push`, `git ls-remote`, `git fetch` and `git show`, through the
//! runner (see the remote section of `adapters::git`).

use std::fmt;
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

use crate::adapters::git;
use crate::plan::runner::{Finished, Runner};

/// The remote that holds the lock, and to which the release's git tag is pushed.
pub const REMOTE: &str = "origin";

/// The lock's ref on [`REMOTE`].
pub const LOCK_REF: &str = "refs/tags/release-lock";

/// What the lock would be taken as: pure data, shown by a dry run and run by `--execute`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseLock {
    pub repo: PathBuf,
    /// The commit the lock's own commit sits on (HEAD).
    pub head: String,
    /// Who takes it: `release 7.0.0 by root@ci-1 (pid 4242) since 2026-12-01T12:30:00Z`.
    pub holder: Holder,
    /// Replace a lock held by someone else (a release that was killed) instead of refusing.
    pub break_lock: bool,
}

/// Who holds the lock, as its commit message says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub version: String,
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub since: String,
    /// Where `pid` is looked up ([`crate::adapters::current_process_space`]); `None` when
    /// unknown (off Linux, or a lock written before it was recorded).
    pub process_space: Option<String>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "release {} by {}@{} (pid {}) since {}", self.version, self.user, self.host, self.pid, self.since)
    }
}

impl Holder {
    /// The lock commit's message: a readable first line, then the fields one per line, which
    /// is what [`Holder::parse`] reads back.
    pub fn message(&self) -> String {
        let space = self.process_space.as_ref().map_or_else(String::new, |space| format!("processes: {space}\n"));
        format!(
            "release lock: {self}\n\nversion: {}\nuser: {}\nhost: {}\npid: {}\nsince: {}\n{space}",
            self.version, self.user, self.host, self.pid, self.since
        )
    }

    /// The holder a lock commit's message names; `None` for a message not written by
    /// [`Holder::message`] (someone pushed a tag of that name by hand).
    pub fn parse(message: &str) -> Option<Holder> {
        let field = |name: &str| {
            message.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(": ")).map(str::to_string)
        };
        Some(Holder {
            version: field("version")?,
            user: field("user")?,
            host: field("host")?,
            pid: field("pid")?.parse().ok()?,
            since: field("since")?,
            process_space: field("processes"),
        })
    }

    /// Whether the holder is a process that no longer runs, as far as this process can tell:
    /// it recorded the same process space as `ours`, so its pid would be seen here, and no
    /// process has that pid. That is a release that was interrupted (Ctrl-C, a killed job)
    /// on this machine, whose lock may be taken over. A pid used again by another process
    /// since makes it look alive: then the lock stays, and `--break-lock` is the way.
    fn gone_from(&self, ours: Option<&str>) -> bool {
        ours.is_some_and(|ours| self.process_space.as_deref() == Some(ours))
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// A lock this process holds, until [`HeldLock::release`].
#[derive(Debug)]
pub struct HeldLock {
    repo: PathBuf,
    /// Our lock commit: the lease that releasing checks.
    id: String,
}

impl ReleaseLock {
    /// The command that makes the lock commit.
    fn commit_command(&self) -> crate::plan::Command {
        git::commit_object_command(&self.repo, &self.head, &self.holder.message())
    }

    /// What taking, holding and releasing the lock runs, for the dry run, in order; `<lock>`
    /// stands for the lock commit's id, known only when it is made.
    pub fn shown(&self) -> Vec<String> {
        let lock = "<lock>";
        let take = match self.break_lock {
            false => git::push_with_lease_command(&self.repo, REMOTE, Some(lock), LOCK_REF, None).to_string(),
            true => format!(
                "{} (with --break-lock: if someone else holds it, {})",
                git::push_with_lease_command(&self.repo, REMOTE, Some(lock), LOCK_REF, None),
                git::push_with_lease_command(&self.repo, REMOTE, Some(lock), LOCK_REF, Some("<theirs>"))
            ),
        };
        vec![
            format!("{} -> {lock}", self.commit_command()),
            take,
            git::push_with_lease_command(&self.repo, REMOTE, None, LOCK_REF, Some(lock)).to_string(),
        ]
    }

    /// Takes the lock, or fails naming whoever holds it; nothing else has changed then.
    pub fn acquire(&self, runner: &dyn Runner) -> Result<HeldLock> {
        let id = runner.read(&self.commit_command())?;
        let take =
            |expected: Option<&str>| git::push_with_lease_command(&self.repo, REMOTE, Some(&id), LOCK_REF, expected);
        let pushed = runner.output(&take(None))?;
        if pushed.status.success() {
            return Ok(HeldLock { repo: self.repo.clone(), id });
        }
        // Refused, or the remote did not answer: the remote's ref says which.
        let current = git::remote_refs(runner, &self.repo, REMOTE, &[LOCK_REF])?
            .into_iter()
            .find(|reference| reference.name == LOCK_REF);
        let Some(current) = current else {
            bail!(
                "cannot take the release lock on {REMOTE} ({LOCK_REF}), so nothing was released: git push failed: {}",
                said(&pushed)
            );
        };
        let holder = self.read_holder(runner, &current.id);
        let named = holder
            .as_ref()
            .map_or_else(|| format!("a lock commit {} of unknown origin", current.id), Holder::to_string);
        // A release interrupted on this machine left it: nobody else can be releasing under it.
        let interrupted = holder.as_ref().is_some_and(|holder| holder.gone_from(self.holder.process_space.as_deref()));
        if self.break_lock || interrupted {
            let replaced = runner.output(&take(Some(&current.id)))?;
            if !replaced.status.success() {
                bail!(
                    "cannot break the release lock on {REMOTE}: it changed while breaking it (it was {named}): {}; \
                     nothing was released",
                    said(&replaced)
                );
            }
            match interrupted {
                true => eprintln!(
                    "note: took over the release lock of {named}: that process no longer runs on this machine, so \
                     that release was interrupted"
                ),
                false => eprintln!("note: broke the release lock of {named}"),
            }
            return Ok(HeldLock { repo: self.repo.clone(), id });
        }
        bail!(
            "cannot release {}: another release holds the release lock on {REMOTE} ({LOCK_REF}): {named}. Nothing was \
             changed; run this release again once that one has finished. If that release was killed on another \
             machine and left its lock behind, pass --break-lock.",
            self.holder.version
        )
    }

    /// Who holds the lock commit `id` on the remote, read from its message; `None` when it
    /// cannot be read or was not written by a release.
    fn read_holder(&self, runner: &dyn Runner, id: &str) -> Option<Holder> {
        runner.read(&git::fetch_objects_command(&self.repo, REMOTE, LOCK_REF)).ok()?;
        Holder::parse(&runner.read(&git::commit_message_command(&self.repo, id)).ok()?)
    }
}

impl HeldLock {
    /// Deletes the lock on the remote, if it is still ours (a lease on our commit).
    pub fn release(self, runner: &dyn Runner) -> Result<()> {
        let done = runner.output(&git::push_with_lease_command(&self.repo, REMOTE, None, LOCK_REF, Some(&self.id)))?;
        if done.status.success() {
            return Ok(());
        }
        Err(anyhow!(
            "the release lock on {REMOTE} ({LOCK_REF}) was not removed: {}; when no release runs, remove it with \
             `git push {REMOTE} :{LOCK_REF}` (or let the next release pass --break-lock)",
            said(&done)
        ))
    }
}

/// What a git command said: `git push --porcelain` reports refusals on standard output, other
/// failures on standard error.
fn said(finished: &Finished) -> String {
    [finished.stdout.trim(), finished.stderr.trim()]
        .into_iter()
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(break_lock: bool) -> ReleaseLock {
        ReleaseLock {
            repo: "/src/intric".into(),
            head: "0123456789abcdef0123456789abcdef01234567".into(),
            holder: Holder {
                version: "7.0.0".into(),
                user: "ann".into(),
                host: "ws-1".into(),
                pid: 42,
                since: "2026-12-01T12:30:00Z".into(),
                process_space: Some("boot b1 pid:[4026531836]".into()),
            },
            break_lock,
        }
    }

    #[test]
    fn the_holder_is_written_into_the_message_and_read_back() {
        let holder = lock(false).holder;
        let message = holder.message();
        assert!(message.starts_with("release lock: release 7.0.0 by ann@ws-1 (pid 42) since 2026-12-01T12:30:00Z\n"));
        assert_eq!(Holder::parse(&message), Some(holder));
        assert_eq!(Holder::parse("a tag someone pushed by hand"), None);
    }

    /// A runner whose `git push` of the lock is refused while `held` names a lock commit, and
    /// whose other git commands answer as a remote holding it would, for a release on
    /// another machine.
    fn remote(held: Option<&'static str>, break_succeeds: bool) -> crate::plan::runner::Recording {
        let space = Some("boot b2 pid:[4026531836]".to_string());
        let other =
            Holder { pid: 7, host: "ci-9".into(), version: "6.0.0".into(), process_space: space, ..lock(false).holder };
        remote_held_by(other, held, break_succeeds)
    }

    /// [`remote`], the lock commit `held` written by `other`.
    fn remote_held_by(
        other: Holder,
        held: Option<&'static str>,
        break_succeeds: bool,
    ) -> crate::plan::runner::Recording {
        crate::plan::runner::Recording::replying(move |shown| match shown {
            _ if shown.contains("commit-tree") => Ok("1111111111111111111111111111111111111111".into()),
            _ if shown.contains("--force-with-lease=refs/tags/release-lock: ") => match held {
                Some(_) => Err("! [rejected] (stale info)".into()),
                None => Ok(String::new()),
            },
            _ if shown.contains("--force-with-lease=refs/tags/release-lock:2222") && !break_succeeds => {
                Err("! [rejected] (stale info)".into())
            }
            _ if shown.contains("ls-remote") => {
                Ok(held.map(|id| format!("{id}\trefs/tags/release-lock")).unwrap_or_default())
            }
            _ if shown.contains("show --no-patch") => Ok(other.message()),
            _ => Ok(String::new()),
        })
    }

    #[test]
    fn taking_a_free_lock_pushes_our_commit_expecting_none_and_releasing_leases_on_it() {
        let runner = remote(None, false);
        let held = lock(false).acquire(&runner).unwrap();
        held.release(&runner).unwrap();
        let ran = runner.executed();
        assert!(
            ran[0].starts_with("LC_ALL=C GIT_AUTHOR_NAME='intric xtask'") && ran[0].contains("commit-tree"),
            "{ran:?}"
        );
        assert_eq!(
            ran[1..],
            [
                "LC_ALL=C git -C /src/intric push --no-verify --porcelain --force-with-lease=refs/tags/release-lock: \
                 origin 1111111111111111111111111111111111111111:refs/tags/release-lock",
                "LC_ALL=C git -C /src/intric push --no-verify --porcelain \
                 --force-with-lease=refs/tags/release-lock:1111111111111111111111111111111111111111 origin \
                 :refs/tags/release-lock"
            ]
        );
        let shown = lock(false).shown();
        assert_eq!(shown.len(), 3);
        assert!(shown[1].ends_with("origin '<lock>:refs/tags/release-lock'"), "{shown:?}");
    }

    #[test]
    fn a_held_lock_refuses_naming_the_holder_and_break_lock_replaces_it_with_a_lease_on_theirs() {
        let held = "2222222222222222222222222222222222222222";
        let error = lock(false).acquire(&remote(Some(held), false)).unwrap_err().to_string();
        assert!(
            error.starts_with(
                "cannot release 7.0.0: another release holds the release lock on origin (refs/tags/release-lock): \
                 release 6.0.0 by ann@ci-9 (pid 7) since 2026-12-01T12:30:00Z. Nothing was changed"
            ),
            "{error}"
        );
        assert!(error.contains("pass --break-lock"), "{error}");

        let runner = remote(Some(held), true);
        lock(true).acquire(&runner).unwrap();
        assert!(
            runner
                .executed()
                .iter()
                .any(|ran| ran.contains(&format!("--force-with-lease=refs/tags/release-lock:{held} origin 1111"))),
            "{:?}",
            runner.executed()
        );
        let error = lock(true).acquire(&remote(Some(held), false)).unwrap_err().to_string();
        assert!(error.starts_with("cannot break the release lock on origin: it changed while breaking it"), "{error}");
    }

    #[test]
    fn a_lock_whose_holder_no_longer_runs_where_its_pid_would_be_seen_is_taken_over() {
        let held = "2222222222222222222222222222222222222222";
        let ours = lock(false).holder;
        // No process has this pid: it is above any pid_max Linux allows.
        let interrupted = Holder { pid: u32::MAX, version: "6.0.0".into(), ..ours.clone() };
        let runner = remote_held_by(interrupted.clone(), Some(held), true);
        lock(false).acquire(&runner).unwrap();
        let lease = format!("--force-with-lease=refs/tags/release-lock:{held} origin 1111");
        assert!(runner.executed().iter().any(|ran| ran.contains(&lease)), "{:?}", runner.executed());

        // Still running (this test's own pid), recorded elsewhere, or recorded nowhere: refused.
        let running = Holder { pid: std::process::id(), ..interrupted.clone() };
        let elsewhere = Holder { process_space: Some("boot b2 pid:[4026531836]".into()), ..interrupted.clone() };
        let unknown = Holder { process_space: None, ..interrupted };
        for holder in [running, elsewhere, unknown] {
            let error = lock(false).acquire(&remote_held_by(holder.clone(), Some(held), true)).unwrap_err();
            assert!(error.to_string().contains("another release holds the release lock"), "{holder:?}: {error}");
            assert!(error.to_string().ends_with("pass --break-lock."), "{error}");
        }
        // A lock of this process space says nothing of others that have none.
        assert!(!Holder { process_space: None, ..ours.clone() }.gone_from(None));
        assert!(!Holder { pid: u32::MAX, ..ours }.gone_from(None));
    }

    #[test]
    fn a_push_that_fails_without_a_lock_on_the_remote_is_not_a_refusal() {
        let runner = crate::plan::runner::Recording::replying(|shown| match shown {
            _ if shown.contains("commit-tree") => Ok("1111".into()),
            _ if shown.contains("push") => Err("fatal: could not read from remote repository".into()),
            _ => Ok(String::new()),
        });
        let error = lock(false).acquire(&runner).unwrap_err().to_string();
        assert!(
            error.starts_with("cannot take the release lock on origin (refs/tags/release-lock), so nothing"),
            "{error}"
        );
        assert!(error.contains("could not read from remote repository"), "{error}");
    }
}
