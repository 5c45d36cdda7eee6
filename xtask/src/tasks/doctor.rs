//! `cargo xtask doctor`: is this machine (and the engine it talks to) ready to build and run the
//! stack? One table of ok / warn / fail with the fix for each; it exits non-zero when any check
//! fails. Warnings do not fail it.
//!
//! Checks: engine ≥ 20.10 and compose ≥ 2 (fail), BuildKit and git (warn: only building needs
//! them), memory and free disk against the deployment guide (fail below the minimum of 2 GB RAM
//! and 10 GB disk, warn below the recommended 4 GB and 50 GB), the registry of `.env` reachable
//! with the login this machine has (fail), and `env check` (fail on errors, warn on warnings).
//!
//! Memory is the engine host's (`docker info`), so it is right for a remote `DOCKER_HOST` too;
//! free disk is measured where it can be from here: the deployment directory, and the engine's
//! root directory when the engine is local.

use std::fmt;
use std::path::Path;

use anyhow::{Result, bail};
use clap::Args;

use crate::adapters::docker;
use crate::adapters::registry::{Backoff, Registry};
use crate::plan::Command;
use crate::plan::runner::{Processes, Runner};
use crate::stack::env_check::{self, Level};
use crate::stack::{Deployment, Target};

const GB: u64 = 1_000_000_000;
/// The deployment guide's sizes: minimum and recommended.
const MEMORY: (u64, u64) = (2 * GB, 4 * GB);
const DISK: (u64, u64) = (10 * GB, 50 * GB);

#[derive(Args)]
#[command(after_help = "Examples:
  cargo xtask doctor
  DOCKER_HOST=ssh://ops@server cargo xtask doctor --dir ./server-config")]
pub struct DoctorArgs {
    #[command(flatten)]
    pub target: Target,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub found: String,
    /// What to do; empty when ok.
    pub fix: String,
}

fn check(name: &str, verdict: Verdict, found: impl Into<String>, fix: impl Into<String>) -> Check {
    let fix = if verdict == Verdict::Ok { String::new() } else { fix.into() };
    Check { name: name.into(), verdict, found: found.into(), fix }
}

/// A version against a minimum `(major, minor)`; `None` when the probe failed.
pub fn judge_version(name: &str, found: Option<&str>, minimum: (u64, u64), fix: &str) -> Check {
    let wanted = format!("{}.{}", minimum.0, minimum.1);
    match found.map(|version| (version, docker::major_minor(version))) {
        Some((version, Some(parsed))) if parsed >= minimum => check(name, Verdict::Ok, version, ""),
        Some((version, _)) => check(name, Verdict::Fail, format!("{version} (need ≥ {wanted})"), fix),
        None => check(name, Verdict::Fail, "not found", fix),
    }
}

/// Bytes against the guide's (minimum, recommended).
pub fn judge_size(name: &str, bytes: Option<u64>, (minimum, recommended): (u64, u64), fix: &str) -> Check {
    let gb = |bytes: u64| format!("{:.1} GB", bytes as f64 / GB as f64);
    match bytes {
        None => check(name, Verdict::Warn, "unknown", "could not measure it from here; check it on the host"),
        Some(bytes) if bytes < minimum => {
            check(name, Verdict::Fail, format!("{} (minimum {})", gb(bytes), gb(minimum)), fix)
        }
        Some(bytes) if bytes < recommended => {
            check(name, Verdict::Warn, format!("{} (recommended {})", gb(bytes), gb(recommended)), fix)
        }
        Some(bytes) => check(name, Verdict::Ok, gb(bytes), ""),
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Free bytes of the file system holding `path` (`df -Pk`).
fn free_bytes(runner: &dyn Runner, path: &Path) -> Option<u64> {
    let output = probe(runner, &Command::new("df").arg("-Pk").arg(path.display().to_string()))?;
    let kib: u64 = output.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()?;
    Some(kib * 1024)
}

/// Reads a probe's output, `None` when it fails.
fn probe(runner: &dyn Runner, command: &Command) -> Option<String> {
    runner.read(command).ok().filter(|output| !output.is_empty())
}

pub fn render(checks: &[Check]) -> String {
    let name_width = checks.iter().map(|check| check.name.len()).max().unwrap_or(0);
    let found_width = checks.iter().map(|check| check.found.len()).max().unwrap_or(0).min(48);
    let mut text = String::new();
    for check in checks {
        let line =
            format!("{:<4}  {:<name_width$}  {:<found_width$}  {}", check.verdict, check.name, check.found, check.fix);
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

pub fn run(args: DoctorArgs) -> Result<()> {
    let runner = Processes::new();
    let mut checks = Vec::new();
    let engine = probe(&runner, &docker::engine_version_command("docker"));
    checks.push(judge_version(
        "docker engine",
        engine.as_deref(),
        (20, 10),
        "install Docker Engine ≥ 20.10 and start it, or point DOCKER_HOST at one",
    ));
    checks.push(judge_version(
        "docker compose",
        probe(&runner, &docker::compose_version_command("docker")).as_deref(),
        (2, 0),
        "install the compose plugin v2 (docker-compose-plugin)",
    ));
    checks.push(match docker::Docker::detect(&runner) {
        Ok(found) => check("buildkit", Verdict::Ok, format!("{} ({})", found.builder, found.program), ""),
        Err(_) => check(
            "buildkit",
            Verdict::Warn,
            "no client can build",
            "only needed to build images here: install the buildx plugin",
        ),
    });
    checks.push(match probe(&runner, &Command::new("git").arg("--version")) {
        Some(version) => check("git", Verdict::Ok, version.trim_start_matches("git version ").to_string(), ""),
        None => check("git", Verdict::Warn, "not found", "only needed to build and tag images here: install git"),
    });

    let info = probe(&runner, &docker::engine_info_command("docker"));
    let mut info_lines = info.as_deref().unwrap_or("").lines();
    let engine_memory = info_lines.next().and_then(|bytes| bytes.trim().parse().ok());
    let root_dir = info_lines.next().map(str::trim).filter(|dir| !dir.is_empty()).map(String::from);
    let memory = engine_memory.or_else(|| meminfo_total(&std::fs::read_to_string("/proc/meminfo").ok()?));
    checks.push(judge_size(
        "memory",
        memory,
        MEMORY,
        "add memory to the engine host (guide: 2 GB minimum, 4 GB recommended)",
    ));

    let target_dir = env_check::deployment_dir(args.target.dir.clone());
    let disk_fix = "free or add disk space (guide: 10 GB minimum, 50 GB recommended; embeddings grow)";
    let local_engine = crate::stack::deployment::engine_host(std::env::var("DOCKER_HOST").ok().as_deref()).is_none();
    match root_dir.filter(|dir| local_engine && Path::new(dir).exists()) {
        Some(dir) => {
            checks.push(judge_size(&format!("disk {dir}"), free_bytes(&runner, Path::new(&dir)), DISK, disk_fix))
        }
        None if !local_engine => checks.push(check(
            "disk (engine)",
            Verdict::Warn,
            "remote engine",
            "not measurable from here: check free space of the engine host's docker root (df -h /var/lib/docker)",
        )),
        None => {}
    }
    if target_dir.is_dir() {
        checks.push(judge_size(
            &format!("disk {}", target_dir.display()),
            free_bytes(&runner, &target_dir),
            DISK,
            disk_fix,
        ));
    }

    match Deployment::open(&args.target, &runner) {
        Err(error) => checks.push(check("deployment", Verdict::Fail, "unusable", format!("{error:#}"))),
        Ok(deployment) => {
            checks.push(match deployment.registry() {
                Err(error) => check("registry", Verdict::Fail, "not configured", format!("{error:#}")),
                Ok((address, credentials, _)) => {
                    let login = credentials.as_ref().map_or("anonymous".to_string(), |c| format!("as {}", c.username));
                    match Registry::new(address.clone(), credentials, Backoff::STANDARD).check_access() {
                        Ok(()) => check("registry", Verdict::Ok, format!("{address} {login}"), ""),
                        Err(error) => check(
                            "registry",
                            Verdict::Fail,
                            format!("{address} {login}"),
                            format!(
                                "{error:#}; set NEXUS_USERNAME/NEXUS_PASSWORD in .env or run `docker login {}`",
                                address.host
                            ),
                        ),
                    }
                }
            });
            checks.push(match env_check::check_dir(&deployment.dir) {
                Err(error) => check("env check", Verdict::Fail, "unreadable", format!("{error:#}")),
                Ok((_, _, problems)) => {
                    let errors = problems.iter().filter(|p| p.level == Level::Error).count();
                    let warnings = problems.len() - errors;
                    let first = problems.first().map(|p| p.message.clone()).unwrap_or_default();
                    let found = format!("{errors} error(s), {warnings} warning(s)");
                    let fix = format!("{first}; `cargo xtask env check --dir {}` lists all", deployment.dir.display());
                    let verdict = if errors > 0 {
                        Verdict::Fail
                    } else if warnings > 0 {
                        Verdict::Warn
                    } else {
                        Verdict::Ok
                    };
                    check("env check", verdict, found, fix)
                }
            });
        }
    }

    print!("{}", render(&checks));
    let failed: Vec<&str> =
        checks.iter().filter(|check| check.verdict == Verdict::Fail).map(|check| check.name.as_str()).collect();
    if !failed.is_empty() {
        bail!("{} check(s) failed ({}): see the fixes above", failed.len(), failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_against_minimums() {
        assert_eq!(judge_version("e", Some("20.10.24+dfsg1"), (20, 10), "x").verdict, Verdict::Ok);
        assert_eq!(judge_version("e", Some("28.2.2"), (20, 10), "x").verdict, Verdict::Ok);
        let old = judge_version("e", Some("19.03.1"), (20, 10), "upgrade");
        assert_eq!(
            (old.verdict, old.found.as_str(), old.fix.as_str()),
            (Verdict::Fail, "19.03.1 (need ≥ 20.10)", "upgrade")
        );
        assert_eq!(judge_version("c", Some("v2.40.3"), (2, 0), "x").verdict, Verdict::Ok);
        assert_eq!(judge_version("c", Some("1.29.2"), (2, 0), "x").verdict, Verdict::Fail);
        assert_eq!(judge_version("c", None, (2, 0), "x").found, "not found");
    }

    #[test]
    fn sizes_against_the_guide() {
        assert_eq!(judge_size("m", Some(GB), MEMORY, "f").verdict, Verdict::Fail);
        assert_eq!(judge_size("m", Some(3 * GB), MEMORY, "f").verdict, Verdict::Warn);
        assert_eq!(judge_size("m", Some(8 * GB), MEMORY, "f").verdict, Verdict::Ok);
        assert_eq!(judge_size("d", Some(9 * GB), DISK, "f").found, "9.0 GB (minimum 10.0 GB)");
        assert_eq!(judge_size("d", None, DISK, "f").verdict, Verdict::Warn);
        assert_eq!(meminfo_total("MemTotal:       16318480 kB\nMemFree: 1 kB\n"), Some(16_710_123_520));
    }

    #[test]
    fn the_table_shows_fixes_only_where_needed() {
        let table =
            render(&[check("git", Verdict::Ok, "2.39", "never shown"), check("memory", Verdict::Fail, "1 GB", "add")]);
        assert_eq!(table, "ok    git     2.39\nFAIL  memory  1 GB  add\n");
    }
}
