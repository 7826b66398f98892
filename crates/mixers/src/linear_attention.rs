//! LinFusion's generalized linear attention (Liu et al., arXiv 2409.02097; Huage001/LinFusion
//! `src/linfusion/attention.py`, `GeneralizedLinearAttention`): non-causal, normalized linear
//! attention whose cost grows linearly with the number of tokens, resolution-agnostic (no weight
//! depends on `N`).
//!
//! LinFusion releases it only as a distilled replacement of Stable Diffusion's attention; here
//! it is a token mixer for any token stage (the `linattnformer_*` models put it where CAFormer
//! has softmax attention).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::layers::{split_heads, Norm, Pointwise};
use crate::ninformer::TORCH_LAYER_NORM;
use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};

/// The non-linear projection added to the queries' and keys' input,
/// `Linear(C, mid) -> LayerNorm -> LeakyReLU(0.01) -> Linear(mid, C)` (checkpoint names `0`,
/// `1`, `3`, as the reference's `Sequential`).
#[derive(Debug, Clone)]
struct NonLinearProjection {
    fc1: Pointwise,
    norm: Norm,
    fc2: Pointwise,
}

impl NonLinearProjection {
    fn new(dim: usize, mid: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: Pointwise::from_linear(dim, mid, true, MixerLayout::Tokens, vb.pp(0))?,
            norm: TORCH_LAYER_NORM.build(mid, MixerLayout::Tokens, vb.pp(1))?,
            fc2: Pointwise::from_linear(mid, dim, true, MixerLayout::Tokens, vb.pp(3))?,
        })
    }
}

impl Module for NonLinearProjection {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.norm.forward(&self.fc1.forward(x)?)?;
        self.fc2.forward(&candle_nn::ops::leaky_relu(&h, 0.01)?)
    }
}

/// Generalized linear attention on tokens `(B, N, C)`: `q = to_q(x + to_q_(x))`,
/// `k = to_k(x + to_k_(x))`, `v = to_v(x)` (`C -> heads * dim_head`, split into heads),
/// `phi = elu + 1` on `q` and `k`, then per head
/// `out = phi(q) (phi(k)^T v / N) / (phi(q) . mean_N(phi(k)) + 1e-4)`, heads merged, and
/// `to_out.0` (`heads * dim_head -> C`, bias). `to_q_` / `to_k_` are
/// [`LinearAttentionConfig::projection_mid_dim`]'s non-linear projections (absent when it is
/// -1). Checkpoint names as the reference: `to_q`, `to_k`, `to_v`, `to_q_.{0,1,3}`,
/// `to_k_.{0,1,3}`, `to_out.0`.
#[derive(Debug, Clone)]
pub struct LinearAttention {
    to_q: Pointwise,
    to_k: Pointwise,
    to_v: Pointwise,
    q_projection: Option<NonLinearProjection>,
    k_projection: Option<NonLinearProjection>,
    to_out: Pointwise,
    heads: usize,
    dim_head: usize,
}

impl LinearAttention {
    /// Loads the projections for `dim` channels.
    pub fn new(cfg: &LinearAttentionConfig, dim: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate(dim)?;
        let (heads, dim_head) = (cfg.heads(dim), cfg.dim_head);
        let inner = heads * dim_head;
        let linear = |i, o, bias, vb: VarBuilder| {
            Pointwise::from_linear(i, o, bias, MixerLayout::Tokens, vb)
        };
        let projection = |vb: VarBuilder| {
            cfg.mid_dim(dim)
                .map(|mid| NonLinearProjection::new(dim, mid, vb))
                .transpose()
        };
        Ok(Self {
            to_q: linear(dim, inner, cfg.bias, vb.pp("to_q"))?,
            to_k: linear(dim, inner, cfg.bias, vb.pp("to_k"))?,
            to_v: linear(dim, inner, cfg.bias, vb.pp("to_v"))?,
            q_projection: projection(vb.pp("to_q_"))?,
            k_projection: projection(vb.pp("to_k_"))?,
            to_out: linear(inner, dim, cfg.out_bias, vb.pp("to_out").pp(0))?,
            heads,
            dim_head,
        })
    }

    fn projected(x: &Tensor, projection: &Option<NonLinearProjection>) -> Result<Tensor> {
        match projection {
            Some(p) => x + p.forward(x)?,
            None => Ok(x.clone()),
        }
    }
}

/// `elu(x) + 1`, the positive feature map of the queries and keys.
fn elu_plus_one(x: &Tensor) -> Result<Tensor> {
    x.elu(1.0)? + 1.0
}

impl TokenMixer for LinearAttention {
    fn name(&self) -> &'static str {
        "linear_attention"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Tokens
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let q = self.to_q.forward(&Self::projected(x, &self.q_projection)?)?;
        let k = self.to_k.forward(&Self::projected(x, &self.k_projection)?)?;
        let v = split_heads(&self.to_v.forward(x)?, self.heads)?;
        let q = elu_plus_one(&split_heads(&q, self.heads)?)?;
        let k = elu_plus_one(&split_heads(&k, self.heads)?)?;
        let inv_n = 1.0 / n as f64;
        // (B, h, N, 1): each query against the mean key.
        let mean_key = crate::layers::in_f32(&k, |k| k.mean_keepdim(D::Minus2))?;
        let z = (q.matmul(&mean_key.transpose(2, 3)?)? + 1e-4)?;
        // (B, h, d, d): sum over tokens of k^T v, divided by N.
        let kv = (k.transpose(2, 3)?.matmul(&v)? * inv_n)?;
        let out = q.matmul(&kv)?.broadcast_div(&z)?;
        let out = out
            .transpose(1, 2)?
            .reshape((b, n, self.heads * self.dim_head))?;
        self.to_out.forward(&out)
    }
}

/// Config of the [`LinearAttention`] mixer, named as the reference's (diffusers `Attention`)
/// arguments; JSON `{"type": "linear_attention", "dim_head": 32, "heads": null, "bias": false,
/// "out_bias": true, "projection_mid_dim": null}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearAttentionConfig {
    /// Channels per head.
    pub dim_head: usize,
    /// Number of heads; `None` means `dim / dim_head`.
    #[serde(default)]
    pub heads: Option<usize>,
    /// Whether `to_q`, `to_k`, `to_v` have biases.
    #[serde(default)]
    pub bias: bool,
    /// Whether `to_out.0` has a bias.
    #[serde(default = "yes")]
    pub out_bias: bool,
    /// Hidden width of the queries' and keys' non-linear projections: `None` means
    /// `heads * dim_head` (the reference's `to_q` width), -1 means no projection (the reference's
    /// convention), otherwise the width. The projections map the `C` input channels to that
    /// width and back; the reference only allows `heads * dim_head == C`, where this is its
    /// `C -> mid -> C`.
    #[serde(default)]
    pub projection_mid_dim: Option<i64>,
}

fn yes() -> bool {
    true
}

impl Default for LinearAttentionConfig {
    /// CAFormer's head width (32 channels, `dim / 32` heads), the reference's biases (none on
    /// `q`, `k`, `v`; one on the output) and its projections at full width.
    fn default() -> Self {
        Self {
            dim_head: 32,
            heads: None,
            bias: false,
            out_bias: true,
            projection_mid_dim: None,
        }
    }
}

impl LinearAttentionConfig {
    /// Heads for `dim` channels.
    pub fn heads(&self, dim: usize) -> usize {
        self.heads
            .unwrap_or_else(|| crate::attention::num_heads(dim, self.dim_head))
    }

    /// The projections' hidden width for `dim` channels, `None` without projections.
    fn mid_dim(&self, dim: usize) -> Option<usize> {
        match self.projection_mid_dim {
            None => Some(self.heads(dim) * self.dim_head),
            Some(-1) => None,
            Some(m) => Some(m as usize),
        }
    }
}

impl MixerSpec for LinearAttentionConfig {
    fn kind(&self) -> &'static str {
        "linear_attention"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        let fail = |msg: String| Err(config_error("linear_attention", msg));
        if self.dim_head == 0 || self.dim_head > 4096 || dim == 0 {
            return fail(format!(
                "dim_head must be in 1..=4096 and dim positive, got {} and {dim}",
                self.dim_head
            ));
        }
        let heads = self.heads(dim);
        if heads == 0 || heads > 4096 || heads * self.dim_head > 1 << 20 {
            return fail(format!(
                "heads must be in 1..=4096 with heads * dim_head at most 1048576, got {heads} * {}",
                self.dim_head
            ));
        }
        match self.projection_mid_dim {
            Some(m) if m != -1 && !(1..=1 << 20).contains(&m) => fail(format!(
                "projection_mid_dim must be null, -1 or in 1..=1048576, got {m}"
            )),
            _ => Ok(()),
        }
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(LinearAttention::new(self, dim, vb)?))
    }

    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let (n, c) = ((h * w) as u64, dim as u64);
        let (heads, d) = (self.heads(dim) as u64, self.dim_head as u64);
        let inner = heads * d;
        let projections = self.mid_dim(dim).map_or(0, |m| 2 * n * 2 * c * m as u64);
        projections + 3 * n * c * inner + heads * (2 * n * d * d + n * d) + n * inner * c
    }
}
