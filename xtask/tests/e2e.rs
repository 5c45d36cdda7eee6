//! End-to-end tests on the offline lab: a real Docker engine, the lab's authenticated registry,
//! and the stack's real Postgres and Redis. They build the real images from a snapshot of this
//! repository, push them, run the compose stack and talk to it over HTTP.
//!
//! They need a Docker engine. With `CI` set a missing engine fails them; elsewhere they print
//! why they did nothing. They share one lab and run one at a time. Their compose project
//! (`intric-e2e`, ports 23000 and 28123), the cache test's namespace (`e2e-cache-<pid>` below the
//! lab registry) and the second registry (container `intric-e2e-flaky-registry`, port 5055) are
//! their own; the project, the registry and the local images of both are removed at the end.

mod common;

use std::path::Path;
use std::time::Instant;

use common::site::{Mode, Site, lab_settings};
use common::*;

#[test]
fn stack_builds_starts_healthy_serves_and_keeps_data() {
    let Some(_serial) = lab_test() else { return };
    let started = Instant::now();
    let repo = snapshot();
    let env = lab_env();

    let check = xtask(&["check"], &env, repo.path());
    assert_success(&check, "check (backend tests and frontend checks in their test stages)");
    // Each check's image goes as it passes: checking leaves no untagged image behind.
    for image in ["xtask-check/backend", "xtask-check/frontend"] {
        let inspect = run("docker", &["image", "inspect", image], repo.path());
        assert!(!inspect.status.success(), "{image} is still in the engine after check");
    }

    let (output, summary) = build(repo.path(), &["--push", "--tag", "e2e-stack"], &env);
    assert_success(&output, "build --push");
    let summary = summary.expect("build --json prints JSON");
    assert_eq!(results(&summary).len(), 3);
    // Declared before the stack, so dropped after it: its containers go first, then the images.
    let registry = &lab()["NEXUS_REGISTRY"];
    let stack_tags = ["backend", "worker", "frontend"]
        .map(|service| LocalImagesUnder(format!("{registry}/intric/{service}:e2e-stack")));
    let _this_runs_tags: Vec<LocalImagesUnder> = stack_tags.into_iter().chain(inputs_tags(&summary)).collect();

    let lab = lab();
    let stack = Site::new("intric-e2e", Mode::Compose);
    let mut settings = lab_settings(lab, &lab["NEXUS_REGISTRY"], "e2e-stack", "sk-e2e-not-a-real-key-0000");
    settings.extend([("FRONTEND_PORT", "23000"), ("BACKEND_PORT", "28123")]);
    stack.init_env(&settings);

    let first_init = stack.compose_ok(&["--profile", "init", "run", "--rm", "db-init"]);
    assert!(first_init.contains("seeded tenant default"), "{first_init}");
    stack.compose_ok(&["up", "--detach", "--wait", "--wait-timeout", "300"]);
    let states = stack.compose_ok(&["ps", "--format", "{{.Service}} {{.Health}}"]);
    for service in ["db", "redis", "backend", "worker", "frontend"] {
        assert!(states.lines().any(|line| line == format!("{service} healthy")), "{service} is not healthy:\n{states}");
    }

    let (status, page) = http("GET", "http://127.0.0.1:23000/", None);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<title>Intric</title>") && page.contains("id=\"app-root\""), "{page}");
    let (status, health) = http("GET", "http://127.0.0.1:23000/api/v1/healthz", None);
    assert_eq!(status, 200, "healthz through nginx: {health}");
    let (status, version) = http("GET", "http://127.0.0.1:23000/api/v1/version", None);
    assert_eq!(status, 200);
    let revision = summary["images"][0]["inputs_digest"].as_str().unwrap();
    assert!(!revision.is_empty() && version.contains("\"revision\""), "{version}");

    let (status, created) = http("POST", "http://127.0.0.1:23000/api/v1/jobs", Some(r#"{"text":"hello intric e2e"}"#));
    assert_eq!(status, 202, "{created}");
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let job_url = format!("http://127.0.0.1:23000/api/v1/jobs/{}", created["id"].as_str().unwrap());
    let done = eventually(60, "the worker to complete the job", || {
        let (status, body) = http("GET", &job_url, None);
        let job: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 200 && job["status"] == "done").then_some(job)
    });
    assert!(done["result"].is_object() || done["result"].is_string(), "{done}");

    for service in ["backend", "worker", "frontend"] {
        let image = format!("{}/intric/{service}:e2e-stack", lab["NEXUS_REGISTRY"]);
        let user = run("docker", &["image", "inspect", "--format", "{{.Config.User}}", &image], Path::new("."));
        let user = String::from_utf8_lossy(&user.stdout).trim().to_string();
        assert!(!user.is_empty() && user != "root" && user != "0", "{service} runs as {user:?}");
    }

    let tenants_before = stack.sql("SELECT count(*) FROM tenants");
    let second_init = stack.compose_ok(&["--profile", "init", "run", "--rm", "db-init"]);
    assert!(second_init.contains("seed already present"), "{second_init}");
    assert_eq!(stack.sql("SELECT count(*) FROM tenants"), tenants_before);

    stack.compose_ok(&["stop"]);
    stack.compose_ok(&["up", "--detach", "--wait", "--wait-timeout", "300"]);
    let (status, body) = http("GET", &job_url, None);
    assert_eq!(status, 200, "the job survives a restart: {body}");
    assert!(body.contains("\"done\""), "{body}");
    eprintln!("timing: the stack end-to-end test took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn build_pushes_labels_skips_unchanged_and_rebuilds_what_changed() {
    let Some(_serial) = lab_test() else { return };
    let repo = snapshot();
    // A change no earlier build had, so the backend and worker are really built this time.
    std::fs::write(
        repo.path().join("backend/intric/e2e_marker.py"),
        format!("RUN = {:?}\n", std::time::SystemTime::now()),
    )
    .unwrap();
    commit_all(repo.path(), "a backend change of this run");
    let env = lab_env();
    let registry = LabRegistry::new();

    let sha_tag = sha_tag(repo.path());
    let mut this_runs_tags = local_tags(&sha_tag);
    let (output, summary) = build(repo.path(), &["--push"], &env);
    assert_success(&output, "build --push");
    let summary = summary.unwrap();
    this_runs_tags.extend(inputs_tags(&summary));
    let revision = head(repo.path());
    let first = results(&summary);
    assert_ne!(first["backend"], "skipped", "{first:?}");
    assert_ne!(first["worker"], "skipped", "{first:?}");
    for image in summary["images"].as_array().unwrap() {
        let service = image["service"].as_str().unwrap();
        let repository = format!("intric/{service}");
        let tags = registry.tags(&repository);
        let inputs_tag = format!("inputs-{}", &image["inputs_digest"].as_str().unwrap()[..24]);
        for tag in [sha_tag.as_str(), "dev-latest", inputs_tag.as_str()] {
            assert!(tags.contains(&tag.to_string()), "{repository} lacks {tag}: {tags:?}");
        }
        let labels = registry.labels(&repository, &sha_tag);
        // A reused image keeps the labels of the commit that built it.
        if image["result"] != "skipped" {
            assert_eq!(labels["org.opencontainers.image.revision"], revision.as_str(), "{labels}");
        }
        assert_eq!(labels["org.opencontainers.image.revision"].as_str().unwrap().len(), 40, "{labels}");
        assert_eq!(labels["org.opencontainers.image.title"], format!("intric-{service}"));
        assert_eq!(labels["org.intric.inputs-digest"], image["inputs_digest"]);
        assert!(labels["org.opencontainers.image.created"].as_str().unwrap().ends_with('Z'));
        assert!(labels["org.opencontainers.image.version"].as_str().unwrap().starts_with("0.0.0-dev."));
    }

    // Nothing changed: nothing is built, and it is quick.
    let started = Instant::now();
    let (output, summary) = build(repo.path(), &["--push"], &env);
    assert_success(&output, "second build --push");
    let seconds = started.elapsed().as_secs_f64();
    assert!(results(&summary.unwrap()).values().all(|result| result == "skipped"));
    eprintln!("timing: a no-op build --push took {seconds:.1} s");

    // One backend source file changed: backend and worker are rebuilt, the frontend is reused.
    let main_py = repo.path().join("backend/intric/main.py");
    let mut source = std::fs::read_to_string(&main_py).unwrap();
    source.push_str("\n# e2e: a change to one backend source file\n");
    std::fs::write(&main_py, source).unwrap();
    commit_all(repo.path(), "change one backend file");
    let new_sha_tag = common::sha_tag(repo.path());
    this_runs_tags.extend(local_tags(&new_sha_tag));
    let (output, summary) = build(repo.path(), &["--push"], &env);
    assert_success(&output, "build --push after a backend change");
    let summary = summary.unwrap();
    this_runs_tags.extend(inputs_tags(&summary));
    let results = results(&summary);
    assert_eq!(results["frontend"], "skipped", "{results:?}");
    assert_ne!(results["backend"], "skipped", "{results:?}");
    assert_ne!(results["worker"], "skipped", "{results:?}");
    assert!(registry.tags("intric/frontend").contains(&new_sha_tag), "the reused frontend got the new tag");
    assert_eq!(
        registry.manifest("intric/frontend", &new_sha_tag),
        registry.manifest("intric/frontend", &sha_tag),
        "the reused frontend is the same manifest"
    );
}

/// Guards that remove the local tags a build of the commit tagged `sha_tag` leaves in the lab's
/// shared `intric/` namespace (other runs' tags stay): that `sha-` tag and `dev-latest`, which
/// the registry keeps for the next build. See [`inputs_tags`] for the rest.
fn local_tags(sha_tag: &str) -> Vec<LocalImagesUnder> {
    let registry = &lab()["NEXUS_REGISTRY"];
    let services = ["backend", "worker", "frontend"];
    let tags = services.into_iter().flat_map(|service| [sha_tag, "dev-latest"].map(|tag| (service, tag)));
    tags.map(|(service, tag)| LocalImagesUnder(format!("{registry}/intric/{service}:{tag}"))).collect()
}

/// Guards that remove the local `inputs-` tags of the images a build's `summary` lists.
fn inputs_tags(summary: &serde_json::Value) -> Vec<LocalImagesUnder> {
    let registry = &lab()["NEXUS_REGISTRY"];
    let images = summary["images"].as_array().unwrap();
    images
        .iter()
        .map(|image| {
            let digest = &image["inputs_digest"].as_str().unwrap()[..24];
            LocalImagesUnder(format!("{registry}/intric/{}:inputs-{digest}", image["service"].as_str().unwrap()))
        })
        .collect()
}

#[test]
fn fresh_runners_take_unchanged_steps_from_cache_build_after_build() {
    let Some(_serial) = lab_test() else { return };
    let repo = snapshot();
    let env = lab_env();
    // Repositories of this run's own, so the first build starts from nothing.
    let namespace = format!("e2e-cache-{}", std::process::id());
    let registry = format!("127.0.0.1:5000/{namespace}");
    let _images = LocalImagesUnder(format!("{registry}/"));
    let log = repo.path().join("target/xtask/logs/backend.log");
    // Three commits in a row, each built on a runner that has none of the backend's images and
    // no build cache. BuildKit gives an image built from imported cache an inline cache that
    // lacks the imported steps, so without the `inline-cache` tag every other build would
    // install the dependencies again.
    let lab_registry = LabRegistry::new();
    let repository = format!("{namespace}/intric/backend");
    let layers = |tag: &str| lab_registry.manifest(&repository, tag)["layers"].clone();
    for round in 1..=3 {
        std::fs::write(
            repo.path().join("backend/intric/e2e_marker.py"),
            format!("RUN = {:?}\n", (round, std::time::SystemTime::now())),
        )
        .unwrap();
        commit_all(repo.path(), "a backend change");
        fresh_runner(&format!("{registry}/intric/backend"));
        // BuildKit's cache is what is tested: the source-only fast path would not build at all.
        let args = ["--push", "--registry", &registry, "--no-fast-path", "backend"];
        let (output, summary) = build(repo.path(), &args, &env);
        assert_success(&output, &format!("build --push --no-fast-path backend, round {round}"));
        assert_eq!(results(&summary.unwrap())["backend"], "built");
        let text = std::fs::read_to_string(&log).unwrap();
        let installed = text.contains("Successfully installed");
        assert_eq!(installed, round == 1, "round {round}: dependencies installed: {installed}\n{text}");
        // The mechanism under test: after each build the tag names an image with that build's
        // layers. Rounds 2 and 3 took steps from imported cache, whose results BuildKit leaves
        // out of the image's inline cache, so the tag names a copy with them filled in (as it
        // does for round 1 when BuildKit left some out of a build from nothing).
        let said: Vec<&str> = text.lines().filter(|line| line.contains("inline-cache")).collect();
        let sha_tag = common::sha_tag(repo.path());
        assert_eq!(
            layers("inline-cache"),
            layers(&sha_tag),
            "round {round}: the tag is not on this build's layers: {said:#?}"
        );
        let completed = said.iter().any(|line| line.contains("with the results BuildKit left out of its inline cache"));
        assert!(completed || round == 1, "round {round}: {said:#?}");
    }

    // A build that does not push (a PR's) takes the same cache from the registry.
    std::fs::write(repo.path().join("backend/intric/e2e_marker.py"), "RUN = 'a pull request'\n").unwrap();
    commit_all(repo.path(), "a pull request's change");
    fresh_runner(&format!("{registry}/intric/backend"));
    let (output, _) = build(repo.path(), &["--registry", &registry, "backend"], &env);
    assert_success(&output, "build backend without --push");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("Successfully installed"), "the dependencies did not come from cache:\n{text}");
}

/// What a fresh CI runner has of `repository`: no local image, and no BuildKit cache at all.
fn fresh_runner(repository: &str) {
    let listed = run("docker", &["images", "--format", "{{.Repository}}:{{.Tag}}", repository], Path::new("."));
    let images: Vec<&str> = std::str::from_utf8(&listed.stdout).unwrap().lines().collect();
    if !images.is_empty() {
        let removed = run("docker", &[&["image", "rm", "--force"][..], &images].concat(), Path::new("."));
        assert_success(&removed, "docker image rm");
    }
    // `builder prune` needs buildx with a 23+ client; Debian's 20.10 client has it built in.
    // A record still held right after another build (its lease) survives a prune, and a step
    // taken from it would make this "fresh" runner's build partly cached: prune until the
    // engine counts none.
    let prune = ["builder", "prune", "--all", "--force"];
    let records = || {
        let listed = run("docker", &["system", "df", "--format", "{{.Type}}={{.TotalCount}}"], Path::new("."));
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("Build Cache=").map(|count| count.trim().to_string()))
            .unwrap_or_default()
    };
    let mut left = String::new();
    for _ in 0..30 {
        let pruned =
            ["docker", "/usr/bin/docker"].iter().any(|client| run(client, &prune, Path::new(".")).status.success());
        assert!(pruned, "neither docker nor /usr/bin/docker could prune the build cache");
        left = records();
        if left == "0" {
            return;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    panic!("the build cache still has {left} records after 30 prunes: not a fresh runner");
}

#[test]
fn a_wrong_password_fails_in_one_line_without_showing_it_or_tagging_anything() {
    let Some(_serial) = lab_test() else { return };
    let repo = snapshot();
    let canary = "canary-Pw-7f3a9e1c";
    let mut env = lab_env();
    env.retain(|(key, _)| key != "NEXUS_PASSWORD");
    env.push(("NEXUS_PASSWORD".into(), canary.into()));
    let registry = LabRegistry::new();
    let before: Vec<Vec<String>> =
        ["backend", "worker", "frontend"].iter().map(|s| registry.tags(&format!("intric/{s}"))).collect();

    let (output, _) = build(repo.path(), &["--push", "--tag", "must-not-appear"], &env);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(&format!("login to {} as lab failed", lab()["NEXUS_REGISTRY"])), "{stderr}");
    assert!(!stderr.contains(canary) && !stdout.contains(canary), "the password leaked:\n{stdout}\n{stderr}");
    for log in std::fs::read_dir(repo.path().join("target/xtask/logs")).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        assert!(
            !text.contains(canary) && !text.contains(&lab()["NEXUS_PASSWORD"]),
            "{} holds a password",
            log.path().display()
        );
    }
    let after: Vec<Vec<String>> =
        ["backend", "worker", "frontend"].iter().map(|s| registry.tags(&format!("intric/{s}"))).collect();
    assert_eq!(before, after, "nothing was tagged");
}

#[test]
fn a_registry_that_stops_mid_way_fails_clearly_after_retries() {
    let Some(_serial) = lab_test() else { return };
    // A registry of its own, so stopping it disturbs no other test.
    let own = OwnRegistry::start("intric-e2e-flaky-registry", 5055);
    let _images = LocalImagesUnder(format!("{}/", own.host));
    let repo = snapshot();
    // A change of its own, so the backend is really built and then pushed.
    std::fs::write(repo.path().join("backend/intric/flaky_marker.py"), "MARKER = 'flaky registry test'\n").unwrap();
    commit_all(repo.path(), "a change only this test builds");
    let registry = own.host.clone();
    let args = ["build", "backend", "--push", "--registry", &registry, "--repo", repo.path().to_str().unwrap()];
    let child = xtask_command(&args, &lab_base_env(), repo.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop the registry once the build is under way: the push that follows finds it gone.
    let log = repo.path().join("target/xtask/logs/backend.log");
    eventually(120, "the backend build to start", || {
        std::fs::read_to_string(&log).ok().filter(|text| text.contains(&registry) && text.contains("$ ")).map(|_| ())
    });
    assert_success(&own.stop(), "stopping the second registry");
    let started = Instant::now();
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error = stderr.lines().find(|line| line.starts_with("error:")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(error.contains("gave up after 4 attempts") && error.contains(&registry), "{error}");
    eprintln!("timing: failed {:.1} s after the registry stopped", started.elapsed().as_secs_f64());
}
