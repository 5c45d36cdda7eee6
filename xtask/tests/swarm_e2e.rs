//! The same stack on Docker Swarm, end to end on the offline lab (the shared engine as a
//! single-node swarm, the lab registry, the stack's real Postgres and Redis), from the same
//! `docker-compose.yml` as compose mode: `deploy --swarm` (db-init once; a second deploy does
//! not run it again) → `update` to v2 with a probe requesting `/` and `/api/v1/healthz`
//! through the edge's port every 20 ms (not one request may fail) → an update to a version
//! whose backend exits at start, which swarm rolls back (the history says so, the old version
//! serves, no request fails) → `rollback` to v1 (no request fails) → a row written before is
//! still there.
//!
//! It needs a Docker engine: with `CI` set a missing engine fails it; elsewhere it says why it
//! did nothing. It runs `docker swarm init --advertise-addr 127.0.0.1` when the engine is not
//! in a swarm yet, and leaves the swarm as it is (other stacks may run on it). Its stack
//! (`intric-swarm-e2e`), registry namespace (`swarm-e2e`) and port (24600) are its own; the
//! stack is removed at the end.

mod common;

use std::time::{Duration, Instant};

use common::*;

const STACK: &str = "intric-swarm-e2e";
const FRONTEND_PORT: &str = "24600";
const V1: &str = "swarm-e2e-v1";
const V2: &str = "swarm-e2e-v2";
const EXITS: &str = "swarm-e2e-exits";

/// The deployment directory; its stack removed (and its volumes, once its containers are
/// gone) when dropped.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn xtask(&self, args: &[&str]) -> std::process::Output {
        xtask_in(self.dir.path(), STACK, args)
    }

    fn ok(&self, args: &[&str]) -> String {
        xtask_ok_in(self.dir.path(), STACK, args)
    }

    /// The image of the swarm service `service`, without its digest.
    fn image_of(&self, service: &str) -> String {
        let output = docker(&[
            "service",
            "inspect",
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
            &format!("{STACK}_{service}"),
        ]);
        output.split('@').next().unwrap().to_string()
    }

    /// One SQL statement in the db task's container.
    fn sql(&self, sql: &str) -> String {
        let filter = format!("label=com.docker.swarm.service.name={STACK}_db");
        let id = docker(&["ps", "--quiet", "--filter", "status=running", "--filter", &filter]);
        docker(&[
            "exec",
            id.trim(),
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            "intric",
            "-tA",
            "-c",
            sql,
        ])
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let ps = run("docker", &["stack", "ps", STACK, "--no-trunc"], self.dir.path());
            eprintln!("--- docker stack ps\n{}", String::from_utf8_lossy(&ps.stdout));
        }
        run("docker", &["stack", "rm", STACK], self.dir.path());
        // The volumes can go once the tasks' containers are gone.
        let filter = format!("label=com.docker.stack.namespace={STACK}");
        for _ in 0..60 {
            let left = run("docker", &["ps", "--all", "--quiet", "--filter", &filter], self.dir.path());
            if String::from_utf8_lossy(&left.stdout).trim().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        for volume in ["postgres_data", "redis_data", "backend_data"] {
            run("docker", &["volume", "rm", &format!("{STACK}_{volume}")], self.dir.path());
        }
    }
}

/// `docker ARGS` that must succeed; its standard output.
fn docker(args: &[&str]) -> String {
    let output = run("docker", args, &workspace());
    assert_success(&output, &format!("docker {}", args.join(" ")));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The engine as a swarm manager: `docker swarm init` when it is in no swarm yet.
fn ensure_swarm() {
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    if state != "active" {
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    }
}

#[test]
fn the_compose_file_runs_on_swarm_and_updates_fail_no_request() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let started = Instant::now();
    ensure_swarm();
    let lab = lab();
    let registry = format!("{}/swarm-e2e", lab["NEXUS_REGISTRY"]);
    let _images = LocalImagesUnder(format!("{registry}/"));
    push_versions(&registry, [V1, V2], EXITS);
    eprintln!("timing: versions pushed in {:.1} s", started.elapsed().as_secs_f64());

    let site = Site { dir: tempfile::tempdir().unwrap() };
    run("docker", &["stack", "rm", STACK], site.dir.path());
    for file in ["docker-compose.yml", ".env.example"] {
        std::fs::copy(workspace().join("docker").join(file), site.dir.path().join(file)).unwrap();
    }
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
        ("OPENAI_API_KEY", "sk-swarm-e2e-not-a-real-key"),
        ("FRONTEND_PORT", FRONTEND_PORT),
    ] {
        set_env_var(&env_path, key, value);
    }

    // deploy --swarm: db and redis, db-init once, then the app; nothing of .env printed.
    let deployed = site.ok(&["deploy", "--swarm", "--timeout", "240"]);
    assert!(deployed.contains(&format!("deployed {V1}")), "{deployed}");
    assert!(deployed.contains("the database was never initialized: running db-init once"), "{deployed}");
    assert!(!deployed.contains(lab["NEXUS_PASSWORD"].as_str()), "the registry password is never printed");
    let stack_file = site.dir.path().join(".swarm/stack.json");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&stack_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(last_record_in(site.dir.path())["mode"], "swarm");
    assert_eq!(http("GET", &format!("http://127.0.0.1:{FRONTEND_PORT}/api/v1/healthz"), None).0, 200);
    site.sql("create table swarm_e2e_kept (note text); insert into swarm_e2e_kept values ('written before')");

    // A second deploy finds the database initialized: db-init does not run again.
    let again = site.ok(&["deploy", "--timeout", "240"]);
    assert!(again.contains("the deploy history says this deployment runs on Docker Swarm"), "{again}");
    assert!(again.contains("the database is initialized"), "{again}");
    assert!(!again.contains("running db-init"), "{again}");

    // update to v2: swarm starts each new task beside the old one; not one request fails.
    let probe = Probe::start(FRONTEND_PORT);
    std::thread::sleep(Duration::from_secs(1));
    let step = Instant::now();
    let updated = site.ok(&["update", "--tag", V2, "--timeout", "240"]);
    std::thread::sleep(Duration::from_secs(1));
    probe.assert_no_failure("update --swarm to v2");
    eprintln!("timing: update to v2 {:.1} s", step.elapsed().as_secs_f64());
    assert!(updated.contains(&format!("update {V1} -> {V2} done")), "{updated}");
    assert!(updated.contains("update completed"), "progress per service: {updated}");
    for service in ["backend", "worker", "frontend"] {
        assert!(site.image_of(service).ends_with(&format!("/intric/{service}:{V2}")), "{}", site.image_of(service));
    }
    let status = site.ok(&["status"]);
    assert!(status.contains(&format!("stack {STACK} (swarm)")) && status.contains(V2), "{status}");

    // update to a version whose backend exits: swarm rolls it back, the old version serves on.
    let probe = Probe::start(FRONTEND_PORT);
    let step = Instant::now();
    let failed = site.xtask(&["update", "--tag", EXITS, "--timeout", "180"]);
    std::thread::sleep(Duration::from_secs(1));
    probe.assert_no_failure("the update swarm rolled back");
    eprintln!("timing: rolled-back update {:.1} s", step.elapsed().as_secs_f64());
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains(&format!("failed and was rolled back to {V2}, which is running again")), "{stderr}");
    assert!(stderr.contains("swarm rolled backend back"), "{stderr}");
    assert_eq!(last_record_in(site.dir.path())["result"], "rolled-back");
    assert_eq!(env_value_in(site.dir.path(), "IMAGE_TAG"), V2);
    for service in ["backend", "worker", "frontend"] {
        assert!(site.image_of(service).ends_with(&format!("/intric/{service}:{V2}")), "{}", site.image_of(service));
    }

    // rollback: an update to the tag deployed before, the same start-first way.
    let probe = Probe::start(FRONTEND_PORT);
    let step = Instant::now();
    let rolled = site.ok(&["rollback", "--timeout", "240"]);
    std::thread::sleep(Duration::from_secs(1));
    probe.assert_no_failure("rollback --swarm");
    eprintln!("timing: rollback {:.1} s", step.elapsed().as_secs_f64());
    assert!(rolled.contains(&format!("rollback {V2} -> {V1} done")), "{rolled}");
    assert!(site.image_of("backend").ends_with(&format!("/intric/backend:{V1}")), "{}", site.image_of("backend"));

    // The data written before is still there.
    assert_eq!(site.sql("select note from swarm_e2e_kept"), "written before");
    eprintln!("timing: the swarm end-to-end test took {:.1} s", started.elapsed().as_secs_f64());
}
