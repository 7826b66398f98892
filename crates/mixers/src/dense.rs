//! JustDense's dense matrix mixer (Park et al., arXiv 2508.09153; Thrillcrazyer/JustDense,
//! `layers/matrix_mixers/dense.py`, class `Dense`): one learned, data-independent `N x N`
//! matrix per head that mixes the tokens of that head's channels.
//!
//! # Relation to the reference's residuals
//!
//! The reference's `Dense.forward` returns `x + M x / sqrt(N)`: it adds its own input back.
//! Following tokenmix's convention, [`Dense`] returns only the mixing term `M x / sqrt(N)`, and
//! the block around it owns the residual. The reference's Time-Series-Library encoder layer
//! then adds the input once more (`x + dropout(mixer(x))`), so a JustDense encoder layer
//! computes `2 x + M x / sqrt(N)` before its first norm; a block reproducing it adds `2 x` to
//! this mixer's output (see tokenmix-models' `sequence::justdense`). A MetaFormer block adds
//! `x` once, which is the mixer without the doubled residual.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::{check_num_tokens, check_token_count, config_error, MixerLayout, MixerSpec, TokenMixer};

/// Most matrix entries (`heads * N * N`) a [`Dense`] mixer may hold (8 GiB of f32).
pub const MAX_MATRIX_ELEMENTS: usize = 1 << 31;

/// JustDense's mixer on `(B, N, C)` tokens: the channels split into `heads` contiguous blocks
/// of `C / heads` (channel `n * head_dim + h` is channel `h` of head `n`), and
/// `y[b, l, n, :] = sum_t M[n, l, t] x[b, t, n, :] / sqrt(N)` with `M` `[heads, N, N]`
/// (checkpoint name `M`; row index = output token). No projections, bias, norm or masking;
/// `N` is fixed by the weights.
#[derive(Debug, Clone)]
pub struct Dense {
    m: Tensor,
    heads: usize,
    num_tokens: usize,
    scale: f64,
}

impl Dense {
    /// Loads `M` `[heads, num_tokens, num_tokens]` from `vb`.
    pub fn new(num_tokens: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self::from_matrix(
            vb.get((heads, num_tokens, num_tokens), "M")?,
        ))
    }

    /// The mixer of a loaded `M` `[heads, N, N]`.
    pub fn from_matrix(m: Tensor) -> Self {
        let (heads, num_tokens) = match m.dims() {
            [h, n, _] => (*h, *n),
            _ => (0, 0),
        };
        Self {
            m,
            heads,
            num_tokens,
            scale: 1.0 / (num_tokens.max(1) as f64).sqrt(),
        }
    }

    /// Heads (matrices).
    pub fn heads(&self) -> usize {
        self.heads
    }
}

impl TokenMixer for Dense {
    fn name(&self) -> &'static str {
        "dense"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Tokens
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_token_count("dense", x, self.num_tokens)?;
        let (b, n, c) = x.dims3()?;
        if self.heads == 0 || !c.is_multiple_of(self.heads) {
            return Err(config_error(
                "dense",
                format!("{c} channels do not split into {} heads", self.heads),
            ));
        }
        let (h, d) = (self.heads, c / self.heads);
        // One product per head with the batch folded into the columns: (H, N, B * d).
        let cols = x
            .reshape((b, n, h, d))?
            .permute((2, 1, 0, 3))?
            .contiguous()?
            .reshape((h, n, b * d))?;
        let y = (self.m.matmul(&cols)? * self.scale)?;
        y.reshape((h, n, b, d))?
            .permute((2, 1, 0, 3))?
            .contiguous()?
            .reshape((b, n, c))
    }
}

/// Config of the [`Dense`] mixer; JSON `{"type": "dense", "num_tokens": 12, "heads": 2}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseMixerConfig {
    /// Tokens `N` the matrices were built for (fitted to the stage grid by
    /// [`MixerSpec::for_grid`]).
    pub num_tokens: usize,
    /// Heads; each mixes `C / heads` contiguous channels with its own matrix.
    pub heads: usize,
}

impl Default for DenseMixerConfig {
    /// JDPatchTST's on ETTh1 at 96 -> 96: 12 patches, 2 heads.
    fn default() -> Self {
        Self {
            num_tokens: 12,
            heads: 2,
        }
    }
}

impl MixerSpec for DenseMixerConfig {
    fn kind(&self) -> &'static str {
        "dense"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        check_num_tokens("dense", self.num_tokens)?;
        let h = self.heads;
        if h == 0 || !dim.is_multiple_of(h) {
            return Err(config_error(
                "dense",
                format!("heads must be positive and divide the {dim} channels, got {h}"),
            ));
        }
        let elements = h
            .checked_mul(self.num_tokens * self.num_tokens)
            .filter(|&e| e <= MAX_MATRIX_ELEMENTS);
        if elements.is_none() {
            return Err(config_error(
                "dense",
                format!(
                    "{h} matrices of {n} x {n} exceed {MAX_MATRIX_ELEMENTS} entries",
                    n = self.num_tokens
                ),
            ));
        }
        Ok(())
    }

    fn build(&self, _dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(Dense::new(self.num_tokens, self.heads, vb)?))
    }

    fn macs(&self, dim: usize, _h: usize, _w: usize) -> u64 {
        let n = self.num_tokens as u64;
        dim as u64 * n * n
    }

    fn for_grid(&self, h: usize, w: usize) -> Option<Self> {
        Some(Self {
            num_tokens: h * w,
            ..*self
        })
    }
}
