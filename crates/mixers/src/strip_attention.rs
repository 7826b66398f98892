//! tokenmix's reading of S2AFormer's Strip Self-Attention (Xu et al., "S2AFormer: Strip
//! Self-Attention for Efficient Vision Transformer", IEEE TIP 2025, arXiv 2505.22195). The paper
//! released no code and its method section was not available to tokenmix; what its abstract
//! states — keys and values spatially reduced, queries and keys compressed in channels — is
//! kept, and the rest (a depthwise `R x R / R` convolution and a LayerNorm for the reduction, a
//! query/key width of `qk_ratio * C`, full-width values, an output projection) is tokenmix's own
//! choice. The parity fixture only shows that this Rust matches the same equations written in
//! PyTorch (scripts/make_wave2b_fixtures.py).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::layers::{split_heads, Norm, Pointwise};
use crate::ninformer::TORCH_LAYER_NORM;
use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};

/// Strip self-attention on a channel-last map `(B, H, W, C)`: `q = Linear(C -> C_qk)(x)`; the
/// reduced map `r = LN(dw_{R x R / R}(x))` (`r = x` when `sr_ratio` is 1; a side shorter than
/// `R` is zero-padded to it first); `k = Linear(C ->
/// C_qk)(r)`, `v = Linear(C -> C)(r)`; per head `softmax(q kᵀ / sqrt(C_qk / heads)) v`; `proj`.
/// Checkpoint names (tokenmix's own: the paper has no code): `q`, `sr`, `norm`, `k`, `v`,
/// `proj`.
#[derive(Debug, Clone)]
pub struct StripAttention {
    q: Pointwise,
    k: Pointwise,
    v: Pointwise,
    proj: Pointwise,
    /// The reduction's depthwise weight `[C, 1, R, R]`, bias, and its norm.
    reduction: Option<(Tensor, Tensor, Norm)>,
    cfg: StripAttentionConfig,
    qk_dim: usize,
}

impl StripAttention {
    /// Loads the mixer for `dim` channels.
    pub fn new(cfg: &StripAttentionConfig, dim: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate(dim)?;
        let qk = cfg.qk_dim(dim);
        let linear = |i, o, vb| Pointwise::from_linear(i, o, true, MixerLayout::ChannelsLast, vb);
        let r = cfg.sr_ratio;
        let reduction = (r > 1)
            .then(|| -> Result<_> {
                let sr = vb.pp("sr");
                Ok((
                    sr.get((dim, 1, r, r), "weight")?,
                    sr.get(dim, "bias")?,
                    TORCH_LAYER_NORM.build(dim, MixerLayout::ChannelsLast, vb.pp("norm"))?,
                ))
            })
            .transpose()?;
        Ok(Self {
            q: linear(dim, qk, vb.pp("q"))?,
            k: linear(dim, qk, vb.pp("k"))?,
            v: linear(dim, dim, vb.pp("v"))?,
            proj: linear(dim, dim, vb.pp("proj"))?,
            reduction,
            cfg: *cfg,
            qk_dim: qk,
        })
    }
}


impl TokenMixer for StripAttention {
    fn name(&self) -> &'static str {
        "strip_attention"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::ChannelsLast
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let heads = self.cfg.num_heads;
        let reduced = match &self.reduction {
            Some((weight, bias, norm)) => {
                let r = self.cfg.sr_ratio;
                // A map smaller than the reduction is zero-padded to it (one key and value).
                let x = x
                    .pad_with_zeros(1, 0, r.saturating_sub(h))?
                    .pad_with_zeros(2, 0, r.saturating_sub(w))?;
                let y = tokenmix_kernels::depthwise_conv2d_nhwc(&x, weight, Some(bias), r, 0)?;
                norm.forward(&y)?
            }
            None => x.clone(),
        };
        let (_, rh, rw, _) = reduced.dims4()?;
        let q = split_heads(&self.q.forward(x)?.reshape((b, h * w, self.qk_dim))?, heads)?;
        let k = split_heads(&self.k.forward(&reduced)?.reshape((b, rh * rw, self.qk_dim))?, heads)?;
        let v = split_heads(&self.v.forward(&reduced)?.reshape((b, rh * rw, c))?, heads)?;
        let scale = ((self.qk_dim / heads) as f64).powf(-0.5);
        let logits = (q.matmul(&k.transpose(2, 3)?)? * scale)?;
        let attn = crate::layers::softmax_last_dim(&logits)?;
        let y = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, h, w, c))?;
        self.proj.forward(&y)
    }
}

/// Config of the [`StripAttention`] mixer; JSON `{"type": "strip_attention", "num_heads": 1,
/// "sr_ratio": 8, "qk_ratio": 0.5}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripAttentionConfig {
    /// Number of heads (dividing the query/key width and the channels).
    pub num_heads: usize,
    /// Spatial reduction of the keys and values (1: none).
    pub sr_ratio: usize,
    /// Query/key width as a fraction of the channels.
    pub qk_ratio: f64,
}

impl Default for StripAttentionConfig {
    /// A first stage: one head, reduction 8, queries and keys at half width.
    fn default() -> Self {
        Self {
            num_heads: 1,
            sr_ratio: 8,
            qk_ratio: 0.5,
        }
    }
}

impl StripAttentionConfig {
    fn qk_dim(&self, dim: usize) -> usize {
        (self.qk_ratio * dim as f64) as usize
    }
}

impl MixerSpec for StripAttentionConfig {
    fn kind(&self) -> &'static str {
        "strip_attention"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        let fail = |msg: String| Err(config_error("strip_attention", msg));
        crate::check_ratio("strip_attention", "qk_ratio", self.qk_ratio, dim)?;
        let (heads, qk) = (self.num_heads, self.qk_dim(dim));
        if heads == 0 || heads > 4096 || !qk.is_multiple_of(heads) || !dim.is_multiple_of(heads) {
            return fail(format!(
                "num_heads must be in 1..=4096 and divide both the query/key width {qk} and the \
                 channels {dim}, got {heads}"
            ));
        }
        if !(1..=64).contains(&self.sr_ratio) {
            return fail(format!("sr_ratio must be in 1..=64, got {}", self.sr_ratio));
        }
        Ok(())
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(StripAttention::new(self, dim, vb)?))
    }

    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let r = self.sr_ratio.max(1);
        let (n, m) = ((h * w) as u64, ((h / r).max(1) * (w / r).max(1)) as u64);
        let (c, qk) = (dim as u64, self.qk_dim(dim) as u64);
        let reduction = if r > 1 { m * c * (r * r) as u64 } else { 0 };
        n * c * qk + reduction + m * c * (qk + c) + n * m * (qk + c) + n * c * c
    }
}
