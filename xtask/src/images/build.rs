//! The build pipeline: BuildKit builds of the images the compose file's `build:` sections
//! describe (ours: backend, worker, frontend; the published layout: backend, frontend), tagged
//! from git state (see `tags`), optionally pushed to the registry, skipping what didn't change.
//!
//! Reads once: the tag report, the docker client, the environment, the compose file's images
//! with their Dockerfiles parsed and checked (`services`, `dockerfile`: a missing target stops
//! the plan, an undeclared build arg is a warning), the digest of each base image (`bases`),
//! each image's inputs digest (`inputs`), and what the registry (or the local engine) already
//! holds; for the source swap also `dev-latest`'s manifest, config and its layers of the
//! trailing COPYs that make a directory (unpacked by `gzip -d`, see `source_swap`). Plans: per
//! image,
//! either a build (docker argv, then pushes) or a retag of an existing image with the same
//! inputs digest (registry API calls, or `docker tag` locally). The plan ([`BuildPlan`], a
//! [`TaskPlan`]) holds everything running it needs (registry access, jobs, logs directory), and
//! prints every command it runs. Executes: independent images in parallel (`--jobs`), taking
//! free slots in plan order, an image after the one whose stage it builds on (our worker after
//! the backend) so their shared stages come from cache, pushes overlapping with builds still running, and the first failure stops the rest.
//!
//! A dry run asks the registry once, with a short timeout, and never waits for it: what it
//! could not learn (reuse of an unchanged image, cache sources) the plan shows as unknown.
//!
//! Deriving: a pushed image whose target is a metadata-only stage on another image's target
//! (the worker on the backend) is assembled in the registry from that image's manifest once it
//! is pushed (see `derived`); `--no-fast-path`, or a build that does not push, uses BuildKit.
//! Each image's plan says which path it takes and why (`ImagePlan::path`).
//!
//! Skipping: every image we build carries the tag `inputs-<24 hex>` of its inputs digest. When
//! that tag exists already, the image is what this build would produce, so the new tags are put
//! on its manifest (no pull, no layer upload). The digest covers the base images' digests, so an
//! updated base rebuilds; an unknown one means no reuse. It leaves out VERSION and REVISION, which
//! only go into labels and the last layer, so a commit that changes only the backend does not
//! rebuild the frontend; a reused image's labels name the commit that built it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

use crate::adapters::ci_env::Env;
use crate::adapters::docker::{BuildSecret, BuildSpec, Builder, Docker};
use crate::adapters::registry::{Backoff, Credentials, Manifest, Registry, RegistryAddress, at_once};
use crate::images::bases;
use crate::images::derived::{Derivation, Manifested, PlannedBase, metadata_stage, put_tags};
use crate::images::dockerfile::Instruction;
use crate::images::inline_cache;
use crate::images::inputs::OUTSIDE_SOURCES_LABEL;
use crate::images::layer::{Layer, ListedEntry};
use crate::images::location::Location;
use crate::images::services::{ComposeImages, Image, compose_file};
use crate::images::source_swap::{
    SourceSwap, SourceSwapStep, SwapInputs, replaced_layer, source_layers, source_swap, swap_manifest,
};
use crate::images::tags::{self, StageChoice, TagReport};
use crate::images::{BASE_IMAGES, Service};
use crate::plan::progress::{Progress, TaskProgress};
use crate::plan::runner::Runner;
use crate::plan::{Command, TaskPlan};

// Options of `cargo xtask build`.
#[derive(Args, Default)]
#[command(after_help = "\
Images are named <registry>/intric/<service>:<tag> for every tag of `cargo xtask tags` plus any
--tag. The registry comes from --registry or NEXUS_REGISTRY; NEXUS_USERNAME and NEXUS_PASSWORD log
in (else the existing docker login is used). Base images come from PYTHON_IMAGE, NODE_IMAGE and
NGINX_IMAGE, or through a Docker Hub proxy with --base-registry.

With --push, a metadata-only stage on another image's stage (the worker) is derived from that
image's pushed manifest instead of built: same layers, a new config, no pull and no layer upload.
The plan and the summary say which path each image took; --no-fast-path builds it with BuildKit.

Examples:
  cargo xtask build
  cargo xtask build backend --dry-run
  NEXUS_REGISTRY=nexus.example.com:8082 cargo xtask build --push
  cargo xtask build --push --registry 127.0.0.1:5000 --tag qa --json")]
pub struct BuildArgs {
    #[command(flatten)]
    pub location: Location,
    /// The images to build: compose services with a `build:` section [default: all].
    #[arg(value_name = "IMAGE")]
    pub services: Vec<String>,
    /// The compose file that says which images there are and how each is built [default:
    /// docker/docker-compose.yml, else compose.yaml or docker-compose.yml at the root].
    #[arg(long, value_name = "FILE")]
    pub compose: Option<PathBuf>,
    /// Push the images to the registry.
    #[arg(long)]
    pub push: bool,
    /// An extra tag for every image (repeatable).
    #[arg(long = "tag", value_name = "EXTRA")]
    pub extra_tags: Vec<String>,
    /// How many images to build at once [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// The buildx builder instance to use (with the buildx plugin only).
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    /// Take the upstream base images through this registry prefix (a Docker Hub proxy).
    #[arg(long, value_name = "PREFIX")]
    pub base_registry: Option<String>,
    /// A BuildKit secret for the builds, ID=ENV: the build sees the value of variable ENV as
    /// secret ID; never a build arg (repeatable).
    #[arg(long = "secret", value_name = "ID=ENV")]
    pub secrets: Vec<String>,
    /// Build without BuildKit's cache, and never reuse an unchanged image.
    #[arg(long)]
    pub no_cache: bool,
    /// Pull newer base images, and never reuse an unchanged image.
    #[arg(long)]
    pub pull: bool,
    /// Build every image with BuildKit: never derive a metadata-only stage (the worker) from
    /// another image's pushed manifest, never swap changed sources into the previous image.
    #[arg(long)]
    pub no_fast_path: bool,
    /// Push even from a dirty working tree.
    #[arg(long)]
    pub allow_dirty: bool,
    /// The stage to tag for; `auto` detects it from the CI variables, else from git.
    #[arg(long, value_enum, default_value_t = StageChoice::Auto)]
    pub stage: StageChoice,
    /// Print the plan (commands and registry calls) and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The label that carries an image's inputs digest.
pub const INPUTS_LABEL: &str = "org.intric.inputs-digest";

/// The tag that marks an image by its inputs digest: 24 hex digits (96 bits) are plenty to tell
/// builds apart and keep tag lists readable.
pub fn inputs_tag(digest: &str) -> String {
    format!("inputs-{}", &digest[..24])
}

/// Everything the plan is made from, read once.
pub struct BuildInputs {
    pub report: TagReport,
    /// The images to build, in build order, each with the build args it gets.
    pub services: Vec<Image>,
    pub registry: Option<String>,
    pub push: bool,
    pub extra_tags: Vec<String>,
    /// The docker client; `None` for a pushing build that makes every image in the registry
    /// (see [`needs_docker`]), which then runs no docker process at all.
    pub docker: Option<Docker>,
    /// Each image's base images (what its `FROM` lines pull) and their digests, `None` where
    /// unknown (see `images::bases`).
    pub bases: BTreeMap<String, Vec<(String, Option<String>)>>,
    /// Each image's inputs digest.
    pub digests: BTreeMap<String, String>,
    /// The digest of the inputs outside the sources of its trailing `COPY`s, for each image whose
    /// target ends with copies the source-only fast path could replace (see
    /// [`crate::images::source_swap`]); it goes into the [`OUTSIDE_SOURCES_LABEL`].
    pub outside_sources: BTreeMap<String, String>,
    /// For each image the source-only fast path was considered for (pushed, not unchanged,
    /// with trailing copies): the previous image and the new layers, or why not.
    pub previous: BTreeMap<String, Result<PreviousImage, String>>,
    /// Images whose inputs tag exists already (in the registry when pushing, else locally).
    pub unchanged: BTreeSet<String>,
    /// Per service, the existing tags worth using as cache (`dev-latest`, the branch's tag,
    /// `inline-cache`), whenever there is a registry.
    pub cache_from: BTreeMap<String, Vec<String>>,
    /// A buildx container builder is active: export its cache to the registry too.
    pub registry_cache: bool,
    /// Credentials to `docker login` with before pushing: set in the environment and not the
    /// login the docker client already holds.
    pub login: Option<Credentials>,
    pub secrets: Vec<BuildSecret>,
    pub builder: Option<String>,
    pub no_cache: bool,
    pub pull: bool,
    /// `--no-fast-path`: BuildKit builds every image that is not reused.
    pub no_fast_path: bool,
    pub workspace: PathBuf,
    /// Where the registry API calls go and whose credentials they use, when there is a registry.
    pub registry_access: Option<RegistryAccess>,
    /// Why the registry could not be read, when a dry run (or a build that does not push) goes
    /// on without it: what depends on it is then unknown (a dry run) or done without (cache).
    pub registry_unreachable: Option<String>,
    /// How many images to build at once.
    pub jobs: usize,
    /// What the plan should say before anything runs: build args a Dockerfile ignores.
    pub warnings: Vec<String>,
    /// Keep progress off the terminal (`--json`: standard output carries one document).
    pub quiet: bool,
}

/// The previous image of a service in the registry, whose inputs outside the trailing copies'
/// sources are this build's, and the layers of those copies as this build's context has them.
#[derive(Clone, Debug)]
pub struct PreviousImage {
    pub tag: String,
    pub manifest: Manifest,
    pub config: serde_json::Value,
    pub swap: SourceSwap,
    pub layers: Vec<Layer>,
}

/// The tag whose image the source-only fast path starts from: the newest pushed development
/// image of the service.
const PREVIOUS_TAG: &str = "dev-latest";

/// What the registry holds under [`PREVIOUS_TAG`] for `image`, when its target ends with copies
/// a source swap could replace: the manifest, unless it is a manifest list its config, and the
/// listings of its layers of those copies that copy directories (`source_layers` asks for
/// them); or nothing there. Read beside the listings and the base digests, before the inputs
/// say whether the fast path is needed: a build that changed nothing wastes a few small reads,
/// one that changed sources saves their round trips (a layer waited for the config before).
struct PreviousRead {
    manifest: Manifest,
    config: Option<serde_json::Value>,
    /// By the copy's index: its old layer's entries, or why they cannot be used. Taken once;
    /// an error of a read is only an error if the fast path gets that far.
    layers: BTreeMap<usize, Result<Result<Vec<ListedEntry>, String>>>,
}

fn read_previous(client: &Registry, runner: &dyn Runner, image: &Image) -> Result<Option<PreviousRead>> {
    let Ok(swap) = source_swap(&image.parsed, image.target.as_deref()) else { return Ok(None) };
    let Some(manifest) = client.manifest(&image.repository, PREVIOUS_TAG)? else { return Ok(None) };
    let config = if manifest.is_index() { None } else { Some(client.image_config(&image.repository, &manifest)?) };
    // Only an image this tool built can be swapped: for any other, reading its layers is waste.
    let ours = config.as_ref().is_some_and(|config| config["config"]["Labels"][OUTSIDE_SOURCES_LABEL].is_string());
    let copying_directories: Vec<usize> = (0..swap.copies.len())
        .filter(|&index| {
            swap.copies[index].sources.iter().any(|source| source == "." || image.context.join(source).is_dir())
        })
        .filter(|_| ours)
        .collect();
    let read_layer =
        |&index: &usize| Ok(replaced_layer(client, runner, &image.repository, &manifest, swap.copies.len(), index));
    let layers = copying_directories.iter().copied().zip(at_once(&copying_directories, read_layer)?).collect();
    Ok(Some(PreviousRead { manifest, config, layers }))
}

/// The previous image of `image` (`read` from the registry), when the fast path can swap its
/// sources: its `dev-latest` carries the same [`OUTSIDE_SOURCES_LABEL`] value, and the copies'
/// layers can be written (from the build context, and for the directories they make, from what
/// that image's layers of the copies record, read with it), so that a dry run says what the run
/// does.
fn previous_image(
    client: &Registry,
    runner: &dyn Runner,
    image: &Image,
    outside: &str,
    read: Option<PreviousRead>,
    commit_time: i64,
) -> Result<Result<PreviousImage, String>> {
    let swap = match source_swap(&image.parsed, image.target.as_deref()) {
        Ok(swap) => swap,
        Err(why) => return Ok(Err(why)),
    };
    let Some(PreviousRead { manifest, config, mut layers }) = read else {
        return Ok(Err(format!("no {PREVIOUS_TAG} image to swap the sources of")));
    };
    let Some(config) = config else {
        return Ok(Err(format!("{PREVIOUS_TAG} is a manifest list, not one image")));
    };
    if config["config"]["Labels"][OUTSIDE_SOURCES_LABEL].as_str() != Some(outside) {
        return Ok(Err(format!(
            "{PREVIOUS_TAG} differs in more than the sources of the trailing COPYs (its {OUTSIDE_SOURCES_LABEL})"
        )));
    }
    let mut replaced = |index| match layers.remove(&index) {
        Some(listed) => listed,
        None => replaced_layer(client, runner, &image.repository, &manifest, swap.copies.len(), index),
    };
    let mtime = u64::try_from(commit_time).unwrap_or(0);
    let layers = source_layers(&image.context, &image.dockerfile, &swap, mtime, &mut replaced)?;
    Ok(layers.map(|layers| PreviousImage { tag: PREVIOUS_TAG.to_string(), manifest, config, swap, layers }))
}

/// The registry's address and the credentials its API calls use, decided when planning, and
/// the one client that planning and the run share: the registry's login challenge is then met
/// once per build, and its connections are reused, instead of once per phase.
#[derive(Clone)]
pub struct RegistryAccess {
    pub address: RegistryAddress,
    pub credentials: Option<Credentials>,
    client: Registry,
}

impl fmt::Debug for RegistryAccess {
    // The client holds nothing the plan decides: its address and login are shown already.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAccess")
            .field("address", &self.address)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl RegistryAccess {
    /// The address `setting` names, with the credentials of the environment or the docker login
    /// (a credential helper runs through `runner`).
    pub fn read(setting: &str, runner: &dyn Runner) -> Result<RegistryAccess> {
        let address = RegistryAddress::parse(setting)?;
        let credentials = Credentials::find(&address, runner)?;
        let client = Registry::new(address.clone(), credentials.clone(), Backoff::STANDARD);
        Ok(RegistryAccess { address, credentials, client })
    }

    /// The client, which rides out a registry restarting (see [`Backoff::STANDARD`]).
    pub fn client(&self) -> &Registry {
        &self.client
    }
}

/// How long a dry run waits for each registry request: it shows what it cannot know instead.
const DRY_RUN_REGISTRY_TIMEOUT: Duration = Duration::from_secs(1);

/// What happens to one image.
#[derive(Debug)]
pub struct ImagePlan {
    /// The compose service that builds it.
    pub service: String,
    /// The image built first when both are built (see [`Image::built_after`]).
    pub built_after: Option<String>,
    /// `<registry>/intric/<service>`, or `intric/<service>` without a registry.
    pub name: String,
    /// Its base images and their digests (`None`: unknown).
    pub bases: Vec<(String, Option<String>)>,
    pub tags: Vec<String>,
    pub inputs_digest: String,
    pub action: ImageAction,
    /// Which way the image comes to be and why, in words (`derived from backend's manifest
    /// (metadata only)`, `BuildKit: not pushed, ...`): shown by the plan and the summary.
    pub path: String,
    /// The local engine's `image inspect` of the result, for its id and size, when it is not
    /// pushed (a pushed image's digest and size come from its manifest).
    pub describe: Option<Command>,
    /// What the plan could not know (the registry did not answer), in words.
    pub unknown: Option<String>,
}

// A plan holds three of these at most, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ImageAction {
    /// Build. When pushing with the classic client: push the first tag, then put the others on
    /// its manifest through the registry API, which costs one request per tag where another
    /// `docker push` would check every layer again. The `inputs-` tag comes last, so it only
    /// ever names a complete image. (buildx pushes every tag itself.) Then, when the image
    /// carries inline cache, the `inline-cache` tag moves to it if that cache is complete.
    Build { build: Command, push: Option<Command>, retag: Option<Retag>, cache_mark: Option<CacheMark> },
    /// Put the new tags on the manifest of the existing `inputs-` tag through the registry API.
    RetagInRegistry(Retag),
    /// Give the existing local image the new tags.
    RetagLocally(Vec<Command>),
    /// Assemble the image in the registry from another image's pushed manifest: a
    /// metadata-only stage (see [`crate::images::derived`]).
    Derive(Derivation),
    /// Make the image from the previous one in the registry by replacing the layers of its
    /// trailing copies: only their sources changed (see [`crate::images::source_swap`]).
    SwapSources(SourceSwapStep),
}

impl ImageAction {
    /// Whether it takes one of the `--jobs` slots: what runs docker does (a BuildKit build, a
    /// local retag); the registry-only actions are a few round trips each.
    fn takes_slot(&self) -> bool {
        matches!(self, ImageAction::Build { .. } | ImageAction::RetagLocally(_))
    }
}

/// Registry API calls that put `to` on the manifest `from` names, in this order.
#[derive(Debug, PartialEq, Eq)]
pub struct Retag {
    pub repository: String,
    pub from: String,
    pub to: Vec<String>,
}

impl Retag {
    fn show(&self, f: &mut fmt::Formatter<'_>, registry: &str) -> fmt::Result {
        for tag in &self.to {
            writeln!(
                f,
                "  registry: PUT {registry} /v2/{}/manifests/{tag} (the manifest of {})",
                self.repository, self.from
            )?;
        }
        Ok(())
    }

    /// Reads the manifest of `from` once, puts the same bytes under every new tag (at once, the
    /// last one last: the inputs marker after a build), and returns it: it is the image's
    /// manifest under all of them.
    fn run(&self, registry: &Registry, log: &mut File, task: &TaskProgress) -> Result<Manifest> {
        let Retag { repository, from, to } = self;
        let manifest = registry_manifest(registry, repository, from)?;
        put_tags(registry, repository, &manifest, Manifested::Existing, to, log, task)?;
        Ok(manifest)
    }
}

/// The manifest `reference` names in `repository`, which must be there.
fn registry_manifest(registry: &Registry, repository: &str, reference: &str) -> Result<Manifest> {
    registry
        .manifest(repository, reference)?
        .with_context(|| format!("{repository}:{reference} is not in the registry"))
}

/// Registry calls that move the `inline-cache` tag to the image `from` names, with its inline
/// cache made whole where BuildKit left results out (see [`crate::images::inline_cache`]): the
/// next build on a fresh runner takes its cache from there as well as from the floating tags.
/// A completed cache is a new config next to the image's own layers: one small upload.
#[derive(Debug, PartialEq, Eq)]
pub struct CacheMark {
    pub repository: String,
    pub from: String,
    /// The build's instructions that make a layer each, to place the missing results by.
    pub steps: Vec<Instruction>,
}

impl CacheMark {
    fn show(&self, f: &mut fmt::Formatter<'_>, registry: &str) -> fmt::Result {
        writeln!(
            f,
            "  registry: PUT {registry} /v2/{}/manifests/{} (the manifest of {}, or of a copy with the results its inline cache lacks, after POST+PUT of that config)",
            self.repository,
            inline_cache::TAG,
            self.from
        )
    }

    /// Reads the config of the pushed image (`manifest`, the manifest of `from`) and moves the
    /// tag to it, or to a copy with its cache completed. A failure here is only a warning: the
    /// image is pushed and tagged, and the old cache tag still works.
    fn run(&self, registry: &Registry, manifest: &Manifest, log: &mut File, task: &TaskProgress) -> Result<()> {
        let CacheMark { repository, from, .. } = self;
        let line = match self.mark(registry, manifest) {
            Ok(line) => line,
            Err(error) => format!("warning: {repository}:{} stays: {from}: {error:#}", inline_cache::TAG),
        };
        task.line(&line);
        writeln!(log, "{line}")?;
        Ok(())
    }

    /// Moves the tag; returns what happened, in words.
    fn mark(&self, registry: &Registry, manifest: &Manifest) -> Result<String> {
        let CacheMark { repository, from, steps } = self;
        let tag = inline_cache::TAG;
        let config = registry.image_config(repository, manifest)?;
        if inline_cache::is_complete(&config) {
            registry.put_manifest(repository, tag, manifest)?;
            return Ok(format!("tag {repository}:{tag} -> {} (its inline cache is complete)", manifest.digest));
        }
        let Some(completed) = inline_cache::completed(&config, steps) else {
            return Ok(format!(
                "{repository}:{tag} stays: the inline cache of {from} lacks results, and its steps do not match the layers one to one"
            ));
        };
        let bytes = serde_json::to_vec(&completed).context("cannot write the completed image config")?;
        registry.upload_blob(repository, &bytes)?;
        // The image's manifest with the new config and the same layers.
        let completed_manifest = swap_manifest(manifest, &[], &bytes)?;
        registry.put_manifest(repository, tag, &completed_manifest)?;
        Ok(format!(
            "tag {repository}:{tag} -> {} ({from} with the results BuildKit left out of its inline cache)",
            completed_manifest.digest
        ))
    }
}

/// The whole build: what runs, and everything running it needs, decided when planning.
#[derive(Debug)]
pub struct BuildPlan {
    /// The docker client's builder; `None` when the plan runs no docker (every image is made
    /// in the registry).
    pub builder: Option<Builder>,
    pub registry: Option<String>,
    /// Why the registry could not be read (see [`BuildInputs::registry_unreachable`]).
    pub registry_unreachable: Option<String>,
    /// The registry API's address and credentials, when pushing.
    pub registry_access: Option<RegistryAccess>,
    pub login: Option<Command>,
    pub images: Vec<ImagePlan>,
    /// Said before anything runs (see [`BuildInputs::warnings`]).
    pub warnings: Vec<String>,
    /// The tag engine's report the tags come from (version, revision), for the summaries.
    pub report: TagReport,
    pub push: bool,
    pub jobs: usize,
    /// Where each image's full log goes ([`LOGS_DIR`] below the repository).
    pub logs: PathBuf,
    pub quiet: bool,
}

/// Where each image's full build log goes, below the repository.
pub const LOGS_DIR: &str = "target/xtask/logs";

/// Reads the inputs and plans the build as `cargo xtask build` does with `args`. For tasks that
/// build on the way (`release --build`, `ci`): they show this plan in their own dry run and run
/// it through its [`TaskPlan`] implementation. `tags`, when given, replaces the tag engine's
/// tags: a release builds only HEAD's immutable `sha-` tag and then promotes that.
pub fn prepare(runner: &dyn Runner, args: &BuildArgs, env: &Env, tags: Option<Vec<String>>) -> Result<BuildPlan> {
    let mut inputs = read_inputs(runner, args, env)?;
    if let Some(tags) = tags {
        inputs.report.image.tags = tags;
    }
    Ok(plan(&inputs))
}

/// Reads git state, the environment, the docker client, inputs digests and existing images.
/// Every problem with the inputs is collected and reported together. A dry run asks the
/// registry once, briefly, and notes what it could not learn instead of failing.
fn read_inputs(runner: &dyn Runner, args: &BuildArgs, env: &Env) -> Result<BuildInputs> {
    let workspace = args.location.repo();
    let docker = DockerOnDemand { runner, builder: args.builder.as_deref(), push: args.push, found: OnceLock::new() };
    std::thread::scope(|scope| {
        // The docker probes and compose's reading of its file are processes; git state is this
        // process's work meanwhile. A local build needs the engine whatever happens, so its
        // probes start at once; a pushing build asks for them only if an image needs BuildKit.
        if !args.push {
            scope.spawn(|| docker.get().map(drop));
        }
        let compose = scope.spawn(|| {
            let file = compose_file(&workspace, args.compose.as_deref())?;
            ComposeImages::read(runner, &file, env, &workspace)
        });
        let mut problems = Vec::new();
        let mut problem = |error: anyhow::Error| problems.push(format!("{error:#}"));
        // Image names start with the setting's image-name form: without a scheme.
        let registry = args.location.registry(env).map_err(&mut problem).ok().flatten().map(|a| a.to_string());

        let report = tags::resolve(runner, &workspace, args.stage, env).map_err(&mut problem).ok();
        if args.push && registry.is_none() {
            problem(anyhow!("--push needs a registry: set NEXUS_REGISTRY or pass --registry HOST[:PORT]"));
        }
        if args.push && report.as_ref().is_some_and(|report| report.image.dirty) && !args.allow_dirty {
            problem(anyhow!(
                "the working tree is dirty, so the images would match no commit: commit or stash the changes, \
                 or pass --allow-dirty"
            ));
        }
        for tag in &args.extra_tags {
            if !tags::is_valid_image_tag(tag) {
                problem(anyhow!(
                    "--tag {tag:?} is not a valid image tag: use letters, digits, '_', '.' and '-', at most 128, \
                     not starting with '.' or '-'"
                ));
            }
        }
        let mut secrets = Vec::new();
        for secret in &args.secrets {
            match secret.split_once('=') {
                Some((id, variable)) if !id.is_empty() && !variable.is_empty() => {
                    if !env.contains_key(variable) {
                        problem(anyhow!("--secret {id}: variable {variable} is not set"));
                    }
                    secrets.push(BuildSecret { id: id.to_string(), env: variable.to_string() });
                }
                _ => problem(anyhow!("--secret {secret:?} is not ID=ENV: name the secret and the variable holding it")),
            }
        }
        let credentials = Credentials::from_env(env).map_err(&mut problem).ok().flatten();
        let registry_access =
            registry.as_deref().and_then(|setting| RegistryAccess::read(setting, runner).map_err(&mut problem).ok());
        // The registry's login challenge, learned while compose reads its file: the calls that
        // then go at once (base digests, listings, previous images) authenticate up front
        // instead of each meeting a 401 first. What fails here, those calls report.
        if let Some(access) = registry_access.as_ref().filter(|_| !args.dry_run) {
            let client = access.client().clone();
            scope.spawn(move || client.check_access().ok());
        }

        // Checked like every registry setting; its image-name form is the prefix.
        let base_registry = args.base_registry.as_deref().map(RegistryAddress::parse).transpose();
        let base_registry = base_registry.context("--base-registry").map_err(&mut problem).ok().flatten();
        let base_registry = base_registry.map(|address| address.to_string());
        let compose = compose.join().map_err(|_| anyhow!("reading the compose file panicked"))?;
        let services = compose
            .and_then(|compose| compose.select(&args.services))
            .map(|images| with_base_registry(images, base_registry.as_deref()))
            .map_err(&mut problem)
            .ok();
        if !args.push
            && let Err(error) = docker.get()
        {
            problem(anyhow!("{error}"));
        }
        let (Some(report), Some(services), true) = (report, services, problems.is_empty()) else {
            bail!("cannot build: {}", problems.join("; "));
        };
        let warnings: Vec<String> = services.iter().flat_map(Image::ignored_args).collect();
        // The one client planning asks the registry with; a dry run's is impatient.
        let client = registry_access.as_ref().map(|access| {
            if args.dry_run {
                Registry::impatient(access.address.clone(), access.credentials.clone(), DRY_RUN_REGISTRY_TIMEOUT)
            } else {
                access.client().clone()
            }
        });
        // The registry's tags of each image: where an unchanged image is found when pushing, and
        // the cache sources of every build that knows a registry (a PR's too, which does not
        // push). One listing per repository (a round trip or more: pages), all at once, and at
        // the same time as the base images' digests, which need none of them; and so is each
        // previous image a source swap may start from (see `read_previous`).
        let fast_path_possible = args.push && !args.no_fast_path;
        let (digested, listed, previous_reads) = std::thread::scope(|listing| {
            let listed = client.as_ref().map(|client| {
                listing.spawn(|| {
                    let listings = at_once(&services, |image| client.tags(&image.repository))?;
                    let names = services.iter().map(|image| image.name.clone());
                    Ok(names.zip(listings).collect::<BTreeMap<String, Vec<String>>>())
                })
            });
            let previous_reads = client.as_ref().filter(|_| fast_path_possible).map(|client| {
                listing
                    .spawn(|| at_once(&services, |image| Ok(read_previous(client, runner, image))).map(Vec::into_iter))
            });
            let local_engine = || docker.get().ok().map(|(docker, _)| docker);
            let digested = inputs_digests(runner, &local_engine, &services, args.dry_run, client.as_ref());
            let listed =
                listed.map(|thread| thread.join().map_err(|_| anyhow!("listing the registry's tags panicked")));
            let previous_reads =
                previous_reads.map(|thread| thread.join().map_err(|_| anyhow!("reading the previous images panicked")));
            (digested, listed, previous_reads)
        });
        let mut previous_reads = previous_reads.transpose()?.transpose()?;
        let (bases, digests, outside_sources) = digested?;

        // A login the docker client already holds needs no `docker login` (a process and a
        // round trip on every build); the registry client checks the same credentials anyway.
        let login = match (credentials, &registry_access) {
            (Some(credentials), Some(access)) if credentials.is_docker_login(&access.address, runner) => None,
            (credentials, _) => credentials,
        };
        let listed: Option<Result<BTreeMap<String, Vec<String>>>> = listed.map(|joined| joined.and_then(|tags| tags));
        let (registry_tags, registry_unreachable) = match listed {
            None => (None, None),
            Some(Ok(tags)) => (Some(tags), None),
            // A real push cannot decide what to reuse without the registry, nor push to it.
            Some(Err(error)) if args.push && !args.dry_run => return Err(error),
            Some(Err(error)) => (None, Some(format!("{error:#}"))),
        };
        let mut unchanged = BTreeSet::new();
        let mut previous = BTreeMap::new();
        let mut cache_from = BTreeMap::new();
        let reuse_allowed = !args.no_cache && !args.pull;
        for image in &services {
            let previous_read = previous_reads.as_mut().and_then(Iterator::next);
            let marker = inputs_tag(&digests[&image.name]);
            let name = image_name(registry.as_deref(), &image.repository);
            let existing = registry_tags.as_ref().map(|tags| &tags[&image.name]);
            // An image whose base digest is unknown may stand on an updated base: build it.
            let bases_known = bases[&image.name].iter().all(|(_, digest)| digest.is_some());
            // Pushing reuses what the registry holds (unknown when it did not answer: the plan
            // says so); a local build reuses what the engine holds.
            let present = || match existing {
                _ if !args.push => {
                    docker.get().is_ok_and(|(docker, _)| docker.image_exists(runner, &format!("{name}:{marker}")))
                }
                Some(existing) => existing.contains(&marker),
                None => false,
            };
            if reuse_allowed && bases_known && present() {
                unchanged.insert(image.name.clone());
            }
            if let Some(existing) = existing {
                cache_from.insert(image.name.clone(), cache_sources(&report, existing, &name));
            }
            let fast_path = fast_path_possible && !unchanged.contains(&image.name);
            if let (true, Some(outside), Some(existing), Some(client), Some(read)) =
                (fast_path, outside_sources.get(&image.name), existing, &client, previous_read)
            {
                let context = || format!("cannot read the previous image of {}", image.name);
                // A tag the listing does not hold (moved or deleted meanwhile) is not there.
                let read = read.with_context(context)?.filter(|_| existing.iter().any(|tag| tag == PREVIOUS_TAG));
                let found =
                    previous_image(client, runner, image, outside, read, report.commit_time).with_context(context)?;
                previous.insert(image.name.clone(), found);
            }
        }
        let mut inputs = BuildInputs {
            report,
            services,
            registry,
            push: args.push,
            extra_tags: args.extra_tags.clone(),
            docker: None,
            bases,
            digests,
            outside_sources,
            previous,
            unchanged,
            cache_from,
            registry_cache: false,
            login,
            secrets,
            builder: args.builder.clone(),
            no_cache: args.no_cache,
            pull: args.pull,
            no_fast_path: args.no_fast_path,
            workspace: workspace.clone(),
            registry_access,
            registry_unreachable,
            jobs: args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from)).max(1),
            warnings,
            quiet: args.json,
        };
        if needs_docker(&inputs) {
            let (found, registry_cache) = docker.get().map_err(|error| anyhow!("cannot build: {error}"))?;
            inputs.docker = Some(found.clone());
            inputs.registry_cache = *registry_cache;
        }
        Ok(inputs)
    })
}

/// The docker client, detected the first time something asks (once, whichever thread asks),
/// with whether a push can export a registry cache (a buildx container builder: one more probe
/// on the chosen client).
struct DockerOnDemand<'a> {
    runner: &'a dyn Runner,
    builder: Option<&'a str>,
    push: bool,
    found: OnceLock<Result<(Docker, bool), String>>,
}

impl DockerOnDemand<'_> {
    fn get(&self) -> Result<&(Docker, bool), String> {
        let found = self.found.get_or_init(|| {
            let docker = Docker::detect(self.runner).map_err(|error| format!("{error:#}"))?;
            let registry_cache = self.push && docker.buildx_has_container_builder(self.runner, self.builder);
            Ok((docker, registry_cache))
        });
        found.as_ref().map_err(String::clone)
    }
}

/// The images with `--base-registry` applied: every build arg naming a known base image then
/// takes the upstream image through that Docker Hub proxy.
fn with_base_registry(mut images: Vec<Image>, base_registry: Option<&str>) -> Vec<Image> {
    let Some(prefix) = base_registry else { return images };
    for image in &mut images {
        for (name, value) in &mut image.args {
            if let Some(base) = BASE_IMAGES.iter().find(|base| base.variable == name) {
                *value = proxied(prefix, base.upstream);
            }
        }
    }
    images
}

/// Each image's base images with their digests, its inputs digest (the disk walk of its
/// context), and the digest outside its trailing copies' sources where its target has them
/// (from the same walk). A dry run asks each base's registry briefly; an unknown digest goes
/// into the inputs digest as `unknown`. Bases on the registry of `client` are asked through it.
#[allow(clippy::type_complexity)]
fn inputs_digests<'d>(
    runner: &dyn Runner,
    docker: &(dyn Fn() -> Option<&'d Docker> + Sync),
    images: &[Image],
    dry_run: bool,
    client: Option<&Registry>,
) -> Result<(BTreeMap<String, Vec<(String, Option<String>)>>, BTreeMap<String, String>, BTreeMap<String, String>)> {
    let mut problems = Vec::new();
    let mut references = BTreeMap::new();
    for image in images {
        let args: BTreeMap<String, String> = image.args.iter().cloned().collect();
        match image.parsed.base_images(image.target.as_deref(), &args) {
            Ok(found) => {
                references.insert(image.name.clone(), found);
            }
            Err(error) => problems.push(format!("image {}: {error:#}", image.name)),
        }
    }
    if !problems.is_empty() {
        bail!("cannot build: {}", problems.join("; "));
    }
    let patience = dry_run.then_some(DRY_RUN_REGISTRY_TIMEOUT);
    let resolved = bases::resolve(runner, docker, client, references.values().flatten(), patience);
    let mut bases = BTreeMap::new();
    let mut digests = BTreeMap::new();
    let mut outside_sources = BTreeMap::new();
    for image in images {
        let found: Vec<(String, Option<String>)> =
            references[&image.name].iter().map(|reference| (reference.clone(), resolved[reference].clone())).collect();
        let hashed: Vec<(String, String)> = found
            .iter()
            .map(|(reference, digest)| (reference.clone(), digest.clone().unwrap_or_else(|| "unknown".into())))
            .collect();
        let sources = source_swap(&image.parsed, image.target.as_deref()).ok().map(|swap| swap.sources());
        let found_digests = crate::images::inputs::digests(
            &image.context,
            &image.dockerfile,
            image.target.as_deref(),
            &image.args,
            &hashed,
            sources.as_deref(),
        )
        .with_context(|| format!("cannot compute the inputs digest of {}", image.name))?;
        bases.insert(image.name.clone(), found);
        digests.insert(image.name.clone(), found_digests.inputs);
        if let Some(outside) = found_digests.outside_sources {
            outside_sources.insert(image.name.clone(), outside);
        }
    }
    Ok((bases, digests, outside_sources))
}

/// The lab's stand-ins by variable, for `bench`'s emulation of the old script (which knows its
/// three images by heart). The base image for each build arg: `--base-registry` maps the upstream images through a
/// Docker Hub proxy; otherwise the environment may replace each one (the lab's stand-ins);
/// otherwise the Dockerfile's default applies and the arg is left out.
pub fn base_images(env: &Env, base_registry: Option<&str>) -> BTreeMap<String, String> {
    let mut images = BTreeMap::new();
    for service in Service::ALL {
        for base in service.base_images() {
            let image = match base_registry {
                Some(prefix) => Some(proxied(prefix, base.upstream)),
                None => env.get(base.variable).filter(|value| !value.is_empty()).cloned(),
            };
            if let Some(image) = image {
                images.insert(base.variable.to_string(), image);
            }
        }
    }
    images
}

/// An upstream image through a Docker Hub proxy: official images live under `library/`.
fn proxied(prefix: &str, upstream: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    if upstream.contains('/') { format!("{prefix}/{upstream}") } else { format!("{prefix}/library/{upstream}") }
}

/// The build args naming the base images a service's Dockerfile starts from: with the
/// Dockerfile and context, they decide the image's content.
pub fn base_image_args(service: Service, base_images: &BTreeMap<String, String>) -> Vec<(String, String)> {
    service
        .base_images()
        .iter()
        .filter_map(|base| base_images.get(base.variable).map(|image| (base.variable.to_string(), image.clone())))
        .collect()
}

/// `<registry>/<repository>`, or the repository alone without a registry.
fn image_name(registry: Option<&str>, repository: &str) -> String {
    match registry {
        Some(registry) => format!("{}/{repository}", registry.trim_end_matches('/')),
        None => repository.to_string(),
    }
}

/// The existing tags whose layers are most likely to match this build: the default branch's
/// `dev-latest`, this build's own floating tags (a branch's slug, a PR's tag), and the newest
/// image whose inline cache is complete (`inline-cache`).
fn cache_sources(report: &TagReport, existing: &[String], name: &str) -> Vec<String> {
    let wanted = std::iter::once("dev-latest")
        .chain(report.image.tags.iter().map(String::as_str).filter(|tag| !tag.starts_with("sha-")))
        .chain(std::iter::once(inline_cache::TAG));
    let mut sources: Vec<String> = Vec::new();
    for tag in wanted {
        let source = format!("{name}:{tag}");
        if existing.iter().any(|existing| existing == tag) && !sources.contains(&source) {
            sources.push(source);
        }
    }
    sources
}

/// How an image comes to be, before the commands that make it are written.
enum Route {
    /// An image with the same inputs exists: only tag it.
    Unchanged,
    Derive(Derivation),
    SwapSources(SourceSwapStep),
    /// A BuildKit build (the plan's words say why no other way).
    BuildKit,
}

/// The tags every image gets: the tag engine's, then the extra ones.
fn image_tags(inputs: &BuildInputs) -> Vec<String> {
    let mut tags: Vec<String> = inputs.report.image.tags.clone();
    for extra in &inputs.extra_tags {
        if !tags.contains(extra) {
            tags.push(extra.clone());
        }
    }
    tags
}

/// The way `image` comes to be, and the plan's words for it.
fn route(inputs: &BuildInputs, image: &Image, tags: &[String]) -> (Route, String) {
    let digest = &inputs.digests[&image.name];
    if inputs.unchanged.contains(&image.name) {
        return (Route::Unchanged, "unchanged: an image with the same inputs exists".to_string());
    }
    let not_derived = match derivation(inputs, image, tags, digest) {
        Ok(derivation) => {
            let path = format!("derived from {}'s manifest (metadata only)", derivation.from_service);
            return (Route::Derive(derivation), path);
        }
        Err(why) => why,
    };
    // Where the source swap was considered, its reason is the one that matters.
    let why = match inputs.previous.get(&image.name) {
        None => not_derived,
        Some(Err(not_swapped)) => not_swapped.clone(),
        Some(Ok(previous)) => match source_swap_step(inputs, image, tags, digest, previous) {
            Ok(step) => {
                let path = format!("source swap on {}: only the sources of {} changed", previous.tag, step.copies());
                return (Route::SwapSources(step), path);
            }
            Err(why) => why,
        },
    };
    (Route::BuildKit, format!("BuildKit: {why}"))
}

/// Whether the plan of `inputs` runs docker: a local build does (the images are the engine's),
/// and so does a pushing one with an image BuildKit builds.
pub fn needs_docker(inputs: &BuildInputs) -> bool {
    let tags = image_tags(inputs);
    !inputs.push || inputs.services.iter().any(|image| matches!(route(inputs, image, &tags).0, Route::BuildKit))
}

/// Plans every image: pure, from the inputs alone. The docker client must be there whenever
/// [`needs_docker`] says so (the inputs are read that way).
pub fn plan(inputs: &BuildInputs) -> BuildPlan {
    let docker = || inputs.docker.as_ref().expect("the inputs hold a docker client where the plan runs docker");
    let registry = inputs.registry.as_deref();
    let tags = image_tags(inputs);
    let mut images: Vec<ImagePlan> = inputs
        .services
        .iter()
        .map(|image| {
            let digest = inputs.digests[&image.name].clone();
            let name = image_name(registry, &image.repository);
            let marker = inputs_tag(&digest);
            let (route, path) = route(inputs, image, &tags);
            let action = match route {
                Route::Unchanged if inputs.push => ImageAction::RetagInRegistry(Retag {
                    repository: image.repository.clone(),
                    from: marker.clone(),
                    to: tags.clone(),
                }),
                Route::Unchanged => {
                    let source = format!("{name}:{marker}");
                    ImageAction::RetagLocally(
                        tags.iter()
                            .map(|tag| docker().command().args(["tag", &source, &format!("{name}:{tag}")]))
                            .collect(),
                    )
                }
                Route::Derive(derivation) => ImageAction::Derive(derivation),
                Route::SwapSources(step) => ImageAction::SwapSources(step),
                Route::BuildKit => plan_build(inputs, docker(), image, &name, &tags, &digest),
            };
            let unknown = match (&inputs.registry_unreachable, &action, inputs.push) {
                (Some(_), ImageAction::Build { .. }, true) => Some(format!(
                    "registry unreachable: would build unless {name}:{marker} exists (then only tag it), \
                     without cache from the registry"
                )),
                (Some(_), ImageAction::Derive(derivation), _) => Some(format!(
                    "registry unreachable: would derive from {}'s manifest unless {name}:{marker} exists (then only \
                     tag it)",
                    derivation.from_service
                )),
                (Some(_), ImageAction::Build { .. }, false) => {
                    Some(format!("registry unreachable: would build without cache from {}", registry.unwrap_or("it")))
                }
                _ => None,
            };
            let describe = (!inputs.push).then(|| {
                let reference = format!("{name}:{}", tags[0]);
                docker().command().args(["image", "inspect", "--format", "{{.Id}} {{.Size}}", &reference])
            });
            ImagePlan {
                service: image.name.clone(),
                built_after: image.built_after.clone(),
                name,
                bases: inputs.bases[&image.name].clone(),
                tags: tags.clone(),
                inputs_digest: digest,
                action,
                path,
                describe,
                unknown,
            }
        })
        .collect();
    // An image derived from one this build swaps is made from the swapped parts, beside it.
    let swapped: BTreeMap<String, PlannedBase> = images
        .iter()
        .filter_map(|image| match &image.action {
            ImageAction::SwapSources(step) => Some((
                image.service.clone(),
                PlannedBase {
                    manifest: step.manifest.clone(),
                    config: step.config.clone(),
                    new_layers: step.layers.clone(),
                },
            )),
            _ => None,
        })
        .collect();
    for image in &mut images {
        if let ImageAction::Derive(derivation) = &mut image.action {
            derivation.planned_base = swapped.get(&derivation.from_service).cloned();
        }
    }
    // `docker push` needs the login; the registry-only steps have their own client.
    let login = match (&inputs.login, registry, inputs.push, &inputs.docker) {
        (Some(credentials), Some(registry), true, Some(docker)) => {
            Some(docker.login(registry, &credentials.username, credentials.password.clone()))
        }
        _ => None,
    };
    BuildPlan {
        builder: inputs.docker.as_ref().map(|docker| docker.builder),
        registry: inputs.registry.clone(),
        registry_unreachable: inputs.registry_unreachable.clone(),
        registry_access: inputs.registry_access.clone().filter(|_| inputs.push),
        login,
        images,
        warnings: inputs.warnings.clone(),
        report: inputs.report.clone(),
        push: inputs.push,
        jobs: inputs.jobs,
        logs: inputs.workspace.join(LOGS_DIR),
        quiet: inputs.quiet,
    }
}

/// The labels every image we make carries (as `--label`s of a build, or written into a derived
/// config): title, version, revision, commit time, inputs digest, the digest outside the
/// trailing copies' sources where there is one, and the source when known.
fn build_labels(report: &TagReport, image: &Image, digest: &str, outside: Option<&String>) -> Vec<(String, String)> {
    let mut labels = vec![
        ("org.opencontainers.image.title".to_string(), format!("intric-{}", image.name)),
        ("org.opencontainers.image.version".to_string(), report.version.clone()),
        ("org.opencontainers.image.revision".to_string(), report.image.revision.clone()),
        ("org.opencontainers.image.created".to_string(), crate::adapters::clock::rfc3339(report.commit_time)),
        (INPUTS_LABEL.to_string(), digest.to_string()),
    ];
    if let Some(outside) = outside {
        labels.push((OUTSIDE_SOURCES_LABEL.to_string(), outside.clone()));
    }
    if let Some(source) = &report.source {
        labels.push(("org.opencontainers.image.source".to_string(), source.clone()));
    }
    labels
}

/// The build args of every build: the compose file's, then the version and revision.
fn build_args(report: &TagReport, image: &Image) -> Vec<(String, String)> {
    let mut build_args = image.args.clone();
    build_args.push(("VERSION".into(), report.version.clone()));
    build_args.push(("REVISION".into(), report.image.revision.clone()));
    build_args
}

/// The derivation of `image` from another image of this build's pushed manifest, when its
/// target is a metadata-only stage on that image's target (see [`crate::images::derived`]);
/// else why it is built by BuildKit. Deriving needs the other image in the registry, so only a
/// pushing build derives: a local build leaves every image in the local engine, which BuildKit
/// fills (loading a derived image into it would cost the pull this path exists to avoid).
fn derivation(inputs: &BuildInputs, image: &Image, tags: &[String], digest: &str) -> Result<Derivation, String> {
    if inputs.no_fast_path {
        return Err("--no-fast-path".into());
    }
    if !inputs.push {
        return Err("not pushed, so the image must be built into the local engine".into());
    }
    let target = match &image.target {
        Some(target) => format!("stage {target}"),
        None => "the last stage".to_string(),
    };
    let stage = metadata_stage(&image.parsed, image.target.as_deref()).map_err(|why| format!("{target}: {why}"))?;
    let base = inputs
        .services
        .iter()
        .find(|other| {
            other.name != image.name
                && other.dockerfile == image.dockerfile
                && other.context == image.context
                && other.args == image.args
                && other.parsed.stage(other.target.as_deref()).ok().and_then(|stage| stage.name.as_deref())
                    == Some(stage.base.as_str())
        })
        .ok_or_else(|| format!("{target} starts from stage {}, which no image of this build is", stage.base))?;
    if image.built_after.as_deref() != Some(base.name.as_str()) {
        return Err(format!("{} is not built before it", base.name));
    }
    let report = &inputs.report;
    Ok(Derivation {
        from_service: base.name.clone(),
        from_repository: base.repository.clone(),
        from_tag: tags[0].clone(),
        repository: image.repository.clone(),
        tags: tags.iter().cloned().chain(std::iter::once(inputs_tag(digest))).collect(),
        stage,
        build_args: build_args(report, image).into_iter().collect(),
        labels: build_labels(report, image, digest, inputs.outside_sources.get(&image.name)),
        created: crate::adapters::clock::rfc3339(report.commit_time),
        planned_base: None,
    })
}

/// The step that swaps the sources of `previous` into `image`'s new tags, its config and
/// manifest written; or why it cannot be.
fn source_swap_step(
    inputs: &BuildInputs,
    image: &Image,
    tags: &[String],
    digest: &str,
    previous: &PreviousImage,
) -> Result<SourceSwapStep, String> {
    let report = &inputs.report;
    let build_args: BTreeMap<String, String> = build_args(report, image).into_iter().collect();
    let labels = build_labels(report, image, digest, inputs.outside_sources.get(&image.name));
    SourceSwapStep::new(SwapInputs {
        repository: &image.repository,
        from_tag: &previous.tag,
        from: &previous.manifest,
        previous_config: &previous.config,
        swap: &previous.swap,
        layers: &previous.layers,
        tags: tags.iter().cloned().chain(std::iter::once(inputs_tag(digest))).collect(),
        build_args: &build_args,
        labels: &labels,
        created: &crate::adapters::clock::rfc3339(report.commit_time),
    })
    .map_err(|error| format!("{error:#}"))
}

fn plan_build(
    inputs: &BuildInputs,
    docker: &Docker,
    image: &Image,
    name: &str,
    tags: &[String],
    digest: &str,
) -> ImageAction {
    let report = &inputs.report;
    let marker = inputs_tag(digest);
    let all_tags: Vec<String> =
        tags.iter().chain(std::iter::once(&marker)).map(|tag| format!("{name}:{tag}")).collect();
    let mut build_args = build_args(report, image);
    if inputs.push {
        // Cache metadata inside the pushed image lets the next build (on any machine) reuse
        // its layers through --cache-from without a separate cache export.
        build_args.push(("BUILDKIT_INLINE_CACHE".into(), "1".into()));
    }
    let labels = build_labels(report, image, digest, inputs.outside_sources.get(&image.name));
    let mut cache_from = inputs.cache_from.get(&image.name).cloned().unwrap_or_default();
    let mut cache_to = Vec::new();
    if inputs.registry_cache {
        // A container builder keeps its cache to itself; exporting every stage (mode=max) to a
        // `buildcache` tag lets the next runner reuse the builder stages too, which inline cache
        // (final stage only) cannot.
        let reference = format!("{name}:buildcache");
        cache_from.push(format!("type=registry,ref={reference}"));
        // Several Nexus versions refuse BuildKit's cache manifests (500s, 400 "blob upload
        // invalid"): a refused cache export must not fail a build whose image is fine.
        cache_to.push(format!("type=registry,ref={reference},mode=max,ignore-error=true"));
    }
    let buildx_pushes = inputs.push && docker.builder == Builder::Buildx;
    let spec = BuildSpec {
        dockerfile: image.dockerfile.clone(),
        context: image.context.clone(),
        // Without a target BuildKit builds the last stage, as `docker compose build` does.
        target: image.target.clone(),
        tags: all_tags.clone(),
        build_args,
        labels,
        cache_from,
        cache_to,
        secrets: inputs.secrets.clone(),
        builder: inputs.builder.clone(),
        push: buildx_pushes,
        iidfile: None,
        no_cache: inputs.no_cache,
        pull: inputs.pull,
    };
    let build = docker.build(&spec).hint("the build failed");
    // Pushed images carry inline cache whatever the builder, and a container builder's
    // `buildcache` export may have been refused (ignore-error): keep `inline-cache` current.
    // (The plan has refused a missing target already; no steps would only mean no completion.)
    let cache_mark = inputs.push.then(|| CacheMark {
        repository: image.repository.clone(),
        from: tags[0].clone(),
        steps: image
            .parsed
            .layer_steps(image.target.as_deref())
            .map(|steps| steps.into_iter().cloned().collect())
            .unwrap_or_default(),
    });
    if !inputs.push || buildx_pushes {
        return ImageAction::Build { build, push: None, retag: None, cache_mark };
    }
    let first = &all_tags[0];
    let push = docker.command().args(["push", first]).hint(format!("pushing {first} failed"));
    let retag = Retag {
        repository: image.repository.clone(),
        from: tags[0].clone(),
        to: tags[1..].iter().cloned().chain(std::iter::once(marker)).collect(),
    };
    ImageAction::Build { build, push: Some(push), retag: Some(retag), cache_mark }
}

impl fmt::Display for BuildPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "builder: {}", builder_name(self.builder))?;
        if let (Some(registry), Some(reason)) = (&self.registry, &self.registry_unreachable) {
            writeln!(f, "registry: {registry} unreachable, so what depends on it is unknown: {reason}")?;
        }
        for warning in &self.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        if let Some(login) = &self.login {
            writeln!(f, "login: {login}")?;
        }
        let registry = self.registry.as_deref().unwrap_or_default();
        for image in &self.images {
            writeln!(f, "{} (inputs {}):", image.service, &image.inputs_digest[..24])?;
            for (base, digest) in &image.bases {
                writeln!(
                    f,
                    "  base {base}: {}",
                    digest.as_deref().unwrap_or("digest unknown (not in its registry nor the local engine)")
                )?;
            }
            if let Some(unknown) = &image.unknown {
                writeln!(f, "  {unknown}")?;
            }
            if matches!(image.action, ImageAction::Build { .. }) {
                writeln!(f, "  path: {}", image.path)?;
            }
            match &image.action {
                ImageAction::Build { build, push, retag, cache_mark } => {
                    writeln!(f, "  {build}")?;
                    if let Some(push) = push {
                        writeln!(f, "  {push}")?;
                    }
                    if let Some(retag) = retag {
                        retag.show(f, registry)?;
                    }
                    if let Some(cache_mark) = cache_mark {
                        cache_mark.show(f, registry)?;
                    }
                }
                ImageAction::RetagInRegistry(retag) => {
                    writeln!(f, "  unchanged: reuse {registry}/{}:{}", retag.repository, retag.from)?;
                    retag.show(f, registry)?;
                }
                ImageAction::RetagLocally(commands) => {
                    writeln!(f, "  unchanged: reuse the local image")?;
                    for command in commands {
                        writeln!(f, "  {command}")?;
                    }
                }
                ImageAction::Derive(derivation) => derivation.show(f, registry)?,
                ImageAction::SwapSources(step) => step.show(f, registry)?,
            }
            if let Some(describe) = &image.describe {
                writeln!(f, "  {describe}")?;
            }
        }
        Ok(())
    }
}

/// How an image came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageOutcome {
    /// Built, with at least one step run.
    Built,
    /// Built, every step from BuildKit's cache.
    Cached,
    /// Not built: an image with the same inputs existed and got the new tags.
    Skipped,
    /// Not built: assembled in the registry from another image's manifest.
    Derived,
    /// Not built: the previous image with the layers of its trailing copies replaced.
    Swapped,
}

impl ImageOutcome {
    fn name(self) -> &'static str {
        match self {
            ImageOutcome::Built => "built",
            ImageOutcome::Cached => "cached",
            ImageOutcome::Skipped => "skipped",
            ImageOutcome::Derived => "derived",
            ImageOutcome::Swapped => "swapped",
        }
    }
}

/// What one image ended as.
#[derive(Clone, Debug)]
pub struct ImageResult {
    pub service: String,
    pub name: String,
    pub tags: Vec<String>,
    pub digest: String,
    pub size: Option<u64>,
    pub seconds: f64,
    pub outcome: ImageOutcome,
    /// Which way it came to be and why (see [`ImagePlan::path`]).
    pub path: String,
    pub inputs_digest: String,
}

/// Shared between the image threads: who started, who finished how, whether to stop.
#[derive(Default)]
struct Board {
    started: BTreeSet<String>,
    finished: BTreeMap<String, bool>,
    running: usize,
    cancelled: bool,
}

impl Board {
    /// Whether `image` may start now: it was not cancelled, its dependency (the backend, for
    /// the worker) succeeded, or is not built, and it is not waiting for one. For a schedule
    /// that does not depend on the threads' luck, BuildKit builds take free slots in plan
    /// order: no earlier build that could start is still waiting. Registry-only work (a retag,
    /// a derivation, a source swap) is a few round trips, not a process: it takes no slot.
    fn may_start(&self, plan: &BuildPlan, index: usize, jobs: usize) -> bool {
        let image = &plan.images[index];
        self.ready(plan, image)
            && (!image.action.takes_slot()
                || (self.running < jobs
                    && !plan.images[..index].iter().any(|earlier| {
                        earlier.action.takes_slot()
                            && !self.started.contains(&earlier.service)
                            && self.ready(plan, earlier)
                    })))
    }

    /// Whether `image` may start as far as its dependency goes: that, if it is built at all,
    /// has succeeded; or `image` is derived from parts the plan holds, and waits for it only
    /// before its tags (see [`Board::wait_for`]).
    fn ready(&self, plan: &BuildPlan, image: &ImagePlan) -> bool {
        let beside = matches!(&image.action, ImageAction::Derive(derivation) if derivation.planned_base.is_some());
        beside || dependency(plan, image).is_none_or(|service| self.finished.get(service) == Some(&true))
    }

    /// Whether `image` will never start: another image failed, or its dependency did.
    fn never(&self, plan: &BuildPlan, image: &ImagePlan) -> bool {
        self.cancelled || dependency(plan, image).is_some_and(|service| self.finished.get(service) == Some(&false))
    }
}

/// Waits until `service` has finished: an error when it failed or the build was cancelled.
fn wait_for((board, changed): &(Mutex<Board>, Condvar), service: &str) -> Result<()> {
    let mut state = board.lock().expect("board lock");
    loop {
        match state.finished.get(service) {
            Some(true) => return Ok(()),
            Some(false) => bail!("{service} failed"),
            None if state.cancelled => bail!("cancelled"),
            None => state = changed.wait(state).expect("board lock"),
        }
    }
}

/// The image `image` is built after, when the plan builds it too.
fn dependency<'a>(plan: &BuildPlan, image: &'a ImagePlan) -> Option<&'a str> {
    image.built_after.as_deref().filter(|service| plan.images.iter().any(|other| other.service == *service))
}

impl TaskPlan for BuildPlan {
    type Output = Vec<ImageResult>;

    /// Logs in, then runs every image on its own thread, at most `jobs` at a time and the
    /// worker after the backend; the first failure cancels the rest. Logs go to `logs`.
    fn execute(&self, runner: &dyn Runner) -> Result<Vec<ImageResult>> {
        if let (Some(registry), Some(reason)) = (&self.registry, &self.registry_unreachable) {
            eprintln!("warning: building without cache from {registry}: {reason}");
        }
        for warning in &self.warnings {
            eprintln!("warning: {warning}");
        }
        let registry = self.registry_access.as_ref().map(RegistryAccess::client);
        std::fs::create_dir_all(&self.logs).with_context(|| format!("cannot create {}", self.logs.display()))?;
        if let Some(login) = &self.login {
            runner.read(login)?;
        }
        let names: Vec<&str> = self.images.iter().map(|image| image.service.as_str()).collect();
        let progress = Progress::new(&names, self.quiet);
        let board = (Mutex::new(Board::default()), Condvar::new());
        let results: Vec<Result<Option<ImageResult>>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..self.images.len())
                .map(|index| {
                    let task = progress.task(&self.images[index].service);
                    let (board, registry) = (&board, registry);
                    scope.spawn(move || {
                        let result = run_image(runner, self, index, registry, &task, board);
                        match &result {
                            Ok(Some(done)) => task.finish(done.outcome.name()),
                            Ok(None) => task.finish("cancelled"),
                            Err(_) => task.finish("failed"),
                        }
                        result
                    })
                })
                .collect();
            threads.into_iter().map(|thread| thread.join().expect("an image thread panicked")).collect()
        });
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for result in results {
            match result {
                Ok(Some(image)) => done.push(image),
                Ok(None) => {}
                Err(error) => errors.push(error),
            }
        }
        match errors.into_iter().next() {
            Some(error) => Err(error),
            None => Ok(done),
        }
    }
}

/// One image (the plan's `index`th): wait for its turn, run its action, report to the board.
/// `Ok(None)` when it was cancelled because another image failed. The error names the image.
fn run_image(
    runner: &dyn Runner,
    plan: &BuildPlan,
    index: usize,
    registry: Option<&Registry>,
    task: &TaskProgress,
    shared: &(Mutex<Board>, Condvar),
) -> Result<Option<ImageResult>> {
    let (board, changed) = shared;
    let image = &plan.images[index];
    {
        let mut state = board.lock().expect("board lock");
        loop {
            if state.never(plan, image) {
                return Ok(None);
            }
            if state.may_start(plan, index, plan.jobs) {
                state.running += usize::from(image.action.takes_slot());
                state.started.insert(image.service.clone());
                break;
            }
            state = changed.wait(state).expect("board lock");
        }
    }
    // A later image may be waiting for this one to take its slot first.
    changed.notify_all();
    task.line("started");
    let started = Instant::now();
    let log_path = plan.logs.join(format!("{}.log", image.service));
    let result = perform(runner, image, plan, registry, &log_path, task, shared)
        .and_then(|(outcome, pushed)| {
            let (digest, size) = describe(runner, image, pushed.as_ref())?;
            Ok(ImageResult {
                service: image.service.clone(),
                name: image.name.clone(),
                tags: image.tags.clone(),
                digest,
                size,
                seconds: started.elapsed().as_secs_f64(),
                outcome,
                path: image.path.clone(),
                inputs_digest: image.inputs_digest.clone(),
            })
        })
        .with_context(|| format!("image {}", image.service));
    let mut state = board.lock().expect("board lock");
    state.running -= usize::from(image.action.takes_slot());
    state.finished.insert(image.service.clone(), result.is_ok());
    let cancelled_meanwhile = state.cancelled;
    if result.is_err() && !state.cancelled {
        // Stop the others cleanly: nothing new starts, running builds are killed.
        state.cancelled = true;
        runner.cancel();
    }
    drop(state);
    changed.notify_all();
    match result {
        Err(_) if cancelled_meanwhile => Ok(None),
        other => other.map(Some),
    }
}

/// Runs one image's action, with its output going to its log and its progress line. Returns
/// how the image came to be and, when it is in the registry, its manifest there.
fn perform(
    runner: &dyn Runner,
    image: &ImagePlan,
    plan: &BuildPlan,
    registry: Option<&Registry>,
    log_path: &Path,
    task: &TaskProgress,
    board_and_change: &(Mutex<Board>, Condvar),
) -> Result<(ImageOutcome, Option<Manifest>)> {
    let board = &board_and_change.0;
    let mut log = File::create(log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let registry = || registry.context("tagging in the registry needs a registry");
    match &image.action {
        ImageAction::Build { build, push, retag, cache_mark } => {
            let steps = stream(runner, build, &mut log, log_path, task)?;
            if let Some(push) = push {
                let registry = plan.registry.as_deref().unwrap_or_default();
                push_with_retries(runner, push, &mut log, log_path, task, board, registry)?;
            }
            // The pushed manifest is read once, by whichever step needs it first.
            let mut pushed = match retag {
                Some(retag) => Some(retag.run(registry()?, &mut log, task)?),
                None => None,
            };
            if let Some(cache_mark) = cache_mark {
                let manifest = match pushed {
                    Some(manifest) => manifest,
                    None => registry_manifest(registry()?, &cache_mark.repository, &cache_mark.from)?,
                };
                cache_mark.run(registry()?, &manifest, &mut log, task)?;
                pushed = Some(manifest);
            }
            Ok((if steps.all_cached() { ImageOutcome::Cached } else { ImageOutcome::Built }, pushed))
        }
        ImageAction::RetagInRegistry(retag) => {
            Ok((ImageOutcome::Skipped, Some(retag.run(registry()?, &mut log, task)?)))
        }
        ImageAction::RetagLocally(commands) => {
            for command in commands {
                stream(runner, command, &mut log, log_path, task)?;
            }
            Ok((ImageOutcome::Skipped, None))
        }
        ImageAction::Derive(derivation) => {
            let base_done = || match dependency(plan, image) {
                Some(service) => wait_for(board_and_change, service),
                None => Ok(()),
            };
            Ok((ImageOutcome::Derived, Some(derivation.run(registry()?, &mut log, task, &base_done)?)))
        }
        ImageAction::SwapSources(step) => Ok((ImageOutcome::Swapped, Some(step.run(registry()?, &mut log, task)?))),
    }
}

/// Which BuildKit steps a build ran and which came from cache.
#[derive(Default)]
struct Steps {
    run: BTreeSet<u32>,
    cached: BTreeSet<u32>,
}

impl Steps {
    /// Notes a plain-progress line: `#7 [backend 3/9] RUN ...` opens step 7; `#7 CACHED` says it
    /// came from cache. `FROM` steps only resolve an image, so they don't count.
    fn note(&mut self, line: &str) {
        let Some((number, rest)) = line.strip_prefix('#').and_then(|rest| rest.split_once(' ')) else { return };
        let Ok(number) = number.parse::<u32>() else { return };
        if rest == "CACHED" {
            self.cached.insert(number);
        } else if rest.starts_with('[') && !rest.starts_with("[internal]") {
            let instruction = rest.split_once("] ").map(|(_, instruction)| instruction).unwrap_or_default();
            if !instruction.starts_with("FROM ") {
                self.run.insert(number);
            }
        }
    }

    fn all_cached(&self) -> bool {
        !self.run.is_empty() && self.run.is_subset(&self.cached)
    }
}

/// Runs a command with its output streamed to `log` and `task`, noting which BuildKit steps
/// ran. On failure the error names the full log and carries the last lines of the output.
fn stream(
    runner: &dyn Runner,
    command: &Command,
    log: &mut File,
    log_path: &Path,
    task: &TaskProgress,
) -> Result<Steps> {
    writeln!(log, "$ {command}")?;
    let mut steps = Steps::default();
    let mut unwritten = None;
    let command = command.clone().hint(format!("{} (full log: {})", command.hint, log_path.display()));
    runner.run(&command, &mut |line| {
        if let Err(error) = writeln!(log, "{line}") {
            unwritten.get_or_insert(error);
        }
        steps.note(line);
        task.line(line);
    })?;
    match unwritten {
        Some(error) => Err(error).with_context(|| format!("cannot write {}", log_path.display())),
        None => Ok(steps),
    }
}

/// Pushes with retries on what looks transient; a refused login fails at once.
fn push_with_retries(
    runner: &dyn Runner,
    push: &Command,
    log: &mut File,
    log_path: &Path,
    task: &TaskProgress,
    board: &Mutex<Board>,
    registry: &str,
) -> Result<()> {
    const ATTEMPTS: u32 = 4;
    let mut attempt = 1;
    loop {
        match stream(runner, push, log, log_path, task) {
            Ok(_) => return Ok(()),
            Err(error) => {
                let text = format!("{error:#}");
                if text.contains("unauthorized") || text.contains("authentication required") || text.contains("denied")
                {
                    bail!(
                        "login to {registry} failed: the registry refused the push ({}); check NEXUS_USERNAME and NEXUS_PASSWORD or `docker login {registry}`",
                        push.args.last().map(String::as_str).unwrap_or_default()
                    );
                }
                if attempt == ATTEMPTS || board.lock().expect("board lock").cancelled {
                    return Err(error).context(format!("gave up after {attempt} attempts"));
                }
                let delay = Duration::from_secs(1 << attempt);
                task.line(&format!("push failed (attempt {attempt} of {ATTEMPTS}), retrying in {} s", delay.as_secs()));
                std::thread::sleep(delay);
                attempt += 1;
            }
        }
    }
}

/// The digest and size of a finished image: from the registry when pushed, else the engine.
fn describe(runner: &dyn Runner, image: &ImagePlan, pushed: Option<&Manifest>) -> Result<(String, Option<u64>)> {
    if let Some(manifest) = pushed {
        return Ok((manifest.digest.clone(), manifest_size(&manifest.bytes)));
    }
    let inspect = image.describe.as_ref().context("an image neither pushed nor inspected")?;
    let output = runner.read(inspect)?;
    let (id, size) = output.split_once(' ').unwrap_or((output.as_str(), ""));
    Ok((id.to_string(), size.parse().ok()))
}

/// The compressed size of an image: its config and layers as the manifest lists them.
fn manifest_size(bytes: &[u8]) -> Option<u64> {
    let manifest: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let size = |value: &serde_json::Value| value.get("size").and_then(serde_json::Value::as_u64);
    let layers = manifest.get("layers")?.as_array()?;
    Some(size(manifest.get("config")?)? + layers.iter().filter_map(size).sum::<u64>())
}

/// The summary of a build: a table, or JSON.
pub struct Summary {
    pub builder: Option<Builder>,
    pub registry: Option<String>,
    pub pushed: bool,
    pub results: Vec<ImageResult>,
}

/// The builder as the plan and the summary name it.
fn builder_name(builder: Option<Builder>) -> String {
    builder.map_or_else(|| "none (every image is made in the registry, no docker runs)".to_string(), |b| b.to_string())
}

impl Summary {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "builder": self.builder.map(|builder| builder.to_string()),
            "registry": self.registry,
            "pushed": self.pushed,
            "images": self.results.iter().map(|result| serde_json::json!({
                "service": result.service,
                "image": result.name,
                "tags": result.tags,
                "digest": result.digest,
                "size": result.size,
                "seconds": (result.seconds * 10.0).round() / 10.0,
                "result": result.outcome.name(),
                "path": result.path,
                "inputs_digest": result.inputs_digest,
            })).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let destination = match (&self.registry, self.pushed) {
            (Some(registry), true) => format!("pushed to {registry}"),
            _ => "local engine".to_string(),
        };
        writeln!(f, "builder: {}; {destination}", builder_name(self.builder))?;
        writeln!(f, "{:<9} {:<8} {:>9} {:>7}  {:<19}  tags", "service", "result", "size", "seconds", "digest")?;
        for result in &self.results {
            let size = result.size.map(|bytes| format!("{:.1} MB", bytes as f64 / 1e6)).unwrap_or_else(|| "-".into());
            let digest = result.digest.split_once(':').map_or(result.digest.as_str(), |(_, hex)| hex);
            writeln!(
                f,
                "{:<9} {:<8} {:>9} {:>7.1}  {:<19}  {}",
                result.service,
                result.outcome.name(),
                size,
                result.seconds,
                format!("sha256:{}", &digest[..digest.len().min(12)]),
                result.tags.join(", ")
            )?;
        }
        for result in &self.results {
            writeln!(f, "{}: {}", result.service, result.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::images::tags::{ImageTags, Stage};
    use crate::plan::Secret;
    use crate::plan::runner::Recording;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const DIGEST_BACKEND: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const DIGEST_WORKER: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const DIGEST_FRONTEND: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    const OUTSIDE_BACKEND: &str = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";

    fn report() -> TagReport {
        TagReport {
            image: ImageTags {
                ci: None,
                stage: Stage::Main,
                revision: "0123456789abcdef0123456789abcdef01234567".into(),
                short_revision: "0123456789ab".into(),
                branch: Some("main".into()),
                dirty: false,
                tags: vec!["sha-0123456789ab".into(), "dev-latest".into()],
                push: true,
                extra_tag: None,
                notes: Vec::new(),
                release: None,
            },
            version: "1.4.1-dev.7+g0123456789ab".into(),
            commit_time: 1_764_233_100,
            source: Some("https://git.example/intric.git".into()),
        }
    }

    /// Inputs of a build of all three images, as if read from `/ws` (ci's tests use them too).
    pub(crate) fn inputs(builder: Builder, registry: Option<&str>, push: bool) -> BuildInputs {
        BuildInputs {
            report: report(),
            services: crate::images::services::tests::ours(&lab_env()).built,
            registry: registry.map(String::from),
            push,
            extra_tags: vec!["qa".into()],
            docker: Some(Docker { program: "docker".into(), builder, engine_version: "20.10.24".into() }),
            bases: ["backend", "worker", "frontend"]
                .into_iter()
                .map(|name| (name.to_string(), vec![("lab/python:lab".to_string(), Some("sha256:base".to_string()))]))
                .collect(),
            digests: BTreeMap::from([
                ("backend".to_string(), DIGEST_BACKEND.to_string()),
                ("worker".to_string(), DIGEST_WORKER.to_string()),
                ("frontend".to_string(), DIGEST_FRONTEND.to_string()),
            ]),
            outside_sources: BTreeMap::from([("backend".to_string(), OUTSIDE_BACKEND.to_string())]),
            previous: BTreeMap::new(),
            unchanged: BTreeSet::new(),
            cache_from: BTreeMap::from([("backend".to_string(), vec!["r:5000/intric/backend:dev-latest".to_string()])]),
            registry_cache: false,
            login: Some(Credentials {
                username: "ci".into(),
                password: Secret::new("NEXUS_PASSWORD", "canary-hunter2"),
            }),
            secrets: vec![BuildSecret { id: "pip_index".into(), env: "PIP_INDEX_URL".into() }],
            builder: None,
            no_cache: false,
            pull: false,
            no_fast_path: false,
            workspace: "/ws".into(),
            registry_access: None,
            registry_unreachable: None,
            jobs: 3,
            warnings: Vec::new(),
            quiet: true,
        }
    }

    fn lab_env() -> Env {
        Env::from([("PYTHON_IMAGE".to_string(), "lab/python:lab".to_string())])
    }

    fn build_of<'a>(plan: &'a BuildPlan, service: &str) -> (&'a Command, &'a Option<Command>, &'a Option<Retag>) {
        match &plan.images.iter().find(|image| image.service == service).unwrap().action {
            ImageAction::Build { build, push, retag, .. } => (build, push, retag),
            other => panic!("{service:?} is not built: {other:?}"),
        }
    }

    fn pairs(args: &[String], flag: &str) -> Vec<String> {
        args.windows(2).filter(|pair| pair[0] == flag).map(|pair| pair[1].clone()).collect()
    }

    #[test]
    fn legacy_push_builds_tags_labels_and_pushes_every_tag() {
        let built = plan(&inputs(Builder::Legacy, Some("r:5000"), true));
        let (build, push, retag) = build_of(&built, "backend");
        assert_eq!(build.env, [("DOCKER_BUILDKIT".to_string(), "1".to_string())]);
        assert_eq!(
            pairs(&build.args, "--tag"),
            [
                "r:5000/intric/backend:sha-0123456789ab",
                "r:5000/intric/backend:dev-latest",
                "r:5000/intric/backend:qa",
                "r:5000/intric/backend:inputs-aaaaaaaaaaaaaaaaaaaaaaaa",
            ]
        );
        assert_eq!(
            pairs(&build.args, "--label"),
            [
                "org.opencontainers.image.title=intric-backend",
                "org.opencontainers.image.version=1.4.1-dev.7+g0123456789ab",
                "org.opencontainers.image.revision=0123456789abcdef0123456789abcdef01234567",
                "org.opencontainers.image.created=2025-11-27T08:45:00Z",
                &format!("org.intric.inputs-digest={DIGEST_BACKEND}"),
                &format!("org.intric.outside-sources-digest={OUTSIDE_BACKEND}"),
                "org.opencontainers.image.source=https://git.example/intric.git",
            ]
        );
        assert_eq!(
            pairs(&build.args, "--build-arg"),
            [
                "PYTHON_IMAGE=lab/python:lab",
                "VERSION=1.4.1-dev.7+g0123456789ab",
                "REVISION=0123456789abcdef0123456789abcdef01234567",
                "BUILDKIT_INLINE_CACHE=1",
            ]
        );
        assert_eq!(pairs(&build.args, "--cache-from"), ["r:5000/intric/backend:dev-latest"]);
        assert_eq!(pairs(&build.args, "--target"), ["backend"]);
        assert_eq!(pairs(&build.args, "--secret"), ["id=pip_index,env=PIP_INDEX_URL"]);
        assert_eq!(push.as_ref().unwrap().args, ["push", "r:5000/intric/backend:sha-0123456789ab"]);
        assert_eq!(
            retag.as_ref().unwrap(),
            &Retag {
                repository: "intric/backend".into(),
                from: "sha-0123456789ab".into(),
                to: vec!["dev-latest".into(), "qa".into(), "inputs-aaaaaaaaaaaaaaaaaaaaaaaa".into()],
            },
            "the other tags go through the registry API, the inputs tag last"
        );
        let mut buildkit_only = inputs(Builder::Legacy, Some("r:5000"), true);
        buildkit_only.no_fast_path = true;
        let built = plan(&buildkit_only);
        let (worker, _, _) = build_of(&built, "worker");
        assert_eq!(pairs(&worker.args, "--target"), ["worker"]);
        assert!(worker.args.last().unwrap().ends_with("/ws/backend"), "worker builds from the backend context");
    }

    fn image<'a>(plan: &'a BuildPlan, service: &str) -> &'a ImagePlan {
        plan.images.iter().find(|image| image.service == service).unwrap()
    }

    #[test]
    fn a_pushed_worker_is_derived_from_the_backends_manifest() {
        let built = plan_with(Builder::Legacy, Some("r:5000"), true);
        let worker = image(&built, "worker");
        let ImageAction::Derive(derivation) = &worker.action else { panic!("not derived: {:?}", worker.action) };
        assert_eq!(
            (derivation.from_service.as_str(), derivation.from_repository.as_str(), derivation.from_tag.as_str()),
            ("backend", "intric/backend", "sha-0123456789ab"),
            "the backend's first tag, which its push puts first"
        );
        assert_eq!(derivation.repository, "intric/worker");
        assert_eq!(derivation.tags, ["sha-0123456789ab", "dev-latest", "qa", "inputs-bbbbbbbbbbbbbbbbbbbbbbbb"]);
        assert_eq!(derivation.stage.keywords(), "no instructions", "the test Dockerfile's worker is an alias");
        assert_eq!(derivation.build_args["VERSION"], "1.4.1-dev.7+g0123456789ab");
        assert!(derivation.labels.contains(&("org.opencontainers.image.title".into(), "intric-worker".into())));
        assert!(derivation.labels.contains(&(INPUTS_LABEL.into(), DIGEST_WORKER.into())));
        assert_eq!(derivation.created, "2025-11-27T08:45:00Z");
        assert_eq!(worker.path, "derived from backend's manifest (metadata only)");
        let shown = built.to_string();
        assert!(
            shown.contains("worker (inputs bbbbbbbbbbbbbbbbbbbbbbbb):\n  base lab/python:lab: sha256:base\n  derived from backend's manifest (metadata only: no instructions): no build, no pull\n"),
            "{shown}"
        );
        assert!(shown.contains("registry: PUT r:5000 /v2/intric/worker/manifests/inputs-bbbbbbbbbbbbbbbbbbbbbbbb (the derived manifest)"), "{shown}");
        assert_eq!(
            image(&built, "backend").path,
            "BuildKit: stage backend starts from stage base, which no image of this build is"
        );
        assert!(
            shown.contains("  path: BuildKit: stage frontend: starts from the image nginx, not from another stage"),
            "{shown}"
        );
    }

    #[test]
    fn a_backend_whose_copies_alone_changed_swaps_them_and_otherwise_says_why_not() {
        use crate::images::layer::{TarEntry, TarKind};
        let text = "FROM python\nWORKDIR /app\nCOPY intric ./intric\nCMD [\"x\"]\n";
        let parsed = crate::images::dockerfile::Dockerfile::parse("backend/Dockerfile", text).unwrap();
        let swap = source_swap(&parsed, None).unwrap();
        let file = TarEntry {
            path: "app/intric/main.py".into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            kind: TarKind::File(vec![]),
        };
        let layer = Layer::of(&[file]).unwrap();
        let layer_entry = |digest: &str| serde_json::json!({"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": digest, "size": 1});
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:oldconfig", "size": 1},
            "layers": [layer_entry("sha256:base"), layer_entry("sha256:oldcopy")],
        });
        let manifest = Manifest {
            media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
            digest: "sha256:prev".into(),
            bytes: serde_json::to_vec(&manifest).unwrap(),
        };
        let previous_config = serde_json::json!({
            "config": {"Cmd": ["x"], "Labels": {}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:base", "sha256:oldcopy"]},
            "history": [
                {"created_by": "RUN make"},
                {"created_by": "WORKDIR /app", "empty_layer": true},
                {"created_by": "COPY intric ./intric # buildkit"},
                {"created_by": "CMD [\"x\"]", "empty_layer": true},
            ],
        });
        let previous = PreviousImage {
            tag: "dev-latest".into(),
            manifest,
            config: previous_config,
            swap,
            layers: vec![layer.clone()],
        };
        let mut swapping = inputs(Builder::Legacy, Some("r:5000"), true);
        swapping.previous.insert("backend".into(), Ok(previous.clone()));
        let built = plan(&swapping);
        let backend = image(&built, "backend");
        let ImageAction::SwapSources(step) = &backend.action else { panic!("not swapped: {:?}", backend.action) };
        assert_eq!(backend.path, "source swap on dev-latest: only the sources of the COPY at line 3 changed");
        assert_eq!(step.tags, ["sha-0123456789ab", "dev-latest", "qa", "inputs-aaaaaaaaaaaaaaaaaaaaaaaa"]);
        let labels = &step.config["config"]["Labels"];
        assert_eq!(labels[OUTSIDE_SOURCES_LABEL], OUTSIDE_BACKEND);
        assert_eq!(labels["org.opencontainers.image.revision"], "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(step.config["rootfs"]["diff_ids"], serde_json::json!(["sha256:base", layer.diff_id]));
        let swapped: serde_json::Value = serde_json::from_slice(&step.manifest.bytes).unwrap();
        assert_eq!(swapped["layers"][1]["digest"], layer.digest.as_str());
        assert_eq!(swapped["config"]["digest"], crate::adapters::registry::sha256_digest(&step.config_bytes));
        let shown = built.to_string();
        assert!(shown.contains(&format!("  swapped manifest: {}\n", step.manifest.digest)), "{shown}");
        assert!(shown.contains("  source swap on intric/backend:dev-latest (sha256:prev): only the sources of the COPY at line 3 changed; no build, no pull\n"), "{shown}");
        assert!(
            shown.contains(&format!(
                "registry: POST+PUT r:5000 /v2/intric/backend/blobs/uploads/ (COPY line 3: {}, {} bytes)",
                layer.digest,
                layer.blob.len()
            )),
            "{shown}"
        );
        // The worker is made from the swapped parts, beside the backend's step: it may start
        // before the backend has finished, and it takes no build slot.
        let worker = image(&built, "worker");
        let ImageAction::Derive(derivation) = &worker.action else { panic!("not derived: {:?}", worker.action) };
        let base = derivation.planned_base.as_ref().expect("the worker derives from the planned backend");
        assert_eq!(base.manifest, step.manifest);
        assert_eq!(base.new_layers, step.layers);
        assert!(Board::default().may_start(&built, 1, 1), "the worker starts beside the backend");
        assert!(
            shown.contains(&format!(
                "  from backend's swapped manifest {}, beside its step (the tags once backend's stand)\n",
                step.manifest.digest
            )),
            "{shown}"
        );

        // With the frontend unchanged too, every image is made in the registry: no docker.
        assert!(needs_docker(&swapping), "the frontend is built by BuildKit");
        swapping.unchanged.insert("frontend".into());
        assert!(!needs_docker(&swapping));
        let mut registry_only = BuildInputs { docker: None, ..swapping };
        let built = plan(&registry_only);
        assert_eq!(built.builder, None);
        assert!(built.login.is_none(), "no docker push, so no docker login");
        assert!(built.to_string().contains("builder: none (every image is made in the registry, no docker runs)\n"));
        registry_only.push = false;
        assert!(needs_docker(&registry_only), "a local build fills the engine");
        let mut swapping = BuildInputs { push: true, ..registry_only };
        swapping.unchanged.clear();
        swapping.docker = inputs(Builder::Legacy, Some("r:5000"), true).docker;

        // A previous image whose config the swap cannot rewrite is built by BuildKit, saying why.
        let mut unswappable = previous;
        unswappable.config = serde_json::json!({"config": {}});
        swapping.previous.insert("backend".into(), Ok(unswappable));
        let built = plan(&swapping);
        assert!(matches!(image(&built, "backend").action, ImageAction::Build { .. }));
        assert_eq!(
            image(&built, "backend").path,
            "BuildKit: cannot swap the sources of intric/backend:dev-latest: the previous image config has no history"
        );

        swapping.previous.insert("backend".into(), Err("no dev-latest image to swap the sources of".into()));
        let built = plan(&swapping);
        assert!(matches!(image(&built, "backend").action, ImageAction::Build { .. }));
        assert_eq!(image(&built, "backend").path, "BuildKit: no dev-latest image to swap the sources of");
    }

    #[test]
    fn the_worker_is_built_by_buildkit_when_it_cannot_be_derived_and_the_plan_says_why() {
        let path_of = |inputs: &BuildInputs| {
            let built = plan(inputs);
            let worker = image(&built, "worker");
            assert!(matches!(worker.action, ImageAction::Build { .. }), "{:?}", worker.action);
            worker.path.clone()
        };
        let mut forced = inputs(Builder::Legacy, Some("r:5000"), true);
        forced.no_fast_path = true;
        assert_eq!(path_of(&forced), "BuildKit: --no-fast-path");
        assert_eq!(
            path_of(&inputs(Builder::Legacy, None, false)),
            "BuildKit: not pushed, so the image must be built into the local engine"
        );
        let mut alone = inputs(Builder::Legacy, Some("r:5000"), true);
        alone.services.retain(|image| image.name != "backend");
        assert_eq!(
            path_of(&alone),
            "BuildKit: stage worker starts from stage backend, which no image of this build is"
        );
        let mut other_args = inputs(Builder::Legacy, Some("r:5000"), true);
        other_args.services[1].args.push(("EXTRA".into(), "1".into()));
        assert!(path_of(&other_args).contains("which no image of this build is"), "other build args, other stages");
    }

    #[test]
    fn buildx_pushes_from_the_builder() {
        let built = plan(&inputs(Builder::Buildx, Some("r:5000"), true));
        let (build, push, retag) = build_of(&built, "frontend");
        assert!(build.args.starts_with(&["buildx".to_string(), "build".to_string(), "--push".to_string()]));
        assert!(push.is_none() && retag.is_none());
        assert!(build.env.is_empty());
    }

    #[test]
    fn a_container_builder_exports_its_cache_to_the_registry() {
        let mut pushing = inputs(Builder::Buildx, Some("r:5000"), true);
        pushing.registry_cache = true;
        let built = plan(&pushing);
        let (build, _, _) = build_of(&built, "backend");
        assert_eq!(
            pairs(&build.args, "--cache-from"),
            ["r:5000/intric/backend:dev-latest", "type=registry,ref=r:5000/intric/backend:buildcache"]
        );
        assert_eq!(
            pairs(&build.args, "--cache-to"),
            ["type=registry,ref=r:5000/intric/backend:buildcache,mode=max,ignore-error=true"]
        );
        let legacy = plan_with(Builder::Legacy, Some("r:5000"), true);
        assert!(pairs(&build_of(&legacy, "backend").0.args, "--cache-to").is_empty());
    }

    #[test]
    fn pushed_builds_move_the_inline_cache_tag_to_their_layers() {
        let cache_mark = |plan: &BuildPlan| match &plan.images[0].action {
            ImageAction::Build { cache_mark, .. } => {
                cache_mark.as_ref().map(|mark| (mark.repository.clone(), mark.from.clone()))
            }
            other => panic!("not built: {other:?}"),
        };
        let legacy = plan_with(Builder::Legacy, Some("r:5000"), true);
        assert_eq!(cache_mark(&legacy), Some(("intric/backend".into(), "sha-0123456789ab".into())));
        assert!(legacy.to_string().contains(
            "PUT r:5000 /v2/intric/backend/manifests/inline-cache (the manifest of sha-0123456789ab, or of a copy with the results its inline cache lacks, after POST+PUT of that config)"
        ));
        // Where BuildKit left results out, they go where the image's layer-making steps say.
        let ImageAction::Build { cache_mark: Some(mark), .. } = &legacy.images[2].action else { panic!() };
        let steps: Vec<&str> = mark.steps.iter().map(|step| step.text.as_str()).collect();
        assert_eq!(steps, ["--from=build /a /b"], "the frontend's one COPY");
        assert!(
            cache_mark(&plan_with(Builder::Buildx, Some("r:5000"), true)).is_some(),
            "buildx with the docker driver"
        );
        let mut container_builder = inputs(Builder::Buildx, Some("r:5000"), true);
        container_builder.registry_cache = true;
        assert!(cache_mark(&plan(&container_builder)).is_some(), "its `buildcache` export may be refused");
        assert_eq!(cache_mark(&plan_with(Builder::Legacy, Some("r:5000"), false)), None, "nothing pushed");
    }

    #[test]
    fn without_push_or_registry_images_stay_local() {
        let mut local = inputs(Builder::Legacy, None, false);
        local.login = None;
        let built = plan(&local);
        let (build, push, _) = build_of(&built, "frontend");
        assert!(push.is_none());
        assert!(built.login.is_none());
        assert_eq!(pairs(&build.args, "--tag")[0], "intric/frontend:sha-0123456789ab");
        assert!(!pairs(&build.args, "--build-arg").iter().any(|arg| arg.starts_with("BUILDKIT_INLINE_CACHE")));
        let buildx = plan_with(Builder::Buildx, None, false);
        assert!(build_of(&buildx, "frontend").0.args.contains(&"--load".to_string()));
    }

    fn plan_with(builder: Builder, registry: Option<&str>, push: bool) -> BuildPlan {
        plan(&inputs(builder, registry, push))
    }

    #[test]
    fn unchanged_images_are_retagged_not_built() {
        let mut pushing = inputs(Builder::Legacy, Some("r:5000"), true);
        pushing.unchanged.insert("frontend".to_string());
        let built = plan(&pushing);
        match &built.images[2].action {
            ImageAction::RetagInRegistry(Retag { repository, from, to }) => {
                assert_eq!(repository, "intric/frontend");
                assert_eq!(from, "inputs-cccccccccccccccccccccccc");
                assert_eq!(to, &["sha-0123456789ab", "dev-latest", "qa"]);
            }
            other => panic!("{other:?}"),
        }
        let mut local = inputs(Builder::Legacy, None, false);
        local.unchanged.insert("backend".to_string());
        match &plan(&local).images[0].action {
            ImageAction::RetagLocally(commands) => assert_eq!(
                commands[0].args,
                ["tag", "intric/backend:inputs-aaaaaaaaaaaaaaaaaaaaaaaa", "intric/backend:sha-0123456789ab"]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_password_never_shows_in_the_plan() {
        let built = plan_with(Builder::Legacy, Some("r:5000"), true);
        let shown = format!("{built}{built:?}");
        assert!(!shown.contains("canary-hunter2"), "{shown}");
        assert!(shown.contains("login --username ci --password-stdin r:5000 < <NEXUS_PASSWORD>"), "{shown}");
    }

    #[test]
    fn base_images_from_env_or_through_a_proxy() {
        let env = Env::from([("PYTHON_IMAGE".to_string(), "lab/python:lab".to_string())]);
        assert_eq!(base_images(&env, None), BTreeMap::from([("PYTHON_IMAGE".into(), "lab/python:lab".into())]));
        let proxied = base_images(&env, Some("nexus:8083/"));
        assert_eq!(proxied["PYTHON_IMAGE"], "nexus:8083/library/python:3.10-slim-bullseye");
        assert_eq!(proxied["NGINX_IMAGE"], "nexus:8083/library/nginx:stable-alpine-perl");
        assert_eq!(proxied["NODE_IMAGE"], "nexus:8083/library/node:22-slim");
    }

    #[test]
    fn cache_sources_are_existing_floating_tags() {
        let mut report = report();
        report.image.tags = vec!["sha-0123456789ab".into(), "feature-x".into()];
        let mut existing = vec!["dev-latest".to_string(), "feature-x".to_string(), "sha-0123456789ab".to_string()];
        assert_eq!(
            cache_sources(&report, &existing, "r/intric/backend"),
            ["r/intric/backend:dev-latest", "r/intric/backend:feature-x"]
        );
        existing.push("inline-cache".into());
        assert_eq!(
            cache_sources(&report, &existing, "r/intric/backend"),
            ["r/intric/backend:dev-latest", "r/intric/backend:feature-x", "r/intric/backend:inline-cache"],
            "the newest image with a complete inline cache comes last"
        );
        assert!(cache_sources(&report, &[], "r/intric/backend").is_empty());
    }

    /// A local build (no registry, so no HTTP) of all images, logging below `logs`, with `jobs`,
    /// reusing the local images of `unchanged`.
    pub(crate) fn local_plan(logs: &Path, jobs: usize, unchanged: &[&str]) -> BuildPlan {
        let mut local = inputs(Builder::Legacy, None, false);
        local.login = None;
        local.jobs = jobs;
        local.unchanged.extend(unchanged.iter().map(|name| name.to_string()));
        let mut built = plan(&local);
        built.logs = logs.to_path_buf();
        built
    }

    /// What a recorded command did, for schedules: `build backend`, `inspect worker`.
    fn step(command: &str) -> String {
        let service = ["backend", "worker", "frontend"]
            .into_iter()
            .find(|service| command.contains(&format!("intric/{service}:")))
            .unwrap_or("?");
        let verb =
            ["build", "inspect", "tag"].into_iter().find(|verb| command.contains(&format!(" {verb} "))).unwrap_or("?");
        format!("{verb} {service}")
    }

    #[test]
    fn a_build_runs_exactly_the_commands_it_shows() {
        let dir = tempfile::tempdir().unwrap();
        let built = local_plan(&dir.path().join("logs"), 1, &["frontend"]);
        let runner = Recording::replying(|shown| {
            Ok(if shown.contains(" inspect ") { "sha256:1 1000".into() } else { String::new() })
        });
        let results = built.execute(&runner).unwrap();
        runner.assert_ran_as_shown(&built.to_string());
        let steps: Vec<String> = runner.executed().iter().map(|command| step(command)).collect();
        assert_eq!(
            steps,
            [
                "build backend",
                "inspect backend",
                "build worker",
                "inspect worker",
                "tag frontend",
                "tag frontend",
                "tag frontend",
                "inspect frontend"
            ]
        );
        let outcomes: Vec<(&str, ImageOutcome, Option<u64>)> =
            results.iter().map(|result| (result.service.as_str(), result.outcome, result.size)).collect();
        assert_eq!(
            outcomes,
            [
                ("backend", ImageOutcome::Built, Some(1000)),
                ("worker", ImageOutcome::Built, Some(1000)),
                ("frontend", ImageOutcome::Skipped, Some(1000))
            ]
        );
        assert!(dir.path().join("logs/backend.log").exists(), "each image logs to its own file");
    }

    #[test]
    fn the_worker_is_built_after_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let built = local_plan(dir.path(), 3, &[]);
        // The backend's build takes a while, so that the worker would overtake it if it could.
        let runner = Recording::replying(|shown| {
            if shown.contains("--target backend") {
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(String::new())
        });
        built.execute(&runner).unwrap();
        let steps: Vec<String> = runner.executed().iter().map(|command| step(command)).collect();
        let at = |wanted: &str| steps.iter().position(|step| step == wanted).unwrap();
        assert!(at("build worker") > at("inspect backend"), "{steps:?}");
        assert!(at("build frontend") < at("inspect backend"), "the frontend does not wait: {steps:?}");
    }

    #[test]
    fn a_failed_build_cancels_the_images_not_started_and_names_its_image() {
        let dir = tempfile::tempdir().unwrap();
        let built = local_plan(dir.path(), 1, &[]);
        let runner = Recording::replying(|shown| {
            if shown.contains("--target backend") { Err("exit status: 1".into()) } else { Ok(String::new()) }
        });
        let error = format!("{:#}", built.execute(&runner).unwrap_err());
        assert!(error.starts_with("image backend: "), "{error}");
        assert_eq!(runner.executed().len(), 1, "neither the worker nor the frontend started: {:?}", runner.executed());
    }

    #[test]
    fn jobs_bound_how_many_images_build_at_once() {
        let most_at_once = |jobs: usize| {
            let dir = tempfile::tempdir().unwrap();
            let built = local_plan(dir.path(), jobs, &[]);
            let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let (counter, peak) = (Arc::clone(&running), Arc::clone(&most));
            let runner = Recording::replying(move |_| {
                let now = counter.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(30));
                counter.fetch_sub(1, Ordering::SeqCst);
                Ok(String::new())
            });
            built.execute(&runner).unwrap();
            let steps: Vec<String> = runner.executed().iter().map(|command| step(command)).collect();
            (most.load(Ordering::SeqCst), steps)
        };
        let (one, steps) = most_at_once(1);
        assert_eq!(one, 1);
        assert_eq!(
            steps,
            [
                "build backend",
                "inspect backend",
                "build worker",
                "inspect worker",
                "build frontend",
                "inspect frontend"
            ],
            "one at a time, in plan order"
        );
        assert_eq!(most_at_once(3).0, 2, "the backend and the frontend at once; the worker after the backend");
    }

    #[test]
    fn an_unreachable_registry_leaves_reuse_and_cache_unknown() {
        let mut pushing = inputs(Builder::Legacy, Some("r:5000"), true);
        pushing.cache_from.clear();
        pushing.registry_unreachable = Some("connection refused".into());
        let shown = plan(&pushing).to_string();
        assert!(
            shown.contains("registry: r:5000 unreachable, so what depends on it is unknown: connection refused"),
            "{shown}"
        );
        assert!(
            shown.contains(
                "registry unreachable: would build unless r:5000/intric/backend:inputs-aaaaaaaaaaaaaaaaaaaaaaaa exists"
            ),
            "{shown}"
        );
        let mut local = inputs(Builder::Legacy, Some("r:5000"), false);
        local.registry_unreachable = Some("connection refused".into());
        assert!(plan(&local).to_string().contains("registry unreachable: would build without cache from r:5000"));
    }

    #[test]
    fn cached_steps_are_recognised() {
        let mut steps = Steps::default();
        for line in [
            "#1 [internal] load build definition",
            "#4 [backend 1/5] FROM docker.io/x",
            "#5 [builder 2/5] RUN pip install",
            "#5 CACHED",
            "#6 [backend 3/5] COPY . .",
            "#6 CACHED",
        ] {
            steps.note(line);
        }
        assert!(steps.all_cached());
        steps.note("#7 [backend 4/5] RUN true");
        steps.note("#7 DONE 0.2s");
        assert!(!steps.all_cached());
    }
}
