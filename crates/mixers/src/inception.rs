//! The Inception Transformer's inception token mixer (Si et al., "Inception Transformer",
//! NeurIPS 2022, arXiv 2205.12956), with the tensor names of sail-sg/iFormer
//! (`models/inception_transformer.py`, `Mixer`, `HighMixer`, `LowMixer`).
//!
//! The channels are split: the first `high_dim` go to two high-frequency branches (half through
//! `1x1 -> depthwise 3x3 -> GELU`, half through `max-pool 3x3 -> 1x1 -> GELU`, each doubling its
//! channels), the last `low_dim = attention_head * head_dim` to multi-head self-attention over
//! average-pooled tokens, upsampled back by nearest neighbour. The branches are concatenated,
//! refined by `y + depthwise3x3(y)` and projected back to the block's width.
//!
//! The reference views the attention output as a square `sqrt(N) x sqrt(N)` map, so it runs
//! square maps whose sides the pooling divides. Here any map runs: the attention keeps the
//! map's own height and width, and where a side is odd the pooled grid covers its even part and
//! the upsampled map repeats its last row or column (equal to the reference where it runs).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use tokenmix_kernels::depthwise_conv2d_nhwc;

use crate::layers::{Act, Pointwise};
use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};

/// The reference's `HighMixer` on channel-last maps: `conv1` (1x1, no bias) and `proj1`
/// (depthwise 3x3, no bias) on the first `dim / 2` channels, max-pool and `proj2` (1x1 with
/// bias) on the rest, each doubling its channels and followed by GELU. (The reference takes
/// `dim / 2` for both halves, so it needs an even `dim`; here an odd one gives the pooled half the
/// extra channel.)
#[derive(Debug, Clone)]
struct HighMixer {
    half: usize,
    rest: usize,
    conv1: Pointwise,
    proj1: Tensor,
    proj2: Pointwise,
}

impl HighMixer {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let (half, rest) = (dim / 2, dim - dim / 2);
        let cl = MixerLayout::ChannelsLast;
        Ok(Self {
            half,
            rest,
            conv1: Pointwise::conv1x1(half, 2 * half, false, cl, vb.pp("conv1"))?,
            proj1: vb.pp("proj1").get((2 * half, 1, 3, 3), "weight")?,
            proj2: Pointwise::conv1x1(rest, 2 * rest, true, cl, vb.pp("proj2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let conv = self.conv1.forward(&x.narrow(3, 0, self.half)?)?;
        let conv = tokenmix_kernels::gelu(&depthwise_conv2d_nhwc(&conv, &self.proj1, None, 1, 1)?)?;
        let pooled = max_pool3x3_nhwc(&x.narrow(3, self.half, self.rest)?)?;
        let pooled = self.proj2.forward_act(&pooled, &Act::Gelu)?;
        Tensor::cat(&[conv, pooled], 3)
    }
}

/// `nn.MaxPool2d(3, stride=1, padding=1)` of a channel-last map: the padding is `-inf`, and an
/// edge replicated outward never beats the pixel it copies, so padding by replication gives the
/// same maxima.
fn max_pool3x3_nhwc(x: &Tensor) -> Result<Tensor> {
    let (_, h, w, _) = x.dims4()?;
    let padded = x.pad_with_same(1, 1, 1)?.pad_with_same(2, 1, 1)?;
    let mut out: Option<Tensor> = None;
    for dy in 0..3 {
        let rows = padded.narrow(1, dy, h)?;
        for dx in 0..3 {
            let tap = rows.narrow(2, dx, w)?;
            out = Some(match out {
                Some(m) => m.maximum(&tap)?,
                None => tap,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("empty max-pool window".into()))
}

/// The reference's `LowMixer` on channel-last maps: `pool x pool` average pooling (none for
/// 1), multi-head self-attention (`qkv`, no output projection), nearest upsampling back.
#[derive(Debug, Clone)]
struct LowMixer {
    qkv: Pointwise,
    heads: usize,
    head_dim: usize,
    pool: usize,
}

impl LowMixer {
    fn new(heads: usize, head_dim: usize, pool: usize, qkv_bias: bool, vb: VarBuilder) -> Result<Self> {
        let dim = heads * head_dim;
        Ok(Self {
            qkv: Pointwise::from_linear(dim, 3 * dim, qkv_bias, MixerLayout::Tokens, vb.pp("qkv"))?,
            heads,
            head_dim,
            pool,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let p = self.pool;
        let pooled = p > 1 && h >= p && w >= p;
        let (gh, gw) = if pooled { (h / p, w / p) } else { (h, w) };
        let grid = if pooled {
            let cropped = x.narrow(1, 0, gh * p)?.narrow(2, 0, gw * p)?;
            crate::layers::in_f32(&cropped, |x| {
                x.reshape((b, gh, p, gw, p, c))?.mean(4)?.mean(2)
            })?
        } else {
            x.clone()
        };
        let n = gh * gw;
        let qkv = self
            .qkv
            .forward(&grid.reshape((b, n, c))?)?
            .reshape((b, n, 3, self.heads, self.head_dim))?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let y = tokenmix_kernels::self_attention(&qkv, scale)?.reshape((b, gh, 1, gw, 1, c))?;
        if !pooled {
            return y.reshape((b, h, w, c));
        }
        let y = y
            .broadcast_as((b, gh, p, gw, p, c))?
            .reshape((b, gh * p, gw * p, c))?;
        y.pad_with_same(1, 0, h - gh * p)?
            .pad_with_same(2, 0, w - gw * p)
    }
}

/// The inception mixer on channel-last `(B, H, W, C)`:
/// `proj(y + conv_fuse(y))`, `y = cat(high_mixer(x[..high_dim]), low_mixer(x[high_dim..]))`.
/// Checkpoint names `high_mixer.{conv1,proj1,proj2}`, `low_mixer.qkv`, `conv_fuse` (depthwise
/// 3x3, no bias) and `proj` (1x1 with bias).
#[derive(Debug, Clone)]
pub struct InceptionMixer {
    high_dim: usize,
    high: HighMixer,
    low: LowMixer,
    conv_fuse: Tensor,
    proj: Pointwise,
}

impl InceptionMixer {
    /// Loads the mixer of `config` for `dim` channels.
    pub fn new(config: &InceptionMixerConfig, dim: usize, vb: VarBuilder) -> Result<Self> {
        config.validate(dim)?;
        let head_dim = config.head_dim_for(dim);
        let low_dim = config.attention_head * head_dim;
        let high_dim = dim - low_dim;
        let fused = 2 * high_dim + low_dim;
        Ok(Self {
            high_dim,
            high: HighMixer::new(high_dim, vb.pp("high_mixer"))?,
            low: LowMixer::new(
                config.attention_head,
                head_dim,
                config.pool_size,
                config.qkv_bias,
                vb.pp("low_mixer"),
            )?,
            conv_fuse: vb.pp("conv_fuse").get((fused, 1, 3, 3), "weight")?,
            proj: Pointwise::conv1x1(fused, dim, true, MixerLayout::ChannelsLast, vb.pp("proj"))?,
        })
    }
}

impl TokenMixer for InceptionMixer {
    fn name(&self) -> &'static str {
        "inception_mixer"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::ChannelsLast
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = x.dim(D::Minus1)?;
        let high = self.high.forward(&x.narrow(3, 0, self.high_dim)?)?;
        let low = self.low.forward(&x.narrow(3, self.high_dim, c - self.high_dim)?.contiguous()?)?;
        let y = Tensor::cat(&[high, low], 3)?;
        let y = (&y + depthwise_conv2d_nhwc(&y, &self.conv_fuse, None, 1, 1)?)?;
        self.proj.forward(&y)
    }
}

/// Config of the [`InceptionMixer`]; JSON `{"type": "inception_mixer", "head_dim": 32,
/// "attention_head": 1, "pool_size": 2, "qkv_bias": true}`. The reference derives `head_dim`
/// as the block's `dim // num_heads` (32 in every iFormer); `null` means half the block's
/// width, so that the registered default fits any width.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InceptionMixerConfig {
    /// Channels per attention head; `None` is `dim / 2`.
    pub head_dim: Option<usize>,
    /// Attention heads; the low-frequency branch takes `attention_head * head_dim` channels.
    pub attention_head: usize,
    /// Side of the average pooling before the attention (iFormer: 2 in stages 1-2, else 1).
    pub pool_size: usize,
    /// Whether the qkv projection has a bias.
    pub qkv_bias: bool,
}

impl Default for InceptionMixerConfig {
    /// One attention head over half the channels, 2x2 pooling, qkv bias.
    fn default() -> Self {
        Self {
            head_dim: None,
            attention_head: 1,
            pool_size: 2,
            qkv_bias: true,
        }
    }
}

impl InceptionMixerConfig {
    /// The head width for a block of `dim` channels.
    pub fn head_dim_for(&self, dim: usize) -> usize {
        self.head_dim.unwrap_or(dim / 2)
    }
}

impl MixerSpec for InceptionMixerConfig {
    fn kind(&self) -> &'static str {
        "inception_mixer"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        let bad = |msg: String| Err(config_error("inception_mixer", msg));
        let head_dim = self.head_dim_for(dim);
        if !(1..=4096).contains(&head_dim) || !(1..=4096).contains(&self.attention_head) {
            return bad(format!(
                "head_dim and attention_head must be in 1..=4096, got {head_dim} and {}",
                self.attention_head
            ));
        }
        if !(1..=64).contains(&self.pool_size) {
            return bad(format!("pool_size must be in 1..=64, got {}", self.pool_size));
        }
        let low = self.attention_head * head_dim;
        if low + 2 > dim {
            return bad(format!(
                "attention_head {} x head_dim {head_dim} = {low} attention channels leaves {} of {dim} \
                 for the two high-frequency branches; they need at least 2",
                self.attention_head,
                dim as i64 - low as i64
            ));
        }
        Ok(())
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(InceptionMixer::new(self, dim, vb)?))
    }

    /// The high branches' 1x1s and depthwise 3x3, the qkv product and the attention on the
    /// pooled grid, the fuse depthwise 3x3 and the projection.
    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let n = (h * w) as u64;
        let low = (self.attention_head * self.head_dim_for(dim)) as u64;
        let high = (dim as u64).saturating_sub(low);
        let (half, rest) = (high / 2, high - high / 2);
        let fused = 2 * high + low;
        let p = self.pool_size.max(1);
        let pooled = if h >= p && w >= p { ((h / p) * (w / p)) as u64 } else { n };
        let high_macs = n * (2 * half * half + 9 * 2 * half + 2 * rest * rest);
        let low_macs = pooled * 3 * low * low + 2 * pooled * pooled * low;
        high_macs + low_macs + n * (9 * fused + fused * dim as u64)
    }
}
