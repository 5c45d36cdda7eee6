//! The CI templates in `ci/`: the YAML ones parse, each calls `cargo xtask ci` for the pr, main
//! and release stages with concurrency control, cached cargo output and registry credentials
//! from secrets, and every `cargo xtask …` they contain (comments included) is a real command:
//! the built CLI accepts its subcommands and values, and its `--help` lists every flag used.

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");
const TEMPLATES: [&str; 3] = ["ci/github-actions.yml", "ci/gitlab-ci.yml", "ci/Jenkinsfile"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative)).unwrap_or_else(|error| panic!("{relative}: {error}"))
}

fn yaml(relative: &str) -> Yaml {
    let mut documents =
        YamlLoader::load_from_str(&read(relative)).unwrap_or_else(|error| panic!("{relative}: {error}"));
    assert_eq!(documents.len(), 1, "{relative} holds one YAML document");
    documents.remove(0)
}

/// The arguments after each `cargo xtask` in `text`, up to the end of the shell word list
/// (a quote, backtick, `;`, `&`, `|` or the end of the line).
fn xtask_invocations(text: &str) -> Vec<Vec<String>> {
    let mut invocations = Vec::new();
    for line in text.lines() {
        let mut rest = line;
        while let Some(start) = rest.find("cargo xtask") {
            let after = &rest[start + "cargo xtask".len()..];
            let end = after.find(['`', '\'', '"', ';', '&', '|', ')']).unwrap_or(after.len());
            invocations.push(after[..end].split_whitespace().map(str::to_string).collect());
            rest = &after[end..];
        }
    }
    invocations
}

#[test]
fn every_cargo_xtask_line_is_a_real_command() {
    let mut checked = 0;
    for template in TEMPLATES {
        for args in xtask_invocations(&read(template)) {
            assert!(!args.is_empty(), "{template}: a bare `cargo xtask`");
            let output = Command::new(XTASK).args(&args).arg("--help").output().unwrap();
            let help = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{template}: `cargo xtask {}` is not a command: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
            for flag in args.iter().filter(|arg| arg.starts_with("--")) {
                let name = flag.split('=').next().unwrap();
                assert!(help.contains(name), "{template}: `cargo xtask {}`: {name} is not an option", args.join(" "));
            }
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} invocations found");
}

#[test]
fn the_invocation_parser_stops_at_shell_syntax() {
    assert_eq!(
        xtask_invocations("  - run: cargo xtask ci --stage pr && echo ok\nsh 'cargo xtask ci --stage main'"),
        vec![vec!["ci", "--stage", "pr"], vec!["ci", "--stage", "main"]]
    );
}

#[test]
fn every_template_runs_each_stage_with_secrets_cache_and_concurrency_control() {
    for template in TEMPLATES {
        let text = read(template);
        for stage in ["pr", "main", "release"] {
            assert!(text.contains(&format!("cargo xtask ci --stage {stage}")), "{template} lacks the {stage} stage");
        }
        for line in text.lines() {
            assert!(!(line.contains("echo") && line.contains("PASSWORD")), "{template} echoes a password: {line}");
            assert!(!line.contains("--password "), "{template} puts a password in argv: {line}");
        }
        assert!(text.contains("NEXUS_USERNAME") && text.contains("NEXUS_PASSWORD"), "{template}: no registry login");
    }
    let jenkins = read("ci/Jenkinsfile");
    assert!(jenkins.contains("disableConcurrentBuilds()"));
    // Jenkins has no cache step: the target directory stays in the agent's workspace, where
    // cargo rebuilds only the crates that a changed Cargo.lock changes.
    assert!(jenkins.contains(r#"CARGO_TARGET_DIR = "${env.WORKSPACE}/target""#), "Jenkins keeps the target directory");
    assert!(jenkins.contains("usernamePassword(credentialsId:"));
    assert_eq!(jenkins.matches('{').count(), jenkins.matches('}').count(), "Jenkinsfile braces balance");
}

#[test]
fn github_workflow_is_valid_yaml_with_one_job_per_stage() {
    let workflow = yaml("ci/github-actions.yml");
    assert!(!workflow["on"].is_badvalue(), "the workflow has triggers");
    for stage in ["pr", "main", "release"] {
        let job = &workflow["jobs"][stage];
        assert!(job["runs-on"].as_str().is_some(), "job {stage} has runs-on");
        assert!(job["concurrency"]["group"].as_str().is_some(), "job {stage} has a concurrency group");
        let steps = job["steps"].as_vec().unwrap_or_else(|| panic!("job {stage} has steps"));
        let runs: Vec<&str> = steps.iter().filter_map(|step| step["run"].as_str()).collect();
        assert!(runs.contains(&format!("cargo xtask ci --stage {stage}").as_str()), "{stage}: {runs:?}");
        let cached = steps.iter().any(|step| {
            step["uses"].as_str().is_some_and(|uses| uses.starts_with("actions/cache@"))
                && step["with"]["path"].as_str().is_some_and(|path| path.lines().any(|line| line.trim() == "target"))
                // A new compiler, Cargo.lock or profiles get a new cache (restored from the
                // newest older one); with an unchanged key actions/cache would never save the
                // rebuild.
                && step["with"]["key"].as_str().is_some_and(|key| {
                    key.contains("${{ steps.rustc.outputs.digest }}") && key.contains("hashFiles('Cargo.lock', 'Cargo.toml')")
                })
        });
        assert!(cached, "job {stage} caches the cargo target directory, keyed on rustc, Cargo.lock and the profiles");
        let rustc = steps.iter().position(|step| step["id"].as_str() == Some("rustc"));
        let cache =
            steps.iter().position(|step| step["uses"].as_str().is_some_and(|uses| uses.starts_with("actions/cache@")));
        assert!(rustc.is_some() && rustc < cache, "job {stage} reads the compiler's version before the cache step");
        let version = steps[rustc.unwrap()]["run"].as_str().unwrap_or_default();
        assert!(version.contains("rustc --version") && version.contains("$GITHUB_OUTPUT"), "{stage}: {version}");
        let checkout =
            steps.iter().find(|step| step["uses"].as_str().is_some_and(|uses| uses.starts_with("actions/checkout@")));
        assert_eq!(checkout.unwrap()["with"]["fetch-depth"].as_i64(), Some(0), "{stage} fetches every tag");
    }
    assert_eq!(workflow["jobs"]["main"]["concurrency"]["cancel-in-progress"].as_bool(), Some(false));
    for stage in ["main", "release"] {
        let step =
            workflow["jobs"][stage]["steps"].as_vec().unwrap().iter().find(|step| step["id"].as_str() == Some("xtask"));
        let env = &step.unwrap()["env"];
        assert_eq!(env["NEXUS_PASSWORD"].as_str(), Some("${{ secrets.NEXUS_PASSWORD }}"), "{stage}");
    }
}

#[test]
fn gitlab_pipeline_is_valid_yaml_with_one_job_per_stage() {
    let pipeline = yaml("ci/gitlab-ci.yml");
    let base = &pipeline[".xtask"];
    let paths = base["cache"]["paths"].as_vec().unwrap();
    assert!(paths.iter().any(|path| path.as_str() == Some("target/")), "the target directory is cached");
    let key_files = base["cache"]["key"]["files"].as_vec().expect("the cache key is computed from files");
    assert_eq!(key_files.iter().filter_map(Yaml::as_str).collect::<Vec<_>>(), ["Cargo.lock"], "keyed on Cargo.lock");
    assert_eq!(base["artifacts"]["reports"]["dotenv"].as_str(), Some("xtask-ci.env"));
    for stage in ["pr", "main", "release"] {
        let job = &pipeline[stage];
        assert_eq!(job["extends"].as_str(), Some(".xtask"), "{stage}");
        assert!(job["rules"].as_vec().is_some_and(|rules| !rules.is_empty()), "{stage} has rules");
        let script: Vec<&str> = job["script"].as_vec().unwrap().iter().filter_map(Yaml::as_str).collect();
        assert_eq!(script, [format!("cargo xtask ci --stage {stage}").as_str()]);
    }
    assert_eq!(pipeline["main"]["resource_group"].as_str(), Some("xtask-registry"), "main pipelines don't race");
    assert_eq!(pipeline["release"]["resource_group"], pipeline["main"]["resource_group"]);
}
