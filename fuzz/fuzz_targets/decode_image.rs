//! Fuzzes image decoding and timm-style preprocessing.
//!
//! Preprocessing runs to a small non-square input with one of the four resize filters, chosen by
//! the input's length: the resize, crop and normalisation code is the same at any output size,
//! and a small one keeps each execution cheap enough for millions of runs.
#![no_main]

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use tokenmix_models::preprocess::{decode_image, preprocess};
use tokenmix_models::PretrainedCfg;

const FILTERS: [&str; 4] = ["bicubic", "bilinear", "nearest", "lanczos"];

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = decode_image(data) {
        let cfg = PretrainedCfg {
            input_size: vec![3, 20, 28],
            interpolation: FILTERS[data.len() % FILTERS.len()].into(),
            crop_pct: if data.len() % 3 == 0 { 1.0 } else { 0.875 },
            ..PretrainedCfg::default()
        };
        let _ = preprocess(&img, &cfg, &Device::Cpu);
    }
});
