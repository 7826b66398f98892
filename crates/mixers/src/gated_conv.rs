//! MambaOut's gated CNN (Yu & Wang, "MambaOut: Do We Really Need Mamba for Vision?"): a block
//! kind, not a token mixer. Its depthwise conv mixes tokens inside a gated MLP that replaces the
//! whole norm-mixer-MLP block, so MambaOut's block is `x + gated_conv(norm(x))` with no
//! separate channel MLP.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::Derived;
use tokenmix_kernels::linear;

/// Hidden channels and depthwise-conv channels for `dim` (`int(ratio * dim)` each, as timm).
pub fn widths(dim: usize, expansion_ratio: f64, conv_ratio: f64) -> (usize, usize) {
    (
        (expansion_ratio * dim as f64) as usize,
        (conv_ratio * dim as f64) as usize,
    )
}

/// Multiply-accumulates of one gated-conv block body for one sample on an `h x w` grid.
pub fn macs(
    dim: usize,
    expansion_ratio: f64,
    kernel_size: usize,
    conv_ratio: f64,
    h: usize,
    w: usize,
) -> u64 {
    let (hidden, conv) = widths(dim, expansion_ratio, conv_ratio);
    let (hidden, conv, dim) = (hidden as u64, conv as u64, dim as u64);
    (h * w) as u64 * (dim * 2 * hidden + conv * (kernel_size as u64).pow(2) + hidden * dim)
}

/// Checks a gated-conv configuration for `dim` channels.
pub fn validate(
    dim: usize,
    expansion_ratio: f64,
    kernel_size: usize,
    conv_ratio: f64,
) -> std::result::Result<(), String> {
    if kernel_size.is_multiple_of(2) || kernel_size > 255 {
        return Err(format!(
            "kernel_size must be odd and at most 255, got {kernel_size}"
        ));
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

/// The hyper-parameters of a [`GatedConv`] (timm `GatedConvBlock`'s keyword names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GatedConvConfig {
    /// Hidden channels are `int(expansion_ratio * dim)`.
    pub expansion_ratio: f64,
    /// Depthwise kernel size, odd.
    pub kernel_size: usize,
    /// Fraction of the channels that go through the depthwise conv.
    pub conv_ratio: f64,
}

impl GatedConvConfig {
    /// Checks the configuration for `dim` channels ([`crate::MixerError::Config`]).
    pub fn validate(&self, dim: usize) -> Result<()> {
        validate(dim, self.expansion_ratio, self.kernel_size, self.conv_ratio)
            .map_err(|msg| crate::config_error("gated_conv", msg))
    }

    /// Validates, then loads the block body for `dim` channels from `vb`.
    pub fn build(&self, dim: usize, vb: VarBuilder) -> Result<GatedConv> {
        self.validate(dim)?;
        GatedConv::new(
            dim,
            self.expansion_ratio,
            self.kernel_size,
            self.conv_ratio,
            vb,
        )
    }

    /// Multiply-accumulates for one sample with `dim` channels on an `h x w` grid.
    pub fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        macs(
            dim,
            self.expansion_ratio,
            self.kernel_size,
            self.conv_ratio,
            h,
            w,
        )
    }
}

/// `fc2(GELU(g) * concat(i, dwconv(c)))` with `[g, i, c] = split(fc1(x), [hidden, hidden - k, k])`
/// on a channel-last map `(B, H, W, C)`. `fc1: C -> 2 * hidden`, `conv`: depthwise `k x k`
/// with bias over the last `k = conv_ratio * C` channels, `fc2: hidden -> C`; all with biases
/// (timm `GatedConvBlock` without its norm, layer scale and shortcut, which the MambaOut block
/// holds).
#[derive(Debug, Clone)]
pub struct GatedConv {
    /// `fc1.weight` `[2 * hidden, C]` and `fc1.bias`.
    fc1: (Tensor, Tensor),
    conv_weight: Tensor,
    conv_bias: Tensor,
    /// `fc2.weight` `[C, hidden]` and `fc2.bias`.
    fc2: (Tensor, Tensor),
    /// `fc1` and `fc2` weights transposed to the `[in, out]` matrices the products multiply by.
    matrices: Derived<(Tensor, Tensor)>,
    hidden: usize,
    dim: usize,
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
        let (hidden, k) = widths(dim, expansion_ratio, conv_ratio);
        let (fc1, fc2, conv) = (vb.pp("fc1"), vb.pp("fc2"), vb.pp("conv"));
        Ok(Self {
            fc1: (
                fc1.get((2 * hidden, dim), "weight")?,
                fc1.get(2 * hidden, "bias")?,
            ),
            conv_weight: conv.get((k, 1, kernel_size, kernel_size), "weight")?,
            conv_bias: conv.get(k, "bias")?,
            fc2: (fc2.get((dim, hidden), "weight")?, fc2.get(dim, "bias")?),
            matrices: Derived::default(),
            hidden,
            dim,
        })
    }

    fn matrices(&self) -> Result<(Tensor, Tensor)> {
        let trainable = self.fc1.0.is_variable() || self.fc2.0.is_variable();
        self.matrices.get(trainable, || {
            Ok((self.fc1.0.t()?.contiguous()?, self.fc2.0.t()?.contiguous()?))
        })
    }
}

impl candle_core::Module for GatedConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let (w1, w2) = self.matrices()?;
        let k = self.conv_bias.dim(0)?;
        let projected = linear(&x.reshape((b * h * w, c))?, &w1, &self.fc1.1)?;
        let conv_in = projected
            .narrow(1, 2 * self.hidden - k, k)?
            .contiguous()?
            .reshape((b, h, w, k))?;
        let pad = self.conv_weight.dim(3)? / 2;
        let conv = tokenmix_kernels::depthwise_conv2d_nhwc(
            &conv_in,
            &self.conv_weight,
            Some(&self.conv_bias),
            1,
            pad,
        )?
        .reshape((b * h * w, k))?;
        let gated = tokenmix_kernels::gelu_gate(&projected, &conv, self.hidden)?;
        linear(&gated, &w2, &self.fc2.1)?.reshape((b, h, w, self.dim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Module};
    use candle_nn::VarMap;

    #[test]
    fn gated_conv_sees_in_place_updates_of_its_variables() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let mixer = GatedConv::new(4, 2.0, 3, 0.5, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 4), &Device::Cpu).unwrap();
        let before = mixer.forward(&x).unwrap();
        let vars = varmap.data().lock().unwrap().clone();
        vars["fc2.weight"]
            .set(&Tensor::zeros((4, 8), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        vars["fc2.bias"]
            .set(&Tensor::ones(4, DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let after = mixer.forward(&x).unwrap();
        let ones = Tensor::ones((2, 3, 5, 4), DType::F32, &Device::Cpu).unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert_eq!(diff(&after, &ones), 0.0);
        assert!(diff(&before, &ones) > 0.0);
    }
}
