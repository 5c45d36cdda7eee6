//! The variables a compose file interpolates, read from its raw text: which ones compose
//! requires (`${VAR:?message}`, `${VAR?message}`), which have a default (`${VAR:-default}`,
//! `${VAR-default}`), which are read plainly (`${VAR}`, `$VAR`), and which services mention them.
//!
//! `docker compose config` prints the file with every variable already substituted, so it cannot
//! tell these forms apart; this scanner reads the text itself. `$$` is compose's escape for a
//! literal `$` (a variable the container's shell expands) and is skipped. Services are found by
//! indentation under the top-level `services:` key; a service that merges a top-level block by
//! YAML anchor (`<<: *backend-env`) reads that block's variables too. It runs nothing.

use std::collections::BTreeMap;

/// How the compose file reads one variable, over all its mentions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComposeVar {
    pub name: String,
    /// Some mention is `${VAR:?message}` or `${VAR?message}`: compose refuses to run without it.
    pub required: bool,
    /// The default of the first `${VAR:-default}` or `${VAR-default}`; `None` when every
    /// mention is plain, so an unset variable becomes an empty string.
    pub default: Option<String>,
    /// The services that mention it, in file order.
    pub services: Vec<String>,
}

/// Every variable `text` (a compose file) interpolates, in the order of first mention.
pub fn scan(text: &str) -> Vec<ComposeVar> {
    let mut vars: Vec<ComposeVar> = Vec::new();
    // Variables of top-level blocks that carry an anchor, for services merging them.
    let mut anchored: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = Section::Other;
    let mut service_indent = None;
    for line in text.lines() {
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        let key = content.split(':').next().unwrap_or_default().trim();
        if indent == 0 {
            section = match (key, anchor_of(content)) {
                ("services", _) => Section::Services(None),
                (_, Some(anchor)) => Section::Anchored(anchor.to_string()),
                _ => Section::Other,
            };
            service_indent = None;
            continue;
        }
        if let Section::Services(current) = &mut section {
            if *service_indent.get_or_insert(indent) == indent {
                *current = Some(key.to_string());
            }
            if let Some(service) = current.clone() {
                for alias in aliases_of(content) {
                    for name in anchored.get(alias).cloned().unwrap_or_default() {
                        note_service(&mut vars, &name, &service);
                    }
                }
            }
        }
        for mention in mentions(content) {
            let var = match vars.iter_mut().position(|var| var.name == mention.name) {
                Some(index) => &mut vars[index],
                None => {
                    vars.push(ComposeVar {
                        name: mention.name.clone(),
                        required: false,
                        default: None,
                        services: Vec::new(),
                    });
                    vars.last_mut().expect("just pushed")
                }
            };
            var.required |= mention.required;
            if var.default.is_none() {
                var.default = mention.default;
            }
            match &section {
                Section::Services(Some(service)) => {
                    let service = service.clone();
                    note_service(&mut vars, &mention.name, &service);
                }
                Section::Anchored(anchor) => anchored.entry(anchor.clone()).or_default().push(mention.name),
                _ => {}
            }
        }
    }
    vars
}

/// Where a line of the file is.
enum Section {
    /// Under `services:`, inside the named service once its key was seen.
    Services(Option<String>),
    /// Inside a top-level block with this anchor (`x-backend-env: &backend-env`).
    Anchored(String),
    Other,
}

fn note_service(vars: &mut [ComposeVar], name: &str, service: &str) {
    if let Some(var) = vars.iter_mut().find(|var| var.name == name)
        && !var.services.iter().any(|known| known == service)
    {
        var.services.push(service.to_string());
    }
}

/// The anchor a top-level key defines: `x-env: &env` gives `env`.
fn anchor_of(content: &str) -> Option<&str> {
    let anchor = content.split_once('&')?.1;
    let end = anchor.find(|c: char| c.is_whitespace()).unwrap_or(anchor.len());
    Some(&anchor[..end]).filter(|anchor| !anchor.is_empty())
}

/// The aliases a line uses: `<<: *env` gives `env`.
fn aliases_of(content: &str) -> impl Iterator<Item = &str> {
    content.split('*').skip(1).filter_map(|rest| {
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).unwrap_or(rest.len());
        Some(&rest[..end]).filter(|alias| !alias.is_empty())
    })
}

/// One `${...}` or `$VAR` in the text.
#[derive(Debug, PartialEq, Eq)]
struct Mention {
    name: String,
    required: bool,
    default: Option<String>,
}

/// The interpolations of `text`, nested defaults (`${A:-${B}}`) included.
fn mentions(text: &str) -> Vec<Mention> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            rest = escaped;
        } else if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = closing_brace(inner) else { break };
            let body = &inner[..end];
            let name_end = body.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(body.len());
            let (name, modifier) = body.split_at(name_end);
            let (required, default) = match modifier {
                _ if modifier.starts_with(":?") || modifier.starts_with('?') => (true, None),
                _ if modifier.starts_with(":-") => (false, Some(&modifier[2..])),
                _ if modifier.starts_with('-') => (false, Some(&modifier[1..])),
                _ => (false, None),
            };
            if !name.is_empty() {
                found.push(Mention { name: name.to_string(), required, default: default.map(str::to_string) });
            }
            if let Some(default) = default {
                found.extend(mentions(default));
            }
            rest = &inner[end + 1..];
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            if end > 0 && !after.starts_with(|c: char| c.is_ascii_digit()) {
                found.push(Mention { name: after[..end].to_string(), required: false, default: None });
            }
            rest = &after[end..];
        }
    }
    found
}

/// The index of the `}` closing a `${` whose body starts `text` (nested `${...}` in defaults
/// counted); Dockerfile substitution uses it too.
pub fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0;
    for (index, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(index),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var<'a>(vars: &'a [ComposeVar], name: &str) -> &'a ComposeVar {
        vars.iter().find(|var| var.name == name).unwrap_or_else(|| panic!("{name} in {vars:#?}"))
    }

    #[test]
    fn each_interpolation_form() {
        let got =
            mentions("a ${REQ:?not set} ${Q?x} ${DEF:-1:2} ${D2-} ${PLAIN} $BARE $$ESCAPED $${ALSO} $1 ${A:-${B}}");
        let shown: Vec<(&str, bool, Option<&str>)> =
            got.iter().map(|m| (m.name.as_str(), m.required, m.default.as_deref())).collect();
        assert_eq!(
            shown,
            [
                ("REQ", true, None),
                ("Q", true, None),
                ("DEF", false, Some("1:2")),
                ("D2", false, Some("")),
                ("PLAIN", false, None),
                ("BARE", false, None),
                ("A", false, Some("${B}")),
                ("B", false, None),
            ]
        );
    }

    #[test]
    fn services_and_anchored_blocks() {
        let text = "\
x-env: &backend-env
  JWT_SECRET: ${JWT_SECRET}
  LOGLEVEL: ${LOGLEVEL:-INFO}
services:
  # the web app
  frontend:
    image: ${NEXUS_REGISTRY}/intric/frontend:${IMAGE_TAG:-latest}
    healthcheck:
      test: [\"CMD-SHELL\", \"wget -q http://localhost:$${PORT}\"]
  backend:
    image: ${NEXUS_REGISTRY}/intric/backend:${IMAGE_TAG:-latest}
    environment:
      <<: *backend-env
      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}
volumes:
  data: {}
";
        let vars = scan(text);
        let names: Vec<&str> = vars.iter().map(|var| var.name.as_str()).collect();
        assert_eq!(names, ["JWT_SECRET", "LOGLEVEL", "NEXUS_REGISTRY", "IMAGE_TAG", "POSTGRES_PASSWORD"]);
        assert_eq!(var(&vars, "NEXUS_REGISTRY").services, ["frontend", "backend"]);
        assert_eq!(var(&vars, "JWT_SECRET").services, ["backend"], "read through the anchor");
        assert_eq!(var(&vars, "JWT_SECRET").default, None);
        assert_eq!(var(&vars, "IMAGE_TAG").default.as_deref(), Some("latest"));
        assert!(var(&vars, "POSTGRES_PASSWORD").required && !var(&vars, "IMAGE_TAG").required);
    }

    #[test]
    fn the_repository_s_compose_file() {
        let path = crate::adapters::workspace_root().join("docker/docker-compose.yml");
        let vars = scan(&std::fs::read_to_string(path).unwrap());
        let jwt = var(&vars, "JWT_SECRET");
        assert!(jwt.required, "{jwt:?}");
        assert!(jwt.services.iter().any(|service| service == "backend"), "{jwt:?}");
        assert_eq!(var(&vars, "FRONTEND_PORT").default.as_deref(), Some("3000"));
        assert!(!vars.iter().any(|var| var.name == "POSTGRES_DB" && var.required));
    }
}
