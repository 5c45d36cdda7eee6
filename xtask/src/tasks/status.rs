//! `cargo xtask status`: prints each service's state, health, tag, digest and uptime (the
//! report is `stack::status`); on Docker Swarm (`--swarm`, or the history says so) each
//! service's replicas and its tasks' tags and states (`stack::swarm`).

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use crate::plan::runner::Processes;
use crate::stack::history::read_history;
use crate::stack::status::{ServiceStatus, collect, render};
use crate::stack::swarm::{SwarmArgs, swarm_report};
use crate::stack::{Deployment, DeploymentArgs};

#[derive(Args)]
#[command(after_help = "Examples:
  cargo xtask status
  cargo xtask status --dir /srv/intric --json
  cargo xtask status --swarm")]
pub struct StatusArgs {
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// Print JSON (an array, one object per container; two of a service during an update) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Show the stack on Docker Swarm: services, replicas, each task's tag and state.
    #[arg(long)]
    pub swarm: bool,
}

pub fn run(args: StatusArgs) -> Result<()> {
    let runner = Processes::new();
    let deployment = Deployment::open(&args.deployment, &runner)?;
    let history = read_history(&deployment.history_path())?;
    let swarm = SwarmArgs { swarm: args.swarm, replicas: Vec::new() };
    if let Some(stack) = swarm.stack(&deployment.compose, &history)? {
        print!("{}", swarm_report(&stack, &runner)?);
        return Ok(());
    }
    let statuses = collect(&deployment.compose, &runner)?;
    if args.json {
        let list: Vec<Value> = statuses.iter().map(ServiceStatus::to_json).collect();
        println!("{}", serde_json::to_string_pretty(&Value::Array(list))?);
    } else {
        print!("{}", render(deployment.compose.project_name(), &statuses));
    }
    Ok(())
}
