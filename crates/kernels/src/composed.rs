//! Reference implementations of every fused op as plain compositions of candle ops: the
//! fallback when fused kernels are off, and what the fused kernels are tested against.

use candle_core::{DType, Result, Tensor};

use crate::{KernelError, NormAxes};

/// Depthwise convolution through candle's grouped `conv2d` (no bias).
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let channels = x.dim(1)?;
    x.conv2d(weight, padding, stride, 1, channels)
}

/// Number of in-image pixels in the window of size `k` centred on each of `n` positions.
fn window_counts(n: usize, k: usize) -> Vec<f32> {
    let half = k / 2;
    (0..n)
        .map(|i| ((i + half).min(n - 1) + 1 - i.saturating_sub(half)) as f32)
        .collect()
}

/// Pooling mixer by zero padding, `avg_pool2d`, rescaling by the in-image pixel counts and
/// subtracting the input.
pub fn pool_mixer(x: &Tensor, pool_size: usize) -> Result<Tensor> {
    if pool_size % 2 == 0 {
        return Err(KernelError::Param {
            op: "pool_mixer",
            msg: format!("pool_size must be odd, got {pool_size}"),
        }
        .into());
    }
    let (_, _, h, w) = x.dims4()?;
    let p = pool_size / 2;
    let padded = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    let sums = (padded.avg_pool2d_with_stride(pool_size, 1)? * (pool_size * pool_size) as f64)?;
    let rows = Tensor::new(window_counts(h, pool_size), x.device())?.reshape((h, 1))?;
    let cols = Tensor::new(window_counts(w, pool_size), x.device())?.reshape((1, w))?;
    let counts = rows.broadcast_mul(&cols)?.to_dtype(x.dtype())?;
    sums.broadcast_div(&counts)? - x
}

/// Normalized `x` and `1 / sqrt(var + eps)` for `x` viewed as `(outer, C, inner)`: statistics
/// over `C` (LayerNorm) or over `(C, inner)` (GroupNorm with one group), in f32.
pub fn normalize(x: &Tensor, axes: NormAxes, eps: f64) -> Result<(Tensor, Tensor)> {
    let x = x.to_dtype(DType::F32)?;
    let mean = |t: &Tensor| match axes {
        NormAxes::Channels => t.mean_keepdim(1),
        NormAxes::AllButBatch => t.mean_keepdim(2)?.mean_keepdim(1),
    };
    let centered = x.broadcast_sub(&mean(&x)?)?;
    let inv = (mean(&centered.sqr()?)? + eps)?.sqrt()?.recip()?;
    Ok((centered.broadcast_mul(&inv)?, inv))
}

/// Channel LayerNorm / GroupNorm1 as plain candle ops: `x` has its channels at `channel_axis`,
/// `weight` and `bias` are `[C]`.
pub fn channel_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    axes: NormAxes,
    eps: f64,
    channel_axis: usize,
) -> Result<Tensor> {
    let dims = x.dims();
    if channel_axis >= dims.len() {
        return Err(KernelError::Shape {
            op: "channel_norm",
            what: "x",
            expected: format!("an axis {channel_axis}"),
            found: dims.to_vec(),
        }
        .into());
    }
    let outer: usize = dims[..channel_axis].iter().product();
    let inner: usize = dims[channel_axis + 1..].iter().product();
    let c = dims[channel_axis];
    let (xhat, _) = normalize(&x.reshape((outer, c, inner))?, axes, eps)?;
    let y = xhat
        .to_dtype(x.dtype())?
        .broadcast_mul(&weight.reshape((1, c, 1))?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, c, 1))?)?,
        None => y,
    };
    y.reshape(dims)
}
