//! `cargo xtask doctor`: is this machine (and the engine it talks to) ready to build and run the
//! stack? One table of ok / warn / fail with the fix for each; it exits non-zero when any check
//! fails. Warnings do not fail it.
//!
//! Checks: engine ≥ 20.10 and compose ≥ 2 (fail), BuildKit and git (warn: only building needs
//! them), memory and free disk against the deployment guide (fail below the minimum of 2 GB RAM
//! and 10 GB disk, warn below the recommended 4 GB and 50 GB), the registry of `.env` reachable
//! with the login this machine has (fail), `env check` (fail on errors, warn on warnings), and
//! for each service with a healthcheck whether its command exists in the service's image (fail:
//! such a healthcheck never passes, and `deploy` would wait minutes for it), and warns where a
//! service runs its own `command:` without a healthcheck while its image has one (it inherits a
//! check made for the image's own command).
//!
//! The healthcheck probe runs no shell and nothing of the image: it creates a container that is
//! never started (`docker create`, pulling the image if needed), copies the command's file out of
//! it (`docker cp CONTAINER:FILE -`, trying each directory of the image's PATH; the tar stream is
//! read and dropped), and removes the container. `CMD-SHELL` checks need `/bin/sh` and the command's first word.
//!
//! Memory is the engine host's (`docker info`), so it is right for a remote `DOCKER_HOST` too;
//! free disk is measured where it can be from here: the deployment directory, and the engine's
//! root directory when the engine is local.

use std::fmt;
use std::path::Path;

use serde_json::Value;

use anyhow::{Result, bail};
use clap::Args;

use crate::adapters::docker;
use crate::adapters::registry::{Backoff, Registry};
use crate::plan::Command;
use crate::plan::runner::{Processes, Runner};
use crate::stack::env_check::{self, Level};
use crate::stack::{Deployment, DeploymentArgs};

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
    pub deployment: DeploymentArgs,
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

    let target_dir = env_check::deployment_dir(args.deployment.dir.clone());
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

    match Deployment::open(&args.deployment, &runner) {
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
            checks.push(match env_check::check_dir(&runner, &deployment.dir) {
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

            checks.extend(healthcheck_checks(&deployment, &runner));
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

/// The PATH of an image without one of its own: docker's default.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Words of `CMD-SHELL` commands the shell itself runs, which need no file in the image.
const SHELL_BUILTINS: [&str; 8] = ["exit", "true", "false", "test", "[", ":", "cd", "!"];

/// One service's healthcheck: what it runs, and the programs that must be in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Healthcheck {
    pub service: String,
    pub image: String,
    /// The command as an operator reads it.
    pub command: String,
    pub programs: Vec<String>,
}

/// The healthchecks of `docker compose config --format json`, in service order; disabled ones
/// (`NONE`, `disable: true`) and services without an image are left out.
pub fn healthchecks(config: &Value) -> Vec<Healthcheck> {
    let Some(services) = config["services"].as_object() else { return Vec::new() };
    let mut found = Vec::new();
    for (service, definition) in services {
        let healthcheck = &definition["healthcheck"];
        let (Some(test), Some(image)) = (healthcheck["test"].as_array(), definition["image"].as_str()) else {
            continue;
        };
        if healthcheck["disable"].as_bool() == Some(true) {
            continue;
        }
        let words: Vec<&str> = test.iter().filter_map(Value::as_str).collect();
        let (command, programs) = match words.as_slice() {
            ["CMD", program, ..] => (words[1..].join(" "), vec![program.to_string()]),
            ["CMD-SHELL", script] => {
                let first = script
                    .split_whitespace()
                    .find(|word| !word.contains('='))
                    .filter(|word| !SHELL_BUILTINS.contains(word) && !word.starts_with('$'));
                let programs = ["/bin/sh"].into_iter().chain(first).map(str::to_string).collect();
                (script.to_string(), programs)
            }
            _ => continue,
        };
        found.push(Healthcheck { service: service.clone(), image: image.to_string(), command, programs });
    }
    found
}

/// Where `program` may be in an image whose PATH is `path`.
pub fn candidates(program: &str, path: &str) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_string()];
    }
    path.split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| format!("{}/{program}", dir.trim_end_matches('/')))
        .collect()
}

/// The image's PATH, from `docker image inspect`'s `Config.Env`.
fn image_path(runner: &dyn Runner, program: &str, image: &str) -> String {
    let inspect = runner.read(&docker::image_inspect_command(program, &[image])).unwrap_or_default();
    let config: Value = serde_json::from_str(&inspect).unwrap_or_default();
    config[0]["Config"]["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|entry| entry.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string()
}

/// The programs of `healthcheck` missing from its image; an error when the image cannot be
/// looked into at all.
fn missing_programs(runner: &dyn Runner, docker: &str, healthcheck: &Healthcheck) -> Result<Vec<String>> {
    let image = &healthcheck.image;
    let create = Command::new(docker).args(["create", "--entrypoint", "/xtask-doctor-never-started"]).arg(image);
    let container = runner.read(&create)?.lines().last().unwrap_or_default().trim().to_string();
    let path = image_path(runner, docker, image);
    let missing = healthcheck
        .programs
        .iter()
        .filter(|program| {
            !candidates(program, &path).iter().any(|candidate| {
                let copy = Command::new(docker).arg("cp").arg(format!("{container}:{candidate}")).arg("-");
                runner.read(&copy).is_ok()
            })
        })
        .cloned()
        .collect();
    // The container was never started; removing it can only fail if it is gone already.
    let _ = runner.read(&Command::new(docker).args(["rm", "--force"]).arg(&container));
    Ok(missing)
}

/// One doctor line per healthcheck of the deployment's compose file.
fn healthcheck_checks(deployment: &Deployment, runner: &dyn Runner) -> Vec<Check> {
    let compose = &deployment.compose;
    let config = runner.read(&compose.command(["config", "--format", "json"])).ok();
    let Some(config) = config.and_then(|text| serde_json::from_str::<Value>(&text).ok()) else {
        return vec![check("healthchecks", Verdict::Warn, "unknown", "compose cannot print the configuration")];
    };
    let mut checks: Vec<Check> = healthchecks(&config)
        .iter()
        .map(|healthcheck| judge_healthcheck(healthcheck, missing_programs(runner, &compose.program, healthcheck)))
        .collect();
    for service in own_commands_without_healthcheck(&config) {
        let inspect = runner.read(&docker::image_inspect_command(&compose.program, &[service.image.as_str()]));
        let inherited = inspect.ok().and_then(|text| image_healthcheck(&text));
        checks.extend(judge_inherited(&service, inherited));
    }
    checks
}

/// A service that runs its own `command:` and says nothing of a healthcheck.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnCommand {
    pub service: String,
    pub image: String,
    pub command: String,
}

/// The services of compose's configuration that set `command:` but no `healthcheck:`: they
/// inherit their image's HEALTHCHECK, which was written for the image's own command (a worker
/// running the backend image inherits the API's HTTP check, which it can never pass).
pub fn own_commands_without_healthcheck(config: &Value) -> Vec<OwnCommand> {
    let Some(services) = config["services"].as_object() else { return Vec::new() };
    services
        .iter()
        .filter(|(_, definition)| definition.get("healthcheck").is_none())
        .filter_map(|(service, definition)| {
            let image = definition["image"].as_str()?;
            let words: Vec<&str> = definition["command"].as_array()?.iter().filter_map(Value::as_str).collect();
            let command = words.join(" ");
            Some(OwnCommand { service: service.clone(), image: image.to_string(), command })
        })
        .collect()
}

/// The HEALTHCHECK command of an image, from `docker image inspect`; none for `NONE` or none.
pub fn image_healthcheck(inspect: &str) -> Option<String> {
    let config: Value = serde_json::from_str(inspect).ok()?;
    let words: Vec<&str> =
        config[0]["Config"]["Healthcheck"]["Test"].as_array()?.iter().filter_map(Value::as_str).collect();
    match words.as_slice() {
        [] | ["NONE", ..] => None,
        ["CMD-SHELL", script] => Some(script.to_string()),
        [_, command @ ..] => Some(command.join(" ")),
    }
}

/// A warning when `service` inherits its image's healthcheck while running a command of its own.
pub fn judge_inherited(service: &OwnCommand, inherited: Option<String>) -> Option<Check> {
    let OwnCommand { service, image, command } = service;
    let inherited = inherited?;
    Some(check(
        &format!("healthcheck {service}"),
        Verdict::Warn,
        format!("inherits `{inherited}` from {image}"),
        format!(
            "{service} runs `{command}` but inherits the healthcheck of {image} (`{inherited}`), made for \
             the image's own command: give {service} a `healthcheck:` of its own in the compose file, or \
             `healthcheck: {{ disable: true }}`"
        ),
    ))
}

/// The line for one healthcheck, from the programs found missing in its image.
pub fn judge_healthcheck(healthcheck: &Healthcheck, missing: Result<Vec<String>>) -> Check {
    let Healthcheck { service, image, command, .. } = healthcheck;
    let name = format!("healthcheck {service}");
    match missing {
        Err(error) => check(
            &name,
            Verdict::Warn,
            "not checked",
            format!("cannot look into {image} ({error:#}): pull it, then run doctor again"),
        ),
        Ok(missing) if missing.is_empty() => {
            check(&name, Verdict::Ok, format!("{} in {image}", healthcheck.programs.join(", ")), "")
        }
        Ok(missing) => check(
            &name,
            Verdict::Fail,
            format!("{} not in {image}", missing.join(", ")),
            format!(
                "the healthcheck `{command}` of {service} can never pass in {image}: \
                 change the healthcheck in the compose file or add {} to the image",
                missing.join(", ")
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_with_its_own_command_inherits_the_image_healthcheck_and_is_warned() {
        let config = serde_json::json!({"services": {
            "worker": {"image": "n/intric/backend:1", "command": ["arq", "intric.worker.WorkerSettings"]},
            "backend": {"image": "n/intric/backend:1", "command": ["uvicorn"], "healthcheck": {"test": ["CMD", "python"]}},
            "db": {"image": "pg"},
        }});
        let found = own_commands_without_healthcheck(&config);
        assert_eq!(found.iter().map(|own| own.service.as_str()).collect::<Vec<_>>(), ["worker"]);
        let inspect = r#"[{"Config": {"Healthcheck": {"Test": ["CMD", "python", "-c", "urlopen('/healthz')"]}}}]"#;
        let inherited = image_healthcheck(inspect);
        assert_eq!(inherited.as_deref(), Some("python -c urlopen('/healthz')"));
        let line = judge_inherited(&found[0], inherited).unwrap();
        assert_eq!(line.verdict, Verdict::Warn);
        assert!(line.fix.starts_with("worker runs `arq intric.worker.WorkerSettings` but inherits"), "{}", line.fix);
        assert_eq!(image_healthcheck(r#"[{"Config": {"Healthcheck": {"Test": ["NONE"]}}}]"#), None);
        assert_eq!(image_healthcheck(r#"[{"Config": {}}]"#), None);
        assert!(judge_inherited(&found[0], None).is_none(), "an image without a healthcheck is fine");
    }

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
    fn healthchecks_and_the_programs_they_need() {
        let config = serde_json::json!({"services": {
            "frontend": {"image": "n/intric/frontend:1", "healthcheck": {"test": ["CMD", "wget", "--spider", "http://localhost:3000"]}},
            "db": {"image": "pg", "healthcheck": {"test": ["CMD-SHELL", "PGUSER=x pg_isready -q || exit 1"]}},
            "shell": {"image": "s", "healthcheck": {"test": ["CMD-SHELL", "[ -f /ready ]"]}},
            "off": {"image": "o", "healthcheck": {"test": ["NONE"]}},
            "disabled": {"image": "d", "healthcheck": {"test": ["CMD", "x"], "disable": true}},
            "worker": {"image": "w"},
        }});
        let found = healthchecks(&config);
        let shown: Vec<(&str, &str, Vec<&str>)> = found
            .iter()
            .map(|h| (h.service.as_str(), h.command.as_str(), h.programs.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            shown,
            [
                ("db", "PGUSER=x pg_isready -q || exit 1", vec!["/bin/sh", "pg_isready"]),
                ("frontend", "wget --spider http://localhost:3000", vec!["wget"]),
                ("shell", "[ -f /ready ]", vec!["/bin/sh"]),
            ]
        );
        assert_eq!(candidates("wget", "/usr/local/bin:/usr/bin/:relative"), ["/usr/local/bin/wget", "/usr/bin/wget"]);
        assert_eq!(candidates("/opt/bin/probe", DEFAULT_PATH), ["/opt/bin/probe"]);
    }

    #[test]
    fn a_missing_healthcheck_program_is_one_line_naming_service_command_and_image() {
        let frontend = Healthcheck {
            service: "frontend".into(),
            image: "n/intric/frontend:1".into(),
            command: "wget --spider http://localhost:3000".into(),
            programs: vec!["wget".into()],
        };
        let line = judge_healthcheck(&frontend, Ok(vec!["wget".into()]));
        assert_eq!((line.verdict, line.found.as_str()), (Verdict::Fail, "wget not in n/intric/frontend:1"));
        assert!(
            line.fix.starts_with("the healthcheck `wget --spider http://localhost:3000` of frontend can never pass in n/intric/frontend:1"),
            "{}",
            line.fix
        );
        assert_eq!(judge_healthcheck(&frontend, Ok(vec![])).verdict, Verdict::Ok);
        assert_eq!(judge_healthcheck(&frontend, Err(anyhow::anyhow!("no such image"))).verdict, Verdict::Warn);
    }

    #[test]
    fn the_probe_copies_each_candidate_and_removes_its_container() {
        let runner = crate::plan::runner::Recording::replying(|shown| match shown {
            _ if shown.starts_with("docker create") => Ok("c0ffee".into()),
            _ if shown.starts_with("docker image inspect") => Ok(r#"[{"Config": {"Env": ["PATH=/a:/b"]}}]"#.into()),
            _ if shown == "docker cp c0ffee:/b/present -" => Ok(String::new()),
            _ if shown.starts_with("docker cp") => Err("Could not find the file".into()),
            _ => Ok(String::new()),
        });
        let healthcheck = Healthcheck {
            service: "s".into(),
            image: "img".into(),
            command: "present && absent".into(),
            programs: vec!["present".into(), "absent".into()],
        };
        assert_eq!(missing_programs(&runner, "docker", &healthcheck).unwrap(), ["absent"]);
        let ran = runner.executed();
        assert_eq!(ran[0], "docker create --entrypoint /xtask-doctor-never-started img");
        let copies: Vec<String> = ran
            .iter()
            .filter(|c| c.starts_with("docker cp"))
            .map(|c| c.split(' ').nth(2).unwrap().to_string())
            .collect();
        assert_eq!(copies, ["c0ffee:/a/present", "c0ffee:/b/present", "c0ffee:/a/absent", "c0ffee:/b/absent"]);
        assert_eq!(ran.last().unwrap(), "docker rm --force c0ffee");
    }

    #[test]
    fn the_table_shows_fixes_only_where_needed() {
        let table =
            render(&[check("git", Verdict::Ok, "2.39", "never shown"), check("memory", Verdict::Fail, "1 GB", "add")]);
        assert_eq!(table, "ok    git     2.39\nFAIL  memory  1 GB  add\n");
    }
}
