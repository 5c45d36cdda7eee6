//! `cargo xtask check`: the services' own tests and checks, run where production runs them, in
//! a stage of each image's Dockerfile: its `test` stage where it has one (our backend's pytest
//! suite: same Python, same locked dependencies as the image; our frontend's svelte-check of
//! what its `build` stage built), else its `build` stage (the published Intric frontend, whose
//! build is its only check). Which images there are, and their Dockerfiles and build args, come
//! from the compose file as for `build`. Each check is a BuildKit build that fails when a test or
//! check fails; nothing is pushed. The engine would keep each check's result as an untagged
//! image (listed at 417 MB for the backend's test stage and 491 MB for the frontend's build
//! stage), one more with every change checked, which nothing removes and whose
//! layers BuildKit's garbage collection must then keep: so the build tags it
//! `xtask-check/<image>` and the next step removes that tag and the image. BuildKit's cache,
//! which is not the image, keeps the layers for the next check.
//!
//! An image whose Dockerfile has neither stage (the published backend) is skipped with a
//! warning naming its stages; when no image has a check at all, `check` fails: a green check
//! that checked nothing would mislead.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::adapters::ci_env;
use crate::adapters::docker::{BuildSpec, Docker};
use crate::images::services::{ComposeImages, Image, compose_file};
use crate::plan::runner::Processes;
use crate::plan::{Plan, show_or_run};

// Options of `cargo xtask check`.
#[derive(Args)]
#[command(after_help = "\
Base images come from PYTHON_IMAGE, NODE_IMAGE and NGINX_IMAGE as for `build` (the compose file's
build args name them).

Examples:
  cargo xtask check
  cargo xtask check backend --dry-run")]
pub struct CheckArgs {
    /// The images to check: compose services with a `build:` section [default: all].
    #[arg(value_name = "IMAGE")]
    pub services: Vec<String>,
    /// The compose file that says which images there are [default: as for `build`].
    #[arg(long, value_name = "FILE")]
    pub compose: Option<PathBuf>,
    /// Print the commands and run nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The Dockerfile stages that run an image's tests or checks, in order of preference.
const CHECK_STAGES: [&str; 2] = ["test", "build"];

pub fn run(args: CheckArgs) -> Result<()> {
    let runner = Processes::new();
    let docker = Docker::detect(&runner)?;
    let env = ci_env::process_env();
    let workspace = crate::adapters::workspace_root();
    let file = compose_file(&workspace, args.compose.as_deref())?;
    let images = ComposeImages::read(&runner, &file, &env, &workspace)?.select(&args.services)?;
    let (plan, warnings) = plan(&docker, &images)?;
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    show_or_run(&plan, args.dry_run, &runner).map(|_| ())
}

/// The checks of `images`, and what is skipped and why. Fails when nothing would be checked.
fn plan(docker: &Docker, images: &[Image]) -> Result<(Plan, Vec<String>)> {
    let mut plan = Plan::default();
    let mut skipped = Vec::new();
    let mut checked = Vec::new();
    for image in images {
        // The worker's tests are the backend's: one Dockerfile, one test stage.
        if checked.contains(&&image.dockerfile) {
            continue;
        }
        checked.push(&image.dockerfile);
        let Some(stage) = CHECK_STAGES.into_iter().find(|stage| image.parsed.has_stage(stage)) else {
            skipped.push(format!(
                "{} is not checked: {} has no `test` or `build` stage (its stages: {}); add a `test` stage that \
                 runs its tests",
                image.name,
                image.parsed.shown,
                image.parsed.stage_list()
            ));
            continue;
        };
        let result = format!("xtask-check/{}", image.name);
        let spec = BuildSpec {
            dockerfile: image.dockerfile.clone(),
            context: image.context.clone(),
            target: Some(stage.to_string()),
            build_args: image.args.clone(),
            tags: vec![result.clone()],
            ..BuildSpec::default()
        };
        plan.run(docker.build(&spec).hint(format!("the {} checks failed; the output above says which", image.name)));
        // `--force` only untags where a container of the user's still uses the image.
        plan.run(docker.command().args(["image", "rm", "--force", &result]).hint(format!(
            "the {} checks passed, but their image {result} could not be removed: remove it with `docker image rm \
             {result}`",
            image.name
        )));
    }
    if plan.steps.is_empty() {
        bail!("nothing to check: {}", skipped.join("; "));
    }
    let warnings = images.iter().flat_map(Image::ignored_args).chain(skipped).collect();
    Ok((plan, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::ci_env::Env;
    use crate::adapters::docker::Builder;
    use crate::images::dockerfile::Dockerfile;

    fn docker() -> Docker {
        Docker { program: "docker".into(), builder: Builder::Legacy, engine_version: "20.10.24".into() }
    }

    fn ours() -> Vec<Image> {
        let env = Env::from([("PYTHON_IMAGE".to_string(), "lab/python:lab".to_string())]);
        crate::images::services::tests::ours(&env).built
    }

    #[test]
    fn backend_tests_and_frontend_checks_are_builds_of_their_stages() {
        let (plan, warnings) = plan(&docker(), &ours()).unwrap();
        let shown = plan.to_string();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(plan.steps.len(), 4, "the worker shares the backend's tests:\n{shown}");
        let lines: Vec<&str> = shown.lines().collect();
        assert!(
            lines[0].ends_with(
                "--target test --tag xtask-check/backend --build-arg PYTHON_IMAGE=lab/python:lab /ws/backend"
            ),
            "{shown}"
        );
        // Each check's image goes as soon as it is built: no run leaves one behind.
        assert!(lines[1].ends_with("docker image rm --force xtask-check/backend"), "{shown}");
        assert!(
            lines[2].ends_with("--file /ws/frontend/Dockerfile --target test --tag xtask-check/frontend /ws/frontend"),
            "{shown}"
        );
        assert!(lines[3].ends_with("docker image rm --force xtask-check/frontend"), "{shown}");
    }

    #[test]
    fn an_image_without_a_test_stage_is_checked_by_building_its_build_stage() {
        let mut images = ours();
        let frontend = images.iter_mut().find(|image| image.name == "frontend").unwrap();
        frontend.parsed =
            Dockerfile::parse("frontend/Dockerfile", "FROM node AS build\nFROM node\nCOPY --from=build /a /b\n")
                .unwrap();
        let (plan, _) = plan(&docker(), &images).unwrap();
        let shown = plan.to_string();
        assert!(shown.contains("--target build --tag xtask-check/frontend"), "{shown}");
    }

    #[test]
    fn an_image_without_a_check_stage_is_skipped_with_a_warning_and_none_at_all_fails() {
        let mut images = ours();
        images[0].parsed = Dockerfile::parse("backend/Dockerfile", "FROM python AS builder\nFROM python\n").unwrap();
        images.remove(1);
        let (plan, warnings) = plan(&docker(), &images).unwrap();
        assert_eq!(plan.steps.len(), 2, "the frontend is still checked (and its image removed)");
        assert_eq!(
            warnings,
            [
                "PYTHON_IMAGE is ignored by backend/Dockerfile: it has no ARG PYTHON_IMAGE",
                "backend is not checked: backend/Dockerfile has no `test` or `build` stage (its stages: builder, an \
                 unnamed final stage); add a `test` stage that runs its tests"
            ]
        );
        let error = super::plan(&docker(), &images[..1]).unwrap_err().to_string();
        assert!(error.starts_with("nothing to check: backend is not checked"), "{error}");
    }

    #[test]
    fn the_checks_run_exactly_the_commands_they_show() {
        let (plan, _) = plan(&docker(), &ours()).unwrap();
        let runner = crate::plan::runner::Recording::new();
        show_or_run(&plan, false, &runner).unwrap();
        runner.assert_ran_as_shown(&plan.to_string());
        assert_eq!(runner.executed().len(), 4, "{:?}", runner.executed());
    }
}
