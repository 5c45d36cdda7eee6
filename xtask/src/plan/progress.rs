//! Progress of several long-running processes at once (image builds, pushes, the services of a
//! deploy).
//!
//! On a terminal each task gets an indicatif line showing its state (waiting, building,
//! pushing, tagging, then built/cached/failed...), its elapsed time since it started and its
//! current step (the last BuildKit step header or other short news). In CI (`CI` set) or
//! without a terminal, every output line is printed as it comes, prefixed with the task's
//! name, so interleaved logs stay readable. Quiet (`--json`) shows nothing live. Colours follow
//! `NO_COLOR` and `TERM=dumb`. Nothing here runs a process.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Display {
    /// One live line per task, redrawn in place.
    Bars { colour: bool },
    /// Every output line, prefixed with the task's name.
    Lines,
    /// Nothing: the caller prints one document at the end (`--json`).
    Quiet,
}

impl Display {
    /// Bars only on a terminal outside CI; CI logs are files, where redrawn lines are noise.
    fn choose(quiet: bool, terminal: bool, ci: bool, colour: bool) -> Display {
        match (quiet, terminal && !ci) {
            (true, _) => Display::Quiet,
            (false, true) => Display::Bars { colour },
            (false, false) => Display::Lines,
        }
    }

    /// From this process's standard error and environment.
    fn detect(quiet: bool) -> Display {
        let set = |key: &str| std::env::var_os(key).is_some_and(|value| !value.is_empty());
        // https://no-color.org: a non-empty NO_COLOR turns colour off; so does a dumb terminal.
        let colour = !set("NO_COLOR") && !std::env::var("TERM").is_ok_and(|term| term == "dumb");
        Display::choose(quiet, std::io::stderr().is_terminal(), std::env::var_os("CI").is_some(), colour)
    }
}

/// Where progress goes, for a set of tasks named up front (the names set the column width).
pub struct Progress {
    display: Display,
    bars: Option<MultiProgress>,
    width: usize,
}

impl Progress {
    /// Bars when standard error is a terminal and `CI` is unset; `quiet` shows nothing live
    /// (for `--json`, whose reader wants one document, not a log).
    pub fn new(names: &[&str], quiet: bool) -> Progress {
        Progress::with_display(names, Display::detect(quiet))
    }

    fn with_display(names: &[&str], display: Display) -> Progress {
        let width = names.iter().map(|name| name.len()).max().unwrap_or(0);
        let bars = matches!(display, Display::Bars { .. }).then(MultiProgress::new);
        Progress { display, bars, width }
    }

    /// Whether tasks are drawn as live lines (a terminal outside CI).
    pub fn is_live(&self) -> bool {
        self.bars.is_some()
    }

    /// A message of its own (a note, a result): above the live lines on a terminal, so that
    /// redrawing does not overwrite it; else on standard error.
    pub fn println(&self, message: &str) {
        match &self.bars {
            Some(multi) => multi.suspend(|| eprintln!("{message}")),
            None if self.display == Display::Quiet => {}
            None => eprintln!("{message}"),
        }
    }

    /// A line for one task.
    pub fn task(&self, name: &str) -> TaskProgress {
        let colour = matches!(self.display, Display::Bars { colour: true });
        let bar = self.bars.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(bar_style(self.width, colour, Phase::Running));
            bar.set_prefix(name.to_string());
            bar.set_message(format!("{:<STATE_WIDTH$}", "waiting"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        TaskProgress {
            name: name.to_string(),
            display: self.display,
            bar,
            width: self.width,
            colour,
            status: Mutex::new(Status { state: "waiting", started: None }),
        }
    }
}

/// Room for the longest state word, so the steps of all tasks start in one column.
const STATE_WIDTH: usize = 9;

/// Whether a task is still going or has finished well or badly: each has its own look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Succeeded,
    Failed,
}

/// The indicatif style of a task's line. indicatif templates take a literal width after the
/// colon (`{prefix:8}`), not a format-string parameter, so the width is written in.
fn bar_style(width: usize, colour: bool, phase: Phase) -> ProgressStyle {
    // A placeholder is `{key:WIDTH.style}`; the style only when colour is on.
    let field = |key: &str, width: &str, style: &str| {
        let style = if colour { format!(".{style}") } else { String::new() };
        format!("{{{key}:{width}{style}}}")
    };
    let (lead, message) = match phase {
        Phase::Running => (field("spinner", "", "cyan"), field("wide_msg", "", "dim")),
        Phase::Succeeded => ("✔".to_string(), field("wide_msg", "", "green")),
        Phase::Failed => ("✘".to_string(), field("wide_msg", "", "red")),
    };
    let template = format!(
        "{lead} {} {} {message}",
        field("prefix", &width.to_string(), "bold"),
        field("elapsed_precise", "", "dim")
    );
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|error| panic!("progress template {template:?} is invalid: {error:?}"))
}

/// What a task is doing and since when.
struct Status {
    state: &'static str,
    started: Option<Instant>,
}

/// The progress of one task.
pub struct TaskProgress {
    name: String,
    display: Display,
    bar: Option<ProgressBar>,
    width: usize,
    colour: bool,
    status: Mutex<Status>,
}

impl TaskProgress {
    /// One line of the task's output. The first one starts the task's clock. A bar shows the
    /// state the line implies and the line itself when it is news (BuildKit step headers, not
    /// their output); plain mode prints every line.
    pub fn line(&self, line: &str) {
        let mut status = self.status.lock().expect("progress status lock");
        if status.started.is_none() {
            status.started = Some(Instant::now());
            if let Some(bar) = &self.bar {
                bar.reset_elapsed();
            }
        }
        status.state = state_after(status.state, line);
        match (&self.bar, self.display) {
            (Some(bar), _) => {
                if let Some(step) = step_shown(line) {
                    bar.set_message(format!("{:<STATE_WIDTH$} {step}", status.state));
                }
            }
            (None, Display::Lines) => eprintln!("{:<width$} | {line}", self.name, width = self.width),
            (None, _) => {}
        }
    }

    /// Sets what a live line shows: `state` and `detail`, for tasks whose news the caller reads
    /// from output it understands (compose's lines, health checks). The first call starts the
    /// task's clock. Plain mode prints each change, since a log has no line to redraw.
    pub fn set(&self, state: &str, detail: &str) {
        let mut status = self.status.lock().expect("progress status lock");
        if status.started.is_none() {
            status.started = Some(Instant::now());
            if let Some(bar) = &self.bar {
                bar.reset_elapsed();
            }
        }
        let shown = format!("{state:<STATE_WIDTH$} {detail}");
        match (&self.bar, self.display) {
            (Some(bar), _) => bar.set_message(shown),
            (None, Display::Lines) => eprintln!("{:<width$} | {}", self.name, shown.trim_end(), width = self.width),
            (None, _) => {}
        }
    }

    /// Marks the task finished with `state` (built, cached, skipped, failed, cancelled).
    pub fn finish(&self, state: &str) {
        let elapsed = self.status.lock().expect("progress status lock").started.map(|started| started.elapsed());
        match (&self.bar, self.display) {
            (Some(bar), _) => {
                let phase = if matches!(state, "failed" | "cancelled") { Phase::Failed } else { Phase::Succeeded };
                bar.set_style(bar_style(self.width, self.colour, phase));
                bar.finish_with_message(state.to_string());
            }
            (None, Display::Lines) => {
                let took = elapsed.map(|elapsed| format!(" in {:.1} s", elapsed.as_secs_f64())).unwrap_or_default();
                eprintln!("{:<width$} | == {state}{took}", self.name, width = self.width);
            }
            (None, _) => {}
        }
    }
}

/// The state a task is in after `line`, from the tools' own words: BuildKit's numbered steps,
/// docker push's first line, the registry retags' `tag ...` lines.
fn state_after(state: &'static str, line: &str) -> &'static str {
    if line.starts_with('#') {
        "building"
    } else if line.starts_with("The push refers to repository") {
        "pushing"
    } else if line.starts_with("tag ") {
        "tagging"
    } else if state == "waiting" {
        "running"
    } else {
        state
    }
}

/// What a bar shows of `line`, if anything: a BuildKit step header without its number, any
/// other line that is not BuildKit step output or blank.
fn step_shown(line: &str) -> Option<&str> {
    if is_step_header(line) {
        line.split_once(' ').map(|(_, step)| step.trim())
    } else if line.starts_with('#') {
        None
    } else {
        Some(line.trim()).filter(|line| !line.is_empty())
    }
}

/// A BuildKit plain-progress line that starts a step: `#12 [backend 4/9] COPY ...`.
pub fn is_step_header(line: &str) -> bool {
    line.strip_prefix('#')
        .and_then(|rest| rest.split_once(' '))
        .is_some_and(|(number, rest)| number.chars().all(|c| c.is_ascii_digit()) && rest.starts_with('['))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_headers() {
        assert!(is_step_header("#12 [builder 3/6] RUN pip install poetry"));
        assert!(!is_step_header("#12 0.512 Collecting poetry"));
        assert!(!is_step_header("#12 DONE 0.1s"));
        assert!(!is_step_header("Successfully tagged x"));
    }

    #[test]
    fn every_style_is_a_valid_template_at_every_width() {
        // The panic this guards against: a `{prefix:<8$}` template is refused by indicatif.
        for width in [0, 1, 8, 40] {
            for colour in [true, false] {
                for phase in [Phase::Running, Phase::Succeeded, Phase::Failed] {
                    bar_style(width, colour, phase);
                }
            }
        }
    }

    #[test]
    fn the_display_follows_the_terminal_ci_and_json() {
        assert_eq!(Display::choose(false, true, false, true), Display::Bars { colour: true });
        assert_eq!(Display::choose(false, true, false, false), Display::Bars { colour: false });
        assert_eq!(Display::choose(false, true, true, true), Display::Lines, "CI logs get plain lines");
        assert_eq!(Display::choose(false, false, false, true), Display::Lines, "no terminal, plain lines");
        assert_eq!(Display::choose(true, true, false, true), Display::Quiet, "--json shows nothing live");
        assert_eq!(Display::choose(true, false, true, true), Display::Quiet);
    }

    #[test]
    fn the_state_follows_the_output() {
        let mut state = "waiting";
        for (line, expected) in [
            ("started", "running"),
            ("#1 [internal] load build definition from Dockerfile", "building"),
            ("#7 [builder 3/6] RUN pip install poetry", "building"),
            ("The push refers to repository [127.0.0.1:5000/intric/backend]", "pushing"),
            ("5f70bf18a086: Pushed", "pushing"),
            ("tag intric/backend:dev-latest -> sha256:abc", "tagging"),
        ] {
            state = state_after(state, line);
            assert_eq!(state, expected, "after {line:?}");
        }
    }

    #[test]
    fn bars_show_step_headers_and_news_but_not_step_output() {
        assert_eq!(step_shown("#7 [builder 3/6] RUN pip install poetry"), Some("[builder 3/6] RUN pip install poetry"));
        assert_eq!(step_shown("#7 12.3 Collecting poetry"), None);
        assert_eq!(step_shown("#7 DONE 0.1s"), None);
        assert_eq!(step_shown("5f70bf18a086: Pushed "), Some("5f70bf18a086: Pushed"));
        assert_eq!(step_shown("  "), None);
    }
}
