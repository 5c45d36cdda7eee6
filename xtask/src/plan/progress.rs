//! Progress of several long-running processes at once (image builds, pushes).
//!
//! On a terminal each task gets an indicatif spinner showing its current step, elapsed time and
//! state. In CI (`CI` set) or without a terminal, every output line is printed as it comes,
//! prefixed with the task's name, so interleaved logs stay readable.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Where progress goes: bars on a terminal, prefixed lines elsewhere.
pub struct Progress {
    bars: Option<MultiProgress>,
    width: usize,
}

impl Progress {
    /// Bars when standard error is a terminal and `CI` is unset; `quiet` shows nothing live
    /// (for `--json`, whose reader wants one document, not a log).
    pub fn new(names: &[&str], quiet: bool) -> Progress {
        let interactive = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let width = names.iter().map(|name| name.len()).max().unwrap_or(0);
        let bars = (interactive && !quiet).then(MultiProgress::new);
        Progress { bars, width: if quiet { usize::MAX } else { width } }
    }

    /// A line for one task.
    pub fn task(&self, name: &str) -> TaskProgress {
        let bar = self.bars.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix:<width$} {elapsed:>4} {wide_msg}"
                        .replace("width", &self.width.to_string())
                        .as_str(),
                )
                .expect("the template is valid"),
            );
            bar.set_prefix(name.to_string());
            bar.set_message("waiting");
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        TaskProgress { name: name.to_string(), bar, width: self.width }
    }
}

/// The progress of one task.
pub struct TaskProgress {
    name: String,
    bar: Option<ProgressBar>,
    width: usize,
}

impl TaskProgress {
    /// One line of the task's output. A bar shows BuildKit's step headers (`#7 [builder 3/6] RUN
    /// ...`) and other short news; plain mode prints every line.
    pub fn line(&self, line: &str) {
        match &self.bar {
            Some(bar) => {
                if is_step_header(line) || !line.starts_with('#') {
                    bar.set_message(line.trim().to_string());
                }
            }
            None if self.width == usize::MAX => {}
            None => eprintln!("{:<width$} | {line}", self.name, width = self.width),
        }
    }

    /// Marks the task finished with `state` (built, skipped, failed, ...).
    pub fn finish(&self, state: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(state.to_string()),
            None => self.line(&format!("== {state}")),
        }
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
}
