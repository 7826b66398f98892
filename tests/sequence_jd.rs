//! JDPatchTST against the JustDense reference code and TSM2 against the PyTorch module of
//! tokenmix's reading (fixtures from scripts/make_jd_fixtures.py: the module's state dict as
//! model.safetensors, the config with Time-Series-Library's argument names, the forecast for a
//! batch-2 series), the errors bad configs and inputs get, and JustDense's dense mixer against
//! a plain per-head composition, values and gradients.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use tokenmix::models::sequence::justdense::JdPatchTstConfig;
use tokenmix::models::sequence::{
    load_sequence_dir, sequence_entry, sequence_param_count, SequenceConfig,
};
use tokenmix::models::Error;
use tokenmix_mixers::dense::Dense;
use tokenmix_mixers::TokenMixer;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sequence")
        .join(name)
}

fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
    let norm = b.sqr().unwrap().sum_all().unwrap();
    let (diff, norm) = (
        diff.to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap(),
        norm.to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap(),
    );
    (diff / norm).sqrt()
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
fn jd_patchtst_matches_the_justdense_reference() {
    check("jd_patchtst");
}

#[test]
fn jd_patchtst_with_the_head_dim_quirk_and_relu_matches_the_reference() {
    check("jd_patchtst_heads");
}

#[test]
fn tsm2_matches_the_pytorch_module_of_the_reading() {
    check("tsm2");
}

#[test]
fn wrong_input_shapes_are_refused_naming_the_expected_shape() {
    for (name, len) in [("jd_patchtst", 45), ("tsm2", 41)] {
        let loaded = load_sequence_dir(&fixture(name), &Device::Cpu).unwrap();
        for shape in [
            vec![2, len - 1, 3],
            vec![2, len + 1, 3],
            vec![len, 3],
            vec![0, len, 3],
        ] {
            let x = Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap();
            let err = loaded.forward(&x).unwrap_err();
            assert!(matches!(err, Error::Input(_)), "{name} {shape:?}: {err}");
            let want = format!("(batch, {len}, channels)");
            assert!(err.to_string().contains(&want), "{name}: {err}");
            if shape.len() == 3 && shape[0] > 0 {
                assert!(loaded.model.forward(&x).is_err(), "{name} {shape:?}");
            }
        }
        // No weight depends on the channel count: a 5-channel series runs.
        let x = Tensor::randn(0f32, 1.0, (2, len, 5), &Device::Cpu).unwrap();
        let y = loaded.forward(&x).unwrap();
        assert_eq!(y.dims()[2], 5, "{name}");
    }
}

fn config_error(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
    let text = std::fs::read_to_string(fixture("jd_patchtst").join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(json.as_object_mut().unwrap());
    SequenceConfig::from_hf_json(&json, "config.json")
        .unwrap_err()
        .to_string()
}

#[test]
fn unimplemented_tasks_and_options_are_refused_by_name() {
    let msg = config_error(|c| {
        c.insert("task_name".into(), "imputation".into());
    });
    assert!(msg.contains("imputation"), "{msg}");
    let msg = config_error(|c| {
        c.insert("activation".into(), "silu".into());
    });
    assert!(msg.contains("activation"), "{msg}");
    // head_dim 3 does not divide d_model 10: the reference's wrapper asserts.
    let msg = config_error(|c| {
        c.insert("d_model".into(), 10.into());
        c.insert("n_heads".into(), 3.into());
    });
    assert!(msg.contains("multiple of d_model / n_heads"), "{msg}");
    let msg = config_error(|c| {
        c.insert("seq_len".into(), 7.into());
    });
    assert!(msg.contains("seq_len"), "{msg}");
    let msg = config_error(|c| {
        c.insert("model".into(), "PatchTST".into());
    });
    assert!(msg.contains("PatchTST"), "{msg}");
}

#[test]
fn the_unused_wrapper_tensors_are_part_of_the_checkpoint() {
    let dev = Device::Cpu;
    let src = fixture("jd_patchtst");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut tensors = candle_core::safetensors::load(src.join("model.safetensors"), &dev).unwrap();
    tensors.remove("encoder.attn_layers.1.attention.in_proj.weight");
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let msg = load_sequence_dir(dir.path(), &dev).unwrap_err().to_string();
    assert!(
        msg.contains("missing") && msg.contains("encoder.attn_layers.1.attention.in_proj.weight"),
        "{msg}"
    );
}

#[test]
fn the_zoo_entry_has_the_reference_parameter_count() {
    let cfg = (sequence_entry("JDPatchTST").unwrap().config)();
    let jd = cfg.downcast_ref::<JdPatchTstConfig>().unwrap();
    assert_eq!(
        (jd.seq_len, jd.pred_len, jd.n_heads, jd.e_layers),
        (96, 96, 2, 1)
    );
    // `sum(p.numel() for p in Model(args).parameters())` for the ETTh1 96 -> 96 script.
    assert_eq!(sequence_param_count(&cfg).unwrap(), 3_488_640);
}

/// The dense mixer written head by head: `M[n] @ x[:, :, n-th block] / sqrt(N)`.
fn plain_dense(m: &Tensor, x: &Tensor) -> Tensor {
    let (heads, n, _) = m.dims3().unwrap();
    let d = x.dim(2).unwrap() / heads;
    let blocks: Vec<Tensor> = (0..heads)
        .map(|h| {
            let xh = x.narrow(2, h * d, d).unwrap();
            let mh = m.get(h).unwrap().unsqueeze(0).unwrap();
            mh.broadcast_matmul(&xh).unwrap()
        })
        .collect();
    (Tensor::cat(&blocks, 2).unwrap() / (n as f64).sqrt()).unwrap()
}

#[test]
fn dense_mixer_matches_a_plain_composition_with_its_gradients() {
    let dev = Device::Cpu;
    let (b, n, heads, d) = (2, 7, 3, 4);
    let m = Var::randn(0f64, 1.0, (heads, n, n), &dev).unwrap();
    let x = Var::randn(0f64, 1.0, (b, n, heads * d), &dev).unwrap();
    let w = Tensor::randn(0f64, 1.0, (b, n, heads * d), &dev).unwrap();
    let mixer = Dense::from_matrix(m.as_tensor().clone());
    assert_eq!(mixer.heads(), heads);
    let y = mixer.forward(x.as_tensor()).unwrap();
    let want = plain_dense(m.as_tensor(), x.as_tensor());
    assert!(rel_l2(&y, &want) < 1e-12, "{}", rel_l2(&y, &want));

    let loss = |y: &Tensor| (y * &w).unwrap().sum_all().unwrap();
    let grads = loss(&y).backward().unwrap();
    let plain = loss(&want).backward().unwrap();
    for var in [&m, &x] {
        let (g, p) = (grads.get(var).unwrap(), plain.get(var).unwrap());
        assert!(rel_l2(g, p) < 1e-12, "{}", rel_l2(g, p));
    }
    // Central differences of the loss in a few entries of M.
    let gm = grads
        .get(&m)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let base = m
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let eps = 1e-6;
    for idx in [0, 17, heads * n * n - 1] {
        let at = |delta: f64| {
            let mut v = base.clone();
            v[idx] += delta;
            let mm = Tensor::from_vec(v, (heads, n, n), &dev).unwrap();
            let y = Dense::from_matrix(mm).forward(x.as_tensor()).unwrap();
            loss(&y).to_scalar::<f64>().unwrap()
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        assert!(
            (fd - gm[idx]).abs() < 1e-6 * gm[idx].abs().max(1.0),
            "{idx}: {fd} vs {}",
            gm[idx]
        );
    }
    // A wrong token count is refused before anything is multiplied.
    let short = Tensor::zeros((b, n - 1, heads * d), DType::F64, &dev).unwrap();
    let err = mixer.forward(&short).unwrap_err().to_string();
    assert!(err.contains("dense"), "{err}");
}

#[test]
fn tsm2_time_mixer_is_causal_and_its_variate_mixer_is_not() {
    use candle_nn::{VarBuilder, VarMap};
    use tokenmix::models::sequence::tsm2::Tsm2Config;
    use tokenmix_mixers::MixerSpec;

    let dev = Device::Cpu;
    let cfg = Tsm2Config {
        d_model: 8,
        d_state: 4,
        ..Tsm2Config::default()
    };
    for (bidirectional, causal) in [(false, true), (true, false)] {
        let spec = cfg.mixer(bidirectional);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        spec.build(8, vb.clone()).unwrap();
        for (_, var) in varmap.data().lock().unwrap().iter() {
            var.set(&Tensor::randn(0f32, 0.5, var.shape(), &dev).unwrap())
                .unwrap();
        }
        let mixer = spec.build(8, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 9, 8), &dev).unwrap();
        let bump = Tensor::cat(
            &[
                Tensor::zeros((2, 6, 8), DType::F32, &dev).unwrap(),
                Tensor::ones((2, 3, 8), DType::F32, &dev).unwrap(),
            ],
            1,
        )
        .unwrap();
        let (a, b) = (
            mixer.forward(&x).unwrap(),
            mixer.forward(&(&x + bump).unwrap()).unwrap(),
        );
        let early = (a.narrow(1, 0, 6).unwrap() - b.narrow(1, 0, 6).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(
            early == 0.0,
            causal,
            "bidirectional {bidirectional}: {early}"
        );
    }
}
