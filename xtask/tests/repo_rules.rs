//! Repository rules, checked as ordinary tests: every image in compose is one we build or a
//! pinned upstream, every Dockerfile's final stage runs as a non-root user, and every command
//! the README shows exists (and `.ci/run` runs the README's test command).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative)).unwrap_or_else(|error| panic!("{relative}: {error}"))
}

/// The `image:` values of the compose file, in order.
fn compose_images() -> Vec<String> {
    read("docker/docker-compose.yml")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("image:"))
        .map(|image| image.trim().to_string())
        .collect()
}

#[test]
fn compose_images_are_ours_or_pinned_upstream() {
    let images = compose_images();
    assert_eq!(images.len(), 6, "db, redis, backend, worker, frontend, db-init: {images:?}");
    for image in images {
        if let Some(rest) = image.strip_prefix("${NEXUS_REGISTRY") {
            let service = rest.split("/intric/").nth(1).and_then(|rest| rest.split(':').next());
            assert!(
                matches!(service, Some("backend" | "worker" | "frontend")),
                "{image}: our images are <registry>/intric/<backend|worker|frontend>"
            );
            assert!(image.ends_with(":${IMAGE_TAG:?IMAGE_TAG is not set in .env}"), "{image}: tagged by IMAGE_TAG");
            continue;
        }
        // `${VARIABLE:-upstream:tag}`: replaceable, with a pinned default.
        let default = image
            .strip_prefix("${")
            .and_then(|rest| rest.split_once(":-"))
            .map(|(_, default)| default.trim_end_matches('}'))
            .unwrap_or_else(|| panic!("{image}: an upstream image must be ${{VARIABLE:-image:tag}}"));
        let tag = default.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
        assert!(!tag.is_empty() && tag != "latest", "{image}: the upstream default must pin a tag");
    }
}

/// The instructions of a Dockerfile's last stage.
fn final_stage(dockerfile: &str) -> Vec<String> {
    let text = read(dockerfile);
    let lines: Vec<&str> =
        text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).collect();
    let start = lines.iter().rposition(|line| line.to_ascii_uppercase().starts_with("FROM ")).expect("a FROM line");
    lines[start..].iter().map(|line| line.to_string()).collect()
}

/// The user a stage runs as: its own last USER, or the one of the stage it builds on.
fn stage_user(dockerfile: &str, stage: &[String]) -> Option<String> {
    if let Some(user) = stage.iter().rev().find_map(|line| line.strip_prefix("USER ")) {
        return Some(user.trim().to_string());
    }
    let base = stage[0].split_whitespace().nth(1)?;
    let text = read(dockerfile);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let start = lines.iter().position(|line| line.to_ascii_lowercase().ends_with(&format!(" as {base}")))?;
    let end =
        lines[start + 1..].iter().position(|line| line.starts_with("FROM ")).map_or(lines.len(), |end| start + 1 + end);
    let parent: Vec<String> = lines[start..end].iter().map(|line| line.to_string()).collect();
    stage_user(dockerfile, &parent)
}

#[test]
fn dockerfiles_run_as_non_root() {
    for dockerfile in ["backend/Dockerfile", "frontend/Dockerfile"] {
        let stage = final_stage(dockerfile);
        let user =
            stage_user(dockerfile, &stage).unwrap_or_else(|| panic!("{dockerfile}: the final stage sets no USER"));
        assert!(!matches!(user.as_str(), "root" | "0" | "0:0"), "{dockerfile} runs as {user}");
    }
}

#[test]
fn dockerfiles_work_offline() {
    for dockerfile in ["backend/Dockerfile", "frontend/Dockerfile"] {
        let text = read(dockerfile);
        assert!(
            !text.lines().any(|line| line.trim_start().starts_with("# syntax=")),
            "{dockerfile}: a `# syntax=` line makes BuildKit pull its frontend image, which fails offline"
        );
    }
}

/// The `cargo xtask ...` commands in the README's code blocks.
fn readme_xtask_commands() -> Vec<String> {
    let readme = read("README.md");
    let mut commands = Vec::new();
    let mut in_code = false;
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        for part in line.split("&&").flat_map(|part| part.split(';')) {
            let part = part.trim().trim_start_matches("eval \"$(").trim_end_matches(")\"");
            if let Some(rest) = part.split("cargo xtask ").nth(1) {
                commands.push(rest.split(" #").next().unwrap().trim().to_string());
            }
        }
    }
    commands
}

#[test]
fn readme_commands_exist() {
    let commands = readme_xtask_commands();
    assert!(commands.len() >= 5, "the README shows the tasks: {commands:?}");
    for command in commands {
        // The subcommand path up to the first option or placeholder: its --help must work.
        let words: Vec<&str> = command
            .split_whitespace()
            .take_while(|word| word.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !word.starts_with('-'))
            .collect();
        let output = Command::new(env!("CARGO_BIN_EXE_xtask")).args(&words).arg("--help").output().unwrap();
        assert!(
            output.status.success(),
            "`cargo xtask {command}`: `{}` --help failed: {}",
            words.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = read("README.md");
    let test_command = readme
        .lines()
        .skip_while(|line| !line.starts_with("## Tests"))
        .find(|line| line.starts_with("cargo test"))
        .expect("README's Tests section gives the test command in a code block")
        .trim()
        .to_string();
    let ci = read(".ci/run");
    assert!(ci.lines().any(|line| line.trim() == test_command), ".ci/run must run `{test_command}`");
}

/// The subcommands a `--help` text lists under `Commands:` (without `help`).
fn subcommands(path: &[&str]) -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask")).args(path).arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .inspect(|line| assert!(line.split_whitespace().count() > 1, "a task without a description: {line:?}"))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_task_is_listed_with_a_description_and_has_an_example() {
    let tasks = subcommands(&[]);
    assert!(tasks.len() >= 15, "{tasks:?}");
    let mut leaves = Vec::new();
    for task in &tasks {
        let nested = subcommands(&[task]);
        if nested.is_empty() {
            leaves.push(vec![task.clone()]);
        }
        leaves.extend(nested.into_iter().map(|sub| vec![task.clone(), sub]));
    }
    for path in leaves {
        let output = Command::new(env!("CARGO_BIN_EXE_xtask")).args(&path).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("Example"), "`cargo xtask {}` --help shows no example:\n{help}", path.join(" "));
    }
}
