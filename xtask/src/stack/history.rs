//! The deploy history: `DIR/.deploy-history.jsonl`, one JSON object per deploy, update,
//! rollback or restore, only ever appended. `rollback` reads it as a stack of good tags.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::adapters::clock;
use crate::stack::lock::{Holder, current_user};

pub const HISTORY_FILE: &str = ".deploy-history.jsonl";

/// How a deploy, update or rollback ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    /// It failed after changing something, and the previous tag was put back.
    RolledBack,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled-back",
        }
    }

    fn parse(text: &str) -> Option<Outcome> {
        [Outcome::Ok, Outcome::Failed, Outcome::RolledBack].into_iter().find(|outcome| outcome.as_str() == text)
    }
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    pub user: String,
    pub command: String,
    pub from_tag: Option<String>,
    pub to_tag: String,
    pub result: Outcome,
    pub seconds: u64,
    /// The backup taken before the change, if any.
    pub backup: Option<String>,
    /// What went wrong, for results other than ok.
    pub detail: Option<String>,
    /// `swarm` for a change of the stack on Docker Swarm (`--swarm`); none for compose.
    pub mode: Option<String>,
}

impl Record {
    /// The record of a `command` by this user that started at `started` (Unix seconds) and
    /// ends now with `result`.
    pub fn new(
        command: &str,
        from_tag: Option<String>,
        to_tag: String,
        result: Outcome,
        started: i64,
        backup: Option<&Path>,
        detail: Option<String>,
    ) -> Record {
        let now = clock::now_unix();
        Record {
            time: clock::rfc3339(now),
            user: current_user(),
            command: command.to_string(),
            from_tag,
            to_tag,
            result,
            seconds: u64::try_from(now - started).unwrap_or(0),
            backup: backup.map(|path| path.display().to_string()),
            detail,
            mode: None,
        }
    }

    /// The record as one line of JSON, with its newline.
    pub fn to_line(&self) -> String {
        let mut value = json!({
            "time": self.time,
            "user": self.user,
            "command": self.command,
            "from_tag": self.from_tag,
            "to_tag": self.to_tag,
            "result": self.result.as_str(),
            "seconds": self.seconds,
        });
        if let Some(backup) = &self.backup {
            value["backup"] = json!(backup);
        }
        if let Some(detail) = &self.detail {
            value["detail"] = json!(detail);
        }
        if let Some(mode) = &self.mode {
            value["mode"] = json!(mode);
        }
        format!("{value}\n")
    }

    fn from_value(value: &Value) -> Option<Record> {
        let text = |key: &str| value[key].as_str().map(str::to_string);
        Some(Record {
            time: text("time")?,
            user: text("user")?,
            command: text("command")?,
            from_tag: text("from_tag"),
            to_tag: text("to_tag")?,
            result: Outcome::parse(value["result"].as_str()?)?,
            seconds: value["seconds"].as_u64()?,
            backup: text("backup"),
            detail: text("detail"),
            mode: text("mode"),
        })
    }
}

/// Parses the history; a bad line is an error naming the file and line.
pub fn parse_history(path: &Path, text: &str) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str::<Value>(line).ok().as_ref().and_then(Record::from_value);
        match record {
            Some(record) => records.push(record),
            None => bail!(
                "{}:{}: not a deploy history record (time, user, command, from_tag, to_tag, result, seconds); \
                 fix or remove that line",
                path.display(),
                index + 1
            ),
        }
    }
    Ok(records)
}

pub fn read_history(path: &Path) -> Result<Vec<Record>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_history(path, &text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The tag to roll back to. The successful deploys, updates and rollbacks form a stack of
/// versions: a deploy or an update puts its tag on top; a rollback to T goes back to where T
/// was last on top, dropping the versions rolled back from. The answer is the newest tag on
/// that stack other than `current`, so a second rollback goes further back instead of
/// returning to the version the first one left.
pub fn previous_tag(records: &[Record], current: Option<&str>) -> Option<String> {
    let mut stack: Vec<&str> = Vec::new();
    for record in records.iter().filter(|record| record.result == Outcome::Ok) {
        let tag = record.to_tag.as_str();
        match record.command.as_str() {
            "rollback" => match stack.iter().rposition(|earlier| *earlier == tag) {
                Some(position) => stack.truncate(position + 1),
                None => stack.push(tag),
            },
            "deploy" | "update" if stack.last() != Some(&tag) => stack.push(tag),
            _ => {}
        }
    }
    stack.iter().rev().find(|tag| Some(**tag) != current).map(|tag| tag.to_string())
}

/// Appends `record` with one write to a file opened for appending, so concurrent writers never
/// interleave within a line and earlier lines are never rewritten.
pub fn append_history(path: &Path, record: &Record) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(record.to_line().as_bytes()).with_context(|| format!("cannot append to {}", path.display()))
}

/// Records in the history that a stale lock's holder was interrupted: its run, as its user,
/// from when it took the lock until now.
pub fn record_interrupted(history: &Path, stale: &Holder) -> Result<()> {
    let Some(to_tag) = stale.to_tag.clone() else { return Ok(()) };
    let since = clock::parse_rfc3339(&stale.since).unwrap_or_else(clock::now_unix);
    let detail = format!("interrupted: pid {} ended without releasing the lock", stale.pid);
    let record = Record {
        user: stale.user.clone(),
        ..Record::new(&stale.command, stale.from_tag.clone(), to_tag, Outcome::Failed, since, None, Some(detail))
    };
    append_history(history, &record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(command: &str, from: Option<&str>, to: &str, result: Outcome) -> Record {
        Record {
            time: "2026-01-01T00:00:00Z".into(),
            user: "ops".into(),
            command: command.into(),
            from_tag: from.map(str::to_string),
            to_tag: to.into(),
            result,
            seconds: 42,
            backup: None,
            detail: None,
            mode: None,
        }
    }

    #[test]
    fn history_lines_are_json_with_the_agreed_fields_and_read_back() {
        let line = record("update", Some("1.0.0"), "1.1.0", Outcome::RolledBack).to_line();
        assert_eq!(
            line,
            "{\"command\":\"update\",\"from_tag\":\"1.0.0\",\"result\":\"rolled-back\",\"seconds\":42,\
             \"time\":\"2026-01-01T00:00:00Z\",\"to_tag\":\"1.1.0\",\"user\":\"ops\"}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HISTORY_FILE);
        append_history(&path, &record("deploy", None, "1.0.0", Outcome::Ok)).unwrap();
        append_history(&path, &record("update", Some("1.0.0"), "1.1.0", Outcome::Ok)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with("{\"command\":\"deploy\",\"from_tag\":null,"), "{text}");
        assert_eq!(read_history(&path).unwrap()[1], record("update", Some("1.0.0"), "1.1.0", Outcome::Ok));
        let error = parse_history(&path, "{\"time\":1}\n").unwrap_err().to_string();
        assert!(error.ends_with(".deploy-history.jsonl:1: not a deploy history record (time, user, command, from_tag, to_tag, result, seconds); fix or remove that line"), "{error}");
    }

    #[test]
    fn rollback_goes_to_the_last_good_tag_other_than_the_current_one() {
        let history = [
            record("deploy", None, "1", Outcome::Ok),
            record("update", Some("1"), "2", Outcome::Ok),
            record("update", Some("2"), "3", Outcome::RolledBack),
            record("restore", Some("2"), "2", Outcome::Ok),
        ];
        assert_eq!(previous_tag(&history, Some("2")).as_deref(), Some("1"));
        assert_eq!(previous_tag(&history[..1], Some("1")), None);
        assert_eq!(previous_tag(&[], Some("1")), None);
    }

    #[test]
    fn a_second_rollback_goes_further_back() {
        let mut history = vec![
            record("deploy", None, "1", Outcome::Ok),
            record("update", Some("1"), "2", Outcome::Ok),
            record("update", Some("2"), "3", Outcome::Ok),
        ];
        assert_eq!(previous_tag(&history, Some("3")).as_deref(), Some("2"));
        history.push(record("rollback", Some("3"), "2", Outcome::Ok));
        assert_eq!(previous_tag(&history, Some("2")).as_deref(), Some("1"), "not back to 3");
        history.push(record("rollback", Some("2"), "1", Outcome::Ok));
        assert_eq!(previous_tag(&history, Some("1")), None, "nothing was deployed before 1");
        // An update to a tag deployed before is a new version on top, not a rollback.
        history.push(record("update", Some("1"), "3", Outcome::Ok));
        assert_eq!(previous_tag(&history, Some("3")).as_deref(), Some("1"));
    }
}
