//! Blob calls of the registry client: whether a repository holds a blob, reading a small one
//! whole (an image config, the layer a source swap replaces), mounting one from
//! another repository of the same registry (no bytes move), and uploading a small blob the
//! caller made (an image config, a swapped layer), used where an image is assembled in the registry rather than
//! built and pushed (`images::derived`); and bringing a blob over from another repository, on
//! this registry or another, for a promotion (`images::promotion`): by mount where it can, else
//! by a streamed copy that passes the source's answer into the upload without holding it. It
//! talks HTTP to the registries and runs no process.

use std::io::Read;

use anyhow::{Context, Result, bail};

use super::wire::{self, Call, percent_encode};
use super::{Registry, sha256_digest};

/// What [`Registry::transfer_blob`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// The target held the blob already: nothing was sent.
    AlreadyThere,
    /// Mounted from the source repository on the same registry: no byte moved.
    Mounted,
    /// Streamed from the source into the target.
    Copied,
}

/// How a registry answered a mount request.
enum Mount {
    Mounted,
    /// It started an upload instead (it would need the bytes): the upload's URL.
    Refused(String),
}

impl Registry {
    /// Whether `repository` holds the blob `digest` (`HEAD /v2/<name>/blobs/<digest>`).
    pub fn has_blob(&self, repository: &str, digest: &str) -> Result<bool> {
        let url = self.address.api_url(repository, &format!("blobs/{digest}"));
        let reply = self
            .execute(&Call::new("HEAD", url, Some(self.scope(repository))))
            .with_context(|| format!("cannot check for blob {digest} in {}/{repository}", self.address))?;
        match reply.status {
            200 => Ok(true),
            404 => Ok(false),
            status => bail!("cannot check for blob {digest} in {}/{repository}: HTTP {status}", self.address),
        }
    }

    /// The bytes of the blob `digest` of `repository` (`GET /v2/<name>/blobs/<digest>`), checked
    /// against the digest. Held in memory: for configs and small layers, never a base layer.
    pub fn blob(&self, repository: &str, digest: &str) -> Result<Vec<u8>> {
        let shown = || format!("cannot read blob {digest} of {}/{repository}", self.address);
        let url = self.address.api_url(repository, &format!("blobs/{digest}"));
        let reply = self.execute(&Call::new("GET", url, Some(self.scope(repository)))).with_context(shown)?;
        if reply.status != 200 {
            bail!("{}: HTTP {}: {}", shown(), reply.status, reply.errors());
        }
        if digest.starts_with("sha256:") && sha256_digest(&reply.body) != digest {
            bail!("{}: the bytes do not match the digest", shown());
        }
        Ok(reply.body)
    }

    /// Makes the blob `digest` of `from` a blob of `repository` too, without moving its bytes
    /// (a cross-repository mount), unless `repository` holds it already. A registry that
    /// answers a mount by starting an upload instead (202: it would need the bytes) is refused
    /// in one line: the bytes are not here to send.
    pub fn mount_blob(&self, repository: &str, digest: &str, from: &str) -> Result<()> {
        if self.has_blob(repository, digest)? {
            return Ok(());
        }
        let shown = || format!("cannot mount blob {digest} from {}/{from} into {repository}", self.address);
        match self.request_mount(repository, digest, &self.address.repository_path(from)).with_context(shown)? {
            Mount::Mounted => Ok(()),
            Mount::Refused(location) => {
                // An upload was started in place of the mount: cancel it so nothing is left open.
                let _ = self.execute(&Call::new("DELETE", location, Some(self.scope(repository))));
                bail!(
                    "{}: the registry does not mount across repositories (it asked for the bytes); \
                     build with --no-fast-path",
                    shown()
                )
            }
        }
    }

    /// Asks for blob `digest` of the repository `from_path` (its whole API name, path prefix
    /// included) to be mounted into `repository`.
    fn request_mount(&self, repository: &str, digest: &str, from_path: &str) -> Result<Mount> {
        let query = format!("blobs/uploads/?mount={}&from={}", percent_encode(digest), percent_encode(from_path));
        // The token must allow pulling from the source as well as pushing to the target.
        let scope = format!("{} repository:{from_path}:pull", self.scope(repository));
        let reply = self.execute(&Call::new("POST", self.address.api_url(repository, &query), Some(scope)))?;
        match reply.status {
            201 => Ok(Mount::Mounted),
            202 => Ok(Mount::Refused(self.upload_location(&reply)?)),
            status => bail!("HTTP {status}: {}", reply.errors()),
        }
    }

    /// Uploads `bytes`, which the caller has just made (a swapped layer, a new image config), as
    /// a blob of `repository`: a POST and a PUT with the whole body (a monolithic upload: fine
    /// for an image config or a small layer of source files, not meant for big layers). It
    /// does not ask first whether the blob is there, which it hardly ever is: the question
    /// would be a round trip on every upload. Where the upload is refused, a HEAD finding the
    /// blob makes it done: Nexus refuses to write a blob it holds under Disable redeploy, and
    /// one of two jobs uploading the same blob at once ("blob upload invalid"). Returns the
    /// digest.
    pub fn upload_blob(&self, repository: &str, bytes: &[u8]) -> Result<String> {
        let digest = sha256_digest(bytes);
        match self.send_blob(repository, bytes, &digest) {
            Ok(()) => Ok(digest),
            Err(refused) => match self.has_blob(repository, &digest) {
                Ok(true) => Ok(digest),
                _ => Err(refused),
            },
        }
    }

    fn send_blob(&self, repository: &str, bytes: &[u8], digest: &str) -> Result<()> {
        let shown = || format!("cannot upload blob {digest} to {}/{repository}", self.address);
        let scope = Some(self.scope(repository));
        let location = self.start_upload(repository).with_context(shown)?;
        let separator = if location.contains('?') { '&' } else { '?' };
        let mut put = Call::new("PUT", format!("{location}{separator}digest={}", percent_encode(digest)), scope);
        put.content_type = Some("application/octet-stream");
        put.body = Some(bytes);
        let done = self.execute(&put).with_context(shown)?;
        match done.status {
            201 => Ok(()),
            413 => bail!(
                "{}: HTTP 413, the body is too large for a reverse proxy in front of the registry; raise its \
                 body limit (nginx: client_max_body_size 0;)",
                shown()
            ),
            status => bail!("{}: HTTP {status}: {}", shown(), done.errors()),
        }
    }

    /// Puts blob `digest` of `source`'s `repository` into this registry's `repository` (a
    /// repository name without path prefix, `intric/backend`, is the same image in both):
    /// nothing when it is there already; else a cross-repository mount when both are one
    /// registry, and where that is refused (202: the registry started an upload instead, as
    /// Distribution does for a blob it cannot mount) or the registries differ, a streamed copy
    /// into that upload.
    pub fn transfer_blob(&self, repository: &str, source: &Registry, digest: &str) -> Result<Transfer> {
        if self.has_blob(repository, digest)? {
            return Ok(Transfer::AlreadyThere);
        }
        let upload = if self.address.same_registry(&source.address) {
            let from = source.address.repository_path(repository);
            let shown = || format!("cannot mount blob {digest} into {}/{repository}", self.address);
            match self.request_mount(repository, digest, &from).with_context(shown)? {
                Mount::Mounted => return Ok(Transfer::Mounted),
                Mount::Refused(location) => location,
            }
        } else {
            self.start_upload(repository)?
        };
        self.copy_blob(&upload, repository, source, digest)?;
        Ok(Transfer::Copied)
    }

    /// Starts a blob upload to `repository`: the URL to send the bytes to.
    fn start_upload(&self, repository: &str) -> Result<String> {
        let url = self.address.api_url(repository, "blobs/uploads/");
        let context = || format!("cannot start a blob upload to {}/{repository}", self.address);
        let reply = self.execute(&Call::new("POST", url, Some(self.scope(repository)))).with_context(context)?;
        match reply.status {
            202 => self.upload_location(&reply).with_context(context),
            status => bail!("{}: HTTP {status}: {}", context(), reply.errors()),
        }
    }

    /// An upload answer's `Location` as a full URL: registries send it absolute or as a path.
    fn upload_location(&self, reply: &wire::Reply) -> Result<String> {
        let location = reply.header("location").context("the registry sent no Location for the upload")?;
        Ok(if location.starts_with('/') { format!("{}{location}", self.address.base_url()) } else { location.into() })
    }

    /// Streams blob `digest` from `source`'s `repository` into the upload at `upload`: the
    /// download's body is the upload's (`PATCH`, chunked), then `PUT ?digest=` closes it and
    /// has the registry check the bytes against the digest.
    fn copy_blob(&self, upload: &str, repository: &str, source: &Registry, digest: &str) -> Result<()> {
        let from = format!("{}/{repository}", source.address);
        let context = || format!("cannot copy blob {digest} from {from} to {}/{repository}", self.address);
        // A HEAD first: it learns the source's login (a stream cannot answer a challenge) and
        // tells a missing blob apart from a failed download.
        if !source.has_blob(repository, digest).with_context(context)? {
            bail!(
                "{}: {from} does not have it, although its manifest refers to it (a broken push, or a cleanup \
                 policy deleted it): push the image again",
                context()
            );
        }
        let url = source.address.api_url(repository, &format!("blobs/{digest}"));
        let download =
            source.stream(&Call::new("GET", url, Some(source.scope(repository))), None).with_context(context)?;
        if download.status() != 200 {
            bail!("{}: GET of the blob from {from} answered HTTP {}", context(), download.status());
        }
        let mut bytes = download.into_body().into_reader();
        let mut patch = Call::new("PATCH", upload.to_string(), Some(self.scope(repository)));
        patch.content_type = Some("application/octet-stream");
        let sent = self.stream(&patch, Some(&mut bytes)).with_context(context)?;
        let status = sent.status().as_u16();
        let headers = sent.headers().clone();
        let mut body = Vec::new();
        // Only the error text is wanted from this answer; a few KiB of it at most.
        let _ = sent.into_body().into_reader().take(64 * 1024).read_to_end(&mut body);
        let reply = wire::Reply { status, headers, body };
        if status != 202 {
            bail!("{}: the upload answered HTTP {status}: {}", context(), reply.errors());
        }
        let location = self.upload_location(&reply).with_context(context)?;
        let separator = if location.contains('?') { '&' } else { '?' };
        let mut close = Call::new(
            "PUT",
            format!("{location}{separator}digest={}", percent_encode(digest)),
            Some(self.scope(repository)),
        );
        close.content_type = Some("application/octet-stream");
        close.body = Some(&[]);
        let done = self.execute(&close).with_context(context)?;
        match done.status {
            201 | 204 => Ok(()),
            status => bail!("{}: closing the upload answered HTTP {status}: {}", context(), done.errors()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::lab;

    #[test]
    fn lab_blobs_upload_once_and_mount_across_repositories_without_their_bytes() {
        let Some((registry, _)) = lab() else { return };
        let (source, target) = (
            format!("xtask-test/blobs-{}/source", std::process::id()),
            format!("xtask-test/blobs-{}/target", std::process::id()),
        );
        let bytes = format!("a config of run {}", std::process::id()).into_bytes();
        let digest = registry.upload_blob(&source, &bytes).unwrap();
        assert_eq!(digest, super::sha256_digest(&bytes));
        assert_eq!(registry.blob(&source, &digest).unwrap(), bytes);
        assert!(registry.has_blob(&source, &digest).unwrap());
        assert!(!registry.has_blob(&target, &digest).unwrap(), "another repository does not hold it yet");
        assert_eq!(registry.upload_blob(&source, &bytes).unwrap(), digest, "a second upload changes nothing");
        registry.mount_blob(&target, &digest, &source).unwrap();
        assert!(registry.has_blob(&target, &digest).unwrap());
        registry.mount_blob(&target, &digest, &source).unwrap();
        let missing = format!("sha256:{}", "0".repeat(64));
        let error = format!("{:#}", registry.mount_blob(&target, &missing, &source).unwrap_err());
        assert!(error.starts_with(&format!("cannot mount blob {missing} from ")), "{error}");
    }
}
