//! `cargo xtask build --push` and `deploy` in a real terminal (a tmux pane), as a developer and
//! an operator run them: live progress lines (per image; per service and step), then the
//! summary. Pipes, which every other test uses, never draw the
//! progress bars, so only a pseudo-terminal catches what breaks there (a template indicatif
//! refuses panicked on the first image). Needs tmux and the lab; with `CI` set, a missing one
//! is a failure, not a skip. The deploy's project (`intric-terminal-e2e`), ports (24700, 29700)
//! and registry namespaces (`term-<pid>`, `term-deploy-<pid>`) are its own.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A tmux server of this test's own (its own socket), killed when the test ends however it ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start() -> Option<Tmux> {
        let installed = Command::new("tmux").arg("-V").output().is_ok_and(|output| output.status.success());
        if !installed {
            assert!(std::env::var_os("CI").is_none(), "CI is set but tmux is missing: run ci/provision.sh first");
            eprintln!("skipped: tmux is not installed (run `bash ci/provision.sh`)");
            return None;
        }
        Some(Tmux { socket: format!("xtask-terminal-{}", std::process::id()) })
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().unwrap()
    }

    /// Runs `script` with bash in a new 150x40 window and waits for it; returns its exit code,
    /// the screen as text and the screen with its colour escapes.
    fn run(&self, name: &str, script: &str, scratch: &Path) -> (i32, String, String) {
        let exit_file = scratch.join(format!("{name}.exit"));
        let script_file = scratch.join(format!("{name}.sh"));
        // The pane stays open after the command (sleep) so that its screen can be read.
        let body = format!("{script}\necho $? > {}\nexec sleep 3600\n", exit_file.display());
        std::fs::write(&script_file, body).unwrap();
        let started = self.tmux(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "150",
            "-y",
            "40",
            &format!("bash {}", script_file.display()),
        ]);
        assert_success(&started, "tmux new-session");
        let deadline = Instant::now() + Duration::from_secs(20 * 60);
        let code = loop {
            if let Ok(text) = std::fs::read_to_string(&exit_file)
                && let Ok(code) = text.trim().parse::<i32>()
            {
                break code;
            }
            assert!(Instant::now() < deadline, "{name} did not finish in 20 minutes:\n{}", self.screen(name, false));
            std::thread::sleep(Duration::from_millis(500));
        };
        (code, self.screen(name, false), self.screen(name, true))
    }

    fn screen(&self, name: &str, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-S", "-", "-t", name];
        if escapes {
            args.push("-e");
        }
        let output = self.tmux(&args);
        assert_success(&output, "tmux capture-pane");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}

/// A bash line exporting the lab's variables and clearing CI detection, as a developer's shell
/// after `eval "$(cargo xtask sandbox env)"` has it.
fn exports(extra: &[(&str, &str)]) -> String {
    let mut lines: Vec<String> = CONTROLLED.iter().map(|key| format!("unset {key}")).collect();
    let lab = lab_env();
    let extra = extra.iter().map(|(key, value)| (key.to_string(), value.to_string()));
    for (key, value) in lab.into_iter().chain(extra) {
        lines.push(format!("export {key}='{}'", value.replace('\'', r"'\''")));
    }
    lines.join("\n")
}

fn build_line(repo: &Path, registry: &str) -> String {
    format!("cd {repo} && {XTASK} build --repo {repo} --push --registry {registry}", repo = repo.display())
}

fn assert_summary(screen: &str, result: &str) {
    assert!(screen.contains("service") && screen.contains("digest"), "no summary table on the screen:\n{screen}");
    for service in ["backend", "worker", "frontend"] {
        let row = screen.lines().find(|line| line.starts_with(&format!("{service:<9} ")));
        let row = row.unwrap_or_else(|| panic!("no summary row for {service}:\n{screen}"));
        if !result.is_empty() {
            assert!(row.contains(result), "{service} should be {result}: {row}\n{screen}");
        }
    }
}

#[test]
fn build_push_in_a_terminal_shows_progress_and_the_summary() {
    let Some(tmux) = Tmux::start() else { return };
    if !docker_available() {
        return;
    }
    let _serial = serial();
    let repo = snapshot();
    let scratch = tempfile::tempdir().unwrap();
    let scratch: PathBuf = scratch.path().to_path_buf();
    // A namespace of its own, so that the first run really builds and pushes.
    let registry = format!("{}/term-{}", lab()["NEXUS_REGISTRY"], std::process::id());
    let _images = LocalImagesUnder(format!("{registry}/"));

    let (code, screen, coloured) =
        tmux.run("first", &format!("{}\n{}", exports(&[]), build_line(repo.path(), &registry)), &scratch);
    assert_eq!(code, 0, "the first build failed:\n{screen}");
    assert!(!screen.contains("panicked"), "{screen}");
    for service in ["backend", "worker", "frontend"] {
        assert!(
            screen.lines().any(|line| line.starts_with("✔ ") && line.contains(service)),
            "no finished progress line for {service}:\n{screen}"
        );
    }
    assert_summary(&screen, "");
    assert!(coloured.contains("\u{1b}["), "a terminal without NO_COLOR gets colours:\n{coloured}");

    // Nothing changed: the second run only tags in the registry. NO_COLOR turns colour off.
    let (code, screen, coloured) = tmux.run(
        "second",
        &format!("{}\n{}", exports(&[("NO_COLOR", "1")]), build_line(repo.path(), &registry)),
        &scratch,
    );
    assert_eq!(code, 0, "the no-op build failed:\n{screen}");
    assert!(!screen.contains("panicked"), "{screen}");
    assert_summary(&screen, "skipped");
    assert!(!coloured.contains("\u{1b}["), "NO_COLOR is set, yet there are colours:\n{coloured}");

    // Under CI, even on a terminal, every line is printed with its image's name: CI logs are
    // files, where redrawn lines are noise.
    let (code, screen, _) =
        tmux.run("ci", &format!("{}\n{}", exports(&[("CI", "true")]), build_line(repo.path(), &registry)), &scratch);
    assert_eq!(code, 0, "the build under CI failed:\n{screen}");
    for service in ["backend", "worker", "frontend"] {
        assert!(
            screen.lines().any(|line| line.starts_with(&format!("{service:<8} | == skipped"))),
            "no plain line for {service}:\n{screen}"
        );
    }
    assert!(!screen.contains('✔'), "no progress bars under CI:\n{screen}");
    assert_summary(&screen, "skipped");
}

const DEPLOY_PROJECT: &str = "intric-terminal-e2e";

/// A deployment directory of the repository's compose file, taken down with its volumes when
/// dropped, however the test ends.
struct Stack {
    dir: tempfile::TempDir,
}

impl Stack {
    fn new() -> Stack {
        let dir = tempfile::tempdir().unwrap();
        for file in ["docker-compose.yml", ".env.example"] {
            std::fs::copy(workspace().join("docker").join(file), dir.path().join(file)).unwrap();
        }
        Stack { dir }
    }

    fn line(&self, task: &str) -> String {
        let dir = self.dir.path().display();
        format!("cd {dir} && {XTASK} {task} --dir {dir} --project {DEPLOY_PROJECT}")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        compose_in(self.dir.path(), DEPLOY_PROJECT, &["--profile", "init", "down", "--volumes", "--remove-orphans"]);
    }
}

#[test]
fn deploy_and_backup_in_a_terminal_show_each_service_and_step() {
    let Some(tmux) = Tmux::start() else { return };
    if !docker_available() {
        return;
    }
    let _serial = serial();
    let lab = lab();
    let repo = snapshot();
    let registry = format!("{}/term-deploy-{}", lab["NEXUS_REGISTRY"], std::process::id());
    let _images = LocalImagesUnder(format!("{registry}/"));
    let mut env = lab_env();
    env.retain(|(key, _)| key != "NEXUS_REGISTRY");
    env.push(("NEXUS_REGISTRY".into(), registry.clone()));
    let (output, _) = build(repo.path(), &["--push", "--tag", "term-deploy"], &env);
    assert_success(&output, "build the images to deploy");

    let stack = Stack::new();
    assert_success(&xtask_in(stack.dir.path(), DEPLOY_PROJECT, &["env", "init"]), "env init");
    let env_file = stack.dir.path().join(".env");
    for (key, value) in [
        ("NEXUS_REGISTRY", registry.as_str()),
        ("NEXUS_USERNAME", lab["NEXUS_USERNAME"].as_str()),
        ("NEXUS_PASSWORD", lab["NEXUS_PASSWORD"].as_str()),
        ("IMAGE_TAG", "term-deploy"),
        ("POSTGRES_IMAGE", lab["POSTGRES_IMAGE"].as_str()),
        ("REDIS_IMAGE", lab["REDIS_IMAGE"].as_str()),
        ("EDGE_IMAGE", lab["NGINX_IMAGE"].as_str()),
        ("FRONTEND_PORT", "24700"),
        ("BACKEND_PORT", "29700"),
        ("OPENAI_API_KEY", "sk-terminal-e2e-not-a-real-key"),
    ] {
        set_env_var(&env_file, key, value);
    }
    let scratch = tempfile::tempdir().unwrap();
    let scratch: PathBuf = scratch.path().to_path_buf();

    let (code, screen, _) =
        tmux.run("deploy", &format!("{}\n{}", exports(&[]), stack.line("deploy --timeout 240")), &scratch);
    assert_eq!(code, 0, "the deploy failed:\n{screen}");
    assert!(!screen.contains("panicked"), "{screen}");
    // Each service has its own line, finished; the step line counted the plan's steps.
    for service in ["db", "redis", "backend", "worker", "frontend"] {
        assert!(
            screen.lines().any(|line| line.starts_with("✔ ") && line.split_whitespace().nth(1) == Some(service)),
            "no finished progress line for {service}:\n{screen}"
        );
    }
    assert!(screen.lines().any(|line| line.starts_with("✔ step") && line.contains("done")), "{screen}");
    // compose's own lines drove the display instead of scrolling past, and the notes stayed.
    assert!(!screen.contains(" Container intric-terminal-e2e-"), "raw compose lines on a terminal:\n{screen}");
    assert!(screen.contains("the database was never initialized: running db-init"), "{screen}");
    assert!(screen.contains("deployed term-deploy: http://localhost:24700"), "{screen}");

    // A backup shows the bytes it wrote; under CI the same task prints its commands instead.
    let (code, screen, _) = tmux.run("backup", &format!("{}\n{}", exports(&[]), stack.line("backup")), &scratch);
    assert_eq!(code, 0, "the backup failed:\n{screen}");
    assert!(
        screen.lines().any(|line| line.contains("database dumped: ") && line.trim_end().ends_with('B')),
        "{screen}"
    );
    let (code, screen, _) =
        tmux.run("backup-ci", &format!("{}\n{}", exports(&[("CI", "true")]), stack.line("backup")), &scratch);
    assert_eq!(code, 0, "the backup under CI failed:\n{screen}");
    assert!(screen.contains("$ docker compose") && screen.contains("pg_dump"), "{screen}");
    assert!(!screen.contains('✔'), "no progress bars under CI:\n{screen}");
}
