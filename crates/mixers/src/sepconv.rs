//! ConvFormer's inverted separable convolution.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{Pointwise, StarRelu};
use serde::{Deserialize, Serialize};

use crate::{check_ratio, config_error, MixerLayout, MixerSpec, TokenMixer};

/// Hidden channels of a SepConv with `expansion_ratio` on `dim` channels (`int(ratio * dim)`).
pub fn hidden_channels(dim: usize, expansion_ratio: f64) -> usize {
    (expansion_ratio * dim as f64) as usize
}

/// `pwconv2(dwconv(StarReLU(pwconv1(x))))` on channel-last `(B, H, W, C)`: a 1x1 conv to `2C`
/// channels, StarReLU (`act1`), a `k x k` depthwise conv with padding `k/2`, a 1x1 conv back
/// to `C`. Channel-last makes the 1x1 convs one matrix product over the whole batch and lets
/// the depthwise kernel vectorize along channels.
/// Checkpoint names: `pwconv1.weight [2C, C, 1, 1]`, `act1.{scale,bias}`,
/// `dwconv.weight [2C, 1, k, k]`, `pwconv2.weight [C, 2C, 1, 1]` (biases only if configured).
#[derive(Debug, Clone)]
pub struct SepConv {
    pwconv1: Pointwise,
    act1: StarRelu,
    dw_weight: Tensor,
    dw_bias: Option<Tensor>,
    pwconv2: Pointwise,
}

impl SepConv {
    /// Loads a SepConv for `dim` channels.
    pub fn new(
        dim: usize,
        expansion_ratio: f64,
        kernel_size: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mid = hidden_channels(dim, expansion_ratio);
        let layout = MixerLayout::ChannelsLast;
        let dw = vb.pp("dwconv");
        Ok(Self {
            pwconv1: Pointwise::conv1x1(dim, mid, bias, layout, vb.pp("pwconv1"))?,
            act1: StarRelu::new(vb.pp("act1"))?,
            dw_weight: dw.get((mid, 1, kernel_size, kernel_size), "weight")?,
            dw_bias: if bias {
                Some(dw.get(mid, "bias")?)
            } else {
                None
            },
            pwconv2: Pointwise::conv1x1(mid, dim, bias, layout, vb.pp("pwconv2"))?,
        })
    }
}

impl TokenMixer for SepConv {
    fn name(&self) -> &'static str {
        "sepconv"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::ChannelsLast
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.act1.forward(&self.pwconv1.forward(x)?)?;
        let pad = self.dw_weight.dim(3)? / 2;
        let h = tokenmix_kernels::depthwise_conv2d_nhwc(
            &h,
            &self.dw_weight,
            self.dw_bias.as_ref(),
            1,
            pad,
        )?;
        self.pwconv2.forward(&h)
    }
}

/// Config of the [`SepConv`] mixer; JSON
/// `{"type": "sepconv", "expansion_ratio": 2.0, "kernel_size": 7, "bias": false}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SepConvConfig {
    /// Hidden channels are `int(expansion_ratio * dim)`.
    pub expansion_ratio: f64,
    /// Depthwise kernel size, odd.
    pub kernel_size: usize,
    /// Whether the three convolutions have biases.
    pub bias: bool,
}

impl Default for SepConvConfig {
    /// ConvFormer's: expansion 2, 7x7 depthwise, no biases.
    fn default() -> Self {
        Self {
            expansion_ratio: 2.0,
            kernel_size: 7,
            bias: false,
        }
    }
}

impl MixerSpec for SepConvConfig {
    fn kind(&self) -> &'static str {
        "sepconv"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        let k = self.kernel_size;
        if k.is_multiple_of(2) || k > 255 {
            return Err(config_error(
                "sepconv",
                format!("kernel_size must be odd and at most 255, got {k}"),
            ));
        }
        check_ratio("sepconv", "expansion_ratio", self.expansion_ratio, dim)
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(SepConv::new(
            dim,
            self.expansion_ratio,
            self.kernel_size,
            self.bias,
            vb,
        )?))
    }

    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let mid = hidden_channels(dim, self.expansion_ratio) as u64;
        let k2 = (self.kernel_size as u64).pow(2);
        (h * w) as u64 * (dim as u64 * mid * 2 + mid * k2)
    }
}
