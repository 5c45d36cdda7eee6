//! `cargo xtask`: build, release and deploy automation for the Intric platform.
//!
//! This file only parses the command line and dispatches. The layers, top to bottom (a layer
//! uses only the ones below it; a `#[test]` in tests/repo_rules.rs keeps it so):
//! - `tasks/`: one module per command; only this file uses them;
//! - `stack/`: the deployed stack (directory, `.env` check, lock, history, steps, database, status);
//! - `images/`: what we build (service table, tag rules, inputs digest, build and release pipelines);
//! - `adapters/`: one module per outside system (git, docker, compose, `.env`, CI, registry, clock);
//! - `plan/`: plans as data, the runner that executes them, progress display.

mod adapters;
mod images;
mod plan;
mod stack;
mod tasks;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::tasks::{backup, bench, build, check, ci, deploy, doctor, env, release, sandbox, status, tags};

/// Build, release and deploy automation for the Intric platform.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

// `defer` builds a task's options only when that task runs: building all of them for every
// invocation was a third of the instructions of `cargo xtask tags`. It adds them after the
// task's line below is set, so a doc comment on an `Args` struct would replace that line in the
// task's `--help`: those structs carry `//` comments (a test below keeps it so).
#[derive(Subcommand)]
#[command(defer = true)]
enum Task {
    /// Print the image tags for the current git state.
    Tags(tags::TagsArgs),
    /// Build the backend, worker and frontend images; push them; skip what didn't change.
    Build(build::BuildArgs),
    /// Run the backend's tests and the frontend's checks in their Dockerfiles' stages.
    Check(check::CheckArgs),
    /// Release HEAD: promote its pushed images to X.Y.Z (and X.Y, X, latest) and tag it vX.Y.Z.
    Release(release::ReleaseArgs),
    /// Run one CI pipeline stage (pr, main, release): checks, tests, build, push or promote.
    Ci(ci::CiArgs),
    /// Start, describe or stop the offline lab: registry and base images.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Write or check the deployment's .env: generated secrets, types, permissions.
    #[command(subcommand)]
    Env(env::EnvCommand),
    /// Time the xtask's hot paths against what they replace (numbers, not tests).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Check this machine and the engine: versions, BuildKit, git, memory, disk, registry, .env.
    Doctor(doctor::DoctorArgs),
    /// Deploy the stack of a deployment directory: pull, initialize the database once, start, wait healthy.
    Deploy(deploy::DeployArgs),
    /// Update to another image tag: check it exists, back up, migrate with the new image, roll back on failure.
    Update(deploy::UpdateArgs),
    /// Go back to the previous successfully deployed tag (from the deploy history), or to --to TAG.
    Rollback(deploy::RollbackArgs),
    /// Back up the database (pg_dump, gzip) to DIR/backups, keeping the newest N.
    Backup(backup::BackupArgs),
    /// Replace the database with a backup: stop the app, load, swap in, start, wait healthy.
    Restore(backup::RestoreArgs),
    /// Show each service's state, health, image tag and digest, and uptime.
    Status(status::StatusArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return command_line_error(error),
    };
    let result = match cli.task {
        Task::Tags(args) => tags::run(args),
        Task::Build(args) => build::run(args),
        Task::Check(args) => check::run(args),
        Task::Release(args) => release::run(args),
        Task::Ci(args) => ci::run(args),
        Task::Sandbox(command) => sandbox::run(command),
        Task::Env(command) => env::run(command),
        Task::Bench(command) => bench::run(command),
        Task::Doctor(args) => doctor::run(args),
        Task::Deploy(args) => deploy::run_deploy(args),
        Task::Update(args) => deploy::run_update(args),
        Task::Rollback(args) => deploy::run_rollback(args),
        Task::Backup(args) => backup::run_backup(args),
        Task::Restore(args) => backup::run_restore(args),
        Task::Status(args) => status::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout as clap renders them; a bad command line becomes one
/// `error:` line (clap's message and its hint, without the usage block) and exit code 2.
fn command_line_error(error: clap::Error) -> ExitCode {
    if !error.use_stderr() {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let rendered = error.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .collect();
    // clap's first line already starts with `error: `.
    eprintln!("{} (see --help)", parts.join(" "));
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn every_task_keeps_its_line_of_the_task_list_when_its_options_are_built() {
        let listed = Cli::command();
        let mut built = Cli::command();
        // Runs the deferred option builders and clap's own checks of every task's options.
        built.build();
        let tasks: Vec<_> = listed.get_subcommands().zip(built.get_subcommands()).collect();
        assert_eq!(tasks.len(), listed.get_subcommands().count());
        for (listed, built) in tasks {
            let about = |task: &clap::Command| task.get_about().map(ToString::to_string);
            let long_about = |task: &clap::Command| task.get_long_about().map(ToString::to_string);
            assert!(about(listed).is_some(), "`{}` has no line in the task list", listed.get_name());
            assert_eq!(
                (about(built), long_about(built)),
                (about(listed), long_about(listed)),
                "the options of `{}` replace its description: make the doc comment of its Args struct a `//` comment",
                listed.get_name()
            );
            assert!(built.get_arguments().next().is_some(), "`{}` was not built", listed.get_name());
        }
    }
}
