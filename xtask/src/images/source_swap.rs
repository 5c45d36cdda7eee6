//! The source-only fast path, planning side: whether a Dockerfile target ends with plain
//! `COPY <context path> <dest>` instructions followed only by metadata instructions, so that
//! an image whose other inputs did not change can be made from the previous one by replacing
//! exactly those layers (see [`crate::images::layer`] for writing them).
//!
//! [`source_swap`] reads the final stage from its end: first the metadata instructions that
//! [`crate::images::derived`] knows how to apply, then the run of `COPY` instructions before
//! them. Anything it cannot reproduce exactly as BuildKit would is refused with the reason,
//! naming the line, and the image is built by BuildKit: `COPY --from`, `--chmod`, `--chown`,
//! `--link` or any other flag, the JSON form, heredocs, wildcards, variables, a source outside
//! the context, a relative destination without a known `WORKDIR`, several sources into a
//! destination without a trailing `/`, and a `RUN`, `ADD`, `WORKDIR` or any other instruction
//! after the copies. What only the files can tell (a symlink among the sources, a missing
//! source) is checked when the layers are written. Pure: it reads no file and runs nothing.
//!
//! [`source_layers`] writes the layers from the build context. The metadata of a directory a
//! copy makes comes from the previous image's layer of that copy, the one being replaced
//! ([`replaced_layer`]: one blob GET, unpacked by the `gzip` program), never from the layers
//! below it: the fast path pulls nothing but small things.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::adapters::registry::{Manifest, Registry, sha256_digest};
use crate::images::derived::{Manifested, check_metadata, derive_config, put_tags, show_config_and_tags, upload_blobs};
use crate::images::dockerfile::{Dockerfile, Instruction};
use crate::images::inputs::{EntryKind, context_entries, under};
use crate::images::layer::{EntryMetadata, Layer, ListedEntry, TarEntry, TarKind, list_tar};
use crate::plan::Command;
use crate::plan::progress::TaskProgress;
use crate::plan::runner::{Pipe, Runner};

/// One trailing `COPY`: its sources, clean and relative to the build context (`.` for the whole
/// context), and its absolute destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceCopy {
    pub line: usize,
    pub sources: Vec<String>,
    /// The destination resolved against the stage's `WORKDIR`, clean, without a trailing `/`
    /// (`/` for the root).
    pub dest: String,
    /// Whether the destination was written as a directory (`./`, `/app/`): sources go inside it.
    /// Otherwise the one source is copied to that path (a directory's contents into it).
    pub into_directory: bool,
}

/// What the fast path replaces: the trailing copies, each one layer, in file order, and the
/// metadata instructions after them, re-applied to the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSwap {
    pub copies: Vec<SourceCopy>,
    pub metadata: Vec<Instruction>,
    /// The stage's working directory at the copies, when its `WORKDIR`s say it plainly: it
    /// exists before them (`WORKDIR` made it).
    pub workdir: Option<String>,
}

impl SourceSwap {
    /// Every source of the trailing copies, each once, sorted: the files whose changes the fast
    /// path can apply, and so the ones its label's digest leaves out.
    pub fn sources(&self) -> Vec<String> {
        let mut sources: Vec<String> = self.copies.iter().flat_map(|copy| copy.sources.clone()).collect();
        sources.sort();
        sources.dedup();
        sources
    }
}

/// The metadata keywords that may follow the trailing copies: those [`check_metadata`] applies.
const METADATA: &[&str] = &["ARG", "ENV", "LABEL", "USER", "EXPOSE", "STOPSIGNAL", "HEALTHCHECK", "CMD", "ENTRYPOINT"];

/// The trailing copies and metadata of the stage a build of `target` ends with, or why the fast
/// path cannot make that image, naming the file and line.
pub fn source_swap(file: &Dockerfile, target: Option<&str>) -> Result<SourceSwap, String> {
    let stage = file.stage(target).map_err(|error| format!("{error:#}"))?;
    let instructions = file.stage_instructions(stage);
    let at = |instruction: &Instruction| format!("{} line {}", file.shown, instruction.line);
    // The instruction splitter does not know heredocs: their bodies would read as instructions.
    if let Some(heredoc) = instructions.iter().find(|instruction| instruction.text.contains("<<")) {
        return Err(format!("{}: a heredoc, which the fast path does not read", at(heredoc)));
    }

    let metadata_start = instructions
        .iter()
        .rposition(|instruction| !METADATA.contains(&instruction.keyword.as_str()))
        .map_or(0, |index| index + 1);
    let copies_start = instructions[..metadata_start]
        .iter()
        .rposition(|instruction| instruction.keyword != "COPY")
        .map_or(0, |index| index + 1);
    if copies_start == metadata_start {
        return Err(match instructions[..metadata_start].last() {
            Some(last) => format!("{}: {} after the last COPY; only a build can apply it", at(last), last.keyword),
            None => format!("{} line {}: the stage has no COPY instruction", file.shown, stage.line),
        });
    }
    let metadata = instructions[metadata_start..].to_vec();
    check_metadata(file, &metadata)?;
    check_reapplicable(&metadata).map_err(|(instruction, why)| format!("{}: {why}", at(instruction)))?;

    let workdir = workdir(&instructions[..copies_start]);
    let mut copies = Vec::new();
    for instruction in &instructions[copies_start..metadata_start] {
        copies.push(parse_copy(instruction, workdir.as_deref()).map_err(|why| format!("{}: {why}", at(instruction)))?);
    }
    Ok(SourceSwap { copies, metadata, workdir })
}

/// The metadata after the copies is applied again to the previous image's config, which holds
/// its effect already. That gives the build's result unless an `ENV` or `LABEL` reads a
/// variable that this or a later `ENV` of that metadata sets (`ENV PATH=/x:$PATH` would grow
/// on every swap); such a stage is refused.
fn check_reapplicable(metadata: &[Instruction]) -> Result<(), (&Instruction, String)> {
    for (index, instruction) in metadata.iter().enumerate() {
        if !matches!(instruction.keyword.as_str(), "ENV" | "LABEL") {
            continue;
        }
        let set_later: Vec<String> = metadata[index..]
            .iter()
            .filter(|later| later.keyword == "ENV")
            .flat_map(|later| env_keys(&later.text))
            .collect();
        if let Some(name) = referenced(&instruction.text).into_iter().find(|name| set_later.contains(name)) {
            let why = format!("{} reads ${name}, which an ENV after the copies sets", instruction.keyword);
            return Err((instruction, why));
        }
    }
    Ok(())
}

/// The keys an `ENV` sets (`KEY=value` pairs, or the one-pair form `KEY value`).
fn env_keys(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.first() {
        Some(first) if !first.contains('=') => vec![first.to_string()],
        _ => words.iter().filter_map(|word| word.split_once('=').map(|(key, _)| key.to_string())).collect(),
    }
}

/// The variable names `text` refers to as `$NAME` or `${NAME...}`.
fn referenced(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in text.match_indices('$') {
        let rest = text[at + 1..].strip_prefix('{').unwrap_or(&text[at + 1..]);
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            names.push(name);
        }
    }
    names
}

/// The working directory the stage's own `WORKDIR`s leave (absolute, clean), when they say it
/// without variables; `None` when there is none (the base image's would decide) or it has one.
fn workdir(instructions: &[Instruction]) -> Option<String> {
    let mut dir: Option<String> = None;
    for instruction in instructions.iter().filter(|instruction| instruction.keyword == "WORKDIR") {
        let text = instruction.text.trim();
        if text.contains('$') {
            return None;
        }
        dir = Some(if text.starts_with('/') {
            clean_absolute(text)?
        } else {
            clean_absolute(&format!("{}/{text}", dir?))?
        });
    }
    dir
}

/// One trailing `COPY`, or why the fast path cannot write its layer.
fn parse_copy(instruction: &Instruction, workdir: Option<&str>) -> Result<SourceCopy, String> {
    let text = instruction.text.trim();
    if text.starts_with('[') {
        return Err("COPY in the JSON form".into());
    }
    if text.contains(['"', '\'', '\\']) {
        return Err("COPY with quotes or escapes".into());
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    if let Some(flag) = words.iter().find(|word| word.starts_with("--")) {
        let name = flag.trim_start_matches('-').split('=').next().unwrap_or_default();
        return Err(match name {
            "from" => "COPY --from takes files from another stage or image".to_string(),
            "chmod" | "chown" | "link" => format!("COPY --{name} is not applied by the fast path"),
            _ => format!("COPY with the unknown flag {flag}"),
        });
    }
    let Some((dest, sources)) = words.split_last().filter(|(_, sources)| !sources.is_empty()) else {
        return Err("COPY needs a source and a destination".into());
    };
    if dest.contains('$') || sources.iter().any(|source| source.contains('$')) {
        return Err("COPY with a variable".into());
    }
    if sources.iter().any(|source| source.contains(['*', '?', '['])) {
        return Err("COPY with a wildcard".into());
    }
    let sources = sources
        .iter()
        .map(|source| {
            clean_relative(source).ok_or_else(|| format!("the source {source} lies outside the build context"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let into_directory = dest.ends_with('/') || *dest == "." || dest.ends_with("/.");
    if sources.len() > 1 && !into_directory {
        return Err(format!("COPY of several sources into {dest}, which does not end with /"));
    }
    let dest = if dest.starts_with('/') {
        clean_absolute(dest)
    } else {
        let Some(workdir) = workdir else {
            return Err(format!(
                "the relative destination {dest} depends on a WORKDIR this stage does not set plainly"
            ));
        };
        clean_absolute(&format!("{workdir}/{dest}"))
    };
    let dest = dest.ok_or_else(|| "the destination climbs above /".to_string())?;
    Ok(SourceCopy { line: instruction.line, sources, dest, into_directory })
}

/// `path` made relative to the context root, as BuildKit reads a `COPY` source (a leading `/`
/// or `./` changes nothing): `.` for the root, `None` when `..` climbs out of it.
fn clean_relative(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(if parts.is_empty() { ".".to_string() } else { parts.join("/") })
}

/// `path` (absolute) without `.`, `..` and repeated or trailing slashes; `None` above `/`.
fn clean_absolute(path: &str) -> Option<String> {
    match clean_relative(path)?.as_str() {
        "." => Some("/".to_string()),
        relative => Some(format!("/{relative}")),
    }
}

/// The layers of the trailing copies, written from the build context as BuildKit's `COPY`
/// would (the ignore file applied, owner root, modes from the files, every time `mtime`), in
/// the copies' order; or why the fast path cannot write them, naming the line.
///
/// Directories the copies only write into (the `WORKDIR`, those an earlier trailing copy made)
/// get no entry of their own: they exist below, and their metadata stays as it is there; so do
/// the parents of every target. A directory from a source gets the source's metadata, also where
/// one exists below, as BuildKit gives it. The directory a copy copies a directory into (its
/// target) is made by BuildKit as `mkdir -p` would, mode 0755 and owned by root, whatever the
/// source directory's mode; but where it exists below, BuildKit keeps its mode and owner. Which
/// of the two it is only the layers below could say, and the fast path reads none of them: it
/// asks the previous image's layer of that copy instead (`replaced(index)`, the copy's index),
/// which records what BuildKit wrote there (see [`target_metadata`]).
pub fn source_layers(
    context: &Path,
    dockerfile: &Path,
    swap: &SourceSwap,
    mtime: u64,
    replaced: &mut dyn FnMut(usize) -> Result<Result<Vec<ListedEntry>, String>>,
) -> Result<Result<Vec<Layer>, String>> {
    let entries = context_entries(context, dockerfile)?;
    let mut existing: BTreeSet<String> = BTreeSet::from(["/".to_string()]);
    if let Some(workdir) = &swap.workdir {
        existing.insert(workdir.clone());
    }
    let mut layers = Vec::new();
    for (index, copy) in swap.copies.iter().enumerate() {
        let refuse = |why: String| Ok(Err(format!("COPY line {}: {why}", copy.line)));
        // By path: a directory two sources both hold is written once, as the later one has it.
        let mut tar: BTreeMap<String, TarEntry> = BTreeMap::new();
        let mut replaced_entries: Option<Vec<ListedEntry>> = None;
        for source in &copy.sources {
            let found: Vec<_> = entries.iter().filter(|entry| under(&entry.relative, source)).collect();
            if let Some(link) = found.iter().find(|entry| matches!(entry.kind, EntryKind::Symlink { .. })) {
                return refuse(format!("the symlink {} is among its sources", String::from_utf8_lossy(&link.relative)));
            }
            let root = found.iter().find(|entry| entry.relative == source.as_bytes());
            let source_is_dir = source == "." || matches!(root.map(|entry| &entry.kind), Some(EntryKind::Directory));
            if !source_is_dir && root.is_none() {
                return refuse(format!(
                    "the source {source} is not in the build context (or the ignore file excludes it)"
                ));
            }
            let (target_dir, target) = if source_is_dir {
                (parent(&copy.dest), copy.dest.clone())
            } else if copy.into_directory {
                (copy.dest.clone(), join(&copy.dest, source.rsplit('/').next().unwrap_or(source)))
            } else {
                (parent(&copy.dest), copy.dest.clone())
            };
            if !existing.contains(&target_dir) {
                return refuse(format!(
                    "{target_dir} is neither the WORKDIR nor made by these copies: what it is below decides the layer"
                ));
            }
            if source_is_dir && existing.insert(target.clone()) {
                let listed = match replaced_entries {
                    Some(ref listed) => listed,
                    None => match replaced(index)? {
                        Ok(listed) => replaced_entries.insert(listed),
                        Err(why) => return refuse(why),
                    },
                };
                let metadata = match target_metadata(&target, listed) {
                    Ok(metadata) => metadata,
                    Err(why) => return refuse(why),
                };
                let EntryMetadata { mode, uid, gid } = metadata;
                let path = target[1..].to_string();
                tar.insert(target.clone(), TarEntry { path, mode, uid, gid, mtime, kind: TarKind::Directory });
            }
            for entry in found {
                let Ok(relative) = std::str::from_utf8(&entry.relative) else {
                    return refuse(format!("the name {} is not UTF-8", String::from_utf8_lossy(&entry.relative)));
                };
                let rest = if source == "." { relative } else { relative[source.len()..].trim_start_matches('/') };
                if rest.is_empty() && source_is_dir {
                    // The target directory: made above, or one that exists and is only written into.
                    continue;
                }
                let path = if rest.is_empty() { target.clone() } else { join(&target, rest) };
                let on_disk = context.join(relative);
                let mode = fs::symlink_metadata(&on_disk)
                    .with_context(|| format!("cannot read {}", on_disk.display()))?
                    .permissions()
                    .mode()
                    & 0o7777;
                let kind = match &entry.kind {
                    EntryKind::Directory => {
                        existing.insert(path.clone());
                        TarKind::Directory
                    }
                    EntryKind::File { path: file, .. } => {
                        TarKind::File(fs::read(file).with_context(|| format!("cannot read {}", file.display()))?)
                    }
                    EntryKind::Symlink { .. } => unreachable!("symlinks are refused above"),
                };
                tar.insert(path.clone(), TarEntry { path: path[1..].to_string(), mode, uid: 0, gid: 0, mtime, kind });
            }
        }
        if tar.contains_key("/") {
            return refuse("it writes into / itself".into());
        }
        let tar: Vec<TarEntry> = tar.into_values().collect();
        layers.push(Layer::of(&tar).with_context(|| format!("cannot write the layer of COPY line {}", copy.line))?);
    }
    Ok(Ok(layers))
}

/// What BuildKit's `COPY` without `--chown` makes a new target directory: mode 0755 whatever
/// the source directory's, owned by root (seen on dockerd 20.10's BuildKit).
const NEW_TARGET: EntryMetadata = EntryMetadata { mode: 0o755, uid: 0, gid: 0 };

/// The metadata the layer gives `target`, the directory a copy copies a directory into, which
/// neither the `WORKDIR` nor an earlier trailing copy made, from the previous image's layer of
/// that copy (`replaced`): BuildKit's record of it. As a new directory would have it: that. Not
/// owned by root, which a `COPY` without `--chown` never makes: it exists below, and BuildKit
/// kept it; so does the swap. Otherwise, or missing there, the layers below decide, and they are
/// not read: refused, naming the path and both metadata.
fn target_metadata(target: &str, replaced: &[ListedEntry]) -> Result<EntryMetadata, String> {
    let Some(old) = replaced.iter().rfind(|entry| entry.path == target[1..]) else {
        return Err(format!(
            "the previous image's layer of it has no entry for {target}: the layers below decide what it is"
        ));
    };
    if !old.directory {
        return Err(format!("{target} is not a directory in the previous image's layer of it"));
    }
    if old.metadata == NEW_TARGET || old.metadata.uid != 0 || old.metadata.gid != 0 {
        return Ok(old.metadata);
    }
    Err(format!(
        "{target} has {} in the previous image, where a new directory has {NEW_TARGET}: it may exist below \
         (BuildKit keeps its metadata) or have been written so by an earlier swap, and only the layers below could say",
        old.metadata
    ))
}

/// The entries of the previous image's layer made by the trailing copy `index` (of `copies`),
/// its last layers being theirs: only that layer's blob is read from the registry (a small one
/// of source files, never a layer below), unpacked by the `gzip` program through `runner`, and
/// its tar headers listed. Or why not: a layer neither tar nor gzip (zstd).
pub fn replaced_layer(
    registry: &Registry,
    runner: &dyn Runner,
    repository: &str,
    previous: &Manifest,
    copies: usize,
    index: usize,
) -> Result<Result<Vec<ListedEntry>, String>> {
    let manifest: Value = serde_json::from_slice(&previous.bytes).context("the previous manifest is not JSON")?;
    let layers = manifest["layers"].as_array().context("the previous manifest lists no layers")?;
    let Some(layer) = layers.len().checked_sub(copies).and_then(|start| layers.get(start + index)) else {
        bail!("the previous manifest has fewer layers than the {copies} trailing copies");
    };
    let digest = layer["digest"].as_str().context("a layer of the previous manifest has no digest")?;
    let media_type = layer["mediaType"].as_str().unwrap_or_default();
    let blob = registry.blob(repository, digest)?;
    let archive = if media_type.ends_with("gzip") {
        gunzip(runner, &blob, digest)?
    } else if media_type.ends_with(".tar") {
        blob
    } else {
        return Ok(Err(format!(
            "the previous image's layer {digest} is {media_type:?}, which the fast path does not unpack"
        )));
    };
    let listed = list_tar(&archive).with_context(|| format!("cannot read the previous image's layer {digest}"))?;
    Ok(Ok(listed))
}

/// `blob` unpacked by `gzip -d` (its own program: a decompression crate would cost cold-compile
/// time, issue #15), through files in the temporary directory, removed again.
fn gunzip(runner: &dyn Runner, blob: &[u8], digest: &str) -> Result<Vec<u8>> {
    let name = format!("xtask-swap-{}-{}", std::process::id(), digest.trim_start_matches("sha256:"));
    let (packed, unpacked) = (std::env::temp_dir().join(format!("{name}.gz")), std::env::temp_dir().join(name));
    let unpack = || -> Result<Vec<u8>> {
        fs::write(&packed, blob).with_context(|| format!("cannot write {}", packed.display()))?;
        let gzip = Command::new("gzip").args(["-d", "-c"]);
        runner.pipe(&Pipe { commands: vec![gzip], input: Some(packed.clone()), output: Some(unpacked.clone()) })?;
        fs::read(&unpacked).with_context(|| format!("cannot read {}", unpacked.display()))
    };
    let archive = unpack();
    for file in [&packed, &unpacked] {
        let _ = fs::remove_file(file);
    }
    archive.with_context(|| format!("cannot unpack the previous image's layer {digest}"))
}

fn parent(path: &str) -> String {
    match path.rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((parent, _)) => parent.to_string(),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") }
}

/// BuildKit's cache metadata in a config: the new layers are not in it, so it would lie.
const BUILDKIT_CONFIG_KEYS: [&str; 2] = ["moby.buildkit.cache.v0", "moby.buildkit.buildinfo.v1"];

/// The config of the previous image with its last `layers.len()` layers (the trailing copies')
/// replaced by `layers`, their history entries dated `created`, the metadata after them applied
/// again with this build's args and labels, and BuildKit's cache metadata dropped.
pub fn swap_config(
    previous: &Value,
    swap: &SourceSwap,
    layers: &[Layer],
    build_args: &BTreeMap<String, String>,
    labels: &[(String, String)],
    created: &str,
) -> Result<Value> {
    let mut config = previous.clone();
    let Value::Object(top) = &mut config else { bail!("the previous image config is not a JSON object") };
    for key in BUILDKIT_CONFIG_KEYS {
        top.remove(key);
    }
    let Some(Value::Array(history)) = top.get_mut("history") else { bail!("the previous image config has no history") };
    let with_layer: Vec<usize> = (0..history.len()).filter(|&index| history[index]["empty_layer"] != true).collect();
    let Some(copies) = with_layer.len().checked_sub(layers.len()).map(|start| &with_layer[start..]) else {
        bail!("the previous image has fewer layers than the {} trailing copies", layers.len());
    };
    for &index in copies {
        let created_by = history[index]["created_by"].as_str().unwrap_or_default();
        if !created_by.starts_with("COPY ") {
            bail!("the previous image's layer {index} was made by {created_by:?}, not by one of the trailing copies");
        }
        history[index]["created"] = json!(created);
    }
    if let Some(&last) = copies.last() {
        history.truncate(last + 1);
    }
    let with_layers = with_layer.len();
    let Some(Value::Array(diff_ids)) = top.get_mut("rootfs").and_then(|rootfs| rootfs.get_mut("diff_ids")) else {
        bail!("the previous image config has no rootfs.diff_ids");
    };
    if diff_ids.len() != with_layers {
        bail!("the previous image has {} layers but {with_layers} history entries with one", diff_ids.len());
    }
    let start = diff_ids.len() - layers.len();
    for (old, layer) in diff_ids[start..].iter_mut().zip(layers) {
        *old = json!(layer.diff_id);
    }
    derive_config(&config, &swap.metadata, build_args, labels, created)
}

/// The manifest of the previous image with its last layers replaced by `layers` and its config
/// by `config` (its bytes).
pub fn swap_manifest(previous: &Manifest, layers: &[Layer], config: &[u8]) -> Result<Manifest> {
    let mut manifest: Value = serde_json::from_slice(&previous.bytes).context("the previous manifest is not JSON")?;
    let Some(Value::Array(entries)) = manifest.get_mut("layers") else {
        bail!("the previous manifest lists no layers")
    };
    let Some(start) = entries.len().checked_sub(layers.len()) else {
        bail!("the previous manifest has fewer layers than the trailing copies");
    };
    for (entry, layer) in entries[start..].iter_mut().zip(layers) {
        entry["digest"] = json!(layer.digest);
        entry["size"] = json!(layer.blob.len());
    }
    manifest["config"]["digest"] = json!(sha256_digest(config));
    manifest["config"]["size"] = json!(config.len());
    let bytes = serde_json::to_vec(&manifest).context("cannot write the swapped manifest")?;
    Ok(Manifest { media_type: previous.media_type.clone(), digest: sha256_digest(&bytes), bytes })
}

/// The step of a build plan that makes an image from the previous one by replacing the layers
/// of its trailing copies: the previous manifest is pinned by digest, and the new layers, config
/// and manifest are made when planning, so that `--dry-run` shows the digest the run puts and
/// an image derived from this one can be made from them at the same time.
#[derive(PartialEq, Eq)]
pub struct SourceSwapStep {
    pub repository: String,
    /// The tag the previous image was found under (`dev-latest`), and its manifest then.
    pub from_tag: String,
    pub from: Manifest,
    /// Its tags, the `inputs-` tag last.
    pub tags: Vec<String>,
    pub swap: SourceSwap,
    pub layers: Vec<Layer>,
    /// The new config, as parsed and as its bytes, and the new manifest naming it.
    pub config: Value,
    pub config_bytes: Vec<u8>,
    pub manifest: Manifest,
}

impl fmt::Debug for SourceSwapStep {
    // The layers' bytes would drown everything else.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layers: Vec<&str> = self.layers.iter().map(|layer| layer.digest.as_str()).collect();
        f.debug_struct("SourceSwapStep")
            .field("repository", &self.repository)
            .field("from_tag", &self.from_tag)
            .field("from", &self.from.digest)
            .field("tags", &self.tags)
            .field("layers", &layers)
            .field("manifest", &self.manifest.digest)
            .finish_non_exhaustive()
    }
}

/// What a swap starts from and writes: the previous image found in the registry, the new
/// layers, and what the build says of the image (its args, labels and time).
pub struct SwapInputs<'a> {
    pub repository: &'a str,
    pub from_tag: &'a str,
    pub from: &'a Manifest,
    pub previous_config: &'a Value,
    pub swap: &'a SourceSwap,
    pub layers: &'a [Layer],
    pub tags: Vec<String>,
    pub build_args: &'a BTreeMap<String, String>,
    pub labels: &'a [(String, String)],
    pub created: &'a str,
}

impl SourceSwapStep {
    /// The step `inputs` describe, with its config and manifest written; or why they cannot be
    /// (an instruction after the copies the config cannot take), naming the image.
    pub fn new(inputs: SwapInputs<'_>) -> Result<SourceSwapStep> {
        let SwapInputs { repository, from_tag, from, previous_config, swap, layers, tags, build_args, labels, created } =
            inputs;
        let cannot = || format!("cannot swap the sources of {repository}:{from_tag}");
        let config = swap_config(previous_config, swap, layers, build_args, labels, created).with_context(cannot)?;
        let config_bytes = serde_json::to_vec(&config).context("cannot write the swapped image config")?;
        let manifest = swap_manifest(from, layers, &config_bytes).with_context(cannot)?;
        Ok(SourceSwapStep {
            repository: repository.to_string(),
            from_tag: from_tag.to_string(),
            from: from.clone(),
            tags,
            swap: swap.clone(),
            layers: layers.to_vec(),
            config,
            config_bytes,
            manifest,
        })
    }

    /// The trailing copies, for the plan: `the COPYs at lines 4, 5, 6`, `the COPY at line 3`.
    pub fn copies(&self) -> String {
        let lines: Vec<String> = self.swap.copies.iter().map(|copy| copy.line.to_string()).collect();
        match lines.as_slice() {
            [line] => format!("the COPY at line {line}"),
            lines => format!("the COPYs at lines {}", lines.join(", ")),
        }
    }

    /// What `--dry-run` shows: the reason, then every registry call.
    pub fn show(&self, f: &mut fmt::Formatter<'_>, registry: &str) -> fmt::Result {
        let SourceSwapStep { repository, from_tag, from, .. } = self;
        writeln!(
            f,
            "  source swap on {repository}:{from_tag} ({}): only the sources of {} changed; no build, no pull",
            from.digest,
            self.copies()
        )?;
        for (copy, layer) in self.swap.copies.iter().zip(&self.layers) {
            writeln!(
                f,
                "  registry: POST+PUT {registry} /v2/{repository}/blobs/uploads/ (COPY line {}: {}, {} bytes)",
                copy.line,
                layer.digest,
                layer.blob.len()
            )?;
        }
        show_config_and_tags(f, registry, repository, &self.tags, "swapped")?;
        writeln!(f, "  swapped manifest: {}", self.manifest.digest)
    }

    /// Uploads the new layers and config and puts the new manifest under every tag. Returns it.
    pub fn run(&self, registry: &Registry, log: &mut File, task: &TaskProgress) -> Result<Manifest> {
        for (copy, layer) in self.swap.copies.iter().zip(&self.layers) {
            let line = format!("COPY line {}: new layer {} ({} bytes)", copy.line, layer.digest, layer.blob.len());
            task.line(&line);
            writeln!(log, "{line}")?;
        }
        let new_layers: Vec<&[u8]> = self.layers.iter().map(|layer| layer.blob.as_slice()).collect();
        upload_blobs(registry, &self.repository, &new_layers, &self.config_bytes, log)?;
        put_tags(registry, &self.repository, &self.manifest, Manifested::New, &self.tags, log, task)?;
        Ok(self.manifest.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backend stage's end, as in backend/Dockerfile.
    const TAIL: &str = "USER intric\nEXPOSE 8123\nCMD [\"uvicorn\", \"intric.main:app\"]\nARG VERSION=0.0.0-dev\n\
                        LABEL org.opencontainers.image.version=\"${VERSION}\"\nENV INTRIC_VERSION=${VERSION}\n";

    fn swap(stage: &str) -> Result<SourceSwap, String> {
        let text = format!("FROM python AS base\nRUN true\n{stage}");
        source_swap(&Dockerfile::parse("backend/Dockerfile", &text).unwrap(), None)
    }

    fn refused(stage: &str) -> String {
        swap(stage).expect_err("the fast path must be refused")
    }

    #[test]
    fn the_backend_stage_ends_with_three_copies_and_metadata() {
        let swap = swap(&format!(
            "WORKDIR /app\nCOPY alembic.ini init_db.py ./\nCOPY alembic ./alembic\nCOPY intric ./intric\n{TAIL}"
        ))
        .unwrap();
        let copies: Vec<(usize, Vec<&str>, &str, bool)> = swap
            .copies
            .iter()
            .map(|copy| {
                (copy.line, copy.sources.iter().map(String::as_str).collect(), copy.dest.as_str(), copy.into_directory)
            })
            .collect();
        assert_eq!(
            copies,
            [
                (4, vec!["alembic.ini", "init_db.py"], "/app", true),
                (5, vec!["alembic"], "/app/alembic", false),
                (6, vec!["intric"], "/app/intric", false),
            ]
        );
        let keywords: Vec<&str> = swap.metadata.iter().map(|instruction| instruction.keyword.as_str()).collect();
        assert_eq!(keywords, ["USER", "EXPOSE", "CMD", "ARG", "LABEL", "ENV"]);
        assert_eq!(swap.sources(), ["alembic", "alembic.ini", "init_db.py", "intric"]);
    }

    #[test]
    fn destinations_resolve_against_the_last_workdir_and_sources_against_the_context() {
        let swap = swap("WORKDIR /srv\nWORKDIR app/../web\nCOPY ./src/ /public/ ./lib/./x ./\nCOPY . /all/\n").unwrap();
        assert_eq!(swap.copies[0].dest, "/srv/web");
        assert_eq!(swap.copies[0].sources, ["src", "public", "lib/x"]);
        assert_eq!(swap.copies[1].sources, ["."]);
        assert_eq!(swap.copies[1].dest, "/all");
        assert_eq!(swap.sources(), [".", "lib/x", "public", "src"]);
    }

    #[test]
    fn only_the_copies_after_the_last_other_instruction_count() {
        let swap = swap("WORKDIR /app\nCOPY a ./a\nENV X=1\nCOPY b ./b\nCMD [\"b\"]\n").unwrap();
        assert_eq!(swap.copies.len(), 1);
        assert_eq!(swap.copies[0].sources, ["b"]);
    }

    #[test]
    fn every_instruction_but_metadata_after_the_copies_is_refused() {
        for (after, keyword) in [
            ("RUN make", "RUN"),
            ("ADD x.tar /x/", "ADD"),
            ("WORKDIR /other", "WORKDIR"),
            ("VOLUME /data", "VOLUME"),
            ("SHELL [\"/bin/bash\", \"-c\"]", "SHELL"),
            ("ONBUILD RUN true", "ONBUILD"),
            ("FROBNICATE now", "FROBNICATE"),
        ] {
            let why = refused(&format!("WORKDIR /app\nCOPY intric ./intric\n{after}\nCMD [\"x\"]\n"));
            assert_eq!(
                why,
                format!("backend/Dockerfile line 5: {keyword} after the last COPY; only a build can apply it")
            );
        }
    }

    #[test]
    fn a_stage_without_trailing_copies_is_refused() {
        assert_eq!(
            refused("CMD [\"x\"]\n"),
            "backend/Dockerfile line 2: RUN after the last COPY; only a build can apply it"
        );
        let why =
            source_swap(&Dockerfile::parse("Dockerfile", "FROM python\nCMD [\"x\"]\n").unwrap(), None).unwrap_err();
        assert_eq!(why, "Dockerfile line 1: the stage has no COPY instruction");
    }

    #[test]
    fn metadata_the_derivation_cannot_apply_is_refused() {
        let why = refused("WORKDIR /app\nCOPY intric ./intric\nEXPOSE 80-90\n");
        assert!(why.starts_with("backend/Dockerfile line 5: "), "{why}");
    }

    #[test]
    fn copies_the_fast_path_cannot_write_are_refused_with_the_reason() {
        for (copy, reason) in [
            ("COPY --from=builder /opt/venv /opt/venv", "COPY --from takes files from another stage or image"),
            ("COPY --from builder /opt/venv /opt/venv", "COPY --from takes files from another stage or image"),
            ("COPY --chmod=755 run.sh ./", "COPY --chmod is not applied by the fast path"),
            ("COPY --chown=intric:intric intric ./intric", "COPY --chown is not applied by the fast path"),
            ("COPY --link intric ./intric", "COPY --link is not applied by the fast path"),
            ("COPY --parents intric ./", "COPY with the unknown flag --parents"),
            ("COPY [\"intric\", \"./intric\"]", "COPY in the JSON form"),
            ("COPY \"my dir\" ./", "COPY with quotes or escapes"),
            ("COPY *.py ./", "COPY with a wildcard"),
            ("COPY src/[ab] ./", "COPY with a wildcard"),
            ("COPY ${DIR} ./", "COPY with a variable"),
            ("COPY intric $DEST", "COPY with a variable"),
            ("COPY ../secrets ./", "the source ../secrets lies outside the build context"),
            ("COPY a/../../x ./", "the source a/../../x lies outside the build context"),
            ("COPY a.py b.py ./lib", "COPY of several sources into ./lib, which does not end with /"),
            ("COPY intric", "COPY needs a source and a destination"),
            ("COPY ../../.. /", "the source ../../.. lies outside the build context"),
        ] {
            let why = refused(&format!("WORKDIR /app\n{copy}\nCMD [\"x\"]\n"));
            assert_eq!(why, format!("backend/Dockerfile line 4: {reason}"), "{copy}");
        }
    }

    #[test]
    fn a_heredoc_anywhere_in_the_stage_is_refused() {
        let why = refused("WORKDIR /app\nCOPY <<EOF /app/x\nCMD [\"y\"]\nEOF\nCOPY intric ./intric\n");
        assert_eq!(why, "backend/Dockerfile line 4: a heredoc, which the fast path does not read");
    }

    #[test]
    fn a_relative_destination_needs_a_plain_workdir_of_the_stage() {
        let reason = "the relative destination ./intric depends on a WORKDIR this stage does not set plainly";
        assert_eq!(refused("COPY intric ./intric\n"), format!("backend/Dockerfile line 3: {reason}"));
        assert_eq!(refused("WORKDIR $HOME\nCOPY intric ./intric\n"), format!("backend/Dockerfile line 4: {reason}"));
        assert_eq!(swap("COPY intric /app/intric\n").unwrap().copies[0].dest, "/app/intric");
    }

    #[test]
    fn a_missing_target_is_the_reason() {
        let file = Dockerfile::parse("Dockerfile", "FROM python AS base\nCOPY a /a\n").unwrap();
        assert!(source_swap(&file, Some("nope")).unwrap_err().contains("has no stage \"nope\""));
    }

    #[test]
    fn metadata_that_reads_what_it_sets_is_refused() {
        let why = refused("WORKDIR /app\nCOPY intric ./intric\nENV PATH=/app/bin:$PATH\n");
        assert_eq!(why, "backend/Dockerfile line 5: ENV reads $PATH, which an ENV after the copies sets");
        let why = refused("WORKDIR /app\nCOPY intric ./intric\nLABEL x=${A}\nENV A=1\n");
        assert_eq!(why, "backend/Dockerfile line 5: LABEL reads $A, which an ENV after the copies sets");
        // Reading a build arg, or an ENV set before the copies, gives the same value again.
        assert!(swap("ENV B=1\nWORKDIR /app\nCOPY intric ./intric\nARG V\nENV A=$V C=$B\nLABEL v=$A\n").is_ok());
    }

    /// A build context with the backend's shape, and its swap; and what the previous image's
    /// layer of each copy lists (a new `/app/intric` for the second), and which of them the
    /// layers asked for.
    struct Context {
        dir: tempfile::TempDir,
        swap: SourceSwap,
        previous: Vec<Result<Vec<ListedEntry>, String>>,
        asked: std::cell::RefCell<Vec<usize>>,
    }

    fn listed(path: &str, directory: bool, mode: u32, uid: u32, gid: u32) -> ListedEntry {
        ListedEntry { path: path.into(), directory, metadata: EntryMetadata { mode, uid, gid } }
    }

    impl Context {
        fn new(ignore: &str) -> Context {
            let text = "FROM python\nWORKDIR /app\nCOPY alembic.ini ./\nCOPY intric ./intric\nCMD [\"x\"]\n";
            let context = Context::of(text, ignore);
            context.write("alembic.ini", "[alembic]\n");
            context.write("intric/main.py", "print('hi')\n");
            context
        }

        /// The context of the Dockerfile `text`, whose previous layers list the targets as new.
        fn of(text: &str, ignore: &str) -> Context {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("Dockerfile"), text).unwrap();
            std::fs::write(dir.path().join(".dockerignore"), ignore).unwrap();
            let swap = source_swap(&Dockerfile::parse("Dockerfile", text).unwrap(), None).unwrap();
            let previous = swap
                .copies
                .iter()
                .map(|copy| Ok(vec![listed("app", true, 0o755, 0, 0), listed(&copy.dest[1..], true, 0o755, 0, 0)]))
                .collect();
            Context { dir, swap, previous, asked: Default::default() }
        }

        fn write(&self, relative: &str, text: &str) {
            let path = self.dir.path().join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }

        fn layers(&self) -> Result<Vec<Layer>, String> {
            let mut replaced = |index: usize| {
                self.asked.borrow_mut().push(index);
                Ok(self.previous[index].clone())
            };
            let dockerfile = self.dir.path().join("Dockerfile");
            source_layers(self.dir.path(), &dockerfile, &self.swap, 1_700_000_000, &mut replaced).unwrap()
        }

        /// Each layer's entries as the tar lists them.
        fn listings(&self) -> Vec<Vec<ListedEntry>> {
            self.layers().unwrap().iter().map(|layer| list_tar(&unpack(&layer.blob)).unwrap()).collect()
        }

        /// Each layer's entries: path (a directory's with a trailing `/`), directory or not, mode.
        fn entries(&self) -> Vec<Vec<(String, bool, u32)>> {
            let shown = |entry: &ListedEntry| {
                let slash = if entry.directory { "/" } else { "" };
                (format!("{}{slash}", entry.path), entry.directory, entry.metadata.mode)
            };
            self.listings().iter().map(|layer| layer.iter().map(shown).collect()).collect()
        }
    }

    /// The tar of a layer we wrote (stored gzip: it follows the 10-byte header and each 5-byte
    /// block header).
    fn unpack(blob: &[u8]) -> Vec<u8> {
        let mut archive = Vec::new();
        let mut offset = 10;
        loop {
            let last = blob[offset];
            let length = usize::from(u16::from_le_bytes([blob[offset + 1], blob[offset + 2]]));
            archive.extend_from_slice(&blob[offset + 5..offset + 5 + length]);
            offset += 5 + length;
            if last == 1 {
                return archive;
            }
        }
    }

    fn entry(path: &str, directory: bool, mode: u32) -> (String, bool, u32) {
        (path.to_string(), directory, mode)
    }

    #[test]
    fn each_copy_gets_a_layer_of_its_sources_as_buildkit_lays_them_out() {
        use std::os::unix::fs::PermissionsExt;
        let context = Context::new("**/*.pyc\n");
        context.write("intric/pkg/sub/deep.py", "");
        context.write("intric/stale.pyc", "");
        let long = format!("intric/{}/{}.py", "n".repeat(60), "m".repeat(60));
        context.write(&long, "");
        context.write("README.md", "not a source");
        let run = context.dir.path().join("intric/run.sh");
        std::fs::write(&run, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(context.dir.path().join("intric/pkg"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        let dir_mode =
            std::fs::metadata(context.dir.path().join("intric/pkg/sub")).unwrap().permissions().mode() & 0o7777;
        std::fs::set_permissions(context.dir.path().join("intric"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let entries = context.entries();
        // The WORKDIR gets no entry: it exists below, and keeps its metadata.
        assert_eq!(entries[0], [entry("app/alembic.ini", false, 0o644)]);
        // The target is made as BuildKit makes it, whatever the source directory's mode;
        // directories inside have theirs.
        assert_eq!(
            entries[1],
            [
                entry("app/intric/", true, 0o755),
                entry("app/intric/main.py", false, 0o644),
                entry(&format!("app/{}/", long.rsplit_once('/').unwrap().0), true, dir_mode),
                entry(&format!("app/{long}"), false, 0o644),
                entry("app/intric/pkg/", true, 0o750),
                entry("app/intric/pkg/sub/", true, dir_mode),
                entry("app/intric/pkg/sub/deep.py", false, 0o644),
                entry("app/intric/run.sh", false, 0o755),
            ]
        );
        assert_eq!(context.layers().unwrap(), context.layers().unwrap(), "the same context, the same layers");
        // Written three times: each time the layer of the copy that makes a directory is read, no other.
        assert_eq!(*context.asked.borrow(), [1, 1, 1]);
        assert!(context.listings()[1].iter().all(|entry| (entry.metadata.uid, entry.metadata.gid) == (0, 0)));
    }

    #[test]
    fn a_target_that_exists_below_keeps_what_the_previous_layer_recorded_for_it() {
        use std::os::unix::fs::PermissionsExt;
        let mut context = Context::new("");
        context.write("intric/pkg/a.py", "");
        std::fs::set_permissions(context.dir.path().join("intric/pkg"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        // BuildKit kept a 0750 directory of uid 1000 that a RUN made below; a directory inside
        // it below took the source's metadata.
        context.previous[1] = Ok(vec![
            listed("app", true, 0o755, 0, 0),
            listed("app/intric", true, 0o750, 1000, 1000),
            listed("app/intric/pkg", true, 0o750, 0, 0),
        ]);
        let layers = context.listings();
        assert_eq!(layers[1][0], listed("app/intric", true, 0o750, 1000, 1000));
        assert_eq!(layers[1][2], listed("app/intric/pkg", true, 0o750, 0, 0));
        // A setgid directory of another group, also kept.
        context.previous[1] = Ok(vec![listed("app/intric", true, 0o2775, 0, 50)]);
        assert_eq!(context.listings()[1][0], listed("app/intric", true, 0o2775, 0, 50));
    }

    #[test]
    fn a_target_the_previous_layer_cannot_vouch_for_is_refused_naming_it() {
        let mut context = Context::new("");
        context.previous[1] = Ok(vec![listed("app/intric", true, 0o700, 0, 0)]);
        assert_eq!(
            context.layers().unwrap_err(),
            "COPY line 4: /app/intric has mode 0700, owner 0:0 in the previous image, where a new directory has \
             mode 0755, owner 0:0: it may exist below (BuildKit keeps its metadata) or have been written so by an \
             earlier swap, and only the layers below could say"
        );
        context.previous[1] = Ok(vec![listed("app", true, 0o755, 0, 0)]);
        assert_eq!(
            context.layers().unwrap_err(),
            "COPY line 4: the previous image's layer of it has no entry for /app/intric: the layers below decide what it is"
        );
        context.previous[1] = Ok(vec![listed("app/intric", false, 0o755, 0, 0)]);
        assert_eq!(
            context.layers().unwrap_err(),
            "COPY line 4: /app/intric is not a directory in the previous image's layer of it"
        );
        context.previous[1] = Err("the previous image's layer sha256:x is \"zstd\"".into());
        assert_eq!(context.layers().unwrap_err(), "COPY line 4: the previous image's layer sha256:x is \"zstd\"");
    }

    #[test]
    fn a_directory_from_a_source_has_the_sources_metadata_also_where_an_earlier_copy_made_it() {
        use std::os::unix::fs::PermissionsExt;
        let text = "FROM python\nWORKDIR /app\nCOPY lib ./lib\nCOPY extra ./\nCOPY . /all/\n";
        let context = Context::of(text, "");
        context.write("lib/a.py", "");
        context.write("extra/lib/b.py", "");
        std::fs::set_permissions(context.dir.path().join("extra/lib"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let entries = context.entries();
        assert_eq!(entries[0], [entry("app/lib/", true, 0o755), entry("app/lib/a.py", false, 0o644)]);
        // `extra`'s contents go into the WORKDIR, which gets no entry; its lib/ is the source's.
        assert_eq!(entries[1], [entry("app/lib/", true, 0o700), entry("app/lib/b.py", false, 0o644)]);
        // The whole context into a new directory: made as BuildKit makes one.
        assert_eq!(entries[2][0], entry("all/", true, 0o755));
        assert_eq!(*context.asked.borrow(), [0, 2]);
    }

    #[test]
    fn sources_the_layers_cannot_be_written_from_are_refused() {
        let context = Context::new("");
        std::os::unix::fs::symlink("main.py", context.dir.path().join("intric/link.py")).unwrap();
        assert_eq!(context.layers().unwrap_err(), "COPY line 4: the symlink intric/link.py is among its sources");

        let context = Context::new("alembic.ini\n");
        assert_eq!(
            context.layers().unwrap_err(),
            "COPY line 3: the source alembic.ini is not in the build context (or the ignore file excludes it)"
        );

        let mut context = Context::new("");
        context.swap.copies[1].dest = "/srv/intric".into();
        assert_eq!(
            context.layers().unwrap_err(),
            "COPY line 4: /srv is neither the WORKDIR nor made by these copies: what it is below decides the layer"
        );
    }

    fn layer(name: &str) -> Layer {
        Layer::of(&[TarEntry { path: name.into(), mode: 0o644, uid: 0, gid: 0, mtime: 0, kind: TarKind::File(vec![]) }])
            .unwrap()
    }

    /// A previous image's config with a base layer, two copies and metadata after them.
    fn previous_config() -> Value {
        json!({
            "created": "old",
            "moby.buildkit.cache.v0": "cache",
            "moby.buildkit.buildinfo.v1": "info",
            "config": {"Env": ["PATH=/bin", "V=old"], "Labels": {"version": "old", "kept": "yes"}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:base", "sha256:copy1", "sha256:copy2"]},
            "history": [
                {"created": "old", "created_by": "RUN make"},
                {"created": "old", "created_by": "WORKDIR /app", "empty_layer": true},
                {"created": "old", "created_by": "COPY a ./ # buildkit", "comment": "buildkit.dockerfile.v0"},
                {"created": "old", "created_by": "COPY b ./b # buildkit", "comment": "buildkit.dockerfile.v0"},
                {"created": "old", "created_by": "ARG VERSION", "empty_layer": true},
                {"created": "old", "created_by": "ENV V=old", "empty_layer": true},
            ],
        })
    }

    fn two_copies() -> SourceSwap {
        swap("WORKDIR /app\nCOPY a ./\nCOPY b ./b\nARG VERSION\nENV V=$VERSION\n").unwrap()
    }

    #[test]
    fn the_config_gets_the_new_layers_and_the_metadata_again() {
        let layers = [layer("a"), layer("b")];
        let args = BTreeMap::from([("VERSION".to_string(), "new".to_string())]);
        let labels = [("version".to_string(), "new".to_string())];
        let config = swap_config(&previous_config(), &two_copies(), &layers, &args, &labels, "now").unwrap();
        assert_eq!(config["rootfs"]["diff_ids"], json!(["sha256:base", layers[0].diff_id, layers[1].diff_id]));
        let history: Vec<(&str, &str)> = config["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| (entry["created_by"].as_str().unwrap(), entry["created"].as_str().unwrap()))
            .collect();
        assert_eq!(
            history,
            [
                ("RUN make", "old"),
                ("WORKDIR /app", "old"),
                ("COPY a ./ # buildkit", "now"),
                ("COPY b ./b # buildkit", "now"),
                ("ARG VERSION", "now"),
                ("ENV V=new", "now"),
            ]
        );
        assert_eq!(config["config"]["Env"], json!(["PATH=/bin", "V=new"]));
        assert_eq!(config["config"]["Labels"], json!({"version": "new", "kept": "yes"}));
        assert_eq!(config["created"], "now");
        assert!(config.get("moby.buildkit.cache.v0").is_none() && config.get("moby.buildkit.buildinfo.v1").is_none());
    }

    #[test]
    fn a_previous_image_that_does_not_end_with_the_copies_is_an_error() {
        let layers = [layer("a"), layer("b")];
        let mut config = previous_config();
        config["history"][3]["created_by"] = json!("RUN make more");
        let error = swap_config(&config, &two_copies(), &layers, &BTreeMap::new(), &[], "now").unwrap_err();
        assert!(error.to_string().contains("not by one of the trailing copies"), "{error}");
        let mut config = previous_config();
        config["rootfs"]["diff_ids"] = json!(["sha256:copy1", "sha256:copy2"]);
        let error = swap_config(&config, &two_copies(), &layers, &BTreeMap::new(), &[], "now").unwrap_err();
        assert!(error.to_string().contains("2 layers but 3 history entries"), "{error}");
    }

    #[test]
    fn the_manifest_gets_the_new_layers_and_config() {
        let previous = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1, "digest": "sha256:old"},
            "layers": [
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 9, "digest": "sha256:base"},
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 9, "digest": "sha256:copy"},
            ],
        });
        let bytes = serde_json::to_vec(&previous).unwrap();
        let previous = Manifest {
            media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
            digest: sha256_digest(&bytes),
            bytes,
        };
        let new = layer("a");
        let manifest = swap_manifest(&previous, std::slice::from_ref(&new), b"{}").unwrap();
        let value: Value = serde_json::from_slice(&manifest.bytes).unwrap();
        assert_eq!(value["layers"][0]["digest"], "sha256:base");
        assert_eq!(
            value["layers"][1],
            json!({"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": new.blob.len(), "digest": new.digest})
        );
        assert_eq!(value["config"]["digest"], sha256_digest(b"{}"));
        assert_eq!(manifest.digest, sha256_digest(&manifest.bytes));
        assert_eq!(manifest.media_type, previous.media_type);
    }
}
