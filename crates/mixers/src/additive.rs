//! CAS-ViT's convolutional additive token mixer (Zhang et al., "CAS-ViT: Convolutional Additive
//! Self-attention Vision Transformers for Efficient Mobile Applications", arXiv 2408.03703), with
//! the tensor names of Tianfang-Zhang/CAS-ViT (`classification/model/rcvit.py`,
//! `AdditiveTokenMixer`).
//!
//! Attention without softmax or token-token products: the query and key are each gated by a
//! spatial sigmoid map (depthwise 3x3, batch norm, ReLU, 1x1 to one channel) and a channel
//! sigmoid vector (global average pool, 1x1), added, passed through a depthwise 3x3, multiplied
//! by the value and projected by another depthwise 3x3.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use tokenmix_kernels::Window;

use crate::layers::{position_mean, ConvBnNhwc, ConvKind, Depthwise3x3, Pointwise};
use crate::{MixerLayout, MixerSpec, TokenMixer};

/// The reference's `SpatialOperation` then `ChannelOperation` on channel-last `(B, H, W, C)`:
/// `t = x * sigmoid(1x1_{C->1}(relu(bn(dw3x3(x)))))`, then `t * sigmoid(1x1_{C->C}(mean_hw(t)))`.
/// Checkpoint names `0.block.{0,1,3}` (spatial) and `1.block.1` (channel).
#[derive(Debug, Clone)]
struct Gates {
    /// The depthwise 3x3 and its batch norm, folded into one convolution.
    spatial_conv: ConvBnNhwc,
    spatial_proj: Pointwise,
    channel_proj: Pointwise,
}

impl Gates {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let (spatial, channel) = (vb.pp(0).pp("block"), vb.pp(1).pp("block"));
        let cl = MixerLayout::ChannelsLast;
        Ok(Self {
            spatial_conv: ConvBnNhwc::new(
                dim,
                dim,
                Window {
                    kernel: 3,
                    stride: 1,
                    padding: 1,
                },
                ConvKind::Depthwise,
                true,
                spatial.pp(0),
                spatial.pp(1),
            )?,
            spatial_proj: Pointwise::conv1x1(dim, 1, false, cl, spatial.pp(3))?,
            channel_proj: Pointwise::conv1x1(dim, dim, false, cl, channel.pp(1))?,
        })
    }

    fn trainable(&self) -> bool {
        self.spatial_conv.trainable()
            || self.spatial_proj.trainable()
            || self.channel_proj.trainable()
    }
}

impl Module for Gates {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.spatial_conv.forward(x)?.relu()?;
        let s = candle_nn::ops::sigmoid(&self.spatial_proj.forward(&s)?)?;
        let t = x.broadcast_mul(&s)?;
        let (b, c) = (t.dim(0)?, t.dim(3)?);
        let pooled = position_mean(&t)?.reshape((b, 1, 1, c))?;
        let c = candle_nn::ops::sigmoid(&self.channel_proj.forward(&pooled)?)?;
        t.broadcast_mul(&c)
    }
}

/// CAS-ViT's additive token mixer on channel-last `(B, H, W, C)`:
/// `[q, k, v] = qkv(x)` (1x1, no bias), `proj(dwc(gates_q(q) + gates_k(k)) * v)` with `dwc` and
/// `proj` depthwise 3x3 convolutions with biases. Checkpoint names `qkv`, `oper_q`, `oper_k`,
/// `dwc`, `proj`; `qkv`'s weight `[3C, C, 1, 1]` runs as three products so that `q`, `k` and
/// `v` come out contiguous.
#[derive(Debug, Clone)]
pub struct AdditiveTokenMixer {
    q: Pointwise,
    k: Pointwise,
    v: Pointwise,
    oper_q: Gates,
    oper_k: Gates,
    dwc: Depthwise3x3,
    proj: Depthwise3x3,
}

impl AdditiveTokenMixer {
    /// Loads the mixer for `dim` channels; `qkv_bias` is the reference's `attn_bias`.
    pub fn new(dim: usize, qkv_bias: bool, vb: VarBuilder) -> Result<Self> {
        let qkv = vb.pp("qkv");
        let weight = qkv.get((3 * dim, dim, 1, 1), "weight")?;
        let bias = qkv_bias.then(|| qkv.get(3 * dim, "bias")).transpose()?;
        let part = |i: usize| -> Result<Pointwise> {
            let b = bias.as_ref().map(|b| b.narrow(0, i * dim, dim)).transpose()?;
            Pointwise::from_tensors(
                weight.narrow(0, i * dim, dim)?,
                b,
                MixerLayout::ChannelsLast,
            )
        };
        Ok(Self {
            q: part(0)?,
            k: part(1)?,
            v: part(2)?,
            oper_q: Gates::new(dim, vb.pp("oper_q"))?,
            oper_k: Gates::new(dim, vb.pp("oper_k"))?,
            dwc: Depthwise3x3::new(dim, vb.pp("dwc"))?,
            proj: Depthwise3x3::new(dim, vb.pp("proj"))?,
        })
    }

    /// This mixer with a per-channel affine of its input (the block's batch norm in front of
    /// it, `scale`, `shift` `(C)`) folded into the q, k and v products.
    pub fn with_input_affine(&self, scale: &Tensor, shift: &Tensor) -> Result<Self> {
        Ok(Self {
            q: self.q.with_input_affine(scale, shift)?,
            k: self.k.with_input_affine(scale, shift)?,
            v: self.v.with_input_affine(scale, shift)?,
            ..self.clone()
        })
    }

    /// Whether any of its weights is a trainable variable.
    pub fn trainable(&self) -> bool {
        self.q.trainable()
            || self.oper_q.trainable()
            || self.oper_k.trainable()
            || self.dwc.trainable()
            || self.proj.trainable()
    }
}

impl TokenMixer for AdditiveTokenMixer {
    fn name(&self) -> &'static str {
        "additive_token_mixer"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::ChannelsLast
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let q = self.oper_q.forward(&self.q.forward(x)?)?;
        let k = self.oper_k.forward(&self.k.forward(x)?)?;
        let mixed = (self.dwc.forward(&(q + k)?)? * self.v.forward(x)?)?;
        self.proj.forward(&mixed)
    }
}

/// Config of the [`AdditiveTokenMixer`]; JSON `{"type": "additive_token_mixer", "attn_bias":
/// false}` (the reference's keyword name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdditiveTokenMixerConfig {
    /// Whether the qkv projection has a bias (CAS-ViT: no).
    #[serde(default)]
    pub attn_bias: bool,
}

impl MixerSpec for AdditiveTokenMixerConfig {
    fn kind(&self) -> &'static str {
        "additive_token_mixer"
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(AdditiveTokenMixer::new(dim, self.attn_bias, vb)?))
    }

    /// The qkv product, the four gate 1x1s and the five depthwise 3x3s.
    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let (n, c) = ((h * w) as u64, dim as u64);
        let spatial = n * (9 * c + c);
        let channel = c * c;
        n * 3 * c * c + 2 * (spatial + channel) + 2 * n * 9 * c
    }
}
