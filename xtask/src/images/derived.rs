//! Metadata-only stages assembled in the registry. A Dockerfile target that is `FROM <a stage
//! another image of this build is>` plus only instructions that change the image config (our
//! worker: `FROM backend`, `HEALTHCHECK`, `CMD`) is made from that image's pushed manifest
//! instead of being built: the same layers (mounted into its repository: no bytes move), a new
//! config written as BuildKit's Dockerfile frontend writes it (each instruction's effect and its
//! history entry, then the build's labels), uploaded as a blob, and a manifest naming it put
//! under the image's tags. No BuildKit build, no pull, no layer upload.
//!
//! [`metadata_stage`] decides whether a target qualifies, and says why not; [`Derivation`] is
//! the step a build plan holds (shown by `--dry-run`, run against the registry);
//! [`derive_config`] is the config change itself, pure.
//!
//! Strict on purpose: only `ARG`, `ENV`, `LABEL`, `USER`, `EXPOSE` (single ports),
//! `STOPSIGNAL`, `HEALTHCHECK`, `CMD` and `ENTRYPOINT` are applied. Anything else (`WORKDIR`,
//! which may create a directory, `RUN`, `COPY`, `VOLUME`, `SHELL`, `ONBUILD`, ...) means a
//! BuildKit build, and the plan says which line decided it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::Write;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::adapters::registry::{Manifest, Registry, at_once, sha256_digest};
use crate::images::dockerfile::{Dockerfile, Instruction, substitute};
use crate::images::inputs::OUTSIDE_SOURCES_LABEL;
use crate::images::layer::Layer;
use crate::plan::progress::TaskProgress;

/// A target that only changes metadata on top of another stage of its Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataStage {
    /// The stage it starts from, lower-cased as stage names compare (`backend`).
    pub base: String,
    /// Its instructions after `FROM`, each one known to apply (see [`metadata_stage`]).
    pub instructions: Vec<Instruction>,
}

impl MetadataStage {
    /// The keywords in order, for the plan: `HEALTHCHECK, CMD` (`no instructions` for an alias).
    pub fn keywords(&self) -> String {
        if self.instructions.is_empty() {
            return "no instructions".into();
        }
        self.instructions.iter().map(|instruction| instruction.keyword.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// The stage a build of `target` ends with, when it is a metadata-only stage on another stage;
/// else why not, in words naming the line.
pub fn metadata_stage(file: &Dockerfile, target: Option<&str>) -> Result<MetadataStage, String> {
    let stage = file.stage(target).map_err(|error| format!("{error:#}"))?;
    let Some(base) = file.base_stage(stage) else {
        return Err(format!("starts from the image {}, not from another stage", stage.base));
    };
    let Some(base_name) = base.name.clone() else {
        return Err(format!("starts from an unnamed stage (line {})", base.line));
    };
    let instructions = file.stage_instructions(stage).to_vec();
    check_metadata(file, &instructions)?;
    Ok(MetadataStage { base: base_name, instructions })
}

/// Whether [`derive_config`] can apply every one of `instructions` (of `file`); else why not,
/// naming the line. Each is applied once to an empty config, so that one the derivation could
/// not apply is found when planning, not half-way.
pub fn check_metadata(file: &Dockerfile, instructions: &[Instruction]) -> Result<(), String> {
    let no_args = BTreeMap::new();
    let mut scratch = Config::new(json!({}), &no_args);
    for instruction in instructions {
        scratch.apply(instruction).map_err(|why| format!("{} line {}: {why}", file.shown, instruction.line))?;
    }
    Ok(())
}

/// The image config of metadata `instructions` on top of `base` (the config of the image they
/// apply to), as BuildKit writes it: the instructions applied in order with `build_args` in scope
/// where the stage declares them, each recorded in the history as an empty layer created at
/// `created`, then `labels` (the build's `--label`s) over the image's labels.
pub fn derive_config(
    base: &Value,
    instructions: &[Instruction],
    build_args: &BTreeMap<String, String>,
    labels: &[(String, String)],
    created: &str,
) -> Result<Value> {
    let mut config = Config::new(base.clone(), build_args);
    let mut history = Vec::new();
    for instruction in instructions {
        let created_by = config.apply(instruction).map_err(|why| {
            anyhow::anyhow!("line {}: {} {}: {why}", instruction.line, instruction.keyword, instruction.text)
        })?;
        history.push(json!({
            "created": created,
            "created_by": created_by,
            "comment": "buildkit.dockerfile.v0",
            "empty_layer": true,
        }));
    }
    let mut image = config.image;
    let settings = settings(&mut image);
    let image_labels = object(settings, "Labels");
    for (name, value) in labels {
        image_labels.insert(name.clone(), Value::String(value.clone()));
    }
    let Value::Object(top) = &mut image else { bail!("the base image config is not a JSON object") };
    top.insert("created".into(), Value::String(created.to_string()));
    match top.entry("history").or_insert_with(|| Value::Array(Vec::new())) {
        Value::Array(entries) => entries.extend(history),
        _ => bail!("the base image config's history is not a list"),
    }
    Ok(image)
}

/// An image config being changed instruction by instruction, with the build args the stage has
/// declared so far (an `ARG` brings one into scope, as in BuildKit: a new stage starts with none).
struct Config<'a> {
    image: Value,
    build_args: &'a BTreeMap<String, String>,
    args_in_scope: BTreeMap<String, String>,
    /// Whether this stage set `CMD` (an `ENTRYPOINT` after it keeps it, before it clears it).
    cmd_set: bool,
}

impl<'a> Config<'a> {
    fn new(image: Value, build_args: &'a BTreeMap<String, String>) -> Config<'a> {
        Config { image, build_args, args_in_scope: BTreeMap::new(), cmd_set: false }
    }

    /// The value of `name` for substitution: the image's `ENV` first, then the stage's build args.
    fn lookup(&self, name: &str) -> Option<String> {
        let env = self.image["config"]["Env"].as_array().into_iter().flatten().filter_map(Value::as_str);
        env.filter_map(|entry| entry.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_string())
            .or_else(|| self.args_in_scope.get(name).cloned())
    }

    fn expand(&self, raw: &str) -> String {
        expand_word(raw, &|name| self.lookup(name))
    }

    /// Applies one instruction; returns its history entry's `created_by` as BuildKit writes it,
    /// or why it cannot be applied here.
    fn apply(&mut self, instruction: &Instruction) -> Result<String, String> {
        let text = instruction.text.as_str();
        match instruction.keyword.as_str() {
            "ARG" => {
                let mut shown = Vec::new();
                for word in split_words(text) {
                    let (name, default) = match word.split_once('=') {
                        Some((name, default)) => (name.to_string(), Some(self.expand(default))),
                        None => (word.clone(), None),
                    };
                    shown.push(match &default {
                        Some(default) => format!("{name}={default}"),
                        None => name.clone(),
                    });
                    if let Some(value) = self.build_args.get(&name).cloned().or(default) {
                        self.args_in_scope.insert(name, value);
                    }
                }
                Ok(format!("ARG {}", shown.join(" ")))
            }
            "ENV" => {
                // Every value is expanded with the environment as it was before the instruction.
                let pairs: Vec<(String, String)> =
                    pairs(text)?.into_iter().map(|(key, raw)| (key, self.expand(&raw))).collect();
                let env = array(settings(&mut self.image), "Env");
                for (key, value) in &pairs {
                    let entry = Value::String(format!("{key}={value}"));
                    let prefix = format!("{key}=");
                    match env.iter_mut().find(|old| old.as_str().is_some_and(|old| old.starts_with(&prefix))) {
                        Some(old) => *old = entry,
                        None => env.push(entry),
                    }
                }
                Ok(format!("ENV {}", joined_pairs(&pairs)))
            }
            "LABEL" => {
                let pairs: Vec<(String, String)> =
                    pairs(text)?.into_iter().map(|(key, raw)| (key, self.expand(&raw))).collect();
                let labels = object(settings(&mut self.image), "Labels");
                for (key, value) in &pairs {
                    labels.insert(key.clone(), Value::String(value.clone()));
                }
                Ok(format!("LABEL {}", joined_pairs(&pairs)))
            }
            "USER" | "STOPSIGNAL" => {
                let value = self.expand(text);
                if value.is_empty() || value.contains(char::is_whitespace) {
                    return Err(format!("expects one value, not {text:?}"));
                }
                let field = if instruction.keyword == "USER" { "User" } else { "StopSignal" };
                settings(&mut self.image).insert(field.into(), Value::String(value.clone()));
                Ok(format!("{} {value}", instruction.keyword))
            }
            "EXPOSE" => {
                let mut ports = BTreeSet::new();
                for word in split_words(text) {
                    ports.insert(port(&self.expand(&word))?);
                }
                let exposed = object(settings(&mut self.image), "ExposedPorts");
                for port in &ports {
                    exposed.insert(port.clone(), json!({}));
                }
                let shown: Vec<String> = ports.iter().map(|port| format!("{port}:{{}}")).collect();
                Ok(format!("EXPOSE map[{}]", shown.join(" ")))
            }
            "CMD" => {
                let command = self.command_line(text)?;
                let settings = settings(&mut self.image);
                settings.insert("Cmd".into(), json!(command));
                settings.insert("ArgsEscaped".into(), Value::Bool(true));
                self.cmd_set = true;
                Ok(format!("CMD {}", go_quote_list(&command)))
            }
            "ENTRYPOINT" => {
                let command = self.command_line(text)?;
                let cmd_set = self.cmd_set;
                let settings = settings(&mut self.image);
                settings.insert("Entrypoint".into(), json!(command));
                if !cmd_set {
                    settings.remove("Cmd");
                }
                Ok(format!("ENTRYPOINT {}", go_quote_list(&command)))
            }
            "HEALTHCHECK" => {
                let check = Healthcheck::parse(text)?;
                settings(&mut self.image).insert("Healthcheck".into(), check.to_json());
                Ok(format!("HEALTHCHECK {}", check.go_format()))
            }
            "WORKDIR" => Err("WORKDIR may create a directory, which only a build makes".into()),
            keyword => Err(format!("{keyword} is not a metadata instruction the fast path applies")),
        }
    }

    /// The argv of a `CMD`/`ENTRYPOINT`/`HEALTHCHECK CMD`: the JSON exec form as written, or
    /// the shell form run by the image's shell (`/bin/sh -c` unless its config names another).
    fn command_line(&self, text: &str) -> Result<Vec<String>, String> {
        if let Some(exec) = exec_form(text) {
            return Ok(exec);
        }
        if text.trim().is_empty() {
            return Err("names no command".into());
        }
        let shell: Vec<String> = match self.image["config"]["Shell"].as_array() {
            Some(shell) => shell.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            None => vec!["/bin/sh".into(), "-c".into()],
        };
        Ok(shell.into_iter().chain(std::iter::once(text.trim().to_string())).collect())
    }
}

/// `["a", "b"]`: the exec form, when `text` is a JSON list of strings (else the shell form).
fn exec_form(text: &str) -> Option<Vec<String>> {
    let text = text.trim();
    if !text.starts_with('[') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// A `HEALTHCHECK` instruction, read.
struct Healthcheck {
    test: Vec<String>,
    /// Nanoseconds, 0 when not given (Docker's default then applies).
    interval: u64,
    timeout: u64,
    start_period: u64,
    retries: u64,
}

impl Healthcheck {
    /// `[--interval=D] [--timeout=D] [--start-period=D] [--retries=N] CMD command` or `NONE`.
    fn parse(text: &str) -> Result<Healthcheck, String> {
        let mut check = Healthcheck { test: Vec::new(), interval: 0, timeout: 0, start_period: 0, retries: 0 };
        let mut rest = text.trim_start();
        let mut flags = 0;
        while let Some(flag) = rest.strip_prefix("--") {
            let end = flag.find(char::is_whitespace).unwrap_or(flag.len());
            let (name, value) =
                flag[..end].split_once('=').ok_or_else(|| format!("--{} has no value", &flag[..end]))?;
            let duration = || go_duration_nanos(value).ok_or_else(|| format!("--{name}={value} is not a duration"));
            match name {
                "interval" => check.interval = duration()?,
                "timeout" => check.timeout = duration()?,
                "start-period" => check.start_period = duration()?,
                "retries" => check.retries = value.parse().map_err(|_| format!("--retries={value} is not a count"))?,
                other => return Err(format!("the flag --{other} is not handled by the fast path")),
            }
            flags += 1;
            rest = flag[end..].trim_start();
        }
        let (word, command) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if word.eq_ignore_ascii_case("NONE") && command.trim().is_empty() {
            if flags > 0 {
                return Err("HEALTHCHECK NONE takes no flags".into());
            }
            check.test = vec!["NONE".into()];
        } else if word.eq_ignore_ascii_case("CMD") {
            check.test = match exec_form(command) {
                Some(exec) => std::iter::once("CMD".to_string()).chain(exec).collect(),
                None if !command.trim().is_empty() => vec!["CMD-SHELL".into(), command.trim().to_string()],
                None => return Err("HEALTHCHECK CMD names no command".into()),
            };
        } else {
            return Err("expects CMD or NONE".into());
        }
        if check.retries > 126 {
            return Err("--retries above 126 is not handled by the fast path".into());
        }
        Ok(check)
    }

    /// Docker's config form: durations in nanoseconds, zeros left out.
    fn to_json(&self) -> Value {
        let mut check = Map::new();
        check.insert("Test".into(), json!(self.test));
        for (name, value) in [
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("StartPeriod", self.start_period),
            ("Retries", self.retries),
        ] {
            if value != 0 {
                check.insert(name.into(), json!(value));
            }
        }
        Value::Object(check)
    }

    /// How BuildKit's history shows it: Go's `%q` of its health config struct,
    /// `&{["CMD" "arq"] "30s" "10s" "20s" '\x03'}`.
    fn go_format(&self) -> String {
        format!(
            "&{{{} {} {} {} {}}}",
            go_quote_list(&self.test),
            go_quote(&go_duration(self.interval)),
            go_quote(&go_duration(self.timeout)),
            go_quote(&go_duration(self.start_period)),
            go_quote_rune(self.retries)
        )
    }
}

/// The `config` object of an image config (created when missing).
fn settings(image: &mut Value) -> &mut Map<String, Value> {
    if !image.is_object() {
        *image = json!({});
    }
    let top = image.as_object_mut().expect("an object");
    let settings = top.entry("config").or_insert_with(|| json!({}));
    if !settings.is_object() {
        *settings = json!({});
    }
    settings.as_object_mut().expect("an object")
}

/// The object `name` of `map` (created when missing or null).
fn object<'a>(map: &'a mut Map<String, Value>, name: &str) -> &'a mut Map<String, Value> {
    let value = map.entry(name).or_insert_with(|| json!({}));
    if !value.is_object() {
        *value = json!({});
    }
    value.as_object_mut().expect("an object")
}

/// The list `name` of `map` (created when missing or null).
fn array<'a>(map: &'a mut Map<String, Value>, name: &str) -> &'a mut Vec<Value> {
    let value = map.entry(name).or_insert_with(|| json!([]));
    if !value.is_array() {
        *value = json!([]);
    }
    value.as_array_mut().expect("a list")
}

/// `8123` or `8123/tcp` as Docker keys it (`8123/tcp`); ranges are left to BuildKit.
fn port(text: &str) -> Result<String, String> {
    let (number, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
    let protocol = protocol.to_ascii_lowercase();
    if number.parse::<u16>().is_err() || !["tcp", "udp", "sctp"].contains(&protocol.as_str()) {
        return Err(format!("the port {text:?} is not one port the fast path handles"));
    }
    Ok(format!("{number}/{protocol}"))
}

/// The words of an instruction, split at whitespace outside quotes; quotes and escapes stay
/// (they are resolved when each word is expanded).
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\\', q) if q != Some('\'') => {
                word.push(c);
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            ('"' | '\'', None) => {
                quote = Some(c);
                word.push(c);
            }
            (c, Some(q)) if c == q => {
                quote = None;
                word.push(c);
            }
            (c, None) if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (c, _) => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The `KEY=VALUE` pairs of an `ENV` or `LABEL` (values still raw), or the old one-pair form
/// `KEY VALUE...` when the first word has no `=`.
fn pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let words = split_words(text);
    let Some(first) = words.first() else { return Err("names nothing".into()) };
    if !first.contains('=') {
        let value = text.trim_start()[first.len()..].trim();
        return Ok(vec![(first.clone(), value.to_string())]);
    }
    words
        .iter()
        .map(|word| match word.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((expand_word(key, &|_| None), value.to_string())),
            _ => Err(format!("{word:?} is not KEY=VALUE")),
        })
        .collect()
}

/// `K=V K2=V2`, as BuildKit's history shows `ENV` and `LABEL`.
fn joined_pairs(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(" ")
}

/// One word with its quotes and escapes resolved and its variables substituted (none inside
/// single quotes), the way BuildKit's shell lexer reads `ENV`, `LABEL`, `ARG` and the like.
fn expand_word(raw: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    // Literal text goes in with `$` doubled, which [`substitute`] turns back into one `$`.
    let literal = |c: char, out: &mut String| {
        if c == '$' {
            out.push_str("$$");
        } else {
            out.push(c);
        }
    };
    let mut pending = String::new();
    let mut quote = None;
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\'', None) => quote = Some('\''),
            ('\'', Some('\'')) => quote = None,
            (c, Some('\'')) => literal(c, &mut pending),
            ('"', None) => quote = Some('"'),
            ('"', Some('"')) => quote = None,
            ('\\', _) => match chars.next() {
                Some(next) => literal(next, &mut pending),
                None => pending.push('\\'),
            },
            (c, _) => pending.push(c),
        }
    }
    substitute(&pending, lookup)
}

/// Go's `%q` of a string slice: `["a" "b"]`.
fn go_quote_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|item| go_quote(item)).collect::<Vec<_>>().join(" "))
}

/// Go's `%q` of a string (`strconv.Quote`), for the ASCII and printable text Dockerfiles hold.
fn go_quote(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => push_go_escaped(c, &mut out),
        }
    }
    out.push('"');
    out
}

/// Go's `%q` of an integer: the quoted character with that code (`'\x03'` for 3).
fn go_quote_rune(code: u64) -> String {
    let c = char::from_u32(code as u32).unwrap_or('\u{fffd}');
    let mut out = String::from('\'');
    match c {
        '\'' => out.push_str("\\'"),
        '\\' => out.push_str("\\\\"),
        c => push_go_escaped(c, &mut out),
    }
    out.push('\'');
    out
}

/// One character as Go's quoting writes it: control characters escaped, the rest as is.
fn push_go_escaped(c: char, out: &mut String) {
    match c {
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
        c => out.push(c),
    }
}

/// A Go duration (`30s`, `1m30s`, `1.5s`, `500ms`) in nanoseconds, as `time.ParseDuration`
/// reads the positive ones.
fn go_duration_nanos(text: &str) -> Option<u64> {
    const UNITS: [(&str, f64); 8] =
        [("ns", 1.0), ("us", 1e3), ("µs", 1e3), ("μs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)];
    if text == "0" {
        return Some(0);
    }
    let mut rest = text;
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let (_, scale) = UNITS.iter().find(|(unit, _)| *unit == &rest[..unit_end])?;
        total += number * scale;
        rest = &rest[unit_end..];
    }
    Some(total.round() as u64)
}

/// Go's `time.Duration.String`: `0s`, `500ms`, `30s`, `1m30s`, `1h0m0s`.
fn go_duration(nanos: u64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", fraction(nanos, 3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", fraction(nanos, 6));
    }
    let seconds = fraction(nanos % 60_000_000_000, 9);
    let minutes = nanos / 60_000_000_000;
    match (minutes / 60, minutes % 60) {
        (0, 0) => format!("{seconds}s"),
        (0, minutes) => format!("{minutes}m{seconds}s"),
        (hours, minutes) => format!("{hours}h{minutes}m{seconds}s"),
    }
}

/// `value / 10^digits` with its fraction's trailing zeros dropped (`1500, 3` is `1.5`).
fn fraction(value: u64, digits: u32) -> String {
    let scale = 10u64.pow(digits);
    let (whole, part) = (value / scale, value % scale);
    if part == 0 {
        return whole.to_string();
    }
    let part = format!("{part:0width$}", width = digits as usize);
    format!("{whole}.{}", part.trim_end_matches('0'))
}

/// The step of a build plan that derives an image from another image's pushed manifest.
#[derive(Debug, PartialEq, Eq)]
pub struct Derivation {
    /// The image (compose service) it is derived from, and where that image's manifest is.
    pub from_service: String,
    pub from_repository: String,
    pub from_tag: String,
    /// Where the derived image goes, and its tags (the `inputs-` tag last, so that it only
    /// ever names a complete image).
    pub repository: String,
    pub tags: Vec<String>,
    pub stage: MetadataStage,
    /// The build args the build would pass (`VERSION`, `REVISION` among them).
    pub build_args: BTreeMap<String, String>,
    /// The labels the build would pass with `--label`.
    pub labels: Vec<(String, String)>,
    /// The time written into the config and its new history entries: the commit's, so that
    /// deriving again from the same manifest gives the same digest.
    pub created: String,
    /// The base as this build makes it, when the plan knows it whole; else it is read from the
    /// registry once its step has pushed it.
    pub planned_base: Option<PlannedBase>,
}

/// The image a derivation starts from, when this build makes it from parts it knows whole
/// (a source swap): its manifest, its config and the layers it uploads. The derivation then
/// reads nothing of it from the registry, and runs beside the base's own step: it mounts the
/// layers the base keeps from its previous image and uploads the new ones itself.
#[derive(Clone, PartialEq, Eq)]
pub struct PlannedBase {
    pub manifest: Manifest,
    pub config: Value,
    pub new_layers: Vec<Layer>,
}

impl fmt::Debug for PlannedBase {
    // The layers' bytes would drown everything else.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layers: Vec<&str> = self.new_layers.iter().map(|layer| layer.digest.as_str()).collect();
        f.debug_struct("PlannedBase").field("manifest", &self.manifest.digest).field("new_layers", &layers).finish()
    }
}

impl Derivation {
    /// What `--dry-run` shows: the reason, then every registry call.
    pub fn show(&self, f: &mut fmt::Formatter<'_>, registry: &str) -> fmt::Result {
        let Derivation { from_service, from_repository, from_tag, repository, .. } = self;
        writeln!(
            f,
            "  derived from {from_service}'s manifest (metadata only: {}): no build, no pull",
            self.stage.keywords()
        )?;
        match &self.planned_base {
            None => {
                writeln!(f, "  registry: GET {registry} /v2/{from_repository}/manifests/{from_tag} and its config")?
            }
            Some(base) => {
                writeln!(
                    f,
                    "  from {from_service}'s swapped manifest {}, beside its step (the tags once {from_service}'s stand)",
                    base.manifest.digest
                )?;
                for layer in &base.new_layers {
                    writeln!(
                        f,
                        "  registry: POST+PUT {registry} /v2/{repository}/blobs/uploads/ ({from_service}'s new layer \
                         {}, {} bytes)",
                        layer.digest,
                        layer.blob.len()
                    )?;
                }
            }
        }
        writeln!(
            f,
            "  registry: POST {registry} /v2/{repository}/blobs/uploads/?mount=<layer>&from={from_repository} \
             (each layer it lacks)"
        )?;
        show_config_and_tags(f, registry, repository, &self.tags, "derived")
    }

    /// Reads the base image's manifest and config (unless the plan holds them), mounts its
    /// layers and uploads the new config (and the base's new layers, where the plan holds
    /// them), waits for `base_done` (the base's own step, which must succeed first), then puts
    /// the new manifest under every tag. Returns that manifest.
    pub fn run(
        &self,
        registry: &Registry,
        log: &mut File,
        task: &TaskProgress,
        base_done: &dyn Fn() -> Result<()>,
    ) -> Result<Manifest> {
        let Derivation { from_repository, from_tag, repository, .. } = self;
        let (base, mut base_config, new_layers) = match &self.planned_base {
            Some(planned) => (planned.manifest.clone(), planned.config.clone(), planned.new_layers.as_slice()),
            None => {
                let base = registry
                    .manifest(from_repository, from_tag)?
                    .with_context(|| format!("{from_repository}:{from_tag} is not in the registry"))?;
                if base.is_index() {
                    bail!(
                        "{from_repository}:{from_tag} is a manifest list, not one image: derive from a \
                         single-platform image, or build with --no-fast-path"
                    );
                }
                let config = registry.image_config(from_repository, &base)?;
                (base, config, &[][..])
            }
        };
        // The base's own --label describing its sources is not BuildKit's for this stage (a
        // stage inherits the Dockerfile's LABELs, not another target's --labels); the others
        // the derived image's labels replace anyway.
        if !self.labels.iter().any(|(name, _)| name == OUTSIDE_SOURCES_LABEL)
            && let Some(labels) = base_config["config"]["Labels"].as_object_mut()
        {
            labels.remove(OUTSIDE_SOURCES_LABEL);
        }
        let config =
            derive_config(&base_config, &self.stage.instructions, &self.build_args, &self.labels, &self.created)
                .with_context(|| format!("cannot derive {repository} from {from_repository}:{from_tag}"))?;
        let config_bytes = serde_json::to_vec(&config).context("cannot write the derived image config")?;
        let mut manifest: Value = serde_json::from_slice(&base.bytes)
            .with_context(|| format!("the manifest of {from_repository}:{from_tag} is not JSON"))?;
        let layers: Vec<String> = manifest["layers"]
            .as_array()
            .with_context(|| format!("the manifest of {from_repository}:{from_tag} lists no layers"))?
            .iter()
            .filter_map(|layer| layer["digest"].as_str().map(str::to_string))
            .collect();
        let kept: Vec<&String> =
            layers.iter().filter(|digest| !new_layers.iter().any(|layer| layer.digest == **digest)).collect();
        let uploaded: Vec<&[u8]> = new_layers.iter().map(|layer| layer.blob.as_slice()).collect();
        // Mounting what the base keeps and uploading what is new are independent round trips.
        let (mounted, uploaded) = std::thread::scope(|scope| {
            let mounted =
                scope.spawn(|| at_once(&kept, |layer| registry.mount_blob(repository, layer, from_repository)));
            let uploaded = upload_blobs(registry, repository, &uploaded, &config_bytes, log);
            (mounted.join().expect("mounting layers panicked"), uploaded)
        });
        mounted?;
        uploaded?;
        let line = format!("{} layers of {from_repository}:{from_tag} mounted into {repository}", kept.len());
        task.line(&line);
        writeln!(log, "{line}")?;
        manifest["config"]["digest"] = Value::String(sha256_digest(&config_bytes));
        manifest["config"]["size"] = json!(config_bytes.len());
        let bytes = serde_json::to_vec(&manifest).context("cannot write the derived manifest")?;
        let derived = Manifest { media_type: base.media_type.clone(), digest: sha256_digest(&bytes), bytes };
        base_done()?;
        put_tags(registry, repository, &derived, Manifested::New, &self.tags, log, task)?;
        Ok(derived)
    }
}

/// What `--dry-run` shows of [`upload_blobs`] and [`put_tags`]; `what` names the manifest
/// (`derived`).
pub fn show_config_and_tags(
    f: &mut fmt::Formatter<'_>,
    registry: &str,
    repository: &str,
    tags: &[String],
    what: &str,
) -> fmt::Result {
    writeln!(f, "  registry: POST+PUT {registry} /v2/{repository}/blobs/uploads/ (the new config)")?;
    for tag in tags {
        writeln!(f, "  registry: PUT {registry} /v2/{repository}/manifests/{tag} (the {what} manifest)")?;
    }
    Ok(())
}

/// Uploads an image's new layers (`new_layers`, none for a derived image) and its new `config`
/// to `repository`, all at once, logging the config's digest.
pub fn upload_blobs(
    registry: &Registry,
    repository: &str,
    new_layers: &[&[u8]],
    config: &[u8],
    log: &mut dyn Write,
) -> Result<()> {
    let blobs: Vec<&[u8]> = new_layers.iter().copied().chain([config]).collect();
    let digests = at_once(&blobs, |blob| registry.upload_blob(repository, blob))?;
    if let Some(config_digest) = digests.last() {
        writeln!(log, "config {config_digest} uploaded ({} bytes)", config.len())?;
    }
    Ok(())
}

/// What a manifest being tagged is, which decides whether each tag is checked first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manifested {
    /// Just made by this build: no tag names it yet, so each is put straight away.
    New,
    /// One the registry holds: a tag may name it already, which a HEAD finds (and then nothing
    /// is written, which a repository that disables redeploy requires).
    Existing,
}

/// Puts `manifest` under every tag of `repository` (the last one last), each logged.
pub fn put_tags(
    registry: &Registry,
    repository: &str,
    manifest: &Manifest,
    manifested: Manifested,
    tags: &[String],
    log: &mut File,
    task: &TaskProgress,
) -> Result<()> {
    for tag in tags {
        task.line(&format!("tag {repository}:{tag} -> {}", manifest.digest));
        writeln!(log, "PUT /v2/{repository}/manifests/{tag} ({})", manifest.digest)?;
    }
    let put = |tag: &String| match manifested {
        Manifested::New => registry.put_new_manifest(repository, tag, manifest),
        Manifested::Existing => registry.put_manifest(repository, tag, manifest),
    };
    // Each tag is a round trip or two, so they go at once; all but the last, which is the
    // inputs marker where there is one: later builds take it to mean the image is complete
    // under every tag, so it is put only once the others stand.
    let Some((last, others)) = tags.split_last() else { return Ok(()) };
    at_once(others, put)?;
    put(last)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "\
ARG PYTHON_IMAGE=python:3.10-slim-bullseye
FROM ${PYTHON_IMAGE} AS backend
RUN true
CMD [\"uvicorn\", \"intric.main:app\"]
FROM backend AS worker
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \\
    CMD [\"arq\", \"--check\", \"intric.worker.WorkerSettings\"]
CMD [\"arq\", \"intric.worker.WorkerSettings\"]
FROM backend AS backend-default
";

    fn parsed(text: &str) -> Dockerfile {
        Dockerfile::parse("backend/Dockerfile", text).unwrap()
    }

    fn refusal(stage_text: &str) -> String {
        let text = format!("FROM python AS backend\nFROM backend AS worker\n{stage_text}\n");
        metadata_stage(&parsed(&text), Some("worker")).unwrap_err()
    }

    #[test]
    fn the_worker_is_a_metadata_stage_on_the_backend() {
        let stage = metadata_stage(&parsed(OURS), Some("worker")).unwrap();
        assert_eq!(stage.base, "backend");
        assert_eq!(stage.keywords(), "HEALTHCHECK, CMD");
        let default = metadata_stage(&parsed(OURS), Some("backend-default")).unwrap();
        assert_eq!(default.keywords(), "no instructions", "a plain alias of another stage qualifies too");
    }

    #[test]
    fn stages_that_build_or_start_from_an_image_are_refused_with_the_line() {
        assert_eq!(
            metadata_stage(&parsed(OURS), Some("backend")).unwrap_err(),
            "starts from the image ${PYTHON_IMAGE}, not from another stage"
        );
        assert_eq!(
            refusal("RUN true"),
            "backend/Dockerfile line 3: RUN is not a metadata instruction the fast path applies"
        );
        assert_eq!(
            refusal("COPY a b"),
            "backend/Dockerfile line 3: COPY is not a metadata instruction the fast path applies"
        );
        assert_eq!(
            refusal("WORKDIR /app"),
            "backend/Dockerfile line 3: WORKDIR may create a directory, which only a build makes"
        );
        assert!(refusal("VOLUME /data").contains("VOLUME is not a metadata instruction"));
        assert!(refusal("SHELL [\"/bin/bash\", \"-c\"]").contains("SHELL is not"));
        assert!(refusal("ONBUILD RUN true").contains("ONBUILD is not"));
        assert!(refusal("EXPOSE 8000-8002").contains("is not one port"));
        assert!(refusal("HEALTHCHECK --start-interval=1s CMD true").contains("--start-interval is not handled"));
        assert!(refusal("HEALTHCHECK --interval=soon CMD true").contains("is not a duration"));
        assert!(refusal("HEALTHCHECK true").contains("expects CMD or NONE"));
        assert!(refusal("HEALTHCHECK --retries=3 NONE").contains("takes no flags"));
        assert!(refusal("CMD").contains("names no command"));
    }

    #[test]
    fn the_config_changes_as_buildkit_writes_them() {
        let base = json!({
            "architecture": "amd64",
            "config": {
                "Env": ["PATH=/usr/bin", "INTRIC_VERSION=1.0.0"],
                "Cmd": ["uvicorn"],
                "Labels": {"org.opencontainers.image.title": "intric-backend", "keep": "me"},
                "User": "intric",
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:a"]},
            "history": [{"created_by": "RUN true"}],
        });
        let text = "FROM python AS backend\nFROM backend AS worker\nARG VERSION=0.0.0-dev\nARG UNSET\n\
                    ENV APP_VERSION=${VERSION} PATH=/opt/bin:$PATH QUOTED=\"a b\" LITERAL='$VERSION'\n\
                    LABEL org.opencontainers.image.title=from-dockerfile extra=\"x y\"\n\
                    USER 1000:1000\nEXPOSE 8123 53/udp\nSTOPSIGNAL SIGINT\n\
                    HEALTHCHECK --interval=1m30s --timeout=500ms --retries=10 CMD curl -f http://localhost/\n\
                    ENTRYPOINT [\"tini\", \"--\"]\nCMD arq worker\n";
        let stage = metadata_stage(&parsed(text), Some("worker")).unwrap();
        let args = BTreeMap::from([("VERSION".to_string(), "1.2.3".to_string())]);
        let labels = vec![("org.opencontainers.image.title".to_string(), "intric-worker".to_string())];
        let config = derive_config(&base, &stage.instructions, &args, &labels, "2025-11-27T08:45:00Z").unwrap();
        let settings = &config["config"];
        assert_eq!(
            settings["Env"],
            json!([
                "PATH=/opt/bin:/usr/bin",
                "INTRIC_VERSION=1.0.0",
                "APP_VERSION=1.2.3",
                "QUOTED=a b",
                "LITERAL=$VERSION"
            ])
        );
        assert_eq!(
            settings["Labels"],
            json!({"org.opencontainers.image.title": "intric-worker", "keep": "me", "extra": "x y"}),
            "the build's labels win over the Dockerfile's"
        );
        assert_eq!(settings["User"], "1000:1000");
        assert_eq!(settings["ExposedPorts"], json!({"8123/tcp": {}, "53/udp": {}}));
        assert_eq!(settings["StopSignal"], "SIGINT");
        assert_eq!(
            settings["Healthcheck"],
            json!({"Test": ["CMD-SHELL", "curl -f http://localhost/"], "Interval": 90_000_000_000u64, "Timeout": 500_000_000, "Retries": 10})
        );
        assert_eq!(settings["Entrypoint"], json!(["tini", "--"]));
        assert_eq!(settings["Cmd"], json!(["/bin/sh", "-c", "arq worker"]), "CMD after ENTRYPOINT stays");
        assert_eq!(settings["ArgsEscaped"], true);
        assert_eq!(config["created"], "2025-11-27T08:45:00Z");
        assert_eq!(config["rootfs"], base["rootfs"], "the layers stay");
        let history: Vec<&str> =
            config["history"].as_array().unwrap().iter().map(|entry| entry["created_by"].as_str().unwrap()).collect();
        assert_eq!(
            history,
            [
                "RUN true",
                "ARG VERSION=0.0.0-dev",
                "ARG UNSET",
                "ENV APP_VERSION=1.2.3 PATH=/opt/bin:/usr/bin QUOTED=a b LITERAL=$VERSION",
                "LABEL org.opencontainers.image.title=from-dockerfile extra=x y",
                "USER 1000:1000",
                "EXPOSE map[53/udp:{} 8123/tcp:{}]",
                "STOPSIGNAL SIGINT",
                "HEALTHCHECK &{[\"CMD-SHELL\" \"curl -f http://localhost/\"] \"1m30s\" \"500ms\" \"0s\" '\\n'}",
                "ENTRYPOINT [\"tini\" \"--\"]",
                "CMD [\"/bin/sh\" \"-c\" \"arq worker\"]",
            ]
        );
        let entry = &config["history"][1];
        assert_eq!(entry["empty_layer"], true);
        assert_eq!(entry["comment"], "buildkit.dockerfile.v0");
        assert_eq!(entry["created"], "2025-11-27T08:45:00Z");
    }

    #[test]
    fn our_worker_gets_the_healthcheck_and_history_buildkit_gave_it() {
        // What BuildKit (dockerd 20.10) wrote for our worker stage, read from a pushed image.
        let stage = metadata_stage(&parsed(OURS), Some("worker")).unwrap();
        let config = derive_config(&json!({"config": {}}), &stage.instructions, &BTreeMap::new(), &[], "t").unwrap();
        assert_eq!(
            config["config"]["Healthcheck"],
            json!({
                "Test": ["CMD", "arq", "--check", "intric.worker.WorkerSettings"],
                "Interval": 30_000_000_000u64, "Timeout": 10_000_000_000u64, "StartPeriod": 20_000_000_000u64, "Retries": 3
            })
        );
        let history: Vec<&str> =
            config["history"].as_array().unwrap().iter().map(|entry| entry["created_by"].as_str().unwrap()).collect();
        assert_eq!(
            history,
            [
                r#"HEALTHCHECK &{["CMD" "arq" "--check" "intric.worker.WorkerSettings"] "30s" "10s" "20s" '\x03'}"#,
                r#"CMD ["arq" "intric.worker.WorkerSettings"]"#,
            ]
        );
    }

    #[test]
    fn entrypoint_without_a_cmd_of_the_stage_clears_the_inherited_cmd() {
        let text = "FROM python AS backend\nFROM backend AS tool\nENTRYPOINT [\"tool\"]\n";
        let stage = metadata_stage(&parsed(text), Some("tool")).unwrap();
        let config =
            derive_config(&json!({"config": {"Cmd": ["serve"]}}), &stage.instructions, &BTreeMap::new(), &[], "t")
                .unwrap();
        assert!(config["config"].get("Cmd").is_none(), "{config}");
    }

    #[test]
    fn go_formats() {
        for (nanos, shown) in [
            (0, "0s"),
            (999, "999ns"),
            (1_500, "1.5µs"),
            (500_000_000, "500ms"),
            (30_000_000_000, "30s"),
            (1_500_000_000, "1.5s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
        ] {
            assert_eq!(go_duration(nanos), shown);
            assert_eq!(go_duration_nanos(shown), Some(nanos), "{shown}");
        }
        assert_eq!(go_quote_rune(3), r"'\x03'");
        assert_eq!(go_quote_rune(65), "'A'");
        assert_eq!(go_quote_rune(9), r"'\t'");
        assert_eq!(go_quote("a \"b\" \\ c\n"), r#""a \"b\" \\ c\n""#);
    }
}
