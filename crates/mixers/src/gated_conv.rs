//! MambaOut's gated CNN mixer (Yu & Wang, "MambaOut: Do We Really Need Mamba for Vision?").

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

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
    if kernel_size.is_multiple_of(2) {
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
    /// `fc1` split by output rows into the gate halves for the identity and conv channels, the
    /// identity channels and the conv channels, each `(weight^T [C, n], bias [n])`.
    gate_identity: (Tensor, Tensor),
    gate_conv: (Tensor, Tensor),
    identity: (Tensor, Tensor),
    conv_in: (Tensor, Tensor),
    conv_weight: Tensor,
    conv_bias: Tensor,
    /// `fc2` split by input columns: identity part, conv part (`[n, C]` each) and the bias.
    out_identity: Tensor,
    out_conv: Tensor,
    out_bias: Tensor,
    dim: usize,
}

/// Rows `start..start + len` of a `[out, in]` weight (transposed to `[in, len]`) and its bias.
fn rows(w: &Tensor, b: &Tensor, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
    Ok((
        w.narrow(0, start, len)?.t()?.contiguous()?,
        b.narrow(0, start, len)?.contiguous()?,
    ))
}

impl GatedConv {
    /// Loads `fc1`, `conv` and `fc2` from `vb` (the block's prefix in timm's names). The linear
    /// layers are split at load time so that the forward pass needs no slicing or
    /// concatenation of activations.
    pub fn new(
        dim: usize,
        expansion_ratio: f64,
        kernel_size: usize,
        conv_ratio: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (hidden, k) = widths(dim, expansion_ratio, conv_ratio);
        let fc1 = vb.pp("fc1");
        let (w1, b1) = (
            fc1.get((2 * hidden, dim), "weight")?,
            fc1.get(2 * hidden, "bias")?,
        );
        let fc2 = vb.pp("fc2");
        let w2 = fc2.get((dim, hidden), "weight")?;
        let conv = vb.pp("conv");
        Ok(Self {
            gate_identity: rows(&w1, &b1, 0, hidden - k)?,
            gate_conv: rows(&w1, &b1, hidden - k, k)?,
            identity: rows(&w1, &b1, hidden, hidden - k)?,
            conv_in: rows(&w1, &b1, 2 * hidden - k, k)?,
            conv_weight: conv.get((k, 1, kernel_size, kernel_size), "weight")?,
            conv_bias: conv.get(k, "bias")?,
            out_identity: w2.narrow(1, 0, hidden - k)?.t()?.contiguous()?,
            out_conv: w2.narrow(1, hidden - k, k)?.t()?.contiguous()?,
            out_bias: fc2.get(dim, "bias")?,
            dim,
        })
    }
}

/// `x @ w + b` for `x` `(N, C)`.
fn affine(x: &Tensor, (w, b): &(Tensor, Tensor)) -> Result<Tensor> {
    x.matmul(w)?.broadcast_add(b)
}

/// `gelu(x @ w + b)` for `x` `(N, C)`, the bias added inside GELU's pass.
fn gate(x: &Tensor, (w, b): &(Tensor, Tensor)) -> Result<Tensor> {
    tokenmix_kernels::bias_gelu(&x.matmul(w)?, b, 1)
}

impl TokenMixer for GatedConv {
    fn name(&self) -> &'static str {
        "gated_conv"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::ChannelsLast
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let tokens = x.reshape((b * h * w, c))?;
        let k = self.conv_bias.dim(0)?;
        let conv_in = affine(&tokens, &self.conv_in)?.reshape((b, h, w, k))?;
        let pad = self.conv_weight.dim(3)? / 2;
        let conv = tokenmix_kernels::depthwise_conv2d_nhwc(
            &conv_in,
            &self.conv_weight,
            Some(&self.conv_bias),
            1,
            pad,
        )?
        .reshape((b * h * w, k))?;
        let gated_conv = (gate(&tokens, &self.gate_conv)? * conv)?;
        let mut y = gated_conv.matmul(&self.out_conv)?;
        if self.out_identity.dim(0)? > 0 {
            let gate = gate(&tokens, &self.gate_identity)?;
            let gated = (gate * affine(&tokens, &self.identity)?)?;
            y = (y + gated.matmul(&self.out_identity)?)?;
        }
        y.broadcast_add(&self.out_bias)?
            .reshape((b, h, w, self.dim))
    }
}
