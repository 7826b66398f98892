//! Backbones, the named model zoo, checkpoint loading and preprocessing for tokenmix.
//!
//! * [`metaformer`]: the MetaFormer backbone (PoolFormer v1/v2, IdentityFormer, RandFormer,
//!   ConvFormer, CAFormer).
//! * [`registry`]: the zoo under timm's names, with [`list_models`] and per-model facts
//!   (parameters, MACs, paper top-1, pretrained config).
//! * [`checkpoint`]: loading `model.safetensors` strictly (every missing, unexpected or
//!   mis-shaped tensor is reported by name), and random weights for benchmarks.
//! * [`hub`]: loading a model directory as the Hugging Face hub serves `timm/<name>` and timm's
//!   `save_for_hf` writes it (`config.json` + `model.safetensors`).
//! * [`preprocess`]: timm's evaluation transform (resize, center crop, normalize).
#![deny(missing_docs)]

pub mod affnet;
mod args;
pub mod checkpoint;
mod error;
pub mod gfnet;
pub mod hub;
pub mod imagenet;
pub mod mamba_mixer;
pub mod mambaout;
pub mod metaformer;
pub mod mlp_mixer;
pub mod msmlp;
pub mod preprocess;
pub mod pretrained;
pub mod raftmlp;
pub mod registry;

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

pub use affnet::{AffNet, AffNetConfig};
pub use error::{Error, Result};
pub use gfnet::{Gfnet, GfnetConfig};
pub use hub::{load_from_bytes, load_model_dir, load_weights, LoadedModel};
#[cfg(feature = "hub")]
pub use hub::{load_from_hub, HubSource};
pub use mamba_mixer::{MambaMixer, MambaMixerConfig};
pub use mambaout::{MambaOut, MambaOutConfig};
pub use metaformer::{MetaFormer, MetaFormerConfig};
pub use mlp_mixer::{MlpMixer, MlpMixerConfig};
pub use msmlp::{MsMlp, MsMlpConfig};
pub use pretrained::PretrainedCfg;
pub use raftmlp::{RaftMlp, RaftMlpConfig};
pub use registry::{list_models, model_entry, ModelEntry};

/// An image classifier: a backbone producing multi-scale features and a head producing logits.
///
/// Inputs are `(B, in_chans, H, W)`; features are `(B, C_i, H_i, W_i)`, one per stage; logits
/// are `(B, num_classes)` (or pooled features `(B, C)` when `num_classes` is 0).
pub trait ImageModel: Send + Sync + std::fmt::Debug {
    /// Channels the model expects in its input.
    fn in_chans(&self) -> usize;
    /// Width of the logits.
    fn num_classes(&self) -> usize;
    /// Every stage's output feature map, in order; `train` turns on stochastic depth (drop
    /// path) and the other training-only randomness.
    fn forward_features_t(&self, x: &Tensor, train: bool) -> CandleResult<Vec<Tensor>>;
    /// Logits from the last feature map.
    fn forward_head(&self, last: &Tensor) -> CandleResult<Tensor>;
    /// Every stage's output feature map in evaluation mode (for detection or segmentation
    /// heads).
    fn forward_features(&self, x: &Tensor) -> CandleResult<Vec<Tensor>> {
        self.forward_features_t(x, false)
    }
    /// Logits from an input batch, in training mode when `train` is set.
    fn forward_t(&self, x: &Tensor, train: bool) -> CandleResult<Tensor> {
        let features = self.forward_features_t(x, train)?;
        match features.last() {
            Some(last) => self.forward_head(last),
            None => candle_core::bail!("model produced no features"),
        }
    }
    /// Logits from an input batch in evaluation mode.
    fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        self.forward_t(x, false)
    }
}

/// An optional linear classifier: `None` when `classes` is 0 (the model then returns features).
pub(crate) fn optional_linear(
    dim: usize,
    classes: usize,
    vb: VarBuilder,
) -> CandleResult<Option<candle_nn::Linear>> {
    (classes > 0)
        .then(|| candle_nn::linear(dim, classes, vb))
        .transpose()
}

/// Fails unless `x` is a batch of `size` images; `why` says what fixes the size.
pub(crate) fn check_fixed_size(x: &Tensor, size: (usize, usize), why: &str) -> CandleResult<()> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) != size {
        candle_core::bail!(
            "this model takes {}x{} images ({why}), got {h}x{w}",
            size.0,
            size.1
        )
    }
    Ok(())
}

/// Patch-embeds `x` with `conv` into `(B, N, C)` tokens; returns them and the patch grid.
pub(crate) fn patch_tokens(
    conv: &candle_nn::Conv2d,
    x: &Tensor,
) -> CandleResult<(Tensor, (usize, usize))> {
    use candle_core::Module;
    let x = conv.forward(x)?;
    let (_, _, gh, gw) = x.dims4()?;
    Ok((x.flatten_from(2)?.transpose(1, 2)?.contiguous()?, (gh, gw)))
}

/// `(B, N, C)` tokens on a `grid` as a `(B, C, gh, gw)` map.
pub(crate) fn tokens_to_map(tokens: &Tensor, (gh, gw): (usize, usize)) -> CandleResult<Tensor> {
    let (b, _, c) = tokens.dims3()?;
    tokens.transpose(1, 2)?.reshape((b, c, gh, gw))
}

/// Global average pool of `(B, C, H, W)` to `(B, C)`, then the classifier if there is one.
pub(crate) fn pool_and_classify(
    last: &Tensor,
    head: Option<&candle_nn::Linear>,
) -> CandleResult<Tensor> {
    use candle_core::Module;
    let pooled = tokenmix_mixers::layers::global_avg_pool(last)?;
    match head {
        Some(fc) => fc.forward(&pooled),
        None => Ok(pooled),
    }
}

/// Checks that `x` is an `(B, in_chans, H, W)` batch a model can take; the error says what is
/// wrong with it.
pub fn check_input(model: &dyn ImageModel, x: &Tensor) -> Result<()> {
    let dims = x.dims();
    let ok = dims.len() == 4 && dims[1] == model.in_chans() && dims[0] > 0;
    if !ok {
        return Err(Error::Input(format!(
            "expected a (batch, {}, height, width) tensor, got shape {:?}",
            model.in_chans(),
            dims
        )));
    }
    if dims[2] < 4 || dims[3] < 4 {
        return Err(Error::Input(format!(
            "image of {}x{} is too small: height and width must be at least 4",
            dims[2], dims[3]
        )));
    }
    Ok(())
}

/// The architecture of a model, with its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum ArchConfig {
    /// A [`MetaFormer`].
    MetaFormer(MetaFormerConfig),
    /// A [`MambaOut`].
    MambaOut(MambaOutConfig),
    /// An [`MlpMixer`] (MLP-Mixer, gMixer, ResMLP, gMLP).
    MlpMixer(MlpMixerConfig),
    /// An isotropic [`Gfnet`].
    Gfnet(GfnetConfig),
    /// An [`MsMlp`].
    MsMlp(MsMlpConfig),
    /// A [`MambaMixer`].
    MambaMixer(MambaMixerConfig),
    /// A [`RaftMlp`].
    RaftMlp(RaftMlpConfig),
    /// An [`AffNet`].
    AffNet(AffNetConfig),
}

impl ArchConfig {
    /// Builds the model, reading its tensors from `vb`.
    pub fn build(&self, vb: VarBuilder) -> CandleResult<Box<dyn ImageModel>> {
        Ok(match self {
            Self::MetaFormer(c) => Box::new(MetaFormer::new(c, vb)?),
            Self::MambaOut(c) => Box::new(MambaOut::new(c, vb)?),
            Self::MlpMixer(c) => Box::new(MlpMixer::new(c, vb)?),
            Self::Gfnet(c) => Box::new(Gfnet::new(c, vb)?),
            Self::MsMlp(c) => Box::new(MsMlp::new(c, vb)?),
            Self::MambaMixer(c) => Box::new(MambaMixer::new(c, vb)?),
            Self::RaftMlp(c) => Box::new(RaftMlp::new(c, vb)?),
            Self::AffNet(c) => Box::new(AffNet::new(c, vb)?),
        })
    }

    /// Applies timm-style `model_args` from a hub `config.json`.
    pub fn apply_model_args(
        &mut self,
        args: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        match self {
            Self::MetaFormer(c) => c.apply_model_args(args),
            Self::MambaOut(c) => c.apply_model_args(args),
            Self::MlpMixer(c) => c.apply_model_args(args),
            Self::Gfnet(c) => c.apply_model_args(args),
            Self::MsMlp(c) => c.apply_model_args(args),
            Self::MambaMixer(c) => c.apply_model_args(args),
            Self::RaftMlp(c) => c.apply_model_args(args),
            Self::AffNet(c) => c.apply_model_args(args),
        }
    }

    /// Multiply-accumulates of one forward pass of one `h x w` image.
    pub fn macs(&self, h: usize, w: usize) -> u64 {
        match self {
            Self::MetaFormer(c) => c.macs(h, w),
            Self::MambaOut(c) => c.macs(h, w),
            Self::MlpMixer(c) => c.macs(),
            Self::Gfnet(c) => c.macs(),
            Self::MsMlp(c) => c.macs(h, w),
            Self::MambaMixer(c) => c.macs(),
            Self::RaftMlp(c) => c.macs(),
            Self::AffNet(c) => c.macs(h, w),
        }
    }

    /// Input channels.
    pub fn in_chans(&self) -> usize {
        match self {
            Self::MetaFormer(c) => c.in_chans,
            Self::MambaOut(c) => c.in_chans,
            Self::MlpMixer(c) => c.in_chans,
            Self::Gfnet(c) => c.in_chans,
            Self::MsMlp(c) => c.in_chans,
            Self::MambaMixer(c) => c.in_chans,
            Self::RaftMlp(c) => c.in_chans,
            Self::AffNet(c) => c.in_chans,
        }
    }

    /// Classifier width.
    pub fn num_classes(&self) -> usize {
        match self {
            Self::MetaFormer(c) => c.num_classes,
            Self::MambaOut(c) => c.num_classes,
            Self::MlpMixer(c) => c.num_classes,
            Self::Gfnet(c) => c.num_classes,
            Self::MsMlp(c) => c.num_classes,
            Self::MambaMixer(c) => c.num_classes,
            Self::RaftMlp(c) => c.num_classes,
            Self::AffNet(c) => c.num_classes,
        }
    }

    /// Sets the classifier width (0 removes the classifier).
    pub fn set_num_classes(&mut self, n: usize) {
        match self {
            Self::MetaFormer(c) => c.num_classes = n,
            Self::MambaOut(c) => c.num_classes = n,
            Self::MlpMixer(c) => c.num_classes = n,
            Self::Gfnet(c) => c.num_classes = n,
            Self::MsMlp(c) => c.num_classes = n,
            Self::MambaMixer(c) => c.num_classes = n,
            Self::RaftMlp(c) => c.num_classes = n,
            Self::AffNet(c) => c.num_classes = n,
        }
    }

    /// Adapts the parts of the architecture tied to the input size (RandFormer's and the
    /// MLP-Mixer family's token-mixing weights) to `h x w` inputs.
    pub fn set_image_size(&mut self, h: usize, w: usize) {
        match self {
            Self::MetaFormer(c) => c.set_random_mixing_size((h, w)),
            Self::MambaOut(_) => {}
            Self::MlpMixer(c) => c.img_size = (h, w),
            Self::Gfnet(c) => c.img_size = h.min(w),
            Self::MsMlp(_) => {}
            Self::MambaMixer(c) => c.img_size = (h, w),
            Self::RaftMlp(_) => {}
            Self::AffNet(_) => {}
        }
    }

    /// The only input size the model takes, for models whose weights fix it.
    pub fn fixed_image_size(&self) -> Option<(usize, usize)> {
        match self {
            Self::MlpMixer(c) => Some(c.img_size),
            Self::Gfnet(c) => Some((c.img_size, c.img_size)),
            Self::MambaMixer(c) => Some(c.img_size),
            Self::MetaFormer(_)
            | Self::MambaOut(_)
            | Self::MsMlp(_)
            | Self::RaftMlp(_)
            | Self::AffNet(_) => None,
        }
    }

    /// Whether a checkpoint tensor `name` of shape `found` can be adapted to the `expected`
    /// shape when loading (GFNet's filters and position embedding at another input size).
    pub fn can_resize(&self, name: &str, found: &[usize], expected: &[usize]) -> bool {
        match self {
            Self::Gfnet(c) => c.can_resize(name, found, expected),
            _ => false,
        }
    }

    /// Adapts a tensor accepted by [`can_resize`](Self::can_resize) to `expected`.
    pub fn resize_tensor(
        &self,
        name: &str,
        t: &Tensor,
        expected: &[usize],
    ) -> CandleResult<Tensor> {
        match self {
            Self::Gfnet(c) => c.resize(name, t, expected),
            _ => candle_core::bail!("{name} cannot be resized to {expected:?}"),
        }
    }

    /// Sets the stochastic-depth rate of the last block for training (AFFNet, whose reference
    /// has none, ignores it).
    pub fn set_drop_path_rate(&mut self, rate: f64) {
        match self {
            Self::MetaFormer(c) => c.drop_path_rate = rate,
            Self::MambaOut(c) => c.drop_path_rate = rate,
            Self::MlpMixer(c) => c.drop_path_rate = rate,
            Self::Gfnet(c) => c.drop_path_rate = rate,
            Self::MsMlp(c) => c.drop_path_rate = rate,
            Self::MambaMixer(c) => c.drop_path_rate = rate,
            Self::RaftMlp(c) => c.drop_path_rate = rate,
            Self::AffNet(_) => {}
        }
    }

    /// Sets the input channels.
    pub fn set_in_chans(&mut self, n: usize) {
        match self {
            Self::MetaFormer(c) => c.in_chans = n,
            Self::MambaOut(c) => c.in_chans = n,
            Self::MlpMixer(c) => c.in_chans = n,
            Self::Gfnet(c) => c.in_chans = n,
            Self::MsMlp(c) => c.in_chans = n,
            Self::MambaMixer(c) => c.in_chans = n,
            Self::RaftMlp(c) => c.in_chans = n,
            Self::AffNet(c) => c.in_chans = n,
        }
    }
}
