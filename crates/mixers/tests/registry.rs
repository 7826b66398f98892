//! Table-driven tests over every registered mixer, and a mixer registered from outside the
//! crate.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use tokenmix_mixers::{
    pooling, register_mixer, registered_mixers, sepconv, MixerConfig, MixerLayout,
    MixerRegistration, MixerSpec, TokenMixer,
};

const DIM: usize = 16;
const GRID: (usize, usize) = (5, 7);

/// Every registered mixer's default config, fitted to [`GRID`].
fn defaults() -> Vec<MixerConfig> {
    registered_mixers()
        .iter()
        .map(|r| r.default_config().for_grid(GRID.0, GRID.1))
        .collect()
}

fn input(layout: MixerLayout, b: usize) -> Tensor {
    let (h, w) = GRID;
    let shape: Vec<usize> = match layout {
        MixerLayout::Tokens => vec![b, h * w, DIM],
        MixerLayout::ChannelsLast => vec![b, h, w, DIM],
        _ => vec![b, DIM, h, w],
    };
    Tensor::randn(0f32, 1.0, shape.as_slice(), &Device::Cpu).unwrap()
}

/// Builds `cfg` twice from one var map: once to create its variables, then again after
/// drawing every one of them from `N(0, 0.25)` (variances, such as batch norms' running ones,
/// from `0.5 + |N(0, 0.25)|`).
fn random_mixer(cfg: &MixerConfig) -> Box<dyn TokenMixer> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    cfg.build(DIM, vb.clone()).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let t = Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu).unwrap();
        let t = if name.ends_with("var") {
            (t.abs().unwrap() + 0.5).unwrap()
        } else {
            t
        };
        var.set(&t).unwrap();
    }
    cfg.build(DIM, vb).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

#[test]
fn every_registered_mixer_builds_keeps_its_shape_and_counts_its_macs() {
    let regs = registered_mixers();
    assert!(regs.len() >= 12, "{regs:?}");
    for cfg in defaults() {
        let mixer = random_mixer(&cfg);
        assert_eq!(mixer.name(), cfg.kind());
        let x = input(mixer.layout(), 2);
        let y = mixer.forward(&x).unwrap();
        assert_eq!(y.dims(), x.dims(), "{}", cfg.kind());
        let m = max_abs(&y);
        assert!(m.is_finite() && m > 0.0, "{}: {m}", cfg.kind());
        let macs = cfg.macs(DIM, GRID.0, GRID.1);
        match cfg.kind() {
            "identity" | "pooling" => assert_eq!(macs, 0, "{}", cfg.kind()),
            kind => assert!(macs > 0, "{kind}"),
        }
    }
}

#[test]
fn mixers_return_only_their_mixing_term() {
    for cfg in defaults() {
        if matches!(cfg.kind(), "identity" | "pooling") {
            continue;
        }
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let mixer = cfg.build(DIM, vb).unwrap();
        let y = mixer.forward(&input(mixer.layout(), 2)).unwrap();
        assert_eq!(
            max_abs(&y),
            0.0,
            "{}: zero weights must mix to zero",
            cfg.kind()
        );
    }
}

#[test]
fn configs_round_trip_through_json() {
    for cfg in defaults() {
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(
            json.contains(&format!("\"type\":\"{}\"", cfg.kind())),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<MixerConfig>(&json).unwrap(),
            cfg,
            "{json}"
        );
    }
    let pooling: MixerConfig = serde_json::from_str(r#"{"type":"pooling","pool_size":5}"#).unwrap();
    assert_eq!(
        pooling.downcast_ref::<pooling::PoolingConfig>(),
        Some(&pooling::PoolingConfig { pool_size: 5 })
    );
    assert_ne!(pooling, MixerConfig::pooling());
}

#[test]
fn bad_mixer_json_names_what_is_accepted() {
    let err = serde_json::from_str::<MixerConfig>(r#"{"type":"poolin"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown mixer type \"poolin\"") && err.contains("sepconv"),
        "{err}"
    );
    let err = serde_json::from_str::<MixerConfig>(r#"{"type":"pooling","pool":3}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown field `pool`") && err.contains("pool_size"),
        "{err}"
    );
    let err = MixerConfig::new(pooling::PoolingConfig { pool_size: 4 })
        .validate(8)
        .unwrap_err();
    assert!(err.to_string().contains("pool_size must be odd"), "{err}");
}

#[test]
fn ratios_that_leave_no_hidden_channel_are_refused() {
    let cfg = MixerConfig::new(sepconv::SepConvConfig {
        expansion_ratio: 0.1,
        ..Default::default()
    });
    let err = cfg.validate(4).unwrap_err().to_string();
    assert!(err.contains("at least one hidden channel"), "{err}");
    cfg.validate(16).unwrap();
}

/// A mixer defined outside the built-in list: `x * w` per channel.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct ScaleMixer {}

#[derive(Debug)]
struct Scaled(Tensor);

impl TokenMixer for Scaled {
    fn name(&self) -> &'static str {
        "test_scale"
    }
    fn layout(&self) -> MixerLayout {
        MixerLayout::Tokens
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.0)
    }
}

impl MixerSpec for ScaleMixer {
    fn kind(&self) -> &'static str {
        "test_scale"
    }
    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(Scaled(vb.get(dim, "w")?)))
    }
    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        (dim * h * w) as u64
    }
}

#[test]
fn user_mixers_register_once_and_read_from_json() {
    register_mixer(MixerRegistration::of::<ScaleMixer>()).unwrap();
    let err = register_mixer(MixerRegistration::of::<ScaleMixer>()).unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");
    let cfg: MixerConfig = serde_json::from_str(r#"{"type":"test_scale"}"#).unwrap();
    assert_eq!(cfg, MixerConfig::new(ScaleMixer {}));
    let err = register_mixer(MixerRegistration::of::<pooling::PoolingConfig>()).unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");
}

#[test]
fn attention_on_a_token_sequence_is_permutation_equivariant() {
    let mixer = random_mixer(&MixerConfig::attention());
    let x = Tensor::randn(0f32, 1.0, (1, 6, DIM), &Device::Cpu).unwrap();
    let perm = Tensor::new(&[5u32, 4, 3, 2, 1, 0], &Device::Cpu).unwrap();
    let y_of_perm = mixer.forward(&x.index_select(&perm, 1).unwrap()).unwrap();
    let perm_of_y = mixer.forward(&x).unwrap().index_select(&perm, 1).unwrap();
    let d = max_abs(&(y_of_perm - perm_of_y).unwrap());
    assert!(d < 1e-5, "{d}");
}

/// `x` as a non-contiguous view: the same values, stored with its last two axes swapped.
fn strided(x: &Tensor) -> Tensor {
    let n = x.rank();
    let view = x
        .transpose(n - 2, n - 1)
        .unwrap()
        .contiguous()
        .unwrap()
        .transpose(n - 2, n - 1)
        .unwrap();
    assert!(!view.is_contiguous());
    view
}

#[test]
fn every_registered_mixer_takes_strided_inputs() {
    for cfg in defaults() {
        let mixer = random_mixer(&cfg);
        let x = input(mixer.layout(), 2);
        let want = mixer.forward(&x).unwrap();
        let got = mixer.forward(&strided(&x)).unwrap();
        let d = max_abs(&(got - &want).unwrap());
        assert!(d <= 1e-5 * max_abs(&want).max(1.0), "{}: {d}", cfg.kind());
    }
}
