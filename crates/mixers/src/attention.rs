//! Multi-head self-attention, the token mixer of CAFormer's last stages.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::Pointwise;
use serde::{Deserialize, Serialize};

use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};

/// Number of heads for `dim` channels of `head_dim` each (`dim / head_dim`, at least one).
pub fn num_heads(dim: usize, head_dim: usize) -> usize {
    (dim / head_dim).max(1)
}

/// Vanilla multi-head self-attention on `(B, N, C)` without positional embedding
/// (timm `metaformer.Attention`): `heads = C / head_dim`, `A = heads * head_dim`,
/// `qkv: Linear(C, 3A)` with rows ordered `[q heads, k heads, v heads]`, scaled dot product with
/// scale `head_dim^-0.5`, softmax over keys, `proj: Linear(A, C)`.
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Pointwise,
    proj: Pointwise,
    num_heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    /// Loads `qkv` and `proj` for `dim` channels.
    pub fn new(
        dim: usize,
        head_dim: usize,
        qkv_bias: bool,
        proj_bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let heads = num_heads(dim, head_dim);
        let attn_dim = heads * head_dim;
        let linear = |i, o, bias, vb: VarBuilder| {
            Pointwise::from_linear(i, o, bias, MixerLayout::Tokens, vb)
        };
        Ok(Self {
            qkv: linear(dim, 3 * attn_dim, qkv_bias, vb.pp("qkv"))?,
            proj: linear(attn_dim, dim, proj_bias, vb.pp("proj"))?,
            num_heads: heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }
}

impl TokenMixer for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Tokens
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, n, 3, self.num_heads, self.head_dim))?;
        self.proj
            .forward(&tokenmix_kernels::self_attention(&qkv, self.scale)?)
    }
}

/// Config of the [`Attention`] mixer; JSON
/// `{"type": "attention", "head_dim": 32, "qkv_bias": false, "proj_bias": false}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionConfig {
    /// Channels per head.
    pub head_dim: usize,
    /// Whether the qkv projection has a bias.
    pub qkv_bias: bool,
    /// Whether the output projection has a bias.
    pub proj_bias: bool,
}

impl Default for AttentionConfig {
    /// CAFormer's: head dim 32, no biases.
    fn default() -> Self {
        Self {
            head_dim: 32,
            qkv_bias: false,
            proj_bias: false,
        }
    }
}

impl MixerSpec for AttentionConfig {
    fn kind(&self) -> &'static str {
        "attention"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        if self.head_dim == 0 || self.head_dim > 4096 || dim == 0 {
            return Err(config_error(
                "attention",
                format!(
                    "head_dim must be in 1..=4096 and dim positive, got {} and {dim}",
                    self.head_dim
                ),
            ));
        }
        Ok(())
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(Attention::new(
            dim,
            self.head_dim,
            self.qkv_bias,
            self.proj_bias,
            vb,
        )?))
    }

    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let (n, dim) = ((h * w) as u64, dim as u64);
        let a = (num_heads(dim as usize, self.head_dim) * self.head_dim) as u64;
        n * dim * a * 3 + n * a * dim + 2 * n * n * a
    }
}
