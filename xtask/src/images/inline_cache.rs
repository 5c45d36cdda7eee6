//! BuildKit's inline cache (the `moby.buildkit.cache.v0` record list in an image's config): is
//! an image's cache whole, so that it is worth keeping as the next build's `--cache-from`, and
//! if not, can the results BuildKit left out be put back? Reads and writes JSON only; runs
//! nothing.
//!
//! Why it matters: BuildKit (dockerd 20.10's embedded one among them, see moby/buildkit#1981 and
//! #1992) leaves results out when it writes an image's inline cache: always those of the steps
//! it took from imported cache, and now and then, in a build from nothing, those of a step it
//! ran (which one depends on the state of the engine's cache, so building again gives the same
//! gap). An image built on a fresh runner from `dev-latest`'s cache therefore carries a cache
//! that matches nothing, and the build after it starts from scratch: every other CI build
//! would be a full rebuild. `build --push` keeps an `inline-cache` tag on an image whose cache
//! is whole, filling in the missing results where the image shows which layer each step made.

use base64::Engine;
use serde_json::{Value, json};

use crate::images::dockerfile::{Instruction, makes_layer};

/// The tag `build --push` keeps on the newest image of a repository whose inline cache is whole.
pub const TAG: &str = "inline-cache";

/// Whether the inline cache in `config` (an image config) reaches from the image's top layer
/// down to its base image with a result for every step: BuildKit can then rebuild the image
/// from it without running any step. `false` when there is no inline cache, or in a format
/// this does not know.
pub fn is_complete(config: &Value) -> bool {
    let Some(records) = records(config) else { return false };
    steps_down(&records, layer_count(config))
        .is_some_and(|steps| steps.iter().flatten().all(|&r| layer(&records[r]).is_some()))
}

/// `config` with every step's result in its inline cache, when the image's history shows
/// which layer each step made: then the `n`-th step below the top made the `n`-th layer below
/// the top, and a step without a result gets that layer. `steps` are the instructions of the
/// build that make a layer, in order (see [`Dockerfile::layer_steps`]). `None` when the cache's
/// steps or the history's layers do not match them one to one: the cache stays as it is.
///
/// The records form a graph: each record (a build step, possibly under several cache keys)
/// links to the records of its inputs, the first input being the filesystem it starts from,
/// and lists the image layer it produced. A record without inputs is a source: the `FROM`
/// image. A result is the layer with every layer below it, which is why the position decides.
///
/// [`Dockerfile::layer_steps`]: crate::images::dockerfile::Dockerfile::layer_steps
pub fn completed(config: &Value, steps: &[Instruction]) -> Option<Value> {
    let mut records = records(config)?;
    let layers = layer_count(config);
    let levels = steps_down(&records, layers)?;
    if levels.len() != steps.len() || levels.len() >= layers || !history_matches(config, steps) {
        return None;
    }
    for (below_top, level) in levels.iter().enumerate() {
        let made = layers - 1 - below_top;
        for &record in level {
            match layer(&records[record]) {
                Some(listed) if listed != made => return None,
                Some(_) => {}
                None => records[record]["layers"] = json!([{ "layer": made }]),
            }
        }
    }
    let mut completed = config.clone();
    let encoded = base64::engine::general_purpose::STANDARD.encode(Value::Array(records).to_string());
    completed["moby.buildkit.cache.v0"] = Value::String(encoded);
    Some(completed)
}

/// The steps from the image's top layer down to its base image, each as the records that
/// stand for it (the top: those listing the top layer; below: those the step above starts
/// from). `None` when the walk does not end at a source, or a step is partly a source.
fn steps_down(records: &[Value], layers: usize) -> Option<Vec<Vec<usize>>> {
    let top = layers.checked_sub(1)?;
    let mut level: Vec<usize> = (0..records.len()).filter(|&r| layer(&records[r]) == Some(top)).collect();
    let mut levels = Vec::new();
    // A walk longer than the record list would mean a cycle: not a cache BuildKit wrote.
    while !level.is_empty() && levels.len() < records.len() {
        let mut below: Vec<usize> = level.iter().flat_map(|&r| first_inputs(&records[r])).collect();
        below.sort_unstable();
        below.dedup();
        if below.iter().any(|&r| r >= records.len()) {
            return None;
        }
        levels.push(level);
        let sources = below.iter().filter(|&&r| is_source(&records[r])).count();
        match sources {
            0 if !below.is_empty() => level = below,
            _ if sources == below.len() && !below.is_empty() => return Some(levels),
            _ => return None,
        }
    }
    None
}

/// Whether the image's history, read from the top, shows `steps` made its top layers, one
/// each: BuildKit's history names each instruction (`RUN ...`, `COPY ...`), and an
/// instruction that made no layer is marked `empty_layer`.
fn history_matches(config: &Value, steps: &[Instruction]) -> bool {
    let Some(history) = config["history"].as_array() else { return false };
    let made_a_layer = |entry: &Value| entry["empty_layer"].as_bool() != Some(true);
    if history.iter().filter(|entry| made_a_layer(entry)).count() != layer_count(config) {
        return false;
    }
    let instruction = |entry: &Value| {
        let created_by = entry["created_by"].as_str().unwrap_or_default().trim();
        let (keyword, text) = created_by.split_once(char::is_whitespace).unwrap_or((created_by, ""));
        makes_layer(keyword, text).then_some(keyword.to_string())
    };
    let mut built = history.iter().rev().filter_map(|entry| Some((instruction(entry)?, made_a_layer(entry))));
    steps.iter().rev().all(|step| built.next().is_some_and(|(keyword, made)| made && keyword == step.keyword))
}

fn records(config: &Value) -> Option<Vec<Value>> {
    let encoded = config["moby.buildkit.cache.v0"].as_str()?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    match serde_json::from_slice(&decoded).ok()? {
        Value::Array(records) => Some(records),
        _ => None,
    }
}

fn layer_count(config: &Value) -> usize {
    config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len)
}

/// The image layer a record produced: `"layers": [{"layer": N, ...}]`.
fn layer(record: &Value) -> Option<usize> {
    record["layers"][0]["layer"].as_u64().and_then(|index| usize::try_from(index).ok())
}

/// The records the first input links to: `"inputs": [[{"link": N}, ...], ...]`.
fn first_inputs(record: &Value) -> Vec<usize> {
    let links = record["inputs"][0].as_array().map(Vec::as_slice).unwrap_or_default();
    links.iter().filter_map(|link| link["link"].as_u64().and_then(|index| usize::try_from(index).ok())).collect()
}

fn is_source(record: &Value) -> bool {
    record["inputs"].as_array().is_none_or(Vec::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image config with `layers` layers, this inline cache and this history.
    fn config(layers: usize, records: Value) -> Value {
        let encoded = base64::engine::general_purpose::STANDARD.encode(records.to_string());
        json!({
            "rootfs": { "type": "layers", "diff_ids": vec!["sha256:0"; layers] },
            "history": history(),
            "moby.buildkit.cache.v0": encoded,
        })
    }

    /// The backend's history: two base layers (the second from a BuildKit `RUN`), then its own
    /// steps between metadata-only ones.
    fn history() -> Value {
        let entry = |created_by: &str, empty: bool| json!({ "created_by": created_by, "empty_layer": empty });
        json!([
            entry("", false),
            entry("RUN apt-get update # buildkit", false),
            entry("ENV PYTHONUNBUFFERED=1", true),
            entry("RUN groupadd intric # buildkit", false),
            entry("COPY /opt/venv /opt/venv # buildkit", false),
            entry("WORKDIR /app", false),
            entry("COPY intric ./intric # buildkit", false),
            entry("USER intric", true),
        ])
    }

    /// The backend's layer-making instructions, as its Dockerfile lists them.
    fn steps() -> Vec<Instruction> {
        ["RUN", "COPY", "WORKDIR", "COPY"]
            .iter()
            .enumerate()
            .map(|(line, keyword)| Instruction { keyword: keyword.to_string(), text: String::new(), line })
            .collect()
    }

    /// The backend's shape: FROM (2 base layers, reached under two cache keys), then RUN,
    /// COPY --from (a second input from another stage), WORKDIR and COPY, each one layer;
    /// record 0 is the other stage.
    fn backend(with_results: &[usize]) -> Value {
        let result = |layer: usize| {
            if with_results.contains(&layer) { json!([{ "layer": layer }]) } else { json!(null) }
        };
        json!([
            { "digest": "sha256:builder", "inputs": [[{ "link": 1 }]] },
            { "digest": "sha256:from" },
            { "digest": "sha256:run", "inputs": [[{ "link": 1 }, { "link": 6 }]], "layers": result(2) },
            { "digest": "sha256:venv", "inputs": [[{ "link": 2 }], [{ "selector": "sha256:s", "link": 0 }]],
              "layers": result(3) },
            { "digest": "sha256:workdir", "inputs": [[{ "link": 3 }]], "layers": result(4) },
            { "digest": "sha256:copy", "inputs": [[{ "link": 4 }]], "layers": result(5) },
            { "digest": "sha256:from-by-digest" },
        ])
    }

    fn completed_backend(with_results: &[usize]) -> Option<Value> {
        completed(&config(6, backend(with_results)), &steps())
    }

    #[test]
    fn a_cache_with_every_step_of_the_image_is_complete() {
        assert!(is_complete(&config(6, backend(&[2, 3, 4, 5]))));
    }

    #[test]
    fn a_cache_whose_steps_lost_their_layers_is_not() {
        // What an image built from imported cache carries: only its own new layer.
        assert!(!is_complete(&config(6, backend(&[5]))));
        // What a build from nothing carries now and then.
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

    #[test]
    fn the_missing_results_get_the_layers_their_steps_made() {
        for with_results in [&[5][..], &[2, 4, 5], &[3, 5]] {
            let completed = completed_backend(with_results).unwrap_or_else(|| panic!("{with_results:?}"));
            assert!(is_complete(&completed), "{with_results:?}");
            assert_eq!(completed, config(6, backend(&[2, 3, 4, 5])), "each step has its own layer: {with_results:?}");
        }
    }

    #[test]
    fn a_cache_that_does_not_match_the_steps_one_to_one_stays_as_it_is() {
        assert_eq!(completed(&config(6, backend(&[5])), &steps()[1..]), None, "the cache has four steps");
        // A listed result in another place than the position says.
        let mut records = backend(&[5]);
        records[3]["layers"] = json!([{ "layer": 2 }]);
        assert_eq!(completed(&config(6, records), &steps()), None);
        // A step the history shows without a layer of its own (the base then has three).
        let mut config = config(6, backend(&[5]));
        config["history"][5]["empty_layer"] = json!(true);
        config["history"].as_array_mut().unwrap().insert(1, json!({ "created_by": "#(nop) ADD file" }));
        assert_eq!(completed(&config, &steps()), None);
        // Instructions in another order than the history's.
        let mut swapped = steps();
        swapped.swap(0, 1);
        assert_eq!(completed(&self::config(6, backend(&[5])), &swapped), None);
    }
}
