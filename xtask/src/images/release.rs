//! Releases: promote the images the default branch already built and pushed as
//! `sha-<12 hex>` to a release, without rebuilding them, and tag the commit `vX.Y.Z`.
//!
//! Reads once ([`read_inputs`]): git (HEAD, branch, default branch, clean or not, every tag,
//! the commits since the previous release, whether there is an `origin`), the images the
//! compose file builds (`docker compose config`, as build does: on the published layout the
//! worker runs the backend's image and has none of its own), and the registry (every tag of
//! each image, HEAD's `sha-` manifest, and the digests under the tags the release may put), the
//! registry with one attempt per request, so that a registry that is down is listed with the
//! other problems at once. Plans ([`plan`], pure): the guards, all checked together; the
//! version (given, or `--bump`ed from the newest of git's and the registry's releases); the
//! release tags of each image (`X.Y.Z`, and `X.Y`, `X`, `latest` by the tag engine's
//! [`tags::release_tags`], from git's and the registry's releases); the release lock
//! ([`ReleaseLock`]); the annotated git tag and its release notes. [`prepare`] adds the build
//! task's plan for `--build`.
//!
//! The [`ReleasePlan`] is a [`TaskPlan`]: shown, or run with `--execute`. Running it builds
//! the missing images (if any), takes the release lock on origin (so two releases never
//! interleave; the loser changes nothing and is told who holds it), reads the registry and
//! origin's tags again and plans again under it, then puts each `sha-` manifest's own bytes
//! under every release tag (so the digests are equal and no layer moves): every image's
//! version tag first, then the floating tags, then the git tag, pushed to origin, so a failure
//! part-way leaves no git tag behind; then it releases the lock. Tags already in place are left
//! alone, so running the same release again after a failure finishes it. Each image's progress
//! goes to a `plan::progress` line.
//!
//! With a release registry (`--to-registry`, see [`promotion`]), the `sha-` manifests are read
//! from the development registry and brought into the release registry before the first tag is
//! written there; the release tags, and the "newest" judgement, are the release registry's.
//!
//! `cargo xtask ci --stage release` runs the same code for a tag pipeline, where the git tag
//! exists already ([`TagMode::Existing`]), without the lock.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::ValueEnum;
use semver::{Prerelease, Version};

use crate::adapters::ci_env::Env;
use crate::adapters::git::{self, Commit, Worktree};
use crate::adapters::registry::{Backoff, Credentials, Manifest, Registry, RegistryAddress, Tagged};
use crate::adapters::{clock, current_host, current_user};
use crate::images::build::{self, BuildArgs, BuildPlan};
use crate::images::location::{self, Location};
use crate::images::promotion::{self, PromotionPlan};
use crate::images::release_lock::{Holder, LOCK_REF, REMOTE, ReleaseLock};
use crate::images::services::{ComposeImages, compose_file};
use crate::images::tags::{self, release_version};
use crate::plan::progress::{Progress, TaskProgress};
use crate::plan::runner::{Processes, Runner};
use crate::plan::{Command, TaskPlan, show_or_run};

/// The `--bump` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Bump {
    Major,
    Minor,
    Patch,
    Rc,
}

/// The version asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requested {
    Version(String),
    Bump(Bump),
}

/// Whether this run creates the release's git tag or finds it in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagMode {
    /// `cargo xtask release`: the tag must not exist yet; it is created after the promotion.
    Create,
    /// A tag pipeline (`cargo xtask ci --stage release`): the tag exists and is what is being
    /// built; its name when the CI variables give it (a shallow checkout may lack the tag). The
    /// registry may already hold the release from `release --execute` with the same digests,
    /// which makes the promotion a check that changes nothing.
    Existing(Option<String>),
}

/// One image a release promotes: an image the compose file builds (a service with a `build:`
/// section), so exactly the images `build` pushes; services that run another's image (the
/// published worker runs the backend's) have none of their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseImage {
    /// The compose service that builds it (`backend`).
    pub name: String,
    /// The repository below the registry (`intric/backend`).
    pub repository: String,
}

/// What the registry holds of one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageState {
    pub image: ReleaseImage,
    /// HEAD's `sha-` manifest, `None` when the registry lacks it.
    pub source: Option<Manifest>,
    /// Every tag of the image in the registry: its release tags count for "newest" too.
    pub tags: Vec<String>,
    /// The digest under each tag this release may put (the version tag, `X.Y`, `X`,
    /// `latest`) that exists already.
    pub existing: BTreeMap<String, String>,
}

/// Everything the plan is made from, read once by [`read_inputs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseInputs {
    /// The git repository: where the tag is created and pushed from.
    pub repo: PathBuf,
    pub requested: Requested,
    pub mode: TagMode,
    pub head: git::Head,
    pub branch: Option<String>,
    pub default_branch: Option<String>,
    pub dirty: bool,
    /// Every tag in git (under the release lock, origin's release tags too).
    pub tags: Vec<git::Tag>,
    /// The release the notes start from: the nearest lower release HEAD contains.
    pub previous_release: Option<String>,
    /// The commits since `previous_release` (all, without one), newest first.
    pub commits: Vec<Commit>,
    /// The registry as configured, `None` when neither --registry nor NEXUS_REGISTRY is set.
    pub registry: Option<RegistryAddress>,
    /// Why the registry could not be read, when it could not (unreachable, login refused).
    pub registry_problem: Option<String>,
    /// The images the compose file builds, in build order.
    pub compose: Vec<ReleaseImage>,
    /// Why the compose file could not be read, when it could not.
    pub compose_problem: Option<String>,
    /// One per image of `compose`, when the registry was read.
    pub images: Vec<ImageState>,
    /// With a release registry, what promoting into it moves; the `images`' tags are its.
    pub promotion: Option<PromotionPlan>,
    pub allow_branches: Vec<String>,
    pub build: bool,
    pub push_tag: bool,
    /// Whether the repository has the remote that holds the release lock ([`REMOTE`]).
    pub has_origin: bool,
    /// `--no-lock`: release without the lock (nobody else releases to this registry).
    pub no_lock: bool,
    /// `--break-lock`: replace a lock a killed release left behind.
    pub break_lock: bool,
    /// Who runs this, for the lock's holder (its version is the plan's).
    pub who: Holder,
}

/// One image's promotion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    /// The compose service that builds the image.
    pub name: String,
    /// `intric/<service>`.
    pub repository: String,
    /// HEAD's immutable tag, `sha-<12 hex>`, whose manifest is promoted.
    pub source: String,
    /// That manifest's digest; `None` until `--build` has pushed it.
    pub digest: Option<String>,
    /// The release tags the image gets: the version first, then the floating ones it earns.
    pub tags: Vec<String>,
    /// Of `tags`, those that need a PUT: all but those already on this digest.
    pub put: Vec<String>,
    /// Of `put`, the floating tags that exist on another image now, with its digest: they move,
    /// which a repository with redeploy disabled refuses (checked before the first write).
    pub moves: Vec<(String, String)>,
}

/// The whole release, as data: what `--execute` does and the dry run prints.
pub struct ReleasePlan {
    pub version: Version,
    /// The git tag: `vX.Y.Z`, or the existing tag's name.
    pub git_tag: String,
    /// Whether the git tag is created (false in a tag pipeline).
    pub create_tag: bool,
    pub revision: String,
    /// The git repository the tag is created in.
    pub repo: PathBuf,
    /// Where the release tags are written: the release registry when promoting into one.
    pub registry: RegistryAddress,
    /// The promotion from the development registry, with a release registry.
    pub promotion: Option<PromotionPlan>,
    /// The images to build and push before promoting (with --build, when missing), by name.
    pub build: Vec<String>,
    /// The build task's plan for them, read by [`prepare`] when `build` is not empty.
    pub build_first: Option<BuildPlan>,
    pub promotions: Vec<Promotion>,
    /// The annotated tag's message.
    pub notes: String,
    pub push_tag: Option<Command>,
    /// Things worth knowing that are not problems (which floating tags stay where they are).
    pub remarks: Vec<String>,
    /// Leave the floating tags that cannot move (redeploy disabled) instead of refusing.
    pub skip_immutable_floating: bool,
    /// Keep progress off standard output (for --json).
    pub quiet: bool,
    /// The release lock on origin, taken before any tag moves and released at the end; `None`
    /// with --no-lock and in a tag pipeline.
    pub lock: Option<ReleaseLock>,
    /// What the plan was made from: under the lock, the registry and origin's tags are read
    /// again into these and the release planned again, so that what it moves is decided on
    /// what the registry holds while no other release can change it.
    pub inputs: ReleaseInputs,
}

/// How a release runs: `cargo xtask release`'s options, or a tag pipeline's.
pub struct Options {
    pub repo: PathBuf,
    pub registry: Option<String>,
    /// `--to-registry`: the release registry to promote into (else `$NEXUS_RELEASE_REGISTRY`).
    pub to_registry: Option<String>,
    pub requested: Requested,
    pub mode: TagMode,
    pub allow_branches: Vec<String>,
    pub build: bool,
    pub execute: bool,
    pub push_tag: bool,
    /// Leave the floating tags that a repository with redeploy disabled will not move.
    pub skip_immutable_floating: bool,
    /// Keep progress and the plan off standard output (for --json).
    pub quiet: bool,
    /// Release without the lock on origin.
    pub no_lock: bool,
    /// Replace a release lock that a killed release left on origin.
    pub break_lock: bool,
}

/// What a release did (or would do, in a dry run): for the summary, `--json` and CI outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseReport {
    pub executed: bool,
    pub version: String,
    pub git_tag: String,
    pub revision: String,
    pub registry: String,
    /// Per image: its name (the compose service that builds it), `<registry>/<repository>`, its
    /// digest and its release tags.
    pub images: Vec<(String, String, Option<String>, Vec<String>)>,
}

impl ReleaseReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "executed": self.executed,
            "version": self.version,
            "git_tag": self.git_tag,
            "revision": self.revision,
            "registry": self.registry,
            "images": self.images.iter().map(|(service, image, digest, tags)| serde_json::json!({
                "service": service,
                "image": image,
                "digest": digest,
                "tags": tags,
            })).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for ReleaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let done = if self.executed { "released" } else { "would release" };
        writeln!(f, "{done} {} ({}) from {}", self.version, self.git_tag, &self.revision[..12])?;
        for (_, image, digest, tags) in &self.images {
            writeln!(f, "  {image}@{}: {}", digest.as_deref().unwrap_or("(to be built)"), tags.join(", "))?;
        }
        Ok(())
    }
}

/// Reads the inputs and plans the release (with the build's plan, for `--build`): what
/// `cargo xtask release` and the tag pipeline show or run.
pub fn prepare(runner: &dyn Runner, options: &Options, env: &Env) -> Result<ReleasePlan> {
    let inputs = read_inputs(runner, options, env)?;
    let mut plan = plan(&inputs)?;
    plan.quiet = options.quiet;
    plan.skip_immutable_floating = options.skip_immutable_floating;
    // The build's own plan is read only when it will be needed, and shown with the release's.
    if !plan.build.is_empty() {
        let args = build_args(options, &plan);
        plan.build_first = Some(build::prepare(runner, &args, env, Some(vec![tags::immutable_tag(&plan.revision)]))?);
    }
    Ok(plan)
}

/// Prepares a release and shows it, or with `execute` runs it: the tag pipeline's release.
pub fn release(options: &Options, env: &Env) -> Result<ReleaseReport> {
    let runner = Processes::new();
    let plan = prepare(&runner, options, env)?;
    Ok(show_or_run(&plan, !options.execute, &runner)?.unwrap_or_else(|| plan.outcome(false)))
}

/// The build task's options for building and pushing HEAD's missing images: a dry run when
/// the release is one, quiet when the release prints JSON.
fn build_args(options: &Options, plan: &ReleasePlan) -> BuildArgs {
    BuildArgs {
        location: Location { repo: Some(options.repo.clone()), registry: Some(plan.images_registry().to_string()) },
        services: plan.build.clone(),
        push: true,
        dry_run: !options.execute,
        json: options.quiet,
        ..BuildArgs::default()
    }
}

/// Reads git, the compose file's image list and the registry once. The version is worked out
/// here already (by the same pure functions the plan uses, from git's and the registry's
/// release tags) because the release notes' starting point depends on it.
///
/// The registry is read without retries: a registry that is down is one of the problems the
/// plan lists at once with the others, not a wait. A registry or compose file that cannot be
/// read is recorded as such; the plan refuses with it.
pub fn read_inputs(runner: &dyn Runner, options: &Options, env: &Env) -> Result<ReleaseInputs> {
    let repo = git::Repo::open(runner, &options.repo)?;
    let head = repo.head()?;
    let tags = repo.tags()?;
    let dirty = matches!(repo.worktree()?, Worktree::Dirty { .. });
    let (compose, compose_problem) = match read_compose(runner, &options.repo, env) {
        Ok(compose) => (compose, None),
        Err(error) => (Vec::new(), Some(format!("{error:#}"))),
    };

    let registry = location::registry_setting(options.registry.as_deref(), env)?;
    // A release registry that is the registry itself is a release in one registry.
    let to_registry = promotion::release_registry(options.to_registry.as_deref(), env)?
        .filter(|target| Some(target) != registry.as_ref());
    let (images, promotion, registry_problem) = match &registry {
        Some(address) => {
            let read = || -> Result<(Vec<ImageState>, Option<PromotionPlan>)> {
                let client = Registry::new(address.clone(), Credentials::find(address, runner)?, Backoff::NONE);
                let release_client = match &to_registry {
                    Some(target) => {
                        Some(Registry::new(target.clone(), Credentials::find_release(target, runner)?, Backoff::NONE))
                    }
                    None => None,
                };
                // With no image list (the compose file's problem is listed), whether the
                // registries answer is still worth listing with the rest.
                if compose.is_empty() {
                    client.check_access()?;
                    release_client.as_ref().map_or(Ok(()), Registry::check_access)?;
                    return Ok((Vec::new(), None));
                }
                // The release tags are the release registry's, when promoting into one.
                let tagged = release_client.as_ref().unwrap_or(&client);
                let source = tags::immutable_tag(&head.id);
                let images = read_images(&client, tagged, &compose, &source, &options.requested, &tags)?;
                let promotion = match &release_client {
                    Some(target) => Some(promotion::read(
                        &client,
                        target,
                        images.iter().map(|image| (image.image.repository.clone(), image.source.as_ref())),
                    )?),
                    None => None,
                };
                Ok((images, promotion))
            };
            match read() {
                Ok((images, promotion)) => (images, promotion, None),
                Err(error) => {
                    let which = match &to_registry {
                        Some(target) => format!("registry {address} or {target} is"),
                        None => format!("registry {address} is"),
                    };
                    (Vec::new(), None, Some(format!("{which} unreachable or refuses us: {error:#}")))
                }
            }
        }
        None => (Vec::new(), None, None),
    };
    let mut previous_release = None;
    if let Ok(version) = target_version(&options.requested, &released(&tags, &images)) {
        for tag in previous_candidates(&version, &tags) {
            if repo.is_ancestor(&tag.commit, &head.id)? {
                previous_release = Some(tag.clone());
                break;
            }
        }
    }
    let commits = repo.commit_log(&head.id, previous_release.as_ref().map(|tag| tag.commit.as_str()))?;
    let has_origin = git::remotes(runner, &options.repo)?.iter().any(|remote| remote == REMOTE);
    Ok(ReleaseInputs {
        repo: options.repo.clone(),
        requested: options.requested.clone(),
        mode: options.mode.clone(),
        branch: repo.branch()?,
        default_branch: repo.default_branch(),
        dirty,
        previous_release: previous_release.map(|tag| tag.name),
        commits,
        registry,
        registry_problem,
        compose,
        compose_problem,
        images,
        promotion,
        allow_branches: options.allow_branches.clone(),
        build: options.build,
        push_tag: options.push_tag,
        has_origin,
        no_lock: options.no_lock,
        break_lock: options.break_lock,
        who: Holder {
            version: String::new(),
            user: current_user(),
            host: current_host(),
            pid: std::process::id(),
            since: clock::rfc3339(clock::now_unix()),
            process_space: crate::adapters::current_process_space(),
        },
        head,
        tags,
    })
}

/// The images the compose file of `repo` builds (see [`ReleaseImage`]).
fn read_compose(runner: &dyn Runner, repo: &Path, env: &Env) -> Result<Vec<ReleaseImage>> {
    let file = compose_file(repo, None)?;
    let images = ComposeImages::read(runner, &file, env, repo)?;
    Ok(images.built.into_iter().map(|image| ReleaseImage { name: image.name, repository: image.repository }).collect())
}

/// What the registry holds of each image: HEAD's `source` manifest, every tag, and the digest
/// of each existing tag the release may put, so that the plan knows before the first write
/// what each write does. Which tags those are depends on the version, which `--bump` takes
/// from git's release tags (`git_tags`) and the registry's, so the tag lists come first. The
/// `source` manifests are `client`'s; the tags are `tagged`'s, which is the release registry
/// when promoting into one, else `client` too.
fn read_images(
    client: &Registry,
    tagged: &Registry,
    compose: &[ReleaseImage],
    source: &str,
    requested: &Requested,
    git_tags: &[git::Tag],
) -> Result<Vec<ImageState>> {
    let mut images = Vec::new();
    for image in compose {
        let tags = tagged.tags(&image.repository)?;
        let source = client.manifest(&image.repository, source)?;
        images.push(ImageState { image: image.clone(), source, tags, existing: BTreeMap::new() });
    }
    let candidates: Vec<String> = match target_version(requested, &released(git_tags, &images)) {
        Ok(version) => vec![
            tags::version_tag(&version),
            format!("{}.{}", version.major, version.minor),
            version.major.to_string(),
            "latest".to_string(),
        ],
        Err(_) => Vec::new(),
    };
    for image in &mut images {
        for tag in candidates.iter().filter(|tag| image.tags.contains(tag)) {
            if let Some(digest) = tagged.manifest_digest(&image.image.repository, tag)? {
                image.existing.insert(tag.clone(), digest);
            }
        }
    }
    Ok(images)
}

/// Every release so far: git's release tags and the registry's (a release pushed from another
/// clone, or whose git tag was never pushed, still counts), each version once.
fn released(git_tags: &[git::Tag], images: &[ImageState]) -> Vec<Version> {
    let mut released: Vec<Version> = Vec::new();
    let registry = images.iter().flat_map(|image| &image.tags);
    for version in git_tags.iter().map(|tag| &tag.name).chain(registry).filter_map(|tag| release_version(tag)) {
        if !released.iter().any(|other| other.cmp_precedence(&version) == Ordering::Equal) {
            released.push(version);
        }
    }
    released
}

/// Release tags lower than `version` that the notes may start from, highest first. For a
/// stable release pre-releases don't count (1.1.0's notes cover everything since 1.0.x, rcs
/// included); for a pre-release they do (rc.2's notes start at rc.1).
fn previous_candidates<'a>(version: &Version, tags: &'a [git::Tag]) -> Vec<&'a git::Tag> {
    let mut candidates: Vec<(Version, &git::Tag)> = tags
        .iter()
        .filter_map(|tag| release_version(&tag.name).map(|other| (other, tag)))
        .filter(|(other, _)| other.cmp_precedence(version) == Ordering::Less)
        .filter(|(other, _)| !version.pre.is_empty() || other.pre.is_empty())
        .collect();
    candidates.sort_by(|a, b| b.0.cmp_precedence(&a.0));
    candidates.into_iter().map(|(_, tag)| tag).collect()
}

/// The version to release: the one named (a leading `v` allowed), or the `--bump` of the
/// highest existing release. Pure.
pub fn target_version(requested: &Requested, existing: &[Version]) -> std::result::Result<Version, String> {
    match requested {
        Requested::Version(text) => release_version(text).ok_or_else(|| {
            format!(
                "`{text}` is not a semver version: write X.Y.Z or vX.Y.Z, optionally with a pre-release (1.2.0-rc.1)"
            )
        }),
        Requested::Bump(bump) => Ok(bumped(*bump, existing)),
    }
}

/// The `--bump` rules (see `release --help`). With no release at all, the base is 0.0.0.
pub fn bumped(bump: Bump, existing: &[Version]) -> Version {
    let stable = existing.iter().filter(|version| version.pre.is_empty()).max_by(|a, b| a.cmp_precedence(b));
    let base = stable.cloned().unwrap_or_else(|| Version::new(0, 0, 0));
    match bump {
        Bump::Major => Version::new(base.major + 1, 0, 0),
        Bump::Minor => Version::new(base.major, base.minor + 1, 0),
        Bump::Patch => Version::new(base.major, base.minor, base.patch + 1),
        Bump::Rc => {
            let highest = existing.iter().max_by(|a, b| a.cmp_precedence(b));
            let (mut next, number) = match highest.filter(|version| !version.pre.is_empty()) {
                Some(pre) => {
                    let rc = pre.pre.as_str().strip_prefix("rc.").and_then(|number| number.parse::<u64>().ok());
                    (Version::new(pre.major, pre.minor, pre.patch), rc.map_or(1, |number| number + 1))
                }
                None => (Version::new(base.major, base.minor, base.patch + 1), 1),
            };
            next.pre = Prerelease::new(&format!("rc.{number}")).expect("rc.N is a valid pre-release");
            next
        }
    }
}

/// Why `version` may not follow the `existing` releases, if it may not.
///
/// The rule is "greater than every existing release of its `X.Y` line", and a version that
/// starts a new line must be greater than every stable release. Read literally, "greater than
/// every existing release" would forbid backports, yet a backport (1.0.1 after 1.1.0) is
/// exactly what the floating tags are designed for (it moves `1.0` only); so the comparison is
/// within the line, and what it still refuses is going backwards on a line (1.0.1 after 1.0.2,
/// 1.1.0-rc.3 after 1.1.0) or opening a line below the newest release (1.0.0 after 1.1.0 when
/// no 1.0.x exists, usually a typo). Pre-releases of a version sort before it, so 1.1.0-rc.1,
/// rc.2 and then 1.1.0 is in order. An equal version is the "already exists" guard's to report.
pub fn ordering_problem(version: &Version, existing: &[Version]) -> Option<String> {
    let others = || existing.iter().filter(|other| other.cmp_precedence(version) != Ordering::Equal);
    let newest_of_line = others()
        .filter(|other| other.major == version.major && other.minor == version.minor)
        .max_by(|a, b| a.cmp_precedence(b));
    if let Some(newest) = newest_of_line {
        return (version.cmp_precedence(newest) == Ordering::Less).then(|| {
            format!(
                "{version} is lower than {newest}, already released on the {}.{} line: releases of a line only go up",
                version.major, version.minor
            )
        });
    }
    let newest_stable = others().filter(|other| other.pre.is_empty()).max_by(|a, b| a.cmp_precedence(b))?;
    (version.cmp_precedence(newest_stable) == Ordering::Less).then(|| {
        format!(
            "{version} would start the {}.{} line below the newest release {newest_stable}: a new line must be \
             above every release (a backport continues an existing line, e.g. X.Y.1 after X.Y.0)",
            version.major, version.minor
        )
    })
}

/// Whether `branch` matches the glob `pattern`: `*` matches any run of characters (`/`
/// included, so `release/*` matches `release/1.4`), `?` any one character.
pub fn glob_matches(pattern: &str, branch: &str) -> bool {
    fn matches(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|skip| matches(rest, &text[skip..])),
            Some(('?', rest)) => !text.is_empty() && matches(rest, &text[1..]),
            Some((c, rest)) => text.first() == Some(c) && matches(rest, &text[1..]),
        }
    }
    let (pattern, branch): (Vec<char>, Vec<char>) = (pattern.chars().collect(), branch.chars().collect());
    matches(&pattern, &branch)
}

/// Plans the release, or fails with every guard's problem listed. Pure.
pub fn plan(inputs: &ReleaseInputs) -> Result<ReleasePlan> {
    let mut problems = Vec::new();
    let short = &inputs.head.id[..12];
    let existing: Vec<(Version, &git::Tag)> =
        inputs.tags.iter().filter_map(|tag| release_version(&tag.name).map(|version| (version, tag))).collect();
    // "Newest", and where `--bump` starts, are judged from the registry's release tags too.
    let released = released(&inputs.tags, &inputs.images);
    let version = match target_version(&inputs.requested, &released) {
        Ok(version) => Some(version),
        Err(problem) => {
            problems.push(problem);
            None
        }
    };

    let mut git_tag = String::new();
    let mut git_tag_exists = false;
    let mut release_tags = Vec::new();
    if let Some(version) = &version {
        // A tag pipeline's tag exists already: `release` checked its order when it made it, and
        // a rerun of an older tag's pipeline (an rc after its final release) must not fail;
        // its floating tags come from every git tag, so it moves nothing it should not.
        if inputs.mode == TagMode::Create
            && let Some(problem) = ordering_problem(version, &released)
        {
            problems.push(problem);
        }
        let same: Vec<&git::Tag> = existing
            .iter()
            .filter(|(other, _)| other.cmp_precedence(version) == Ordering::Equal)
            .map(|(_, tag)| *tag)
            .collect();
        git_tag_exists = !same.is_empty();
        // The loser of two releases of one version at once, run again: nothing is left to do.
        let version_tag = tags::version_tag(version);
        let on_head = |image: &ImageState| {
            image.source.as_ref().is_some_and(|source| image.existing.get(&version_tag) == Some(&source.digest))
        };
        if inputs.mode == TagMode::Create
            && same.iter().any(|tag| tag.commit == inputs.head.id)
            && !inputs.images.is_empty()
            && inputs.images.iter().all(on_head)
        {
            bail!(
                "{version} is already released from {short}: git tag {} and {version_tag} of every image in the \
                 registry hold HEAD's images; nothing to do",
                same[0].name
            );
        }
        git_tag = match &inputs.mode {
            TagMode::Create => {
                for tag in &same {
                    problems.push(format!(
                        "git tag {} already exists (on {}): release tags are never moved; release a new version",
                        tag.name,
                        &tag.commit[..12]
                    ));
                }
                format!("v{version}")
            }
            TagMode::Existing(name) => {
                for tag in same.iter().filter(|tag| tag.commit != inputs.head.id) {
                    problems.push(format!(
                        "git tag {} names {} but HEAD is {short}: check out the tagged commit",
                        tag.name,
                        &tag.commit[..12]
                    ));
                }
                let on_head = same.iter().find(|tag| tag.commit == inputs.head.id).map(|tag| tag.name.clone());
                name.clone().or(on_head).unwrap_or_else(|| format!("v{version}"))
            }
        };
        // The floating tags follow the releases, as a build of the tagged commit would get them
        // from the tag engine, with the registry's release tags counted too.
        let all: Vec<Version> = released.iter().cloned().chain(std::iter::once(version.clone())).collect();
        match tags::release_tags(version, &all) {
            Ok(tags) => release_tags = tags,
            Err(error) => problems.push(format!("{error:#}")),
        }
    }

    if inputs.dirty {
        problems.push(format!(
            "the working tree is dirty: a release must be exactly commit {short}; commit or stash the changes"
        ));
    }
    if inputs.mode == TagMode::Create {
        let default = inputs.default_branch.as_deref().unwrap_or("main");
        match &inputs.branch {
            None => problems.push(format!(
                "HEAD is detached, not on a branch: check out {default}{}",
                allowed_list(&inputs.allow_branches)
            )),
            Some(branch)
                if branch != default && !inputs.allow_branches.iter().any(|glob| glob_matches(glob, branch)) =>
            {
                problems.push(format!(
                    "branch {branch} is not allowed to release: release from {default}{}, or pass --allow-branch",
                    allowed_list(&inputs.allow_branches)
                ))
            }
            Some(_) => {}
        }
    }

    let registry = inputs.registry.as_ref().map_or_else(String::new, ToString::to_string);
    // Where the release tags are: the release registry, when promoting into one.
    let tag_registry = inputs.promotion.as_ref().map_or_else(|| registry.clone(), |p| p.target.to_string());
    if inputs.registry.is_none() {
        problems.push("no registry: set NEXUS_REGISTRY or pass --registry HOST[:PORT]".to_string());
    }
    problems.extend(inputs.registry_problem.clone());
    problems.extend(inputs.compose_problem.clone());
    let lock = match (&inputs.mode, inputs.has_origin, inputs.no_lock) {
        (TagMode::Create, true, false) => version.as_ref().map(|version| ReleaseLock {
            repo: inputs.repo.clone(),
            head: inputs.head.id.clone(),
            holder: Holder { version: version.to_string(), ..inputs.who.clone() },
            break_lock: inputs.break_lock,
        }),
        (TagMode::Create, false, false) => {
            problems.push(format!(
                "{} has no remote {REMOTE} to hold the release lock ({LOCK_REF}) that keeps two releases from \
                 interleaving: add it (`git remote add {REMOTE} URL`), or pass --no-lock if no other release can run \
                 against this registry meanwhile",
                inputs.repo.display()
            ));
            None
        }
        // A tag pipeline runs after `release` pushed the tag, and CI tokens often may not push.
        _ => None,
    };
    let mut resumed = Vec::new();
    let source = tags::immutable_tag(&inputs.head.id);
    let version_tag = release_tags.first().cloned();
    let mut build = Vec::new();
    let mut promotions = Vec::new();
    for image in &inputs.images {
        let repository = image.image.repository.clone();
        let digest = image.source.as_ref().map(|manifest| manifest.digest.clone());
        if digest.is_none() {
            if inputs.build {
                build.push(image.image.name.clone());
            } else {
                problems.push(format!(
                    "{registry}/{repository}:{source} is not in the registry: the main stage pushes it \
                     (`cargo xtask build --push` on {short}); or pass --build"
                ));
            }
        }
        let mut put = Vec::new();
        let mut moves = Vec::new();
        for tag in &release_tags {
            let Some(existing) = image.existing.get(tag) else {
                put.push(tag.clone());
                continue;
            };
            let same_image = digest.as_ref() == Some(existing);
            if Some(tag) != version_tag.as_ref() {
                // A floating tag: left alone where it is already right, else it moves.
                if !same_image {
                    put.push(tag.clone());
                    moves.push((tag.clone(), existing.clone()));
                }
                continue;
            }
            match &inputs.mode {
                // A tag pipeline after `release --execute`: the version tag is already right.
                TagMode::Existing(_) if same_image => {}
                TagMode::Existing(_) => problems.push(format!(
                    "{tag_registry}/{repository}:{tag} already exists as {existing}, which is not HEAD's image {}: \
                     release tags are immutable",
                    digest.as_deref().unwrap_or("(missing)")
                )),
                // An earlier run of this release stopped before tagging git: it is finished now.
                TagMode::Create if same_image && !git_tag_exists => resumed.push(format!("{repository}:{tag}")),
                TagMode::Create => problems.push(format!(
                    "{tag_registry}/{repository}:{tag} already exists in the registry ({existing}): release tags are \
                     immutable; release a new version"
                )),
            }
        }
        promotions.push(Promotion {
            name: image.image.name.clone(),
            repository,
            source: source.clone(),
            digest,
            tags: release_tags.clone(),
            put,
            moves,
        });
    }

    if !problems.is_empty() {
        let what = version.as_ref().map_or_else(|| "release".to_string(), |version| format!("release {version}"));
        bail!("cannot {what}:\n  - {}", problems.join("\n  - "));
    }
    let version = version.expect("no problems means a version");
    let registry = match &inputs.promotion {
        Some(promotion) => promotion.target.clone(),
        None => inputs.registry.clone().expect("no problems means a registry"),
    };
    let mut remarks = Vec::new();
    if !resumed.is_empty() {
        remarks.push(format!(
            "finishing an earlier run of this release: {} already hold HEAD's images, and tags already in place \
             are left alone",
            resumed.join(", ")
        ));
    }
    let floating: Vec<&str> = ["latest"].into_iter().filter(|tag| !release_tags.iter().any(|own| own == tag)).collect();
    if !floating.is_empty() {
        remarks.push(format!("{version} is not the newest stable release, so `latest` stays where it is"));
    }
    let notes = release_notes(&version, inputs.previous_release.as_deref(), &inputs.commits);
    // A tag pipeline runs because the tag was pushed already. Under the lock the tag is always
    // pushed, before the lock is released: the next release judges "newest" and "exists" from
    // origin's tags, and git and the registry must agree when it looks.
    let push_tag = ((inputs.push_tag || lock.is_some()) && inputs.mode == TagMode::Create)
        .then(|| push_tag_command(&inputs.repo, &git_tag));
    Ok(ReleasePlan {
        create_tag: inputs.mode == TagMode::Create,
        git_tag,
        revision: inputs.head.id.clone(),
        repo: inputs.repo.clone(),
        registry,
        promotion: inputs.promotion.clone(),
        build,
        build_first: None,
        promotions,
        notes,
        push_tag,
        remarks,
        skip_immutable_floating: false,
        quiet: false,
        lock,
        inputs: inputs.clone(),
        version,
    })
}

fn allowed_list(globs: &[String]) -> String {
    if globs.is_empty() { String::new() } else { format!(" or a branch matching {}", globs.join(", ")) }
}

/// The `git push` of the new tag.
pub fn push_tag_command(repo: &Path, tag: &str) -> Command {
    Command::new("git")
        .arg("-C")
        .arg(repo.display().to_string())
        .args(["push", "origin", &format!("refs/tags/{tag}")])
        .hint(format!("pushing git tag {tag} to origin failed; the images are promoted, push the tag by hand"))
}

/// Conventional-commit types and their sections in the release notes, in order.
const SECTIONS: [(&str, &str); 5] = [
    ("feat", "Features"),
    ("fix", "Fixes"),
    ("perf", "Performance"),
    ("refactor", "Refactoring"),
    ("docs", "Documentation"),
];

/// The annotated tag's message: a title, then the commits since `previous`, grouped by
/// conventional-commit type (`feat(scope)!: subject`). Breaking changes (`!` or a
/// `BREAKING CHANGE:` footer) come first; commits of other types, or not in that form, go
/// under "Other" with their subject as written. Pure.
pub fn release_notes(version: &Version, previous: Option<&str>, commits: &[Commit]) -> String {
    let mut breaking = Vec::new();
    let mut sections: Vec<Vec<String>> = vec![Vec::new(); SECTIONS.len()];
    let mut other = Vec::new();
    for commit in commits {
        let short = &commit.id[..commit.id.len().min(12)];
        match conventional(&commit.subject) {
            Some((kind, scope, bang, text)) => {
                let scope = scope.map(|scope| format!("{scope}: ")).unwrap_or_default();
                let line = format!("- {scope}{text} ({short})");
                let is_breaking =
                    bang || commit.body.contains("BREAKING CHANGE:") || commit.body.contains("BREAKING-CHANGE:");
                match SECTIONS.iter().position(|(name, _)| *name == kind) {
                    _ if is_breaking => breaking.push(line),
                    Some(index) => sections[index].push(line),
                    None => other.push(format!("- {} ({short})", commit.subject)),
                }
            }
            None => other.push(format!("- {} ({short})", commit.subject)),
        }
    }
    let mut notes = format!("Release {version}\n\n");
    let count = commits.len();
    let plural = if count == 1 { "" } else { "s" };
    match previous {
        Some(previous) => notes.push_str(&format!("{count} commit{plural} since {previous}.\n")),
        None => notes.push_str(&format!("{count} commit{plural}, the first release.\n")),
    }
    let groups = std::iter::once(("Breaking changes", breaking))
        .chain(SECTIONS.iter().map(|(_, title)| *title).zip(sections))
        .chain(std::iter::once(("Other", other)));
    for (title, lines) in groups {
        if !lines.is_empty() {
            notes.push_str(&format!("\n{title}\n{}\n", lines.join("\n")));
        }
    }
    notes
}

/// Splits a conventional-commit subject `type(scope)!: text` into its parts.
fn conventional(subject: &str) -> Option<(String, Option<&str>, bool, &str)> {
    let (head, text) = subject.split_once(": ")?;
    let (head, bang) = match head.strip_suffix('!') {
        Some(head) => (head, true),
        None => (head, false),
    };
    let (kind, scope) = match head.split_once('(') {
        Some((kind, scope)) => (kind, Some(scope.strip_suffix(')')?)),
        None => (head, None),
    };
    let valid = !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphabetic());
    (valid && !text.trim().is_empty()).then(|| (kind.to_ascii_lowercase(), scope, bang, text.trim()))
}

impl fmt::Display for ReleasePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "release {} of {}", self.version, &self.revision[..12])?;
        if !self.build.is_empty() {
            writeln!(f, "build and push first (missing from the registry): {}", self.build.join(", "))?;
        }
        if let Some(lock) = &self.lock {
            let shown = lock.shown();
            writeln!(
                f,
                "take the release lock on {REMOTE} before any tag moves (refused, changing nothing, while another release holds it):"
            )?;
            writeln!(f, "  {}\n  {}", shown[0], shown[1])?;
            writeln!(
                f,
                "under the lock, read the registry's tags and {REMOTE}'s release tags again (git ls-remote) and plan again:"
            )?;
        }
        match &self.promotion {
            Some(copy) => writeln!(f, "{copy}, then the sha- manifests' own bytes, so the digests stay:")?,
            None => writeln!(f, "promote in {} (the sha- manifests' own bytes, so the digests stay):", self.registry)?,
        }
        for promotion in &self.promotions {
            let digest = promotion.digest.as_deref().unwrap_or("to be built");
            let tags = promotion.tags.join(", ");
            match &self.promotion {
                Some(copy) => writeln!(
                    f,
                    "  {}/{}:{} ({digest}) -> {}/{}: {tags}; {}",
                    copy.source,
                    promotion.repository,
                    promotion.source,
                    copy.target,
                    promotion.repository,
                    copy.transfer_line(&promotion.repository)
                )?,
                None => writeln!(f, "  {}:{} ({digest}) -> {tags}", promotion.repository, promotion.source)?,
            }
        }
        writeln!(f, "in this order, release tags first (a tag already in place is left alone):")?;
        for (index, tag) in self.writes() {
            writeln!(f, "  PUT /v2/{}/manifests/{tag}", self.promotions[index].repository)?;
        }
        let moves: Vec<String> = self
            .promotions
            .iter()
            .flat_map(|promotion| {
                promotion.moves.iter().map(move |(tag, from)| format!("{}:{tag} (now {from})", promotion.repository))
            })
            .collect();
        if !moves.is_empty() {
            writeln!(
                f,
                "floating tags that move from another image, checked before the first write (a repository with \
                 redeploy disabled refuses them{}): {}",
                if self.skip_immutable_floating { "; --skip-immutable-floating leaves those" } else { "" },
                moves.join(", ")
            )?;
        }
        if self.create_tag {
            writeln!(f, "then git: annotated tag {} on {}", self.git_tag, &self.revision[..12])?;
        } else {
            writeln!(f, "git: tag {} exists on {}", self.git_tag, &self.revision[..12])?;
        }
        if let Some(push) = &self.push_tag {
            writeln!(f, "git: {push}")?;
        }
        if let Some(lock) = &self.lock {
            writeln!(f, "then release the lock, if it is still ours:\n  {}", lock.shown()[2])?;
        }
        for remark in &self.remarks {
            writeln!(f, "note: {remark}")?;
        }
        writeln!(f, "release notes:")?;
        for line in self.notes.lines() {
            writeln!(f, "  | {line}")?;
        }
        if let Some(build) = &self.build_first {
            write!(f, "build first:\n{build}")?;
        }
        Ok(())
    }
}

/// What a release changes besides running processes: the registry's tags and git's.
/// [`Live`] is the real one; unit tests record the calls instead.
pub trait ReleaseTarget {
    /// HEAD's manifest to promote, read where it was pushed.
    fn manifest(&self, repository: &str, reference: &str) -> Result<Option<Manifest>>;
    /// Brings `manifest` into the registry the tags are written in when it was read from
    /// another (a promotion into a release registry: see [`promotion::bring`]), so that the
    /// tags can name it; what was done, for the image's progress line. Otherwise nothing.
    fn bring(&self, _repository: &str, _manifest: &Manifest) -> Result<Option<String>> {
        Ok(None)
    }
    fn put_manifest(&self, repository: &str, tag: &str, manifest: &Manifest) -> Result<Tagged>;
    /// Whether the existing tag may move (see [`Registry::allows_redeploy`]).
    fn allows_redeploy(&self, repository: &str, tag: &str) -> Result<bool>;
    fn create_git_tag(&self, name: &str, revision: &str, notes: &str) -> Result<()>;
    /// What the registry holds of `compose`'s images now (see [`read_images`]): read again
    /// under the release lock.
    fn images(
        &self,
        compose: &[ReleaseImage],
        source: &str,
        requested: &Requested,
        git_tags: &[git::Tag],
    ) -> Result<Vec<ImageState>>;
}

/// The registry (retrying transient failures) and the git repository.
struct Live<'a> {
    registry: Registry,
    /// The development registry the images are promoted from, with a release registry.
    source: Option<Registry>,
    repo: PathBuf,
    runner: &'a dyn Runner,
}

impl ReleaseTarget for Live<'_> {
    fn manifest(&self, repository: &str, reference: &str) -> Result<Option<Manifest>> {
        self.source.as_ref().unwrap_or(&self.registry).manifest(repository, reference)
    }

    fn bring(&self, repository: &str, manifest: &Manifest) -> Result<Option<String>> {
        let Some(source) = &self.source else { return Ok(None) };
        let brought = promotion::bring(source, &self.registry, repository, manifest).with_context(|| {
            format!("promoting {}/{repository}@{} failed: no tag was written", source.address(), manifest.digest)
        })?;
        Ok(Some(format!("into {}: {brought}", self.registry.address())))
    }

    fn put_manifest(&self, repository: &str, tag: &str, manifest: &Manifest) -> Result<Tagged> {
        self.registry.put_manifest(repository, tag, manifest)
    }

    fn allows_redeploy(&self, repository: &str, tag: &str) -> Result<bool> {
        self.registry.allows_redeploy(repository, tag)
    }

    fn create_git_tag(&self, name: &str, revision: &str, notes: &str) -> Result<()> {
        git::Repo::open(self.runner, &self.repo)?.create_annotated_tag(name, revision, notes)
    }

    fn images(
        &self,
        compose: &[ReleaseImage],
        source: &str,
        requested: &Requested,
        git_tags: &[git::Tag],
    ) -> Result<Vec<ImageState>> {
        read_images(
            self.source.as_ref().unwrap_or(&self.registry),
            &self.registry,
            compose,
            source,
            requested,
            git_tags,
        )
    }
}

impl TaskPlan for ReleasePlan {
    type Output = ReleaseReport;

    /// Builds the missing images if any (before the lock: building takes minutes and moves no
    /// release tag), then promotes under the release lock (see [`ReleasePlan::serialized`]).
    fn execute(&self, runner: &dyn Runner) -> Result<ReleaseReport> {
        if let Some(build_plan) = &self.build_first {
            build_plan.execute(runner).context("building the missing images failed")?;
        }
        let (registry, source) = match &self.promotion {
            Some(promotion) => {
                let (source, target) = promotion.connect(runner)?;
                (target, Some(source))
            }
            None => (Registry::connect(self.registry.clone(), runner)?, None),
        };
        let live = Live { registry, source, repo: self.repo.clone(), runner };
        self.serialized(runner, &live)
    }
}

impl ReleasePlan {
    /// Where HEAD's images are read from (and `--build` pushes them): the development
    /// registry when promoting into a release registry, else the one registry.
    pub fn images_registry(&self) -> &RegistryAddress {
        self.promotion.as_ref().map_or(&self.registry, |promotion| &promotion.source)
    }

    /// Takes the release lock, plans again on what the registry and origin hold now, promotes
    /// that, and releases the lock whatever happened. Without a lock (--no-lock, a tag
    /// pipeline), promotes as planned.
    pub fn serialized(&self, runner: &dyn Runner, target: &dyn ReleaseTarget) -> Result<ReleaseReport> {
        let Some(lock) = &self.lock else { return self.promote(runner, target) };
        let held = lock.acquire(runner)?;
        let result = self.replanned(runner, target).and_then(|plan| plan.promote(runner, target));
        match (held.release(runner), result) {
            (Ok(()), result) => result,
            // The release is done; only the lock is left, which the warning says how to remove.
            (Err(unlocked), Ok(report)) => {
                eprintln!("warning: {unlocked:#}");
                Ok(report)
            }
            (Err(unlocked), Err(failed)) => Err(anyhow!("{failed:#}\nAlso, {unlocked:#}")),
        }
    }

    /// The plan made again from the registry's tags and origin's release tags as they are now,
    /// under the lock, for the version planned before (a `--bump` does not move on to another).
    fn replanned(&self, runner: &dyn Runner, target: &dyn ReleaseTarget) -> Result<ReleasePlan> {
        let mut inputs = self.inputs.clone();
        inputs.requested = Requested::Version(self.version.to_string());
        // Built already, if it had to be; the lock is held, and the tag is pushed before it goes.
        inputs.build = false;
        inputs.no_lock = true;
        inputs.push_tag = self.push_tag.is_some();
        for remote in git::remote_refs(runner, &inputs.repo, REMOTE, &["refs/tags/*"])? {
            let Some(name) = remote.name.strip_prefix("refs/tags/") else { continue };
            if !inputs.tags.iter().any(|tag| tag.name == name) {
                inputs.tags.push(git::Tag { name: name.to_string(), commit: remote.commit().to_string() });
            }
        }
        let source = tags::immutable_tag(&inputs.head.id);
        inputs.images = target.images(&inputs.compose, &source, &inputs.requested, &inputs.tags)?;
        let mut again = plan(&inputs).map_err(|error| {
            anyhow!(
                "{error:#}\n(found under the release lock, reading the registry and {REMOTE}'s tags again; nothing was \
                 changed)"
            )
        })?;
        again.quiet = self.quiet;
        again.skip_immutable_floating = self.skip_immutable_floating;
        let writes = |plan: &ReleasePlan| -> Vec<String> {
            plan.writes().iter().map(|(index, tag)| format!("{}:{tag}", plan.promotions[*index].repository)).collect()
        };
        if writes(&again) != writes(self) {
            again.remarks.push(format!(
                "the registry changed since the release was planned; planned again under the lock, it writes {}",
                writes(&again).join(", ")
            ));
        }
        Ok(again)
    }

    /// The registry writes, in order: every image's version tag (immutable) first, then the
    /// floating tags. A failure part-way then leaves no floating tag pointing at a release
    /// whose version tag is missing somewhere, and git is tagged only after all of them.
    pub fn writes(&self) -> Vec<(usize, &str)> {
        let is_version = |promotion: &Promotion, tag: &str| promotion.tags.first().is_some_and(|first| first == tag);
        let all =
            || self.promotions.iter().enumerate().flat_map(|(index, p)| p.put.iter().map(move |tag| (index, p, tag)));
        let immutable = all().filter(|(_, promotion, tag)| is_version(promotion, tag));
        let floating = all().filter(|(_, promotion, tag)| !is_version(promotion, tag));
        immutable.chain(floating).map(|(index, _, tag)| (index, tag.as_str())).collect()
    }

    /// Promotes: reads each `sha-` manifest (it must still be the planned one), puts every tag in
    /// [`ReleasePlan::writes`] order, then creates the git tag and, if asked, pushes it. Tags
    /// already in place are left alone, so running a release again after a failure finishes it;
    /// the error after a failure says so, and what was done.
    pub fn promote(&self, runner: &dyn Runner, target: &dyn ReleaseTarget) -> Result<ReleaseReport> {
        if !self.quiet {
            self.remarks.iter().for_each(|remark| eprintln!("note: {remark}"));
        }
        let names: Vec<&str> = self.promotions.iter().map(|promotion| promotion.name.as_str()).collect();
        let progress = Progress::new(&names, self.quiet);
        let tasks: Vec<TaskProgress> = names.iter().map(|name| progress.task(name)).collect();
        let tagged = self.put_tags(target, &tasks);
        for task in &tasks {
            task.finish(if tagged.is_ok() { "tagged" } else { "stopped" });
        }
        // The progress lines are finished: git's output cannot garble them.
        let (manifests, done) = tagged?;
        let total = done.len();
        if self.create_tag {
            target
                .create_git_tag(&self.git_tag, &self.revision, &self.notes)
                .map_err(|e| self.stopped(e, &done, total))?;
            if !self.quiet {
                eprintln!("created git tag {} on {}", self.git_tag, &self.revision[..12]);
            }
        }
        if let Some(push) = &self.push_tag {
            runner.run(push, &mut |line| eprintln!("{line}"))?;
        }
        let mut outcome = self.outcome(true);
        // Built images' digests are known only now.
        for ((_, _, digest, _), manifest) in outcome.images.iter_mut().zip(&manifests) {
            *digest = Some(manifest.digest.clone());
        }
        Ok(outcome)
    }

    /// The registry part of [`ReleasePlan::promote`], each image's progress (reading, tag n/m)
    /// going to its task: the `sha-` manifests read, and the tags written (all of them, or the
    /// error says which were).
    fn put_tags(&self, target: &dyn ReleaseTarget, tasks: &[TaskProgress]) -> Result<(Vec<Manifest>, Vec<String>)> {
        let mut manifests = Vec::new();
        for (promotion, task) in self.promotions.iter().zip(tasks) {
            task.line(&format!("reading {}", promotion.source));
            let image = format!("{}/{}:{}", self.images_registry(), promotion.repository, promotion.source);
            let manifest = target
                .manifest(&promotion.repository, &promotion.source)?
                .with_context(|| format!("{image} is missing from the registry: nothing was tagged"))?;
            if let Some(expected) = &promotion.digest
                && *expected != manifest.digest
            {
                bail!(
                    "{image} changed while releasing ({expected} became {}): nothing was tagged; run the release again",
                    manifest.digest
                );
            }
            if let Some(brought) = target.bring(&promotion.repository, &manifest)? {
                task.line(&brought);
            }
            manifests.push(manifest);
        }
        // Every floating tag that must move is checked before the first write, so that a
        // repository with redeploy disabled refuses the release whole, not half-way.
        let mut stuck = Vec::new();
        for (index, promotion) in self.promotions.iter().enumerate() {
            for (tag, from) in &promotion.moves {
                if !target.allows_redeploy(&promotion.repository, tag)? {
                    stuck.push((index, tag.as_str(), from.as_str()));
                }
            }
        }
        let named: Vec<String> = stuck
            .iter()
            .map(|(index, tag, from)| format!("{}:{tag} (on {from})", self.promotions[*index].repository))
            .collect();
        if !stuck.is_empty() && !self.skip_immutable_floating {
            bail!(
                "cannot release {}: {} does not allow redeploy, so these floating tags cannot move to it: {}. \
                 No release tag was written. Allow redeploy for the repository (Nexus: its deployment policy, or \
                 redeploy of `latest` only, if `latest` is all), delete those tags first, or pass \
                 --skip-immutable-floating to leave them where they are",
                self.version,
                self.registry,
                named.join(", ")
            );
        }
        if !stuck.is_empty() && !self.quiet {
            eprintln!("note: leaving {} where they are: the repository does not allow redeploy", named.join(", "));
        }
        let writes: Vec<(usize, &str)> = self
            .writes()
            .into_iter()
            .filter(|(index, tag)| !stuck.iter().any(|(other, stuck_tag, _)| other == index && stuck_tag == tag))
            .collect();
        let total = writes.len();
        let mut done = Vec::new();
        let mut per_image = vec![0; self.promotions.len()];
        for &(index, tag) in &writes {
            let promotion = &self.promotions[index];
            let manifest = &manifests[index];
            let tagged =
                target.put_manifest(&promotion.repository, tag, manifest).map_err(|e| self.stopped(e, &done, total))?;
            per_image[index] += 1;
            let of = writes.iter().filter(|(other, _)| *other == index).count();
            let how = if tagged == Tagged::AlreadyThere { " (already there)" } else { "" };
            tasks[index].line(&format!(
                "tag {}/{of} {}/{}:{tag} -> {}{how}",
                per_image[index], self.registry, promotion.repository, manifest.digest
            ));
            done.push(format!("{}:{tag}", promotion.repository));
        }
        Ok((manifests, done))
    }

    /// The error of a promotion that stopped after the registry writes `done`.
    fn stopped(&self, error: anyhow::Error, done: &[String], total: usize) -> anyhow::Error {
        let what = if done.is_empty() {
            "no tag was written".to_string()
        } else {
            format!("{} of {total} tags are in place ({})", done.len(), done.join(", "))
        };
        let git = if self.create_tag { format!(" and git tag {} is not created", self.git_tag) } else { String::new() };
        error.context(format!(
            "release {} stopped part-way: {what}{git}; run the same release again to finish it (tags already in \
             place are left alone)",
            self.version
        ))
    }

    /// What the release did (`executed`) or would do.
    pub fn outcome(&self, executed: bool) -> ReleaseReport {
        ReleaseReport {
            executed,
            version: self.version.to_string(),
            git_tag: self.git_tag.clone(),
            revision: self.revision.clone(),
            registry: self.registry.to_string(),
            images: self
                .promotions
                .iter()
                .map(|promotion| {
                    let image = format!("{}/{}", self.registry, promotion.repository);
                    (promotion.name.clone(), image, promotion.digest.clone(), promotion.tags.clone())
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "0123456789abcdef0123456789abcdef01234567";
    const OTHER: &str = "fedcba9876543210fedcba9876543210fedcba98";

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    fn versions(texts: &[&str]) -> Vec<Version> {
        texts.iter().map(|text| v(text)).collect()
    }

    fn manifest(digest: &str) -> Manifest {
        Manifest {
            media_type: crate::adapters::registry::DOCKER_MANIFEST.into(),
            digest: digest.into(),
            bytes: b"{}".to_vec(),
        }
    }

    /// The images our compose file builds: backend, worker, frontend.
    fn our_images() -> Vec<ReleaseImage> {
        crate::images::services::tests::ours(&Env::new())
            .built
            .into_iter()
            .map(|image| ReleaseImage { name: image.name, repository: image.repository })
            .collect()
    }

    /// A clean `main` without a remote (and `--no-lock`) whose registry holds HEAD's three
    /// images, with release tags on older commits.
    fn inputs(version: &str, existing: &[&str]) -> ReleaseInputs {
        inputs_of(our_images(), version, existing)
    }

    fn inputs_of(compose: Vec<ReleaseImage>, version: &str, existing: &[&str]) -> ReleaseInputs {
        ReleaseInputs {
            repo: "/src/intric".into(),
            requested: Requested::Version(version.into()),
            mode: TagMode::Create,
            head: git::Head { id: HEAD.into(), time: 1_700_000_000 },
            branch: Some("main".into()),
            default_branch: Some("main".into()),
            dirty: false,
            tags: existing.iter().map(|name| git::Tag { name: name.to_string(), commit: OTHER.into() }).collect(),
            previous_release: existing.last().map(|name| name.to_string()),
            commits: vec![Commit { id: HEAD.into(), subject: "feat: a thing".into(), body: String::new() }],
            registry: Some(RegistryAddress::parse("nexus.example:8082").unwrap()),
            registry_problem: None,
            promotion: None,
            images: compose
                .iter()
                .map(|image| ImageState {
                    image: image.clone(),
                    source: Some(manifest(&format!("sha256:{}", image.name))),
                    tags: Vec::new(),
                    existing: BTreeMap::new(),
                })
                .collect(),
            compose,
            compose_problem: None,
            allow_branches: Vec::new(),
            build: false,
            push_tag: false,
            has_origin: false,
            no_lock: true,
            break_lock: false,
            who: Holder {
                version: String::new(),
                user: "ann".into(),
                host: "ws-1".into(),
                pid: 42,
                since: "2026-12-01T12:30:00Z".into(),
                process_space: None,
            },
        }
    }

    fn error_of(inputs: &ReleaseInputs) -> String {
        match plan(inputs) {
            Ok(_) => panic!("the release is refused"),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn a_first_release_promotes_every_image_to_all_its_tags_then_tags_git() {
        let plan = plan(&inputs("v1.0.0", &[])).unwrap();
        assert_eq!(plan.git_tag, "v1.0.0");
        assert!(plan.create_tag && plan.build.is_empty() && plan.push_tag.is_none());
        assert_eq!(plan.promotions.len(), 3);
        for promotion in &plan.promotions {
            assert_eq!(promotion.source, "sha-0123456789ab");
            assert_eq!(promotion.tags, ["1.0.0", "1.0", "1", "latest"]);
            assert_eq!(promotion.put, promotion.tags);
            assert_eq!(promotion.digest.as_deref(), Some(format!("sha256:{}", promotion.name).as_str()));
        }
        let shown = plan.to_string();
        assert!(shown.contains("PUT /v2/intric/worker/manifests/latest"), "{shown}");
        assert!(shown.contains("annotated tag v1.0.0 on 0123456789ab"), "{shown}");
    }

    #[test]
    fn floating_tags_follow_the_tag_engine() {
        for (version, existing, expected) in [
            ("1.0.0", &[][..], &["1.0.0", "1.0", "1", "latest"][..]),
            ("1.1.0-rc.1", &["v1.0.0"], &["1.1.0-rc.1"]),
            ("1.1.0-rc.2", &["v1.0.0", "v1.1.0-rc.1"], &["1.1.0-rc.2"]),
            ("1.1.0", &["v1.0.0", "v1.1.0-rc.1", "v1.1.0-rc.2"], &["1.1.0", "1.1", "1", "latest"]),
            ("1.0.1", &["v1.0.0", "v1.1.0"], &["1.0.1", "1.0"]),
            ("1.2.1", &["v1.2.0", "v2.0.0"], &["1.2.1", "1.2", "1"]),
            ("0.3.0", &["v0.2.0"], &["0.3.0", "0.3", "latest"]),
            ("1.0.0+build.7", &[], &["1.0.0_build.7", "1.0", "1", "latest"]),
        ] {
            let plan = plan(&inputs(version, existing)).unwrap_or_else(|error| panic!("{version}: {error:#}"));
            assert_eq!(plan.promotions[0].tags, expected, "{version} after {existing:?}");
        }
    }

    #[test]
    fn every_guard_is_reported_together() {
        let mut refused = inputs("1.0.0", &["v1.0.0"]);
        refused.dirty = true;
        refused.branch = Some("topic".into());
        refused.allow_branches = vec!["release/*".into()];
        refused.images[0].source = None;
        refused.images[1].existing.insert("1.0.0".into(), "sha256:older".into());
        let error = error_of(&refused);
        for reason in [
            "cannot release 1.0.0",
            "git tag v1.0.0 already exists",
            "nexus.example:8082/intric/worker:1.0.0 already exists in the registry (sha256:older)",
            "the working tree is dirty",
            "branch topic is not allowed to release: release from main or a branch matching release/*",
            "nexus.example:8082/intric/backend:sha-0123456789ab is not in the registry",
        ] {
            assert!(error.contains(reason), "missing {reason:?} in:\n{error}");
        }
        assert_eq!(error.matches("\n  - ").count(), 5, "{error}");
    }

    type Setup = Box<dyn Fn(&mut ReleaseInputs)>;

    #[test]
    fn other_refusals_name_their_reason() {
        let cases: Vec<(&str, Setup, &str)> = vec![
            (
                "not semver",
                Box::new(|i| i.requested = Requested::Version("1.2".into())),
                "`1.2` is not a semver version",
            ),
            ("lower on its line", Box::new(|i| i.requested = Requested::Version("1.0.1".into())), "lower than 1.0.2"),
            ("detached", Box::new(|i| i.branch = None), "HEAD is detached"),
            ("no registry", Box::new(|i| i.registry = None), "no registry: set NEXUS_REGISTRY"),
        ];
        for (name, setup, expected) in cases {
            let mut refused = inputs("1.0.3", &["v1.0.2"]);
            setup(&mut refused);
            let error = error_of(&refused);
            assert!(error.contains(expected), "{name}: {error}");
        }
    }

    #[test]
    fn allowed_branches_and_build() {
        let mut release_branch = inputs("1.0.1", &["v1.0.0", "v1.1.0"]);
        release_branch.branch = Some("release/1.0".into());
        release_branch.allow_branches = vec!["release/*".into()];
        release_branch.images[2].source = None;
        release_branch.build = true;
        let plan = plan(&release_branch).unwrap();
        assert_eq!(plan.build, ["frontend"]);
        assert_eq!(plan.promotions[2].digest, None);
        assert!(plan.remarks.iter().any(|remark| remark.contains("`latest` stays")), "{:?}", plan.remarks);
    }

    #[test]
    fn a_tag_pipeline_checks_what_the_release_already_did() {
        let mut pipeline = inputs("1.0.0", &[]);
        pipeline.tags.push(git::Tag { name: "v1.0.0".into(), commit: HEAD.into() });
        pipeline.mode = TagMode::Existing(None);
        pipeline.branch = None;
        pipeline.images[0].existing.insert("1.0.0".into(), "sha256:backend".into());
        let plan = plan(&pipeline).unwrap();
        assert!(!plan.create_tag);
        assert_eq!(plan.git_tag, "v1.0.0");
        assert_eq!(plan.promotions[0].put, ["1.0", "1", "latest"], "the version tag is already right");
        assert_eq!(plan.promotions[1].put, ["1.0.0", "1.0", "1", "latest"]);

        // A rerun of an older rc's pipeline: fine, and it moves no floating tag.
        let mut old_rc = pipeline.clone();
        old_rc.requested = Requested::Version("1.0.0-rc.1".into());
        old_rc.tags.push(git::Tag { name: "v1.0.0-rc.1".into(), commit: HEAD.into() });
        old_rc.images[0].existing.clear();
        assert_eq!(super::plan(&old_rc).unwrap().promotions[0].put, ["1.0.0-rc.1"]);

        pipeline.images[1].existing.insert("1.0.0".into(), "sha256:another".into());
        assert!(error_of(&pipeline).contains("intric/worker:1.0.0 already exists as sha256:another"));
        pipeline.tags[0].commit = OTHER.into();
        assert!(error_of(&pipeline).contains("git tag v1.0.0 names fedcba987654 but HEAD is 0123456789ab"));
    }

    #[test]
    fn a_promotion_reads_the_development_registry_and_tags_in_the_release_registry() {
        use crate::images::promotion::{BlobCount, ImageContent};
        let mut promoting = inputs("2.0.0", &["v1.0.0"]);
        let source = RegistryAddress::parse("nexus.example/dev").unwrap();
        let target = RegistryAddress::parse("nexus.example/release").unwrap();
        promoting.registry = Some(source.clone());
        promoting.promotion = Some(PromotionPlan {
            source,
            target: target.clone(),
            images: promoting
                .images
                .iter()
                .map(|image| ImageContent {
                    repository: image.image.repository.clone(),
                    blobs: (image.image.name != "frontend").then_some(BlobCount { total: 5, missing: 3, children: 0 }),
                })
                .collect(),
        });
        let plan = plan(&promoting).unwrap();
        assert_eq!(plan.registry, target, "the release tags go into the release registry");
        assert_eq!(plan.images_registry().to_string(), "nexus.example/dev", "--build pushes where main pushes");
        let shown = plan.to_string();
        for expected in [
            "promote from nexus.example/dev into nexus.example/release (blobs by cross-repository mount, or a \
             streamed copy where the registry refuses the mount",
            "  nexus.example/dev/intric/backend:sha-0123456789ab (sha256:backend) -> nexus.example/release/intric/backend: \
             2.0.0, 2.0, 2, latest; mount or copy 3 blobs (2 of 5 already there)",
            "intric/frontend: 2.0.0, 2.0, 2, latest; mount or copy its blobs once built",
            "PUT /v2/intric/worker/manifests/2.0.0",
        ] {
            assert!(shown.contains(expected), "missing {expected:?} in:\n{shown}");
        }

        // The release registry's tags are the ones that count, and are named with it.
        promoting.images[0].existing.insert("2.0.0".into(), "sha256:older".into());
        assert!(
            error_of(&promoting).contains("nexus.example/release/intric/backend:2.0.0 already exists in the registry")
        );
        let elsewhere =
            PromotionPlan { target: RegistryAddress::parse("other.example").unwrap(), ..plan.promotion.unwrap() };
        assert!(elsewhere.to_string().contains("another registry, so blobs by streamed copy"));
        assert_eq!(elsewhere.transfer_line("intric/worker"), "copy 3 blobs (2 of 5 already there)");
    }

    #[test]
    fn the_release_registry_is_read_by_the_one_parser_and_named_where_it_came_from() {
        let env = |value: &str| Env::from([("NEXUS_RELEASE_REGISTRY".to_string(), value.to_string())]);
        let read = |flag: Option<&str>, env: &Env| promotion::release_registry(flag, env);
        assert_eq!(
            read(Some("nexus.example/release"), &env("x:1")).unwrap().unwrap().to_string(),
            "nexus.example/release"
        );
        assert_eq!(
            read(None, &env("http://nexus.lan:8082/release")).unwrap().unwrap().to_string(),
            "nexus.lan:8082/release"
        );
        assert_eq!(read(None, &env("")).unwrap(), None);
        let flag = format!("{:#}", read(Some("host:1:2"), &Env::new()).unwrap_err());
        assert!(flag.starts_with("--to-registry: invalid registry `host:1:2`"), "{flag}");
        let variable = format!("{:#}", read(None, &env("nexus example")).unwrap_err());
        assert!(variable.starts_with("NEXUS_RELEASE_REGISTRY: invalid registry `nexus example`"), "{variable}");
    }

    #[test]
    fn push_tag_is_planned_with_create() {
        let mut pushing = inputs("2.0.0", &["v1.0.0"]);
        pushing.push_tag = true;
        let plan = plan(&pushing).unwrap();
        assert_eq!(plan.push_tag.unwrap().to_string(), "git -C /src/intric push origin refs/tags/v2.0.0");
    }

    #[test]
    fn ordering() {
        for (version, existing, refused) in [
            ("1.0.0", &[][..], None),
            ("1.1.0-rc.1", &["1.0.0"], None),
            ("1.1.0-rc.2", &["1.0.0", "1.1.0-rc.1"], None),
            ("1.1.0", &["1.0.0", "1.1.0-rc.2"], None),
            ("1.1.0-rc.1", &["1.1.0-rc.2"], Some("lower than 1.1.0-rc.2")),
            ("1.1.0-rc.3", &["1.1.0"], Some("lower than 1.1.0")),
            ("1.0.1", &["1.0.0", "1.1.0"], None),
            ("1.0.1", &["1.0.2", "1.1.0"], Some("lower than 1.0.2")),
            ("1.0.0", &["1.1.0"], Some("would start the 1.0 line below the newest release 1.1.0")),
            ("1.5.0", &["1.4.0", "2.0.0-rc.1"], None),
            ("1.0.0", &["1.0.0"], None),
        ] {
            let problem = ordering_problem(&v(version), &versions(existing));
            match (refused, &problem) {
                (None, None) => {}
                (Some(expected), Some(problem)) => assert!(problem.contains(expected), "{version}: {problem}"),
                _ => panic!("{version} after {existing:?}: {problem:?}"),
            }
        }
    }

    #[test]
    fn bumps() {
        for (bump, existing, expected) in [
            (Bump::Major, &[][..], "1.0.0"),
            (Bump::Minor, &[], "0.1.0"),
            (Bump::Patch, &[], "0.0.1"),
            (Bump::Rc, &[], "0.0.1-rc.1"),
            (Bump::Major, &["1.4.2", "1.3.9"], "2.0.0"),
            (Bump::Minor, &["1.4.2"], "1.5.0"),
            (Bump::Patch, &["1.4.2", "0.9.0"], "1.4.3"),
            (Bump::Rc, &["1.4.2"], "1.4.3-rc.1"),
            (Bump::Rc, &["1.4.2", "1.5.0-rc.1"], "1.5.0-rc.2"),
            (Bump::Rc, &["1.4.2", "1.5.0-rc.9", "1.5.0-rc.10"], "1.5.0-rc.11"),
            (Bump::Rc, &["1.4.2", "1.5.0-beta.2"], "1.5.0-rc.1"),
            (Bump::Minor, &["1.4.2", "1.5.0-rc.1"], "1.5.0"),
        ] {
            assert_eq!(bumped(bump, &versions(existing)), v(expected), "{bump:?} after {existing:?}");
        }
    }

    #[test]
    fn globs() {
        for (pattern, branch, expected) in [
            ("release/*", "release/1.4", true),
            ("release/*", "release/1.4/hotfix", true),
            ("release/*", "releases/1.4", false),
            ("main", "main", true),
            ("hotfix-?", "hotfix-1", true),
            ("hotfix-?", "hotfix-12", false),
            ("*", "anything", true),
        ] {
            assert_eq!(glob_matches(pattern, branch), expected, "{pattern} ~ {branch}");
        }
    }

    #[test]
    fn notes_group_commits_by_conventional_type() {
        let commit = |id: &str, subject: &str, body: &str| Commit {
            id: id.repeat(40 / id.len()),
            subject: subject.into(),
            body: body.into(),
        };
        let commits = [
            commit("a", "feat(api): add jobs endpoint", ""),
            commit("b", "fix: handle empty text", ""),
            commit("c", "Update README", ""),
            commit("d", "feat!: drop the v0 API", ""),
            commit("e", "perf: cache tokens", ""),
            commit("f", "chore: bump deps", ""),
            commit("1", "refactor(db): split models", "BREAKING CHANGE: tables renamed"),
            commit("2", "docs: explain releases", ""),
        ];
        let notes = release_notes(&v("1.1.0"), Some("v1.0.0"), &commits);
        assert_eq!(
            notes,
            "Release 1.1.0\n\n8 commits since v1.0.0.\n\
             \nBreaking changes\n- drop the v0 API (dddddddddddd)\n- db: split models (111111111111)\n\
             \nFeatures\n- api: add jobs endpoint (aaaaaaaaaaaa)\n\
             \nFixes\n- handle empty text (bbbbbbbbbbbb)\n\
             \nPerformance\n- cache tokens (eeeeeeeeeeee)\n\
             \nDocumentation\n- explain releases (222222222222)\n\
             \nOther\n- Update README (cccccccccccc)\n- chore: bump deps (ffffffffffff)\n"
        );
        assert_eq!(release_notes(&v("0.1.0"), None, &[]), "Release 0.1.0\n\n0 commits, the first release.\n");
    }

    #[test]
    fn previous_release_for_notes_skips_prereleases_for_a_stable_release() {
        let tags: Vec<git::Tag> = ["v1.0.0", "v1.1.0-rc.1", "v1.1.0-rc.2", "v1.2.0", "nightly"]
            .iter()
            .map(|name| git::Tag { name: name.to_string(), commit: OTHER.into() })
            .collect();
        let names = |version: &str| -> Vec<String> {
            previous_candidates(&v(version), &tags).iter().map(|tag| tag.name.clone()).collect()
        };
        assert_eq!(names("1.1.0"), ["v1.0.0"]);
        assert_eq!(names("1.1.0-rc.3"), ["v1.1.0-rc.2", "v1.1.0-rc.1", "v1.0.0"]);
        assert_eq!(names("1.0.0"), Vec::<String>::new());
    }

    #[test]
    fn an_unreadable_registry_is_listed_with_every_guard_checked_offline() {
        let mut refused = inputs("0.9.0", &["v1.0.0"]);
        refused.dirty = true;
        refused.branch = Some("topic".into());
        refused.images.clear();
        refused.registry_problem = Some("registry 127.0.0.1:9 is unreachable or refuses us: connection refused".into());
        let error = error_of(&refused);
        for reason in [
            "cannot release 0.9.0:",
            "would start the 0.9 line below the newest release 1.0.0",
            "the working tree is dirty",
            "branch topic is not allowed to release",
            "registry 127.0.0.1:9 is unreachable",
        ] {
            assert!(error.contains(reason), "missing {reason:?} in:\n{error}");
        }
        let bad = Requested::Version("one".into());
        refused.requested = bad;
        assert!(error_of(&refused).contains("`one` is not a semver version"));
    }

    #[test]
    fn a_release_that_stopped_before_tagging_git_is_finished_by_running_it_again() {
        let mut again = inputs("1.1.0", &["v1.0.0"]);
        again.images[0].existing.insert("1.1.0".into(), "sha256:backend".into());
        again.images[1].existing.insert("1.1.0".into(), "sha256:worker".into());
        let plan = plan(&again).unwrap();
        assert!(plan.remarks.iter().any(|remark| remark.contains("finishing an earlier run of this release")));
        // Another image under the version tag is a conflict, named precisely.
        again.images[2].existing.insert("1.1.0".into(), "sha256:someone-else".into());
        let error = error_of(&again);
        assert!(
            error.contains(
                "nexus.example:8082/intric/frontend:1.1.0 already exists in the registry (sha256:someone-else)"
            ),
            "{error}"
        );
        assert_eq!(error.matches("\n  - ").count(), 1, "{error}");
    }

    /// A registry and git that record, in one list with the runner's commands, what the release
    /// does, and fail the `fail_at`-th tag write if asked.
    struct Recorded {
        log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        fail_at: Option<usize>,
        /// Tags (`intric/backend:latest`) the registry will not move.
        immutable: Vec<String>,
        /// What reading the registry again gives (under the lock).
        now: Vec<ImageState>,
    }

    impl ReleaseTarget for Recorded {
        fn manifest(&self, repository: &str, reference: &str) -> Result<Option<Manifest>> {
            let service = repository.trim_start_matches("intric/");
            assert_eq!(reference, "sha-0123456789ab");
            Ok(Some(manifest(&format!("sha256:{service}"))))
        }

        fn put_manifest(&self, repository: &str, tag: &str, manifest: &Manifest) -> Result<Tagged> {
            let mut log = self.log.lock().unwrap();
            let writes = log.iter().filter(|line| line.starts_with("PUT")).count();
            if self.fail_at == Some(writes + 1) {
                bail!("HTTP 503 from the registry");
            }
            log.push(format!("PUT {repository}:{tag} {}", manifest.digest));
            Ok(Tagged::Put)
        }

        fn allows_redeploy(&self, repository: &str, tag: &str) -> Result<bool> {
            let image = format!("{repository}:{tag}");
            self.log.lock().unwrap().push(format!("check {image}"));
            Ok(!self.immutable.contains(&image))
        }

        fn create_git_tag(&self, name: &str, revision: &str, _: &str) -> Result<()> {
            self.log.lock().unwrap().push(format!("git tag {name} {}", &revision[..12]));
            Ok(())
        }

        fn images(&self, _: &[ReleaseImage], _: &str, _: &Requested, _: &[git::Tag]) -> Result<Vec<ImageState>> {
            self.log.lock().unwrap().push("read the registry again".into());
            Ok(self.now.clone())
        }
    }

    fn recorded(fail_at: Option<usize>) -> (Recorded, crate::plan::runner::Recording) {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let commands = std::sync::Arc::clone(&log);
        let runner = crate::plan::runner::Recording::replying(move |shown| {
            commands.lock().unwrap().push(shown.to_string());
            Ok(String::new())
        });
        (Recorded { log, fail_at, immutable: Vec::new(), now: Vec::new() }, runner)
    }

    #[test]
    fn promotion_puts_every_release_tag_then_the_floating_ones_then_tags_git() {
        let mut pushing = inputs("1.0.0", &[]);
        pushing.push_tag = true;
        let mut plan = plan(&pushing).unwrap();
        plan.quiet = true;
        let (target, runner) = recorded(None);
        let outcome = plan.promote(&runner, &target).unwrap();
        let mut expected: Vec<String> = ["backend", "worker", "frontend"]
            .iter()
            .map(|service| format!("PUT intric/{service}:1.0.0 sha256:{service}"))
            .collect();
        for service in ["backend", "worker", "frontend"] {
            for tag in ["1.0", "1", "latest"] {
                expected.push(format!("PUT intric/{service}:{tag} sha256:{service}"));
            }
        }
        expected.push("git tag v1.0.0 0123456789ab".into());
        expected.push("git -C /src/intric push origin refs/tags/v1.0.0".into());
        assert_eq!(*target.log.lock().unwrap(), expected);
        assert!(outcome.executed);
        assert_eq!(outcome.images[2].2.as_deref(), Some("sha256:frontend"));
        let shown = plan.to_string();
        let order: Vec<&str> = shown.lines().filter(|line| line.trim_start().starts_with("PUT ")).collect();
        assert_eq!(order.len(), 12);
        assert_eq!(order[2].trim(), "PUT /v2/intric/frontend/manifests/1.0.0", "{shown}");
        assert_eq!(order[3].trim(), "PUT /v2/intric/backend/manifests/1.0", "{shown}");
    }

    #[test]
    fn a_promotion_cut_off_says_what_was_done_and_that_running_it_again_finishes_it() {
        let mut plan = plan(&inputs("1.0.0", &[])).unwrap();
        plan.quiet = true;
        let (target, runner) = recorded(Some(3));
        let error = format!("{:#}", plan.promote(&runner, &target).unwrap_err());
        assert!(
            error.starts_with(
                "release 1.0.0 stopped part-way: 2 of 12 tags are in place (intric/backend:1.0.0, \
                 intric/worker:1.0.0) and git tag v1.0.0 is not created; run the same release again to finish it"
            ),
            "{error}"
        );
        assert!(error.ends_with("HTTP 503 from the registry"), "{error}");
        assert!(!target.log.lock().unwrap().iter().any(|line| line.starts_with("git")), "git is not tagged");
    }

    /// A second release, 1.1.0 of HEAD, after 1.0.0 of another commit put 1.0, 1 and latest.
    fn second_release() -> ReleaseInputs {
        let mut second = inputs("1.1.0", &["v1.0.0"]);
        for image in &mut second.images {
            image.tags = ["1.0.0", "1.0", "1", "latest", "sha-fedcba987654"].map(String::from).to_vec();
            for tag in ["1", "latest"] {
                image.existing.insert(tag.into(), format!("sha256:old-{}", image.image.name));
            }
        }
        second
    }

    #[test]
    fn floating_tags_on_another_image_are_known_to_move_and_tags_in_place_are_left_alone() {
        let mut second = second_release();
        second.images[2].existing.insert("latest".into(), "sha256:frontend".into());
        let plan = plan(&second).unwrap();
        assert_eq!(plan.promotions[0].put, ["1.1.0", "1.1", "1", "latest"]);
        assert_eq!(
            plan.promotions[0].moves,
            [
                ("1".to_string(), "sha256:old-backend".to_string()),
                ("latest".to_string(), "sha256:old-backend".to_string())
            ]
        );
        assert_eq!(plan.promotions[2].put, ["1.1.0", "1.1", "1"], "latest is on HEAD's frontend already");
        let shown = plan.to_string();
        assert!(
            shown.contains("floating tags that move from another image, checked before the first write"),
            "{shown}"
        );
        assert!(shown.contains("intric/worker:latest (now sha256:old-worker)"), "{shown}");
    }

    #[test]
    fn floating_tags_that_cannot_move_refuse_the_release_before_any_write_unless_skipped() {
        let mut plan = plan(&second_release()).unwrap();
        plan.quiet = true;
        let (mut target, runner) = recorded(None);
        target.immutable = vec!["intric/backend:latest".into(), "intric/frontend:1".into()];
        let error = format!("{:#}", plan.promote(&runner, &target).unwrap_err());
        assert!(
            error.contains(
                "cannot release 1.1.0: nexus.example:8082 does not allow redeploy, so these floating tags cannot move \
                 to it: intric/backend:latest (on sha256:old-backend), intric/frontend:1 (on sha256:old-frontend). \
                 No release tag was written."
            ),
            "{error}"
        );
        assert!(error.contains("--skip-immutable-floating"), "{error}");
        assert!(target.log.lock().unwrap().iter().all(|line| line.starts_with("check ")), "nothing was written");

        plan.skip_immutable_floating = true;
        target.log.lock().unwrap().clear();
        plan.promote(&runner, &target).unwrap();
        let log = target.log.lock().unwrap();
        let puts: Vec<&String> = log.iter().filter(|line| line.starts_with("PUT")).collect();
        assert_eq!(puts.len(), 10, "12 writes but the two that cannot move: {log:?}");
        assert!(!log.iter().any(|line| line.starts_with("PUT intric/backend:latest")), "{log:?}");
        assert_eq!(log.last().unwrap(), "git tag v1.1.0 0123456789ab");
    }

    #[test]
    fn release_tags_in_the_registry_count_for_newest() {
        // 2.0.0 is in the registry, though its git tag is not here (pushed from another clone).
        let mut behind = inputs("1.4.1", &["v1.4.0"]);
        behind.images[0].tags = vec!["2.0.0".into(), "1.4.0".into()];
        let plan = plan(&behind).unwrap();
        assert_eq!(plan.promotions[0].tags, ["1.4.1", "1.4", "1"], "`latest` stays on 2.0.0");
        behind.requested = Requested::Version("1.5.0".into());
        assert!(error_of(&behind).contains("1.5.0 would start the 1.5 line below the newest release 2.0.0"));
    }

    #[test]
    fn bump_starts_from_the_highest_of_gits_and_the_registrys_releases() {
        // 2.0.0 is in the registry, though its git tag is not here (pushed from another clone).
        let mut behind = inputs("1.4.1", &["v1.4.0"]);
        behind.requested = Requested::Bump(Bump::Patch);
        for image in &mut behind.images {
            image.tags = vec!["2.0.0".into(), "1.4.0".into()];
        }
        let plan = plan(&behind).unwrap();
        assert_eq!(plan.version, v("2.0.1"));
        assert_eq!(plan.promotions[0].tags, ["2.0.1", "2.0", "2", "latest"]);
    }

    #[test]
    fn on_the_published_layout_release_promotes_exactly_the_images_compose_builds() {
        // tests/fixtures/intric-layout: the worker runs the backend image with its own command.
        let config = r#"{"services": {
            "frontend": {"image": "${NEXUS_REGISTRY}/intric/frontend:${IMAGE_TAG:-latest}",
                "build": {"context": "/ws/frontend", "args": {"NODE_IMAGE": "${NODE_IMAGE:-node:18-slim}"}}},
            "backend": {"image": "${NEXUS_REGISTRY}/intric/backend:${IMAGE_TAG:-latest}",
                "build": {"context": "/ws/backend", "args": {"PYTHON_IMAGE": "${PYTHON_IMAGE:-python:3.11-slim-bullseye}"}}},
            "worker": {"image": "${NEXUS_REGISTRY}/intric/backend:${IMAGE_TAG:-latest}",
                "command": ["poetry", "run", "arq", "intric.worker.arq.WorkerSettings"]},
            "db": {"image": "pgvector/pgvector:pg16"},
            "redis": {"image": "redis"},
            "db-init": {"image": "${NEXUS_REGISTRY}/intric/backend:${IMAGE_TAG:-latest}", "command": ["python", "init_db.py"]}
        }}"#;
        let dockerfile =
            |path: &Path| crate::images::dockerfile::Dockerfile::parse(&path.display().to_string(), "FROM base\n");
        let compose = ComposeImages::from_config(Path::new("/ws/docker-compose.yml"), config, &Env::new(), &dockerfile)
            .unwrap()
            .built
            .into_iter()
            .map(|image| ReleaseImage { name: image.name, repository: image.repository })
            .collect();
        let plan = plan(&inputs_of(compose, "1.0.0", &[])).unwrap();
        let promoted: Vec<(&str, &str)> =
            plan.promotions.iter().map(|promotion| (promotion.name.as_str(), promotion.repository.as_str())).collect();
        assert_eq!(promoted, [("backend", "intric/backend"), ("frontend", "intric/frontend")]);
        assert_eq!(plan.writes().len(), 8, "4 tags of 2 images");
        assert!(!plan.to_string().contains("worker"), "{plan}");
    }

    #[test]
    fn a_repository_with_origin_releases_under_the_lock_and_one_without_needs_no_lock() {
        let mut locked = inputs("1.0.0", &[]);
        (locked.has_origin, locked.no_lock) = (true, false);
        let plan = plan(&locked).unwrap();
        let lock = plan.lock.as_ref().expect("a lock");
        assert_eq!(lock.holder.to_string(), "release 1.0.0 by ann@ws-1 (pid 42) since 2026-12-01T12:30:00Z");
        assert!(plan.push_tag.is_some(), "the tag is pushed before the lock is released");
        let shown = plan.to_string();
        let at = |text: &str| shown.find(text).unwrap_or_else(|| panic!("{text:?} not in:\n{shown}"));
        assert!(at("take the release lock on origin") < at("PUT /v2/intric/backend/manifests/1.0.0"));
        assert!(at("--force-with-lease=refs/tags/release-lock: origin") < at("read the registry's tags and origin's"));
        assert!(at("push origin refs/tags/v1.0.0") < at("then release the lock"));
        assert!(
            shown.contains("'--force-with-lease=refs/tags/release-lock:<lock>' origin :refs/tags/release-lock"),
            "{shown}"
        );

        locked.has_origin = false;
        locked.no_lock = false;
        let error = error_of(&locked);
        assert!(error.contains("has no remote origin to hold the release lock"), "{error}");
        assert!(error.contains("or pass --no-lock"), "{error}");
    }

    /// A release planned as `version` after `existing`, run under the lock while `meanwhile`
    /// was released elsewhere (onto `latest` of the registry and origin's tags): what it
    /// logged, in one list with the git commands, and what it gave.
    fn released_meanwhile(version: &str, existing: &[&str], meanwhile: &str) -> (Vec<String>, Result<ReleaseReport>) {
        let mut locked = inputs(version, existing);
        (locked.has_origin, locked.no_lock) = (true, false);
        let mut plan = plan(&locked).unwrap();
        plan.quiet = true;
        assert!(plan.promotions[0].tags.contains(&"latest".to_string()), "planned with latest");
        let (mut target, _) = recorded(None);
        target.now = locked.images.clone();
        for image in &mut target.now {
            image.tags = existing.iter().map(|tag| tag.trim_start_matches('v').to_string()).collect();
            image.tags.extend([meanwhile.to_string(), "latest".to_string()]);
            image.existing.insert("latest".into(), format!("sha256:newer-{}", image.image.name));
        }
        let log = std::sync::Arc::clone(&target.log);
        let meanwhile = meanwhile.to_string();
        let runner = crate::plan::runner::Recording::replying(move |shown| {
            log.lock().unwrap().push(shown.to_string());
            match shown {
                _ if shown.contains("commit-tree") => Ok("1111111111111111111111111111111111111111".into()),
                _ if shown.contains("ls-remote") => Ok(format!(
                    "2222222222222222222222222222222222222222\trefs/tags/v{meanwhile}\n\
                     3333333333333333333333333333333333333333\trefs/tags/v{meanwhile}^{{}}"
                )),
                _ => Ok(String::new()),
            }
        });
        let result = plan.serialized(&runner, &target);
        let log = target.log.lock().unwrap().clone();
        (log, result)
    }

    #[test]
    fn under_the_lock_the_registry_and_origin_are_read_again_before_anything_moves() {
        // A backport planned when it was the newest: 6.0.0 came meanwhile, and keeps `latest`.
        let (log, report) = released_meanwhile("5.0.1", &["v5.0.0"], "6.0.0");
        assert_eq!(report.unwrap().images[0].3, ["5.0.1", "5.0", "5"], "6.0.0 keeps `latest` and `5` moves");
        let step =
            |text: &str| log.iter().position(|line| line.contains(text)).unwrap_or_else(|| panic!("{text}: {log:?}"));
        assert!(
            step("--force-with-lease=refs/tags/release-lock: origin 1111") < step("ls-remote origin 'refs/tags/*'")
        );
        assert!(step("ls-remote") < step("read the registry again"));
        assert!(step("read the registry again") < step("PUT intric/backend:5.0.1"));
        assert!(!log.iter().any(|line| line.contains(":latest")), "{log:?}");
        assert!(step("git tag v5.0.1") < step("push origin refs/tags/v5.0.1"));
        assert!(
            step("push origin refs/tags/v5.0.1")
                < step("release-lock:1111111111111111111111111111111111111111 origin :")
        );

        // 6.0.0 planned before 7.0.0 came: refused under the lock, nothing written, lock released.
        let (log, refused) = released_meanwhile("6.0.0", &["v5.0.0"], "7.0.0");
        let error = format!("{:#}", refused.unwrap_err());
        assert!(error.contains("6.0.0 would start the 6.0 line below the newest release 7.0.0"), "{error}");
        assert!(error.contains("found under the release lock") && error.contains("nothing was changed"), "{error}");
        assert!(!log.iter().any(|line| line.starts_with("PUT") || line.starts_with("git tag")), "{log:?}");
        assert!(log.last().unwrap().contains("origin :refs/tags/release-lock"), "released last: {log:?}");
    }

    #[test]
    fn the_same_release_done_elsewhere_meanwhile_changes_nothing_and_says_so() {
        let mut locked = inputs("1.0.0", &[]);
        (locked.has_origin, locked.no_lock) = (true, false);
        let mut plan = plan(&locked).unwrap();
        plan.quiet = true;
        let (mut target, _) = recorded(None);
        target.now = locked.images.clone();
        for image in &mut target.now {
            let digest = image.source.as_ref().unwrap().digest.clone();
            image.tags = vec!["1.0.0".into()];
            image.existing.insert("1.0.0".into(), digest);
        }
        let log = std::sync::Arc::clone(&target.log);
        let runner = crate::plan::runner::Recording::replying(move |shown| {
            log.lock().unwrap().push(shown.to_string());
            match shown {
                _ if shown.contains("commit-tree") => Ok("1111".into()),
                _ if shown.contains("ls-remote") => {
                    Ok(format!("2222\trefs/tags/v1.0.0\n{HEAD}\trefs/tags/v1.0.0^{{}}"))
                }
                _ => Ok(String::new()),
            }
        });
        let error = format!("{:#}", plan.serialized(&runner, &target).unwrap_err());
        assert!(error.starts_with("1.0.0 is already released from 0123456789ab: git tag v1.0.0"), "{error}");
        assert!(error.contains("nothing was changed"), "{error}");
        let log = target.log.lock().unwrap();
        assert!(!log.iter().any(|line| line.starts_with("PUT") || line.starts_with("git tag")), "{log:?}");
        assert!(log.last().unwrap().contains("release-lock:1111 origin :refs/tags/release-lock"), "released: {log:?}");
    }
}
