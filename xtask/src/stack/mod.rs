//! The deployed stack: a deployment directory and what the operator tasks share about it.
//! The directory and its `.env` check, the deploy lock, the deploy history, the steps that
//! change the running stack, the check of pending migrations for updates without downtime, the
//! operator tasks' whole plans (`operation`), database dumps and
//! restores, the status report, and the same stack on Docker Swarm (`swarm`: the stack file
//! made from compose's resolution, its steps and status).
//!
//! It uses the images layer (the service table, tag rules), the adapters and the plan layer,
//! never a task.

pub mod database;
pub mod deployment;
pub mod env_check;
pub mod executor;
pub mod history;
pub mod lock;
pub mod migrations;
pub mod operation;
pub mod progress;
pub mod status;
pub mod steps;
pub mod swarm;

pub use deployment::{ChangeArgs, DEFAULT_TIMEOUT, Deployment, DeploymentArgs};
