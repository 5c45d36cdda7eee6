//! Build contexts: which files `docker build` sends, and one digest over everything that decides
//! an image, so `build` can skip an image whose inputs did not change.
//!
//! [`DockerIgnore`] applies `.dockerignore` patterns the way BuildKit does (moby's
//! `patternmatcher` and `ignorefile`, and the directory pruning of `fsutil`'s walker). It is pure:
//! it matches strings and reads nothing.
//!
//! [`inputs_digest`] is the one function here that reads the disk: the Dockerfile, the ignore file
//! that applies to it, and every file, symlink and directory of the build context that the ignore
//! file does not exclude. `build` calls it once per image while it gathers its inputs, so the plan
//! built from the result stays a pure function of values.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The version of the digest scheme, hashed first. Changing what goes into the digest (or how it
/// is encoded) must change this tag, so that no digest of the old scheme can equal one of the new
/// and wrongly skip a build.
pub const DIGEST_SCHEME: &str = "intric-inputs-v2";

/// The `.dockerignore` patterns of one build, in file order.
#[derive(Clone, Debug, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

/// One cleaned pattern, compiled the way `patternmatcher` compiles it.
#[derive(Clone, Debug)]
struct Pattern {
    /// The cleaned pattern without its leading `!`.
    text: String,
    /// A `!` pattern: it re-includes what earlier patterns excluded.
    exception: bool,
    kind: Kind,
}

/// `patternmatcher` turns most patterns into a regular expression, but matches two common shapes
/// with plain string operations, which give the same answers.
///
/// Recent versions also test a leading `**` followed by literal text as a plain suffix, so that
/// `**foo` excludes `xfoo`, where the expression (and older Docker, such as Debian's 20.10 client)
/// wants `foo` or `.../foo`. The expression is used here: of the two answers it excludes less, so
/// the digest covers every file either version sends, and a change can never be missed.
#[derive(Clone, Debug)]
enum Kind {
    /// No wildcard at all: the path must equal the pattern.
    Exact,
    /// Literal text followed by a final `**`: the path must start with the text.
    Prefix,
    /// Anything else, matched token by token.
    Glob(Vec<Token>),
}

/// The pieces of the regular expression `patternmatcher` would build from a pattern.
#[derive(Clone, Debug)]
enum Token {
    /// One literal character.
    Char(char),
    /// `?`: one character other than `/`.
    AnyChar,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**` followed by more pattern: nothing, or any run of characters that ends with `/`.
    AnyDirs,
    /// `**` at the end of a pattern that already has a wildcard: any run of characters.
    AnyTail,
    /// `[...]` or `[^...]`: one character in (or not in) the ranges.
    Class { negated: bool, ranges: Vec<(char, char)> },
    /// A bare `^`, which `patternmatcher` leaves unescaped: it only matches at the start.
    Start,
}

impl DockerIgnore {
    /// Parses the text of a `.dockerignore` file, as `ignorefile.ReadAll` and `patternmatcher.New`
    /// do: a UTF-8 byte order mark is dropped, lines starting with `#` are comments, each line is
    /// trimmed, blank lines are skipped, `!` marks an exception, the pattern is cleaned like Go's
    /// `filepath.Clean` and a leading `/` is dropped. A malformed pattern is an error, as in Docker.
    pub fn parse(text: &str) -> Result<DockerIgnore> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (index, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            // Only a `#` in the first column starts a comment: Docker checks before trimming.
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
            }
            let mut cleaned = String::new();
            if !pattern.is_empty() {
                cleaned = clean(pattern);
                if cleaned.len() > 1 && cleaned.starts_with('/') {
                    cleaned.remove(0);
                }
            }
            // `patternmatcher.New` cleans the line once more, with its `!` still in front; this
            // only matters for odd lines such as `!/`, which becomes a bare `!` and an error.
            let line_text = clean(&if exception { format!("!{cleaned}") } else { cleaned });
            let (exception, text) = match line_text.strip_prefix('!') {
                Some("") => bail!("line {}: illegal exclusion pattern: \"!\"", index + 1),
                Some(rest) => (true, rest.to_string()),
                None => (false, line_text),
            };
            let kind = compile(&text).with_context(|| format!("line {}: bad pattern {text:?}", index + 1))?;
            patterns.push(Pattern { text, exception, kind });
        }
        Ok(DockerIgnore { patterns })
    }

    /// Reads the ignore file that applies to a build, as BuildKit picks it: `<Dockerfile
    /// name>.dockerignore` next to the Dockerfile if it exists, else `.dockerignore` at the root of
    /// the context, else none (nothing is excluded).
    pub fn for_build(context: &Path, dockerfile: &Path) -> Result<DockerIgnore> {
        let mut candidates = Vec::new();
        if let Some(name) = dockerfile.file_name() {
            let mut specific = name.to_os_string();
            specific.push(".dockerignore");
            candidates.push(dockerfile.with_file_name(specific));
        }
        candidates.push(context.join(".dockerignore"));
        for path in candidates {
            match fs::read(&path) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    return DockerIgnore::parse(&text).with_context(|| format!("cannot parse {}", path.display()));
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
            }
        }
        Ok(DockerIgnore::default())
    }

    /// Whether the build context leaves out `path`, a clean relative path with `/` separators.
    ///
    /// This is `patternmatcher`'s `MatchesOrParentMatches`: a pattern applies when it matches the
    /// path or any of its parent directories, and the last pattern that applies decides. Patterns
    /// that cannot change the current answer are not even tried, which is also what Docker does.
    pub fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for pattern in &self.patterns {
            if pattern.exception != excluded {
                continue;
            }
            let applies =
                pattern.matches(path) || path.match_indices('/').any(|(slash, _)| pattern.matches(&path[..slash]));
            if applies {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// Whether the walk may skip an excluded directory without looking inside. This is the rule of
    /// BuildKit's sender (`fsutil`), and it decides what is sent, not just how fast: without
    /// exceptions every excluded directory is skipped; with exceptions that are all plain paths, a
    /// directory is skipped unless an exception lies inside it; once any exception has a wildcard,
    /// nothing excluded is skipped, and each file inside is matched on its own. (Docker 20.10 still
    /// skips in that last case; looking inside hashes more files, which is the safe side.)
    fn can_skip(&self, dir: &str) -> bool {
        // `fsutil` ignores a trailing `/**` or `/*` of an exception when it looks for wildcards.
        let exceptions = self.patterns.iter().filter(|pattern| pattern.exception).map(|pattern| {
            let text = pattern.text.strip_suffix("/**").unwrap_or(&pattern.text);
            text.strip_suffix("/*").unwrap_or(text)
        });
        if exceptions.clone().any(|text| text.contains(['*', '[', ']', '?', '^', '\\'])) {
            return false;
        }
        let dir_slash = format!("{dir}/");
        !exceptions.into_iter().any(|text| format!("{text}/").starts_with(&dir_slash))
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix => path.starts_with(&self.text[..self.text.len() - 2]),
            Kind::Glob(tokens) => glob(tokens, path, path.len()),
        }
    }
}

/// Compiles a cleaned pattern (without `!`) the way `patternmatcher`'s `compile` does, after the
/// syntax check `patternmatcher.New` runs through Go's `filepath.Match`.
///
/// Docker pastes most of the pattern into a regular expression, so a few odd patterns mean
/// something there that `filepath.Match` does not: a `*` inside `[...]` becomes a wildcard, and
/// `\d` a digit class. Here they keep the `filepath.Match` meaning (a literal `*`, a literal `d`);
/// no sensible `.dockerignore` relies on either. `[!...]` is a class holding `!`, as in Docker,
/// since only `^` negates.
fn compile(pattern: &str) -> Result<Kind> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut kind = Kind::Exact;
    let mut is_glob = false;
    let mut index = 0;
    while index < chars.len() {
        let ch = chars[index];
        index += 1;
        match ch {
            '*' if chars.get(index) == Some(&'*') => {
                index += 1;
                // `**/` means the same as `**`.
                if chars.get(index) == Some(&'/') {
                    index += 1;
                }
                if index == chars.len() {
                    if !is_glob {
                        kind = Kind::Prefix;
                    } else {
                        tokens.push(Token::AnyTail);
                        is_glob = true;
                    }
                } else {
                    tokens.push(Token::AnyDirs);
                    is_glob = true;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                is_glob = true;
            }
            '?' => {
                tokens.push(Token::AnyChar);
                is_glob = true;
            }
            '\\' => match chars.get(index) {
                Some(&escaped) => {
                    tokens.push(Token::Char(escaped));
                    index += 1;
                    is_glob = true;
                }
                None => bail!("a trailing backslash escapes nothing"),
            },
            '[' => {
                let (class, next) = parse_class(&chars, index)?;
                tokens.push(class);
                index = next;
                is_glob = true;
            }
            ']' => {
                tokens.push(Token::Char(']'));
                is_glob = true;
            }
            '^' => tokens.push(Token::Start),
            _ => tokens.push(Token::Char(ch)),
        }
    }
    Ok(if is_glob { Kind::Glob(tokens) } else { kind })
}

/// Parses a character class whose `[` ends just before `start`, with `filepath.Match`'s syntax:
/// an optional `^`, then at least one character or range (`a-z`), each possibly `\`-escaped, then
/// `]`. Returns the [`Token::Class`] and the index after the `]`.
fn parse_class(chars: &[char], start: usize) -> Result<(Token, usize)> {
    let mut index = start;
    let negated = chars.get(index) == Some(&'^');
    if negated {
        index += 1;
    }
    let mut ranges = Vec::new();
    // One character of a range: `-` and `]` must be escaped there, and the class must go on.
    let single = |index: &mut usize| -> Result<char> {
        let mut ch = *chars.get(*index).context("unclosed character class")?;
        if ch == '-' || ch == ']' {
            bail!("{ch:?} must be escaped in a character class");
        }
        if ch == '\\' {
            *index += 1;
            ch = *chars.get(*index).context("unclosed character class")?;
        }
        *index += 1;
        if *index == chars.len() {
            bail!("unclosed character class");
        }
        Ok(ch)
    };
    loop {
        if chars.get(index) == Some(&']') && !ranges.is_empty() {
            return Ok((Token::Class { negated, ranges }, index + 1));
        }
        let low = single(&mut index)?;
        let mut high = low;
        if chars[index] == '-' {
            index += 1;
            high = single(&mut index)?;
        }
        if low > high {
            bail!("the range {low}-{high} is reversed");
        }
        ranges.push((low, high));
    }
}

/// Whether `tokens` match all of `text`, the tail of a path of `full_len` bytes.
fn glob(tokens: &[Token], text: &str, full_len: usize) -> bool {
    let Some((token, rest)) = tokens.split_first() else {
        return text.is_empty();
    };
    let mut chars = text.chars();
    let first = chars.next();
    let after_first = chars.as_str();
    match token {
        Token::Char(ch) => first == Some(*ch) && glob(rest, after_first, full_len),
        Token::AnyChar => first.is_some_and(|ch| ch != '/') && glob(rest, after_first, full_len),
        Token::Class { negated, ranges } => first.is_some_and(|ch| {
            ranges.iter().any(|&(low, high)| low <= ch && ch <= high) != *negated && glob(rest, after_first, full_len)
        }),
        Token::Star => {
            let mut tail = text;
            loop {
                if glob(rest, tail, full_len) {
                    return true;
                }
                let mut chars = tail.chars();
                match chars.next() {
                    Some(ch) if ch != '/' => tail = chars.as_str(),
                    _ => return false,
                }
            }
        }
        // Go's `.` does not match a newline, so neither do the runs `**` stands for.
        Token::AnyDirs => {
            glob(rest, text, full_len)
                || text
                    .char_indices()
                    .take_while(|&(_, ch)| ch != '\n')
                    .any(|(at, ch)| ch == '/' && glob(rest, &text[at + 1..], full_len))
        }
        Token::AnyTail => !text.contains('\n') && glob(rest, "", full_len),
        Token::Start => text.len() == full_len && glob(rest, text, full_len),
    }
}

/// Go's `filepath.Clean` for `/`-separated paths: no repeated or trailing `/`, no `.` elements,
/// and `..` elements resolved where they can be; an empty path becomes `.`.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// What one entry of the context is (and contributes to the digest).
pub enum EntryKind {
    Directory,
    File { path: PathBuf, executable: bool },
    Symlink { target: Vec<u8> },
}

/// One entry of a build context that the ignore file does not exclude.
pub struct Entry {
    /// The path relative to the context, `/`-separated, as raw bytes.
    pub relative: Vec<u8>,
    pub kind: EntryKind,
}

/// The entries of `context` that a build with `dockerfile` sends (the ignore file applied),
/// sorted by their relative paths as bytes. Sorting whole paths rather than each directory on
/// its own gives one order (`a-b` before `a/b`) whatever order the file system lists them in.
pub fn context_entries(context: &Path, dockerfile: &Path) -> Result<Vec<Entry>> {
    let ignore = DockerIgnore::for_build(context, dockerfile)?;
    sorted_entries(context, &ignore)
}

fn sorted_entries(context: &Path, ignore: &DockerIgnore) -> Result<Vec<Entry>> {
    let metadata =
        fs::metadata(context).with_context(|| format!("cannot read the build context {}", context.display()))?;
    if !metadata.is_dir() {
        bail!("the build context {} is not a directory", context.display());
    }
    let mut entries = Vec::new();
    walk(context, &mut Vec::new(), ignore, false, &mut entries)?;
    entries.sort_unstable_by(|a, b| a.relative.cmp(&b.relative));
    Ok(entries)
}

/// The SHA-256 of everything that decides an image, as 64 lowercase hex digits: the scheme tag,
/// the content of `dockerfile` (inside `context` or not), the `--target` stage, the build args
/// sorted by key (for a repeated key the last one wins, as with docker), the digest of each base
/// image the build pulls (`bases`: reference and digest, sorted; see `images::bases`, so that an
/// updated base rebuilds), and every directory, file
/// and symlink of `context` that the ignore file does not exclude, sorted by relative path (a file
/// by its path, executable bit and content; a symlink by its target, never followed).
///
/// Every variable-length field is length-prefixed and every entry starts with a kind byte, so no
/// two different inputs encode to the same bytes (`a` + `bc` is not `ab` + `c`). The paths of
/// the context and the Dockerfile are not hashed: two checkouts of the same commit agree.
///
/// Sockets, FIFOs and device files are left out: a source tree has none that matter.
pub fn inputs_digest(
    context: &Path,
    dockerfile: &Path,
    target: Option<&str>,
    build_args: &[(String, String)],
    bases: &[(String, String)],
) -> Result<String> {
    Ok(digests(context, dockerfile, target, build_args, bases, None)?.inputs)
}

/// The digests of one build's inputs, from one walk of its context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputsDigests {
    /// [`inputs_digest`].
    pub inputs: String,
    /// With `sources` given: the same inputs without the entries at or under those context
    /// paths (`.` is all of them), but with the ignore file's patterns and the sources' list.
    /// Two commits with the same one differ at most in those sources' files: what the
    /// source-only fast path (the `source_swap` module) can apply to the older image.
    pub outside_sources: Option<String>,
}

/// The label that carries [`InputsDigests::outside_sources`]: a previous image with the same
/// value differs from this build only in its trailing copies' sources.
pub const OUTSIDE_SOURCES_LABEL: &str = "org.intric.outside-sources-digest";

/// The version of the scheme of [`InputsDigests::outside_sources`], hashed first.
const OUTSIDE_SOURCES_SCHEME: &str = "intric-outside-sources-v1";

/// [`inputs_digest`] and, when `sources` are given, [`InputsDigests::outside_sources`].
pub fn digests(
    context: &Path,
    dockerfile: &Path,
    target: Option<&str>,
    build_args: &[(String, String)],
    bases: &[(String, String)],
    sources: Option<&[String]>,
) -> Result<InputsDigests> {
    let ignore = DockerIgnore::for_build(context, dockerfile)?;
    let dockerfile = fs::read(dockerfile).with_context(|| format!("cannot read {}", dockerfile.display()))?;
    let entries = sorted_entries(context, &ignore)?;

    // What both digests hash before the entries: the Dockerfile, target, build args and bases.
    let mut header = Vec::new();
    push_field(&mut header, &dockerfile);
    match target {
        None => header.push(0),
        Some(target) => {
            header.push(1);
            push_field(&mut header, target.as_bytes());
        }
    }
    let build_args: BTreeMap<&str, &str> =
        build_args.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
    header.extend((build_args.len() as u64).to_le_bytes());
    for (key, value) in build_args {
        push_field(&mut header, key.as_bytes());
        push_field(&mut header, value.as_bytes());
    }
    let bases: BTreeMap<&str, &str> = bases.iter().map(|(image, digest)| (image.as_str(), digest.as_str())).collect();
    header.extend((bases.len() as u64).to_le_bytes());
    for (image, digest) in bases {
        push_field(&mut header, image.as_bytes());
        push_field(&mut header, digest.as_bytes());
    }

    let mut hasher = Sha256::new();
    let mut scheme = Vec::new();
    push_field(&mut scheme, DIGEST_SCHEME.as_bytes());
    hasher.update(&scheme);
    hasher.update(&header);
    let mut outside = sources.map(|sources| {
        let mut prefix = Vec::new();
        push_field(&mut prefix, OUTSIDE_SOURCES_SCHEME.as_bytes());
        // The ignore file may lie under a source, and it decides what the sources hold.
        prefix.extend((ignore.patterns.len() as u64).to_le_bytes());
        for pattern in &ignore.patterns {
            prefix.push(u8::from(pattern.exception));
            push_field(&mut prefix, pattern.text.as_bytes());
        }
        prefix.extend((sources.len() as u64).to_le_bytes());
        for source in sources {
            push_field(&mut prefix, source.as_bytes());
        }
        let mut outside = Sha256::new();
        outside.update(&prefix);
        outside.update(&header);
        (outside, sources)
    });

    // One buffer for every file: the context may hold thousands of small files.
    let mut buffer = vec![0; 64 * 1024];
    for entry in &entries {
        let mut bytes = Vec::new();
        match &entry.kind {
            EntryKind::Directory => {
                bytes.push(b'd');
                push_field(&mut bytes, &entry.relative);
            }
            EntryKind::File { path, executable } => {
                bytes.push(b'f');
                push_field(&mut bytes, &entry.relative);
                bytes.push(u8::from(*executable));
                // The content goes in as its own digest, a fixed 32 bytes, so it needs no length
                // prefix, and a file that grows while it is read cannot shift the fields after it.
                bytes
                    .extend(file_digest(path, &mut buffer).with_context(|| format!("cannot read {}", path.display()))?);
            }
            EntryKind::Symlink { target } => {
                bytes.push(b'l');
                push_field(&mut bytes, &entry.relative);
                push_field(&mut bytes, target);
            }
        }
        hasher.update(&bytes);
        if let Some((outside, sources)) = &mut outside
            && !sources.iter().any(|source| under(&entry.relative, source))
        {
            outside.update(&bytes);
        }
    }
    Ok(InputsDigests {
        inputs: format!("{:x}", hasher.finalize()),
        outside_sources: outside.map(|(outside, _)| format!("{:x}", outside.finalize())),
    })
}

/// Whether the context path `relative` is `source` or lies under it (`.` holds everything).
pub fn under(relative: &[u8], source: &str) -> bool {
    source == "."
        || relative.strip_prefix(source.as_bytes()).is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

/// Appends one length-prefixed field to `out`.
fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend((bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn file_digest(path: &Path, buffer: &mut [u8]) -> io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    loop {
        match file.read(buffer) {
            Ok(0) => return Ok(hasher.finalize().into()),
            Ok(read) => hasher.update(&buffer[..read]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// Collects the entries below `dir`, whose path relative to the context is `relative` (empty for
/// the context itself). `excluded` says that `dir` itself is excluded and is only walked because
/// an exception might re-include something inside it.
fn walk(dir: &Path, relative: &mut Vec<u8>, ignore: &DockerIgnore, excluded: bool, out: &mut Vec<Entry>) -> Result<()> {
    let listing = match fs::read_dir(dir) {
        // Like BuildKit, an unreadable directory that is excluded anyway is no error.
        Err(error) if excluded && error.kind() == io::ErrorKind::PermissionDenied => return Ok(()),
        listing => listing.with_context(|| format!("cannot list {}", dir.display()))?,
    };
    for item in listing {
        let item = item.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = item.path();
        let base_len = relative.len();
        if !relative.is_empty() {
            relative.push(b'/');
        }
        relative.extend_from_slice(item.file_name().as_bytes());
        let result = visit(&item, path, relative, ignore, out);
        relative.truncate(base_len);
        result?;
    }
    Ok(())
}

fn visit(
    item: &fs::DirEntry,
    path: PathBuf,
    relative: &mut Vec<u8>,
    ignore: &DockerIgnore,
    out: &mut Vec<Entry>,
) -> Result<()> {
    // `file_type` does not follow symlinks, so a link to a directory is hashed as a link.
    let file_type = item.file_type().with_context(|| format!("cannot read {}", path.display()))?;
    let excluded = ignore.excludes(&String::from_utf8_lossy(relative));
    if file_type.is_dir() {
        if excluded && ignore.can_skip(&String::from_utf8_lossy(relative)) {
            return Ok(());
        }
        if !excluded {
            out.push(Entry { relative: relative.clone(), kind: EntryKind::Directory });
        }
        return walk(&path, relative, ignore, excluded, out);
    }
    if excluded {
        return Ok(());
    }
    let kind = if file_type.is_file() {
        let metadata = item.metadata().with_context(|| format!("cannot read {}", path.display()))?;
        // Only the owner's executable bit counts, as in git, which records just 644 or 755: the
        // other bits depend on the umask of whoever checked the tree out, and letting them in
        // would give two checkouts of one commit different digests and a needless rebuild.
        let executable = metadata.permissions().mode() & 0o100 != 0;
        EntryKind::File { path, executable }
    } else if file_type.is_symlink() {
        let target = fs::read_link(&path).with_context(|| format!("cannot read the symlink {}", path.display()))?;
        EntryKind::Symlink { target: target.as_os_str().as_bytes().to_vec() }
    } else {
        return Ok(());
    };
    out.push(Entry { relative: relative.clone(), kind });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::symlink;
    use std::time::Instant;

    /// `(patterns, path, excluded)`.
    const MATCHER_CASES: &[(&str, &str, bool)] = &[
        // Plain names match at the top only, and cover everything below.
        ("node_modules", "node_modules", true),
        ("node_modules", "node_modules/react/index.js", true),
        ("node_modules", "apps/web/node_modules", false),
        ("node_modules", "node_modules_old", false),
        ("**/node_modules", "apps/web/node_modules/react/index.js", true),
        ("**/node_modules", "node_modules/x", true),
        ("**/node_modules", "apps/my_node_modules/x", false),
        // `*` stays inside one directory level.
        ("*.md", "README.md", true),
        ("*.md", "docs/guide.md", false),
        ("*/*.md", "docs/guide.md", true),
        ("**/*.pyc", "a.pyc", true),
        ("**/*.pyc", "intric/server/__pycache__/main.cpython-312.pyc", true),
        ("**/*.pyc", "intric/main.py", false),
        ("**/*.py[cod]", "x/y.pyo", true),
        ("**/*.py[cod]", "x/y.pyx", false),
        // The last pattern that applies wins.
        ("*.md\n!README.md", "README.md", false),
        ("*.md\n!README.md", "CHANGES.md", true),
        ("!README.md\n*.md", "README.md", true),
        ("docs\n!docs/keep.md", "docs/keep.md", false),
        ("docs\n!docs/keep.md", "docs/other.md", true),
        ("docs\n!docs/keep\ndocs/keep/secret", "docs/keep/a", false),
        ("docs\n!docs/keep\ndocs/keep/secret", "docs/keep/secret/b", true),
        ("**\n!src", "src/main.rs", false),
        ("**\n!src", "Cargo.toml", true),
        // Cleaning: trailing slash, leading slash, `./`, `..`, whitespace.
        ("dir/", "dir/file", true),
        ("/dir", "dir/file", true),
        ("./dir//sub/", "dir/sub/x", true),
        ("a/../b", "b", true),
        ("  build  ", "build/out", true),
        // `**` alone, and in the middle.
        ("**", "anything/at/all", true),
        ("a/**/b", "a/b", true),
        ("a/**/b", "a/x/y/b", true),
        ("a/**/b", "a/xb", false),
        ("a/**", "a/x", true),
        // `?`, classes and escapes.
        ("?.txt", "a.txt", true),
        ("?.txt", "ab.txt", false),
        ("[^a]*", "b", true),
        ("[^a]*", "a", false),
        ("[!a]x", "!x", true),
        ("[!a]x", "bx", false),
        ("[a-c]", "b", true),
        ("[a-c]", "d", false),
        ("\\*", "*", true),
        ("\\*", "x", false),
        ("file\\[1\\]", "file[1]", true),
        // Regular-expression characters are literal.
        ("a.b", "axb", false),
        ("a+b", "a+b", true),
        ("(x)|y", "(x)|y", true),
        // Comments and blank lines.
        ("# node_modules\n\nnode_modules_2", "node_modules", false),
        (" # not a comment", "# not a comment", true),
        // A leading `**` followed by literal text stops at a `/`, as in Docker 20.10.
        ("**foo", "foo", true),
        ("**foo", "a/foo", true),
        ("**foo", "xfoo", false),
    ];

    #[test]
    fn matcher_follows_docker() {
        for &(patterns, path, excluded) in MATCHER_CASES {
            let ignore = DockerIgnore::parse(patterns).unwrap();
            assert_eq!(ignore.excludes(path), excluded, "patterns {patterns:?}, path {path:?}");
        }
    }

    #[test]
    fn malformed_patterns_are_errors() {
        for patterns in ["!", "!/", "[abc", "[]", "a\\", "[z-a]", "[-a]"] {
            assert!(DockerIgnore::parse(patterns).is_err(), "{patterns:?} should not parse");
        }
    }

    #[test]
    fn exceptions_decide_which_directories_are_skipped() {
        let none = DockerIgnore::parse("node_modules").unwrap();
        assert!(none.can_skip("node_modules"));
        let inside = DockerIgnore::parse("docs\n!docs/keep.md").unwrap();
        assert!(!inside.can_skip("docs"));
        assert!(inside.can_skip("other"));
        let wildcard = DockerIgnore::parse("node_modules\n!**/*.md").unwrap();
        assert!(!wildcard.can_skip("node_modules"));
    }

    #[test]
    fn clean_matches_go() {
        for (path, cleaned) in
            [("", "."), ("a//b/./c/", "a/b/c"), ("/../a", "/a"), ("../a/..", ".."), ("a/../..", ".."), ("/", "/")]
        {
            assert_eq!(clean(path), cleaned, "{path:?}");
        }
    }

    /// A small context with a Dockerfile outside it, and what to hash it with.
    struct Fixture {
        _dir: tempfile::TempDir,
        context: PathBuf,
        dockerfile: PathBuf,
        target: Option<String>,
        build_args: Vec<(String, String)>,
        bases: Vec<(String, String)>,
    }

    impl Fixture {
        fn new(ignore: &str) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let context = dir.path().join("context");
            fs::create_dir(&context).unwrap();
            let dockerfile = dir.path().join("Dockerfile");
            fs::write(&dockerfile, "FROM scratch\nCOPY . /app\n").unwrap();
            fs::write(context.join(".dockerignore"), ignore).unwrap();
            let fixture = Fixture {
                _dir: dir,
                context,
                dockerfile,
                target: Some("app".to_string()),
                build_args: vec![("VERSION".to_string(), "1.0".to_string())],
                bases: vec![("lab/python:lab".to_string(), "sha256:1".to_string())],
            };
            fixture.write("src/main.py", "print('hello')\n");
            fixture.write("README.md", "# app\n");
            fixture
        }

        fn write(&self, relative: &str, content: &str) {
            let path = self.context.join(relative);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }

        fn digest(&self) -> String {
            inputs_digest(&self.context, &self.dockerfile, self.target.as_deref(), &self.build_args, &self.bases)
                .unwrap()
        }
    }

    impl Fixture {
        /// Both digests, with `src` and `README.md` as the trailing copies' sources.
        fn digests(&self) -> InputsDigests {
            let sources = ["README.md".to_string(), "src".to_string()];
            let target = self.target.as_deref();
            digests(&self.context, &self.dockerfile, target, &self.build_args, &self.bases, Some(&sources)).unwrap()
        }
    }

    #[test]
    fn the_digest_outside_the_sources_ignores_only_their_files() {
        let fixture = Fixture::new("");
        let before = fixture.digests();
        assert_eq!(before.inputs, fixture.digest(), "the inputs digest is the same with or without sources");
        assert_ne!(before.outside_sources.as_ref(), Some(&before.inputs));
        assert_eq!(
            digests(&fixture.context, &fixture.dockerfile, Some("app"), &fixture.build_args, &fixture.bases, None)
                .unwrap()
                .outside_sources,
            None
        );

        // Changes inside the sources: only the inputs digest moves.
        type Change = fn(&Fixture);
        let inside: &[(&str, Change)] = &[
            ("a modified file", |f| f.write("src/main.py", "print('bye')\n")),
            ("a new nested directory", |f| f.write("src/pkg/sub/mod.py", "")),
            ("a deleted file", |f| fs::remove_file(f.context.join("README.md")).unwrap()),
            ("the executable bit", |f| set_mode(&f.context.join("src/main.py"), 0o755)),
        ];
        for (what, change) in inside {
            let fixture = Fixture::new("");
            change(&fixture);
            let after = fixture.digests();
            assert_ne!(after.inputs, before.inputs, "{what}");
            assert_eq!(after.outside_sources, before.outside_sources, "{what}");
        }

        // Changes outside them, and to what decides their content: both move.
        let outside: &[(&str, Change)] = &[
            ("a file beside the sources", |f| f.write("srcx/other.py", "")),
            ("a file named like a source's prefix", |f| f.write("README.md.bak", "")),
            ("the ignore file's patterns", |f| f.write(".dockerignore", "*.pyc")),
            ("the Dockerfile", |f| fs::write(&f.dockerfile, "FROM scratch\nCOPY . /srv\n").unwrap()),
        ];
        for (what, change) in outside {
            let fixture = Fixture::new("");
            change(&fixture);
            let after = fixture.digests();
            assert_ne!(after.inputs, before.inputs, "{what}");
            assert_ne!(after.outside_sources, before.outside_sources, "{what}");
        }
    }

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn digest_is_64_hex_and_stable() {
        let fixture = Fixture::new("");
        let digest = fixture.digest();
        assert_eq!(digest.len(), 64);
        assert!(digest.bytes().all(|byte| byte.is_ascii_hexdigit() && !byte.is_ascii_uppercase()));
        assert_eq!(fixture.digest(), digest);
    }

    #[test]
    fn every_input_changes_the_digest() {
        type Change = fn(&mut Fixture);
        let changes: &[(&str, Change)] = &[
            ("one byte of a file", |f| f.write("src/main.py", "print('hellO')\n")),
            ("a renamed file", |f| fs::rename(f.context.join("README.md"), f.context.join("README.txt")).unwrap()),
            ("a new file", |f| f.write("src/extra.py", "")),
            ("a new empty directory", |f| fs::create_dir(f.context.join("empty")).unwrap()),
            ("the executable bit", |f| set_mode(&f.context.join("src/main.py"), 0o755)),
            ("the Dockerfile", |f| fs::write(&f.dockerfile, "FROM scratch\nCOPY . /srv\n").unwrap()),
            ("the target", |f| f.target = Some("test".to_string())),
            ("no target", |f| f.target = None),
            ("a build arg value", |f| f.build_args[0].1 = "1.1".to_string()),
            ("a new build arg", |f| f.build_args.push(("REVISION".to_string(), "abc".to_string()))),
            ("a base image's digest", |f| f.bases[0].1 = "sha256:2".to_string()),
            ("another base image", |f| f.bases.push(("node:22".to_string(), "sha256:3".to_string()))),
            ("the ignore file", |f| f.write(".dockerignore", "README.md")),
        ];
        for (what, change) in changes {
            let mut fixture = Fixture::new("");
            set_mode(&fixture.context.join("src/main.py"), 0o644);
            let before = fixture.digest();
            change(&mut fixture);
            assert_ne!(fixture.digest(), before, "{what} should change the digest");
        }
    }

    #[test]
    fn other_permission_bits_do_not_matter() {
        let fixture = Fixture::new("");
        let file = fixture.context.join("src/main.py");
        set_mode(&file, 0o644);
        let before = fixture.digest();
        set_mode(&file, 0o600);
        assert_eq!(fixture.digest(), before);
        set_mode(&file, 0o755);
        let executable = fixture.digest();
        set_mode(&file, 0o700);
        assert_eq!(fixture.digest(), executable);
    }

    #[test]
    fn fields_are_unambiguous() {
        let mut one = Fixture::new("");
        one.build_args = vec![("A".to_string(), "BC".to_string())];
        let mut other = Fixture::new("");
        other.build_args = vec![("AB".to_string(), "C".to_string())];
        assert_ne!(one.digest(), other.digest());

        let one = Fixture::new("");
        one.write("ab", "c");
        let other = Fixture::new("");
        other.write("a", "bc");
        assert_ne!(one.digest(), other.digest());
    }

    #[test]
    fn excluded_files_do_not_matter() {
        let fixture = Fixture::new("**/node_modules\n**/__pycache__\n*.log\n");
        let before = fixture.digest();
        fixture.write("app.log", "noise");
        fixture.write("node_modules/react/index.js", "module.exports = {}");
        // Under a directory that already exists: a new `web/` would itself be a new input.
        fixture.write("src/node_modules/.bin/vite", "#!/bin/sh");
        fixture.write("src/__pycache__/main.cpython-312.pyc", "\0\0");
        // An unreadable excluded directory is never opened.
        fs::create_dir(fixture.context.join("node_modules/locked")).unwrap();
        set_mode(&fixture.context.join("node_modules/locked"), 0o000);
        assert_eq!(fixture.digest(), before);
        set_mode(&fixture.context.join("node_modules/locked"), 0o755);
    }

    #[test]
    fn exceptions_reinclude_files() {
        let fixture = Fixture::new("docs\n!docs/keep.md\n*.md\n!README.md\n");
        let before = fixture.digest();
        fixture.write("docs/other.md", "x");
        fixture.write("NOTES.md", "x");
        assert_eq!(fixture.digest(), before);
        fixture.write("docs/keep.md", "x");
        let with_keep = fixture.digest();
        assert_ne!(with_keep, before);
        fixture.write("README.md", "changed");
        assert_ne!(fixture.digest(), with_keep);
    }

    #[test]
    fn wildcard_exceptions_look_inside_excluded_directories() {
        let fixture = Fixture::new("vendor\n!**/LICENSE\n");
        let before = fixture.digest();
        fixture.write("vendor/lib/code.py", "x");
        assert_eq!(fixture.digest(), before);
        fixture.write("vendor/lib/LICENSE", "MIT");
        assert_ne!(fixture.digest(), before);
    }

    #[test]
    fn creation_order_does_not_matter() {
        let names = ["b/x", "a-b", "a/b", "a.b", "c", "a/c/d"];
        let one = Fixture::new("");
        for name in names {
            one.write(name, name);
        }
        let other = Fixture::new("");
        for name in names.iter().rev() {
            other.write(name, name);
        }
        assert_eq!(one.digest(), other.digest());
    }

    #[test]
    fn symlinks_are_hashed_by_their_target() {
        let fixture = Fixture::new("");
        symlink("src/main.py", fixture.context.join("link")).unwrap();
        let before = fixture.digest();
        // The content behind the link is hashed once, as the file itself, not through the link.
        fixture.write("src/main.py", "changed");
        let changed = fixture.digest();
        assert_ne!(changed, before);
        fs::remove_file(fixture.context.join("link")).unwrap();
        let without_link = fixture.digest();
        assert_ne!(without_link, changed);
        symlink("README.md", fixture.context.join("link")).unwrap();
        assert_ne!(fixture.digest(), changed);
        // A dangling link and a link to a directory are fine: neither is followed.
        fs::remove_file(fixture.context.join("link")).unwrap();
        symlink("missing", fixture.context.join("link")).unwrap();
        symlink("/", fixture.context.join("root")).unwrap();
        fixture.digest();
    }

    #[test]
    fn a_dockerfile_specific_ignore_file_wins() {
        let fixture = Fixture::new("");
        let before = fixture.digest();
        fs::write(fixture.dockerfile.with_file_name("Dockerfile.dockerignore"), "README.md\n").unwrap();
        let specific = fixture.digest();
        assert_ne!(specific, before);
        fixture.write("README.md", "changed");
        assert_eq!(fixture.digest(), specific);
    }

    #[test]
    fn errors_name_the_file() {
        let fixture = Fixture::new("");
        fs::remove_file(&fixture.dockerfile).unwrap();
        let error = inputs_digest(&fixture.context, &fixture.dockerfile, None, &[], &[]).unwrap_err();
        assert!(format!("{error:#}").contains(&fixture.dockerfile.display().to_string()), "{error:#}");
    }

    /// Copies a tree, symlinks as symlinks, leaving out `node_modules` (which the copy's own
    /// ignore file excludes anyway, and which may be huge).
    fn copy_tree(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for item in fs::read_dir(from).unwrap() {
            let item = item.unwrap();
            let (source, target) = (item.path(), to.join(item.file_name()));
            let file_type = item.file_type().unwrap();
            if file_type.is_symlink() {
                symlink(fs::read_link(&source).unwrap(), &target).unwrap();
            } else if file_type.is_dir() {
                if item.file_name() != "node_modules" {
                    copy_tree(&source, &target);
                }
            } else if file_type.is_file() {
                fs::copy(&source, &target).unwrap();
            }
        }
    }

    #[test]
    fn hashes_the_real_contexts_fast_and_ignores_their_excluded_files() {
        let root = crate::adapters::workspace_root();
        let cases: &[(&str, &[&str])] = &[
            (
                "backend",
                &["intric/__pycache__/junk.cpython-312.pyc", ".venv/lib/site.py", ".pytest_cache/v/x", "x.log"],
            ),
            ("frontend", &["node_modules/junk/index.js", "apps/web/node_modules/.bin/x", "apps/web/.svelte-kit/y"]),
        ];
        for &(service, junk) in cases {
            let context = root.join(service);
            let dockerfile = context.join("Dockerfile");
            let args = [("PYTHON_IMAGE".to_string(), "python:3.12-slim".to_string())];
            let start = Instant::now();
            let digest = inputs_digest(&context, &dockerfile, Some("runtime"), &args, &[]).unwrap();
            eprintln!("{service}: {digest} in {:.1?}", start.elapsed());

            let copy = tempfile::tempdir().unwrap();
            copy_tree(&context, copy.path());
            let copied =
                || inputs_digest(copy.path(), &copy.path().join("Dockerfile"), Some("runtime"), &args, &[]).unwrap();
            assert_eq!(copied(), digest, "a copy of {service} elsewhere hashes the same");
            for path in junk {
                let path = copy.path().join(path);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, "junk").unwrap();
            }
            assert_eq!(copied(), digest, "excluded junk in {service} changes nothing");
        }
    }
}
