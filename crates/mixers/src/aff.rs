//! AFFNet's adaptive frequency filter (Huang et al., "Adaptive Frequency Filters As Efficient
//! Global Token Mixers", arXiv 2307.14008), with the tensor names of microsoft/TokenMixers
//! (`AFNO2D_channelfirst`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use tokenmix_kernels::{irfft2_ortho, rfft2_ortho};

use crate::layers::{Act, ActKind};
use crate::{MixerLayout, TokenMixer};

/// `x + irfft2(M(X) * X)` on `(B, C, H, W)` with `X = rfft2(x)` (orthonormal), where the
/// instance-adaptive mask `M` is a two-layer complex MLP on the spectrum, block-diagonal over
/// `num_blocks` channel groups, followed by a soft-shrink with `sparsity_threshold`. Weights
/// `w1`, `w2` `[2, k, C/k, C/k]` and biases `b1`, `b2` `[2, k, C/k]` (index 0 real, 1
/// imaginary). The residual is part of the mixer, as in the reference.
#[derive(Debug, Clone)]
pub struct AdaptiveFrequencyFilter {
    w1: (Tensor, Tensor),
    b1: (Tensor, Tensor),
    w2: (Tensor, Tensor),
    b2: (Tensor, Tensor),
    act: Act,
    blocks: usize,
    threshold: f64,
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
        let bs = dim / num_blocks;
        Ok(Self {
            w1: parts(&vb.get((2, num_blocks, bs, bs), "w1")?, true)?,
            b1: parts(&vb.get((2, num_blocks, bs), "b1")?, false)?,
            w2: parts(&vb.get((2, num_blocks, bs, bs), "w2")?, true)?,
            b2: parts(&vb.get((2, num_blocks, bs), "b2")?, false)?,
            act: Act::new(act, vb.pp("act"))?,
            blocks: num_blocks,
            threshold,
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
        let (o1r, o1i) = complex_affine((&xr, &xi), &self.w1, &self.b1)?;
        let (o1r, o1i) = (self.act.forward(&o1r)?, self.act.forward(&o1i)?);
        let (o2r, o2i) = complex_affine((&o1r, &o1i), &self.w2, &self.b2)?;
        let mr = softshrink(&o2r, self.threshold)?.reshape((b, c, h, k))?;
        let mi = softshrink(&o2i, self.threshold)?.reshape((b, c, h, k))?;
        let yr = ((&mr * &re)? - (&mi * &im)?)?;
        let yi = ((&mr * &im)? + (&mi * &re)?)?;
        x + irfft2_ortho(&yr, &yi, w)?.to_dtype(x.dtype())?
    }
}
