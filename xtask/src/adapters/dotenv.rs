//! The `.env` adapter: every task that reads or rewrites a deployment's `.env` (or reads what a
//! template such as `.env.example` says about each variable) goes through [`DotEnv`] and
//! [`VarSpec`].
//!
//! The parser is lossless: a [`DotEnv`] keeps every line as it was written (comments, blank
//! lines, order, quoting), so [`DotEnv::set`] changes one line and [`DotEnv::render`] gives back
//! every other byte unchanged. Values are read the way `docker compose` reads them: an optional
//! `export `, unquoted values ending at ` #`, single quotes literal, double quotes with
//! backslash escapes. Two differences, both refused with an error rather than guessed: quoted
//! values spanning lines, and `${VAR}` interpolation (values are taken literally).
//!
//! A `.env` holds secrets, so nothing here ever puts a value into an error message or a
//! `Debug` output: errors name the file, the line and the key.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A parsed `.env` file: its lines exactly as read, and the variables they define.
#[derive(Clone, PartialEq, Eq)]
pub struct DotEnv {
    /// The file the text came from, for messages only.
    path: PathBuf,
    lines: Vec<Line>,
    /// Whether the text ended with a newline, so rendering gives back the same bytes.
    trailing_newline: bool,
}

/// One line, kept verbatim; `entry` is set when the line defines a variable.
#[derive(Clone, PartialEq, Eq)]
struct Line {
    raw: String,
    entry: Option<Entry>,
}

/// A variable definition: its key and its value after unquoting.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
}

impl DotEnv {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<DotEnv> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        DotEnv::parse(path, &text)
    }

    /// Parses `text`; `path` only names the file in error messages. Every malformed line and
    /// every duplicate key is reported, all in one error, each as `FILE:LINE: what is wrong`.
    pub fn parse(path: &Path, text: &str) -> Result<DotEnv> {
        let trailing_newline = text.ends_with('\n');
        let body = text.strip_suffix('\n').unwrap_or(text);
        let mut lines = Vec::new();
        let mut errors = Vec::new();
        if !text.is_empty() {
            for (index, raw) in body.split('\n').enumerate() {
                let number = index + 1;
                match parse_line(raw) {
                    Ok(entry) => {
                        if let Some(entry) = &entry {
                            let first = lines.iter().position(|line: &Line| {
                                line.entry.as_ref().is_some_and(|other| other.key == entry.key)
                            });
                            if let Some(first) = first {
                                errors.push(format!(
                                    "{}:{number}: {} is defined again (first on line {})",
                                    path.display(),
                                    entry.key,
                                    first + 1
                                ));
                            }
                        }
                        lines.push(Line { raw: raw.to_string(), entry });
                    }
                    Err(problem) => {
                        errors.push(format!("{}:{number}: {problem}", path.display()));
                        lines.push(Line { raw: raw.to_string(), entry: None });
                    }
                }
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        Ok(DotEnv { path: path.to_path_buf(), lines, trailing_newline })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of `key`, or `None` when the file does not define it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries().find(|entry| entry.key == key).map(|entry| entry.value.as_str())
    }

    /// The variables in file order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.lines.iter().filter_map(|line| line.entry.as_ref())
    }

    /// Sets `key` to `value`: rewrites the line that defines it (keeping an `export ` prefix),
    /// or appends a line. Every other line stays byte-identical.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let line = Line { raw: format!("{key}={}", quote(key, value)?), entry: None };
        match self.lines.iter().position(|line| line.entry.as_ref().is_some_and(|entry| entry.key == key)) {
            Some(index) => {
                let export = self.lines[index].raw.trim_start().starts_with("export ");
                let raw = if export { format!("export {}", line.raw) } else { line.raw };
                self.lines[index] = Line { raw, entry: Some(Entry { key: key.into(), value: value.into() }) };
            }
            None => self.insert(self.lines.len(), &[], key, value)?,
        }
        Ok(())
    }

    /// Adds `key` (which must not be defined yet) right after the line defining `after`, or at
    /// the end when `after` is `None` or not defined here, preceded by `comments` (whole lines,
    /// such as the variable's annotation).
    pub fn insert_after(&mut self, after: Option<&str>, comments: &[String], key: &str, value: &str) -> Result<()> {
        if self.get(key).is_some() {
            bail!("{key} is already defined in {}", self.path.display());
        }
        let anchor = after.and_then(|after| {
            self.lines.iter().position(|line| line.entry.as_ref().is_some_and(|entry| entry.key == after))
        });
        let index = anchor.map_or(self.lines.len(), |index| index + 1);
        self.insert(index, comments, key, value)
    }

    fn insert(&mut self, index: usize, comments: &[String], key: &str, value: &str) -> Result<()> {
        if !is_valid_key(key) {
            bail!("{key:?} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)");
        }
        let mut new: Vec<Line> = comments.iter().map(|comment| Line { raw: comment.clone(), entry: None }).collect();
        new.push(Line {
            raw: format!("{key}={}", quote(key, value)?),
            entry: Some(Entry { key: key.into(), value: value.into() }),
        });
        // Appending to a file whose last line has no newline must not glue two lines together.
        if index == self.lines.len() {
            self.trailing_newline = true;
        }
        self.lines.splice(index..index, new);
        Ok(())
    }

    /// The file's text: what was read, with the changes made since.
    pub fn render(&self) -> String {
        let mut text = self.lines.iter().map(|line| line.raw.as_str()).collect::<Vec<_>>().join("\n");
        if self.trailing_newline && !self.lines.is_empty() {
            text.push('\n');
        }
        text
    }

    /// The comment lines directly above line `index` (nearest last), verbatim.
    fn comments_above(&self, index: usize) -> Vec<&str> {
        let mut comments: Vec<&str> = self.lines[..index]
            .iter()
            .rev()
            .take_while(|line| line.entry.is_none() && line.raw.trim_start().starts_with('#'))
            .map(|line| line.raw.as_str())
            .collect();
        comments.reverse();
        comments
    }
}

/// Only the file and the keys: values may be secrets, and a stray `{:?}` must not leak them.
impl fmt::Debug for DotEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DotEnv")
            .field("path", &self.path)
            .field("keys", &self.entries().map(|entry| entry.key.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=<{} bytes>", self.key, self.value.len())
    }
}

/// Whether `key` is a portable variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses one line: `Ok(None)` for blank and comment lines. Error messages describe the
/// problem and may name the key, never the value.
fn parse_line(raw: &str) -> std::result::Result<Option<Entry>, String> {
    // A file edited on Windows ends its lines with CR; compose ignores it, and so do we.
    let line = raw.strip_suffix('\r').unwrap_or(raw).trim_start();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
    let Some((key, rest)) = line.split_once('=') else {
        return Err("not a KEY=VALUE line (no '=')".to_string());
    };
    let key = key.trim_end();
    if !is_valid_key(key) {
        // The "key" of a line without a proper name might be the start of a pasted secret, so
        // it is described, not shown.
        return Err("invalid variable name before '=' (expected [A-Za-z_][A-Za-z0-9_]*)".to_string());
    }
    let value = parse_value(rest.trim_start()).map_err(|problem| format!("{key}: {problem}"))?;
    Ok(Some(Entry { key: key.to_string(), value }))
}

fn parse_value(text: &str) -> std::result::Result<String, String> {
    let (value, after) = match text.chars().next() {
        Some('\'') => {
            let Some(end) = text[1..].find('\'') else {
                return Err("unterminated single quote (values spanning lines are not supported)".to_string());
            };
            (text[1..1 + end].to_string(), &text[end + 2..])
        }
        Some('"') => {
            let mut value = String::new();
            let mut chars = text[1..].char_indices();
            let mut end = None;
            while let Some((index, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(index + 2);
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, 'r')) => value.push('\r'),
                        Some((_, 't')) => value.push('\t'),
                        Some((_, escaped @ ('"' | '\\' | '\''))) => value.push(escaped),
                        // An unknown escape stays as written, as compose keeps it.
                        Some((_, other)) => {
                            value.push('\\');
                            value.push(other);
                        }
                        None => break,
                    },
                    '$' => {
                        return Err(
                            "'$' in a double-quoted value: compose would interpolate it; use single quotes".into()
                        );
                    }
                    c => value.push(c),
                }
            }
            let Some(end) = end else {
                return Err("unterminated double quote (values spanning lines are not supported)".to_string());
            };
            (value, &text[end..])
        }
        _ => {
            // An unquoted value ends at a ` #` comment; a `#` inside a word belongs to it.
            let end = text
                .char_indices()
                .find(|&(index, c)| c == '#' && index > 0 && text[..index].ends_with([' ', '\t']))
                .map_or(text.len(), |(index, _)| index);
            let value = text[..end].trim_end();
            if value.contains('$') {
                return Err("'$' in an unquoted value: compose would interpolate it; use single quotes".into());
            }
            return Ok(value.to_string());
        }
    };
    let after = after.trim_start();
    if !after.is_empty() && !after.starts_with('#') {
        return Err("unexpected text after the closing quote".to_string());
    }
    Ok(value)
}

/// Writes `value` so that compose reads back exactly `value`: bare when it is made of plain
/// characters, else single-quoted (literal, no interpolation), else double-quoted with escapes.
/// `key` only names the variable in the error for a value no quoting can carry.
pub fn quote(key: &str, value: &str) -> Result<String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:@+,=%^*~".contains(c);
    if value.chars().all(plain) {
        return Ok(value.to_string());
    }
    if !value.contains(['\'', '\n', '\r']) {
        return Ok(format!("'{value}'"));
    }
    if value.contains('$') {
        bail!("the value of {key} has both a quote or line break and a '$', which .env cannot carry literally");
    }
    let escaped = value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n").replace('\r', r"\r");
    Ok(format!("\"{escaped}\""))
}

/// `bytes` random bytes from the kernel's CSPRNG, as lowercase hex.
pub fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut buffer))
        .context("cannot read /dev/urandom")?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The type a `.env.example` annotation gives a variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarType {
    String,
    Int,
    Port,
    Bool,
    ImageTag,
    Registry,
    LogLevel,
    Url,
}

impl VarType {
    const ALL: [(&'static str, VarType); 8] = [
        ("string", VarType::String),
        ("int", VarType::Int),
        ("port", VarType::Port),
        ("bool", VarType::Bool),
        ("image-tag", VarType::ImageTag),
        ("registry", VarType::Registry),
        ("loglevel", VarType::LogLevel),
        ("url", VarType::Url),
    ];
}

/// What the template (`.env.example` and the like) says about one variable. An annotation on
/// the line above gives everything:
/// `# <required|optional>, <type>[, secret]: <description>. Example: <value>`; a plain
/// `KEY=value` line (as in the published `.env.production.example`) gives only the name and the
/// default, and the name alone says whether it is a secret ([`is_secret_name`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VarSpec {
    pub name: String,
    pub required: bool,
    pub kind: VarType,
    pub secret: bool,
    /// Empty when nothing describes it.
    pub description: String,
    /// The annotation's example, empty when it gives none.
    pub example: String,
    /// The value the template assigns (the default `env init` copies).
    pub default: String,
    /// The annotation line (when there is one) and the definition line, verbatim, for copying
    /// into a `.env`; empty for a variable only the compose file reads.
    pub lines: Vec<String>,
    /// The services whose compose definition reads it; empty when unknown.
    pub services: Vec<String>,
}

impl VarSpec {
    /// The shortest acceptable value of a secret: "at least N characters" in the description,
    /// else 16.
    pub fn min_length(&self) -> usize {
        let words: Vec<&str> = self.description.split_whitespace().collect();
        words
            .windows(4)
            .find(|window| window[0] == "at" && window[1] == "least" && window[3].starts_with("character"))
            .and_then(|window| window[2].parse().ok())
            .unwrap_or(16)
    }

    /// Whether the template defines it (else only the compose file reads it).
    pub fn in_template(&self) -> bool {
        !self.lines.is_empty()
    }
}

/// Whether a variable's name says it holds a secret: `*_SECRET`, `*_PASSWORD`, `*_KEY`, `*_TOKEN`.
pub fn is_secret_name(name: &str) -> bool {
    ["_SECRET", "_PASSWORD", "_KEY", "_TOKEN"].iter().any(|suffix| name.ends_with(suffix))
}

/// Whether `value` is one of the stand-ins published templates ship, which no real setting
/// is: `your_*_here`, `your.nexus.registry.com`, a host under `example.com`, `example` (any
/// case), `changeme`.
pub fn is_template_placeholder(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    let example_host = lower.split(['/', ':', '@']).any(|part| {
        ["example.com", "example.org", "example.net"]
            .iter()
            .any(|domain| part == *domain || part.ends_with(&format!(".{domain}")))
    });
    ["your_", "your.", "your-"].iter().any(|prefix| lower.starts_with(prefix))
        || example_host
        || lower == "example"
        || ["changeme", "change_me", "change-me"].iter().any(|word| lower.contains(word))
}

/// What the template says about every variable it defines, in file order. A comment right
/// above a variable that starts with `required` or `optional` is its annotation and must
/// parse; a malformed one is an error naming FILE:LINE, all of them reported together.
pub fn parse_spec(example: &DotEnv) -> Result<Vec<VarSpec>> {
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in example.lines.iter().enumerate() {
        let Some(entry) = &line.entry else { continue };
        let location = format!("{}:{}", example.path.display(), index + 1);
        let annotation = example.comments_above(index).last().copied().filter(|comment| is_annotation(comment));
        let plain = VarSpec {
            name: entry.key.clone(),
            required: false,
            kind: VarType::String,
            secret: is_secret_name(&entry.key),
            description: String::new(),
            example: String::new(),
            default: entry.value.clone(),
            lines: vec![line.raw.clone()],
            services: Vec::new(),
        };
        match annotation.map(parse_annotation) {
            None => specs.push(plain),
            Some(Err(problem)) => errors.push(format!("{location}: the annotation of {}: {problem}", entry.key)),
            Some(Ok((required, kind, secret, description, example))) => specs.push(VarSpec {
                required,
                kind,
                secret: secret || plain.secret,
                description,
                example,
                lines: vec![annotation.unwrap_or_default().to_string(), line.raw.clone()],
                ..plain
            }),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(specs)
}

/// Whether a comment is meant as an annotation: its first word is `required` or `optional`.
/// Section headings such as `# Database Configuration (REQUIRED)` are not.
fn is_annotation(comment: &str) -> bool {
    let text = comment.trim_start().trim_start_matches('#').trim_start();
    let first = text.split([',', ':', ' ']).next().unwrap_or_default();
    first == "required" || first == "optional"
}

type Annotation = (bool, VarType, bool, String, String);

fn parse_annotation(comment: &str) -> std::result::Result<Annotation, String> {
    let expected = "expected `# <required|optional>, <type>[, secret]: <description>. Example: <value>`";
    let text = comment.trim_start().trim_start_matches('#').trim();
    let Some((head, rest)) = text.split_once(':') else { return Err(expected.to_string()) };
    let words: Vec<&str> = head.split(',').map(str::trim).collect();
    let required = match words[0] {
        "required" => true,
        "optional" => false,
        _ => return Err(expected.to_string()),
    };
    let Some(kind) = words.get(1).and_then(|word| VarType::ALL.iter().find(|(name, _)| name == word)) else {
        let names: Vec<&str> = VarType::ALL.iter().map(|(name, _)| *name).collect();
        return Err(format!("unknown or missing type (one of {})", names.join(", ")));
    };
    let secret = match &words[2..] {
        [] => false,
        ["secret"] => true,
        _ => return Err(expected.to_string()),
    };
    let rest = rest.trim();
    let (description, example) = match rest.rsplit_once("Example:") {
        Some((description, example)) => (description.trim(), example.trim()),
        None => (rest, ""),
    };
    let description = description.strip_suffix('.').unwrap_or(description);
    Ok((required, kind.1, secret, description.to_string(), example.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DotEnv> {
        DotEnv::parse(Path::new("t/.env"), text)
    }

    #[test]
    fn values_read_as_compose_reads_them() {
        let text = "\
# comment
  
export A=plain
B = spaced value   # trailing comment
C=with#hash
D='single $literal \\n # not a comment'
E=\"double \\\"q\\\" \\\\ line\\nbreak\" # comment
F=
G=''
H=\"\"\r
";
        let env = parse(text).unwrap();
        let got: Vec<(&str, &str)> = env.entries().map(|e| (e.key.as_str(), e.value.as_str())).collect();
        assert_eq!(
            got,
            [
                ("A", "plain"),
                ("B", "spaced value"),
                ("C", "with#hash"),
                ("D", "single $literal \\n # not a comment"),
                ("E", "double \"q\" \\ line\nbreak"),
                ("F", ""),
                ("G", ""),
                ("H", "")
            ]
        );
        assert_eq!(env.render(), text, "rendering is lossless");
        assert_eq!(env.get("missing"), None);
    }

    #[test]
    fn malformed_lines_name_file_and_line_but_never_the_value() {
        let cases = [
            ("just-a-canary-secret\n", "t/.env:1: not a KEY=VALUE line"),
            ("1KEY=canary\n", "t/.env:1: invalid variable name"),
            ("MY-KEY=canary\n", "t/.env:1: invalid variable name"),
            ("=canary\n", "t/.env:1: invalid variable name"),
            ("A=ok\nKEY='canary\n", "t/.env:2: KEY: unterminated single quote"),
            ("KEY=\"canary\n", "t/.env:1: KEY: unterminated double quote"),
            ("KEY=\"canary\\\"\n", "t/.env:1: KEY: unterminated double quote"),
            ("KEY='canary' trailing\n", "t/.env:1: KEY: unexpected text after the closing quote"),
            ("KEY=$canary\n", "t/.env:1: KEY: '$' in an unquoted value"),
            ("KEY=\"${canary}\"\n", "t/.env:1: KEY: '$' in a double-quoted value"),
            ("KEY=a\n\nKEY=canary\n", "t/.env:3: KEY is defined again (first on line 1)"),
        ];
        for (text, expected) in cases {
            let error = format!("{:#}", parse(text).unwrap_err());
            assert!(error.starts_with(expected), "{text:?}: {error}");
            assert!(!error.contains("canary"), "{text:?} leaks its value: {error}");
        }
    }

    #[test]
    fn every_malformed_line_is_reported_at_once() {
        let error = parse("A\nB=ok\nC='x\n").unwrap_err().to_string();
        assert!(error.contains("t/.env:1:") && error.contains("t/.env:3:"), "{error}");
        assert!(!error.contains('\n'), "one line: {error}");
    }

    #[test]
    fn set_changes_one_line_and_keeps_the_rest() {
        let text = "# top\nexport IMAGE_TAG=1.0.0 # old\nOTHER='x'\n\n# end";
        let mut env = parse(text).unwrap();
        env.set("IMAGE_TAG", "1.1.0").unwrap();
        env.set("NEW", "has space").unwrap();
        assert_eq!(env.render(), "# top\nexport IMAGE_TAG=1.1.0\nOTHER='x'\n\n# end\nNEW='has space'\n");
        assert_eq!(env.get("IMAGE_TAG"), Some("1.1.0"));
        assert!(env.set("bad-key", "x").is_err());
    }

    #[test]
    fn quoted_values_read_back_unchanged() {
        for value in ["", "plain-1.2.3", "a b", "it's", "$dollar", "line\nbreak", "back\\slash \"q\"", "#hash", " x "] {
            let mut env = parse("").unwrap();
            env.set("K", value).unwrap();
            let reread = parse(&env.render()).unwrap();
            assert_eq!(reread.get("K"), Some(value), "{:?}", env.render());
        }
        assert!(quote("K", "it's $x").is_err());
    }

    #[test]
    fn insert_after_places_new_variables_with_their_comments() {
        let mut env = parse("A=1\nC=3").unwrap();
        env.insert_after(Some("A"), &["# about B".to_string()], "B", "2").unwrap();
        env.insert_after(None, &[], "D", "4").unwrap();
        assert_eq!(env.render(), "A=1\n# about B\nB=2\nC=3\nD=4\n");
        assert!(env.insert_after(None, &[], "A", "again").is_err());
    }

    #[test]
    fn debug_shows_keys_not_values() {
        let env = parse("JWT_SECRET=canary-value\n").unwrap();
        let shown = format!("{env:?} {:?}", env.entries().collect::<Vec<_>>());
        assert!(shown.contains("JWT_SECRET") && !shown.contains("canary"), "{shown}");
    }

    #[test]
    fn annotations_give_a_spec_per_variable() {
        let example = parse(
            "# Intro\n\n# required, port: Host port. Example: 3000\nPORT=3000\n\
             # required, string, secret: Signing key, at least 32 characters. Example: (generated)\nJWT_SECRET=\n\
             # some prose\n# optional, url: Endpoint, e.g. https://x. Example: https://a.example/b?c=d\nURL=\n",
        )
        .unwrap();
        let specs = parse_spec(&example).unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!((specs[0].required, specs[0].kind, specs[0].secret), (true, VarType::Port, false));
        assert_eq!((specs[0].description.as_str(), specs[0].example.as_str()), ("Host port", "3000"));
        assert_eq!(specs[0].default, "3000");
        assert_eq!(specs[0].lines, ["# required, port: Host port. Example: 3000", "PORT=3000"]);
        assert!(specs[1].secret && specs[1].required);
        assert_eq!(specs[1].min_length(), 32);
        assert_eq!((specs[2].required, specs[2].kind), (false, VarType::Url));
        assert_eq!(specs[2].example, "https://a.example/b?c=d");
        assert_eq!(specs[2].description, "Endpoint, e.g. https://x");
    }

    #[test]
    fn bad_annotations_are_errors_naming_the_line() {
        let cases = [
            ("# required, number: x\nA=1\n", "t/.env:2: the annotation of A: unknown or missing type"),
            ("# required: x\nA=1\n", "t/.env:2: the annotation of A: unknown or missing type"),
            ("# required, int, hidden: x\nA=1\n", "t/.env:2: the annotation of A: expected"),
            ("# required, int\nA=1\n", "t/.env:2: the annotation of A: expected"),
        ];
        for (text, expected) in cases {
            let error = parse_spec(&parse(text).unwrap()).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = crate::adapters::workspace_root().join("docker/.env.example");
        let specs = parse_spec(&DotEnv::read(&path).unwrap()).unwrap();
        let jwt = specs.iter().find(|spec| spec.name == "JWT_SECRET").unwrap();
        assert!(jwt.required && jwt.secret && jwt.min_length() == 32);
        let tag = specs.iter().find(|spec| spec.name == "IMAGE_TAG").unwrap();
        assert_eq!(tag.kind, VarType::ImageTag);
    }

    #[test]
    fn a_plain_template_with_section_comments_gives_plain_specs() {
        let example = parse(
            "# Database Configuration (REQUIRED)\nPOSTGRES_HOST=db\nPOSTGRES_PASSWORD=your_secure_password_here\n\n\
             # Max Sizes (OPTIONAL - Defaults will be used if not provided)\n# mandatory, but not an annotation\n\
             UPLOAD_MAX_FILE_SIZE=10485760\nOPENAI_API_KEY=\nJWT_TOKEN_PREFIX=\n",
        )
        .unwrap();
        let specs = parse_spec(&example).unwrap();
        let shown: Vec<(&str, bool, bool, &str)> =
            specs.iter().map(|s| (s.name.as_str(), s.required, s.secret, s.default.as_str())).collect();
        assert_eq!(
            shown,
            [
                ("POSTGRES_HOST", false, false, "db"),
                ("POSTGRES_PASSWORD", false, true, "your_secure_password_here"),
                ("UPLOAD_MAX_FILE_SIZE", false, false, "10485760"),
                ("OPENAI_API_KEY", false, true, ""),
                ("JWT_TOKEN_PREFIX", false, false, ""),
            ]
        );
        assert!(specs.iter().all(|spec| spec.kind == VarType::String && spec.lines.len() == 1));
        assert_eq!(specs[2].lines, ["UPLOAD_MAX_FILE_SIZE=10485760"], "section comments stay where they are");
    }

    #[test]
    fn template_placeholders() {
        for value in [
            "your.nexus.registry.com",
            "your_secure_jwt_secret_here",
            "example.com",
            "intric.example.com",
            "https://nexus.example.org:8443/x",
            "example",
            "EXAMPLE",
            "ChangeMe",
        ] {
            assert!(is_template_placeholder(value), "{value}");
        }
        for value in ["", "latest", "X-API-Key", "INTRIC", "nexus.intric.se:8082", "examples-team", "yourself"] {
            assert!(!is_template_placeholder(value), "{value}");
        }
        assert!(is_secret_name("JWT_SECRET") && is_secret_name("OPENAI_API_KEY") && is_secret_name("NEXUS_PASSWORD"));
        assert!(!is_secret_name("API_KEY_LENGTH") && !is_secret_name("JWT_TOKEN_PREFIX"));
    }

    #[test]
    fn random_hex_is_random() {
        let (a, b) = (random_hex(32).unwrap(), random_hex(32).unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
