//! Sequence models against their references: each fixture is a directory the reference's
//! `save_pretrained` wrote (config.json + model.safetensors, random weights) with the
//! reference's output for a batch-2 series (scripts/make_sequence_fixtures.py), plus the
//! loading errors a bad directory or input gets.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tokenmix::models::sequence::{
    load_sequence_dir, random_sequence_model, sequence_entry, sequence_models,
    sequence_param_count, SequenceConfig, SequenceTask,
};
use tokenmix::models::Error;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sequence")
        .join(name)
}

fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
    let norm = b.sqr().unwrap().sum_all().unwrap();
    (diff.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap()).sqrt()
}

/// Loads fixture `name` and checks its forecast against the reference's.
fn check(name: &str) {
    let dev = Device::Cpu;
    let dir = fixture(name);
    let loaded = load_sequence_dir(&dir, &dev).unwrap_or_else(|e| panic!("{name}: {e}"));
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &dev).unwrap();
    let y = loaded.forward(&reference["input"]).unwrap();
    let expected = &reference["output"];
    assert_eq!(y.dims(), expected.dims(), "{name}");
    let err = rel_l2(&y, expected);
    eprintln!("{name}: relative L2 {err:e}");
    assert!(err <= 1e-4, "{name}: relative L2 error {err:e}");
}

#[test]
fn patchtsmixer_common_channel_matches_transformers() {
    check("patchtsmixer_common");
}

#[test]
fn patchtsmixer_mix_channel_self_attention_matches_transformers() {
    check("patchtsmixer_mix");
}

#[test]
fn patchtsmixer_without_gates_or_scaling_matches_transformers() {
    check("patchtsmixer_plain");
}

#[test]
fn ttm_adaptive_patching_and_decoder_match_granite_tsfm() {
    check("ttm_r1_small");
}

#[test]
fn ttm_channel_mixing_filtered_horizon_and_picked_channels_match_granite_tsfm() {
    check("ttm_mix");
}

#[test]
fn ttm_single_patch_without_decoder_matches_granite_tsfm() {
    check("ttm_single_patch");
}

#[test]
fn ttm_options_tokenmix_lacks_are_refused_by_name() {
    for (key, value) in [
        ("resolution_prefix_tuning", serde_json::json!(true)),
        ("enable_forecast_channel_mixing", serde_json::json!(true)),
        ("register_tokens", serde_json::json!(2)),
        ("gate_mode", serde_json::json!("glu")),
        ("exogenous_channel_indices", serde_json::json!([1])),
    ] {
        let dir = edited_dir("ttm_r1_small", |c| {
            c.insert(key.into(), value.clone());
        });
        let msg = load_error(dir.path());
        assert!(msg.contains(key), "{key}: {msg}");
    }
    let patches = edited_dir("ttm_r1_small", |c| {
        c.insert("num_patches".into(), 9.into());
    });
    assert!(load_error(patches.path()).contains("num_patches"));
}

fn config_with(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> String {
    let text = std::fs::read_to_string(fixture(name).join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(json.as_object_mut().unwrap());
    serde_json::to_string(&json).unwrap()
}

/// A copy of fixture `name` with its config edited, in a temporary directory.
fn edited_dir(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config_with(name, edit)).unwrap();
    std::fs::copy(
        fixture(name).join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    load_sequence_dir(dir, &Device::Cpu)
        .unwrap_err()
        .to_string()
}

#[test]
fn unimplemented_options_and_heads_are_refused_by_name() {
    let nll = edited_dir("patchtsmixer_common", |c| {
        c.insert("loss".into(), "nll".into());
    });
    assert!(
        load_error(nll.path()).contains("distribution head"),
        "{}",
        load_error(nll.path())
    );
    let pretrain = edited_dir("patchtsmixer_common", |c| {
        c.insert(
            "architectures".into(),
            serde_json::json!(["PatchTSMixerForPretraining"]),
        );
    });
    assert!(load_error(pretrain.path()).contains("PatchTSMixerForPretraining"));
    let unknown = edited_dir("patchtsmixer_common", |c| {
        c.insert("model_type".into(), "llama".into());
    });
    let msg = load_error(unknown.path());
    assert!(
        msg.contains("\"llama\"") && msg.contains("patchtsmixer"),
        "{msg}"
    );
    let mode = edited_dir("patchtsmixer_common", |c| {
        c.insert("mode".into(), "flatten".into());
    });
    assert!(load_error(mode.path()).contains("mode"));
}

#[test]
fn a_config_that_does_not_fit_the_weights_names_the_tensors() {
    let wider = edited_dir("patchtsmixer_common", |c| {
        c.insert("d_model".into(), 11.into());
    });
    let msg = load_error(wider.path());
    assert!(
        msg.contains("wrong shape") && msg.contains("model.encoder.patcher.weight"),
        "{msg}"
    );
    let mixed = edited_dir("patchtsmixer_common", |c| {
        c.insert("mode".into(), "mix_channel".into());
    });
    let msg = load_error(mixed.path());
    assert!(
        msg.contains("missing") && msg.contains("channel_feature_mixer"),
        "{msg}"
    );
}

#[test]
fn absurd_sizes_are_refused_before_anything_is_allocated() {
    let huge = edited_dir("patchtsmixer_common", |c| {
        c.insert("d_model".into(), 16384.into());
        c.insert("num_layers".into(), 1024.into());
        c.insert("context_length".into(), 1_000_000.into());
        c.insert("patch_length".into(), 16.into());
        c.insert("patch_stride".into(), 16.into());
    });
    let msg = load_error(huge.path());
    assert!(msg.contains("parameters"), "{msg}");
    let zero = edited_dir("patchtsmixer_common", |c| {
        c.insert("patch_stride".into(), 0.into());
    });
    assert!(load_error(zero.path()).contains("patch_stride"));
    let short = edited_dir("patchtsmixer_common", |c| {
        c.insert("context_length".into(), 6.into());
    });
    assert!(load_error(short.path()).contains("context_length"));
}

#[test]
fn truncated_or_non_finite_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("patchtsmixer_common");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    assert!(load_error(dir.path()).contains("safetensors"));

    let dev = Device::Cpu;
    let mut tensors = candle_core::safetensors::load(src.join("model.safetensors"), &dev).unwrap();
    let w = &tensors["head.base_forecast_block.bias"];
    let nan = (w.ones_like().unwrap() * f64::NAN).unwrap();
    tensors.insert("head.base_forecast_block.bias".into(), nan);
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let msg = load_error(dir.path());
    assert!(
        msg.contains("NaN") && msg.contains("head.base_forecast_block.bias"),
        "{msg}"
    );
}

#[test]
fn wrong_input_shapes_are_refused_naming_the_expected_shape() {
    let loaded = load_sequence_dir(&fixture("patchtsmixer_common"), &Device::Cpu).unwrap();
    let x = Tensor::zeros((2, 36, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = loaded.forward(&x).unwrap_err();
    assert!(matches!(err, Error::Input(_)), "{err}");
    assert!(err.to_string().contains("(batch, 37, channels)"), "{err}");
    // Channel-independent weights take any number of channels; mixing ones only theirs.
    let x = Tensor::randn(0f32, 1.0, (1, 37, 6), &Device::Cpu).unwrap();
    assert_eq!(loaded.forward(&x).unwrap().dims(), &[1, 5, 6]);
    let mixing = load_sequence_dir(&fixture("patchtsmixer_mix"), &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 41, 4), &Device::Cpu).unwrap();
    let err = mixing.forward(&x).unwrap_err();
    assert!(err.to_string().contains("(batch, 41, 5)"), "{err}");
}

#[test]
fn a_saved_model_reloads_with_the_same_forecast() {
    let dev = Device::Cpu;
    let loaded = load_sequence_dir(&fixture("patchtsmixer_mix"), &dev).unwrap();
    let tensors =
        candle_core::safetensors::load(fixture("patchtsmixer_mix").join("model.safetensors"), &dev)
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    tokenmix::models::sequence::save_sequence_dir(dir.path(), &loaded.config, &tensors).unwrap();
    let again = load_sequence_dir(dir.path(), &dev).unwrap();
    let reference = candle_core::safetensors::load(
        fixture("patchtsmixer_mix").join("reference.safetensors"),
        &dev,
    )
    .unwrap();
    let a = loaded.forward(&reference["input"]).unwrap();
    let b = again.forward(&reference["input"]).unwrap();
    assert_eq!(rel_l2(&a, &b), 0.0);
}

#[test]
fn every_zoo_sequence_model_builds_and_counts_its_parameters() {
    let dev = Device::Cpu;
    let counts: Vec<(&str, u64)> = sequence_models()
        .map(|e| (e.name, sequence_param_count(&(e.config)()).unwrap()))
        .collect();
    // PatchTSMixer at 512 -> 96 with d_model 16 and 8 layers, as transformers counts it.
    // TTM: the counts IBM's benchmarking notebooks print for the hub models.
    for (name, params) in [
        ("granite-timeseries-ttm-r1", 805_280),
        ("granite-timeseries-ttm-r1@1024_96_v1", 946_336),
        ("granite-timeseries-ttm-r2", 805_280),
        ("granite-timeseries-ttm-r2@1024-96-r2", 2_964_960),
        ("granite-timeseries-ttm-r2@1536-96-r2", 3_081_120),
    ] {
        assert!(counts.contains(&(name, params)), "{name}: {counts:?}");
    }
    assert!(
        counts.contains(&("granite-timeseries-patchtsmixer", 275_696)),
        "{counts:?}"
    );
    for entry in sequence_models() {
        let cfg: SequenceConfig = (entry.config)();
        let model = random_sequence_model(&cfg, &dev).unwrap();
        if let SequenceTask::Forecast {
            context_length,
            prediction_length,
            num_input_channels,
            num_output_channels,
            ..
        } = cfg.task()
        {
            let channels = num_input_channels.unwrap_or(3);
            let x = Tensor::randn(0f32, 1.0, (2, context_length, channels), &dev).unwrap();
            let y = model.forward(&x).unwrap();
            let out = num_output_channels.unwrap_or(channels);
            assert_eq!(y.dims(), &[2, prediction_length, out], "{}", entry.name);
        }
    }
    assert!(sequence_entry("no-such-model")
        .unwrap_err()
        .to_string()
        .contains("granite"));
}

#[test]
fn the_hub_config_of_ttm_r1_reads_as_the_zoo_entry() {
    // The key/values of ibm-granite/granite-timeseries-ttm-r1's config.json (revision main),
    // as transcribed in tests/fixtures/sequence/hub_configs/.
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sequence/hub_configs/granite-timeseries-ttm-r1.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cfg = SequenceConfig::from_hf_json(&json, "ttm-r1").unwrap();
    assert_eq!(sequence_param_count(&cfg).unwrap(), 805_280);
    let zoo = (sequence_entry("granite-timeseries-ttm-r1").unwrap().config)();
    assert_eq!(cfg.to_hf_config(), zoo.to_hf_config());
    let dev = Device::Cpu;
    let model = random_sequence_model(&cfg, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 512, 7), &dev).unwrap();
    assert_eq!(model.forward(&x).unwrap().dims(), &[1, 96, 7]);
}
