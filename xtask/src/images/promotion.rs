//! Two-repository promotion (`release --to-registry`): a release whose tags go into another
//! repository than the one the default branch's builds were pushed to. The usual Nexus setup
//! behind it: a development repository that allows redeploy (`sha-<12 hex>`, `dev-latest`)
//! and a release repository with redeploy disabled (`X.Y.Z`), where tags never move.
//!
//! An image is promoted by bringing its content over unchanged, then tagging it there (the
//! release's own writes, in its order): every blob its manifest names (config and layers; for an
//! index, each child manifest's, and the child manifests themselves, put by digest) goes into the
//! release repository by cross-repository mount where both repositories are on one registry,
//! else, or where the registry refuses the mount, by a streamed copy; blobs the release
//! repository holds already are skipped. The manifest's bytes are then put unchanged, so the
//! digests in both repositories are the same, and a promotion cut off part-way is finished by
//! running it again.
//!
//! [`read`] reads what the plan shows (how many blobs each image has and how many the release
//! repository lacks); [`PromotionPlan`] is that, as data; [`bring`] does the transfer of one
//! image. All of it talks to the registries through the registry adapter; nothing runs a process.

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{Context, Result};

use crate::adapters::ci_env::Env;
use crate::adapters::registry::{Backoff, Credentials, Manifest, Registry, RegistryAddress, Transfer};
use crate::images::location;
use crate::plan::runner::Runner;

/// The release registry: `--to-registry`, else a non-empty `$NEXUS_RELEASE_REGISTRY`, else
/// none (the release tags go where the images are). Read by the one registry parser.
pub fn release_registry(flag: Option<&str>, env: &Env) -> Result<Option<RegistryAddress>> {
    location::setting(flag, "--to-registry", env, "NEXUS_RELEASE_REGISTRY")
}

/// A promotion from `source` into `target`, as the dry run shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromotionPlan {
    /// The development registry the images were pushed to (`--registry`).
    pub source: RegistryAddress,
    /// The release registry the tags go into (`--to-registry`).
    pub target: RegistryAddress,
    /// One per image, in the release's order.
    pub images: Vec<ImageContent>,
}

/// What one image's promotion moves, read before the first write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageContent {
    /// `intric/<service>`.
    pub repository: String,
    /// `None` when the source lacks the image yet (`release --build` pushes it first): its
    /// content is known only then.
    pub blobs: Option<BlobCount>,
}

/// An image's blobs: configs and layers, of every child manifest for an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobCount {
    pub total: usize,
    /// Of `total`, those the release repository does not hold yet.
    pub missing: usize,
    /// The child manifests of an index (0 for a single image), put by digest.
    pub children: usize,
}

impl PromotionPlan {
    /// Whether blobs can be mounted: both repositories are on one registry.
    pub fn mounts(&self) -> bool {
        self.source.same_registry(&self.target)
    }

    /// What is done with `repository`'s missing blobs, for the dry run: "mount or copy 3 blobs".
    pub fn transfer_line(&self, repository: &str) -> String {
        let how = if self.mounts() { "mount or copy" } else { "copy" };
        let Some(blobs) = self.images.iter().find(|image| image.repository == repository).and_then(|image| image.blobs)
        else {
            return format!("{how} its blobs once built");
        };
        let children = match blobs.children {
            0 => String::new(),
            count => format!(", put its {count} platform manifest(s) by digest"),
        };
        let plural = if blobs.missing == 1 { "" } else { "s" };
        format!(
            "{how} {} blob{plural} ({} of {} already there){children}",
            blobs.missing,
            blobs.total - blobs.missing,
            blobs.total
        )
    }

    /// A client for each registry: the source's login as every task finds it, the target's
    /// from `NEXUS_RELEASE_USERNAME`/`NEXUS_RELEASE_PASSWORD` if set (see
    /// [`Credentials::find_release`]).
    pub fn connect(&self, runner: &dyn Runner) -> Result<(Registry, Registry)> {
        let source = Registry::connect(self.source.clone(), runner)?;
        let credentials = Credentials::find_release(&self.target, runner)?;
        Ok((source, Registry::new(self.target.clone(), credentials, Backoff::STANDARD)))
    }
}

impl fmt::Display for PromotionPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = if self.mounts() {
            "blobs by cross-repository mount, or a streamed copy where the registry refuses the mount"
        } else {
            "another registry, so blobs by streamed copy"
        };
        write!(f, "promote from {} into {} ({how}; blobs already there are skipped)", self.source, self.target)
    }
}

/// Reads what promoting each image (its `repository` and the `source` manifest, if pushed)
/// moves: its blobs and which of them `target` lacks. For an index, each child manifest is read
/// from `source`. One read per blob; nothing is written.
pub fn read<'a>(
    source: &Registry,
    target: &Registry,
    images: impl IntoIterator<Item = (String, Option<&'a Manifest>)>,
) -> Result<PromotionPlan> {
    let mut content = Vec::new();
    for (repository, manifest) in images {
        let blobs = match manifest {
            None => None,
            Some(manifest) => {
                let (children, blobs) = contents(source, &repository, manifest)?;
                let mut missing = 0;
                for digest in &blobs {
                    if !target.has_blob(&repository, digest)? {
                        missing += 1;
                    }
                }
                Some(BlobCount { total: blobs.len(), missing, children: children.len() })
            }
        };
        content.push(ImageContent { repository, blobs });
    }
    Ok(PromotionPlan { source: source.address().clone(), target: target.address().clone(), images: content })
}

/// An image's child manifests (for an index; none otherwise) and every blob it refers to,
/// each once, read from `source`.
fn contents(source: &Registry, repository: &str, manifest: &Manifest) -> Result<(Vec<Manifest>, BTreeSet<String>)> {
    let mut children = Vec::new();
    let mut blobs = BTreeSet::new();
    if manifest.is_index() {
        for digest in manifest.references()? {
            let child = source.manifest(repository, &digest)?.with_context(|| {
                format!("the index {} of {repository} refers to {digest}, which the registry lacks", manifest.digest)
            })?;
            blobs.extend(child.references()?);
            children.push(child);
        }
    } else {
        blobs.extend(manifest.references()?);
    }
    Ok((children, blobs))
}

/// What [`bring`] did with one image's blobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Brought {
    pub mounted: usize,
    pub copied: usize,
    pub already_there: usize,
}

impl fmt::Display for Brought {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} blobs mounted, {} copied, {} already there", self.mounted, self.copied, self.already_there)
    }
}

/// Brings `manifest` of `repository` from `source` into `target` so that a tag there can name
/// it: every blob it refers to (see [`Registry::transfer_blob`]), then, for an index, each
/// child manifest by digest (a registry refuses an index whose manifests it lacks). Tags
/// nothing: the release's writes do that.
pub fn bring(source: &Registry, target: &Registry, repository: &str, manifest: &Manifest) -> Result<Brought> {
    let (children, blobs) = contents(source, repository, manifest)?;
    let mut brought = Brought::default();
    for digest in &blobs {
        match target.transfer_blob(repository, source, digest)? {
            Transfer::AlreadyThere => brought.already_there += 1,
            Transfer::Mounted => brought.mounted += 1,
            Transfer::Copied => brought.copied += 1,
        }
    }
    for child in &children {
        target.put_manifest(repository, &child.digest, child)?;
    }
    Ok(brought)
}
