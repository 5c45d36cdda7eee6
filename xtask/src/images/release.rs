//! Releases: promote the images the default branch already built and pushed as
//! `sha-<12 hex>` to a release, without rebuilding them, and tag the commit `vX.Y.Z`.
//!
//! Reads once ([`read_inputs`]): git (HEAD, branch, default branch, clean or not, every tag,
//! the commits since the previous release) and the registry (HEAD's `sha-` manifest of each
//! image, and whether the release's version tag exists already), the registry with one attempt
//! per request, so that a registry that is down is listed with the other problems at once.
//! Plans ([`plan`], pure): the guards, all checked together; the version (given, or `--bump`ed
//! from the newest release); the release tags of each image (`X.Y.Z`, and `X.Y`, `X`, `latest`
//! by the tag engine's [`tags::release_tags`], from the git tags); the annotated git tag and its
//! release notes. [`prepare`] adds the build task's plan for `--build`.
//!
//! The [`ReleasePlan`] is a [`TaskPlan`]: shown, or run with `--execute`. Running it builds
//! the missing images (if any), then puts each `sha-` manifest's own bytes under every release
//! tag (so the digests are equal and no layer moves): every image's version tag first, then the
//! floating tags, then the git tag, so a failure part-way leaves no git tag behind. Tags already
//! in place are left alone, so running the same release again after a failure finishes it;
//! with `--push-tag`, `git push origin vX.Y.Z` follows.
//!
//! `cargo xtask ci --stage release` runs the same code for a tag pipeline, where the git tag
//! exists already ([`TagMode::Existing`]).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use semver::{Prerelease, Version};

use crate::adapters::ci_env::Env;
use crate::adapters::git::{self, Commit, Worktree};
use crate::adapters::registry::{Backoff, Credentials, Manifest, Registry, RegistryAddress, Tagged};
use crate::images::Service;
use crate::images::build::{self, BuildArgs, BuildPlan};
use crate::images::location::{self, Location};
use crate::images::tags::{self, release_version};
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

/// What the registry holds of one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageState {
    pub service: Service,
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
    /// Every tag in git.
    pub tags: Vec<git::Tag>,
    /// The release the notes start from: the nearest lower release HEAD contains.
    pub previous_release: Option<String>,
    /// The commits since `previous_release` (all, without one), newest first.
    pub commits: Vec<Commit>,
    /// The registry as configured, `None` when neither --registry nor NEXUS_REGISTRY is set.
    pub registry: Option<RegistryAddress>,
    /// Why the registry could not be read, when it could not (unreachable, login refused).
    pub registry_problem: Option<String>,
    /// One per service, when the registry was read.
    pub images: Vec<ImageState>,
    pub allow_branches: Vec<String>,
    pub build: bool,
    pub push_tag: bool,
}

/// One image's promotion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    pub service: Service,
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
    pub registry: RegistryAddress,
    /// The images to build and push before promoting (with --build, when missing).
    pub build: Vec<Service>,
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
}

/// How a release runs: `cargo xtask release`'s options, or a tag pipeline's.
pub struct Options {
    pub repo: PathBuf,
    pub registry: Option<String>,
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
}

/// What a release did (or would do, in a dry run): for the summary, `--json` and CI outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseReport {
    pub executed: bool,
    pub version: String,
    pub git_tag: String,
    pub revision: String,
    pub registry: String,
    /// Per image: `<registry>/intric/<service>`, its digest and its release tags.
    pub images: Vec<(Service, String, Option<String>, Vec<String>)>,
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
                "service": service.name(),
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
        location: Location { repo: Some(options.repo.clone()), registry: Some(plan.registry.to_string()) },
        services: plan.build.iter().map(|service| service.name().to_string()).collect(),
        push: true,
        dry_run: !options.execute,
        json: options.quiet,
        ..BuildArgs::default()
    }
}

/// Reads git and the registry once. The version is worked out here already (by the same pure
/// function the plan uses) because the release notes' starting point depends on it.
///
/// The registry is read without retries: a registry that is down is one of the problems the
/// plan lists at once with the others, not a wait. A registry that cannot be read is recorded
/// as such; the plan refuses with it.
pub fn read_inputs(runner: &dyn Runner, options: &Options, env: &Env) -> Result<ReleaseInputs> {
    let repo = git::Repo::open(runner, &options.repo)?;
    let head = repo.head()?;
    let tags = repo.tags()?;
    let dirty = matches!(repo.worktree()?, Worktree::Dirty { .. });
    let versions: Vec<Version> = tags.iter().filter_map(|tag| release_version(&tag.name)).collect();
    let mut previous_release = None;
    if let Ok(version) = target_version(&options.requested, &versions) {
        for tag in previous_candidates(&version, &tags) {
            if repo.is_ancestor(&tag.commit, &head.id)? {
                previous_release = Some(tag.clone());
                break;
            }
        }
    }
    let commits = repo.commit_log(&head.id, previous_release.as_ref().map(|tag| tag.commit.as_str()))?;

    let registry = location::registry_setting(options.registry.as_deref(), env)?;
    let version = target_version(&options.requested, &versions).ok();
    let (images, registry_problem) = match &registry {
        Some(address) => match read_images(runner, address, &tags::immutable_tag(&head.id), version.as_ref()) {
            Ok(images) => (images, None),
            Err(error) => (Vec::new(), Some(format!("registry {address} is unreachable or refuses us: {error:#}"))),
        },
        None => (Vec::new(), None),
    };
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
        images,
        allow_branches: options.allow_branches.clone(),
        build: options.build,
        push_tag: options.push_tag,
        head,
        tags,
    })
}

/// What the registry holds of each image: HEAD's `source` manifest, every tag, and the digest
/// of each existing tag the release of `version` may put, so that the plan knows before the
/// first write what each write does. One attempt per request (see [`read_inputs`]).
fn read_images(
    runner: &dyn Runner,
    address: &RegistryAddress,
    source: &str,
    version: Option<&Version>,
) -> Result<Vec<ImageState>> {
    let credentials = Credentials::find(address, runner)?;
    let client = Registry::new(address.clone(), credentials, Backoff::NONE);
    let candidates: Vec<String> = match version {
        Some(version) => vec![
            tags::version_tag(version),
            format!("{}.{}", version.major, version.minor),
            version.major.to_string(),
            "latest".to_string(),
        ],
        None => Vec::new(),
    };
    let mut images = Vec::new();
    for service in Service::ALL {
        let repository = service.repository();
        let tags = client.tags(&repository)?;
        let mut existing = BTreeMap::new();
        for tag in candidates.iter().filter(|tag| tags.contains(tag)) {
            if let Some(digest) = client.manifest_digest(&repository, tag)? {
                existing.insert(tag.clone(), digest);
            }
        }
        images.push(ImageState { service, source: client.manifest(&repository, source)?, tags, existing });
    }
    Ok(images)
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
    let versions: Vec<Version> = existing.iter().map(|(version, _)| version.clone()).collect();
    // "Newest" is judged from the registry's release tags too: a release pushed from another
    // clone, or whose git tag was never pushed, still counts.
    let mut released = versions.clone();
    for version in inputs.images.iter().flat_map(|image| &image.tags).filter_map(|tag| release_version(tag)) {
        if !released.iter().any(|other| other.cmp_precedence(&version) == Ordering::Equal) {
            released.push(version);
        }
    }
    let version = match target_version(&inputs.requested, &versions) {
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
    if inputs.registry.is_none() {
        problems.push("no registry: set NEXUS_REGISTRY or pass --registry HOST[:PORT]".to_string());
    }
    problems.extend(inputs.registry_problem.clone());
    let mut resumed = Vec::new();
    let source = tags::immutable_tag(&inputs.head.id);
    let version_tag = release_tags.first().cloned();
    let mut build = Vec::new();
    let mut promotions = Vec::new();
    for image in &inputs.images {
        let repository = image.service.repository();
        let digest = image.source.as_ref().map(|manifest| manifest.digest.clone());
        if digest.is_none() {
            if inputs.build {
                build.push(image.service);
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
                    "{registry}/{repository}:{tag} already exists as {existing}, which is not HEAD's image {}: \
                     release tags are immutable",
                    digest.as_deref().unwrap_or("(missing)")
                )),
                // An earlier run of this release stopped before tagging git: it is finished now.
                TagMode::Create if same_image && !git_tag_exists => resumed.push(format!("{repository}:{tag}")),
                TagMode::Create => problems.push(format!(
                    "{registry}/{repository}:{tag} already exists in the registry ({existing}): release tags are \
                     immutable; release a new version"
                )),
            }
        }
        promotions.push(Promotion {
            service: image.service,
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
    let registry = inputs.registry.clone().expect("no problems means a registry");
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
    // A tag pipeline runs because the tag was pushed already.
    let push_tag =
        (inputs.push_tag && inputs.mode == TagMode::Create).then(|| push_tag_command(&inputs.repo, &git_tag));
    Ok(ReleasePlan {
        create_tag: inputs.mode == TagMode::Create,
        git_tag,
        revision: inputs.head.id.clone(),
        repo: inputs.repo.clone(),
        registry,
        build,
        build_first: None,
        promotions,
        notes,
        push_tag,
        remarks,
        skip_immutable_floating: false,
        quiet: false,
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
            let names: Vec<&str> = self.build.iter().map(|service| service.name()).collect();
            writeln!(f, "build and push first (missing from the registry): {}", names.join(", "))?;
        }
        writeln!(f, "promote in {} (the sha- manifests' own bytes, so the digests stay):", self.registry)?;
        for promotion in &self.promotions {
            let digest = promotion.digest.as_deref().unwrap_or("to be built");
            writeln!(f, "  {}:{} ({digest}) -> {}", promotion.repository, promotion.source, promotion.tags.join(", "))?;
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
    fn manifest(&self, repository: &str, reference: &str) -> Result<Option<Manifest>>;
    fn put_manifest(&self, repository: &str, tag: &str, manifest: &Manifest) -> Result<Tagged>;
    /// Whether the existing tag may move (see [`Registry::allows_redeploy`]).
    fn allows_redeploy(&self, repository: &str, tag: &str) -> Result<bool>;
    fn create_git_tag(&self, name: &str, revision: &str, notes: &str) -> Result<()>;
}

/// The registry (retrying transient failures) and the git repository.
struct Live<'a> {
    registry: Registry,
    repo: PathBuf,
    runner: &'a dyn Runner,
}

impl ReleaseTarget for Live<'_> {
    fn manifest(&self, repository: &str, reference: &str) -> Result<Option<Manifest>> {
        self.registry.manifest(repository, reference)
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
}

impl TaskPlan for ReleasePlan {
    type Output = ReleaseReport;

    /// Builds the missing images if any, then promotes (see [`ReleasePlan::promote`]).
    fn execute(&self, runner: &dyn Runner) -> Result<ReleaseReport> {
        if let Some(build_plan) = &self.build_first {
            build_plan.execute(runner).context("building the missing images failed")?;
        }
        let live =
            Live { registry: Registry::connect(self.registry.clone(), runner)?, repo: self.repo.clone(), runner };
        self.promote(runner, &live)
    }
}

impl ReleasePlan {
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
        let mut manifests = Vec::new();
        for promotion in &self.promotions {
            let image = format!("{}/{}:{}", self.registry, promotion.repository, promotion.source);
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
        for (index, tag) in writes {
            let promotion = &self.promotions[index];
            let manifest = &manifests[index];
            let tagged =
                target.put_manifest(&promotion.repository, tag, manifest).map_err(|e| self.stopped(e, &done, total))?;
            if !self.quiet {
                let how = if tagged == Tagged::AlreadyThere { " (already there)" } else { "" };
                eprintln!("{}/{}:{tag} -> {}{how}", self.registry, promotion.repository, manifest.digest);
            }
            done.push(format!("{}:{tag}", promotion.repository));
        }
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
                    (promotion.service, image, promotion.digest.clone(), promotion.tags.clone())
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

    /// A clean `main` whose registry holds HEAD's three images, with release tags on older commits.
    fn inputs(version: &str, existing: &[&str]) -> ReleaseInputs {
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
            images: Service::ALL
                .iter()
                .map(|&service| ImageState {
                    service,
                    source: Some(manifest(&format!("sha256:{}", service.name()))),
                    tags: Vec::new(),
                    existing: BTreeMap::new(),
                })
                .collect(),
            allow_branches: Vec::new(),
            build: false,
            push_tag: false,
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
            assert_eq!(promotion.digest.as_deref(), Some(format!("sha256:{}", promotion.service.name()).as_str()));
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
        assert_eq!(plan.build, [Service::Frontend]);
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
    }

    fn recorded(fail_at: Option<usize>) -> (Recorded, crate::plan::runner::Recording) {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let commands = std::sync::Arc::clone(&log);
        let runner = crate::plan::runner::Recording::replying(move |shown| {
            commands.lock().unwrap().push(shown.to_string());
            Ok(String::new())
        });
        (Recorded { log, fail_at, immutable: Vec::new() }, runner)
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
                image.existing.insert(tag.into(), format!("sha256:old-{}", image.service.name()));
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
}
