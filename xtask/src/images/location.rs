//! The `--repo` and `--registry` options that `build`, `release` and `ci` share, and their
//! defaults: the workspace root, and `$NEXUS_REGISTRY`, read by the one registry parser
//! ([`RegistryAddress::parse`]). Runs nothing.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::adapters::ci_env::Env;
use crate::adapters::registry::RegistryAddress;

// Which repository a task works on and which registry it talks to.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Location {
    /// The git repository to work on [default: the workspace root].
    #[arg(long, value_name = "PATH")]
    pub repo: Option<PathBuf>,
    /// The registry: HOST, HOST:PORT or HOST:PORT/PATH [default: $NEXUS_REGISTRY].
    #[arg(long, value_name = "HOST[:PORT][/PATH]")]
    pub registry: Option<String>,
}

impl Location {
    /// `--repo`, else the workspace root.
    pub fn repo(&self) -> PathBuf {
        self.repo.clone().unwrap_or_else(crate::adapters::workspace_root)
    }

    /// `--registry`, else a non-empty `$NEXUS_REGISTRY`, else none; parsed.
    pub fn registry(&self, env: &Env) -> Result<Option<RegistryAddress>> {
        registry_setting(self.registry.as_deref(), env)
    }
}

/// The registry a task uses: the flag's value, else a non-empty `$NEXUS_REGISTRY`, else none.
/// A bad value is an error naming where it came from.
pub fn registry_setting(flag: Option<&str>, env: &Env) -> Result<Option<RegistryAddress>> {
    setting(flag, "--registry", env, "NEXUS_REGISTRY")
}

/// A registry setting: the value of the option `option` if given, else a non-empty
/// `$variable`, else none. A bad value is an error naming where it came from.
pub fn setting(flag: Option<&str>, option: &str, env: &Env, variable: &str) -> Result<Option<RegistryAddress>> {
    match flag {
        Some(flag) => RegistryAddress::parse(flag).map(Some).with_context(|| option.to_string()),
        None => match env.get(variable).filter(|value| !value.is_empty()) {
            Some(value) => RegistryAddress::parse(value).map(Some).with_context(|| variable.to_string()),
            None => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_a_non_empty_environment_variable() {
        let env = |value: &str| Env::from([("NEXUS_REGISTRY".to_string(), value.to_string())]);
        let shown = |flag: Option<&str>, env: &Env| registry_setting(flag, env).unwrap().map(|a| a.to_string());
        assert_eq!(shown(Some("flag:5000"), &env("env:5000")).as_deref(), Some("flag:5000"));
        assert_eq!(shown(None, &env("env:5000")).as_deref(), Some("env:5000"));
        assert_eq!(shown(None, &env("http://nexus.lan:8082/dev")).as_deref(), Some("nexus.lan:8082/dev"));
        assert_eq!(shown(None, &env("")), None);
        assert_eq!(shown(None, &Env::new()), None);
    }

    #[test]
    fn a_bad_setting_names_where_it_came_from() {
        let error = format!("{:#}", registry_setting(Some("host:1:2"), &Env::new()).unwrap_err());
        assert!(error.starts_with("--registry: invalid registry `host:1:2`"), "{error}");
        let env = Env::from([("NEXUS_REGISTRY".to_string(), "nexus example".to_string())]);
        let error = format!("{:#}", registry_setting(None, &env).unwrap_err());
        assert!(error.starts_with("NEXUS_REGISTRY: invalid registry `nexus example`"), "{error}");
    }
}
