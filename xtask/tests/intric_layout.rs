//! The xtask dropped into a repository laid out like the published Intric monorepo
//! (tests/fixtures/intric-layout: compose at the root without `name:`, the worker running the
//! backend image, unnamed final stages, no `.dockerignore`): `tags` works, `build --dry-run`
//! plans the two images compose builds with no `--target`, bad targets and ignored build args
//! are reported before anything runs, and on the lab a real `build --push` into a namespace
//! builds, skips what did not change, and rebuilds what stands on an updated base image. With
//! our real services in that layout (tests/fixtures/published-deploy), `env init` from the plain
//! template, `env check` and a real `deploy` without `--project` run the stack compose names
//! after the directory, the worker from the backend image with its own command.
//!
//! Dry runs need the Docker client only (compose reads the file); the push and the deploy need
//! the lab. The deploy's ports (24750, 29750) and namespace (`e2e-published-<pid>`) are its own.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{
    LabRegistry, LocalImagesUnder, assert_success, build, commit_all, docker_available, docker_login, git, lab,
    lab_env, results, serial, xtask,
};

/// A fresh one-commit git repository holding the fixture, with `changes` applied to its files
/// (relative path, text replaced, replacement) before the commit.
fn published_layout(changes: &[(&str, &str, &str)]) -> tempfile::TempDir {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/intric-layout");
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture, dir.path());
    for (file, from, to) in changes {
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} holds no {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
    git(dir.path(), &["init", "-q", "-b", "main"]);
    commit_all(dir.path(), "the published layout");
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `build --dry-run` against a registry that refuses connections, with `env`.
fn dry_run(repo: &Path, env: &[(String, String)]) -> Output {
    xtask(&["build", "--dry-run", "--repo", repo.to_str().unwrap(), "--registry", "127.0.0.1:9"], env, repo)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn tags_work_in_the_published_layout() {
    let repo = published_layout(&[]);
    let output = xtask(&["tags", "--repo", repo.path().to_str().unwrap()], &[], repo.path());
    assert_success(&output, "tags");
    let tags = text(&output.stdout);
    assert!(tags.lines().any(|tag| tag.starts_with("sha-") && tag.len() == 16), "{tags}");
    assert!(tags.lines().any(|tag| tag == "dev-latest"), "main gets dev-latest: {tags}");
}

#[test]
fn a_dry_run_plans_the_two_images_compose_builds_with_no_target() {
    if !docker_available() {
        return;
    }
    let repo = published_layout(&[]);
    let output = dry_run(repo.path(), &[]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_success(&output, "build --dry-run");
    let root = repo.path().display();
    for service in ["backend", "frontend"] {
        assert!(stdout.contains(&format!("\n{service} (inputs ")), "{stdout}");
        assert!(
            stdout.contains(&format!("--file {root}/{service}/Dockerfile --tag 127.0.0.1:9/intric/{service}:sha-")),
            "{stdout}"
        );
    }
    assert!(!stdout.contains("worker"), "the worker runs the backend image; there is no worker image:\n{stdout}");
    assert!(!stdout.contains("--target"), "unnamed final stages: no --target\n{stdout}");
    assert!(stdout.contains("--build-arg PYTHON_IMAGE="), "compose's build args: {stdout}");
    assert!(!stderr.contains("warning"), "every build arg is declared: {stderr}");
}

#[test]
fn a_missing_target_is_one_line_naming_the_dockerfile_and_its_stages() {
    if !docker_available() {
        return;
    }
    let repo = published_layout(&[(
        "docker-compose.yml",
        "      context: backend\n",
        "      context: backend\n      target: test\n",
    )]);
    let output = dry_run(repo.path(), &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(
            "image backend: backend/Dockerfile has no stage \"test\"; its stages: builder, an unnamed final stage"
        ),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "no plan: {}", text(&output.stdout));
}

#[test]
fn a_build_arg_the_dockerfile_does_not_declare_is_a_warning() {
    if !docker_available() {
        return;
    }
    // The published backend Dockerfile names its base outright, with no ARG for it.
    let repo = published_layout(&[
        (
            "backend/Dockerfile",
            "ARG PYTHON_IMAGE=python:3.11-slim-bullseye\nFROM --platform=linux/amd64 ${PYTHON_IMAGE} as builder",
            "FROM --platform=linux/amd64 python:3.11-slim-bullseye as builder",
        ),
        (
            "backend/Dockerfile",
            "from --platform=linux/amd64 ${PYTHON_IMAGE}",
            "from --platform=linux/amd64 python:3.11-slim-bullseye",
        ),
    ]);
    let output = dry_run(repo.path(), &[]);
    let stdout = text(&output.stdout);
    assert_success(&output, "build --dry-run");
    assert!(
        stdout.contains("warning: PYTHON_IMAGE is ignored by backend/Dockerfile: it has no ARG PYTHON_IMAGE"),
        "{stdout}"
    );
}

#[test]
fn check_skips_an_image_without_tests_and_checks_the_frontend_build() {
    if !docker_available() {
        return;
    }
    let repo = published_layout(&[]);
    let compose = repo.path().join("docker-compose.yml");
    let output = xtask(&["check", "--dry-run", "--compose", compose.to_str().unwrap()], &[], repo.path());
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_success(&output, "check --dry-run");
    assert!(stderr.contains("warning: backend is not checked:"), "{stderr}");
    assert!(
        stderr.contains("has no `test` or `build` stage (its stages: builder, an unnamed final stage)"),
        "{stderr}"
    );
    let frontend = stdout.lines().find(|line| line.contains("--target build")).unwrap_or_default();
    assert!(frontend.contains("--build-arg NODE_IMAGE="), "{stdout}");
    assert!(frontend.ends_with(&format!(" {}/frontend", repo.path().display())), "{stdout}");
    assert_eq!(stdout.lines().filter(|line| line.contains(" build ")).count(), 1, "only the frontend: {stdout}");
}

fn docker(args: &[&str], env: &[(&str, &str)]) {
    let output = Command::new("docker").args(args).envs(env.iter().copied()).output().unwrap();
    assert_success(&output, &format!("docker {}", args.join(" ")));
}

#[test]
fn a_push_into_a_lab_namespace_builds_skips_and_rebuilds_on_a_new_base() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let lab = lab();
    let host = lab["NEXUS_REGISTRY"].clone();
    let namespace = format!("e2e-layout-{}", std::process::id());
    let registry = format!("{host}/{namespace}");
    let _images = LocalImagesUnder(format!("{registry}/"));
    docker_login(&host);
    // The backend's base: the lab's Python stand-in under a tag of this test's own, so that
    // moving the tag is an updated base nobody else sees.
    let base = format!("{registry}/python:base");
    docker(&["tag", &lab["PYTHON_IMAGE"], &base], &[]);
    docker(&["push", &base], &[]);
    let mut env = lab_env();
    env.push(("PYTHON_IMAGE".into(), base.clone()));
    let repo = published_layout(&[]);
    let push = |what: &str| {
        let (output, summary) = build(repo.path(), &["--push", "--registry", &registry], &env);
        assert_success(&output, what);
        (results(&summary.unwrap()), text(&output.stdout))
    };

    let (first, _) = push("the first push");
    assert_eq!(first.keys().collect::<Vec<_>>(), ["backend", "frontend"], "two images, no worker");
    assert!(first.values().all(|result| result != "skipped"), "{first:?}");
    let registry_api = LabRegistry::new();
    assert!(registry_api.tags(&format!("{namespace}/intric/backend")).iter().any(|tag| tag.starts_with("sha-")));
    assert!(registry_api.tags(&format!("{namespace}/intric/worker")).is_empty(), "no worker image is pushed");

    let (unchanged, _) = push("the push of an unchanged tree");
    assert_eq!(unchanged["backend"], "skipped", "{unchanged:?}");
    assert_eq!(unchanged["frontend"], "skipped", "{unchanged:?}");

    // An updated base: same tag, new digest (one more label on the same layers).
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {}\nLABEL org.example.base-revision=2\n", lab["PYTHON_IMAGE"]),
    )
    .unwrap();
    docker(&["build", "--quiet", "--tag", &base, context.path().to_str().unwrap()], &[("DOCKER_BUILDKIT", "0")]);
    docker(&["push", &base], &[]);
    let (rebuilt, _) = push("the push after the base moved");
    assert_ne!(rebuilt["backend"], "skipped", "the backend stands on the updated base: {rebuilt:?}");
    assert_eq!(rebuilt["frontend"], "skipped", "the frontend's base did not change: {rebuilt:?}");
}

/// The published layout with our real services in it: the fixture's root files (the plain
/// `.env.production.example`, `.gitignore`), this workspace's `backend/` and `frontend/`, and a
/// compose file of the published shape at the root (tests/fixtures/published-deploy), in a
/// directory whose name compose takes as the project's.
fn published_layout_with_our_services() -> tempfile::TempDir {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ours = common::snapshot();
    let dir = tempfile::Builder::new().prefix("intric-published-").tempdir().unwrap();
    for part in ["backend", "frontend"] {
        std::fs::create_dir_all(dir.path().join(part)).unwrap();
        copy_tree(&ours.path().join(part), &dir.path().join(part));
    }
    for file in [".env.production.example", ".gitignore"] {
        std::fs::copy(fixtures.join("intric-layout").join(file), dir.path().join(file)).unwrap();
    }
    std::fs::copy(fixtures.join("published-deploy/docker-compose.yml"), dir.path().join("docker-compose.yml")).unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    commit_all(dir.path(), "the published layout with our services");
    dir
}

/// Takes the stack of `project` down with its volumes, however the test ends.
struct ComposeProject<'a> {
    dir: &'a Path,
    project: String,
}

impl Drop for ComposeProject<'_> {
    fn drop(&mut self) {
        let dir = self.dir.to_str().unwrap();
        let args = ["compose", "--project-name", &self.project, "--project-directory", dir, "--profile", "init"];
        let _ = Command::new("docker").args(args).args(["down", "--volumes", "--remove-orphans"]).output();
    }
}

#[test]
fn a_deploy_of_the_published_layout_runs_the_worker_from_the_backend_image_as_compose_names_it() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let lab = lab();
    let registry = format!("{}/e2e-published-{}", lab["NEXUS_REGISTRY"], std::process::id());
    let _images = LocalImagesUnder(format!("{registry}/"));
    let repo = published_layout_with_our_services();
    let root = repo.path();
    // Compose's own name for a project without `name:`: the directory's, lower-cased.
    let project = root.file_name().unwrap().to_str().unwrap().to_lowercase();
    let _down = ComposeProject { dir: root, project: project.clone() };

    let (output, summary) = build(root, &["--push", "--registry", &registry], &lab_env());
    assert_success(&output, "build --push of the published layout");
    let summary = summary.unwrap();
    assert_eq!(results(&summary).keys().collect::<Vec<_>>(), ["backend", "frontend"], "two images, no worker");
    let tag = summary["images"][0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|tag| tag.as_str())
        .find(|tag| tag.starts_with("sha-"))
        .unwrap_or_else(|| panic!("no sha- tag in {summary}"))
        .to_string();

    // The operator's steps: `env init` from the plain template, then this server's settings.
    let dir = root.to_str().unwrap();
    let init = xtask(&["env", "init", "--dir", dir], &[], root);
    assert_success(&init, "env init from .env.production.example");
    let env_file = root.join(".env");
    for (key, value) in [
        ("NEXUS_REGISTRY", registry.as_str()),
        ("NEXUS_USERNAME", lab["NEXUS_USERNAME"].as_str()),
        ("NEXUS_PASSWORD", lab["NEXUS_PASSWORD"].as_str()),
        ("IMAGE_TAG", tag.as_str()),
        ("POSTGRES_IMAGE", lab["POSTGRES_IMAGE"].as_str()),
        ("REDIS_IMAGE", lab["REDIS_IMAGE"].as_str()),
        ("FRONTEND_PORT", "24750"),
        ("BACKEND_PORT", "29750"),
        ("JWT_ISSUER", "intric-e2e"),
        ("API_KEY_HEADER_NAME", "X-API-Key"),
        ("OPENAI_API_KEY", "sk-published-e2e-not-a-real-key"),
    ] {
        common::set_env_var(&env_file, key, value);
    }
    let check = xtask(&["env", "check", "--dir", dir], &[], root);
    assert_success(&check, "env check");

    // No --project: the deploy is the stack `docker compose up` in this directory would be.
    let deploy = xtask(&["deploy", "--dir", dir, "--timeout", "240"], &[], root);
    assert_success(&deploy, "deploy of the published layout");
    let shown = format!("{}{}", text(&deploy.stdout), text(&deploy.stderr));
    assert!(shown.contains("never initialized: running db-init"), "{shown}");
    assert!(shown.contains(&format!("project {project}")), "the status names compose's project: {shown}");
    let (status, body) = common::http("GET", "http://127.0.0.1:24750/api/v1/healthz", None);
    assert_eq!(status, 200, "the backend through the frontend: {body}");

    // The worker runs the backend's image with its own command, and is running.
    let image_of = |service: &str| {
        let filter = format!("label=com.docker.compose.service={service}");
        let project_filter = format!("label=com.docker.compose.project={project}");
        let ids = Command::new("docker")
            .args(["ps", "--quiet", "--filter", &filter, "--filter", &project_filter])
            .output()
            .unwrap();
        let id = text(&ids.stdout).trim().to_string();
        assert!(!id.is_empty(), "no running {service} container in project {project}");
        let inspect = Command::new("docker")
            .args(["inspect", "--format", "{{.Image}} {{json .Config.Cmd}}", &id])
            .output()
            .unwrap();
        text(&inspect.stdout).trim().to_string()
    };
    let (backend, worker) = (image_of("backend"), image_of("worker"));
    assert_eq!(backend.split(' ').next(), worker.split(' ').next(), "same image: {backend} / {worker}");
    assert!(worker.contains("\"arq\""), "the worker's own command: {worker}");

    // The operator files the deploy wrote do not make the work tree dirty for the next build.
    let tags = xtask(&["tags", "--repo", dir, "--json"], &[], root);
    assert_success(&tags, "tags after the deploy");
    let tags: serde_json::Value = serde_json::from_slice(&tags.stdout).unwrap();
    assert_eq!(tags["dirty"], false, "{tags}");
}
