//! Fused ops for the hot token-mixing paths of tokenmix, as candle custom ops.
//!
//! Each op has one module holding its fused CPU implementation and, in [`composed`], the plain
//! composition of candle ops it must agree with. The public functions pick the fused path for
//! contiguous-able f32 CPU tensors and the composed one otherwise; setting the environment
//! variable `TOKENMIX_FUSED=0` forces the composed path everywhere (for debugging).
//!
//! Ops:
//! * [`depthwise_conv2d`]: per-channel `k x k` convolution with stride and zero padding.
//! * [`pool_mixer`]: PoolFormer's `avg_pool(k, 1, k/2, count_include_pad=False)(x) - x`.
#![deny(missing_docs)]

pub mod composed;
mod depthwise;
mod pool;

use candle_core::{DType, Device, Result, Tensor};
use std::sync::OnceLock;

pub use depthwise::DepthwiseConv2d;
pub use pool::PoolMixer;

/// Whether fused kernels are enabled (`TOKENMIX_FUSED` is not `0`/`false`/`off`).
pub fn fused_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        !matches!(
            std::env::var("TOKENMIX_FUSED").as_deref(),
            Ok("0") | Ok("false") | Ok("off")
        )
    })
}

fn use_fused(x: &Tensor) -> bool {
    fused_enabled() && x.dtype() == DType::F32 && matches!(x.device(), Device::Cpu)
}

/// Depthwise 2-D convolution of `x` `(B, C, H, W)` with `weight` `(C, 1, k, k)` and optional
/// `bias` `(C)`: output `(B, C, Ho, Wo)` with `Ho = (H + 2 * padding - k) / stride + 1`.
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let y = if use_fused(x) && weight.dtype() == DType::F32 {
        let op = DepthwiseConv2d::new(stride, padding)?;
        x.contiguous()?.apply_op2(&weight.contiguous()?, op)?
    } else {
        composed::depthwise_conv2d(x, weight, stride, padding)?
    };
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}

/// PoolFormer's pooling mixer on `(B, C, H, W)`: the average over the `k x k` window around each
/// position (stride 1, only in-image pixels counted), minus the input. `k` must be odd.
pub fn pool_mixer(x: &Tensor, pool_size: usize) -> Result<Tensor> {
    if use_fused(x) {
        x.contiguous()?.apply_op1(PoolMixer::new(pool_size)?)
    } else {
        composed::pool_mixer(x, pool_size)
    }
}
