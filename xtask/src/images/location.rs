//! The `--repo` and `--registry` options that `build`, `release` and `ci` share, and their
//! defaults: the workspace root, and `$NEXUS_REGISTRY`. Runs nothing.

use std::path::PathBuf;

use crate::adapters::ci_env::Env;

/// Which repository a task works on and which registry it talks to.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Location {
    /// The git repository to work on [default: the workspace root].
    #[arg(long, value_name = "PATH")]
    pub repo: Option<PathBuf>,
    /// The registry, HOST[:PORT][/PATH] [default: $NEXUS_REGISTRY].
    #[arg(long, value_name = "HOST[:PORT][/PATH]")]
    pub registry: Option<String>,
}

impl Location {
    /// `--repo`, else the workspace root.
    pub fn repo(&self) -> PathBuf {
        self.repo.clone().unwrap_or_else(crate::adapters::workspace_root)
    }

    /// `--registry`, else a non-empty `$NEXUS_REGISTRY`, else none.
    pub fn registry(&self, env: &Env) -> Option<String> {
        registry_setting(self.registry.as_deref(), env)
    }
}

/// The registry a task uses: the flag's value, else a non-empty `$NEXUS_REGISTRY`, else none.
pub fn registry_setting(flag: Option<&str>, env: &Env) -> Option<String> {
    flag.map(str::to_string).or_else(|| env.get("NEXUS_REGISTRY").filter(|value| !value.is_empty()).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_a_non_empty_environment_variable() {
        let env = |value: &str| Env::from([("NEXUS_REGISTRY".to_string(), value.to_string())]);
        assert_eq!(registry_setting(Some("flag:5000"), &env("env:5000")).as_deref(), Some("flag:5000"));
        assert_eq!(registry_setting(None, &env("env:5000")).as_deref(), Some("env:5000"));
        assert_eq!(registry_setting(None, &env("")), None);
        assert_eq!(registry_setting(None, &Env::new()), None);
    }
}
