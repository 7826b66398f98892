//! MambaOut's gated CNN mixer (Yu & Wang, "MambaOut: Do We Really Need Mamba for Vision?").

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::layers::Pointwise;
use crate::{MixerLayout, TokenMixer};

/// Hidden channels and depthwise-conv channels for `dim` (`int(ratio * dim)` each, as timm).
pub fn widths(dim: usize, expansion_ratio: f64, conv_ratio: f64) -> (usize, usize) {
    (
        (expansion_ratio * dim as f64) as usize,
        (conv_ratio * dim as f64) as usize,
    )
}

/// Checks a gated-conv configuration for `dim` channels.
pub fn validate(
    dim: usize,
    expansion_ratio: f64,
    kernel_size: usize,
    conv_ratio: f64,
) -> std::result::Result<(), String> {
    if kernel_size % 2 == 0 {
        return Err(format!("kernel_size must be odd, got {kernel_size}"));
    }
    if !(expansion_ratio > 0.0 && expansion_ratio <= 64.0) {
        return Err(format!(
            "expansion_ratio must be in (0, 64], got {expansion_ratio}"
        ));
    }
    let (hidden, conv) = widths(dim, expansion_ratio, conv_ratio);
    if conv_ratio.is_nan() || conv_ratio <= 0.0 || conv == 0 || conv > hidden {
        return Err(format!(
            "conv_ratio {conv_ratio} gives {conv} conv channels; need 1..={hidden} (the hidden width)"
        ));
    }
    Ok(())
}

/// `fc2(GELU(g) * concat(i, dwconv(c)))` with `[g, i, c] = split(fc1(x), [hidden, hidden - k, k])`
/// on a channel-last map `(B, H, W, C)`. `fc1: C -> 2 * hidden`, `conv`: depthwise `k x k`
/// with bias over the last `k = conv_ratio * C` channels, `fc2: hidden -> C`; all with biases
/// (timm `GatedConvBlock` without its norm, layer scale and shortcut).
#[derive(Debug, Clone)]
pub struct GatedConv {
    fc1: Pointwise,
    conv_weight: Tensor,
    conv_bias: Tensor,
    fc2: Pointwise,
    hidden: usize,
    conv_channels: usize,
}

impl GatedConv {
    /// Loads `fc1`, `conv` and `fc2` from `vb` (the block's prefix in timm's names).
    pub fn new(
        dim: usize,
        expansion_ratio: f64,
        kernel_size: usize,
        conv_ratio: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (hidden, conv_channels) = widths(dim, expansion_ratio, conv_ratio);
        let layout = MixerLayout::ChannelsLast;
        let conv = vb.pp("conv");
        Ok(Self {
            fc1: Pointwise::new(dim, 2 * hidden, true, layout, vb.pp("fc1"))?,
            conv_weight: conv.get((conv_channels, 1, kernel_size, kernel_size), "weight")?,
            conv_bias: conv.get(conv_channels, "bias")?,
            fc2: Pointwise::new(hidden, dim, true, layout, vb.pp("fc2"))?,
            hidden,
            conv_channels,
        })
    }
}

impl TokenMixer for GatedConv {
    fn name(&self) -> &'static str {
        "gated_conv"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::ChannelsLast
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(x)?;
        let (hidden, k) = (self.hidden, self.conv_channels);
        let gate = h.narrow(D::Minus1, 0, hidden)?.gelu_erf()?;
        let identity = h.narrow(D::Minus1, hidden, hidden - k)?;
        let conv_in = h
            .narrow(D::Minus1, 2 * hidden - k, k)?
            .permute((0, 3, 1, 2))?;
        let pad = self.conv_weight.dim(3)? / 2;
        let conv = tokenmix_kernels::depthwise_conv2d(
            &conv_in,
            &self.conv_weight,
            Some(&self.conv_bias),
            1,
            pad,
        )?
        .permute((0, 2, 3, 1))?;
        let mixed = Tensor::cat(&[&identity, &conv], D::Minus1)?;
        self.fc2.forward(&(gate * mixed)?)
    }
}
