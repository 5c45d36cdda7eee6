//! Releases: promote the images the default branch already built and pushed as
//! `sha-<12 hex>` to a release, without rebuilding them, and tag the commit `vX.Y.Z`.
//!
//! Reads once ([`read_inputs`]): git (HEAD, branch, default branch, clean or not, every tag,
//! the commits since the previous release) and the registry (HEAD's `sha-` manifest of each
//! image, and whether the release's version tag exists already). Plans ([`plan`], pure): the
//! guards, all checked together; the version (given, or `--bump`ed from the newest release);
//! the release tags of each image (`X.Y.Z`, and `X.Y`, `X`, `latest` by the tag engine's
//! [`tags::release_tags`], from the git tags); the annotated git tag and its release notes.
//! Executes only with `--execute`: first the registry (a `PUT` of each `sha-` manifest's own
//! bytes under every release tag, so the digests are equal and no layer moves), then the git
//! tag, so a failure part-way leaves no git tag behind; then, with `--push-tag`,
//! `git push origin vX.Y.Z`. With `--build`, images missing from the registry are built and
//! pushed first by the build task (`sha-` tag only), then promoted like the others.
//!
//! `cargo xtask ci --stage release` runs the same code for a tag pipeline, where the git tag
//! exists already ([`TagMode::Existing`]).

use std::cmp::Ordering;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use semver::{Prerelease, Version};

use crate::adapters::ci_env::Env;
use crate::adapters::git::{self, Commit, Worktree};
use crate::adapters::registry::{Manifest, Registry};
use crate::images::Service;
use crate::images::build::{self, BuildArgs, BuildPlan};
use crate::images::location::{self, Location};
use crate::images::tags::{self, release_version};
use crate::plan::runner::{Processes, Runner};
use crate::plan::{Command, TaskPlan};

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
    /// The digest under the release's version tag (`X.Y.Z`), `None` when it is free.
    pub existing_release: Option<String>,
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
    pub registry: Option<String>,
    /// One per service, when there is a registry.
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
    /// Of `tags`, those that need a PUT: all of them, except in a tag pipeline the version tag
    /// when it already holds this digest.
    pub put: Vec<String>,
}

/// The whole release, as data: what `--execute` does and the dry run prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleasePlan {
    pub version: Version,
    /// The git tag: `vX.Y.Z`, or the existing tag's name.
    pub git_tag: String,
    /// Whether the git tag is created (false in a tag pipeline).
    pub create_tag: bool,
    pub revision: String,
    pub registry: String,
    /// The images to build and push before promoting (with --build, when missing).
    pub build: Vec<Service>,
    pub promotions: Vec<Promotion>,
    /// The annotated tag's message.
    pub notes: String,
    pub push_tag: Option<Command>,
    /// Things worth knowing that are not problems (which floating tags stay where they are).
    pub remarks: Vec<String>,
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
    /// Keep progress and the plan off standard output (for --json).
    pub quiet: bool,
}

/// What a release did (or would do, in a dry run): for the summary, `--json` and CI outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub executed: bool,
    pub version: String,
    pub git_tag: String,
    pub revision: String,
    pub registry: String,
    /// Per image: `<registry>/intric/<service>`, its digest and its release tags.
    pub images: Vec<(Service, String, Option<String>, Vec<String>)>,
}

impl Outcome {
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

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let done = if self.executed { "released" } else { "would release" };
        writeln!(f, "{done} {} ({}) from {}", self.version, self.git_tag, &self.revision[..12])?;
        for (_, image, digest, tags) in &self.images {
            writeln!(f, "  {image}@{}: {}", digest.as_deref().unwrap_or("(to be built)"), tags.join(", "))?;
        }
        Ok(())
    }
}

/// Reads, plans and (with `execute`) runs a release; prints the plan unless it executes quietly.
pub fn release(options: &Options, env: &Env) -> Result<Outcome> {
    let runner = Processes::new();
    let (inputs, registry) = read_inputs(options, env)?;
    let plan = plan(&inputs)?;
    // The build's own plan is read only when it will be needed, and shown with the release's.
    let build = if plan.build.is_empty() {
        None
    } else {
        let args = build_args(options, &plan);
        Some(build::prepare(&runner, &args, env, Some(vec![tags::immutable_tag(&plan.revision)]))?)
    };
    if !options.execute {
        let shown =
            format!("{plan}{}", build.as_ref().map(|build| format!("build first:\n{build}")).unwrap_or_default());
        if options.quiet {
            eprint!("{shown}")
        } else {
            print!("{shown}")
        }
        return Ok(outcome(&plan, false));
    }
    let registry = registry.context("a release needs a registry")?;
    execute(&runner, &options.repo, &plan, &registry, build.as_ref(), options.quiet)?;
    let mut done = outcome(&plan, true);
    // Built images' digests are known only now.
    for (service, _, digest, _) in &mut done.images {
        if digest.is_none() {
            *digest = registry.manifest_digest(&service.repository(), &tags::immutable_tag(&plan.revision))?;
        }
    }
    Ok(done)
}

/// The build task's options for building and pushing HEAD's missing images: a dry run when
/// the release is one, quiet when the release prints JSON.
fn build_args(options: &Options, plan: &ReleasePlan) -> BuildArgs {
    BuildArgs {
        location: Location { repo: Some(options.repo.clone()), registry: Some(plan.registry.clone()) },
        services: plan.build.iter().map(|service| service.name().to_string()).collect(),
        push: true,
        dry_run: !options.execute,
        json: options.quiet,
        ..BuildArgs::default()
    }
}

fn outcome(plan: &ReleasePlan, executed: bool) -> Outcome {
    Outcome {
        executed,
        version: plan.version.to_string(),
        git_tag: plan.git_tag.clone(),
        revision: plan.revision.clone(),
        registry: plan.registry.clone(),
        images: plan
            .promotions
            .iter()
            .map(|promotion| {
                let image = format!("{}/{}", plan.registry, promotion.repository);
                (promotion.service, image, promotion.digest.clone(), promotion.tags.clone())
            })
            .collect(),
    }
}

/// Reads git and the registry once. The version is worked out here already (by the same pure
/// function the plan uses) because the release notes' starting point depends on it.
pub fn read_inputs(options: &Options, env: &Env) -> Result<(ReleaseInputs, Option<Registry>)> {
    let repo = git::Repo::open(&options.repo)?;
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

    let registry_setting = location::registry_setting(options.registry.as_deref(), env);
    let mut images = Vec::new();
    let client = match &registry_setting {
        Some(setting) => Some(build::registry_client(setting)?),
        None => None,
    };
    if let Some(client) = &client {
        let version_tag = target_version(&options.requested, &versions).ok().map(|version| tags::version_tag(&version));
        let source = tags::immutable_tag(&head.id);
        for service in Service::ALL {
            let repository = service.repository();
            let existing_release = match &version_tag {
                Some(tag) => client.manifest_digest(&repository, tag)?,
                None => None,
            };
            images.push(ImageState { service, source: client.manifest(&repository, &source)?, existing_release });
        }
    }
    let inputs = ReleaseInputs {
        repo: options.repo.clone(),
        requested: options.requested.clone(),
        mode: options.mode.clone(),
        branch: repo.branch()?,
        default_branch: repo.default_branch(),
        dirty,
        previous_release: previous_release.map(|tag| tag.name),
        commits,
        registry: registry_setting
            .map(|setting| client.as_ref().map_or(setting, |client| client.address().to_string())),
        images,
        allow_branches: options.allow_branches.clone(),
        build: options.build,
        push_tag: options.push_tag,
        head,
        tags,
    };
    Ok((inputs, client))
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
            && let Some(problem) = ordering_problem(version, &versions)
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
        // The floating tags follow the git tags, the source of truth for "newest", exactly as
        // a build of the tagged commit would get them from the tag engine.
        let all: Vec<Version> = versions.iter().cloned().chain(std::iter::once(version.clone())).collect();
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

    let registry = inputs.registry.clone().unwrap_or_default();
    if inputs.registry.is_none() {
        problems.push("no registry: set NEXUS_REGISTRY or pass --registry HOST[:PORT]".to_string());
    }
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
        let mut put = release_tags.clone();
        if let (Some(version_tag), Some(existing)) = (&version_tag, &image.existing_release) {
            let same_image = digest.as_ref() == Some(existing);
            match &inputs.mode {
                // A tag pipeline after `release --execute`: the version tag is already right.
                TagMode::Existing(_) if same_image => put.retain(|tag| tag != version_tag),
                TagMode::Existing(_) => problems.push(format!(
                    "{registry}/{repository}:{version_tag} already exists as {existing}, which is not HEAD's \
                     image {}: release tags are immutable",
                    digest.as_deref().unwrap_or("(missing)")
                )),
                TagMode::Create => problems.push(format!(
                    "{registry}/{repository}:{version_tag} already exists in the registry ({existing}{}): release \
                     tags are immutable; release a new version",
                    if same_image && !git_tag_exists {
                        ", HEAD's image: did an earlier release stop before tagging git?"
                    } else {
                        ""
                    }
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
        });
    }

    if !problems.is_empty() {
        let what = version.as_ref().map_or_else(|| "release".to_string(), |version| format!("release {version}"));
        bail!("cannot {what}:\n  - {}", problems.join("\n  - "));
    }
    let version = version.expect("no problems means a version");
    let mut remarks = Vec::new();
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
        registry,
        build,
        promotions,
        notes,
        push_tag,
        remarks,
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
            for tag in &promotion.put {
                writeln!(f, "    PUT /v2/{}/manifests/{tag}", promotion.repository)?;
            }
        }
        if self.create_tag {
            writeln!(f, "git: annotated tag {} on {}", self.git_tag, &self.revision[..12])?;
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
        Ok(())
    }
}

/// Runs the plan: the build if any, the registry, then git.
fn execute(
    runner: &dyn Runner,
    repo: &Path,
    plan: &ReleasePlan,
    registry: &Registry,
    build: Option<&BuildPlan>,
    quiet: bool,
) -> Result<()> {
    if let Some(build_plan) = build {
        build_plan.execute(runner).context("building the missing images failed")?;
    }
    for promotion in &plan.promotions {
        let manifest = registry.manifest(&promotion.repository, &promotion.source)?.with_context(|| {
            format!("{}/{}:{} is missing from the registry", plan.registry, promotion.repository, promotion.source)
        })?;
        if let Some(expected) = &promotion.digest
            && *expected != manifest.digest
        {
            bail!(
                "{}/{}:{} changed while releasing ({expected} became {}): nothing was tagged in git; run the release again",
                plan.registry,
                promotion.repository,
                promotion.source,
                manifest.digest
            );
        }
        for tag in &promotion.put {
            let digest = registry.put_manifest(&promotion.repository, tag, &manifest)?;
            if digest != manifest.digest {
                bail!(
                    "{}/{}:{tag} got digest {digest}, not {}: the registry rewrote the manifest",
                    plan.registry,
                    promotion.repository,
                    manifest.digest
                );
            }
            if !quiet {
                eprintln!("{}/{}:{tag} -> {digest}", plan.registry, promotion.repository);
            }
        }
    }
    if plan.create_tag {
        git::Repo::open(repo)?.create_annotated_tag(&plan.git_tag, &plan.revision, &plan.notes)?;
        if !quiet {
            eprintln!("created git tag {} on {}", plan.git_tag, &plan.revision[..12]);
        }
    }
    if let Some(push) = &plan.push_tag {
        runner.run(push, &mut |line| eprintln!("{line}"))?;
    }
    Ok(())
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
            registry: Some("nexus.example:8082".into()),
            images: Service::ALL
                .iter()
                .map(|&service| ImageState {
                    service,
                    source: Some(manifest(&format!("sha256:{}", service.name()))),
                    existing_release: None,
                })
                .collect(),
            allow_branches: Vec::new(),
            build: false,
            push_tag: false,
        }
    }

    fn error_of(inputs: &ReleaseInputs) -> String {
        format!("{:#}", plan(inputs).expect_err("the release is refused"))
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
        refused.images[1].existing_release = Some("sha256:older".into());
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
        pipeline.images[0].existing_release = Some("sha256:backend".into());
        let plan = plan(&pipeline).unwrap();
        assert!(!plan.create_tag);
        assert_eq!(plan.git_tag, "v1.0.0");
        assert_eq!(plan.promotions[0].put, ["1.0", "1", "latest"], "the version tag is already right");
        assert_eq!(plan.promotions[1].put, ["1.0.0", "1.0", "1", "latest"]);

        // A rerun of an older rc's pipeline: fine, and it moves no floating tag.
        let mut old_rc = pipeline.clone();
        old_rc.requested = Requested::Version("1.0.0-rc.1".into());
        old_rc.tags.push(git::Tag { name: "v1.0.0-rc.1".into(), commit: HEAD.into() });
        old_rc.images[0].existing_release = None;
        assert_eq!(super::plan(&old_rc).unwrap().promotions[0].put, ["1.0.0-rc.1"]);

        pipeline.images[1].existing_release = Some("sha256:another".into());
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
}
