//! The registry adapter: a small client for the Docker Registry HTTP API v2, as spoken by Sonatype
//! Nexus and by Distribution (the lab registry). It reads and writes manifests, lists tags and
//! reads image configs, so that `build` can retag an unchanged image, `release` can promote
//! `sha-` manifests to release tags, `update` can check that tags exist, and `doctor` can check
//! that the registry answers and accepts the login, all without pulling or pushing layers.
//!
//! It talks HTTP(S) to the registry named by a setting of the form `host[:port][/path]` (the path
//! is Nexus's path-based routing), and to the token endpoint the registry names in its Bearer
//! challenge. Credentials come from `NEXUS_USERNAME`/`NEXUS_PASSWORD`, else from the docker
//! client's configuration (including credential helpers, which it runs with the server name on
//! standard input). Where Nexus differs from Distribution (see `NEXUS-FACTS.md`), this module
//! follows Nexus: HEAD falling back to GET, paging tags without trusting `Link`, and plain words
//! for the "redeploy disabled" refusal.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};
use ureq::http;

use crate::adapters::ci_env::Env;
use crate::plan::Secret;

/// Docker image manifest, schema 2: one platform.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list: one manifest per platform.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest: one platform.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index: one manifest per platform (and buildx attestations).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Every manifest type this client understands. Without this `Accept`, registries may answer
/// with the obsolete schema 1, whose digest differs from what docker pushed.
const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// How long to wait for a TCP (and TLS) connection before treating the registry as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a single read or write may stall; a registry that is slow but moving is fine.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Manifests are limited to 4 MiB by Distribution and image configs are far smaller, so a larger
/// answer means something is wrong rather than a body worth reading.
const MAX_BODY: u64 = 16 * 1024 * 1024;
/// Tags asked for per page of `tags/list`.
const TAGS_PAGE: usize = 1000;

// ---------------------------------------------------------------------------------------------
// Addressing

/// Whether the registry is spoken to over TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Where a registry is: parsed from a setting `host[:port][/path]`.
///
/// The scheme is https, except http for loopback hosts (`localhost`, `127.0.0.0/8`, `[::1]`),
/// which docker also treats as insecure registries, and for a setting written with an explicit
/// `http://` in front (the opt-in for a registry without TLS elsewhere). An explicit `https://`
/// forces TLS even on loopback. Displaying an address gives `host[:port][/path]`, the prefix of
/// image names (`<registry>/intric/<service>`), without the scheme.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryAddress {
    pub scheme: Scheme,
    /// `host[:port]`, with an IPv6 address in brackets: the name `docker login` uses.
    pub host: String,
    /// The path before the image name (Nexus path-based routing: the repository), without
    /// leading or trailing slashes; empty when there is none.
    pub path_prefix: String,
}

impl RegistryAddress {
    /// Parses a registry setting; the error is one line naming the value and the expected form.
    pub fn parse(setting: &str) -> Result<RegistryAddress> {
        let invalid = |why: &str| {
            anyhow!(
                "invalid registry `{setting}`: {why}; expected host[:port][/path], e.g. nexus.example:8082 \
                 or nexus.example/docker-hosted (with http:// in front for a registry without TLS)"
            )
        };
        let (explicit, rest) = if let Some(rest) = setting.strip_prefix("http://") {
            (Some(Scheme::Http), rest)
        } else if let Some(rest) = setting.strip_prefix("https://") {
            (Some(Scheme::Https), rest)
        } else if setting.contains("://") {
            return Err(invalid("the only schemes allowed are http:// and https://"));
        } else {
            (None, setting)
        };
        let rest = rest.trim_end_matches('/');
        let (host, path_prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let loopback = if let Some(bracketed) = host.strip_prefix('[') {
            let (address, port) = bracketed.split_once(']').ok_or_else(|| invalid("unclosed `[`"))?;
            let ip = address.parse::<Ipv6Addr>().map_err(|_| invalid("not an IPv6 address in `[...]`"))?;
            check_port(port.strip_prefix(':'), port.is_empty()).map_err(&invalid)?;
            ip.is_loopback()
        } else {
            let (name, port) = match host.split_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host, None),
            };
            let label_ok = |label: &str| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            };
            if name.is_empty() {
                return Err(invalid("the host is missing"));
            }
            if !name.split('.').all(label_ok) {
                return Err(invalid("the host is not a valid host name"));
            }
            check_port(port, port.is_none()).map_err(&invalid)?;
            name.eq_ignore_ascii_case("localhost") || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        };
        let segment_ok = |segment: &str| {
            !segment.is_empty()
                && segment.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        };
        if !path_prefix.is_empty() && !path_prefix.split('/').all(segment_ok) {
            return Err(invalid("the path may hold only lowercase letters, digits, `.`, `_` and `-` between slashes"));
        }
        let scheme = explicit.unwrap_or(if loopback { Scheme::Http } else { Scheme::Https });
        Ok(RegistryAddress { scheme, host: host.to_ascii_lowercase(), path_prefix: path_prefix.to_string() })
    }

    /// The name of `repository` (`intric/backend`) in API paths: `<path prefix>/intric/backend`.
    pub fn repository_path(&self, repository: &str) -> String {
        if self.path_prefix.is_empty() { repository.to_string() } else { format!("{}/{repository}", self.path_prefix) }
    }

    /// `scheme://host[:port]`, the start of every API URL.
    fn base_url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{scheme}://{}", self.host)
    }

    /// The URL of `/v2/<path prefix>/<repository>/<rest>`.
    fn api_url(&self, repository: &str, rest: &str) -> String {
        format!("{}/v2/{}/{rest}", self.base_url(), self.repository_path(repository))
    }
}

/// Checks an optional port; `absent_ok` tells whether having none is fine.
fn check_port(port: Option<&str>, absent_ok: bool) -> std::result::Result<(), &'static str> {
    match port {
        None if absent_ok => Ok(()),
        None => Err("unexpected text after `]`"),
        Some(port) if port.parse::<u16>().is_ok_and(|port| port > 0) => Ok(()),
        Some(_) => Err("the port is not a number from 1 to 65535"),
    }
}

impl fmt::Display for RegistryAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)?;
        if !self.path_prefix.is_empty() {
            write!(f, "/{}", self.path_prefix)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials

/// A user name and password for the registry. The password prints as its name only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Credentials {
    /// `NEXUS_USERNAME` and `NEXUS_PASSWORD` from `env`, or `None` when neither is set (an empty
    /// value counts as unset). Only one of the two set is an error, not a silent anonymous login.
    pub fn from_env(env: &Env) -> Result<Option<Credentials>> {
        let value = |name: &str| env.get(name).filter(|value| !value.is_empty());
        match (value("NEXUS_USERNAME"), value("NEXUS_PASSWORD")) {
            (Some(username), Some(password)) => {
                Ok(Some(Credentials { username: username.clone(), password: Secret::new("NEXUS_PASSWORD", password) }))
            }
            (Some(_), None) => bail!("NEXUS_USERNAME is set but NEXUS_PASSWORD is not: set both, or neither"),
            (None, Some(_)) => bail!("NEXUS_PASSWORD is set but NEXUS_USERNAME is not: set both, or neither"),
            (None, None) => Ok(None),
        }
    }

    /// Whether `self` is the login the docker client already holds for `address`: then
    /// `docker login` would change nothing.
    pub fn is_docker_login(&self, address: &RegistryAddress) -> bool {
        matches!(
            Credentials::from_docker_config(address),
            Ok(Some(stored)) if stored.username == self.username && stored.password.expose() == self.password.expose()
        )
    }

    /// Finds the credentials for `address`: `NEXUS_USERNAME` and `NEXUS_PASSWORD` from the
    /// environment, else the docker client's login for the host (`$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json`, through its credential helper if one is configured), else
    /// none (anonymous access).
    pub fn find(address: &RegistryAddress) -> Result<Option<Credentials>> {
        match Credentials::from_env(&crate::adapters::ci_env::process_env())? {
            Some(credentials) => Ok(Some(credentials)),
            None => Credentials::from_docker_config(address),
        }
    }

    /// The docker client's login for the host of `address`, if it has one.
    pub fn from_docker_config(address: &RegistryAddress) -> Result<Option<Credentials>> {
        let path = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => PathBuf::from(dir).join("config.json"),
            None => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".docker/config.json"),
                None => return Ok(None),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
        };
        match docker_config_entry(&text, &address.host).with_context(|| format!("cannot read {}", path.display()))? {
            DockerLogin::Stored(credentials) => Ok(Some(credentials)),
            DockerLogin::Helper(helper) => credential_helper_get(&helper, &address.host)
                .with_context(|| format!("cannot get the login for {} from {}", address.host, path.display())),
            DockerLogin::None => Ok(None),
        }
    }
}

/// What the docker client's configuration says about one registry host.
#[derive(Debug, PartialEq, Eq)]
enum DockerLogin {
    /// `auths.<host>.auth`: base64 of `user:password`.
    Stored(Credentials),
    /// A credential helper (`credHelpers.<host>`, else `credsStore`) holds the login.
    Helper(String),
    None,
}

/// Reads the login for `host` from the text of a docker `config.json`. Keys of `auths` are
/// compared the way docker compares them: without scheme and path (`https://host/v1/` is `host`).
fn docker_config_entry(text: &str, host: &str) -> Result<DockerLogin> {
    let config: Value = serde_json::from_str(text).context("not valid JSON")?;
    let same_host = |key: &str| {
        let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
        key.split('/').next().is_some_and(|key_host| key_host.eq_ignore_ascii_case(host))
    };
    if let Some(helper) = config["credHelpers"]
        .as_object()
        .and_then(|helpers| helpers.iter().find(|(key, _)| same_host(key)))
        .and_then(|(_, helper)| helper.as_str())
    {
        return Ok(DockerLogin::Helper(helper.to_string()));
    }
    let stored = config["auths"]
        .as_object()
        .and_then(|auths| auths.iter().find(|(key, _)| same_host(key)))
        .and_then(|(_, entry)| entry["auth"].as_str())
        .filter(|auth| !auth.is_empty());
    if let Some(auth) = stored {
        let decoded = base64_decode(auth)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .with_context(|| format!("auths.{host}.auth is not base64 of user:password"))?;
        let (username, password) =
            decoded.split_once(':').with_context(|| format!("auths.{host}.auth is not base64 of user:password"))?;
        return Ok(DockerLogin::Stored(Credentials {
            username: username.to_string(),
            password: Secret::new(format!("password for {host} from the docker config"), password),
        }));
    }
    match config["credsStore"].as_str().filter(|store| !store.is_empty()) {
        Some(store) => Ok(DockerLogin::Helper(store.to_string())),
        None => Ok(DockerLogin::None),
    }
}

/// Runs `docker-credential-<helper> get` with the server name on standard input (never in argv)
/// and reads `{"Username": ..., "Secret": ...}` from its output. "Not found" means no login.
fn credential_helper_get(helper: &str, server: &str) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{helper}");
    let mut child = std::process::Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program} (the docker config names it as credential helper)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(server.as_bytes()).with_context(|| format!("cannot write to {program}"))?;
    }
    let output = child.wait_with_output().with_context(|| format!("{program} get failed"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // The helper protocol reports a missing login as this message on standard output.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        // Standard output could hold part of a secret, so only standard error is shown.
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("{program} get failed ({}): {}", output.status, stderr.lines().next().unwrap_or("").trim());
    }
    let answer: Value = serde_json::from_str(&stdout).with_context(|| format!("{program} get did not print JSON"))?;
    let (Some(username), Some(secret)) = (answer["Username"].as_str(), answer["Secret"].as_str()) else {
        bail!("{program} get printed no Username and Secret");
    };
    if username == "<token>" {
        bail!(
            "{program} holds an identity token for {server}, which this tool cannot use: set NEXUS_USERNAME/NEXUS_PASSWORD"
        );
    }
    Ok(Some(Credentials {
        username: username.to_string(),
        password: Secret::new(format!("password for {server} from {program}"), secret),
    }))
}

// ---------------------------------------------------------------------------------------------
// The client

/// How transient failures (5xx, 429, refused or reset connections, timeouts) are retried:
/// `attempts` tries in all, waiting `first_delay` after the first failure and twice as long
/// after each further one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub attempts: u32,
    pub first_delay: Duration,
}

impl Backoff {
    /// Five attempts, waiting 0.5 s, 1 s, 2 s and 4 s between them: a registry restarting or a
    /// proxy hiccup is ridden out, while a registry that is down fails within ten seconds.
    pub const STANDARD: Backoff = Backoff { attempts: 5, first_delay: Duration::from_millis(500) };

    /// One attempt: for a dry run, which reports a registry that does not answer instead of
    /// waiting for it.
    pub const NONE: Backoff = Backoff { attempts: 1, first_delay: Duration::ZERO };
}

/// An image manifest (or manifest list/index) exactly as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The media type, to be sent back as `Content-Type` when the manifest is put under a tag.
    pub media_type: String,
    /// `sha256:<hex>`: the digest of `bytes`.
    pub digest: String,
    /// The bytes as served; putting the same bytes keeps the digest.
    pub bytes: Vec<u8>,
}

impl Manifest {
    /// Whether this is a manifest list or OCI index (one manifest per platform).
    pub fn is_index(&self) -> bool {
        self.media_type == DOCKER_MANIFEST_LIST || self.media_type == OCI_INDEX
    }
}

/// A client for one registry, shared by all threads of a task. It learns the registry's
/// challenge (Basic or Bearer) from the first 401 and then authenticates up front, keeping one
/// Bearer token per scope.
pub struct Registry {
    address: RegistryAddress,
    credentials: Option<Credentials>,
    backoff: Backoff,
    agent: ureq::Agent,
    auth: Mutex<AuthState>,
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    /// Bearer tokens by scope (the empty string for calls without a repository).
    tokens: HashMap<String, String>,
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// One HTTP request to make, with what it needs for authentication.
struct Call<'a> {
    method: &'static str,
    url: String,
    /// The Bearer token scope the call needs (`repository:<name>:pull,push`), if any.
    scope: Option<String>,
    accept: Option<&'a str>,
    content_type: Option<&'a str>,
    body: Option<&'a [u8]>,
}

impl<'a> Call<'a> {
    fn new(method: &'static str, url: String, scope: Option<String>) -> Call<'a> {
        Call { method, url, scope, accept: None, content_type: None, body: None }
    }
}

/// An answer, read completely.
struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The registry's error list (`{"errors": [{"code", "message", "detail"}]}`) as one line,
    /// or the start of the body when it is not in that form.
    fn errors(&self) -> String {
        registry_errors(&self.body)
    }
}

/// Why one attempt failed: worth retrying, or final.
enum Failure {
    Transient(anyhow::Error),
    Fatal(anyhow::Error),
}

impl Registry {
    /// A client for `address`, logging in with `credentials` (none: anonymous) and retrying
    /// transient failures by `backoff` ([`Backoff::STANDARD`] outside tests).
    pub fn new(address: RegistryAddress, credentials: Option<Credentials>, backoff: Backoff) -> Registry {
        Registry::with_timeouts(address, credentials, backoff, CONNECT_TIMEOUT, IO_TIMEOUT)
    }

    /// A client for a dry run: one attempt per request, and at most `timeout` for connecting
    /// and for each read or write, so that a registry that does not answer is reported at once.
    pub fn impatient(address: RegistryAddress, credentials: Option<Credentials>, timeout: Duration) -> Registry {
        Registry::with_timeouts(address, credentials, Backoff::NONE, timeout, timeout)
    }

    fn with_timeouts(
        address: RegistryAddress,
        credentials: Option<Credentials>,
        backoff: Backoff,
        connect: Duration,
        io: Duration,
    ) -> Registry {
        let config = ureq::Agent::config_builder()
            // Statuses are answers to interpret (404 means "no such tag"), not errors.
            .http_status_as_error(false)
            // A host name that does not resolve can hang the system resolver for long.
            .timeout_resolve(Some(connect))
            .timeout_connect(Some(connect))
            .timeout_per_read(Some(io))
            .timeout_per_write(Some(io))
            // Blob downloads may be redirected to storage on another host, which must not see
            // the registry's credentials; a redirect within the registry host keeps them.
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .user_agent(concat!("intric-xtask/", env!("CARGO_PKG_VERSION")))
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build())
            .build();
        Registry { address, credentials, backoff, agent: config.new_agent(), auth: Mutex::default() }
    }

    /// The registry this client talks to.
    pub fn address(&self) -> &RegistryAddress {
        &self.address
    }

    /// Checks that the registry answers `GET /v2/` and accepts the login (doctor's check).
    #[allow(dead_code, reason = "the doctor task calls it; remove once it does")]
    pub fn check_access(&self) -> Result<()> {
        let url = format!("{}/v2/", self.address.base_url());
        let reply = self
            .execute(&Call::new("GET", url.clone(), None))
            .with_context(|| format!("registry {} is not usable", self.address))?;
        match reply.status {
            200 => Ok(()),
            404 => bail!(
                "{url} answered HTTP 404: {} does not look like a Docker registry (check the host, port and path)",
                self.address
            ),
            status => bail!("{url} answered HTTP {status}: {}", reply.errors()),
        }
    }

    /// The manifest `repository:reference` (a tag or digest), or `None` when there is none.
    pub fn manifest(&self, repository: &str, reference: &str) -> Result<Option<Manifest>> {
        self.get_manifest(repository, reference)
            .with_context(|| format!("cannot read the manifest of {}", self.image(repository, reference)))
    }

    /// The digest of `repository:reference`, or `None` when there is none. Asks with HEAD, and
    /// with GET when HEAD answers 404 or 405 (Nexus has answered 404 to HEAD where GET works).
    pub fn manifest_digest(&self, repository: &str, reference: &str) -> Result<Option<String>> {
        let image = self.image(repository, reference);
        let mut call = Call::new(
            "HEAD",
            self.address.api_url(repository, &format!("manifests/{reference}")),
            Some(self.scope(repository)),
        );
        call.accept = Some(MANIFEST_ACCEPT);
        let reply = self.execute(&call).with_context(|| format!("cannot read the digest of {image}"))?;
        match reply.status {
            200 => {
                if let Some(digest) = reply.header("docker-content-digest") {
                    return Ok(Some(digest.to_string()));
                }
            }
            404 | 405 => {}
            status => bail!("cannot read the digest of {image}: HTTP {status}"),
        }
        Ok(self.manifest(repository, reference)?.map(|manifest| manifest.digest))
    }

    /// Puts `manifest`'s bytes, unchanged and with their own media type, under
    /// `repository:tag`, so the tag gets the same digest; returns the digest the registry
    /// reports. Layers are not touched: they must already be in `repository`.
    pub fn put_manifest(&self, repository: &str, tag: &str, manifest: &Manifest) -> Result<String> {
        let image = self.image(repository, tag);
        let mut call = Call::new(
            "PUT",
            self.address.api_url(repository, &format!("manifests/{tag}")),
            Some(self.scope(repository)),
        );
        call.content_type = Some(&manifest.media_type);
        call.body = Some(&manifest.bytes);
        let reply = self.execute(&call).with_context(|| format!("cannot tag {image}"))?;
        match reply.status {
            200..=299 => {
                Ok(reply.header("docker-content-digest").map_or_else(|| manifest.digest.clone(), str::to_string))
            }
            400 if is_redeploy_refusal(&reply.body) => {
                // Nexus gives the same answer for an existing tag and (on some versions) for a
                // new tag of a manifest it already holds; which one it is decides the advice.
                let exists = self.manifest_digest(repository, tag).ok().flatten().is_some();
                let repo = format!("{}/{repository}", self.address);
                if exists {
                    bail!(
                        "cannot tag {image}: tag {tag} already exists in {repo} and the repository does not \
                         allow redeploy; use a new tag or allow redeploy (Nexus: the hosted repository's \
                         deployment policy)"
                    )
                } else {
                    bail!(
                        "cannot tag {image}: {repo} refused the new tag {tag} because its deployment policy \
                         disables redeploy (some Nexus versions refuse any new tag for a manifest the repository \
                         already holds); allow redeploy, or promote into a separate release repository"
                    )
                }
            }
            413 => bail!(
                "cannot tag {image}: HTTP 413, the request body is too large for a reverse proxy in front of \
                 the registry; raise its body limit (nginx: client_max_body_size 0;)"
            ),
            status => {
                let errors = reply.errors();
                let hint = if errors.contains("BLOB_UNKNOWN") || errors.contains("missing layer") {
                    format!(
                        "; the manifest refers to layers {} does not hold (if it is a Nexus group repository, \
                         push to the hosted repository directly)",
                        self.address
                    )
                } else {
                    String::new()
                };
                bail!("cannot tag {image}: HTTP {status}: {errors}{hint}")
            }
        }
    }

    /// All tags of `repository`, sorted; empty when the repository does not exist. Pages with
    /// `n` and `last` itself, since Nexus's `Link` header can be missing or wrong.
    pub fn tags(&self, repository: &str) -> Result<Vec<String>> {
        let context = || format!("cannot list the tags of {}/{repository}", self.address);
        let mut tags = Vec::new();
        let mut seen = HashSet::new();
        let mut last: Option<String> = None;
        loop {
            let mut url = self.address.api_url(repository, &format!("tags/list?n={TAGS_PAGE}"));
            if let Some(last) = &last {
                url.push_str(&format!("&last={}", percent_encode(last)));
            }
            let reply = self.execute(&Call::new("GET", url, Some(self.scope(repository)))).with_context(context)?;
            let page: Vec<String> = match reply.status {
                200 => {
                    let list: Value = serde_json::from_slice(&reply.body)
                        .with_context(|| format!("{}: the tag list is not JSON", context()))?;
                    // A repository whose tags were all deleted answers `"tags": null`.
                    list["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|tag| tag.as_str())
                        .map(str::to_string)
                        .collect()
                }
                // Only "no such repository" means no tags; another 404 (a wrong path prefix, say)
                // must not read as "this tag is free".
                404 if error_codes(&reply.body).iter().all(|code| code == "NAME_UNKNOWN") => Vec::new(),
                status => bail!("{}: HTTP {status}: {}", context(), reply.errors()),
            };
            let before = tags.len();
            for tag in &page {
                if seen.insert(tag.clone()) {
                    tags.push(tag.clone());
                }
            }
            // A short page is the last one; a page with nothing new means the registry ignored
            // `last`, and asking again would loop forever.
            if page.len() < TAGS_PAGE || tags.len() == before {
                break;
            }
            last = page.last().cloned();
        }
        tags.sort();
        Ok(tags)
    }

    /// The image config (the JSON whose `config.Labels` holds the labels) of `manifest`, which
    /// came from `repository`. For a list or index, the linux/amd64 image's config is read (or
    /// the first image's, when there is no linux/amd64 one).
    pub fn image_config(&self, repository: &str, manifest: &Manifest) -> Result<Value> {
        let image = self.image(repository, &manifest.digest);
        let context = || format!("cannot read the image config of {image}");
        let child;
        let manifest = if manifest.is_index() {
            let index: Value = serde_json::from_slice(&manifest.bytes).with_context(context)?;
            let digest =
                platform_manifest(&index).with_context(|| format!("{}: the index lists no image", context()))?;
            child = self
                .manifest(repository, &digest)?
                .with_context(|| format!("{}: the index refers to {digest}, which is missing", context()))?;
            if child.is_index() {
                bail!("{}: the index refers to another index ({digest})", context());
            }
            &child
        } else {
            manifest
        };
        let parsed: Value = serde_json::from_slice(&manifest.bytes).with_context(context)?;
        let config_digest = parsed["config"]["digest"]
            .as_str()
            .with_context(|| format!("{}: the manifest names no config", context()))?;
        let url = self.address.api_url(repository, &format!("blobs/{config_digest}"));
        let reply = self.execute(&Call::new("GET", url, Some(self.scope(repository)))).with_context(context)?;
        if reply.status != 200 {
            bail!("{}: config blob {config_digest}: HTTP {}: {}", context(), reply.status, reply.errors());
        }
        if config_digest.starts_with("sha256:") && sha256_digest(&reply.body) != config_digest {
            bail!("{}: the config blob does not match its digest {config_digest}", context());
        }
        serde_json::from_slice(&reply.body).with_context(|| format!("{}: the config blob is not JSON", context()))
    }

    fn get_manifest(&self, repository: &str, reference: &str) -> Result<Option<Manifest>> {
        let mut call = Call::new(
            "GET",
            self.address.api_url(repository, &format!("manifests/{reference}")),
            Some(self.scope(repository)),
        );
        call.accept = Some(MANIFEST_ACCEPT);
        let reply = self.execute(&call)?;
        match reply.status {
            200 => {}
            404 => return Ok(None),
            status => bail!("HTTP {status}: {}", reply.errors()),
        }
        let media_type = manifest_media_type(reply.header("content-type"), &reply.body)?;
        let digest = reply.header("docker-content-digest").map_or_else(|| sha256_digest(&reply.body), str::to_string);
        Ok(Some(Manifest { media_type, digest, bytes: reply.body }))
    }

    /// `<registry>/<repository>:<tag>` or `<registry>/<repository>@<digest>`, for messages.
    fn image(&self, repository: &str, reference: &str) -> String {
        let separator = if reference.contains(':') { '@' } else { ':' };
        format!("{}/{repository}{separator}{reference}", self.address)
    }

    /// The token scope for calls on `repository`. Pull and push are always asked for together so
    /// one token serves every call on the repository; token servers grant what the user may do.
    fn scope(&self, repository: &str) -> String {
        format!("repository:{}:pull,push", self.address.repository_path(repository))
    }

    /// Makes `call`, authenticating as the registry asks and retrying transient failures. The
    /// answer may have any status except 401/403 (login errors) and 5xx (retried, then errors).
    fn execute(&self, call: &Call) -> Result<Reply> {
        let started = Instant::now();
        let mut delay = self.backoff.first_delay;
        let attempts = self.backoff.attempts.max(1);
        for attempt in 1..=attempts {
            let error = match self.send_authenticated(call) {
                Ok(reply) if reply.status >= 500 || reply.status == 429 => {
                    anyhow!("HTTP {}: {}", reply.status, reply.errors())
                }
                Ok(reply) => return Ok(reply),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Transient(error)) => error,
            };
            if attempt == attempts {
                return Err(error.context(format!(
                    "{} {} failed after {attempts} attempts over {:.1} s",
                    call.method,
                    call.url,
                    started.elapsed().as_secs_f64()
                )));
            }
            std::thread::sleep(delay);
            delay *= 2;
        }
        unreachable!("the last attempt returns")
    }

    /// One attempt: sends with the authentication learned so far; on 401, follows the challenge
    /// (Basic, or a Bearer token from the realm) and sends once more.
    fn send_authenticated(&self, call: &Call) -> std::result::Result<Reply, Failure> {
        let first = self.authorization(call.scope.as_deref(), false)?;
        let reply = self.send(call, first.as_deref())?;
        if reply.status == 403 {
            return Err(Failure::Fatal(self.login_failed(403, "")));
        }
        if reply.status != 401 {
            return Ok(reply);
        }
        let challenge = reply
            .headers
            .get_all("www-authenticate")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(parse_challenge)
            .ok_or_else(|| {
                Failure::Fatal(self.login_failed(401, "; the registry sent no usable WWW-Authenticate challenge"))
            })?;
        // Which scheme the registry asked for is part of the message: Nexus switches between them
        // with its "Docker Bearer Token Realm" and `forceBasicAuth` settings.
        let how = match &challenge {
            Challenge::Basic => "; the registry asks for Basic auth".to_string(),
            Challenge::Bearer { realm, .. } => format!("; the registry asks for a Bearer token from {realm}"),
        };
        let challenge_is_basic = challenge == Challenge::Basic;
        let known = {
            let mut state = self.auth.lock().expect("auth state lock");
            let known = state.challenge.as_ref() == Some(&challenge);
            state.challenge = Some(challenge);
            known
        };
        if challenge_is_basic && known && first.is_some() {
            // The credentials were already sent as the registry asks; sending them again cannot help.
            return Err(Failure::Fatal(self.login_failed(401, &how)));
        }
        // Only a Basic challenge without credentials leaves nothing to send.
        let Some(second) = self.authorization(call.scope.as_deref(), true)? else {
            return Err(Failure::Fatal(self.login_failed(401, &how)));
        };
        let reply = self.send(call, Some(&second))?;
        match reply.status {
            401 | 403 => Err(Failure::Fatal(self.login_failed(reply.status, &how))),
            _ => Ok(reply),
        }
    }

    /// The `Authorization` header for a call with `scope`, by the challenge learned so far;
    /// `fresh` fetches a new Bearer token instead of using the cached one (which was refused).
    fn authorization(&self, scope: Option<&str>, fresh: bool) -> std::result::Result<Option<String>, Failure> {
        let (challenge, cached) = {
            let state = self.auth.lock().expect("auth state lock");
            let challenge = state.challenge.clone();
            let scope_key = scope_key(scope, challenge.as_ref());
            (challenge, state.tokens.get(&scope_key).cloned())
        };
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.credentials.as_ref().map(basic_authorization)),
            Some(Challenge::Bearer { realm, service, scope: challenge_scope }) => {
                if let Some(token) = cached.filter(|_| !fresh) {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let scope = scope.map(str::to_string).or(challenge_scope);
                let token = self.fetch_token(&realm, service.as_deref(), scope.as_deref())?;
                let mut state = self.auth.lock().expect("auth state lock");
                state.tokens.insert(scope.unwrap_or_default(), token.clone());
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Gets a Bearer token from `realm` with the credentials as Basic auth (or anonymously).
    /// Errors name the realm URL, since a reverse proxy can make the registry send a wrong one.
    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> std::result::Result<String, Failure> {
        if realm.starts_with("http://") && self.address.scheme == Scheme::Https && self.credentials.is_some() {
            return Err(Failure::Fatal(anyhow!(
                "{} sent the token realm {realm}, which is plain HTTP: refusing to send the password there \
                 (check the registry's base URL or the reverse proxy in front of it)",
                self.address
            )));
        }
        let mut url = realm.to_string();
        let mut separator = if realm.contains('?') { '&' } else { '?' };
        for (key, value) in [("service", service), ("scope", scope)] {
            if let Some(value) = value {
                url.push_str(&format!("{separator}{key}={}", percent_encode(value)));
                separator = '&';
            }
        }
        let call = Call::new("GET", url, None);
        let authorization = self.credentials.as_ref().map(basic_authorization);
        let in_realm = |error: anyhow::Error| error.context(format!("token request to realm {realm} failed"));
        let reply = self.send(&call, authorization.as_deref()).map_err(|failure| match failure {
            Failure::Transient(error) => Failure::Transient(in_realm(error)),
            Failure::Fatal(error) => Failure::Fatal(in_realm(error)),
        })?;
        match reply.status {
            200 => {}
            401 | 403 => {
                return Err(Failure::Fatal(
                    self.login_failed(reply.status, &format!("; the token realm {realm} refused the login")),
                ));
            }
            status if status >= 500 || status == 429 => {
                return Err(Failure::Transient(anyhow!("token request to realm {realm} failed: HTTP {status}")));
            }
            status => {
                return Err(Failure::Fatal(anyhow!(
                    "token request to realm {realm} failed: HTTP {status}: {}",
                    reply.errors()
                )));
            }
        }
        let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        answer["token"]
            .as_str()
            .or_else(|| answer["access_token"].as_str())
            .filter(|token| !token.is_empty())
            .map(str::to_string)
            .ok_or_else(|| Failure::Fatal(anyhow!("token request to realm {realm}: the answer holds no token")))
    }

    /// Sends `call` once, with `authorization` if given, and reads the whole answer.
    fn send(&self, call: &Call, authorization: Option<&str>) -> std::result::Result<Reply, Failure> {
        let mut request = http::Request::builder().method(call.method).uri(&call.url);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        if let Some(accept) = call.accept {
            request = request.header("accept", accept);
        }
        if let Some(content_type) = call.content_type {
            request = request.header("content-type", content_type);
        }
        let bad_request = |error: http::Error| Failure::Fatal(anyhow!("{} {}: {error}", call.method, call.url));
        let result = match call.body {
            Some(body) => self.agent.run(request.body(body).map_err(bad_request)?),
            None => self.agent.run(request.body(()).map_err(bad_request)?),
        };
        let on_error = |error: ureq::Error| {
            let transient = is_transient(&error);
            let error = anyhow!("{} {}: {error}", call.method, call.url);
            if transient { Failure::Transient(error) } else { Failure::Fatal(error) }
        };
        let mut response = result.map_err(on_error)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = if call.method == "HEAD" {
            Vec::new()
        } else {
            response.body_mut().with_config().limit(MAX_BODY).read_to_vec().map_err(on_error)?
        };
        Ok(Reply { status, headers, body })
    }

    /// The error for a refused login. It names the user, never the password.
    fn login_failed(&self, status: u16, detail: &str) -> anyhow::Error {
        let registry = &self.address;
        let host = &self.address.host;
        let privileges =
            if status == 403 { "; HTTP 403 can also mean the user lacks privileges for the repository" } else { "" };
        match &self.credentials {
            Some(credentials) => anyhow!(
                "login to {registry} as {} failed (HTTP {status}): check NEXUS_USERNAME/NEXUS_PASSWORD or \
                 `docker login {host}`{detail}{privileges}",
                credentials.username
            ),
            None => anyhow!(
                "{registry} requires a login (HTTP {status}) and none was found: set NEXUS_USERNAME/NEXUS_PASSWORD \
                 or run `docker login {host}`{detail}"
            ),
        }
    }
}

/// The key under which a Bearer token for `scope` is cached.
fn scope_key(scope: Option<&str>, challenge: Option<&Challenge>) -> String {
    match (scope, challenge) {
        (Some(scope), _) => scope.to_string(),
        (None, Some(Challenge::Bearer { scope: Some(scope), .. })) => scope.clone(),
        _ => String::new(),
    }
}

fn basic_authorization(credentials: &Credentials) -> String {
    format!("Basic {}", base64_encode(format!("{}:{}", credentials.username, credentials.password.expose()).as_bytes()))
}

/// Whether a transport error may go away by itself: refused, reset or timed-out connections.
/// A host name that does not resolve or a TLS failure is a setting to fix, not to wait for.
fn is_transient(error: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match error {
        ureq::Error::Io(error) => matches!(
            error.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::NotConnected
                | ErrorKind::BrokenPipe
                | ErrorKind::TimedOut
                | ErrorKind::UnexpectedEof
                | ErrorKind::Interrupted
        ),
        ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed => true,
        _ => false,
    }
}

/// Parses the first challenge of a `WWW-Authenticate` value: `Basic realm="..."` or
/// `Bearer realm="...",service="...",scope="..."`, with quoted values that may hold commas.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_auth_params(rest);
    let param =
        |name: &str| params.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.clone());
    Some(Challenge::Bearer { realm: param("realm")?, service: param("service"), scope: param("scope") })
}

/// Parses `key=value, key="quoted, value"` pairs (RFC 7235 auth-params), stopping at anything
/// that is not a pair (the start of a second challenge).
fn parse_auth_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if key.is_empty() || chars.next_if_eq(&'=').is_none() {
            return params;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',' && !c.is_whitespace())));
        }
        params.push((key, value));
    }
}

/// Whether a 400 answer to a manifest PUT is Nexus refusing to overwrite under its "Disable
/// redeploy" policy (it words this as a failed blob upload).
fn is_redeploy_refusal(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("blob_upload_invalid") || text.contains("does not allow updating assets")
}

/// The `code`s of a registry error body (`{"errors": [{"code": ...}]}`); none if it is not one.
fn error_codes(body: &[u8]) -> Vec<String> {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    parsed["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|error| error["code"].as_str())
        .map(str::to_string)
        .collect()
}

/// One line from a registry error body: `CODE: message (detail)` for each error.
fn registry_errors(body: &[u8]) -> String {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Some(errors) = parsed["errors"].as_array() {
        let lines: Vec<String> = errors
            .iter()
            .map(|error| {
                let mut line = format!(
                    "{}: {}",
                    error["code"].as_str().unwrap_or("UNKNOWN"),
                    error["message"].as_str().unwrap_or("(no message)")
                );
                match &error["detail"] {
                    Value::Null => {}
                    Value::String(detail) if detail.is_empty() => {}
                    Value::String(detail) => line.push_str(&format!(" ({detail})")),
                    detail => line.push_str(&format!(" ({detail})")),
                }
                line
            })
            .collect();
        return lines.join("; ");
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(empty answer)".to_string()
    } else {
        text.chars().take(200).collect::<String>().replace('\n', " ")
    }
}

/// The media type of a manifest: the body's `mediaType` (which the registry checks against the
/// `Content-Type` of a PUT), else the answer's `Content-Type` when it is a manifest type.
fn manifest_media_type(content_type: Option<&str>, body: &[u8]) -> Result<String> {
    let parsed: Value = serde_json::from_slice(body).context("the manifest is not JSON")?;
    if let Some(media_type) = parsed["mediaType"].as_str() {
        return Ok(media_type.to_string());
    }
    let content_type = content_type.map(|value| value.split(';').next().unwrap_or("").trim());
    match content_type {
        Some(media_type) if [DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX].contains(&media_type) => {
            Ok(media_type.to_string())
        }
        // An OCI manifest may omit `mediaType`; what it holds tells which of the two it is.
        _ if parsed["manifests"].is_array() => Ok(OCI_INDEX.to_string()),
        _ if parsed["config"].is_object() => Ok(OCI_MANIFEST.to_string()),
        other => bail!("the manifest has no known media type (Content-Type {})", other.unwrap_or("missing")),
    }
}

/// The digest of the image to read from an index: linux/amd64, else the first entry that is an
/// image (buildx attestations are listed with platform `unknown/unknown`).
fn platform_manifest(index: &Value) -> Option<String> {
    let manifests = index["manifests"].as_array()?;
    let platform = |entry: &Value, field: &str| entry["platform"][field].as_str().unwrap_or("").to_string();
    manifests
        .iter()
        .find(|entry| platform(entry, "os") == "linux" && platform(entry, "architecture") == "amd64")
        .or_else(|| manifests.iter().find(|entry| platform(entry, "os") != "unknown"))
        .and_then(|entry| entry["digest"].as_str())
        .map(str::to_string)
}

/// `sha256:<hex>` of `bytes`: the content digest registries use.
fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Percent-encodes a query parameter value (everything but RFC 3986 unreserved characters).
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

const BASE64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, for Basic auth.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, byte)| n | u32::from(*byte) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(BASE64_ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// Decodes standard base64, padded or not, as docker writes `auths.<host>.auth`.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    if text.len() % 4 == 1 {
        return None;
    }
    let mut bytes = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = BASE64_ALPHABET.iter().position(|&a| a == c)? as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;

    /// Short waits, so that retry tests finish in milliseconds.
    const QUICK: Backoff = Backoff { attempts: 3, first_delay: Duration::from_millis(10) };

    fn credentials(username: &str, password: &str) -> Option<Credentials> {
        Some(Credentials { username: username.to_string(), password: Secret::new("NEXUS_PASSWORD", password) })
    }

    // --- Pure functions -----------------------------------------------------------------------

    #[test]
    fn addresses_parse_host_port_and_path() {
        let nexus = RegistryAddress::parse("Nexus.Example:8443/docker-hosted/").unwrap();
        assert_eq!(nexus.scheme, Scheme::Https);
        assert_eq!(nexus.host, "nexus.example:8443");
        assert_eq!(nexus.path_prefix, "docker-hosted");
        assert_eq!(nexus.to_string(), "nexus.example:8443/docker-hosted");
        assert_eq!(nexus.repository_path("intric/backend"), "docker-hosted/intric/backend");
        assert_eq!(
            nexus.api_url("intric/backend", "manifests/1.2.3"),
            "https://nexus.example:8443/v2/docker-hosted/intric/backend/manifests/1.2.3"
        );

        let plain = RegistryAddress::parse("registry.example").unwrap();
        assert_eq!((plain.scheme, plain.path_prefix.as_str()), (Scheme::Https, ""));
        assert_eq!(plain.repository_path("intric/worker"), "intric/worker");
        assert_eq!(plain.to_string(), "registry.example");
    }

    #[test]
    fn loopback_and_explicit_http_use_plain_http() {
        for setting in ["127.0.0.1:5000", "127.8.9.10", "localhost:5000/lab", "[::1]:5000", "http://nexus.lan:8082"] {
            assert_eq!(RegistryAddress::parse(setting).unwrap().scheme, Scheme::Http, "{setting}");
        }
        for setting in ["https://127.0.0.1:5000", "10.0.0.1:5000", "[fd00::1]:443", "localhost.example"] {
            assert_eq!(RegistryAddress::parse(setting).unwrap().scheme, Scheme::Https, "{setting}");
        }
        let explicit = RegistryAddress::parse("http://nexus.lan:8082/hosted").unwrap();
        assert_eq!(explicit.to_string(), "nexus.lan:8082/hosted", "the scheme is not part of image names");
        assert_eq!(explicit.base_url(), "http://nexus.lan:8082");
    }

    #[test]
    fn bad_addresses_fail_with_one_line_naming_value_and_form() {
        for setting in [
            "",
            ":5000",
            "nexus.example:port",
            "nexus.example:0",
            "nexus.example:99999",
            "nexus..example",
            "nexus example",
            "nexus.example/Upper",
            "nexus.example//double",
            "[::1",
            "[not-v6]:5000",
            "ftp://nexus.example",
        ] {
            let error = RegistryAddress::parse(setting).unwrap_err().to_string();
            assert!(error.starts_with(&format!("invalid registry `{setting}`: ")), "{error}");
            assert!(error.contains("expected host[:port][/path]"), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn challenges_parse_basic_and_bearer_with_quoted_commas() {
        assert_eq!(parse_challenge(r#"Basic realm="Sonatype Nexus Repository Manager""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("basic"), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://nexus.example:8443/v2/token",service="https://nexus.example:8443/v2/token",scope="repository:hosted/intric/backend:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://nexus.example:8443/v2/token".to_string(),
                service: Some("https://nexus.example:8443/v2/token".to_string()),
                scope: Some("repository:hosted/intric/backend:pull,push".to_string()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Bearer  realm = "https://a/token?x=\"1\"" , service=plain"#),
            Some(Challenge::Bearer {
                realm: r#"https://a/token?x="1""#.to_string(),
                service: Some("plain".to_string()),
                scope: None
            })
        );
        assert_eq!(parse_challenge(r#"Bearer service="no realm""#), None);
        assert_eq!(parse_challenge(r#"Negotiate abc"#), None);
    }

    #[test]
    fn base64_round_trips_and_matches_known_values() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64_decode("Zm8").unwrap(), b"fo", "docker may write it unpadded");
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes);
        assert_eq!(base64_decode("Zm9v!"), None);
        assert_eq!(base64_decode("Z"), None);
    }

    #[test]
    fn docker_config_gives_stored_login_helper_or_nothing() {
        let config = r#"{
            "auths": {
                "https://nexus.example:8443/v1/": {"auth": "dXNlcjpwYTpzcw=="},
                "other.example": {"auth": ""}
            },
            "credHelpers": {"helped.example": "pass"},
            "credsStore": "desktop"
        }"#;
        let stored = docker_config_entry(config, "nexus.example:8443").unwrap();
        let DockerLogin::Stored(credentials) = stored else { panic!("{stored:?}") };
        assert_eq!(credentials.username, "user");
        assert_eq!(credentials.password.expose(), "pa:ss", "only the first colon separates");
        assert!(!format!("{credentials:?}").contains("pa:ss"));
        assert_eq!(docker_config_entry(config, "helped.example").unwrap(), DockerLogin::Helper("pass".into()));
        assert_eq!(docker_config_entry(config, "other.example").unwrap(), DockerLogin::Helper("desktop".into()));
        assert_eq!(docker_config_entry(r#"{"auths": {}}"#, "nexus.example").unwrap(), DockerLogin::None);
        assert_eq!(docker_config_entry("{}", "nexus.example:8443").unwrap(), DockerLogin::None);
        let broken = docker_config_entry(r#"{"auths": {"h": {"auth": "bm9jb2xvbg=="}}}"#, "h").unwrap_err();
        assert!(broken.to_string().contains("not base64 of user:password"), "{broken}");
    }

    #[test]
    fn credentials_from_the_environment_need_both_variables() {
        let env = |pairs: &[(&str, &str)]| -> Env {
            pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
        };
        let both = Credentials::from_env(&env(&[("NEXUS_USERNAME", "ci"), ("NEXUS_PASSWORD", "canary-env")])).unwrap();
        assert_eq!(both, credentials("ci", "canary-env"));
        assert_eq!(format!("{both:?}").matches("canary-env").count(), 0);
        assert_eq!(Credentials::from_env(&env(&[("NEXUS_USERNAME", ""), ("NEXUS_PASSWORD", "")])).unwrap(), None);
        let half = Credentials::from_env(&env(&[("NEXUS_USERNAME", "ci")])).unwrap_err().to_string();
        assert!(half.contains("NEXUS_PASSWORD is not"), "{half}");
        let other_half = Credentials::from_env(&env(&[("NEXUS_PASSWORD", "canary-env")])).unwrap_err().to_string();
        assert!(other_half.contains("NEXUS_USERNAME is not") && !other_half.contains("canary-env"), "{other_half}");
    }

    #[test]
    fn nexus_redeploy_refusal_is_recognised() {
        let nexus = br#"{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"blob upload invalid","detail":"Repository does not allow updating assets: docker-hosted"}]}"#;
        assert!(is_redeploy_refusal(nexus));
        assert!(is_redeploy_refusal(b"Repository does not allow updating assets: releases"));
        assert!(!is_redeploy_refusal(br#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid"}]}"#));
        assert_eq!(
            registry_errors(nexus),
            "BLOB_UPLOAD_INVALID: blob upload invalid (Repository does not allow updating assets: docker-hosted)"
        );
        assert_eq!(error_codes(nexus), ["BLOB_UPLOAD_INVALID"]);
        assert_eq!(registry_errors(b""), "(empty answer)");
        assert_eq!(registry_errors(b"<html>\nBad Gateway</html>"), "<html> Bad Gateway</html>");
    }

    #[test]
    fn digests_and_media_types_come_from_the_bytes() {
        assert_eq!(sha256_digest(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let docker = format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{}}}}"#);
        assert_eq!(manifest_media_type(Some("application/json"), docker.as_bytes()).unwrap(), DOCKER_MANIFEST);
        let bare = br#"{"schemaVersion":2,"config":{"digest":"sha256:00"},"layers":[]}"#;
        let with_params = format!("{OCI_MANIFEST}; charset=utf-8");
        assert_eq!(manifest_media_type(Some(&with_params), bare).unwrap(), OCI_MANIFEST);
        assert_eq!(manifest_media_type(None, br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(), OCI_INDEX);
        assert!(manifest_media_type(Some("text/plain"), br#"{"schemaVersion":1}"#).is_err());
    }

    #[test]
    fn index_entries_prefer_linux_amd64_and_skip_attestations() {
        let index = json!({"manifests": [
            {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        assert_eq!(platform_manifest(&index).as_deref(), Some("sha256:amd"));
        let no_amd64 = json!({"manifests": [
            {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
        ]});
        assert_eq!(platform_manifest(&no_amd64).as_deref(), Some("sha256:arm"));
        assert_eq!(platform_manifest(&json!({"manifests": []})), None);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("repository:a/b:pull,push"), "repository%3Aa%2Fb%3Apull%2Cpush");
        assert_eq!(percent_encode("v1.2_3-x~"), "v1.2_3-x~");
    }

    // --- A fake registry on 127.0.0.1 -------------------------------------------------------

    /// One request as the fake registry saw it.
    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        target: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
        }
        fn path(&self) -> &str {
            self.target.split('?').next().unwrap_or("")
        }
        fn query(&self, key: &str) -> Option<String> {
            let query = self.target.split_once('?')?.1;
            query.split('&').find_map(|pair| pair.strip_prefix(&format!("{key}="))).map(percent_decode)
        }
    }

    fn percent_decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// An answer of the fake registry.
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status,
            headers: headers.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect(),
            body: body.into(),
        }
    }

    /// A registry on a free loopback port, answering each request (one per connection) with
    /// `handler`, which gets the server's `host:port`; returns that and the requests seen.
    fn fake_registry(
        handler: impl Fn(&Seen, &str) -> Answer + Send + 'static,
    ) -> (RegistryAddress, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let server_host = host.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Some(request) = read_request(&stream) {
                    let reply = handler(&request, &server_host);
                    let head = request.method == "HEAD";
                    log.lock().unwrap().push(request);
                    write_answer(stream, &reply, head);
                }
            }
        });
        (RegistryAddress::parse(&host).unwrap(), seen)
    }

    fn read_request(stream: &TcpStream) -> Option<Seen> {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).ok()?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (key, value) = line.split_once(':')?;
            headers.push((key.trim().to_string(), value.trim().to_string()));
        }
        let mut seen = Seen { method, target, headers, body: Vec::new() };
        let length: usize = seen.header("content-length").and_then(|value| value.parse().ok()).unwrap_or(0);
        seen.body.resize(length, 0);
        reader.read_exact(&mut seen.body).ok()?;
        Some(seen)
    }

    fn write_answer(mut stream: TcpStream, answer: &Answer, head: bool) {
        let mut text = format!(
            "HTTP/1.1 {} Fake\r\nConnection: close\r\nContent-Length: {}\r\n",
            answer.status,
            answer.body.len()
        );
        for (key, value) in &answer.headers {
            text.push_str(&format!("{key}: {value}\r\n"));
        }
        text.push_str("\r\n");
        let _ = stream.write_all(text.as_bytes());
        if !head {
            let _ = stream.write_all(&answer.body);
        }
    }

    fn fake_manifest() -> (String, String) {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"digest":"sha256:c0"}},"layers":[]}}"#
        );
        let digest = sha256_digest(body.as_bytes());
        (body, digest)
    }

    #[test]
    fn bearer_challenge_is_followed_and_tokens_are_cached_per_scope() {
        let (manifest, digest) = fake_manifest();
        let served_digest = digest.clone();
        let (address, seen) = fake_registry(move |request, host| {
            let bearer = request.header("authorization").unwrap_or("");
            let challenge = format!(r#"Bearer realm="http://{host}/token",service="fake, registry""#);
            match request.path() {
                "/token" => {
                    if request.header("authorization") != Some(&format!("Basic {}", base64_encode(b"ci:s3cret"))) {
                        return answer(401, &[], "");
                    }
                    match request.query("scope") {
                        None => answer(200, &[], r#"{"token": "root-token"}"#),
                        Some(scope) => answer(200, &[], format!(r#"{{"access_token": "token for {scope}"}}"#)),
                    }
                }
                "/v2/" if bearer == "Bearer root-token" => answer(200, &[], "{}"),
                "/v2/xtask-test/fake/manifests/one"
                    if bearer == "Bearer token for repository:xtask-test/fake:pull,push" =>
                {
                    answer(
                        200,
                        &[("Content-Type", DOCKER_MANIFEST), ("Docker-Content-Digest", &served_digest)],
                        manifest.clone(),
                    )
                }
                _ => answer(401, &[("WWW-Authenticate", &challenge)], r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#),
            }
        });
        let registry = Registry::new(address, credentials("ci", "s3cret"), QUICK);
        registry.check_access().unwrap();
        let first = registry.manifest("xtask-test/fake", "one").unwrap().unwrap();
        let again = registry.manifest("xtask-test/fake", "one").unwrap().unwrap();
        assert_eq!((first.digest.as_str(), first.media_type.as_str()), (digest.as_str(), DOCKER_MANIFEST));
        assert_eq!(first, again);

        let seen = seen.lock().unwrap();
        let tokens: Vec<&Seen> = seen.iter().filter(|request| request.path() == "/token").collect();
        assert_eq!(tokens.len(), 2, "one token for /v2/, one for the repository, then cached: {seen:#?}");
        assert_eq!(tokens[0].query("service").as_deref(), Some("fake, registry"));
        assert_eq!(tokens[1].query("scope").as_deref(), Some("repository:xtask-test/fake:pull,push"));
        let last = seen.last().unwrap();
        assert_eq!(last.header("accept"), Some(MANIFEST_ACCEPT), "the cached token is sent up front");
        assert!(
            seen.iter()
                .filter(|request| request.path() != "/token")
                .all(|request| { !request.header("authorization").unwrap_or("").starts_with("Basic") })
        );
    }

    #[test]
    fn failed_token_requests_name_the_realm() {
        let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (address, _) = fake_registry(move |_, _| {
            answer(401, &[("WWW-Authenticate", &format!(r#"Bearer realm="http://{dead}/v2/token",service="x""#))], "")
        });
        let registry = Registry::new(address, credentials("ci", "s3cret"), QUICK);
        let error = format!("{:#}", registry.check_access().unwrap_err());
        assert!(error.contains(&format!("token request to realm http://{dead}/v2/token failed")), "{error}");
        assert!(error.contains("after 3 attempts"), "{error}");
    }

    #[test]
    fn head_404_falls_back_to_get() {
        let (manifest, digest) = fake_manifest();
        let served = digest.clone();
        let (address, seen) = fake_registry(move |request, _| match request.method.as_str() {
            "HEAD" => answer(404, &[], ""),
            _ => {
                answer(200, &[("Content-Type", DOCKER_MANIFEST), ("Docker-Content-Digest", &served)], manifest.clone())
            }
        });
        let registry = Registry::new(address, None, QUICK);
        assert_eq!(registry.manifest_digest("xtask-test/fake", "one").unwrap(), Some(digest));
        let methods: Vec<String> = seen.lock().unwrap().iter().map(|request| request.method.clone()).collect();
        assert_eq!(methods, ["HEAD", "GET"]);
    }

    #[test]
    fn redeploy_refusal_and_body_limit_are_said_plainly() {
        let (body, digest) = fake_manifest();
        let manifest = Manifest { media_type: DOCKER_MANIFEST.to_string(), digest: digest.clone(), bytes: body.into() };
        let refusal = r#"{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"blob upload invalid","detail":"Repository does not allow updating assets: hosted"}]}"#;
        let (address, seen) = fake_registry(move |request, _| match (request.method.as_str(), request.path()) {
            ("PUT", "/v2/xtask-test/fake/manifests/big") => answer(413, &[], "<html>Request Entity Too Large</html>"),
            ("PUT", _) => answer(400, &[("Content-Type", "application/json")], refusal),
            ("HEAD", "/v2/xtask-test/fake/manifests/1.0.0") => answer(200, &[("Docker-Content-Digest", &digest)], ""),
            _ => answer(404, &[], r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
        });
        let registry = Registry::new(address.clone(), None, QUICK);

        let existing = format!("{:#}", registry.put_manifest("xtask-test/fake", "1.0.0", &manifest).unwrap_err());
        assert!(
            existing.contains(&format!(
                "tag 1.0.0 already exists in {address}/xtask-test/fake and the repository does not allow redeploy; \
                 use a new tag or allow redeploy"
            )),
            "{existing}"
        );
        let new = format!("{:#}", registry.put_manifest("xtask-test/fake", "1.0", &manifest).unwrap_err());
        assert!(new.contains("refused the new tag 1.0 because its deployment policy disables redeploy"), "{new}");
        let big = format!("{:#}", registry.put_manifest("xtask-test/fake", "big", &manifest).unwrap_err());
        assert!(
            big.contains("HTTP 413") && big.contains("reverse proxy") && big.contains("client_max_body_size"),
            "{big}"
        );

        let put = seen.lock().unwrap().iter().find(|request| request.method == "PUT").cloned().unwrap();
        assert_eq!(put.header("content-type"), Some(DOCKER_MANIFEST));
        assert_eq!(put.body, manifest.bytes, "the same bytes, so the same digest");
    }

    #[test]
    fn server_errors_are_retried_then_reported_with_attempts() {
        let (manifest, digest) = fake_manifest();
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let (address, _) = fake_registry(move |request, _| {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            if request.path().ends_with("/flaky") && call >= 2 {
                answer(200, &[("Content-Type", DOCKER_MANIFEST)], manifest.clone())
            } else {
                answer(503, &[], "<html>Service Unavailable</html>")
            }
        });
        let registry = Registry::new(address.clone(), None, QUICK);
        let flaky = registry.manifest("xtask-test/fake", "flaky").unwrap().unwrap();
        assert_eq!(flaky.digest, digest, "digest computed from the bytes without Docker-Content-Digest");
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let error = format!("{:#}", registry.manifest("xtask-test/fake", "down").unwrap_err());
        assert!(error.contains(&format!("cannot read the manifest of {address}/xtask-test/fake:down")), "{error}");
        assert!(
            error.contains(&format!(
                "GET http://{}/v2/xtask-test/fake/manifests/down failed after 3 attempts",
                address.host
            )),
            "{error}"
        );
        assert!(error.contains("HTTP 503"), "{error}");
        assert_eq!(calls.load(Ordering::SeqCst), 6);
    }

    #[test]
    fn client_errors_are_not_retried() {
        let (address, seen) = fake_registry(|_, _| {
            answer(400, &[], r#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid"}]}"#)
        });
        let registry = Registry::new(address, None, QUICK);
        let error = format!("{:#}", registry.manifest("xtask-test/fake", "bad").unwrap_err());
        assert!(error.contains("HTTP 400: MANIFEST_INVALID: manifest invalid"), "{error}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn unreachable_registry_is_retried_then_named_with_the_cause() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let registry = Registry::new(RegistryAddress::parse(&format!("127.0.0.1:{port}")).unwrap(), None, QUICK);
        let started = Instant::now();
        let error = format!("{:#}", registry.check_access().unwrap_err());
        assert!(error.contains(&format!("registry 127.0.0.1:{port} is not usable")), "{error}");
        assert!(error.contains(&format!("GET http://127.0.0.1:{port}/v2/ failed after 3 attempts")), "{error}");
        assert!(error.to_lowercase().contains("connection refused"), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(30), "waited 10 ms, then 20 ms");
    }

    #[test]
    fn tags_are_paged_with_last_and_missing_repositories_have_none() {
        let all: Vec<String> = (0..2500).map(|i| format!("t{i:04}")).collect();
        let (address, seen) = fake_registry(move |request, _| {
            if request.path() == "/v2/xtask-test/none/tags/list" {
                return answer(
                    404,
                    &[],
                    r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}"#,
                );
            }
            if request.path() == "/v2/xtask-test/wrong/tags/list" {
                return answer(404, &[], r#"{"errors":[{"code":"NOT_FOUND","message":"no route"}]}"#);
            }
            let n: usize = request.query("n").unwrap().parse().unwrap();
            let start = request.query("last").map_or(0, |last| all.iter().position(|tag| *tag == last).unwrap() + 1);
            let page: Vec<&String> = all.iter().skip(start).take(n).collect();
            // A Link header pointing somewhere useless, as Nexus has sent: it must be ignored.
            answer(200, &[("Link", "</elsewhere>; rel=\"next\"")], json!({"name": "x", "tags": page}).to_string())
        });
        let registry = Registry::new(address, None, QUICK);
        let tags = registry.tags("xtask-test/paged").unwrap();
        assert_eq!(tags.len(), 2500);
        assert_eq!((tags[0].as_str(), tags[2499].as_str()), ("t0000", "t2499"));
        assert_eq!(seen.lock().unwrap().len(), 3);
        assert_eq!(registry.tags("xtask-test/none").unwrap(), Vec::<String>::new());
        let wrong = format!("{:#}", registry.tags("xtask-test/wrong").unwrap_err());
        assert!(wrong.contains("HTTP 404: NOT_FOUND"), "{wrong}");
    }

    #[test]
    fn canary_password_appears_in_no_error_or_debug_output() {
        const CANARY: &str = "canary-Pa55word-7f3e";
        let basic = base64_encode(format!("ci:{CANARY}").as_bytes());
        let (basic_address, _) =
            fake_registry(|_, _| answer(401, &[("WWW-Authenticate", r#"Basic realm="Nexus""#)], ""));
        let (bearer_address, _) = fake_registry(|request, host| match request.path() {
            "/token" => answer(401, &[], r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#),
            _ => {
                answer(401, &[("WWW-Authenticate", &format!(r#"Bearer realm="http://{host}/token",service="s""#))], "")
            }
        });
        let (manifest, digest) = fake_manifest();
        let manifest = Manifest { media_type: DOCKER_MANIFEST.to_string(), digest, bytes: manifest.into() };
        let mut shown = String::new();
        for address in [basic_address, bearer_address] {
            let registry = Registry::new(address.clone(), credentials("ci", CANARY), QUICK);
            let errors = [
                registry.check_access().unwrap_err(),
                registry.manifest("xtask-test/fake", "one").unwrap_err(),
                registry.manifest_digest("xtask-test/fake", "one").unwrap_err(),
                registry.put_manifest("xtask-test/fake", "two", &manifest).unwrap_err(),
                registry.tags("xtask-test/fake").unwrap_err(),
            ];
            for error in errors {
                let text = format!("{error:#}");
                assert!(
                    text.contains(&format!(
                        "login to {address} as ci failed (HTTP 401): check NEXUS_USERNAME/NEXUS_PASSWORD or \
                         `docker login {}`",
                        address.host
                    )),
                    "{text}"
                );
                shown.push_str(&format!("{text}\n{error:?}\n"));
            }
            shown.push_str(&format!("{:?}", registry.credentials));
        }
        assert!(!shown.contains(CANARY), "{shown}");
        assert!(!shown.contains(&basic), "{shown}");
        assert!(shown.contains("the token realm http://"), "{shown}");
    }

    #[test]
    fn anonymous_access_to_a_basic_registry_asks_for_a_login() {
        let (address, seen) = fake_registry(|_, _| answer(401, &[("WWW-Authenticate", r#"Basic realm="Nexus""#)], ""));
        let registry = Registry::new(address.clone(), None, QUICK);
        let error = format!("{:#}", registry.check_access().unwrap_err());
        assert!(error.contains(&format!("{address} requires a login (HTTP 401) and none was found")), "{error}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    // --- The lab registry (`cargo xtask sandbox up`) ----------------------------------------

    /// A client for the lab registry with its credentials, or `None` (with a note) when the lab is
    /// not up. With `CI` set, a missing lab fails the test instead: CI must run these.
    fn lab() -> Option<(Registry, Credentials)> {
        // Where an engine answers, start the lab (once per test run) instead of skipping: these
        // tests are what proves the client against a real registry.
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            // The lab is the sandbox task's: run it as a user would, through cargo (an adapter
            // never calls a task), building the xtask binary that is already built.
            let engine = std::process::Command::new("docker").arg("info").output();
            if engine.is_ok_and(|output| output.status.success()) {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
                let up = std::process::Command::new(cargo)
                    .args(["xtask", "sandbox", "up"])
                    .current_dir(crate::adapters::workspace_root())
                    .status();
                if !up.is_ok_and(|status| status.success()) {
                    eprintln!("note: cannot start the lab: `cargo xtask sandbox up` failed");
                }
            }
        });
        let path = crate::adapters::workspace_root().join("target/xtask/sandbox/lab.env");
        let unavailable = |why: String| {
            assert!(std::env::var_os("CI").is_none(), "the lab registry is needed with CI set: {why}");
            eprintln!("note: skipping a lab registry test: {why}; start it with `cargo xtask sandbox up`");
            None
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return unavailable(format!("{} is missing", path.display()));
        };
        let value = |key: &str| {
            text.lines().find_map(|line| line.strip_prefix(&format!("{key}="))).map(|value| value.trim().to_string())
        };
        let (Some(host), Some(username), Some(password)) =
            (value("NEXUS_REGISTRY"), value("NEXUS_USERNAME"), value("NEXUS_PASSWORD"))
        else {
            return unavailable(format!("{} lacks NEXUS_REGISTRY/USERNAME/PASSWORD", path.display()));
        };
        let address = RegistryAddress::parse(&host).unwrap();
        let socket = address.host.parse().unwrap();
        if TcpStream::connect_timeout(&socket, Duration::from_secs(2)).is_err() {
            return unavailable(format!("nothing listens on {host}"));
        }
        let credentials = Credentials { username, password: Secret::new("NEXUS_PASSWORD", password) };
        Some((Registry::new(address, Some(credentials.clone()), QUICK), credentials))
    }

    /// Uploads `bytes` as a blob of `repository` (monolithic upload), returning its digest.
    fn push_blob(registry: &Registry, repository: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let scope = Some(registry.scope(repository));
        let start = Call::new("POST", registry.address.api_url(repository, "blobs/uploads/"), scope.clone());
        let started = registry.execute(&start).unwrap();
        assert_eq!(started.status, 202, "{}", started.errors());
        let location = started.header("location").unwrap();
        let location = if location.starts_with('/') {
            format!("{}{location}", registry.address.base_url())
        } else {
            location.to_string()
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let mut put = Call::new("PUT", format!("{location}{separator}digest={}", percent_encode(&digest)), scope);
        put.content_type = Some("application/octet-stream");
        put.body = Some(bytes);
        let done = registry.execute(&put).unwrap();
        assert_eq!(done.status, 201, "{}", done.errors());
        digest
    }

    /// Pushes a tiny single-layer image labelled `revision` as `repository:tag`, pretty-printed so
    /// that a client re-serialising the JSON would change its digest.
    fn push_tiny_image(registry: &Registry, repository: &str, tag: &str, revision: &str) -> Manifest {
        let layer = format!("layer of {revision}").into_bytes();
        let layer_digest = push_blob(registry, repository, &layer);
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"org.opencontainers.image.revision": revision}},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }))
        .unwrap();
        let config_digest = push_blob(registry, repository, &config);
        let bytes = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": config_digest},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": layer.len(), "digest": layer_digest}],
        }))
        .unwrap();
        let manifest = Manifest { media_type: DOCKER_MANIFEST.to_string(), digest: sha256_digest(&bytes), bytes };
        assert_eq!(registry.put_manifest(repository, tag, &manifest).unwrap(), manifest.digest);
        manifest
    }

    #[test]
    fn lab_retag_keeps_the_digest_and_lists_both_tags() {
        let Some((registry, _)) = lab() else { return };
        registry.check_access().unwrap();
        let repository = "xtask-test/registry-retag";
        let pushed = push_tiny_image(&registry, repository, "one", "retag-test");
        let one = registry.manifest(repository, "one").unwrap().expect("tag one exists");
        assert_eq!(one, pushed);
        assert_eq!(registry.put_manifest(repository, "two", &one).unwrap(), one.digest);
        assert_eq!(registry.manifest_digest(repository, "two").unwrap().as_deref(), Some(one.digest.as_str()));
        assert_eq!(registry.manifest_digest(repository, "one").unwrap().as_deref(), Some(one.digest.as_str()));
        let tags = registry.tags(repository).unwrap();
        assert!(tags.contains(&"one".to_string()) && tags.contains(&"two".to_string()), "{tags:?}");
        assert_eq!(registry.manifest(repository, "no-such-tag").unwrap(), None);
        assert_eq!(registry.manifest_digest(repository, "no-such-tag").unwrap(), None);
        assert_eq!(registry.tags("xtask-test/registry-no-such-repository").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn lab_image_config_reads_labels_of_images_and_indexes() {
        let Some((registry, _)) = lab() else { return };
        let repository = "xtask-test/registry-config";
        let amd64 = push_tiny_image(&registry, repository, "amd64", "the-amd64-one");
        let arm64 = push_tiny_image(&registry, repository, "arm64", "the-arm64-one");
        let labels = |config: Value| config["config"]["Labels"]["org.opencontainers.image.revision"].clone();
        assert_eq!(labels(registry.image_config(repository, &amd64).unwrap()), "the-amd64-one");

        let entry = |manifest: &Manifest, architecture: &str| {
            json!({"mediaType": DOCKER_MANIFEST, "size": manifest.bytes.len(), "digest": manifest.digest,
                   "platform": {"os": "linux", "architecture": architecture}})
        };
        let bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry(&arm64, "arm64"), entry(&amd64, "amd64")],
        }))
        .unwrap();
        let index = Manifest { media_type: OCI_INDEX.to_string(), digest: sha256_digest(&bytes), bytes };
        registry.put_manifest(repository, "multi", &index).unwrap();
        let fetched = registry.manifest(repository, "multi").unwrap().unwrap();
        assert!(fetched.is_index());
        assert_eq!(fetched.digest, index.digest);
        assert_eq!(labels(registry.image_config(repository, &fetched).unwrap()), "the-amd64-one");
    }

    #[test]
    fn lab_reads_a_docker_pushed_base_image() {
        let Some((registry, _)) = lab() else { return };
        let Some(manifest) = registry.manifest("lab/nginx", "lab").unwrap() else {
            eprintln!("note: the lab has no lab/nginx:lab yet");
            return;
        };
        assert_eq!(registry.manifest_digest("lab/nginx", "lab").unwrap(), Some(manifest.digest.clone()));
        assert_eq!(sha256_digest(&manifest.bytes), manifest.digest);
        let config = registry.image_config("lab/nginx", &manifest).unwrap();
        assert!(config["rootfs"]["diff_ids"].is_array(), "{config}");
    }

    #[test]
    fn lab_wrong_password_fails_with_the_login_error_only() {
        let Some((registry, credentials)) = lab() else { return };
        const CANARY: &str = "wrong-canary-password-91c2";
        let wrong = Registry::new(registry.address.clone(), self::credentials(&credentials.username, CANARY), QUICK);
        let errors = [wrong.check_access().unwrap_err(), wrong.tags("xtask-test/registry-retag").unwrap_err()];
        for error in errors {
            let text = format!("{error:#} {error:?}");
            assert!(
                text.contains(&format!("login to {} as {} failed (HTTP 401)", registry.address, credentials.username)),
                "{text}"
            );
            assert!(!text.contains(CANARY), "{text}");
        }
    }
}
