//! `build --dry-run` is offline and pure: against a registry that does not answer it prints its
//! plan at once, says what it cannot know, lists every bad input together, and writes nothing.
//! Runs the built binary on a fresh snapshot of the repository; needs the Docker client only
//! (the plan names the client it detected), not the lab.

mod common;

use std::time::{Duration, Instant};

use common::{docker_available, snapshot, xtask};

/// The dry run of `build` with `extra` arguments in `repo`, and how long it took.
fn dry_run(repo: &std::path::Path, extra: &[&str]) -> (std::process::Output, Duration) {
    let mut args = vec!["build", "--dry-run", "--repo", repo.to_str().unwrap()];
    args.extend_from_slice(extra);
    let started = Instant::now();
    let output = xtask(&args, &[], repo);
    (output, started.elapsed())
}

#[test]
fn a_dry_run_against_an_unreachable_registry_is_fast_and_writes_nothing() {
    if !docker_available() {
        return;
    }
    let repo = snapshot();
    // Nothing listens on port 9 (refused at once); `.invalid` never resolves.
    for registry in ["127.0.0.1:9", "registry.invalid:5000"] {
        let (output, took) = dry_run(repo.path(), &["--push", "--registry", registry]);
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{registry}: {stderr}\n{stdout}");
        assert!(took < Duration::from_secs(2), "{registry}: took {took:?}");
        assert!(stdout.contains(&format!("registry: {registry} unreachable")), "{registry}:\n{stdout}");
        for service in ["backend", "frontend"] {
            assert!(
                stdout.contains(&format!("would build unless {registry}/intric/{service}:inputs-")),
                "{registry}:\n{stdout}"
            );
            assert!(stdout.contains(&format!("push {registry}/intric/{service}:sha-")), "{registry}:\n{stdout}");
        }
        // The worker is a metadata-only stage on the backend: assembled from its manifest.
        assert!(
            stdout.contains(&format!("would derive from backend's manifest unless {registry}/intric/worker:inputs-")),
            "{registry}:\n{stdout}"
        );
        assert!(!stdout.contains(&format!("push {registry}/intric/worker:")), "{registry}:\n{stdout}");
    }
    assert!(!repo.path().join("target").exists(), "a dry run writes nothing (no target/xtask/logs)");
}

#[test]
fn a_dry_run_lists_every_bad_input_at_once() {
    if !docker_available() {
        return;
    }
    let repo = snapshot();
    std::fs::write(repo.path().join("README.md"), "changed\n").unwrap();
    let (output, took) = dry_run(
        repo.path(),
        &[
            "--push",
            "--registry",
            "127.0.0.1:9",
            "--tag",
            ".bad",
            "--secret",
            "no-equals",
            "--secret",
            "pip=XTASK_UNSET",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(output.stdout.is_empty(), "no plan for bad inputs: {}", String::from_utf8_lossy(&output.stdout));
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    for problem in
        ["working tree is dirty", "--tag \".bad\"", "--secret \"no-equals\"", "variable XTASK_UNSET is not set"]
    {
        assert!(stderr.contains(problem), "{problem}: {stderr}");
    }
}
