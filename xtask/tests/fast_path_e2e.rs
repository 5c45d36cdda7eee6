//! The fast path on the lab: a pushed worker (a metadata-only stage on the backend) is derived
//! from the backend's manifest in the registry, and is the image BuildKit's worker stage is.
//!
//! Runs on the real engine and the lab's authenticated registry (127.0.0.1:5000), in registry
//! namespaces of its own: `fast-path-e2e-<pid>` (derived) and `fast-path-e2e-<pid>-buildkit`
//! (BuildKit's worker, `--no-fast-path`). Starts no compose project and uses no host port: the
//! derived worker and a Redis run on a network of their own, `fast-path-e2e-<pid>`, as
//! containers `fast-path-e2e-<pid>-worker` and `-redis`, removed at the end as are the local
//! tags it pulled or built. With `CI` set, a missing engine fails it.
//!
//! The source swap (a backend whose trailing COPYs' sources alone changed is the previous
//! `dev-latest` with those layers replaced) is checked in namespaces `fast-path-swap-<pid>`
//! (swapped) and `fast-path-swap-<pid>-buildkit` (BuildKit, `--no-fast-path`), its worker as
//! containers `fast-path-swap-<pid>-worker` and `-redis` on a network of that name.
//!
//! The metadata of a COPY's target directory (kept where a RUN made it below, refused where the
//! replaced layer cannot say) is checked on a project of the test's own, compose project
//! `fast-path-meta` (never started), in namespaces `fast-path-meta-<pid>` and
//! `fast-path-meta-<pid>-buildkit`.

mod common;

use serde_json::Value;

use common::*;

/// What the worker's settings need to start (it reaches only Redis, at `redis`, to be healthy;
/// its Postgres engine connects on the first job, and there is none).
const WORKER_SETTINGS: [(&str, &str); 21] = [
    ("POSTGRES_USER", "intric"),
    ("POSTGRES_HOST", "db"),
    ("POSTGRES_PASSWORD", "not-used-here"),
    ("POSTGRES_PORT", "5432"),
    ("POSTGRES_DB", "intric"),
    ("REDIS_HOST", "redis"),
    ("REDIS_PORT", "6379"),
    ("UPLOAD_FILE_TO_SESSION_MAX_SIZE", "1048576"),
    ("UPLOAD_IMAGE_TO_SESSION_MAX_SIZE", "1048576"),
    ("UPLOAD_MAX_FILE_SIZE", "10485760"),
    ("TRANSCRIPTION_MAX_FILE_SIZE", "10485760"),
    ("MAX_IN_QUESTION", "1"),
    ("API_PREFIX", "/api/v1"),
    ("API_KEY_LENGTH", "64"),
    ("API_KEY_HEADER_NAME", "X-API-Key"),
    ("JWT_AUDIENCE", "fast-path-e2e"),
    ("JWT_ISSUER", "fast-path-e2e"),
    ("JWT_EXPIRY_TIME", "60"),
    ("JWT_ALGORITHM", "HS256"),
    ("JWT_SECRET", "fast-path-e2e-secret-of-enough-length-0123456789"),
    ("JWT_TOKEN_PREFIX", ""),
];

/// Containers on a network of their own, named `<prefix>-<name>`, removed (with the network)
/// when dropped, so a failing test leaves nothing running.
struct Containers {
    prefix: String,
}

impl Containers {
    fn new(prefix: &str) -> Containers {
        let containers = Containers { prefix: prefix.to_string() };
        assert_success(&run("docker", &["network", "create", prefix], &workspace()), "docker network create");
        containers
    }

    fn start(&self, args: &[&str], name: &str) {
        let name = format!("{}-{name}", self.prefix);
        let mut full = vec!["run", "--detach", "--name", &name, "--network", &self.prefix];
        full.extend_from_slice(args);
        assert_success(&run("docker", &full, &workspace()), &format!("docker run {name}"));
    }

    fn health(&self, name: &str) -> String {
        let name = format!("{}-{name}", self.prefix);
        let output = run("docker", &["inspect", "--format", "{{.State.Health.Status}}", &name], &workspace());
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn logs(&self, name: &str) -> String {
        let output = run("docker", &["logs", "--tail", "30", &format!("{}-{name}", self.prefix)], &workspace());
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for name in ["worker", "redis"] {
            run("docker", &["rm", "--force", &format!("{}-{name}", self.prefix)], &workspace());
        }
        run("docker", &["network", "rm", &self.prefix], &workspace());
    }
}

/// Runs a worker from `image` beside a Redis of its own, on the network `prefix`, until
/// Docker's healthcheck (`arq --check`, from the image's config) calls it healthy; removes both.
fn worker_becomes_healthy(prefix: &str, image: &str, what: &str) {
    let containers = Containers::new(prefix);
    containers.start(&["--network-alias", "redis", &lab()["REDIS_IMAGE"]], "redis");
    let mut worker = vec![];
    for (key, value) in WORKER_SETTINGS {
        worker.extend(["--env".to_string(), format!("{key}={value}")]);
    }
    worker.push(image.to_string());
    containers.start(&worker.iter().map(String::as_str).collect::<Vec<_>>(), "worker");
    let health = eventually(120, &format!("{what} to be healthy"), || {
        let status = containers.health("worker");
        assert_ne!(status, "unhealthy", "{}", containers.logs("worker"));
        (status == "healthy").then_some(status)
    });
    assert_eq!(health, "healthy");
}

/// Every entry of an image's filesystem (`docker create` + `docker export`), mtimes aside:
/// path, type, mode, uid, gid, size, content hash and link target, read by Python's tarfile (a
/// tar reader we did not write).
fn filesystem(image: &str, dir: &std::path::Path) -> Vec<Value> {
    let created = run("docker", &["create", image], dir);
    assert_success(&created, &format!("docker create {image}"));
    let container = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let archive = dir.join(format!("{container}.tar"));
    let exported = run("docker", &["export", "--output", archive.to_str().unwrap(), &container], dir);
    run("docker", &["rm", &container], dir);
    assert_success(&exported, &format!("docker export {image}"));
    let script = r#"
import hashlib, json, sys, tarfile
entries = []
with tarfile.open(sys.argv[1]) as archive:
    for member in archive:
        digest = None
        if member.isfile():
            digest = hashlib.sha256(archive.extractfile(member).read()).hexdigest()
        entries.append([member.name.rstrip("/"), member.type.decode(), member.mode, member.uid, member.gid,
                        member.size, digest, member.linkname])
entries.sort()
print(json.dumps(entries))
"#;
    let listed = run("python3", &["-c", script, archive.to_str().unwrap()], dir);
    std::fs::remove_file(&archive).unwrap();
    assert_success(&listed, "reading the exported filesystem");
    serde_json::from_slice::<Vec<Value>>(&listed.stdout).unwrap()
}

/// The image config fields the source swap must get right, with the diff_ids of the layers
/// below the trailing copies (theirs differ: BuildKit's tars carry other mtimes).
fn swap_essentials(config: &Value, copies: usize) -> Value {
    let mut essentials = essentials(config);
    let diff_ids = essentials["diff_ids"].as_array().unwrap().clone();
    essentials["layer_count"] = serde_json::json!(diff_ids.len());
    essentials["diff_ids"] = Value::Array(diff_ids[..diff_ids.len() - copies].to_vec());
    essentials
}

/// An image's manifest and config, read from the lab registry.
struct Pushed {
    manifest: Value,
    config: Value,
}

fn pushed(registry: &LabRegistry, repository: &str, tag: &str) -> Pushed {
    let manifest = registry.manifest(repository, tag);
    let digest = manifest["config"]["digest"].as_str().unwrap();
    let (status, body) = registry.get(&format!("/v2/{repository}/blobs/{digest}"), "*/*");
    assert_eq!(status, 200, "config of {repository}:{tag}");
    Pushed { manifest, config: serde_json::from_slice(&body).unwrap() }
}

/// Everything of a config that says what the image is and does, times aside.
fn essentials(config: &Value) -> Value {
    let settings = &config["config"];
    let history: Vec<Value> = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| serde_json::json!([entry["created_by"], entry["empty_layer"], entry["comment"]]))
        .collect();
    serde_json::json!({
        "Env": settings["Env"],
        "Cmd": settings["Cmd"],
        "Entrypoint": settings["Entrypoint"],
        "WorkingDir": settings["WorkingDir"],
        "User": settings["User"],
        "Labels": settings["Labels"],
        "ExposedPorts": settings["ExposedPorts"],
        "Healthcheck": settings["Healthcheck"],
        "StopSignal": settings["StopSignal"],
        "ArgsEscaped": settings["ArgsEscaped"],
        "Volumes": settings["Volumes"],
        "history": history,
        "diff_ids": config["rootfs"]["diff_ids"],
        "os": config["os"],
        "architecture": config["architecture"],
    })
}

/// Asserts that `<namespace>/<repository>:<tag>` (swapped: its last 3 layers the trailing
/// copies') is the image of `<namespace>-buildkit/<repository>:<tag>` (BuildKit's): the layer
/// count, the config (BuildKit's cache metadata gone) and, both pulled, the filesystem entry by
/// entry. Returns the swapped image's entries. `name` names the case in failures.
fn assert_swap_is_buildkits(
    registry: &LabRegistry,
    namespace: &str,
    repository: &str,
    tag: &str,
    dir: &std::path::Path,
    name: &str,
) -> Vec<Value> {
    let swapped = pushed(registry, &format!("{namespace}/{repository}"), tag);
    let buildkit = pushed(registry, &format!("{namespace}-buildkit/{repository}"), tag);
    let layers = |pushed: &Pushed| pushed.manifest["layers"].as_array().unwrap().len();
    assert_eq!(layers(&swapped), layers(&buildkit), "{name}: layer count");
    assert_eq!(swap_essentials(&swapped.config, 3), swap_essentials(&buildkit.config, 3), "{name}: the configs differ");
    for key in ["moby.buildkit.cache.v0", "moby.buildkit.buildinfo.v1"] {
        assert!(swapped.config.get(key).is_none(), "{name}: BuildKit's {key} is left in the swapped config");
    }

    let host = &lab()["NEXUS_REGISTRY"];
    let swapped_image = format!("{host}/{namespace}/{repository}:{tag}");
    let buildkit_image = format!("{host}/{namespace}-buildkit/{repository}:{tag}");
    for image in [&swapped_image, &buildkit_image] {
        assert_success(&run("docker", &["pull", image], dir), &format!("docker pull {image}"));
    }
    let swapped_files = filesystem(&swapped_image, dir);
    let buildkit_files = filesystem(&buildkit_image, dir);
    let differences: Vec<(&Value, &Value)> =
        swapped_files.iter().zip(&buildkit_files).filter(|(a, b)| a != b).take(10).collect();
    assert!(differences.is_empty(), "{name}: the filesystems differ: {differences:?}");
    assert_eq!(swapped_files.len(), buildkit_files.len(), "{name}: entry count");
    swapped_files
}

#[test]
fn the_derived_worker_is_buildkits_worker_stage_and_runs() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let env = lab_env();
    let host = lab()["NEXUS_REGISTRY"].clone();
    let repo = snapshot();
    let namespace = format!("fast-path-e2e-{}", std::process::id());
    let derived_registry = format!("{host}/{namespace}");
    let buildkit_registry = format!("{host}/{namespace}-buildkit");
    let _local_tags =
        [LocalImagesUnder(format!("{derived_registry}/")), LocalImagesUnder(format!("{buildkit_registry}/"))];

    let (output, summary) = build(repo.path(), &["--push", "--registry", &derived_registry, "backend", "worker"], &env);
    assert_success(&output, "build --push backend worker");
    let summary = summary.unwrap();
    assert_eq!(results(&summary)["worker"], "derived", "{summary}");
    let worker_path = summary["images"].as_array().unwrap().iter().find(|image| image["service"] == "worker").unwrap()
        ["path"]
        .clone();
    assert_eq!(worker_path, "derived from backend's manifest (metadata only)");

    // BuildKit's own worker stage of the same commit, with the backend stage from the cache the
    // first build left.
    let (output, summary) =
        build(repo.path(), &["--push", "--registry", &buildkit_registry, "--no-fast-path", "worker"], &env);
    assert_success(&output, "build --push --no-fast-path worker");
    let summary = summary.unwrap();
    assert_ne!(results(&summary)["worker"], "derived", "{summary}");
    let tag = summary["images"][0]["tags"][0].as_str().unwrap().to_string();

    let registry = LabRegistry::new();
    let derived = pushed(&registry, &format!("{namespace}/intric/worker"), &tag);
    let buildkit = pushed(&registry, &format!("{namespace}-buildkit/intric/worker"), &tag);
    assert_eq!(essentials(&derived.config), essentials(&buildkit.config), "the configs differ");
    let layers = |pushed: &Pushed| pushed.manifest["layers"].as_array().unwrap().len();
    assert_eq!(layers(&derived), layers(&buildkit));
    assert_eq!(layers(&derived), derived.config["rootfs"]["diff_ids"].as_array().unwrap().len());
    // Same diff_ids: the same uncompressed layers, so the same filesystem, file for file.
    assert_eq!(derived.config["rootfs"]["diff_ids"], buildkit.config["rootfs"]["diff_ids"]);
    let backend = pushed(&registry, &format!("{namespace}/intric/backend"), &tag);
    assert_eq!(derived.manifest["layers"], backend.manifest["layers"], "the backend's layers, not copies");

    // The engine takes the derived image (it checks the layers against the diff_ids), and a
    // container from it, beside a Redis of its own, runs the worker until Docker's healthcheck
    // (`arq --check`, from the derived config) calls it healthy.
    let image = format!("{derived_registry}/intric/worker:{tag}");
    docker_login(&host);
    assert_success(&run("docker", &["pull", &image], repo.path()), "docker pull of the derived worker");
    let inspect = run("docker", &["image", "inspect", "--format", "{{json .Config.Healthcheck}}", &image], repo.path());
    assert_success(&inspect, "docker image inspect");
    let healthcheck: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(healthcheck["Test"], serde_json::json!(["CMD", "arq", "--check", "intric.worker.WorkerSettings"]));
    worker_becomes_healthy(&namespace, &image, "the derived worker");
}

/// Builds the backend (and the worker derived from it) of the snapshot's current commit into
/// `registry`; returns the summary.
fn build_backend(repo: &std::path::Path, registry: &str, extra: &[&str], env: &[(String, String)]) -> Value {
    let mut args = vec!["--push", "--registry", registry];
    args.extend_from_slice(extra);
    let (output, summary) = build(repo, &args, env);
    assert_success(&output, &format!("build {}", args.join(" ")));
    summary.unwrap()
}

#[test]
fn a_source_swap_is_the_image_buildkit_builds_and_runs() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let env = lab_env();
    let host = lab()["NEXUS_REGISTRY"].clone();
    let repo = snapshot();
    let dir = repo.path();
    let namespace = format!("fast-path-swap-{}", std::process::id());
    let swapped_registry = format!("{host}/{namespace}");
    let buildkit_registry = format!("{host}/{namespace}-buildkit");
    let _local_tags =
        [LocalImagesUnder(format!("{swapped_registry}/")), LocalImagesUnder(format!("{buildkit_registry}/"))];
    let source = dir.join("backend/intric");
    let write = |relative: &str, text: &str| {
        let path = source.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };

    // Commit A: files for the later cases to delete and rename; built by BuildKit.
    write("to_delete.py", "GONE = True\n");
    write("to_rename.py", "MOVED = True\n");
    commit_all(dir, "A: files to delete and rename");
    // BuildKit's answer is "built", or "cached" where an earlier run left the same layers.
    let buildkit_built = |result: &str| result == "built" || result == "cached";
    let summary = build_backend(dir, &swapped_registry, &["backend"], &env);
    assert!(buildkit_built(&results(&summary)["backend"]), "{summary}");

    // B1: one file modified, one added, one deleted, one renamed, a new nested directory, an
    // executable bit. B2: a name over 100 characters, a .dockerignore hit, and alembic.ini (the
    // first COPY's source) changed.
    type Change = fn(&std::path::Path);
    let cases: [(&str, Change); 2] = [
        ("B1", |source| {
            std::fs::write(source.join("main.py"), std::fs::read_to_string(source.join("main.py")).unwrap() + "# B1\n")
                .unwrap();
            std::fs::write(source.join("added.py"), "ADDED = True\n").unwrap();
            std::fs::remove_file(source.join("to_delete.py")).unwrap();
            std::fs::rename(source.join("to_rename.py"), source.join("renamed.py")).unwrap();
            std::fs::create_dir_all(source.join("pkg/sub")).unwrap();
            std::fs::write(source.join("pkg/sub/deep.py"), "DEEP = True\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(source.join("logs.py"), std::fs::Permissions::from_mode(0o755)).unwrap();
        }),
        ("B2", |source| {
            let long = format!("{}/{}.py", "n".repeat(60), "m".repeat(60));
            std::fs::create_dir_all(source.join(&long).parent().unwrap()).unwrap();
            std::fs::write(source.join(&long), "LONG = True\n").unwrap();
            std::fs::write(source.join("stale.pyc"), "not sent: .dockerignore has **/*.py[cod]").unwrap();
            let ini = source.parent().unwrap().join("alembic.ini");
            std::fs::write(&ini, std::fs::read_to_string(&ini).unwrap() + "# B2\n").unwrap();
        }),
    ];
    let registry = LabRegistry::new();
    docker_login(&host);
    // A build that makes every image in the registry runs no docker: with the engine's
    // address pointing nowhere it still succeeds, and says so.
    let no_engine: Vec<(String, String)> = env
        .iter()
        .cloned()
        .chain([("DOCKER_HOST".to_string(), "unix:///nonexistent/docker.sock".to_string())])
        .collect();
    for (name, change) in cases {
        change(&source);
        commit_all(dir, name);
        let summary = build_backend(dir, &swapped_registry, &["backend", "worker"], &no_engine);
        assert_eq!(results(&summary)["backend"], "swapped", "{name}: {summary}");
        assert_eq!(results(&summary)["worker"], "derived", "{name}: {summary}");
        assert_eq!(summary["builder"], Value::Null, "{name}: no docker client was detected: {summary}");
        let backend = summary["images"].as_array().unwrap().iter().find(|image| image["service"] == "backend").unwrap();
        assert!(backend["path"].as_str().unwrap().starts_with("source swap on dev-latest"), "{name}: {summary}");
        let tag = backend["tags"][0].as_str().unwrap().to_string();
        let summary = build_backend(dir, &buildkit_registry, &["--no-fast-path", "backend", "worker"], &env);
        assert!(buildkit_built(&results(&summary)["backend"]), "{name}: {summary}");

        let swapped_files = assert_swap_is_buildkits(&registry, &namespace, "intric/backend", &tag, dir, name);
        // The worker, made from the swapped parts beside the backend's own step, has exactly
        // the swapped backend's layers and BuildKit's worker config.
        let worker = pushed(&registry, &format!("{namespace}/intric/worker"), &tag);
        let backend = pushed(&registry, &format!("{namespace}/intric/backend"), &tag);
        assert_eq!(worker.manifest["layers"], backend.manifest["layers"], "{name}: the worker's layers");
        let buildkit_worker = pushed(&registry, &format!("{namespace}-buildkit/intric/worker"), &tag);
        assert_eq!(
            swap_essentials(&worker.config, 3),
            swap_essentials(&buildkit_worker.config, 3),
            "{name}: the worker's config differs from BuildKit's"
        );
        let paths: Vec<&str> = swapped_files.iter().map(|entry| entry[0].as_str().unwrap()).collect();
        assert!(!paths.contains(&"app/intric/to_delete.py") && paths.contains(&"app/intric/renamed.py"), "{name}");
        assert!(!paths.contains(&"app/intric/stale.pyc"), "{name}: the ignore file's hit was copied");
    }

    // The worker derived from the last swapped backend starts and Docker calls it healthy: the
    // swapped layers are what it imports its code from.
    let tag = {
        let summary = build_backend(dir, &swapped_registry, &["worker"], &env);
        assert_eq!(results(&summary)["worker"], "skipped", "{summary}");
        summary["images"][0]["tags"][0].as_str().unwrap().to_string()
    };
    let image = format!("{swapped_registry}/intric/worker:{tag}");
    assert_success(&run("docker", &["pull", &image], dir), "docker pull of the worker on the swapped backend");
    worker_becomes_healthy(&namespace, &image, "the worker on the swapped backend");
}

/// The Dockerfile of the target directory cases: on the lab's Python stand-in, a RUN makes
/// `/app/conf` (uid 1000, 0750) and `/app/conf/sub` (uid 1000, 0700) before copies into them,
/// then `extra` lines (more RUN, more COPYs).
fn meta_dockerfile(run_extra: &str, copy_extra: &str) -> String {
    format!(
        "ARG PYTHON_IMAGE=python:3.10-slim-bullseye\nFROM ${{PYTHON_IMAGE}}\n\
         RUN mkdir -p /app/conf/sub && chown -R 1000:1000 /app/conf && chmod 0750 /app/conf \
         && chmod 0700 /app/conf/sub{run_extra}\n\
         WORKDIR /app\nCOPY conf ./conf\nCOPY fresh ./fresh\nCOPY root.txt ./\n{copy_extra}CMD [\"true\"]\n"
    )
}

/// A COPY's target directory that a RUN made below, not owned by root, is what BuildKit keeps
/// (the swap reads its metadata from the layer it replaces, no layer below), a new target is
/// 0755 whatever the source directory's mode, a directory from the source has the source's
/// metadata; and a root-owned target whose mode is not a new directory's is refused, with the
/// reason in the dry run and the run alike.
///
/// A project of its own (`compose.yml`, one image `meta` in `meta/`) in namespaces
/// `fast-path-meta-<pid>` (swapped) and `fast-path-meta-<pid>-buildkit` (`--no-fast-path`);
/// no container runs, and the local tags it builds or pulls are removed.
#[test]
fn a_target_directory_that_exists_below_keeps_its_metadata_and_one_that_may_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let env = lab_env();
    let host = lab()["NEXUS_REGISTRY"].clone();
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path();
    let namespace = format!("fast-path-meta-{}", std::process::id());
    let swapped_registry = format!("{host}/{namespace}");
    let buildkit_registry = format!("{host}/{namespace}-buildkit");
    let _local_tags =
        [LocalImagesUnder(format!("{swapped_registry}/")), LocalImagesUnder(format!("{buildkit_registry}/"))];
    let write = |relative: &str, text: &str| {
        let path = dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "compose.yml",
        "name: fast-path-meta\nservices:\n  meta:\n    image: ${NEXUS_REGISTRY}/intric/meta:${IMAGE_TAG:-latest}\n    \
         build:\n      context: meta\n      args:\n        PYTHON_IMAGE: ${PYTHON_IMAGE:-python:3.10-slim-bullseye}\n",
    );
    // The build's logs go below target/, as in the workspace.
    write(".gitignore", "/target\n");
    write("meta/Dockerfile", &meta_dockerfile("", ""));
    write("meta/conf/app.conf", "a = 1\n");
    write("meta/conf/sub/inner.conf", "b = 2\n");
    write("meta/fresh/f.txt", "fresh\n");
    write("meta/root.txt", "root\n");
    // Git keeps no directory modes: the source directory's mode is the checkout's, here 0750.
    std::fs::set_permissions(dir.join("meta/fresh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    commit_all(dir, "C1: a target directory made below");
    let meta = |registry: &str, extra: &[&str]| {
        let mut args = vec!["--push", "--registry", registry, "--compose", "compose.yml"];
        args.extend_from_slice(extra);
        args.push("meta");
        let (output, summary) = build(dir, &args, &env);
        assert_success(&output, &format!("build {}", args.join(" ")));
        let summary = summary.unwrap();
        let image = summary["images"][0].clone();
        (image["result"].as_str().unwrap().to_string(), image["path"].as_str().unwrap().to_string(), image)
    };
    let buildkit_built = |result: &str| result == "built" || result == "cached";
    let (result, path, _) = meta(&swapped_registry, &[]);
    assert!(buildkit_built(&result), "C1: {result}: {path}");

    // C2: only the copies' sources change; the swap writes /app/conf as BuildKit kept it.
    write("meta/conf/app.conf", "a = 2\n");
    write("meta/conf/sub/added.conf", "c = 3\n");
    write("meta/fresh/g.txt", "more\n");
    commit_all(dir, "C2: sources only");
    let (result, path, image) = meta(&swapped_registry, &[]);
    assert_eq!(result, "swapped", "C2: {path}");
    let tag = image["tags"][0].as_str().unwrap().to_string();
    let (result, path, _) = meta(&buildkit_registry, &["--no-fast-path"]);
    assert!(buildkit_built(&result), "C2 with BuildKit: {result}: {path}");
    let registry = LabRegistry::new();
    docker_login(&host);
    let swapped_files = assert_swap_is_buildkits(&registry, &namespace, "intric/meta", &tag, dir, "C2");
    // What BuildKit did, and so the swap: path, mode, uid, gid.
    let metadata = |path: &str| {
        let entry = swapped_files.iter().find(|entry| entry[0] == path).unwrap_or_else(|| panic!("no {path}"));
        (entry[2].as_u64().unwrap() & 0o7777, entry[3].as_u64().unwrap(), entry[4].as_u64().unwrap())
    };
    assert_eq!(metadata("app/conf"), (0o750, 1000, 1000), "the target made below keeps its metadata");
    assert_eq!(metadata("app/conf/sub"), (0o755, 0, 0), "a directory from the source has the source's");
    assert_eq!(metadata("app/fresh"), (0o755, 0, 0), "a new target is 0755, not the source's 0750");

    // D1: a root-owned 0700 target below, which the previous layer cannot tell from one an
    // earlier swap wrote: BuildKit builds D1 (the Dockerfile changed) and D2 (refused).
    write(
        "meta/Dockerfile",
        &meta_dockerfile(" && mkdir /app/private && chmod 0700 /app/private", "COPY private ./private\n"),
    );
    write("meta/private/p.txt", "p\n");
    commit_all(dir, "D1: a root-owned 0700 target directory below");
    let (result, path, _) = meta(&swapped_registry, &[]);
    assert!(buildkit_built(&result), "D1: {result}: {path}");
    write("meta/private/p.txt", "p2\n");
    commit_all(dir, "D2: sources only");
    let reason = "COPY line 8: /app/private has mode 0700, owner 0:0 in the previous image, where a new directory \
                  has mode 0755, owner 0:0";
    let dry_run = xtask(
        &["build", "--repo", dir.to_str().unwrap(), "--dry-run", "--push", "--registry", &swapped_registry]
            .into_iter()
            .chain(["--compose", "compose.yml", "meta"])
            .collect::<Vec<_>>(),
        &env,
        dir,
    );
    assert_success(&dry_run, "build --dry-run D2");
    assert!(stdout(&dry_run).contains(&format!("  path: BuildKit: {reason}")), "{}", stdout(&dry_run));
    let (result, path, _) = meta(&swapped_registry, &[]);
    assert!(buildkit_built(&result), "D2: {result}: {path}");
    assert!(path.starts_with(&format!("BuildKit: {reason}")), "D2: {path}");
}
