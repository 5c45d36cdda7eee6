//! The compose project name the operator tasks use is the one compose itself resolves, so a
//! stack started by hand with the guide's `docker compose up -d` is the stack `status` shows
//! and `deploy` adopts. Runs the real `docker compose config` and engine, with the lab's redis
//! stand-in image.

mod common;

use std::path::Path;
use std::process::Output;

const REDIS: &str = "127.0.0.1:5000/lab/redis:lab";

fn xtask(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(common::XTASK);
    command.args(args).env_remove("COMPOSE_PROJECT_NAME");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the xtask binary runs")
}

fn shown(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A deployment directory named `name` in a fresh temporary directory, holding a tiny compose
/// file (with `header` on top) and a `.env` of `dotenv`.
fn deployment(name: &str, header: &str, dotenv: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    let compose = format!(
        "{header}services:\n  redis:\n    image: {REDIS}\n    volumes:\n      - redis_data:/data\nvolumes:\n  redis_data:\n"
    );
    std::fs::write(dir.join("docker-compose.yml"), compose).unwrap();
    std::fs::write(dir.join(".env"), dotenv).unwrap();
    (parent, dir)
}

fn project_of_status(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = xtask(&[&["status", "--dir", dir.to_str().unwrap()], args].concat(), env);
    assert!(output.status.success(), "{}", shown(&output));
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    out.lines().next().and_then(|line| line.strip_prefix("project ")).unwrap_or_else(|| panic!("{out}")).to_string()
}

#[test]
fn each_rule_of_compose_s_project_name() {
    if !common::docker_available() {
        return;
    }
    let pid = std::process::id();
    // The directory's name, normalised as compose does.
    let (_keep, dir) = deployment(&format!("_Intric.Name-{pid}"), "", "");
    assert_eq!(project_of_status(&dir, &[], &[]), format!("intricname-{pid}"));
    // The environment's COMPOSE_PROJECT_NAME wins over the directory's name.
    assert_eq!(project_of_status(&dir, &[], &[("COMPOSE_PROJECT_NAME", "from-env")]), "from-env");
    // The file's `name:`.
    let (_keep, named) = deployment("any", "name: from-file\n", "");
    assert_eq!(project_of_status(&named, &[], &[]), "from-file");
    // COMPOSE_PROJECT_NAME in `.env` beside the file wins over `name:`, as compose reads it.
    let (_keep, dotenv) = deployment("any", "name: from-file\n", "COMPOSE_PROJECT_NAME=from-dotenv\n");
    assert_eq!(project_of_status(&dotenv, &[], &[]), "from-dotenv");
    // --project wins over everything.
    assert_eq!(project_of_status(&dotenv, &["--project", "from-flag"], &[]), "from-flag");
}

#[test]
fn a_stack_started_by_hand_is_the_one_status_shows_and_deploy_will_not_duplicate() {
    if !common::docker_available() {
        return;
    }
    let _serial = common::serial();
    common::lab();
    let name = format!("intric-adopt-{}", std::process::id());
    // deploy checks .env first: a plain template and a .env that passes it.
    let (_keep, dir) = deployment(&name, "", "OPENAI_API_KEY=sk-proj-0123456789abcdef0123456789\n");
    std::fs::write(dir.join(".env.example"), "# LLM keys\nOPENAI_API_KEY=\n").unwrap();
    std::fs::set_permissions(dir.join(".env"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let compose = |args: &[&str]| {
        std::process::Command::new("docker")
            .arg("compose")
            .args(args)
            .current_dir(&dir)
            .env_remove("COMPOSE_PROJECT_NAME")
            .output()
            .unwrap()
    };
    let up = compose(&["up", "-d"]);
    assert!(up.status.success(), "{}", shown(&up));
    let result = std::panic::catch_unwind(|| {
        let output = xtask(&["status", "--dir", dir.to_str().unwrap()], &[]);
        assert!(output.status.success(), "{}", shown(&output));
        let out = String::from_utf8_lossy(&output.stdout);
        assert!(out.starts_with(&format!("project {name}\n")), "{out}");
        let redis = out.lines().find(|line| line.starts_with("redis ")).unwrap_or_else(|| panic!("{out}"));
        assert!(redis.contains(" running "), "{out}");

        // Another --project beside it would be a second stack with empty volumes: refused.
        let deploy = xtask(&["deploy", "--dir", dir.to_str().unwrap(), "--project", "other", "--dry-run"], &[]);
        let error = String::from_utf8_lossy(&deploy.stderr).into_owned();
        assert!(!deploy.status.success(), "{}", shown(&deploy));
        assert!(error.contains("--project other would start a second stack"), "{error}");
        assert!(error.contains(&format!("({name}) has 1 container(s)")), "{error}");
    });
    let down = compose(&["down", "--volumes"]);
    assert!(down.status.success(), "{}", shown(&down));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
