//! Reference implementations of every fused op as plain compositions of candle ops: the
//! fallback when fused kernels are off, and what the fused kernels are tested against.

use candle_core::{Result, Tensor};

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
        candle_core::bail!("pool_mixer: pool_size must be odd, got {pool_size}")
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
