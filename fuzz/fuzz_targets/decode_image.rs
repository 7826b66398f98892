//! Fuzzes image decoding and timm-style preprocessing.
#![no_main]

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use tokenmix_models::preprocess::{decode_image, preprocess};
use tokenmix_models::PretrainedCfg;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = decode_image(data) {
        let _ = preprocess(&img, &PretrainedCfg::default(), &Device::Cpu);
    }
});
