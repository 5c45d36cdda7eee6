//! The deployment's `.env` check: a pure function from the parsed file, what the template and
//! the compose file say about each variable ([`Template`]), the file mode and whether git tracks
//! the file to every [`Problem`]; `env check`, `doctor` and `deploy` call it through
//! [`check_dir`]. No message ever contains a secret's value.
//!
//! The template is the first of [`TEMPLATES`] in the directory: our annotated `.env.example`,
//! or a plain `KEY=value` one such as the published `.env.production.example`. The compose
//! file beside it says which variables are required (`${VAR:?message}`, or `${VAR}` without a
//! default for a variable the template lists), their defaults and which services read them.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::adapters::compose::find_compose_file;
use crate::adapters::compose_vars::{self, ComposeVar};
use crate::adapters::dotenv::{self, DotEnv, VarSpec, VarType, is_template_placeholder};
use crate::adapters::git;
use crate::plan::runner::Runner;

/// The LLM provider keys: the backend starts without any, but answers nothing.
pub const LLM_KEYS: [&str; 4] = ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_API_KEY", "MISTRAL_API_KEY"];

/// The deployment directory: `--dir`, else the repository's `docker/`.
pub fn deployment_dir(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| crate::adapters::workspace_root().join("docker"))
}

// ---------------------------------------------------------------------------------------------
// check

/// How bad a [`Problem`] is: errors fail the check, warnings are only shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
}

/// One finding of [`check`]. The message never contains a secret's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub level: Level,
    /// The variable concerned; `None` for problems of the file itself.
    pub variable: Option<String>,
    pub message: String,
}

impl Problem {
    fn error(variable: Option<&str>, message: String) -> Problem {
        Problem { level: Level::Error, variable: variable.map(str::to_string), message }
    }

    fn warning(variable: Option<&str>, message: String) -> Problem {
        Problem { level: Level::Warning, variable: variable.map(str::to_string), message }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Error => "error",
            Level::Warning => "warning",
        };
        write!(f, "{level}: {}", self.message)
    }
}

/// Reads DIR's template and compose file, DIR/.env, the file's mode and whether git tracks it
/// (a git process through `runner`), and checks them: for `env check`, `doctor` and `deploy`.
/// Problems are returned, not raised; an error means the files could not be read at all.
pub fn check_dir(runner: &dyn Runner, dir: &Path) -> Result<(Template, DotEnv, Vec<Problem>)> {
    let template = read_template(dir)?;
    let env_path = dir.join(".env");
    if !env_path.exists() {
        bail!("{} does not exist: run `cargo xtask env init --dir {}` first", env_path.display(), dir.display());
    }
    let env = DotEnv::read(&env_path)?;
    let mode = file_mode(&env_path)?;
    let tracked = git::is_tracked(runner, &env_path)?;
    let problems = check(&env, &template.specs, &template.name(), mode, tracked);
    Ok((template, env, problems))
}

/// Every problem of `env` against `spec` (read from the template named `template`), errors
/// first, in the order of the spec.
pub fn check(env: &DotEnv, spec: &[VarSpec], template: &str, file_mode: u32, tracked: bool) -> Vec<Problem> {
    let file = env.path().display();
    let mut problems = Vec::new();
    for var in spec {
        let name = Some(var.name.as_str());
        match env.get(&var.name) {
            None | Some("") if var.required => {
                let state = if env.get(&var.name).is_none() { "missing" } else { "empty" };
                let hint = if var.secret {
                    "; `cargo xtask env init` generates it".to_string()
                } else if var.example.is_empty() {
                    String::new()
                } else {
                    format!("; example: {}", var.example)
                };
                let readers = (!var.services.is_empty()).then(|| format!("read by {}", var.services.join(", ")));
                let about: Vec<&str> = [Some(var.description.as_str()), readers.as_deref()]
                    .into_iter()
                    .flatten()
                    .filter(|s| !s.is_empty())
                    .collect();
                let about = if about.is_empty() { String::new() } else { format!(" ({})", about.join("; ")) };
                problems.push(Problem::error(name, format!("{} is {state} but required{about}{hint}", var.name)));
            }
            None | Some("") => {}
            Some(value) => problems.extend(check_value(var, value)),
        }
    }
    if !has_llm_key(env) {
        problems
            .push(Problem::error(None, format!("no LLM provider key: set at least one of {}", LLM_KEYS.join(", "))));
    }
    if file_mode & 0o077 != 0 {
        problems.push(Problem::error(
            None,
            format!(
                "{file} is readable or writable by group or others (mode {:o}): run `chmod 600 {file}`",
                file_mode & 0o777
            ),
        ));
    }
    if tracked {
        problems.push(Problem::error(
            None,
            format!(
                "{file} is tracked by git, so its secrets are in the history: `git rm --cached {file}`, \
                 keep it ignored, and rotate the secrets"
            ),
        ));
    }
    for entry in env.entries() {
        if !spec.iter().any(|var| var.name == entry.key) {
            problems.push(Problem::warning(
                Some(&entry.key),
                format!("{} is not in {template}: a typo, or a variable nothing reads", entry.key),
            ));
        }
    }
    // Stable: errors first, each group in the order found.
    problems.sort_by_key(|problem| problem.level);
    problems
}

/// The problems of one non-empty value: its type, and for a secret its strength.
fn check_value(var: &VarSpec, value: &str) -> Vec<Problem> {
    let name = Some(var.name.as_str());
    if is_template_placeholder(value) {
        let message = if var.secret {
            format!(
                "{} is still the template's placeholder (the value is secret and not shown): set a real one",
                var.name
            )
        } else {
            format!("{} is still the template's placeholder {value:?}: set the real value", var.name)
        };
        return vec![Problem::error(name, message)];
    }
    let mut problems = Vec::new();
    if let Some(expected) = type_problem(var.kind, value) {
        let message = if var.secret {
            format!("{} is not {expected} (the value is secret and not shown)", var.name)
        } else {
            format!("{} is {value:?}, not {expected}", var.name)
        };
        problems.push(Problem::error(name, message));
    }
    if var.secret {
        let minimum = var.min_length();
        if is_placeholder(value, &var.example) {
            problems.push(Problem::error(name, format!("{} is a placeholder, not a real secret", var.name)));
        } else if value.chars().count() < minimum {
            let message = format!("{} is shorter than {minimum} characters", var.name);
            // A required secret is ours to choose (env init generates it); an optional one is
            // usually issued by someone else (a registry password, an API key), so a short one
            // is suspicious but may be all the operator has.
            problems.push(if var.required {
                Problem::error(name, format!("{message}; `cargo xtask env init` generates a strong one"))
            } else {
                Problem::warning(name, message)
            });
        }
    }
    problems
}

/// What `value` should have been, when it is not a valid `kind`.
fn type_problem(kind: VarType, value: &str) -> Option<&'static str> {
    let valid = match kind {
        VarType::String => true,
        VarType::Int => value.parse::<i64>().is_ok(),
        VarType::Port => value.bytes().all(|b| b.is_ascii_digit()) && value.parse::<u16>().is_ok_and(|port| port > 0),
        VarType::Bool => ["true", "false", "1", "0", "yes", "no"].iter().any(|word| word.eq_ignore_ascii_case(value)),
        VarType::LogLevel => ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"].contains(&value),
        VarType::Url => ["http://", "https://"].iter().any(|scheme| {
            value.strip_prefix(scheme).is_some_and(|rest| {
                !rest.is_empty() && !rest.starts_with('/') && !rest.chars().any(char::is_whitespace)
            })
        }),
        VarType::ImageTag => crate::images::tags::is_valid_image_tag(value),
        VarType::Registry => is_valid_registry(value),
    };
    (!valid).then_some(match kind {
        VarType::String => "a string",
        VarType::Int => "an integer",
        VarType::Port => "a port (an integer from 1 to 65535)",
        VarType::Bool => "a boolean (true, false, 1, 0, yes or no)",
        VarType::LogLevel => "a log level (DEBUG, INFO, WARNING, ERROR or CRITICAL)",
        VarType::Url => "an http:// or https:// URL",
        VarType::ImageTag => "an image tag ([A-Za-z0-9_][A-Za-z0-9_.-], at most 128 characters)",
        VarType::Registry => "a registry host[:port][/path] (no scheme, no image name or tag)",
    })
}

/// `host[:port][/path]`, read by the registry adapter's parser like every registry setting.
/// Compose puts the value in front of image names as written, so a scheme (which the parser
/// allows, to choose the protocol) is refused here.
fn is_valid_registry(value: &str) -> bool {
    !value.contains("://") && crate::adapters::registry::RegistryAddress::parse(value).is_ok()
}

/// Whether a secret's value is one of the stand-ins people leave in templates.
fn is_placeholder(value: &str, example: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    // `password123`, `<secret>` and `"changeme!"` are all their word.
    let word = lower.trim_matches(|c: char| !c.is_ascii_alphabetic());
    const WORDS: [&str; 14] = [
        "changeme",
        "secret",
        "password",
        "passwd",
        "pass",
        "example",
        "placeholder",
        "todo",
        "fixme",
        "test",
        "dummy",
        "default",
        "none",
        "null",
    ];
    const FRAGMENTS: [&str; 9] =
        ["changeme", "change_me", "change-me", "replaceme", "replace_me", "placeholder", "example", "...", "your_"];
    (!example.is_empty() && value == example)
        || WORDS.contains(&word)
        || FRAGMENTS.iter().any(|fragment| lower.contains(fragment))
        || lower.starts_with("your")
        || (lower.starts_with('<') && lower.ends_with('>'))
        || lower.chars().all(|c| lower.starts_with(c))
}

pub fn has_llm_key(env: &DotEnv) -> bool {
    LLM_KEYS.iter().any(|key| env.get(key).is_some_and(|value| !value.is_empty()))
}

/// The report `env check` prints: a header, then one problem per line.
pub fn report(file: &Path, problems: &[Problem]) -> String {
    let errors = problems.iter().filter(|problem| problem.level == Level::Error).count();
    let warnings = problems.len() - errors;
    let mut text = if errors == 0 {
        format!("{}: ok ({warnings} warning(s))\n", file.display())
    } else {
        format!("{}: {errors} error(s), {warnings} warning(s)\n", file.display())
    };
    for problem in problems {
        text.push_str(&format!("  {problem}\n"));
    }
    text
}

// ---------------------------------------------------------------------------------------------
// inputs

/// The templates a deployment directory may hold, in order of preference: ours, the name the
/// published deployment guide uses, and a common third.
pub const TEMPLATES: [&str; 3] = [".env.example", ".env.production.example", ".env.template"];

/// What the deployment directory says `.env` should hold.
pub struct Template {
    /// The template, parsed.
    pub file: DotEnv,
    /// Its variables, then those only the compose file reads, with what both say of them.
    pub specs: Vec<VarSpec>,
    /// The compose file whose interpolations were read, when the directory has one.
    pub compose_file: Option<PathBuf>,
}

impl Template {
    /// The template's file name, as messages name it.
    pub fn name(&self) -> String {
        file_name(self.file.path())
    }

    /// What the specs were read from: the template, and the compose file when there is one.
    pub fn sources(&self) -> String {
        match &self.compose_file {
            Some(compose) => format!("{} and {}", self.name(), file_name(compose)),
            None => self.name(),
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |name| name.to_string_lossy().into_owned())
}

/// DIR's template (the first of [`TEMPLATES`]) and compose file, read and merged.
pub fn read_template(dir: &Path) -> Result<Template> {
    if !dir.is_dir() {
        bail!("the deployment directory {} does not exist (pass --dir DIR)", dir.display());
    }
    let Some(path) = TEMPLATES.iter().map(|name| dir.join(name)).find(|path| path.is_file()) else {
        bail!(
            "{} holds no .env template ({}): copy the repository's docker/.env.example there",
            dir.display(),
            TEMPLATES.join(", ")
        );
    };
    let file = DotEnv::read(&path)?;
    let mut specs = dotenv::parse_spec(&file)?;
    let compose_file = find_compose_file(dir);
    if let Some(compose) = &compose_file {
        let text = std::fs::read_to_string(compose).with_context(|| format!("cannot read {}", compose.display()))?;
        merge_compose(&mut specs, &compose_vars::scan(&text));
    }
    Ok(Template { file, specs, compose_file })
}

/// Adds what the compose file says to the template's specs: a variable compose requires, or one
/// the template lists that compose reads without a default, is required; the services reading
/// it; and the variables compose requires that the template lacks. A variable only the compose
/// file reads plainly (`${HOME}`) stays optional: compose may well get it from the environment.
fn merge_compose(specs: &mut Vec<VarSpec>, vars: &[ComposeVar]) {
    for var in vars {
        match specs.iter_mut().find(|spec| spec.name == var.name) {
            Some(spec) => {
                spec.required |= var.required || var.default.is_none();
                spec.services = var.services.clone();
            }
            None => specs.push(VarSpec {
                name: var.name.clone(),
                required: var.required,
                kind: VarType::String,
                secret: dotenv::is_secret_name(&var.name),
                description: String::new(),
                example: String::new(),
                default: var.default.clone().unwrap_or_default(),
                lines: Vec::new(),
                services: var.services.clone(),
            }),
        }
    }
}

pub fn file_mode(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.permissions().mode())
}

/// An annotated `.env.example` for the tests of `env check` and `env init`.
#[cfg(test)]
pub const TEST_EXAMPLE: &str = "\
# required, registry: Registry. Example: nexus.example.com:8082
NEXUS_REGISTRY=
# required, image-tag: Tag. Example: 1.2.3
IMAGE_TAG=
# optional, string, secret: Registry password. Example: (from your secret store)
NEXUS_PASSWORD=
# optional, port: Port. Example: 3000
FRONTEND_PORT=3000
# required, int: Size. Example: 1048576
UPLOAD_MAX_FILE_SIZE=1048576
# required, string, secret: Password, at least 16 characters. Example: (generated by env init)
POSTGRES_PASSWORD=
# required, string, secret: Key, at least 32 characters. Example: (generated by env init)
JWT_SECRET=
# optional, string: May be empty. Example: Bearer
JWT_TOKEN_PREFIX=
# optional, string, secret: OpenAI. Example: sk-...
OPENAI_API_KEY=
# optional, string, secret: Anthropic. Example: sk-ant-...
ANTHROPIC_API_KEY=
# optional, url: Endpoint. Example: https://example.openai.azure.com
AZURE_ENDPOINT=
# optional, bool: Flag. Example: false
USING_CRAWL=false
# optional, loglevel: Level. Example: INFO
LOGLEVEL=INFO
";

/// A value the tests look for in output, where it must never appear.
#[cfg(test)]
pub const TEST_CANARY: &str = "canary";

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = TEST_EXAMPLE;
    const CANARY: &str = TEST_CANARY;

    fn specs() -> Vec<VarSpec> {
        dotenv::parse_spec(&DotEnv::parse(Path::new(".env.example"), EXAMPLE).unwrap()).unwrap()
    }

    /// A `.env` that passes: the example with every required value filled in.
    fn good() -> DotEnv {
        let mut env = DotEnv::parse(Path::new("d/.env"), EXAMPLE).unwrap();
        for (key, value) in [
            ("NEXUS_REGISTRY", "nexus.intric.se:8082"),
            ("IMAGE_TAG", "1.2.3"),
            ("POSTGRES_PASSWORD", "0123456789abcdef0123"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef01"),
            ("OPENAI_API_KEY", "sk-proj-0123456789abcdef0123456789"),
        ] {
            env.set(key, value).unwrap();
        }
        env
    }

    fn problems_of(changes: &[(&str, &str)], mode: u32, tracked: bool) -> Vec<Problem> {
        let mut env = good();
        for (key, value) in changes {
            env.set(key, value).unwrap();
        }
        check(&env, &specs(), ".env.example", mode, tracked)
    }

    #[test]
    fn a_complete_file_passes() {
        assert_eq!(check(&good(), &specs(), ".env.example", 0o100600, false), []);
    }

    #[test]
    fn each_bad_input_is_one_error_naming_its_variable() {
        // The changes to a passing file, its mode, whether git tracks it, and the one error expected.
        type Case<'a> = (&'a [(&'a str, &'a str)], u32, bool, &'a str);
        let cases: &[Case] = &[
            (&[("NEXUS_REGISTRY", "")], 0o600, false, "NEXUS_REGISTRY is empty but required"),
            (&[("IMAGE_TAG", "")], 0o600, false, "IMAGE_TAG is empty but required"),
            (&[("IMAGE_TAG", "-bad")], 0o600, false, "IMAGE_TAG is \"-bad\", not an image tag"),
            (&[("IMAGE_TAG", "1.2.3+build")], 0o600, false, "not an image tag"),
            (&[("NEXUS_REGISTRY", "https://nexus:8082")], 0o600, false, "not a registry"),
            (&[("NEXUS_REGISTRY", "nexus:99999")], 0o600, false, "not a registry"),
            (&[("NEXUS_REGISTRY", "nexus:8082/intric/backend:1.0")], 0o600, false, "not a registry"),
            (&[("NEXUS_REGISTRY", "-nexus")], 0o600, false, "not a registry"),
            (&[("FRONTEND_PORT", "0")], 0o600, false, "FRONTEND_PORT is \"0\", not a port"),
            (&[("FRONTEND_PORT", "65536")], 0o600, false, "not a port"),
            (&[("FRONTEND_PORT", "http")], 0o600, false, "not a port"),
            (&[("UPLOAD_MAX_FILE_SIZE", "10MB")], 0o600, false, "UPLOAD_MAX_FILE_SIZE is \"10MB\", not an integer"),
            (&[("USING_CRAWL", "enabled")], 0o600, false, "not a boolean"),
            (&[("LOGLEVEL", "verbose")], 0o600, false, "not a log level"),
            (&[("AZURE_ENDPOINT", "example.openai.azure.com")], 0o600, false, "not an http:// or https:// URL"),
            (&[("JWT_SECRET", CANARY)], 0o600, false, "JWT_SECRET is shorter than 32 characters"),
            (&[("JWT_SECRET", "canary-0123456789abcdef012345")], 0o600, false, "shorter than 32"),
            (&[("POSTGRES_PASSWORD", "canary-short")], 0o600, false, "POSTGRES_PASSWORD is shorter than 16"),
            (
                &[("POSTGRES_PASSWORD", "changeme")],
                0o600,
                false,
                "POSTGRES_PASSWORD is still the template's placeholder",
            ),
            (&[("POSTGRES_PASSWORD", "Password123")], 0o600, false, "is a placeholder"),
            (&[("JWT_SECRET", "<your jwt secret goes here, canary>")], 0o600, false, "JWT_SECRET is a placeholder"),
            (
                &[("JWT_SECRET", "your_jwt_secret_canary_0123456789abc")],
                0o600,
                false,
                "still the template's placeholder",
            ),
            (&[("JWT_SECRET", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")], 0o600, false, "is a placeholder"),
            (&[("JWT_SECRET", "change_me_canary_0123456789abcdef")], 0o600, false, "still the template's placeholder"),
            (
                &[("NEXUS_REGISTRY", "your.nexus.registry.com")],
                0o600,
                false,
                "NEXUS_REGISTRY is still the template's placeholder \"your.nexus.registry.com\": set the real value",
            ),
            (&[("OPENAI_API_KEY", "sk-...")], 0o600, false, "OPENAI_API_KEY is a placeholder"),
            (&[("OPENAI_API_KEY", "")], 0o600, false, "no LLM provider key"),
            (&[], 0o644, false, "readable or writable by group or others (mode 644)"),
            (&[], 0o100660, false, "(mode 660)"),
            (&[], 0o602, false, "(mode 602)"),
            (&[], 0o600, true, "is tracked by git"),
        ];
        for (changes, mode, tracked, expected) in cases {
            let problems = problems_of(changes, *mode, *tracked);
            let errors: Vec<&Problem> = problems.iter().filter(|problem| problem.level == Level::Error).collect();
            assert_eq!(errors.len(), 1, "{changes:?}: {problems:#?}");
            assert!(errors[0].message.contains(expected), "{changes:?}: {}", errors[0].message);
            let variable = changes.first().map(|(key, _)| *key);
            if variable.is_some() && !expected.contains("LLM") {
                assert_eq!(errors[0].variable.as_deref(), variable, "{changes:?}");
            }
            let shown = report(Path::new("d/.env"), &problems);
            assert!(!shown.contains(CANARY), "a secret leaked: {shown}");
        }
    }

    #[test]
    fn a_missing_required_variable_is_an_error_and_all_problems_come_together() {
        let env = DotEnv::parse(Path::new("d/.env"), "UNKNOWN=1\nFRONTEND_PORT=http\n").unwrap();
        let problems = check(&env, &specs(), ".env.example", 0o644, true);
        let shown = report(Path::new("d/.env"), &problems);
        for expected in [
            "NEXUS_REGISTRY is missing but required (Registry); example: nexus.example.com:8082",
            "IMAGE_TAG is missing",
            "UPLOAD_MAX_FILE_SIZE is missing",
            "POSTGRES_PASSWORD is missing but required (Password, at least 16 characters); `cargo xtask env init`",
            "JWT_SECRET is missing",
            "FRONTEND_PORT is \"http\", not a port",
            "no LLM provider key",
            "mode 644",
            "tracked by git",
            "warning: UNKNOWN is not in .env.example",
        ] {
            assert!(shown.contains(expected), "{expected} missing from\n{shown}");
        }
        assert!(shown.starts_with("d/.env: 9 error(s), 1 warning(s)\n"), "{shown}");
        assert_eq!(problems.last().unwrap().level, Level::Warning, "errors first");
        assert!(!shown.contains("JWT_TOKEN_PREFIX"), "optional variables may be missing");
    }

    #[test]
    fn a_short_optional_secret_only_warns() {
        let problems = problems_of(&[("NEXUS_PASSWORD", "canary-1")], 0o600, false);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].level, Level::Warning);
        assert!(problems[0].message.contains("NEXUS_PASSWORD is shorter than 16 characters"), "{problems:#?}");
        assert!(!report(Path::new("d/.env"), &problems).contains(CANARY));
    }

    /// A plain template laid out as the published `.env.production.example`, and a compose file
    /// reading its variables the published way.
    const PLAIN_TEMPLATE: &str = "\
# Deployment (REQUIRED)
NEXUS_REGISTRY=your.nexus.registry.com
IMAGE_TAG=latest

# Database Configuration (REQUIRED)
POSTGRES_PASSWORD=your_secure_password_here
JWT_SECRET=your_secure_jwt_secret_here
JWT_ISSUER=EXAMPLE

# LLM keys (at least one)
OPENAI_API_KEY=
";
    const PLAIN_COMPOSE: &str = "\
services:
  backend:
    image: ${NEXUS_REGISTRY}/intric/backend:${IMAGE_TAG:-latest}
    environment:
      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:-postgres}
      JWT_SECRET: ${JWT_SECRET}
      JWT_ISSUER: ${JWT_ISSUER:-INTRIC}
      REDIS_HOST: ${REDIS_HOST:?set REDIS_HOST}
      HOME_DIR: ${HOME}
";

    #[test]
    fn a_plain_template_and_its_compose_file_say_what_is_required() {
        let mut specs =
            dotenv::parse_spec(&DotEnv::parse(Path::new(".env.production.example"), PLAIN_TEMPLATE).unwrap()).unwrap();
        merge_compose(&mut specs, &compose_vars::scan(PLAIN_COMPOSE));
        let required: Vec<&str> = specs.iter().filter(|s| s.required).map(|s| s.name.as_str()).collect();
        assert_eq!(required, ["NEXUS_REGISTRY", "JWT_SECRET", "REDIS_HOST"], "plain ${{VAR}} of the template, and :?");
        assert!(!specs.iter().any(|s| s.name == "HOME" && s.required), "compose's own plain reads stay optional");

        let mut env = DotEnv::parse(Path::new("d/.env"), PLAIN_TEMPLATE).unwrap();
        env.set("POSTGRES_PASSWORD", "0123456789abcdef0123456789abcdef").unwrap();
        env.set("JWT_SECRET", "").unwrap();
        let problems = check(&env, &specs, ".env.production.example", 0o600, false);
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "error: NEXUS_REGISTRY is still the template's placeholder \"your.nexus.registry.com\": set the real value",
                "error: JWT_SECRET is empty but required (read by backend); `cargo xtask env init` generates it",
                "error: JWT_ISSUER is still the template's placeholder \"EXAMPLE\": set the real value",
                "error: REDIS_HOST is missing but required (read by backend)",
                "error: no LLM provider key: set at least one of OPENAI_API_KEY, ANTHROPIC_API_KEY, AZURE_API_KEY, MISTRAL_API_KEY",
            ]
        );
    }

    #[test]
    fn a_bad_type_of_a_secret_is_reported_without_its_value() {
        let mut spec = specs();
        spec.push(VarSpec { kind: VarType::Url, ..spec[5].clone() });
        spec.last_mut().unwrap().name = "SENTRY_DSN".into();
        let mut env = good();
        env.set("SENTRY_DSN", "canary-not-a-url-0123456789").unwrap();
        let problems = check(&env, &spec, ".env.example", 0o600, false);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].message.contains("SENTRY_DSN is not an http:// or https:// URL"), "{problems:#?}");
        assert!(!problems[0].message.contains(CANARY));
    }

    #[test]
    fn valid_values_of_each_type() {
        let cases = [
            (VarType::Int, "-5"),
            (VarType::Port, "65535"),
            (VarType::Bool, "Yes"),
            (VarType::Bool, "0"),
            (VarType::LogLevel, "CRITICAL"),
            (VarType::Url, "https://key@sentry.intric.se/1"),
            (VarType::ImageTag, "sha-0123456789ab-dirty-01234567"),
            (VarType::Registry, "localhost:5000"),
            (VarType::Registry, "127.0.0.1:5000/mirror/intric"),
            (VarType::Registry, "nexus.intric.se"),
            (VarType::String, "anything at all"),
        ];
        for (kind, value) in cases {
            assert_eq!(type_problem(kind, value), None, "{kind:?} {value}");
        }
    }
}
