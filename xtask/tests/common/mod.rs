//! Helpers shared by the end-to-end test files: the xtask binary, the lab (`sandbox up` once per
//! test binary, with its Nexus look-alike on demand, its variables), clean repository snapshots
//! and bare origins for them, unique registry namespaces, a small client for the registry's HTTP
//! API, a fake registry ([`fake_registry`]), a Nexus look-alike proxy of a test's own and its
//! fault injection, images made with `docker import` and the guard that removes them, waiting,
//! release invocations, a deployment site ([`site`]), and for the update tests a request probe
//! and the versions they update between.
//!
//! Each test binary compiles this module on its own and uses only part of it, hence the
//! `dead_code` allowance: an unused helper in one binary is used by another.
#![allow(dead_code)]

pub mod fake_registry;
pub mod site;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// One test at a time: they share the engine, the registry and the host ports.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether an engine answers; with `CI` set, a missing engine is a failure, not a skip.
pub fn docker_available() -> bool {
    let answers = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !answers {
        assert!(std::env::var_os("CI").is_none(), "CI is set but no Docker engine answers: run ci/provision.sh first");
        eprintln!("skipped: no Docker engine answers (run `bash ci/provision.sh`)");
    }
    answers
}

/// The start of a test on the lab: one test at a time ([`serial`]) and the lab up ([`lab`]).
/// `None` where no engine answers outside CI (see [`docker_available`]): the test then does
/// nothing.
pub fn lab_test() -> Option<MutexGuard<'static, ()>> {
    let serial = serial();
    if !docker_available() {
        return None;
    }
    lab();
    Some(serial)
}

/// The lab's variables (`sandbox env --format dotenv`), after one `sandbox up` per test run.
pub fn lab() -> &'static BTreeMap<String, String> {
    static LAB: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    LAB.get_or_init(|| {
        let started = Instant::now();
        let up = xtask(&["sandbox", "up"], &[], &workspace());
        assert_success(&up, "sandbox up");
        eprintln!("timing: sandbox up took {:.1} s", started.elapsed().as_secs_f64());
        let env = xtask(&["sandbox", "env", "--format", "dotenv"], &[], &workspace());
        assert_success(&env, "sandbox env");
        String::from_utf8(env.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    })
}

/// The variables a CI job would export to build against the lab.
pub fn lab_env() -> Vec<(String, String)> {
    lab().iter().map(|(key, value)| (key.clone(), value.clone())).collect()
}

/// The lab's variables but its registry (its base images and login), for a test that gives
/// the registry (a namespace of its own) with `--registry`.
pub fn lab_login_env() -> Vec<(String, String)> {
    lab_env().into_iter().filter(|(key, _)| key != "NEXUS_REGISTRY").collect()
}

/// The lab's base images alone, for builds into a registry of a test's own, which needs no login.
pub fn lab_base_env() -> Vec<(String, String)> {
    lab_env().into_iter().filter(|(key, _)| !key.starts_with("NEXUS_")).collect()
}

/// The lab's Nexus look-alike (`sandbox up --nexus`): `dev` allows redeploy, `release` does not.
pub const NEXUS: &str = "127.0.0.1:5001";

/// The lab with its Nexus look-alike ([`NEXUS`]), brought up once per test binary; the lab's
/// variables.
pub fn nexus_lab() -> &'static BTreeMap<String, String> {
    static UP: OnceLock<()> = OnceLock::new();
    let lab = lab();
    UP.get_or_init(|| assert_success(&xtask(&["sandbox", "up", "--nexus"], &[], &workspace()), "sandbox up --nexus"));
    lab
}

/// A name no earlier run used, `<prefix>-<pid>-<nanoseconds>`: a registry namespace whose tags
/// meet no one else's (the shared registry keeps every namespace).
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Variables that would change what the xtask decides: CI detection and stray settings.
pub const CONTROLLED: &[&str] = &[
    "CI",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "JENKINS_URL",
    "IMAGE_TAG",
    "NEXUS_REGISTRY",
    "NEXUS_USERNAME",
    "NEXUS_PASSWORD",
];

/// The xtask with `args` in `dir`, with `env` and none of this process's [`CONTROLLED`]
/// variables, not yet started.
pub fn xtask_command(args: &[&str], env: &[(String, String)], dir: &Path) -> Command {
    let mut command = Command::new(XTASK);
    command.args(args).current_dir(dir);
    for key in CONTROLLED {
        command.env_remove(key);
    }
    command.envs(env.iter().map(|(key, value)| (key, value)));
    command
}

pub fn xtask(args: &[&str], env: &[(String, String)], dir: &Path) -> Output {
    xtask_command(args, env, dir).output().unwrap()
}

/// `docker login` to `host` with the lab's credentials, the password on stdin.
pub fn docker_login(host: &str) {
    let lab = lab();
    let mut child = Command::new("docker")
        .args(["login", "--username", &lab["NEXUS_USERNAME"], "--password-stdin", host])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(lab["NEXUS_PASSWORD"].as_bytes()).unwrap();
    assert_success(&child.wait_with_output().unwrap(), &format!("docker login {host}"));
}

pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A process's standard output, as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A process's standard error, as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn run(program: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(program).args(args).current_dir(dir).output().unwrap_or_else(|error| panic!("{program}: {error}"))
}

pub fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "e2e")
        .env("GIT_AUTHOR_EMAIL", "e2e@example.com")
        .env("GIT_COMMITTER_NAME", "e2e")
        .env("GIT_COMMITTER_EMAIL", "e2e@example.com")
        .output()
        .unwrap();
    assert_success(&output, &format!("git {}", args.join(" ")));
}

/// A clean one-commit repository with the files of this workspace that git would commit
/// (tracked or untracked, not ignored), on branch `main`: builds from it have clean tags
/// whatever state the developer's checkout is in.
pub fn snapshot() -> tempfile::TempDir {
    let root = workspace();
    let listing = run("git", &["ls-files", "-z", "--cached", "--others", "--exclude-standard"], &root);
    assert_success(&listing, "git ls-files");
    let dir = tempfile::tempdir().unwrap();
    for path in listing.stdout.split(|byte| *byte == 0).filter(|path| !path.is_empty()) {
        let path = std::str::from_utf8(path).unwrap();
        let source = root.join(path);
        if !source.exists() {
            continue;
        }
        let target = dir.path().join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&source, &target).unwrap();
    }
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "snapshot"]);
    dir
}

pub fn commit_all(dir: &Path, message: &str) {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
}

/// Makes `origin` a bare repository and the remote `origin` of `repo`, with `repo`'s `main`
/// pushed to it: what a release takes its lock on and pushes its git tag to.
pub fn add_bare_origin(repo: &Path, origin: &Path) {
    git(Path::new("/"), &["init", "-q", "--bare", "-b", "main", origin.to_str().unwrap()]);
    git(repo, &["remote", "add", "origin", origin.to_str().unwrap()]);
    git(repo, &["push", "-q", "origin", "main"]);
}

/// A [`snapshot`] with a bare repository of its own as `origin` (see [`add_bare_origin`]):
/// the snapshot, then the origin.
pub fn snapshot_with_origin() -> (tempfile::TempDir, tempfile::TempDir) {
    let repo = snapshot();
    let origin = tempfile::tempdir().unwrap();
    add_bare_origin(repo.path(), origin.path());
    (repo, origin)
}

/// The commit `repo`'s HEAD names.
pub fn head(repo: &Path) -> String {
    let output = run("git", &["rev-parse", "HEAD"], repo);
    assert_success(&output, "git rev-parse HEAD");
    stdout(&output).trim().to_string()
}

/// HEAD's `sha-<12 hex>` tag: what a build pushes and a release promotes.
pub fn sha_tag(repo: &Path) -> String {
    format!("sha-{}", &head(repo)[..12])
}

/// `release --repo <repo> ARGS` with `env`, not yet started.
pub fn release_command(repo: &Path, args: &[&str], env: &[(String, String)]) -> Command {
    let full = [&["release", "--repo", repo.to_str().unwrap()][..], args].concat();
    xtask_command(&full, env, repo)
}

/// [`release_command`], run to its end.
pub fn release(repo: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    release_command(repo, args, env).output().unwrap()
}

/// `cargo xtask build` in `repo` against the lab, with `extra` arguments, as JSON.
pub fn build(repo: &Path, extra: &[&str], env: &[(String, String)]) -> (Output, Option<serde_json::Value>) {
    let mut args = vec!["build", "--repo", repo.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let output = xtask(&args, env, repo);
    let json = serde_json::from_slice(&output.stdout).ok();
    (output, json)
}

/// `result` of each image in a build's JSON summary.
pub fn results(summary: &serde_json::Value) -> BTreeMap<String, String> {
    summary["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| (image["service"].as_str().unwrap().to_string(), image["result"].as_str().unwrap().to_string()))
        .collect()
}

/// A minimal client for the lab registry's HTTP API, with the lab's Basic credentials.
pub struct LabRegistry {
    base: String,
    authorization: Option<String>,
}

impl LabRegistry {
    pub fn new() -> LabRegistry {
        let lab = lab();
        let credentials = format!("{}:{}", lab["NEXUS_USERNAME"], lab["NEXUS_PASSWORD"]);
        LabRegistry {
            base: format!("http://{}", lab["NEXUS_REGISTRY"]),
            authorization: Some(format!("Basic {}", base64(credentials.as_bytes()))),
        }
    }

    /// A client for a registry without authentication at `host:port` (a test's own registry).
    pub fn anonymous(host: &str) -> LabRegistry {
        LabRegistry { base: format!("http://{host}"), authorization: None }
    }

    pub fn get(&self, path: &str, accept: &str) -> (u16, Vec<u8>) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut request = agent.get(format!("{}{path}", self.base)).header("Accept", accept);
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        let mut response = request.call().unwrap();
        (response.status().as_u16(), response.body_mut().read_to_vec().unwrap())
    }

    pub fn tags(&self, repository: &str) -> Vec<String> {
        let (status, body) = self.get(&format!("/v2/{repository}/tags/list"), "application/json");
        if status == 404 {
            return Vec::new();
        }
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        json["tags"]
            .as_array()
            .map(|tags| tags.iter().map(|tag| tag.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }

    pub fn manifest(&self, repository: &str, tag: &str) -> serde_json::Value {
        let (status, body) = self
            .get(&format!("/v2/{repository}/manifests/{tag}"), "application/vnd.docker.distribution.manifest.v2+json");
        assert_eq!(status, 200, "{repository}:{tag}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// The labels of an image, from its config blob.
    pub fn labels(&self, repository: &str, tag: &str) -> serde_json::Value {
        let manifest = self.manifest(repository, tag);
        let digest = manifest["config"]["digest"].as_str().unwrap();
        let (status, body) = self.get(&format!("/v2/{repository}/blobs/{digest}"), "*/*");
        assert_eq!(status, 200);
        let config: serde_json::Value = serde_json::from_slice(&body).unwrap();
        config["config"]["Labels"].clone()
    }
}

/// The digest of `bytes` as registries name blobs and manifests: `sha256:<hex>`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// Standard base64, for Basic auth headers.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Waits until `check` returns `Some`, polling every half second for at most `seconds`.
pub fn eventually<T>(seconds: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {seconds} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// An HTTP answer from the stack: status and body.
pub fn http(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let response = match (method, body) {
        ("POST", Some(body)) => agent.post(url).header("Content-Type", "application/json").send(body),
        _ => agent.get(url).call(),
    };
    match response {
        Ok(mut response) => (response.status().as_u16(), response.body_mut().read_to_string().unwrap_or_default()),
        Err(error) => (0, error.to_string()),
    }
}

/// The xtask on the deployment directory `dir` (`--dir`, and `--project project` for every task
/// but `env`).
pub fn xtask_in(dir: &Path, project: &str, args: &[&str]) -> Output {
    let dir_arg = dir.to_str().unwrap();
    let mut full = args.to_vec();
    full.extend(["--dir", dir_arg]);
    if args[0] != "env" {
        full.extend(["--project", project]);
    }
    xtask(&full, &[], dir)
}

/// `docker compose` on the deployment directory `dir` as project `project`.
pub fn compose_in(dir: &Path, project: &str, args: &[&str]) -> Output {
    let mut full = vec!["compose", "--project-name", project, "--project-directory", dir.to_str().unwrap()];
    full.extend_from_slice(args);
    run("docker", &full, dir)
}

/// Sets `key` in a `.env` file the simple way an operator's editor would: its line replaced, or
/// one appended. The file keeps its mode.
pub fn set_env_var(path: &Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let prefix = format!("{key}=");
    let mut found = false;
    let mut lines: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with(&prefix) {
                found = true;
                format!("{key}={value}")
            } else {
                line.to_string()
            }
        })
        .collect();
    if !found {
        lines.push(format!("{key}={value}"));
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Starts a Nexus look-alike proxy container of a test's own (`docker/lab/nexus-proxy.py`) on a
/// free port, in front of the lab registry of `lab` (its variables) with upstream names under
/// `prefix` (so its repositories start empty), and `args` after the usual ones. Returns its
/// `host:port` and the container's name, for the test to remove.
pub fn start_nexus_proxy(lab: &BTreeMap<String, String>, prefix: &str, args: &[&str]) -> (String, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let host = format!("127.0.0.1:{port}");
    let name = format!("intric-lab-nexus-test-{port}");
    let mut command = Command::new("docker");
    command
        .args(["run", "--detach", "--rm", "--name", &name, "--network", "host"])
        // The login goes through the environment, not argv.
        .args(["--env", "NEXUS_PROXY_USERNAME", "--env", "NEXUS_PROXY_PASSWORD"])
        .env("NEXUS_PROXY_USERNAME", &lab["NEXUS_USERNAME"])
        .env("NEXUS_PROXY_PASSWORD", &lab["NEXUS_PASSWORD"])
        .args(["intric-lab/nexus-proxy:lab", "--listen", &host, "--upstream", &lab["NEXUS_REGISTRY"]])
        .args(["--upstream-prefix", prefix])
        .args(args);
    assert_success(&command.output().unwrap(), "docker run of a test proxy");
    eventually(20, "the test proxy to answer", || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        agent.get(format!("http://{host}/v2/")).call().ok()
    });
    (host, name)
}

/// An image in the engine holding one file of `size` pseudo-random bytes (the same ones for the
/// same seed), made with `docker import`, tagged `name`.
pub fn import_image(name: &str, seed: u64, size: usize) {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(size + 8);
    while bytes.len() < size {
        // xorshift64: incompressible enough that the pushed layer stays as large as the file.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(size);
    import_file_image(name, "data", &bytes);
}

/// An image in the engine holding one file `file` with `contents`, made with `docker import`,
/// tagged `name`.
pub fn import_file_image(name: &str, file: &str, contents: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join(file), contents).unwrap();
    let tarball = dir.path().join("image.tar");
    let tar = run("tar", &["-C", root.to_str().unwrap(), "-cf", tarball.to_str().unwrap(), "."], &workspace());
    assert_success(&tar, "tar");
    assert_success(&run("docker", &["import", tarball.to_str().unwrap(), name], &workspace()), "docker import");
}

/// `docker push --quiet image`, which must succeed.
pub fn push_image(image: &str) {
    assert_success(&run("docker", &["push", "--quiet", image], &workspace()), &format!("docker push {image}"));
}

/// A registry of a test's own without authentication (the lab's registry image), in the
/// container `name` on the host port `port`, started fresh and removed when dropped (also when
/// the test fails).
pub struct OwnRegistry {
    pub host: String,
    container: String,
}

impl OwnRegistry {
    pub fn start(container: &str, port: u16) -> OwnRegistry {
        let own = OwnRegistry { host: format!("127.0.0.1:{port}"), container: container.to_string() };
        own.stop();
        let publish = format!("{}:5000", own.host);
        let args = ["run", "--detach", "--name", container, "--publish", &publish, "--env", "REGISTRY_AUTH="];
        let started = run("docker", &[&args[..], &["intric-lab/registry:lab"]].concat(), Path::new("."));
        if !started.status.success() {
            // Where the lab pulled the upstream registry image, it is that one.
            let started = run("docker", &[&args[..6], &["registry:2"]].concat(), Path::new("."));
            assert_success(&started, &format!("starting the registry {container}"));
        }
        eventually(30, &format!("the registry {container} to answer"), || {
            ureq::get(format!("http://{}/v2/", own.host)).call().ok().map(drop)
        });
        own
    }

    /// Removes the registry's container: `docker rm --force`.
    pub fn stop(&self) -> Output {
        run("docker", &["rm", "--force", &self.container], Path::new("."))
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes the Nexus look-alike at `host` fail every manifest PUT after the next `n`; the fault is
/// lifted when dropped (also when the test fails), as the lab's look-alike is shared.
pub struct PutFault {
    host: String,
}

impl PutFault {
    pub fn after(host: &str, n: usize) -> PutFault {
        // Armed before anything can fail, so that the fault is lifted whatever happens.
        let fault = PutFault { host: host.to_string() };
        let (status, body) = http("POST", &format!("http://{host}/_lab/fail-after-puts?n={n}"), Some(""));
        assert_eq!(status, 204, "arming the fault: {body}");
        fault
    }
}

impl Drop for PutFault {
    fn drop(&mut self) {
        let (status, body) = http("POST", &format!("http://{}/_lab/reset", self.host), Some(""));
        if !std::thread::panicking() {
            assert_eq!(status, 204, "lifting the fault: {body}");
        }
    }
}

/// Requests through a stack's entry point (the edge's host `port`) until stopped (at most 10 minutes): one request
/// every 20 ms, `/` and `/api/v1/healthz` in turn.
pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(String, u16)>>,
}

impl Probe {
    pub fn start(port: &str) -> Probe {
        let port = port.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut seen = Vec::new();
            while !stopped.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(600) {
                let at = Instant::now();
                let path = if seen.len() % 2 == 0 { "/" } else { "/api/v1/healthz" };
                let (status, _) = http("GET", &format!("http://127.0.0.1:{port}{path}"), None);
                seen.push((path.to_string(), status));
                std::thread::sleep(Duration::from_millis(20).saturating_sub(at.elapsed()));
            }
            seen
        });
        Probe { stop, thread }
    }

    /// Stops the probe and asserts that every request it made during `what` was answered.
    pub fn assert_no_failure(self, what: &str) {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.thread.join().unwrap();
        let failed: Vec<&(String, u16)> = seen.iter().filter(|(_, status)| *status != 200).collect();
        eprintln!("probe during {what}: {} of {} requests failed", failed.len(), seen.len());
        assert!(seen.len() > 50, "the probe ran during {what}: {} requests", seen.len());
        assert!(failed.is_empty(), "{} of {} requests failed during {what}: {failed:?}", failed.len(), seen.len());
    }
}

/// Runs `step` (called `what`) with a [`Probe`] through the edge's host `port` from a second
/// before it to a second after, and asserts that not one request failed: what `step` returns.
pub fn without_downtime<T>(port: &str, what: &str, step: impl FnOnce() -> T) -> T {
    let probe = Probe::start(port);
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let result = step();
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    probe.assert_no_failure(what);
    eprintln!("timing: {what} {:.1} s", took.as_secs_f64());
    result
}

/// Removes, when dropped, every local image whose name starts with `prefix` (a registry
/// namespace of the test's own): the shared engine keeps no test images. An image a test built
/// with the classic builder on a lab base would otherwise keep that base as its parent, which
/// `bench build` cannot remove for its fresh runner. A name that has only a digest left (a
/// base image pulled by digest) goes by that digest, never by the image's ID, which would
/// delete the lab's own image of the same ID too.
pub struct LocalImagesUnder(pub String);

impl Drop for LocalImagesUnder {
    fn drop(&mut self) {
        let format = "{{.Repository}} {{.Tag}} {{.Digest}}";
        let Ok(listed) = Command::new("docker").args(["images", "--digests", "--format", format]).output() else {
            return;
        };
        let images: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|line| match line.split(' ').collect::<Vec<_>>()[..] {
                [repository, tag, _] if tag != "<none>" => Some(format!("{repository}:{tag}")),
                [repository, _, digest] if digest != "<none>" => Some(format!("{repository}@{digest}")),
                _ => None,
            })
            .filter(|image| image.starts_with(&self.0))
            .collect();
        if !images.is_empty() {
            let _ = Command::new("docker").args(["image", "rm", "--force"]).args(&images).output();
        }
    }
}

pub fn docker_ok(args: &[&str], dir: &Path) {
    assert_success(&run("docker", args, dir), &format!("docker {}", args.join(" ")));
}

/// Two versions (the same images under two tags) built and pushed into the namespace
/// `namespace` below the lab registry, and a version `exits` whose backend is the first's with
/// a command that exits at once (its worker and frontend are the first's): what the
/// zero-downtime tests update between. Returns the namespace's registry, and the guard that
/// removes its local images.
pub fn push_versions(namespace: &str, versions: [&str; 2], exits: &str) -> (String, LocalImagesUnder) {
    let started = Instant::now();
    let registry = format!("{}/{namespace}", lab()["NEXUS_REGISTRY"]);
    let images = LocalImagesUnder(format!("{registry}/"));
    let registry = registry.as_str();
    let env: Vec<(String, String)> = lab_env();
    let repo = snapshot();
    for tag in versions {
        let (output, _) = build(repo.path(), &["--push", "--tag", tag, "--registry", registry], &env);
        assert_success(&output, &format!("build --push --tag {tag}"));
    }
    docker_login(&lab()["NEXUS_REGISTRY"]);
    let context = tempfile::tempdir().unwrap();
    // v1's backend with another command, made by `docker commit` (the engine alone: no builder).
    let backend = format!("{registry}/intric/backend");
    let exits_image = format!("{backend}:{exits}");
    let created = run("docker", &["create", &format!("{backend}:{}", versions[0])], context.path());
    assert_success(&created, "docker create");
    let container = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let command = r#"CMD ["python", "-c", "raise SystemExit('exits on purpose')"]"#;
    docker_ok(&["commit", "--change", command, &container, &exits_image], context.path());
    docker_ok(&["rm", &container], context.path());
    push_image(&exits_image);
    for service in ["worker", "frontend"] {
        let (from, to) =
            (format!("{registry}/intric/{service}:{}", versions[0]), format!("{registry}/intric/{service}:{exits}"));
        docker_ok(&["pull", "--quiet", &from], context.path());
        docker_ok(&["tag", &from, &to], context.path());
        push_image(&to);
    }
    eprintln!("timing: versions pushed in {:.1} s", started.elapsed().as_secs_f64());
    (registry.to_string(), images)
}
