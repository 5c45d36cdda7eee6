//! The same stack on Docker Swarm, end to end on the offline lab (the shared engine as a
//! single-node swarm, the lab registry, the stack's real Postgres and Redis), from the same
//! `docker-compose.yml` as compose mode: `deploy --swarm` (db-init once; a second deploy does
//! not run it again) → `update` to v2 with a probe requesting `/` and `/api/v1/healthz`
//! through the edge's port every 20 ms (not one request may fail) → an update to a version
//! whose backend exits at start, which swarm rolls back (the history says so, the old version
//! serves, no request fails) → the same with `--restore-on-failure` (the database is the
//! backup's, the stack serves) → `rollback` to v1 (no request fails) → a row written before is
//! still there → `backup`, a row written, `restore`: the row is gone and the stack serves →
//! `deploy --compose`, refused until `docker stack rm`, then compose mode on the same data.
//!
//! It needs a Docker engine: with `CI` set a missing engine fails it; elsewhere it says why it
//! did nothing. It runs `docker swarm init --advertise-addr 127.0.0.1` when the engine is not
//! in a swarm yet, and leaves the swarm as it is (other stacks may run on it). Its stack
//! (`intric-swarm-e2e`), registry namespace (`swarm-e2e` below the lab registry) and port
//! (24600) are its own; the stack and its volumes are removed at the end, and the namespace's
//! local images.

mod common;

use std::time::Instant;

use common::site::{Mode, Site, lab_settings};
use common::*;

const STACK: &str = "intric-swarm-e2e";
const FRONTEND_PORT: &str = "24600";
const V1: &str = "swarm-e2e-v1";
const V2: &str = "swarm-e2e-v2";
const EXITS: &str = "swarm-e2e-exits";

/// The image of the swarm service `service` of the site's stack, without its digest.
fn image_of(site: &Site, service: &str) -> String {
    let service = format!("{}_{service}", site.name());
    let output = docker(&["service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", &service]);
    output.split('@').next().unwrap().to_string()
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
    let Some(_serial) = lab_test() else { return };
    let started = Instant::now();
    ensure_swarm();
    let lab = lab();
    let (registry, _images) = push_versions("swarm-e2e", [V1, V2], EXITS);

    let mut site = Site::new(STACK, Mode::Swarm);
    let mut settings = lab_settings(lab, &registry, V1, "sk-swarm-e2e-not-a-real-key");
    // Swarm mode does not publish the backend's port; compose mode, at the end, does.
    settings.extend([("FRONTEND_PORT", FRONTEND_PORT), ("BACKEND_PORT", "24623")]);
    site.init_env(&settings);

    // deploy --swarm: db and redis, db-init once, then the app; nothing of .env printed.
    let deployed = site.ok(&["deploy", "--swarm", "--timeout", "240"]);
    assert!(deployed.contains(&format!("deployed {V1}")), "{deployed}");
    assert!(deployed.contains("the database was never initialized: running db-init once"), "{deployed}");
    assert!(!deployed.contains(lab["NEXUS_PASSWORD"].as_str()), "the registry password is never printed");
    let stack_file = site.path().join(".swarm/stack.json");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&stack_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(site.last_record()["mode"], "swarm");
    assert_eq!(http("GET", &format!("http://127.0.0.1:{FRONTEND_PORT}/api/v1/healthz"), None).0, 200);
    site.sql("create table swarm_e2e_kept (note text); insert into swarm_e2e_kept values ('written before')");

    // A second deploy finds the database initialized: db-init does not run again.
    let again = site.ok(&["deploy", "--timeout", "240"]);
    assert!(again.contains("the deploy history says this deployment runs on Docker Swarm"), "{again}");
    assert!(again.contains("the database is initialized"), "{again}");
    assert!(!again.contains("running db-init"), "{again}");

    // update to v2: swarm starts each new task beside the old one; not one request fails.
    let updated = without_downtime(FRONTEND_PORT, "update --swarm to v2", || {
        site.ok(&["update", "--tag", V2, "--timeout", "240"])
    });
    assert!(updated.contains(&format!("update {V1} -> {V2} done")), "{updated}");
    assert!(updated.contains("update completed"), "progress per service: {updated}");
    for service in ["backend", "worker", "frontend"] {
        assert!(image_of(&site, service).ends_with(&format!("/intric/{service}:{V2}")), "{}", image_of(&site, service));
    }
    let status = site.ok(&["status"]);
    assert!(status.contains(&format!("stack {STACK} (swarm)")) && status.contains(V2), "{status}");

    // update to a version whose backend exits: swarm rolls it back, the old version serves on.
    let failed = without_downtime(FRONTEND_PORT, "the update swarm rolled back", || {
        site.xtask(&["update", "--tag", EXITS, "--timeout", "180"])
    });
    let stderr = site.assert_rolled_back(&failed, V2);
    assert!(stderr.contains("swarm rolled backend back"), "{stderr}");
    for service in ["backend", "worker", "frontend"] {
        assert!(image_of(&site, service).ends_with(&format!("/intric/{service}:{V2}")), "{}", image_of(&site, service));
    }

    // The same update with --restore-on-failure: once the old version runs again, the database
    // is swapped for the backup taken before the update (a new database: another oid), and
    // the stack serves. Backend and worker stop for the swap, so this one has downtime.
    let oid = || site.sql("select oid from pg_database where datname = current_database()");
    let before = oid();
    let failed = site.xtask(&["update", "--tag", EXITS, "--timeout", "180", "--restore-on-failure"]);
    let stderr = site.assert_rolled_back(&failed, V2);
    assert!(stderr.contains("the database was restored from"), "{stderr}");
    assert_ne!(oid(), before, "the database is still the one from before the update");
    assert_eq!(site.sql("select note from swarm_e2e_kept"), "written before");
    assert_eq!(http("GET", &format!("http://127.0.0.1:{FRONTEND_PORT}/api/v1/healthz"), None).0, 200);
    assert!(image_of(&site, "backend").ends_with(&format!("/intric/backend:{V2}")), "{}", image_of(&site, "backend"));

    // rollback: an update to the tag deployed before, the same start-first way.
    let rolled = without_downtime(FRONTEND_PORT, "rollback --swarm", || site.ok(&["rollback", "--timeout", "240"]));
    assert!(rolled.contains(&format!("rollback {V2} -> {V1} done")), "{rolled}");
    assert!(image_of(&site, "backend").ends_with(&format!("/intric/backend:{V1}")), "{}", image_of(&site, "backend"));

    // The data written before is still there.
    assert_eq!(site.sql("select note from swarm_e2e_kept"), "written before");

    // backup and restore on swarm, which the history names: a row written after the backup is
    // gone once it is restored, and the stack serves again.
    let backup = site.stdout(&["backup"]);
    let file = std::path::PathBuf::from(backup.trim());
    assert!(file.file_name().unwrap().to_str().unwrap().starts_with("intric_"), "{backup}");
    assert_success(&run("gzip", &["-t", file.to_str().unwrap()], std::path::Path::new(".")), "gzip -t");
    site.sql("insert into swarm_e2e_kept values ('written after the backup')");
    let restored = site.ok(&["restore", file.to_str().unwrap(), "--yes", "--timeout", "240"]);
    assert!(restored.contains(&format!("restored {}", file.display())), "{restored}");
    assert!(restored.contains(&format!("stack {STACK} (swarm)")), "the swarm's status after it: {restored}");
    assert_eq!(site.sql("select string_agg(note, ',') from swarm_e2e_kept"), "written before");
    assert_eq!(http("GET", &format!("http://127.0.0.1:{FRONTEND_PORT}/api/v1/healthz"), None).0, 200);
    assert_eq!(site.last_record()["mode"], "swarm", "the restore's record keeps the mode");

    // deploy --compose, the way back: refused while the stack is there; once it is removed,
    // compose runs the same tag on the same volumes, and the history records compose again.
    let refused = site.xtask(&["deploy", "--compose"]);
    assert!(!refused.status.success(), "deploy --compose beside a running stack");
    let said = common::stderr(&refused);
    assert!(said.contains(&format!("docker stack rm {STACK}")), "{said}");
    docker(&["stack", "rm", STACK]);
    let filter = format!("label=com.docker.stack.namespace={STACK}");
    eventually(90, "the stack's containers to go", || {
        docker(&["ps", "--all", "--quiet", "--filter", &filter]).is_empty().then_some(())
    });
    site.switch_mode(Mode::Compose);
    let back = site.ok(&["deploy", "--compose", "--timeout", "240"]);
    assert!(back.contains(&format!("deployed {V1}")) && back.contains("the database is initialized"), "{back}");
    assert_eq!(site.sql("select string_agg(note, ',') from swarm_e2e_kept"), "written before");
    assert_eq!(http("GET", &format!("http://127.0.0.1:{FRONTEND_PORT}/api/v1/healthz"), None).0, 200);
    assert!(site.last_record()["mode"].is_null(), "compose again: {}", site.last_record());
    let status = site.ok(&["status"]);
    assert!(!status.contains("(swarm)"), "{status}");
    eprintln!("timing: the swarm end-to-end test took {:.1} s", started.elapsed().as_secs_f64());
}
