//! RandFormer's frozen random token-mixing matrix.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use serde::{Deserialize, Serialize};

use crate::{check_num_tokens, MixerError, MixerLayout, MixerSpec, TokenMixer};

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

/// Config of the [`RandomMixing`] mixer; JSON `{"type": "random_mixing", "num_tokens": 196}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomMixingConfig {
    /// Number of tokens `N = H * W` the matrix was drawn for (fitted to the stage grid by
    /// [`MixerSpec::for_grid`]).
    pub num_tokens: usize,
}

impl Default for RandomMixingConfig {
    fn default() -> Self {
        Self { num_tokens: 196 }
    }
}

impl MixerSpec for RandomMixingConfig {
    fn kind(&self) -> &'static str {
        "random_mixing"
    }

    fn validate(&self, _dim: usize) -> Result<()> {
        check_num_tokens("random_mixing", self.num_tokens)
    }

    fn build(&self, _dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(RandomMixing::new(self.num_tokens, vb)?))
    }

    fn macs(&self, dim: usize, _h: usize, _w: usize) -> u64 {
        (self.num_tokens as u64).pow(2) * dim as u64
    }

    fn for_grid(&self, h: usize, w: usize) -> Option<Self> {
        Some(Self { num_tokens: h * w })
    }
}
