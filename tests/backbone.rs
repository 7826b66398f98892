//! The backbone API (`feature_info`, `forward_intermediates`, `prune_intermediate_layers`,
//! `reset_classifier`) on every family's parity fixture, against the maps the models produce and
//! against timm (tests/fixtures/feature_info.json and the fixtures' intermediates.safetensors,
//! written by scripts/make_feature_info.py).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use tokenmix::models::{
    load_model_dir, model_entry, FeatureFormat, FeatureInfo, Indices, LoadedModel,
};

/// One fixture per family and layout variant, with the checkpoint prefix of its classifier (`|`
/// between the prefixes of a model with several).
const FIXTURES: &[(&str, &str)] = &[
    ("poolformer_s12", "head.fc"),
    ("poolformerv2_s12", "head.fc"),
    ("identityformer_s12", "head.fc"),
    ("randformer_s12", "head.fc"),
    ("convformer_s18", "head.fc"),
    ("caformer_s18", "head.fc"),
    ("caformer_custom", "head.fc"),
    ("mambaformer_s18", "head.fc"),
    ("mambaout_femto", "head.fc"),
    ("mambaout_custom", "head.fc"),
    ("mixer_s16_224", "head"),
    ("mixer_custom", "head"),
    ("gmixer_12_224", "head"),
    ("resmlp_12_224", "head"),
    ("gmlp_s16_224", "head"),
    ("gfnet_ti", "head"),
    ("mambamixer_ti", "head"),
    ("msmlp_tiny", "head"),
    ("msmlp_custom", "head"),
    ("raftmlp_s", "classifier"),
    ("raftmlp_resized", "classifier"),
    ("affnet_et", "classifier.fc"),
    ("rcvit_xs_custom", "head|dist_head"),
    ("wavemix_custom", "head.2"),
    ("wavemix_lite_custom", "head.2"),
    ("iformer_small_custom", "head"),
    ("ffnet_3_custom", "head"),
];

/// Families whose feature maps are per block at the patch stride.
fn is_isotropic(family: &str) -> bool {
    matches!(family, "mlp_mixer" | "gfnet" | "mamba_mixer" | "wave_mix")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

fn load(name: &str) -> (LoadedModel, HashMap<String, Tensor>) {
    let dir = fixture(name);
    let model = load_model_dir(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    (model, reference)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Every map's channels equal `num_chs` and its size the input's divided by `reduction`
/// (rounded up), in both layouts.
fn check_maps(name: &str, info: &[FeatureInfo], x: &Tensor, nchw: &[Tensor], nhwc: &[Tensor]) {
    let (b, _, h, w) = x.dims4().unwrap();
    assert_eq!(
        nchw.len(),
        info.len(),
        "{name}: one map per feature_info entry"
    );
    assert_eq!(nhwc.len(), info.len(), "{name}");
    for (i, (f, (m, t))) in info.iter().zip(nchw.iter().zip(nhwc)).enumerate() {
        let r = f.reduction;
        let want = [b, f.num_chs, h.div_ceil(r), w.div_ceil(r)];
        assert_eq!(m.dims(), want, "{name} map {i} ({f:?}) from {h}x{w}");
        assert_eq!(
            t.dims(),
            [want[0], want[2], want[3], want[1]],
            "{name} NHWC {i}"
        );
        assert_eq!(max_abs_diff(&t.permute((0, 3, 1, 2)).unwrap(), m), 0.0);
    }
}

#[test]
fn feature_info_matches_the_maps_of_every_family() {
    for &(name, _) in FIXTURES {
        let (model, reference) = load(name);
        let x = &reference["input"];
        let info = model.model.feature_info();
        assert_eq!(
            info,
            model.config.feature_info(),
            "{name}: model and config agree"
        );
        let all = &Indices::All;
        let nchw = model
            .model
            .forward_intermediates(x, all, false, FeatureFormat::Nchw)
            .unwrap();
        let nhwc = model
            .model
            .forward_intermediates(x, all, false, FeatureFormat::Nhwc)
            .unwrap();
        check_maps(name, &info, x, &nchw, &nhwc);

        let features = model.forward_features(x).unwrap();
        let family = model.config.family();
        if is_isotropic(family) {
            // One map, the last block's normed, at the stride of every block.
            let normed = model
                .model
                .forward_intermediates(x, &Indices::Last(1), true, FeatureFormat::Nchw)
                .unwrap();
            assert_eq!(features.len(), 1, "{name}");
            assert!(max_abs_diff(&features[0], &normed[0]) < 1e-5, "{name}");
            // WaveMix's blocks are `layers.{i}` in its checkpoints.
            let prefix = if family == "wave_mix" {
                "layers."
            } else {
                "blocks."
            };
            assert!(info.iter().all(|f| f.module.starts_with(prefix)), "{name}");
        } else {
            // The stages' maps, exactly.
            assert_eq!(features.len(), nchw.len(), "{name}");
            for (i, (f, m)) in features.iter().zip(&nchw).enumerate() {
                assert_eq!(max_abs_diff(f, m), 0.0, "{name} stage {i}");
            }
        }
    }
}

#[test]
fn feature_info_matches_timm() {
    let text = std::fs::read_to_string(fixture("feature_info.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let models = json["models"].as_object().unwrap();
    assert!(models.len() >= 37, "{} timm models", models.len());
    for (name, want) in models {
        let want: Vec<FeatureInfo> = serde_json::from_value(want.clone()).unwrap();
        let got = model_entry(name).unwrap().config().feature_info();
        assert_eq!(got, want, "{name} (timm {})", json["provenance"]["timm"]);
    }
}

#[test]
fn forward_intermediates_match_timm() {
    let load_ref = |name: &str| {
        let path = fixture(name).join("intermediates.safetensors");
        candle_core::safetensors::load(path, &Device::Cpu).unwrap()
    };
    // MetaFormer: a list (in any order) and a count, channel-first and channel-last.
    let (model, reference) = load("caformer_s18");
    let want = load_ref("caformer_s18");
    let x = &reference["input"];
    let m = &model.model;
    let take = m
        .forward_intermediates(x, &Indices::List(vec![2, 0]), false, FeatureFormat::Nchw)
        .unwrap();
    let last2 = m
        .forward_intermediates(x, &Indices::Last(2), true, FeatureFormat::Nhwc)
        .unwrap();
    let cases = [
        (&take[0], "take.0"),
        (&take[1], "take.2"),
        (&last2[0].permute((0, 3, 1, 2)).unwrap(), "last2.2"),
        (&last2[1].permute((0, 3, 1, 2)).unwrap(), "last2.3"),
    ];
    for (got, key) in cases {
        let err = max_abs_diff(got, &want[key]);
        assert!(err < 1e-4, "caformer_s18 {key}: {err}");
    }

    // MLP-Mixer: every block, without and with the final norm.
    let (model, reference) = load("mixer_s16_224");
    let want = load_ref("mixer_s16_224");
    let x = &reference["input"];
    for (norm, prefix) in [(false, "raw"), (true, "norm")] {
        let maps = model
            .model
            .forward_intermediates(x, &Indices::All, norm, FeatureFormat::Nchw)
            .unwrap();
        assert_eq!(maps.len(), 2);
        for (i, got) in maps.iter().enumerate() {
            let err = max_abs_diff(got, &want[&format!("{prefix}.{i}")]);
            assert!(err < 1e-4, "mixer_s16_224 {prefix}.{i}: {err}");
        }
    }
}

#[test]
fn bad_indices_are_errors_naming_the_range() {
    let (mut model, reference) = load("caformer_s18");
    let x = &reference["input"];
    let fmt = FeatureFormat::Nchw;
    let err = |r: candle_core::Result<Vec<Tensor>>| r.unwrap_err().to_string();
    let msg = err(model
        .model
        .forward_intermediates(x, &Indices::List(vec![4]), false, fmt));
    assert!(
        msg.contains("feature index 4 is out of range (-4 to 3)"),
        "{msg}"
    );
    let msg = err(model
        .model
        .forward_intermediates(x, &Indices::Last(5), false, fmt));
    assert!(msg.contains("last-n (5) is out of range (1 to 4)"), "{msg}");
    let msg = err(model
        .model
        .forward_intermediates_t(x, &[3, 1], false, false));
    assert!(msg.contains("ascending"), "{msg}");
    let msg = model
        .model
        .prune_intermediate_layers(&Indices::List(vec![-5]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("out of range (-4 to 3)"), "{msg}");
    assert_eq!(
        model.model.feature_info().len(),
        4,
        "a failed prune changes nothing"
    );
    // Negative indices count from the end.
    let maps = model
        .model
        .forward_intermediates(x, &Indices::List(vec![-1]), false, fmt)
        .unwrap();
    assert_eq!(maps[0].dims(), [2, 64, 1, 2]);
}

#[test]
fn pruning_keeps_the_wanted_maps_and_drops_the_head() {
    for &(name, _) in FIXTURES {
        let (full, reference) = load(name);
        let (mut model, _) = load(name);
        let x = &reference["input"];
        let n = full.model.feature_info().len();
        let keep = if n > 1 { 1 } else { 0 };
        let taken = model
            .model
            .prune_intermediate_layers(&Indices::List(vec![keep as i64, 0]))
            .unwrap();
        assert_eq!(taken, (0..=keep).collect::<Vec<_>>(), "{name}");
        let info = model.model.feature_info();
        assert_eq!(info, full.model.feature_info()[..=keep], "{name}");
        assert_eq!(model.model.num_classes(), 0, "{name}");
        let all = &Indices::All;
        let fmt = FeatureFormat::Nchw;
        let want = full
            .model
            .forward_intermediates(x, &Indices::Last(n), false, fmt)
            .unwrap();
        let got = model
            .model
            .forward_intermediates(x, all, false, fmt)
            .unwrap();
        assert_eq!(got.len(), keep + 1, "{name}");
        for (i, g) in got.iter().enumerate() {
            assert!(max_abs_diff(g, &want[i]) < 1e-5, "{name} map {i}");
        }
        // The head is gone: forward returns the pooled last kept map.
        let pooled = model.model.forward(x).unwrap();
        assert_eq!(
            pooled.dims(),
            [x.dim(0).unwrap(), info[keep].num_chs],
            "{name}"
        );
        let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
        let reset = model.model.reset_classifier(3, vb);
        if is_isotropic(full.config.family()) {
            reset.unwrap();
            assert_eq!(model.model.forward(x).unwrap().dims()[1], 3, "{name}");
        } else {
            let msg = reset.unwrap_err().to_string();
            assert!(msg.contains("removed this model's head"), "{name}: {msg}");
        }
    }
}

#[test]
fn reset_classifier_builds_a_new_head_under_checkpoint_names() {
    for &(name, prefix) in FIXTURES {
        let (mut model, reference) = load(name);
        let x = &reference["input"];
        let before = model.model.forward_features(x).unwrap();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        model.model.reset_classifier(7, vb).unwrap();
        assert_eq!(model.model.num_classes(), 7, "{name}");
        assert_eq!(
            model.model.forward(x).unwrap().dims(),
            [x.dim(0).unwrap(), 7]
        );
        let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        assert!(!names.is_empty(), "{name}");
        for n in &names {
            assert!(
                prefix.split('|').any(|p| n.starts_with(&format!("{p}."))),
                "{name}: new tensor {n}"
            );
        }
        // The backbone is untouched.
        let after = model.model.forward_features(x).unwrap();
        assert_eq!(max_abs_diff(&after[0], &before[0]), 0.0, "{name}");
        // No classifier: the head's pre-logits.
        let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
        model.model.reset_classifier(0, vb).unwrap();
        let pre = model.model.forward(x).unwrap();
        assert_eq!(pre.rank(), 2, "{name}");
        assert_eq!(model.model.num_classes(), 0, "{name}");
    }
}

#[test]
fn info_prints_the_feature_info() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmix"))
        .args(["info", "mixer_s16_224"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("features:       8 maps")
            && stdout.contains("blocks.7: 512 channels, stride 16"),
        "{stdout}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmix"))
        .args(["info", "caformer_s18"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("stages.0: 64 channels, stride 4")
            && stdout.contains("stages.3: 512 channels, stride 32"),
        "{stdout}"
    );
}
