//! Adapters: one module per outside system the xtask talks to (git, the docker client, compose,
//! Docker Swarm, `.env` files, CI providers' variables, the registry's HTTP API, the clock). They
//! know how to ask; they decide nothing about images or deployments.
//!
//! They use only the plan layer below them.

pub mod ci_env;
pub mod clock;
pub mod compose;
pub mod compose_vars;
pub mod docker;
pub mod dotenv;
pub mod git;
pub mod registry;
pub mod swarm;

use std::path::PathBuf;

/// The workspace root: the directory holding the top-level `Cargo.toml`.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Who runs this: `$USER`, else `uid N` (lock holders, the deploy history).
pub fn current_user() -> String {
    use std::os::unix::fs::MetadataExt;
    std::env::var("USER").ok().filter(|user| !user.is_empty()).unwrap_or_else(|| {
        std::fs::metadata("/proc/self").map_or_else(|_| "unknown".to_string(), |meta| format!("uid {}", meta.uid()))
    })
}

/// Which processes this one can see, for telling whether another process of this machine
/// still runs: the kernel's boot (`/proc/sys/kernel/random/boot_id`, new at every boot) and
/// the pid namespace (each container has its own). Two processes with the same answer look
/// up the same pids; a host name cannot say that (CI runners on different machines often
/// share one, containers on one machine have their own). `None` off Linux.
pub fn current_process_space() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("boot {} {}", boot.trim(), namespace.display()))
}

/// This machine's host name (lock holders).
pub fn current_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|host| host.trim().to_string())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}
