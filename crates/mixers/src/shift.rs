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

/// One channel group: its channels, shift and the two depthwise convolutions.
#[derive(Debug, Clone)]
struct Group {
    start: usize,
    len: usize,
    shift: i32,
    lr: (Tensor, Tensor),
    td: (Tensor, Tensor),
}

/// Mix-shift on `(B, C, H, W)`: the channels are split into groups (as `torch.chunk`); group
/// `i` is rolled circularly by `shift_dist[i]` along the width and, separately, along the
/// height, each roll followed by its own `k_i x k_i` depthwise convolution with bias
/// (`dwconv_lr.i`, `dwconv_td.i`); the output is the sum of the two concatenations.
#[derive(Debug, Clone)]
pub struct MixShift {
    groups: Vec<Group>,
}

impl MixShift {
    /// Loads `dwconv_lr.{i}` and `dwconv_td.{i}` for `dim` channels with one group per entry of
    /// `shift_dist` and kernel sizes `mix_size`.
    pub fn new(dim: usize, shift_dist: &[i32], mix_size: &[usize], vb: VarBuilder) -> Result<Self> {
        let mut start = 0;
        let mut groups = Vec::new();
        for (i, ((len, &shift), &k)) in chunk_sizes(dim, shift_dist.len())
            .into_iter()
            .zip(shift_dist)
            .zip(mix_size)
            .enumerate()
        {
            let conv = |name: &str| -> Result<(Tensor, Tensor)> {
                let vb = vb.pp(name).pp(i);
                Ok((vb.get((len, 1, k, k), "weight")?, vb.get(len, "bias")?))
            };
            groups.push(Group {
                start,
                len,
                shift,
                lr: conv("dwconv_lr")?,
                td: conv("dwconv_td")?,
            });
            start += len;
        }
        Ok(Self { groups })
    }
}

fn dwconv(x: &Tensor, (w, b): &(Tensor, Tensor)) -> Result<Tensor> {
    let pad = w.dim(3)? / 2;
    tokenmix_kernels::depthwise_conv2d(x, w, Some(b), 1, pad)
}

impl TokenMixer for MixShift {
    fn name(&self) -> &'static str {
        "mix_shift"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Spatial
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut lr = Vec::with_capacity(self.groups.len());
        let mut td = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            let xi = x.narrow(1, g.start, g.len)?;
            lr.push(dwconv(&xi.roll(g.shift, 3)?, &g.lr)?);
            td.push(dwconv(&xi.roll(g.shift, 2)?, &g.td)?);
        }
        Tensor::cat(&lr, 1)? + Tensor::cat(&td, 1)?
    }
}
