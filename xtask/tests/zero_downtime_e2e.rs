//! Updates without downtime, end to end on the offline lab (real engine, lab registry, the
//! stack's real Postgres and Redis), with a probe requesting `/` and `/api/v1/healthz` through
//! the edge's host port every 20 ms: `deploy` v1 → `update` to v2 (the same images under
//! another tag, so only the containers change) → `update` to a version whose backend exits at
//! start (never healthy: rolled back, the old containers kept serving) → `rollback` to v1.
//! Not one request may fail in any of them.
//!
//! It needs a Docker engine: with `CI` set a missing engine fails it; elsewhere it says why it
//! did nothing. Its project (`intric-zero-downtime-e2e`), registry namespace
//! (`zero-downtime-e2e` below the lab registry) and ports (24300, 29300) are its own; the
//! project is taken down with its volumes and the namespace's local images removed at the end.

mod common;

use std::time::Instant;

use common::site::{Mode, Site, lab_settings};
use common::*;

const PROJECT: &str = "intric-zero-downtime-e2e";
const FRONTEND_PORT: &str = "24300";
const BACKEND_PORT: &str = "29300";
const V1: &str = "zero-e2e-v1";
const V2: &str = "zero-e2e-v2";
const EXITS: &str = "zero-e2e-exits";

/// The backend containers' images.
fn backend_images(site: &Site) -> String {
    let output = site.compose(&["ps", "--format", "{{.Image}}", "backend"]);
    assert_success(&output, "compose ps backend");
    stdout(&output).trim().to_string()
}

#[test]
fn update_failed_update_and_rollback_fail_no_request() {
    let Some(_serial) = lab_test() else { return };
    let started = Instant::now();
    let lab = lab();
    let (registry, _images) = push_versions("zero-downtime-e2e", [V1, V2], EXITS);

    let site = Site::new(PROJECT, Mode::Compose);
    let mut settings = lab_settings(lab, &registry, V1, "sk-zero-downtime-e2e-not-a-real-key");
    settings.extend([("FRONTEND_BIND", "127.0.0.1"), ("FRONTEND_PORT", FRONTEND_PORT), ("BACKEND_PORT", BACKEND_PORT)]);
    site.init_env(&settings);
    let deployed = site.ok(&["deploy", "--timeout", "240"]);
    assert!(deployed.contains(&format!("deployed {V1}")), "{deployed}");

    // update to v2: new containers beside the old ones, not one request fails.
    let updated =
        without_downtime(FRONTEND_PORT, "update to v2", || site.ok(&["update", "--tag", V2, "--timeout", "240"]));
    assert!(updated.contains(&format!("update {V1} -> {V2} done")), "{updated}");
    assert!(updated.contains("the new containers are healthy"), "{updated}");
    assert_eq!(site.env_value("IMAGE_TAG"), V2);
    assert!(backend_images(&site).ends_with(&format!("/intric/backend:{V2}")), "{}", backend_images(&site));
    assert_eq!(backend_images(&site).lines().count(), 1, "one backend container after the update");

    // update to a version whose backend exits: never healthy, the old containers serve on.
    let failed = without_downtime(FRONTEND_PORT, "the failed update", || {
        site.xtask(&["update", "--tag", EXITS, "--timeout", "60"])
    });
    let stderr = site.assert_rolled_back(&failed, V2);
    assert!(stderr.contains("the new containers are not healthy: removing them"), "{stderr}");
    assert!(backend_images(&site).ends_with(&format!("/intric/backend:{V2}")), "{}", backend_images(&site));
    assert_eq!(backend_images(&site).lines().count(), 1, "the new backend container is gone");

    // rollback to v1, the same way.
    let rolled = without_downtime(FRONTEND_PORT, "rollback", || site.ok(&["rollback", "--timeout", "240"]));
    assert!(rolled.contains(&format!("rollback {V2} -> {V1} done")), "{rolled}");
    assert_eq!(site.env_value("IMAGE_TAG"), V1);
    eprintln!("timing: the zero-downtime end-to-end test took {:.1} s", started.elapsed().as_secs_f64());
}
