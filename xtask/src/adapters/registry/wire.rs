//! HTTP for the registry client: the manifest media types and the `Accept` that lists them, one
//! request and its answer ([`Call`], [`Reply`]), the agent (timeouts, TLS through the system's
//! certificate store, no credentials on redirects to other hosts), retries of transient
//! failures with exponential backoff ([`Backoff`]), streamed requests and answers for blobs too
//! large to hold ([`Registry::stream`]), and the registry's error bodies as one line. It talks
//! HTTP(S) to the registry and runs no process.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use serde_json::Value;
use ureq::http;

use super::Registry;

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
pub(super) const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// How long to wait for a TCP (and TLS) connection before treating the registry as unreachable.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a single read or write may stall; a registry that is slow but moving is fine.
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Manifests are limited to 4 MiB by Distribution and image configs are far smaller, so a larger
/// answer means something is wrong rather than a body worth reading.
const MAX_BODY: u64 = 16 * 1024 * 1024;

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

    /// One attempt: for a dry run or a plan's reading, which reports a registry that does not
    /// answer (as one problem among the others) instead of waiting for it.
    pub const NONE: Backoff = Backoff { attempts: 1, first_delay: Duration::ZERO };
}

/// One HTTP request to make, with what it needs for authentication.
pub(super) struct Call<'a> {
    pub(super) method: &'static str,
    pub(super) url: String,
    /// The Bearer token scope the call needs (`repository:<name>:pull,push`), if any.
    pub(super) scope: Option<String>,
    pub(super) accept: Option<&'a str>,
    pub(super) content_type: Option<&'a str>,
    pub(super) body: Option<&'a [u8]>,
}

impl<'a> Call<'a> {
    pub(super) fn new(method: &'static str, url: String, scope: Option<String>) -> Call<'a> {
        Call { method, url, scope, accept: None, content_type: None, body: None }
    }
}

/// An answer, read completely.
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) headers: http::HeaderMap,
    pub(super) body: Vec<u8>,
}

impl Reply {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The registry's error list (`{"errors": [{"code", "message", "detail"}]}`) as one line,
    /// or the start of the body when it is not in that form.
    pub(super) fn errors(&self) -> String {
        registry_errors(&self.body)
    }
}

/// Why one attempt failed: worth retrying, or final.
pub(super) enum Failure {
    Transient(anyhow::Error),
    Fatal(anyhow::Error),
}

impl Registry {
    /// Makes `call`, authenticating as the registry asks and retrying transient failures. The
    /// answer may have any status except 401/403 (login errors) and 5xx (retried, then errors).
    pub(super) fn execute(&self, call: &Call) -> Result<Reply> {
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
            // A single attempt's error names the call already.
            if attempts == 1 {
                return Err(error);
            }
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

    /// Sends `call` once, with `authorization` if given, and reads the whole answer.
    pub(super) fn send(&self, call: &Call, authorization: Option<&str>) -> std::result::Result<Reply, Failure> {
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
}

impl Registry {
    /// Sends `call` once with `body` streamed as its request body (chunked) and returns the
    /// answer with its body unread, so that a blob of any size passes through without being
    /// held: a blob download is read as it arrives, an upload sent as it is read.
    ///
    /// A stream cannot be sent twice, so this call cannot answer a 401 challenge by sending
    /// again: an earlier call with the same scope must have learned the registry's challenge
    /// (and token) first, and a 401 or 403 here is a refused login. Nor is it retried: a
    /// promotion that fails part-way is finished by running it again.
    pub(super) fn stream(&self, call: &Call, body: Option<&mut dyn Read>) -> Result<http::Response<ureq::Body>> {
        let authorization = self.authorization(call.scope.as_deref(), false).map_err(Failure::into_error)?;
        let mut request = http::Request::builder().method(call.method).uri(&call.url);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        if let Some(content_type) = call.content_type {
            request = request.header("content-type", content_type);
        }
        let result = match body {
            Some(body) => request.body(ureq::SendBody::from_reader(body)).map(|request| self.agent.run(request)),
            None => request.body(()).map(|request| self.agent.run(request)),
        };
        let response = result
            .map_err(|error| anyhow!("{} {}: {error}", call.method, call.url))?
            .map_err(|error| anyhow!("{} {}: {error}", call.method, call.url))?;
        let status = response.status().as_u16();
        if status == 401 || status == 403 {
            return Err(self.login_failed(status, ""));
        }
        Ok(response)
    }
}

impl Failure {
    /// The error, transient or not: for calls that are not retried.
    fn into_error(self) -> anyhow::Error {
        match self {
            Failure::Transient(error) | Failure::Fatal(error) => error,
        }
    }
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

/// Whether a 400 answer to a manifest PUT is Nexus refusing to overwrite under its "Disable
/// redeploy" policy (it words this as a failed blob upload).
pub(super) fn is_redeploy_refusal(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("blob_upload_invalid") || text.contains("does not allow updating assets")
}

/// The `code`s of a registry error body (`{"errors": [{"code": ...}]}`); none if it is not one.
pub(super) fn error_codes(body: &[u8]) -> Vec<String> {
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
pub(super) fn registry_errors(body: &[u8]) -> String {
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

/// Percent-encodes a query parameter value (everything but RFC 3986 unreserved characters).
pub(super) fn percent_encode(value: &str) -> String {
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

/// The HTTP agent every call of a [`Registry`] goes through, waiting at most `connect` to
/// resolve and connect and `io` for each read or write.
/// The size of each connection's input and output buffer, and so the most a response's
/// headers may take.
const HTTP_BUFFER: usize = 16 * 1024;

/// How many idle connections a client keeps for reuse.
const IDLE_CONNECTIONS: usize = 16;

pub(super) fn agent(connect: Duration, io: Duration) -> ureq::Agent {
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
        // Every connection allocates both buffers, zeroed, and ureq is compiled without
        // optimisation in the dev profile (issue #15): its 128 KiB defaults cost a build about
        // a seventh of its CPU time. A registry's headers (a Bearer token among them) and the
        // small bodies we send whole fit in 16 KiB; larger ones go through in pieces.
        .input_buffer_size(HTTP_BUFFER)
        .output_buffer_size(HTTP_BUFFER)
        .max_response_header_size(HTTP_BUFFER)
        // The calls of a build go at once, a dozen to one registry, phase after phase: with
        // ureq's 3 idle connections per host kept, most of each phase would connect (and over
        // HTTPS, shake hands) anew.
        .max_idle_connections(IDLE_CONNECTIONS)
        .max_idle_connections_per_host(IDLE_CONNECTIONS)
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build())
        .build();
    config.new_agent()
}
