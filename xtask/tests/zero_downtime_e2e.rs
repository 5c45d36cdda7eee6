//! Updates without downtime, end to end on the offline lab (real engine, lab registry, the
//! stack's real Postgres and Redis), with a probe requesting `/` and `/api/v1/healthz` through
//! the edge's host port every 20 ms: `deploy` v1 → `update` to v2 (the same images under
//! another tag, so only the containers change) → `update` to a version whose backend exits at
//! start (never healthy: rolled back, the old containers kept serving) → `rollback` to v1.
//! Not one request may fail in any of them.
//!
//! It needs a Docker engine: with `CI` set a missing engine fails it; elsewhere it says why it
//! did nothing. Its project (`intric-zero-downtime-e2e`), registry namespace and ports (24300,
//! 29300) are its own.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

const PROJECT: &str = "intric-zero-downtime-e2e";
const FRONTEND_PORT: &str = "24300";
const BACKEND_PORT: &str = "29300";
const V1: &str = "zero-e2e-v1";
const V2: &str = "zero-e2e-v2";
const EXITS: &str = "zero-e2e-exits";

/// Requests through the frontend's host port until stopped (at most 10 minutes): one request
/// every 20 ms, `/` and `/api/v1/healthz` in turn.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(String, u16)>>,
}

impl Probe {
    fn start() -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut seen = Vec::new();
            while !stopped.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(600) {
                let at = Instant::now();
                let path = if seen.len() % 2 == 0 { "/" } else { "/api/v1/healthz" };
                let (status, _) = http("GET", &format!("http://127.0.0.1:{FRONTEND_PORT}{path}"), None);
                seen.push((path.to_string(), status));
                std::thread::sleep(Duration::from_millis(20).saturating_sub(at.elapsed()));
            }
            seen
        });
        Probe { stop, thread }
    }

    /// Stops the probe and asserts that every request it made during `what` was answered.
    fn assert_no_failure(self, what: &str) {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.thread.join().unwrap();
        let failed: Vec<&(String, u16)> = seen.iter().filter(|(_, status)| *status != 200).collect();
        eprintln!("probe during {what}: {} of {} requests failed", failed.len(), seen.len());
        assert!(seen.len() > 50, "the probe ran during {what}: {} requests", seen.len());
        assert!(failed.is_empty(), "{} of {} requests failed during {what}: {failed:?}", failed.len(), seen.len());
    }
}

/// The deployment directory, taken down with its volumes when dropped.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn xtask(&self, args: &[&str]) -> std::process::Output {
        xtask_in(self.dir.path(), PROJECT, args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.xtask(args);
        assert_success(&output, &args.join(" "));
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    }

    fn compose(&self, args: &[&str]) -> std::process::Output {
        compose_in(self.dir.path(), PROJECT, args)
    }

    fn last_result(&self) -> String {
        let history = std::fs::read_to_string(self.dir.path().join(".deploy-history.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
        last["result"].as_str().unwrap().to_string()
    }

    /// The backend containers' images.
    fn backend_images(&self) -> String {
        let output = self.compose(&["ps", "--format", "{{.Image}}", "backend"]);
        assert_success(&output, "compose ps backend");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.compose(&["logs", "--no-color", "--tail", "30"]);
            eprintln!("--- compose logs\n{}", String::from_utf8_lossy(&logs.stdout));
        }
        self.compose(&["--profile", "init", "down", "--volumes", "--remove-orphans"]);
    }
}

fn docker_ok(args: &[&str], dir: &Path) {
    assert_success(&run("docker", args, dir), &format!("docker {}", args.join(" ")));
}

/// v1 and v2 (the same images) built and pushed below `registry`, and a version whose backend
/// is v1's with a command that exits at once (its worker and frontend are v1's).
fn push_versions(registry: &str) {
    let env: Vec<(String, String)> = lab_env();
    let repo = snapshot();
    for tag in [V1, V2] {
        let (output, _) = build(repo.path(), &["--push", "--tag", tag, "--registry", registry], &env);
        assert_success(&output, &format!("build --push --tag {tag}"));
    }
    let lab = lab();
    let login = std::process::Command::new("docker")
        .args(["login", &lab["NEXUS_REGISTRY"], "--username", &lab["NEXUS_USERNAME"], "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(lab["NEXUS_PASSWORD"].as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(login.success(), "docker login to the lab registry");
    let context = tempfile::tempdir().unwrap();
    // v1's backend with another command, made by `docker commit` (the engine alone: no builder).
    let backend = format!("{registry}/intric/backend");
    let exits = format!("{backend}:{EXITS}");
    let created = run("docker", &["create", &format!("{backend}:{V1}")], context.path());
    assert_success(&created, "docker create");
    let container = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let command = r#"CMD ["python", "-c", "raise SystemExit('exits on purpose')"]"#;
    docker_ok(&["commit", "--change", command, &container, &exits], context.path());
    docker_ok(&["rm", &container], context.path());
    docker_ok(&["push", "--quiet", &exits], context.path());
    for service in ["worker", "frontend"] {
        let (from, to) = (format!("{registry}/intric/{service}:{V1}"), format!("{registry}/intric/{service}:{EXITS}"));
        docker_ok(&["pull", "--quiet", &from], context.path());
        docker_ok(&["tag", &from, &to], context.path());
        docker_ok(&["push", "--quiet", &to], context.path());
    }
}

#[test]
fn update_failed_update_and_rollback_fail_no_request() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let started = Instant::now();
    let lab = lab();
    let registry = format!("{}/zero-downtime-e2e", lab["NEXUS_REGISTRY"]);
    push_versions(&registry);
    eprintln!("timing: versions pushed in {:.1} s", started.elapsed().as_secs_f64());

    let site = Site { dir: tempfile::tempdir().unwrap() };
    for file in ["docker-compose.yml", ".env.example"] {
        std::fs::copy(workspace().join("docker").join(file), site.dir.path().join(file)).unwrap();
    }
    site.compose(&["--profile", "init", "down", "--volumes", "--remove-orphans"]);
    site.ok(&["env", "init"]);
    let env_path = site.dir.path().join(".env");
    for (key, value) in [
        ("NEXUS_REGISTRY", registry.as_str()),
        ("NEXUS_USERNAME", lab["NEXUS_USERNAME"].as_str()),
        ("NEXUS_PASSWORD", lab["NEXUS_PASSWORD"].as_str()),
        ("IMAGE_TAG", V1),
        ("POSTGRES_IMAGE", lab["POSTGRES_IMAGE"].as_str()),
        ("REDIS_IMAGE", lab["REDIS_IMAGE"].as_str()),
        ("EDGE_IMAGE", lab["NGINX_IMAGE"].as_str()),
        ("OPENAI_API_KEY", "sk-zero-downtime-e2e-not-a-real-key"),
        ("FRONTEND_BIND", "127.0.0.1"),
        ("FRONTEND_PORT", FRONTEND_PORT),
        ("BACKEND_PORT", BACKEND_PORT),
    ] {
        set_env_var(&env_path, key, value);
    }
    let deployed = site.ok(&["deploy", "--timeout", "240"]);
    assert!(deployed.contains(&format!("deployed {V1}")), "{deployed}");

    // update to v2: new containers beside the old ones, not one request fails.
    let probe = Probe::start();
    std::thread::sleep(Duration::from_secs(1));
    let step = Instant::now();
    let updated = site.ok(&["update", "--tag", V2, "--timeout", "240"]);
    std::thread::sleep(Duration::from_secs(1));
    probe.assert_no_failure("update to v2");
    eprintln!("timing: update to v2 {:.1} s", step.elapsed().as_secs_f64());
    assert!(updated.contains(&format!("update {V1} -> {V2} done")), "{updated}");
    assert!(updated.contains("the new containers are healthy"), "{updated}");
    assert_eq!(env_value_in(site.dir.path(), "IMAGE_TAG"), V2);
    assert!(site.backend_images().ends_with(&format!("/intric/backend:{V2}")), "{}", site.backend_images());
    assert_eq!(site.backend_images().lines().count(), 1, "one backend container after the update");

    // update to a version whose backend exits: never healthy, the old containers serve on.
    let probe = Probe::start();
    let step = Instant::now();
    let failed = site.xtask(&["update", "--tag", EXITS, "--timeout", "60"]);
    std::thread::sleep(Duration::from_secs(1));
    probe.assert_no_failure("the failed update");
    eprintln!("timing: failed update {:.1} s", step.elapsed().as_secs_f64());
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains(&format!("failed and was rolled back to {V2}, which is running again")), "{stderr}");
    assert!(stderr.contains("the new containers are not healthy: removing them"), "{stderr}");
    assert_eq!(env_value_in(site.dir.path(), "IMAGE_TAG"), V2);
    assert_eq!(site.last_result(), "rolled-back");
    assert!(site.backend_images().ends_with(&format!("/intric/backend:{V2}")), "{}", site.backend_images());
    assert_eq!(site.backend_images().lines().count(), 1, "the new backend container is gone");

    // rollback to v1, the same way.
    let probe = Probe::start();
    let step = Instant::now();
    let rolled = site.ok(&["rollback", "--timeout", "240"]);
    std::thread::sleep(Duration::from_secs(1));
    probe.assert_no_failure("rollback");
    eprintln!("timing: rollback {:.1} s", step.elapsed().as_secs_f64());
    assert!(rolled.contains(&format!("rollback {V2} -> {V1} done")), "{rolled}");
    assert_eq!(env_value_in(site.dir.path(), "IMAGE_TAG"), V1);
    eprintln!("timing: the zero-downtime end-to-end test took {:.1} s", started.elapsed().as_secs_f64());
}
