//! RandFormer's frozen random token-mixing matrix.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::{MixerError, MixerLayout, TokenMixer};

/// `y[b, c, m] = sum_n R[m, n] * x[b, c, n]` over the `N = H * W` tokens of `(B, C, H, W)`
/// (tokens in row-major order), with the frozen `R` (`random_matrix`, `[N, N]`, rows summing
/// to one) read from the checkpoint. The input grid must have exactly `N` tokens.
#[derive(Debug, Clone)]
pub struct RandomMixing {
    matrix: Tensor,
    num_tokens: usize,
}

impl RandomMixing {
    /// Loads `random_matrix` (`[num_tokens, num_tokens]`).
    pub fn new(num_tokens: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            matrix: vb.get((num_tokens, num_tokens), "random_matrix")?,
            num_tokens,
        })
    }
}

impl TokenMixer for RandomMixing {
    fn name(&self) -> &'static str {
        "random_mixing"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Spatial
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if h * w != self.num_tokens {
            return Err(MixerError::TokenCount {
                mixer: "random_mixing",
                expected: self.num_tokens,
                height: h,
                width: w,
            }
            .into());
        }
        x.reshape((b * c, h * w))?
            .matmul(&self.matrix.t()?)?
            .reshape((b, c, h, w))
    }
}
