//! The status report: each container of the deployment's compose project with its service,
//! state, health, the image tag and digest it runs, and its uptime (for `status`, and after
//! every change); during an update the old and the new container of a service show side by
//! side, and a service without a container shows as `missing`.
//!
//! Three read-only docker calls: `compose ps --all --format json`, then `container inspect`
//! (start time, image id) and `image inspect` (repository digests) of what it lists.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::adapters::clock;
use crate::adapters::compose::{Compose, SERVICES};
use crate::plan::runner::Runner;

/// One service as it runs now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceStatus {
    pub service: String,
    /// `running`, `exited`, ... or `missing` when it has no container.
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`, or empty without a healthcheck.
    pub health: String,
    /// The image as named (`registry/intric/backend:1.2.3`).
    pub image: String,
    pub tag: String,
    /// The registry digest of the image it runs (`sha256:...`), when it came from a registry.
    pub digest: String,
    /// Seconds since it started, while running.
    pub uptime: Option<u64>,
}

impl ServiceStatus {
    pub fn to_json(&self) -> Value {
        json!({
            "service": self.service,
            "state": self.state,
            "health": self.health,
            "image": self.image,
            "tag": self.tag,
            "digest": self.digest,
            "uptime_seconds": self.uptime,
        })
    }
}

/// `compose ps --format json` output: one object per line (compose ≥ 2.21) or one array.
pub fn parse_ps(text: &str) -> Result<Vec<Value>> {
    let text = text.trim();
    if text.starts_with('[') {
        let value: Value = serde_json::from_str(text).context("`docker compose ps` printed invalid JSON")?;
        return Ok(value.as_array().cloned().unwrap_or_default());
    }
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).context("`docker compose ps` printed invalid JSON"))
        .collect()
}

/// The tag of an image reference: after the last `:` that follows the last `/`.
pub fn tag_of(reference: &str) -> String {
    let reference = reference.split('@').next().unwrap_or(reference);
    let name_start = reference.rfind('/').map_or(0, |slash| slash + 1);
    reference[name_start..].rsplit_once(':').map_or_else(|| "latest".to_string(), |(_, tag)| tag.to_string())
}

/// The digest among `repo_digests` (`repo@sha256:...`) for the repository of `reference`, else
/// the first one.
pub fn digest_for(reference: &str, repo_digests: &[String]) -> String {
    let reference = reference.split('@').next().unwrap_or(reference);
    let name_start = reference.rfind('/').map_or(0, |slash| slash + 1);
    let repository = match reference[name_start..].rfind(':') {
        Some(colon) => &reference[..name_start + colon],
        None => reference,
    };
    repo_digests
        .iter()
        .find(|entry| entry.split_once('@').is_some_and(|(repo, _)| repo == repository))
        .or(repo_digests.first())
        .and_then(|entry| entry.split_once('@'))
        .map(|(_, digest)| digest.to_string())
        .unwrap_or_default()
}

/// `3d 4h`, `2h 5m`, `5m 10s`, `42s`.
pub fn format_uptime(seconds: u64) -> String {
    let (days, hours, minutes, secs) = (seconds / 86_400, seconds % 86_400 / 3600, seconds % 3600 / 60, seconds % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{minutes}m {secs}s"),
        (0, _, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// Puts together the services' status from the three docker answers (pure).
pub fn assemble(ps: &[Value], containers: &[Value], images: &[Value], now: i64) -> Vec<ServiceStatus> {
    let containers: BTreeMap<String, &Value> =
        containers.iter().filter_map(|container| Some((container["Id"].as_str()?.to_string(), container))).collect();
    let images: BTreeMap<String, Vec<String>> = images
        .iter()
        .filter_map(|image| {
            let digests = image["RepoDigests"].as_array()?.iter().filter_map(|d| d.as_str().map(String::from));
            Some((image["Id"].as_str()?.to_string(), digests.collect()))
        })
        .collect();
    let mut list: Vec<ServiceStatus> = Vec::new();
    for entry in ps {
        let Some(service) = entry["Service"].as_str() else { continue };
        let id = entry["ID"].as_str().unwrap_or("");
        let container = containers.iter().find(|(full, _)| !id.is_empty() && full.starts_with(id)).map(|(_, c)| *c);
        let image =
            container.and_then(|c| c["Config"]["Image"].as_str()).or(entry["Image"].as_str()).unwrap_or("").to_string();
        let digests = container.and_then(|c| images.get(c["Image"].as_str()?)).cloned().unwrap_or_default();
        let state = entry["State"].as_str().unwrap_or("").to_string();
        let uptime = container
            .filter(|_| state == "running")
            .and_then(|c| clock::parse_rfc3339(c["State"]["StartedAt"].as_str()?))
            .map(|started| u64::try_from(now - started).unwrap_or(0));
        list.push(ServiceStatus {
            service: service.to_string(),
            state,
            health: entry["Health"].as_str().unwrap_or("").to_string(),
            tag: tag_of(&image),
            digest: digest_for(&image, &digests),
            image,
            uptime,
        });
    }
    for service in SERVICES {
        if !list.iter().any(|status| status.service == service) {
            list.push(ServiceStatus { service: service.to_string(), state: "missing".into(), ..Default::default() });
        }
    }
    // A stable sort: during an update the old and the new container of a service stay side by
    // side, the oldest (longest uptime) first.
    let order = |name: &str| SERVICES.iter().position(|service| *service == name).unwrap_or(SERVICES.len());
    list.sort_by_key(|status| (order(&status.service), status.service.clone(), std::cmp::Reverse(status.uptime)));
    list
}

/// The status of the services of `compose`'s project, asked of the engine.
pub fn collect(compose: &Compose, runner: &dyn Runner) -> Result<Vec<ServiceStatus>> {
    let ps = parse_ps(&runner.read(&compose.ps_json())?)?;
    let ids: Vec<String> = ps.iter().filter_map(|entry| entry["ID"].as_str().map(String::from)).collect();
    let inspect = |command: crate::plan::Command| -> Result<Vec<Value>> {
        let text = runner.read(&command)?;
        Ok(serde_json::from_str::<Value>(&text).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default())
    };
    let containers = if ids.is_empty() {
        Vec::new()
    } else {
        inspect(crate::adapters::docker::container_inspect_command(&compose.program, &ids))?
    };
    let mut image_ids: Vec<String> =
        containers.iter().filter_map(|container| container["Image"].as_str().map(String::from)).collect();
    image_ids.sort();
    image_ids.dedup();
    let images = if image_ids.is_empty() {
        Vec::new()
    } else {
        inspect(crate::adapters::docker::image_inspect_command(&compose.program, &image_ids))?
    };
    Ok(assemble(&ps, &containers, &images, clock::now_unix()))
}

/// The status table.
pub fn render(project: &str, statuses: &[ServiceStatus]) -> String {
    let short = |digest: &str| {
        digest.strip_prefix("sha256:").map_or(digest.to_string(), |hex| format!("sha256:{}", &hex[..hex.len().min(12)]))
    };
    let rows: Vec<[String; 6]> = statuses
        .iter()
        .map(|status| {
            [
                status.service.clone(),
                status.state.clone(),
                if status.health.is_empty() { "-".into() } else { status.health.clone() },
                if status.tag.is_empty() { "-".into() } else { status.tag.clone() },
                if status.digest.is_empty() { "-".into() } else { short(&status.digest) },
                status.uptime.map_or("-".into(), format_uptime),
            ]
        })
        .collect();
    let header = ["SERVICE", "STATE", "HEALTH", "TAG", "DIGEST", "UPTIME"];
    table(&format!("project {project}"), header, &rows)
}

/// `title`, then `header` and `rows` in columns as wide as their widest cell.
pub fn table<const N: usize>(title: &str, header: [&str; N], rows: &[[String; N]]) -> String {
    let header = header.map(String::from);
    let widths: Vec<usize> =
        (0..N).map(|i| rows.iter().chain([&header]).map(|row| row[i].len()).max().unwrap_or(0)).collect();
    let mut text = format!("{title}\n");
    for row in [&header].into_iter().chain(rows.iter()) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// The table for `compose`'s project, for the end of deploy, update and restore.
pub fn report(compose: &Compose, runner: &dyn Runner) -> Result<String> {
    Ok(render(compose.project_name(), &collect(compose, runner)?))
}

/// Prints the table at the end of a task that succeeded; failing to show it does not fail the task.
pub fn print_report(compose: &Compose, runner: &dyn Runner) {
    match report(compose, runner) {
        Ok(table) => print!("{table}"),
        Err(error) => eprintln!("warning: cannot show the status: {error:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_digests_of_references() {
        assert_eq!(tag_of("127.0.0.1:5000/intric/backend:v2-e2e"), "v2-e2e");
        assert_eq!(tag_of("redis"), "latest");
        assert_eq!(tag_of("nexus:8082/intric/backend"), "latest");
        let digests = vec!["other/x@sha256:aaa".to_string(), "127.0.0.1:5000/intric/backend@sha256:bbb".to_string()];
        assert_eq!(digest_for("127.0.0.1:5000/intric/backend:v2", &digests), "sha256:bbb");
        assert_eq!(digest_for("local:tag", &digests), "sha256:aaa");
        assert_eq!(digest_for("local:tag", &[]), "");
    }

    #[test]
    fn uptimes() {
        assert_eq!(format_uptime(42), "42s");
        assert_eq!(format_uptime(310), "5m 10s");
        assert_eq!(format_uptime(7500), "2h 5m");
        assert_eq!(format_uptime(273_600), "3d 4h");
    }

    #[test]
    fn services_come_from_ps_inspect_and_images_and_missing_ones_show() {
        let ps = parse_ps(
            "{\"ID\":\"abc\",\"Service\":\"backend\",\"State\":\"running\",\"Health\":\"healthy\",\"Image\":\"r/intric/backend:1\"}\n\
             {\"ID\":\"def\",\"Service\":\"db\",\"State\":\"exited\",\"Health\":\"\",\"Image\":\"pg\"}\n",
        )
        .unwrap();
        let containers = vec![
            json!({"Id": "abc123", "Image": "sha256:img", "Config": {"Image": "r/intric/backend:1"}, "State": {"StartedAt": "1970-01-01T00:01:00.5Z"}}),
            json!({"Id": "def456", "Image": "sha256:pg", "Config": {"Image": "pg:16"}, "State": {"StartedAt": "1970-01-01T00:00:00Z"}}),
        ];
        let images = vec![json!({"Id": "sha256:img", "RepoDigests": ["r/intric/backend@sha256:0123"]})];
        let list = assemble(&ps, &containers, &images, 160);
        assert_eq!(list.iter().map(|s| s.service.as_str()).collect::<Vec<_>>(), SERVICES);
        assert_eq!(list[0].state, "exited");
        assert_eq!(list[0].uptime, None);
        assert_eq!(list[0].tag, "16");
        let backend = &list[2];
        assert_eq!((backend.tag.as_str(), backend.digest.as_str(), backend.uptime), ("1", "sha256:0123", Some(100)));
        assert_eq!(list[1].state, "missing");
        let table = render("intric", &list);
        assert!(table.contains("backend   running  healthy  1    sha256:0123  1m 40s"), "{table}");
        assert_eq!(parse_ps("[{\"Service\":\"db\"}]").unwrap().len(), 1);
    }

    #[test]
    fn during_an_update_the_old_and_the_new_container_show_side_by_side() {
        let ps = parse_ps(
            "{\"ID\":\"new\",\"Service\":\"backend\",\"State\":\"running\",\"Health\":\"starting\",\"Image\":\"r/intric/backend:2\"}\n\
             {\"ID\":\"old\",\"Service\":\"backend\",\"State\":\"running\",\"Health\":\"healthy\",\"Image\":\"r/intric/backend:1\"}\n",
        )
        .unwrap();
        let containers = vec![
            json!({"Id": "old1", "Image": "sha256:a", "Config": {"Image": "r/intric/backend:1"}, "State": {"StartedAt": "1970-01-01T00:00:00Z"}}),
            json!({"Id": "new1", "Image": "sha256:b", "Config": {"Image": "r/intric/backend:2"}, "State": {"StartedAt": "1970-01-01T00:02:00Z"}}),
        ];
        let list = assemble(&ps, &containers, &[], 160);
        let backends: Vec<(&str, &str)> =
            list.iter().filter(|s| s.service == "backend").map(|s| (s.tag.as_str(), s.health.as_str())).collect();
        assert_eq!(backends, [("1", "healthy"), ("2", "starting")], "the old one first, both shown");
        assert_eq!(list.len(), SERVICES.len() + 1);
        let table = render("intric", &list);
        assert!(table.contains("backend   running  healthy   1    -       2m 40s"), "{table}");
        assert!(table.contains("backend   running  starting  2    -       40s"), "{table}");
    }
}
