//! `cargo xtask build`: builds the images that changed, tags them from git state, pushes them
//! (the pipeline is `images::build`, shared with check, ci and release).

use std::time::Instant;

use anyhow::Result;

use crate::adapters::ci_env;
pub use crate::images::build::BuildArgs;
use crate::images::build::{LOGS_DIR, Summary, execute_prepared, prepare};
use crate::plan::runner::Processes;

/// `cargo xtask build`.
pub fn run(args: BuildArgs) -> Result<()> {
    let env = ci_env::process_env();
    let runner = Processes::new();
    let (inputs, plan) = prepare(&runner, &args, &env, None)?;
    if args.dry_run {
        print!("{plan}");
        return Ok(());
    }
    let started = Instant::now();
    let results = execute_prepared(&runner, &inputs, &plan, args.jobs, args.json)?;
    let summary = Summary { builder: plan.builder, registry: plan.registry.clone(), pushed: inputs.push, results };
    if args.json {
        println!("{}", summary.to_json());
    } else {
        print!("{summary}");
        let logs = inputs.workspace.join(LOGS_DIR);
        eprintln!("done in {:.1} s; logs in {}", started.elapsed().as_secs_f64(), logs.display());
    }
    Ok(())
}
