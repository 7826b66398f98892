//! gMLP's spatial gating unit (timm `mlp_mixer.py` `SpatialGatingUnit`), the part of gMLP's
//! gated channel MLP that mixes tokens. It halves the width, so it is a block body used by the
//! gMLP block (`fc1 -> GELU -> gate -> fc2`), not a shape-keeping [`crate::TokenMixer`].

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::layers::{Norm, NormConfig, NormKind, TokenLinear};
use crate::{check_token_count, MixerLayout};

/// The norm of gMLP's spatial gating unit (PyTorch's default `nn.LayerNorm`).
const SGU_NORM: NormConfig = NormConfig {
    kind: NormKind::LayerNorm,
    eps: 1e-5,
    bias: true,
};

/// `u * proj(norm(v))` for `(B, N, 2D)` hidden activations split into halves `[u, v]` along
/// channels, giving `(B, N, D)`: `norm` a LayerNorm over the `D` channels of `v` (eps 1e-5,
/// with bias), `proj` a `Linear(N, N)` along the token axis. Checkpoint names `norm`, `proj`.
#[derive(Debug, Clone)]
pub struct SpatialGatingUnit {
    norm: Norm,
    proj: TokenLinear,
    num_tokens: usize,
}

impl SpatialGatingUnit {
    /// Loads `norm` and `proj` for gating `dim` channels (half the hidden width) over
    /// `num_tokens` tokens.
    pub fn new(dim: usize, num_tokens: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: SGU_NORM.build(dim, MixerLayout::Tokens, vb.pp("norm"))?,
            proj: TokenLinear::new(num_tokens, num_tokens, vb.pp("proj"))?,
            num_tokens,
        })
    }

    /// Multiply-accumulates of one forward pass for one sample with `dim` gated channels.
    pub fn macs(&self, dim: usize) -> u64 {
        (self.num_tokens as u64).pow(2) * dim as u64
    }
}

impl Module for SpatialGatingUnit {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_token_count("spatial_gating", x, self.num_tokens)?;
        let half = x.dim(D::Minus1)? / 2;
        let (u, v) = (
            x.narrow(D::Minus1, 0, half)?,
            x.narrow(D::Minus1, half, half)?,
        );
        u * self.proj.forward(&self.norm.forward(&v.contiguous()?)?)?
    }
}
