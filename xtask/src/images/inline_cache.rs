//! BuildKit's inline cache (the `moby.buildkit.cache.v0` record list in an image's config): is
//! an image's cache whole, so that it is worth keeping as the next build's `--cache-from`?
//! Reads JSON only; runs nothing.
//!
//! Why it matters: BuildKit (dockerd 20.10's embedded one among them, see moby/buildkit#1981 and
//! #1992) drops the results of the steps it took from imported cache when it writes the new
//! image's inline cache. An image built on a fresh runner from `dev-latest`'s cache therefore
//! carries a cache that matches nothing, and the build after it starts from scratch: every
//! other CI build is a full rebuild. `build --push` keeps an `inline-cache` tag on the newest
//! image whose cache is whole and adds it to the cache sources, so each build finds every
//! unchanged step in one of them.

use base64::Engine;
use serde_json::Value;

/// The tag `build --push` keeps on the newest image of a repository whose inline cache is whole.
pub const TAG: &str = "inline-cache";

/// Whether the inline cache in `config` (an image config) reaches from the image's top layer
/// down to its base image with a result for every step: BuildKit can then rebuild the image
/// from it without running any step. `false` when there is no inline cache, or in a format
/// this does not know (which only means the tag does not move).
///
/// The records form a graph: each record (a build step) links to the records of its inputs,
/// the first input being the filesystem it starts from, and lists the image layer it
/// produced. A record without inputs is a source: the `FROM` image. The walk goes from the
/// record of the top layer along first inputs; a step on the way without a layer is one whose
/// result BuildKit dropped.
pub fn is_complete(config: &Value) -> bool {
    let Some(records) = records(config) else { return false };
    let layers = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
    let Some(mut record) = layers.checked_sub(1).and_then(|top| records.iter().find(|r| layer(r) == Some(top))) else {
        return false;
    };
    // A walk longer than the record list would mean a cycle: not a cache BuildKit wrote.
    for _ in 0..records.len() {
        let Some(parent) = first_input(record).and_then(|link| records.get(link)) else { return true };
        if is_source(parent) {
            return true;
        }
        if layer(parent).is_none() {
            return false;
        }
        record = parent;
    }
    false
}

fn records(config: &Value) -> Option<Vec<Value>> {
    let encoded = config["moby.buildkit.cache.v0"].as_str()?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    match serde_json::from_slice(&decoded).ok()? {
        Value::Array(records) => Some(records),
        _ => None,
    }
}

/// The image layer a record produced: `"layers": [{"layer": N, ...}]`.
fn layer(record: &Value) -> Option<usize> {
    record["layers"][0]["layer"].as_u64().and_then(|index| usize::try_from(index).ok())
}

/// The record the first input links to: `"inputs": [[{"link": N}, ...], ...]`.
fn first_input(record: &Value) -> Option<usize> {
    record["inputs"][0][0]["link"].as_u64().and_then(|index| usize::try_from(index).ok())
}

fn is_source(record: &Value) -> bool {
    record["inputs"].as_array().is_none_or(Vec::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An image config with `layers` layers and this inline cache.
    fn config(layers: usize, records: Value) -> Value {
        let encoded = base64::engine::general_purpose::STANDARD.encode(records.to_string());
        json!({
            "rootfs": { "type": "layers", "diff_ids": vec!["sha256:0"; layers] },
            "moby.buildkit.cache.v0": encoded,
        })
    }

    /// The backend's shape: FROM (2 base layers), then RUN, COPY --from (a second input from
    /// another stage), WORKDIR and COPY, each one layer; record 0 is the other stage.
    fn backend(with_results: &[usize]) -> Value {
        let result = |layer: usize| {
            if with_results.contains(&layer) { json!([{ "layer": layer }]) } else { json!(null) }
        };
        json!([
            { "digest": "sha256:builder", "inputs": [[{ "link": 1 }]] },
            { "digest": "sha256:from" },
            { "digest": "sha256:run", "inputs": [[{ "link": 1 }]], "layers": result(2) },
            { "digest": "sha256:venv", "inputs": [[{ "link": 2 }], [{ "selector": "sha256:s", "link": 0 }]],
              "layers": result(3) },
            { "digest": "sha256:workdir", "inputs": [[{ "link": 3 }]], "layers": result(4) },
            { "digest": "sha256:copy", "inputs": [[{ "link": 4 }]], "layers": result(5) },
        ])
    }

    #[test]
    fn a_cache_with_every_step_of_the_image_is_complete() {
        assert!(is_complete(&config(6, backend(&[2, 3, 4, 5]))));
    }

    #[test]
    fn a_cache_whose_imported_steps_lost_their_layers_is_not() {
        // What an image built from imported cache carries: only its own new layer.
        assert!(!is_complete(&config(6, backend(&[5]))));
        assert!(!is_complete(&config(6, backend(&[2, 4, 5]))));
    }

    #[test]
    fn no_cache_a_foreign_format_or_a_missing_top_layer_is_not() {
        assert!(!is_complete(&json!({ "rootfs": { "diff_ids": ["sha256:0"] } })));
        assert!(!is_complete(&config(6, json!({ "layers": [], "records": [] }))));
        assert!(!is_complete(&config(7, backend(&[2, 3, 4, 5]))), "no record made the top layer");
        let mut garbled = config(6, backend(&[2, 3, 4, 5]));
        garbled["moby.buildkit.cache.v0"] = json!("!!not base64!!");
        assert!(!is_complete(&garbled));
    }

    #[test]
    fn a_cycle_ends_the_walk() {
        let records = json!([
            { "digest": "sha256:a", "inputs": [[{ "link": 1 }]], "layers": [{ "layer": 0 }] },
            { "digest": "sha256:b", "inputs": [[{ "link": 0 }]], "layers": [{ "layer": 1 }] },
        ]);
        assert!(!is_complete(&config(2, records)));
    }
}
