//! Bad inputs to the operator tasks (`deploy`, `update`, `rollback`, `backup`, `restore`,
//! `status`), run as an operator runs them: each gives exactly one `error:` line, a non-zero
//! exit, and changes nothing in the deployment directory.
//!
//! They must all fail before touching docker: every run gets a `DOCKER_HOST` that answers
//! nothing, so a run that reached docker would fail with a different message. The registry is
//! a tiny fake HTTP server in the test, which knows one tag (`1.0.0`) and answers 404 for the
//! rest, as a registry does for a tag a cleanup policy removed.

mod common;

use common::fake_registry::answer;
use common::set_env_var;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

const KNOWN_TAG: &str = "1.0.0";

/// A registry that knows `intric/{backend,worker,frontend}:1.0.0` and nothing else.
fn fake_registry() -> String {
    let (host, _) = common::fake_registry::serve(|request, _| {
        let known = ["backend", "worker", "frontend"]
            .iter()
            .any(|service| request.path() == format!("/v2/intric/{service}/manifests/{KNOWN_TAG}"));
        if request.path() == "/v2/" {
            answer(200, &[], "{}")
        } else if known {
            let body = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"},"layers":[]}"#;
            let digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
            let media_type = "application/vnd.docker.distribution.manifest.v2+json";
            answer(200, &[("Content-Type", media_type), ("Docker-Content-Digest", digest)], body)
        } else {
            let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
            answer(404, &[("Content-Type", "application/json")], body)
        }
    });
    host
}

/// A deployment directory that passes `env check`, pointing at `registry`.
fn deployment(registry: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let docker = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker");
    for file in ["docker-compose.yml", ".env.example"] {
        std::fs::copy(docker.join(file), dir.path().join(file)).unwrap();
    }
    let init = xtask(&["env", "init", "--dir", dir.path().to_str().unwrap()], dir.path());
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    edit(dir.path(), "NEXUS_REGISTRY", registry);
    edit(dir.path(), "IMAGE_TAG", KNOWN_TAG);
    edit(dir.path(), "OPENAI_API_KEY", "sk-canary-bad-inputs-0123456789abcdef");
    std::fs::create_dir(dir.path().join("backups")).unwrap();
    dir
}

/// Sets `key` in DIR/.env (appending it when missing), keeping the file's mode.
fn edit(dir: &Path, key: &str, value: &str) {
    set_env_var(&dir.join(".env"), key, value);
}

fn remove_line(dir: &Path, key: &str) {
    let path = dir.join(".env");
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text.lines().filter(|line| !line.starts_with(&format!("{key}="))).collect();
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
}

fn xtask(args: &[&str], dir: &Path) -> Output {
    let docker_config = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.args(args).current_dir(dir);
    for key in ["CI", "IMAGE_TAG", "NEXUS_REGISTRY", "NEXUS_USERNAME", "NEXUS_PASSWORD"] {
        command.env_remove(key);
    }
    // No engine answers here, and no login of the machine is used. The client still finds its
    // plugins (compose), which a separate DOCKER_CONFIG would hide: they are linked in.
    let plugins = std::env::var("HOME").ok().map(|home| Path::new(&home).join(".docker/cli-plugins"));
    if let Some(plugins) = plugins.filter(|plugins| plugins.is_dir()) {
        std::os::unix::fs::symlink(plugins, docker_config.path().join("cli-plugins")).unwrap();
    }
    command.env("DOCKER_HOST", "unix:///nonexistent/xtask-bad-inputs.sock");
    command.env("DOCKER_CONFIG", docker_config.path());
    command.output().unwrap()
}

/// Every file under `dir`: its mode, modification time and contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, std::time::SystemTime, Vec<u8>)> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
                files.insert(path, (meta.permissions().mode(), meta.modified().unwrap(), Vec::new()));
            } else {
                let contents = std::fs::read(&path).unwrap();
                files.insert(path.clone(), (meta.permissions().mode(), meta.modified().unwrap(), contents));
            }
        }
    }
    files
}

/// A gzip'd file holding `text`.
fn gzip(path: &Path, text: &str) {
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(path).unwrap())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

/// One bad input: a name, how to spoil a good deployment directory, the command (with `{dir}`
/// standing for the directory), and what the one error line must say.
struct Case {
    name: &'static str,
    setup: fn(&Path),
    args: Vec<String>,
    expected: String,
}

fn case(name: &'static str, setup: fn(&Path), args: &str, expected: &str) -> Case {
    Case { name, setup, args: args.split(' ').map(String::from).collect(), expected: expected.into() }
}

fn nothing(_: &Path) {}

#[test]
fn bad_inputs_fail_in_one_line_and_change_nothing() {
    let registry = fake_registry();
    let pid = std::process::id();
    let cases = vec![
        case(
            "a malformed .env line",
            |dir| {
                let path = dir.join(".env");
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(&path, format!("{text}THIS IS NOT AN ASSIGNMENT\n")).unwrap();
            },
            "deploy --dir {dir}",
            "/.env:",
        ),
        case(
            "a missing required variable",
            |dir| remove_line(dir, "JWT_SECRET"),
            "deploy --dir {dir}",
            "JWT_SECRET is missing",
        ),
        case(
            "a port that is not a port",
            |dir| edit(dir, "FRONTEND_PORT", "http"),
            "deploy --dir {dir}",
            "FRONTEND_PORT is \"http\", not a port",
        ),
        case(
            "an integer that is not one",
            |dir| edit(dir, "UPLOAD_MAX_FILE_SIZE", "10MB"),
            "update --tag 1.0.0 --dir {dir}",
            "not an integer",
        ),
        case(
            "a boolean that is not one",
            |dir| edit(dir, "USING_CRAWL", "enabled"),
            "rollback --to 1.0.0 --dir {dir}",
            "not a boolean",
        ),
        case(
            ".env readable by others",
            |dir| std::fs::set_permissions(dir.join(".env"), std::fs::Permissions::from_mode(0o644)).unwrap(),
            "deploy --dir {dir}",
            "mode 644",
        ),
        case("no .env", |dir| std::fs::remove_file(dir.join(".env")).unwrap(), "deploy --dir {dir}", "env init --dir"),
        case(
            "a missing compose file",
            |dir| std::fs::remove_file(dir.join("docker-compose.yml")).unwrap(),
            "deploy --dir {dir}",
            "holds no compose file",
        ),
        case("--dir is a file", nothing, "deploy --dir {dir}/.env.example", "is not a directory"),
        case("--dir does not exist", nothing, "status --dir {dir}/nowhere", "does not exist (pass --dir DIR)"),
        case(
            "--timeout abc",
            nothing,
            "deploy --timeout abc --dir {dir}",
            "invalid value 'abc' for '--timeout <SECONDS>'",
        ),
        case(
            "--timeout 0",
            nothing,
            "update --tag 1.0.0 --timeout 0 --dir {dir}",
            "invalid value '0' for '--timeout <SECONDS>'",
        ),
        case("a bad project name", nothing, "deploy --project Bad.Name --dir {dir}", "is not a compose project name"),
        case(
            "a deployed tag the registry lacks",
            |dir| edit(dir, "IMAGE_TAG", "gone-1"),
            "deploy --dir {dir}",
            "tag gone-1 is not in the registry",
        ),
        case(
            "half a registry login",
            |dir| edit(dir, "NEXUS_USERNAME", "deployer"),
            "deploy --dir {dir}",
            "NEXUS_USERNAME is set but NEXUS_PASSWORD is not",
        ),
        case("an unknown tag", nothing, "update --tag 9.9.9 --dir {dir}", "tag 9.9.9 is not in the registry"),
        case("a tag that is not a tag", nothing, "update --tag=-bad --dir {dir}", "\"-bad\" is not an image tag"),
        case("update without --tag", nothing, "update --dir {dir}", "required arguments were not provided"),
        case(
            "update while a live process holds the lock",
            |dir| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
                // A holder took the lock after its process started: now, for this test's process.
                let now = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output().unwrap();
                let since = String::from_utf8(now.stdout).unwrap().trim().to_string();
                let holder = serde_json::json!({
                    "pid": std::process::id(), "user": "ops", "host": host, "command": "update",
                    "since": since, "from_tag": "0.9.0", "to_tag": "1.0.0", "children": []
                });
                std::fs::write(dir.join(".deploy.lock"), holder.to_string()).unwrap();
            },
            "update --tag 1.0.0 --dir {dir}",
            "holds the lock",
        ),
        case("rollback with no history", nothing, "rollback --dir {dir}", "no earlier successful deployment"),
        case(
            "rollback with only the current tag in the history",
            |dir| {
                std::fs::write(
                    dir.join(".deploy-history.jsonl"),
                    "{\"time\":\"2026-01-01T00:00:00Z\",\"user\":\"ops\",\"command\":\"deploy\",\"from_tag\":null,\"to_tag\":\"1.0.0\",\"result\":\"ok\",\"seconds\":30}\n",
                )
                .unwrap();
            },
            "rollback --dir {dir}",
            "no earlier successful deployment",
        ),
        case(
            "a damaged history",
            |dir| std::fs::write(dir.join(".deploy-history.jsonl"), "{\"time\": 1}\n").unwrap(),
            "rollback --dir {dir}",
            ".deploy-history.jsonl:1: not a deploy history record",
        ),
        case(
            "rollback to a tag the registry lacks",
            nothing,
            "rollback --to 0.1.0 --dir {dir}",
            "tag 0.1.0 is not in the registry",
        ),
        case("backup --keep 0", nothing, "backup --keep 0 --dir {dir}", "invalid value '0' for '--keep <N>'"),
        case("backup --keep x", nothing, "backup --keep x --dir {dir}", "invalid value 'x' for '--keep <N>'"),
        case(
            "a backup directory that is a file",
            nothing,
            "backup --out {dir}/.env.example/sub --dir {dir}",
            "is not a directory",
        ),
        case(
            "an unwritable backup directory",
            nothing,
            "backup --out /proc/xtask-backups --dir {dir}",
            "is not writable",
        ),
        case(
            "update with an unwritable backup directory",
            nothing,
            "update --tag 1.0.0 --backup-dir /proc/x --dir {dir}",
            "is not writable",
        ),
        case(
            "restore without --yes",
            |dir| {
                gzip(
                    &dir.join("backups/intric_20260101T000000Z.sql.gz"),
                    "select 1;\n-- PostgreSQL database dump complete\n",
                )
            },
            "restore {dir}/backups/intric_20260101T000000Z.sql.gz --dir {dir}",
            "pass --yes to confirm",
        ),
        case(
            "restore of a missing file",
            nothing,
            "restore {dir}/backups/none.sql.gz --yes --dir {dir}",
            "does not exist",
        ),
        case(
            "restore of a file that is not gzip",
            |dir| std::fs::write(dir.join("backups/plain.sql.gz"), "select 1;\n").unwrap(),
            "restore {dir}/backups/plain.sql.gz --yes --dir {dir}",
            "is not a complete gzip file (not in gzip format)",
        ),
        case(
            "restore of a truncated backup",
            |dir| {
                let path = dir.join("backups/cut.sql.gz");
                gzip(&path, &"insert into jobs values (1);\n".repeat(500));
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            },
            "restore {dir}/backups/cut.sql.gz --yes --dir {dir}",
            "is not a complete gzip file",
        ),
        case(
            "restore of a dump that was cut short",
            |dir| gzip(&dir.join("backups/short.sql.gz"), "create table t (x int);\n"),
            "restore {dir}/backups/short.sql.gz --yes --dir {dir}",
            "does not hold a complete pg_dump",
        ),
    ];
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for case in &cases {
        let dir = deployment(&registry);
        (case.setup)(dir.path());
        let before = snapshot(dir.path());
        let root = dir.path().to_str().unwrap();
        let args: Vec<String> = case.args.iter().map(|arg| arg.replace("{dir}", root)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = xtask(&args, dir.path());
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error:")).collect();
        let after = snapshot(dir.path());
        let problem = if output.status.success() {
            Some("it succeeded".to_string())
        } else if errors.len() != 1 {
            Some(format!("{} error lines", errors.len()))
        } else if !errors[0].contains(&case.expected) {
            Some(format!("the error line lacks {:?}", case.expected))
        } else if ["xtask-bad-inputs.sock", "Cannot connect to the Docker daemon", "`docker "]
            .iter()
            .any(|sign| stderr.contains(sign))
        {
            Some("it reached docker".to_string())
        } else if before != after {
            let changed: Vec<_> = before
                .keys()
                .chain(after.keys())
                .filter(|path| before.get(*path) != after.get(*path))
                .map(|path| path.display().to_string())
                .collect();
            Some(format!("it changed {changed:?}"))
        } else if format!("{stdout}{stderr}").contains("canary") {
            Some("it showed a secret".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            failures.push(format!(
                "{} (`{}`): {problem}\n--- stdout\n{stdout}--- stderr\n{stderr}",
                case.name,
                args.join(" ")
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    eprintln!("{} bad inputs, each one error line and no change (pid {pid})", cases.len());
}

/// Every task's `--dry-run` prints its plan and changes nothing: no file of the deployment
/// directory is created, removed or touched (a stale lock from a killed update included), and
/// docker is asked nothing but compose's reading of its file.
#[test]
fn dry_runs_print_the_plan_and_change_nothing() {
    let registry = fake_registry();
    let dir = deployment(&registry);
    let backup = dir.path().join("backups/intric_20260101T000000Z.sql.gz");
    gzip(&backup, "select 1;\n-- PostgreSQL database dump complete\n");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    // A killed update's lock: a pid no process has.
    let stale = serde_json::json!({
        "pid": u32::MAX - 1, "user": "ops", "host": host, "command": "update",
        "since": "2026-01-01T00:00:00Z", "from_tag": "0.9.0", "to_tag": KNOWN_TAG, "children": []
    });
    std::fs::write(dir.path().join(".deploy.lock"), stale.to_string()).unwrap();
    let root = dir.path().to_str().unwrap();
    let file = backup.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["deploy", "--dry-run", "--dir", root], ".deploy.lock left by pid 4294967294 (update, user ops"),
        (
            &["update", "--tag", KNOWN_TAG, "--dry-run", "--dir", root],
            "its update started from 0.9.0: the tag to go back to",
        ),
        (&["rollback", "--to", KNOWN_TAG, "--dry-run", "--dir", root], "back up the database"),
        (
            &["backup", "--dry-run", "--dir", root, "--out", &format!("{root}/new/backups")],
            "new/backups beyond the newest 10",
        ),
        (&["restore", file, "--dry-run", "--dir", root], &format!("load {file} into a new database")),
    ];
    for (args, expected) in cases {
        let before = snapshot(dir.path());
        let output = xtask(args, dir.path());
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?}\n{stdout}{stderr}");
        assert!(stdout.contains(expected), "{args:?} lacks {expected:?}:\n{stdout}");
        assert!(!format!("{stdout}{stderr}").contains("canary"), "{args:?} showed a secret");
        assert_eq!(snapshot(dir.path()), before, "{args:?} changed the deployment directory");
    }
}
