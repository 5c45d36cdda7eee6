//! End-to-end tests of `release` and `ci` on the offline lab: real builds pushed to a registry,
//! then promoted to releases through the registry API, checked by reading the registry back.
//!
//! Release tags (`1.0.0`, `latest`) are global in a registry, so these tests run a registry of
//! their own (the lab's registry image, without authentication, in the container
//! `intric-e2e-release-registry` on port 5066), started fresh and removed at the end; the test on
//! the lab's Nexus look-alike uses namespaces of its own (`xtask-e2e-<pid>-<nanos>` below `dev`
//! and `release`). The local images the builds leave under these registries and namespaces are
//! removed at the end, also when a test fails. The base images still come from the lab. They
//! need a Docker engine: with `CI` set a missing engine fails them; elsewhere they print why
//! they did nothing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::*;

/// The test's own registry: its container and port.
const CONTAINER: &str = "intric-e2e-release-registry";
const PORT: u16 = 5066;

/// Which image `repository:tag` is, read back over HTTP: its config's digest. Tags of one
/// manifest name the same config; a rebuild from other sources has another.
fn digest(registry: &LabRegistry, repository: &str, tag: &str) -> String {
    registry.manifest(repository, tag)["config"]["digest"].as_str().unwrap().to_string()
}

/// Builds and pushes HEAD's images into the test's registry, as the main stage does.
fn push(repo: &Path, registry: &str) -> serde_json::Value {
    let (output, summary) = build(repo, &["--push", "--registry", registry], &lab_base_env());
    assert_success(&output, "build --push");
    summary.expect("build --json prints JSON")
}

/// `release` in `repo`, which has no remote: so without the release lock (tests/release_race.rs
/// tests that).
fn release_without_lock(repo: &Path, registry: &str, args: &[&str]) -> Output {
    let full = [&["--no-lock", "--registry", registry][..], args].concat();
    release(repo, &full, &lab_base_env())
}

/// A backend change of this test's own, so that commit's backend and worker images differ
/// from every other commit's (the frontend stays the same image).
fn change_backend(repo: &Path, marker: &str, message: &str) {
    std::fs::write(repo.join("backend/intric/release_e2e_marker.py"), format!("MARKER = {marker:?}\n")).unwrap();
    commit_all(repo, message);
}

#[test]
fn releases_promote_the_main_stage_images_with_their_digests_and_guards() {
    let Some(_serial) = lab_test() else { return };
    let own = OwnRegistry::start(CONTAINER, PORT);
    let _images = LocalImagesUnder(format!("{}/", own.host));
    let host = own.host.as_str();
    let registry = LabRegistry::anonymous(host);
    let repo = snapshot();
    let repo = repo.path();
    change_backend(repo, &format!("{:?}", std::time::SystemTime::now()), "feat(api): the first release");

    // The ci stages plan as documented (running `ci --stage main` here would run the whole
    // test suite recursively; its push is what `build --push` does next).
    let plan = xtask(
        &["ci", "--stage", "main", "--dry-run", "--repo", repo.to_str().unwrap(), "--registry", host],
        &lab_base_env(),
        repo,
    );
    assert_success(&plan, "ci --stage main --dry-run");
    let shown = stdout(&plan);
    for expected in [
        "cargo fmt --all --check",
        "cargo clippy --workspace --all-targets -- -D warnings",
        "cargo test --workspace",
        "cargo xtask check",
        "then build and push",
        &format!("{host}/intric/backend:dev-latest"),
    ] {
        assert!(shown.contains(expected), "ci main plan lacks {expected:?}:\n{shown}");
    }
    let plan = xtask(&["ci", "--stage", "pr", "--dry-run", "--repo", repo.to_str().unwrap()], &lab_base_env(), repo);
    assert_success(&plan, "ci --stage pr --dry-run");
    let shown = stdout(&plan);
    assert!(shown.contains("then build:") && !shown.contains(" push ") && !shown.contains("login"), "{shown}");

    // Main stage: sha- and dev-latest.
    push(repo, host);
    let first = head(repo);
    let sha = format!("sha-{}", &first[..12]);
    for service in ["backend", "worker", "frontend"] {
        let tags = registry.tags(&format!("intric/{service}"));
        assert!(tags.contains(&sha) && tags.contains(&"dev-latest".to_string()), "{service}: {tags:?}");
    }

    // A dry run changes nothing.
    let dry = release_without_lock(repo, host, &["1.0.0"]);
    assert_success(&dry, "release 1.0.0 (dry run)");
    assert!(stdout(&dry).contains("PUT /v2/intric/frontend/manifests/latest"), "{}", stdout(&dry));
    assert!(!registry.tags("intric/backend").contains(&"1.0.0".to_string()));
    assert!(stdout(&run("git", &["tag"], repo)).trim().is_empty());

    // 1.0.0: every release tag is the sha- tag's manifest.
    let done = release_without_lock(repo, host, &["1.0.0", "--execute", "--json"]);
    assert_success(&done, "release 1.0.0 --execute");
    let json: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!((json["version"].as_str(), json["git_tag"].as_str()), (Some("1.0.0"), Some("v1.0.0")));
    assert_eq!(json["revision"], first.as_str());
    let mut v1 = BTreeMap::new();
    for image in json["images"].as_array().unwrap() {
        let service = image["service"].as_str().unwrap();
        let repository = format!("intric/{service}");
        assert_eq!(image["tags"], serde_json::json!(["1.0.0", "1.0", "1", "latest"]));
        let source = registry.manifest(&repository, &sha);
        for tag in ["1.0.0", "1.0", "1", "latest"] {
            assert_eq!(registry.manifest(&repository, tag), source, "{repository}:{tag} is {sha}'s manifest");
        }
        v1.insert(service.to_string(), digest(&registry, &repository, &sha));
    }
    let message = stdout(&run("git", &["tag", "-l", "--format=%(objecttype) %(contents)", "v1.0.0"], repo));
    assert!(message.starts_with("tag Release 1.0.0"), "an annotated tag with notes: {message}");
    assert!(message.contains("Features\n- api: the first release"), "{message}");

    // Again from the same commit: nothing to do, and it says so.
    let again = release_without_lock(repo, host, &["1.0.0", "--execute"]);
    assert!(!again.status.success());
    let error = stderr(&again);
    assert!(error.contains(&format!("1.0.0 is already released from {}", &first[..12])), "{error}");

    // 1.1.0-rc.1 on a new commit: its own tag only; latest and 1 stay on 1.0.0.
    change_backend(repo, "second", "fix: the second commit");
    push(repo, host);
    let second = head(repo);
    // 1.0.0 again from another commit: refused, naming the git tag and the registry's tags.
    let again = release_without_lock(repo, host, &["1.0.0", "--execute"]);
    assert!(!again.status.success());
    let error = stderr(&again);
    assert!(error.contains("git tag v1.0.0 already exists"), "{error}");
    for service in ["backend", "worker", "frontend"] {
        assert!(error.contains(&format!("{host}/intric/{service}:1.0.0 already exists in the registry")), "{error}");
    }
    let rc = release_without_lock(repo, host, &["v1.1.0-rc.1", "--execute"]);
    assert_success(&rc, "release v1.1.0-rc.1 --execute");
    let v2 = digest(&registry, "intric/backend", &format!("sha-{}", &second[..12]));
    assert_ne!(v2, v1["backend"], "the second commit's backend is another image");
    assert_eq!(digest(&registry, "intric/backend", "1.1.0-rc.1"), v2);
    assert_eq!(digest(&registry, "intric/backend", "latest"), v1["backend"], "an rc does not move latest");
    assert_eq!(digest(&registry, "intric/backend", "1"), v1["backend"], "an rc does not move 1");

    // 1.1.0 of the same commit moves them.
    assert_success(&release_without_lock(repo, host, &["1.1.0", "--execute"]), "release 1.1.0 --execute");
    for tag in ["1.1.0", "1.1", "1", "latest"] {
        assert_eq!(digest(&registry, "intric/backend", tag), v2, "{tag}");
    }

    // A backport 1.0.1 on a release branch, built by the release itself (--build): it moves
    // 1.0 only, neither 1 nor latest.
    run("git", &["checkout", "-q", "-b", "release/1.0", "v1.0.0"], repo);
    change_backend(repo, "backport", "fix: the backport");
    let refused = release_without_lock(repo, host, &["1.0.1"]);
    assert!(!refused.status.success());
    let error = stderr(&refused);
    assert!(error.contains("branch release/1.0 is not allowed to release"), "{error}");
    assert!(error.contains("intric/backend:sha-") && error.contains("or pass --build"), "{error}");
    let backport =
        release_without_lock(repo, host, &["1.0.1", "--allow-branch", "release/*", "--build", "--execute", "--json"]);
    assert_success(&backport, "release 1.0.1 --build --execute on release/1.0");
    let v3 = digest(&registry, "intric/backend", &sha_tag(repo));
    assert!(v3 != v1["backend"] && v3 != v2);
    assert_eq!(digest(&registry, "intric/backend", "1.0.1"), v3);
    assert_eq!(digest(&registry, "intric/backend", "1.0"), v3);
    assert_eq!(digest(&registry, "intric/backend", "1"), v2, "a backport does not move 1");
    assert_eq!(digest(&registry, "intric/backend", "latest"), v2, "a backport does not move latest");

    // A dirty tree on a branch that is not allowed: every reason at once, nothing changed.
    run("git", &["checkout", "-q", "-b", "topic"], repo);
    std::fs::write(repo.join("scratch.txt"), "not committed\n").unwrap();
    let before = registry.tags("intric/backend");
    let refused = release_without_lock(repo, host, &["1.2.0", "--execute", "--allow-branch", "release/*"]);
    assert!(!refused.status.success());
    let error = stderr(&refused);
    assert!(error.contains("cannot release 1.2.0:"), "{error}");
    assert!(error.contains("the working tree is dirty"), "{error}");
    assert!(error.contains("branch topic is not allowed to release: release from main or a branch matching release/*"));
    assert_eq!(registry.tags("intric/backend"), before, "nothing was tagged");
    assert!(!stdout(&run("git", &["tag"], repo)).contains("v1.2.0"));
    std::fs::remove_file(repo.join("scratch.txt")).unwrap();

    // The tag pipeline of v1.1.0 (GitHub Actions, then GitLab CI): the release is already
    // promoted, so the stage verifies, re-puts the floating tags and reports.
    run("git", &["checkout", "-q", "--detach", "v1.1.0"], repo);
    let outputs = tempfile::tempdir().unwrap();
    let (output_file, summary_file) = (outputs.path().join("output"), outputs.path().join("summary"));
    let mut github = lab_base_env();
    github.extend(
        [
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REF", "refs/tags/v1.1.0"),
            ("GITHUB_OUTPUT", output_file.to_str().unwrap()),
            ("GITHUB_STEP_SUMMARY", summary_file.to_str().unwrap()),
        ]
        .map(|(key, value)| (key.to_string(), value.to_string())),
    );
    let pipeline = xtask(&["ci", "--repo", repo.to_str().unwrap(), "--registry", host], &github, repo);
    assert_success(&pipeline, "ci (auto: release) on GitHub");
    let output = std::fs::read_to_string(&output_file).unwrap();
    assert!(output.starts_with("stage=release\nversion=1.1.0\n"), "{output}");
    assert!(output.contains(&format!("revision={second}\nimage_tag=1.1.0\n")), "{output}");
    assert!(output.contains("\n1.1.0\n1.1\n1\nlatest\n"), "{output}");
    let summary = std::fs::read_to_string(&summary_file).unwrap();
    assert!(summary.contains("### cargo xtask ci: release stage") && summary.contains("`latest`"), "{summary}");
    assert_eq!(digest(&registry, "intric/backend", "latest"), v2);

    let gitlab: Vec<(String, String)> = lab_base_env()
        .into_iter()
        .chain([("GITLAB_CI", "true"), ("CI_COMMIT_TAG", "v1.1.0")].map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let pipeline =
        xtask(&["ci", "--stage", "release", "--repo", repo.to_str().unwrap(), "--registry", host], &gitlab, repo);
    assert_success(&pipeline, "ci --stage release on GitLab");
    let dotenv = std::fs::read_to_string(repo.join("xtask-ci.env")).unwrap();
    assert!(dotenv.starts_with("STAGE=release\nVERSION=1.1.0\n"), "{dotenv}");
    assert!(dotenv.contains("IMAGE_TAG=1.1.0\nIMAGE_TAGS=1.1.0,1.1,1,latest\n"), "{dotenv}");
    assert!(dotenv.contains(&format!("BACKEND_IMAGE={host}/intric/backend\n")), "{dotenv}");
}

#[test]
fn with_the_registry_down_every_offline_guard_is_listed_at_once_and_fast() {
    // No engine needed: git and a registry port where nothing listens.
    let repo = tempfile::tempdir().unwrap();
    let repo = repo.path();
    git(repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README"), "a release test\n").unwrap();
    commit_all(repo, "the first commit");
    git(repo, &["tag", "-a", "-m", "Release 1.0.0", "v1.0.0"]);
    git(repo, &["checkout", "-q", "-b", "topic"]);
    std::fs::write(repo.join("README"), "not committed\n").unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    for (version, guard) in [
        ("one", "`one` is not a semver version"),
        ("0.9.0", "0.9.0 would start the 0.9 line below the newest release 1.0.0"),
    ] {
        let started = std::time::Instant::now();
        let args = ["release", version, "--repo", repo.to_str().unwrap(), "--registry", &dead];
        let refused = xtask(&args, &[], repo);
        let elapsed = started.elapsed();
        assert!(!refused.status.success());
        let error = stderr(&refused);
        for reason in [
            guard,
            "the working tree is dirty",
            "branch topic is not allowed to release",
            &format!("registry {dead} is unreachable"),
        ] {
            assert!(error.contains(reason), "{version}: missing {reason:?} in:\n{error}");
        }
        assert!(elapsed < std::time::Duration::from_secs(2), "{version}: took {elapsed:?}, retrying in planning?");
    }
}

#[test]
fn on_the_nexus_look_alike_builds_and_releases_run_again_and_unmovable_floating_tags_are_known_first() {
    let Some(_serial) = lab_test() else { return };
    nexus_lab();
    // The lab's login opens the look-alike too; the registry is given with --registry.
    let env = lab_login_env();
    let name = unique_name("xtask-e2e");
    let _images = ["dev", "release"].map(|repository| LocalImagesUnder(format!("{NEXUS}/{repository}/{name}/")));
    let repo = snapshot();
    let repo = repo.path();

    // A build that changes nothing pushes nothing new, in either repository: in `release`
    // (redeploy disabled) the tags it finds in place are left alone, not PUT again.
    for repository in ["dev", "release"] {
        let registry = format!("{NEXUS}/{repository}/{name}");
        for run in ["first", "second (a no-op)"] {
            let (output, _) = build(repo, &["--push", "--registry", &registry], &env);
            assert_success(&output, &format!("the {run} build --push --registry {registry}"));
        }
    }

    // A release cut off after two tag writes: the version tags of two images are in place.
    let registry = format!("{NEXUS}/release/{name}");
    let release_args = ["1.0.0", "--execute", "--no-lock", "--registry", &registry];
    let cut = {
        let _fault = PutFault::after(NEXUS, 2);
        release(repo, &release_args, &env)
    };
    assert!(!cut.status.success(), "the release was cut off:\n{}", stderr(&cut));
    let error = stderr(&cut);
    assert!(
        error.contains(
            "release 1.0.0 stopped part-way: 2 of 12 tags are in place (intric/backend:1.0.0, intric/worker:1.0.0)"
        ),
        "{error}"
    );
    assert!(error.contains("run the same release again to finish it"), "{error}");
    assert!(stdout(&run("git", &["tag"], repo)).trim().is_empty(), "git is not tagged after a cut-off release");

    // Run again: the tags in place are left alone (the repository would refuse them), the rest
    // are written, and git is tagged.
    let again = release(repo, &release_args, &env);
    assert_success(&again, "the same release, run again");
    assert!(stdout(&again).contains("released 1.0.0"), "{}", stdout(&again));
    assert!(
        stderr(&again).contains(
            "note: finishing an earlier run of this release: intric/backend:1.0.0, intric/worker:1.0.0 already hold"
        ),
        "{}",
        stderr(&again)
    );
    assert_eq!(stdout(&run("git", &["tag"], repo)).trim(), "v1.0.0");
    // Read back through the registry behind the look-alike, with code of the test's own.
    let upstream = LabRegistry::new();
    let sha = sha_tag(repo);
    for service in ["backend", "worker", "frontend"] {
        let repository = format!("release/{name}/intric/{service}");
        let source = upstream.manifest(&repository, &sha);
        for tag in ["1.0.0", "1.0", "1", "latest"] {
            assert_eq!(upstream.manifest(&repository, tag), source, "{repository}:{tag} is {sha}'s manifest");
        }
    }

    // 1.1.0 of a new commit would move `1` and `latest` of the backend and worker, which the
    // repository refuses: known before anything is written, and left alone when asked.
    // The new images are built by the release (--build pushes the sha- tag only: a build's
    // dev-latest could not move in this repository either).
    change_backend(repo, &name, "feat: the second release");
    let second = ["1.1.0", "--build", "--execute", "--no-lock", "--registry", &registry];
    let before = upstream.tags(&format!("release/{name}/intric/backend"));
    let refused = release(repo, &second, &env);
    assert!(!refused.status.success());
    let error = stderr(&refused);
    assert!(error.contains("does not allow redeploy, so these floating tags cannot move to it"), "{error}");
    assert!(error.contains("intric/backend:1 (on ") && error.contains("intric/worker:latest (on "), "{error}");
    assert!(error.contains("No release tag was written") && error.contains("--skip-immutable-floating"), "{error}");
    let after: Vec<String> = upstream
        .tags(&format!("release/{name}/intric/backend"))
        .into_iter()
        .filter(|tag| !before.contains(tag))
        .collect();
    assert!(after.contains(&sha_tag(repo)), "the build pushed HEAD's image: {after:?}");
    assert!(
        after.iter().all(|tag| tag.starts_with("sha-") || tag.starts_with("inputs-")),
        "the build's tags, and no release tag: {after:?}"
    );
    let skipping = [&second[..], &["--skip-immutable-floating"]].concat();
    let done = release(repo, &skipping, &env);
    assert_success(&done, "release 1.1.0 --skip-immutable-floating");
    assert!(stderr(&done).contains("note: leaving intric/backend:1 (on "), "{}", stderr(&done));
    let backend = format!("release/{name}/intric/backend");
    let new = upstream.manifest(&backend, &sha_tag(repo));
    assert_eq!(upstream.manifest(&backend, "1.1.0"), new);
    assert_eq!(upstream.manifest(&backend, "1.1"), new);
    assert_eq!(upstream.manifest(&backend, "latest"), upstream.manifest(&backend, "1.0.0"), "latest stays");
}
