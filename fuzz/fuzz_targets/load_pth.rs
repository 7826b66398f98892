//! Fuzzes reading PyTorch `torch.save` checkpoints: the zip archive, the pickle, the state
//! dict and every tensor's view of its storage; when a state dict is read, loading it as the
//! CAS-ViT fixture model (strict tensor checks) and one forward pass.
#![no_main]

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use libfuzzer_sys::fuzz_target;
use tokenmix_models::pth::{read_state_dict, to_safetensors};

const CONFIG: &str = include_str!("../../tests/fixtures/rcvit_xs_custom/config.json");

fuzz_target!(|data: &[u8]| {
    let Ok(tensors) = read_state_dict(data, Path::new("fuzz.pth"), None) else {
        return;
    };
    let _ = to_safetensors(&tensors);
    let device = Device::Cpu;
    if let Ok(model) = tokenmix_models::load_from_bytes(CONFIG, data, &device) {
        if let Ok(x) = Tensor::zeros((1, 3, 32, 48), DType::F32, &device) {
            let _ = model.forward(&x);
        }
    }
});
