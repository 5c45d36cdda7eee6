//! The lab's Nexus look-alike (`sandbox up --nexus`, `docker/lab/nexus-proxy.py`) against the real
//! engine and registry: each Nexus behaviour it promises, seen with plain HTTP, with `docker login`
//! and `docker push`, and with skopeo (a registry client we didn't write).
//!
//! Tests of the defaults use the proxy `up --nexus` starts, with repository names of their own.
//! Tests of other settings, of fault injection and of memory use start a proxy container of their
//! own on a free port, whose upstream names carry a fresh prefix: its repositories start empty, and
//! names are rewritten between the client's view and upstream's for real.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{assert_success, base64, docker_available, docker_login, import_image, serial, workspace, xtask};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const REDEPLOY_REFUSAL: &str = r#"{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"blob upload invalid","detail":"Repository does not allow updating assets: release"}]}"#;

/// The lab's variables after one `sandbox up --nexus` per test run.
fn lab() -> &'static BTreeMap<String, String> {
    static LAB: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    LAB.get_or_init(|| {
        let up = xtask(&["sandbox", "up", "--nexus"], &[], &workspace());
        assert_success(&up, "sandbox up --nexus");
        let env = xtask(&["sandbox", "env", "--format", "dotenv"], &[], &workspace());
        assert_success(&env, "sandbox env");
        let lab: BTreeMap<String, String> = String::from_utf8(env.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        assert!(
            lab.contains_key("NEXUS_LAB_REGISTRY"),
            "`sandbox env` names the proxy while it runs: {:?}",
            lab.keys()
        );
        lab
    })
}

/// A name no earlier run used.
fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{:x}{:x}", nanos % (1 << 40), std::process::id())
}

/// An HTTP answer, read whole.
struct Answer {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| panic!("{error}: {}", self.text()))
    }
}

fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let result = match body {
        Some(body) => agent.run(request.body(body).unwrap()),
        None => agent.run(request.body(()).unwrap()),
    };
    let mut response = result.unwrap_or_else(|error| panic!("{method} {url}: {error}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = if method == "HEAD" { Vec::new() } else { response.body_mut().read_to_vec().unwrap() };
    Answer { status, headers, body }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A Nexus look-alike: the one `up --nexus` started, or one of a test's own, removed on drop.
struct Proxy {
    /// `127.0.0.1:<port>`.
    host: String,
    container: Option<String>,
    token: String,
}

impl Proxy {
    fn lab() -> Proxy {
        let registry = &lab()["NEXUS_LAB_REGISTRY"];
        let host = registry.strip_suffix("/dev").expect("NEXUS_LAB_REGISTRY is <host>/dev").to_string();
        let token = fetch_token(&host);
        Proxy { host, container: None, token }
    }

    /// A proxy container of the test's own, with `args` after the usual ones.
    fn start(args: &[&str]) -> Proxy {
        let (host, name) = common::start_nexus_proxy(lab(), &format!("nexus-test-{}/", unique()), args);
        let token =
            if args.windows(2).any(|pair| pair == ["--auth", "basic"]) { String::new() } else { fetch_token(&host) };
        Proxy { host, container: Some(name), token }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host)
    }

    /// A request with the proxy's Bearer token.
    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Answer {
        let authorization = format!("Bearer {}", self.token);
        let mut all = vec![("Authorization", authorization.as_str())];
        all.extend_from_slice(headers);
        http(method, &self.url(path), &all, body)
    }

    /// Uploads `bytes` as a blob of `repository` (the client's name, `dev/...`); returns its digest.
    fn upload_blob(&self, repository: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let started = self.call("POST", &format!("/v2/{repository}/blobs/uploads/"), &[], Some(Vec::new()));
        assert_eq!(started.status, 202, "{}", started.text());
        let location = started.header("location").expect("an upload location").to_string();
        // Upstream's absolute URL (127.0.0.1:5000, its own names) must come back as this proxy's.
        let expected = self.url(&format!("/v2/{repository}/blobs/uploads/"));
        assert!(location.starts_with(&expected), "Location {location} is not under {expected}");
        let separator = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{separator}digest={}", digest.replace(':', "%3A"));
        let authorization = format!("Bearer {}", self.token);
        let done = http(
            "PUT",
            &url,
            &[("Authorization", &authorization), ("Content-Type", "application/octet-stream")],
            Some(bytes.to_vec()),
        );
        assert_eq!(done.status, 201, "{}", done.text());
        digest
    }

    /// A small image in `repository` whose content depends on `seed`: its manifest's bytes.
    fn image(&self, repository: &str, seed: &str) -> Vec<u8> {
        let layer = format!("layer of {seed}").into_bytes();
        let layer_digest = self.upload_blob(repository, &layer);
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"seed": seed}},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        })
        .to_string()
        .into_bytes();
        let config_digest = self.upload_blob(repository, &config);
        json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": config_digest},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": layer.len(), "digest": layer_digest}],
        })
        .to_string()
        .into_bytes()
    }

    fn put_manifest(&self, repository: &str, reference: &str, manifest: &[u8]) -> Answer {
        let path = format!("/v2/{repository}/manifests/{reference}");
        self.call("PUT", &path, &[("Content-Type", DOCKER_MANIFEST)], Some(manifest.to_vec()))
    }

    fn control(&self, method: &str, path: &str) -> Answer {
        http(method, &self.url(path), &[], (method == "POST").then(Vec::new))
    }

    /// The proxy process's peak resident memory in bytes (VmHWM).
    fn peak_memory(&self) -> u64 {
        let container = self.container.as_deref().expect("a proxy of the test's own");
        let pid = common::run("docker", &["inspect", "--format", "{{.State.Pid}}", container], &workspace());
        let pid = String::from_utf8(pid.stdout).unwrap().trim().to_string();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(container) = &self.container {
            let _ = Command::new("docker").args(["rm", "--force", container]).stderr(Stdio::null()).output();
            let _ = Command::new("docker").args(["logout", &self.host]).output();
        }
    }
}

fn fetch_token(host: &str) -> String {
    let lab = lab();
    let basic = format!("Basic {}", base64(format!("{}:{}", lab["NEXUS_USERNAME"], lab["NEXUS_PASSWORD"]).as_bytes()));
    let answer = http(
        "GET",
        &format!("http://{host}/v2/token?service=nexus-lab&scope=repository:dev/intric/backend:pull,push"),
        &[("Authorization", &basic)],
        None,
    );
    assert_eq!(answer.status, 200, "token from {host}: {}", answer.text());
    answer.json()["token"].as_str().expect("a token").to_string()
}

/// Whether skopeo is installed; with `CI` set, missing is a failure, not a skip.
fn skopeo_available() -> bool {
    let found = Command::new("skopeo").arg("--version").output().is_ok_and(|output| output.status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "CI is set but skopeo is missing: run ci/provision.sh first");
        eprintln!("skopeo checks skipped: apt-get install -y skopeo");
    }
    found
}

fn docker(args: &[&str]) -> Output {
    common::run("docker", args, &workspace())
}

/// The digest `docker push` reports (`<tag>: digest: sha256:... size: N`).
fn pushed_digest(push: &Output) -> String {
    let stdout = String::from_utf8_lossy(&push.stdout);
    stdout
        .split_whitespace()
        .skip_while(|word| *word != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in the push output:\n{stdout}"))
        .to_string()
}

fn skopeo_digest(image: &str) -> String {
    let lab = lab();
    let creds = format!("{}:{}", lab["NEXUS_USERNAME"], lab["NEXUS_PASSWORD"]);
    let inspect = common::run(
        "skopeo",
        &["inspect", "--tls-verify=false", "--creds", &creds, &format!("docker://{image}")],
        &workspace(),
    );
    assert_success(&inspect, &format!("skopeo inspect {image}"));
    let json: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    json["Digest"].as_str().unwrap().to_string()
}

#[test]
fn unauthenticated_requests_get_the_bearer_challenge_and_basic_is_refused() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let proxy = Proxy::lab();
    let answer = http("GET", &proxy.url("/v2/"), &[], None);
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.header("www-authenticate"),
        Some(format!(r#"Bearer realm="http://{}/v2/token",service="nexus-lab""#, proxy.host).as_str())
    );
    assert_eq!(answer.header("docker-distribution-api-version"), Some("registry/2.0"));

    // Behind a Bearer realm, Basic credentials on registry calls are refused.
    let lab = lab();
    let basic = format!("Basic {}", base64(format!("{}:{}", lab["NEXUS_USERNAME"], lab["NEXUS_PASSWORD"]).as_bytes()));
    let answer = http("GET", &proxy.url("/v2/dev/intric/backend/tags/list"), &[("Authorization", &basic)], None);
    assert_eq!(answer.status, 401, "{}", answer.text());
}

#[test]
fn the_token_endpoint_takes_the_lab_login_and_its_tokens_open_the_registry() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let proxy = Proxy::lab();
    let lab = lab();
    let token_url = proxy.url("/v2/token?service=nexus-lab&scope=repository:dev/intric/backend:pull,push");
    let basic =
        |password: &str| format!("Basic {}", base64(format!("{}:{password}", lab["NEXUS_USERNAME"]).as_bytes()));
    let answer = http("GET", &token_url, &[("Authorization", &basic(&lab["NEXUS_PASSWORD"]))], None);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let json = answer.json();
    let token = json["token"].as_str().expect("token");
    assert!(!token.is_empty());
    assert_eq!(json["access_token"].as_str(), Some(token));

    let bearer = format!("Bearer {token}");
    assert_eq!(http("GET", &proxy.url("/v2/"), &[("Authorization", &bearer)], None).status, 200);
    assert_eq!(http("GET", &proxy.url("/v2/"), &[("Authorization", "Bearer not-a-token")], None).status, 401);
    assert_eq!(http("GET", &token_url, &[("Authorization", &basic("wrong-password"))], None).status, 401);
    assert_eq!(http("GET", &token_url, &[], None).status, 401);
}

#[test]
fn docker_login_and_push_work_and_skopeo_reads_the_same_digest() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let proxy = Proxy::lab();
    docker_login(&proxy.host);
    let image = format!("{}/dev/intric/nexus-lab-test:push-{}", proxy.host, unique());
    import_image(&image, 7, 4096);
    let push = docker(&["push", &image]);
    let _ = docker(&["rmi", &image]);
    assert_success(&push, "docker push through the proxy");
    let digest = pushed_digest(&push);
    if skopeo_available() {
        assert_eq!(skopeo_digest(&image), digest, "skopeo reads what docker pushed");
    }
    // What docker pushed is the image in the `dev` repository, seen with GET.
    let reference = image.rsplit_once(':').unwrap().1;
    let path = format!("/v2/dev/intric/nexus-lab-test/manifests/{reference}");
    let got = proxy.call("GET", &path, &[("Accept", DOCKER_MANIFEST)], None);
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("docker-content-digest"), Some(digest.as_str()));
}

#[test]
fn a_tag_in_release_cannot_be_put_again_even_with_the_same_digest() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let proxy = Proxy::lab();
    let release = format!("release/nexus-lab-test/redeploy-{}", unique());
    let manifest = proxy.image(&release, "redeploy");
    assert_eq!(proxy.put_manifest(&release, "1.0.0", &manifest).status, 201);
    let again = proxy.put_manifest(&release, "1.0.0", &manifest);
    assert_eq!((again.status, again.text().as_str()), (400, REDEPLOY_REFUSAL));
    // Without the latest-only option, `latest` cannot move either.
    assert_eq!(proxy.put_manifest(&release, "latest", &manifest).status, 201);
    assert_eq!(proxy.put_manifest(&release, "latest", &manifest).status, 400);
    // A PUT by digest creates no tag: allowed, also when the manifest is there.
    assert_eq!(proxy.put_manifest(&release, &sha256(&manifest), &manifest).status, 201);

    // `dev` allows redeploy.
    let dev = format!("dev/nexus-lab-test/redeploy-{}", unique());
    let manifest = proxy.image(&dev, "redeploy");
    for _ in 0..2 {
        let put = proxy.put_manifest(&dev, "dev-latest", &manifest);
        assert_eq!(put.status, 201, "{}", put.text());
    }
}

#[test]
fn latest_moves_in_release_with_the_latest_only_option() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let proxy = Proxy::start(&["--repo", "dev=allow", "--repo", "release=latest-only"]);
    let release = "release/intric/backend";
    let first = proxy.image(release, "first");
    let second = proxy.image(release, "second");
    assert_eq!(proxy.put_manifest(release, "latest", &first).status, 201);
    let moved = proxy.put_manifest(release, "latest", &second);
    assert_eq!(moved.status, 201, "{}", moved.text());
    let got = proxy.call("GET", "/v2/release/intric/backend/manifests/latest", &[("Accept", DOCKER_MANIFEST)], None);
    assert_eq!(got.header("docker-content-digest"), Some(sha256(&second).as_str()), "latest moved");
    // Only `latest`: other tags stay immutable.
    assert_eq!(proxy.put_manifest(release, "1.0.0", &first).status, 201);
    assert_eq!(proxy.put_manifest(release, "1.0.0", &first).status, 400);
}

#[test]
fn head_on_a_manifest_answers_404_where_get_works_unless_switched_off() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let proxy = Proxy::lab();
    let dev = format!("dev/nexus-lab-test/head-{}", unique());
    let manifest = proxy.image(&dev, "head");
    assert_eq!(proxy.put_manifest(&dev, "sha-0123456789ab", &manifest).status, 201);
    let path = format!("/v2/{dev}/manifests/sha-0123456789ab");
    assert_eq!(proxy.call("HEAD", &path, &[("Accept", DOCKER_MANIFEST)], None).status, 404);
    let got = proxy.call("GET", &path, &[("Accept", DOCKER_MANIFEST)], None);
    assert_eq!(got.status, 200);
    assert_eq!(got.header("docker-content-digest"), Some(sha256(&manifest).as_str()));
    assert_eq!(got.text(), String::from_utf8(manifest).unwrap(), "GET gives the bytes that were put");

    let passing = Proxy::start(&["--head-manifest", "pass"]);
    let manifest = passing.image("dev/intric/backend", "head");
    assert_eq!(passing.put_manifest("dev/intric/backend", "1", &manifest).status, 201);
    let head = passing.call("HEAD", "/v2/dev/intric/backend/manifests/1", &[("Accept", DOCKER_MANIFEST)], None);
    assert_eq!(head.status, 200);
}

#[test]
fn tag_pages_are_capped_and_carry_no_link_header() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let proxy = Proxy::lab();
    let dev = format!("dev/nexus-lab-test/pages-{}", unique());
    let manifest = proxy.image(&dev, "pages");
    let tags = ["t1", "t2", "t3", "t4", "t5"];
    for tag in tags {
        assert_eq!(proxy.put_manifest(&dev, tag, &manifest).status, 201);
    }
    let page = |query: &str| {
        let answer = proxy.call("GET", &format!("/v2/{dev}/tags/list{query}"), &[], None);
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("link"), None, "no Link header");
        let json = answer.json();
        json["tags"].as_array().unwrap().iter().map(|tag| tag.as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(page("?n=1000"), ["t1", "t2"], "at most 2 per page, whatever n asks");
    assert_eq!(page(""), ["t1", "t2"]);
    assert_eq!(page("?n=1"), ["t1"], "a smaller n is honoured");
    let mut all = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let next = page(&format!("?n=1000{}", last.as_ref().map(|tag| format!("&last={tag}")).unwrap_or_default()));
        let Some(tag) = next.last().cloned() else { break };
        all.extend(next);
        last = Some(tag);
    }
    assert_eq!(all, tags, "paging with last= gives every tag once");
}

#[test]
fn blobs_mount_from_dev_into_release() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    // Upstream names carry a prefix here, so the mount's `from` must be rewritten to work.
    let proxy = Proxy::start(&[]);
    let digest = proxy.upload_blob("dev/intric/backend", format!("a layer to promote {}", unique()).as_bytes());
    let blob = format!("/v2/release/intric/backend/blobs/{digest}");
    assert_eq!(proxy.call("HEAD", &blob, &[], None).status, 404, "not in release before the mount");
    let mount = format!("/v2/release/intric/backend/blobs/uploads/?mount={digest}&from=dev/intric/backend");
    let mounted = proxy.call("POST", &mount, &[], Some(Vec::new()));
    assert_eq!(mounted.status, 201, "{}", mounted.text());
    assert_eq!(mounted.header("location"), Some(proxy.url(&blob).as_str()));
    assert_eq!(proxy.call("HEAD", &blob, &[], None).status, 200, "in release after the mount");

    // A blob the source does not hold is not mounted: a plain upload starts instead.
    let missing = sha256(b"nowhere");
    let mount = format!("/v2/release/intric/backend/blobs/uploads/?mount={missing}&from=dev/intric/backend");
    assert_eq!(proxy.call("POST", &mount, &[], Some(Vec::new())).status, 202);
}

#[test]
fn manifest_puts_answer_503_after_n_and_the_log_shows_every_put() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let proxy = Proxy::start(&[]);
    let dev = "dev/intric/backend";
    let manifest = proxy.image(dev, "faults");
    assert_eq!(proxy.control("POST", "/_lab/fail-after-puts?n=2").status, 204);
    let statuses: Vec<u16> = ["a", "b", "c"].iter().map(|tag| proxy.put_manifest(dev, tag, &manifest).status).collect();
    assert_eq!(statuses, [201, 201, 503]);
    assert_eq!(proxy.call("GET", "/v2/", &[], None).status, 200, "only manifest PUTs fail");
    let log = proxy.control("GET", "/_lab/log").json();
    let seen: Vec<(String, String, u64)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|put| {
            (
                put["method"].as_str().unwrap().into(),
                put["path"].as_str().unwrap().into(),
                put["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, String, u64)> = [("a", 201), ("b", 201), ("c", 503)]
        .iter()
        .map(|(tag, status)| ("PUT".to_string(), format!("/v2/{dev}/manifests/{tag}"), *status))
        .collect();
    assert_eq!(seen, expected);

    assert_eq!(proxy.control("POST", "/_lab/reset").status, 204);
    assert_eq!(proxy.control("GET", "/_lab/log").json(), json!([]), "reset empties the log");
    assert_eq!(proxy.put_manifest(dev, "d", &manifest).status, 201, "reset ends the fault");

    // scope=all: every request fails once the allowance is used up.
    assert_eq!(proxy.control("POST", "/_lab/fail-after-puts?n=0&scope=all").status, 204);
    assert_eq!(proxy.call("GET", "/v2/", &[], None).status, 503);
    assert_eq!(proxy.control("POST", "/_lab/reset").status, 204);
    assert_eq!(proxy.call("GET", "/v2/", &[], None).status, 200);
}

#[test]
fn forced_basic_auth_challenges_with_basic_and_accepts_it() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let proxy = Proxy::start(&["--auth", "basic"]);
    let answer = http("GET", &proxy.url("/v2/"), &[], None);
    assert_eq!(answer.status, 401);
    assert!(
        answer.header("www-authenticate").is_some_and(|value| value.starts_with("Basic realm=")),
        "{:?}",
        answer.headers
    );
    let lab = lab();
    let basic = format!("Basic {}", base64(format!("{}:{}", lab["NEXUS_USERNAME"], lab["NEXUS_PASSWORD"]).as_bytes()));
    assert_eq!(http("GET", &proxy.url("/v2/"), &[("Authorization", &basic)], None).status, 200);
    assert_eq!(http("GET", &proxy.url("/v2/token?service=nexus-lab"), &[("Authorization", &basic)], None).status, 404);
}

#[test]
fn large_layers_stream_through_the_proxy_without_being_held_in_memory() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    const LAYER: usize = 120 * 1024 * 1024;
    let proxy = Proxy::start(&[]);
    docker_login(&proxy.host);
    let image = format!("{}/dev/intric/nexus-lab-test:large", proxy.host);
    import_image(&image, 12_345, LAYER);
    let push = docker(&["push", &image]);
    let _ = docker(&["rmi", &image]);
    assert_success(&push, "docker push of a large layer through the proxy");
    let stats = proxy.control("GET", "/_lab/stats").json();
    let uploaded = stats["request_body_bytes"].as_u64().unwrap();
    assert!(uploaded > LAYER as u64 * 9 / 10, "the layer went through the proxy: {stats}");
    // The engine sends layers with `Transfer-Encoding: chunked`, which the proxy must decode.
    assert!(stats["chunked_requests"].as_u64().unwrap() > 0, "{stats}");
    let peak = proxy.peak_memory();
    eprintln!("the proxy peaked at {} MiB with {} MiB of request bodies", peak >> 20, uploaded >> 20);
    assert!(
        peak < 64 * 1024 * 1024,
        "the proxy peaked at {} MiB: it holds bodies instead of streaming them",
        peak >> 20
    );
    if skopeo_available() {
        assert_eq!(skopeo_digest(&image), pushed_digest(&push), "skopeo reads what docker pushed");
    }
}
