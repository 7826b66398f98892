//! Backbones, the named model zoo, checkpoint loading and preprocessing for tokenmix.
//!
//! * [`metaformer`]: the MetaFormer backbone (PoolFormer v1/v2, IdentityFormer, RandFormer,
//!   ConvFormer, CAFormer).
//! * [`registry`]: the zoo under timm's names, with [`list_models`] and per-model facts
//!   (parameters, MACs, paper top-1, pretrained config).
//! * [`checkpoint`]: loading `model.safetensors` strictly (every missing, unexpected or
//!   mis-shaped tensor is reported by name), and random weights for benchmarks.
//! * [`arch`]: the [`Architecture`] trait each family's config implements, and [`ArchConfig`],
//!   any family's architecture; [`FAMILIES`] registers every family.
//! * [`pth`]: reading PyTorch `torch.save` checkpoints (`.pth`) without executing them.
//! * [`loader`]: loading a model directory as the Hugging Face hub serves `timm/<name>` and
//!   timm's `save_for_hf` writes it (`config.json` + `model.safetensors`), those files' bytes,
//!   or a bare safetensors file.
//! * [`hub`]: finding such a directory in the Hugging Face cache by hub id, and (feature `hub`)
//!   downloading it there.
//! * [`preprocess`]: timm's evaluation transform (resize, center crop, normalize).
//! * [`sequence`]: models of 1-D sequences (forecasting, text classification) behind
//!   [`sequence::SequenceModel`], loading the reference's hub layouts.
//! * [`features`]: the backbone surface for detection and segmentation ([`FeatureInfo`],
//!   [`Indices`], [`FeatureFormat`]), used by [`ImageModel::forward_intermediates`].
#![deny(missing_docs)]

pub mod arch;
mod args;
pub mod checkpoint;
mod error;
pub mod features;
pub mod hub;
pub mod imagenet;
pub mod loader;
pub mod preprocess;
pub mod pretrained;
pub mod pth;
pub mod registry;
pub mod sequence;

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;

pub use affnet::{AffNet, AffNetConfig};
pub use arch::{
    ArchConfig, Architecture, Common, ConvInit, DynFamily, Family, Ratio, Registration,
};
pub use efficientvim::{EfficientVim, EfficientVimConfig};
pub use error::{Error, Result};
pub use features::{FeatureFormat, FeatureInfo, Indices};
pub use gfnet::{Gfnet, GfnetConfig};
#[cfg(feature = "hub")]
pub use hub::{load_from_hub, HubSource};
pub use loader::{
    convert_to_dir, load_from_bytes, load_from_bytes_as, load_model_dir, load_model_dir_as,
    load_weights, load_weights_as, Converted, LoadedModel,
};
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
    /// Every stage's output feature map in evaluation mode (an isotropic model's one normed
    /// map); [`forward_intermediates`](Self::forward_intermediates) chooses the maps and their
    /// layout, for detection or segmentation heads.
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

    /// The feature maps [`forward_intermediates`](Self::forward_intermediates) can return, in
    /// order: channels, stride and the checkpoint prefix of the stage or block making each (one
    /// per stage for pyramid models, one per block at the patch stride for isotropic ones).
    fn feature_info(&self) -> Vec<FeatureInfo>;

    /// The channel-first maps `(B, C_i, H_i, W_i)` at `take`, ascending distinct indices into
    /// [`feature_info`](Self::feature_info) as [`Indices::resolve`] gives them (others are an
    /// error), running the model only as far as the last one; `norm` and `train` as in
    /// [`forward_intermediates`](Self::forward_intermediates) and
    /// [`forward_features_t`](Self::forward_features_t).
    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        norm: bool,
        train: bool,
    ) -> CandleResult<Vec<Tensor>>;

    /// The feature maps chosen by `indices` (in the order the model makes them, each once, as
    /// timm returns them), in evaluation mode, in the layout `format`; the model runs only as far
    /// as the last one. `norm` applies the model's final norm where it has one before pooling
    /// (timm's `norm`): to every map of the isotropic models (MLP-Mixer family, GFNet,
    /// MambaMixer) and to the last stage's map of RaftMLP; the pyramids whose norm follows the
    /// pooling (MetaFormer, MambaOut, MS-MLP) and AFFNet ignore it. Indices out of range are an
    /// error naming the valid range.
    fn forward_intermediates(
        &self,
        x: &Tensor,
        indices: &Indices,
        norm: bool,
        format: FeatureFormat,
    ) -> CandleResult<Vec<Tensor>> {
        let take = indices.resolve(self.feature_info().len())?;
        self.forward_intermediates_t(x, &take, norm, false)?
            .into_iter()
            .map(|m| format.from_nchw(m))
            .collect()
    }

    /// Drops the stages or blocks after the last feature map `indices` takes, and the head (the
    /// classifier and the norms and layers before it; an isotropic model keeps its final norm,
    /// which [`forward_features`](Self::forward_features) applies), as timm's
    /// `prune_intermediate_layers` does; returns the indices taken, as [`Indices::resolve`].
    /// Afterwards [`feature_info`](Self::feature_info) lists the kept maps, `forward_features`
    /// returns them, `num_classes` is 0 and [`forward_head`](Self::forward_head) returns the
    /// global average of the last kept map.
    fn prune_intermediate_layers(&mut self, indices: &Indices) -> CandleResult<Vec<usize>>;

    /// Replaces the classifier by one with `num_classes` outputs (none for 0: the head then
    /// returns its pre-logits), as timm's `reset_classifier` does. Its tensors are read from `vb`,
    /// the root of the model's variables, under the model's own names (`head.fc`, `head`, ...),
    /// so a [`VarMap`](candle_nn::VarMap)-backed `vb` creates them, freshly initialized and
    /// trainable, under the names a checkpoint of the fine-tuned model has. The rest of the head
    /// is kept. After [`prune_intermediate_layers`](Self::prune_intermediate_layers) this works
    /// for the isotropic models (the classifier sits on their kept final norm) and is an error
    /// for the others, whose head norm or pre-logits went with the pruning.
    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> CandleResult<()>;
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

/// A `conv 3x3 / 2, padding 1` (with a bias if `bias`) and the batch norm after it, on
/// channel-last maps, the norm folded in: the stems and downsamplers of CAS-ViT, iFormer and
/// FFNet.
pub(crate) fn conv_bn_3x3_s2(
    cin: usize,
    cout: usize,
    bias: bool,
    conv: VarBuilder,
    bn: VarBuilder,
) -> CandleResult<tokenmix_mixers::layers::ConvBnNhwc> {
    let window = tokenmix_kernels::Window {
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    let kind = tokenmix_mixers::layers::ConvKind::Dense;
    tokenmix_mixers::layers::ConvBnNhwc::new(cin, cout, window, kind, bias, conv, bn)
}

/// Multiply-accumulates of a stem of two `conv 3x3 / 2` (`in_chans -> dim / 2 -> dim`, as
/// MambaOut's and CAS-ViT's) on an `h x w` image, and the `(h, w)` grid it leaves.
pub(crate) fn two_conv_stem_macs(
    in_chans: usize,
    dim: usize,
    h: usize,
    w: usize,
) -> (u64, (usize, usize)) {
    let down = |n: usize| n.div_ceil(2);
    let (h1, w1) = (down(h), down(w));
    let (h2, w2) = (down(h1), down(w1));
    let half = dim / 2;
    let macs = (h1 * w1 * half * in_chans * 9 + h2 * w2 * dim * half * 9) as u64;
    (macs, (h2, w2))
}

/// The patch embedding of the isotropic families: a `patch x patch` convolution with stride
/// `patch` and a bias (checkpoint `weight` `[dim, in_chans, patch, patch]`, `bias`), run
/// channel-last so that its output rows are the tokens.
pub(crate) fn patch_embed(
    in_chans: usize,
    dim: usize,
    patch: usize,
    vb: VarBuilder,
) -> CandleResult<tokenmix_mixers::layers::ConvNhwc> {
    let window = tokenmix_kernels::Window {
        kernel: patch,
        stride: patch,
        padding: 0,
    };
    tokenmix_mixers::layers::ConvNhwc::new(in_chans, dim, window, true, vb)
}

/// Patch-embeds `x` `(B, C, H, W)` with `conv` (see [`patch_embed`]) into `(B, N, C)` tokens;
/// returns them and the patch grid.
pub(crate) fn patch_tokens(
    conv: &tokenmix_mixers::layers::ConvNhwc,
    x: &Tensor,
) -> CandleResult<(Tensor, (usize, usize))> {
    use candle_core::Module;
    let y = conv.forward(&x.permute((0, 2, 3, 1))?.contiguous()?)?;
    let (b, gh, gw, c) = y.dims4()?;
    Ok((y.reshape((b, gh * gw, c))?, (gh, gw)))
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

/// Declares each family's module and registers its config, one line per family.
macro_rules! families {
    ($($module:ident :: $config:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// Every family, under the `family` tag of its config's JSON, with its named models. A
        /// family is its own file plus one line of the list that builds this.
        pub static FAMILIES: &[Registration] = &[$(Registration::of::<$module::$config>()),*];
    };
}

families! {
    metaformer::MetaFormerConfig,
    mambaout::MambaOutConfig,
    mlp_mixer::MlpMixerConfig,
    gfnet::GfnetConfig,
    msmlp::MsMlpConfig,
    mamba_mixer::MambaMixerConfig,
    raftmlp::RaftMlpConfig,
    affnet::AffNetConfig,
    rcvit::RcVitConfig,
    efficientvim::EfficientVimConfig,
    wavemix::WaveMixConfig,
    iformer::IFormerConfig,
    ffnet::FfNetConfig,
    ninformer::NiNformerConfig,
    transnext::TransNeXtConfig,
    hydra_vit::HydraVitConfig,
    s2aformer::S2AFormerConfig,
}
