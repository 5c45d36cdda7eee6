//! Who logs in to the registry, and how: credentials from `NEXUS_USERNAME`/`NEXUS_PASSWORD`,
//! else the docker client's configuration (`auths`, or a credential helper, which it runs as
//! `docker-credential-<helper> get` through the [`Runner`] with the server name on standard
//! input); the registry's `WWW-Authenticate` challenge (Basic, or Bearer with a token fetched
//! from the realm it names, cached per scope); and the errors for a refused login, which name the
//! user and never the password.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use serde_json::Value;

use super::Registry;
use super::address::{RegistryAddress, Scheme};
use super::wire::{Call, Failure, Reply, percent_encode};
use crate::adapters::ci_env::Env;
use crate::plan::runner::Runner;
use crate::plan::{Command, Secret};

/// Standard base64 that accepts `auths.<host>.auth` padded or not, as docker clients write it.
const DOCKER_CONFIG_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A user name and password for the registry. The password prints as its name only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Credentials {
    /// `NEXUS_USERNAME` and `NEXUS_PASSWORD` from `env`, or `None` when neither is set (an empty
    /// value counts as unset). Only one of the two set is an error, not a silent anonymous login.
    pub fn from_env(env: &Env) -> Result<Option<Credentials>> {
        Credentials::from_variables(env, "NEXUS_USERNAME", "NEXUS_PASSWORD")
    }

    /// The user name and password in the variables `user` and `password` of `env`, as
    /// [`Credentials::from_env`] reads its two.
    fn from_variables(env: &Env, user: &str, password: &str) -> Result<Option<Credentials>> {
        let value = |name: &str| env.get(name).filter(|value| !value.is_empty());
        match (value(user), value(password)) {
            (Some(username), Some(secret)) => {
                Ok(Some(Credentials { username: username.clone(), password: Secret::new(password, secret) }))
            }
            (Some(_), None) => bail!("{user} is set but {password} is not: set both, or neither"),
            (None, Some(_)) => bail!("{password} is set but {user} is not: set both, or neither"),
            (None, None) => Ok(None),
        }
    }

    /// Whether `self` is the login the docker client already holds for `address`: then
    /// `docker login` would change nothing.
    pub fn is_docker_login(&self, address: &RegistryAddress, runner: &dyn Runner) -> bool {
        matches!(
            Credentials::from_docker_config(address, runner),
            Ok(Some(stored)) if stored.username == self.username && stored.password.expose() == self.password.expose()
        )
    }

    /// Finds the credentials for `address`: `NEXUS_USERNAME` and `NEXUS_PASSWORD` from the
    /// environment, else the docker client's login for the host (`$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json`, through its credential helper if one is configured), else
    /// none (anonymous access). A credential helper runs through `runner`.
    pub fn find(address: &RegistryAddress, runner: &dyn Runner) -> Result<Option<Credentials>> {
        match Credentials::from_env(&crate::adapters::ci_env::process_env())? {
            Some(credentials) => Ok(Some(credentials)),
            None => Credentials::from_docker_config(address, runner),
        }
    }

    /// The credentials for the release registry of a two-repository promotion at `address`:
    /// `NEXUS_RELEASE_USERNAME` and `NEXUS_RELEASE_PASSWORD` when set (a release repository
    /// on another host usually has a login of its own), else as [`Credentials::find`] finds them.
    pub fn find_release(address: &RegistryAddress, runner: &dyn Runner) -> Result<Option<Credentials>> {
        let env = crate::adapters::ci_env::process_env();
        match Credentials::from_variables(&env, "NEXUS_RELEASE_USERNAME", "NEXUS_RELEASE_PASSWORD")? {
            Some(credentials) => Ok(Some(credentials)),
            None => Credentials::find(address, runner),
        }
    }

    /// The docker client's login for the host of `address`, if it has one.
    pub fn from_docker_config(address: &RegistryAddress, runner: &dyn Runner) -> Result<Option<Credentials>> {
        let path = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => PathBuf::from(dir).join("config.json"),
            None => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".docker/config.json"),
                None => return Ok(None),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
        };
        match docker_config_entry(&text, &address.host).with_context(|| format!("cannot read {}", path.display()))? {
            DockerLogin::Stored(credentials) => Ok(Some(credentials)),
            DockerLogin::Helper(helper) => credential_helper_get(runner, &helper, &address.host)
                .with_context(|| format!("cannot get the login for {} from {}", address.host, path.display())),
            DockerLogin::None => Ok(None),
        }
    }
}

/// What the docker client's configuration says about one registry host.
#[derive(Debug, PartialEq, Eq)]
enum DockerLogin {
    /// `auths.<host>.auth`: base64 of `user:password`.
    Stored(Credentials),
    /// A credential helper (`credHelpers.<host>`, else `credsStore`) holds the login.
    Helper(String),
    None,
}

/// Reads the login for `host` from the text of a docker `config.json`. Keys of `auths` are
/// compared the way docker compares them: without scheme and path (`https://host/v1/` is `host`).
fn docker_config_entry(text: &str, host: &str) -> Result<DockerLogin> {
    let config: Value = serde_json::from_str(text).context("not valid JSON")?;
    let same_host = |key: &str| {
        let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
        key.split('/').next().is_some_and(|key_host| key_host.eq_ignore_ascii_case(host))
    };
    if let Some(helper) = config["credHelpers"]
        .as_object()
        .and_then(|helpers| helpers.iter().find(|(key, _)| same_host(key)))
        .and_then(|(_, helper)| helper.as_str())
    {
        return Ok(DockerLogin::Helper(helper.to_string()));
    }
    let stored = config["auths"]
        .as_object()
        .and_then(|auths| auths.iter().find(|(key, _)| same_host(key)))
        .and_then(|(_, entry)| entry["auth"].as_str())
        .filter(|auth| !auth.is_empty());
    if let Some(auth) = stored {
        let decoded = DOCKER_CONFIG_BASE64
            .decode(auth)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .with_context(|| format!("auths.{host}.auth is not base64 of user:password"))?;
        let (username, password) =
            decoded.split_once(':').with_context(|| format!("auths.{host}.auth is not base64 of user:password"))?;
        return Ok(DockerLogin::Stored(Credentials {
            username: username.to_string(),
            password: Secret::new(format!("password for {host} from the docker config"), password),
        }));
    }
    match config["credsStore"].as_str().filter(|store| !store.is_empty()) {
        Some(store) => Ok(DockerLogin::Helper(store.to_string())),
        None => Ok(DockerLogin::None),
    }
}

/// Runs `docker-credential-<helper> get` with the server name on standard input (never in argv)
/// and reads `{"Username": ..., "Secret": ...}` from its output. "Not found" means no login.
fn credential_helper_get(runner: &dyn Runner, helper: &str, server: &str) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{helper}");
    let get = Command::new(&program)
        .arg("get")
        .stdin(Secret::new("the registry host", server))
        .hint(format!("{program} get failed (the docker config names it as credential helper)"));
    let finished = runner
        .output(&get)
        .with_context(|| format!("cannot run {program} (the docker config names it as credential helper)"))?;
    let stdout = finished.stdout;
    if !finished.status.success() {
        // The helper protocol reports a missing login as this message on standard output.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        // Standard output could hold part of a secret, so only standard error is shown.
        bail!("{program} get failed ({}): {}", finished.status, finished.stderr.lines().next().unwrap_or("").trim());
    }
    let answer: Value = serde_json::from_str(&stdout).with_context(|| format!("{program} get did not print JSON"))?;
    let (Some(username), Some(secret)) = (answer["Username"].as_str(), answer["Secret"].as_str()) else {
        bail!("{program} get printed no Username and Secret");
    };
    if username == "<token>" {
        bail!(
            "{program} holds an identity token for {server}, which this tool cannot use: set NEXUS_USERNAME/NEXUS_PASSWORD"
        );
    }
    Ok(Some(Credentials {
        username: username.to_string(),
        password: Secret::new(format!("password for {server} from {program}"), secret),
    }))
}

#[derive(Default)]
pub(super) struct AuthState {
    challenge: Option<Challenge>,
    /// Bearer tokens by scope (the empty string for calls without a repository).
    tokens: HashMap<String, String>,
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

impl Registry {
    /// One attempt: sends with the authentication learned so far; on 401, follows the challenge
    /// (Basic, or a Bearer token from the realm) and sends once more.
    pub(super) fn send_authenticated(&self, call: &Call) -> std::result::Result<Reply, Failure> {
        let first = self.authorization(call.scope.as_deref(), false)?;
        let reply = self.send(call, first.as_deref())?;
        if reply.status == 403 {
            return Err(Failure::Fatal(self.login_failed(403, "")));
        }
        if reply.status != 401 {
            return Ok(reply);
        }
        let challenge = reply
            .headers
            .get_all("www-authenticate")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(parse_challenge)
            .ok_or_else(|| {
                Failure::Fatal(self.login_failed(401, "; the registry sent no usable WWW-Authenticate challenge"))
            })?;
        // Which scheme the registry asked for is part of the message: Nexus switches between them
        // with its "Docker Bearer Token Realm" and `forceBasicAuth` settings.
        let how = match &challenge {
            Challenge::Basic => "; the registry asks for Basic auth".to_string(),
            Challenge::Bearer { realm, .. } => format!("; the registry asks for a Bearer token from {realm}"),
        };
        let challenge_is_basic = challenge == Challenge::Basic;
        let known = {
            let mut state = self.auth.lock().expect("auth state lock");
            let known = state.challenge.as_ref() == Some(&challenge);
            state.challenge = Some(challenge);
            known
        };
        if challenge_is_basic && known && first.is_some() {
            // The credentials were already sent as the registry asks; sending them again cannot help.
            return Err(Failure::Fatal(self.login_failed(401, &how)));
        }
        // Only a Basic challenge without credentials leaves nothing to send.
        let Some(second) = self.authorization(call.scope.as_deref(), true)? else {
            return Err(Failure::Fatal(self.login_failed(401, &how)));
        };
        let reply = self.send(call, Some(&second))?;
        match reply.status {
            401 | 403 => Err(Failure::Fatal(self.login_failed(reply.status, &how))),
            _ => Ok(reply),
        }
    }

    /// The `Authorization` header for a call with `scope`, by the challenge learned so far;
    /// `fresh` fetches a new Bearer token instead of using the cached one (which was refused).
    pub(super) fn authorization(
        &self,
        scope: Option<&str>,
        fresh: bool,
    ) -> std::result::Result<Option<String>, Failure> {
        let (challenge, cached) = {
            let state = self.auth.lock().expect("auth state lock");
            let challenge = state.challenge.clone();
            let scope_key = scope_key(scope, challenge.as_ref());
            (challenge, state.tokens.get(&scope_key).cloned())
        };
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.credentials.as_ref().map(basic_authorization)),
            Some(Challenge::Bearer { realm, service, scope: challenge_scope }) => {
                if let Some(token) = cached.filter(|_| !fresh) {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let scope = scope.map(str::to_string).or(challenge_scope);
                let token = self.fetch_token(&realm, service.as_deref(), scope.as_deref())?;
                let mut state = self.auth.lock().expect("auth state lock");
                state.tokens.insert(scope.unwrap_or_default(), token.clone());
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Gets a Bearer token from `realm` with the credentials as Basic auth (or anonymously).
    /// Errors name the realm URL, since a reverse proxy can make the registry send a wrong one.
    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> std::result::Result<String, Failure> {
        if realm.starts_with("http://") && self.address.scheme == Scheme::Https && self.credentials.is_some() {
            return Err(Failure::Fatal(anyhow!(
                "{} sent the token realm {realm}, which is plain HTTP: refusing to send the password there \
                 (check the registry's base URL or the reverse proxy in front of it)",
                self.address
            )));
        }
        let mut url = realm.to_string();
        let mut separator = if realm.contains('?') { '&' } else { '?' };
        // A call on two repositories (a blob mount: push to one, pull from the other) needs
        // both scopes, which token servers take as one `scope` parameter each.
        let scopes = scope.into_iter().flat_map(str::split_whitespace).map(|scope| ("scope", scope));
        for (key, value) in service.map(|service| ("service", service)).into_iter().chain(scopes) {
            url.push_str(&format!("{separator}{key}={}", percent_encode(value)));
            separator = '&';
        }
        let call = Call::new("GET", url, None);
        let authorization = self.credentials.as_ref().map(basic_authorization);
        let in_realm = |error: anyhow::Error| error.context(format!("token request to realm {realm} failed"));
        let reply = self.send(&call, authorization.as_deref()).map_err(|failure| match failure {
            Failure::Transient(error) => Failure::Transient(in_realm(error)),
            Failure::Fatal(error) => Failure::Fatal(in_realm(error)),
        })?;
        match reply.status {
            200 => {}
            401 | 403 => {
                return Err(Failure::Fatal(
                    self.login_failed(reply.status, &format!("; the token realm {realm} refused the login")),
                ));
            }
            status if status >= 500 || status == 429 => {
                return Err(Failure::Transient(anyhow!("token request to realm {realm} failed: HTTP {status}")));
            }
            status => {
                return Err(Failure::Fatal(anyhow!(
                    "token request to realm {realm} failed: HTTP {status}: {}",
                    reply.errors()
                )));
            }
        }
        let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        answer["token"]
            .as_str()
            .or_else(|| answer["access_token"].as_str())
            .filter(|token| !token.is_empty())
            .map(str::to_string)
            .ok_or_else(|| Failure::Fatal(anyhow!("token request to realm {realm}: the answer holds no token")))
    }

    /// The error for a refused login. It names the user, never the password.
    pub(super) fn login_failed(&self, status: u16, detail: &str) -> anyhow::Error {
        let registry = &self.address;
        let host = &self.address.host;
        let privileges =
            if status == 403 { "; HTTP 403 can also mean the user lacks privileges for the repository" } else { "" };
        match &self.credentials {
            Some(credentials) => anyhow!(
                "login to {registry} as {} failed (HTTP {status}): check NEXUS_USERNAME/NEXUS_PASSWORD or \
                 `docker login {host}`{detail}{privileges}",
                credentials.username
            ),
            None => anyhow!(
                "{registry} requires a login (HTTP {status}) and none was found: set NEXUS_USERNAME/NEXUS_PASSWORD \
                 or run `docker login {host}`{detail}"
            ),
        }
    }
}

/// The key under which a Bearer token for `scope` is cached.
fn scope_key(scope: Option<&str>, challenge: Option<&Challenge>) -> String {
    match (scope, challenge) {
        (Some(scope), _) => scope.to_string(),
        (None, Some(Challenge::Bearer { scope: Some(scope), .. })) => scope.clone(),
        _ => String::new(),
    }
}

fn basic_authorization(credentials: &Credentials) -> String {
    format!("Basic {}", STANDARD.encode(format!("{}:{}", credentials.username, credentials.password.expose())))
}

/// Parses the first challenge of a `WWW-Authenticate` value: `Basic realm="..."` or
/// `Bearer realm="...",service="...",scope="..."`, with quoted values that may hold commas.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_auth_params(rest);
    let param =
        |name: &str| params.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.clone());
    Some(Challenge::Bearer { realm: param("realm")?, service: param("service"), scope: param("scope") })
}

/// Parses `key=value, key="quoted, value"` pairs (RFC 7235 auth-params), stopping at anything
/// that is not a pair (the start of a second challenge).
fn parse_auth_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if key.is_empty() || chars.next_if_eq(&'=').is_none() {
            return params;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',' && !c.is_whitespace())));
        }
        params.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(username: &str, password: &str) -> Option<Credentials> {
        Some(Credentials { username: username.to_string(), password: Secret::new("NEXUS_PASSWORD", password) })
    }

    // --- Pure functions -----------------------------------------------------------------------

    #[test]
    fn challenges_parse_basic_and_bearer_with_quoted_commas() {
        assert_eq!(parse_challenge(r#"Basic realm="Sonatype Nexus Repository Manager""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("basic"), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://nexus.example:8443/v2/token",service="https://nexus.example:8443/v2/token",scope="repository:hosted/intric/backend:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://nexus.example:8443/v2/token".to_string(),
                service: Some("https://nexus.example:8443/v2/token".to_string()),
                scope: Some("repository:hosted/intric/backend:pull,push".to_string()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Bearer  realm = "https://a/token?x=\"1\"" , service=plain"#),
            Some(Challenge::Bearer {
                realm: r#"https://a/token?x="1""#.to_string(),
                service: Some("plain".to_string()),
                scope: None
            })
        );
        assert_eq!(parse_challenge(r#"Bearer service="no realm""#), None);
        assert_eq!(parse_challenge(r#"Negotiate abc"#), None);
    }

    #[test]
    fn docker_config_logins_decode_padded_or_not_and_basic_auth_is_standard_base64() {
        for auth in ["dXNlcjpwYXNz", "dXNlcjpwYXNzMQ==", "dXNlcjpwYXNzMQ"] {
            let config = format!(r#"{{"auths": {{"h": {{"auth": "{auth}"}}}}}}"#);
            let DockerLogin::Stored(stored) = docker_config_entry(&config, "h").unwrap() else { panic!("{auth}") };
            assert_eq!(stored.username, "user", "{auth}");
            assert!(stored.password.expose().starts_with("pass"), "{auth}");
        }
        let garbled = docker_config_entry(r#"{"auths": {"h": {"auth": "dXNl!!"}}}"#, "h").unwrap_err();
        assert!(garbled.to_string().contains("not base64 of user:password"), "{garbled}");
        let login = credentials("Aladdin", "open sesame").unwrap();
        assert_eq!(basic_authorization(&login), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "RFC 7617's example");
    }

    #[test]
    fn credential_helpers_run_through_the_runner_with_the_host_on_standard_input() {
        use crate::plan::runner::Recording;
        let found = Recording::replying(|_| Ok(r#"{"ServerURL":"h","Username":"ci","Secret":"helper-canary"}"#.into()));
        let login = credential_helper_get(&found, "pass", "nexus.example:8443").unwrap().unwrap();
        assert_eq!((login.username.as_str(), login.password.expose()), ("ci", "helper-canary"));
        assert_eq!(found.executed(), ["docker-credential-pass get < <the registry host>"]);

        let missing = Recording::replying(|_| Err("credentials not found in native keychain".into()));
        assert_eq!(credential_helper_get(&missing, "pass", "h").unwrap(), None, "no login, not an error");
        let broken = Recording::replying(|_| Err("partial-secret-canary".into()));
        let error = format!("{:#}", credential_helper_get(&broken, "pass", "h").unwrap_err());
        assert!(error.contains("docker-credential-pass get failed (exit status: 1)"), "{error}");
        assert!(!error.contains("partial-secret-canary"), "standard output is never shown: {error}");
        let token = Recording::replying(|_| Ok(r#"{"Username":"<token>","Secret":"t"}"#.into()));
        let error = credential_helper_get(&token, "pass", "h").unwrap_err().to_string();
        assert!(error.contains("identity token") && error.contains("NEXUS_USERNAME/NEXUS_PASSWORD"), "{error}");
    }

    #[test]
    fn docker_config_gives_stored_login_helper_or_nothing() {
        let config = r#"{
            "auths": {
                "https://nexus.example:8443/v1/": {"auth": "dXNlcjpwYTpzcw=="},
                "other.example": {"auth": ""}
            },
            "credHelpers": {"helped.example": "pass"},
            "credsStore": "desktop"
        }"#;
        let stored = docker_config_entry(config, "nexus.example:8443").unwrap();
        let DockerLogin::Stored(credentials) = stored else { panic!("{stored:?}") };
        assert_eq!(credentials.username, "user");
        assert_eq!(credentials.password.expose(), "pa:ss", "only the first colon separates");
        assert!(!format!("{credentials:?}").contains("pa:ss"));
        assert_eq!(docker_config_entry(config, "helped.example").unwrap(), DockerLogin::Helper("pass".into()));
        assert_eq!(docker_config_entry(config, "other.example").unwrap(), DockerLogin::Helper("desktop".into()));
        assert_eq!(docker_config_entry(r#"{"auths": {}}"#, "nexus.example").unwrap(), DockerLogin::None);
        assert_eq!(docker_config_entry("{}", "nexus.example:8443").unwrap(), DockerLogin::None);
        let broken = docker_config_entry(r#"{"auths": {"h": {"auth": "bm9jb2xvbg=="}}}"#, "h").unwrap_err();
        assert!(broken.to_string().contains("not base64 of user:password"), "{broken}");
    }

    #[test]
    fn credentials_from_the_environment_need_both_variables() {
        let env = |pairs: &[(&str, &str)]| -> Env {
            pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
        };
        let both = Credentials::from_env(&env(&[("NEXUS_USERNAME", "ci"), ("NEXUS_PASSWORD", "canary-env")])).unwrap();
        assert_eq!(both, credentials("ci", "canary-env"));
        assert_eq!(format!("{both:?}").matches("canary-env").count(), 0);
        assert_eq!(Credentials::from_env(&env(&[("NEXUS_USERNAME", ""), ("NEXUS_PASSWORD", "")])).unwrap(), None);
        let half = Credentials::from_env(&env(&[("NEXUS_USERNAME", "ci")])).unwrap_err().to_string();
        assert!(half.contains("NEXUS_PASSWORD is not"), "{half}");
        let other_half = Credentials::from_env(&env(&[("NEXUS_PASSWORD", "canary-env")])).unwrap_err().to_string();
        assert!(other_half.contains("NEXUS_USERNAME is not") && !other_half.contains("canary-env"), "{other_half}");

        // The release registry's own login is read the same way, under its own names.
        let release = env(&[("NEXUS_RELEASE_USERNAME", "releaser"), ("NEXUS_RELEASE_PASSWORD", "canary-release")]);
        let read = |env: &Env| Credentials::from_variables(env, "NEXUS_RELEASE_USERNAME", "NEXUS_RELEASE_PASSWORD");
        let found = read(&release).unwrap().unwrap();
        assert_eq!((found.username.as_str(), found.password.expose()), ("releaser", "canary-release"));
        assert!(!format!("{found:?}").contains("canary-release"));
        let half = read(&env(&[("NEXUS_RELEASE_USERNAME", "releaser")])).unwrap_err().to_string();
        assert_eq!(half, "NEXUS_RELEASE_USERNAME is set but NEXUS_RELEASE_PASSWORD is not: set both, or neither");
        assert_eq!(read(&env(&[("NEXUS_USERNAME", "ci"), ("NEXUS_PASSWORD", "x")])).unwrap(), None);
    }
}
