//! Integration tests of `cargo xtask tags`: real git repositories in temporary directories, the
//! built binary, and a controlled environment (CI variables of the machine running the tests
//! are removed, then each case sets its own).

mod common;

use std::cell::Cell;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

/// A git repository in a temporary directory, with deterministic authors and dates.
struct Repo {
    dir: TempDir,
    /// Seconds added to the fixed commit date, so commits are ordered in time as in real life.
    clock: Cell<u64>,
}

impl Repo {
    /// `git init -b <branch>` with one commit of `README`.
    fn new(branch: &str) -> Repo {
        let repo = Repo::empty(branch);
        repo.commit("README", "hello\n");
        repo
    }

    /// `git init -b <branch>`, no commits.
    fn empty(branch: &str) -> Repo {
        let repo = Repo { dir: tempfile::tempdir().unwrap(), clock: Cell::new(0) };
        repo.git(&["init", "--quiet", "-b", branch]);
        repo
    }

    /// A shallow (`--depth 1`) clone of this repository on a detached HEAD, as CI checks out.
    fn shallow_detached_clone(&self) -> Repo {
        let clone = Repo { dir: tempfile::tempdir().unwrap(), clock: Cell::new(0) };
        let url = format!("file://{}", self.path().display());
        clone.git(&["clone", "--quiet", "--depth", "1", &url, "."]);
        clone.git(&["checkout", "--quiet", "--detach"]);
        clone
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs git in the repository, isolated from the user's configuration; returns stdout.
    fn git(&self, args: &[&str]) -> String {
        let date = format!("{} +0000", 1_700_000_000 + self.clock.get());
        let output = Command::new("git")
            .args(args)
            .current_dir(self.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_DATE", &date)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    fn write(&self, file: &str, content: &str) {
        std::fs::write(self.path().join(file), content).unwrap();
    }

    /// Adds `text` at the end of `file`.
    fn append(&self, file: &str, text: &str) {
        let old = std::fs::read_to_string(self.path().join(file)).unwrap();
        self.write(file, &(old + text));
    }

    /// Writes `file` and commits it; returns the new commit id.
    fn commit(&self, file: &str, content: &str) -> String {
        self.clock.set(self.clock.get() + 60);
        self.write(file, content);
        self.git(&["add", file]);
        self.git(&["commit", "--quiet", "-m", &format!("change {file}")]);
        self.head()
    }

    /// `count` more commits, each changing `log.txt`.
    fn commits(&self, count: usize) {
        for n in 0..count {
            self.commit("log.txt", &format!("{} {n}\n", self.clock.get()));
        }
    }

    /// An annotated tag on HEAD.
    fn tag(&self, name: &str) {
        self.git(&["tag", "-a", name, "-m", name]);
    }

    fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// `cargo xtask tags --repo <this> <args>` with only `env` as CI environment, parsed JSON.
    fn tags(&self, args: &[&str], env: &[(&str, &str)]) -> Value {
        let output = xtask(self.path(), &[args, &["--json"]].concat(), env);
        assert!(output.status.success(), "tags {args:?} {env:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// The image tags for a clean environment and `--stage auto`.
    fn image_tags(&self) -> Vec<String> {
        strings(&self.tags(&[], &[])["tags"])
    }

    /// `sha-<12 hex of HEAD>`.
    fn sha_tag(&self) -> String {
        format!("sha-{}", &self.head()[..12])
    }
}

/// Runs the built xtask's `tags --repo <repo> <args>` with the CI variables of the machine
/// running the tests removed and `env` set instead.
fn xtask(repo: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.arg("tags").arg("--repo").arg(repo).args(args);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let ci_prefixes = ["GITHUB_", "GITLAB_", "CI_", "JENKINS_", "GIT_", "CHANGE_"];
        let ci_names = ["CI", "BRANCH_NAME", "TAG_NAME", "IMAGE_TAG"];
        if ci_prefixes.iter().any(|prefix| name.starts_with(prefix)) || ci_names.contains(&&*name) {
            command.env_remove(&*name);
        }
    }
    command.envs(env.iter().copied()).output().unwrap()
}

/// Runs `tags` expecting failure; returns stderr after checking it is one `error:` line.
fn failure(repo: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = xtask(repo, args, env);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1, "{stderr}");
    stderr
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().unwrap().iter().map(|item| item.as_str().unwrap().to_string()).collect()
}

fn with_sha(repo: &Repo, rest: &[&str]) -> Vec<String> {
    std::iter::once(repo.sha_tag()).chain(rest.iter().map(|tag| tag.to_string())).collect()
}

#[test]
fn default_branch_gets_dev_latest_and_a_dev_version() {
    let repo = Repo::new("main");
    repo.commits(1);
    let report = repo.tags(&[], &[]);
    let head = repo.head();
    assert_eq!(report["stage"], "main");
    assert_eq!(report["revision"], head.as_str());
    assert_eq!(report["short_revision"], &head[..12]);
    assert_eq!(report["branch"], "main");
    assert_eq!(report["dirty"], false);
    assert_eq!(report["push"], true);
    assert_eq!(report["extra_tag"], Value::Null);
    assert_eq!(report["version"], format!("0.0.0-dev.2+g{}", &head[..12]));
    assert_eq!(strings(&report["tags"]), with_sha(&repo, &["dev-latest"]));
}

#[test]
fn plain_output_is_one_tag_per_line() {
    let repo = Repo::new("main");
    let output = xtask(repo.path(), &[], &[]);
    assert!(output.status.success());
    let lines: Vec<String> = String::from_utf8(output.stdout).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines, repo.image_tags());
}

#[test]
fn other_branches_get_their_slug_and_a_detached_head_none() {
    let repo = Repo::new("main");
    repo.git(&["checkout", "--quiet", "-b", "Feature/Login_Page--v2"]);
    let report = repo.tags(&[], &[]);
    assert_eq!(report["stage"], "branch");
    assert_eq!(report["push"], false);
    assert_eq!(strings(&report["tags"]), with_sha(&repo, &["feature-login_page--v2"]));

    repo.git(&["checkout", "--quiet", "--detach"]);
    let report = repo.tags(&[], &[]);
    assert_eq!(report["stage"], "branch");
    assert_eq!(report["branch"], Value::Null);
    assert_eq!(strings(&report["tags"]), with_sha(&repo, &[]));
}

#[test]
fn master_as_default_branch() {
    let repo = Repo::new("master");
    assert_eq!(repo.image_tags(), with_sha(&repo, &["dev-latest"]));
    repo.git(&["checkout", "--quiet", "-b", "topic"]);
    assert_eq!(repo.image_tags(), with_sha(&repo, &["topic"]));
}

#[test]
fn release_then_dev_versions_count_commits_since_it() {
    let repo = Repo::new("main");
    repo.tag("v1.4.0");
    let report = repo.tags(&[], &[]);
    assert_eq!(report["stage"], "release");
    assert_eq!(report["version"], "1.4.0");
    assert_eq!(report["push"], true);
    assert_eq!(strings(&report["tags"]), with_sha(&repo, &["1.4.0", "1.4", "1", "latest"]));

    repo.commits(7);
    let report = repo.tags(&[], &[]);
    assert_eq!(report["stage"], "main");
    assert_eq!(report["version"], format!("1.4.1-dev.7+g{}", &repo.head()[..12]));
}

#[test]
fn release_candidate_gets_only_its_version() {
    let repo = Repo::new("main");
    repo.tag("v1.4.0");
    repo.commits(1);
    repo.tag("v2.0.0-rc.1");
    let report = repo.tags(&[], &[]);
    assert_eq!(report["version"], "2.0.0-rc.1");
    assert_eq!(strings(&report["tags"]), with_sha(&repo, &["2.0.0-rc.1"]));

    // The release candidate is not a stable release: the dev version still counts from 1.4.0.
    repo.commits(1);
    let report = repo.tags(&[], &[]);
    assert_eq!(report["version"], format!("1.4.1-dev.2+g{}", &repo.head()[..12]));
}

#[test]
fn backport_patch_while_a_newer_major_exists() {
    let repo = Repo::new("main");
    repo.tag("v1.4.0");
    repo.commits(2);
    repo.tag("v2.0.0");
    repo.git(&["checkout", "--quiet", "-b", "release/1.x", "v1.4.0"]);
    repo.commits(1);
    repo.tag("v1.4.1");
    let report = repo.tags(&[], &[]);
    assert_eq!(report["stage"], "release");
    assert_eq!(strings(&report["tags"]), with_sha(&repo, &["1.4.1", "1.4", "1"]));

    // Further work on the old line continues from 1.4.1, not from the unrelated 2.0.0.
    repo.commits(1);
    let report = repo.tags(&[], &[]);
    assert_eq!(report["stage"], "branch");
    assert_eq!(report["version"], format!("1.4.2-dev.1+g{}", &repo.head()[..12]));
    assert_eq!(strings(&report["tags"]), with_sha(&repo, &["release-1.x"]));
}

#[test]
fn highest_of_two_tags_on_one_commit_wins() {
    let repo = Repo::new("main");
    repo.tag("v1.5.0-rc.2");
    // A lightweight tag next to the annotated one: both kinds are read.
    repo.git(&["tag", "v1.5.0"]);
    let report = repo.tags(&[], &[]);
    assert_eq!(report["version"], "1.5.0");
    assert_eq!(strings(&report["tags"]), with_sha(&repo, &["1.5.0", "1.5", "1", "latest"]));
}

#[test]
fn build_metadata_becomes_an_underscore() {
    let repo = Repo::new("main");
    repo.tag("v1.2.3+build.7");
    let report = repo.tags(&[], &[]);
    assert_eq!(report["version"], "1.2.3+build.7");
    assert_eq!(strings(&report["tags"]), with_sha(&repo, &["1.2.3_build.7", "1.2", "1", "latest"]));
}

#[test]
fn zero_major_gets_no_bare_major_tag() {
    let repo = Repo::new("main");
    repo.tag("0.3.0");
    repo.commits(1);
    repo.tag("v0.3.1");
    assert_eq!(repo.image_tags(), with_sha(&repo, &["0.3.1", "0.3", "latest"]));
}

#[test]
fn non_semver_tag_is_ignored_except_for_a_release() {
    let repo = Repo::new("main");
    repo.tag("deploy-7");
    let report = repo.tags(&[], &[]);
    assert_eq!(report["stage"], "main");
    assert_eq!(strings(&report["tags"]), with_sha(&repo, &["dev-latest"]));
    assert!(report["notes"].to_string().contains("deploy-7"), "{report}");

    let error = failure(repo.path(), &["--stage", "release"], &[]);
    assert!(error.contains("deploy-7") && error.contains("--stage release"), "{error}");
    let untagged = Repo::new("main");
    let error = failure(untagged.path(), &["--stage", "release"], &[]);
    assert!(error.contains("carries no tag"), "{error}");
}

#[test]
fn dirty_tree_gets_one_tag_derived_from_its_changes() {
    let repo = Repo::new("main");
    repo.commit(".gitignore", "*.log\n");
    let clean = with_sha(&repo, &["dev-latest"]);
    let dirty_tag = || {
        let report = repo.tags(&[], &[]);
        assert_eq!(report["dirty"], true);
        assert_eq!(report["push"], false);
        let tags = strings(&report["tags"]);
        assert_eq!(tags.len(), 1, "{tags:?}");
        let hex = tags[0].strip_prefix(&format!("{}-dirty-", repo.sha_tag())).unwrap().to_string();
        assert!(hex.len() == 8 && hex.chars().all(|c| c.is_ascii_hexdigit()), "{tags:?}");
        tags[0].clone()
    };

    repo.write("README", "changed\n");
    let modified = dirty_tag();
    assert_eq!(dirty_tag(), modified, "same state, same tag");
    repo.write("README", "changed again\n");
    assert_ne!(dirty_tag(), modified, "other content, other tag");

    repo.git(&["checkout", "--quiet", "README"]);
    repo.write("debug.log", "ignored\n");
    assert_eq!(repo.image_tags(), clean, "ignored files don't count");

    repo.write("new.txt", "new\n");
    let untracked = dirty_tag();
    repo.git(&["add", "new.txt"]);
    let staged = dirty_tag();
    assert_ne!(staged, untracked, "staging changes the state");
    repo.git(&["commit", "--quiet", "-m", "new"]);
    assert_eq!(repo.image_tags(), with_sha(&repo, &["dev-latest"]));
}

/// The dirty tag's digest part (8 hex) for `repo`'s working tree.
fn dirty_digest(repo: &Repo) -> String {
    let tags = repo.image_tags();
    let prefix = format!("{}-dirty-", repo.sha_tag());
    assert!(tags.len() == 1 && tags[0].starts_with(&prefix), "{tags:?}");
    tags[0][prefix.len()..].to_string()
}

#[test]
fn dirty_digests_are_the_ones_libgit2_gave() {
    // The digests of these states as the xtask computed them when it read the status through
    // libgit2 (git2 0.21), recorded before the switch to the git program: the same dirty tree
    // keeps its tag across the change, whichever kind of change it is.
    let fresh = || {
        let repo = Repo::new("main");
        repo.write("a.txt", "a\n");
        repo.write("b.txt", "b\n");
        repo.write("run.sh", "#!/bin/sh\n");
        std::fs::set_permissions(repo.path().join("run.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::create_dir(repo.path().join("dir with space")).unwrap();
        repo.write("dir with space/f ü.txt", "x\n");
        repo.write(".gitignore", "*.log\n");
        repo.git(&["add", "-A"]);
        repo.git(&["commit", "--quiet", "-m", "files"]);
        repo
    };
    // Each case: its name, the change to a fresh repository, and the digest libgit2 gave.
    type Case<'a> = (&'a str, fn(&Repo), &'a str);
    let cases: [Case; 12] = [
        ("modified", |repo| repo.append("a.txt", "c\n"), "1f593137"),
        (
            "staged",
            |repo| {
                repo.append("a.txt", "c\n");
                repo.git(&["add", "a.txt"]);
            },
            "320daee2",
        ),
        ("deleted", |repo| std::fs::remove_file(repo.path().join("b.txt")).unwrap(), "12dc9277"),
        ("untracked", |repo| repo.write("new.txt", "n\n"), "d6ef4e2f"),
        (
            "intent to add",
            |repo| {
                repo.write("new.txt", "n\n");
                repo.git(&["add", "-N", "new.txt"]);
            },
            "3141659d",
        ),
        (
            "mode change",
            |repo| {
                let mode = std::os::unix::fs::PermissionsExt::from_mode(0o644);
                std::fs::set_permissions(repo.path().join("run.sh"), mode).unwrap();
            },
            "54dceef9",
        ),
        (
            "file became a symlink",
            |repo| {
                std::fs::remove_file(repo.path().join("a.txt")).unwrap();
                std::os::unix::fs::symlink("b.txt", repo.path().join("a.txt")).unwrap();
            },
            "97345f00",
        ),
        ("rename, staged", |repo| drop(repo.git(&["mv", "b.txt", "c.txt"])), "a0154067"),
        ("space and unicode in the path", |repo| repo.append("dir with space/f ü.txt", "y\n"), "a8799c1b"),
        ("newline in the name", |repo| repo.write("new\nline.txt", "z\n"), "50b97524"),
        (
            "a nested repository",
            |repo| {
                let nested = repo.path().join("nested");
                std::fs::create_dir(&nested).unwrap();
                Command::new("git").args(["init", "--quiet"]).current_dir(&nested).output().unwrap();
            },
            "426fe281",
        ),
        (
            "several at once",
            |repo| {
                repo.append("a.txt", "c\n");
                std::fs::remove_file(repo.path().join("b.txt")).unwrap();
                repo.write("new.txt", "n\n");
                repo.git(&["add", "new.txt"]);
                repo.write("more.txt", "m\n");
            },
            "c23de18e",
        ),
    ];
    for (name, change, digest) in cases {
        let repo = fresh();
        change(&repo);
        assert_eq!(dirty_digest(&repo), digest, "{name}");
    }

    // A merge conflict: unmerged entries.
    let repo = fresh();
    repo.git(&["checkout", "--quiet", "-b", "other"]);
    repo.commit("a.txt", "other\n");
    repo.git(&["checkout", "--quiet", "main"]);
    repo.commit("a.txt", "main\n");
    let merge = Command::new("git").args(["merge", "--quiet", "other"]).current_dir(repo.path()).output().unwrap();
    assert!(!merge.status.success(), "the merge conflicts");
    assert_eq!(dirty_digest(&repo), "b2f03468", "conflict");
}

#[test]
fn the_callers_git_variables_do_not_redirect_the_reads() {
    // A git hook runs with GIT_DIR (and often GIT_INDEX_FILE, GIT_WORK_TREE) naming its own
    // repository: `--repo` must still be the one read.
    let hook_repo = Repo::new("main");
    hook_repo.tag("v1.0.0");
    hook_repo.write("dirty.txt", "dirty\n");
    let repo = Repo::new("main");
    repo.git(&["checkout", "--quiet", "-b", "feature/x"]);
    let git_dir = hook_repo.path().join(".git");
    let [dir, work_tree, index, objects] =
        [&git_dir, hook_repo.path(), &git_dir.join("index"), &git_dir.join("objects")]
            .map(|path| path.display().to_string());
    let env = [
        ("GIT_DIR", dir.as_str()),
        ("GIT_WORK_TREE", &work_tree),
        ("GIT_INDEX_FILE", &index),
        ("GIT_OBJECT_DIRECTORY", &objects),
    ];
    let report = repo.tags(&[], &env);
    assert_eq!(strings(&report["tags"]), with_sha(&repo, &["feature-x"]), "{report}");
    assert_eq!(report["dirty"], false, "{report}");
}

#[test]
fn a_subdirectory_is_not_its_repository() {
    let repo = Repo::new("main");
    std::fs::create_dir(repo.path().join("docker")).unwrap();
    let sub = repo.path().join("docker");
    let error = failure(&sub, &[], &[]);
    assert!(error.contains(&*sub.to_string_lossy()) && error.contains("not a git repository"), "{error}");
}

#[test]
fn a_repository_of_another_user_is_refused_with_the_fix() {
    // git refuses to read a repository its user does not own (safe.directory); run as root,
    // as CI here does, the test gives the repository to `nobody`.
    let repo = Repo::new("main");
    if let Err(error) = std::os::unix::fs::chown(repo.path(), Some(65534), Some(65534)) {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root, so chown must work: {error}");
        eprintln!("skipped: changing the owner needs root ({error})");
        return;
    }
    // Without the machine's global configuration, which may trust every directory.
    let error = failure(repo.path(), &[], &[("GIT_CONFIG_GLOBAL", "/dev/null"), ("GIT_CONFIG_NOSYSTEM", "1")]);
    let path = repo.path().canonicalize().unwrap();
    assert!(
        error.contains("belongs to another user")
            && error.contains(&format!("git config --global --add safe.directory {}", path.display())),
        "{error}"
    );
}

/// A CI case: name, CI variables, and the expected stage, tags after the sha tag, and version.
type CiCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a [&'a str], &'a str);

#[test]
fn operator_files_in_a_deployment_directory_leave_the_tree_clean() {
    // A server deploying from a checkout whose .gitignore does not know these files.
    let repo = Repo::new("main");
    let docker = repo.path().join("docker");
    std::fs::create_dir_all(docker.join("backups")).unwrap();
    std::fs::write(docker.join(".deploy-history.jsonl"), "{}\n").unwrap();
    std::fs::write(docker.join(".deploy.lock"), "pid 1\n").unwrap();
    std::fs::write(docker.join("backups/intric_20261127T084500Z.sql.gz"), "dump").unwrap();
    assert_eq!(repo.image_tags(), with_sha(&repo, &["dev-latest"]));

    std::fs::write(docker.join("docker-compose.override.yml"), "services: {}\n").unwrap();
    let report = repo.tags(&[], &[]);
    assert_eq!(report["dirty"], true, "any other file still makes the tree dirty: {report}");
}

#[test]
fn shallow_detached_clone_in_ci() {
    let upstream = Repo::new("main");
    upstream.tag("v1.0.0");
    upstream.commits(2);
    let clone = upstream.shallow_detached_clone();
    let short = &clone.head()[..12];
    let dev = format!("0.0.0-dev.1+g{short}");
    let cases: &[CiCase] = &[
        (
            "github pull request",
            &[
                ("GITHUB_ACTIONS", "true"),
                ("GITHUB_EVENT_NAME", "pull_request"),
                ("GITHUB_REF", "refs/pull/5/merge"),
                ("GITHUB_REF_NAME", "5/merge"),
                ("GITHUB_HEAD_REF", "feature/x"),
            ],
            "pr",
            &["pr-5"],
            &dev,
        ),
        (
            "github main",
            &[("GITHUB_ACTIONS", "true"), ("GITHUB_EVENT_NAME", "push"), ("GITHUB_REF", "refs/heads/main")],
            "main",
            &["dev-latest"],
            &dev,
        ),
        (
            "github tag",
            &[("GITHUB_ACTIONS", "true"), ("GITHUB_EVENT_NAME", "push"), ("GITHUB_REF", "refs/tags/v1.1.0")],
            "release",
            &["1.1.0", "1.1", "1", "latest"],
            "1.1.0",
        ),
        ("gitlab merge request", &[("GITLAB_CI", "true"), ("CI_MERGE_REQUEST_IID", "9")], "pr", &["pr-9"], &dev),
        (
            "gitlab main",
            &[("GITLAB_CI", "true"), ("CI_COMMIT_BRANCH", "main"), ("CI_DEFAULT_BRANCH", "main")],
            "main",
            &["dev-latest"],
            &dev,
        ),
        (
            "gitlab default branch from its variable",
            &[("GITLAB_CI", "true"), ("CI_COMMIT_BRANCH", "develop"), ("CI_DEFAULT_BRANCH", "develop")],
            "main",
            &["dev-latest"],
            &dev,
        ),
        (
            "gitlab tag",
            &[("GITLAB_CI", "true"), ("CI_COMMIT_TAG", "v1.1.0"), ("CI_DEFAULT_BRANCH", "main")],
            "release",
            &["1.1.0", "1.1", "1", "latest"],
            "1.1.0",
        ),
        (
            "jenkins change",
            &[("JENKINS_URL", "http://jenkins/"), ("CHANGE_ID", "3"), ("BRANCH_NAME", "PR-3")],
            "pr",
            &["pr-3"],
            &dev,
        ),
        ("jenkins main", &[("JENKINS_URL", "http://jenkins/"), ("BRANCH_NAME", "main")], "main", &["dev-latest"], &dev),
        (
            "jenkins feature",
            &[("JENKINS_URL", "http://jenkins/"), ("BRANCH_NAME", "feature/Thing")],
            "branch",
            &["feature-thing"],
            &dev,
        ),
        (
            "jenkins tag",
            &[("JENKINS_URL", "http://jenkins/"), ("TAG_NAME", "v1.1.0"), ("BRANCH_NAME", "v1.1.0")],
            "release",
            &["1.1.0", "1.1", "1", "latest"],
            "1.1.0",
        ),
    ];
    for (name, env, stage, tags, version) in cases {
        let report = clone.tags(&[], env);
        assert_eq!(report["stage"], *stage, "{name}: {report}");
        assert_eq!(strings(&report["tags"]), with_sha(&clone, tags), "{name}");
        assert_eq!(report["version"], *version, "{name}");
        assert!(report["notes"].to_string().contains("shallow clone"), "{name}: {report}");
    }
}

#[test]
fn image_tag_adds_a_tag_and_says_so() {
    let repo = Repo::new("main");
    let report = repo.tags(&[], &[("IMAGE_TAG", "hotfix-1")]);
    assert_eq!(report["extra_tag"], "hotfix-1");
    assert_eq!(strings(&report["tags"]), with_sha(&repo, &["dev-latest", "hotfix-1"]));

    let output = xtask(repo.path(), &[], &[("IMAGE_TAG", "hotfix-1")]);
    assert!(String::from_utf8_lossy(&output.stdout).lines().any(|line| line == "hotfix-1"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("IMAGE_TAG"));
}

#[test]
fn image_tag_from_a_sourced_env_file_cannot_move_latest() {
    // A shell that sourced a deployment's .env has IMAGE_TAG=latest; on a feature branch that
    // must not add `latest`, nor any other tag a stage moves.
    let repo = Repo::new("main");
    repo.git(&["checkout", "--quiet", "-b", "feature/login"]);
    let error = failure(repo.path(), &[], &[("IMAGE_TAG", "latest")]);
    assert!(error.contains("IMAGE_TAG=`latest`") && error.contains("release stage"), "{error}");
    let error = failure(repo.path(), &["--json"], &[("IMAGE_TAG", "dev-latest")]);
    assert!(error.contains("main stage"), "{error}");
    let error = failure(repo.path(), &[], &[("IMAGE_TAG", "1.4")]);
    assert!(error.contains("release stage"), "{error}");
    let error = failure(repo.path(), &[], &[("IMAGE_TAG", "sha-0123456789ab")]);
    assert!(error.contains("another commit"), "{error}");

    // `build` reads the same rules before it builds anything.
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["build", "--repo", repo.path().to_str().unwrap(), "--push", "--registry", "127.0.0.1:9/none"])
        .env("IMAGE_TAG", "latest")
        .env_remove("CI")
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("IMAGE_TAG=`latest`") && stderr.trim_end().lines().count() == 1, "{stderr}");

    // Its own commit's sha tag and a tag of one's own are fine.
    assert_eq!(repo.tags(&[], &[("IMAGE_TAG", &repo.sha_tag())])["tags"].as_array().unwrap().len(), 2);
    assert!(strings(&repo.tags(&[], &[("IMAGE_TAG", "qa")])["tags"]).contains(&"qa".to_string()));
}

#[test]
fn a_broken_tag_ref_fails_every_reading_with_one_line_naming_it() {
    let repo = Repo::new("main");
    repo.tag("v1.0.0");
    // What an interrupted fetch can leave: an empty loose ref, which git skips when listing
    // (so a lost v9.9.9 would hand `latest` to 1.0.0) and refuses when dereferencing.
    std::fs::write(repo.path().join(".git/refs/tags/v9.9.9"), "").unwrap();
    for args in [&[][..], &["--json"]] {
        let error = failure(repo.path(), args, &[]);
        assert!(error.contains("refs/tags/v9.9.9 in ") && error.contains("is a broken ref"), "{args:?}: {error}");
        let file = repo.path().canonicalize().unwrap().join(".git/refs/tags/v9.9.9");
        assert!(error.contains(&format!("(`rm {}`)", file.display())), "{error}");
        assert!(error.contains("(`git fetch origin tag v9.9.9`)"), "{error}");
    }
    // The fix the error gives works.
    std::fs::remove_file(repo.path().join(".git/refs/tags/v9.9.9")).unwrap();
    assert!(repo.image_tags().contains(&"latest".to_string()), "{:?}", repo.image_tags());
}

#[test]
fn bad_inputs_fail_with_one_line_naming_the_input() {
    let repo = Repo::new("main");
    let error = failure(repo.path(), &[], &[("IMAGE_TAG", "bad tag")]);
    assert!(error.contains("IMAGE_TAG") && error.contains("[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"), "{error}");

    let not_a_repo = tempfile::tempdir().unwrap();
    let error = failure(not_a_repo.path(), &[], &[]);
    assert!(error.contains(&*not_a_repo.path().to_string_lossy()) && error.contains("not a git repository"), "{error}");

    let empty = Repo::empty("main");
    let error = failure(empty.path(), &[], &[]);
    assert!(error.contains("has no commits yet"), "{error}");

    let error = failure(repo.path(), &["--stage", "pr"], &[]);
    assert!(error.contains("--stage pr"), "{error}");

    // Clap reports an invalid value itself: the first line names it, then the valid ones follow.
    let output = xtask(repo.path(), &["--stage", "nightly"], &[]);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.lines().next().unwrap().contains("nightly"), "{stderr}");
    assert!(stderr.contains("--stage") && stderr.contains("auto, pr, branch, main, release"), "{stderr}");
}

#[test]
fn help_has_an_example() {
    let output = xtask(Path::new("."), &["--help"], &[]);
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("Examples:") && help.contains("cargo xtask tags --json"), "{help}");
}

#[test]
fn a_token_in_the_origin_url_never_reaches_the_build_plan() {
    // The plan names the engine's builder, so `build --dry-run` needs one answering.
    if !common::docker_available() {
        return;
    }
    let repo = common::snapshot();
    let canary = "glcbt-CANARY-7f3a9";
    let origin = format!("https://gitlab-ci-token:{canary}@gitlab.example.com/group/intric.git?private_token={canary}");
    common::git(repo.path(), &["remote", "add", "origin", &origin]);
    let output = common::xtask(
        &[
            "build",
            "--repo",
            repo.path().to_str().unwrap(),
            "--dry-run",
            "--push",
            "--registry",
            "127.0.0.1:5000/canary",
        ],
        &[],
        repo.path(),
    );
    common::assert_success(&output, "build --dry-run");
    let shown = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!shown.contains("CANARY"), "the origin's token is in the plan:\n{shown}");
    assert!(
        shown.contains("org.opencontainers.image.source=https://gitlab.example.com/group/intric.git"),
        "the source label is the URL without its credentials:\n{shown}"
    );
}

/// A repository state to read: the directories that hold it, the work tree to read and the
/// git directory with its shared refs.
struct State {
    _dirs: Vec<TempDir>,
    work_tree: std::path::PathBuf,
    common_dir: std::path::PathBuf,
}

impl State {
    fn of(repo: Repo) -> State {
        let (work_tree, common_dir) = (repo.path().to_path_buf(), repo.path().join(".git"));
        State { _dirs: vec![repo.dir], work_tree, common_dir }
    }

    /// What `tags` prints (tags on stdout, notes on stderr) and what `tags --json` prints.
    fn outputs(&self) -> (String, String, String) {
        let plain = xtask(&self.work_tree, &[], &[]);
        let json = xtask(&self.work_tree, &["--json"], &[]);
        assert!(plain.status.success() && json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        (text(plain.stdout), text(plain.stderr), text(json.stdout))
    }
}

/// The states the ref files come in: loose tags (annotated and lightweight), packed refs with
/// a newer loose tag, a linked work tree, a shallow detached clone, a detached HEAD on a tag,
/// and a clone on a feature branch whose default branch comes from origin/HEAD. Each is built
/// from the same fixed dates, so building one twice gives the same commit ids.
fn states() -> Vec<(&'static str, State)> {
    let released = || {
        let repo = Repo::new("main");
        repo.tag("v1.0.0");
        repo.commits(2);
        repo.git(&["tag", "light"]);
        repo.tag("v1.1.0");
        repo
    };
    let loose = released();
    let packed = released();
    packed.git(&["pack-refs", "--all"]);
    packed.commits(1);
    packed.tag("v1.2.0");
    let worktree = released();
    let linked = tempfile::tempdir().unwrap();
    let linked_path = linked.path().join("wt");
    worktree.git(&["worktree", "add", "--quiet", "-b", "topic", &linked_path.display().to_string()]);
    let in_worktree = Repo { dir: linked, clock: Cell::new(600) };
    in_worktree.git(&["-C", "wt", "commit", "--quiet", "--allow-empty", "-m", "on topic"]);
    let worktree = State {
        work_tree: linked_path,
        common_dir: worktree.path().join(".git"),
        _dirs: vec![worktree.dir, in_worktree.dir],
    };
    let upstream = released();
    upstream.commits(1);
    let shallow = upstream.shallow_detached_clone();
    let detached = released();
    detached.git(&["checkout", "--quiet", "--detach", "v1.0.0"]);
    let feature = Repo { dir: tempfile::tempdir().unwrap(), clock: Cell::new(0) };
    feature.git(&["clone", "--quiet", &upstream.path().display().to_string(), "."]);
    feature.git(&["checkout", "--quiet", "-b", "feature/refs"]);
    vec![
        ("loose tags", State::of(loose)),
        ("packed refs and a newer loose tag", State::of(packed)),
        ("linked work tree", worktree),
        ("shallow detached clone", State::of(shallow)),
        ("detached HEAD on a tag", State::of(detached)),
        ("feature branch of a clone", State::of(feature)),
    ]
}

#[test]
fn the_ref_files_give_what_git_itself_gives() {
    let expected_tags = [
        vec!["1.1.0", "1.1", "1", "latest"],
        vec!["1.2.0", "1.2", "1", "latest"],
        vec!["topic"],
        vec![],
        vec!["1.0.0", "1.0"],
        vec!["feature-refs"],
    ];
    let (read_from_files, read_by_git) = (states(), states());
    for (((name, files), (_, git)), expected) in read_from_files.iter().zip(&read_by_git).zip(expected_tags) {
        // Without the `peeled` trait packed-refs cannot say which tags are annotated, so the
        // xtask leaves all refs to git (show-ref, rev-parse), as for any unusual layout.
        let run = |args: &[&str]| {
            let status = Command::new("git").arg("-C").arg(&git.work_tree).args(args).status().unwrap();
            assert!(status.success(), "{name}: git {args:?}");
        };
        run(&["pack-refs", "--all"]);
        let packed_refs = git.common_dir.join("packed-refs");
        let text = std::fs::read_to_string(&packed_refs).unwrap();
        let (header, rest) = text.split_once('\n').unwrap();
        assert!(header.contains(" peeled"), "{name}: {header}");
        std::fs::write(&packed_refs, format!("# pack-refs with: sorted \n{rest}")).unwrap();

        let (tags, notes, json) = files.outputs();
        let by_git = git.outputs();
        assert_eq!((&tags, &notes, &json), (&by_git.0, &by_git.1, &by_git.2), "{name}");
        let report: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(strings(&report["tags"])[1..], expected, "{name}: {report}");
        assert_eq!(tags.lines().collect::<Vec<_>>(), strings(&report["tags"]), "{name}");
    }
}
