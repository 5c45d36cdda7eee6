//! Where a registry is: the one parser of every registry setting (`--registry`,
//! `--base-registry`, `NEXUS_REGISTRY` in the environment and in `.env`), so that each is read
//! the same way and refused the same way. A setting is `HOST[:PORT][/PATH]`
//! (the path is Nexus's path-based routing); `http://` or `https://` in front chooses the
//! protocol and is not part of image names. Anything else is refused in one line naming the
//! value and the expected form. Runs nothing.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Result, anyhow};

/// Whether the registry is spoken to over TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Where a registry is: parsed from a setting `host[:port][/path]`.
///
/// The scheme is https, except http for loopback hosts (`localhost`, `127.0.0.0/8`, `[::1]`),
/// which docker also treats as insecure registries, and for a setting written with an explicit
/// `http://` in front (the opt-in for a registry without TLS elsewhere). An explicit `https://`
/// forces TLS even on loopback. Displaying an address gives `host[:port][/path]`, the prefix of
/// image names (`<registry>/intric/<service>`), without the scheme.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryAddress {
    pub scheme: Scheme,
    /// `host[:port]`, with an IPv6 address in brackets: the name `docker login` uses.
    pub host: String,
    /// The path before the image name (Nexus path-based routing: the repository), without
    /// leading or trailing slashes; empty when there is none.
    pub path_prefix: String,
}

impl RegistryAddress {
    /// Parses a registry setting; the error is one line naming the value and the expected form.
    pub fn parse(setting: &str) -> Result<RegistryAddress> {
        let invalid = |why: &str| {
            anyhow!(
                "invalid registry `{setting}`: {why}; expected host[:port][/path], e.g. nexus.example:8082 \
                 or nexus.example/docker-hosted (with http:// in front for a registry without TLS)"
            )
        };
        let (explicit, rest) = if let Some(rest) = setting.strip_prefix("http://") {
            (Some(Scheme::Http), rest)
        } else if let Some(rest) = setting.strip_prefix("https://") {
            (Some(Scheme::Https), rest)
        } else if setting.contains("://") {
            return Err(invalid("the only schemes allowed are http:// and https://"));
        } else {
            (None, setting)
        };
        let rest = rest.trim_end_matches('/');
        let (host, path_prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let loopback = if let Some(bracketed) = host.strip_prefix('[') {
            let (address, port) = bracketed.split_once(']').ok_or_else(|| invalid("unclosed `[`"))?;
            let ip = address.parse::<Ipv6Addr>().map_err(|_| invalid("not an IPv6 address in `[...]`"))?;
            check_port(port.strip_prefix(':'), port.is_empty()).map_err(&invalid)?;
            ip.is_loopback()
        } else {
            let (name, port) = match host.split_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host, None),
            };
            let label_ok = |label: &str| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            };
            if name.is_empty() {
                return Err(invalid("the host is missing"));
            }
            if name.len() > 253 || !name.split('.').all(label_ok) {
                return Err(invalid("the host is not a valid host name"));
            }
            check_port(port, port.is_none()).map_err(&invalid)?;
            name.eq_ignore_ascii_case("localhost") || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        };
        // Docker's rule for the components of an image name, which the path becomes part of.
        let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        let segment_ok = |segment: &str| {
            segment.starts_with(alphanumeric)
                && segment.ends_with(alphanumeric)
                && segment.chars().all(|c| alphanumeric(c) || "._-".contains(c))
        };
        if !path_prefix.is_empty() && !path_prefix.split('/').all(segment_ok) {
            return Err(invalid(
                "the path may hold only lowercase letters, digits and `.`, `_` or `-` between them, between slashes \
                 (no tag or image name)",
            ));
        }
        let scheme = explicit.unwrap_or(if loopback { Scheme::Http } else { Scheme::Https });
        Ok(RegistryAddress { scheme, host: host.to_ascii_lowercase(), path_prefix: path_prefix.to_string() })
    }

    /// Whether `other` is the same registry (host and scheme), whatever the path prefixes: then
    /// blobs can be mounted from one repository into the other.
    pub fn same_registry(&self, other: &RegistryAddress) -> bool {
        self.host == other.host && self.scheme == other.scheme
    }

    /// The name of `repository` (`intric/backend`) in API paths: `<path prefix>/intric/backend`.
    pub fn repository_path(&self, repository: &str) -> String {
        if self.path_prefix.is_empty() { repository.to_string() } else { format!("{}/{repository}", self.path_prefix) }
    }

    /// `scheme://host[:port]`, the start of every API URL.
    pub(super) fn base_url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{scheme}://{}", self.host)
    }

    /// The URL of `/v2/<path prefix>/<repository>/<rest>`.
    pub(super) fn api_url(&self, repository: &str, rest: &str) -> String {
        format!("{}/v2/{}/{rest}", self.base_url(), self.repository_path(repository))
    }
}

/// Checks an optional port; `absent_ok` tells whether having none is fine.
fn check_port(port: Option<&str>, absent_ok: bool) -> std::result::Result<(), &'static str> {
    match port {
        None if absent_ok => Ok(()),
        None => Err("unexpected text after `]`"),
        Some(port) if port.parse::<u16>().is_ok_and(|port| port > 0) => Ok(()),
        Some(_) => Err("the port is not a number from 1 to 65535"),
    }
}

impl fmt::Display for RegistryAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)?;
        if !self.path_prefix.is_empty() {
            write!(f, "/{}", self.path_prefix)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_host_port_and_path() {
        let nexus = RegistryAddress::parse("Nexus.Example:8443/docker-hosted/").unwrap();
        assert_eq!(nexus.scheme, Scheme::Https);
        assert_eq!(nexus.host, "nexus.example:8443");
        assert_eq!(nexus.path_prefix, "docker-hosted");
        assert_eq!(nexus.to_string(), "nexus.example:8443/docker-hosted");
        assert_eq!(nexus.repository_path("intric/backend"), "docker-hosted/intric/backend");
        assert_eq!(
            nexus.api_url("intric/backend", "manifests/1.2.3"),
            "https://nexus.example:8443/v2/docker-hosted/intric/backend/manifests/1.2.3"
        );

        let plain = RegistryAddress::parse("registry.example").unwrap();
        assert_eq!((plain.scheme, plain.path_prefix.as_str()), (Scheme::Https, ""));
        assert_eq!(plain.repository_path("intric/worker"), "intric/worker");
        assert_eq!(plain.to_string(), "registry.example");
    }

    #[test]
    fn loopback_and_explicit_http_use_plain_http() {
        for setting in ["127.0.0.1:5000", "127.8.9.10", "localhost:5000/lab", "[::1]:5000", "http://nexus.lan:8082"] {
            assert_eq!(RegistryAddress::parse(setting).unwrap().scheme, Scheme::Http, "{setting}");
        }
        for setting in ["https://127.0.0.1:5000", "10.0.0.1:5000", "[fd00::1]:443", "localhost.example"] {
            assert_eq!(RegistryAddress::parse(setting).unwrap().scheme, Scheme::Https, "{setting}");
        }
        let explicit = RegistryAddress::parse("http://nexus.lan:8082/hosted").unwrap();
        assert_eq!(explicit.to_string(), "nexus.lan:8082/hosted", "the scheme is not part of image names");
        assert_eq!(explicit.base_url(), "http://nexus.lan:8082");
    }

    #[test]
    fn bad_addresses_fail_with_one_line_naming_value_and_form() {
        for setting in [
            "",
            ":5000",
            "nexus.example:port",
            "nexus.example:0",
            "nexus.example:99999",
            "nexus..example",
            "nexus example",
            "nexus.example/Upper",
            "nexus.example//double",
            "[::1",
            "[not-v6]:5000",
            "ftp://nexus.example",
            "host:1:2",
            "host/a:b",
            "nexus.example/-hosted",
            " nexus.example",
            "http://",
        ] {
            let error = RegistryAddress::parse(setting).unwrap_err().to_string();
            assert!(error.starts_with(&format!("invalid registry `{setting}`: ")), "{error}");
            assert!(error.contains("expected host[:port][/path]"), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }
}
