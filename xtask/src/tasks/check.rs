//! `cargo xtask check`: the services' own tests and checks, run where production runs them:
//! the backend's pytest suite in its Dockerfile's `test` target (same Python, same locked
//! dependencies as the image), and the frontend's type checks in its `build` stage. Both are
//! BuildKit builds that fail when a test or check fails; nothing is tagged or pushed.

use anyhow::Result;
use clap::Args;

use crate::adapters::ci_env;
use crate::adapters::docker::{BuildSpec, Docker};
use crate::images::Service;
use crate::images::build::{base_image_args, base_images};
use crate::plan::runner::Processes;
use crate::plan::{Plan, show_or_run};

/// Options of `cargo xtask check`.
#[derive(Args)]
#[command(after_help = "\
Base images come from PYTHON_IMAGE, NODE_IMAGE and NGINX_IMAGE as for `build`.

Examples:
  cargo xtask check
  cargo xtask check backend --dry-run")]
pub struct CheckArgs {
    /// The services to check [default: backend and frontend].
    #[arg(value_enum)]
    pub services: Vec<Service>,
    /// Print the commands and run nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The Dockerfile stage that runs a service's tests or checks.
fn check_target(service: Service) -> &'static str {
    match service {
        Service::Backend | Service::Worker => "test",
        Service::Frontend => "build",
    }
}

pub fn run(args: CheckArgs) -> Result<()> {
    let runner = Processes::new();
    let docker = Docker::detect(&runner)?;
    let env = ci_env::process_env();
    let services = if args.services.is_empty() { vec![Service::Backend, Service::Frontend] } else { args.services };
    let plan = plan(&docker, &services, &base_images(&env, None), &crate::adapters::workspace_root());
    show_or_run(&plan, args.dry_run, &runner).map(|_| ())
}

fn plan(
    docker: &Docker,
    services: &[Service],
    base_images: &std::collections::BTreeMap<String, String>,
    workspace: &std::path::Path,
) -> Plan {
    let mut plan = Plan::default();
    let mut contexts = Vec::new();
    for &service in services {
        // The worker's tests are the backend's: one context, one test stage.
        if contexts.contains(&service.context_dir()) {
            continue;
        }
        contexts.push(service.context_dir());
        let context = workspace.join(service.context_dir());
        let spec = BuildSpec {
            dockerfile: context.join("Dockerfile"),
            context,
            target: Some(check_target(service).to_string()),
            build_args: base_image_args(service, base_images),
            ..BuildSpec::default()
        };
        plan.run(
            docker
                .build(&spec)
                .hint(format!("the {} checks failed; the output above says which", service.context_dir())),
        );
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::docker::Builder;

    #[test]
    fn backend_tests_and_frontend_checks_are_builds_of_their_stages() {
        let docker = Docker { program: "docker".into(), builder: Builder::Legacy, engine_version: "20.10.24".into() };
        let images = std::collections::BTreeMap::from([("PYTHON_IMAGE".to_string(), "lab/python:lab".to_string())]);
        let plan = plan(&docker, &[Service::Backend, Service::Worker, Service::Frontend], &images, "/ws".as_ref());
        let shown = plan.to_string();
        assert_eq!(plan.steps.len(), 2, "the worker shares the backend's tests:\n{shown}");
        assert!(shown.contains("--target test --build-arg PYTHON_IMAGE=lab/python:lab /ws/backend"), "{shown}");
        assert!(shown.contains("--file /ws/frontend/Dockerfile --target build /ws/frontend"), "{shown}");
        assert!(!shown.contains("--tag"), "checks tag nothing:\n{shown}");
    }

    #[test]
    fn the_checks_run_exactly_the_commands_they_show() {
        let docker = Docker { program: "docker".into(), builder: Builder::Legacy, engine_version: "20.10.24".into() };
        let plan = plan(&docker, &[Service::Backend, Service::Frontend], &Default::default(), "/ws".as_ref());
        let runner = crate::plan::runner::Recording::new();
        show_or_run(&plan, false, &runner).unwrap();
        runner.assert_ran_as_shown(&plan.to_string());
        assert_eq!(runner.executed().len(), 2, "{:?}", runner.executed());
    }
}
