//! CAS-ViT's convolutional additive token mixer (Zhang et al., "CAS-ViT: Convolutional Additive
//! Self-attention Vision Transformers for Efficient Mobile Applications", arXiv 2408.03703), with
//! the tensor names of Tianfang-Zhang/CAS-ViT (`classification/model/rcvit.py`,
//! `AdditiveTokenMixer`).
//!
//! Attention without softmax or token-token products: the query and key are each gated by a
//! spatial sigmoid map (depthwise 3x3, batch norm, ReLU, 1x1 to one channel) and a channel
//! sigmoid vector (global average pool, 1x1), added, passed through a depthwise 3x3, multiplied
//! by the value and projected by another depthwise 3x3.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use tokenmix_kernels::depthwise_conv2d;

use crate::layers::{BatchNorm, Pointwise};
use crate::{MixerLayout, MixerSpec, TokenMixer};

/// A depthwise 3x3 convolution with bias, padding 1 (checkpoint `weight` `[C, 1, 3, 3]`, `bias`).
#[derive(Debug, Clone)]
struct Depthwise3x3 {
    weight: Tensor,
    bias: Tensor,
}

impl Depthwise3x3 {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get((dim, 1, 3, 3), "weight")?,
            bias: vb.get(dim, "bias")?,
        })
    }
}

impl Module for Depthwise3x3 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        depthwise_conv2d(x, &self.weight, Some(&self.bias), 1, 1)
    }
}

/// The reference's `SpatialOperation` then `ChannelOperation` on `(B, C, H, W)`:
/// `t = x * sigmoid(1x1_{C->1}(relu(bn(dw3x3(x)))))`, then `t * sigmoid(1x1_{C->C}(mean_hw(t)))`.
/// Checkpoint names `0.block.{0,1,3}` (spatial) and `1.block.1` (channel).
#[derive(Debug, Clone)]
struct Gates {
    spatial_dw: Depthwise3x3,
    spatial_bn: BatchNorm,
    spatial_proj: Pointwise,
    channel_proj: Pointwise,
}

impl Gates {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let (spatial, channel) = (vb.pp(0).pp("block"), vb.pp(1).pp("block"));
        let sp = MixerLayout::Spatial;
        Ok(Self {
            spatial_dw: Depthwise3x3::new(dim, spatial.pp(0))?,
            spatial_bn: BatchNorm::new(dim, spatial.pp(1))?,
            spatial_proj: Pointwise::conv1x1(dim, 1, false, sp, spatial.pp(3))?,
            channel_proj: Pointwise::conv1x1(dim, dim, false, sp, channel.pp(1))?,
        })
    }
}

impl Module for Gates {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.spatial_bn.forward(&self.spatial_dw.forward(x)?)?.relu()?;
        let s = candle_nn::ops::sigmoid(&self.spatial_proj.forward(&s)?)?;
        let t = x.broadcast_mul(&s)?;
        let pooled = t.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
        let c = candle_nn::ops::sigmoid(&self.channel_proj.forward(&pooled)?)?;
        t.broadcast_mul(&c)
    }
}

/// CAS-ViT's additive token mixer on `(B, C, H, W)`:
/// `[q, k, v] = qkv(x)` (1x1, no bias), `proj(dwc(gates_q(q) + gates_k(k)) * v)` with `dwc` and
/// `proj` depthwise 3x3 convolutions with biases. Checkpoint names `qkv`, `oper_q`, `oper_k`,
/// `dwc`, `proj`.
#[derive(Debug, Clone)]
pub struct AdditiveTokenMixer {
    qkv: Pointwise,
    oper_q: Gates,
    oper_k: Gates,
    dwc: Depthwise3x3,
    proj: Depthwise3x3,
    dim: usize,
}

impl AdditiveTokenMixer {
    /// Loads the mixer for `dim` channels; `qkv_bias` is the reference's `attn_bias`.
    pub fn new(dim: usize, qkv_bias: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            qkv: Pointwise::conv1x1(dim, 3 * dim, qkv_bias, MixerLayout::Spatial, vb.pp("qkv"))?,
            oper_q: Gates::new(dim, vb.pp("oper_q"))?,
            oper_k: Gates::new(dim, vb.pp("oper_k"))?,
            dwc: Depthwise3x3::new(dim, vb.pp("dwc"))?,
            proj: Depthwise3x3::new(dim, vb.pp("proj"))?,
            dim,
        })
    }
}

impl TokenMixer for AdditiveTokenMixer {
    fn name(&self) -> &'static str {
        "additive_token_mixer"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Spatial
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let part = |i: usize| qkv.narrow(1, i * self.dim, self.dim);
        let q = self.oper_q.forward(&part(0)?)?;
        let k = self.oper_k.forward(&part(1)?)?;
        let mixed = (self.dwc.forward(&(q + k)?)? * part(2)?)?;
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
