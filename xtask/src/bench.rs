//! `cargo xtask bench`: timings of the xtask's hot paths against what they replace.
//!
//! Benchmarks are commands, not tests: their numbers depend on the machine, so they report
//! rather than assert. For representative numbers run them from a release build:
//! `cargo run --release -p xtask -- bench tags`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
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
    /// the median ratio of the runs. Needs the lab: `eval "$(cargo xtask sandbox env)"` first.
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
        BenchCommand::Tags { commits, tags, runs } => bench_tags(commits, tags, runs),
        BenchCommand::Build { runs } => bench_build(runs),
        BenchCommand::Release { runs } => crate::release::bench(runs),
        BenchCommand::Compile { runs, jobs, timings } => bench_compile(runs, jobs, timings),
        BenchCommand::Digest { files, kib, runs } => bench_digest(files, kib, runs),
    }
}

/// Files in the generated working tree: enough for `git status` to have something to compare.
const FILES: usize = 20;

fn bench_tags(commits: usize, tags: usize, runs: usize) -> Result<()> {
    ensure!(tags > 0 && commits >= tags, "--commits ({commits}) must be at least --tags ({tags}), which must be > 0");
    ensure!(runs > 0, "--runs must be at least 1");
    let dir = crate::workspace_root().join(format!("target/xtask/bench/tags-{commits}-{tags}"));
    let repos = generate_repos(&dir, commits, tags)?;
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
        let (ours, old) = time_tags(&xtask, repo, runs)?;
        let ratio = ours.as_secs_f64() / old.as_secs_f64();
        worst = worst.max(ratio);
        println!("  {layout}: xtask {:.2} ms, old {:.2} ms, ratio {ratio:.2}", millis(ours), millis(old));
    }
    println!("goal: ratio <= 1.0: {}", if worst <= 1.0 { "met" } else { "NOT met" });
    Ok(())
}

/// The median times of `xtask tags` and of the old script's three git processes on `repo`.
fn time_tags(xtask: &Path, repo: &Path, runs: usize) -> Result<(Duration, Duration)> {
    let ours = || run_checked(Command::new(xtask).arg("tags").arg("--repo").arg(repo)).map(drop);
    let old = || {
        // What the old script runs: describe fails (exit 128) when HEAD carries no tag, which is
        // a normal outcome for it, so only the process time counts here.
        for args in [&["rev-parse", "HEAD"][..], &["describe", "--tags", "--exact-match"], &["status", "--porcelain"]] {
            Command::new("git").args(args).current_dir(repo).output().context("cannot run git")?;
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
    Ok((median(&mut ours_times), median(&mut old_times)))
}

/// Generates the benchmark repositories under `dir` unless complete ones are already there,
/// and returns them by ref layout: tags as loose files (as `git tag` and `git fetch` leave
/// them, the slower case for both sides) and packed (as `git clone` and `git gc` leave them).
///
/// `git fast-import` writes all commits and tags into one pack in a single process, which takes
/// well under a second where 5,000 `git commit`s would take minutes.
fn generate_repos(dir: &Path, commits: usize, tags: usize) -> Result<[(&'static str, PathBuf); 2]> {
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
    let sh = Shell::new()?;
    sh.change_dir(&loose);
    let stream = fast_import_stream(commits, tags);
    cmd!(sh, "git init --quiet -b main").run()?;
    cmd!(sh, "git fast-import --quiet").stdin(stream).run().context("git fast-import failed")?;
    cmd!(sh, "git checkout --quiet --force main").run()?;
    cmd!(sh, "git clone --quiet {loose} {packed}").run()?;
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

    const WORKSPACE: &str = "[workspace]\nmembers = [\"xtask\"]\nresolver = \"3\"\n\n[workspace.package]\n\
        edition = \"2024\"\n\n[profile.dev]\ndebug = 0\n\n[profile.dev.package.sha2]\nopt-level = 3\n";

    #[test]
    fn deps_only_manifest_keeps_dependencies_features_and_profiles() {
        let xtask = "[package]\nname = \"xtask\"\nversion = \"0.1.0\"\nedition.workspace = true\n\n\
            [dependencies]\n# why\nclap = { version = \"4\", features = [\n    \"derive\",\n] }\n\n\
            [target.'cfg(unix)'.dependencies]\nlibc = \"0.2\"\n\n[dev-dependencies]\ntempfile = \"3\"\n\n\
            [features]\nfast = []\n\n[[bin]]\nname = \"other\"\n\n[lints]\nworkspace = true\n";
        let manifest = deps_only_manifest(xtask, WORKSPACE).unwrap();
        let tables: Vec<String> = toml_tables(&manifest).into_iter().map(|(header, _)| header).collect();
        assert_eq!(
            tables,
            [
                "package",
                "workspace",
                "dependencies",
                "target.'cfg(unix)'.dependencies",
                "dev-dependencies",
                "features",
                "profile.dev",
                "profile.dev.package.sha2"
            ]
        );
        assert!(
            manifest.contains("[package]\nname = \"xtask\"\nversion = \"0.1.0\"\nedition = \"2024\"\n"),
            "{manifest}"
        );
        assert!(manifest.contains("[workspace]\nresolver = \"3\"\n"), "{manifest}");
        assert!(manifest.contains("features = [\n    \"derive\",\n] }\n"), "multi-line values stay whole: {manifest}");
        assert!(manifest.contains("[profile.dev.package.sha2]\nopt-level = 3\n"), "{manifest}");
        assert!(!manifest.contains("other") && !manifest.contains("members"), "{manifest}");
    }

    #[test]
    fn deps_only_manifest_refuses_local_dependencies() {
        for dependency in ["common = { path = \"../common\" }", "anyhow = { workspace = true }"] {
            let xtask = format!("[package]\nversion = \"0.1.0\"\n\n[dependencies]\n{dependency}\n");
            let error = deps_only_manifest(&xtask, WORKSPACE).unwrap_err().to_string();
            assert!(error.contains(dependency), "{error}");
        }
    }

    #[test]
    fn children_cpu_time_grows_with_a_child() {
        let before = children_cpu_seconds().expect("/proc/self/stat has cutime and cstime");
        run_checked(Command::new("sh").args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])).unwrap();
        assert!(children_cpu_seconds().unwrap() > before);
    }

    #[test]
    fn the_real_manifest_gives_a_deps_only_crate() {
        let root = crate::workspace_root();
        let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
        let manifest = deps_only_manifest(&read("xtask/Cargo.toml"), &read("Cargo.toml")).unwrap();
        for dependency in ["\nclap = ", "\ngit2 = ", "\nureq = ", "\nsha2 = ", "\ntempfile = "] {
            assert!(manifest.contains(dependency), "{dependency:?} in {manifest}");
        }
        assert!(manifest.contains("[profile.dev]\n"), "{manifest}");
    }
}

/// One side of the build benchmark: how it builds and pushes every image of a repository.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Old,
    Ours,
}

/// The lab's registry and base images, from the environment `sandbox env` prints.
struct Lab {
    registry: String,
    base_images: std::collections::BTreeMap<String, String>,
}

fn bench_build(runs: usize) -> Result<()> {
    ensure!(runs > 0, "--runs must be at least 1");
    let env = crate::ci_env::process_env();
    let registry = env
        .get("NEXUS_REGISTRY")
        .filter(|value| !value.is_empty())
        .context("NEXUS_REGISTRY is not set: run `eval \"$(cargo xtask sandbox env)\"` first")?
        .clone();
    let lab = Lab { registry, base_images: crate::build::base_images(&env, None) };
    let sh = Shell::new()?;
    let docker = crate::docker::Docker::detect()?;
    let base_images = BaseImages::read(&sh, &docker, lab.base_images.values())?;
    let result = compare_builds(&sh, &docker, &lab, &base_images, runs);
    // Put the base images back whatever happened, so the lab (and `sandbox up`) find them.
    let restored = base_images.restore(&sh, &docker);
    result.and(restored)
}

/// The benchmark's cases: what is measured, whether on a fresh runner, and the goal.
const CASES: [(&str, bool, f64); 4] = [
    ("cold build, nothing in the registry, fresh runner", true, 0.6),
    ("no-op (nothing changed since the last push), fresh runner", true, 0.10),
    ("no-op, warm workstation", false, 1.0),
    ("one backend source file changed, fresh runner", true, 0.6),
];

fn compare_builds(
    sh: &Shell,
    docker: &crate::docker::Docker,
    lab: &Lab,
    base_images: &BaseImages,
    runs: usize,
) -> Result<()> {
    let scratch = tempfile_dir()?;
    // ratios[case] holds one ratio per run.
    let mut ratios = vec![Vec::new(); CASES.len()];
    for run in 1..=runs {
        let seconds = run_cases(sh, docker, lab, base_images, &scratch, run)?;
        for (case, [old, ours]) in seconds.into_iter().enumerate() {
            let ratio = ours / old;
            eprintln!("run {run}/{runs}: {}: old {old:.1} s, xtask {ours:.1} s, ratio {ratio:.3}", CASES[case].0);
            ratios[case].push(ratio);
        }
    }
    println!("build --push against the old script's procedure, on {}, median of {runs} run(s):", lab.registry);
    for ((case, _, goal), mut ratios) in CASES.into_iter().zip(ratios) {
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        let verdict = if median <= goal { "met" } else { "NOT met" };
        let all: Vec<String> = ratios.iter().map(|ratio| format!("{ratio:.3}")).collect();
        println!("  {case}: ratio {median:.3} (runs: {}; goal <= {goal}: {verdict})", all.join(", "));
    }
    std::fs::remove_dir_all(&scratch).ok();
    Ok(())
}

/// One run of the four cases in new registry repositories: the seconds of each side per case.
fn run_cases(
    sh: &Shell,
    docker: &crate::docker::Docker,
    lab: &Lab,
    base_images: &BaseImages,
    scratch: &Path,
    run: usize,
) -> Result<Vec<[f64; 2]>> {
    let repo = scratch.join(format!("repo-{run}"));
    let workspace = crate::workspace_root();
    cmd!(sh, "git clone --quiet {workspace} {repo}").run().context("cannot clone the workspace")?;
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
            cmd!(sh, "git -C {repo} -c user.name=bench -c user.email=bench@example.com commit --quiet -am bench")
                .run()?;
        }
        let mut case = [0.0; 2];
        for (slot, side) in [Side::Old, Side::Ours].into_iter().enumerate() {
            if *fresh {
                fresh_runner(sh, docker, &namespaces, base_images)?;
            }
            let started = Instant::now();
            match side {
                Side::Old => old_procedure(sh, docker, &repo, &namespace(side), lab)?,
                Side::Ours => {
                    let xtask = std::env::current_exe()?;
                    let target = namespace(side);
                    cmd!(sh, "{xtask} build --push --registry {target} --repo {repo}").quiet().ignore_stdout().run()?;
                }
            }
            case[slot] = started.elapsed().as_secs_f64();
        }
        seconds.push(case);
    }
    // The last side's images would otherwise keep base layers in the engine for the next run.
    remove_images(sh, docker, &namespaces, Vec::new())?;
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
fn old_procedure(sh: &Shell, docker: &crate::docker::Docker, repo: &Path, namespace: &str, lab: &Lab) -> Result<()> {
    if let Some(credentials) = crate::registry::Credentials::from_env(&crate::ci_env::process_env())? {
        docker.login(&lab.registry, &credentials.username, credentials.password).read(sh)?;
    }
    for service in crate::images::Service::ALL {
        let image = format!("{namespace}/{}:latest", service.repository());
        let context = repo.join(service.context_dir());
        let mut build_args = crate::build::base_image_args(service, &lab.base_images);
        build_args.push(("BUILDKIT_INLINE_CACHE".into(), "1".into()));
        let spec = crate::docker::BuildSpec {
            dockerfile: context.join("Dockerfile"),
            context,
            target: Some(service.target().to_string()),
            tags: vec![image.clone()],
            build_args,
            cache_from: vec![image.clone()],
            ..crate::docker::BuildSpec::default()
        };
        docker.build(&spec).read(sh)?;
        docker.command().args(["push", &image]).read(sh)?;
    }
    Ok(())
}

/// What a fresh CI runner has: none of the benchmark's images, no base images, no BuildKit cache.
fn fresh_runner(
    sh: &Shell,
    docker: &crate::docker::Docker,
    namespaces: &[String],
    base_images: &BaseImages,
) -> Result<()> {
    // By ID, with every tag: a tag left on another name would keep the layers in the engine.
    let base_ids = base_images.present(sh, docker).into_iter().map(|image| image.id.clone()).collect();
    remove_images(sh, docker, namespaces, base_ids)?;
    docker.command().args(["builder", "prune", "--all", "--force"]).read(sh)?;
    Ok(())
}

/// Removes every image below `namespaces`, and the images `more` names (by ID or reference).
fn remove_images(
    sh: &Shell,
    docker: &crate::docker::Docker,
    namespaces: &[String],
    mut more: Vec<String>,
) -> Result<()> {
    let format = "{{.Repository}}:{{.Tag}}";
    let images = docker.command().args(["images", "--format", format]).read(sh)?;
    more.extend(
        images
            .lines()
            .filter(|image| namespaces.iter().any(|namespace| image.starts_with(namespace.as_str())))
            .map(str::to_string),
    );
    if !more.is_empty() {
        docker.command().args(["image", "rm", "--force"]).args(more).read(sh)?;
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
}

impl BaseImages {
    fn read<'a>(
        sh: &Shell,
        docker: &crate::docker::Docker,
        references: impl Iterator<Item = &'a String>,
    ) -> Result<BaseImages> {
        let mut images = Vec::new();
        for reference in references {
            let format = "{{.Id}}{{range .RepoTags}} {{.}}{{end}}";
            let output =
                docker.command().args(["image", "inspect", "--format", format, reference]).read(sh).with_context(
                    || format!("cannot inspect the base image {reference}: is the lab up? (`cargo xtask sandbox up`)"),
                )?;
            let mut words = output.split_whitespace().map(str::to_string);
            let id = words.next().with_context(|| format!("`docker image inspect {reference}` printed no ID"))?;
            images.push(BaseImage { reference: reference.clone(), id, tags: words.collect() });
        }
        Ok(BaseImages(images))
    }

    /// The base images still in the engine.
    fn present(&self, sh: &Shell, docker: &crate::docker::Docker) -> Vec<&BaseImage> {
        self.0.iter().filter(|image| docker.image_exists(sh, &image.id)).collect()
    }

    /// Pulls every base image back from the registry and gives it all its tags again.
    fn restore(&self, sh: &Shell, docker: &crate::docker::Docker) -> Result<()> {
        for image in &self.0 {
            docker.command().args(["pull", "--quiet", &image.reference]).read(sh)?;
            for tag in &image.tags {
                docker.command().args(["tag", &image.reference, tag]).read(sh)?;
            }
        }
        Ok(())
    }
}

/// `bench compile`'s goals: a cold build of the xtask within this many seconds on two cores...
const COMPILE_GOAL_SECONDS: f64 = 40.0;
/// ...and within this many times the cold build of its dependencies alone.
const COMPILE_GOAL_RATIO: f64 = 1.5;

fn bench_compile(runs: usize, jobs: Option<usize>, timings: bool) -> Result<()> {
    ensure!(runs > 0, "--runs must be at least 1");
    ensure!(jobs != Some(0), "--jobs must be at least 1");
    let scratch = tempfile_dir()?;
    let result = compare_compiles(&scratch, runs, jobs, timings);
    std::fs::remove_dir_all(&scratch).ok();
    result
}

fn compare_compiles(scratch: &Path, runs: usize, jobs: Option<usize>, timings: bool) -> Result<()> {
    let root = crate::workspace_root();
    let deps_only = scratch.join("deps-only");
    // The cargo that runs this xtask (`cargo xtask` sets CARGO), so both sides use its toolchain.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let sides =
        [("dependencies alone", deps_only.join("Cargo.toml"), None), ("xtask", root.join("Cargo.toml"), Some("xtask"))];
    let (cargo, sides) = (cargo.as_str(), &sides);
    let builds = |run: usize| {
        sides.iter().enumerate().map(move |(slot, (name, manifest, package))| {
            let target = scratch.join(format!("target-{slot}-{run}"));
            (slot, *name, cold_build(cargo, manifest, *package, &target, jobs, timings), target)
        })
    };
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let jobs_text = jobs.map_or("cargo's default jobs".to_string(), |jobs| format!("-j {jobs}"));
    println!("plan ({runs} run(s); {cpus} CPUs, {jobs_text}):");
    println!(
        "{:>3}. write {}: Cargo.toml (xtask/Cargo.toml's dependency tables, the workspace's profiles), \
         Cargo.lock and .cargo/config.toml (the workspace's), src/main.rs (an empty main)",
        1,
        deps_only.display()
    );
    for (step, (_, name, command, _)) in (1..=runs).flat_map(builds).enumerate() {
        println!("{:>3}. {command}  # {name}, then remove its target directory", step + 2);
    }

    write_deps_only_crate(&root, &deps_only)?;
    let sh = Shell::new()?;
    let reports = root.join("target/xtask/bench/compile");
    // seconds[slot], cpu[slot] and loads[slot] hold one value per run.
    let (mut seconds, mut cpu, mut loads) =
        ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let mut busy = false;
    for run in 1..=runs {
        for (slot, name, command, target) in builds(run) {
            let before = load_average();
            eprintln!("run {run}/{runs}: {name}: building (load average {before})...");
            let (started, cpu_before) = (Instant::now(), children_cpu_seconds());
            command.run(&sh)?;
            let elapsed = started.elapsed().as_secs_f64();
            let cpu_seconds = children_cpu_seconds().zip(cpu_before).map(|(after, before)| after - before);
            let after = load_average();
            let cpu_text = cpu_seconds.map_or(String::new(), |cpu| format!(", {cpu:.0} s CPU"));
            eprintln!(
                "run {run}/{runs}: {name}: {elapsed:.1} s{cpu_text} (load average {before} before, {after} after)"
            );
            // Our own build adds about one per core to the load; more means other work shared them.
            busy |= before.parse::<f64>().is_ok_and(|load| load > 1.0);
            if timings {
                std::fs::create_dir_all(&reports).with_context(|| format!("cannot create {}", reports.display()))?;
                let report = reports.join(format!("{}-{run}.html", name.replace(' ', "-")));
                std::fs::copy(target.join("cargo-timings/cargo-timing.html"), &report)
                    .with_context(|| format!("cannot keep the --timings report as {}", report.display()))?;
                eprintln!("  per-crate times: {}", report.display());
            }
            std::fs::remove_dir_all(&target).ok();
            seconds[slot].push(elapsed);
            cpu[slot].extend(cpu_seconds);
            loads[slot].push(format!("{before} -> {after}"));
        }
    }

    let mut ratios: Vec<f64> = seconds[1].iter().zip(&seconds[0]).map(|(ours, deps)| ours / deps).collect();
    println!("cold `cargo build` in fresh target directories, {cpus} CPUs, {jobs_text}, median of {runs} run(s):");
    for (slot, (name, _, _)) in sides.iter().enumerate() {
        let all: Vec<String> = seconds[slot].iter().map(|seconds| format!("{seconds:.1}")).collect();
        let median = median_f64(&mut seconds[slot].clone());
        let cpu_text = if cpu[slot].is_empty() {
            String::new()
        } else {
            format!(", {:.0} s CPU", median_f64(&mut cpu[slot].clone()))
        };
        println!(
            "  {name}: {median:.1} s{cpu_text} (runs: {}; load average before -> after: {})",
            all.join(", "),
            loads[slot].join(", ")
        );
    }
    let (xtask, ratio) = (median_f64(&mut seconds[1]), median_f64(&mut ratios));
    println!("  ratio xtask / dependencies alone: {ratio:.2}");
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!("goal: xtask cold <= {COMPILE_GOAL_SECONDS} s on two cores: {}", verdict(xtask <= COMPILE_GOAL_SECONDS));
    println!("goal: ratio <= {COMPILE_GOAL_RATIO}: {}", verdict(ratio <= COMPILE_GOAL_RATIO));
    if busy {
        println!(
            "note: the load average was above 1 before a build: other work shared the cores, so the times are long"
        );
    }
    if cpus != 2 && jobs != Some(2) {
        println!("note: the 40 s goal is for two cores; `--jobs 2` stands for them on this {cpus}-CPU machine");
    }
    Ok(())
}

/// A cold `cargo build` of `manifest` (its `package`, if given) into `target`: offline, since
/// running the xtask has already fetched every crate a build needs, and `--locked`, so both
/// sides build the versions in Cargo.lock.
fn cold_build(
    cargo: &str,
    manifest: &Path,
    package: Option<&str>,
    target: &Path,
    jobs: Option<usize>,
    timings: bool,
) -> crate::plan::Command {
    let mut command = crate::plan::Command::new(cargo)
        .args(["build", "--quiet", "--offline", "--locked", "--manifest-path"])
        .arg(manifest.to_string_lossy())
        .env("CARGO_TARGET_DIR", target.to_string_lossy())
        // A compiler cache (sccache) would make a cold build warm; empty means no wrapper.
        .env("RUSTC_WRAPPER", "")
        .hint("the cold build failed: does `cargo build -p xtask --offline --locked` work?");
    if let Some(package) = package {
        command = command.args(["--package", package]);
    }
    if let Some(jobs) = jobs {
        command = command.args(["--jobs".to_string(), jobs.to_string()]);
    }
    if timings {
        command = command.arg("--timings");
    }
    command
}

/// Writes the dependencies-only crate into `dir` (see [`deps_only_manifest`]), with the
/// workspace's Cargo.lock and .cargo/config.toml (build settings there apply to both sides).
fn write_deps_only_crate(root: &Path, dir: &Path) -> Result<()> {
    let read =
        |path: PathBuf| std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()));
    let manifest = deps_only_manifest(&read(root.join("xtask/Cargo.toml"))?, &read(root.join("Cargo.toml"))?)?;
    let write = |relative: &str, text: &str| {
        let path = dir.join(relative);
        std::fs::create_dir_all(path.parent().expect("a file in the crate"))
            .and_then(|()| std::fs::write(&path, text))
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write("Cargo.toml", &manifest)?;
    write("Cargo.lock", &read(root.join("Cargo.lock"))?)?;
    write("src/main.rs", "fn main() {}\n")?;
    let config = root.join(".cargo/config.toml");
    if config.exists() {
        write(".cargo/config.toml", &read(config)?)?;
    }
    Ok(())
}

/// The manifest of a crate with the xtask's dependencies and no code: the xtask's name and
/// version (which Cargo.lock records, with its dependencies), every dependency and feature
/// table of `xtask_manifest` verbatim, dev-dependencies included (the lock file lists them, and
/// `cargo build` does not build them), and the resolver and profiles of `workspace_manifest`.
///
/// A line-based reading of TOML: tables start with a `[` header in the first column, as in our
/// manifests. Dependencies by path or from the workspace would not resolve elsewhere: an error.
fn deps_only_manifest(xtask_manifest: &str, workspace_manifest: &str) -> Result<String> {
    let (xtask, workspace) = (toml_tables(xtask_manifest), toml_tables(workspace_manifest));
    let table = |tables: &[(String, String)], name: &str| {
        tables.iter().find(|(header, _)| header == name).map(|(_, body)| body.clone()).unwrap_or_default()
    };
    let package = table(&xtask, "package");
    let version = toml_string(&package, "version").context("xtask/Cargo.toml's [package] has no version string")?;
    let edition = toml_string(&package, "edition")
        .or_else(|| toml_string(&table(&workspace, "workspace.package"), "edition"))
        .unwrap_or_else(|| "2021".to_string());
    let mut manifest = format!(
        "# Generated by `cargo xtask bench compile`: the xtask's dependencies, without its code.\n\
         [package]\nname = \"xtask\"\nversion = \"{version}\"\nedition = \"{edition}\"\npublish = false\n\n[workspace]\n"
    );
    if let Some(resolver) = toml_string(&table(&workspace, "workspace"), "resolver") {
        manifest.push_str(&format!("resolver = \"{resolver}\"\n"));
    }
    let is_dependencies = |header: &str| {
        let last = header.rsplit('.').next().unwrap_or(header);
        header == "features"
            || ["dependencies", "dev-dependencies", "build-dependencies"].iter().any(|kind| {
                header.starts_with(&format!("{kind}.")) || last == *kind || header.contains(&format!(".{kind}."))
            })
    };
    for (header, body) in xtask.iter().filter(|(header, _)| is_dependencies(header)) {
        let local = body.lines().find(|line| {
            let line = line.split('#').next().unwrap_or_default();
            line.contains("path =") || line.contains("workspace = true")
        });
        if let Some(line) = local {
            bail!("xtask/Cargo.toml [{header}]: `{}` does not resolve outside the workspace", line.trim());
        }
        manifest.push_str(&format!("\n[{header}]\n{body}"));
    }
    for (header, body) in workspace.iter().filter(|(header, _)| header.starts_with("profile.")) {
        manifest.push_str(&format!("\n[{header}]\n{body}"));
    }
    Ok(manifest)
}

/// The tables of a TOML text as (header without brackets, the lines below it up to the next
/// header); the lines before the first header are left out.
fn toml_tables(text: &str) -> Vec<(String, String)> {
    let mut tables: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('[') {
            let header =
                line.split('#').next().unwrap_or_default().trim().trim_start_matches('[').trim_end_matches(']');
            tables.push((header.trim().to_string(), String::new()));
        } else if let Some((_, body)) = tables.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    tables
}

/// The value of `key = "value"` among a table's lines.
fn toml_string(body: &str, key: &str) -> Option<String> {
    body.lines().find_map(|line| {
        let (name, value) = line.split_once('=')?;
        let value = value.trim().strip_prefix('"')?;
        (name.trim() == key).then(|| value.split('"').next().unwrap_or_default().to_string())
    })
}

/// The CPU time (user and system) of this process's waited-for children and theirs (cargo waits
/// for its rustc processes), from /proc/self/stat in USER_HZ ticks (100 a second on Linux).
fn children_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name in parentheses; cutime and cstime are fields 16 and 17.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index - 3)?.parse::<f64>().ok();
    Some((ticks(16)? + ticks(17)?) / 100.0)
}

/// The 1-minute load average, as /proc/loadavg shows it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}

fn median_f64(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn bench_digest(files: usize, kib: usize, runs: usize) -> Result<()> {
    ensure!(files > 0 && kib > 0, "--files and --kib must be at least 1");
    ensure!(runs > 0, "--runs must be at least 1");
    let root = crate::workspace_root();
    let build = if cfg!(debug_assertions) { "debug build" } else { "release build" };
    println!("inputs digest of build contexts ({build}), medians of {runs} runs:");
    for service in crate::images::Service::ALL {
        let context = root.join(service.context_dir());
        let digest = || {
            crate::context::inputs_digest(&context, &context.join("Dockerfile"), Some(service.target()), &[]).map(drop)
        };
        let mut times = (0..runs + 2).map(|_| timed(digest)).collect::<Result<Vec<_>>>()?;
        // The first two runs warm the page cache.
        println!("  {} ({}/): {:.2} ms", service.name(), service.context_dir(), millis(median(&mut times[2..])));
    }

    let dir = root.join(format!("target/xtask/bench/digest-{files}-{kib}"));
    let paths = generate_context(&dir, files, kib)?;
    let context = dir.join("context");
    let ours = || crate::context::inputs_digest(&context, &context.join("Dockerfile"), None, &[]).map(drop);
    let reference = || run_checked(Command::new("sha256sum").args(&paths).current_dir(&context)).map(drop);
    for _ in 0..2 {
        ours()?;
        reference()?;
    }
    let (mut ours_times, mut reference_times) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        ours_times.push(timed(ours)?);
        reference_times.push(timed(reference)?);
    }
    let (ours, reference) = (median(&mut ours_times), median(&mut reference_times));
    let mib = (files * kib) as f64 / 1024.0;
    println!(
        "  generated ({files} files of {kib} KiB, {mib:.1} MiB): xtask {:.1} ms ({:.0} MiB/s), sha256sum {:.1} ms \
         ({:.0} MiB/s), ratio {:.2}",
        millis(ours),
        mib / ours.as_secs_f64(),
        millis(reference),
        mib / reference.as_secs_f64(),
        ours.as_secs_f64() / reference.as_secs_f64()
    );
    println!("no goal: compare the numbers before and after a change to the build profiles or to context.rs");
    Ok(())
}

/// Generates a build context under `dir` unless a complete one is there: a Dockerfile and
/// `files` files of `kib` KiB in directories of 100, and returns the files' relative paths.
fn generate_context(dir: &Path, files: usize, kib: usize) -> Result<Vec<String>> {
    let paths: Vec<String> = (0..files).map(|n| format!("d{:03}/f{n:06}", n / 100)).collect();
    let complete = dir.join("complete");
    if complete.exists() {
        return Ok(paths);
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove the partial {}", dir.display()))?;
    }
    eprintln!("generating {} ({files} files of {kib} KiB)...", dir.display());
    let context = dir.join("context");
    let write = |path: PathBuf, bytes: &[u8]| {
        std::fs::create_dir_all(path.parent().expect("a file in the context"))
            .and_then(|()| std::fs::write(&path, bytes))
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write(context.join("Dockerfile"), b"FROM scratch\nCOPY . /\n")?;
    // Content that differs between files and from block to block (a xorshift sequence).
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut content = vec![0; kib * 1024];
    for path in &paths {
        for chunk in content.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        write(context.join(path), &content)?;
    }
    std::fs::write(&complete, "").with_context(|| format!("cannot write {}", complete.display()))?;
    Ok(paths)
}
