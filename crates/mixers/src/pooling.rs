//! PoolFormer's pooling mixer.

use candle_core::{Result, Tensor};

use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};

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

/// Config of the [`Pooling`] mixer; JSON `{"type": "pooling", "pool_size": 3}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolingConfig {
    /// Pooling window, odd (PoolFormer: 3).
    pub pool_size: usize,
}

impl Default for PoolingConfig {
    fn default() -> Self {
        Self { pool_size: 3 }
    }
}

impl MixerSpec for PoolingConfig {
    fn kind(&self) -> &'static str {
        "pooling"
    }

    fn validate(&self, _dim: usize) -> Result<()> {
        let k = self.pool_size;
        if k.is_multiple_of(2) || k > 255 {
            return Err(config_error(
                "pooling",
                format!("pool_size must be odd and at most 255, got {k}"),
            ));
        }
        Ok(())
    }

    fn build(&self, _dim: usize, _vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(Pooling::new(self.pool_size)))
    }

    /// Averaging is element-wise work, which MAC counts leave out.
    fn macs(&self, _dim: usize, _h: usize, _w: usize) -> u64 {
        0
    }
}
