//! AFFNet's adaptive frequency filter (Huang et al., "Adaptive Frequency Filters As Efficient
//! Global Token Mixers", arXiv 2307.14008), with the tensor names of microsoft/TokenMixers
//! (`AFNO2D_channelfirst`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use tokenmix_kernels::{irfft2_ortho, rfft2_ortho};

use crate::layers::{Act, ActKind, Derived};
use serde::{Deserialize, Serialize};

use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};

/// The filtered map `irfft2(M(X) * X)` on `(B, C, H, W)` with `X = rfft2(x)` (orthonormal), where the
/// instance-adaptive mask `M` is a two-layer complex MLP on the spectrum, block-diagonal over
/// `num_blocks` channel groups, followed by a soft-shrink with `sparsity_threshold`. Weights
/// `w1`, `w2` `[2, k, C/k, C/k]` and biases `b1`, `b2` `[2, k, C/k]` (index 0 real, 1
/// imaginary). The AFFNet layer adds the input back (the reference's
/// residual inside `AFNO2D_channelfirst` moves to the block).
///
/// The weights are kept as loaded; their real and imaginary halves (weights transposed) are
/// derived on the first forward pass (on every pass while they are trainable), so building the
/// filter allocates nothing.
#[derive(Debug, Clone)]
pub struct AdaptiveFrequencyFilter {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    parts: Derived<FilterParts>,
    act: Act,
    blocks: usize,
    threshold: f64,
}

/// The real and imaginary halves of `w1`, `b1`, `w2`, `b2`, in the orientation the forward pass
/// multiplies by.
#[derive(Debug, Clone)]
struct FilterParts {
    w1: (Tensor, Tensor),
    b1: (Tensor, Tensor),
    w2: (Tensor, Tensor),
    b2: (Tensor, Tensor),
}

/// Real and imaginary halves of a `[2, ...]` tensor; weights are transposed to `[k, out, in]`.
fn parts(t: &Tensor, transpose: bool) -> Result<(Tensor, Tensor)> {
    let part = |i| -> Result<Tensor> {
        let p = t.get(i)?;
        if transpose {
            p.transpose(1, 2)?.contiguous()
        } else {
            p.unsqueeze(2)?.contiguous()
        }
    };
    Ok((part(0)?, part(1)?))
}

impl AdaptiveFrequencyFilter {
    /// Loads `w1`, `b1`, `w2`, `b2` for `dim` channels in `num_blocks` groups.
    pub fn new(
        dim: usize,
        num_blocks: usize,
        threshold: f64,
        act: ActKind,
        vb: VarBuilder,
    ) -> Result<Self> {
        let bs = dim / num_blocks.max(1);
        Ok(Self {
            w1: vb.get((2, num_blocks, bs, bs), "w1")?,
            b1: vb.get((2, num_blocks, bs), "b1")?,
            w2: vb.get((2, num_blocks, bs, bs), "w2")?,
            b2: vb.get((2, num_blocks, bs), "b2")?,
            parts: Derived::default(),
            act: Act::new(act, vb.pp("act"))?,
            blocks: num_blocks,
            threshold,
        })
    }

    /// The halves of the weights, derived once unless a weight is trainable.
    fn parts(&self) -> Result<FilterParts> {
        let trainable = [&self.w1, &self.b1, &self.w2, &self.b2]
            .iter()
            .any(|t| t.is_variable());
        self.parts.get(trainable, || {
            Ok(FilterParts {
                w1: parts(&self.w1, true)?,
                b1: parts(&self.b1, false)?,
                w2: parts(&self.w2, true)?,
                b2: parts(&self.b2, false)?,
            })
        })
    }
}

/// `(a + ib)` times the block-diagonal complex matrix `(wr + i wi)`, plus `(br + i bi)`.
fn complex_affine(
    (a, b): (&Tensor, &Tensor),
    (wr, wi): &(Tensor, Tensor),
    (br, bi): &(Tensor, Tensor),
) -> Result<(Tensor, Tensor)> {
    let re = (wr.broadcast_matmul(a)? - wi.broadcast_matmul(b)?)?.broadcast_add(br)?;
    let im = (wr.broadcast_matmul(b)? + wi.broadcast_matmul(a)?)?.broadcast_add(bi)?;
    Ok((re, im))
}

fn softshrink(x: &Tensor, lambda: f64) -> Result<Tensor> {
    (x - lambda)?.relu()? - (x.neg()? - lambda)?.relu()?
}

impl TokenMixer for AdaptiveFrequencyFilter {
    fn name(&self) -> &'static str {
        "adaptive_frequency_filter"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Spatial
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (re, im) = rfft2_ortho(x)?;
        let k = w / 2 + 1;
        let grouped = |t: &Tensor| t.reshape((b, self.blocks, c / self.blocks, h * k));
        let (xr, xi) = (grouped(&re)?, grouped(&im)?);
        let p = self.parts()?;
        let (o1r, o1i) = complex_affine((&xr, &xi), &p.w1, &p.b1)?;
        let (o1r, o1i) = (self.act.forward(&o1r)?, self.act.forward(&o1i)?);
        let (o2r, o2i) = complex_affine((&o1r, &o1i), &p.w2, &p.b2)?;
        let mr = softshrink(&o2r, self.threshold)?.reshape((b, c, h, k))?;
        let mi = softshrink(&o2i, self.threshold)?.reshape((b, c, h, k))?;
        let yr = ((&mr * &re)? - (&mi * &im)?)?;
        let yi = ((&mr * &im)? + (&mi * &re)?)?;
        irfft2_ortho(&yr, &yi, w)?.to_dtype(x.dtype())
    }
}

/// Config of the [`AdaptiveFrequencyFilter`] mixer; JSON `{"type":
/// "adaptive_frequency_filter", "num_blocks": 8, "sparsity_threshold": 0.01, "act": "relu"}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveFrequencyFilterConfig {
    /// Channel groups of the block-diagonal MLP; must divide the stage width.
    pub num_blocks: usize,
    /// Soft-shrink threshold of the mask.
    pub sparsity_threshold: f64,
    /// Activation inside the MLP (AFFNet's global activation).
    pub act: ActKind,
}

impl Default for AdaptiveFrequencyFilterConfig {
    /// AFFNet's: 8 groups, threshold 0.01, ReLU.
    fn default() -> Self {
        Self {
            num_blocks: 8,
            sparsity_threshold: 0.01,
            act: ActKind::Relu,
        }
    }
}

impl MixerSpec for AdaptiveFrequencyFilterConfig {
    fn kind(&self) -> &'static str {
        "adaptive_frequency_filter"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        let k = self.num_blocks;
        if k == 0 || !dim.is_multiple_of(k) || !self.sparsity_threshold.is_finite() {
            return Err(config_error(
                "adaptive_frequency_filter",
                format!(
                    "num_blocks {k} must divide {dim} channels and sparsity_threshold ({}) be \
                     finite",
                    self.sparsity_threshold
                ),
            ));
        }
        Ok(())
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(AdaptiveFrequencyFilter::new(
            dim,
            self.num_blocks,
            self.sparsity_threshold,
            self.act,
            vb,
        )?))
    }

    /// FFTs plus the two block-diagonal complex layers (4 real products each) on the half
    /// spectrum.
    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let (n, dim) = ((h * w) as u64, dim as u64);
        let log = (n.max(2) as f64).log2().ceil() as u64;
        let half = (h * (w / 2 + 1)) as u64;
        dim * 2 * n * log + 2 * 4 * half * dim * dim / (self.num_blocks as u64).max(1)
    }
}
