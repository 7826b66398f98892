//! The mixers of IBM's TSMixer (`PatchTSMixer` in Hugging Face transformers,
//! `models/patchtsmixer/modeling_patchtsmixer.py`) and of Tiny Time Mixers (granite-tsfm
//! `tsfm_public/models/tinytimemixer/`), which reuses them: MLPs with "gated attention" along
//! the three axes of a patched multivariate series `(B, V, N, C)` — `V` variates (channels of
//! the series), `N` patches (the tokens), `C` = `d_model` features.
//!
//! * [`PatchMixer`]: the token mixer, an MLP over the patch axis followed by the gate
//!   `h * softmax_N(W h + b)`, optionally plus single-head-or-more self-attention over patches
//!   and a norm of the sum (the reference's `PatchMixerBlock` without its pre-norm and residual).
//! * [`FeatureMixer`]: the channel MLP over `d_model` and its gate (`FeatureMixerBlock`).
//! * [`ChannelMixer`]: the MLP over variates of `mix_channel` mode, gate first
//!   (`PatchTSMixerChannelFeatureMixerBlock`).
//! * [`TsMixerLayer`]: one layer of the encoder, each part a pre-norm residual branch.
//!
//! Checkpoint names follow the reference (`patch_mixer.norm.norm.weight`,
//! `patch_mixer.mlp.fc1.weight`, `patch_mixer.gating_block.attn_layer.weight`, ...). Dropout
//! (the reference's `dropout`) is not applied: these layers compute the evaluation-mode
//! function, also in training.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::layers::{
    softmax_last_dim, split_heads, ActKind, BatchNorm, Mlp, Norm, NormConfig, NormKind, Pointwise,
    TokenLinear,
};
use crate::token_mlp::TokenMlp;
use crate::{check_num_tokens, check_token_count, config_error, MixerLayout, MixerSpec, TokenMixer};

/// Which norm the reference's `norm_mlp` selects ("LayerNorm", or any name containing "batch").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TsNormKind {
    /// `nn.LayerNorm(d_model)` over the feature axis.
    #[default]
    LayerNorm,
    /// `nn.BatchNorm1d(d_model)` with its running statistics, per feature.
    BatchNorm,
}

/// PatchTSMixer's `PatchTSMixerNormLayer` over the last axis of `(..., C)`: a LayerNorm
/// (checkpoint `norm.weight`, `norm.bias`) or a BatchNorm1d with running statistics
/// (`norm.batchnorm.{weight,bias,running_mean,running_var}`), both with `eps`.
#[derive(Debug, Clone)]
pub enum TsNorm {
    /// Statistics of each row.
    Layer(Norm),
    /// Frozen per-feature statistics.
    Batch(BatchNorm),
}

impl TsNorm {
    /// Loads the norm of `dim` features from `vb` (the reference's `norm` module, which holds
    /// the torch norm as its own `norm`).
    pub fn new(kind: TsNormKind, dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("norm");
        Ok(match kind {
            TsNormKind::LayerNorm => {
                let cfg = NormConfig {
                    kind: NormKind::LayerNorm,
                    eps,
                    bias: true,
                };
                Self::Layer(cfg.build(dim, MixerLayout::Tokens, vb)?)
            }
            TsNormKind::BatchNorm => Self::Batch(BatchNorm::with_eps(dim, eps, vb.pp("batchnorm"))?),
        })
    }
}

impl Module for TsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Layer(norm) => norm.forward(x),
            Self::Batch(bn) => bn.forward_channels_last(x),
        }
    }
}

/// Softmax over axis 1 of `(B, N, C)`, differentiable.
fn softmax_tokens(x: &Tensor) -> Result<Tensor> {
    crate::layers::in_f32(x, |x| {
        let shifted = x.broadcast_sub(&x.max_keepdim(1)?)?.exp()?;
        shifted.broadcast_div(&shifted.sum_keepdim(1)?)
    })
}

/// The reference's `PatchTSMixerAttention` over the tokens of `(B, N, C)`: `q, k, v, out`
/// projections with biases (`q_proj`, `k_proj`, `v_proj`, `out_proj`), `heads` heads, scale
/// `head_dim^-0.5`, softmax over keys.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    q: Pointwise,
    k: Pointwise,
    v: Pointwise,
    out: Pointwise,
    heads: usize,
}

impl SelfAttention {
    /// Loads the four `[dim, dim]` projections; `heads` must divide `dim`.
    pub fn new(dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let proj =
            |name: &str| Pointwise::from_linear(dim, dim, true, MixerLayout::Tokens, vb.pp(name));
        Ok(Self {
            q: proj("q_proj")?,
            k: proj("k_proj")?,
            v: proj("v_proj")?,
            out: proj("out_proj")?,
            heads,
        })
    }
}

impl Module for SelfAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let q = split_heads(&self.q.forward(x)?, self.heads)?;
        let k = split_heads(&self.k.forward(x)?, self.heads)?;
        let v = split_heads(&self.v.forward(x)?, self.heads)?;
        let scale = ((c / self.heads) as f64).powf(-0.5);
        let logits = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
        let y = softmax_last_dim(&logits)?.matmul(&v)?;
        self.out
            .forward(&y.transpose(1, 2)?.contiguous()?.reshape((b, n, c))?)
    }
}

/// PatchTSMixer's patch mixer on `(B, N, C)` tokens (`N` patches of `C` features): the MLP
/// `fc2(gelu(fc1(x)))` along `N` (`fc1: N -> N * expansion`), then, with `gated_attn`, the
/// gate `h * softmax_N(W h + b)` (`W: [N, N]`), and with `self_attn`, `norm_attn(h + attn(x))`.
/// Checkpoint names `mlp.fc1`, `mlp.fc2`, `gating_block.attn_layer`, `self_attn_layer.*`,
/// `norm_attn.norm.*`.
#[derive(Debug, Clone)]
pub struct PatchMixer {
    mlp: TokenMlp,
    gate: Option<TokenLinear>,
    attn: Option<(SelfAttention, TsNorm)>,
    num_tokens: usize,
}

impl PatchMixer {
    /// Loads the mixer for `dim` features from `vb` (the reference's `patch_mixer` prefix).
    pub fn new(cfg: &PatchMixerConfig, dim: usize, vb: VarBuilder) -> Result<Self> {
        let n = cfg.num_tokens;
        let mlp = TokenMlp::new(n, n * cfg.expansion_factor, ActKind::Gelu, false, vb.pp("mlp"))?;
        let gate = cfg
            .gated_attn
            .then(|| TokenLinear::new(n, n, vb.pp("gating_block").pp("attn_layer")))
            .transpose()?;
        let attn = if cfg.self_attn {
            let attn = SelfAttention::new(dim, cfg.self_attn_heads, vb.pp("self_attn_layer"))?;
            let norm = TsNorm::new(cfg.norm, dim, cfg.norm_eps, vb.pp("norm_attn"))?;
            Some((attn, norm))
        } else {
            None
        };
        Ok(Self {
            mlp,
            gate,
            attn,
            num_tokens: n,
        })
    }
}

impl TokenMixer for PatchMixer {
    fn name(&self) -> &'static str {
        "patch_mixer"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Tokens
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_token_count("patch_mixer", x, self.num_tokens)?;
        let mut h = self.mlp.forward(x)?;
        if let Some(gate) = &self.gate {
            h = (&h * softmax_tokens(&gate.forward(&h)?)?)?;
        }
        if let Some((attn, norm)) = &self.attn {
            h = norm.forward(&(h + attn.forward(x)?)?)?;
        }
        Ok(h)
    }
}

/// Config of a [`PatchMixer`], with the reference config's names; JSON
/// `{"type": "patch_mixer", "num_tokens": 8, ...}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PatchMixerConfig {
    /// Patches per sequence (`num_patches`), fixed by the weights.
    pub num_tokens: usize,
    /// Hidden width of the MLP as a multiple of `num_tokens`.
    pub expansion_factor: usize,
    /// Whether the gate follows the MLP.
    pub gated_attn: bool,
    /// Whether self-attention over patches is added.
    pub self_attn: bool,
    /// Heads of that attention (must divide the features).
    pub self_attn_heads: usize,
    /// The norm after the attention sum.
    pub norm: TsNormKind,
    /// That norm's epsilon.
    pub norm_eps: f64,
}

impl Default for PatchMixerConfig {
    fn default() -> Self {
        Self {
            num_tokens: 8,
            expansion_factor: 2,
            gated_attn: true,
            self_attn: false,
            self_attn_heads: 1,
            norm: TsNormKind::LayerNorm,
            norm_eps: 1e-5,
        }
    }
}

impl MixerSpec for PatchMixerConfig {
    fn kind(&self) -> &'static str {
        "patch_mixer"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        check_num_tokens("patch_mixer", self.num_tokens)?;
        check_expansion("patch_mixer", self.expansion_factor)?;
        if self.self_attn && (self.self_attn_heads == 0 || !dim.is_multiple_of(self.self_attn_heads)) {
            return Err(config_error(
                "patch_mixer",
                format!(
                    "self_attn_heads must divide the {dim} features, got {}",
                    self.self_attn_heads
                ),
            ));
        }
        check_eps("patch_mixer", self.norm_eps)
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(PatchMixer::new(self, dim, vb)?))
    }

    fn macs(&self, dim: usize, _h: usize, _w: usize) -> u64 {
        let (n, d) = (self.num_tokens as u64, dim as u64);
        let e = self.expansion_factor as u64;
        let mlp = 2 * d * n * n * e;
        let gate = if self.gated_attn { d * n * n } else { 0 };
        let attn = if self.self_attn {
            4 * n * d * d + 2 * n * n * d
        } else {
            0
        };
        mlp + gate + attn
    }

    fn for_grid(&self, h: usize, w: usize) -> Option<Self> {
        Some(Self {
            num_tokens: h * w,
            ..*self
        })
    }
}

/// Fails unless an MLP expansion factor is in `1..=64`.
pub(crate) fn check_expansion(mixer: &'static str, e: usize) -> Result<()> {
    if !(1..=64).contains(&e) {
        return Err(config_error(
            mixer,
            format!("expansion_factor must be in 1..=64, got {e}"),
        ));
    }
    Ok(())
}

/// Fails unless a norm epsilon is finite and in `(0, 1)`.
pub(crate) fn check_eps(mixer: &'static str, eps: f64) -> Result<()> {
    if !(eps > 0.0 && eps < 1.0) {
        return Err(config_error(
            mixer,
            format!("norm_eps must be in (0, 1), got {eps}"),
        ));
    }
    Ok(())
}

/// An MLP over the last axis (`fc1: dim -> dim * expansion`, exact GELU, `fc2` back to `dim`)
/// followed by the gate `h * softmax(W h + b)` over the same axis when `gated`: the feature
/// mixer's body, and the channel mixer's with the gate first. Names `mlp.fc1`, `mlp.fc2`,
/// `gating_block.attn_layer`.
#[derive(Debug, Clone)]
struct GatedMlp {
    mlp: Mlp,
    gate: Option<Pointwise>,
    gate_first: bool,
}

impl GatedMlp {
    fn new(dim: usize, expansion: usize, gated: bool, gate_first: bool, vb: VarBuilder) -> Result<Self> {
        let layout = MixerLayout::Tokens;
        let mlp = Mlp::new(dim, dim * expansion, ActKind::Gelu, true, layout, vb.pp("mlp"))?;
        let gate = gated
            .then(|| {
                Pointwise::from_linear(dim, dim, true, layout, vb.pp("gating_block").pp("attn_layer"))
            })
            .transpose()?;
        Ok(Self {
            mlp,
            gate,
            gate_first,
        })
    }

    fn gated(&self, x: &Tensor) -> Result<Tensor> {
        match &self.gate {
            Some(gate) => x * softmax_last_dim(&gate.forward(x)?)?,
            None => Ok(x.clone()),
        }
    }
}

impl Module for GatedMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.gate_first {
            self.mlp.forward(&self.gated(x)?)
        } else {
            self.gated(&self.mlp.forward(x)?)
        }
    }
}

/// PatchTSMixer's feature mixer on `(..., C)`: `fc2(gelu(fc1(x)))` over the `C` features, then
/// the gate over them (the body of `FeatureMixerBlock`, without its norm and residual).
#[derive(Debug, Clone)]
pub struct FeatureMixer(GatedMlp);

impl FeatureMixer {
    /// Loads the mixer of `dim` features (hidden `dim * expansion`) from `vb`.
    pub fn new(dim: usize, expansion: usize, gated_attn: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self(GatedMlp::new(dim, expansion, gated_attn, false, vb)?))
    }
}

impl Module for FeatureMixer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)
    }
}

/// PatchTSMixer's channel mixer of `mix_channel` mode on `(B, V, N, C)`: the gate over the `V`
/// variates, then the MLP over them (hidden `V * expansion`), at every patch and feature (the
/// body of `PatchTSMixerChannelFeatureMixerBlock`).
#[derive(Debug, Clone)]
pub struct ChannelMixer(GatedMlp);

impl ChannelMixer {
    /// Loads the mixer of `variates` series channels from `vb`.
    pub fn new(variates: usize, expansion: usize, gated_attn: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self(GatedMlp::new(variates, expansion, gated_attn, true, vb)?))
    }
}

impl Module for ChannelMixer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let variates_last = x.permute((0, 3, 2, 1))?.contiguous()?;
        self.0.forward(&variates_last)?.permute((0, 3, 2, 1))?.contiguous()
    }
}

/// The hyper-parameters of a [`TsMixerLayer`], as the reference config names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TsMixerLayerConfig {
    /// Features per patch (`d_model`).
    pub d_model: usize,
    /// Patches per series (`num_patches`).
    pub num_patches: usize,
    /// Series channels (`num_input_channels`); used by the channel mixer only.
    pub num_channels: usize,
    /// MLP expansion factor.
    pub expansion_factor: usize,
    /// Gates after (before, for channels) every MLP.
    pub gated_attn: bool,
    /// Self-attention in the patch mixer.
    pub self_attn: bool,
    /// Its heads.
    pub self_attn_heads: usize,
    /// The norm of every branch.
    pub norm: TsNormKind,
    /// Its epsilon.
    pub norm_eps: f64,
    /// `mix_channel` mode: a channel mixer first.
    pub mix_channel: bool,
    /// Omit the patch mixer when there is a single patch (Tiny Time Mixers do; PatchTSMixer
    /// always has one).
    pub skip_single_patch: bool,
}

impl TsMixerLayerConfig {
    /// The patch mixer's config.
    pub fn patch_mixer(&self) -> PatchMixerConfig {
        PatchMixerConfig {
            num_tokens: self.num_patches,
            expansion_factor: self.expansion_factor,
            gated_attn: self.gated_attn,
            self_attn: self.self_attn,
            self_attn_heads: self.self_attn_heads,
            norm: self.norm,
            norm_eps: self.norm_eps,
        }
    }
}

/// One `PatchTSMixerLayer` (or TTM's `TinyTimeMixerLayer`) on `(B, V, N, C)`: in
/// `mix_channel` mode `x + channel_mixer(norm(x))`, then `x + patch_mixer(norm(x))` (per
/// variate; TTM leaves it out for a single patch), then
/// `x + feature_mixer(norm(x))`. Names `channel_feature_mixer.*`, `patch_mixer.*`,
/// `feature_mixer.*`, each branch's norm under its `norm`.
#[derive(Debug, Clone)]
pub struct TsMixerLayer {
    channel: Option<(TsNorm, ChannelMixer)>,
    patch: Option<(TsNorm, PatchMixer)>,
    feature: (TsNorm, FeatureMixer),
}

impl TsMixerLayer {
    /// Loads the layer from `vb` (`mixers.{i}` in the reference).
    pub fn new(cfg: &TsMixerLayerConfig, vb: VarBuilder) -> Result<Self> {
        let norm = |vb: VarBuilder, dim: usize| TsNorm::new(cfg.norm, dim, cfg.norm_eps, vb);
        let channel = if cfg.mix_channel {
            let vb = vb.pp("channel_feature_mixer");
            let mixer = ChannelMixer::new(cfg.num_channels, cfg.expansion_factor, cfg.gated_attn, vb.clone())?;
            Some((norm(vb.pp("norm"), cfg.d_model)?, mixer))
        } else {
            None
        };
        let patch = if cfg.skip_single_patch && cfg.num_patches == 1 {
            None
        } else {
            let pvb = vb.pp("patch_mixer");
            Some((
                norm(pvb.pp("norm"), cfg.d_model)?,
                PatchMixer::new(&cfg.patch_mixer(), cfg.d_model, pvb)?,
            ))
        };
        let fvb = vb.pp("feature_mixer");
        let feature = (
            norm(fvb.pp("norm"), cfg.d_model)?,
            FeatureMixer::new(cfg.d_model, cfg.expansion_factor, cfg.gated_attn, fvb)?,
        );
        Ok(Self {
            channel,
            patch,
            feature,
        })
    }
}

impl Module for TsMixerLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, v, n, c) = x.dims4()?;
        let mut x = x.clone();
        if let Some((norm, mixer)) = &self.channel {
            x = (&x + mixer.forward(&norm.forward(&x)?)?)?;
        }
        if let Some((norm, mixer)) = &self.patch {
            let tokens = norm.forward(&x)?.reshape((b * v, n, c))?;
            x = (&x + mixer.forward(&tokens)?.reshape((b, v, n, c))?)?;
        }
        let (norm, mixer) = &self.feature;
        &x + mixer.forward(&norm.forward(&x)?)?
    }
}
