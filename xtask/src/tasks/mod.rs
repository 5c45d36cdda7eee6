//! The tasks: one module per `cargo xtask` command. Each reads its inputs once, builds a plan
//! with the layers below, and shows it (`--dry-run`) or runs it.
//!
//! Only `main.rs` uses these modules; a task never uses another task.

pub mod backup;
pub mod bench;
pub mod build;
pub mod check;
pub mod ci;
pub mod deploy;
pub mod doctor;
pub mod env;
pub mod release;
pub mod sandbox;
pub mod status;
pub mod tags;
