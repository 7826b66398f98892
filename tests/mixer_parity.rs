//! Mixer-level parity with the authors' modules: each tests/fixtures/mixers/<kind>.safetensors
//! (written by scripts/make_wave2_fixtures.py, provenance in its metadata) holds a reference
//! mixer's randomly drawn state dict, an input batch and the reference output.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenmix::mixers::{MixerConfig, MixerLayout};

/// The fixture `name`'s state dict as a var builder, its input and the reference output.
fn load(name: &str) -> (VarBuilder<'static>, Tensor, Tensor) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mixers")
        .join(format!("{name}.safetensors"));
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let input = tensors.remove("input").unwrap();
    let want = tensors.remove("output").unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    (vb, input, want)
}

/// Builds the registered default of mixer `kind` from its fixture's weights and checks its
/// output against the reference's (relative L2 and max abs, 1e-4).
fn check(kind: &str) {
    let (vb, input, want) = load(kind);
    let dim = input.dim(1).unwrap();
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
    compare(kind, &got, &want);
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

/// Builds the mixer `cfg` from the token fixture `name` (input `(B, N, C)`) and checks its
/// output against the reference's (relative L2 and max abs, 1e-4).
fn check_tokens(name: &str, cfg: MixerConfig) {
    let (vb, input, want) = load(name);
    let mixer = cfg.build(input.dim(2).unwrap(), vb).unwrap();
    assert_eq!(mixer.layout(), MixerLayout::Tokens);
    compare(name, &mixer.forward(&input).unwrap(), &want);
    // A non-contiguous view of the same tokens gives the same output.
    let strided = input
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    compare(name, &mixer.forward(&strided).unwrap(), &want);
}

fn compare(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims());
    let diff = (got - want).unwrap();
    let scalar = |t: Tensor| -> f32 { t.to_scalar().unwrap() };
    let rel = scalar(diff.sqr().unwrap().sum_all().unwrap()).sqrt()
        / scalar(want.sqr().unwrap().sum_all().unwrap()).sqrt();
    let max = scalar(diff.abs().unwrap().max_all().unwrap());
    let size = scalar(want.abs().unwrap().max_all().unwrap());
    assert!(
        rel <= 1e-4 && max <= 1e-4 * size.max(1.0),
        "{name}: rel L2 {rel:e}, max {max:e}"
    );
}

fn mixer_from_json(json: &str) -> MixerConfig {
    MixerConfig::from_json(&serde_json::from_str(json).unwrap()).unwrap()
}

#[test]
fn mixer_gating_unit_matches_ninformer() {
    check_tokens(
        "mixer_gating_unit",
        mixer_from_json(
            r#"{"type": "mixer_gating_unit", "seq_len": 35, "token_dim": 20, "channel_dim": 28}"#,
        ),
    );
}

#[test]
fn linear_attention_matches_linfusion() {
    check_tokens(
        "linear_attention",
        mixer_from_json(r#"{"type": "linear_attention", "dim_head": 8}"#),
    );
    check_tokens(
        "linear_attention_mid16_bias",
        mixer_from_json(
            r#"{"type": "linear_attention", "dim_head": 12, "heads": 2, "bias": true,
                "projection_mid_dim": 16}"#,
        ),
    );
}

/// Builds the mixer `cfg` from the channel-first fixture `name` (input `(B, C, H, W)`) and checks
/// its output against the reference's.
fn check_map(name: &str, cfg: MixerConfig) {
    let (vb, input, want) = load(name);
    let mixer = cfg.build(input.dim(1).unwrap(), vb).unwrap();
    assert_eq!(mixer.layout(), MixerLayout::ChannelsLast);
    let x = input.permute((0, 2, 3, 1)).unwrap();
    let y = mixer.forward(&x).unwrap().permute((0, 3, 1, 2)).unwrap();
    compare(name, &y, &want);
}

/// Hydra from goombalab/hydra on state-spaces/mamba's reference scan: one group, and two groups
/// of heads with a 5-wide convolution.
#[test]
fn hydra_matches_goombalab() {
    check_tokens(
        "hydra",
        mixer_from_json(
            r#"{"type": "hydra", "d_state": 8, "d_conv": 7, "expand": 2, "headdim": 8, "ngroups": 1}"#,
        ),
    );
    check_tokens(
        "hydra_g2_conv5",
        mixer_from_json(
            r#"{"type": "hydra", "d_state": 6, "d_conv": 5, "expand": 2, "headdim": 12, "ngroups": 2}"#,
        ),
    );
}

/// tokenmix's reading of the Dynamic Spectrum Mixer against the same equations in PyTorch.
#[test]
fn dynamic_spectrum_matches_its_reading() {
    check_map(
        "dynamic_spectrum",
        mixer_from_json(
            r#"{"type": "dynamic_spectrum", "size": [7, 10], "expansion_ratio": 2.0, "num_filters": 4, "reweight_ratio": 0.25}"#,
        ),
    );
}

/// tokenmix's reading of S2AFormer's strip self-attention against the same equations in PyTorch.
#[test]
fn strip_attention_matches_its_reading() {
    check_map(
        "strip_attention",
        mixer_from_json(
            r#"{"type": "strip_attention", "num_heads": 2, "sr_ratio": 2, "qk_ratio": 0.5}"#,
        ),
    );
}
