//! CI environment detection: which CI system runs us and for what event.
//!
//! CI checkouts are often shallow, without tags and on a detached HEAD, so the branch, tag or
//! pull request being built has to come from the provider's variables rather than from git.
//! [`CiContext::detect`] is a pure function over an [`Env`] map, so tests pass recorded
//! environments instead of mutating the process's own.
//!
//! Variables read:
//! - GitHub Actions: `GITHUB_ACTIONS=true`; `GITHUB_REF` (`refs/pull/N/merge`, `refs/heads/B`,
//!   `refs/tags/T`), `GITHUB_REF_NAME` when `GITHUB_REF` is missing, `GITHUB_HEAD_REF` (a pull
//!   request's source branch). GitHub does not expose the default branch in the environment.
//! - GitLab CI: `GITLAB_CI`; `CI_MERGE_REQUEST_IID`, `CI_MERGE_REQUEST_SOURCE_BRANCH_NAME`,
//!   `CI_COMMIT_TAG`, `CI_COMMIT_BRANCH`, `CI_DEFAULT_BRANCH`.
//! - Jenkins (multibranch pipelines): `JENKINS_URL`; `CHANGE_ID`, `CHANGE_BRANCH`, `TAG_NAME`,
//!   `BRANCH_NAME`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

/// Environment variables by name.
pub type Env = BTreeMap<String, String>;

/// The current process's environment. Variables whose name or value is not UTF-8 are left out:
/// none of the variables the xtask reads can legitimately be such.
pub fn process_env() -> Env {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect()
}

/// The CI systems we recognise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CiProvider {
    GitHubActions,
    GitLabCi,
    Jenkins,
}

impl CiProvider {
    pub fn name(self) -> &'static str {
        match self {
            CiProvider::GitHubActions => "GitHub Actions",
            CiProvider::GitLabCi => "GitLab CI",
            CiProvider::Jenkins => "Jenkins",
        }
    }
}

/// What triggered the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CiEvent {
    /// A GitHub pull request or GitLab merge request, with its source branch when known.
    PullRequest { number: u64, source_branch: Option<String> },
    /// A push to a branch.
    Branch { name: String },
    /// A push of a tag.
    Tag { name: String },
}

/// What the CI environment says about the build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CiContext {
    pub provider: CiProvider,
    /// `None` when the provider's variables name no pull request, branch or tag (a manual or
    /// scheduled job with unusual settings): callers then fall back to git.
    pub event: Option<CiEvent>,
    /// The repository's default branch, when the provider publishes it (GitLab does).
    pub default_branch: Option<String>,
}

impl CiContext {
    /// Detects the CI provider and event from `env`; `Ok(None)` outside CI. A malformed pull
    /// request number is an error naming the variable rather than a silent branch build.
    pub fn detect(env: &Env) -> Result<Option<CiContext>> {
        let var = |name: &str| env.get(name).map(String::as_str).filter(|value| !value.is_empty());
        let owned = |name: &str| var(name).map(str::to_string);
        let context = if var("GITHUB_ACTIONS") == Some("true") {
            let event = match var("GITHUB_REF") {
                Some(reference) => github_event(reference, owned("GITHUB_HEAD_REF"))?,
                None => owned("GITHUB_REF_NAME").map(|name| CiEvent::Branch { name }),
            };
            CiContext { provider: CiProvider::GitHubActions, event, default_branch: None }
        } else if var("GITLAB_CI").is_some() {
            let event = if let Some(iid) = var("CI_MERGE_REQUEST_IID") {
                let number = pr_number("CI_MERGE_REQUEST_IID", iid, iid)?;
                Some(CiEvent::PullRequest { number, source_branch: owned("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME") })
            } else if let Some(name) = owned("CI_COMMIT_TAG") {
                Some(CiEvent::Tag { name })
            } else {
                owned("CI_COMMIT_BRANCH").map(|name| CiEvent::Branch { name })
            };
            CiContext { provider: CiProvider::GitLabCi, event, default_branch: owned("CI_DEFAULT_BRANCH") }
        } else if var("JENKINS_URL").is_some() {
            // Jenkins sets BRANCH_NAME on every multibranch build (`PR-12` for a change, the tag
            // name for a tag), so the more specific variables are checked first.
            let event = if let Some(id) = var("CHANGE_ID") {
                Some(CiEvent::PullRequest {
                    number: pr_number("CHANGE_ID", id, id)?,
                    source_branch: owned("CHANGE_BRANCH"),
                })
            } else if let Some(name) = owned("TAG_NAME") {
                Some(CiEvent::Tag { name })
            } else {
                owned("BRANCH_NAME").map(|name| CiEvent::Branch { name })
            };
            CiContext { provider: CiProvider::Jenkins, event, default_branch: None }
        } else {
            return Ok(None);
        };
        Ok(Some(context))
    }
}

/// The event a `GITHUB_REF` names. Other refs (rare: e.g. `refs/remotes/...`) name no event.
fn github_event(reference: &str, head_ref: Option<String>) -> Result<Option<CiEvent>> {
    if let Some(rest) = reference.strip_prefix("refs/pull/") {
        let number = rest.split('/').next().unwrap_or_default();
        return Ok(Some(CiEvent::PullRequest {
            number: pr_number("GITHUB_REF", reference, number)?,
            source_branch: head_ref,
        }));
    }
    Ok(reference
        .strip_prefix("refs/heads/")
        .map(|name| CiEvent::Branch { name: name.to_string() })
        .or_else(|| reference.strip_prefix("refs/tags/").map(|name| CiEvent::Tag { name: name.to_string() })))
}

/// Parses the `digits` of a pull request number found in `variable`, whose whole value is `value`.
fn pr_number(variable: &str, value: &str, digits: &str) -> Result<u64> {
    digits.parse().with_context(|| format!("{variable}={value} does not hold a pull request number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    fn pr(number: u64, source: Option<&str>) -> Option<CiEvent> {
        Some(CiEvent::PullRequest { number, source_branch: source.map(str::to_string) })
    }

    fn branch(name: &str) -> Option<CiEvent> {
        Some(CiEvent::Branch { name: name.to_string() })
    }

    fn tag(name: &str) -> Option<CiEvent> {
        Some(CiEvent::Tag { name: name.to_string() })
    }

    /// A recorded environment: name, variables, and the expected provider, event and default branch.
    type Recorded<'a> = (&'a str, recorded::Vars, CiProvider, Option<CiEvent>, Option<&'a str>);

    #[test]
    fn recorded_environments() {
        use CiProvider::*;
        let cases: &[Recorded] = &[
            ("github pull request", recorded::GITHUB_PULL_REQUEST, GitHubActions, pr(42, Some("feature/x")), None),
            ("github push to main", recorded::GITHUB_PUSH_TO_MAIN, GitHubActions, branch("main"), None),
            ("github tag", recorded::GITHUB_TAG, GitHubActions, tag("v1.0.0"), None),
            ("github push to a branch", recorded::GITHUB_PUSH_TO_BRANCH, GitHubActions, branch("topic"), None),
            (
                "github ref name only",
                &[("GITHUB_ACTIONS", "true"), ("GITHUB_REF_NAME", "dev")],
                GitHubActions,
                branch("dev"),
                None,
            ),
            ("gitlab merge request", recorded::GITLAB_MERGE_REQUEST, GitLabCi, pr(7, Some("fix")), Some("trunk")),
            ("gitlab main", recorded::GITLAB_MAIN, GitLabCi, branch("main"), Some("main")),
            ("gitlab tag", recorded::GITLAB_TAG, GitLabCi, tag("v1.0.0"), Some("main")),
            ("jenkins change", recorded::JENKINS_CHANGE, Jenkins, pr(12, Some("feat")), None),
            ("jenkins main", recorded::JENKINS_MAIN, Jenkins, branch("main"), None),
            ("jenkins tag", recorded::JENKINS_TAG, Jenkins, tag("v1.0.0"), None),
            ("jenkins without event", &[("JENKINS_URL", "http://j/")], Jenkins, None, None),
        ];
        for (name, vars, provider, event, default_branch) in cases {
            let context = CiContext::detect(&env(vars)).unwrap().unwrap_or_else(|| panic!("{name}: no CI detected"));
            assert_eq!(context.provider, *provider, "{name}");
            assert_eq!(&context.event, event, "{name}");
            assert_eq!(context.default_branch.as_deref(), *default_branch, "{name}");
        }
    }

    #[test]
    fn no_ci_without_provider_variables() {
        let plain = env(&[
            ("GITHUB_ACTIONS", "false"),
            ("BRANCH_NAME", "main"),
            ("CI_COMMIT_TAG", "v1.0.0"),
            ("GITLAB_CI", ""),
        ]);
        assert_eq!(CiContext::detect(&plain).unwrap(), None);
    }

    #[test]
    fn malformed_pull_request_numbers_name_the_variable() {
        for (vars, variable) in [
            (env(&[("GITHUB_ACTIONS", "true"), ("GITHUB_REF", "refs/pull/abc/merge")]), "GITHUB_REF"),
            (env(&[("GITLAB_CI", "true"), ("CI_MERGE_REQUEST_IID", "x1")]), "CI_MERGE_REQUEST_IID"),
            (env(&[("JENKINS_URL", "http://j/"), ("CHANGE_ID", "I0abc")]), "CHANGE_ID"),
        ] {
            let error = format!("{:#}", CiContext::detect(&vars).unwrap_err());
            assert!(error.contains(variable), "{error}");
        }
    }
}

/// Environments as real pipelines set them, for the tests of this module and of `ci`.
#[cfg(test)]
pub mod recorded {
    pub type Vars = &'static [(&'static str, &'static str)];

    pub const GITHUB_PULL_REQUEST: Vars = &[
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_EVENT_NAME", "pull_request"),
        ("GITHUB_REF", "refs/pull/42/merge"),
        ("GITHUB_REF_NAME", "42/merge"),
        ("GITHUB_HEAD_REF", "feature/x"),
        ("GITHUB_BASE_REF", "main"),
    ];
    pub const GITHUB_PUSH_TO_MAIN: Vars = &[
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_EVENT_NAME", "push"),
        ("GITHUB_REF", "refs/heads/main"),
        ("GITHUB_REF_NAME", "main"),
        ("GITHUB_HEAD_REF", ""),
    ];
    pub const GITHUB_TAG: Vars = &[
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_EVENT_NAME", "push"),
        ("GITHUB_REF", "refs/tags/v1.0.0"),
        ("GITHUB_REF_NAME", "v1.0.0"),
    ];
    pub const GITHUB_PUSH_TO_BRANCH: Vars = &[("GITHUB_ACTIONS", "true"), ("GITHUB_REF", "refs/heads/topic")];
    pub const GITLAB_MERGE_REQUEST: Vars = &[
        ("GITLAB_CI", "true"),
        ("CI_PIPELINE_SOURCE", "merge_request_event"),
        ("CI_MERGE_REQUEST_IID", "7"),
        ("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "fix"),
        ("CI_DEFAULT_BRANCH", "trunk"),
    ];
    pub const GITLAB_MAIN: Vars = &[
        ("GITLAB_CI", "true"),
        ("CI_PIPELINE_SOURCE", "push"),
        ("CI_COMMIT_BRANCH", "main"),
        ("CI_COMMIT_REF_NAME", "main"),
        ("CI_DEFAULT_BRANCH", "main"),
    ];
    pub const GITLAB_TAG: Vars = &[
        ("GITLAB_CI", "true"),
        ("CI_PIPELINE_SOURCE", "push"),
        ("CI_COMMIT_TAG", "v1.0.0"),
        ("CI_COMMIT_REF_NAME", "v1.0.0"),
        ("CI_DEFAULT_BRANCH", "main"),
    ];
    pub const JENKINS_CHANGE: Vars = &[
        ("JENKINS_URL", "http://jenkins:8080/"),
        ("BRANCH_NAME", "PR-12"),
        ("CHANGE_ID", "12"),
        ("CHANGE_BRANCH", "feat"),
        ("CHANGE_TARGET", "main"),
    ];
    pub const JENKINS_MAIN: Vars = &[("JENKINS_URL", "http://jenkins:8080/"), ("BRANCH_NAME", "main")];
    pub const JENKINS_TAG: Vars =
        &[("JENKINS_URL", "http://jenkins:8080/"), ("BRANCH_NAME", "v1.0.0"), ("TAG_NAME", "v1.0.0")];
}
