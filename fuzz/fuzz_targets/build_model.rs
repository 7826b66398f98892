//! Fuzzes `config.json` -> model build, across every family.
//!
//! The input is the text of a `config.json`. It goes through `load_from_bytes` with a
//! checkpoint holding no tensors (parsing, architecture resolution, `model_args`, the tensor
//! list and the size limit, all of which must fail cleanly). When the config resolves to a model
//! of at most `MAX_PARAMS` parameters, a checkpoint with exactly the tensors
//! `checkpoint::expected_tensors` lists (all zeros) is written; loading it through
//! `load_from_bytes` must then succeed, and one forward pass runs on a small input.
#![no_main]

use candle_core::{DType, Device, Tensor};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokenmix_models::checkpoint::expected_tensors;
use tokenmix_models::loader::resolve_arch;
use tokenmix_models::{load_from_bytes, model_entry, PretrainedCfg};

/// Largest model the target builds with real (zero) weights.
const MAX_PARAMS: u64 = 200_000;
/// Largest input (pixels) the forward pass runs on.
const MAX_PIXELS: usize = 64 * 64;
/// A safetensors file with no tensors: an 8-byte header length, then `{}`.
const EMPTY: &[u8] = b"\x02\x00\x00\x00\x00\x00\x00\x00{}";

/// The fields the loader reads from `config.json` (loader.rs `HubConfig`), so that the same
/// texts resolve here as there.
#[derive(Deserialize)]
#[allow(dead_code)]
struct HubConfig {
    architecture: String,
    num_classes: Option<usize>,
    #[serde(default)]
    model_args: Map<String, Value>,
    pretrained_cfg: Option<PretrainedCfg>,
    label_names: Option<Vec<String>>,
}

/// A safetensors file of zero-filled f32 tensors with the given names and shapes.
fn zero_checkpoint(specs: &[(String, Vec<usize>)]) -> Vec<u8> {
    let mut header = Map::new();
    let mut offset = 0usize;
    for (name, shape) in specs {
        let len = 4 * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = Value::Object(header).to_string().into_bytes();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.resize(out.len() + offset, 0);
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let device = Device::Cpu;
    let _ = load_from_bytes(text, EMPTY, &device);

    let Ok(hub) = serde_json::from_str::<HubConfig>(text) else {
        return;
    };
    let Ok(entry) = model_entry(&hub.architecture) else {
        return;
    };
    let Ok(cfg) = resolve_arch(
        entry,
        hub.pretrained_cfg.as_ref(),
        hub.num_classes,
        &hub.model_args,
    ) else {
        return;
    };
    let Ok(specs) = expected_tensors(&cfg) else {
        return;
    };
    let params = specs
        .iter()
        .map(|(_, s)| s.iter().map(|&d| d as u64).fold(1u64, u64::saturating_mul))
        .fold(0u64, u64::saturating_add);
    if params > MAX_PARAMS {
        return;
    }
    let weights = zero_checkpoint(&specs);
    let model = match load_from_bytes(text, &weights, &device) {
        Ok(model) => model,
        Err(e) => panic!("a checkpoint with exactly the expected tensors was refused: {e}"),
    };
    let (h, w) = match model.config.fixed_image_size() {
        Some(size) => size,
        None => (32, 48),
    };
    if h.checked_mul(w).map_or(true, |pixels| pixels > MAX_PIXELS) {
        return;
    }
    let chans = model.model.in_chans();
    if let Ok(x) = Tensor::zeros((1, chans, h, w), DType::F32, &device) {
        let out = model.forward(&x);
        // `TOKENMIX_FUZZ_TRACE=1 .../build_model corpus/build_model -runs=0` lists which corpus
        // entries reach the forward pass, and of which family.
        if std::env::var_os("TOKENMIX_FUZZ_TRACE").is_some() {
            eprintln!("forward {} {h}x{w}: {}", model.name, if out.is_ok() { "ok" } else { "error" });
        }
    }
});
