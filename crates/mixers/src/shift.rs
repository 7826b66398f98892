//! MS-MLP's mix-shift token mixer (Zheng et al., "Mixing and Shifting: Exploiting Global and
//! Local Dependencies in Vision MLPs", arXiv 2202.06510).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use serde::{Deserialize, Serialize};

use crate::layers::Derived;
use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};

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
/// packed into one `(2, C, k, k)` tensor (centred, zero-padded to the largest `k`) for the fused
/// op on the first forward pass (on every pass while they are trainable), so building the mixer
/// allocates nothing.
#[derive(Debug, Clone)]
pub struct MixShift {
    /// Per direction (`dwconv_lr`, `dwconv_td`), each group's `(len, 1, k, k)` weight as loaded.
    weights: [Vec<Tensor>; 2],
    /// Per direction, each group's `(len,)` bias.
    biases: [Vec<Tensor>; 2],
    /// Largest kernel size.
    kmax: usize,
    /// The packed `(2, C, kmax, kmax)` weights and `(2, C)` biases.
    packed: Derived<(Tensor, Tensor)>,
    shifts: Vec<i32>,
}

impl MixShift {
    /// Loads `dwconv_lr.{i}` and `dwconv_td.{i}` for `dim` channels with one group per entry of
    /// `shift_dist` and kernel sizes `mix_size`.
    pub fn new(dim: usize, shift_dist: &[i32], mix_size: &[usize], vb: VarBuilder) -> Result<Self> {
        let kmax = mix_size.iter().copied().max().unwrap_or(1);
        let mut weights = [Vec::new(), Vec::new()];
        let mut biases = [Vec::new(), Vec::new()];
        let mut shifts = Vec::new();
        for (i, ((len, &shift), &k)) in chunk_sizes(dim, shift_dist.len())
            .into_iter()
            .zip(shift_dist)
            .zip(mix_size)
            .enumerate()
        {
            for (dir, name) in ["dwconv_lr", "dwconv_td"].iter().enumerate() {
                let vb = vb.pp(name).pp(i);
                weights[dir].push(vb.get((len, 1, k, k), "weight")?);
                biases[dir].push(vb.get(len, "bias")?);
            }
            shifts.extend(std::iter::repeat_n(shift, len));
        }
        Ok(Self {
            weights,
            biases,
            kmax,
            packed: Derived::default(),
            shifts,
        })
    }

    /// The packed weights and biases, derived once unless a weight is trainable.
    fn packed(&self) -> Result<(Tensor, Tensor)> {
        let trainable = self.weights.iter().chain(&self.biases).flatten().any(|t| t.is_variable());
        self.packed.get(trainable, || {
            let kmax = self.kmax;
            let pad = |w: &Tensor| -> Result<Tensor> {
                let p = (kmax - w.dim(3)?) / 2;
                w.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)
            };
            let pack = |dir: usize| -> Result<Tensor> {
                let padded = self.weights[dir].iter().map(pad).collect::<Result<Vec<_>>>()?;
                Tensor::cat(&padded, 0)?.squeeze(1)
            };
            let weights = Tensor::stack(&[pack(0)?, pack(1)?], 0)?;
            let biases = Tensor::stack(
                &[Tensor::cat(&self.biases[0], 0)?, Tensor::cat(&self.biases[1], 0)?],
                0,
            )?;
            Ok((weights, biases))
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
        let (weights, biases) = self.packed()?;
        tokenmix_kernels::mix_shift(x, &weights, &biases, &self.shifts)
    }
}

/// Config of the [`MixShift`] mixer; JSON `{"type": "mix_shift", "shift_dist": [-1, 0, 1],
/// "mix_size": [1, 3, 5]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixShiftConfig {
    /// Roll distance of each channel group (one group per entry).
    pub shift_dist: Vec<i32>,
    /// Depthwise kernel size of each group (odd).
    pub mix_size: Vec<usize>,
}

impl Default for MixShiftConfig {
    /// MS-MLP-T's first stage: shifts -1, 0, 1 with kernels 1, 3, 5.
    fn default() -> Self {
        Self {
            shift_dist: vec![-1, 0, 1],
            mix_size: vec![1, 3, 5],
        }
    }
}

impl MixerSpec for MixShiftConfig {
    fn kind(&self) -> &'static str {
        "mix_shift"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        let (shifts, sizes) = (&self.shift_dist, &self.mix_size);
        let groups = shifts.len();
        let kernels_ok = sizes.iter().all(|k| k % 2 == 1 && *k <= 63);
        let shifts_ok = shifts.iter().all(|s| s.unsigned_abs() <= 1 << 16);
        if groups == 0
            || groups != sizes.len()
            || !kernels_ok
            || !shifts_ok
            || chunk_sizes(dim, groups).len() != groups
        {
            return Err(config_error(
                "mix_shift",
                format!(
                    "need one odd kernel (at most 63) per shift and {groups} channel groups of \
                     {dim} channels (torch.chunk), got shifts {shifts:?} and kernels {sizes:?}"
                ),
            ));
        }
        Ok(())
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(MixShift::new(
            dim,
            &self.shift_dist,
            &self.mix_size,
            vb,
        )?))
    }

    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let sizes = chunk_sizes(dim, self.shift_dist.len());
        let taps: u64 = sizes
            .iter()
            .zip(&self.mix_size)
            .map(|(&c, &k)| (c * k * k) as u64)
            .sum();
        2 * (h * w) as u64 * taps
    }
}
