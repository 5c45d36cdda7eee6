//! The git adapter: everything the xtask reads from a repository, and the tags it creates, go
//! through [`Repo`], which runs the `git` program through the plan's [`Runner`].
//!
//! git is installed wherever the xtask runs (CI clones with it, developers work with it), and
//! the parts of its command line used here are made to be parsed: the porcelain v2 status,
//! `show-ref` and plumbing commands. Linking libgit2 instead cost a cold build of the xtask a
//! minute of C compilation. [`Repo::open_reading`] reads what the tag engine needs in a few
//! processes that run at once, and the refs from git's own files where their layout is the
//! plain one (a file read costs microseconds, a git process milliseconds); the other queries
//! run one process each. Callers get plain values (hex ids, names, unix seconds), so the
//! rules built on top of them stay unit-testable (the runner's `Recording` answers for git in
//! the unit tests, and a temporary directory holds the ref files). A new query is a method that
//! builds its command with `Repo::git` (`git_in` outside a repository), runs it through the
//! runner and words a failure with `Repo::succeeded`.
//!
//! Every command is `git -C <work tree>` in the C locale (its error messages are matched)
//! and without the variables through which a calling git names a repository (`GIT_DIR` and
//! its kin, which hooks set): the xtask reads the repository it was pointed at, never the
//! caller's. File names come NUL-separated (`-z`), so spaces and newlines in them stay intact.
//! Every query is bounded by what it needs: none walks the whole history unless the caller asks
//! for a count that needs it.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use sha2::{Digest, Sha256};

use crate::plan::Command;
use crate::plan::runner::{Finished, Runner, Started};

/// The variables through which a git process tells the git processes it starts which
/// repository, index and object store to use (the repository-locating part of `git rev-parse
/// --local-env-vars`). A hook or `git rebase --exec` that runs the xtask passes them on, and
/// they would make every command here read that repository instead of the one asked for.
const CALLER_REPOSITORY_VARIABLES: [&str; 10] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_COMMON_DIR",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_GRAFT_FILE",
];

/// Status bits of a changed path, as libgit2 numbered them (`git_status_t`): the dirty working
/// tree's digest hashes them, and the digests (and so the dirty tags) stay those of the
/// releases that read the status through libgit2.
mod status_bits {
    pub const INDEX_NEW: u32 = 1 << 0;
    pub const INDEX_MODIFIED: u32 = 1 << 1;
    pub const INDEX_DELETED: u32 = 1 << 2;
    pub const INDEX_RENAMED: u32 = 1 << 3;
    pub const INDEX_TYPECHANGE: u32 = 1 << 4;
    pub const WT_NEW: u32 = 1 << 7;
    pub const WT_MODIFIED: u32 = 1 << 8;
    pub const WT_DELETED: u32 = 1 << 9;
    pub const WT_TYPECHANGE: u32 = 1 << 10;
    pub const WT_RENAMED: u32 = 1 << 11;
    pub const CONFLICTED: u32 = 1 << 15;
}

/// An open repository: its state as [`Repo::open`] read it, and the runner that reads more.
pub struct Repo<'a> {
    runner: &'a dyn Runner,
    /// The work tree as the caller named it: for messages, and `git -C`.
    path: PathBuf,
    /// The directory above the work tree, where git must stop looking for a repository.
    ceiling: Option<String>,
    status: Status,
    /// HEAD's committer time; `None` when HEAD is unborn or [`Reading::commit_time`] did not ask.
    head_time: Option<i64>,
    refs: Refs,
    /// Tags whose commit was not read: loose tags not on HEAD, when [`Reading::tag_commits`]
    /// did not ask for every tag's commit.
    unpeeled: Vec<String>,
    shallow: bool,
    /// The branch `refs/remotes/origin/HEAD` points at.
    origin_head: Option<String>,
    origin: Option<String>,
    /// Answers of [`Repo::commits_after`] read with the state: (ancestor, descendant) and the
    /// count.
    known_ancestry: Vec<((String, String), Option<u64>)>,
}

/// What [`Repo::open_reading`] reads besides what every caller needs (HEAD, the branch, the
/// working tree's state, the tags, the default branch and whether the clone is shallow).
pub struct Reading<'r> {
    /// Whether to read the commit of every tag ([`Repo::tags`]); without it only
    /// [`Repo::tag_names`] and [`Repo::head_tags`] answer, which costs less where tags are
    /// loose refs: git then peels them only to find those on HEAD.
    pub tag_commits: bool,
    /// Whether to read HEAD's commit time: [`Repo::head`] needs it, [`Repo::head_id`] not.
    pub commit_time: bool,
    /// Whether to read the origin's URL ([`Repo::origin_url`]).
    pub origin: bool,
    /// Given every tag's name, the one whose ancestry of HEAD to ask at once, the question
    /// [`Repo::commits_after`] is expected to get first: its index among the names, if any.
    pub likely_ancestor: Option<PickTag<'r>>,
}

/// Picks one of the tag names it is given, by its index.
pub type PickTag<'r> = &'r dyn Fn(&[&str]) -> Option<usize>;

impl Reading<'_> {
    /// Everything, asking no ancestry in advance.
    pub const EVERYTHING: Reading<'static> =
        Reading { tag_commits: true, commit_time: true, origin: true, likely_ancestor: None };
}

/// The ancestry that [`Reading::likely_ancestor`] asks as the repository is read: the
/// rev-list `command` comparing the tag `tag` with HEAD, whose id is `head`.
struct Probe {
    tag: String,
    head: String,
    command: Command,
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

/// What `git status --porcelain=v2 --branch` says.
#[derive(Debug, Default, PartialEq, Eq)]
struct Status {
    /// HEAD's commit id; `None` on an unborn branch (no commits yet).
    head: Option<String>,
    /// The checked-out branch; `None` on a detached HEAD.
    branch: Option<String>,
    /// Each changed path (relative to the work tree) with its [`status_bits`].
    changes: Vec<(String, u32)>,
}

/// What `show-ref --dereference` says: every ref, each tag with what it peels to.
#[derive(Debug, Default, PartialEq, Eq)]
struct Refs {
    /// Every tag with the object it names, annotated tags peeled to the end of their chain.
    tags: Vec<Tag>,
    /// Which of main and master exist, locally or on origin, in that order.
    main_or_master: Vec<String>,
}

impl<'a> Repo<'a> {
    /// Opens the repository whose work tree is exactly `path` and reads everything (see
    /// [`Repo::open_reading`]), asking no ancestry in advance.
    pub fn open(runner: &'a dyn Runner, path: &Path) -> Result<Repo<'a>> {
        Repo::open_reading(runner, path, &Reading::EVERYTHING)
    }

    /// Opens the repository whose work tree is exactly `path`, reading its state once: HEAD,
    /// the branch and the changed files (`git status`), every tag with the commit it names,
    /// which of main and master exist, whether the clone is shallow and where origin's HEAD
    /// points; and what `reading` asks for: HEAD's commit time (`git cat-file`), the origin's
    /// URL (`git remote`) and one ancestry.
    ///
    /// The refs come from git's own files where their layout is the plain one ([`RefFiles`]),
    /// which costs no process; otherwise from `git show-ref` and `git rev-parse`. Loose tag
    /// refs may name annotated tags, whose commit only the object says: then `git show-ref
    /// --tags` peels them, or, when `reading` needs no tag's commit, `git for-each-ref
    /// --points-at=HEAD` finds those on HEAD. With the refs read from files, the ancestry of
    /// the tag that `reading` picks is asked at once too (`git rev-list`), so the usual
    /// question of [`Repo::commits_after`] is already answered. The processes run at once:
    /// those that need no ref file (the status, which reads the whole work tree and is usually
    /// the longest, `cat-file` and `remote`) start before the files are read, the others
    /// as soon as they are.
    ///
    /// No search upwards: `--repo` names the repository, and silently using an enclosing one
    /// would tag the wrong project (`GIT_CEILING_DIRECTORIES` stops git at the parent, and
    /// the files are looked for in `path/.git` only).
    pub fn open_reading(runner: &'a dyn Runner, path: &Path, reading: &Reading) -> Result<Repo<'a>> {
        let canonical = path.canonicalize().map_err(|error| {
            anyhow!("{} is not a git repository: {error}; run inside a clone or pass --repo", path.display())
        })?;
        let ceiling = canonical.parent().map(|parent| parent.display().to_string());
        let mut repo = Repo {
            runner,
            path: path.to_path_buf(),
            ceiling,
            status: Status::default(),
            head_time: None,
            refs: Refs::default(),
            unpeeled: Vec::new(),
            shallow: false,
            origin_head: None,
            origin: None,
            known_ancestry: Vec::new(),
        };
        let status = repo.git(["--no-optional-locks", "status", "--porcelain=v2", "-z", "--branch"]).args([
            // Every untracked file, not just its directory, and no rename detection: the
            // digest covers each path on its own, as it always has.
            "--untracked-files=all",
            "--no-renames",
            // Nothing here reads how far the branch is ahead of or behind its upstream, and
            // counting it took 0.8 of the 2 ms of CPU the status costs a fresh clone.
            "--no-ahead-behind",
        ]);
        let head_commit = reading.commit_time.then(|| repo.git(["cat-file", "commit", "HEAD"]));
        let origin = reading.origin.then(|| repo.git(["remote", "get-url", "origin"]));
        let start = |command: Option<Command>| command.map(|command| runner.start(&command)).transpose();
        // What needs no ref file starts first, so that the status, usually the longest, runs
        // while the files are read and parsed.
        let (status, head_commit, origin) = (start(Some(status))?, start(head_commit)?, start(origin)?);
        // The caller's repository variables reach neither the git processes (see `git_in`) nor
        // these reads.
        let files = RefFiles::read(&canonical);
        let (refs, shallow, probe) = repo.reads_for(files.as_ref(), reading)?;
        let (probe, probe_command) = match probe {
            Some(Probe { tag, head, command }) => (Some((tag, head)), Some(command)),
            None => (None, None),
        };
        let (refs, shallow, probe_answer) = (start(refs)?, start(shallow)?, start(probe_command)?);
        let answers =
            [status, refs, head_commit, shallow, origin, probe_answer].map(|started| started.map(Started::finish));
        let [status, refs, head_commit, shallow, origin, probe_answer] = answers;
        let status = status.context("the working tree status was not read")?;
        // The status goes first: when the path is no repository at all, every read fails, and
        // its failure says so best.
        repo.status = parse_status(&repo.succeeded(status?, "read the working tree status")?)
            .with_context(|| format!("cannot read the working tree status of {}", path.display()))?;
        let refs = refs.transpose()?;
        // git skips a broken ref where it lists them (for-each-ref) and refuses where it
        // dereferences them (show-ref): both would leave the tags wrong or unread, and a lost
        // release tag would decide which image is `latest`.
        if let Some(name) = refs.as_ref().and_then(|refs| broken_ref(&refs.stderr)) {
            // git can neither delete nor overwrite such a ref (it cannot lock it): only the file goes.
            let file =
                files.as_ref().map_or_else(|| canonical.join(".git"), |files| files.common_dir.clone()).join(name);
            let again = match name.strip_prefix("refs/tags/") {
                Some(tag) => format!("then fetch the tag again if it is a release (`git fetch origin tag {tag}`)"),
                None => "then fetch it again".to_string(),
            };
            bail!(
                "{name} in {} is a broken ref (its file names no object: an interrupted fetch or a full disk?), which \
                 git can neither read nor delete: remove it (`rm {}`), {again}",
                path.display(),
                file.display()
            );
        }
        // No refs at all is exit status 1 without output (from show-ref), an answer too.
        let listed = match refs {
            Some(refs) if refs.status.code() == Some(1) && refs.stdout.is_empty() && refs.stderr.is_empty() => {
                Some(String::new())
            }
            Some(refs) => Some(repo.succeeded(refs, "read the tags")?),
            None => None,
        };
        if let (Some(_), Some(head_commit)) = (&repo.status.head, head_commit) {
            let commit = repo.succeeded(head_commit?, "read HEAD's commit")?;
            repo.head_time = Some(
                committer_time(&commit)
                    .with_context(|| format!("HEAD's commit in {} has no committer line", path.display()))?,
            );
        }
        match files {
            Some(files) => {
                let head = repo.status.head.as_deref().unwrap_or_default();
                let (tags, unpeeled) = match listed {
                    Some(listed) if reading.tag_commits => (parse_refs(&listed).tags, Vec::new()),
                    listed => peel_on_head(files.tags, &listed.unwrap_or_default(), head),
                };
                (repo.refs, repo.unpeeled) = (Refs { tags, main_or_master: files.main_or_master }, unpeeled);
                (repo.shallow, repo.origin_head) = (files.shallow, files.origin_head);
            }
            None => {
                repo.refs = parse_refs(&listed.unwrap_or_default());
                let shallow = repo.succeeded(
                    shallow.context("the shallow state was not read")??,
                    "tell whether the clone is shallow",
                )?;
                let mut lines = shallow.lines();
                repo.shallow = lines.next() == Some("true");
                repo.origin_head =
                    lines.next().and_then(|target| target.strip_prefix("refs/remotes/origin/")).map(str::to_string);
            }
        }
        // No origin is an answer (exit status 2), not a failure.
        if let Some(origin) = origin.transpose()? {
            repo.origin = origin.status.success().then(|| public_url(origin.stdout.trim()));
        }
        // An answer that could not be read is no loss: `commits_after` asks again and says why.
        if let (Some((name, head)), Some(Ok(finished))) = (probe, probe_answer) {
            let commit = repo.refs.tags.iter().find(|tag| tag.name == name).map(|tag| tag.commit.clone());
            if let (Some(commit), Ok(answer)) = (commit, repo.ancestry(finished, &name, &head)) {
                repo.known_ancestry.push(((commit, head), answer));
            }
        }
        Ok(repo)
    }

    /// The git processes that [`Repo::open_reading`] needs besides those that need no ref
    /// file, given the files read (`None`: their layout is not the plain one): what lists the
    /// refs, what tells whether the clone is shallow, and the ancestry that `reading` asks in
    /// advance.
    fn reads_for(
        &self,
        files: Option<&RefFiles>,
        reading: &Reading,
    ) -> Result<(Option<Command>, Option<Command>, Option<Probe>)> {
        // Every ref (`--dereference` adds what each tag peels to: from packed-refs, where
        // `git clone` and `git gc` record it, else from the tag objects), or the tags on HEAD.
        let refs = match files {
            None => Some(self.git(["show-ref", "--dereference"])),
            Some(files) if files.tags.iter().any(|tag| tag.commit.is_none()) => {
                match (reading.tag_commits, &files.head) {
                    (true, _) => Some(self.git(["show-ref", "--dereference", "--tags"])),
                    (false, Some(_)) => {
                        Some(self.git(["for-each-ref", "--points-at=HEAD", "--format=%(refname)", "refs/tags"]))
                    }
                    // No tag is on an unborn HEAD, which git could not even resolve.
                    (false, None) => None,
                }
            }
            Some(_) => None,
        };
        // Nothing for a missing origin/HEAD: `--revs-only` drops what is no revision.
        let shallow = files.is_none().then(|| {
            self.git(["rev-parse", "--is-shallow-repository", "--revs-only", "--symbolic-full-name"])
                .arg("refs/remotes/origin/HEAD")
        });
        let probe = match files.zip(reading.likely_ancestor).and_then(|(files, pick)| files.ancestry(pick)) {
            Some((tag, ancestor, head)) => {
                let command = self.ancestry_command(&ancestor, &head)?;
                Some(Probe { tag, head, command })
            }
            None => None,
        };
        Ok((refs, shallow, probe))
    }

    /// The commit HEAD points at, with its time (read when [`Reading::commit_time`] asked
    /// for it). This or [`Repo::head_id`] is the first query every task makes, so it is the
    /// one that turns an empty repository into a clear error.
    pub fn head(&self) -> Result<Head> {
        let id = self.head_id()?;
        let time =
            self.head_time.with_context(|| format!("HEAD's commit time in {} was not read", self.path.display()))?;
        Ok(Head { id, time })
    }

    /// The id of the commit HEAD points at.
    pub fn head_id(&self) -> Result<String> {
        self.status.head.clone().ok_or_else(|| self.unborn())
    }

    /// The checked-out branch's short name, or `None` on a detached HEAD.
    pub fn branch(&self) -> Result<Option<String>> {
        if self.status.head.is_none() {
            return Err(self.unborn());
        }
        Ok(self.status.branch.clone())
    }

    /// Every tag in the repository with the commit it names. A tag of a tree or blob (no
    /// version number can describe one) comes with that object's id: it never equals HEAD,
    /// and [`Repo::commits_after`] finds it in no history.
    pub fn tags(&self) -> Result<Vec<Tag>> {
        ensure!(self.unpeeled.is_empty(), "the commits of the tags in {} were not read", self.path.display());
        Ok(self.refs.tags.clone())
    }

    /// The name of every tag, in no particular order.
    pub fn tag_names(&self) -> Vec<String> {
        self.refs.tags.iter().map(|tag| tag.name.clone()).chain(self.unpeeled.iter().cloned()).collect()
    }

    /// The names of the tags on HEAD's commit, in the order of their names.
    pub fn head_tags(&self) -> Vec<String> {
        let Some(head) = &self.status.head else { return Vec::new() };
        let mut names: Vec<String> =
            self.refs.tags.iter().filter(|tag| &tag.commit == head).map(|tag| tag.name.clone()).collect();
        names.sort_unstable();
        names
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors.
    ///
    /// This walks only back to the commits' merge base, not the whole history.
    pub fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool> {
        Ok(ancestor == descendant || self.commits_after(ancestor, descendant)?.is_some())
    }

    /// The number of commits in `descendant`'s history after `ancestor`, or `None` when
    /// `ancestor` is not in that history: [`Repo::is_ancestor`] and [`Repo::commits_since`]
    /// in one process, walking back to the merge base only.
    pub fn commits_after(&self, ancestor: &str, descendant: &str) -> Result<Option<u64>> {
        let asked = |((known_ancestor, known_descendant), _): &&((String, String), Option<u64>)| {
            known_ancestor == ancestor && known_descendant == descendant
        };
        if let Some((_, answer)) = self.known_ancestry.iter().find(asked) {
            return Ok(*answer);
        }
        let finished = self.runner.output(&self.ancestry_command(ancestor, descendant)?)?;
        self.ancestry(finished, ancestor, descendant)
    }

    /// `git rev-list --left-right --count <ancestor>...<descendant>`, for object ids only.
    fn ancestry_command(&self, ancestor: &str, descendant: &str) -> Result<Command> {
        let (ancestor, descendant) = (object_id(ancestor)?, object_id(descendant)?);
        Ok(self.git(["rev-list", "--left-right", "--count", &format!("{ancestor}...{descendant}")]))
    }

    /// What [`Repo::commits_after`] answers from its rev-list's output.
    fn ancestry(&self, finished: Finished, ancestor: &str, descendant: &str) -> Result<Option<u64>> {
        // A tag of a tree or blob: no commit, so in no history.
        if !finished.status.success()
            && [&finished.stderr, &finished.stdout].iter().any(|text| text.contains("not a commit"))
        {
            return Ok(None);
        }
        let output = self.succeeded(finished, "compare commits")?;
        let counts = parse_left_right(&output)
            .with_context(|| format!("cannot compare commits {ancestor} and {descendant}: git printed {output:?}"))?;
        // Nothing on the left: every commit of `ancestor`'s history is in `descendant`'s.
        Ok((counts.0 == 0).then_some(counts.1))
    }

    /// The number of commits reachable from `tip` but not from `since`; with no `since`, all
    /// commits reachable from `tip` (the only case that walks the whole history).
    pub fn commits_since(&self, tip: &str, since: Option<&str>) -> Result<u64> {
        let mut args = vec!["rev-list".to_string(), "--count".to_string(), object_id(tip)?.to_string()];
        if let Some(since) = since {
            args.push(format!("^{}", object_id(since)?));
        }
        let output = self.read(&args, "count the commits")?;
        output
            .trim()
            .parse()
            .with_context(|| format!("cannot count the commits of {}: git printed {output:?}", self.path.display()))
    }

    /// Whether this is a shallow clone, whose history and tags are incomplete.
    pub fn is_shallow(&self) -> bool {
        self.shallow
    }

    /// The default branch as git knows it: the target of `refs/remotes/origin/HEAD` (set by
    /// `git clone`), else `main` or `master`, local or on origin, whichever exists first.
    pub fn default_branch(&self) -> Option<String> {
        self.origin_head.clone().or_else(|| self.refs.main_or_master.first().cloned())
    }

    /// The URL of the `origin` remote, if there is one and [`Reading::origin`] asked for it,
    /// made fit to publish (see [`public_url`]): it becomes the OCI `source` label of images
    /// and appears in plans.
    pub fn origin_url(&self) -> Option<String> {
        self.origin.clone()
    }

    /// Whether the working tree differs from HEAD, and a digest of how.
    ///
    /// Counted: modified, deleted, staged and untracked files; not ignored ones, nor the files
    /// the operator tasks write into a deployment directory (see [`is_operator_file`]). The digest
    /// covers each changed path, its status bits (so staging a change gives a new digest) and
    /// its current content in the working tree, which is what a build would copy. Index
    /// contents are not hashed: two states with the same files and statuses build the same
    /// image.
    pub fn worktree(&self) -> Result<Worktree> {
        let mut changes: Vec<(&[u8], u32)> = self
            .status
            .changes
            .iter()
            .map(|(path, status)| (path.as_bytes(), *status))
            .filter(|(path, _)| !is_operator_file(path))
            .collect();
        if changes.is_empty() {
            return Ok(Worktree::Clean);
        }
        if let Some((path, _)) = changes.iter().find(|(path, _)| String::from_utf8_lossy(path).contains('\u{fffd}')) {
            // The runner hands output over as UTF-8: such a name no longer names its file.
            bail!(
                "cannot digest the working tree of {}: the name of {} is not UTF-8; rename the file",
                self.path.display(),
                String::from_utf8_lossy(path)
            );
        }
        changes.sort_unstable();
        let mut hasher = Sha256::new();
        for (path, status) in changes {
            // Length prefixes keep the concatenation unambiguous.
            hasher.update((path.len() as u64).to_le_bytes());
            hasher.update(path);
            hasher.update(status.to_le_bytes());
            let file = self.path.join(OsStr::from_bytes(path));
            hasher.update(content_digest(&file).with_context(|| format!("cannot read {}", file.display()))?);
        }
        Ok(Worktree::Dirty { digest: format!("{:x}", hasher.finalize()) })
    }

    /// `git -C <work tree> <args>` for this repository (see the module's comment).
    fn git<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let command = git_in(&self.path).args(args);
        match &self.ceiling {
            Some(ceiling) => command.env("GIT_CEILING_DIRECTORIES", ceiling),
            None => command,
        }
    }

    /// Runs `git <args>` and returns its standard output; a failure is an error saying what
    /// could not be done (`what`), with git's reason.
    fn read<S: AsRef<str>>(&self, args: &[S], what: &str) -> Result<String> {
        let command = self.git(args.iter().map(AsRef::as_ref));
        self.succeeded(self.runner.output(&command)?, what)
    }

    /// The standard output of a git command that ended well; otherwise an error naming what
    /// could not be done and why, in the words a user can act on.
    fn succeeded(&self, finished: Finished, what: &str) -> Result<String> {
        if finished.status.success() {
            return Ok(finished.stdout);
        }
        let path = self.path.display();
        if let Some(refused) = owned_by_another_user(&finished, &self.path) {
            return Err(refused);
        }
        let said = git_said(&finished);
        if said.contains("not a git repository") {
            bail!("{path} is not a git repository (the top of a work tree); run inside a clone or pass --repo");
        }
        if said.contains("must be run in a work tree") {
            bail!("{path} is a git directory without a work tree; pass the work tree as --repo");
        }
        bail!("cannot {what} in {path}: {said}")
    }

    fn unborn(&self) -> anyhow::Error {
        anyhow!("repository {} has no commits yet; commit something first", self.path.display())
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

impl Repo<'_> {
    /// The commits reachable from `tip` but not from `since` (all of them without `since`),
    /// newest first: what changed since a release, for its notes.
    pub fn commit_log(&self, tip: &str, since: Option<&str>) -> Result<Vec<Commit>> {
        // Children before parents, otherwise by commit time; each commit's id, a newline and
        // its raw message, NUL-terminated. No signature check, whatever log.showSignature says.
        let mut args =
            ["log", "-z", "--date-order", "--no-show-signature", "--format=%H%n%B"].map(String::from).to_vec();
        args.push(object_id(tip)?.to_string());
        if let Some(since) = since {
            args.push(format!("^{}", object_id(since)?));
        }
        args.push("--".to_string());
        Ok(parse_log(&self.read(&args, "read the commit log")?))
    }

    /// Creates the annotated tag `name` on commit `target` with `message` (kept verbatim:
    /// release notes have `#` headings that git's default clean-up would strip), refusing to
    /// replace an existing tag. The tagger is git's committer identity (`user.name` and
    /// `user.email`), else a fixed fallback: CI runners often have no git identity, and a
    /// release must not fail for want of one. The message goes through a file, since long
    /// notes would not fit in an argument.
    pub fn create_annotated_tag(&self, name: &str, target: &str, message: &str) -> Result<()> {
        let target = object_id(target)?;
        let has_identity = self.runner.output(&self.git(["var", "GIT_COMMITTER_IDENT"]))?.status.success();
        let file = std::env::temp_dir().join(format!("xtask-tag-message-{}.txt", std::process::id()));
        std::fs::write(&file, message).with_context(|| format!("cannot write {}", file.display()))?;
        let mut command = self
            .git(["tag", "--annotate", "--cleanup=verbatim", "--file"])
            .arg(file.display().to_string())
            .args(["--", name, target]);
        if !has_identity {
            command = command.env("GIT_COMMITTER_NAME", "intric xtask").env("GIT_COMMITTER_EMAIL", "xtask@localhost");
        }
        let created = self.runner.output(&command);
        std::fs::remove_file(&file).ok();
        self.succeeded(created?, &format!("create tag {name}")).map(drop)
    }
}

/// Whether the git repository around `path` (searched upwards from its directory, if there is
/// one) has it in its index: `git ls-files`, which reads the index entry and nothing else.
pub fn is_tracked(runner: &dyn Runner, path: &Path) -> Result<bool> {
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
    // Literal: a `*` or `?` in the name is part of it, not a pattern.
    let command =
        git_in(dir).env("GIT_LITERAL_PATHSPECS", "1").args(["ls-files", "-z", "--"]).arg(name.to_string_lossy());
    let finished = runner.output(&command)?;
    if finished.status.success() {
        return Ok(!finished.stdout.is_empty());
    }
    if let Some(refused) = owned_by_another_user(&finished, dir) {
        return Err(refused);
    }
    let said = git_said(&finished);
    if said.contains("not a git repository") || said.contains("must be run in a work tree") {
        return Ok(false);
    }
    bail!("cannot tell whether git tracks {}: {said}", path.display())
}

/// `git -C <dir>` in the C locale, without the caller's repository variables.
fn git_in(dir: &Path) -> Command {
    let command = Command::new("git").arg("-C").arg(dir.display().to_string()).env("LC_ALL", "C");
    CALLER_REPOSITORY_VARIABLES.iter().fold(command, |command, variable| command.env_remove(variable.to_string()))
}

/// What a failed git command said: its `fatal:`/`error:` line if it has one, else its last
/// line (standard error; the output, where that is all there is).
fn git_said(finished: &Finished) -> String {
    let text = if finished.stderr.trim().is_empty() { &finished.stdout } else { &finished.stderr };
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let line = lines
        .iter()
        .find(|line| line.starts_with("fatal:") || line.starts_with("error:"))
        .or(lines.last())
        .copied()
        .unwrap_or("git failed without a message");
    line.trim_start_matches("fatal:").trim_start_matches("error:").trim().to_string()
}

/// The error for a repository that git refuses to read because another user owns it (its
/// `safe.directory` check), with the command that trusts it, for the work tree git names
/// (else `dir`); `None` when that is not why git failed.
fn owned_by_another_user(finished: &Finished, dir: &Path) -> Option<anyhow::Error> {
    let text = if finished.stderr.trim().is_empty() { &finished.stdout } else { &finished.stderr };
    let (_, rest) = text.split_once("detected dubious ownership in repository at '")?;
    let work_tree = rest.split_once('\'').map_or_else(|| dir.display().to_string(), |(named, _)| named.to_string());
    Some(anyhow!(
        "git refuses to read {work_tree}: it belongs to another user; if you trust it, run \
         `git config --global --add safe.directory {work_tree}`"
    ))
}

/// `id` if it is a full object id (40 hex digits, or 64 in a SHA-256 repository); anything
/// else could be read by git as an option or a revision expression.
fn object_id(id: &str) -> Result<&str> {
    ensure!(matches!(id.len(), 40 | 64) && all_hex(id.as_bytes()), "{id} is not a git object id");
    Ok(id)
}

/// Whether every byte is a hex digit. A plain loop over a `match`: it runs for every ref in
/// packed-refs, and the debug build the xtask runs as spends twice as long in iterator
/// adapters, and twice as long again calling `u8::is_ascii_hexdigit`, which it does not inline.
fn all_hex(bytes: &[u8]) -> bool {
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => index += 1,
            _ => return false,
        }
    }
    true
}

/// The ref that git calls broken in `stderr`: `warning: ignoring broken ref <name>` (a
/// listing skips it) or `fatal: bad ref <name> (<id>)` (show-ref, which stops).
fn broken_ref(stderr: &str) -> Option<&str> {
    stderr.lines().find_map(|line| {
        let rest = line.split_once("ignoring broken ref ").or_else(|| line.split_once("bad ref "))?.1;
        rest.split_whitespace().next().filter(|name| name.starts_with("refs/"))
    })
}

/// Parses `git status --porcelain=v2 -z --branch` (see git-status(1), "Porcelain Format
/// Version 2"): the `# branch.` headers, then one NUL-terminated entry per changed path.
fn parse_status(output: &str) -> Result<Status> {
    use status_bits::*;
    let mut status = Status::default();
    let mut entries = output.split('\0').filter(|entry| !entry.is_empty());
    while let Some(entry) = entries.next() {
        let fields = |count: usize| -> Result<Vec<&str>> {
            let fields: Vec<&str> = entry.splitn(count, ' ').collect();
            ensure!(fields.len() == count, "unexpected status entry {entry:?}");
            Ok(fields)
        };
        match entry.as_bytes()[0] {
            b'#' => {
                if let Some(id) = entry.strip_prefix("# branch.oid ") {
                    status.head = (id != "(initial)").then(|| id.to_string());
                } else if let Some(branch) = entry.strip_prefix("# branch.head ") {
                    status.branch = (branch != "(detached)").then(|| branch.to_string());
                }
            }
            // Ordinary changes: `1 XY sub mH mI mW hH hI path`.
            b'1' => {
                let fields = fields(9)?;
                status.changes.push((fields[8].to_string(), change_bits(fields[1])?));
            }
            // Renames and copies (only with rename detection): `... X<score> path`, then the
            // original path as an entry of its own.
            b'2' => {
                let fields = fields(10)?;
                status.changes.push((fields[9].to_string(), change_bits(fields[1])?));
                entries.next();
            }
            // Unmerged paths: `u XY sub m1 m2 m3 mW h1 h2 h3 path`.
            b'u' => status.changes.push((fields(11)?[10].to_string(), CONFLICTED)),
            b'?' => status.changes.push((fields(2)?[1].to_string(), WT_NEW)),
            // Ignored files are not asked for, and not counted.
            b'!' => {}
            _ => bail!("unexpected status entry {entry:?}"),
        }
    }
    Ok(status)
}

/// The [`status_bits`] of a porcelain `XY` field: X is the index against HEAD, Y the work tree
/// against the index (`.` unchanged, `M` modified, `T` type changed, `A` added, `D` deleted,
/// `R` renamed, `C` copied).
fn change_bits(xy: &str) -> Result<u32> {
    use status_bits::*;
    let &[x, y] = xy.as_bytes() else { bail!("unexpected status field {xy:?}") };
    let index = match x {
        b'.' => 0,
        b'M' => INDEX_MODIFIED,
        b'T' => INDEX_TYPECHANGE,
        b'A' | b'C' => INDEX_NEW,
        b'D' => INDEX_DELETED,
        b'R' => INDEX_RENAMED,
        _ => bail!("unexpected index status {:?} in {xy:?}", x as char),
    };
    let worktree = match y {
        b'.' => 0,
        b'M' => WT_MODIFIED,
        b'T' => WT_TYPECHANGE,
        // An intent to add (`git add -N`): libgit2 saw an empty file added to the index and
        // the real one in the work tree.
        b'A' => INDEX_NEW | WT_MODIFIED,
        b'D' => WT_DELETED,
        b'R' => WT_RENAMED,
        _ => bail!("unexpected work tree status {:?} in {xy:?}", y as char),
    };
    Ok(index | worktree)
}

/// Parses `show-ref --dereference`: `<id> <ref>` per ref, and after an annotated tag
/// `<id> <ref>^{}` with the object it peels to.
fn parse_refs(output: &str) -> Refs {
    let mut refs = Refs::default();
    let mut heads = Vec::new();
    for line in output.lines() {
        let Some((id, name)) = line.split_once(' ') else { continue };
        if let Some(tag) = name.strip_prefix("refs/tags/") {
            match tag.strip_suffix("^{}") {
                // The peeled line follows its tag's own line.
                Some(peeled) => match refs.tags.last_mut() {
                    Some(last) if last.name == peeled => last.commit = id.to_string(),
                    _ => refs.tags.push(Tag { name: peeled.to_string(), commit: id.to_string() }),
                },
                None => refs.tags.push(Tag { name: tag.to_string(), commit: id.to_string() }),
            }
        } else if let Some(branch) =
            name.strip_prefix("refs/heads/").or_else(|| name.strip_prefix("refs/remotes/origin/"))
        {
            heads.push(branch);
        }
    }
    refs.main_or_master =
        ["main", "master"].into_iter().filter(|branch| heads.contains(branch)).map(str::to_string).collect();
    refs
}

/// A tag as the ref files name it.
#[derive(Debug, PartialEq, Eq)]
struct FileTag {
    /// The name without `refs/tags/`.
    name: String,
    /// The object it peels to, as packed-refs records it; `None` for a loose ref, whose
    /// object may be an annotated tag, which only the object database can peel.
    commit: Option<String>,
}

impl FileTag {
    /// The packed tag `name` whose commit is `id`; `None` when that is no object id.
    fn packed(name: &str, id: &str) -> Option<FileTag> {
        Some(FileTag { name: name.to_string(), commit: Some(object_id(id).ok()?.to_string()) })
    }
}

/// The tags of the ref files, in name order as show-ref lists them, given the loose tags that
/// `git for-each-ref --points-at=HEAD` found on `head` (one `refs/tags/<name>` a line); and the
/// names of the loose tags not on HEAD, whose commits stay unknown.
fn peel_on_head(file_tags: Vec<FileTag>, on_head: &str, head: &str) -> (Vec<Tag>, Vec<String>) {
    let on_head: Vec<&str> = on_head.lines().filter_map(|line| line.strip_prefix("refs/tags/")).collect();
    let (mut tags, mut unpeeled) = (Vec::new(), Vec::new());
    for tag in file_tags {
        match tag.commit {
            Some(commit) => tags.push(Tag { name: tag.name, commit }),
            None if on_head.contains(&tag.name.as_str()) => tags.push(Tag { name: tag.name, commit: head.to_string() }),
            None => unpeeled.push(tag.name),
        }
    }
    tags.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    (tags, unpeeled)
}

/// The refs as git keeps them in its files, read without starting a git process: the formats
/// of HEAD, loose ref files, `packed-refs` and `shallow` are plain text that git has kept
/// stable for many years (gitrepository-layout(5)). [`RefFiles::read`] reads only that plain
/// layout, and gives up on anything else, leaving the question to git itself.
#[derive(Debug, Default, PartialEq, Eq)]
struct RefFiles {
    /// HEAD's commit id; `None` on an unborn branch.
    head: Option<String>,
    /// Every tag: those of packed-refs in its order, then the loose ones.
    tags: Vec<FileTag>,
    /// The directory with the shared refs, where [`RefFiles::loose_tag`] reads.
    common_dir: PathBuf,
    /// Which of main and master exist, locally or on origin, in that order.
    main_or_master: Vec<String>,
    /// Whether the clone is shallow: it has a `shallow` file.
    shallow: bool,
    /// The branch the `refs/remotes/origin/HEAD` symref points at, if that branch exists.
    origin_head: Option<String>,
}

/// The branches [`RefFiles`] looks for, as [`Refs::main_or_master`] orders them.
const MAIN_OR_MASTER: [&str; 2] = ["main", "master"];

impl RefFiles {
    /// The refs of the work tree `work_tree` (which has `.git` in it), or `None` when their
    /// layout is not the plain one: a reftable repository (`extensions.refStorage`), a
    /// packed-refs without peeled tags, a symbolic ref where an id is expected, a ref name
    /// git would refuse, or a file that cannot be read. git then reads them itself.
    fn read(work_tree: &Path) -> Option<RefFiles> {
        let (git_dir, common_dir) = git_dirs(work_tree)?;
        let config = read_optional(&common_dir.join("config"))?;
        if config.to_ascii_lowercase().contains("refstorage") || common_dir.join("reftable").exists() {
            return None;
        }
        let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
        let head_ref = match head.trim_end().strip_prefix("ref: ") {
            Some(name) => Some(name.strip_prefix("refs/heads/")?.to_string()),
            None => None,
        };
        let packed = parse_packed_refs(&read_optional(&common_dir.join("packed-refs"))?)?;
        let loose = |name: &str| -> Option<Option<String>> {
            match std::fs::read_to_string(common_dir.join(name)) {
                Ok(text) => Some(Some(object_id(text.trim_end()).ok()?.to_string())),
                Err(error) if matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::IsADirectory) => {
                    Some(None)
                }
                Err(_) => None,
            }
        };
        let branch = |name: &str| -> Option<Option<String>> {
            let full = format!("refs/heads/{name}");
            Some(loose(&full)?.or_else(|| packed.id(&full).map(str::to_string)))
        };
        let head = match head_ref {
            Some(name) => branch(&name)?,
            None => Some(object_id(head.trim_end()).ok()?.to_string()),
        };
        let mut main_or_master = Vec::new();
        for name in MAIN_OR_MASTER {
            let remote = format!("refs/remotes/origin/{name}");
            if branch(name)?.is_some() || loose(&remote)?.is_some() || packed.id(&remote).is_some() {
                main_or_master.push(name.to_string());
            }
        }
        let origin_head = match std::fs::read_to_string(common_dir.join("refs/remotes/origin/HEAD")) {
            Ok(text) => {
                let target = text.trim_end().strip_prefix("ref: ")?;
                let exists = loose(target)?.is_some() || packed.id(target).is_some();
                exists.then(|| target.strip_prefix("refs/remotes/origin/").map(str::to_string)).flatten()
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(_) => return None,
        };
        let mut tags = packed.tags;
        let mut loose_tags = Vec::new();
        loose_tag_names(&common_dir.join("refs/tags"), "", &mut loose_tags)?;
        if !loose_tags.is_empty() {
            // A loose ref is newer than its packed copy.
            tags.retain(|tag| !loose_tags.contains(&tag.name));
            tags.extend(loose_tags.into_iter().map(|name| FileTag { name, commit: None }));
        }
        let shallow = common_dir.join("shallow").exists();
        Some(RefFiles { head, tags, common_dir, main_or_master, shallow, origin_head })
    }

    /// The tag that `pick` picks of all tags, and HEAD: the question of [`Reading::likely_ancestor`]
    /// as (tag name, the tag's object id, HEAD's id). A loose tag's own object id will do:
    /// rev-list peels an annotated tag itself.
    fn ancestry(&self, pick: PickTag) -> Option<(String, String, String)> {
        let names: Vec<&str> = self.tags.iter().map(|tag| tag.name.as_str()).collect();
        let tag = self.tags.get(pick(&names)?)?;
        let id = match &tag.commit {
            Some(commit) => commit.clone(),
            None => {
                let text = std::fs::read_to_string(self.common_dir.join("refs/tags").join(&tag.name)).ok()?;
                object_id(text.trim_end()).ok()?.to_string()
            }
        };
        Some((tag.name.clone(), id, self.head.clone()?))
    }
}

/// The repository's git directory and common directory (the same one, except in a linked
/// work tree) for the work tree `work_tree`: `.git` itself, or where a `.git` file
/// (`gitdir: <path>`, as `git worktree` and submodules leave it) points, with its `commondir`.
fn git_dirs(work_tree: &Path) -> Option<(PathBuf, PathBuf)> {
    let dot_git = work_tree.join(".git");
    let git_dir = if dot_git.is_dir() {
        dot_git
    } else {
        let text = std::fs::read_to_string(&dot_git).ok()?;
        work_tree.join(text.trim_end_matches(['\n', '\r']).strip_prefix("gitdir: ")?)
    };
    let common_dir = match read_optional(&git_dir.join("commondir"))? {
        common if common.is_empty() => git_dir.clone(),
        common => git_dir.join(common.trim_end_matches(['\n', '\r'])),
    };
    Some((git_dir, common_dir))
}

/// The text of `path`, empty when there is no such file; `None` when it cannot be read.
fn read_optional(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Some(String::new()),
        Err(_) => None,
    }
}

/// The tags and branches of a `packed-refs` file.
#[derive(Debug, Default)]
struct PackedRefs {
    tags: Vec<FileTag>,
    /// Every other ref as (full name, id): branches, remote branches, notes.
    others: Vec<(String, String)>,
}

impl PackedRefs {
    fn id(&self, name: &str) -> Option<&str> {
        self.others.iter().find(|(other, _)| other == name).map(|(_, id)| id.as_str())
    }
}

/// Parses `packed-refs`: a `# pack-refs with: <traits>` header, `<id> <name>` per ref and,
/// after an annotated tag, `^<id>` with the object it peels to. Only a file whose header has
/// the `peeled` trait says which tags are not annotated (no `^` line), so any other with
/// tags in it is `None`; so is a line that is none of these.
///
/// It runs on every `tags` and build, in the debug build the xtask runs as, over a line per
/// tag and one per annotated tag's peel: hence loops over bytes instead of `str::lines` and
/// its iterator adapters, which that build runs several times slower.
fn parse_packed_refs(text: &str) -> Option<PackedRefs> {
    let mut packed = PackedRefs::default();
    let bytes = text.as_bytes();
    let mut at = 0;
    let mut peeled = false;
    if bytes.first() == Some(&b'#') {
        at = line_end(bytes, 0);
        let traits = line_at(text, 0, at).strip_prefix("# pack-refs with:")?;
        peeled = traits.split_whitespace().any(|name| name == "peeled" || name == "fully-peeled");
        at += 1;
    }
    // The tag of the line before, with its own id, until the next line says whether it is
    // annotated: a `^` line gives the commit it peels to, and its own id is never used.
    let mut last_tag: Option<(&str, &str)> = None;
    while at < bytes.len() {
        // Every line is longer than the shortest id (`^<id>`, `<id> <name>`), so its end is
        // looked for only after that; a newline within that length leaves a line that
        // fails the id check below.
        let end = line_end(bytes, (at + SHORTEST_ID).min(bytes.len()));
        let line = line_at(text, at, end);
        at = end + 1;
        if let Some(commit) = line.strip_prefix('^') {
            let (name, _) = last_tag.take()?;
            packed.tags.push(FileTag::packed(name, commit)?);
            continue;
        }
        if let Some((name, id)) = last_tag.take() {
            packed.tags.push(FileTag::packed(name, id)?);
        }
        // 40 hex digits, or 64 in a SHA-256 repository, then a space.
        let length = if line.as_bytes().get(SHORTEST_ID) == Some(&b' ') { SHORTEST_ID } else { 64 };
        if line.as_bytes().get(length) != Some(&b' ') {
            return None;
        }
        let (id, name) = (&line[..length], &line[length + 1..]);
        match name.strip_prefix("refs/tags/") {
            Some(tag) => last_tag = Some((tag, id)),
            None => packed.others.push((name.to_string(), object_id(id).ok()?.to_string())),
        }
    }
    if let Some((name, id)) = last_tag {
        packed.tags.push(FileTag::packed(name, id)?);
    }
    (peeled || packed.tags.is_empty()).then_some(packed)
}

/// The length of a SHA-1 object id in hex, the shorter of git's two.
const SHORTEST_ID: usize = 40;

/// The index of the first newline in `bytes` from `from` on, or their length.
fn line_end(bytes: &[u8], from: usize) -> usize {
    let mut end = from;
    while end < bytes.len() && bytes[end] != b'\n' {
        end += 1;
    }
    end
}

/// The line of `text` from `start` to the newline at `end`, without a carriage return (a
/// byte compared, where `strip_suffix` would search for a `char` pattern).
fn line_at(text: &str, start: usize, end: usize) -> &str {
    let carriage_return = end > start && text.as_bytes()[end - 1] == b'\r';
    &text[start..if carriage_return { end - 1 } else { end }]
}

/// Adds the names of the loose tag refs under `dir` (`refs/tags/<prefix>`) to `names`, without
/// reading them (git reads them when it peels them). `None` for a name git would not take for
/// a ref (a lock of a ref being written, a hidden file, a name that is not UTF-8) or an
/// unreadable directory.
fn loose_tag_names(dir: &Path, prefix: &str, names: &mut Vec<String>) -> Option<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Some(()),
        Err(_) => return None,
    };
    for entry in entries {
        let entry = entry.ok()?;
        // The file's own name becomes the tag's where there is no prefix, without a copy: a
        // repository has hundreds of tags, and the debug build formats strings slowly.
        let file_name = entry.file_name().into_string().ok()?;
        if file_name.as_bytes().first() == Some(&b'.') || file_name.ends_with(".lock") {
            return None;
        }
        let name = if prefix.is_empty() { file_name } else { prefix.to_string() + &file_name };
        if entry.file_type().ok()?.is_dir() {
            loose_tag_names(&entry.path(), &format!("{name}/"), names)?;
        } else {
            names.push(name);
        }
    }
    Some(())
}

/// The committer time (unix seconds) of a raw commit object (`git cat-file commit`), whose
/// `committer <name> <<email>> <seconds> <zone>` line comes before the first empty line.
fn committer_time(commit: &str) -> Option<i64> {
    let line = commit.lines().take_while(|line| !line.is_empty()).find(|line| line.starts_with("committer "))?;
    line.rsplit(' ').nth(1)?.parse().ok()
}

/// Parses `rev-list --left-right --count`: the two counts, separated by a tab.
fn parse_left_right(output: &str) -> Option<(u64, u64)> {
    let (left, right) = output.trim().split_once('\t')?;
    Some((left.parse().ok()?, right.parse().ok()?))
}

/// Parses `git log -z --format=%H%n%B`: per commit its id, a newline and its message.
fn parse_log(output: &str) -> Vec<Commit> {
    output
        .split('\0')
        .filter(|record| !record.trim().is_empty())
        .map(|record| {
            // After the first record, git puts a newline before each id.
            let (id, message) = record.trim_start_matches('\n').split_once('\n').unwrap_or((record, ""));
            let (subject, body) = message.split_once('\n').unwrap_or((message, ""));
            Commit { id: id.to_string(), subject: subject.trim().to_string(), body: body.trim().to_string() }
        })
        .collect()
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

// Remote refs: the release lock and the tags on a remote. These talk to the remote, with the
// user's own git configuration, credentials and transports, as pushing by hand would; like the
// reads above they go through the runner, so `--dry-run` shows them and unit tests record them.

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
    use crate::plan::runner::{Processes, Recording};

    const HEAD: &str = "0123456789abcdef0123456789abcdef01234567";
    const TAGGED: &str = "89abcdef0123456789abcdef0123456789abcdef";
    const TAG_OBJECT: &str = "fedcba9876543210fedcba9876543210fedcba98";

    /// A status with every kind of entry: the path of each keeps its spaces and newlines.
    fn status_output() -> String {
        [
            &format!("# branch.oid {HEAD}"),
            "# branch.head feature/x",
            "# branch.upstream origin/feature/x",
            "# branch.ab +1 -0",
            "1 .M N... 100644 100644 100644 1111111111111111111111111111111111111111 1111111111111111111111111111111111111111 dir with space/f ü.txt",
            "1 A. N... 000000 100644 100644 0000000000000000000000000000000000000000 2222222222222222222222222222222222222222 new\nline.txt",
            "1 MD N... 100644 100644 000000 3333333333333333333333333333333333333333 3333333333333333333333333333333333333333 gone.txt",
            "2 R. N... 100644 100644 100644 4444444444444444444444444444444444444444 4444444444444444444444444444444444444444 R100 moved.txt",
            "original.txt",
            "u UU N... 100644 100644 100644 100644 5555555555555555555555555555555555555555 6666666666666666666666666666666666666666 7777777777777777777777777777777777777777 both.txt",
            "? untracked file",
            "! ignored.log",
            "",
        ]
        .join("\0")
    }

    /// How a repository on branch feature/x answers `open`'s reads: a lightweight, an
    /// annotated and a nested tag, an origin with a token in its URL, a shallow history.
    fn repository(shown: &str) -> std::result::Result<String, String> {
        let reply = if shown.contains(" status ") {
            status_output()
        } else if shown.contains(" show-ref --dereference") {
            format!(
                "{HEAD} refs/heads/main\n{HEAD} refs/heads/main/old\n{HEAD} refs/remotes/origin/HEAD\n\
                 {TAGGED} refs/tags/light\n{TAG_OBJECT} refs/tags/nested\n{TAGGED} refs/tags/nested^{{}}\n\
                 {TAG_OBJECT} refs/tags/v1.0.0\n{TAGGED} refs/tags/v1.0.0^{{}}\n"
            )
        } else if shown.contains(" cat-file commit HEAD") {
            "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A U Thor <a@example.com> 1600000000 +0200\n\
             committer C O Mitter <c@example.com> 1700000060 +0100\n\ncommitter in the message 5\n"
                .to_string()
        } else if shown
            .contains(" rev-parse --is-shallow-repository --revs-only --symbolic-full-name refs/remotes/origin/HEAD")
        {
            "true\nrefs/remotes/origin/develop\n".to_string()
        } else if shown.contains(" remote get-url origin") {
            "https://gitlab-ci-token:CANARY@gitlab.example.com/group/intric.git\n".to_string()
        } else {
            return Err(format!("unexpected command {shown}"));
        };
        Ok(reply)
    }

    #[test]
    fn without_ref_files_open_reads_the_state_in_five_processes() {
        let dir = tempfile::tempdir().unwrap();
        let runner = Recording::replying(repository);
        let repo = Repo::open(&runner, dir.path()).unwrap();
        assert_eq!(repo.head().unwrap(), Head { id: HEAD.into(), time: 1_700_000_060 });
        assert_eq!(repo.branch().unwrap().as_deref(), Some("feature/x"));
        let tags: Vec<(String, String)> = repo.tags().unwrap().into_iter().map(|tag| (tag.name, tag.commit)).collect();
        let expected = [("light", TAGGED), ("nested", TAGGED), ("v1.0.0", TAGGED)];
        assert_eq!(tags, expected.map(|(name, commit)| (name.to_string(), commit.to_string())));
        assert_eq!(repo.default_branch().as_deref(), Some("develop"));
        assert!(repo.is_shallow());
        assert_eq!(repo.origin_url().as_deref(), Some("https://gitlab.example.com/group/intric.git"));
        assert!(matches!(repo.worktree().unwrap(), Worktree::Dirty { .. }));

        let executed = runner.executed();
        assert_eq!(executed.len(), 5, "the five reads and nothing else: {executed:#?}");
        let parent = dir.path().canonicalize().unwrap().parent().unwrap().display().to_string();
        let prefix = format!("LC_ALL=C GIT_CEILING_DIRECTORIES={parent} git -C {} ", dir.path().display());
        assert!(executed.iter().all(|command| command.starts_with(&prefix)), "{executed:#?}");
        assert!(executed.contains(&format!(
            "{prefix}--no-optional-locks status --porcelain=v2 -z --branch --untracked-files=all --no-renames \
             --no-ahead-behind"
        )));
    }

    /// Writes `files` (path under the directory, content) into a new temporary directory.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        dir
    }

    const PEELED: &str = "# pack-refs with: peeled fully-peeled sorted \n";

    #[test]
    fn packed_refs_give_peeled_tags_only_when_the_header_says_so() {
        let text = format!(
            "{PEELED}{HEAD} refs/heads/main\n{TAG_OBJECT} refs/tags/v1.0.0\n^{TAGGED}\n{HEAD} refs/tags/v1.1.0\n"
        );
        let packed = parse_packed_refs(&text).unwrap();
        let tag = |name: &str, commit: &str| FileTag { name: name.into(), commit: Some(commit.into()) };
        assert_eq!(packed.tags, [tag("v1.0.0", TAGGED), tag("v1.1.0", HEAD)]);
        assert_eq!(packed.id("refs/heads/main"), Some(HEAD));
        assert_eq!(packed.id("refs/heads/master"), None);

        let unpeeled = format!("# pack-refs with: sorted \n{TAG_OBJECT} refs/tags/v1.0.0\n");
        assert!(parse_packed_refs(&unpeeled).is_none(), "no `peeled`: a tag without ^ may still be annotated");
        assert!(parse_packed_refs(&format!("{TAG_OBJECT} refs/tags/v1.0.0\n")).is_none(), "no header at all");
        assert!(parse_packed_refs(&format!("{HEAD} refs/heads/main\n")).is_some(), "no tags, nothing to peel");
        assert!(parse_packed_refs(&format!("{PEELED}^{TAGGED}\n")).is_none(), "a peel of nothing");
        assert!(
            parse_packed_refs(&format!("{PEELED}{HEAD} refs/heads/main\n^{TAGGED}\n")).is_none(),
            "a branch peeled"
        );
        assert!(parse_packed_refs(&format!("{PEELED}not-an-id refs/tags/v1\n")).is_none());
        assert!(parse_packed_refs("").is_some());

        // The lines are found by their newlines, not as `str::lines` would: the same answers.
        let sha256 = "ab".repeat(32);
        let text =
            format!("{PEELED}{sha256} refs/tags/v2\r\n{HEAD} refs/tags/v3\n{TAG_OBJECT} refs/tags/v4\n^{TAGGED}");
        let tags = parse_packed_refs(&text).unwrap().tags;
        assert_eq!(tags, [tag("v2", &sha256), tag("v3", HEAD), tag("v4", TAGGED)], "no newline at the end");
        for (text, why) in [
            (format!("{PEELED}abc\n{HEAD} refs/tags/v1\n"), "a line shorter than an id"),
            (format!("{PEELED}{HEAD}\n{HEAD} refs/tags/v1\n"), "an id without a name"),
            (format!("{PEELED}{TAG_OBJECT} refs/tags/v1\n^{}\n", &TAGGED[..39]), "a short peel"),
            (format!("{PEELED}{TAG_OBJECT} refs/tags/v1\n^{TAGGED}0\n"), "a long peel"),
            (format!("{PEELED}{}g refs/tags/v1\n", &HEAD[..39]), "not hex"),
        ] {
            assert!(parse_packed_refs(&text).is_none(), "{why}");
        }
    }

    #[test]
    fn ref_files_read_head_branches_tags_and_origin() {
        let dir = tree(&[
            (".git/HEAD", "ref: refs/heads/main\n"),
            (".git/config", "[core]\n\trepositoryformatversion = 0\n"),
            (".git/refs/heads/main", &format!("{HEAD}\n")),
            (".git/refs/heads/main-old/x", &format!("{HEAD}\n")),
            (".git/refs/remotes/origin/HEAD", "ref: refs/remotes/origin/master\n"),
            (".git/refs/tags/v2.0.0", &format!("{TAG_OBJECT}\n")),
            (".git/refs/tags/release/v1", &format!("{HEAD}\n")),
            (".git/shallow", &format!("{TAGGED}\n")),
            (
                ".git/packed-refs",
                &format!(
                    "{PEELED}{TAGGED} refs/remotes/origin/master\n{TAG_OBJECT} refs/tags/v1.0.0\n^{TAGGED}\n\
                     {TAGGED} refs/tags/v2.0.0\n"
                ),
            ),
        ]);
        let files = RefFiles::read(dir.path()).unwrap();
        assert_eq!(files.head.as_deref(), Some(HEAD));
        assert_eq!(files.main_or_master, ["main", "master"], "local main, origin's master");
        assert_eq!(files.origin_head.as_deref(), Some("master"));
        assert!(files.shallow);
        let mut tags: Vec<(&str, Option<&str>)> =
            files.tags.iter().map(|tag| (tag.name.as_str(), tag.commit.as_deref())).collect();
        tags.sort();
        // The loose v2.0.0 replaces its packed copy; loose refs are peeled by git.
        assert_eq!(tags, [("release/v1", None), ("v1.0.0", Some(TAGGED)), ("v2.0.0", None)]);
        let newest = |names: &[&str]| names.iter().position(|name| *name == "v2.0.0");
        assert_eq!(files.ancestry(&newest), Some(("v2.0.0".into(), TAG_OBJECT.into(), HEAD.into())));

        // Unborn, with origin/HEAD pointing at a branch that does not exist.
        let unborn = tree(&[
            (".git/HEAD", "ref: refs/heads/main\n"),
            (".git/refs/remotes/origin/HEAD", "ref: refs/remotes/origin/gone\n"),
        ]);
        let files = RefFiles::read(unborn.path()).unwrap();
        assert_eq!((files.head, files.origin_head, files.shallow), (None, None, false));
        assert!(files.tags.is_empty() && files.main_or_master.is_empty());

        let detached = tree(&[(".git/HEAD", &format!("{TAGGED}\n"))]);
        assert_eq!(RefFiles::read(detached.path()).unwrap().head.as_deref(), Some(TAGGED));
    }

    #[test]
    fn a_linked_work_tree_reads_its_head_and_the_shared_refs() {
        let dir = tree(&[
            ("main/.git/HEAD", "ref: refs/heads/main\n"),
            ("main/.git/packed-refs", &format!("{PEELED}{HEAD} refs/heads/main\n{TAGGED} refs/heads/topic\n")),
            ("main/.git/worktrees/wt/HEAD", "ref: refs/heads/topic\n"),
            ("main/.git/worktrees/wt/commondir", "../..\n"),
            ("wt/.git", "gitdir: ../main/.git/worktrees/wt\n"),
        ]);
        let files = RefFiles::read(&dir.path().join("wt")).unwrap();
        assert_eq!(files.head.as_deref(), Some(TAGGED), "the work tree's own HEAD");
        assert_eq!(files.main_or_master, ["main"], "the shared refs");
    }

    #[test]
    fn unusual_ref_storage_is_left_to_git() {
        let head = (".git/HEAD", "ref: refs/heads/main\n");
        for (name, extra) in [
            ("reftable by config", (".git/config", "[extensions]\n\trefStorage = reftable\n")),
            ("reftable directory", (".git/reftable/tables.list", "")),
            ("symbolic HEAD target", (".git/refs/heads/main", "ref: refs/heads/other\n")),
            ("HEAD outside refs/heads", (".git/HEAD", "ref: refs/remotes/origin/main\n")),
            ("a ref being written", (".git/refs/tags/v1.lock", "")),
            ("packed-refs without peeled tags", (".git/packed-refs", &format!("{TAG_OBJECT} refs/tags/v1\n"))),
            ("origin/HEAD not symbolic", (".git/refs/remotes/origin/HEAD", &format!("{HEAD}\n"))),
            ("a .git file pointing nowhere useful", (".git", "not a gitdir line\n")),
        ] {
            // A `.git` file replaces the directory with HEAD in it.
            let dir = if extra.0 == ".git" { tree(&[extra]) } else { tree(&[head, extra]) };
            assert!(RefFiles::read(dir.path()).is_none(), "{name}");
        }
        assert!(RefFiles::read(tempfile::tempdir().unwrap().path()).is_none(), "no .git at all");
    }

    /// Answers like [`repository`], and the ancestry of the tag object `TAG_OBJECT`.
    fn repository_with_ancestry(shown: &str) -> std::result::Result<String, String> {
        if shown.contains(&format!("rev-list --left-right --count {TAG_OBJECT}...{HEAD}")) {
            Ok("0\t4\n".into())
        } else if shown.contains(" show-ref --dereference --tags") {
            Ok(format!("{TAG_OBJECT} refs/tags/v1.0.0\n{TAGGED} refs/tags/v1.0.0^{{}}\n"))
        } else {
            repository(shown)
        }
    }

    #[test]
    fn open_reads_packed_refs_from_files_and_asks_the_likely_ancestry_at_once() {
        let dir = tree(&[
            (".git/HEAD", "ref: refs/heads/feature/x\n"),
            (".git/refs/heads/feature/x", &format!("{HEAD}\n")),
            (".git/refs/remotes/origin/HEAD", "ref: refs/remotes/origin/main\n"),
            (
                ".git/packed-refs",
                &format!("{PEELED}{HEAD} refs/remotes/origin/main\n{TAG_OBJECT} refs/tags/v1.0.0\n^{TAGGED}\n"),
            ),
        ]);
        let runner = Recording::replying(|shown| {
            if shown.contains(&format!("rev-list --left-right --count {TAGGED}...{HEAD}")) {
                Ok("0\t4\n".into())
            } else {
                repository(shown)
            }
        });
        let pick = |names: &[&str]| names.iter().position(|name| *name == "v1.0.0");
        let reading = Reading { tag_commits: true, commit_time: true, origin: true, likely_ancestor: Some(&pick) };
        let repo = Repo::open_reading(&runner, dir.path(), &reading).unwrap();
        assert_eq!(repo.tags().unwrap(), [Tag { name: "v1.0.0".into(), commit: TAGGED.into() }]);
        assert_eq!((repo.default_branch().as_deref(), repo.is_shallow()), (Some("main"), false));
        assert_eq!(repo.commits_after(TAGGED, HEAD).unwrap(), Some(4));
        let executed = runner.executed();
        for absent in [" show-ref ", " rev-parse "] {
            assert!(!executed.iter().any(|command| command.contains(absent)), "{absent}: {executed:#?}");
        }
        assert_eq!(executed.len(), 4, "status, cat-file, remote and the rev-list: {executed:#?}");

        // The tags alone: only the status.
        let runner = Recording::replying(repository);
        let reading = Reading { tag_commits: false, commit_time: false, origin: false, likely_ancestor: None };
        let repo = Repo::open_reading(&runner, dir.path(), &reading).unwrap();
        assert_eq!(runner.executed().len(), 1, "{:#?}", runner.executed());
        assert_eq!(repo.head_id().unwrap(), HEAD);
        assert!(repo.head().unwrap_err().to_string().contains("commit time"));
        assert_eq!(repo.origin_url(), None);
    }

    #[test]
    fn loose_tags_are_peeled_by_git_and_asked_by_their_own_id() {
        let dir = tree(&[(".git/HEAD", &format!("{HEAD}\n")), (".git/refs/tags/v1.0.0", &format!("{TAG_OBJECT}\n"))]);
        let runner = Recording::replying(repository_with_ancestry);
        let pick = |_: &[&str]| Some(0);
        let reading = Reading { tag_commits: true, commit_time: true, origin: false, likely_ancestor: Some(&pick) };
        let repo = Repo::open_reading(&runner, dir.path(), &reading).unwrap();
        assert_eq!(repo.tags().unwrap(), [Tag { name: "v1.0.0".into(), commit: TAGGED.into() }]);
        assert_eq!(repo.commits_after(TAGGED, HEAD).unwrap(), Some(4), "answered by the tag object's rev-list");
        let executed = runner.executed();
        assert_eq!(executed.len(), 4, "status, show-ref --tags, cat-file, rev-list: {executed:#?}");
        assert!(!executed.iter().any(|command| command.contains(" rev-parse ")), "{executed:#?}");
    }

    #[test]
    fn without_every_commit_git_peels_loose_tags_only_to_find_those_on_head() {
        let dir = tree(&[
            (
                ".git/HEAD",
                &format!(
                    "{HEAD}
"
                ),
            ),
            (
                ".git/refs/tags/v1.0.0",
                &format!(
                    "{TAG_OBJECT}
"
                ),
            ),
            (
                ".git/refs/tags/v1.1.0",
                &format!(
                    "{TAG_OBJECT}
"
                ),
            ),
            (
                ".git/refs/tags/b-light",
                &format!(
                    "{HEAD}
"
                ),
            ),
            (
                ".git/packed-refs",
                &format!(
                    "{PEELED}{TAG_OBJECT} refs/tags/a-packed
^{HEAD}
"
                ),
            ),
        ]);
        let runner = Recording::replying(|shown| {
            if shown.contains(" for-each-ref --points-at=HEAD '--format=%(refname)' refs/tags") {
                Ok("refs/tags/b-light
refs/tags/v1.1.0
"
                .into())
            } else {
                repository(shown)
            }
        });
        let reading = Reading { tag_commits: false, commit_time: false, origin: false, likely_ancestor: None };
        let repo = Repo::open_reading(&runner, dir.path(), &reading).unwrap();
        assert_eq!(repo.head_tags(), ["a-packed", "b-light", "v1.1.0"]);
        let mut names = repo.tag_names();
        names.sort();
        assert_eq!(names, ["a-packed", "b-light", "v1.0.0", "v1.1.0"]);
        let error = repo.tags().unwrap_err().to_string();
        assert!(error.contains("commits of the tags") && error.contains("were not read"), "{error}");
        assert_eq!(runner.executed().len(), 2, "status and for-each-ref: {:#?}", runner.executed());

        // On an unborn HEAD no tag is on it, and git is not asked.
        let unborn =
            tree(&[(".git/HEAD", "ref: refs/heads/main\n"), (".git/refs/tags/v1.0.0", &format!("{TAG_OBJECT}\n"))]);
        let runner = Recording::replying(|_| Ok("# branch.oid (initial)\0# branch.head main\0".into()));
        let repo = Repo::open_reading(&runner, unborn.path(), &reading).unwrap();
        assert_eq!((repo.tag_names(), repo.head_tags()), (vec!["v1.0.0".to_string()], Vec::<String>::new()));
        assert!(repo.head_id().unwrap_err().to_string().contains("has no commits yet"));
        assert_eq!(runner.executed().len(), 1, "the status alone: {:#?}", runner.executed());
    }

    #[test]
    fn status_entries_become_paths_and_libgit2_status_bits() {
        use status_bits::*;
        let status = parse_status(&status_output()).unwrap();
        assert_eq!(status.head.as_deref(), Some(HEAD));
        assert_eq!(status.branch.as_deref(), Some("feature/x"));
        let changes: Vec<(&str, u32)> = status.changes.iter().map(|(path, bits)| (path.as_str(), *bits)).collect();
        assert_eq!(
            changes,
            [
                ("dir with space/f ü.txt", WT_MODIFIED),
                ("new\nline.txt", INDEX_NEW),
                ("gone.txt", INDEX_MODIFIED | WT_DELETED),
                ("moved.txt", INDEX_RENAMED),
                ("both.txt", CONFLICTED),
                ("untracked file", WT_NEW),
            ]
        );

        let unborn = parse_status("# branch.oid (initial)\0# branch.head main\0").unwrap();
        assert_eq!((unborn.head, unborn.branch.as_deref()), (None, Some("main")));
        let detached = parse_status(&format!("# branch.oid {HEAD}\0# branch.head (detached)\0")).unwrap();
        assert_eq!((detached.head.as_deref(), detached.branch), (Some(HEAD), None));
        assert!(parse_status("1 .M too few fields\0").is_err());
        assert!(parse_status("X what\0").is_err());
    }

    #[test]
    fn status_codes_map_to_the_bits_libgit2_reported() {
        use status_bits::*;
        for (xy, bits) in [
            (".M", WT_MODIFIED),
            ("M.", INDEX_MODIFIED),
            ("MM", INDEX_MODIFIED | WT_MODIFIED),
            ("A.", INDEX_NEW),
            ("AM", INDEX_NEW | WT_MODIFIED),
            ("D.", INDEX_DELETED),
            (".D", WT_DELETED),
            ("T.", INDEX_TYPECHANGE),
            (".T", WT_TYPECHANGE),
            // `git add -N`: libgit2 said "new in the index, modified in the work tree".
            (".A", INDEX_NEW | WT_MODIFIED),
        ] {
            assert_eq!(change_bits(xy).unwrap(), bits, "{xy}");
        }
        for bad in ["M", "MMM", "?M", "M?"] {
            assert!(change_bits(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refs_give_peeled_tags_and_the_default_branch() {
        let refs = parse_refs(&format!(
            "{HEAD} refs/heads/master\n{HEAD} refs/remotes/origin/main\n{HEAD} refs/remotes/upstream/main\n\
             {TAG_OBJECT} refs/tags/v2\n{TAGGED} refs/tags/v2^{{}}\n{HEAD} refs/tags/v3\n"
        ));
        let tag = |name: &str, commit: &str| Tag { name: name.into(), commit: commit.into() };
        assert_eq!(refs.tags, [tag("v2", TAGGED), tag("v3", HEAD)]);
        assert_eq!(refs.main_or_master, ["main", "master"], "origin's main, then the local master");
        let elsewhere = parse_refs(&format!("{HEAD} refs/heads/main/feature\n{HEAD} refs/remotes/upstream/master\n"));
        assert!(elsewhere.main_or_master.is_empty(), "{elsewhere:?}");
        assert_eq!(parse_refs(""), Refs::default());
    }

    #[test]
    fn no_refs_and_no_origin_are_answers() {
        let dir = tempfile::tempdir().unwrap();
        let runner = Recording::replying(|shown| {
            if shown.contains(" show-ref ") || shown.contains(" remote get-url ") {
                Err(String::new())
            } else if shown.contains(" rev-parse ") {
                Ok("false\n".into())
            } else {
                repository(shown)
            }
        });
        let repo = Repo::open(&runner, dir.path()).unwrap();
        assert_eq!(repo.tags().unwrap(), []);
        assert_eq!((repo.default_branch(), repo.origin_url(), repo.is_shallow()), (None, None, false));
    }

    #[test]
    fn commit_times_logs_and_counts_parse() {
        assert_eq!(committer_time("tree x\ncommitter A <a@b> 1700000000 -0500\n\nmessage\n"), Some(1_700_000_000));
        assert_eq!(committer_time("tree x\n\ncommitter A <a@b> 1 +0000\n"), None, "only the headers count");
        assert_eq!(parse_left_right("0\t7\n"), Some((0, 7)));
        assert_eq!(parse_left_right("seven"), None);
        let log =
            parse_log(&format!("{HEAD}\nfeat: a thing\n\nBREAKING CHANGE: it changed\n\0{TAGGED}\nfix: one line\n\0"));
        assert_eq!(
            log,
            [
                Commit { id: HEAD.into(), subject: "feat: a thing".into(), body: "BREAKING CHANGE: it changed".into() },
                Commit { id: TAGGED.into(), subject: "fix: one line".into(), body: String::new() },
            ]
        );
    }

    #[test]
    fn ancestry_is_one_rev_list_and_takes_only_object_ids() {
        let dir = tempfile::tempdir().unwrap();
        let runner = Recording::replying(|shown| {
            if shown.contains(&format!("rev-list --left-right --count {TAGGED}...{HEAD}")) {
                Ok("0\t3\n".into())
            } else if shown.contains(&format!("rev-list --left-right --count {HEAD}...{TAGGED}")) {
                Ok("3\t0\n".into())
            } else if shown.contains(&format!("rev-list --left-right --count {TAG_OBJECT}...{HEAD}")) {
                Err(format!(
                    "error: object {TAG_OBJECT} is a tree, not a commit\n\
                     fatal: Invalid symmetric difference expression {TAG_OBJECT}...{HEAD}"
                ))
            } else {
                repository(shown)
            }
        });
        let repo = Repo::open(&runner, dir.path()).unwrap();
        assert_eq!(repo.commits_after(TAGGED, HEAD).unwrap(), Some(3));
        assert!(repo.is_ancestor(TAGGED, HEAD).unwrap());
        assert!(!repo.is_ancestor(HEAD, TAGGED).unwrap());
        assert_eq!(repo.commits_after(TAG_OBJECT, HEAD).unwrap(), None, "a tag of a tree is in no history");
        assert!(repo.is_ancestor(HEAD, HEAD).unwrap(), "a commit is its own ancestor, without asking git");
        let error = repo.commits_since("--output=/tmp/x", None).unwrap_err().to_string();
        assert!(error.contains("is not a git object id"), "{error}");
    }

    #[test]
    fn failures_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().display().to_string();
        for (said, expected) in [
            ("fatal: not a git repository (or any of the parent directories): .git", "is not a git repository"),
            ("fatal: this operation must be run in a work tree", "pass the work tree as --repo"),
        ] {
            let runner = Recording::replying(move |_| Err(said.to_string()));
            let error = Repo::open(&runner, dir.path()).err().expect("open fails").to_string();
            assert!(error.contains(&path) && error.contains(expected), "{error}");
            assert_eq!(error.lines().count(), 1, "{error}");
        }
        let owned = format!(
            "fatal: detected dubious ownership in repository at '{path}'\nTo add an exception for this \
             directory, call:\n\n\tgit config --global --add safe.directory {path}"
        );
        for error in [
            Repo::open(&Recording::replying(move |_| Err(owned.clone())), dir.path()).err().expect("open fails"),
            is_tracked(
                &Recording::replying(
                    |_| Err("fatal: detected dubious ownership in repository at '/srv/intric'".into()),
                ),
                Path::new("/srv/intric/docker/.env"),
            )
            .unwrap_err(),
        ] {
            let error = error.to_string();
            assert!(error.contains("belongs to another user; if you trust it"), "{error}");
            assert!(error.contains("git config --global --add safe.directory /"), "{error}");
            assert_eq!(error.lines().count(), 1, "{error}");
        }

        let empty = Recording::replying(|shown| {
            if shown.contains(" status ") {
                Ok("# branch.oid (initial)\0# branch.head main\0".into())
            } else if shown.contains(" cat-file ") {
                Err("fatal: Not a valid object name HEAD".into())
            } else {
                Ok(String::new())
            }
        });
        let repo = Repo::open(&empty, dir.path()).unwrap();
        for error in [repo.head().unwrap_err(), repo.branch().unwrap_err()] {
            assert!(error.to_string().contains("has no commits yet; commit something first"), "{error}");
        }
        assert_eq!(repo.worktree().unwrap(), Worktree::Clean);
    }

    #[test]
    fn a_tag_without_a_git_identity_gets_the_fallback_tagger() {
        let dir = tempfile::tempdir().unwrap();
        let runner = Recording::replying(|shown| {
            if shown.contains(" var GIT_COMMITTER_IDENT") {
                Err("fatal: unable to auto-detect email address".into())
            } else if shown.contains(" tag --annotate ") {
                Ok(String::new())
            } else {
                repository(shown)
            }
        });
        let repo = Repo::open(&runner, dir.path()).unwrap();
        repo.create_annotated_tag("v1.2.0", HEAD, "Release 1.2.0\n").unwrap();
        let tag = runner.executed().into_iter().last().unwrap();
        assert!(tag.contains("GIT_COMMITTER_NAME='intric xtask' GIT_COMMITTER_EMAIL=xtask@localhost git "), "{tag}");
        assert!(
            tag.contains(" tag --annotate --cleanup=verbatim --file ") && tag.ends_with(&format!(" -- v1.2.0 {HEAD}"))
        );
    }

    /// Runs git in `dir` for a test's setup, without the user's configuration.
    fn setup_git(dir: &Path, args: &[&str]) {
        let command = git_in(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
            .args(args.iter().copied());
        Processes::new().read(&command).unwrap();
    }

    #[test]
    fn annotated_tags_keep_their_message_verbatim_and_are_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        setup_git(dir.path(), &["init", "--quiet", "-b", "main"]);
        setup_git(dir.path(), &["commit", "--quiet", "--allow-empty", "-m", "first"]);
        setup_git(dir.path(), &["config", "user.name", "Release Manager"]);
        setup_git(dir.path(), &["config", "user.email", "rm@example.com"]);
        let runner = Processes::new();
        let repo = Repo::open(&runner, dir.path()).unwrap();
        let head = repo.head().unwrap().id;
        let notes = "Release 1.0.0\n\n## Features\n# not a comment\n";
        repo.create_annotated_tag("v1.0.0", &head, notes).unwrap();
        let message = runner.read(&git_in(dir.path()).args(["cat-file", "tag", "v1.0.0"])).unwrap();
        assert!(message.contains("tagger Release Manager <rm@example.com>"), "{message}");
        assert!(message.ends_with("\n\nRelease 1.0.0\n\n## Features\n# not a comment"), "{message}");
        let error = repo.create_annotated_tag("v1.0.0", &head, "again").unwrap_err().to_string();
        assert!(error.contains("cannot create tag v1.0.0") && error.contains("already exists"), "{error}");
        let reopened = Repo::open(&runner, dir.path()).unwrap();
        assert_eq!(reopened.tags().unwrap(), [Tag { name: "v1.0.0".into(), commit: head }]);
    }

    #[test]
    fn tracked_files_are_found_in_the_index() {
        let dir = tempfile::tempdir().unwrap();
        setup_git(dir.path(), &["init", "--quiet"]);
        std::fs::create_dir(dir.path().join("docker")).unwrap();
        let (tracked, untracked) = (dir.path().join("docker/.env"), dir.path().join("docker/other.env"));
        std::fs::write(&tracked, "A=1\n").unwrap();
        std::fs::write(&untracked, "A=1\n").unwrap();
        std::fs::write(dir.path().join("docker/*.env"), "A=1\n").unwrap();
        setup_git(dir.path(), &["add", "docker/.env"]);
        let runner = Processes::new();
        assert!(is_tracked(&runner, &tracked).unwrap());
        assert!(!is_tracked(&runner, &untracked).unwrap());
        assert!(!is_tracked(&runner, &dir.path().join("docker/*.env")).unwrap(), "a name, not a pattern");
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join(".env"), "").unwrap();
        assert!(!is_tracked(&runner, &outside.path().join(".env")).unwrap());
    }

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
