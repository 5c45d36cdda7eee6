//! `cargo xtask env init | check`: the deployment's `.env`, written and validated against the
//! template beside it (`.env.example`, `.env.production.example` or `.env.template`) and the
//! compose file that reads it.
//!
//! - `init` reads the template, the compose file and any existing `.env` once, plans the merged
//!   file (pure: [`plan_init`]) and writes it atomically with mode 0600. Existing values always
//!   win; what it generates, from the kernel's CSPRNG, are the empty required secrets and, in a
//!   new file, the secrets the template leaves at a placeholder (`your_secure_password_here`).
//! - `check` prints every problem `stack::env_check` finds, secrets by name only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use crate::adapters::dotenv::{self, DotEnv, is_template_placeholder};
use crate::plan::runner::Processes;
use crate::plan::{Command, FileContents, Plan, Secret, show_or_run};
use crate::stack::env_check::{
    LLM_KEYS, Level, Template, check_dir, deployment_dir, file_mode, has_llm_key, read_template, report,
};

/// Random bytes per generated secret: 32 bytes, 64 hex characters, enough for HS256 keys and
/// safe in any URL or shell without quoting.
const SECRET_BYTES: usize = 32;

#[derive(Subcommand)]
pub enum EnvCommand {
    /// Write DIR/.env from DIR's template, generating every empty required secret.
    ///
    /// The template is DIR/.env.example, else .env.production.example, else .env.template; the
    /// compose file beside it says which variables are required. Values already set in an
    /// existing .env are never changed; variables new in the template are added with their
    /// comments. Running it again changes nothing. The file gets mode 0600.
    ///
    /// Example: cargo xtask env init --dir /srv/intric
    Init(InitArgs),
    /// Check DIR/.env against DIR's template and compose file and list every problem.
    ///
    /// Required variables set, types right, no template placeholders left, secrets long, an LLM
    /// key, mode 0600, not tracked by git. Secret values are never printed.
    ///
    /// Example: cargo xtask env check --dir /srv/intric
    Check(DirArgs),
}

#[derive(Args)]
pub struct DirArgs {
    /// The deployment directory holding the template and .env [default: the repository's docker/].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Print what would be written (secrets by name only) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(command: EnvCommand) -> Result<()> {
    match command {
        EnvCommand::Init(args) => {
            let dir = deployment_dir(args.dir.dir);
            let inputs = read_init_inputs(&dir)?;
            let outcome = plan_init(&inputs)?;
            show_or_run(&outcome.plan, args.dry_run, &Processes::new())?;
            print!("{}", outcome.summary(&dir, args.dry_run));
            Ok(())
        }
        EnvCommand::Check(args) => {
            let dir = deployment_dir(args.dir);
            let (template, env, problems) = check_dir(&Processes::new(), &dir)?;
            println!("checked against {}", template.sources());
            print!("{}", report(env.path(), &problems));
            let errors = problems.iter().filter(|problem| problem.level == Level::Error).count();
            if errors > 0 {
                bail!("{} failed the check with {errors} problem(s), listed above", env.path().display());
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// init

/// Everything `init` decides from, read once.
struct InitInputs {
    env_path: PathBuf,
    template: Template,
    /// The current `.env` and its permission bits, when there is one.
    existing: Option<(DotEnv, u32)>,
    /// A fresh random value for every secret of the template; used only where [`plan_init`]
    /// generates one.
    fresh: BTreeMap<String, Secret>,
}

fn read_init_inputs(dir: &Path) -> Result<InitInputs> {
    let template = read_template(dir)?;
    let env_path = dir.join(".env");
    let existing = if env_path.exists() {
        let env = DotEnv::read(&env_path)?;
        Some((env, file_mode(&env_path)?))
    } else {
        None
    };
    let mut fresh = BTreeMap::new();
    for spec in template.specs.iter().filter(|spec| spec.secret && spec.in_template()) {
        fresh.insert(spec.name.clone(), Secret::new(&spec.name, dotenv::random_hex(SECRET_BYTES)?));
    }
    Ok(InitInputs { env_path, template, existing, fresh })
}

/// What `init` is about to do, and what it tells the operator.
struct InitOutcome {
    plan: Plan,
    /// Secrets generated (names only).
    generated: Vec<String>,
    /// Variables added to an existing `.env` from the example.
    added: Vec<String>,
    /// Required variables still empty and template placeholders left, for the operator to fill in.
    to_fill: Vec<String>,
    /// No `.env` existed.
    created: bool,
    /// The template's file name, for the summary.
    template: String,
}

/// Merges the template into the existing `.env` (or copies it): the existing file stays as it
/// is, byte for byte, except for variables it lacks (inserted after their predecessor in the
/// template, with their annotation) and empty required secrets (filled in place). In a new file
/// the secrets the template leaves at a placeholder are generated too; in an existing one they
/// are left for `env check` to report, since a running database may already use them.
fn plan_init(inputs: &InitInputs) -> Result<InitOutcome> {
    let specs = &inputs.template.specs;
    let (mut env, created) = match &inputs.existing {
        Some((existing, _)) => (existing.clone(), false),
        None => (DotEnv::parse(&inputs.env_path, &inputs.template.file.render())?, true),
    };
    let mut added = Vec::new();
    let mut generated = Vec::new();
    let mut previous: Option<&str> = None;
    for spec in specs.iter().filter(|spec| spec.in_template()) {
        if env.get(&spec.name).is_none() {
            let comments = &spec.lines[..spec.lines.len() - 1];
            env.insert_after(previous, comments, &spec.name, &spec.default)?;
            added.push(spec.name.clone());
        }
        let value = env.get(&spec.name).unwrap_or_default();
        let wanted = (value.is_empty() && spec.required) || (created && is_template_placeholder(value));
        if wanted && let Some(secret) = inputs.fresh.get(&spec.name) {
            env.set(&spec.name, secret.expose())?;
            generated.push(spec.name.clone());
        }
        previous = Some(&spec.name);
    }

    let mut to_fill: Vec<String> = specs
        .iter()
        .filter(|spec| {
            let value = env.get(&spec.name).unwrap_or_default();
            (spec.required && value.is_empty()) || is_template_placeholder(value)
        })
        .map(|spec| spec.name.clone())
        .collect();
    if !has_llm_key(&env) {
        to_fill.push(format!("one of {}", LLM_KEYS.join(", ")));
    }

    let text = env.render();
    let mut plan = Plan::default();
    match &inputs.existing {
        Some((existing, mode)) if existing.render() == text => {
            if mode & 0o077 != 0 {
                plan.run(Command::new("chmod").args(["600".to_string(), inputs.env_path.display().to_string()]));
            }
        }
        _ => plan.write(&inputs.env_path, FileContents::Secret(Secret::new(".env", text)), 0o600),
    }
    Ok(InitOutcome { plan, generated, added, to_fill, created, template: inputs.template.name() })
}

impl InitOutcome {
    fn summary(&self, dir: &Path, dry_run: bool) -> String {
        let path = dir.join(".env");
        // Past tense once done, conditional for a dry run.
        let word = |done: &str, planned: &str| if dry_run { format!("would {planned}") } else { done.to_string() };
        let mut text = if self.plan.steps.is_empty() {
            format!("{} is up to date\n", path.display())
        } else if self.created {
            format!("{} {} (mode 600) from {}\n", word("created", "create"), path.display(), self.template)
        } else {
            format!("{} {} (mode 600); values already set are kept\n", word("updated", "update"), path.display())
        };
        if !self.generated.is_empty() {
            text.push_str(&format!("{}: {}\n", word("generated", "generate"), self.generated.join(", ")));
        }
        if !self.added.is_empty() {
            text.push_str(&format!("{} from {}: {}\n", word("added", "add"), self.template, self.added.join(", ")));
        }
        if !self.to_fill.is_empty() {
            text.push_str(&format!("fill in before deploying: {}\n", self.to_fill.join("; ")));
        }
        text.push_str(&format!("then check it: cargo xtask env check --dir {}\n", dir.display()));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::env_check::{TEST_CANARY as CANARY, TEST_EXAMPLE as EXAMPLE};

    fn inputs(existing: Option<&str>, mode: u32) -> InitInputs {
        let file = DotEnv::parse(Path::new("d/.env.example"), EXAMPLE).unwrap();
        let specs = dotenv::parse_spec(&file).unwrap();
        let fresh = specs
            .iter()
            .filter(|spec| spec.secret)
            .map(|spec| {
                (
                    spec.name.clone(),
                    Secret::new(&spec.name, format!("{CANARY}-{}-0123456789abcdef0123456789abcdef", spec.name)),
                )
            })
            .collect();
        InitInputs {
            env_path: "d/.env".into(),
            template: Template { file, specs, compose_file: None },
            existing: existing.map(|text| (DotEnv::parse(Path::new("d/.env"), text).unwrap(), mode)),
            fresh,
        }
    }

    fn written(outcome: &InitOutcome) -> Option<String> {
        outcome.plan.steps.iter().find_map(|step| match step {
            crate::plan::Step::Write { contents: FileContents::Secret(secret), mode: 0o600, .. } => {
                Some(secret.expose().to_string())
            }
            _ => None,
        })
    }

    #[test]
    fn init_copies_the_example_and_generates_required_secrets() {
        let outcome = plan_init(&inputs(None, 0)).unwrap();
        let text = written(&outcome).unwrap();
        assert_eq!(outcome.generated, ["POSTGRES_PASSWORD", "JWT_SECRET"]);
        assert!(outcome.added.is_empty() && outcome.created);
        assert_eq!(outcome.to_fill, ["NEXUS_REGISTRY", "IMAGE_TAG", &format!("one of {}", LLM_KEYS.join(", "))]);
        let expected = EXAMPLE
            .replace(
                "POSTGRES_PASSWORD=\n",
                "POSTGRES_PASSWORD=canary-POSTGRES_PASSWORD-0123456789abcdef0123456789abcdef\n",
            )
            .replace("JWT_SECRET=\n", "JWT_SECRET=canary-JWT_SECRET-0123456789abcdef0123456789abcdef\n");
        assert_eq!(text, expected);
        let shown = format!("{}{}", outcome.plan, outcome.summary(Path::new("d"), true));
        assert!(!shown.contains(CANARY), "{shown}");
        assert!(shown.contains("would generate: POSTGRES_PASSWORD, JWT_SECRET"), "{shown}");
    }

    #[test]
    fn init_keeps_existing_values_and_adds_new_variables_in_place() {
        let existing = "# mine\nexport IMAGE_TAG=1.0.0\nJWT_SECRET='kept-0123456789abcdef0123456789abcdef'\nLOGLEVEL=DEBUG # loud\nEXTRA=1";
        let outcome = plan_init(&inputs(Some(existing), 0o600)).unwrap();
        let text = written(&outcome).unwrap();
        assert_eq!(outcome.generated, ["POSTGRES_PASSWORD"]);
        assert!(outcome.added.contains(&"NEXUS_REGISTRY".to_string()) && !outcome.added.contains(&"IMAGE_TAG".into()));
        assert!(!outcome.created);
        assert!(
            text.starts_with("# mine\nexport IMAGE_TAG=1.0.0\n# optional, string, secret: Registry password"),
            "{text}"
        );
        // The example's first variable has no predecessor to follow, so it goes to the end.
        assert!(
            text.ends_with(
                "EXTRA=1\n# required, registry: Registry. Example: nexus.example.com:8082\nNEXUS_REGISTRY=\n"
            )
        );
        assert!(
            text.contains("\nJWT_SECRET='kept-0123456789abcdef0123456789abcdef'\n# optional, string: May be empty"),
            "{text}"
        );
        assert!(text.contains("\nLOGLEVEL=DEBUG # loud\nEXTRA=1\n"), "{text}");
        // Running again on the result changes nothing.
        let again = plan_init(&inputs(Some(&text), 0o600)).unwrap();
        assert!(again.plan.steps.is_empty(), "{}", again.plan);
        assert!(again.generated.is_empty() && again.added.is_empty());
    }

    #[test]
    fn init_only_fixes_the_mode_of_a_complete_file() {
        let complete = written(&plan_init(&inputs(None, 0)).unwrap()).unwrap();
        let outcome = plan_init(&inputs(Some(&complete), 0o100644)).unwrap();
        assert_eq!(outcome.plan.to_string(), "  1. chmod 600 d/.env\n");
    }

    #[test]
    fn init_runs_exactly_what_it_shows() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        // A new file, then the mode of an existing one: a write, then a chmod.
        let mut new = inputs(None, 0);
        new.env_path = path.clone();
        let outcome = plan_init(&new).unwrap();
        let runner = crate::plan::runner::Recording::new();
        crate::plan::TaskPlan::execute(&outcome.plan, &runner).unwrap();
        assert!(runner.executed().is_empty(), "writing .env runs no command: {:?}", runner.executed());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), written(&outcome).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let mut loose = inputs(Some(&written(&outcome).unwrap()), 0o100644);
        loose.env_path = path.clone();
        let chmod = plan_init(&loose).unwrap();
        let runner = crate::plan::runner::Recording::new();
        crate::plan::TaskPlan::execute(&chmod.plan, &runner).unwrap();
        runner.assert_ran_as_shown(&chmod.plan.to_string());
        assert_eq!(runner.executed(), [format!("chmod 600 {}", path.display())]);
    }
}
