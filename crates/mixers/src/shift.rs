//! MS-MLP's mix-shift token mixer (Zheng et al., "Mixing and Shifting: Exploiting Global and
//! Local Dependencies in Vision MLPs", arXiv 2202.06510).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::{MixerLayout, TokenMixer};

/// Sizes of `torch.chunk(x, groups, dim=1)` for `dim` channels: `ceil(dim / groups)` each, the
/// last one smaller; fewer than `groups` chunks when `dim` is too small.
pub fn chunk_sizes(dim: usize, groups: usize) -> Vec<usize> {
    let size = dim.div_ceil(groups.max(1)).max(1);
    (0..dim)
        .step_by(size)
        .map(|start| size.min(dim - start))
        .collect()
}

/// Mix-shift on `(B, C, H, W)`: the channels are split into groups (as `torch.chunk`); group
/// `i` is rolled circularly by `shift_dist[i]` along the width and, separately, along the
/// height, each roll followed by its own `k_i x k_i` depthwise convolution with bias
/// (`dwconv_lr.i`, `dwconv_td.i`); the output is the sum of the two. The per-group kernels are
/// packed at load time into one `(2, C, k, k)` tensor (centred, zero-padded to the largest `k`)
/// for the fused op.
#[derive(Debug, Clone)]
pub struct MixShift {
    weights: Tensor,
    biases: Tensor,
    shifts: Vec<i32>,
}

impl MixShift {
    /// Loads `dwconv_lr.{i}` and `dwconv_td.{i}` for `dim` channels with one group per entry of
    /// `shift_dist` and kernel sizes `mix_size`.
    pub fn new(dim: usize, shift_dist: &[i32], mix_size: &[usize], vb: VarBuilder) -> Result<Self> {
        let kmax = mix_size.iter().copied().max().unwrap_or(1);
        let mut weights = [Vec::new(), Vec::new()];
        let mut biases = [Vec::new(), Vec::new()];
        let mut shifts = Vec::with_capacity(dim);
        for (i, ((len, &shift), &k)) in chunk_sizes(dim, shift_dist.len())
            .into_iter()
            .zip(shift_dist)
            .zip(mix_size)
            .enumerate()
        {
            let pad = (kmax - k) / 2;
            for (dir, name) in ["dwconv_lr", "dwconv_td"].iter().enumerate() {
                let vb = vb.pp(name).pp(i);
                let w = vb.get((len, 1, k, k), "weight")?;
                weights[dir].push(w.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?);
                biases[dir].push(vb.get(len, "bias")?);
            }
            shifts.extend(std::iter::repeat_n(shift, len));
        }
        let pack = |parts: &[Tensor]| -> Result<Tensor> { Tensor::cat(parts, 0) };
        let weights = Tensor::stack(
            &[
                pack(&weights[0])?.squeeze(1)?,
                pack(&weights[1])?.squeeze(1)?,
            ],
            0,
        )?;
        let biases = Tensor::stack(&[pack(&biases[0])?, pack(&biases[1])?], 0)?;
        Ok(Self {
            weights,
            biases,
            shifts,
        })
    }
}

impl TokenMixer for MixShift {
    fn name(&self) -> &'static str {
        "mix_shift"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Spatial
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        tokenmix_kernels::mix_shift(x, &self.weights, &self.biases, &self.shifts)
    }
}
