//! `cargo xtask bench`: timings of the xtask's hot paths against what they replace.
//!
//! Benchmarks are commands, not tests: their numbers depend on the machine, so they report
//! rather than assert. For representative numbers run them from a release build:
//! `cargo run --release -p xtask -- bench tags`. Every process they time or prepare with (git,
//! docker, the xtask binary itself) runs through the runner.

mod compile;
mod cpu;
mod traffic;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Subcommand;

use crate::plan::Command;
use crate::plan::runner::{Pipe, Processes, Runner};

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
    /// Time `build --push` against the old script's procedure on the lab, in four cases.
    ///
    /// The old procedure builds each image with `--cache-from <image>:latest` and
    /// `BUILDKIT_INLINE_CACHE=1`, then pushes it, one image after the other. Both sides build a
    /// clone of HEAD into their own fresh repositories of the lab registry. A "fresh runner"
    /// has neither side's images, nor the base images, nor any BuildKit cache before each side
    /// runs; the registry keeps what was pushed, and the base images are pulled from it again
    /// (as a runner pulls them through a Nexus proxy). Every tag of a base image goes, so the
    /// lab's own copies (`intric-lab/...`) are removed too and put back from the lab registry
    /// at the end. Each run starts from new repositories in the registry; the verdict is on
    /// the median ratio of the runs. Both sides reach the registry (their images and the base
    /// images) through a byte-counting relay on 127.0.0.1, so each case also reports the bytes
    /// each side pulled and pushed, and their ratio; and how busy the machine's CPUs were
    /// while each side ran (Linux), since a side that keeps them all busy can go no faster on
    /// that machine. Needs the lab: `eval "$(cargo xtask sandbox env)"` first.
    #[command(
        after_help = "Examples:\n  eval \"$(cargo xtask sandbox env)\" && cargo xtask bench build\n  cargo xtask bench build --runs 1"
    )]
    Build {
        /// Runs of the four cases; a build's time varies with the package mirrors' answers.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Time `release X --execute` (promotion) against a full rebuild of the same commit on the lab.
    ///
    /// In a clone of HEAD, against repositories of the run's own below the lab registry: the
    /// main stage's `build --push`, then `build --push --no-cache` (timed), then `release
    /// 1.0.N --execute` (timed, median of --runs). Needs the lab:
    /// `eval "$(cargo xtask sandbox env)"` first.
    #[command(after_help = "Examples:\n  eval \"$(cargo xtask sandbox env)\" && cargo xtask bench release")]
    Release {
        /// Timed promotions, each to a new version.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Count the requests an `update` fails: today's procedure against the zero-downtime one.
    ///
    /// On the lab, builds HEAD's images into a namespace of this run's own below the lab
    /// registry, tags them three times (the same images under three tags, so an update only
    /// replaces containers), deploys them in a deployment directory of its own (project
    /// `intric-bench-update`, frontend on 127.0.0.1:24200), then updates twice while a probe
    /// requests `/` and `/api/v1/healthz` through the frontend's host port every 20 ms: once
    /// with `--allow-downtime` (the procedure that recreates containers in place) and once
    /// with the zero-downtime replacement. Needs the lab: `eval "$(cargo xtask sandbox env)"`.
    ///
    /// With --swarm the new procedure is `update --swarm`: after today's update the compose
    /// stack is stopped (its volumes kept), the same directory is deployed with `deploy
    /// --swarm` (the engine must be a swarm manager: `docker swarm init`), and swarm's
    /// start-first update is measured; the stack is removed at the end.
    #[command(after_help = "Examples:\n  eval \"$(cargo xtask sandbox env)\" && cargo xtask bench update\n  \
                      eval \"$(cargo xtask sandbox env)\" && cargo xtask bench update --swarm")]
    Update {
        /// Measure `update --swarm` (Docker Swarm, start-first) as the new procedure.
        #[arg(long)]
        swarm: bool,
    },
    /// Time a cold `cargo build -p xtask` against an empty crate with the same dependencies.
    ///
    /// Both sides build in fresh temporary target directories, offline and `--locked`, one after
    /// the other: the xtask from this workspace, and a generated crate whose manifest has
    /// xtask/Cargo.toml's dependency tables and the workspace's profiles, with the workspace's
    /// Cargo.lock and .cargo/config.toml, and an empty `main`. The generated crate is named and
    /// versioned like the xtask, so the lock file fits it unchanged and every version is the
    /// same. The ratio is what our own code adds to what the dependencies cost; the goals are a
    /// cold build of at most 40 s on two cores, and at most 1.5 times the dependencies alone.
    /// Other builds on the machine slow both sides: the load average is shown beside each.
    #[command(
        after_help = "Examples:\n  cargo xtask bench compile\n  cargo xtask bench compile --runs 3 --jobs 2 --timings"
    )]
    Compile {
        /// Cold builds of each side; the verdicts are on the medians.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// At most N compiler jobs at once (cargo's `-j`), e.g. 2 to stand for a two-core runner.
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Keep cargo's `--timings` report of every build (time per crate) in target/xtask/bench/compile/.
        #[arg(long)]
        timings: bool,
    },
    /// Time the inputs digest that `build` computes to skip unchanged images, against `sha256sum`.
    ///
    /// On the real build contexts (backend, frontend), and on a generated context (cached
    /// under target/xtask/bench/) of --files files of --kib KiB each, where hashing dominates
    /// and an unoptimised sha2 would show. `sha256sum` (coreutils, optimised C) reads and
    /// hashes the same files in one process: the reference, not a goal.
    #[command(after_help = "Examples:\n  cargo xtask bench digest\n  cargo xtask bench digest --files 200 --kib 1024")]
    Digest {
        /// Files in the generated context.
        #[arg(long, default_value_t = 2000)]
        files: usize,
        /// Size of each generated file in KiB.
        #[arg(long, default_value_t = 32)]
        kib: usize,
        /// Timed runs of each side.
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Compile { runs, jobs, timings } => compile::bench_compile(runs, jobs, timings),
        BenchCommand::Digest { files, kib, runs } => compile::bench_digest(files, kib, runs),
        BenchCommand::Tags { commits, tags, runs } => bench_tags(commits, tags, runs),
        BenchCommand::Build { runs } => bench_build(runs),
        BenchCommand::Release { runs } => bench_release(runs),
        BenchCommand::Update { swarm } => bench_update(swarm),
    }
}

/// Files in the generated working tree: enough for `git status` to have something to compare.
const FILES: usize = 20;

fn bench_tags(commits: usize, tags: usize, runs: usize) -> Result<()> {
    ensure!(tags > 0 && commits >= tags, "--commits ({commits}) must be at least --tags ({tags}), which must be > 0");
    ensure!(runs > 0, "--runs must be at least 1");
    let dir = crate::adapters::workspace_root().join(format!("target/xtask/bench/tags-{commits}-{tags}"));
    let runner = Processes::new();
    let repos = generate_repos(&runner, &dir, commits, tags)?;
    let xtask = std::env::current_exe().context("cannot find the running xtask binary")?;
    let build = if cfg!(debug_assertions) {
        "debug build; `cargo run --release -p xtask -- bench tags` for release numbers"
    } else {
        "release build"
    };
    println!("{commits} commits, {tags} release tags, {FILES} files, HEAD past the newest tag ({})", dir.display());
    println!("xtask tags ({build}) vs the old script (git rev-parse, describe, status), medians of {runs} runs:");
    let mut worst: f64 = 0.0;
    for (layout, repo) in &repos {
        let (ours, old) = time_tags(&runner, &xtask, repo, runs)?;
        let ratio = ours.as_secs_f64() / old.as_secs_f64();
        worst = worst.max(ratio);
        println!("  {layout}: xtask {:.2} ms, old {:.2} ms, ratio {ratio:.2}", millis(ours), millis(old));
    }
    println!("goal: ratio <= 1.0: {}", if worst <= 1.0 { "met" } else { "NOT met" });
    Ok(())
}

/// The median times of `xtask tags` and of the old script's three git processes on `repo`.
fn time_tags(runner: &dyn Runner, xtask: &Path, repo: &Path, runs: usize) -> Result<(Duration, Duration)> {
    let tags = xtask_command(xtask, &["tags", "--repo", &repo.display().to_string()]);
    let ours = || runner.read(&tags).map(drop);
    let old = || {
        // What the old script runs: describe fails (exit 128) when HEAD carries no tag, which is
        // a normal outcome for it, so only the process time counts here.
        for args in [&["rev-parse", "HEAD"][..], &["describe", "--tags", "--exact-match"], &["status", "--porcelain"]] {
            let _ = runner.read(&Command::new("git").args(args.iter().copied()).current_dir(repo));
        }
        Ok(())
    };
    for _ in 0..3 {
        ours()?;
        old()?;
    }
    // Interleaving the two sides spreads any drift in machine load evenly over both.
    let (mut ours_times, mut old_times) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        ours_times.push(timed(ours)?);
        old_times.push(timed(old)?);
    }
    Ok((median(&ours_times), median(&old_times)))
}

/// Generates the benchmark repositories under `dir` unless complete ones are already there,
/// and returns them by ref layout: tags as loose files (as `git tag` and `git fetch` leave
/// them, the slower case for both sides) and packed (as `git clone` and `git gc` leave them).
///
/// `git fast-import` writes all commits and tags into one pack in a single process, which takes
/// well under a second where 5,000 `git commit`s would take minutes.
fn generate_repos(
    runner: &dyn Runner,
    dir: &Path,
    commits: usize,
    tags: usize,
) -> Result<[(&'static str, PathBuf); 2]> {
    let (loose, packed) = (dir.join("loose"), dir.join("packed"));
    let repos = [("loose refs", loose.clone()), ("packed refs", packed.clone())];
    let complete = dir.join("complete");
    if complete.exists() {
        return Ok(repos);
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove the partial {}", dir.display()))?;
    }
    std::fs::create_dir_all(&loose).with_context(|| format!("cannot create {}", loose.display()))?;
    eprintln!("generating {} ({commits} commits, {tags} tags)...", dir.display());
    let git = |args: &[&str]| Command::new("git").args(args.iter().copied()).current_dir(&loose);
    // The stream goes to fast-import's standard input from a file beside the repository.
    let stream = dir.join("stream.fi");
    std::fs::write(&stream, fast_import_stream(commits, tags))
        .with_context(|| format!("cannot write {}", stream.display()))?;
    runner.read(&git(&["init", "--quiet", "-b", "main"]))?;
    let import = Pipe { commands: vec![git(&["fast-import", "--quiet"])], input: Some(stream.clone()), output: None };
    runner.pipe(&import).context("git fast-import failed")?;
    std::fs::remove_file(&stream).with_context(|| format!("cannot remove {}", stream.display()))?;
    runner.read(&git(&["checkout", "--quiet", "--force", "main"]))?;
    runner.read(&git_clone(&loose, &packed))?;
    std::fs::write(&complete, "").with_context(|| format!("cannot write {}", complete.display()))?;
    Ok(repos)
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

/// The running xtask binary with `args`.
fn xtask_command(xtask: &Path, args: &[&str]) -> Command {
    Command::new(xtask.display().to_string()).args(args.iter().copied())
}

/// `git clone --quiet from to`.
fn git_clone(from: &Path, to: &Path) -> Command {
    Command::new("git").args(["clone", "--quiet"]).arg(from.display().to_string()).arg(to.display().to_string())
}

fn timed(run: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    run()?;
    Ok(start.elapsed())
}

fn median(times: &[Duration]) -> Duration {
    Duration::from_secs_f64(median_f64(&mut times.iter().map(Duration::as_secs_f64).collect::<Vec<_>>()))
}

/// The median of `values` (sorted here): the middle one, or for an even count the mean of the
/// two middle ones; the upper one alone would make the median of two runs their maximum.
fn median_f64(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() % 2 {
        0 => (values[middle - 1] + values[middle]) / 2.0,
        _ => values[middle],
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// `cargo xtask bench release`: on the lab, the time of `release X --execute` (promoting HEAD's
/// pushed images) against a full rebuild of the same commit (`build --push --no-cache`), and
/// their ratio. Both run the built xtask binary as a process, in a clone of the workspace's
/// HEAD (whose origin is a bare clone in the scratch directory: the releases take the release
/// lock there), against repositories of this run's own below the lab registry
/// (`<registry>/release-bench-<pid>/intric/<service>`), so the lab's `latest` never moves.
fn bench_release(runs: usize) -> Result<()> {
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    let env = crate::adapters::ci_env::process_env();
    let lab = lab_registry(&env)?;
    let registry = format!("{}/release-bench-{}", lab.trim_end_matches('/'), std::process::id());
    let runner = Processes::new();
    let scratch = std::env::temp_dir().join(format!("xtask-release-bench-{}", std::process::id()));
    let repo = scratch.join("repo");
    let workspace = crate::adapters::workspace_root();
    // The clone's origin is a bare copy of its own, so the releases take the release lock and
    // push their tags as on a real remote, without touching the workspace's tags.
    let origin = scratch.join("origin.git");
    runner.read(&git_clone(&workspace, &origin).arg("--bare")).context("cannot clone the workspace")?;
    runner.read(&git_clone(&origin, &repo)).context("cannot clone the workspace")?;
    let xtask = std::env::current_exe().context("cannot find the running xtask binary")?;
    let timed = |args: &[&str]| -> Result<f64> {
        let started = std::time::Instant::now();
        let command =
            xtask_command(&xtask, args).args(["--registry", &registry, "--repo"]).arg(repo.display().to_string());
        runner.read(&command).with_context(|| format!("xtask {} failed", args.join(" ")))?;
        Ok(started.elapsed().as_secs_f64())
    };
    let result = (|| -> Result<(f64, f64, f64)> {
        eprintln!("main stage: build --push of HEAD into {registry} ...");
        let first = timed(&["build", "--push"])?;
        eprintln!("  {first:.1} s; full rebuild: build --push --no-cache ...");
        let rebuild = timed(&["build", "--push", "--no-cache"])?;
        eprintln!("  {rebuild:.1} s; {runs} promotions: release 1.0.N --execute ...");
        let mut promotions = Vec::with_capacity(runs);
        for run in 0..runs {
            promotions.push(timed(&["release", &format!("1.0.{run}"), "--execute"])?);
        }
        Ok((first, rebuild, median_f64(&mut promotions)))
    })();
    std::fs::remove_dir_all(&scratch).ok();
    let (first, rebuild, promotion) = result?;
    let ratio = promotion / rebuild;
    println!("release promotion against a rebuild of the same commit, on {registry}:");
    println!("  build --push (the main stage, first push to this run's repositories): {first:.1} s");
    println!("  build --push --no-cache (a full rebuild): {rebuild:.1} s");
    println!("  release 1.0.N --execute (promotion to 4 tags x 3 images): median {promotion:.3} s over {runs} runs");
    println!("  ratio promotion/rebuild: {ratio:.4} (goal <= 0.02: {})", if ratio <= 0.02 { "met" } else { "NOT met" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_median_of_an_even_count_is_halfway_between_the_middle_two() {
        assert_eq!(median_f64(&mut [0.5, 0.1, 0.3]), 0.3);
        assert_eq!(median_f64(&mut [0.473, 0.368]), 0.4205, "not the maximum of two runs");
        assert_eq!(median_f64(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[Duration::from_millis(3), Duration::from_millis(1)]), Duration::from_millis(2));
    }

    #[test]
    fn stream_tags_evenly_and_ends_past_the_last_tag() {
        let stream = fast_import_stream(100, 10);
        assert_eq!(stream.matches("\ncommit refs/heads/main\n").count() + 1, 100);
        let tags: Vec<&str> = stream.lines().filter_map(|line| line.strip_prefix("tag ")).collect();
        assert_eq!(tags.len(), 10);
        assert_eq!((tags[0], tags[9]), ("v1.0.0", "v1.0.9"));
        assert!(stream.contains("tag v1.0.9\nfrom :95\n"), "the last tag is 5 commits before HEAD");
    }

    #[test]
    fn images_holding_a_base_images_layers_are_named_but_not_the_base_itself() {
        use crate::adapters::docker::{Builder, Docker};
        let docker = Docker { program: "docker".into(), builder: Builder::Legacy, engine_version: "20.10.24".into() };
        let base = |id: &str, bottom: &str| BaseImage {
            reference: format!("lab/{id}:lab"),
            id: id.into(),
            tags: Vec::new(),
            layers: vec![bottom.into(), "sha256:top".into()],
        };
        let bases = BaseImages(vec![base("python", "sha256:debian"), base("node", "sha256:alpine")]);
        let runner = crate::plan::runner::Recording::replying(|shown| {
            Ok(if shown.contains(" ls ") {
                "python\nproxy\nuntagged\nother\n".into()
            } else {
                "python|lab/python:lab |sha256:debian sha256:top \n\
                 proxy|intric-lab/nexus-proxy:lab |sha256:debian sha256:top sha256:app \n\
                 untagged||sha256:alpine \n\
                 other|busybox:1 |sha256:elsewhere \n"
                    .into()
            })
        });
        assert_eq!(bases.held_by_others(&runner, &docker).unwrap(), ["intric-lab/nexus-proxy:lab", "untagged"]);
    }
}

/// One side of the build benchmark: how it builds and pushes every image of a repository.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Old,
    Ours,
}

/// The lab's registry and base images, from the environment `sandbox env` prints, and the
/// relay in front of the registry that both sides go through.
struct Lab {
    /// The relay's address, which both sides use as the registry's.
    registry: String,
    /// The base images by build arg, as the lab names them: where they are put back.
    base_images: std::collections::BTreeMap<String, String>,
    /// The same base images through the relay: what both sides build from.
    relayed_bases: std::collections::BTreeMap<String, String>,
    relay: traffic::Relay,
}

fn bench_build(runs: usize) -> Result<()> {
    ensure!(runs > 0, "--runs must be at least 1");
    let env = crate::adapters::ci_env::process_env();
    let upstream = lab_registry(&env)?;
    let relay = traffic::Relay::start(&upstream)?;
    let base_images = crate::images::build::base_images(&env, None);
    let relayed_bases = base_images
        .iter()
        .map(|(variable, image)| {
            let relayed = match image.strip_prefix(upstream.as_str()) {
                Some(rest) => format!("{}{rest}", relay.address),
                None => image.clone(),
            };
            (variable.clone(), relayed)
        })
        .collect();
    let lab = Lab { registry: relay.address.clone(), base_images, relayed_bases, relay };
    let runner = Processes::new();
    let docker = crate::adapters::docker::Docker::detect(&runner)?;
    let base_images = BaseImages::read(&runner, &docker, lab.base_images.values())?;
    let result = compare_builds(&runner, &docker, &lab, &base_images, runs);
    // Put the base images back whatever happened, so the lab (and `sandbox up`) find them.
    let restored = base_images.restore(&runner, &docker);
    // The relay's port is this run's alone: its login and its names of the base images are of
    // no use after it (the images themselves keep the lab's names).
    runner.read(&docker.command().args(["logout", &lab.registry])).ok();
    let relayed = lab.relayed_bases.values().filter(|image| image.starts_with(lab.registry.as_str()));
    for image in relayed.filter(|image| docker.image_exists(&runner, image)) {
        runner.read(&docker.command().args(["image", "rm", image])).ok();
    }
    result.and(restored)
}

/// The benchmark's cases: what is measured, whether on a fresh runner, and the goal.
const CASES: [(&str, bool, f64); 4] = [
    ("cold build, nothing in the registry, fresh runner", true, 0.6),
    ("no-op (nothing changed since the last push), fresh runner", true, 0.10),
    ("no-op, warm workstation", false, 1.0),
    ("one backend source file changed, fresh runner", true, 0.10),
];

fn compare_builds(
    runner: &dyn Runner,
    docker: &crate::adapters::docker::Docker,
    lab: &Lab,
    base_images: &BaseImages,
    runs: usize,
) -> Result<()> {
    let scratch = tempfile_dir()?;
    // Images the benchmark must not remove may keep the base images' layers in the engine; the
    // figures then hold for a runner that has them (both sides alike), which is said up front.
    let holders = base_images.held_by_others(runner, docker)?;
    if !holders.is_empty() {
        eprintln!(
            "warning: {} other image(s) in the engine hold the base images' layers ({}{}): the \"fresh runner\" \
             cases pull the base images' manifests but not those layers, for both sides",
            holders.len(),
            holders.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
            if holders.len() > 3 { ", ..." } else { "" }
        );
    }
    // ratios[case] holds one time ratio per run; traffic[case] the bytes of the last run;
    // busy[case] each side's CPU shares over the runs.
    let mut ratios = vec![Vec::new(); CASES.len()];
    let mut traffic = vec![[traffic::Traffic::default(); 2]; CASES.len()];
    let mut busy = vec![[Vec::new(), Vec::new()]; CASES.len()];
    for run in 1..=runs {
        let measured = run_cases(runner, docker, lab, base_images, &scratch, run)?;
        for (case, [old, ours]) in measured.into_iter().enumerate() {
            let ratio = ours.seconds / old.seconds;
            eprintln!(
                "run {run}/{runs}: {}: old {:.1} s ({}), xtask {:.1} s ({}), ratio {ratio:.3}",
                CASES[case].0,
                old.seconds,
                old.described(),
                ours.seconds,
                ours.described()
            );
            ratios[case].push(ratio);
            traffic[case] = [old.traffic, ours.traffic];
            for (side, measured) in [old, ours].into_iter().enumerate() {
                busy[case][side].extend(measured.busy);
            }
        }
    }
    println!(
        "build --push against the old script's procedure, through a byte counter in front of {}, median of {runs} \
         run(s):",
        lab.relay.address
    );
    for ((((case, _, goal), mut ratios), [old, ours]), [old_busy, our_busy]) in
        CASES.into_iter().zip(ratios).zip(traffic).zip(busy)
    {
        let median = median_f64(&mut ratios);
        let verdict = if median <= goal { "met" } else { "NOT met" };
        let all: Vec<String> = ratios.iter().map(|ratio| format!("{ratio:.3}")).collect();
        println!("  {case}: ratio {median:.3} (runs: {}; goal <= {goal}: {verdict})", all.join(", "));
        let byte_ratio = ours.total() as f64 / old.total().max(1) as f64;
        println!("    bytes: old {}, xtask {}, ratio {byte_ratio:.3}", bytes_moved(old), bytes_moved(ours));
        println!("    CPUs busy: old {}, xtask {}", share_range(old_busy), share_range(our_busy));
    }
    std::fs::remove_dir_all(&scratch).ok();
    Ok(())
}

/// `pulled 12.3 MB, pushed 0.1 MB`.
fn bytes_moved(traffic: traffic::Traffic) -> String {
    format!("pulled {}, pushed {}", traffic::megabytes(traffic.pulled), traffic::megabytes(traffic.pushed))
}

/// What one side of one case measured: its time, the registry traffic, and how busy the
/// machine's CPUs were meanwhile (a side near 100% is bound by the CPU; `None` off Linux).
#[derive(Clone, Copy, Default)]
struct Measured {
    seconds: f64,
    traffic: traffic::Traffic,
    busy: Option<f64>,
}

impl Measured {
    /// `pulled 12.3 MB, pushed 0.1 MB, CPUs 91% busy`.
    fn described(&self) -> String {
        match self.busy {
            Some(busy) => format!("{}, CPUs {:.0}% busy", bytes_moved(self.traffic), busy * 100.0),
            None => bytes_moved(self.traffic),
        }
    }
}

/// `63-91%` over the runs, `91%` for one, `unknown` for none.
fn share_range(mut shares: Vec<f64>) -> String {
    shares.sort_by(f64::total_cmp);
    match (shares.first(), shares.last()) {
        (Some(low), Some(high)) if (high - low) * 100.0 >= 0.5 => format!("{:.0}-{:.0}%", low * 100.0, high * 100.0),
        (Some(share), _) => format!("{:.0}%", share * 100.0),
        _ => "unknown".to_string(),
    }
}

/// One run of the four cases in new registry repositories: what each side measured per case.
fn run_cases(
    runner: &dyn Runner,
    docker: &crate::adapters::docker::Docker,
    lab: &Lab,
    base_images: &BaseImages,
    scratch: &Path,
    run: usize,
) -> Result<Vec<[Measured; 2]>> {
    let repo = scratch.join(format!("repo-{run}"));
    let workspace = crate::adapters::workspace_root();
    runner.read(&git_clone(&workspace, &repo)).context("cannot clone the workspace")?;
    let run_id = format!("bench-{}-{run}", std::process::id());
    let namespace =
        |side: Side| format!("{}/{run_id}/{}", lab.registry, if side == Side::Old { "old" } else { "ours" });
    let namespaces = [namespace(Side::Old), namespace(Side::Ours)];
    let mut seconds = Vec::new();
    for (index, (_, fresh, _)) in CASES.iter().enumerate() {
        if index == 3 {
            let file = repo.join("backend/intric/main.py");
            let mut text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            text.push_str("\n# bench: one changed backend source file\n");
            std::fs::write(&file, text)?;
            let commit =
                ["-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "--quiet", "-am", "bench"];
            runner.read(&Command::new("git").args(commit).current_dir(&repo))?;
        }
        let mut case = [Measured::default(); 2];
        for (slot, side) in [Side::Old, Side::Ours].into_iter().enumerate() {
            if *fresh {
                fresh_runner(runner, docker, &namespaces, base_images)?;
            }
            lab.relay.take();
            let (started, cpu) = (Instant::now(), cpu::CpuTimes::now());
            match side {
                Side::Old => old_procedure(runner, docker, &repo, &namespace(side), lab)?,
                Side::Ours => {
                    let xtask = std::env::current_exe()?;
                    let target = namespace(side);
                    let repo = repo.display().to_string();
                    let build = xtask_command(&xtask, &["build", "--push", "--registry", &target, "--repo", &repo]);
                    let build =
                        lab.relayed_bases.iter().fold(build, |build, (variable, image)| build.env(variable, image));
                    runner.read(&build)?;
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            case[slot] = Measured { seconds, traffic: lab.relay.take(), busy: cpu::CpuTimes::now().busy_share(cpu) };
        }
        seconds.push(case);
    }
    // The last side's images would otherwise keep base layers in the engine for the next run.
    remove_images(runner, docker, &namespaces, Vec::new())?;
    Ok(seconds)
}

/// A directory of our own under the system's temporary directory.
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// The old script's procedure: `docker login --password-stdin` when NEXUS_USERNAME and
/// NEXUS_PASSWORD are set (as `build --push` also does), then per image a build with
/// `--cache-from <image>:latest` and inline cache metadata, then a push, one after the other.
fn old_procedure(
    runner: &dyn Runner,
    docker: &crate::adapters::docker::Docker,
    repo: &Path,
    namespace: &str,
    lab: &Lab,
) -> Result<()> {
    if let Some(credentials) =
        crate::adapters::registry::Credentials::from_env(&crate::adapters::ci_env::process_env())?
    {
        runner.read(&docker.login(&lab.registry, &credentials.username, credentials.password))?;
    }
    for service in crate::images::Service::ALL {
        let image = format!("{namespace}/{}:latest", service.repository());
        let context = repo.join(service.context_dir());
        let mut build_args = crate::images::build::base_image_args(service, &lab.relayed_bases);
        build_args.push(("BUILDKIT_INLINE_CACHE".into(), "1".into()));
        let spec = crate::adapters::docker::BuildSpec {
            dockerfile: context.join("Dockerfile"),
            context,
            target: Some(service.target().to_string()),
            tags: vec![image.clone()],
            build_args,
            cache_from: vec![image.clone()],
            ..crate::adapters::docker::BuildSpec::default()
        };
        runner.read(&docker.build(&spec))?;
        runner.read(&docker.command().args(["push", &image]))?;
    }
    Ok(())
}

/// What a fresh CI runner has: none of the benchmark's images, no base images, no BuildKit cache.
fn fresh_runner(
    runner: &dyn Runner,
    docker: &crate::adapters::docker::Docker,
    namespaces: &[String],
    base_images: &BaseImages,
) -> Result<()> {
    // By ID, with every tag: a tag left on another name would keep the layers in the engine.
    let base_ids = base_images.present(runner, docker).into_iter().map(|image| image.id.clone()).collect();
    remove_images(runner, docker, namespaces, base_ids)?;
    runner.read(&docker.command().args(["builder", "prune", "--all", "--force"]))?;
    Ok(())
}

/// Removes every image below `namespaces`, and the images `more` names (by ID or reference).
fn remove_images(
    runner: &dyn Runner,
    docker: &crate::adapters::docker::Docker,
    namespaces: &[String],
    mut more: Vec<String>,
) -> Result<()> {
    let format = "{{.Repository}}:{{.Tag}}";
    let images = runner.read(&docker.command().args(["images", "--format", format]))?;
    more.extend(
        images
            .lines()
            .filter(|image| namespaces.iter().any(|namespace| image.starts_with(namespace.as_str())))
            .map(str::to_string),
    );
    if !more.is_empty() {
        runner.read(&docker.command().args(["image", "rm", "--force"]).args(more)).context(
            "cannot empty the engine for a fresh runner: an image built on a base image with the classic builder \
             (`DOCKER_BUILDKIT=0`) keeps it as its parent; remove such images (`docker image ls --all`) and run again",
        )?;
    }
    Ok(())
}

/// The base images the builds start from, with every tag each one had when the benchmark began.
struct BaseImages(Vec<BaseImage>);

struct BaseImage {
    /// The reference the builds use, which the registry serves.
    reference: String,
    id: String,
    tags: Vec<String>,
    /// Its layers' diff IDs, bottom first.
    layers: Vec<String>,
}

impl BaseImages {
    fn read<'a>(
        runner: &dyn Runner,
        docker: &crate::adapters::docker::Docker,
        references: impl Iterator<Item = &'a String>,
    ) -> Result<BaseImages> {
        let mut images = Vec::new();
        for reference in references {
            let format = "{{.Id}}{{range .RepoTags}} {{.}}{{end}}|{{range .RootFS.Layers}} {{.}}{{end}}";
            let output =
                runner.read(&docker.command().args(["image", "inspect", "--format", format, reference])).with_context(
                    || format!("cannot inspect the base image {reference}: is the lab up? (`cargo xtask sandbox up`)"),
                )?;
            let (names, layers) = output.split_once('|').unwrap_or((&output, ""));
            let mut words = names.split_whitespace().map(str::to_string);
            let id = words.next().with_context(|| format!("`docker image inspect {reference}` printed no ID"))?;
            let layers = layers.split_whitespace().map(str::to_string).collect();
            images.push(BaseImage { reference: reference.clone(), id, tags: words.collect(), layers });
        }
        Ok(BaseImages(images))
    }

    /// The images of the engine (other than the base images, which a fresh runner lacks) that
    /// hold a base image's bottom layer: the engine keeps that layer for them, so pulling the
    /// base image fetches less than a fresh runner would.
    fn held_by_others(&self, runner: &dyn Runner, docker: &crate::adapters::docker::Docker) -> Result<Vec<String>> {
        let ids = runner.read(&docker.command().args(["image", "ls", "--quiet", "--no-trunc"]))?;
        let ids: std::collections::BTreeSet<&str> = ids.lines().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let format = "{{.Id}}|{{range .RepoTags}}{{.}} {{end}}|{{range .RootFS.Layers}}{{.}} {{end}}";
        let listed = runner.read(&docker.command().args(["image", "inspect", "--format", format]).args(ids))?;
        let bottoms: Vec<&str> = self.0.iter().filter_map(|image| image.layers.first().map(String::as_str)).collect();
        let holders = listed.lines().filter_map(|line| {
            let mut fields = line.splitn(3, '|');
            let (id, names, layers) = (fields.next()?, fields.next()?, fields.next()?);
            let base = self.0.iter().any(|image| image.id == id);
            let holds = layers.split_whitespace().any(|layer| bottoms.contains(&layer));
            (!base && holds).then(|| names.split_whitespace().next().unwrap_or(id).to_string())
        });
        Ok(holders.collect())
    }

    /// The base images still in the engine.
    fn present(&self, runner: &dyn Runner, docker: &crate::adapters::docker::Docker) -> Vec<&BaseImage> {
        self.0.iter().filter(|image| docker.image_exists(runner, &image.id)).collect()
    }

    /// Pulls every base image back from the registry and gives it all its tags again.
    fn restore(&self, runner: &dyn Runner, docker: &crate::adapters::docker::Docker) -> Result<()> {
        for image in &self.0 {
            runner.read(&docker.command().args(["pull", "--quiet", &image.reference]))?;
            for tag in &image.tags {
                runner.read(&docker.command().args(["tag", &image.reference, tag]))?;
            }
        }
        Ok(())
    }
}

/// The lab registry's address from the environment `sandbox env` prints.
fn lab_registry(env: &std::collections::BTreeMap<String, String>) -> Result<String> {
    env.get("NEXUS_REGISTRY")
        .filter(|value| !value.is_empty())
        .cloned()
        .context("NEXUS_REGISTRY is not set: run `eval \"$(cargo xtask sandbox env)\"` first")
}

/// The compose project and the host ports of `bench update`'s deployment.
const UPDATE_PROJECT: &str = "intric-bench-update";
const UPDATE_FRONTEND_PORT: u16 = 24200;
const UPDATE_BACKEND_PORT: u16 = 29200;
/// The probe's interval, and how long it may run at most whatever happens.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
const PROBE_LIMIT: Duration = Duration::from_secs(900);
/// Goals: no failed request, and the zero-downtime update at most this much slower.
const UPDATE_SLOWDOWN_GOAL: f64 = 1.5;

/// `cargo xtask bench update [--swarm]`: see [`BenchCommand::Update`].
fn bench_update(swarm: bool) -> Result<()> {
    let env = crate::adapters::ci_env::process_env();
    let lab = lab_registry(&env)?;
    let registry = format!("{}/update-bench-{}", lab.trim_end_matches('/'), std::process::id());
    let runner = Processes::new();
    let scratch = tempfile_dir()?;
    let repo = scratch.join("repo");
    let workspace = crate::adapters::workspace_root();
    runner.read(&git_clone(&workspace, &repo)).context("cannot clone the workspace")?;
    let xtask = std::env::current_exe().context("cannot find the running xtask binary")?;
    let site = scratch.join("deployment");
    std::fs::create_dir_all(&site).with_context(|| format!("cannot create {}", site.display()))?;
    // The deployment's tool runs see only what `.env` says, not the lab's variables.
    let on_site = |args: &[&str]| {
        let mut command = xtask_command(&xtask, args).arg("--dir").arg(site.display().to_string());
        if args[0] != "env" {
            command = command.args(["--project", UPDATE_PROJECT]);
        }
        ["IMAGE_TAG", "NEXUS_REGISTRY", "NEXUS_USERNAME", "NEXUS_PASSWORD", "CI"]
            .into_iter()
            .fold(command, |command, key| command.env_remove(key.to_string()))
    };
    let result = (|| -> Result<[UpdateRun; 2]> {
        let tags = ["bench-a", "bench-b", "bench-c"];
        for tag in tags {
            eprintln!("build --push --tag {tag} of HEAD into {registry} ...");
            let build = xtask_command(&xtask, &["build", "--push", "--tag", tag, "--registry", &registry, "--repo"])
                .arg(repo.display().to_string());
            runner.read(&build).with_context(|| format!("build --push --tag {tag} failed"))?;
        }
        for file in ["docker-compose.yml", ".env.example"] {
            std::fs::copy(repo.join("docker").join(file), site.join(file))
                .with_context(|| format!("cannot copy docker/{file} to {}", site.display()))?;
        }
        runner.read(&on_site(&["env", "init"]))?;
        let env_path = site.join(".env");
        let mut dotenv = crate::adapters::dotenv::DotEnv::read(&env_path)?;
        let (frontend_port, backend_port) = (UPDATE_FRONTEND_PORT.to_string(), UPDATE_BACKEND_PORT.to_string());
        let lab_value = |key: &str| env.get(key).cloned().with_context(|| format!("{key} is not set by sandbox env"));
        for (key, value) in [
            ("NEXUS_REGISTRY", registry.clone()),
            ("NEXUS_USERNAME", lab_value("NEXUS_USERNAME")?),
            ("NEXUS_PASSWORD", lab_value("NEXUS_PASSWORD")?),
            ("IMAGE_TAG", tags[0].to_string()),
            ("POSTGRES_IMAGE", lab_value("POSTGRES_IMAGE")?),
            ("REDIS_IMAGE", lab_value("REDIS_IMAGE")?),
            ("EDGE_IMAGE", lab_value("NGINX_IMAGE")?),
            // Swarm publishes on every interface, and does not publish a loopback-only port.
            ("FRONTEND_BIND", if swarm { "0.0.0.0" } else { "127.0.0.1" }.into()),
            // env check wants an LLM provider; nothing here asks one anything.
            ("OPENAI_API_KEY", "sk-bench-update-not-a-real-key".into()),
            ("FRONTEND_PORT", frontend_port),
            ("BACKEND_PORT", backend_port),
        ] {
            match dotenv.get(key) {
                Some(_) => dotenv.set(key, &value)?,
                None => dotenv.insert_after(None, &[], key, &value)?,
            }
        }
        crate::plan::write_atomically(&env_path, dotenv.render().as_bytes(), 0o600)?;
        eprintln!("deploy {} in {} ...", tags[0], site.display());
        runner.read(&on_site(&["deploy", "--timeout", "240"])).context("deploy failed")?;
        let new_side = if swarm { "swarm (start-first)" } else { "zero-downtime" };
        let sides = [("today (--allow-downtime)", tags[1], true), (new_side, tags[2], false)];
        let mut runs = Vec::new();
        for (name, tag, allow_downtime) in sides {
            eprintln!("{name}: update --tag {tag} with the probe running ...");
            let mut args = vec!["update", "--tag", tag, "--timeout", "240"];
            if allow_downtime {
                args.push("--allow-downtime");
            }
            if swarm && !allow_downtime {
                eprintln!("compose down (the volumes stay), then deploy --swarm of {} ...", tags[1]);
                runner.read(&compose_project(&site).arg("down")).context("compose down failed")?;
                runner.read(&on_site(&["deploy", "--swarm", "--timeout", "240"])).context("deploy --swarm failed")?;
            }
            let probe = Probe::start(UPDATE_FRONTEND_PORT);
            // The probe sees the stack answering before the update starts, and after it ends.
            std::thread::sleep(Duration::from_secs(1));
            let started = Instant::now();
            let updated = runner.read(&on_site(&args));
            let seconds = started.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_secs(1));
            let outcome = probe.stop();
            updated.with_context(|| format!("update --tag {tag} failed"))?;
            runs.push(UpdateRun { name, seconds, outcome });
        }
        let [today, new] = <[UpdateRun; 2]>::try_from(runs).ok().context("two sides ran")?;
        Ok([today, new])
    })();
    if swarm {
        remove_stack(&runner, UPDATE_PROJECT);
    }
    let compose = compose_project(&site).args(["--profile", "init", "down", "--volumes", "--remove-orphans"]);
    if site.join(".env").exists() {
        runner.read(&compose).ok();
    }
    std::fs::remove_dir_all(&scratch).ok();
    let [today, new] = result?;
    println!("update with the same images under a new tag, probe every 20 ms on / and /api/v1/healthz:");
    for run in [&today, &new] {
        println!(
            "  {:<26} {:>4} of {:>5} requests failed, longest outage {:>5.2} s, update took {:>5.1} s",
            run.name,
            run.outcome.failed,
            run.outcome.total,
            run.outcome.longest_outage.as_secs_f64(),
            run.seconds
        );
    }
    let ratio = new.seconds / today.seconds;
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!("  goal: 0 failed requests in the zero-downtime update: {}", verdict(new.outcome.failed == 0));
    println!(
        "  goal: zero-downtime update <= {UPDATE_SLOWDOWN_GOAL}x today's duration (ratio {ratio:.2}): {}",
        verdict(ratio <= UPDATE_SLOWDOWN_GOAL)
    );
    Ok(())
}

/// `docker compose` on `bench update`'s deployment directory `site`.
fn compose_project(site: &std::path::Path) -> Command {
    Command::new("docker")
        .args(["compose", "--project-name", UPDATE_PROJECT, "--project-directory"])
        .arg(site.display().to_string())
}

/// Removes swarm stack `name` and waits (at most a minute) until its containers are gone, so
/// that its volumes can be removed.
fn remove_stack(runner: &Processes, name: &str) {
    runner.read(&Command::new("docker").args(["stack", "rm", name])).ok();
    let left = Command::new("docker")
        .args(["ps", "--all", "--quiet", "--filter"])
        .arg(format!("label=com.docker.stack.namespace={name}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while runner.read(&left).is_ok_and(|ids| !ids.trim().is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One side of `bench update`.
struct UpdateRun {
    name: &'static str,
    seconds: f64,
    outcome: ProbeOutcome,
}

/// A thread requesting the page `/` and the API's `/api/v1/healthz` in turn, through the
/// frontend's host port on the loopback, every [`PROBE_INTERVAL`] until stopped (or for
/// [`PROBE_LIMIT`] at most).
struct Probe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, bool)>>,
}

/// What a probe saw.
#[derive(Debug, PartialEq)]
struct ProbeOutcome {
    total: usize,
    failed: usize,
    /// From the first failed request of a run of failures to the next answered one.
    longest_outage: Duration,
}

impl Probe {
    fn start(port: u16) -> Probe {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let agent: ureq::Agent =
                ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
            let urls = ["/", "/api/v1/healthz"].map(|path| format!("http://127.0.0.1:{port}{path}"));
            let started = Instant::now();
            let mut seen = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) && started.elapsed() < PROBE_LIMIT {
                let at = Instant::now();
                let answered = agent.get(&urls[seen.len() % 2]).call().is_ok();
                seen.push((at, answered));
                std::thread::sleep(PROBE_INTERVAL.saturating_sub(at.elapsed()));
            }
            seen
        });
        Probe { stop, thread }
    }

    fn stop(self) -> ProbeOutcome {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        ProbeOutcome::of(&self.thread.join().unwrap_or_default())
    }
}

impl ProbeOutcome {
    /// From the requests' start times and whether each got a 2xx answer.
    fn of(seen: &[(Instant, bool)]) -> ProbeOutcome {
        let mut longest = Duration::ZERO;
        let mut down_since: Option<Instant> = None;
        for &(at, answered) in seen {
            match (answered, down_since) {
                (false, None) => down_since = Some(at),
                (true, Some(since)) => {
                    longest = longest.max(at - since);
                    down_since = None;
                }
                _ => {}
            }
        }
        if let (Some(since), Some(&(last, _))) = (down_since, seen.last()) {
            longest = longest.max(last - since);
        }
        ProbeOutcome {
            total: seen.len(),
            failed: seen.iter().filter(|(_, answered)| !answered).count(),
            longest_outage: longest,
        }
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    #[test]
    fn the_longest_outage_runs_from_the_first_failure_to_the_next_answer() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let seen = [(at(0), true), (at(20), false), (at(40), false), (at(60), true), (at(80), false), (at(90), true)];
        let outcome = ProbeOutcome::of(&seen);
        assert_eq!(outcome, ProbeOutcome { total: 6, failed: 3, longest_outage: Duration::from_millis(40) });
        let still_down = ProbeOutcome::of(&[(at(0), false), (at(500), false)]);
        assert_eq!(still_down.longest_outage, Duration::from_millis(500));
        assert_eq!(ProbeOutcome::of(&[]).failed, 0);
    }
}
