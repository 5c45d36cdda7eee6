//! Plans: what a task is about to do, as data. Every task reads its inputs once, builds a
//! [`Plan`] (pure data, unit-tested), and only then runs it. `--dry-run` prints the same plan
//! that would run, so what an operator reviews is exactly what happens. A plan's steps are
//! [`Step`]s (commands and file writes) unless a task has steps of its own (deploy's database
//! steps); a plan may say how to put the previous state back when a late step fails.
//!
//! Secrets travel as [`Secret`]s: they go to a process's standard input or into a file with
//! mode 0600, never into argv, and they print as their name only.

pub mod progress;
pub mod runner;

use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::plan::runner::Runner;

/// A value that must never be shown: printing it gives its name, not its value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    name: String,
    value: String,
}

impl Secret {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Secret {
        Secret { name: name.into(), value: value.into() }
    }

    /// The value itself, for the one place that hands it to a process or a file.
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<secret {}>", self.name)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.name)
    }
}

/// One external command: program, argv, extra environment, environment variables it must not
/// inherit, optional secret standard input, and a hint telling the user what to do when it
/// fails. A [`runner::Runner`] runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Removed from the environment it inherits (compose commands: every variable `.env`
    /// defines, so that the deployment is exactly what `.env` says). Not shown: it only takes away.
    pub env_remove: Vec<String>,
    /// The directory it runs in, when not this process's.
    pub dir: Option<PathBuf>,
    pub stdin: Option<Secret>,
    pub hint: String,
}

impl Command {
    pub fn new(program: impl Into<String>) -> Command {
        Command {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            dir: None,
            stdin: None,
            hint: String::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Command {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Command {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn stdin(mut self, secret: Secret) -> Command {
        self.stdin = Some(secret);
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Command {
        self.hint = hint.into();
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Command {
        self.dir = Some(dir.into());
        self
    }

    pub fn env_remove(mut self, key: String) -> Command {
        self.env_remove.push(key);
        self
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(dir) = &self.dir {
            write!(f, "cd {} && ", shell_quote(&dir.display().to_string()))?;
        }
        for (key, value) in &self.env {
            write!(f, "{key}={} ", shell_quote(value))?;
        }
        write!(f, "{}", shell_quote(&self.program))?;
        for arg in &self.args {
            write!(f, " {}", shell_quote(arg))?;
        }
        if let Some(secret) = &self.stdin {
            write!(f, " < {secret}")?;
        }
        Ok(())
    }
}

/// Quotes a word for display the way a POSIX shell would read it back.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%^".contains(c));
    if plain { word.to_string() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Run an external command.
    Run(Command),
    /// Write a file atomically (temporary file in the same directory, then rename).
    Write { path: PathBuf, contents: FileContents, mode: u32 },
    /// Run a command and write its standard output atomically to a file.
    Capture { command: Command, path: PathBuf, mode: u32 },
    /// Run a command until it succeeds, for at most `seconds`: for services that are starting.
    WaitFor { command: Command, seconds: u64 },
}

/// What a planned file holds. Every file the xtask writes holds secrets (credentials, `.env`),
/// so `--dry-run` names its contents and never shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileContents {
    Secret(Secret),
}

impl FileContents {
    fn bytes(&self) -> &[u8] {
        match self {
            FileContents::Secret(secret) => secret.expose().as_bytes(),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Run(command) => write!(f, "{command}"),
            Step::Write { path, contents: FileContents::Secret(secret), mode } => {
                write!(f, "write {} (mode {mode:o}) from {secret}", path.display())
            }
            Step::Capture { command, path, mode } => write!(f, "{command} > {} (mode {mode:o})", path.display()),
            Step::WaitFor { command, seconds } => write!(f, "until {command}; (at most {seconds} s)"),
        }
    }
}

/// An ordered list of steps, and how to recover when one of the later ones fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<S = Step> {
    pub steps: Vec<S>,
    pub recovery: Option<Recovery<S>>,
}

/// The steps that put the previous state back when step `from` (counted from 0) or a later one
/// fails: the steps before `from` change nothing, so a failure there needs no recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery<S> {
    pub from: usize,
    pub steps: Vec<S>,
}

/// How a plan failed.
#[derive(Debug)]
pub enum Failure {
    /// Before anything changed (or in a plan without recovery).
    Unchanged(anyhow::Error),
    /// After a change; the recovery put the previous state back.
    Recovered(anyhow::Error),
    /// After a change, and the recovery failed too.
    RecoveryFailed(anyhow::Error, anyhow::Error),
}

impl Failure {
    /// The error to report: the step's, with the recovery's failure added when it failed too.
    pub fn into_error(self) -> anyhow::Error {
        match self {
            Failure::Unchanged(error) | Failure::Recovered(error) => error,
            Failure::RecoveryFailed(error, second) => {
                anyhow::anyhow!("{error:#}; putting the previous state back failed too: {second:#}")
            }
        }
    }
}

impl<S> Default for Plan<S> {
    fn default() -> Plan<S> {
        Plan { steps: Vec::new(), recovery: None }
    }
}

impl<S> Plan<S> {
    /// Runs the steps in order with `perform`, stopping at the first failure; when that step is
    /// at or after the recovery's start, runs the recovery steps before returning.
    pub fn execute_with(&self, mut perform: impl FnMut(&S) -> Result<()>) -> std::result::Result<(), Failure> {
        for (index, step) in self.steps.iter().enumerate() {
            let Err(error) = perform(step) else { continue };
            let Some(recovery) = self.recovery.as_ref().filter(|recovery| index >= recovery.from) else {
                return Err(Failure::Unchanged(error));
            };
            eprintln!("failed: {error:#}\nputting the previous state back");
            return Err(match recovery.steps.iter().try_for_each(&mut perform) {
                Ok(()) => Failure::Recovered(error),
                Err(second) => Failure::RecoveryFailed(error, second),
            });
        }
        Ok(())
    }
}

impl Plan {
    pub fn run(&mut self, command: Command) {
        self.steps.push(Step::Run(command));
    }

    pub fn write(&mut self, path: impl Into<PathBuf>, contents: FileContents, mode: u32) {
        self.steps.push(Step::Write { path: path.into(), contents, mode });
    }
}

impl Step {
    /// Performs the step, every process through `runner`; their output goes to standard error.
    pub fn perform(&self, runner: &dyn Runner) -> Result<()> {
        match self {
            Step::Run(command) => runner.run(command, &mut |line| eprintln!("{line}")),
            Step::Write { path, contents, mode } => write_atomically(path, contents.bytes(), *mode),
            Step::Capture { command, path, mode } => {
                let output = runner.read(command)?;
                write_atomically(path, format!("{output}\n").as_bytes(), *mode)
            }
            Step::WaitFor { command, seconds } => wait_for(runner, command, *seconds),
        }
    }
}

/// What every task's plan is: data, built once from inputs read once, that prints as what it
/// will do and runs exactly that. [`show_or_run`] is the one place that does either.
pub trait TaskPlan: fmt::Display {
    /// What running it gives back (a build's images, a release's outcome).
    type Output;

    /// Runs it, every process through `runner`.
    fn execute(&self, runner: &dyn Runner) -> Result<Self::Output>;
}

impl TaskPlan for Plan {
    type Output = ();

    /// Runs every step in order, stopping at the first failure (after the recovery, if any).
    fn execute(&self, runner: &dyn Runner) -> Result<()> {
        self.execute_with(|step| step.perform(runner)).map_err(Failure::into_error)
    }
}

/// A dry run prints `plan` to standard output and runs nothing; otherwise `plan` runs.
pub fn show_or_run<P: TaskPlan>(plan: &P, dry_run: bool, runner: &dyn Runner) -> Result<Option<P::Output>> {
    if dry_run {
        print!("{plan}");
        return Ok(None);
    }
    plan.execute(runner).map(Some)
}

impl<S: fmt::Display> fmt::Display for Plan<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let numbered = |f: &mut fmt::Formatter<'_>, steps: &[S]| {
            steps.iter().enumerate().try_for_each(|(index, step)| writeln!(f, "{:>3}. {step}", index + 1))
        };
        numbered(f, &self.steps)?;
        if let Some(recovery) = &self.recovery {
            writeln!(f, "if step {} or a later one fails:", recovery.from + 1)?;
            numbered(f, &recovery.steps)?;
        }
        Ok(())
    }
}

/// Reruns `command` every half second until it succeeds; after `seconds`, runs it once more
/// with its output shown, so the failure explains itself.
fn wait_for(runner: &dyn Runner, command: &Command, seconds: u64) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if runner.read(command).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    runner.run(command, &mut |line| eprintln!("{line}")).with_context(|| format!("still failing after {seconds} s"))
}

/// Writes `bytes` to `path` so that readers see either the old file or the complete new one:
/// a temporary file in the same directory, created with `mode`, synced, then renamed.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    let file_name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let temporary = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)
            .with_context(|| format!("cannot create {}", temporary.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        std::fs::rename(&temporary, path).with_context(|| format!("cannot replace {}", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_show_their_name_only() {
        let secret = Secret::new("NEXUS_PASSWORD", "hunter2-canary");
        let command = Command::new("docker").args(["login", "--password-stdin", "r:5000"]).stdin(secret.clone());
        let mut plan = Plan::default();
        plan.run(command.clone());
        plan.write("/tmp/x/credentials", FileContents::Secret(secret.clone()), 0o600);
        let shown = format!("{plan}{plan:?}{command:?}");
        assert!(!shown.contains("hunter2-canary"), "{shown}");
        assert!(shown.contains("< <NEXUS_PASSWORD>"), "{shown}");
    }

    #[test]
    fn a_plan_runs_exactly_the_commands_it_shows() {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = Plan::default();
        plan.run(Command::new("docker").args(["pull", "a b"]).current_dir("/src"));
        plan.write(dir.path().join("lab.env"), FileContents::Secret(Secret::new("lab.env", "K=v")), 0o600);
        plan.steps.push(Step::Capture { command: Command::new("date"), path: dir.path().join("date"), mode: 0o644 });
        plan.steps.push(Step::WaitFor { command: Command::new("curl").arg("http://127.0.0.1:5000/v2/"), seconds: 5 });
        let runner = runner::Recording::new();
        plan.execute(&runner).unwrap();
        let commands: Vec<String> = plan
            .steps
            .iter()
            .filter_map(|step| match step {
                Step::Run(command) | Step::Capture { command, .. } | Step::WaitFor { command, .. } => {
                    Some(command.to_string())
                }
                Step::Write { .. } => None,
            })
            .collect();
        assert_eq!(runner.executed(), commands);
        assert!(plan.to_string().contains("cd /src && docker pull 'a b'"), "{plan}");
        assert_eq!(std::fs::read_to_string(dir.path().join("lab.env")).unwrap(), "K=v");
    }

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let command = Command::new("docker").args(["run", "--label", "a b", "it's"]).env("DOCKER_BUILDKIT", "1");
        assert_eq!(command.to_string(), r"DOCKER_BUILDKIT=1 docker run --label 'a b' 'it'\''s'");
    }

    #[test]
    fn atomic_write_replaces_whole_file_with_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/file.env");
        write_atomically(&path, b"one", 0o600).unwrap();
        write_atomically(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file left");
    }
}
