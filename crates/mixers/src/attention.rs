//! Multi-head self-attention, the token mixer of CAFormer's last stages.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::Pointwise;
use crate::{MixerLayout, TokenMixer};

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
