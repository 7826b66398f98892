//! GFNet's global filter (Rao et al., "Global Filter Networks for Image Classification").

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::{MixerError, MixerLayout, TokenMixer};

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
