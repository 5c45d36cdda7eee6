//! `cargo xtask ci`: one command per pipeline stage, the same in GitHub Actions, GitLab CI and
//! Jenkins (the templates in `ci/` call nothing else).
//!
//! - `pr` (also a branch other than the default one): `cargo fmt --check`, `cargo clippy` with
//!   warnings as errors, `cargo test --workspace` (unit, integration and the lab's end-to-end
//!   tests), `cargo xtask check` (the backend's tests, the frontend's checks), then the build
//!   task's build of all images without pushing.
//! - `main`: the same checks, then the build task's `build --push` (`sha-<12 hex>`, `dev-latest`).
//! - `release` (a tag pipeline): the tag engine's `--stage release` rules say whether HEAD's tag
//!   is a release; the release task promotes HEAD's `sha-` images to it (building them first
//!   only if they are missing). Running it again after `release --execute` changes nothing.
//!
//! `auto` takes the stage from the CI variables (else git) exactly as `cargo xtask tags` does.
//! Reads once: the tag report and, for the build, the build task's inputs. The pr and main
//! stages are one [`CiPlan`]: the checks as [`Plan`] commands and the build task's plan, shown
//! together by `--dry-run` and run together otherwise.
//! Finally it reports for the CI system: on GitHub Actions it appends to `$GITHUB_OUTPUT`
//! (stage, version, revision, image_tag, tags, images, `<service>_digest`) and
//! `$GITHUB_STEP_SUMMARY` (a markdown table); on GitLab CI and Jenkins it writes the dotenv file
//! [`DOTENV_FILE`] in the repository (STAGE, VERSION, REVISION, IMAGE_TAG, IMAGE_TAGS,
//! `<SERVICE>_IMAGE`, `<SERVICE>_DIGEST`), for `artifacts: reports: dotenv` or `readProperties`.
//! The renderers are pure functions; writing is a separate small step.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use sha2::{Digest, Sha256};

use crate::adapters::ci_env::{self, CiContext, CiEvent, CiProvider, Env};
use crate::images::build::{self, BuildArgs, BuildPlan};
use crate::images::location::Location;
use crate::images::release::{self, Requested, TagMode};
use crate::images::tags::{self, Stage, StageChoice, TagReport};
use crate::plan::runner::{Processes, Runner};
use crate::plan::{Command, Plan, TaskPlan, show_or_run};

/// The dotenv report written on GitLab CI and Jenkins, relative to the repository root.
pub const DOTENV_FILE: &str = "xtask-ci.env";

// Options of `cargo xtask ci`.
#[derive(Args)]
#[command(after_help = "\
Stages: pr runs cargo fmt --check, cargo clippy (-D warnings), cargo test --workspace and
`cargo xtask check`, then builds every image without pushing; main runs the same, then
`build --push` (sha-<12 hex>, dev-latest); release verifies HEAD's tag is a release and promotes
HEAD's sha- images to it (building them only if missing). A branch other than the default one runs
the pr stage. auto detects the stage from GitHub Actions, GitLab CI or Jenkins variables, else git.

Reports: on GitHub Actions it appends stage, version, revision, image_tag, tags, images and
<service>_digest to $GITHUB_OUTPUT and a table to $GITHUB_STEP_SUMMARY; on GitLab CI and Jenkins it
writes xtask-ci.env (STAGE, VERSION, REVISION, IMAGE_TAG, IMAGE_TAGS, <SERVICE>_IMAGE,
<SERVICE>_DIGEST) in the repository root.

Examples:
  cargo xtask ci --dry-run
  cargo xtask ci --stage pr
  NEXUS_REGISTRY=nexus.example.com:8082 cargo xtask ci --stage main
  cargo xtask ci --stage release --dry-run")]
pub struct CiArgs {
    /// The pipeline stage; `auto` detects it from the CI variables, else from git.
    #[arg(long, value_enum, default_value_t = CiStage::Auto)]
    pub stage: CiStage,
    /// Print what the stage would run (commands, build plan, release plan) and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub location: Location,
}

/// The `--stage` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CiStage {
    Auto,
    Pr,
    Main,
    Release,
}

impl CiStage {
    pub fn name(self) -> &'static str {
        match self {
            CiStage::Auto => "auto",
            CiStage::Pr => "pr",
            CiStage::Main => "main",
            CiStage::Release => "release",
        }
    }
}

/// The pipeline stage for the tag engine's stage: a branch that is not the default one gets
/// the pull request's checks (nothing it builds is pushed). Pure.
pub fn stage_for(stage: Stage) -> CiStage {
    match stage {
        Stage::Pr | Stage::Branch => CiStage::Pr,
        Stage::Main => CiStage::Main,
        Stage::Release => CiStage::Release,
    }
}

/// The checks and tests of the pr and main stages, as commands run in `repo`. Pure.
pub fn checks_plan(repo: &Path) -> Plan {
    let mut plan = Plan::default();
    let cargo =
        |args: &[&str], hint: &str| Command::new("cargo").args(args.iter().copied()).current_dir(repo).hint(hint);
    plan.run(cargo(&["fmt", "--all", "--check"], "formatting differs: run `cargo fmt --all` and commit"));
    plan.run(cargo(
        &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
        "clippy found problems: fix the warnings above",
    ));
    plan.run(cargo(&["test", "--workspace"], "tests failed: the output above names them"));
    plan.run(cargo(&["xtask", "check"], "the backend's tests or the frontend's checks failed"));
    plan
}

/// One image as the stage left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLine {
    /// The compose service that builds the image.
    pub service: String,
    /// `<registry>/intric/<service>` (without a registry: `intric/<service>`).
    pub image: String,
    /// The manifest digest when pushed, else the local image id.
    pub digest: Option<String>,
    pub tags: Vec<String>,
}

/// What a stage produced, for the CI system's outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct CiReport {
    pub stage: CiStage,
    pub version: String,
    pub revision: String,
    /// The tag to deploy: the release's version, else the immutable `sha-` tag.
    pub image_tag: String,
    /// Every tag the images got.
    pub tags: Vec<String>,
    pub images: Vec<ImageLine>,
    /// The checks that ran, each with its duration in seconds.
    pub checks: Vec<(String, f64)>,
    pub pushed: bool,
}

/// `cargo xtask ci`.
pub fn run(args: CiArgs) -> Result<()> {
    let env = ci_env::process_env();
    let runner = Processes::new();
    let repo = args.location.repo();
    let choice = match args.stage {
        CiStage::Release => StageChoice::Release,
        _ => StageChoice::Auto,
    };
    // The tag engine's rules decide the stage (auto) and, for release, whether HEAD's tag is one.
    let report = tags::resolve(&runner, &repo, choice, &env)?;
    let stage = match args.stage {
        CiStage::Auto => stage_for(report.image.stage),
        stage => stage,
    };
    eprintln!("ci: {} stage ({})", stage.name(), report.image.ci.unwrap_or("outside CI"));
    let outcome = match stage {
        CiStage::Release => release_stage(&args, &repo, &report, &env)?,
        _ => show_or_run(&ci_plan(&args, &runner, &repo, stage, &env)?, args.dry_run, &runner)?,
    };
    let Some(outcome) = outcome else { return Ok(()) };
    print!("{}", render_text(&outcome));
    write_reports(&env, &repo, &outcome)
}

/// The pr and main stages as one plan: the checks, then the build (pushed on main).
#[derive(Debug)]
pub struct CiPlan {
    pub stage: CiStage,
    pub repo: PathBuf,
    pub checks: Plan,
    pub build: BuildPlan,
}

/// Reads the build's inputs and plans the pr or main stage in `repo`.
fn ci_plan(args: &CiArgs, runner: &dyn Runner, repo: &Path, stage: CiStage, env: &Env) -> Result<CiPlan> {
    let push = stage == CiStage::Main;
    let build_args = BuildArgs {
        location: Location { repo: Some(repo.to_path_buf()), registry: args.location.registry.clone() },
        push,
        // `--stage main` forced outside CI still tags `dev-latest`, as the stage promises.
        stage: if push { StageChoice::Main } else { StageChoice::Auto },
        dry_run: args.dry_run,
        ..BuildArgs::default()
    };
    let build = build::prepare(runner, &build_args, env, None)?;
    Ok(CiPlan { stage, repo: repo.to_path_buf(), checks: checks_plan(repo), build })
}

impl fmt::Display for CiPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let and_push = if self.build.push { " and push" } else { "" };
        write!(
            f,
            "{} stage, in {}:\n{}then build{and_push}:\n{}",
            self.stage.name(),
            self.repo.display(),
            self.checks,
            self.build
        )
    }
}

impl TaskPlan for CiPlan {
    type Output = CiReport;

    /// Runs the checks in order, timing each (a failure prints which passed and which failed),
    /// then the build.
    fn execute(&self, runner: &dyn Runner) -> Result<CiReport> {
        let mut ran = Vec::new();
        for step in &self.checks.steps {
            let started = Instant::now();
            eprintln!("ci: {step}");
            if let Err(error) = step.perform(runner) {
                eprint!("{}", render_checks(&ran, Some(&step.to_string())));
                return Err(error);
            }
            ran.push((step.to_string(), started.elapsed().as_secs_f64()));
        }
        let results = self.build.execute(runner)?;
        let report = &self.build.report;
        Ok(CiReport {
            stage: self.stage,
            version: report.version.clone(),
            revision: report.image.revision.clone(),
            image_tag: report.image.tags.first().cloned().unwrap_or_default(),
            tags: report.image.tags.clone(),
            images: results
                .iter()
                .map(|result| ImageLine {
                    service: result.service.clone(),
                    image: result.name.clone(),
                    digest: Some(result.digest.clone()),
                    tags: result.tags.clone(),
                })
                .collect(),
            checks: ran,
            pushed: self.build.push,
        })
    }
}

/// The release stage: promote HEAD's images to the release its tag names.
fn release_stage(args: &CiArgs, repo: &Path, report: &TagReport, env: &Env) -> Result<Option<CiReport>> {
    let ci_tag = CiContext::detect(env)?.and_then(|ci| match ci.event {
        Some(CiEvent::Tag { name }) if tags::release_version(&name).is_some() => Some(name),
        _ => None,
    });
    let options = release::Options {
        repo: repo.to_path_buf(),
        registry: args.location.registry.clone(),
        // A tag pipeline promotes into $NEXUS_RELEASE_REGISTRY when it is set.
        to_registry: None,
        requested: Requested::Version(report.version.clone()),
        mode: TagMode::Existing(ci_tag),
        allow_branches: Vec::new(),
        build: true,
        execute: !args.dry_run,
        push_tag: false,
        skip_immutable_floating: false,
        quiet: false,
        // A tag pipeline takes no release lock (see `images::release`'s plan).
        no_lock: false,
        break_lock: false,
    };
    let outcome = release::release(&options, env)?;
    if args.dry_run {
        return Ok(None);
    }
    let tags = outcome.images.first().map(|(_, _, _, tags)| tags.clone()).unwrap_or_default();
    Ok(Some(CiReport {
        stage: CiStage::Release,
        version: outcome.version.clone(),
        revision: outcome.revision.clone(),
        image_tag: tags.first().cloned().unwrap_or_default(),
        tags,
        images: outcome
            .images
            .iter()
            .map(|(service, image, digest, tags)| ImageLine {
                service: service.clone(),
                image: image.clone(),
                digest: digest.clone(),
                tags: tags.clone(),
            })
            .collect(),
        checks: Vec::new(),
        pushed: true,
    }))
}

/// `key=value` lines for `$GITHUB_OUTPUT`. Values that may hold several lines use the
/// `key<<DELIMITER` form, with a delimiter derived from the value so it cannot occur in it
/// (and the output stays reproducible for tests). Pure.
pub fn render_github_output(report: &CiReport) -> String {
    let mut out = String::new();
    let mut single = |key: &str, value: &str| {
        let _ = writeln!(out, "{key}={value}");
    };
    single("stage", report.stage.name());
    single("version", &report.version);
    single("revision", &report.revision);
    single("image_tag", &report.image_tag);
    for image in &report.images {
        single(&format!("{}_digest", image.service), image.digest.as_deref().unwrap_or_default());
    }
    let images: Vec<String> = report
        .images
        .iter()
        .map(|image| match &image.digest {
            Some(digest) if report.pushed => format!("{}@{digest}", image.image),
            _ => format!("{}:{}", image.image, report.image_tag),
        })
        .collect();
    for (key, lines) in [("tags", &report.tags), ("images", &images)] {
        let value = lines.join("\n");
        let delimiter = heredoc_delimiter(&value);
        let _ = writeln!(out, "{key}<<{delimiter}\n{value}\n{delimiter}");
    }
    out
}

/// A heredoc delimiter that does not occur in `value`.
fn heredoc_delimiter(value: &str) -> String {
    let hash = format!("{:x}", Sha256::digest(value.as_bytes()));
    let mut delimiter = format!("XTASK_EOF_{}", &hash[..16]);
    while value.contains(&delimiter) {
        delimiter.push('_');
    }
    delimiter
}

/// The markdown for `$GITHUB_STEP_SUMMARY`: the stage, version and revision, then a table of
/// the images (and one of the checks, when any ran). Pure.
pub fn render_step_summary(report: &CiReport) -> String {
    let mut out = format!(
        "### cargo xtask ci: {} stage\n\nVersion `{}`, revision `{}`{}.\n\n",
        report.stage.name(),
        report.version,
        &report.revision[..report.revision.len().min(12)],
        if report.pushed { ", pushed" } else { ", not pushed" }
    );
    out.push_str("| image | digest | tags |\n|---|---|---|\n");
    for image in &report.images {
        let tags: Vec<String> = image.tags.iter().map(|tag| format!("`{tag}`")).collect();
        let _ =
            writeln!(out, "| `{}` | `{}` | {} |", image.image, image.digest.as_deref().unwrap_or("-"), tags.join(", "));
    }
    if !report.checks.is_empty() {
        out.push_str("\n| check | seconds |\n|---|---|\n");
        for (check, seconds) in &report.checks {
            let _ = writeln!(out, "| `{}` | {seconds:.1} |", check.replace('|', "\\|"));
        }
    }
    out
}

/// The dotenv report for GitLab CI (`artifacts: reports: dotenv`) and Jenkins: one
/// `NAME=value` a line, single-line values without quotes, as GitLab's parser wants. Pure.
pub fn render_dotenv(report: &CiReport) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: &str| {
        let _ = writeln!(out, "{key}={value}");
    };
    line("STAGE", report.stage.name());
    line("VERSION", &report.version);
    line("REVISION", &report.revision);
    line("IMAGE_TAG", &report.image_tag);
    line("IMAGE_TAGS", &report.tags.join(","));
    for image in &report.images {
        // A variable name: `db-init` → `DB_INIT`.
        let prefix = image.service.to_ascii_uppercase().replace('-', "_");
        line(&format!("{prefix}_IMAGE"), &image.image);
        line(&format!("{prefix}_DIGEST"), image.digest.as_deref().unwrap_or_default());
    }
    out
}

/// The checks that ran, and the one that failed, for the log of a failed stage.
fn render_checks(ran: &[(String, f64)], failed: Option<&str>) -> String {
    let mut out = String::from("ci summary:\n");
    for (check, seconds) in ran {
        let _ = writeln!(out, "  passed  {seconds:>6.1} s  {check}");
    }
    if let Some(check) = failed {
        let _ = writeln!(out, "  FAILED            {check}");
    }
    out
}

/// The summary printed at the end of a stage.
pub fn render_text(report: &CiReport) -> String {
    let mut out = if report.checks.is_empty() { String::new() } else { render_checks(&report.checks, None) };
    let _ = writeln!(
        out,
        "{} stage of {} (version {}): images {}",
        report.stage.name(),
        &report.revision[..report.revision.len().min(12)],
        report.version,
        if report.pushed { "in the registry" } else { "built locally" }
    );
    for image in &report.images {
        let _ = writeln!(
            out,
            "  {:<9} {}  {}",
            image.service,
            image.digest.as_deref().unwrap_or("-"),
            image.tags.join(", ")
        );
    }
    out
}

/// Writes the CI system's report files: appends to GitHub's output and summary files (other
/// steps of the job append to them too), writes the dotenv file on GitLab CI and Jenkins.
fn write_reports(env: &Env, repo: &Path, report: &CiReport) -> Result<()> {
    let provider = CiContext::detect(env)?.map(|ci| ci.provider);
    let set = |name: &str| env.get(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    if provider == Some(CiProvider::GitHubActions) {
        for (variable, text) in
            [("GITHUB_OUTPUT", render_github_output(report)), ("GITHUB_STEP_SUMMARY", render_step_summary(report))]
        {
            if let Some(path) = set(variable) {
                append(&path, &text).with_context(|| format!("cannot write ${variable} ({})", path.display()))?;
            }
        }
    }
    if matches!(provider, Some(CiProvider::GitLabCi | CiProvider::Jenkins)) {
        crate::plan::write_atomically(&repo.join(DOTENV_FILE), render_dotenv(report).as_bytes(), 0o644)?;
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::git::Worktree;
    use crate::plan::Step;

    const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";

    /// A CI checkout as the providers make it: shallow-ish, detached, without the tag fetched
    /// (branch and tag come from the variables), and a release tag in the repository.
    fn detect(vars: &[(&str, &str)]) -> CiStage {
        let env: Env = vars.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
        let inputs = tags::Inputs {
            revision: REVISION.into(),
            branch: None,
            head_tags: Vec::new(),
            all_tags: vec!["v0.9.0".into()],
            default_branch: Some("main".into()),
            worktree: Worktree::Clean,
            shallow: false,
            ci: CiContext::detect(&env).unwrap(),
            image_tag: None,
        };
        stage_for(tags::compute_tags(&inputs, StageChoice::Auto).unwrap().stage)
    }

    #[test]
    fn stages_from_recorded_ci_environments() {
        use crate::adapters::ci_env::recorded::*;
        let cases = [
            ("github pull request", GITHUB_PULL_REQUEST, CiStage::Pr),
            ("github push to main", GITHUB_PUSH_TO_MAIN, CiStage::Main),
            ("github tag", GITHUB_TAG, CiStage::Release),
            ("github push to a feature branch", GITHUB_PUSH_TO_BRANCH, CiStage::Pr),
            ("gitlab merge request", GITLAB_MERGE_REQUEST, CiStage::Pr),
            ("gitlab main", GITLAB_MAIN, CiStage::Main),
            ("gitlab tag", GITLAB_TAG, CiStage::Release),
            ("jenkins change request", JENKINS_CHANGE, CiStage::Pr),
            ("jenkins main", JENKINS_MAIN, CiStage::Main),
            ("jenkins tag", JENKINS_TAG, CiStage::Release),
        ];
        for (name, vars, expected) in cases {
            assert_eq!(detect(vars), expected, "{name}");
        }
    }

    #[test]
    fn the_checks_are_commands_with_hints() {
        let shown = checks_plan(Path::new("/src/intric")).to_string();
        assert_eq!(
            shown,
            "  1. cd /src/intric && cargo fmt --all --check\n  \
             2. cd /src/intric && cargo clippy --workspace --all-targets -- -D warnings\n  \
             3. cd /src/intric && cargo test --workspace\n  4. cd /src/intric && cargo xtask check\n"
        );
        assert!(
            checks_plan(Path::new("/src/intric"))
                .steps
                .iter()
                .all(|step| matches!(step, Step::Run(command) if !command.hint.is_empty()))
        );
    }

    /// The checks in /src/intric, then a local build of every image logging below `logs`.
    fn stage_plan(stage: CiStage, logs: &Path) -> CiPlan {
        let build = crate::images::build::tests::local_plan(logs, 1, &[]);
        CiPlan { stage, repo: "/src/intric".into(), checks: checks_plan(Path::new("/src/intric")), build }
    }

    #[test]
    fn a_stage_runs_exactly_the_checks_and_build_it_shows() {
        let dir = tempfile::tempdir().unwrap();
        let plan = stage_plan(CiStage::Pr, dir.path());
        let shown = plan.to_string();
        assert!(shown.starts_with("pr stage, in /src/intric:\n  1. cd /src/intric && cargo fmt"), "{shown}");
        assert!(shown.contains("then build:\nbuilder: legacy client"), "{shown}");
        let runner = crate::plan::runner::Recording::new();
        let report = plan.execute(&runner).unwrap();
        runner.assert_ran_as_shown(&shown);
        assert_eq!(runner.executed().len(), 4 + 6, "four checks, then a build and an inspect per image");
        assert_eq!(report.checks.len(), 4);
        assert_eq!(report.images.len(), 3);
        assert_eq!(report.image_tag, "sha-0123456789ab");
    }

    #[test]
    fn a_failed_check_stops_the_stage_before_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let plan = stage_plan(CiStage::Main, dir.path());
        let runner = crate::plan::runner::Recording::replying(|shown| {
            if shown.ends_with("cargo test --workspace") { Err("tests failed".into()) } else { Ok(String::new()) }
        });
        assert!(plan.execute(&runner).is_err());
        assert_eq!(runner.executed().len(), 3, "{:?}", runner.executed());
    }

    fn report(stage: CiStage, pushed: bool) -> CiReport {
        let image = |service: &str, digest: &str| ImageLine {
            service: service.to_string(),
            image: format!("nexus:8082/intric/{service}"),
            digest: Some(digest.into()),
            tags: vec!["sha-0123456789ab".into(), "dev-latest".into()],
        };
        CiReport {
            stage,
            version: "1.4.1-dev.7+g0123456789ab".into(),
            revision: REVISION.into(),
            image_tag: "sha-0123456789ab".into(),
            tags: vec!["sha-0123456789ab".into(), "dev-latest".into()],
            images: vec![image("backend", "sha256:b"), image("worker", "sha256:w"), image("frontend", "sha256:f")],
            checks: vec![("cargo fmt --all --check".into(), 1.25), ("cargo test --workspace".into(), 60.0)],
            pushed,
        }
    }

    #[test]
    fn github_output_has_single_and_multi_line_values() {
        let output = render_github_output(&report(CiStage::Main, true));
        let delimiter = heredoc_delimiter("sha-0123456789ab\ndev-latest");
        let expected_start = format!(
            "stage=main\nversion=1.4.1-dev.7+g0123456789ab\nrevision={REVISION}\nimage_tag=sha-0123456789ab\n\
             backend_digest=sha256:b\nworker_digest=sha256:w\nfrontend_digest=sha256:f\n\
             tags<<{delimiter}\nsha-0123456789ab\ndev-latest\n{delimiter}\nimages<<"
        );
        assert!(output.starts_with(&expected_start), "{output}");
        assert!(output.contains("\nnexus:8082/intric/worker@sha256:w\n"), "{output}");
        // Not pushed: the images are named by tag, since a local image id is no registry digest.
        let local = render_github_output(&report(CiStage::Pr, false));
        assert!(local.contains("\nnexus:8082/intric/worker:sha-0123456789ab\n"), "{local}");
        // Each heredoc closes: every `key<<D` line is followed later by a line that is exactly D.
        for line in output.lines().filter_map(|line| line.split_once("<<")) {
            assert!(output.lines().any(|closing| closing == line.1), "{output}");
        }
    }

    #[test]
    fn heredoc_delimiters_never_occur_in_the_value() {
        for value in ["", "a\nb", "XTASK_EOF_", "line\nXTASK_EOF_0000000000000000\n"] {
            let delimiter = heredoc_delimiter(value);
            assert!(!value.contains(&delimiter), "{value:?}");
            assert!(delimiter.starts_with("XTASK_EOF_"), "{delimiter}");
        }
    }

    #[test]
    fn step_summary_is_a_markdown_table() {
        let summary = render_step_summary(&report(CiStage::Main, true));
        assert!(summary.starts_with("### cargo xtask ci: main stage\n\nVersion `1.4.1-dev.7+g0123456789ab`, revision `0123456789ab`, pushed.\n"), "{summary}");
        assert!(summary.contains("| image | digest | tags |\n|---|---|---|\n"), "{summary}");
        assert!(
            summary.contains("| `nexus:8082/intric/backend` | `sha256:b` | `sha-0123456789ab`, `dev-latest` |\n"),
            "{summary}"
        );
        assert!(summary.contains("| `cargo test --workspace` | 60.0 |\n"), "{summary}");
    }

    #[test]
    fn dotenv_has_one_plain_line_per_variable() {
        let dotenv = render_dotenv(&report(CiStage::Main, true));
        assert_eq!(
            dotenv,
            format!(
                "STAGE=main\nVERSION=1.4.1-dev.7+g0123456789ab\nREVISION={REVISION}\nIMAGE_TAG=sha-0123456789ab\n\
                 IMAGE_TAGS=sha-0123456789ab,dev-latest\n\
                 BACKEND_IMAGE=nexus:8082/intric/backend\nBACKEND_DIGEST=sha256:b\n\
                 WORKER_IMAGE=nexus:8082/intric/worker\nWORKER_DIGEST=sha256:w\n\
                 FRONTEND_IMAGE=nexus:8082/intric/frontend\nFRONTEND_DIGEST=sha256:f\n"
            )
        );
        assert!(dotenv.lines().all(|line| {
            let (key, value) = line.split_once('=').unwrap();
            key.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !value.contains(['"', '\'', ' '])
        }));
    }

    #[test]
    fn reports_are_written_where_the_provider_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let (output, summary) = (dir.path().join("output"), dir.path().join("summary"));
        std::fs::write(&output, "earlier=step\n").unwrap();
        let github: Env = [
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_OUTPUT", output.to_str().unwrap()),
            ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap()),
        ]
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
        let report = report(CiStage::Main, true);
        write_reports(&github, dir.path(), &report).unwrap();
        assert_eq!(
            std::fs::read_to_string(&output).unwrap(),
            format!("earlier=step\n{}", render_github_output(&report))
        );
        assert_eq!(std::fs::read_to_string(&summary).unwrap(), render_step_summary(&report));
        assert!(!dir.path().join(DOTENV_FILE).exists());

        let gitlab: Env = [("GITLAB_CI".to_string(), "true".to_string())].into();
        write_reports(&gitlab, dir.path(), &report).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(DOTENV_FILE)).unwrap(), render_dotenv(&report));
    }
}
