//! PoolFormer's pooling mixer.

use candle_core::{Result, Tensor};

use crate::{MixerLayout, TokenMixer};

/// `AvgPool2d(k, stride 1, padding k/2, count_include_pad=False)(x) - x` on a channel-last map
/// `(B, H, W, C)`.
///
/// The average at a border position counts only in-image pixels (4 at a 3x3 corner, 6 on an
/// edge, 9 inside), as in timm's `Pooling`. Has no parameters.
#[derive(Debug, Clone, Copy)]
pub struct Pooling {
    pool_size: usize,
}

impl Pooling {
    /// A pooling mixer with an odd window `pool_size`.
    pub fn new(pool_size: usize) -> Self {
        Self { pool_size }
    }
}

impl TokenMixer for Pooling {
    fn name(&self) -> &'static str {
        "pooling"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::ChannelsLast
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        tokenmix_kernels::pool_mixer_nhwc(x, self.pool_size)
    }
}
