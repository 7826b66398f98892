//! NiNformer's mixer gating unit (Abdullah & Aydin, arXiv 2403.02411; Abdullah-88/NiNformer
//! `ninformer.py`, `MixerGatingUnit`): a whole MLP-Mixer block computes an element-wise gate for
//! a linear projection of the tokens.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::layers::{ActKind, Mlp, Norm, NormConfig, NormKind, Pointwise, TokenLinear};
use crate::{check_num_tokens, check_token_count, config_error, MixerLayout, MixerSpec, TokenMixer};

/// PyTorch's `nn.LayerNorm` defaults: eps 1e-5, with bias.
pub const TORCH_LAYER_NORM: NormConfig = NormConfig {
    kind: NormKind::LayerNorm,
    eps: 1e-5,
    bias: true,
};

/// The MLP-Mixer block inside the gate, `v = x + token_mlp(LN(x))`, `v + channel_mlp(LN(v))`
/// on `(B, N, C)`; the token MLP is `N -> token_dim -> N` along tokens, the channel MLP
/// `C -> channel_dim -> C`, both with GELU and biases. Checkpoint names as the reference's
/// `MixerBlock`: `token_mix.0` (norm), `token_mix.2.net.{0,3}`, `channel_mix.0` (norm),
/// `channel_mix.1.net.{0,3}`.
#[derive(Debug, Clone)]
struct MixerBlock {
    token_norm: Norm,
    token_fc1: TokenLinear,
    token_fc2: TokenLinear,
    channel_norm: Norm,
    channel_mlp: Mlp,
}

impl MixerBlock {
    fn new(cfg: &MixerGatingUnitConfig, dim: usize, vb: VarBuilder) -> Result<Self> {
        let (token, channel) = (vb.pp("token_mix"), vb.pp("channel_mix"));
        let net = channel.pp(1).pp("net");
        Ok(Self {
            token_norm: TORCH_LAYER_NORM.build(dim, MixerLayout::Tokens, token.pp(0))?,
            token_fc1: TokenLinear::new(cfg.seq_len, cfg.token_dim, token.pp("2.net.0"))?,
            token_fc2: TokenLinear::new(cfg.token_dim, cfg.seq_len, token.pp("2.net.3"))?,
            channel_norm: TORCH_LAYER_NORM.build(dim, MixerLayout::Tokens, channel.pp(0))?,
            channel_mlp: Mlp::from_parts(dim, cfg.channel_dim, ActKind::Gelu, net.pp(0), net.pp(3))?,
        })
    }
}

impl Module for MixerBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.token_fc1.forward(&self.token_norm.forward(x)?)?;
        let v = (x + self.token_fc2.forward(&tokenmix_kernels::gelu(&h)?)?)?;
        &v + self.channel_mlp.forward(&self.channel_norm.forward(&v)?)?
    }
}

/// The mixer gating unit `proj(x) * mixer_block(x)` on tokens `(B, N, C)`: `proj` a `C -> C`
/// linear layer with bias, `mixer_block` a full MLP-Mixer block (see the module docs). The token
/// MLP fixes `N` (`seq_len`). Checkpoint names as the reference's `MixerGatingUnit`: `proj`,
/// `Mixer.*`.
#[derive(Debug, Clone)]
pub struct MixerGatingUnit {
    proj: Pointwise,
    mixer: MixerBlock,
    seq_len: usize,
}

impl MixerGatingUnit {
    /// Loads `proj` and `Mixer` for `dim` channels.
    pub fn new(cfg: &MixerGatingUnitConfig, dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            proj: Pointwise::from_linear(dim, dim, true, MixerLayout::Tokens, vb.pp("proj"))?,
            mixer: MixerBlock::new(cfg, dim, vb.pp("Mixer"))?,
            seq_len: cfg.seq_len,
        })
    }
}

impl TokenMixer for MixerGatingUnit {
    fn name(&self) -> &'static str {
        "mixer_gating_unit"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Tokens
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_token_count("mixer_gating_unit", x, self.seq_len)?;
        self.proj.forward(x)? * self.mixer.forward(x)?
    }
}

/// Config of the [`MixerGatingUnit`] mixer, named as the reference's `MixerGatingUnit`
/// arguments; JSON `{"type": "mixer_gating_unit", "seq_len": 64, "token_dim": 512,
/// "channel_dim": 512}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixerGatingUnitConfig {
    /// Tokens `N` the token MLP is built for (fitted to the grid by [`MixerSpec::for_grid`]).
    pub seq_len: usize,
    /// Hidden units of the token MLP.
    pub token_dim: usize,
    /// Hidden units of the channel MLP.
    pub channel_dim: usize,
    /// The reference's dropout (accepted, not applied: inference and tokenmix's training run
    /// without it).
    #[serde(default)]
    pub dropout: f64,
}

impl Default for MixerGatingUnitConfig {
    /// The reference's CIFAR-10 model's: 64 tokens, `d_ffn` 512 for both MLPs.
    fn default() -> Self {
        Self {
            seq_len: 64,
            token_dim: 512,
            channel_dim: 512,
            dropout: 0.0,
        }
    }
}

impl MixerSpec for MixerGatingUnitConfig {
    fn kind(&self) -> &'static str {
        "mixer_gating_unit"
    }

    fn validate(&self, _dim: usize) -> Result<()> {
        for (name, v) in [("token_dim", self.token_dim), ("channel_dim", self.channel_dim)] {
            if v == 0 || v > 1 << 20 {
                return Err(config_error(
                    "mixer_gating_unit",
                    format!("{name} must be in 1..=1048576, got {v}"),
                ));
            }
        }
        check_num_tokens("mixer_gating_unit", self.seq_len)
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(MixerGatingUnit::new(self, dim, vb)?))
    }

    fn macs(&self, dim: usize, _h: usize, _w: usize) -> u64 {
        let (n, d) = (self.seq_len as u64, dim as u64);
        let (t, c) = (self.token_dim as u64, self.channel_dim as u64);
        n * d * d + d * 2 * n * t + n * 2 * d * c + n * d
    }

    fn for_grid(&self, h: usize, w: usize) -> Option<Self> {
        Some(Self {
            seq_len: h * w,
            ..*self
        })
    }
}
