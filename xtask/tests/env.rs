//! `cargo xtask env init | check` run as an operator runs them: the built binary on a temporary
//! deployment directory holding a copy of the repository's `docker/.env.example`, or a copy of
//! `tests/fixtures/published-env` (laid out as the published deployment: compose file without
//! `name:`, plain `.env.production.example` with the published placeholders).

mod common;

use common::set_env_var;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

fn xtask(args: &[&str], dir: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("the xtask binary runs")
}

/// Standard output and error together, for "never shows X" assertions.
fn shown(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A deployment directory with the repository's template in it.
fn deployment() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/.env.example");
    std::fs::copy(example, dir.path().join(".env.example")).unwrap();
    dir
}

fn env_file(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join(".env")
}

fn value_of(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} in\n{text}"))
        .into()
}

/// Exactly one line on standard error, starting with `error: `.
fn assert_one_error_line(output: &Output) {
    assert!(!output.status.success(), "{}", shown(output));
    let stderr = stderr(output);
    assert!(stderr.starts_with("error: ") && stderr.lines().count() == 1, "{stderr}");
}

/// Runs `env init` in `dir`, checks it wrote a private `.env` with POSTGRES_PASSWORD and
/// JWT_SECRET as 32 random bytes that it did not print, and returns its output and the file.
fn init_generating_secrets(dir: &tempfile::TempDir) -> (Output, String) {
    let init = xtask(&["env", "init"], dir.path());
    assert!(init.status.success(), "{}", shown(&init));
    let path = env_file(dir);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in ["POSTGRES_PASSWORD", "JWT_SECRET"] {
        let value = value_of(&text, secret);
        assert!(value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit()), "{secret} is not 32 random bytes");
        assert!(!shown(&init).contains(&value), "{secret} was printed");
    }
    (init, text)
}

#[test]
fn init_writes_a_private_file_with_generated_secrets_and_is_idempotent() {
    let dir = deployment();
    let (first, text) = init_generating_secrets(&dir);
    let path = env_file(&dir);
    assert_ne!(value_of(&text, "POSTGRES_PASSWORD"), value_of(&text, "JWT_SECRET"));
    let out = stdout(&first);
    assert!(out.contains("generated: POSTGRES_PASSWORD, JWT_SECRET"), "{out}");
    assert!(out.contains("fill in before deploying: NEXUS_REGISTRY; IMAGE_TAG; one of OPENAI_API_KEY"), "{out}");
    assert_eq!(value_of(&text, "NEXUS_PASSWORD"), "", "optional secrets are not generated");
    // Everything but the two secrets is the template, byte for byte.
    let template = std::fs::read_to_string(dir.path().join(".env.example")).unwrap();
    let differing: Vec<(&str, &str)> = template.lines().zip(text.lines()).filter(|(a, b)| a != b).collect();
    assert_eq!(differing.len(), 2, "{differing:?}");
    assert_eq!(template.lines().count(), text.lines().count());

    let second = xtask(&["env", "init"], dir.path());
    assert!(second.status.success(), "{}", shown(&second));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "the second run changed the file");
    assert!(stdout(&second).contains("is up to date"), "{}", stdout(&second));
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 2, "no temporary files left: {entries:?}");
}

#[test]
fn init_keeps_values_already_set_and_never_prints_them() {
    let dir = deployment();
    let path = env_file(&dir);
    let canary = "existing-canary-secret-0123456789abcdef";
    std::fs::write(&path, format!("# my notes\nJWT_SECRET={canary}\nIMAGE_TAG=1.0.0\nMY_OWN=kept\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = xtask(&["env", "init"], dir.path());
    assert!(output.status.success(), "{}", shown(&output));
    assert!(!shown(&output).contains(canary), "{}", shown(&output));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(&format!("# my notes\nJWT_SECRET={canary}\n")), "{text}");
    assert_eq!(value_of(&text, "IMAGE_TAG"), "1.0.0");
    assert_eq!(value_of(&text, "MY_OWN"), "kept");
    assert_eq!(value_of(&text, "POSTGRES_PASSWORD").len(), 64, "the empty secret is generated");
    assert!(stdout(&output).contains("generated: POSTGRES_PASSWORD\n"), "{}", stdout(&output));
    assert!(stdout(&output).contains("fill in before deploying: NEXUS_REGISTRY; one of"), "{}", stdout(&output));

    let again = xtask(&["env", "init"], dir.path());
    assert!(again.status.success());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "idempotent after a merge too");
}

#[test]
fn init_dry_run_writes_nothing_and_shows_no_secret() {
    let dir = deployment();
    let output = xtask(&["env", "init", "--dry-run"], dir.path());
    assert!(output.status.success(), "{}", shown(&output));
    assert!(!env_file(&dir).exists());
    let out = stdout(&output);
    assert!(out.contains("would generate: POSTGRES_PASSWORD, JWT_SECRET"), "{out}");
    assert!(out.contains("write ") && out.contains("(mode 600)"), "{out}");
    let longest_hex_run = out.split(|c: char| !c.is_ascii_hexdigit()).map(str::len).max().unwrap_or(0);
    assert!(longest_hex_run < 32, "something like a secret was printed:\n{out}");
}

#[test]
fn check_lists_every_problem_of_a_fresh_init_then_passes_once_filled_in() {
    let dir = deployment();
    assert!(xtask(&["env", "init"], dir.path()).status.success());
    let path = env_file(&dir);
    let secrets: Vec<String> = {
        let text = std::fs::read_to_string(&path).unwrap();
        ["POSTGRES_PASSWORD", "JWT_SECRET"].iter().map(|key| value_of(&text, key)).collect()
    };

    let failing = xtask(&["env", "check"], dir.path());
    assert_one_error_line(&failing);
    let out = stdout(&failing);
    assert!(out.contains("3 error(s)"), "{out}");
    for expected in ["NEXUS_REGISTRY is empty but required", "IMAGE_TAG is empty but required", "no LLM provider key"] {
        assert!(out.contains(expected), "{expected} missing from\n{out}");
    }
    assert!(stderr(&failing).contains("3 problem(s)"), "{}", stderr(&failing));

    set_env_var(&path, "NEXUS_REGISTRY", "nexus.intric.se:8082");
    set_env_var(&path, "IMAGE_TAG", "1.2.3");
    set_env_var(&path, "ANTHROPIC_API_KEY", "sk-ant-canary-0123456789abcdefghij");
    let passing = xtask(&["env", "check"], dir.path());
    assert!(passing.status.success(), "{}", shown(&passing));
    assert!(stdout(&passing).contains(": ok (0 warning(s))"), "{}", stdout(&passing));
    for secret in secrets.iter().map(String::as_str).chain(["sk-ant-canary"]) {
        assert!(!shown(&failing).contains(secret) && !shown(&passing).contains(secret), "a secret was printed");
    }
}

#[test]
fn an_invalid_secret_is_named_but_its_value_never_shown() {
    let dir = deployment();
    assert!(xtask(&["env", "init"], dir.path()).status.success());
    let path = env_file(&dir);
    set_env_var(&path, "NEXUS_REGISTRY", "https://nexus.intric.se");
    set_env_var(&path, "IMAGE_TAG", "1.2.3+build");
    set_env_var(&path, "FRONTEND_PORT", "80000");
    set_env_var(&path, "JWT_SECRET", "short-canary");
    set_env_var(&path, "POSTGRES_PASSWORD", "changeme-canary");
    set_env_var(&path, "OPENAI_API_KEY", "your_openai_key_canary");
    set_env_var(&path, "UNKNOWN_SETTING", "1");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

    let output = xtask(&["env", "check"], dir.path());
    assert_one_error_line(&output);
    let out = stdout(&output);
    for expected in [
        "NEXUS_REGISTRY is \"https://nexus.intric.se\", not a registry",
        "IMAGE_TAG is \"1.2.3+build\", not an image tag",
        "FRONTEND_PORT is \"80000\", not a port",
        "JWT_SECRET is shorter than 32 characters",
        "POSTGRES_PASSWORD is still the template's placeholder",
        "OPENAI_API_KEY is still the template's placeholder",
        "(mode 644)",
        "warning: UNKNOWN_SETTING is not in .env.example",
    ] {
        assert!(out.contains(expected), "{expected} missing from\n{out}");
    }
    assert!(out.contains("7 error(s), 1 warning(s)"), "{out}");
    assert!(!shown(&output).contains("canary"), "a secret was printed:\n{}", shown(&output));

    // init keeps every one of those values, and prints none of them either.
    let before = std::fs::read_to_string(&path).unwrap();
    let init = xtask(&["env", "init"], dir.path());
    assert!(init.status.success(), "{}", shown(&init));
    assert!(!shown(&init).contains("canary"), "{}", shown(&init));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before, "init changed a value already set");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "init fixes the mode");
}

#[test]
fn a_malformed_file_is_one_error_line_naming_file_and_line_and_nothing_changes() {
    let dir = deployment();
    let path = env_file(&dir);
    let text = "IMAGE_TAG=1.0.0\nJWT_SECRET='canary-unterminated\nnot a variable canary\nIMAGE_TAG=again\n";
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    for command in ["check", "init"] {
        let output = xtask(&["env", command], dir.path());
        assert_one_error_line(&output);
        let error = stderr(&output);
        let file = path.display();
        for expected in [
            format!("{file}:2: JWT_SECRET: unterminated single quote"),
            format!("{file}:3: not a KEY=VALUE line"),
            format!("{file}:4: IMAGE_TAG is defined again (first on line 1)"),
        ] {
            assert!(error.contains(&expected), "{command}: {expected} missing from {error}");
        }
        assert!(!shown(&output).contains("canary"), "{}", shown(&output));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "{command} changed the file");
    }
}

#[test]
fn missing_inputs_are_one_clear_error_and_nothing_is_written() {
    // No template.
    let empty = tempfile::tempdir().unwrap();
    for command in ["init", "check"] {
        let output = xtask(&["env", command], empty.path());
        assert_one_error_line(&output);
        assert!(
            stderr(&output).contains("holds no .env template (.env.example, .env.production.example, .env.template)"),
            "{}",
            stderr(&output)
        );
        assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0, "{command} wrote something");
    }
    // No directory.
    let missing = empty.path().join("nowhere");
    for command in ["init", "check"] {
        let output = xtask(&["env", command], &missing);
        assert_one_error_line(&output);
        assert!(stderr(&output).contains("does not exist"), "{}", stderr(&output));
        assert!(!missing.exists(), "{command} created the directory");
    }
    // A template but no .env yet: check says what to run.
    let dir = deployment();
    let output = xtask(&["env", "check"], dir.path());
    assert_one_error_line(&output);
    assert!(stderr(&output).contains("run `cargo xtask env init"), "{}", stderr(&output));
    // A broken template.
    std::fs::write(dir.path().join(".env.example"), "# required, number: x\nA=1\n").unwrap();
    let output = xtask(&["env", "init"], dir.path());
    assert_one_error_line(&output);
    assert!(
        stderr(&output).contains(".env.example:2: the annotation of A: unknown or missing type"),
        "{}",
        stderr(&output)
    );
    assert!(!env_file(&dir).exists());
}

#[test]
fn help_shows_an_example_per_subcommand() {
    for command in ["init", "check"] {
        let output =
            std::process::Command::new(env!("CARGO_BIN_EXE_xtask")).args(["env", command, "--help"]).output().unwrap();
        let help = stdout(&output);
        assert!(help.contains(&format!("Example: cargo xtask env {command} --dir")), "{help}");
        assert!(help.contains("--dir <DIR>"), "{help}");
    }
}

/// A deployment directory laid out as the published Intric deployment.
fn published_deployment() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/published-env");
    for name in ["docker-compose.yml", ".env.production.example"] {
        std::fs::copy(fixture.join(name), dir.path().join(name)).unwrap();
    }
    dir
}

#[test]
fn the_published_plain_template_is_initialised_and_its_placeholders_reported() {
    let dir = published_deployment();
    let (init, text) = init_generating_secrets(&dir);
    let path = env_file(&dir);
    assert_eq!(value_of(&text, "NEXUS_REGISTRY"), "your.nexus.registry.com", "only secrets are generated");
    assert_eq!(value_of(&text, "OPENAI_API_KEY"), "", "optional secrets are not generated");
    assert!(text.contains("# Database Configuration (REQUIRED)\nPOSTGRES_USER=postgres\n"), "{text}");
    let out = stdout(&init);
    assert!(out.contains("(mode 600) from .env.production.example"), "{out}");
    assert!(out.contains("generated: POSTGRES_PASSWORD, JWT_SECRET\n"), "{out}");
    assert!(
        out.contains(
            "fill in before deploying: NEXUS_REGISTRY; SERVICE_FQDN_FRONTEND; JWT_ISSUER; API_KEY_HEADER_NAME; one of"
        ),
        "{out}"
    );

    let check = xtask(&["env", "check"], dir.path());
    assert_one_error_line(&check);
    let out = stdout(&check);
    let problems: Vec<&str> = out.lines().filter(|line| line.starts_with("  ")).map(str::trim).collect();
    assert_eq!(
        problems,
        [
            "error: NEXUS_REGISTRY is still the template's placeholder \"your.nexus.registry.com\": set the real value",
            "error: SERVICE_FQDN_FRONTEND is still the template's placeholder \"example.com\": set the real value",
            "error: JWT_ISSUER is still the template's placeholder \"EXAMPLE\": set the real value",
            "error: API_KEY_HEADER_NAME is still the template's placeholder \"example\": set the real value",
            "error: no LLM provider key: set at least one of OPENAI_API_KEY, ANTHROPIC_API_KEY, AZURE_API_KEY, MISTRAL_API_KEY",
        ],
        "{out}"
    );
    assert!(out.starts_with("checked against .env.production.example and docker-compose.yml\n"), "{out}");

    // Emptied, the compose file's plain ${NEXUS_REGISTRY} and ${JWT_SECRET} make them required.
    set_env_var(&path, "NEXUS_REGISTRY", "");
    set_env_var(&path, "JWT_SECRET", "");
    let out = stdout(&xtask(&["env", "check"], dir.path()));
    assert!(out.contains("error: NEXUS_REGISTRY is empty but required (read by frontend, backend)\n"), "{out}");
    assert!(out.contains("error: JWT_SECRET is empty but required (read by backend); `cargo xtask env init`"), "{out}");

    set_env_var(&path, "NEXUS_REGISTRY", "nexus.intric.se:8082");
    set_env_var(&path, "JWT_SECRET", "0123456789abcdef0123456789abcdef");
    set_env_var(&path, "SERVICE_FQDN_FRONTEND", "intric.kommun.se");
    set_env_var(&path, "JWT_ISSUER", "INTRIC");
    set_env_var(&path, "API_KEY_HEADER_NAME", "X-API-Key");
    set_env_var(&path, "OPENAI_API_KEY", "sk-proj-canary-0123456789abcdef");
    let passing = xtask(&["env", "check"], dir.path());
    assert!(passing.status.success(), "{}", shown(&passing));
    assert!(!shown(&passing).contains("canary") && !shown(&check).contains(&value_of(&text, "JWT_SECRET")));
}
