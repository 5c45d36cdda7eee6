//! `cargo xtask bench compile | digest`: the xtask's own cost. `compile` times a cold build of
//! the xtask against a generated crate with the same dependencies and no code, in the same run,
//! so the share that is ours shows whatever the machine's speed; `digest` times the inputs
//! digest of build contexts (the hot path the build profiles keep optimised) against
//! `sha256sum`. Both run their processes through the plan's runner.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use super::{median, median_f64, millis, tempfile_dir, timed};
use crate::images::inputs::inputs_digest;
use crate::plan::Command;
use crate::plan::runner::{Processes, Runner};

/// `bench compile`'s goals: a cold build of the xtask within this many seconds on two cores...
const COMPILE_GOAL_SECONDS: f64 = 40.0;
/// ...and within this many times the cold build of its dependencies alone.
const COMPILE_GOAL_RATIO: f64 = 1.5;

pub(super) fn bench_compile(runs: usize, jobs: Option<usize>, timings: bool) -> Result<()> {
    ensure!(runs > 0, "--runs must be at least 1");
    ensure!(jobs != Some(0), "--jobs must be at least 1");
    let scratch = tempfile_dir()?;
    let result = compare_compiles(&scratch, runs, jobs, timings);
    std::fs::remove_dir_all(&scratch).ok();
    result
}

fn compare_compiles(scratch: &Path, runs: usize, jobs: Option<usize>, timings: bool) -> Result<()> {
    let root = crate::adapters::workspace_root();
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
    let runner = Processes::new();
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
            runner.run(&command, &mut |line| eprintln!("{line}"))?;
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
) -> Command {
    let mut command = Command::new(cargo)
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

pub(super) fn bench_digest(files: usize, kib: usize, runs: usize) -> Result<()> {
    ensure!(files > 0 && kib > 0, "--files and --kib must be at least 1");
    ensure!(runs > 0, "--runs must be at least 1");
    let root = crate::adapters::workspace_root();
    let build = if cfg!(debug_assertions) { "debug build" } else { "release build" };
    println!("inputs digest of build contexts ({build}), medians of {runs} runs:");
    for service in crate::images::Service::ALL {
        let context = root.join(service.context_dir());
        let digest =
            || inputs_digest(&context, &context.join("Dockerfile"), Some(service.target()), &[], &[]).map(drop);
        let times = (0..runs + 2).map(|_| timed(digest)).collect::<Result<Vec<_>>>()?;
        // The first two runs warm the page cache.
        println!("  {} ({}/): {:.2} ms", service.name(), service.context_dir(), millis(median(&times[2..])));
    }

    let dir = root.join(format!("target/xtask/bench/digest-{files}-{kib}"));
    let paths = generate_context(&dir, files, kib)?;
    let context = dir.join("context");
    let runner = Processes::new();
    let ours = || inputs_digest(&context, &context.join("Dockerfile"), None, &[], &[]).map(drop);
    let sha256sum = Command::new("sha256sum").args(&paths).current_dir(&context);
    let reference = || runner.read(&sha256sum).map(drop);
    for _ in 0..2 {
        ours()?;
        reference()?;
    }
    let (mut ours_times, mut reference_times) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        ours_times.push(timed(ours)?);
        reference_times.push(timed(reference)?);
    }
    let (ours, reference) = (median(&ours_times), median(&reference_times));
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
    println!("no goal: compare the numbers before and after a change to the build profiles or to images/inputs.rs");
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // Hashing this test binary (tens of MB) takes a child some CPU time.
        let binary = std::env::current_exe().unwrap();
        Processes::new().read(&Command::new("sha256sum").arg(binary.display().to_string())).unwrap();
        assert!(children_cpu_seconds().unwrap() > before);
    }

    #[test]
    fn the_real_manifest_gives_a_deps_only_crate() {
        let root = crate::adapters::workspace_root();
        let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
        let manifest = deps_only_manifest(&read("xtask/Cargo.toml"), &read("Cargo.toml")).unwrap();
        for dependency in ["\nclap = ", "\nureq = ", "\nsha2 = ", "\ntempfile = "] {
            assert!(manifest.contains(dependency), "{dependency:?} in {manifest}");
        }
        assert!(manifest.contains("[profile.dev]\n"), "{manifest}");
    }
}
