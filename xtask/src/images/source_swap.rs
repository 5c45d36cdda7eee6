//! The source-only fast path, planning side: whether a Dockerfile target ends with plain
//! `COPY <context path> <dest>` instructions followed only by metadata instructions, so that
//! an image whose other inputs did not change can be made from the previous one by replacing
//! exactly those layers (see [`crate::images::layer`] for writing them).
//!
//! [`source_swap`] reads the final stage from its end: first the metadata instructions that
//! [`crate::images::derived`] knows how to apply, then the run of `COPY` instructions before
//! them. Anything it cannot reproduce exactly as BuildKit would is refused with the reason,
//! naming the line, and the image is built by BuildKit: `COPY --from`, `--chmod`, `--chown`,
//! `--link` or any other flag, the JSON form, heredocs, wildcards, variables, a source outside
//! the context, a relative destination without a known `WORKDIR`, several sources into a
//! destination without a trailing `/`, and a `RUN`, `ADD`, `WORKDIR` or any other instruction
//! after the copies. What only the files can tell (a symlink among the sources, a missing
//! source) is checked when the layers are written. Pure: it reads no file and runs nothing.

use crate::images::derived::check_metadata;
use crate::images::dockerfile::{Dockerfile, Instruction};

/// One trailing `COPY`: its sources, clean and relative to the build context (`.` for the whole
/// context), and its absolute destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceCopy {
    pub line: usize,
    pub sources: Vec<String>,
    /// The destination resolved against the stage's `WORKDIR`, clean, without a trailing `/`
    /// (`/` for the root).
    pub dest: String,
    /// Whether the destination was written as a directory (`./`, `/app/`): sources go inside it.
    /// Otherwise the one source is copied to that path (a directory's contents into it).
    pub into_directory: bool,
}

/// What the fast path replaces: the trailing copies, each one layer, in file order, and the
/// metadata instructions after them, re-applied to the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSwap {
    pub copies: Vec<SourceCopy>,
    pub metadata: Vec<Instruction>,
}

impl SourceSwap {
    /// Every source of the trailing copies, each once, sorted: the files whose changes the fast
    /// path can apply, and so the ones its label's digest leaves out.
    pub fn sources(&self) -> Vec<String> {
        let mut sources: Vec<String> = self.copies.iter().flat_map(|copy| copy.sources.clone()).collect();
        sources.sort();
        sources.dedup();
        sources
    }
}

/// The metadata keywords that may follow the trailing copies: those [`check_metadata`] applies.
const METADATA: &[&str] = &["ARG", "ENV", "LABEL", "USER", "EXPOSE", "STOPSIGNAL", "HEALTHCHECK", "CMD", "ENTRYPOINT"];

/// The trailing copies and metadata of the stage a build of `target` ends with, or why the fast
/// path cannot make that image, naming the file and line.
pub fn source_swap(file: &Dockerfile, target: Option<&str>) -> Result<SourceSwap, String> {
    let stage = file.stage(target).map_err(|error| format!("{error:#}"))?;
    let instructions = file.stage_instructions(stage);
    let at = |instruction: &Instruction| format!("{} line {}", file.shown, instruction.line);
    // The instruction splitter does not know heredocs: their bodies would read as instructions.
    if let Some(heredoc) = instructions.iter().find(|instruction| instruction.text.contains("<<")) {
        return Err(format!("{}: a heredoc, which the fast path does not read", at(heredoc)));
    }

    let metadata_start = instructions
        .iter()
        .rposition(|instruction| !METADATA.contains(&instruction.keyword.as_str()))
        .map_or(0, |index| index + 1);
    let copies_start = instructions[..metadata_start]
        .iter()
        .rposition(|instruction| instruction.keyword != "COPY")
        .map_or(0, |index| index + 1);
    if copies_start == metadata_start {
        return Err(match instructions[..metadata_start].last() {
            Some(last) => format!("{}: {} after the last COPY; only a build can apply it", at(last), last.keyword),
            None => format!("{} line {}: the stage has no COPY instruction", file.shown, stage.line),
        });
    }
    let metadata = instructions[metadata_start..].to_vec();
    check_metadata(file, &metadata)?;

    let workdir = workdir(&instructions[..copies_start]);
    let mut copies = Vec::new();
    for instruction in &instructions[copies_start..metadata_start] {
        copies.push(parse_copy(instruction, workdir.as_deref()).map_err(|why| format!("{}: {why}", at(instruction)))?);
    }
    Ok(SourceSwap { copies, metadata })
}

/// The working directory the stage's own `WORKDIR`s leave (absolute, clean), when they say it
/// without variables; `None` when there is none (the base image's would decide) or it has one.
fn workdir(instructions: &[Instruction]) -> Option<String> {
    let mut dir: Option<String> = None;
    for instruction in instructions.iter().filter(|instruction| instruction.keyword == "WORKDIR") {
        let text = instruction.text.trim();
        if text.contains('$') {
            return None;
        }
        dir = Some(if text.starts_with('/') {
            clean_absolute(text)?
        } else {
            clean_absolute(&format!("{}/{text}", dir?))?
        });
    }
    dir
}

/// One trailing `COPY`, or why the fast path cannot write its layer.
fn parse_copy(instruction: &Instruction, workdir: Option<&str>) -> Result<SourceCopy, String> {
    let text = instruction.text.trim();
    if text.starts_with('[') {
        return Err("COPY in the JSON form".into());
    }
    if text.contains(['"', '\'', '\\']) {
        return Err("COPY with quotes or escapes".into());
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    if let Some(flag) = words.iter().find(|word| word.starts_with("--")) {
        let name = flag.trim_start_matches('-').split('=').next().unwrap_or_default();
        return Err(match name {
            "from" => "COPY --from takes files from another stage or image".to_string(),
            "chmod" | "chown" | "link" => format!("COPY --{name} is not applied by the fast path"),
            _ => format!("COPY with the unknown flag {flag}"),
        });
    }
    let Some((dest, sources)) = words.split_last().filter(|(_, sources)| !sources.is_empty()) else {
        return Err("COPY needs a source and a destination".into());
    };
    if dest.contains('$') || sources.iter().any(|source| source.contains('$')) {
        return Err("COPY with a variable".into());
    }
    if sources.iter().any(|source| source.contains(['*', '?', '['])) {
        return Err("COPY with a wildcard".into());
    }
    let sources = sources
        .iter()
        .map(|source| {
            clean_relative(source).ok_or_else(|| format!("the source {source} lies outside the build context"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let into_directory = dest.ends_with('/') || *dest == "." || dest.ends_with("/.");
    if sources.len() > 1 && !into_directory {
        return Err(format!("COPY of several sources into {dest}, which does not end with /"));
    }
    let dest = if dest.starts_with('/') {
        clean_absolute(dest)
    } else {
        let Some(workdir) = workdir else {
            return Err(format!(
                "the relative destination {dest} depends on a WORKDIR this stage does not set plainly"
            ));
        };
        clean_absolute(&format!("{workdir}/{dest}"))
    };
    let dest = dest.ok_or_else(|| "the destination climbs above /".to_string())?;
    Ok(SourceCopy { line: instruction.line, sources, dest, into_directory })
}

/// `path` made relative to the context root, as BuildKit reads a `COPY` source (a leading `/`
/// or `./` changes nothing): `.` for the root, `None` when `..` climbs out of it.
fn clean_relative(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(if parts.is_empty() { ".".to_string() } else { parts.join("/") })
}

/// `path` (absolute) without `.`, `..` and repeated or trailing slashes; `None` above `/`.
fn clean_absolute(path: &str) -> Option<String> {
    match clean_relative(path)?.as_str() {
        "." => Some("/".to_string()),
        relative => Some(format!("/{relative}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backend stage's end, as in backend/Dockerfile.
    const TAIL: &str = "USER intric\nEXPOSE 8123\nCMD [\"uvicorn\", \"intric.main:app\"]\nARG VERSION=0.0.0-dev\n\
                        LABEL org.opencontainers.image.version=\"${VERSION}\"\nENV INTRIC_VERSION=${VERSION}\n";

    fn swap(stage: &str) -> Result<SourceSwap, String> {
        let text = format!("FROM python AS base\nRUN true\n{stage}");
        source_swap(&Dockerfile::parse("backend/Dockerfile", &text).unwrap(), None)
    }

    fn refused(stage: &str) -> String {
        swap(stage).expect_err("the fast path must be refused")
    }

    #[test]
    fn the_backend_stage_ends_with_three_copies_and_metadata() {
        let swap = swap(&format!(
            "WORKDIR /app\nCOPY alembic.ini init_db.py ./\nCOPY alembic ./alembic\nCOPY intric ./intric\n{TAIL}"
        ))
        .unwrap();
        let copies: Vec<(usize, Vec<&str>, &str, bool)> = swap
            .copies
            .iter()
            .map(|copy| {
                (copy.line, copy.sources.iter().map(String::as_str).collect(), copy.dest.as_str(), copy.into_directory)
            })
            .collect();
        assert_eq!(
            copies,
            [
                (4, vec!["alembic.ini", "init_db.py"], "/app", true),
                (5, vec!["alembic"], "/app/alembic", false),
                (6, vec!["intric"], "/app/intric", false),
            ]
        );
        let keywords: Vec<&str> = swap.metadata.iter().map(|instruction| instruction.keyword.as_str()).collect();
        assert_eq!(keywords, ["USER", "EXPOSE", "CMD", "ARG", "LABEL", "ENV"]);
        assert_eq!(swap.sources(), ["alembic", "alembic.ini", "init_db.py", "intric"]);
    }

    #[test]
    fn destinations_resolve_against_the_last_workdir_and_sources_against_the_context() {
        let swap = swap("WORKDIR /srv\nWORKDIR app/../web\nCOPY ./src/ /public/ ./lib/./x ./\nCOPY . /all/\n").unwrap();
        assert_eq!(swap.copies[0].dest, "/srv/web");
        assert_eq!(swap.copies[0].sources, ["src", "public", "lib/x"]);
        assert_eq!(swap.copies[1].sources, ["."]);
        assert_eq!(swap.copies[1].dest, "/all");
        assert_eq!(swap.sources(), [".", "lib/x", "public", "src"]);
    }

    #[test]
    fn only_the_copies_after_the_last_other_instruction_count() {
        let swap = swap("WORKDIR /app\nCOPY a ./a\nENV X=1\nCOPY b ./b\nCMD [\"b\"]\n").unwrap();
        assert_eq!(swap.copies.len(), 1);
        assert_eq!(swap.copies[0].sources, ["b"]);
    }

    #[test]
    fn every_instruction_but_metadata_after_the_copies_is_refused() {
        for (after, keyword) in [
            ("RUN make", "RUN"),
            ("ADD x.tar /x/", "ADD"),
            ("WORKDIR /other", "WORKDIR"),
            ("VOLUME /data", "VOLUME"),
            ("SHELL [\"/bin/bash\", \"-c\"]", "SHELL"),
            ("ONBUILD RUN true", "ONBUILD"),
            ("FROBNICATE now", "FROBNICATE"),
        ] {
            let why = refused(&format!("WORKDIR /app\nCOPY intric ./intric\n{after}\nCMD [\"x\"]\n"));
            assert_eq!(
                why,
                format!("backend/Dockerfile line 5: {keyword} after the last COPY; only a build can apply it")
            );
        }
    }

    #[test]
    fn a_stage_without_trailing_copies_is_refused() {
        assert_eq!(
            refused("CMD [\"x\"]\n"),
            "backend/Dockerfile line 2: RUN after the last COPY; only a build can apply it"
        );
        let why =
            source_swap(&Dockerfile::parse("Dockerfile", "FROM python\nCMD [\"x\"]\n").unwrap(), None).unwrap_err();
        assert_eq!(why, "Dockerfile line 1: the stage has no COPY instruction");
    }

    #[test]
    fn metadata_the_derivation_cannot_apply_is_refused() {
        let why = refused("WORKDIR /app\nCOPY intric ./intric\nEXPOSE 80-90\n");
        assert!(why.starts_with("backend/Dockerfile line 5: "), "{why}");
    }

    #[test]
    fn copies_the_fast_path_cannot_write_are_refused_with_the_reason() {
        for (copy, reason) in [
            ("COPY --from=builder /opt/venv /opt/venv", "COPY --from takes files from another stage or image"),
            ("COPY --from builder /opt/venv /opt/venv", "COPY --from takes files from another stage or image"),
            ("COPY --chmod=755 run.sh ./", "COPY --chmod is not applied by the fast path"),
            ("COPY --chown=intric:intric intric ./intric", "COPY --chown is not applied by the fast path"),
            ("COPY --link intric ./intric", "COPY --link is not applied by the fast path"),
            ("COPY --parents intric ./", "COPY with the unknown flag --parents"),
            ("COPY [\"intric\", \"./intric\"]", "COPY in the JSON form"),
            ("COPY \"my dir\" ./", "COPY with quotes or escapes"),
            ("COPY *.py ./", "COPY with a wildcard"),
            ("COPY src/[ab] ./", "COPY with a wildcard"),
            ("COPY ${DIR} ./", "COPY with a variable"),
            ("COPY intric $DEST", "COPY with a variable"),
            ("COPY ../secrets ./", "the source ../secrets lies outside the build context"),
            ("COPY a/../../x ./", "the source a/../../x lies outside the build context"),
            ("COPY a.py b.py ./lib", "COPY of several sources into ./lib, which does not end with /"),
            ("COPY intric", "COPY needs a source and a destination"),
            ("COPY ../../.. /", "the source ../../.. lies outside the build context"),
        ] {
            let why = refused(&format!("WORKDIR /app\n{copy}\nCMD [\"x\"]\n"));
            assert_eq!(why, format!("backend/Dockerfile line 4: {reason}"), "{copy}");
        }
    }

    #[test]
    fn a_heredoc_anywhere_in_the_stage_is_refused() {
        let why = refused("WORKDIR /app\nCOPY <<EOF /app/x\nCMD [\"y\"]\nEOF\nCOPY intric ./intric\n");
        assert_eq!(why, "backend/Dockerfile line 4: a heredoc, which the fast path does not read");
    }

    #[test]
    fn a_relative_destination_needs_a_plain_workdir_of_the_stage() {
        let reason = "the relative destination ./intric depends on a WORKDIR this stage does not set plainly";
        assert_eq!(refused("COPY intric ./intric\n"), format!("backend/Dockerfile line 3: {reason}"));
        assert_eq!(refused("WORKDIR $HOME\nCOPY intric ./intric\n"), format!("backend/Dockerfile line 4: {reason}"));
        assert_eq!(swap("COPY intric /app/intric\n").unwrap().copies[0].dest, "/app/intric");
    }

    #[test]
    fn a_missing_target_is_the_reason() {
        let file = Dockerfile::parse("Dockerfile", "FROM python AS base\nCOPY a /a\n").unwrap();
        assert!(source_swap(&file, Some("nope")).unwrap_err().contains("has no stage \"nope\""));
    }
}
