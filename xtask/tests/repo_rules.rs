//! Repository rules, checked as ordinary tests: every image in compose is one we build or a
//! pinned upstream, every Dockerfile's final stage runs as a non-root user, and every command
//! the README shows exists (and `.ci/run` runs the README's test command); and the xtask keeps
//! its layers (tasks, stack, images, adapters, plan: each uses only the ones below, no task uses
//! another, no module circle).

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
    assert_eq!(images.len(), 7, "db, redis, backend, worker, frontend, edge, db-init: {images:?}");
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

// --- The xtask's architecture ------------------------------------------------------------------

/// The layers of `xtask/src`, top to bottom: a module may use its own layer and the ones below.
const LAYERS: [&str; 6] = ["main", "tasks", "stack", "images", "adapters", "plan"];

/// Every source file of the xtask as (module path, code without its `#[cfg(test)]` module).
fn xtask_modules() -> Vec<(Vec<String>, String)> {
    fn walk(dir: &Path, prefix: &[String], out: &mut Vec<(Vec<String>, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                walk(&path, &[prefix, &[name]].concat(), out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let module = if name == "mod" { prefix.to_vec() } else { [prefix, &[name]].concat() };
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]\nmod tests").next().unwrap().to_string();
                out.push((module, code));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("xtask/src"), &[], &mut out);
    out
}

/// Every `crate::...` path a piece of code names, with `use crate::a::{b, c::d}` groups expanded.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    fn expand(prefix: &[String], text: &str, out: &mut Vec<Vec<String>>) {
        // `text` starts right after a `::`; it is a path, possibly ending in a `{...}` group.
        let end = text.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(text.len());
        let mut path = prefix.to_vec();
        path.extend(text[..end].split("::").filter(|part| !part.is_empty()).map(str::to_string));
        if text[end..].starts_with('{') {
            let mut depth = 0;
            let mut start = end + 1;
            for (index, c) in text.char_indices().skip(end) {
                match c {
                    '{' => depth += 1,
                    '}' | ',' if depth == 1 => {
                        let item = text[start..index].trim();
                        if !item.is_empty() && item != "self" {
                            expand(&path, item, out);
                        }
                        start = index + 1;
                        if c == '}' {
                            break;
                        }
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
        }
        out.push(path);
    }
    let mut out = Vec::new();
    for (index, _) in code.match_indices("crate::") {
        expand(&[], &code[index + "crate::".len()..], &mut out);
    }
    out
}

fn layer_of(module: &[String]) -> usize {
    let top = module.first().map_or("main", String::as_str);
    LAYERS.iter().position(|layer| *layer == top).unwrap_or_else(|| panic!("{top} is in no layer of {LAYERS:?}"))
}

#[test]
fn the_xtask_is_layered_and_tasks_use_no_other_task() {
    let modules = xtask_modules();
    let mut problems = Vec::new();
    for (module, code) in &modules {
        let name = if module.is_empty() { "main".to_string() } else { module.join("::") };
        for path in crate_paths(code) {
            let Some(top) = path.first() else { continue };
            if !LAYERS.contains(&top.as_str()) {
                continue; // A function of main.rs's own, or a macro path.
            }
            if layer_of(&path) < layer_of(module) {
                problems.push(format!("{name} uses crate::{}, a higher layer", path.join("::")));
            }
            if top == "tasks" && module[0] != "main" && path.get(1) != module.get(1) {
                problems.push(format!("{name} uses crate::{}: only main.rs uses tasks", path.join("::")));
            }
        }
    }
    assert!(problems.is_empty(), "layering (top to bottom {LAYERS:?}):\n{}", problems.join("\n"));
}

#[test]
fn the_xtask_modules_import_no_circle() {
    let modules = xtask_modules();
    let files: Vec<&Vec<String>> = modules.iter().map(|(module, _)| module).collect();
    // A path names the longest module it starts with; `mod.rs` files only declare and re-export
    // their children, so they are not followed.
    let target = |path: &[String]| -> Option<usize> {
        (1..=path.len()).rev().find_map(|len| files.iter().position(|file| file.as_slice() == &path[..len]))
    };
    let edges: Vec<Vec<usize>> = modules
        .iter()
        .map(|(module, code)| {
            let is_mod_rs = files.iter().any(|other| other.len() > module.len() && other.starts_with(module));
            if is_mod_rs {
                return Vec::new();
            }
            let mut to: Vec<usize> = crate_paths(code).iter().filter_map(|path| target(path)).collect();
            to.sort_unstable();
            to.dedup();
            to.retain(|&index| files[index] != module);
            to
        })
        .collect();
    // Depth-first search for a back edge; the circle found is printed.
    fn visit(node: usize, edges: &[Vec<usize>], state: &mut [u8], stack: &mut Vec<usize>) -> Option<Vec<usize>> {
        state[node] = 1;
        stack.push(node);
        for &next in &edges[node] {
            if state[next] == 1 {
                let start = stack.iter().position(|&n| n == next).unwrap();
                return Some([&stack[start..], &[next]].concat());
            }
            if state[next] == 0
                && let Some(circle) = visit(next, edges, state, stack)
            {
                return Some(circle);
            }
        }
        stack.pop();
        state[node] = 2;
        None
    }
    let mut state = vec![0u8; files.len()];
    for node in 0..files.len() {
        if state[node] == 0
            && let Some(circle) = visit(node, &edges, &mut state, &mut Vec::new())
        {
            let names: Vec<String> = circle.iter().map(|&n| files[n].join("::")).collect();
            panic!("an import circle: {}", names.join(" -> "));
        }
    }
}

#[test]
fn no_command_goes_through_a_shell() {
    // Every external command is an argv: a shell string brings quoting bugs and, with values
    // from `.env` or git, injection.
    let mut found = Vec::new();
    for (module, code) in xtask_modules() {
        let flat: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
        for shell in ["sh", "bash", "/bin/sh", "/bin/bash"] {
            for pattern in [format!("\"{shell}\", \"-c\""), format!("\"{shell} -c"), format!("{shell} -c ")] {
                if flat.contains(&pattern) {
                    found.push(format!("{}: {pattern}", module.join("::")));
                }
            }
        }
    }
    assert!(found.is_empty(), "commands through a shell:\n{}", found.join("\n"));
}
