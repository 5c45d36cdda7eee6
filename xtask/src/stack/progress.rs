//! What deploy, update, rollback, backup and restore show while they run. On a terminal: one
//! live line for the current step (`step 3/6`, what it does) and one per service with its state
//! as it changes (pulling, pulled, creating, starting, waiting for health, healthy, stopping,
//! replaced), read from compose's own progress lines and from the health checks the update
//! makes, and the bytes a backup writes or a restore reads. In CI or without a terminal: every
//! command as `$ ...` and its output as it comes, plus the health states and byte counts compose
//! does not print, as plain lines. Runs nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::plan::progress::{Progress, TaskProgress};

/// The rows a stack usually has, so that their names line up; others are added as they appear.
const USUAL_ROWS: [&str; 8] = ["step", "db", "redis", "db-init", "backend", "worker", "frontend", "edge"];

/// The live display of one operator task on project `project`.
pub struct StackProgress {
    progress: Progress,
    project: String,
    step: TaskProgress,
    /// Each service's line and the state it shows last, which its line keeps when it ends.
    services: Mutex<BTreeMap<String, (TaskProgress, String)>>,
    /// The last health state shown per container, so plain lines say only what changed.
    health: Mutex<BTreeMap<String, String>>,
    /// When a byte count was last printed as a plain line.
    bytes_shown: Mutex<Option<Instant>>,
}

/// How often a log gets a byte count while a dump or load runs.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

impl StackProgress {
    pub fn new(project: &str) -> StackProgress {
        StackProgress::with(Progress::new(&USUAL_ROWS, false), project)
    }

    fn with(progress: Progress, project: &str) -> StackProgress {
        let step = progress.task("step");
        StackProgress {
            progress,
            project: project.to_string(),
            step,
            services: Mutex::new(BTreeMap::new()),
            health: Mutex::new(BTreeMap::new()),
            bytes_shown: Mutex::new(None),
        }
    }

    /// Step `number` of `count` starts; `what` is its first line as a plan shows it.
    pub fn step(&self, number: usize, count: usize, what: &str) {
        if self.progress.is_live() {
            self.step.set(&format!("{number}/{count}"), &short(what));
        }
    }

    /// A command starts: shown whole in a log; on a terminal the step's line already says it.
    pub fn command(&self, shown: &str) {
        if !self.progress.is_live() {
            eprintln!("$ {shown}");
        }
    }

    /// One line of a command's output: printed in a log; on a terminal it moves the service it
    /// names to its new state, and anything else is left to the error, should the step fail.
    pub fn output(&self, line: &str) {
        if !self.progress.is_live() {
            eprintln!("{line}");
        } else if let Some((service, state)) = compose_news(line, &self.project) {
            self.service(&service, &state.to_lowercase(), "");
        }
    }

    /// A note of the tool's own (what it decided, where a backup went).
    pub fn say(&self, message: &str) {
        self.progress.println(message);
    }

    /// A container's state and health, as an update's health gate reads them each second.
    pub fn health(&self, container: &str, state: &str, health: &str) {
        let shown = match health {
            "none" => state.to_string(),
            _ if state == "running" => format!("health: {health}"),
            _ => format!("{state}, health: {health}"),
        };
        let mut last = self.health.lock().expect("health lock");
        if last.get(container) == Some(&shown) {
            return;
        }
        last.insert(container.to_string(), shown.clone());
        let service = service_of(container, &self.project);
        self.service(&service, "new", &format!("{container}: {shown}"));
    }

    /// A service's line set to `state` and `detail`; in a log, the states compose never prints.
    fn service(&self, name: &str, state: &str, detail: &str) {
        let mut services = self.services.lock().expect("services lock");
        let (row, last) = services.entry(name.to_string()).or_insert_with(|| (self.progress.task(name), String::new()));
        row.set(state, detail);
        *last = format!("{state} {detail}").trim_end().to_string();
    }

    /// The byte count of a dump being written or a backup being loaded: always on a terminal,
    /// every few seconds in a log.
    pub fn bytes(&self, what: &str, bytes: u64) {
        if !self.progress.is_live() {
            let mut last = self.bytes_shown.lock().expect("bytes lock");
            if last.is_some_and(|shown: Instant| shown.elapsed() < LOG_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        self.service("db", what, &human_bytes(bytes));
    }

    /// The task ended: the step's line says done or failed, each service's line stops at the
    /// state it shows last.
    pub fn finish(&self, succeeded: bool) {
        let state = if succeeded { "done" } else { "failed" };
        self.step.finish(state);
        for (row, last) in self.services.lock().expect("services lock").values() {
            row.finish(last);
        }
    }
}

/// The first line of a step, shortened to what fits beside the counter.
fn short(what: &str) -> String {
    let first = what.lines().next().unwrap_or_default().trim();
    match first.char_indices().nth(100) {
        Some((end, _)) => format!("{}…", &first[..end]),
        None => first.to_string(),
    }
}

/// The service and its new state in one of compose's plain progress lines: ` Container
/// intric-backend-1  Started`, ` backend Pulling`, ` Container intric-db-1  Healthy`. Lines
/// about networks, volumes and image layers name no service.
fn compose_news(line: &str, project: &str) -> Option<(String, String)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[..] {
        ["Container", container, state, ..] => Some((service_of(container, project), state.to_string())),
        ["Network" | "Volume" | "Image", ..] => None,
        [service, state @ ("Pulling" | "Pulled" | "Skipped" | "Waiting" | "Interrupted" | "Error"), ..]
            if !service.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            Some((service.to_string(), state.to_string()))
        }
        _ => None,
    }
}

/// The service of a container compose named `<project>-<service>-<n>` (a leading `/` as
/// `docker inspect` prints it); a container named otherwise is its own row.
fn service_of(container: &str, project: &str) -> String {
    let name = container.trim_start_matches('/');
    let Some(rest) = name.strip_prefix(project).and_then(|rest| rest.strip_prefix('-')) else {
        return name.to_string();
    };
    match rest.rsplit_once('-') {
        Some((service, number)) if number.parse::<u32>().is_ok() => service.to_string(),
        _ => rest.to_string(),
    }
}

/// `bytes` as people read it: 0 B, 512 B, 12.3 MB.
pub fn human_bytes(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", units[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_lines_move_their_service() {
        let news = |line| compose_news(line, "intric");
        assert_eq!(news(" Container intric-backend-1  Started"), Some(("backend".into(), "Started".into())));
        assert_eq!(news(" Container intric-db-init-1  Creating"), Some(("db-init".into(), "Creating".into())));
        assert_eq!(news(" Container intric-db-1  Healthy"), Some(("db".into(), "Healthy".into())));
        assert_eq!(news(" backend Pulling "), Some(("backend".into(), "Pulling".into())));
        assert_eq!(
            news(" worker Skipped - Image is already being pulled by backend "),
            Some(("worker".into(), "Skipped".into()))
        );
        assert_eq!(news(" Network intric_default  Created"), None);
        assert_eq!(news(" 3f4ca61aafcd Pulling fs layer"), None, "an image layer is not a service");
        assert_eq!(news("Traceback (most recent call last):"), None);
    }

    #[test]
    fn containers_belong_to_their_service() {
        assert_eq!(service_of("/intric-backend-2", "intric"), "backend");
        assert_eq!(service_of("my-app-db-init-1", "my-app"), "db-init");
        assert_eq!(service_of("custom_name", "intric"), "custom_name");
    }

    #[test]
    fn byte_counts_read_as_people_read_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(12_345_678), "12.3 MB");
        assert_eq!(human_bytes(2_000_000_000), "2.0 GB");
    }

    #[test]
    fn a_step_shows_its_first_line_only_and_not_too_much_of_it() {
        assert_eq!(
            short("if the database has no alembic_version table: x\n       else: y"),
            "if the database has no alembic_version table: x"
        );
        let long = "x".repeat(300);
        assert_eq!(short(&long).chars().count(), 101);
    }
}
