//! Dockerfiles read at plan time: the stages (named or not), their `FROM` lines (with
//! `--platform`), and the `ARG`s declared before the first `FROM` (global) and inside each stage,
//! so that a build is checked before anything runs: the target exists, every build arg passed
//! is declared, and the base images (after build-arg substitution) are known by name.
//!
//! The parser is deliberately small: it splits the file into instructions the way BuildKit's
//! frontend does (case-insensitive keywords, `#` comment lines, line continuations with the
//! escape character, the `# escape=` directive) and reads only `FROM`, `ARG` and `COPY --from`;
//! every other instruction is kept as keyword and text, so a fuller reading can grow here.
//! Pure: it reads no file and runs nothing.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Result, bail};

use crate::adapters::compose_vars::closing_brace;

/// One instruction: its keyword in upper case, its text with continuations joined, and the
/// line it starts on (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    pub keyword: String,
    pub text: String,
    pub line: usize,
}

/// An `ARG` declaration: `ARG NAME` or `ARG NAME=default`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg {
    pub name: String,
    pub default: Option<String>,
}

/// One build stage: a `FROM` line and what follows it up to the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// The `AS` name, lower-cased as BuildKit compares it; `None` for an unnamed stage.
    pub name: Option<String>,
    /// The image (or earlier stage) it starts from, as written (before substitution).
    pub base: String,
    pub platform: Option<String>,
    /// The `ARG`s declared inside the stage.
    pub args: Vec<Arg>,
    /// The stages (by name or index) that `COPY --from` takes files from.
    pub copies_from: Vec<String>,
    pub line: usize,
}

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dockerfile {
    /// How messages name the file (`backend/Dockerfile`).
    pub shown: String,
    /// The `ARG`s before the first `FROM`: the only ones a `FROM` line can use.
    pub global_args: Vec<Arg>,
    pub stages: Vec<Stage>,
    /// Every instruction, in order.
    pub instructions: Vec<Instruction>,
}

impl Dockerfile {
    /// Parses `text`; `shown` names the file in messages. A file without a `FROM`, or with an
    /// instruction other than `ARG` before its first `FROM`, is refused as BuildKit refuses it.
    pub fn parse(shown: &str, text: &str) -> Result<Dockerfile> {
        let instructions = instructions(text);
        let mut global_args = Vec::new();
        let mut stages: Vec<Stage> = Vec::new();
        for instruction in &instructions {
            match (instruction.keyword.as_str(), stages.last_mut()) {
                ("FROM", _) => stages.push(parse_from(shown, instruction)?),
                ("ARG", None) => global_args.extend(parse_args(&instruction.text)),
                ("ARG", Some(stage)) => stage.args.extend(parse_args(&instruction.text)),
                ("COPY", Some(stage)) => stage.copies_from.extend(flag(&instruction.text, "from")),
                (keyword, None) => {
                    bail!(
                        "{shown} line {}: {keyword} before the first FROM (only ARG may come first)",
                        instruction.line
                    )
                }
                _ => {}
            }
        }
        if stages.is_empty() {
            bail!("{shown} has no FROM line: it builds no image");
        }
        Ok(Dockerfile { shown: shown.to_string(), global_args, stages, instructions })
    }

    /// The stage a build of `target` ends with: the named stage, or the last one without a
    /// target. A missing target is one line naming the file and the stages it has.
    pub fn stage(&self, target: Option<&str>) -> Result<&Stage> {
        let Some(target) = target else { return Ok(self.stages.last().expect("parse refuses a file without FROM")) };
        let wanted = target.to_ascii_lowercase();
        match self.stages.iter().find(|stage| stage.name.as_deref() == Some(wanted.as_str())) {
            Some(stage) => Ok(stage),
            None => bail!("{} has no stage {target:?}; its stages: {}", self.shown, self.stage_list()),
        }
    }

    /// The instructions of `stage` (one of this file's), after its `FROM`.
    pub fn stage_instructions(&self, stage: &Stage) -> &[Instruction] {
        let next = self.stages.iter().map(|other| other.line).find(|&line| line > stage.line).unwrap_or(usize::MAX);
        let start = self.instructions.iter().position(|instruction| instruction.line > stage.line);
        let start = start.unwrap_or(self.instructions.len());
        let end = self.instructions[start..].iter().position(|instruction| instruction.line >= next);
        &self.instructions[start..end.map_or(self.instructions.len(), |end| start + end)]
    }

    /// The instructions of a build of `target` that make an image layer each (see
    /// [`makes_layer`]), in order: those of the stages it builds on (`FROM backend`) first.
    pub fn layer_steps(&self, target: Option<&str>) -> Result<Vec<&Instruction>> {
        let mut stages = vec![self.stage(target)?];
        while let Some(base) = stages.last().and_then(|stage| self.base_stage(stage)) {
            stages.push(base);
        }
        let instructions = stages.iter().rev().flat_map(|stage| self.stage_instructions(stage));
        Ok(instructions.filter(|instruction| makes_layer(&instruction.keyword, &instruction.text)).collect())
    }

    /// The earlier stage `stage` starts from (`FROM backend`), when it starts from a stage of
    /// this file rather than an image.
    pub fn base_stage(&self, stage: &Stage) -> Option<&Stage> {
        let index = self.stages.iter().position(|other| std::ptr::eq(other, stage))?;
        self.stage_index(&stage.base, index).map(|base| &self.stages[base])
    }

    /// Whether the file has a stage named `name`.
    pub fn has_stage(&self, name: &str) -> bool {
        self.stage(Some(name)).is_ok()
    }

    /// The stages for messages: `builder, an unnamed final stage`.
    pub fn stage_list(&self) -> String {
        let last = self.stages.len() - 1;
        self.stages
            .iter()
            .enumerate()
            .map(|(index, stage)| match &stage.name {
                Some(name) => name.clone(),
                None if index == last => "an unnamed final stage".to_string(),
                None => format!("unnamed stage {index}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether a build arg `name` is declared anywhere (a global or a stage's `ARG`), or is one
    /// of BuildKit's own (`BUILDKIT_INLINE_CACHE`, the proxy variables), which need no `ARG`.
    pub fn declares(&self, name: &str) -> bool {
        PREDEFINED_ARGS.contains(&name)
            || self
                .global_args
                .iter()
                .chain(self.stages.iter().flat_map(|stage| &stage.args))
                .any(|arg| arg.name == name)
    }

    /// The indexes of the stages a build of `target` runs: the target, the stages it starts
    /// from, and those it copies from, transitively, in file order.
    pub fn needed_stages(&self, target: Option<&str>) -> Result<Vec<usize>> {
        let end = self.stage(target)?;
        let end = self.stages.iter().position(|stage| std::ptr::eq(stage, end)).expect("a stage of this file");
        let mut needed = vec![false; self.stages.len()];
        let mut pending = vec![end];
        while let Some(index) = pending.pop() {
            if std::mem::replace(&mut needed[index], true) {
                continue;
            }
            let stage = &self.stages[index];
            for reference in std::iter::once(&stage.base).chain(&stage.copies_from) {
                if let Some(earlier) = self.stage_index(reference, index) {
                    pending.push(earlier);
                }
            }
        }
        Ok((0..self.stages.len()).filter(|&index| needed[index]).collect())
    }

    /// The earlier stage `reference` names (by name, or by index for `COPY --from=0`).
    fn stage_index(&self, reference: &str, before: usize) -> Option<usize> {
        let reference = reference.to_ascii_lowercase();
        if let Ok(index) = reference.parse::<usize>() {
            return (index < before).then_some(index);
        }
        self.stages[..before].iter().position(|stage| stage.name.as_deref() == Some(reference.as_str()))
    }

    /// The base images a build of `target` pulls, with `build_args` substituted into the
    /// `FROM` lines over the global `ARG` defaults, each once, in file order. Stages that start
    /// from an earlier stage, and `scratch`, pull nothing.
    pub fn base_images(&self, target: Option<&str>, build_args: &BTreeMap<String, String>) -> Result<Vec<String>> {
        let mut values: BTreeMap<&str, String> = BTreeMap::new();
        for arg in &self.global_args {
            let value = build_args.get(&arg.name).cloned().or_else(|| arg.default.clone());
            if let Some(value) = value {
                values.insert(&arg.name, substitute(&value, &|name| values.get(name).cloned()));
            }
        }
        let mut images = Vec::new();
        for index in self.needed_stages(target)? {
            let stage = &self.stages[index];
            if self.stage_index(&stage.base, index).is_some() {
                continue;
            }
            let image = substitute(&stage.base, &|name| values.get(name).cloned());
            if image.eq_ignore_ascii_case("scratch") || images.contains(&image) {
                continue;
            }
            if image.is_empty() {
                bail!(
                    "{} line {}: FROM {} names no image: pass a value for its build arg",
                    self.shown,
                    stage.line,
                    stage.base
                );
            }
            images.push(image);
        }
        Ok(images)
    }

    /// Whether a build of `target` runs the stage `other` (another target of the same file):
    /// then it is best built after it, taking their shared stages from cache.
    pub fn builds_on(&self, target: Option<&str>, other: Option<&str>) -> bool {
        let (Ok(needed), Ok(other)) = (self.needed_stages(target), self.stage(other)) else { return false };
        let mine = self.stage(target).ok();
        !mine.is_some_and(|mine| std::ptr::eq(mine, other))
            && needed.iter().any(|&index| std::ptr::eq(&self.stages[index], other))
    }
}

/// Build args BuildKit defines itself: passing them needs no `ARG`.
const PREDEFINED_ARGS: [&str; 9] = [
    "BUILDKIT_INLINE_CACHE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FROM {}", self.base)?;
        if let Some(name) = &self.name {
            write!(f, " AS {name}")?;
        }
        Ok(())
    }
}

/// Whether BuildKit makes an image layer for the instruction `keyword text`: for every `RUN`,
/// `COPY` and `ADD`, and for a `WORKDIR` other than `/`; the others only change the config.
pub fn makes_layer(keyword: &str, text: &str) -> bool {
    match keyword.to_ascii_uppercase().as_str() {
        "RUN" | "COPY" | "ADD" => true,
        "WORKDIR" => text.trim() != "/",
        _ => false,
    }
}

/// Splits `text` into instructions: parser directives and comment lines dropped, continuation
/// lines (ending in the escape character, `\` unless `# escape=` says otherwise) joined; a
/// comment or empty line inside a continuation is skipped, as BuildKit does.
pub fn instructions(text: &str) -> Vec<Instruction> {
    let mut escape = '\\';
    let mut in_directives = true;
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if in_directives {
            if let Some(directive) = trimmed.strip_prefix('#') {
                if let Some((key, value)) = directive.split_once('=')
                    && key.trim().eq_ignore_ascii_case("escape")
                {
                    escape = value.trim().chars().next().unwrap_or('\\');
                }
                continue;
            }
            in_directives = false;
        }
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_some()) {
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        let (continued, body) = match trimmed.strip_suffix(escape) {
            Some(body) => (true, body),
            None => (false, trimmed),
        };
        let (start, mut joined) = pending.take().unwrap_or((number + 1, String::new()));
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(body.trim());
        if continued {
            pending = Some((start, joined));
        } else {
            out.push(instruction(start, &joined));
        }
    }
    if let Some((start, joined)) = pending {
        out.push(instruction(start, &joined));
    }
    out
}

fn instruction(line: usize, joined: &str) -> Instruction {
    let (keyword, text) = joined.split_once(char::is_whitespace).unwrap_or((joined, ""));
    Instruction { keyword: keyword.to_ascii_uppercase(), text: text.trim().to_string(), line }
}

/// `FROM [--platform=P] IMAGE [AS NAME]`.
fn parse_from(shown: &str, instruction: &Instruction) -> Result<Stage> {
    let mut platform = None;
    let mut words = Vec::new();
    for word in instruction.text.split_whitespace() {
        match word.strip_prefix("--platform=") {
            Some(value) => platform = Some(value.to_string()),
            None if word.starts_with("--") => {}
            None => words.push(word),
        }
    }
    let (base, name) = match words.as_slice() {
        [base] => (*base, None),
        [base, as_word, name] if as_word.eq_ignore_ascii_case("as") => (*base, Some(name.to_ascii_lowercase())),
        _ => bail!(
            "{shown} line {}: cannot read `FROM {}` (expected FROM IMAGE [AS NAME])",
            instruction.line,
            instruction.text
        ),
    };
    Ok(Stage {
        name,
        base: base.to_string(),
        platform,
        args: Vec::new(),
        copies_from: Vec::new(),
        line: instruction.line,
    })
}

/// `ARG A` / `ARG A=1 B="2"`: one or more declarations.
fn parse_args(text: &str) -> Vec<Arg> {
    text.split_whitespace()
        .map(|word| match word.split_once('=') {
            Some((name, default)) => {
                Arg { name: name.to_string(), default: Some(default.trim_matches(['"', '\'']).to_string()) }
            }
            None => Arg { name: word.to_string(), default: None },
        })
        .collect()
}

/// The values of `--NAME=VALUE` flags at the start of an instruction's text.
fn flag(text: &str, name: &str) -> Option<String> {
    let prefix = format!("--{name}=");
    text.split_whitespace()
        .take_while(|word| word.starts_with("--"))
        .find_map(|word| word.strip_prefix(&prefix).map(str::to_string))
}

/// Substitutes variables in `text` the way Dockerfiles and compose files write them: `$NAME`,
/// `${NAME}`, `${NAME:-default}` / `${NAME-default}` (default when unset or empty / unset),
/// `${NAME:+alternative}` / `${NAME+alternative}`, `${NAME:?message}` (empty when unset here:
/// checks are the caller's), and `$$` for a literal `$`. `lookup` gives a variable's value.
pub fn substitute(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = closing_brace(inner) else {
                out.push_str(&rest[at..]);
                return out;
            };
            out.push_str(&expand(&inner[..end], lookup));
            rest = &inner[end + 1..];
        } else {
            let length = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            if length == 0 {
                out.push('$');
            } else {
                out.push_str(&lookup(&after[..length]).unwrap_or_default());
            }
            rest = &after[length..];
        }
    }
    out.push_str(rest);
    out
}

/// One `${...}` expression, without the braces.
fn expand(expression: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let length = expression.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(expression.len());
    let (name, operator) = expression.split_at(length);
    let value = lookup(name);
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|value| !value.is_empty());
    let word = |skip: usize| substitute(&operator[skip..], lookup);
    match operator.chars().next() {
        None => value.unwrap_or_default(),
        Some(':') => match operator[1..].chars().next() {
            Some('-') if !non_empty => word(2),
            Some('+') if non_empty => word(2),
            Some('+') => String::new(),
            _ => value.unwrap_or_default(),
        },
        Some('-') if !set => word(1),
        Some('+') if set => word(1),
        Some('+') => String::new(),
        _ => value.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_targets_layer_steps_run_from_its_base_image_through_the_stages_it_builds_on() {
        let text = "FROM python AS builder\nRUN pip install x\nFROM python AS backend\nENV A=1\nRUN groupadd app\n\
                    COPY --from=builder /opt/venv /opt/venv\nWORKDIR /app\nWORKDIR /\nCOPY . .\nUSER app\n\
                    FROM backend AS worker\nADD x /x\nCMD [\"arq\"]\n";
        let file = Dockerfile::parse("Dockerfile", text).unwrap();
        let steps = |target| -> Vec<String> {
            let steps = file.layer_steps(target).unwrap();
            steps.iter().map(|step| format!("{} {}", step.keyword, step.text)).collect()
        };
        let backend = ["RUN groupadd app", "COPY --from=builder /opt/venv /opt/venv", "WORKDIR /app", "COPY . ."];
        assert_eq!(steps(Some("backend")), backend, "no layer for ENV, USER or WORKDIR /");
        assert_eq!(steps(Some("worker")), [&backend[..], &["ADD x /x"]].concat());
        assert_eq!(steps(None), steps(Some("worker")));
        assert!(file.layer_steps(Some("nope")).is_err());
    }

    const PUBLISHED_BACKEND: &str = "\
# the builder
FROM --platform=linux/amd64 python:3.11-slim-bullseye as builder
RUN apt-get update \\
    # a comment inside a continuation
    && apt-get install -y gcc
from --platform=linux/amd64 python:3.11-slim-bullseye
COPY --from=builder /usr/local /usr/local
COPY . .
";

    #[test]
    fn stages_named_and_unnamed_with_platforms_and_continuations() {
        let file = Dockerfile::parse("backend/Dockerfile", PUBLISHED_BACKEND).unwrap();
        assert_eq!(file.stages.len(), 2);
        assert_eq!(file.stages[0].name.as_deref(), Some("builder"));
        assert_eq!(file.stages[0].platform.as_deref(), Some("linux/amd64"));
        assert_eq!(file.stages[1].name, None, "the final stage is unnamed");
        assert_eq!(file.stages[1].copies_from, ["builder"]);
        assert_eq!(file.instructions[1].text, "apt-get update && apt-get install -y gcc");
        assert_eq!(file.instructions[2].line, 6, "lines count from the file's start");
        assert_eq!(file.stage(None).unwrap().line, 6, "no target builds the last stage");
        assert_eq!(file.needed_stages(None).unwrap(), [0, 1], "the final stage copies from the builder");
    }

    #[test]
    fn a_missing_target_is_one_line_naming_the_file_and_its_stages() {
        let file = Dockerfile::parse("backend/Dockerfile", PUBLISHED_BACKEND).unwrap();
        let error = file.stage(Some("test")).unwrap_err().to_string();
        assert_eq!(error, "backend/Dockerfile has no stage \"test\"; its stages: builder, an unnamed final stage");
        assert!(file.has_stage("BUILDER"), "stage names compare case-insensitively");
    }

    #[test]
    fn build_args_substitute_into_from_over_global_defaults() {
        let text = "ARG PYTHON_IMAGE=python:3.10-slim\nARG TAG\nFROM ${PYTHON_IMAGE} AS base\nARG VERSION\n\
                    FROM base AS backend\nFROM base AS worker\nFROM node:${TAG:-22}-slim AS web\n";
        let file = Dockerfile::parse("Dockerfile", text).unwrap();
        let none = BTreeMap::new();
        assert_eq!(file.base_images(Some("worker"), &none).unwrap(), ["python:3.10-slim"]);
        let args = BTreeMap::from([("PYTHON_IMAGE".to_string(), "lab/python:lab".to_string())]);
        assert_eq!(file.base_images(Some("backend"), &args).unwrap(), ["lab/python:lab"]);
        assert_eq!(file.base_images(None, &none).unwrap(), ["node:22-slim"]);
        assert!(file.declares("VERSION") && file.declares("PYTHON_IMAGE") && file.declares("BUILDKIT_INLINE_CACHE"));
        assert!(!file.declares("NODE_IMAGE"));
        assert!(file.builds_on(Some("worker"), Some("base")));
        assert!(!file.builds_on(Some("worker"), Some("backend")), "siblings share a stage, but not each other");
        assert!(!file.builds_on(Some("base"), Some("base")));
    }

    #[test]
    fn instructions_before_from_other_than_arg_are_refused() {
        let error = Dockerfile::parse("Dockerfile", "RUN true\nFROM x\n").unwrap_err().to_string();
        assert_eq!(error, "Dockerfile line 1: RUN before the first FROM (only ARG may come first)");
        assert!(Dockerfile::parse("Dockerfile", "# only a comment\n").is_err());
    }

    #[test]
    fn the_escape_directive_changes_the_continuation_character() {
        let file = Dockerfile::parse("Dockerfile", "# escape=`\nFROM x\nRUN a `\n  b\n").unwrap();
        assert_eq!(file.instructions[1].text, "a b");
    }

    #[test]
    fn substitution_follows_the_shell_forms() {
        let env = |name: &str| match name {
            "SET" => Some("v".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        for (text, expected) in [
            ("${SET}", "v"),
            ("$SET/x", "v/x"),
            ("${UNSET:-d}", "d"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${SET:+alt}", "alt"),
            ("${UNSET:+alt}", ""),
            ("${UNSET:-${SET}}", "v"),
            ("$$SET", "$SET"),
            ("${UNSET:?not set}", ""),
        ] {
            assert_eq!(substitute(text, &env), expected, "{text}");
        }
    }
}
