//! The registry adapter: a small client for the Docker Registry HTTP API v2, as spoken by Sonatype
//! Nexus and by Distribution (the lab registry). It reads and writes manifests, lists tags and
//! reads image configs, so that `build` can retag an unchanged image, `release` can promote
//! `sha-` manifests to release tags, `update` can check that tags exist, and `doctor` can check
//! that the registry answers and accepts the login, all without pulling or pushing layers.
//!
//! This module is the client: [`Registry`] and what it reads and writes (manifests, tags, image
//! configs). Where a registry is and how its setting is written is [`address`]; who logs in and
//! how (credentials, the docker config and its credential helpers, Basic and Bearer challenges,
//! tokens) is [`auth`]; HTTP itself (media types, `Accept`, retries with backoff, error bodies)
//! is [`wire`]. Where Nexus differs from Distribution (see `NEXUS-FACTS.md`), this client follows
//! Nexus: HEAD falling back to GET, paging tags without trusting `Link`, and plain words for the
//! "redeploy disabled" refusal.
//!
//! Blob calls (checking, mounting, uploading, and for a promotion from one repository into
//! another, [`Registry::transfer_blob`]: by mount, else by a streamed copy) are [`blobs`].

pub mod address;
pub mod auth;
mod blobs;
/// The tests' one fake registry, shared with the end-to-end tests.
#[cfg(test)]
#[path = "../../../tests/common/fake_registry.rs"]
pub mod fake;
pub mod wire;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::plan::runner::Runner;
pub use address::RegistryAddress;
use auth::AuthState;
pub use auth::Credentials;
pub use blobs::Transfer;
pub use wire::{Backoff, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use wire::{CONNECT_TIMEOUT, Call, IO_TIMEOUT, MANIFEST_ACCEPT, error_codes, is_redeploy_refusal, percent_encode};

/// Tags asked for per page of `tags/list`.
const TAGS_PAGE: usize = 1000;

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

    /// What this manifest refers to by digest: an image's config and layers (blobs), or an
    /// index's manifests. Layers with `urls` (Windows "foreign" layers) live elsewhere and are
    /// left out, as registries do not hold them.
    pub fn references(&self) -> Result<Vec<String>> {
        let parsed: Value =
            serde_json::from_slice(&self.bytes).with_context(|| format!("manifest {} is not JSON", self.digest))?;
        let entries: Vec<&Value> = if self.is_index() {
            parsed["manifests"].as_array().into_iter().flatten().collect()
        } else {
            std::iter::once(&parsed["config"]).chain(parsed["layers"].as_array().into_iter().flatten()).collect()
        };
        entries
            .into_iter()
            .filter(|entry| entry["urls"].as_array().is_none_or(|urls| urls.is_empty()))
            .map(|entry| {
                entry["digest"]
                    .as_str()
                    .map(str::to_string)
                    .with_context(|| format!("manifest {} has an entry without a digest: {entry}", self.digest))
            })
            .collect()
    }
}

/// What [`Registry::put_manifest`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tagged {
    /// The tag was put: created, or moved where the repository allows it.
    Put,
    /// The tag already named the manifest: nothing was written.
    AlreadyThere,
}

/// A client for one registry, shared by all threads of a task. It learns the registry's
/// challenge (Basic or Bearer) from the first 401 and then authenticates up front, keeping one
/// Bearer token per scope. A clone shares what was learned and the open connections, so that
/// the phases of one task meet the challenge once, not each on its own client.
#[derive(Clone)]
pub struct Registry {
    address: RegistryAddress,
    credentials: Option<Credentials>,
    backoff: Backoff,
    agent: ureq::Agent,
    auth: Arc<Mutex<AuthState>>,
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
        Registry { address, credentials, backoff, agent: wire::agent(connect, io), auth: Arc::default() }
    }

    /// A client for `address`, logged in as [`Credentials::find`] says (a credential helper runs
    /// through `runner`), retrying transient failures by [`Backoff::STANDARD`].
    pub fn connect(address: RegistryAddress, runner: &dyn Runner) -> Result<Registry> {
        let credentials = Credentials::find(&address, runner)?;
        Ok(Registry::new(address, credentials, Backoff::STANDARD))
    }

    /// Checks that the registry answers `GET /v2/` and accepts the login (doctor's check; a
    /// build's way of learning the login challenge early).
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
    /// `repository:tag`, so the tag gets the same digest. Layers are not touched: they must
    /// already be in `repository`.
    ///
    /// Idempotent: a tag that already names the manifest is left alone, without a PUT (which a
    /// repository with redeploy disabled refuses even for the same digest), and a 400 to the PUT
    /// counts as done when the tag names the manifest after all (another job put it meanwhile).
    /// A tag that names another manifest where redeploy is disabled fails, saying so plainly.
    pub fn put_manifest(&self, repository: &str, tag: &str, manifest: &Manifest) -> Result<Tagged> {
        if self.manifest_digest(repository, tag)?.as_deref() == Some(manifest.digest.as_str()) {
            return Ok(Tagged::AlreadyThere);
        }
        self.put_new_manifest(repository, tag, manifest)
    }

    /// Puts a manifest this run has just made (a derived or swapped image) under
    /// `repository:tag` without first asking what the tag names: no tag can name a manifest
    /// that did not exist, so the check of [`Registry::put_manifest`] would only cost its round
    /// trips (two where HEAD is unreliable). A re-run that makes the same bytes again is still
    /// idempotent: a repository with redeploy disabled answers 400, and the tag is checked then.
    pub fn put_new_manifest(&self, repository: &str, tag: &str, manifest: &Manifest) -> Result<Tagged> {
        let image = self.image(repository, tag);
        let reply = self.put(repository, tag, manifest).with_context(|| format!("cannot tag {image}"))?;
        match reply.status {
            200..=299 => match reply.header("docker-content-digest") {
                Some(digest) if digest != manifest.digest => bail!(
                    "cannot tag {image}: it got digest {digest}, not {}: the registry rewrote the manifest",
                    manifest.digest
                ),
                _ => Ok(Tagged::Put),
            },
            400 => {
                let current = self
                    .manifest_digest(repository, tag)
                    .with_context(|| format!("cannot tag {image}: HTTP 400: {}", reply.errors()))?;
                let repo = format!("{}/{repository}", self.address);
                match current {
                    Some(digest) if digest == manifest.digest => Ok(Tagged::AlreadyThere),
                    // Nexus gives the same answer for an existing tag and (on some versions) for a
                    // new tag of a manifest it already holds; which one it is decides the advice.
                    Some(digest) if is_redeploy_refusal(&reply.body) => bail!(
                        "cannot tag {image}: tag {tag} already names {digest}, not {}, and {repo} does not allow \
                         redeploy, so it cannot move; use a new tag, delete the old one, or allow redeploy (Nexus: \
                         the hosted repository's deployment policy)",
                        manifest.digest
                    ),
                    None if is_redeploy_refusal(&reply.body) => bail!(
                        "cannot tag {image}: {repo} refused the new tag {tag} because its deployment policy \
                         disables redeploy (some Nexus versions refuse any new tag for a manifest the repository \
                         already holds); allow redeploy, or promote into a separate release repository"
                    ),
                    _ => bail!("cannot tag {image}: HTTP 400: {}", reply.errors()),
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

    /// Whether the existing tag `repository:tag` may move. Its own manifest is put back under
    /// it: a write that changes nothing, which a repository with redeploy disabled refuses just
    /// as it would refuse moving the tag (and allows for `latest` where Nexus's option lets
    /// `latest` alone move). So a release knows before its first real write which floating
    /// tags it cannot move.
    pub fn allows_redeploy(&self, repository: &str, tag: &str) -> Result<bool> {
        let image = self.image(repository, tag);
        let manifest = self.manifest(repository, tag)?.with_context(|| format!("{image} is gone"))?;
        let reply = self.put(repository, tag, &manifest).with_context(|| format!("cannot check {image}"))?;
        match reply.status {
            200..=299 => Ok(true),
            400 if is_redeploy_refusal(&reply.body) => Ok(false),
            status => bail!("cannot check whether {image} may move: HTTP {status}: {}", reply.errors()),
        }
    }

    /// A PUT of `manifest`'s bytes under `repository:tag`, its answer as it is.
    fn put(&self, repository: &str, tag: &str, manifest: &Manifest) -> Result<wire::Reply> {
        let mut call = Call::new(
            "PUT",
            self.address.api_url(repository, &format!("manifests/{tag}")),
            Some(self.scope(repository)),
        );
        call.content_type = Some(&manifest.media_type);
        call.body = Some(&manifest.bytes);
        self.execute(&call)
    }

    /// All tags of `repository`, sorted; empty when the repository does not exist.
    ///
    /// Pages until a page brings no tag it has not seen (an empty page, usually), whatever size
    /// the registry makes its pages: Nexus caps them below the `n` asked for, so a short page
    /// does not mean the last one. The next page is the `Link` header's when it names this
    /// repository's tag list (Distribution); otherwise, or when it is missing or points
    /// elsewhere (as Nexus has sent), `n` and `last` after the last tag of this page.
    pub fn tags(&self, repository: &str) -> Result<Vec<String>> {
        let context = || format!("cannot list the tags of {}/{repository}", self.address);
        let list_path = format!("/v2/{}/tags/list", self.address.repository_path(repository));
        let mut tags = Vec::new();
        let mut seen = HashSet::new();
        let mut url = self.address.api_url(repository, &format!("tags/list?n={TAGS_PAGE}"));
        loop {
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
            // Nothing new: the end, or a registry that ignores `last`, where asking again would
            // loop forever.
            if tags.len() == before {
                break;
            }
            let link = reply.header("link").and_then(next_link).filter(|next| next.starts_with(&list_path));
            url = match (link, page.last()) {
                (Some(next), _) => format!("{}{next}", self.address.base_url()),
                (None, Some(last)) => {
                    self.address.api_url(repository, &format!("tags/list?n={TAGS_PAGE}&last={}", percent_encode(last)))
                }
                (None, None) => break,
            };
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
        let bytes = self.blob(repository, config_digest).with_context(context)?;
        serde_json::from_slice(&bytes).with_context(|| format!("{}: the config blob is not JSON", context()))
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

    /// Where this registry is.
    pub fn address(&self) -> &RegistryAddress {
        &self.address
    }

    /// A client for `address` logging in with `credentials`, sharing this one's learned
    /// challenge, tokens and connections when both are the same registry with the same login
    /// (a base image beside the pushed images, under another path prefix); else `None`.
    pub fn sibling(&self, address: &RegistryAddress, credentials: &Option<Credentials>) -> Option<Registry> {
        (self.address.same_registry(address) && self.credentials == *credentials)
            .then(|| Registry { address: address.clone(), ..self.clone() })
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
}

/// The path and query of a `Link` header's `rel="next"` target (RFC 8288), made relative to
/// the registry when it is an absolute URL: `</v2/x/tags/list?n=2&last=b>; rel="next"`.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
        let next = params.split(';').any(|param| {
            let param = param.trim().to_ascii_lowercase();
            param == "rel=\"next\"" || param == "rel=next"
        });
        if !next {
            return None;
        }
        match target.split_once("://") {
            Some((_, rest)) => rest.find('/').map(|slash| rest[slash..].to_string()),
            None => Some(target.to_string()),
        }
    })
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

/// Runs `work` on every item at once, one thread each, and returns the results in the items'
/// order, or the first failure in that order. For registry round trips, which wait on the
/// network rather than the CPU: a handful of them at once cost one round trip's time.
pub fn at_once<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    std::thread::scope(|scope| {
        let work = &work;
        let running: Vec<_> = items.iter().map(|item| scope.spawn(move || work(item))).collect();
        running
            .into_iter()
            .map(|thread| thread.join().unwrap_or_else(|_| Err(anyhow!("a registry call panicked"))))
            .collect()
    })
}

/// `sha256:<hex>` of `bytes`: the content digest registries use.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use base64::Engine;
    use serde_json::json;

    use super::wire::registry_errors;
    use super::*;
    use crate::plan::Secret;

    /// Short waits, so that retry tests finish in milliseconds.
    const QUICK: Backoff = Backoff { attempts: 3, first_delay: Duration::from_millis(10) };

    fn credentials(username: &str, password: &str) -> Option<Credentials> {
        Some(Credentials { username: username.to_string(), password: Secret::new("NEXUS_PASSWORD", password) })
    }

    fn base64_encode(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
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

    use fake::{Answer, Seen, answer};

    /// A fake registry answering with `handler` (see [`fake::serve`]), and the requests it saw.
    fn fake_registry(
        handler: impl Fn(&Seen, &str) -> Answer + Send + 'static,
    ) -> (RegistryAddress, Arc<Mutex<Vec<Seen>>>) {
        let (host, seen) = fake::serve(handler);
        (RegistryAddress::parse(&host).unwrap(), seen)
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
            ("HEAD", "/v2/xtask-test/fake/manifests/1.0.0") => {
                answer(200, &[("Docker-Content-Digest", "sha256:another")], "")
            }
            _ => answer(404, &[], r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
        });
        let registry = Registry::new(address.clone(), None, QUICK);

        let existing = format!("{:#}", registry.put_manifest("xtask-test/fake", "1.0.0", &manifest).unwrap_err());
        assert!(
            existing.contains(&format!(
                "cannot tag {address}/xtask-test/fake:1.0.0: tag 1.0.0 already names sha256:another, not {digest}, \
                 and {address}/xtask-test/fake does not allow redeploy, so it cannot move; use a new tag"
            )),
            "{existing}"
        );
        assert!(!existing.contains("blob upload invalid"), "said plainly: {existing}");
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
    fn a_tag_already_on_the_manifest_is_left_alone_and_a_refused_put_that_landed_is_done() {
        let (body, digest) = fake_manifest();
        let manifest = Manifest { media_type: DOCKER_MANIFEST.to_string(), digest: digest.clone(), bytes: body.into() };
        let refusal = r#"{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"blob upload invalid"}]}"#;
        // `raced` is missing until its PUT, which another job wins: the PUT gets Nexus's 400.
        let put = Arc::new(AtomicUsize::new(0));
        let (puts, served) = (Arc::clone(&put), manifest.bytes.clone());
        let (address, seen) = fake_registry(move |request, _| {
            let found =
                answer(200, &[("Content-Type", DOCKER_MANIFEST), ("Docker-Content-Digest", &digest)], served.clone());
            match (request.method.as_str(), request.path()) {
                // Nexus answers 404 to HEAD; the GET finds the manifest.
                ("HEAD", _) => answer(404, &[], ""),
                ("GET", "/v2/xtask-test/fake/manifests/there") => found,
                ("GET", "/v2/xtask-test/fake/manifests/raced") if puts.load(Ordering::SeqCst) > 0 => found,
                ("PUT", _) => {
                    puts.fetch_add(1, Ordering::SeqCst);
                    answer(400, &[], refusal)
                }
                _ => answer(404, &[], r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
            }
        });
        let registry = Registry::new(address, None, QUICK);
        assert_eq!(registry.put_manifest("xtask-test/fake", "there", &manifest).unwrap(), Tagged::AlreadyThere);
        let methods = |seen: &Mutex<Vec<Seen>>| -> Vec<String> {
            seen.lock().unwrap().iter().map(|request| request.method.clone()).collect()
        };
        assert_eq!(methods(&seen), ["HEAD", "GET"], "no PUT for a tag already there");
        assert_eq!(registry.put_manifest("xtask-test/fake", "raced", &manifest).unwrap(), Tagged::AlreadyThere);
        assert_eq!(methods(&seen)[2..], ["HEAD", "GET", "PUT", "HEAD", "GET"], "the 400 is checked with a GET");
    }

    #[test]
    fn a_new_manifest_is_put_without_asking_first_and_a_rerun_settles_on_the_refusal() {
        let (body, digest) = fake_manifest();
        let manifest = Manifest { media_type: DOCKER_MANIFEST.to_string(), digest: digest.clone(), bytes: body.into() };
        let refusal = r#"{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"blob upload invalid"}]}"#;
        let served = manifest.bytes.clone();
        // `new` takes the PUT; `again` already names the manifest where redeploy is disabled.
        let (address, seen) = fake_registry(move |request, _| match (request.method.as_str(), request.path()) {
            ("PUT", "/v2/xtask-test/fake/manifests/new") => answer(201, &[("Docker-Content-Digest", &digest)], ""),
            ("PUT", _) => answer(400, &[], refusal),
            (_, "/v2/xtask-test/fake/manifests/again") => {
                answer(200, &[("Content-Type", DOCKER_MANIFEST), ("Docker-Content-Digest", &digest)], served.clone())
            }
            _ => answer(404, &[], r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
        });
        let registry = Registry::new(address, None, QUICK);
        let requests = || -> Vec<String> {
            seen.lock().unwrap().iter().map(|request| format!("{} {}", request.method, request.path())).collect()
        };
        assert_eq!(registry.put_new_manifest("xtask-test/fake", "new", &manifest).unwrap(), Tagged::Put);
        assert_eq!(requests(), ["PUT /v2/xtask-test/fake/manifests/new"], "one round trip");
        assert_eq!(registry.put_new_manifest("xtask-test/fake", "again", &manifest).unwrap(), Tagged::AlreadyThere);
        assert_eq!(
            requests()[1..],
            ["PUT /v2/xtask-test/fake/manifests/again", "HEAD /v2/xtask-test/fake/manifests/again"],
            "the refusal is checked"
        );
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
        assert_eq!(seen.lock().unwrap().len(), 4, "three full pages, then an empty one");
        assert_eq!(registry.tags("xtask-test/none").unwrap(), Vec::<String>::new());
        let wrong = format!("{:#}", registry.tags("xtask-test/wrong").unwrap_err());
        assert!(wrong.contains("HTTP 404: NOT_FOUND"), "{wrong}");
    }

    /// A tag list like Nexus's: pages of at most `cap` tags whatever `n` asks, honouring
    /// `last`, with no `Link` header.
    fn capped_tag_list(all: Vec<String>, cap: usize) -> impl Fn(&Seen, &str) -> Answer + Send + 'static {
        move |request, _| {
            let n: usize = request.query("n").map_or(cap, |n| n.parse().unwrap());
            let start = request.query("last").map_or(0, |last| all.iter().position(|tag| *tag == last).unwrap() + 1);
            let page: Vec<&String> = all.iter().skip(start).take(n.min(cap)).collect();
            answer(200, &[], json!({"name": "x", "tags": page}).to_string())
        }
    }

    #[test]
    fn capped_pages_are_followed_to_the_end_whatever_their_size() {
        for (count, cap) in [(5usize, 2usize), (4, 2), (1, 2), (0, 2), (7, 1), (1001, 1000)] {
            let all: Vec<String> = (0..count).map(|i| format!("t{i:04}")).collect();
            let (address, seen) = fake_registry(capped_tag_list(all.clone(), cap));
            let tags = Registry::new(address, None, QUICK).tags("xtask-test/capped").unwrap();
            assert_eq!(tags, all, "{count} tags in pages of {cap}");
            let requests = seen.lock().unwrap();
            assert_eq!(requests.len(), count.div_ceil(cap) + 1, "every page, then an empty one");
            let lasts: Vec<Option<String>> = requests.iter().map(|request| request.query("last")).collect();
            assert_eq!(lasts[0], None);
            for (page, last) in lasts.iter().skip(1).enumerate() {
                let end = ((page + 1) * cap).min(count);
                assert_eq!(last.as_deref(), Some(all[end - 1].as_str()), "{requests:?}");
            }
        }
    }

    #[test]
    fn a_link_header_naming_the_tag_list_is_followed() {
        // Distribution's style: the next page is wherever `Link` says, with its own cursor.
        let (address, seen) = fake_registry(|request, host| {
            let (tags, link) = match request.query("cursor").as_deref() {
                None => (
                    json!(["a", "b"]),
                    Some(format!(r#"<http://{host}/v2/xtask-test/linked/tags/list?n=2&cursor=2>; rel="next""#)),
                ),
                Some("2") => (
                    json!(["c", "d"]),
                    Some(r#"</v2/xtask-test/linked/tags/list?n=2&cursor=4>; rel="next""#.to_string()),
                ),
                Some(_) => (json!(["e"]), None),
            };
            let headers: Vec<(&str, &str)> = link.iter().map(|link| ("Link", link.as_str())).collect();
            answer(200, &headers, json!({"name": "x", "tags": tags}).to_string())
        });
        let tags = Registry::new(address, None, QUICK).tags("xtask-test/linked").unwrap();
        assert_eq!(tags, ["a", "b", "c", "d", "e"]);
        let cursors: Vec<Option<String>> = seen.lock().unwrap().iter().map(|request| request.query("cursor")).collect();
        assert_eq!(&cursors[..3], [None, Some("2".into()), Some("4".into())]);
    }

    #[test]
    fn a_registry_ignoring_last_does_not_loop() {
        let (address, seen) = fake_registry(|_, _| answer(200, &[], json!({"tags": ["a", "b"]}).to_string()));
        assert_eq!(Registry::new(address, None, QUICK).tags("xtask-test/stuck").unwrap(), ["a", "b"]);
        assert_eq!(seen.lock().unwrap().len(), 2, "the second page brought nothing new");
    }

    #[test]
    fn next_links_are_read_from_relative_and_absolute_targets() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?n=2&last=b")
        );
        assert_eq!(
            next_link("<https://h:5000/v2/a/tags/list?last=b>; rel=next").as_deref(),
            Some("/v2/a/tags/list?last=b")
        );
        assert_eq!(next_link(r#"</first>; rel="prev", </v2/x>; rel="next""#).as_deref(), Some("/v2/x"));
        assert_eq!(next_link(r#"</v2/x>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
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

    // --- Blob transfers between repositories ------------------------------------------------

    const BLOB: &[u8] = b"the bytes of a layer, streamed from one repository into the other";

    /// One registry holding `dev/intric/backend` and `release/intric/backend`: the source has
    /// [`BLOB`] (unless `source_has` is false), the release repository nothing; a mount answers
    /// `mount_status` (201 mounted, 202 an upload started instead, as when a mount is refused).
    fn two_repositories(mount_status: u16, source_has: bool) -> (Registry, Registry, Arc<Mutex<Vec<Seen>>>) {
        let digest = sha256_digest(BLOB);
        let (address, seen) = fake_registry(move |request, _| {
            let blob_path = format!("/v2/dev/intric/backend/blobs/{digest}");
            match (request.method.as_str(), request.path()) {
                ("HEAD" | "GET", path) if path == blob_path && source_has => answer(200, &[], BLOB),
                ("POST", "/v2/release/intric/backend/blobs/uploads/") if request.query("mount").is_some() => {
                    answer(mount_status, &[("Location", "/v2/release/intric/backend/blobs/uploads/one")], "")
                }
                ("POST", "/v2/release/intric/backend/blobs/uploads/") => {
                    answer(202, &[("Location", "/v2/release/intric/backend/blobs/uploads/one")], "")
                }
                ("PATCH", "/v2/release/intric/backend/blobs/uploads/one") => {
                    answer(202, &[("Location", "/v2/release/intric/backend/blobs/uploads/two?state=x")], "")
                }
                ("PUT", "/v2/release/intric/backend/blobs/uploads/two") if request.query("digest").is_some() => {
                    answer(201, &[], "")
                }
                _ => answer(404, &[], r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#),
            }
        });
        let at = |path: &str| RegistryAddress::parse(&format!("{address}/{path}")).unwrap();
        (Registry::new(at("dev"), None, QUICK), Registry::new(at("release"), None, QUICK), seen)
    }

    fn requests(seen: &Mutex<Vec<Seen>>) -> Vec<String> {
        seen.lock().unwrap().iter().map(|request| format!("{} {}", request.method, request.target)).collect()
    }

    #[test]
    fn a_blob_is_mounted_from_the_other_repository_of_the_same_registry() {
        let (source, target, seen) = two_repositories(201, true);
        let digest = sha256_digest(BLOB);
        assert_eq!(target.transfer_blob("intric/backend", &source, &digest).unwrap(), Transfer::Mounted);
        let encoded = percent_encode(&digest);
        assert_eq!(
            requests(&seen),
            [
                format!("HEAD /v2/release/intric/backend/blobs/{digest}"),
                format!("POST /v2/release/intric/backend/blobs/uploads/?mount={encoded}&from=dev%2Fintric%2Fbackend"),
            ],
            "no byte moves for a mount"
        );
    }

    #[test]
    fn a_refused_mount_falls_back_to_a_streamed_copy_into_the_upload_it_started() {
        let (source, target, seen) = two_repositories(202, true);
        let digest = sha256_digest(BLOB);
        assert_eq!(target.transfer_blob("intric/backend", &source, &digest).unwrap(), Transfer::Copied);
        let requests = requests(&seen);
        assert_eq!(requests.len(), 6, "{requests:#?}");
        assert!(requests[1].starts_with("POST /v2/release/intric/backend/blobs/uploads/?mount="), "{requests:#?}");
        assert_eq!(
            requests[2..],
            [
                format!("HEAD /v2/dev/intric/backend/blobs/{digest}"),
                format!("GET /v2/dev/intric/backend/blobs/{digest}"),
                "PATCH /v2/release/intric/backend/blobs/uploads/one".to_string(),
                format!("PUT /v2/release/intric/backend/blobs/uploads/two?state=x&digest={}", percent_encode(&digest)),
            ],
            "the upload the refused mount started, then the one its PATCH answer names"
        );
        let seen = seen.lock().unwrap();
        let patch = seen.iter().find(|request| request.method == "PATCH").unwrap();
        assert_eq!(patch.body, BLOB, "the source's bytes, unchanged");
        assert_eq!(patch.header("transfer-encoding"), Some("chunked"), "streamed, not read whole first");
        assert_eq!(seen.last().unwrap().body, b"", "the closing PUT carries no bytes");
    }

    #[test]
    fn a_blob_already_in_the_release_repository_is_left_alone() {
        let digest = sha256_digest(BLOB);
        let (address, seen) = fake_registry(|request, _| match request.method.as_str() {
            "HEAD" => answer(200, &[], ""),
            _ => answer(500, &[], "nothing else may be asked"),
        });
        let at = |path: &str| RegistryAddress::parse(&format!("{address}/{path}")).unwrap();
        let (source, target) = (Registry::new(at("dev"), None, QUICK), Registry::new(at("release"), None, QUICK));
        assert_eq!(target.transfer_blob("intric/backend", &source, &digest).unwrap(), Transfer::AlreadyThere);
        assert_eq!(requests(&seen), [format!("HEAD /v2/release/intric/backend/blobs/{digest}")]);
    }

    #[test]
    fn a_new_blob_is_uploaded_without_asking_first_and_a_refusal_of_one_held_is_done() {
        // `holds`: whether a HEAD finds the blob; the upload's PUT is refused as Nexus does
        // under Disable redeploy for a blob it holds.
        let registry = |holds: bool| {
            let (address, seen) = fake_registry(move |request, _| match (request.method.as_str(), request.path()) {
                ("POST", "/v2/intric/backend/blobs/uploads/") => {
                    answer(202, &[("Location", "/v2/intric/backend/blobs/uploads/one")], "")
                }
                ("PUT", "/v2/intric/backend/blobs/uploads/one") => answer(
                    400,
                    &[],
                    r#"{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"blob upload invalid","detail":"cannot be updated"}]}"#,
                ),
                ("HEAD", _) if holds => answer(200, &[], ""),
                _ => answer(404, &[], r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#),
            });
            (Registry::new(address, None, QUICK), seen)
        };
        let digest = sha256_digest(BLOB);
        let (held, seen) = registry(true);
        assert_eq!(held.upload_blob("intric/backend", BLOB).unwrap(), digest);
        let encoded = percent_encode(&digest);
        assert_eq!(
            requests(&seen),
            [
                "POST /v2/intric/backend/blobs/uploads/".to_string(),
                format!("PUT /v2/intric/backend/blobs/uploads/one?digest={encoded}"),
                format!("HEAD /v2/intric/backend/blobs/{digest}"),
            ],
            "the upload first, the question only after the refusal"
        );
        let (missing, _) = registry(false);
        let error = format!("{:#}", missing.upload_blob("intric/backend", BLOB).unwrap_err());
        assert!(error.starts_with(&format!("cannot upload blob {digest} to ")), "{error}");
        assert!(
            error.contains("HTTP 400") && error.contains("blob upload invalid"),
            "the refusal is what is said: {error}"
        );
    }

    #[test]
    fn a_blob_missing_from_the_source_is_one_clear_line() {
        let (source, target, seen) = two_repositories(202, false);
        let digest = sha256_digest(BLOB);
        let error = format!("{:#}", target.transfer_blob("intric/backend", &source, &digest).unwrap_err());
        let host = &target.address.host;
        assert!(
            error.starts_with(&format!(
                "cannot copy blob {digest} from {host}/dev/intric/backend to {host}/release/intric/backend: \
                 {host}/dev/intric/backend does not have it, although its manifest refers to it"
            )),
            "{error}"
        );
        assert!(!error.contains('\n'), "{error}");
        assert!(!requests(&seen).iter().any(|request| request.starts_with("PATCH")), "nothing was uploaded");
    }

    #[test]
    fn between_registries_blobs_are_copied_without_a_mount() {
        let digest = sha256_digest(BLOB);
        let blob_path = format!("/v2/intric/backend/blobs/{digest}");
        let (source, source_seen) = fake_registry(move |request, _| match request.path() {
            path if path == blob_path => answer(200, &[], BLOB),
            _ => answer(404, &[], ""),
        });
        let (target, target_seen) = fake_registry(|request, _| match request.method.as_str() {
            "HEAD" => answer(404, &[], ""),
            "POST" => answer(202, &[("Location", "/v2/release/intric/backend/blobs/uploads/one")], ""),
            "PATCH" => answer(202, &[("Location", "/v2/release/intric/backend/blobs/uploads/two")], ""),
            _ => answer(201, &[], ""),
        });
        let source = Registry::new(source, None, QUICK);
        let target = Registry::new(RegistryAddress::parse(&format!("{}/release", target.host)).unwrap(), None, QUICK);
        assert_eq!(target.transfer_blob("intric/backend", &source, &digest).unwrap(), Transfer::Copied);
        let posts: Vec<String> = requests(&target_seen).into_iter().filter(|r| r.starts_with("POST")).collect();
        assert_eq!(posts, ["POST /v2/release/intric/backend/blobs/uploads/"], "no mount across registries");
        assert_eq!(requests(&source_seen).len(), 2, "HEAD and GET of the blob");
        let patch = target_seen.lock().unwrap().iter().find(|request| request.method == "PATCH").cloned().unwrap();
        assert_eq!(patch.body, BLOB);
    }

    #[test]
    fn manifests_refer_to_their_blobs_or_an_index_to_its_manifests() {
        let image = Manifest {
            media_type: DOCKER_MANIFEST.into(),
            digest: "sha256:image".into(),
            bytes: json!({"config": {"digest": "sha256:config"}, "layers": [
                {"digest": "sha256:one"}, {"digest": "sha256:foreign", "urls": ["https://elsewhere"]}, {"digest": "sha256:two"}
            ]})
            .to_string()
            .into(),
        };
        assert_eq!(image.references().unwrap(), ["sha256:config", "sha256:one", "sha256:two"]);
        let index = Manifest {
            media_type: OCI_INDEX.into(),
            digest: "sha256:index".into(),
            bytes: json!({"manifests": [{"digest": "sha256:amd64"}, {"digest": "sha256:arm64"}]}).to_string().into(),
        };
        assert_eq!(index.references().unwrap(), ["sha256:amd64", "sha256:arm64"]);
        let broken = Manifest { bytes: br#"{"config": {}}"#.to_vec(), ..image };
        assert!(broken.references().unwrap_err().to_string().contains("an entry without a digest"));
    }

    #[test]
    fn a_mount_asks_for_a_token_with_both_repositories_scopes() {
        let (address, seen) = fake_registry(|request, host| match request.path() {
            "/token" => answer(200, &[], r#"{"token": "t"}"#),
            _ if request.header("authorization") == Some("Bearer t") => match request.method.as_str() {
                "HEAD" => answer(404, &[], ""),
                _ => answer(201, &[], ""),
            },
            _ => {
                answer(401, &[("WWW-Authenticate", &format!(r#"Bearer realm="http://{host}/token",service="s""#))], "")
            }
        });
        let at = |path: &str| RegistryAddress::parse(&format!("{address}/{path}")).unwrap();
        let (source, target) = (Registry::new(at("dev"), None, QUICK), Registry::new(at("release"), None, QUICK));
        assert_eq!(target.transfer_blob("intric/backend", &source, "sha256:00").unwrap(), Transfer::Mounted);
        let seen = seen.lock().unwrap();
        let token = seen.iter().rev().find(|request| request.path() == "/token").unwrap();
        assert!(
            token.target.ends_with(
                "&scope=repository%3Arelease%2Fintric%2Fbackend%3Apull%2Cpush&scope=repository%3Adev%2Fintric%2Fbackend%3Apull"
            ),
            "{}",
            token.target
        );
    }

    // --- The lab registry (`cargo xtask sandbox up`) ----------------------------------------

    /// Runs `cargo xtask sandbox up` with `options` where an engine answers. The lab is the
    /// sandbox task's: it runs as a user would run it, through cargo (an adapter never calls a
    /// task), building the xtask binary that is already built.
    fn sandbox_up(options: &[&str]) {
        let engine = std::process::Command::new("docker").arg("info").output();
        if engine.is_ok_and(|output| output.status.success()) {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
            let up = std::process::Command::new(cargo)
                .args(["xtask", "sandbox", "up"])
                .args(options)
                .current_dir(crate::adapters::workspace_root())
                .status();
            if !up.is_ok_and(|status| status.success()) {
                eprintln!("note: cannot start the lab: `cargo xtask sandbox up {}` failed", options.join(" "));
            }
        }
    }

    /// A client for the lab registry with its credentials, or `None` (with a note) when the lab is
    /// not up. With `CI` set, a missing lab fails the test instead: CI must run these.
    pub(super) fn lab() -> Option<(Registry, Credentials)> {
        // Where an engine answers, start the lab (once per test run) instead of skipping: these
        // tests are what proves the client against a real registry.
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| sandbox_up(&[]));
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

    /// Uploads `bytes` as a blob of `repository`, returning its digest.
    fn push_blob(registry: &Registry, repository: &str, bytes: &[u8]) -> String {
        registry.upload_blob(repository, bytes).unwrap()
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
        // The lab outlives test runs: an earlier run may have put the same bytes already.
        registry.put_manifest(repository, tag, &manifest).unwrap();
        assert_eq!(registry.manifest_digest(repository, tag).unwrap().as_deref(), Some(manifest.digest.as_str()));
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
        registry.put_manifest(repository, "two", &one).unwrap();
        assert_eq!(registry.put_manifest(repository, "two", &one).unwrap(), Tagged::AlreadyThere, "no second PUT");
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

    // --- The Nexus look-alike (`cargo xtask sandbox up --nexus`) ------------------------------

    /// A client for a repository path of the lab's Nexus look-alike (`127.0.0.1:5001/<path>`,
    /// with the lab's login), or `None` when it is not up; with `CI` set, a test fails instead.
    fn nexus_lab(path: &str) -> Option<Registry> {
        let (lab, credentials) = lab()?;
        drop(lab);
        let up = || TcpStream::connect_timeout(&"127.0.0.1:5001".parse().unwrap(), Duration::from_secs(2)).is_ok();
        // Started here too, where the unit tests run before any integration test has started it.
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            if !up() {
                sandbox_up(&["--nexus"]);
            }
        });
        if !up() {
            assert!(std::env::var_os("CI").is_none(), "the Nexus look-alike is needed with CI set");
            eprintln!("note: skipping a Nexus look-alike test; start it with `cargo xtask sandbox up --nexus`");
            return None;
        }
        let address = RegistryAddress::parse(&format!("127.0.0.1:5001/{path}")).unwrap();
        Some(Registry::new(address, Some(credentials), QUICK))
    }

    /// A name no other run of the tests used, for repositories in the shared lab.
    fn unique(name: &str) -> String {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        format!("xtask-test/{name}-{}-{nanos}", std::process::id())
    }

    #[test]
    fn nexus_lab_tag_lists_capped_at_two_per_page_are_read_whole() {
        let Some(registry) = nexus_lab("dev") else { return };
        let repository = unique("paged");
        let manifest = push_tiny_image(&registry, &repository, "t1", "paging-test");
        let expected = ["t1", "t2", "t3", "t4", "t5"];
        for tag in &expected[1..] {
            registry.put_manifest(&repository, tag, &manifest).unwrap();
        }
        assert_eq!(registry.tags(&repository).unwrap(), expected, "every page of at most 2 tags, without Link");
    }
}
