//! The fast path on the lab: a pushed worker (a metadata-only stage on the backend) is derived
//! from the backend's manifest in the registry, and is the image BuildKit's worker stage is.
//!
//! Runs on the real engine and the lab's authenticated registry (127.0.0.1:5000), in registry
//! namespaces of its own: `fast-path-e2e-<pid>` (derived) and `fast-path-e2e-<pid>-buildkit`
//! (BuildKit's worker, `--no-fast-path`). Starts no compose project and uses no host port: the
//! derived worker and a Redis run on a network of their own, `fast-path-e2e-<pid>`, as
//! containers `fast-path-e2e-<pid>-worker` and `-redis`, removed at the end as are the local
//! tags it pulled or built. With `CI` set, a missing engine fails it.

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

/// The local tags below these registry prefixes, removed when dropped (also when the test fails).
struct LocalTags(Vec<String>);

impl Drop for LocalTags {
    fn drop(&mut self) {
        for prefix in &self.0 {
            let filter = format!("reference={prefix}/*/*");
            let listing = run(
                "docker",
                &["image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "--filter", &filter],
                &workspace(),
            );
            for reference in String::from_utf8_lossy(&listing.stdout).lines() {
                run("docker", &["image", "rm", reference], &workspace());
            }
        }
    }
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
    let _local_tags = LocalTags(vec![derived_registry.clone(), buildkit_registry.clone()]);

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
    let containers = Containers::new(&namespace);
    containers.start(&["--network-alias", "redis", &lab()["REDIS_IMAGE"]], "redis");
    let mut worker = vec![];
    for (key, value) in WORKER_SETTINGS {
        worker.extend(["--env".to_string(), format!("{key}={value}")]);
    }
    worker.push(image.clone());
    containers.start(&worker.iter().map(String::as_str).collect::<Vec<_>>(), "worker");
    let health = eventually(120, "the derived worker to be healthy", || {
        let status = containers.health("worker");
        assert_ne!(status, "unhealthy", "{}", containers.logs("worker"));
        (status == "healthy").then_some(status)
    });
    assert_eq!(health, "healthy");
    drop(containers);
}
