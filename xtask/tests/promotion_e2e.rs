//! End-to-end tests of two-repository promotion (`release --to-registry`) on the offline lab:
//! HEAD's `sha-` images pushed by docker into a development repository are promoted into a
//! release repository with redeploy disabled, and what the release repository holds is read back
//! from the lab registry itself (not through the xtask's client): the same manifest bytes, so the
//! same digests, under every release tag.
//!
//! - Between registries: from the lab registry (`127.0.0.1:5000/<ns>`) into the lab's Nexus
//!   look-alike (`127.0.0.1:5001/release/<ns>`): different hosts, so every blob is streamed; the
//!   frontend's `sha-` tag is a manifest list, whose platform manifest goes over by digest.
//! - Within one registry: from `dev` into `release` of a Nexus look-alike of the test's own (a
//!   container on a free port, with upstream names under a fresh prefix), where blobs are mounted;
//!   its fault injection (`/_lab/fail-after-puts`) cuts a release off part-way, and so affects no
//!   other test.
//!
//! Each test's repository is a copy of this workspace (its compose file names the images) with a
//! bare repository of its own as `origin`, which holds the release lock as it would for a user.
//! `<ns>` is `promotion-e2e-<pid>-<nanos>`, so the shared lab's release tags never collide. The
//! tests remove the images they tagged in the engine and the proxy container they started, also
//! when they fail; the lab registry keeps the repositories (Distribution cannot delete them).
//! They need a Docker engine: with `CI` set a missing engine fails them; elsewhere they print
//! why they did nothing.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

const SERVICES: [&str; 3] = ["backend", "worker", "frontend"];
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ANY_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// A container a test started, removed when dropped (also when the test fails).
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        run("docker", &["rm", "--force", &self.0], Path::new("."));
    }
}

/// Pushes an image of its own per service with docker, as `<registry>/intric/<service>:<tag>`.
fn push_images(registry: &str, tag: &str, seed: u64) {
    for (index, service) in SERVICES.iter().enumerate() {
        let image = format!("{registry}/intric/{service}:{tag}");
        import_image(&image, seed + index as u64, 256 * 1024);
        push_image(&image);
    }
}

/// The manifest bytes the lab registry holds for `repository:reference` (its own name).
fn stored(repository: &str, reference: &str) -> Vec<u8> {
    let (status, body) = LabRegistry::new().get(&format!("/v2/{repository}/manifests/{reference}"), ANY_MANIFEST);
    assert_eq!(status, 200, "{repository}:{reference}: {}", String::from_utf8_lossy(&body));
    body
}

/// Makes `repository:tag` in the lab registry a manifest list of one linux/amd64 image, the
/// one `repository:tag` named so far (a multi-platform build's shape).
fn make_index(repository: &str, tag: &str) -> String {
    let child = stored(repository, tag);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "size": child.len(), "digest": sha256_digest(&child),
                       "platform": {"os": "linux", "architecture": "amd64"}}],
    }))
    .unwrap();
    let lab = lab();
    let login = format!("{}:{}", lab["NEXUS_USERNAME"], lab["NEXUS_PASSWORD"]);
    let answer = ureq::put(format!("http://{}/v2/{repository}/manifests/{tag}", lab["NEXUS_REGISTRY"]))
        .header("Authorization", format!("Basic {}", base64(login.as_bytes())))
        .header("Content-Type", DOCKER_MANIFEST_LIST)
        .send(&index[..])
        .expect("the index is put");
    assert_eq!(answer.status().as_u16(), 201);
    sha256_digest(&child)
}

/// The manifest PUTs the lab's Nexus look-alike has seen for names containing `ns`.
fn manifest_puts(ns: &str) -> Vec<serde_json::Value> {
    let (status, body) = http("GET", "http://127.0.0.1:5001/_lab/log", None);
    assert_eq!(status, 200, "{body}");
    let log: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    log.into_iter().filter(|put| put["path"].as_str().is_some_and(|path| path.contains(ns))).collect()
}

/// `release` in `repo` with the lab's login (which opens the look-alikes too).
fn release_with_login(repo: &Path, args: &[&str]) -> Output {
    release(repo, args, &lab_login_env())
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Checks that every release tag of 1.0.0 in `release` (an upstream name prefix) is the very
/// manifest of `source:<sha>`, for each service.
fn assert_promoted(source: &str, release: &str, sha: &str) {
    for service in SERVICES {
        let pushed = stored(&format!("{source}/intric/{service}"), sha);
        for tag in ["1.0.0", "1.0", "1", "latest"] {
            let promoted = stored(&format!("{release}/intric/{service}"), tag);
            assert!(promoted == pushed, "{release}/intric/{service}:{tag} is {source}/intric/{service}:{sha}'s bytes");
        }
    }
}

#[test]
fn promotion_into_another_registry_copies_every_blob_and_a_rerun_changes_nothing() {
    let Some(_serial) = lab_test() else { return };
    let lab = nexus_lab();
    docker_login(&lab["NEXUS_REGISTRY"]);
    let ns = unique_name("promotion-e2e");
    let source = format!("{}/{ns}", lab["NEXUS_REGISTRY"]);
    let target = format!("127.0.0.1:5001/release/{ns}");
    let _images = LocalImagesUnder(format!("{source}/"));
    let (repo, _origin) = snapshot_with_origin();
    let repo = repo.path();
    let sha = sha_tag(repo);
    push_images(&source, &sha, 100);
    let child = make_index(&format!("{ns}/intric/frontend"), &sha);

    let dry = release_with_login(repo, &["1.0.0", "--registry", &source, "--to-registry", &target]);
    assert_success(&dry, "release --to-registry (dry run)");
    let shown = text(&dry);
    let backend = sha256_digest(&stored(&format!("{ns}/intric/backend"), &sha));
    for expected in [
        format!("promote from {source} into {target} (another registry, so blobs by streamed copy"),
        format!(
            "{source}/intric/backend:{sha} ({backend}) -> {target}/intric/backend: 1.0.0, 1.0, 1, latest; copy 2 blobs \
             (0 of 2 already there)"
        ),
        "put its 1 platform manifest(s) by digest".to_string(),
    ] {
        assert!(shown.contains(&expected), "missing {expected:?} in:\n{shown}");
    }
    let (status, _) = LabRegistry::new().get(&format!("/v2/release/{ns}/intric/backend/manifests/1.0.0"), ANY_MANIFEST);
    assert_eq!(status, 404, "a dry run writes nothing");

    let done =
        release_with_login(repo, &["1.0.0", "--registry", &source, "--to-registry", &target, "--execute", "--json"]);
    assert_success(&done, "release --to-registry --execute");
    // (--json keeps the progress lines off; the tags below could not be put in the release
    // repository unless every blob they name had been copied into it.)
    let json: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    for image in json["images"].as_array().unwrap() {
        let service = image["service"].as_str().unwrap();
        assert_eq!(image["image"], format!("{target}/intric/{service}").as_str());
        assert_eq!(image["digest"], sha256_digest(&stored(&format!("{ns}/intric/{service}"), &sha)).as_str());
    }
    assert_promoted(&ns, &format!("release/{ns}"), &sha);
    let platform = stored(&format!("release/{ns}/intric/frontend"), &child);
    assert_eq!(sha256_digest(&platform), child, "the index's platform manifest is in the release repository too");

    // The same release again, from a clone without the git tag: the release registry and origin
    // say it is done, so nothing is copied and no tag is put (redeploy is disabled there).
    run("git", &["tag", "-d", "v1.0.0"], repo);
    let puts_before = manifest_puts(&ns);
    let again = release_with_login(repo, &["1.0.0", "--registry", &source, "--to-registry", &target, "--execute"]);
    let shown = text(&again);
    assert!(shown.contains(&format!("1.0.0 is already released from {}", &sha[4..])), "{shown}");
    assert!(shown.contains("nothing to do") && !shown.contains("copied"), "{shown}");
    assert_eq!(manifest_puts(&ns), puts_before, "no manifest was put again");
    assert_promoted(&ns, &format!("release/{ns}"), &sha);
}

#[test]
fn promotion_within_one_registry_mounts_blobs_and_a_release_cut_off_part_way_finishes_on_rerun() {
    let Some(_serial) = lab_test() else { return };
    let lab = nexus_lab();
    let prefix = format!("{}/", unique_name("promotion-e2e"));
    let (host, container) = start_nexus_proxy(lab, &prefix, &[]);
    let _container = Container(container);
    docker_login(&host);
    let (source, target) = (format!("{host}/dev"), format!("{host}/release"));
    let _images = LocalImagesUnder(format!("{source}/"));
    let (repo, _origin) = snapshot_with_origin();
    let repo = repo.path();
    let sha = sha_tag(repo);
    push_images(&source, &sha, 200);

    // The registry fails after two manifest PUTs: the first image's version tag and the second's.
    let cut = {
        let _fault = PutFault::after(&host, 2);
        release_with_login(repo, &["1.0.0", "--registry", &source, "--to-registry", &target, "--execute"])
    };
    assert!(!cut.status.success(), "{}", text(&cut));
    let error = text(&cut);
    assert!(error.contains("2 blobs mounted, 0 copied"), "same registry: blobs are mounted: {error}");
    assert!(error.contains("release 1.0.0 stopped part-way: 2 of 12 tags are in place"), "{error}");
    assert!(error.contains("run the same release again to finish it"), "{error}");
    assert!(!text(&run("git", &["tag"], repo)).contains("v1.0.0"), "no git tag before every image tag");

    let finished = release_with_login(repo, &["1.0.0", "--registry", &source, "--to-registry", &target, "--execute"]);
    assert_success(&finished, "the release run again");
    let shown = text(&finished);
    assert!(shown.contains("finishing an earlier run of this release"), "{shown}");
    assert_eq!(shown.matches("0 blobs mounted, 0 copied, 2 already there").count(), 3, "nothing moves twice: {shown}");
    assert_promoted(&format!("{prefix}dev"), &format!("{prefix}release"), &sha);
    assert!(text(&run("git", &["tag"], repo)).contains("v1.0.0"));
}
