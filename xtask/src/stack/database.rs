//! The stack's PostgreSQL database to and from gzip'd plain SQL dumps on this side, wherever
//! the engine runs (for `backup`, `restore` and `update`'s backup first).
//!
//! - `backup`: `docker compose exec -T db pg_dump` streamed through `gzip` into
//!   `.intric_<UTC timestamp>.sql.gz.partial` in the output directory; the file is then checked
//!   (fully decompressed, and ending with pg_dump's "dump complete" line) and renamed to
//!   `intric_<UTC timestamp>.sql.gz`. Only then are backups beyond `--keep` removed, oldest
//!   first, and only files with that exact naming; so are the `.partial` files of backups that
//!   were killed (named a day or more before now: no dump of this stack runs that long).
//! - `restore FILE --yes`: checks FILE the same way before touching anything; stops backend and
//!   worker; loads FILE into a new database (`<db>_restore`) in one transaction; swaps it in by
//!   renaming (the old database is dropped only once the new one is in place); starts the stack
//!   and waits until it is healthy. It is correct on a fresh stack and on a populated one, and a
//!   failed load leaves the current database untouched.
//! - On Docker Swarm (the deploy history says so) both run the same way in the db task's
//!   container (`docker exec`), and a restore scales backend and worker to 0 and back to their
//!   replicas instead of stopping them ([`RestoreTarget`]).
//!
//! The dump never touches the engine host's file system (no bind mounts), so `DOCKER_HOST=ssh://`
//! works. Compression is the `gzip` binary, in a pipe the runner connects: no gzip crate needed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::adapters::clock;
use crate::adapters::compose::{Compose, DUMP_COMPLETE};
use crate::plan::Command;
use crate::plan::runner::{Pipe, Runner};
use crate::stack::executor::Executor;

/// Backups kept by default.
pub const DEFAULT_KEEP: u64 = 10;

// ---------------------------------------------------------------------------------------------
// Names and retention (pure)

/// `intric_<UTC timestamp>.sql.gz`, with `-N` before the extension for the N-th extra backup
/// within the same second.
pub fn backup_name(unix_seconds: i64, extra: u32) -> String {
    let stamp = clock::compact_utc(unix_seconds);
    if extra == 0 { format!("intric_{stamp}.sql.gz") } else { format!("intric_{stamp}-{extra}.sql.gz") }
}

/// The timestamp and sequence of a backup's file name, `None` for any other file.
pub fn parse_backup_name(name: &str) -> Option<(String, u32)> {
    let stem = name.strip_prefix("intric_")?.strip_suffix(".sql.gz")?;
    let (stamp, extra) = match stem.split_once('-') {
        Some((stamp, extra)) => (stamp, extra.parse().ok().filter(|extra| *extra > 0)?),
        None => (stem, 0),
    };
    let bytes = stamp.as_bytes();
    let shape = bytes.len() == 16
        && bytes[8] == b'T'
        && bytes[15] == b'Z'
        && bytes.iter().enumerate().all(|(index, byte)| index == 8 || index == 15 || byte.is_ascii_digit());
    shape.then(|| (stamp.to_string(), extra))
}

/// The backups among `names` to remove so that the newest `keep` remain, oldest first.
pub fn to_remove(names: &[String], keep: usize) -> Vec<String> {
    let mut backups: Vec<((String, u32), &String)> =
        names.iter().filter_map(|name| Some((parse_backup_name(name)?, name))).collect();
    backups.sort();
    let excess = backups.len().saturating_sub(keep);
    backups.into_iter().take(excess).map(|(_, name)| name.clone()).collect()
}

/// The half-written dumps among `names` that a killed backup left: named a day or more before
/// `now`, so no backup still running can own them.
pub fn stale_partials(names: &[String], now: i64) -> Vec<String> {
    let cutoff = clock::compact_utc(now - 24 * 60 * 60);
    names
        .iter()
        .filter(|name| {
            let Some(backup) = name.strip_prefix('.').and_then(|name| name.strip_suffix(".partial")) else {
                return false;
            };
            // Compact UTC stamps of one shape sort as the times they name.
            parse_backup_name(backup).is_some_and(|(stamp, _)| stamp <= cutoff)
        })
        .cloned()
        .collect()
}

/// A new backup's path in `dir` for time `now`: the first name not taken yet.
pub fn next_path(dir: &Path, now: i64) -> PathBuf {
    (0..).map(|extra| dir.join(backup_name(now, extra))).find(|path| !path.exists()).expect("an unused name")
}

// ---------------------------------------------------------------------------------------------
// Checks before anything runs

/// Checks that backups can be written to `dir`, creating nothing (a dry run runs it too): it is
/// a directory this process may write to, or it does not exist yet and its nearest existing
/// parent is one. Reasoned from the directory's owner, group and mode bits against this
/// process's user and groups (see [`may_write`]), without creating a probe file.
pub fn check_writable(dir: &Path) -> Result<()> {
    let existing = dir.ancestors().find(|ancestor| ancestor.exists()).unwrap_or(Path::new("/"));
    let meta = std::fs::metadata(existing).with_context(|| format!("cannot read {}", existing.display()))?;
    if !meta.is_dir() {
        bail!("cannot write backups to {}: {} is not a directory", dir.display(), existing.display());
    }
    if let Some(me) = Credentials::of_this_process() {
        use std::os::unix::fs::MetadataExt;
        if !may_write(&me, meta.uid(), meta.gid(), meta.mode()) {
            bail!(
                "cannot write backups to {}: {} is not writable (mode {:o}, owner uid {}): pass another directory",
                dir.display(),
                existing.display(),
                meta.mode() & 0o7777,
                meta.uid()
            );
        }
    }
    Ok(())
}

/// Who this process is to the file system: its effective user and its groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub groups: Vec<u32>,
}

impl Credentials {
    /// This process's, from `/proc/self/status` (`Uid:`/`Gid:` list real, effective, saved and
    /// file-system ids; `Groups:` the supplementary ones). `None` where there is no `/proc`.
    pub fn of_this_process() -> Option<Credentials> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let ids = |key: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .map(|rest| rest.split_whitespace().filter_map(|id| id.parse().ok()).collect())
                .unwrap_or_default()
        };
        // The file-system ids (the fourth) are the ones permission checks use.
        let uid = *ids("Uid:").get(3)?;
        let mut groups = ids("Groups:");
        groups.extend(ids("Gid:").get(3));
        Some(Credentials { uid, groups })
    }
}

/// Whether `me` may create files in a directory of owner `uid`, group `gid` and `mode`: the
/// write and search bits of the class `me` falls in (owner, else group, else others). Root
/// passes any permission check, but a directory without any write bit is meant to be
/// read-only (`/proc`, a mount made read-only): it counts as not writable for root too.
pub fn may_write(me: &Credentials, uid: u32, gid: u32, mode: u32) -> bool {
    if me.uid == 0 {
        return mode & 0o222 != 0;
    }
    let bits = if me.uid == uid {
        mode >> 6
    } else if me.groups.contains(&gid) {
        mode >> 3
    } else {
        mode
    };
    bits & 0o3 == 0o3
}

/// Checks that `path` is a complete backup: a gzip file that decompresses fully, holding a
/// plain pg_dump that ended normally.
pub fn verify(runner: &dyn Runner, path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!("{} does not exist or is not a file", path.display());
    }
    let gzip = |flag: &str| Command::new("gzip").arg(flag).arg(path.display().to_string());
    if let Err(error) = runner.read(&gzip("-t")) {
        let why = format!("{error:#}");
        let why = why.rsplit(": ").next().unwrap_or("").trim().to_string();
        bail!("{} is not a complete gzip file ({why}): not a usable backup", path.display());
    }
    // pg_dump's last line says the dump is complete; only the last lines are kept.
    let mut last = Vec::new();
    runner
        .run(&gzip("-dc"), &mut |line| {
            if !line.trim().is_empty() {
                last.push(line.to_string());
                if last.len() > 8 {
                    last.remove(0);
                }
            }
        })
        .with_context(|| format!("cannot decompress {}", path.display()))?;
    if !last.iter().any(|line| line.contains(DUMP_COMPLETE)) {
        bail!(
            "{} does not hold a complete pg_dump (it lacks \"{DUMP_COMPLETE}\"): not a usable backup",
            path.display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running

/// Dumps the database into `path`: through a temporary name (mode 0600 from the start: it
/// holds the whole database), checked, then renamed.
pub fn dump_to(exec: &Executor, path: &Path) -> Result<()> {
    dump_with(exec, exec.compose.dump(), path)
}

/// [`dump_to`] with `dump` as the command that prints the dump (`pg_dump` in the swarm's db task).
pub fn dump_with(exec: &Executor, dump: Command, path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().context("a backup needs a file name")?.to_string_lossy().to_string();
    let partial = dir.join(format!(".{name}.partial"));
    let pipe =
        Pipe { commands: vec![dump, Command::new("gzip").arg("-c")], input: None, output: Some(partial.clone()) };
    let result = exec
        .pipe(&pipe, "dumped")
        .with_context(|| "pg_dump in the db container failed: is the stack running? (`cargo xtask status`)".to_string())
        .and_then(|()| verify(exec.runner, &partial))
        .and_then(|()| std::fs::rename(&partial, path).with_context(|| format!("cannot rename to {}", path.display())));
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// The services that write to the database: stopped (on swarm, scaled to 0) while a restore
/// swaps it.
pub const WRITERS: [&str; 2] = ["backend", "worker"];

/// Where a restore runs: the database's commands, and the services around it. Compose mode's
/// is the project ([`Compose`]); swarm mode's the stack's db task and services
/// (`stack::swarm::SwarmDatabase`).
pub trait RestoreTarget {
    /// Starts the database, or makes sure it runs.
    fn start_database(&self, exec: &Executor) -> Result<()>;
    /// `args` ([`Database::query`](crate::adapters::compose::Database::query) or
    /// [`Database::load`](crate::adapters::compose::Database::load)) run in the database's
    /// container, standard input attached.
    fn in_database(&self, args: Vec<String>) -> Command;
    /// Stops backend and worker, which write to the database, for the time of the restore.
    fn stop_writers(&self, exec: &Executor) -> Result<()>;
    /// Starts everything again and waits until it is healthy.
    fn start_all(&self, exec: &Executor) -> Result<()>;
}

impl RestoreTarget for Compose {
    fn start_database(&self, exec: &Executor) -> Result<()> {
        exec.run(&self.up(&["db"], exec.timeout))
    }

    fn in_database(&self, args: Vec<String>) -> Command {
        self.in_db(args)
    }

    fn stop_writers(&self, exec: &Executor) -> Result<()> {
        exec.run(&self.stop(&WRITERS))
    }

    fn start_all(&self, exec: &Executor) -> Result<()> {
        exec.run(&self.up(&[], exec.timeout))
    }
}

/// Restores the database from the (verified) backup `path` on `target`; see the module
/// documentation.
pub fn restore_from(exec: &Executor, target: &dyn RestoreTarget, path: &Path) -> Result<()> {
    let database = &exec.compose.database;
    target.start_database(exec)?;
    let name = exec.read(&target.in_database(database.query(None, "select current_database()")))?;
    let (staging, previous) = (format!("{name}_restore"), format!("{name}_before_restore"));
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let admin = |sql: String| target.in_database(database.query(Some("template1"), &sql));
    let disconnect = |database: &str| {
        admin(format!(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = '{}' and pid <> pg_backend_pid()",
            database.replace('\'', "''")
        ))
    };
    target.stop_writers(exec)?;
    let loaded = (|| -> Result<()> {
        exec.run(&admin(format!("drop database if exists {} with (force)", quote(&staging))))?;
        exec.run(&admin(format!("drop database if exists {} with (force)", quote(&previous))))?;
        exec.run(&admin(format!("create database {}", quote(&staging))))?;
        let load = Pipe {
            commands: vec![Command::new("gzip").arg("-dc"), target.in_database(database.load(&staging))],
            input: Some(path.to_path_buf()),
            output: None,
        };
        exec.pipe(&load, "loaded")
            .with_context(|| format!("loading {} failed; the database was not changed", path.display()))
    })();
    let swapped = loaded.and_then(|()| {
        exec.run(&disconnect(&name))?;
        exec.run(&admin(format!("alter database {} rename to {}", quote(&name), quote(&previous))))?;
        if let Err(error) = exec.run(&admin(format!("alter database {} rename to {}", quote(&staging), quote(&name)))) {
            exec.run(&admin(format!("alter database {} rename to {}", quote(&previous), quote(&name))))?;
            return Err(error);
        }
        exec.run(&admin(format!("drop database {} with (force)", quote(&previous))))
    });
    if swapped.is_err() {
        let _ = exec.run(&admin(format!("drop database if exists {} with (force)", quote(&staging))));
    }
    let started = target.start_all(exec);
    swapped?;
    started
}

/// Removes the backups in `dir` beyond the newest `keep`, and the partial ones killed backups
/// left there a day or more before `now`.
pub fn prune(dir: &Path, keep: usize, now: i64) -> Result<()> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    // The new backup is complete by now: a file that cannot be removed is worth a warning,
    // not a failed backup.
    for name in to_remove(&names, keep).into_iter().chain(stale_partials(&names, now)) {
        let old = dir.join(&name);
        match std::fs::remove_file(&old) {
            Ok(()) => eprintln!("removed {}", old.display()),
            Err(error) => eprintln!("warning: cannot remove {}: {error}", old.display()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::runner::Processes;

    #[test]
    fn backup_names_sort_by_time_and_sequence() {
        assert_eq!(backup_name(1_764_233_100, 0), "intric_20251127T084500Z.sql.gz");
        assert_eq!(backup_name(1_764_233_100, 2), "intric_20251127T084500Z-2.sql.gz");
        assert_eq!(parse_backup_name("intric_20251127T084500Z-2.sql.gz"), Some(("20251127T084500Z".into(), 2)));
        for other in [
            "intric_20251127T084500Z.sql",
            ".intric_20251127T084500Z.sql.gz.partial",
            "intric_2025-11-27.sql.gz",
            "intric_20251127T084500Z-0.sql.gz",
            "intric_20251127T084500Z-x.sql.gz",
            "notes.txt",
        ] {
            assert_eq!(parse_backup_name(other), None, "{other}");
        }
    }

    #[test]
    fn retention_removes_the_oldest_backups_only() {
        let names: Vec<String> = [
            "intric_20260103T000000Z.sql.gz",
            "intric_20260101T000000Z.sql.gz",
            "intric_20260102T000000Z-1.sql.gz",
            "intric_20260102T000000Z.sql.gz",
            "keep-me.sql.gz",
            ".intric_20250101T000000Z.sql.gz.partial",
        ]
        .map(String::from)
        .into();
        assert_eq!(to_remove(&names, 2), ["intric_20260101T000000Z.sql.gz", "intric_20260102T000000Z.sql.gz"]);
        assert_eq!(to_remove(&names, 4), Vec::<String>::new());
        assert_eq!(to_remove(&names, 1).len(), 3);
    }

    #[test]
    fn partial_dumps_go_once_a_day_old() {
        let now = 1_767_268_800; // 2026-01-01T12:00:00Z
        let names: Vec<String> = [
            ".intric_20251231T115959Z.sql.gz.partial",
            ".intric_20251231T120000Z-1.sql.gz.partial",
            ".intric_20251231T120001Z.sql.gz.partial",
            ".intric_20260101T115000Z.sql.gz.partial",
            "intric_20251201T000000Z.sql.gz",
            ".notes.partial",
            ".intric_20251231T115959Z.sql.gz.tmp",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            stale_partials(&names, now),
            [".intric_20251231T115959Z.sql.gz.partial", ".intric_20251231T120000Z-1.sql.gz.partial"],
            "older than a day, named as this tool names them, and nothing else"
        );
    }

    #[test]
    fn prune_keeps_the_newest_and_removes_old_partials() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "intric_20251230T000000Z.sql.gz",
            "intric_20251231T000000Z.sql.gz",
            ".intric_20251230T000000Z.sql.gz.partial",
            ".intric_20260101T115000Z.sql.gz.partial",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        prune(dir.path(), 1, 1_767_268_800).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".intric_20260101T115000Z.sql.gz.partial", "intric_20251231T000000Z.sql.gz"]);
    }

    #[test]
    fn next_path_skips_names_taken() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(backup_name(0, 0)), "").unwrap();
        assert_eq!(next_path(dir.path(), 0), dir.path().join("intric_19700101T000000Z-1.sql.gz"));
    }

    #[test]
    fn write_permission_follows_the_class_of_the_user() {
        let user = Credentials { uid: 1000, groups: vec![1000, 27] };
        assert!(may_write(&user, 1000, 1000, 0o700));
        assert!(!may_write(&user, 1000, 1000, 0o500), "the owner's bits, even if others may write");
        assert!(!may_write(&user, 1000, 1000, 0o577));
        assert!(may_write(&user, 0, 27, 0o770), "a supplementary group");
        assert!(!may_write(&user, 0, 27, 0o757), "the group's bits, not the others'");
        assert!(may_write(&user, 0, 0, 0o1777), "/tmp");
        assert!(!may_write(&user, 0, 0, 0o755));
        assert!(!may_write(&user, 1000, 1000, 0o600), "no search bit: nothing can be created");
        let root = Credentials { uid: 0, groups: vec![0] };
        assert!(may_write(&root, 1000, 1000, 0o700));
        assert!(!may_write(&root, 0, 0, 0o555), "read-only on purpose");
    }

    #[test]
    fn writability_is_checked_without_creating_anything() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        check_writable(&dir.path().join("new/backups")).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let read_only = dir.path().join("read-only");
        std::fs::create_dir(&read_only).unwrap();
        std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
        let error = check_writable(&read_only.join("backups")).unwrap_err().to_string();
        assert!(error.contains("read-only is not writable (mode 555"), "{error}");
        assert_eq!(std::fs::read_dir(&read_only).unwrap().count(), 0);
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let error = check_writable(&file.join("sub")).unwrap_err().to_string();
        assert!(error.contains("is not a directory"), "{error}");
    }

    #[test]
    fn only_complete_gzip_dumps_verify() {
        let dir = tempfile::tempdir().unwrap();
        let write_gz = |name: &str, text: &str| {
            let path = dir.path().join(name);
            let output = duct::cmd!("gzip", "-c").stdin_bytes(text.as_bytes()).stdout_path(&path).run();
            output.unwrap();
            path
        };
        let good = write_gz("good.sql.gz", &format!("select 1;\n--\n{DUMP_COMPLETE}\n--\n"));
        verify(&Processes::new(), &good).unwrap();
        let cut = write_gz("cut.sql.gz", "select 1;\n");
        assert!(verify(&Processes::new(), &cut).unwrap_err().to_string().contains("does not hold a complete pg_dump"));
        let bytes = std::fs::read(&good).unwrap();
        let truncated = dir.path().join("truncated.sql.gz");
        std::fs::write(&truncated, &bytes[..bytes.len() - 6]).unwrap();
        assert!(verify(&Processes::new(), &truncated).unwrap_err().to_string().contains("is not a complete gzip file"));
        let plain = dir.path().join("plain.sql.gz");
        std::fs::write(&plain, "not gzip").unwrap();
        let error = verify(&Processes::new(), &plain).unwrap_err().to_string();
        assert!(error.contains("is not a complete gzip file (not in gzip format)"), "{error}");
    }
}
