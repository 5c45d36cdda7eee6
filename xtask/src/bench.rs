//! `cargo xtask bench`: timings of the xtask's hot paths against what they replace.
//!
//! Benchmarks are commands, not tests: their numbers depend on the machine, so they report
//! rather than assert. For representative numbers run them from a release build:
//! `cargo run --release -p xtask -- bench tags`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Subcommand;
use xshell::{Shell, cmd};

/// The benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time `tags` against the old script's three git processes on a large repository.
    ///
    /// The repository (generated once with `git fast-import`, cached under
    /// target/xtask/bench/) has a linear history with a release tag every few commits and HEAD
    /// a few commits past the newest one: a typical build of the default branch.
    #[command(
        after_help = "Examples:\n  cargo xtask bench tags\n  cargo run --release -p xtask -- bench tags --runs 200"
    )]
    Tags {
        /// Commits in the generated repository.
        #[arg(long, default_value_t = 5000)]
        commits: usize,
        /// Annotated release tags in the generated repository, spread evenly over the commits.
        #[arg(long, default_value_t = 500)]
        tags: usize,
        /// Timed runs of each side.
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Tags { commits, tags, runs } => bench_tags(commits, tags, runs),
    }
}

/// Files in the generated working tree: enough for `git status` to have something to compare.
const FILES: usize = 20;

fn bench_tags(commits: usize, tags: usize, runs: usize) -> Result<()> {
    ensure!(tags > 0 && commits >= tags, "--commits ({commits}) must be at least --tags ({tags}), which must be > 0");
    ensure!(runs > 0, "--runs must be at least 1");
    let repo = crate::workspace_root().join(format!("target/xtask/bench/tags-{commits}-{tags}"));
    generate_repo(&repo, commits, tags)?;
    let xtask = std::env::current_exe().context("cannot find the running xtask binary")?;
    let ours = || run_checked(Command::new(&xtask).arg("tags").arg("--repo").arg(&repo));
    let old = || {
        // What the old script runs: describe fails (exit 128) when HEAD carries no tag, which is
        // a normal outcome for it, so only the process time counts here.
        for args in [&["rev-parse", "HEAD"][..], &["describe", "--tags", "--exact-match"], &["status", "--porcelain"]] {
            Command::new("git").args(args).current_dir(&repo).output().context("cannot run git")?;
        }
        Ok(())
    };

    let first = ours()?;
    eprintln!("xtask tags on {}:\n{}", repo.display(), String::from_utf8_lossy(&first.stdout).trim_end());
    for _ in 0..3 {
        ours()?;
        old()?;
    }
    // Interleaving the two sides spreads any drift in machine load evenly over both.
    let (mut ours_times, mut old_times) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        ours_times.push(timed(|| ours().map(drop))?);
        old_times.push(timed(old)?);
    }
    let (ours_median, old_median) = (median(&mut ours_times), median(&mut old_times));
    let build = if cfg!(debug_assertions) {
        "debug build; `cargo run --release -p xtask -- bench tags` for release numbers"
    } else {
        "release build"
    };
    let ratio = ours_median.as_secs_f64() / old_median.as_secs_f64();
    println!("repository: {commits} commits, {tags} release tags, {FILES} files ({})", repo.display());
    println!("xtask tags ({build}): median {:.2} ms over {runs} runs", millis(ours_median));
    println!("old script (git rev-parse, describe, status): median {:.2} ms over {runs} runs", millis(old_median));
    println!("ratio xtask/old: {ratio:.2} (goal <= 1.0: {})", if ratio <= 1.0 { "met" } else { "NOT met" });
    Ok(())
}

/// Generates the benchmark repository at `dir` unless a complete one is already there.
///
/// `git fast-import` writes all commits and tags into one pack in a single process, which takes
/// well under a second where 5,000 `git commit`s would take minutes.
fn generate_repo(dir: &Path, commits: usize, tags: usize) -> Result<()> {
    let complete = dir.join(".git/xtask-bench-complete");
    if complete.exists() {
        return Ok(());
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove the partial {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    eprintln!("generating {} ({commits} commits, {tags} tags)...", dir.display());
    let sh = Shell::new()?;
    sh.change_dir(dir);
    let stream = fast_import_stream(commits, tags);
    cmd!(sh, "git init --quiet -b main").run()?;
    cmd!(sh, "git fast-import --quiet").stdin(stream).run().context("git fast-import failed")?;
    cmd!(sh, "git checkout --quiet --force main").run()?;
    std::fs::write(&complete, "").with_context(|| format!("cannot write {}", complete.display()))?;
    Ok(())
}

/// A fast-import stream: `commits` commits on `main`, each changing one of [`FILES`] files, and
/// an annotated tag every `commits / tags` commits, ending half an interval before HEAD.
fn fast_import_stream(commits: usize, tags: usize) -> String {
    let interval = commits / tags;
    let mut stream = String::new();
    let mut tagged = 0;
    for n in 1..=commits {
        let time = 1_600_000_000 + n * 60;
        let message = format!("change {n}");
        let content = format!("revision {n}\n");
        let _ = write!(
            stream,
            "commit refs/heads/main\nmark :{n}\ncommitter Bench <bench@example.com> {time} +0000\n\
             data {}\n{message}\n",
            message.len()
        );
        if n > 1 {
            let _ = writeln!(stream, "from :{}", n - 1);
        }
        let _ = write!(stream, "M 644 inline file{}.txt\ndata {}\n{content}\n", n % FILES, content.len());
        if tagged < tags && n % interval == interval / 2 {
            let name = format!("v{}.{}.{}", tagged / 100 + 1, tagged / 10 % 10, tagged % 10);
            let _ = write!(
                stream,
                "tag {name}\nfrom :{n}\ntagger Bench <bench@example.com> {time} +0000\ndata {}\n{name}\n",
                name.len()
            );
            tagged += 1;
        }
    }
    stream
}

/// Runs `command` with its output captured, failing unless it succeeds.
fn run_checked(command: &mut Command) -> Result<Output> {
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(output)
}

fn timed(run: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    run()?;
    Ok(start.elapsed())
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_tags_evenly_and_ends_past_the_last_tag() {
        let stream = fast_import_stream(100, 10);
        assert_eq!(stream.matches("\ncommit refs/heads/main\n").count() + 1, 100);
        let tags: Vec<&str> = stream.lines().filter_map(|line| line.strip_prefix("tag ")).collect();
        assert_eq!(tags.len(), 10);
        assert_eq!((tags[0], tags[9]), ("v1.0.0", "v1.0.9"));
        assert!(stream.contains("tag v1.0.9\nfrom :95\n"), "the last tag is 5 commits before HEAD");
    }
}
