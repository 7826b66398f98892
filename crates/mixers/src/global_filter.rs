//! GFNet's global filter (Rao et al., "Global Filter Networks for Image Classification").

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use serde::{Deserialize, Serialize};

use crate::{config_error, MixerError, MixerLayout, MixerSpec, TokenMixer};

/// `irfft2(rfft2(x, norm="ortho") * W, norm="ortho")` over the spatial axes of a channel-last
/// map `(B, H, W, C)`, with the learned complex filter `complex_weight` `[H, W/2 + 1, C, 2]`
/// (real and imaginary parts last). The filter fixes the grid size; checkpoints for another
/// grid are resized when loaded, as GFNet does.
#[derive(Debug, Clone)]
pub struct GlobalFilter {
    weight: Tensor,
    height: usize,
    width: usize,
}

impl GlobalFilter {
    /// Loads `complex_weight` for `dim` channels on a `height x width` grid.
    pub fn new(dim: usize, height: usize, width: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get((height, width / 2 + 1, dim, 2), "complex_weight")?,
            height,
            width,
        })
    }
}

impl TokenMixer for GlobalFilter {
    fn name(&self) -> &'static str {
        "global_filter"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::ChannelsLast
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = x.dims4()?;
        if (h, w) != (self.height, self.width) {
            return Err(MixerError::TokenCount {
                mixer: "global_filter",
                expected: self.height * self.width,
                height: h,
                width: w,
            }
            .into());
        }
        tokenmix_kernels::spectral_filter(x, &self.weight)
    }
}

/// Config of the [`GlobalFilter`] mixer; JSON `{"type": "global_filter", "height": 14,
/// "width": 14}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalFilterConfig {
    /// Grid height the filter was built for.
    pub height: usize,
    /// Grid width the filter was built for.
    pub width: usize,
}

impl Default for GlobalFilterConfig {
    /// GFNet's 14x14 grid (224² input, 16² patches).
    fn default() -> Self {
        Self {
            height: 14,
            width: 14,
        }
    }
}

impl MixerSpec for GlobalFilterConfig {
    fn kind(&self) -> &'static str {
        "global_filter"
    }

    fn validate(&self, _dim: usize) -> Result<()> {
        let (h, w) = (self.height, self.width);
        if h == 0 || w == 0 || h * w > 1 << 16 {
            return Err(config_error(
                "global_filter",
                format!("the grid must have 1..=65536 positions, got {h}x{w}"),
            ));
        }
        Ok(())
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(GlobalFilter::new(
            dim,
            self.height,
            self.width,
            vb,
        )?))
    }

    /// The two FFTs (~ N log2 N each) and the complex product, per channel.
    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let n = (h * w) as u64;
        let log = (n.max(2) as f64).log2().ceil() as u64;
        dim as u64 * (2 * n * log + (n / 2 + 1) * 4)
    }

    fn for_grid(&self, h: usize, w: usize) -> Option<Self> {
        Some(Self {
            height: h,
            width: w,
        })
    }
}
