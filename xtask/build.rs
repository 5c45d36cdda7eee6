//! Links the xtask binary as a position-dependent executable on Linux with glibc.
//!
//! A position-independent executable makes the dynamic loader patch every pointer of the
//! binary's read-only data at each start: 30,900 relocations for this one, and a copy of each
//! page they touch. Every `cargo xtask` invocation paid that, 0.4 ms of the 9 ms `tags` takes on
//! the benchmark repository (`cargo xtask bench tags`). Address randomisation of the binary
//! itself is what this gives up; its libraries, stack and heap keep theirs. Only the binary is
//! linked so: test harnesses and build scripts stay as rustc makes them.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo::rustc-link-arg-bins=-no-pie");
    }
}
