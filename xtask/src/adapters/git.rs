//! The git adapter: everything the xtask reads from a repository goes through [`Repo`].
//!
//! It reads in-process through libgit2 (the `git2` crate) rather than running `git`: one library
//! call replaces a process start each, which is what lets `cargo xtask tags` beat the old
//! script's three git processes. Callers get plain values (hex ids, names, unix seconds), so
//! the rules built on top of them never see a `git2` type and stay unit-testable.
//!
//! Every query is bounded by what it needs: no method walks the whole history unless the caller
//! asks for a count that needs it.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use git2::{ErrorCode, ObjectType, Odb, Oid, Reference, Repository, StatusOptions};
use sha2::{Digest, Sha256};

/// An open repository, with the path it was opened at for error messages.
pub struct Repo {
    repo: Repository,
    path: PathBuf,
}

/// The commit HEAD points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The full commit id, 40 lowercase hex digits.
    pub id: String,
    /// The committer time in unix seconds: reproducible, unlike the time of the build.
    pub time: i64,
}

/// A tag and the commit it names, annotated tags already peeled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    /// The name without `refs/tags/`.
    pub name: String,
    /// The tagged commit's full id.
    pub commit: String,
}

/// The state of the working tree against HEAD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Worktree {
    Clean,
    /// Modified, staged or untracked (not ignored) files exist. `digest` is a hex sha256 over
    /// the sorted changes, so the same dirty state always gives the same digest.
    Dirty {
        digest: String,
    },
}

impl Repo {
    /// Opens the repository whose working tree (or `.git` directory) is exactly `path`.
    ///
    /// No search upwards: `--repo` names the repository, and silently using an enclosing one
    /// would tag the wrong project.
    pub fn open(path: &Path) -> Result<Repo> {
        // libgit2 re-hashes every object it reads to check it, which git itself does not do on
        // reads; with hundreds of tags that is a measurable share of `tags`, and the xtask
        // only reads repositories it was pointed at, never objects from elsewhere.
        git2::opts::strict_hash_verification(false);
        let repo = Repository::open(path).map_err(|error| match error.code() {
            ErrorCode::NotFound => anyhow!(
                "{} is not a git repository: {}; run inside a clone or pass --repo",
                path.display(),
                error.message()
            ),
            _ => anyhow!("cannot open the git repository at {}: {}", path.display(), error.message()),
        })?;
        Ok(Repo { repo, path: path.to_path_buf() })
    }

    /// The commit HEAD points at. This is the first query every task makes, so it is the one
    /// that turns an empty repository into a clear error.
    pub fn head(&self) -> Result<Head> {
        let commit = self
            .head_ref()?
            .peel_to_commit()
            .with_context(|| format!("HEAD of {} does not point at a commit", self.path.display()))?;
        Ok(Head { id: commit.id().to_string(), time: commit.time().seconds() })
    }

    /// The checked-out branch's short name, or `None` on a detached HEAD.
    pub fn branch(&self) -> Result<Option<String>> {
        let head = self.head_ref()?;
        Ok(head.is_branch().then(|| String::from_utf8_lossy(head.shorthand_bytes()).into_owned()))
    }

    /// Every tag in the repository with the commit it names. Tags of trees or blobs are left
    /// out: no version number can describe them.
    pub fn tags(&self) -> Result<Vec<Tag>> {
        let context = || format!("cannot read the tags of {}", self.path.display());
        let odb = self.repo.odb().with_context(context)?;
        let mut tags = Vec::new();
        for reference in self.repo.references_glob("refs/tags/*").with_context(context)? {
            let reference = reference.with_context(context)?;
            let name = String::from_utf8_lossy(&reference.name_bytes()["refs/tags/".len()..]).into_owned();
            // `packed-refs` records what each annotated tag peels to (`target_peel`), which
            // saves reading the tag object; a symbolic ref under refs/tags is rare enough to
            // pay for its extra lookup.
            let target = match (reference.target_peel(), reference.target()) {
                (Some(peeled), _) => Some(peeled),
                (None, Some(target)) => Some(target),
                (None, None) => reference.resolve().with_context(|| format!("cannot resolve tag {name}"))?.target(),
            };
            let commit = match target {
                Some(target) => self.tagged_commit(&odb, target).with_context(|| format!("cannot read tag {name}"))?,
                None => None,
            };
            if let Some(commit) = commit {
                tags.push(Tag { name, commit: commit.to_string() });
            }
        }
        Ok(tags)
    }

    /// The commit that the object `id` names through any chain of annotated tags, or `None` for
    /// a tree or blob. It reads object headers and tag objects only: peeling through git2 would
    /// also load every tagged commit, doubling the object reads on a repository with many tags.
    fn tagged_commit(&self, odb: &Odb<'_>, mut id: Oid) -> Result<Option<Oid>, git2::Error> {
        loop {
            match odb.read_header(id)?.1 {
                ObjectType::Commit => return Ok(Some(id)),
                ObjectType::Tag => id = self.repo.find_tag(id)?.target_id(),
                _ => return Ok(None),
            }
        }
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors.
    ///
    /// This walks only back to the commits' merge base, not the whole history.
    pub fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool> {
        let (ancestor, descendant) = (self.oid(ancestor)?, self.oid(descendant)?);
        Ok(ancestor == descendant
            || self
                .repo
                .graph_descendant_of(descendant, ancestor)
                .with_context(|| format!("cannot compare commits {ancestor} and {descendant}"))?)
    }

    /// The number of commits reachable from `tip` but not from `since`; with no `since`, all
    /// commits reachable from `tip` (the only case that walks the whole history).
    pub fn commits_since(&self, tip: &str, since: Option<&str>) -> Result<u64> {
        let context = || format!("cannot count the commits of {}", self.path.display());
        let mut walk = self.repo.revwalk().with_context(context)?;
        walk.push(self.oid(tip)?).with_context(context)?;
        if let Some(since) = since {
            walk.hide(self.oid(since)?).with_context(context)?;
        }
        let mut count = 0;
        for commit in walk {
            commit.with_context(context)?;
            count += 1;
        }
        Ok(count)
    }

    /// Whether this is a shallow clone, whose history and tags are incomplete.
    pub fn is_shallow(&self) -> bool {
        self.repo.is_shallow()
    }

    /// The default branch as git knows it: the target of `refs/remotes/origin/HEAD` (set by
    /// `git clone`), else `main` or `master`, local or on origin, whichever exists first.
    pub fn default_branch(&self) -> Option<String> {
        let origin_head = self.repo.find_reference("refs/remotes/origin/HEAD").ok();
        if let Some(target) = origin_head.as_ref().and_then(Reference::symbolic_target_bytes) {
            let target = String::from_utf8_lossy(target);
            return Some(target.trim_start_matches("refs/remotes/origin/").to_string());
        }
        ["main", "master"]
            .into_iter()
            .find(|name| {
                [format!("refs/heads/{name}"), format!("refs/remotes/origin/{name}")]
                    .iter()
                    .any(|reference| self.repo.find_reference(reference).is_ok())
            })
            .map(str::to_string)
    }

    /// The URL of the `origin` remote, if there is one, made fit to publish (see
    /// [`public_url`]): it becomes the OCI `source` label of images and appears in plans.
    pub fn origin_url(&self) -> Option<String> {
        self.repo.find_remote("origin").ok()?.url().ok().map(public_url)
    }

    /// Whether the working tree differs from HEAD, and a digest of how.
    ///
    /// Counted: modified, deleted, staged and untracked files; not ignored ones, nor the files
    /// the operator tasks write into a deployment directory (see [`is_operator_file`]). The digest
    /// covers each changed path, its status bits (so staging a change gives a new digest) and
    /// its current content in the working tree, which is what a build would copy. Index
    /// contents are not hashed: two states with the same files and statuses build the same
    /// image. A bare repository has no working tree and is therefore clean.
    pub fn worktree(&self) -> Result<Worktree> {
        let Some(workdir) = self.repo.workdir() else { return Ok(Worktree::Clean) };
        let mut options = StatusOptions::new();
        options.include_untracked(true).recurse_untracked_dirs(true).include_ignored(false);
        let statuses = self
            .repo
            .statuses(Some(&mut options))
            .with_context(|| format!("cannot read the working tree status of {}", self.path.display()))?;
        let mut changes: Vec<(Vec<u8>, u32)> = statuses
            .iter()
            .filter(|entry| !is_operator_file(entry.path_bytes()))
            .map(|entry| (entry.path_bytes().to_vec(), entry.status().bits()))
            .collect();
        if changes.is_empty() {
            return Ok(Worktree::Clean);
        }
        changes.sort_unstable();
        let mut hasher = Sha256::new();
        for (path, status) in changes {
            // Length prefixes keep the concatenation unambiguous.
            hasher.update((path.len() as u64).to_le_bytes());
            hasher.update(&path);
            hasher.update(status.to_le_bytes());
            let file = workdir.join(OsStr::from_bytes(&path));
            hasher.update(content_digest(&file).with_context(|| format!("cannot read {}", file.display()))?);
        }
        Ok(Worktree::Dirty { digest: format!("{:x}", hasher.finalize()) })
    }

    /// HEAD as a reference, turning "no commits yet" into an error that says what to do.
    fn head_ref(&self) -> Result<Reference<'_>> {
        self.repo.head().map_err(|error| match error.code() {
            ErrorCode::UnbornBranch | ErrorCode::NotFound => {
                anyhow!("repository {} has no commits yet; commit something first", self.path.display())
            }
            _ => anyhow!("cannot read HEAD of {}: {}", self.path.display(), error.message()),
        })
    }

    fn oid(&self, id: &str) -> Result<Oid> {
        Oid::from_str(id).with_context(|| format!("{id} is not a git object id"))
    }
}

/// A commit as release notes show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The full commit id.
    pub id: String,
    /// The first line of the message.
    pub subject: String,
    /// The rest of the message, trimmed (where `BREAKING CHANGE:` footers live).
    pub body: String,
}

impl Repo {
    /// The commits reachable from `tip` but not from `since` (all of them without `since`),
    /// newest first: what changed since a release, for its notes.
    pub fn commit_log(&self, tip: &str, since: Option<&str>) -> Result<Vec<Commit>> {
        let context = || format!("cannot read the commit log of {}", self.path.display());
        let mut walk = self.repo.revwalk().with_context(context)?;
        walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::TIME).with_context(context)?;
        walk.push(self.oid(tip)?).with_context(context)?;
        if let Some(since) = since {
            walk.hide(self.oid(since)?).with_context(context)?;
        }
        let mut commits = Vec::new();
        for id in walk {
            let commit = self.repo.find_commit(id.with_context(context)?).with_context(context)?;
            let message = String::from_utf8_lossy(commit.message_bytes()).into_owned();
            let (subject, body) = message.split_once('\n').unwrap_or((&message, ""));
            commits.push(Commit {
                id: commit.id().to_string(),
                subject: subject.trim().to_string(),
                body: body.trim().to_string(),
            });
        }
        Ok(commits)
    }

    /// Creates the annotated tag `name` on commit `target` with `message`, refusing to replace
    /// an existing tag. The tagger is `user.name`/`user.email` from git's configuration, else
    /// a fixed fallback: CI runners often have no git identity, and a release must not fail
    /// for want of one.
    pub fn create_annotated_tag(&self, name: &str, target: &str, message: &str) -> Result<()> {
        let context = || format!("cannot create tag {name} in {}", self.path.display());
        let object = self.repo.find_object(self.oid(target)?, Some(ObjectType::Commit)).with_context(context)?;
        let tagger = match self.repo.signature() {
            Ok(signature) => signature,
            Err(_) => git2::Signature::now("intric xtask", "xtask@localhost").with_context(context)?,
        };
        self.repo.tag(name, &object, &tagger, message, false).with_context(context)?;
        Ok(())
    }
}

/// A digest of what a build would see at `path`: nothing for a deleted file, the target of a
/// symlink, the bytes of a file and whether it is executable, and just "a directory" for a
/// nested repository or submodule (its own commit is already in the status). A leading kind
/// byte keeps, say, an empty file and a deleted one apart.
fn content_digest(path: &Path) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    match std::fs::symlink_metadata(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => hasher.update([0]),
        Err(error) => return Err(error),
        Ok(metadata) if metadata.is_symlink() => {
            hasher.update([1]);
            hasher.update(std::fs::read_link(path)?.as_os_str().as_bytes());
        }
        Ok(metadata) if metadata.is_dir() => hasher.update([2]),
        Ok(metadata) => {
            let executable = metadata.permissions().mode() & 0o111 != 0;
            hasher.update([if executable { 4 } else { 3 }]);
            io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
        }
    }
    Ok(hasher.finalize().into())
}

/// Whether `path` (relative to the work tree) is a file the operator tasks write into a
/// deployment directory: the deploy history, the deploy lock (and its temporary file), or a
/// database backup under `backups/`. A server that deploys from a checkout writes them there,
/// and a build from that checkout is no less clean for it. The names are those of
/// `stack::history`, `stack::lock` and `stack::database`, which this layer cannot import.
fn is_operator_file(path: &[u8]) -> bool {
    let path = String::from_utf8_lossy(path);
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
    let in_backups = parent == "backups" || parent.ends_with("/backups");
    let backup = |name: &str| name.strip_prefix("intric_").is_some_and(|rest| rest.ends_with(".sql.gz"));
    name == ".deploy-history.jsonl"
        || name == ".deploy.lock"
        || (name.starts_with(".deploy.lock.") && name.ends_with(".tmp"))
        || (in_backups
            && (backup(name)
                || name.strip_prefix('.').and_then(|rest| rest.strip_suffix(".partial")).is_some_and(backup)))
}

/// A remote URL without its secrets, as a browser would open it.
///
/// CI runners clone with a token in the URL (`https://gitlab-ci-token:<token>@host/group/repo.git`,
/// or `?private_token=...`), and whatever reads `origin` would copy it into image labels, logs
/// and plans. So the user information goes, and so do query parameters whose names say they
/// carry a credential, and the fragment. SSH remotes (`git@host:group/repo.git`,
/// `ssh://git@host:2222/group/repo.git`) become the project's web address,
/// `https://host/group/repo`. A local path stays as it is.
pub fn public_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return match scp_like(url) {
            Some((host, path)) => web_address(host, path),
            None => url.to_string(),
        };
    };
    let scheme = scheme.to_ascii_lowercase();
    let rest = rest.split_once('#').map_or(rest, |(rest, _fragment)| rest);
    let (rest, query) = rest.split_once('?').map_or((rest, ""), |(rest, query)| (rest, query));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    // The user information ends at the last `@`: a password may itself contain one.
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if matches!(scheme.as_str(), "ssh" | "git+ssh" | "ssh+git") {
        // The SSH port is no web port.
        let host = host.rsplit_once(':').map_or(host, |(host, _port)| host);
        return web_address(host, path);
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|parameter| !parameter.is_empty())
        .filter(|parameter| !is_credential(parameter.split('=').next().unwrap_or_default()))
        .collect();
    let query = if kept.is_empty() { String::new() } else { format!("?{}", kept.join("&")) };
    format!("{scheme}://{host}{path}{query}")
}

/// git's scp-like syntax, `[user@]host:path`: a colon before any slash. Returns host and path.
fn scp_like(url: &str) -> Option<(&str, &str)> {
    let (authority, path) = url.split_once(':')?;
    if authority.is_empty() || authority.contains('/') {
        return None;
    }
    Some((authority.rsplit_once('@').map_or(authority, |(_, host)| host), path))
}

/// `https://host/path` without a trailing `.git`: the project's page on GitLab or GitHub.
fn web_address(host: &str, path: &str) -> String {
    let path = path.trim_matches('/');
    format!("https://{host}/{}", path.strip_suffix(".git").unwrap_or(path))
}

/// Whether a query parameter's name says it carries a credential (`private_token`, `apikey`,
/// `X-Amz-Signature`, `password`, ...).
fn is_credential(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["token", "auth", "key", "secret", "pass", "pwd", "sig", "cred", "session"].iter().any(|word| name.contains(word))
}

// Remote refs, through the git CLI: the release lock and the tags on a remote. Unlike the reads
// above, these talk to the remote, so they run the user's own `git` through the runner, with its
// credentials, configuration and transports, as pushing by hand would; the runner also lets
// `--dry-run` show them and unit tests record them. (Paths are spelt out so this section needs
// nothing of the reading part's imports.)

use crate::plan::Command;
use crate::plan::runner::Runner;

/// `git -C <repo>`: how every command of this section starts.
fn git_in(repo: &Path) -> Command {
    Command::new("git").arg("-C").arg(repo.display().to_string())
}

/// The names of the repository's remotes (`git remote`).
pub fn remotes(runner: &dyn Runner, repo: &Path) -> Result<Vec<String>> {
    let listed =
        runner.read(&git_in(repo).arg("remote").hint(format!("git cannot list the remotes of {}", repo.display())))?;
    Ok(listed.lines().map(str::trim).filter(|name| !name.is_empty()).map(str::to_string).collect())
}

/// A ref on a remote as `git ls-remote` lists it: its name, the object it names and, for an
/// annotated tag, the commit it peels to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRef {
    /// The full name, `refs/tags/v1.0.0`.
    pub name: String,
    pub id: String,
    pub peeled: Option<String>,
}

impl RemoteRef {
    /// The commit the ref names, through an annotated tag.
    pub fn commit(&self) -> &str {
        self.peeled.as_deref().unwrap_or(&self.id)
    }
}

/// `git ls-remote <remote> <patterns>`: the remote's refs matching `patterns`, asked of the
/// remote itself (not this clone's copy of them).
pub fn ls_remote_command(repo: &Path, remote: &str, patterns: &[&str]) -> Command {
    git_in(repo)
        .args(["ls-remote", remote])
        .args(patterns.iter().copied())
        .hint(format!("git cannot list the refs of remote {remote}; check that it answers (`git ls-remote {remote}`)"))
}

/// The refs [`ls_remote_command`] printed, each annotated tag's `^{}` line folded into it.
pub fn parse_ls_remote(listing: &str) -> Vec<RemoteRef> {
    let mut refs: Vec<RemoteRef> = Vec::new();
    for (id, name) in listing.lines().filter_map(|line| line.split_once('\t')) {
        match name.strip_suffix("^{}") {
            Some(tag) => {
                if let Some(found) = refs.iter_mut().find(|reference| reference.name == tag) {
                    found.peeled = Some(id.to_string());
                }
            }
            None => refs.push(RemoteRef { name: name.to_string(), id: id.to_string(), peeled: None }),
        }
    }
    refs
}

/// The remote's refs matching `patterns`.
pub fn remote_refs(runner: &dyn Runner, repo: &Path, remote: &str, patterns: &[&str]) -> Result<Vec<RemoteRef>> {
    Ok(parse_ls_remote(&runner.read(&ls_remote_command(repo, remote, patterns))?))
}

/// `git commit-tree`: a commit of `parent`'s tree on top of `parent` with `message`, written to
/// the object database without moving any ref; it prints the new commit's id. The identity is
/// fixed, since CI runners often have none and what the commit says is in its message.
pub fn commit_object_command(repo: &Path, parent: &str, message: &str) -> Command {
    [("GIT_AUTHOR_NAME", "intric xtask"), ("GIT_AUTHOR_EMAIL", "xtask@localhost")]
        .into_iter()
        .chain([("GIT_COMMITTER_NAME", "intric xtask"), ("GIT_COMMITTER_EMAIL", "xtask@localhost")])
        .fold(git_in(repo), |command, (key, value)| command.env(key, value))
        .args(["commit-tree", &format!("{parent}^{{tree}}"), "-p", parent, "-m", message])
        .hint(format!("git cannot write a commit object in {}", repo.display()))
}

/// `git push` of `source` (an object id; `None` deletes) to `reference` on `remote`, only if
/// the remote's `reference` is `expected` right now (`None`: absent). The remote checks that
/// as it updates the ref (a compare-and-swap), so of two such pushes at once, one is refused.
/// Local hooks are skipped: this moves no branch, and a pre-push hook's checks are for those.
pub fn push_with_lease_command(
    repo: &Path,
    remote: &str,
    source: Option<&str>,
    reference: &str,
    expected: Option<&str>,
) -> Command {
    git_in(repo)
        .args(["push", "--no-verify", "--porcelain"])
        .arg(format!("--force-with-lease={reference}:{}", expected.unwrap_or_default()))
        .arg(remote)
        .arg(format!("{}:{reference}", source.unwrap_or_default()))
        .hint(format!("git cannot update {reference} on remote {remote}"))
}

/// `git fetch` of the objects of `reference` on `remote`, writing no ref (not even FETCH_HEAD):
/// to read an object another clone pushed.
pub fn fetch_objects_command(repo: &Path, remote: &str, reference: &str) -> Command {
    git_in(repo)
        .args(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", remote, reference])
        .hint(format!("git cannot fetch {reference} from remote {remote}"))
}

/// The message of commit `id`: `git show --no-patch --format=%B`.
pub fn commit_message_command(repo: &Path, id: &str) -> Command {
    git_in(repo).args(["show", "--no-patch", "--format=%B", id]).hint(format!("git cannot read commit {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_files_are_recognised() {
        for path in [
            "docker/.deploy-history.jsonl",
            ".deploy.lock",
            "srv/.deploy.lock.4711.tmp",
            "docker/backups/intric_20261127T084500Z.sql.gz",
            "backups/intric_20261127T084500Z-2.sql.gz",
            "docker/backups/.intric_20261127T084500Z.sql.gz.partial",
        ] {
            assert!(is_operator_file(path.as_bytes()), "{path}");
        }
        for path in [
            "docker/docker-compose.yml",
            "docker/intric_20261127T084500Z.sql.gz",
            "docker/backups/notes.txt",
            "backend/.deploy-history.json",
        ] {
            assert!(!is_operator_file(path.as_bytes()), "{path}");
        }
    }

    #[test]
    fn public_urls_carry_no_credentials() {
        for (remote, public) in [
            (
                "https://gitlab-ci-token:glcbt-CANARY@gitlab.example.com/group/intric.git",
                "https://gitlab.example.com/group/intric.git",
            ),
            (
                "https://oauth2:p@ss@word@gitlab.example.com:8443/group/intric.git",
                "https://gitlab.example.com:8443/group/intric.git",
            ),
            ("https://x-access-token@github.example/org/intric", "https://github.example/org/intric"),
            (
                "https://gitlab.example.com/group/intric.git?private_token=CANARY",
                "https://gitlab.example.com/group/intric.git",
            ),
            (
                "https://host/intric.git?ref=main&access_token=CANARY&X-Amz-Signature=CANARY",
                "https://host/intric.git?ref=main",
            ),
            ("https://host/intric.git#token=CANARY", "https://host/intric.git"),
            ("HTTP://user:pw@host", "http://host"),
            ("git@gitlab.example.com:group/intric.git", "https://gitlab.example.com/group/intric"),
            ("gitlab.example.com:group/sub/intric", "https://gitlab.example.com/group/sub/intric"),
            ("ssh://git@gitlab.example.com:2222/group/intric.git", "https://gitlab.example.com/group/intric"),
            ("git+ssh://deploy:CANARY@host/intric.git/", "https://host/intric"),
            ("https://gitlab.example.com/group/intric.git", "https://gitlab.example.com/group/intric.git"),
            ("/srv/git/intric.git", "/srv/git/intric.git"),
            ("file:///srv/git/intric.git", "file:///srv/git/intric.git"),
            ("../intric", "../intric"),
        ] {
            assert_eq!(public_url(remote), public, "{remote}");
        }
    }
}
