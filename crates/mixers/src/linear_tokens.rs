//! ResMLP's linear token mixing (timm `mlp_mixer.py` `ResBlock.linear_tokens`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::layers::TokenLinear;
use crate::{check_num_tokens, check_token_count, MixerLayout, MixerSpec, TokenMixer};

/// ResMLP's token mixing on `(B, N, C)`: one `Linear(N, N)` with bias along the token axis
/// (checkpoint `weight [N, N]`, `bias [N]`).
#[derive(Debug, Clone)]
pub struct LinearTokens {
    linear: TokenLinear,
    num_tokens: usize,
}

impl LinearTokens {
    /// Loads `weight` and `bias` for `num_tokens` tokens.
    pub fn new(num_tokens: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear: TokenLinear::new(num_tokens, num_tokens, vb)?,
            num_tokens,
        })
    }
}

impl TokenMixer for LinearTokens {
    fn name(&self) -> &'static str {
        "linear_tokens"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Tokens
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_token_count("linear_tokens", x, self.num_tokens)?;
        self.linear.forward(x)
    }
}

/// Config of the [`LinearTokens`] mixer; JSON `{"type": "linear_tokens", "num_tokens": 196}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearTokensConfig {
    /// Tokens `N` (fitted to the stage grid by [`MixerSpec::for_grid`]).
    pub num_tokens: usize,
}

impl Default for LinearTokensConfig {
    /// ResMLP-12's 196 tokens.
    fn default() -> Self {
        Self { num_tokens: 196 }
    }
}

impl MixerSpec for LinearTokensConfig {
    fn kind(&self) -> &'static str {
        "linear_tokens"
    }

    fn validate(&self, _dim: usize) -> Result<()> {
        check_num_tokens("linear_tokens", self.num_tokens)
    }

    fn build(&self, _dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(LinearTokens::new(self.num_tokens, vb)?))
    }

    fn macs(&self, dim: usize, _h: usize, _w: usize) -> u64 {
        (self.num_tokens as u64).pow(2) * dim as u64
    }

    fn for_grid(&self, h: usize, w: usize) -> Option<Self> {
        Some(Self { num_tokens: h * w })
    }
}
