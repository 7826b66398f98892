//! Mixer-level parity with the authors' modules: each tests/fixtures/mixers/<kind>.safetensors
//! (written by scripts/make_wave2_fixtures.py, provenance in its metadata) holds a reference
//! mixer's randomly drawn state dict, an input batch and the reference output.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenmix::mixers::{MixerConfig, MixerLayout};

/// Builds the registered default of mixer `kind` from its fixture's weights and checks its
/// output against the reference's (relative L2 and max abs, 1e-4).
fn check(kind: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mixers")
        .join(format!("{kind}.safetensors"));
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let input = tensors.remove("input").unwrap();
    let want = tensors.remove("output").unwrap();
    let dim = input.dim(1).unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let mixer = MixerConfig::default_of(kind)
        .unwrap()
        .build(dim, vb)
        .unwrap();
    // The fixtures are channel-first, as PyTorch runs them.
    let got = match mixer.layout() {
        MixerLayout::ChannelsLast => {
            let x = input.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
            let y = mixer.forward(&x).unwrap();
            y.permute((0, 3, 1, 2)).unwrap()
        }
        _ => mixer.forward(&input).unwrap(),
    };
    assert_eq!(got.dims(), want.dims());
    let diff = (&got - &want).unwrap();
    let scalar = |t: Tensor| -> f32 { t.to_scalar().unwrap() };
    let rel = scalar(diff.sqr().unwrap().sum_all().unwrap()).sqrt()
        / scalar(want.sqr().unwrap().sum_all().unwrap()).sqrt();
    let max = scalar(diff.abs().unwrap().max_all().unwrap());
    let size = scalar(want.abs().unwrap().max_all().unwrap());
    assert!(
        rel <= 1e-4 && max <= 1e-4 * size.max(1.0),
        "{kind}: rel L2 {rel:e}, max {max:e}"
    );
}

#[test]
fn additive_token_mixer_matches_cas_vit() {
    check("additive_token_mixer");
}

#[test]
fn wave_block_matches_wavemix() {
    check("wave_block");
}

#[test]
fn inception_mixer_matches_iformer() {
    check("inception_mixer");
}

#[test]
fn ffn_token_mixer_matches_ffnet() {
    check("ffn_token_mixer");
}

#[test]
fn hsm_ssd_matches_efficientvim() {
    check("hsm_ssd");
}
