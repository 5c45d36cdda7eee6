//! The runner: the one place that starts external processes. Every task hands its plan a
//! [`Runner`]; the plan's steps ask it to run commands, read their output or connect them in a
//! pipe, and never start a process themselves.
//!
//! [`Processes`] is the real one. It takes argv only (a [`Command`] is a program and its
//! arguments, never a shell string); sets and removes the environment variables each command
//! names (compose commands run without the variables `.env` defines, so the deployment is
//! exactly what `.env` says); hands secrets to standard input; streams each output line to the
//! caller (a progress display, a log file); keeps the last lines for the error when a command
//! fails; tells a watcher which processes are running (the deploy lock records them, so that a
//! successor taking over a stale lock can wait for them); and kills what runs when the plan is
//! cancelled. It uses duct, which gives the pids, the line stream and the pipes between processes
//! that this needs; a command whose output is only read runs as a standard library child that
//! `shared_child` lets one thread wait on while another may kill it.
//!
//! `Recording` (tests only) runs nothing: it records what would run, in order, and answers
//! from a script, so unit tests can execute plans (recovery branches, schedules, orders).

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};

use crate::plan::Command;

/// How many of a failed command's last output lines its error keeps.
const TAIL_LINES: usize = 25;

/// Commands connected output to input (`a | b`), the first reading a file, the last writing one
/// (created with mode 0600: pipes here carry database dumps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pipe {
    pub commands: Vec<Command>,
    pub input: Option<PathBuf>,
    pub output: Option<PathBuf>,
}

impl fmt::Display for Pipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let commands: Vec<String> = self.commands.iter().map(Command::to_string).collect();
        write!(f, "{}", commands.join(" | "))?;
        if let Some(input) = &self.input {
            write!(f, " < {}", input.display())?;
        }
        if let Some(output) = &self.output {
            write!(f, " > {} (mode 600)", output.display())?;
        }
        Ok(())
    }
}

/// How a command ended, and its standard output and error, as [`Runner::output`] gives them.
#[derive(Clone, Debug)]
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Told the pids of the processes a runner has running, whenever that set changes.
pub type Watcher = Box<dyn Fn(&[u32]) + Send + Sync>;

/// What a plan's steps may ask of the outside world's processes.
pub trait Runner: Sync {
    /// Runs `command` to its end; each line of its output (standard output and error together)
    /// goes to `output`. A failure names the command's hint and keeps its last output lines.
    fn run(&self, command: &Command, output: &mut dyn FnMut(&str)) -> Result<()>;

    /// Runs `command` and returns its standard output, trimmed; its standard error goes into
    /// the error when it fails.
    fn read(&self, command: &Command) -> Result<String>;

    /// Runs `command` to its end and returns how it ended and everything it printed, failing only
    /// when it cannot be started: for programs whose failure is an answer to read (a docker
    /// credential helper says "credentials not found" on standard output and exits non-zero).
    fn output(&self, command: &Command) -> Result<Finished> {
        self.start(command)?.finish()
    }

    /// Starts `command` and returns at once, so that this thread can do other work while it
    /// runs (read files, start other commands); [`Started::finish`] waits for its end and gives
    /// what [`Runner::output`] gives.
    fn start(&self, command: &Command) -> Result<Started<'_>>;

    /// Runs the commands of `pipe` connected, to the end of the last one.
    fn pipe(&self, pipe: &Pipe) -> Result<()> {
        self.pipe_counting(pipe, &|_| {})
    }

    /// [`Runner::pipe`], telling `moved` how many bytes have gone through the pipe's file so
    /// far (read from its input file, or else written to its output file) as they go.
    fn pipe_counting(&self, pipe: &Pipe, moved: &(dyn Fn(u64) + Sync)) -> Result<()>;

    /// Kills every process this runner has running now (another part of the plan failed).
    fn cancel(&self);

    /// Sets (or, with `None`, clears) who is told the running processes' pids.
    fn watch(&self, watcher: Option<Watcher>);
}

/// A command that [`Runner::start`] started. Dropped before [`Started::finish`] (an error came
/// first), it is waited for all the same: no process outlives its plan unseen.
pub struct Started<'a> {
    finish: Option<Box<dyn FnOnce() -> Result<Finished> + 'a>>,
}

impl<'a> Started<'a> {
    fn new(finish: impl FnOnce() -> Result<Finished> + 'a) -> Started<'a> {
        Started { finish: Some(Box::new(finish)) }
    }

    /// Waits for the command's end: how it ended and everything it printed.
    pub fn finish(mut self) -> Result<Finished> {
        // Only this and the drop take it, and this consumes the command.
        let finish = self.finish.take().expect("a started command is finished once");
        finish()
    }
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        if let Some(finish) = self.finish.take() {
            let _ = finish();
        }
    }
}

/// The real runner: operating system processes.
#[derive(Default)]
pub struct Processes {
    state: Mutex<Running>,
}

#[derive(Default)]
struct Running {
    handles: Vec<Arc<duct::ReaderHandle>>,
    pipes: Vec<Arc<duct::Handle>>,
    children: Vec<Arc<shared_child::SharedChild>>,
    watcher: Option<Watcher>,
}

impl Running {
    fn changed(&self) {
        if let Some(watcher) = &self.watcher {
            let pids: Vec<u32> = self
                .handles
                .iter()
                .flat_map(|handle| handle.pids())
                .chain(self.pipes.iter().flat_map(|handle| handle.pids()))
                .chain(self.children.iter().map(|child| child.id()))
                .collect();
            watcher(&pids);
        }
    }
}

impl Processes {
    pub fn new() -> Processes {
        Processes::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Running> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `command` as a duct expression, its standard input not yet decided.
    fn expression(command: &Command) -> duct::Expression {
        // duct gives the child this process's environment; the hook, which runs last, changes
        // it as the command says (and the rest that `configure` sets).
        let settings = Command { stdin: None, ..command.clone() };
        // As a string: duct takes a `Path` for a file and runs a bare name as `./name`.
        duct::cmd(executable(command).into_os_string(), &command.args).before_spawn(move |child| {
            configure(child, &settings);
            Ok(())
        })
    }

    /// `command` as a standard library command, its standard streams not yet decided.
    fn std_command(command: &Command) -> std::process::Command {
        let mut child = std::process::Command::new(executable(command));
        child.args(&command.args);
        configure(&mut child, command);
        child
    }

    /// `command` as a duct expression reading its secret, or nothing, on standard input.
    fn alone(command: &Command) -> duct::Expression {
        let expression = Processes::expression(command);
        match &command.stdin {
            Some(secret) => expression.stdin_bytes(secret.expose().as_bytes().to_vec()),
            None => expression.stdin_null(),
        }
    }

    fn failure(command: &Command, status: Option<std::process::ExitStatus>) -> String {
        let status = status.map_or_else(|| "killed".to_string(), |status| status.to_string());
        if command.hint.is_empty() {
            format!("`{command}` failed ({status})")
        } else {
            format!("{} ({status})", command.hint)
        }
    }
}

/// The file `command` runs: a program named by a path as this process's directory resolves it
/// (not the command's own `dir`), a bare name where the child's `PATH` finds it, else the bare
/// name, which the child then looks for itself.
fn executable(command: &Command) -> PathBuf {
    if command.program.contains('/') {
        return std::path::absolute(&command.program).unwrap_or_else(|_| command.program.clone().into());
    }
    program_path(command).unwrap_or_else(|| command.program.clone().into())
}

/// Sets on `child` what `command` says besides its program, arguments and standard streams.
fn configure(child: &mut std::process::Command, command: &Command) {
    // The child still sees the name the plan gives as its argv[0] (a multi-call binary such as
    // busybox tells its tools apart by it), and errors keep naming it.
    std::os::unix::process::CommandExt::arg0(child, &command.program);
    // The variables removed go first, so that one both removed (every `.env` key, for compose)
    // and set (`IMAGE_TAG` of the tag to pull) is set.
    for key in &command.env_remove {
        child.env_remove(key);
    }
    for (key, value) in &command.env {
        child.env(key, value);
    }
    if let Some(dir) = &command.dir {
        child.current_dir(dir);
    }
}

/// Where the child's `PATH` finds `command`'s program, when it is a bare name (`git`) and the
/// child inherits `PATH` or is given one; `None` leaves the search to the child.
///
/// duct hands every child its whole environment, `PATH` included, and for a bare name with a
/// `PATH` of its own the standard library cannot use `posix_spawn` (the search must happen
/// with the child's `PATH`), so it forks: it copies the page tables of this process, with
/// all its threads, for each command, and forks from several threads at once wait on each
/// other's memory lock. With the path found here it spawns without copying (measured on
/// `tags`, which starts four git processes at once: see the README's Image tags).
fn program_path(command: &Command) -> Option<PathBuf> {
    if command.program.contains('/') || command.env_remove.iter().any(|key| key == "PATH") {
        return None;
    }
    let set = command.env.iter().rev().find(|(key, _)| key == "PATH").map(|(_, value)| value.into());
    let path = set.or_else(|| std::env::var_os("PATH"))?;
    for dir in std::env::split_paths(&path) {
        // A relative entry (an empty one is the current directory) means the child's own
        // directory, which may not be this process's: from there on the child searches.
        if dir.is_relative() {
            return None;
        }
        // As execvp: the first regular file that may be executed.
        let candidate = dir.join(&command.program);
        let executable = |meta: std::fs::Metadata| {
            use std::os::unix::fs::PermissionsExt;
            meta.is_file() && meta.permissions().mode() & 0o111 != 0
        };
        if std::fs::metadata(&candidate).is_ok_and(executable) {
            return Some(candidate);
        }
    }
    None
}

impl Runner for Processes {
    fn run(&self, command: &Command, output: &mut dyn FnMut(&str)) -> Result<()> {
        let expression = Processes::alone(command).stderr_to_stdout().unchecked();
        let handle = Arc::new(
            expression.reader().with_context(|| format!("cannot start {}: is it installed?", command.program))?,
        );
        {
            let mut state = self.state();
            state.handles.push(Arc::clone(&handle));
            state.changed();
        }
        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        for line in BufReader::new(&*handle).lines() {
            let line = line.unwrap_or_default();
            output(&line);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        let status = handle.try_wait().ok().flatten().map(|output| output.status);
        {
            let mut state = self.state();
            state.handles.retain(|other| !Arc::ptr_eq(other, &handle));
            state.changed();
        }
        match status {
            Some(status) if status.success() => Ok(()),
            status => {
                let tail: Vec<String> = tail.into_iter().filter(|line| !line.trim().is_empty()).collect();
                let error = Processes::failure(command, status);
                if tail.is_empty() { Err(anyhow!(error)) } else { Err(anyhow!("{}", tail.join("\n")).context(error)) }
            }
        }
    }

    fn read(&self, command: &Command) -> Result<String> {
        let finished = self.output(command)?;
        if !finished.status.success() {
            let last = finished.stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("").trim();
            let error = Processes::failure(command, Some(finished.status));
            if last.is_empty() {
                bail!("{error}");
            }
            bail!("{error}: {last}");
        }
        Ok(finished.stdout.trim().to_string())
    }

    fn start(&self, command: &Command) -> Result<Started<'_>> {
        // No duct here: its capture starts a thread per stream, and `tags`, whose one process is
        // a `git status`, spent more time starting those than reading. The standard library's
        // child is shared so that `cancel` can kill it while another thread reads and waits.
        use std::process::Stdio;
        let mut child = Processes::std_command(command);
        let stdin = if command.stdin.is_some() { Stdio::piped() } else { Stdio::null() };
        child.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = Arc::new(
            shared_child::SharedChild::spawn(&mut child)
                .with_context(|| format!("cannot start {}: is it installed?", command.program))?,
        );
        {
            let mut state = self.state();
            state.children.push(Arc::clone(&child));
            state.changed();
        }
        let (stdin, stdout, stderr) = (child.take_stdin(), child.take_stdout(), child.take_stderr());
        // The secret is written and standard error read on threads of their own from the start,
        // standard output when finishing: a child that fills one pipe while nobody reads it
        // waits, and one waiting on a pipe this process reads only after another would wait
        // forever.
        let feeding = match (stdin, command.stdin.clone()) {
            // A child that exits without reading it breaks the pipe: its status says why.
            (Some(mut stdin), Some(secret)) => {
                Some(std::thread::spawn(move || drop(stdin.write_all(secret.expose().as_bytes()))))
            }
            _ => None,
        };
        let errors = std::thread::spawn(move || read_to_end(stderr));
        let program = command.program.clone();
        Ok(Started::new(move || {
            let stdout = read_to_end(stdout);
            let stderr = errors.join().expect("the reading thread panicked");
            if let Some(feeding) = feeding {
                let _ = feeding.join();
            }
            let status = child.wait();
            {
                let mut state = self.state();
                state.children.retain(|other| !Arc::ptr_eq(other, &child));
                state.changed();
            }
            let status = status.with_context(|| format!("cannot wait for {program}"))?;
            let text = |read: std::io::Result<Vec<u8>>| -> Result<String> {
                let bytes = read.with_context(|| format!("cannot read the output of {program}"))?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            };
            Ok(Finished { status, stdout: text(stdout)?, stderr: text(stderr)? })
        }))
    }

    fn pipe_counting(&self, pipe: &Pipe, moved: &(dyn Fn(u64) + Sync)) -> Result<()> {
        let mut commands = pipe.commands.iter();
        let first = commands.next().context("a pipe needs a command")?;
        // The files go through this process, in an OS pipe a thread fills or drains, so that
        // the bytes can be counted as they move (a dump of a large database takes minutes).
        let mut input = None;
        // The pipe's input is the first command's: a file, else nothing. The others read the pipe.
        let mut expression = match &pipe.input {
            Some(path) => {
                let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
                let (reader, writer) = std::io::pipe().context("cannot create a pipe")?;
                input = Some((file, writer));
                Processes::expression(first).stdin_file(reader)
            }
            None => Processes::alone(first),
        };
        for command in commands {
            expression = expression.pipe(Processes::expression(command));
        }
        let mut output = None;
        if let Some(path) = &pipe.output {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let (reader, writer) = std::io::pipe().context("cannot create a pipe")?;
            output = Some((reader, file));
            expression = expression.stdout_file(writer);
        }
        let started = expression.start().with_context(|| format!("cannot start `{pipe}`"));
        // The expression holds this process's copies of the pipe ends the children got: closed
        // now, so that a child's exit is an end of file (or a broken pipe) to the copying thread.
        drop(expression);
        let handle = Arc::new(started?);
        {
            let mut state = self.state();
            state.pipes.push(Arc::clone(&handle));
            state.changed();
        }
        // Only one end is counted: what the input file gave, else what the output file got.
        let count_output = input.is_none();
        let copied = std::thread::scope(|scope| {
            let feeding = input.map(|(file, writer)| scope.spawn(move || copy_counting(file, writer, moved)));
            let draining = output.map(|(reader, file)| {
                scope.spawn(move || copy_counting(reader, file, if count_output { moved } else { &|_| {} }))
            });
            let waited = handle.wait().map(|_| ());
            // A child that stopped reading early breaks the feeding pipe: its own exit status says why.
            let _ = feeding.map(|thread| thread.join());
            let drained = draining.map(|thread| thread.join().expect("the copying thread panicked"));
            waited.map_err(anyhow::Error::from).and(drained.unwrap_or(Ok(())))
        });
        {
            let mut state = self.state();
            state.pipes.retain(|other| !Arc::ptr_eq(other, &handle));
            state.changed();
        }
        copied.with_context(|| format!("`{pipe}` failed"))
    }

    fn cancel(&self) {
        let state = self.state();
        for handle in &state.handles {
            let _ = handle.kill();
        }
        for handle in &state.pipes {
            let _ = handle.kill();
        }
        for child in &state.children {
            let _ = child.kill();
        }
    }

    fn watch(&self, watcher: Option<Watcher>) {
        self.state().watcher = watcher;
    }
}

/// Everything `pipe` gives until its end.
fn read_to_end(pipe: Option<impl Read>) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut bytes)?;
    }
    Ok(bytes)
}

/// Copies `from` into `to` to the end, telling `moved` the bytes copied so far.
fn copy_counting(mut from: impl Read, mut to: impl Write, moved: &(dyn Fn(u64) + Sync)) -> Result<()> {
    let mut buffer = vec![0; 256 * 1024];
    let mut total = 0;
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) => return to.flush().context("cannot write the pipe's output"),
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error).context("cannot read the pipe"),
        };
        to.write_all(&buffer[..read]).context("cannot write the pipe")?;
        total += read as u64;
        moved(total);
    }
}

/// How the recording runner answers a command (as shown): its output, or the error it fails with.
#[cfg(test)]
type Reply = Box<dyn Fn(&str) -> std::result::Result<String, String> + Send + Sync>;

/// A runner that runs nothing: it records each command (as it would print) in order, and
/// answers from a script.
#[cfg(test)]
pub struct Recording {
    executed: Mutex<Vec<String>>,
    reply: Reply,
}

#[cfg(test)]
impl Recording {
    /// Every command succeeds with no output.
    pub fn new() -> Recording {
        Recording::replying(|_| Ok(String::new()))
    }

    /// Each command (as shown) gets `reply`'s answer: its output, or the error it fails with.
    pub fn replying(reply: impl Fn(&str) -> std::result::Result<String, String> + Send + Sync + 'static) -> Recording {
        Recording { executed: Mutex::new(Vec::new()), reply: Box::new(reply) }
    }

    /// What ran, in order.
    pub fn executed(&self) -> Vec<String> {
        self.executed.lock().unwrap().clone()
    }

    /// Asserts that every command that ran appears in `shown` (a printed plan), in the order
    /// they ran: what a dry run shows is what runs.
    pub fn assert_ran_as_shown(&self, shown: &str) {
        let mut rest = shown;
        for command in self.executed() {
            match rest.find(&command) {
                Some(at) => rest = &rest[at + command.len()..],
                None => panic!("`{command}` ran, but the plan does not show it there:\n{shown}"),
            }
        }
    }

    fn answer(&self, shown: String) -> Result<String> {
        let reply = (self.reply)(&shown);
        self.executed.lock().unwrap().push(shown);
        reply.map_err(|error| anyhow!(error))
    }
}

#[cfg(test)]
impl Runner for Recording {
    fn run(&self, command: &Command, output: &mut dyn FnMut(&str)) -> Result<()> {
        let text = self.answer(command.to_string())?;
        text.lines().for_each(output);
        Ok(())
    }

    fn read(&self, command: &Command) -> Result<String> {
        self.answer(command.to_string())
    }

    /// Answered, and recorded, when started. The script's output is standard output; an error's
    /// text is standard output too (as a credential helper prints "credentials not found"), with
    /// exit status 1.
    fn start(&self, command: &Command) -> Result<Started<'_>> {
        use std::os::unix::process::ExitStatusExt;
        let shown = command.to_string();
        let reply = (self.reply)(&shown);
        self.executed.lock().unwrap().push(shown);
        let (code, stdout) = match reply {
            Ok(stdout) => (0, stdout),
            Err(stdout) => (1, stdout),
        };
        let finished =
            Finished { status: std::process::ExitStatus::from_raw(code << 8), stdout, stderr: String::new() };
        Ok(Started::new(move || Ok(finished)))
    }

    fn pipe_counting(&self, pipe: &Pipe, _: &(dyn Fn(u64) + Sync)) -> Result<()> {
        self.answer(pipe.to_string()).map(|_| ())
    }

    fn cancel(&self) {}

    fn watch(&self, _: Option<Watcher>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Secret;

    #[test]
    fn output_streams_line_by_line_and_a_failure_keeps_the_last_lines() {
        let runner = Processes::new();
        let mut lines = Vec::new();
        let printf = Command::new("printf").arg("one\\ntwo\\n");
        runner.run(&printf, &mut |line| lines.push(line.to_string())).unwrap();
        assert_eq!(lines, ["one", "two"]);
        let failing = Command::new("ls").arg("/no/such/path").hint("listing failed: check the path");
        let error = format!("{:#}", runner.run(&failing, &mut |_| {}).unwrap_err());
        assert!(error.starts_with("listing failed: check the path (exit status: 2): "), "{error}");
        assert!(error.contains("/no/such/path"), "{error}");
    }

    #[test]
    fn a_bare_program_name_is_found_on_the_path_the_child_gets() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (plain, tools) = (dir.path().join("plain"), dir.path().join("tools"));
        for (dir, mode) in [(&plain, 0o644), (&tools, 0o755)] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("tool"), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(dir.join("tool"), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let path = format!("{}:{}", plain.display(), tools.display());
        let tool = Command::new("tool").env("PATH", path.as_str());
        // A file that may not be executed is passed over, as execvp does.
        assert_eq!(program_path(&tool), Some(tools.join("tool")));
        assert_eq!(program_path(&Command::new("tool").env("PATH", "/no/such/dir")), None);
        // A relative entry means the child's directory: the child searches from there on.
        assert_eq!(program_path(&Command::new("tool").env("PATH", format!("bin:{path}"))), None);
        assert_eq!(program_path(&tool.clone().env_remove("PATH".to_string())), None);
        assert_eq!(program_path(&Command::new("./tool").env("PATH", path.as_str())), None);
        // The inherited PATH finds what the shell would.
        assert!(program_path(&Command::new("cat")).is_some_and(|found| found.is_absolute() && found.ends_with("cat")));
    }

    #[test]
    fn a_child_found_on_the_path_keeps_its_name_as_argv0() {
        let cmdline = Processes::new().read(&Command::new("cat").arg("/proc/self/cmdline")).unwrap();
        assert_eq!(cmdline, "cat\0/proc/self/cmdline\0");
    }

    #[test]
    fn environment_is_set_and_removed_and_secrets_go_to_standard_input() {
        let runner = Processes::new();
        // SAFETY: tests in this process read but never write this variable.
        let inherited = std::env::var("PATH").unwrap();
        let env = Command::new("env")
            .env("XTASK_RUNNER_TEST", "set")
            .env_remove("PATH".to_string())
            .env_remove("HOME".to_string())
            .env("HOME", "/set-after-removing");
        let mut streamed = Vec::new();
        runner.run(&env, &mut |line| streamed.push(line.to_string())).unwrap();
        // Reads and streamed commands start their processes in different ways.
        for shown in [runner.read(&env).unwrap(), streamed.join("\n")] {
            assert!(shown.lines().any(|line| line == "XTASK_RUNNER_TEST=set"), "{shown}");
            assert!(shown.lines().any(|line| line == "HOME=/set-after-removing"), "a variable set wins: {shown}");
            assert!(!shown.contains(&inherited), "PATH was removed: {shown}");
        }
        let cat = Command::new("cat").stdin(Secret::new("TOKEN", "s3cret-canary"));
        assert_eq!(runner.read(&cat).unwrap(), "s3cret-canary");
        assert!(!cat.to_string().contains("s3cret-canary"));
    }

    #[test]
    fn pipes_connect_files_and_the_output_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (input, output) = (dir.path().join("in"), dir.path().join("out"));
        std::fs::write(&input, "b\na\n").unwrap();
        let pipe = Pipe {
            commands: vec![Command::new("sort"), Command::new("tr").args(["a-z", "A-Z"])],
            input: Some(input.clone()),
            output: Some(output.clone()),
        };
        Processes::new().pipe(&pipe).unwrap();
        assert_eq!(std::fs::read_to_string(&output).unwrap(), "A\nB\n");
        assert_eq!(std::fs::metadata(&output).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            pipe.to_string(),
            format!("sort | tr a-z A-Z < {} > {} (mode 600)", input.display(), output.display())
        );
        let broken = Pipe { commands: vec![Command::new("false"), Command::new("cat")], input: None, output: None };
        assert!(Processes::new().pipe(&broken).is_err());
    }

    #[test]
    fn a_pipe_counts_the_bytes_of_its_file_and_a_child_that_stops_reading_fails_it() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let (input, output) = (dir.path().join("in"), dir.path().join("out"));
        std::fs::write(&input, vec![b'x'; 3 * 1024 * 1024 + 7]).unwrap();
        let counted = AtomicU64::new(0);
        let count = |bytes| counted.store(bytes, Ordering::Relaxed);
        let compressed = dir.path().join("in.gz");
        let read = Pipe {
            commands: vec![Command::new("gzip").arg("-c")],
            input: Some(input.clone()),
            output: Some(compressed.clone()),
        };
        Processes::new().pipe_counting(&read, &count).unwrap();
        assert_eq!(counted.load(Ordering::Relaxed), 3 * 1024 * 1024 + 7, "the input file's bytes, not the output's");
        assert!(std::fs::metadata(&compressed).unwrap().len() > 0);
        let write = Pipe {
            commands: vec![Command::new("head").args(["-c", "1000000", "/dev/zero"])],
            input: None,
            output: Some(output.clone()),
        };
        Processes::new().pipe_counting(&write, &count).unwrap();
        assert_eq!(counted.load(Ordering::Relaxed), 1_000_000, "the output file's bytes");
        assert_eq!(std::fs::metadata(&output).unwrap().len(), 1_000_000);
        // `head` exits after one line: the feeding thread meets a broken pipe and must not hang.
        let early = Pipe {
            commands: vec![Command::new("head").args(["-c", "1"]), Command::new("false")],
            input: Some(input),
            output: None,
        };
        assert!(Processes::new().pipe_counting(&early, &count).is_err(), "the last command's failure is the pipe's");
    }

    #[test]
    fn the_watcher_sees_running_processes_and_cancel_kills_them() {
        type Sleep = fn(&Processes, &Command) -> Result<()>;
        let streamed: Sleep = |runner, sleep| runner.run(sleep, &mut |_| {});
        let read: Sleep = |runner, sleep| runner.read(sleep).map(drop);
        for (how, sleep) in [("run", streamed), ("read", read)] {
            let runner = Arc::new(Processes::new());
            let seen = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
            let record = Arc::clone(&seen);
            runner.watch(Some(Box::new(move |pids| record.lock().unwrap().push(pids.to_vec()))));
            let started = std::time::Instant::now();
            let sleeper = {
                let runner = Arc::clone(&runner);
                std::thread::spawn(move || sleep(&runner, &Command::new("sleep").arg("30")))
            };
            while seen.lock().unwrap().iter().all(Vec::is_empty) {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            runner.cancel();
            assert!(sleeper.join().unwrap().is_err(), "{how}: a killed command fails");
            assert!(started.elapsed().as_secs() < 20, "{how}: cancel killed the sleep");
            let seen = seen.lock().unwrap();
            assert_eq!(seen.first().map(Vec::len), Some(1), "{how}: {seen:?}");
            assert_eq!(seen.last(), Some(&Vec::new()), "{how}: {seen:?}");
        }
    }

    #[test]
    fn the_recording_runner_records_in_order_and_fails_where_scripted() {
        let runner =
            Recording::replying(|shown| if shown.contains("bad") { Err("no".into()) } else { Ok("out".into()) });
        assert_eq!(runner.read(&Command::new("good")).unwrap(), "out");
        assert!(runner.run(&Command::new("bad"), &mut |_| {}).is_err());
        let failed = runner.output(&Command::new("bad")).unwrap();
        assert_eq!((failed.status.success(), failed.stdout.as_str()), (false, "no"));
        assert_eq!(runner.executed(), ["good", "bad", "bad"]);
    }

    #[test]
    fn output_keeps_both_streams_and_the_status_of_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("present"), "").unwrap();
        let failing = Command::new("ls").args(["present", "absent"]).current_dir(dir.path());
        let finished = Processes::new().output(&failing).unwrap();
        assert_eq!(finished.status.code(), Some(2));
        assert_eq!(finished.stdout, "present\n");
        assert!(finished.stderr.contains("absent"), "{}", finished.stderr);
    }

    #[test]
    fn output_reads_both_streams_to_the_end_however_much_each_holds() {
        // Far more than a pipe holds on each stream, interleaved: reading one to its end before
        // the other would leave the child waiting on the full one.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("present"), vec![b'x'; 300_000]).unwrap();
        let mut names = vec!["present"; 2];
        names.splice(1..1, std::iter::repeat_n("absent", 5_000));
        let cat = Command::new("cat").args(names).current_dir(dir.path());
        let finished = Processes::new().output(&cat).unwrap();
        assert_eq!(finished.stdout.len(), 600_000);
        assert_eq!(finished.stderr.lines().filter(|line| line.contains("absent")).count(), 5_000);
    }

    #[test]
    fn a_started_command_runs_beside_this_thread_and_is_waited_for_even_unfinished() {
        use std::time::{Duration, Instant};
        let runner = Processes::new();
        let seen = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let record = Arc::clone(&seen);
        runner.watch(Some(Box::new(move |pids| record.lock().unwrap().push(pids.to_vec()))));
        let begun = Instant::now();
        let sleep = runner.start(&Command::new("sleep").arg("0.5")).unwrap();
        assert!(begun.elapsed() < Duration::from_millis(400), "start returns before the command ends");
        let echo = runner.start(&Command::new("echo").arg("beside")).unwrap();
        assert_eq!(seen.lock().unwrap().last().map(Vec::len), Some(2), "both run");
        assert_eq!(echo.finish().unwrap().stdout, "beside\n");
        assert!(sleep.finish().unwrap().status.success());
        assert!(begun.elapsed() >= Duration::from_millis(500));
        drop(runner.start(&Command::new("sleep").arg("0.2")).unwrap());
        assert!(begun.elapsed() >= Duration::from_millis(700), "a started command dropped is waited for");
        assert_eq!(seen.lock().unwrap().last(), Some(&Vec::new()), "and no longer counted as running");
    }

    #[test]
    fn a_program_named_by_a_relative_path_is_found_from_this_process_directory() {
        let here = std::env::current_dir().unwrap();
        let tool = Command::new("bin/tool").current_dir("/elsewhere");
        assert_eq!(executable(&tool), here.join("bin/tool"));
        assert_eq!(executable(&Command::new("/usr/bin/env")), PathBuf::from("/usr/bin/env"));
    }
}
