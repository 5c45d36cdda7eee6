//! The README's Quick start runs as written: its ```sh block is taken verbatim and run with
//! `bash -e` in a clean environment (only HOME and a minimal PATH with cargo's bin directory),
//! from the root of a clean copy of this workspace, as a newcomer pastes it. Needs the engine
//! (provisioning); with `CI` set, a missing one is a failure, not a skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The ```sh block under `## Quick start`, before the next section.
fn quick_start(readme: &str) -> String {
    let section: Vec<&str> = readme
        .lines()
        .skip_while(|line| line.trim() != "## Quick start")
        .skip(1)
        .take_while(|line| !line.starts_with("## "))
        .collect();
    let block: Vec<&str> = section
        .iter()
        .skip_while(|line| line.trim() != "```sh")
        .skip(1)
        .take_while(|line| line.trim() != "```")
        .copied()
        .collect();
    assert!(!block.is_empty(), "README.md has no ```sh block under `## Quick start`");
    block.join("\n")
}

/// The directory of the cargo running these tests (rustup's proxies live there too).
fn cargo_bin_dir() -> PathBuf {
    let cargo = std::env::var_os("CARGO").map(PathBuf::from).expect("cargo sets CARGO for its tests");
    let home_bin = std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin"));
    // Prefer rustup's proxies: the toolchain directory's cargo needs rustup's environment.
    match home_bin.filter(|dir| dir.join("cargo").is_file()) {
        Some(dir) => dir,
        None => cargo.parent().unwrap().to_path_buf(),
    }
}

/// A target directory for the copy's `cargo xtask`, seeded once with a copy of the compiled
/// dependencies of the tests' own (their profile directory holds the xtask binary). Not that
/// directory itself: the copy's binary, built for another workspace root, would replace the one
/// the other tests run. Without the seed, the first run would compile every dependency again.
fn quick_start_target_dir() -> PathBuf {
    let profile = Path::new(XTASK).parent().expect("the xtask binary is in a profile directory");
    let target = profile.parent().expect("the profile directory is in a target directory").join("readme-quick-start");
    let seeded = target.join(profile.file_name().unwrap());
    if !seeded.exists() {
        std::fs::create_dir_all(&target).unwrap();
        let copy = run("cp", &["-a", profile.to_str().unwrap(), seeded.to_str().unwrap()], &target);
        assert_success(&copy, "seeding the Quick start's target directory");
    }
    target
}

#[test]
fn the_quick_start_block_is_found() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let block = quick_start(&readme);
    assert!(block.contains("cargo xtask sandbox up"), "{block}");
    assert!(block.contains("cargo xtask build --push"), "{block}");
}

#[test]
fn the_quick_start_runs_as_written_in_a_clean_environment() {
    if !docker_available() {
        return;
    }
    let _serial = serial();
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let block = quick_start(&readme);
    // A clean copy: the block builds and pushes the workspace it runs in, which must not be
    // refused as dirty because of the change under test.
    let repo = snapshot();
    let path = format!("{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", cargo_bin_dir().display());
    let home = std::env::var("HOME").expect("HOME is set");
    let target = quick_start_target_dir();
    let output = Command::new("env")
        .arg("-i")
        .arg(format!("HOME={home}"))
        .arg(format!("PATH={path}"))
        // Only so that the copy's `cargo xtask` finds the dependencies compiled already; it
        // changes nothing the block does.
        .arg(format!("CARGO_TARGET_DIR={}", target.display()))
        .args(["bash", "-e", "-c", &block])
        .current_dir(repo.path())
        .output()
        .unwrap();
    assert_success(&output, &format!("the README's Quick start\n{block}\n"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for service in ["backend", "worker", "frontend"] {
        assert!(
            stdout.lines().any(|line| line.starts_with(service) && line.contains("sha-")),
            "the summary names {service}:\n{stdout}"
        );
    }
    assert!(stdout.contains("pushed to 127.0.0.1:5000"), "the images went to the lab registry:\n{stdout}");
}
