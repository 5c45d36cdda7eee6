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

use std::time::{Duration, Instant};

use common::*;

const PROJECT: &str = "intric-zero-downtime-e2e";
const FRONTEND_PORT: &str = "24300";
const BACKEND_PORT: &str = "29300";
const V1: &str = "zero-e2e-v1";
const V2: &str = "zero-e2e-v2";
const EXITS: &str = "zero-e2e-exits";

/// The deployment directory, taken down with its volumes when dropped.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn xtask(&self, args: &[&str]) -> std::process::Output {
        xtask_in(self.dir.path(), PROJECT, args)
    }

    fn ok(&self, args: &[&str]) -> String {
        xtask_ok_in(self.dir.path(), PROJECT, args)
    }

    fn compose(&self, args: &[&str]) -> std::process::Output {
        compose_in(self.dir.path(), PROJECT, args)
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

#[test]
fn update_failed_update_and_rollback_fail_no_request() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let started = Instant::now();
    let lab = lab();
    let registry = format!("{}/zero-downtime-e2e", lab["NEXUS_REGISTRY"]);
    let _images = LocalImagesUnder(format!("{registry}/"));
    push_versions(&registry, [V1, V2], EXITS);
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
    let probe = Probe::start(FRONTEND_PORT);
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
    let probe = Probe::start(FRONTEND_PORT);
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
    assert_eq!(last_record_in(site.dir.path())["result"], "rolled-back");
    assert!(site.backend_images().ends_with(&format!("/intric/backend:{V2}")), "{}", site.backend_images());
    assert_eq!(site.backend_images().lines().count(), 1, "the new backend container is gone");

    // rollback to v1, the same way.
    let probe = Probe::start(FRONTEND_PORT);
    let step = Instant::now();
    let rolled = site.ok(&["rollback", "--timeout", "240"]);
    std::thread::sleep(Duration::from_secs(1));
    probe.assert_no_failure("rollback");
    eprintln!("timing: rollback {:.1} s", step.elapsed().as_secs_f64());
    assert!(rolled.contains(&format!("rollback {V2} -> {V1} done")), "{rolled}");
    assert_eq!(env_value_in(site.dir.path(), "IMAGE_TAG"), V1);
    eprintln!("timing: the zero-downtime end-to-end test took {:.1} s", started.elapsed().as_secs_f64());
}
