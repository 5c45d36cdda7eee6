//! The images layer: what we build and how it is named. The service table, the tag rules,
//! the inputs digest of a build context, the inline-cache check, and the build and release
//! pipelines that the build, check, ci, release and bench tasks share.
//!
//! It uses the adapters and the plan layer, never the stack or a task.

pub mod bases;
pub mod build;
pub mod derived;
pub mod dockerfile;
pub mod inline_cache;
pub mod inputs;
pub mod layer;
pub mod location;
pub mod promotion;
pub mod release;
pub mod release_lock;
pub mod services;
pub mod source_swap;
pub mod tags;

pub use services::{BASE_IMAGES, BaseImage, Service};
