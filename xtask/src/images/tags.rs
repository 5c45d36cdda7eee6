//! The image tag rules: which tags the current git state earns.
//!
//! Two parts keep the rules testable without repositories:
//! - [`read_inputs`] reads git and the environment once into [`Inputs`] (the only I/O), and
//!   [`read_all`] the [`Provenance`] too;
//! - [`compute_tags`] applies the tag rules to the inputs, and [`compute`] adds the version
//!   and provenance: pure functions with table-driven tests.
//!
//! The tags task prints [`resolve_tags`]'s tags, or [`resolve`]'s report with `--json`; build
//! and ci call [`resolve`], and [`is_valid_image_tag`] to check tags they are given; `release`
//! calls [`release_tags`] so a promotion earns exactly the floating tags a build of the release
//! tag would. The tags alone need fewer git processes: no HEAD commit time, no origin, no
//! history walk.

use std::path::Path;

use anyhow::{Result, bail};
use clap::ValueEnum;
use semver::Version;

use crate::adapters::ci_env::{CiContext, CiEvent, Env};
use crate::adapters::git::{self, Worktree};
use crate::plan::runner::Runner;

/// The `--stage` option: a stage, or `auto` to detect it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum StageChoice {
    #[default]
    Auto,
    Pr,
    Branch,
    Main,
    Release,
}

/// What is being built, which decides the stage's tag and whether it is pushed by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A pull request (GitHub) or merge request (GitLab).
    Pr,
    /// A branch other than the default one.
    Branch,
    /// The default branch.
    Main,
    /// A commit carrying a semver tag.
    Release,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Pr => "pr",
            Stage::Branch => "branch",
            Stage::Main => "main",
            Stage::Release => "release",
        }
    }

    /// Whether builds of this stage are pushed by default: only the default branch and releases,
    /// whose tags others deploy from.
    pub fn pushes(self) -> bool {
        matches!(self, Stage::Main | Stage::Release)
    }
}

/// What the tag rules give: the image tags of this build and what the user should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageTags {
    /// The CI system the build runs in, by name, `None` outside CI.
    pub ci: Option<&'static str>,
    pub stage: Stage,
    /// HEAD's full commit id.
    pub revision: String,
    /// The first 12 hex digits of `revision`.
    pub short_revision: String,
    pub branch: Option<String>,
    pub dirty: bool,
    /// Image tags, without registry or repository, the immutable `sha-` tag first.
    pub tags: Vec<String>,
    /// Whether this build is pushed by default.
    pub push: bool,
    /// The tag IMAGE_TAG added, if it did.
    pub extra_tag: Option<String>,
    /// Things the user should know: ignored tags or variables, guesses made.
    pub notes: Vec<String>,
    /// The highest release a tag on HEAD names: the build's version, if there is one.
    pub release: Option<Version>,
}

/// The result: what to tag the images of this build (the tag rules' [`ImageTags`]) and what
/// to call its version, when, and from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagReport {
    pub image: ImageTags,
    /// The exact semver: the release's version, or a dev version between releases.
    pub version: String,
    /// HEAD's committer time in unix seconds (the OCI `created` label, reproducibly).
    pub commit_time: i64,
    /// Where the source lives: `origin`'s URL without credentials (the images' source label).
    pub source: Option<String>,
}

impl TagReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ci": self.image.ci,
            "stage": self.image.stage.name(),
            "version": self.version,
            "revision": self.image.revision,
            "short_revision": self.image.short_revision,
            "commit_time": self.commit_time,
            "branch": self.image.branch,
            "dirty": self.image.dirty,
            "tags": self.image.tags,
            "push": self.image.push,
            "extra_tag": self.image.extra_tag,
            "notes": self.image.notes,
        })
    }
}

/// Everything the tag rules read, gathered once by [`read_inputs`] or [`read_all`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// HEAD's full commit id.
    pub revision: String,
    /// The checked-out branch according to git, `None` on a detached HEAD.
    pub branch: Option<String>,
    /// Names of the tags on HEAD in git.
    pub head_tags: Vec<String>,
    /// Names of all tags in git, in no particular order.
    pub all_tags: Vec<String>,
    /// The default branch according to git.
    pub default_branch: Option<String>,
    pub worktree: Worktree,
    /// A shallow clone: tags and history may be missing.
    pub shallow: bool,
    pub ci: Option<CiContext>,
    /// `IMAGE_TAG` from the environment, not yet validated.
    pub image_tag: Option<String>,
}

/// Where and when the build's source comes from, for its version and labels: read by
/// [`read_all`] only, since it costs git processes the tags alone do not need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provenance {
    /// HEAD's committer time in unix seconds.
    pub commit_time: i64,
    /// The highest stable release HEAD contains.
    pub last_release: Option<Version>,
    /// Commits since `last_release`, or all commits when there is none.
    pub commits_since_release: u64,
    /// `origin`'s URL without credentials, when there is an origin.
    pub origin: Option<String>,
}

/// The tags, version and provenance for `repo` as seen from the environment `env`: what other
/// tasks call. `runner` runs the git processes that read the repository.
pub fn resolve(runner: &dyn Runner, repo: &Path, stage: StageChoice, env: &Env) -> Result<TagReport> {
    let (inputs, provenance) = read_all(runner, repo, env)?;
    compute(&inputs, &provenance, stage)
}

/// The image tags alone for `repo` as seen from `env`, without the version and provenance.
pub fn resolve_tags(runner: &dyn Runner, repo: &Path, stage: StageChoice, env: &Env) -> Result<ImageTags> {
    compute_tags(&read_inputs(runner, repo, env)?, stage)
}

/// Reads the git facts of `repo` that the tag rules need, and the CI variables and IMAGE_TAG
/// of `env`.
pub fn read_inputs(runner: &dyn Runner, repo_path: &Path, env: &Env) -> Result<Inputs> {
    let reading = git::Reading { tag_commits: false, commit_time: false, origin: false, likely_ancestor: None };
    let (inputs, _) = read_repository(runner, repo_path, env, &reading)?;
    Ok(inputs)
}

/// [`read_inputs`] and the [`Provenance`]: HEAD's commit time, the origin and the last release.
/// The ancestry of the newest stable release is asked as the repository is read, so the usual
/// case costs no process after the others.
pub fn read_all(runner: &dyn Runner, repo_path: &Path, env: &Env) -> Result<(Inputs, Provenance)> {
    let reading = git::Reading {
        tag_commits: true,
        commit_time: true,
        origin: true,
        likely_ancestor: Some(&newest_stable_release),
    };
    let (inputs, repo) = read_repository(runner, repo_path, env, &reading)?;
    let (last_release, commits_since_release) = last_release(&repo, &inputs.revision, &repo.tags()?)?;
    let provenance =
        Provenance { commit_time: repo.head()?.time, last_release, commits_since_release, origin: repo.origin_url() };
    Ok((inputs, provenance))
}

/// Opens `repo_path` reading what `reading` asks, and reads the [`Inputs`] from it and `env`;
/// also returns the repository for further questions.
fn read_repository<'r>(
    runner: &'r dyn Runner,
    repo_path: &Path,
    env: &Env,
    reading: &git::Reading,
) -> Result<(Inputs, git::Repo<'r>)> {
    let ci = CiContext::detect(env)?;
    // An empty IMAGE_TAG is how env files and compose leave it unset, so it adds nothing.
    let image_tag = env.get("IMAGE_TAG").filter(|tag| !tag.is_empty()).cloned();
    let repo = git::Repo::open_reading(runner, repo_path, reading)?;
    let inputs = Inputs {
        revision: repo.head_id()?,
        branch: repo.branch()?,
        head_tags: repo.head_tags(),
        all_tags: repo.tag_names(),
        default_branch: repo.default_branch(),
        worktree: repo.worktree()?,
        shallow: repo.is_shallow(),
        ci,
        image_tag,
    };
    Ok((inputs, repo))
}

/// Of the tag names `names`, the index of the highest stable release: the tag whose ancestry
/// [`last_release`] asks first.
fn newest_stable_release(names: &[&str]) -> Option<usize> {
    let stable = names.iter().enumerate().filter_map(|(index, name)| {
        release_version(name).filter(|version| version.pre.is_empty()).map(|version| (version, index))
    });
    stable.max().map(|(_, index)| index)
}

/// The highest stable release contained in HEAD's history, and the commits since it.
///
/// Candidates are tried from the highest version down, so the usual case (the newest release
/// is an ancestor) costs one git process walking back to that release, which [`read_all`]
/// started beside the others (see [`newest_stable_release`]); each miss (a newer
/// release on another line, as when HEAD is a backport branch) walks only back to the merge base.
fn last_release(repo: &git::Repo, head: &str, tags: &[git::Tag]) -> Result<(Option<Version>, u64)> {
    let mut stable: Vec<(Version, &str)> = tags
        .iter()
        .filter_map(|tag| release_version(&tag.name).filter(|version| version.pre.is_empty()).zip(Some(&*tag.commit)))
        .collect();
    stable.sort_unstable_by(|a, b| b.cmp(a));
    let mut not_ancestors = Vec::new();
    for (version, commit) in stable {
        if not_ancestors.contains(&commit) {
            continue;
        }
        if let Some(count) = repo.commits_after(commit, head)? {
            return Ok((Some(version), count));
        }
        not_ancestors.push(commit);
    }
    Ok((None, repo.commits_since(head, None)?))
}

/// Applies the tag rules to `inputs` and adds the version and provenance. Pure: no disk, no
/// processes, no environment.
pub fn compute(inputs: &Inputs, provenance: &Provenance, choice: StageChoice) -> Result<TagReport> {
    let tags = compute_tags(inputs, choice)?;
    let version = match &tags.release {
        Some(version) => version.to_string(),
        None => dev_version(provenance.last_release.as_ref(), provenance.commits_since_release, &tags.short_revision),
    };
    Ok(TagReport { image: tags, version, commit_time: provenance.commit_time, source: provenance.origin.clone() })
}

/// Applies the tag rules to `inputs`. Pure: no disk, no processes, no environment.
pub fn compute_tags(inputs: &Inputs, choice: StageChoice) -> Result<ImageTags> {
    let mut notes = Vec::new();
    let event = inputs.ci.as_ref().and_then(|ci| ci.event.as_ref());
    // In a shallow CI checkout the tag being built may exist only in the CI variables.
    let ci_tag = match event {
        Some(CiEvent::Tag { name }) => Some(name.as_str()),
        _ => None,
    };
    let head_tags: Vec<&str> = inputs.head_tags.iter().map(String::as_str).chain(ci_tag).collect();
    let head_release = head_tags.iter().filter_map(|tag| release_version(tag)).max();
    let branch = match event {
        Some(CiEvent::Branch { name }) | Some(CiEvent::PullRequest { source_branch: Some(name), .. }) => {
            Some(name.clone())
        }
        _ => inputs.branch.clone(),
    };
    let default_branch =
        inputs.ci.as_ref().and_then(|ci| ci.default_branch.as_deref()).or(inputs.default_branch.as_deref());
    let stage = match choice {
        StageChoice::Auto => detect_stage(event, head_release.is_some(), branch.as_deref(), default_branch),
        StageChoice::Pr => Stage::Pr,
        StageChoice::Branch => Stage::Branch,
        StageChoice::Main => Stage::Main,
        StageChoice::Release => Stage::Release,
    };

    let short_revision = inputs.revision[..12].to_string();
    let stage_tags = match stage {
        Stage::Pr => match event {
            Some(CiEvent::PullRequest { number, .. }) => vec![format!("pr-{number}")],
            _ => bail!(
                "--stage pr needs a pull request number from CI (GITHUB_REF=refs/pull/N/merge, \
                 CI_MERGE_REQUEST_IID or CHANGE_ID), and none is set; use --stage branch outside CI"
            ),
        },
        Stage::Branch => match &branch {
            Some(name) => {
                let slug = branch_slug(name);
                if slug.is_empty() {
                    notes.push(format!("branch `{name}` has no character usable in an image tag, so no branch tag"));
                    Vec::new()
                } else {
                    if default_branch.is_none() && choice == StageChoice::Auto {
                        notes.push(format!(
                            "the default branch is unknown (no CI_DEFAULT_BRANCH, origin/HEAD, main or master), \
                             so `{name}` counts as a feature branch"
                        ));
                    }
                    vec![slug]
                }
            }
            None => {
                notes.push("detached HEAD outside a branch build, so no branch tag".to_string());
                Vec::new()
            }
        },
        Stage::Main => vec!["dev-latest".to_string()],
        Stage::Release => match &head_release {
            Some(version) => {
                let all_versions: Vec<Version> =
                    inputs.all_tags.iter().map(String::as_str).chain(ci_tag).filter_map(release_version).collect();
                release_tags(version, &all_versions)?
            }
            None if head_tags.is_empty() => bail!(
                "--stage release needs a semver tag on HEAD ({short_revision}), which carries no tag; \
                 tag the release first, e.g. `git tag -a v1.2.3 -m v1.2.3`"
            ),
            None => bail!(
                "--stage release needs a semver tag on HEAD, but its tags ({}) are not semver versions; \
                 tag the release as vX.Y.Z or X.Y.Z",
                head_tags.join(", ")
            ),
        },
    };
    for tag in head_tags.iter().filter(|tag| release_version(tag).is_none()) {
        notes.push(format!("HEAD's tag `{tag}` is not a semver version (X.Y.Z or vX.Y.Z), so it gives no image tag"));
    }
    if inputs.shallow {
        notes.push(
            "shallow clone: `latest`, `X.Y`, `X` and the dev version's commit count consider only the tags \
             and commits fetched; `git fetch --unshallow --tags` makes them exact"
                .to_string(),
        );
    }

    let image_tag = inputs.image_tag.as_deref();
    if let Some(tag) = image_tag.filter(|tag| !is_valid_image_tag(tag)) {
        bail!(
            "IMAGE_TAG=`{tag}` is not a valid image tag: it must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}; \
             fix or unset IMAGE_TAG"
        );
    }
    if let Some((tag, mover)) = image_tag.and_then(|tag| moved_by(tag, &short_revision).map(|mover| (tag, mover))) {
        bail!(
            "IMAGE_TAG=`{tag}` would move a tag that {mover}; unset IMAGE_TAG (a shell that sourced \
             a deployment's .env has it) or give it a tag of your own, e.g. IMAGE_TAG=qa-{short_revision}"
        );
    }
    let (tags, push, extra_tag) = match &inputs.worktree {
        Worktree::Dirty { digest } => {
            if let Some(tag) = image_tag {
                notes.push(format!(
                    "IMAGE_TAG=`{tag}` is not applied: a dirty working tree gets only its sha-…-dirty tag"
                ));
            }
            (vec![format!("{}-dirty-{}", immutable_tag(&inputs.revision), &digest[..8])], false, None)
        }
        Worktree::Clean => {
            let mut tags = vec![immutable_tag(&inputs.revision)];
            tags.extend(stage_tags);
            if let Some(tag) = image_tag {
                notes.push(format!("IMAGE_TAG adds the tag `{tag}`"));
                if !tags.iter().any(|existing| existing == tag) {
                    tags.push(tag.to_string());
                }
            }
            (tags, stage.pushes(), image_tag.map(str::to_string))
        }
    };

    Ok(ImageTags {
        ci: inputs.ci.as_ref().map(|ci| ci.provider.name()),
        stage,
        revision: inputs.revision.clone(),
        short_revision,
        branch,
        dirty: matches!(inputs.worktree, Worktree::Dirty { .. }),
        tags,
        push,
        extra_tag,
        notes,
        release: head_release,
    })
}

/// The stage for `--stage auto`: the CI event when there is one, else git's view, where a
/// semver tag on HEAD makes a release whatever the branch.
fn detect_stage(
    event: Option<&CiEvent>,
    head_is_release: bool,
    branch: Option<&str>,
    default_branch: Option<&str>,
) -> Stage {
    match event {
        Some(CiEvent::PullRequest { .. }) => Stage::Pr,
        Some(CiEvent::Tag { name }) if release_version(name).is_some() => Stage::Release,
        Some(CiEvent::Branch { name }) if Some(name.as_str()) == default_branch => Stage::Main,
        Some(CiEvent::Branch { .. }) => Stage::Branch,
        // A non-semver tag push, or a CI job naming no event, is judged by git like a local build.
        _ if head_is_release => Stage::Release,
        _ if branch.is_some() && branch == default_branch => Stage::Main,
        _ => Stage::Branch,
    }
}

/// The version a release tag names: `X.Y.Z` with optional pre-release and build metadata, with
/// or without a leading `v`. Anything else is not a release tag.
pub fn release_version(tag: &str) -> Option<Version> {
    Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// The tags of release `version`, given every version tagged in the repository: the full
/// version, then `X.Y`, `X` and `latest` where it is the newest stable release of that range.
/// Pre-releases get only their full version and are never "newer" than a stable release.
pub fn release_tags(version: &Version, all: &[Version]) -> Result<Vec<String>> {
    let full = version_tag(version);
    if !is_valid_image_tag(&full) {
        bail!("version {version} is too long for an image tag (at most 128 characters)");
    }
    let mut tags = vec![full];
    if version.pre.is_empty() {
        let newest_where = |same_range: &dyn Fn(&Version) -> bool| {
            !all.iter()
                .any(|other| other.pre.is_empty() && same_range(other) && precedence(other) > precedence(version))
        };
        if newest_where(&|other| other.major == version.major && other.minor == version.minor) {
            tags.push(format!("{}.{}", version.major, version.minor));
        }
        // A bare `0` would float across versions that semver allows to break anything.
        if version.major > 0 && newest_where(&|other| other.major == version.major) {
            tags.push(version.major.to_string());
        }
        if newest_where(&|_| true) {
            tags.push("latest".to_string());
        }
    }
    Ok(tags)
}

/// Release precedence of a stable version; build metadata does not count.
fn precedence(version: &Version) -> (u64, u64, u64) {
    (version.major, version.minor, version.patch)
}

/// A version that sorts after the last stable release and before the next one:
/// `X.Y.(Z+1)-dev.N+g<12 hex>`, or `0.0.0-dev.N+g<12 hex>` before the first release.
fn dev_version(last_release: Option<&Version>, commits: u64, short_revision: &str) -> String {
    let (major, minor, patch) = last_release.map_or((0, 0, 0), |last| (last.major, last.minor, last.patch + 1));
    format!("{major}.{minor}.{patch}-dev.{commits}+g{short_revision}")
}

/// The image tag for a branch: lowercase, each run of characters outside `[a-z0-9._-]` as one
/// `-`, leading and trailing `-` and `.` trimmed, at most 128 characters. Empty when nothing
/// usable remains.
pub fn branch_slug(branch: &str) -> String {
    let mut slug = String::with_capacity(branch.len());
    let mut in_run = false;
    for c in branch.chars().flat_map(char::to_lowercase) {
        let allowed = c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
        if allowed {
            slug.push(c);
        } else if !in_run {
            slug.push('-');
        }
        in_run = !allowed;
    }
    let mut slug = slug.trim_matches(['-', '.']).to_string();
    // Only ASCII is left, so truncating at a byte count is safe.
    slug.truncate(128);
    slug.trim_end_matches(['-', '.']).to_string()
}

/// The immutable tag of the images built from commit `revision` (a full commit id):
/// `sha-` and its first 12 hex digits.
pub fn immutable_tag(revision: &str) -> String {
    format!("sha-{}", &revision[..revision.len().min(12)])
}

/// The image tag of a release version: image tags cannot contain `+`, so `_` takes its place
/// and keeps the build metadata readable.
pub fn version_tag(version: &Version) -> String {
    version.to_string().replace('+', "_")
}

/// Which stage moves `tag`, when it is one that only its stage may move; `None` for a tag of
/// one's own. IMAGE_TAG must not add such a tag: a shell that sourced a deployment's `.env`
/// (`IMAGE_TAG=latest`) would otherwise make a feature branch's build move `latest` for every
/// server that deploys it.
fn moved_by(tag: &str, short_revision: &str) -> Option<&'static str> {
    let numeric = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
    let parts: Vec<&str> = tag.split('.').collect();
    if tag == "latest" {
        Some("only the release stage moves, to the newest release")
    } else if tag == "dev-latest" {
        Some("the main stage moves on every build of the default branch")
    } else if parts.len() <= 2 && parts.iter().all(|part| numeric(part)) {
        Some("the release stage moves (`X` and `X.Y` name the newest release of their line)")
    } else if release_version(&tag.replace('_', "+")).is_some() {
        Some("the release stage gives a release (`cargo xtask release`)")
    } else if let Some(revision) = tag.strip_prefix("sha-") {
        let revision = revision.split('-').next().unwrap_or_default();
        (revision != short_revision).then_some("names another commit (every build tags its own `sha-`)")
    } else if tag.starts_with("inputs-") || tag == "inline-cache" || tag == "buildcache" {
        Some("the build keeps for its cache and its unchanged-image check")
    } else {
        None
    }
}

/// Whether `tag` is a valid image tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_valid_image_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_';
    chars.next().is_some_and(allowed) && tag.len() <= 128 && chars.all(|c| allowed(c) || c == '.' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::ci_env::CiProvider;

    const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";
    const SHA: &str = "sha-0123456789ab";
    const DIRTY: &str = "f00dcafe0123456789";

    /// A clean checkout of `main`, 3 commits in, no tags, outside CI.
    fn base() -> Inputs {
        Inputs {
            revision: REVISION.to_string(),
            branch: Some("main".to_string()),
            head_tags: Vec::new(),
            all_tags: Vec::new(),
            default_branch: Some("main".to_string()),
            worktree: Worktree::Clean,
            shallow: false,
            ci: None,
            image_tag: None,
        }
    }

    /// 3 commits, no release before them, no origin.
    fn provenance() -> Provenance {
        Provenance { commit_time: 1_700_000_000, last_release: None, commits_since_release: 3, origin: None }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    fn tagged(head: &[&str], all: &[&str]) -> impl Fn(&mut Inputs) {
        let (head, all) = (strings(head), strings(all));
        move |inputs| {
            inputs.head_tags = head.clone();
            inputs.all_tags = all.clone();
        }
    }

    fn ci(provider: CiProvider, event: CiEvent, default_branch: Option<&str>) -> Option<CiContext> {
        Some(CiContext { provider, event: Some(event), default_branch: default_branch.map(str::to_string) })
    }

    /// Changes the base inputs into a case's inputs.
    type Setup = Box<dyn Fn(&mut Inputs)>;

    struct Case {
        name: &'static str,
        setup: Setup,
        stage: StageChoice,
        expect_stage: Stage,
        expect_tags: &'static [&'static str],
        expect_version: &'static str,
    }

    fn case(
        name: &'static str,
        setup: impl Fn(&mut Inputs) + 'static,
        stage: StageChoice,
        expect_stage: Stage,
        expect_tags: &'static [&'static str],
        expect_version: &'static str,
    ) -> Case {
        Case { name, setup: Box::new(setup), stage, expect_stage, expect_tags, expect_version }
    }

    #[test]
    fn tag_rules() {
        use StageChoice::Auto;
        let dev = "0.0.0-dev.3+g0123456789ab";
        let cases = [
            case("default branch", |_| {}, Auto, Stage::Main, &[SHA, "dev-latest"], dev),
            case(
                "feature branch",
                |i| i.branch = Some("Feature/JIRA-12_Add Thing".into()),
                Auto,
                Stage::Branch,
                &[SHA, "feature-jira-12_add-thing"],
                dev,
            ),
            case("detached head", |i| i.branch = None, Auto, Stage::Branch, &[SHA], dev),
            case(
                "master is the default",
                |i| {
                    i.branch = Some("master".into());
                    i.default_branch = Some("master".into());
                },
                Auto,
                Stage::Main,
                &[SHA, "dev-latest"],
                dev,
            ),
            case(
                "newest release",
                tagged(&["v1.4.0"], &["v0.9.0", "v1.3.0", "v1.4.0"]),
                Auto,
                Stage::Release,
                &[SHA, "1.4.0", "1.4", "1", "latest"],
                "1.4.0",
            ),
            case(
                "release without v",
                tagged(&["2.0.0"], &["2.0.0"]),
                Auto,
                Stage::Release,
                &[SHA, "2.0.0", "2.0", "2", "latest"],
                "2.0.0",
            ),
            case(
                "release on a feature branch",
                |i| {
                    tagged(&["v1.0.0"], &["v1.0.0"])(i);
                    i.branch = Some("topic".into());
                },
                Auto,
                Stage::Release,
                &[SHA, "1.0.0", "1.0", "1", "latest"],
                "1.0.0",
            ),
            case(
                "release candidate",
                tagged(&["v2.0.0-rc.1"], &["v1.4.0", "v2.0.0-rc.1"]),
                Auto,
                Stage::Release,
                &[SHA, "2.0.0-rc.1"],
                "2.0.0-rc.1",
            ),
            case(
                "newer pre-release does not count",
                tagged(&["v1.4.0"], &["v1.4.0", "v1.5.0-rc.1", "v2.0.0-alpha"]),
                Auto,
                Stage::Release,
                &[SHA, "1.4.0", "1.4", "1", "latest"],
                "1.4.0",
            ),
            case(
                "backport patch while a newer major exists",
                tagged(&["v1.4.1"], &["v1.4.0", "v1.4.1", "v2.0.0"]),
                Auto,
                Stage::Release,
                &[SHA, "1.4.1", "1.4", "1"],
                "1.4.1",
            ),
            case(
                "backport to an older minor",
                tagged(&["v1.3.5"], &["v1.3.4", "v1.3.5", "v1.4.0", "v2.0.0"]),
                Auto,
                Stage::Release,
                &[SHA, "1.3.5", "1.3"],
                "1.3.5",
            ),
            case(
                "two tags on one commit",
                tagged(&["v1.5.0-rc.2", "v1.5.0"], &["v1.5.0-rc.2", "v1.5.0"]),
                Auto,
                Stage::Release,
                &[SHA, "1.5.0", "1.5", "1", "latest"],
                "1.5.0",
            ),
            case(
                "build metadata",
                tagged(&["v1.2.3+build.7"], &["v1.2.3+build.7"]),
                Auto,
                Stage::Release,
                &[SHA, "1.2.3_build.7", "1.2", "1", "latest"],
                "1.2.3+build.7",
            ),
            case(
                "0.x gets no bare major",
                tagged(&["v0.3.1"], &["v0.3.0", "v0.3.1"]),
                Auto,
                Stage::Release,
                &[SHA, "0.3.1", "0.3", "latest"],
                "0.3.1",
            ),
            case(
                "non-semver tag is ignored",
                tagged(&["deploy-7"], &["deploy-7"]),
                Auto,
                Stage::Main,
                &[SHA, "dev-latest"],
                dev,
            ),
            case(
                "dirty",
                |i| i.worktree = Worktree::Dirty { digest: DIRTY.into() },
                Auto,
                Stage::Main,
                &["sha-0123456789ab-dirty-f00dcafe"],
                dev,
            ),
            case(
                "dirty release gets no floating tags",
                |i| {
                    tagged(&["v1.0.0"], &["v1.0.0"])(i);
                    i.worktree = Worktree::Dirty { digest: DIRTY.into() };
                },
                Auto,
                Stage::Release,
                &["sha-0123456789ab-dirty-f00dcafe"],
                "1.0.0",
            ),
            case(
                "image tag",
                |i| i.image_tag = Some("hotfix-1".into()),
                Auto,
                Stage::Main,
                &[SHA, "dev-latest", "hotfix-1"],
                dev,
            ),
            case(
                "image tag already present",
                |i| i.image_tag = Some(SHA.into()),
                Auto,
                Stage::Main,
                &[SHA, "dev-latest"],
                dev,
            ),
            case(
                "dirty ignores image tag",
                |i| {
                    i.image_tag = Some("hotfix-1".into());
                    i.worktree = Worktree::Dirty { digest: DIRTY.into() };
                },
                Auto,
                Stage::Main,
                &["sha-0123456789ab-dirty-f00dcafe"],
                dev,
            ),
            case(
                "forced main on a branch",
                |i| i.branch = Some("topic".into()),
                StageChoice::Main,
                Stage::Main,
                &[SHA, "dev-latest"],
                dev,
            ),
            case("forced branch on main", |_| {}, StageChoice::Branch, Stage::Branch, &[SHA, "main"], dev),
            case(
                "github pull request",
                |i| {
                    i.branch = None;
                    i.ci = ci(
                        CiProvider::GitHubActions,
                        CiEvent::PullRequest { number: 42, source_branch: Some("feat/x".into()) },
                        None,
                    );
                },
                Auto,
                Stage::Pr,
                &[SHA, "pr-42"],
                dev,
            ),
            case(
                "github push to main, shallow and detached",
                |i| {
                    i.branch = None;
                    i.shallow = true;
                    i.ci = ci(CiProvider::GitHubActions, CiEvent::Branch { name: "main".into() }, None);
                },
                Auto,
                Stage::Main,
                &[SHA, "dev-latest"],
                dev,
            ),
            case(
                "gitlab tag only in the variables",
                |i| {
                    i.branch = None;
                    i.ci = ci(CiProvider::GitLabCi, CiEvent::Tag { name: "v3.1.0".into() }, Some("main"));
                },
                Auto,
                Stage::Release,
                &[SHA, "3.1.0", "3.1", "3", "latest"],
                "3.1.0",
            ),
            case(
                "gitlab default branch from the variables",
                |i| {
                    i.ci = ci(CiProvider::GitLabCi, CiEvent::Branch { name: "trunk".into() }, Some("trunk"));
                },
                Auto,
                Stage::Main,
                &[SHA, "dev-latest"],
                dev,
            ),
            case(
                "jenkins branch",
                |i| {
                    i.ci = ci(CiProvider::Jenkins, CiEvent::Branch { name: "Develop".into() }, None);
                },
                Auto,
                Stage::Branch,
                &[SHA, "develop"],
                dev,
            ),
            case(
                "non-semver ci tag falls back to git",
                |i| {
                    i.branch = None;
                    i.ci = ci(CiProvider::Jenkins, CiEvent::Tag { name: "nightly".into() }, None);
                },
                Auto,
                Stage::Branch,
                &[SHA],
                dev,
            ),
        ];
        for case in cases {
            let mut inputs = base();
            (case.setup)(&mut inputs);
            let report =
                compute(&inputs, &provenance(), case.stage).unwrap_or_else(|error| panic!("{}: {error:#}", case.name));
            assert_eq!(report.image.stage, case.expect_stage, "{}", case.name);
            assert_eq!(report.image.tags, case.expect_tags, "{}", case.name);
            assert_eq!(report.version, case.expect_version, "{}", case.name);
            assert_eq!(report.image.push, report.image.stage.pushes() && !report.image.dirty, "{}", case.name);
            assert!(
                report.image.tags.iter().all(|tag| is_valid_image_tag(tag)),
                "{}: {:?}",
                case.name,
                report.image.tags
            );
        }
    }

    #[test]
    fn dev_version_after_a_release() {
        let after = Provenance { last_release: Some(Version::new(1, 4, 0)), commits_since_release: 7, ..provenance() };
        let report = compute(&base(), &after, StageChoice::Auto).unwrap();
        assert_eq!((report.image.stage, &report.version[..]), (Stage::Main, "1.4.1-dev.7+g0123456789ab"));
        assert_eq!(report.image.tags, [SHA, "dev-latest"]);
    }

    #[test]
    fn the_tags_alone_are_those_of_the_report() {
        let tags = compute_tags(&base(), StageChoice::Auto).unwrap();
        let report = compute(&base(), &provenance(), StageChoice::Auto).unwrap();
        assert_eq!((&tags.tags, &tags.notes, tags.push), (&report.image.tags, &report.image.notes, report.image.push));
        assert_eq!(tags.release, None);
    }

    #[test]
    fn report_fields() {
        let mut inputs = base();
        inputs.image_tag = Some("extra".into());
        let report = compute(&inputs, &provenance(), StageChoice::Auto).unwrap();
        assert_eq!(report.image.revision, REVISION);
        assert_eq!(report.image.short_revision, "0123456789ab");
        assert_eq!(report.image.branch.as_deref(), Some("main"));
        assert_eq!(report.image.extra_tag.as_deref(), Some("extra"));
        assert!(report.image.notes.iter().any(|note| note.contains("IMAGE_TAG")), "{:?}", report.image.notes);
        let json = report.to_json();
        assert_eq!(json["stage"], "main");
        assert_eq!(json["push"], true);
        assert_eq!(json["dirty"], false);
    }

    #[test]
    fn bad_inputs_name_what_is_wrong() {
        let cases: [(&str, Setup, StageChoice, &str); 5] = [
            ("release without a tag", Box::new(|_| {}), StageChoice::Release, "carries no tag"),
            (
                "release on a non-semver tag",
                Box::new(tagged(&["deploy-7"], &["deploy-7"])),
                StageChoice::Release,
                "deploy-7",
            ),
            ("pr outside ci", Box::new(|_| {}), StageChoice::Pr, "--stage pr"),
            (
                "invalid image tag",
                Box::new(|i| i.image_tag = Some("-bad".into())),
                StageChoice::Auto,
                "IMAGE_TAG=`-bad`",
            ),
            ("image tag too long", Box::new(|i| i.image_tag = Some("a".repeat(129))), StageChoice::Auto, "IMAGE_TAG"),
        ];
        for (name, setup, stage, expected) in cases {
            let mut inputs = base();
            setup(&mut inputs);
            let error = format!("{:#}", compute(&inputs, &provenance(), stage).expect_err(name));
            assert!(error.contains(expected), "{name}: {error}");
        }
    }

    #[test]
    fn image_tag_cannot_add_a_tag_a_stage_moves() {
        for (tag, mover) in [
            ("latest", Some("release stage")),
            ("dev-latest", Some("main stage")),
            ("1", Some("release stage")),
            ("1.2", Some("release stage")),
            ("1.2.3", Some("release")),
            ("v1.2.3", Some("release")),
            ("1.2.3-rc.1", Some("release")),
            ("1.2.3_build.5", Some("release")),
            ("sha-fedcba987654", Some("another commit")),
            ("sha-fedcba987654-dirty-01234567", Some("another commit")),
            ("inputs-0123456789abcdef01234567", Some("cache")),
            ("inline-cache", Some("cache")),
            ("sha-0123456789ab", None),
            ("qa", None),
            ("hotfix-1", None),
            ("latest-qa", None),
            ("1.2.x", None),
            ("release-1.2.3", None),
        ] {
            let mut inputs = base();
            inputs.image_tag = Some(tag.to_string());
            let result = compute(&inputs, &provenance(), StageChoice::Auto);
            match mover {
                Some(mover) => {
                    let error = format!("{:#}", result.expect_err(tag));
                    assert!(error.contains(&format!("IMAGE_TAG=`{tag}`")) && error.contains(mover), "{tag}: {error}");
                    assert_eq!(error.lines().count(), 1, "{error}");
                }
                None => assert!(result.unwrap().image.tags.contains(&tag.to_string()), "{tag} is a tag of one's own"),
            }
        }
    }

    #[test]
    fn branch_slugs() {
        let long = "a".repeat(200);
        let dash_at_cut = format!("{}/x", "b".repeat(127));
        for (branch, slug) in [
            ("main", "main"),
            ("Feature/ABC", "feature-abc"),
            ("a//b  c", "a-b-c"),
            ("a-/b", "a--b"),
            ("--x--", "x"),
            (".hidden.", "hidden"),
            ("release/1.2", "release-1.2"),
            ("Ünïcode/Äpfel", "n-code-pfel"),
            ("under_score", "under_score"),
            ("///", ""),
            (long.as_str(), &long[..128]),
            (dash_at_cut.as_str(), &dash_at_cut[..127]),
        ] {
            assert_eq!(branch_slug(branch), slug, "{branch}");
        }
    }

    #[test]
    fn image_tag_validity() {
        let longest = "a".repeat(128);
        let too_long = "a".repeat(129);
        for (tag, valid) in [
            ("latest", true),
            ("_x", true),
            ("1.2.3_build.7", true),
            ("A-b.c_D", true),
            (longest.as_str(), true),
            ("", false),
            ("-x", false),
            (".x", false),
            ("1.2.3+build", false),
            ("a/b", false),
            ("a b", false),
            (too_long.as_str(), false),
        ] {
            assert_eq!(is_valid_image_tag(tag), valid, "{tag:?}");
        }
    }

    #[test]
    fn release_versions() {
        assert_eq!(release_version("v1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(release_version("1.2.3"), Some(Version::new(1, 2, 3)));
        for tag in ["V1.2.3", "v1.2", "release-1.2.3", "v01.2.3", "vv1.2.3"] {
            assert_eq!(release_version(tag), None, "{tag}");
        }
    }
}
