//! `cargo xtask tags`: prints the image tags for the current git state (the rules are in
//! `images::tags`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::adapters::ci_env;
use crate::images::tags::{StageChoice, resolve, resolve_tags};
use crate::plan::runner::Processes;

// Options of `cargo xtask tags`.
#[derive(Args)]
#[command(after_help = "\
Every build gets `sha-<12 hex>`; a pull request adds `pr-<N>`, another branch its slug, the default \
branch `dev-latest`, a semver tag on HEAD its version plus `X.Y`, `X` and `latest` where it is the \
newest release. A dirty working tree gets only `sha-<12 hex>-dirty-<8 hex>`. IMAGE_TAG adds one tag.

Examples:
  cargo xtask tags
  cargo xtask tags --json
  cargo xtask tags --stage release --repo ../intric
  IMAGE_TAG=hotfix-1 cargo xtask tags --stage main")]
pub struct TagsArgs {
    /// The git repository to read [default: the workspace root].
    #[arg(long, value_name = "PATH")]
    pub repo: Option<PathBuf>,
    /// The build stage to tag for; `auto` detects it from the CI variables, else from git.
    #[arg(long, value_enum, default_value_t = StageChoice::Auto)]
    pub stage: StageChoice,
    /// Print one JSON object (stage, version, revision, branch, dirty, tags, push, ...) instead
    /// of one tag per line.
    #[arg(long)]
    pub json: bool,
}

/// `cargo xtask tags`: prints the tags, one per line with notes on stderr, or one JSON object.
/// Only the JSON has the version and commit time, whose reading costs git processes, so only
/// `--json` reads them.
pub fn run(args: TagsArgs) -> Result<()> {
    let repo = args.repo.unwrap_or_else(crate::adapters::workspace_root);
    let (runner, env) = (Processes::new(), ci_env::process_env());
    if args.json {
        println!("{}", resolve(&runner, &repo, args.stage, &env)?.to_json());
        return Ok(());
    }
    let tags = resolve_tags(&runner, &repo, args.stage, &env)?;
    for tag in &tags.tags {
        println!("{tag}");
    }
    for note in &tags.notes {
        eprintln!("note: {note}");
    }
    Ok(())
}
