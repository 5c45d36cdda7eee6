//! Blob calls of the registry client: whether a repository holds a blob, mounting one from
//! another repository of the same registry (no bytes move), and uploading a small blob in one
//! request (an image config). Used where an image is assembled in the registry rather than
//! built and pushed (`images::derived`). It talks HTTP to the registry and runs no process.

use anyhow::{Context, Result, bail};

use super::wire::{Call, percent_encode};
use super::{Registry, sha256_digest};

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

    /// Makes the blob `digest` of `from` a blob of `repository` too, without moving its bytes
    /// (a cross-repository mount), unless `repository` holds it already. A registry that
    /// answers a mount by starting an upload instead (202: it would need the bytes) is refused
    /// in one line: the bytes are not here to send.
    pub fn mount_blob(&self, repository: &str, digest: &str, from: &str) -> Result<()> {
        if self.has_blob(repository, digest)? {
            return Ok(());
        }
        let shown = || format!("cannot mount blob {digest} from {}/{from} into {repository}", self.address);
        let query = format!(
            "blobs/uploads/?mount={}&from={}",
            percent_encode(digest),
            percent_encode(&self.address.repository_path(from))
        );
        // The token must allow pulling from the source as well as pushing to the target.
        let scope = format!("{} repository:{}:pull", self.scope(repository), self.address.repository_path(from));
        let reply = self
            .execute(&Call::new("POST", self.address.api_url(repository, &query), Some(scope)))
            .with_context(shown)?;
        match reply.status {
            201 => Ok(()),
            202 => {
                // An upload was started in place of the mount: cancel it so nothing is left open.
                if let Some(location) = reply.header("location") {
                    let _ = self.execute(&Call::new("DELETE", self.absolute(location), Some(self.scope(repository))));
                }
                bail!(
                    "{}: the registry does not mount across repositories (it asked for the bytes); \
                     build with --no-fast-path",
                    shown()
                )
            }
            status => bail!("{}: HTTP {status}: {}", shown(), reply.errors()),
        }
    }

    /// Uploads `bytes` as a blob of `repository` in one request (a monolithic upload: fine for
    /// an image config, not meant for layers), unless it holds them already. Returns the digest.
    pub fn upload_blob(&self, repository: &str, bytes: &[u8]) -> Result<String> {
        let digest = sha256_digest(bytes);
        if self.has_blob(repository, &digest)? {
            return Ok(digest);
        }
        let shown = || format!("cannot upload blob {digest} to {}/{repository}", self.address);
        let scope = Some(self.scope(repository));
        let start = Call::new("POST", self.address.api_url(repository, "blobs/uploads/"), scope.clone());
        let started = self.execute(&start).with_context(shown)?;
        if started.status != 202 {
            bail!("{}: HTTP {} starting the upload: {}", shown(), started.status, started.errors());
        }
        let location = started.header("location").with_context(|| format!("{}: no upload location", shown()))?;
        let location = self.absolute(location);
        let separator = if location.contains('?') { '&' } else { '?' };
        let mut put = Call::new("PUT", format!("{location}{separator}digest={}", percent_encode(&digest)), scope);
        put.content_type = Some("application/octet-stream");
        put.body = Some(bytes);
        let done = self.execute(&put).with_context(shown)?;
        match done.status {
            201 => Ok(digest),
            413 => bail!(
                "{}: HTTP 413, the body is too large for a reverse proxy in front of the registry; raise its \
                 body limit (nginx: client_max_body_size 0;)",
                shown()
            ),
            status => bail!("{}: HTTP {status}: {}", shown(), done.errors()),
        }
    }

    /// An upload `Location` as a full URL: registries send it absolute or as a path.
    fn absolute(&self, location: &str) -> String {
        if location.starts_with('/') { format!("{}{location}", self.address.base_url()) } else { location.to_string() }
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
