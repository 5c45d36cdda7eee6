//! `cargo xtask build`: builds the images that changed, tags them from git state, pushes them
//! (the pipeline is `images::build`, shared with check, ci and release). Reads the inputs once,
//! plans, then shows the plan (`--dry-run`) or runs it and prints the summary.

use std::time::Instant;

use anyhow::Result;

use crate::adapters::ci_env;
pub use crate::images::build::BuildArgs;
use crate::images::build::{Summary, prepare};
use crate::plan::runner::Processes;
use crate::plan::show_or_run;

/// `cargo xtask build`.
pub fn run(args: BuildArgs) -> Result<()> {
    let env = ci_env::process_env();
    let runner = Processes::new();
    let plan = prepare(&runner, &args, &env, None)?;
    let started = Instant::now();
    let Some(results) = show_or_run(&plan, args.dry_run, &runner)? else { return Ok(()) };
    let summary = Summary { builder: plan.builder, registry: plan.registry.clone(), pushed: plan.push, results };
    if args.json {
        println!("{}", summary.to_json());
    } else {
        print!("{summary}");
        eprintln!("done in {:.1} s; logs in {}", started.elapsed().as_secs_f64(), plan.logs.display());
    }
    Ok(())
}
