//! A token mixer written outside tokenmix's crates, plugged into a MetaFormer and trained.
//!
//! The mixer is a global-context mixer: every token receives `mean_over_tokens(x) @ W`, a
//! learned `C x C` projection of the average token (its mixing term; the block adds the
//! residual). It runs in the stages 2-3 of a small PoolFormer-v2-shaped MetaFormer, pooling in
//! stages 0-1. The example registers it so configs naming it read from JSON, trains a few steps
//! on a fixed random batch, and fails unless the loss drops and gradients reach the mixer's
//! weights.
//!
//! `cargo run --release --example custom_mixer`

use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use tokenmix::mixers::{
    register_mixer, MixerConfig, MixerLayout, MixerRegistration, MixerSpec, TokenMixer,
};
use tokenmix::models::{ImageModel, MetaFormer, MetaFormerConfig};

/// The config of the custom mixer (no hyper-parameters): `{"type": "global_context"}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlobalContextConfig {}

/// `broadcast(mean_n(x) @ proj)` on tokens `(B, N, C)`; checkpoint tensor `proj` `[C, C]`.
#[derive(Debug)]
struct GlobalContext {
    proj: Tensor,
}

impl TokenMixer for GlobalContext {
    fn name(&self) -> &'static str {
        "global_context"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Tokens
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let context = x.mean_keepdim(1)?.broadcast_matmul(&self.proj)?;
        context.broadcast_as(x.shape())?.contiguous()
    }
}

impl MixerSpec for GlobalContextConfig {
    fn kind(&self) -> &'static str {
        "global_context"
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(GlobalContext {
            proj: vb.get((dim, dim), "proj")?,
        }))
    }

    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        (dim * h * w + dim * dim) as u64
    }
}

/// Draws every weight matrix from `N(0, 1/fan_in)`; vectors called `weight` or `scale` (norm
/// gains, scales) start at one, everything else at zero, as timm initialises MetaFormers.
fn initialise(varmap: &VarMap) -> Result<()> {
    for (name, var) in varmap.data().lock().expect("var map lock").iter() {
        let dims = var.dims().to_vec();
        let value = if dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            Tensor::randn(
                0f32,
                (1.0 / fan_in as f64).sqrt() as f32,
                dims,
                var.device(),
            )?
        } else if name.ends_with("weight") || name.ends_with("scale") {
            Tensor::ones(dims, DType::F32, var.device())?
        } else {
            Tensor::zeros(dims, DType::F32, var.device())?
        };
        var.set(&value)?;
    }
    Ok(())
}

fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    candle_nn::loss::cross_entropy(logits, labels)
}

fn max_abs(t: &Tensor) -> Result<f32> {
    t.abs()?.max_all()?.to_scalar()
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    register_mixer(MixerRegistration::of::<GlobalContextConfig>())?;
    let mut cfg = MetaFormerConfig::poolformer_v2([1, 1, 1, 1], [16, 32, 48, 64]);
    cfg.num_classes = 4;
    let custom = MixerConfig::new(GlobalContextConfig {});
    cfg.token_mixers = vec![
        MixerConfig::pooling(),
        MixerConfig::pooling(),
        custom.clone(),
        custom,
    ];
    let json = serde_json::to_string(&cfg.token_mixers)?;
    println!("token_mixers: {json}");
    assert_eq!(
        serde_json::from_str::<Vec<MixerConfig>>(&json)?,
        cfg.token_mixers
    );

    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = MetaFormer::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    initialise(&varmap)?;
    let proj: Var =
        varmap.data().lock().expect("var map lock")["stages.2.blocks.0.token_mixer.proj"].clone();
    let proj_before = proj.as_tensor().copy()?;

    let images = Tensor::randn(0f32, 1.0, (8, 3, 32, 48), &device)?;
    let labels = Tensor::new(&[0u32, 1, 2, 3, 0, 1, 2, 3], &device)?;
    let params = ParamsAdamW {
        lr: 3e-3,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(varmap.all_vars(), params)?;
    let mut losses = Vec::new();
    for step in 0..30 {
        let loss = cross_entropy(&model.forward_t(&images, true)?, &labels)?;
        let grads = loss.backward()?;
        let grad = grads.get(&proj).map(max_abs).transpose()?.unwrap_or(0.0);
        if step == 0 && grad == 0.0 {
            return Err("no gradient reached the custom mixer's weights".into());
        }
        opt.step(&grads)?;
        let value = loss.to_scalar::<f32>()?;
        if step % 5 == 0 {
            println!("step {step:>2}  loss {value:.4}  |d loss/d proj|max {grad:.2e}");
        }
        losses.push(value);
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    let moved = max_abs(&(proj.as_tensor() - &proj_before)?)?;
    println!("loss {first:.4} -> {last:.4}; the custom mixer's weights moved by up to {moved:.3}");
    let probs = candle_nn::ops::softmax(&model.forward(&images)?, D::Minus1)?;
    println!(
        "train-batch probabilities of the true class: {:?}",
        true_class(&probs, &labels)?
    );
    if last >= 0.5 * first || moved == 0.0 {
        return Err("training did not reduce the loss through the custom mixer".into());
    }
    Ok(())
}

fn true_class(probs: &Tensor, labels: &Tensor) -> Result<Vec<f32>> {
    probs
        .gather(&labels.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .to_vec1::<f32>()
}
