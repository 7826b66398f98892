//! Fuzzes config.json + model.safetensors loading and, when loading succeeds, one forward pass.
//!
//! Input layout: byte 0 even -> the config of the poolformer_s12 fixture and the remaining bytes
//! as the checkpoint; byte 0 odd -> byte 1 gives the config length in 4-byte units, then the
//! config text, then the checkpoint.
#![no_main]

use candle_core::{Device, Tensor};
use libfuzzer_sys::fuzz_target;

const FIXTURE_CONFIG: &str = include_str!("../../tests/fixtures/poolformer_s12/config.json");

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (config, weights) = if mode % 2 == 0 {
        (FIXTURE_CONFIG.to_string(), rest)
    } else {
        let Some((&len, rest)) = rest.split_first() else { return };
        let len = (len as usize * 4).min(rest.len());
        (String::from_utf8_lossy(&rest[..len]).into_owned(), &rest[len..])
    };
    let device = Device::Cpu;
    if let Ok(model) = tokenmix_models::load_from_bytes(&config, weights, &device) {
        let chans = model.model.in_chans();
        if let Ok(x) = Tensor::zeros((1, chans, 32, 48), candle_core::DType::F32, &device) {
            let _ = model.forward(&x);
        }
    }
});
