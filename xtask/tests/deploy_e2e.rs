//! The operator tasks end to end on the offline lab, with a real engine, the lab registry and the
//! stack's real Postgres and Redis: `env init` → `deploy` → rows through the API → `update` to a
//! release → `update` to a version whose backend is unhealthy (rolled back) → `rollback` →
//! `backup`, `restore` into a fresh stack → two concurrent updates → `kill -9` during an update
//! and a re-run → no secret in any output or log.
//!
//! The release is the one a release manager makes from a fast-path build: v1 is built by
//! BuildKit (the first build in the namespace, so `dev-latest`), v2 only adds an alembic
//! migration, so its backend is v1's with the trailing COPYs' layers swapped in the registry
//! and its worker is derived from that backend's manifest (the build summary says so); then
//! the real `release X.Y.Z --execute`, in a clone whose origin is a bare repository on disk
//! (the release lock and the `vX.Y.Z` push go there), promotes v2's images, and `update`
//! deploys that version: its migration runs, the containers run the release tag and the
//! backend's manifest is the swapped one.
//!
//! It needs a Docker engine: with `CI` set a missing engine fails it; elsewhere it says why it
//! did nothing. Its project (`intric-deploy-e2e`), ports (24000, 29123) and registry namespace
//! (`deploy-e2e-<pid>-<nanoseconds>` below the lab registry, so its `dev-latest` and release tags
//! are its own) are its own; the project is taken down with its volumes and the local tags of
//! that namespace are removed at the end.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

use serde_json::Value;

use common::site::{Mode, Site, lab_settings};
use common::*;

const PROJECT: &str = "intric-deploy-e2e";
const FRONTEND_PORT: &str = "24000";
const BACKEND_PORT: &str = "29123";
/// The LLM key of the deployment: it must never be shown.
const CANARY: &str = "sk-canary-deploy-e2e-5f2c81d0a7b4e9";
const V1: &str = "deploy-e2e-v1";
const V2: &str = "deploy-e2e-v2";
/// The release promoted from v2's images.
const RELEASE: &str = "1.0.0";
const BROKEN: &str = "deploy-e2e-unhealthy";

/// The ids of the jobs table's rows, in order.
fn job_ids(site: &Site) -> String {
    site.sql("select string_agg(id::text, ',' order by id) from jobs")
}

fn url(path: &str) -> String {
    format!("http://127.0.0.1:{FRONTEND_PORT}{path}")
}

fn answers() -> bool {
    http("GET", &url("/api/v1/healthz"), None).0 == 200
}

/// The one `error:` line of a failed run.
fn error_line(output: &Output) -> String {
    assert!(!output.status.success(), "it succeeded:\n{}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_string()
}

/// One image's entry in a build's or a release's JSON summary.
fn image<'a>(summary: &'a Value, service: &str) -> &'a Value {
    summary["images"].as_array().unwrap().iter().find(|image| image["service"] == service).unwrap()
}

/// `build --push --tag <tag>` of the snapshot's HEAD into `registry`: the summary.
fn push_version(repo: &Path, registry: &str, tag: &str, env: &[(String, String)]) -> Value {
    let started = Instant::now();
    let (output, summary) = build(repo, &["--push", "--tag", tag, "--registry", registry], env);
    assert_success(&output, &format!("build {tag}"));
    let summary = summary.expect("build --json prints JSON");
    eprintln!("timing: {tag} built in {:.1} s: {:?}", started.elapsed().as_secs_f64(), results(&summary));
    summary
}

/// Builds and pushes into `registry` (a namespace of this test's own) from a snapshot whose
/// origin is a bare repository: v1 as is, v2 with a migration, promoted to [`RELEASE`] with
/// `release --execute`, and a broken one whose backend answers its healthcheck with 500.
/// Returns the manifest digest of v2's (swapped) backend.
fn build_versions(registry: &str) -> String {
    // The lab's base images and login; the registry is the namespace, given with --registry.
    let env = lab_login_env();
    let (repo, origin) = snapshot_with_origin();

    // v1 is the namespace's first build: BuildKit builds it, and it becomes dev-latest.
    let summary = push_version(repo.path(), registry, V1, &env);
    let backend = image(&summary, "backend");
    assert!(matches!(backend["result"].as_str(), Some("built" | "cached")), "v1 by BuildKit: {summary}");
    assert_eq!(backend["path"], "BuildKit: no dev-latest image to swap the sources of", "{summary}");

    std::fs::write(
        repo.path().join("backend/alembic/versions/0002_deploy_e2e_note.py"),
        r#""""deploy e2e: a column added by the second version

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("e2e_note", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "e2e_note")
"#,
    )
    .unwrap();
    commit_all(repo.path(), "feat(db): a migration");
    git(repo.path(), &["push", "-q", "origin", "main"]);
    // Only files under the backend's trailing COPYs changed since dev-latest (v1): the fast path.
    let summary = push_version(repo.path(), registry, V2, &env);
    let backend = image(&summary, "backend");
    assert_eq!(backend["result"], "swapped", "v2's backend: {summary}");
    assert!(backend["path"].as_str().unwrap().starts_with("source swap on dev-latest: "), "{summary}");
    assert_eq!(image(&summary, "worker")["result"], "derived", "v2's worker: {summary}");
    assert_eq!(image(&summary, "worker")["path"], "derived from backend's manifest (metadata only)");
    let swapped = backend["digest"].as_str().unwrap().to_string();

    // The release manager's step: promote v2's images under the lock on origin.
    let release = release(repo.path(), &[RELEASE, "--execute", "--json", "--registry", registry], &env);
    assert_success(&release, "release --execute");
    let report: Value = serde_json::from_slice(&release.stdout).unwrap();
    assert_eq!(report["executed"], true, "{report}");
    // Each image's release tags are put on v2's manifest itself (the swapped backend, the
    // derived worker, the frontend), not on a copy.
    for service in ["backend", "worker", "frontend"] {
        let promoted = image(&report, service);
        assert_eq!(promoted["digest"], image(&summary, service)["digest"], "{service}: {report}");
        assert!(promoted["tags"].as_array().unwrap().iter().any(|tag| tag == RELEASE), "{service}: {report}");
    }
    let lab_registry = LabRegistry::new();
    let namespace = registry.split_once('/').unwrap().1;
    let (status, bytes) = lab_registry.get(
        &format!("/v2/{namespace}/intric/backend/manifests/{RELEASE}"),
        "application/vnd.docker.distribution.manifest.v2+json",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(sha256_digest(&bytes), swapped, "{RELEASE} is the swapped manifest");
    let tags = stdout(&run("git", &["ls-remote", "--tags", origin.path().to_str().unwrap()], repo.path()));
    assert!(tags.contains(&format!("refs/tags/v{RELEASE}")), "v{RELEASE} pushed to origin: {tags}");
    assert!(!tags.contains("release-lock"), "the release lock is released: {tags}");

    let api = repo.path().join("backend/intric/api.py");
    let source = std::fs::read_to_string(&api).unwrap();
    let broken = source.replace(
        "    async def healthz(request: Request):\n",
        "    async def healthz(request: Request):\n        return JSONResponse({\"status\": \"broken on purpose\"}, status_code=500)\n",
    );
    assert_ne!(source, broken, "the healthz route moved: update this test");
    std::fs::write(&api, broken).unwrap();
    commit_all(repo.path(), "an unhealthy backend");
    push_version(repo.path(), registry, BROKEN, &env);
    swapped
}

/// The image each container of `service` runs (as named) and that image's registry digests.
fn running(site: &Site, service: &str) -> Vec<(String, String)> {
    let listed = site.compose(&["ps", "--quiet", service]);
    assert_success(&listed, &format!("compose ps {service}"));
    String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .map(|container| {
            let inspect =
                run("docker", &["inspect", "--format", "{{.Config.Image}} {{.Image}}", container], Path::new("."));
            assert_success(&inspect, "docker inspect");
            let text = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
            let (name, id) = text.split_once(' ').unwrap();
            let digests = run("docker", &["image", "inspect", "--format", "{{json .RepoDigests}}", id], Path::new("."));
            assert_success(&digests, "docker image inspect");
            (name.to_string(), String::from_utf8_lossy(&digests.stdout).trim().to_string())
        })
        .collect()
}

#[test]
fn deploy_update_rollback_backup_restore_lock_and_kill() {
    let Some(_serial) = lab_test() else { return };
    let started = Instant::now();
    let lab = lab();
    let registry = format!("{}/{}", lab["NEXUS_REGISTRY"], unique_name("deploy-e2e"));
    // Declared before the deployment, so dropped after its containers are gone.
    let _images = LocalImagesUnder(format!("{registry}/"));
    let swapped = build_versions(&registry);
    eprintln!("timing: three versions built in {:.1} s", started.elapsed().as_secs_f64());

    // env init, then the settings of this lab.
    let deployment = Site::new(PROJECT, Mode::Compose);
    let mut settings = lab_settings(lab, &registry, V1, CANARY);
    settings.extend([("FRONTEND_PORT", FRONTEND_PORT), ("BACKEND_PORT", BACKEND_PORT)]);
    deployment.init_env(&settings);

    // deploy: db-init runs once, everything healthy, the app answers through the frontend.
    let step = Instant::now();
    let first = deployment.ok(&["deploy", "--timeout", "240"]);
    assert!(first.contains("never initialized: running db-init") && first.contains("seeded tenant default"), "{first}");
    assert!(first.contains(&format!("deployed {V1}: http://localhost:{FRONTEND_PORT}")), "{first}");
    for service in ["db", "redis", "backend", "worker", "frontend"] {
        assert!(first.lines().any(|line| line.starts_with(service) && line.contains("running  healthy")), "{first}");
    }
    let (status, page) = http("GET", &url("/"), None);
    assert!(status == 200 && page.contains("<title>Intric</title>"), "{status} {page}");
    assert!(answers());
    eprintln!("timing: first deploy {:.1} s", step.elapsed().as_secs_f64());
    let step = Instant::now();
    let again = deployment.ok(&["deploy"]);
    assert!(again.contains("the database is initialized (revision 0001)") && !again.contains("seeded"), "{again}");
    assert_eq!(deployment.sql("select count(*) from tenants"), "1");
    eprintln!("timing: deploy again (harmless) {:.1} s", step.elapsed().as_secs_f64());

    // Rows through the API.
    for text in ["first row", "second row", "third row"] {
        let (status, body) = http("POST", &url("/api/v1/jobs"), Some(&format!("{{\"text\":\"{text}\"}}")));
        assert_eq!(status, 202, "{body}");
    }
    eventually(60, "the worker to complete the jobs", || {
        (deployment.sql("select count(*) from jobs where status = 'done'") == "3").then_some(())
    });
    let rows = job_ids(&deployment);

    // update to the release promoted from v2: its migration is applied with the new image, the
    // rows are kept, and the containers run the release tag, the backend the swapped manifest.
    let step = Instant::now();
    let updated = deployment.ok(&["update", "--tag", RELEASE, "--timeout", "240"]);
    assert!(updated.contains(&format!("update {V1} -> {RELEASE} done")), "{updated}");
    assert_eq!(deployment.sql("select version_num from alembic_version"), "0002");
    assert_eq!(
        deployment.sql(
            "select count(*) from information_schema.columns where table_name = 'jobs' and column_name = 'e2e_note'"
        ),
        "1"
    );
    assert_eq!(job_ids(&deployment), rows);
    assert_eq!(deployment.env_value("IMAGE_TAG"), RELEASE);
    for service in ["backend", "worker", "frontend"] {
        let containers = running(&deployment, service);
        assert!(!containers.is_empty(), "{service} runs");
        for (name, _) in &containers {
            assert_eq!(name, &format!("{registry}/intric/{service}:{RELEASE}"), "{service}");
        }
    }
    for (_, digests) in running(&deployment, "backend") {
        assert!(digests.contains(&format!("{registry}/intric/backend@{swapped}")), "the swapped backend: {digests}");
    }
    assert!(answers());
    eprintln!("timing: update to the release {:.1} s", step.elapsed().as_secs_f64());

    // update to an unhealthy version: rolled back automatically, the app answers, rows intact.
    let step = Instant::now();
    let failed = deployment.xtask(&["update", "--tag", BROKEN, "--timeout", "150"]);
    let error = error_line(&failed);
    assert!(error.contains(&format!("failed and was rolled back to {RELEASE}, which is running again")), "{error}");
    assert!(error.contains("the database was NOT restored") && error.contains("/backups/intric_"), "{error}");
    deployment.assert_rolled_back(&failed, RELEASE);
    assert!(answers());
    assert_eq!(job_ids(&deployment), rows);
    eprintln!("timing: failed update and automatic rollback {:.1} s", step.elapsed().as_secs_f64());

    // rollback: to the tag deployed before the release, keeping the newer schema it does not know.
    let step = Instant::now();
    let rolled = deployment.ok(&["rollback", "--timeout", "240"]);
    assert!(rolled.contains(&format!("rollback {RELEASE} -> {V1} done")), "{rolled}");
    assert!(rolled.contains("which this image does not know"), "{rolled}");
    assert_eq!(deployment.env_value("IMAGE_TAG"), V1);
    assert!(answers());
    assert_eq!(job_ids(&deployment), rows);
    eprintln!("timing: rollback {:.1} s", step.elapsed().as_secs_f64());

    // backup, then restore into a fresh stack: the same rows.
    let step = Instant::now();
    let backup = deployment.stdout(&["backup", "--keep", "3"]);
    let file = PathBuf::from(backup.trim());
    assert!(file.file_name().unwrap().to_str().unwrap().starts_with("intric_"), "{backup}");
    assert_success(&run("gzip", &["-t", file.to_str().unwrap()], Path::new(".")), "gzip -t");
    let kept = std::fs::read_dir(deployment.path().join("backups")).unwrap().count();
    assert_eq!(kept, 3, "--keep 3 after four backups");
    assert_success(&deployment.compose(&["down", "--volumes"]), "compose down --volumes");
    let fresh = deployment.ok(&["deploy", "--timeout", "240"]);
    assert!(fresh.contains("seeded tenant default"), "a fresh stack: {fresh}");
    assert_eq!(deployment.sql("select count(*) from jobs"), "0");
    let restored = deployment.ok(&["restore", file.to_str().unwrap(), "--yes", "--timeout", "240"]);
    assert!(restored.contains("restored"), "{restored}");
    assert_eq!(job_ids(&deployment), rows);
    let first_id = rows.split(',').next().unwrap();
    let (status, body) = http("GET", &url(&format!("/api/v1/jobs/{first_id}")), None);
    assert!(status == 200 && body.contains("\"done\""), "{status} {body}");
    eprintln!("timing: backup, fresh deploy and restore {:.1} s", step.elapsed().as_secs_f64());

    // Two updates at once: the second is refused, naming the first.
    let step = Instant::now();
    let mut first_update = deployment.spawn(&["update", "--tag", RELEASE, "--timeout", "240"], "first-update.log");
    let lock = deployment.path().join(".deploy.lock");
    eventually(60, "the first update to take the lock", || lock.exists().then_some(()));
    let refused = deployment.xtask(&["update", "--tag", RELEASE]);
    let error = error_line(&refused);
    assert!(
        error.contains("holds the lock") && error.contains(&format!("pid {} (update,", first_update.id())),
        "{error}"
    );
    assert!(first_update.wait().unwrap().success(), "{}", deployment.log("first-update.log"));
    deployment.log("first-update.log");
    assert_eq!(deployment.env_value("IMAGE_TAG"), RELEASE);
    assert!(!lock.exists(), "the lock is released");
    eprintln!("timing: concurrent updates {:.1} s", step.elapsed().as_secs_f64());

    // kill -9 in the middle of an update (after .env changed), then the same update again.
    let step = Instant::now();
    let mut killed = deployment.spawn(&["update", "--tag", V1, "--timeout", "240"], "killed-update.log");
    eventually(120, "the update to switch .env", || (deployment.env_value("IMAGE_TAG") == V1).then_some(()));
    let pid = killed.id().to_string();
    assert_success(&run("kill", &["-9", &pid], Path::new(".")), "kill -9");
    killed.wait().unwrap();
    deployment.log("killed-update.log");
    assert!(lock.exists(), "a killed update leaves its lock");
    let converged = deployment.ok(&["update", "--tag", V1, "--timeout", "240"]);
    assert!(converged.contains(&format!("taking over the stale lock left by pid {pid} (update")), "{converged}");
    assert!(converged.contains(&format!("update {RELEASE} -> {V1} done")), "{converged}");
    assert_eq!(deployment.env_value("IMAGE_TAG"), V1);
    assert!(answers());
    assert_eq!(job_ids(&deployment), rows);
    assert!(!lock.exists());
    let history = deployment.history();
    assert!(history.iter().any(|record| record["detail"].as_str().is_some_and(|d| d.starts_with("interrupted"))));
    let status: serde_json::Value = serde_json::from_str(&deployment.stdout(&["status", "--json"])).unwrap();
    for service in status.as_array().unwrap() {
        assert_eq!(service["health"], "healthy", "{service}");
    }
    eprintln!("timing: kill -9 and convergence {:.1} s", step.elapsed().as_secs_f64());

    // The canary secret is in no output, no file of the deployment but .env, and no log.
    let logs = deployment.compose(&["logs", "--no-color"]);
    let mut everything = deployment.shown();
    everything.push_str(&String::from_utf8_lossy(&logs.stdout));
    everything.push_str(&String::from_utf8_lossy(&logs.stderr));
    for entry in walk(deployment.path()) {
        if entry.file_name().is_some_and(|name| name != ".env") {
            let bytes = if entry.extension().is_some_and(|ext| ext == "gz") {
                run("gzip", &["-dc", entry.to_str().unwrap()], Path::new(".")).stdout
            } else {
                std::fs::read(&entry).unwrap()
            };
            everything.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    assert!(everything.len() > 10_000, "there is output to look at");
    assert!(!everything.contains(CANARY), "the canary secret leaked");
    assert!(!everything.contains(&lab["NEXUS_PASSWORD"]), "the registry password leaked");
    eprintln!("timing: the deploy end-to-end test took {:.1} s", started.elapsed().as_secs_f64());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}
