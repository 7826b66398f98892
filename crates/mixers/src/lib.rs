//! Token mixers for tokenmix.
//!
//! A token mixer is the part of a MetaFormer block that lets tokens exchange information. Every
//! mixer implements [`TokenMixer`]: it maps a tensor to its *mixing term*, a tensor of the same
//! shape, in the layout it declares through [`TokenMixer::layout`]:
//!
//! * [`MixerLayout::Spatial`]: a channel-first feature map `(B, C, H, W)`;
//! * [`MixerLayout::Tokens`]: a token sequence `(B, N, C)` (a 2-D map is flattened row-major,
//!   `n = h * W + w`), which is also how 1-D sequence models feed a mixer;
//! * [`MixerLayout::ChannelsLast`]: a channel-last feature map `(B, H, W, C)` (pooling,
//!   separable convolutions, global filters);
//! * [`MixerLayout::Any`]: any of these (element-wise or identity mixers).
//!
//! A mixer never adds its input back, normalizes it, or scales its output: the residual, the
//! norm, layer/res scales and drop path belong to the block that holds it, so every mixer fits
//! every MetaFormer stage. Blocks that are not norm-mixer-residual (MambaOut's gated CNN, gMLP's
//! gated MLP) are block bodies, [`gated_conv::GatedConv`] and
//! [`spatial_gating::SpatialGatingUnit`], not mixers.
//!
//! Mixers are chosen at run time through [`MixerConfig`], a type-erased [`MixerSpec`] (the
//! family's config: validation, MACs and constructor, all in the family's file). Its
//! [`MixerConfig::build`] returns a `Box<dyn TokenMixer>` loaded from a [`VarBuilder`](candle_nn::VarBuilder) whose
//! paths mirror timm's checkpoint names (`token_mixer.qkv.weight`, ...). Mixers written outside
//! this crate plug in through [`MixerConfig::new`] and, for JSON, [`register_mixer`].
//!
//! # Families in this crate
//! One file each, registered in the list below: [`identity`] (IdentityFormer), [`pooling`]
//! (PoolFormer), [`random_mixing`] (RandFormer), [`sepconv`] (ConvFormer), [`attention`]
//! (CAFormer), [`token_mlp`] (MLP-Mixer, gMixer), [`linear_tokens`] (ResMLP), [`global_filter`]
//! (GFNet), [`shift`] (MS-MLP), [`ssm`] (bidirectional selective SSM), [`raft`] (RaftMLP),
//! [`aff`] (AFFNet), [`additive`] (CAS-ViT), [`hsm_ssd`] (EfficientViM), [`wave`] (WaveMix), [`inception`] (Inception Transformer), [`ffn`] (MetaMixer / FFNet), [`ninformer`] (NiNformer),
//! [`linear_attention`] (LinFusion), [`aggregated_attention`] (TransNeXt), [`hydra`] (Hydra),
//! [`spectrum`] (tokenmix's reading of the Dynamic Spectrum Mixer), [`strip_attention`]
//! (tokenmix's reading of S2AFormer's strip self-attention), [`tsmixer`] (TSMixer / Tiny Time
//! Mixers, for patched time series), [`dense`] (JustDense's per-head dense matrix), [`ponet`]
//! (PoNet's multi-granularity pooling). [`layers`] holds the building blocks the backbones share (norms,
//! activations, scales, MLPs).
#![deny(missing_docs)]

mod error;
pub mod gated_conv;
pub mod layers;
pub mod spatial_gating;
mod spec;

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

pub use error::MixerError;
pub use spec::{register_mixer, registered_mixers, MixerConfig, MixerRegistration, MixerSpec};

/// Declares each built-in mixer's module and registers its config type, one line per mixer.
macro_rules! registry {
    ($($module:ident :: $spec:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// This crate's mixer families, in registration order.
        fn builtin_mixers() -> Vec<MixerRegistration> {
            vec![$(MixerRegistration::of::<$module::$spec>()),*]
        }
    };
}

registry! {
    identity::IdentityConfig,
    pooling::PoolingConfig,
    random_mixing::RandomMixingConfig,
    sepconv::SepConvConfig,
    attention::AttentionConfig,
    token_mlp::TokenMlpConfig,
    linear_tokens::LinearTokensConfig,
    global_filter::GlobalFilterConfig,
    shift::MixShiftConfig,
    ssm::MambaConfig,
    raft::RaftTokenMixingConfig,
    aff::AdaptiveFrequencyFilterConfig,
    additive::AdditiveTokenMixerConfig,
    hsm_ssd::HsmSsdConfig,
    wave::WaveBlockConfig,
    inception::InceptionMixerConfig,
    ffn::FfnTokenMixerConfig,
    ninformer::MixerGatingUnitConfig,
    linear_attention::LinearAttentionConfig,
    aggregated_attention::AggregatedAttentionConfig,
    hydra::HydraConfig,
    spectrum::DynamicSpectrumConfig,
    strip_attention::StripAttentionConfig,
    tsmixer::PatchMixerConfig,
    dense::DenseMixerConfig,
    ponet::PoNetMixerConfig,
}

pub use aff::AdaptiveFrequencyFilter;
pub use aggregated_attention::AggregatedAttention;
pub use attention::Attention;
pub use ffn::FfnTokenMixer;
pub use gated_conv::GatedConv;
pub use global_filter::GlobalFilter;
pub use hydra::Hydra;
pub use identity::Identity;
pub use inception::InceptionMixer;
pub use linear_attention::LinearAttention;
pub use linear_tokens::LinearTokens;
pub use ninformer::MixerGatingUnit;
pub use pooling::Pooling;
pub use raft::RaftTokenMixing;
pub use random_mixing::RandomMixing;
pub use sepconv::SepConv;
pub use shift::MixShift;
pub use spatial_gating::SpatialGatingUnit;
pub use spectrum::DynamicSpectrum;
pub use ssm::Mamba;
pub use strip_attention::StripAttention;
pub use token_mlp::TokenMlp;
pub use tsmixer::{PatchMixer, TsMixerLayer};
pub use wave::WaveBlock;

/// The tensor layout a token mixer consumes and produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MixerLayout {
    /// Channel-first feature map `(B, C, H, W)`.
    Spatial,
    /// Token sequence `(B, N, C)`.
    Tokens,
    /// Channel-last feature map `(B, H, W, C)`.
    ChannelsLast,
    /// Works on any layout, e.g. the identity; where a concrete layout is needed (a stage, a
    /// norm) it means channel-last, see [`MixerLayout::resolved`].
    Any,
}

impl MixerLayout {
    /// The concrete layout this one runs in: `Any` is channel-last, the others themselves.
    pub fn resolved(self) -> Self {
        match self {
            Self::Any => Self::ChannelsLast,
            other => other,
        }
    }
}

/// A token mixer: maps a tensor to its mixing term, a tensor of the same shape, mixing
/// information across tokens (spatial positions). Object-safe, so a stage can hold mixers
/// chosen at run time.
pub trait TokenMixer: Send + Sync + std::fmt::Debug {
    /// Short name of the mixer family (`"pooling"`, `"attention"`, ...).
    fn name(&self) -> &'static str;
    /// The layout [`TokenMixer::forward`] expects and returns; the one place it is stated.
    fn layout(&self) -> MixerLayout;
    /// Mixes `x` (laid out as [`TokenMixer::layout`] says) into a tensor of the same shape:
    /// the mixing term only, without the input added back.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

impl MixerConfig {
    /// No mixing at all (IdentityFormer).
    pub fn identity() -> Self {
        Self::new(identity::IdentityConfig {})
    }

    /// PoolFormer's 3x3 pooling mixer.
    pub fn pooling() -> Self {
        Self::new(pooling::PoolingConfig::default())
    }

    /// ConvFormer's SepConv: expansion 2, 7x7 depthwise, no biases.
    pub fn sepconv() -> Self {
        Self::new(sepconv::SepConvConfig::default())
    }

    /// CAFormer's attention: head dim 32, no biases.
    pub fn attention() -> Self {
        Self::new(attention::AttentionConfig::default())
    }

    /// The registered default of the mixer family called `kind` (see [`registered_mixers`]).
    pub fn default_of(kind: &str) -> Option<Self> {
        registered_mixers()
            .into_iter()
            .find(|r| r.kind == kind)
            .map(|r| r.default_config())
    }
}

/// A [`MixerError::Config`] for `mixer` saying `msg`, as a candle error.
pub(crate) fn config_error(mixer: &'static str, msg: String) -> candle_core::Error {
    MixerError::Config { mixer, msg }.into()
}

/// Fails unless a token-count-bound mixer's `num_tokens` is in `1..=65536`.
pub(crate) fn check_num_tokens(mixer: &'static str, num_tokens: usize) -> Result<()> {
    if num_tokens == 0 || num_tokens > 1 << 16 {
        return Err(config_error(
            mixer,
            format!("num_tokens must be in 1..=65536, got {num_tokens}"),
        ));
    }
    Ok(())
}

/// Fails unless `ratio` is in `(0, 64]` and gives a hidden width `int(ratio * dim)` of at
/// least one channel.
pub(crate) fn check_ratio(mixer: &'static str, name: &str, ratio: f64, dim: usize) -> Result<()> {
    if !(ratio > 0.0 && ratio <= 64.0) || ((ratio * dim as f64) as usize == 0 && dim > 0) {
        return Err(config_error(
            mixer,
            format!("{name} must be in (0, 64] and give at least one hidden channel of {dim}, got {ratio}"),
        ));
    }
    Ok(())
}

/// Fails unless `x` `(B, N, C)` has the `expected` number of tokens.
pub(crate) fn check_token_count(mixer: &'static str, x: &Tensor, expected: usize) -> Result<()> {
    let n = x.dim(1)?;
    if n != expected {
        return Err(MixerError::TokenCount {
            mixer,
            expected,
            height: 1,
            width: n,
        }
        .into());
    }
    Ok(())
}
