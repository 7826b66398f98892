//! RaftMLP's serial permuted token mixing (Tatsunami & Taki, "RaftMLP: How Much Can Be Done
//! Without Attention and with Less Spatial Locality?", arXiv 2108.04384), with the tensor names
//! of okojoalg/raft-mlp.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use tokenmix_kernels::resize::interpolate_bicubic;

use crate::layers::{ActKind, Mlp, Norm, NormConfig, NormKind};
use crate::MixerLayout;
use crate::TokenMixer;

/// PyTorch's default `nn.LayerNorm` (eps 1e-5), used throughout RaftMLP.
pub const RAFT_NORM: NormConfig = NormConfig {
    kind: NormKind::LayerNorm,
    eps: 1e-5,
    bias: true,
};

/// One permuted block: `x + mlp(LN(x))` where the MLP mixes, for every raft and every
/// column (vertical) or row (horizontal), the `r * H` (or `r * W`) values of that raft's `r`
/// channels along the axis. The LayerNorm's affine parameters are stored in the reference's
/// permuted channel order and are reordered at load time.
#[derive(Debug, Clone)]
struct PermutedBlock {
    norm: Norm,
    mlp: Mlp,
}

impl PermutedBlock {
    fn new(
        dim: usize,
        raft: usize,
        extent: usize,
        expansion: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        // The reference normalizes channels ordered (raft id k, position j) = k * r + j; natural
        // order is j * (C / r) + k.
        let unpermute = |t: Tensor| {
            t.reshape((dim / raft, raft))?
                .t()?
                .contiguous()?
                .reshape(dim)
        };
        let nv = vb.pp("norm").pp(1);
        let norm = Norm::from_tensors(
            RAFT_NORM,
            MixerLayout::ChannelsLast,
            unpermute(nv.get(dim, "weight")?)?,
            Some(unpermute(nv.get(dim, "bias")?)?),
        );
        let width = raft * extent;
        let fc = vb.pp("fn");
        Ok(Self {
            norm,
            mlp: Mlp::from_parts(width, width * expansion, ActKind::Gelu, fc.pp(0), fc.pp(3))?,
        })
    }

    /// `x` `(B, H, W, C)`; `vertical` mixes along `H`, otherwise along `W`.
    fn forward(&self, x: &Tensor, raft: usize, vertical: bool) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let co = c / raft;
        let y = self.norm.forward(x)?.reshape((b, h, w, raft, co))?;
        let (order, back, rows, len) = if vertical {
            ((0, 4, 2, 3, 1), (0, 4, 2, 3, 1), co * w, raft * h)
        } else {
            ((0, 4, 1, 3, 2), (0, 2, 4, 3, 1), co * h, raft * w)
        };
        let z = y.permute(order)?.contiguous()?.reshape((b, rows, len))?;
        let z = self.mlp.forward(&z)?;
        let z = if vertical {
            z.reshape((b, co, w, raft, h))?.permute(back)?
        } else {
            z.reshape((b, co, h, raft, w))?.permute(back)?
        };
        x + z.reshape((b, h, w, c))?
    }
}

/// RaftMLP's token mixing on a channel-last map `(B, H, W, C)`: a vertical then a horizontal
/// permuted block (each `x + mlp(LN(x))`, residual included) over rafts of `raft_size`
/// channels. The MLP widths fix the grid to `(height, width)`; other grids are resized to it
/// bicubically and back, as the reference does.
#[derive(Debug, Clone)]
pub struct RaftTokenMixing {
    vertical: PermutedBlock,
    horizontal: PermutedBlock,
    raft: usize,
    grid: (usize, usize),
}

impl RaftTokenMixing {
    /// Loads the blocks of one raft block `vb` (`1.*` vertical, `3.*` horizontal) for `dim`
    /// channels on a `(height, width)` grid.
    pub fn new(
        dim: usize,
        raft: usize,
        (height, width): (usize, usize),
        expansion: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            vertical: PermutedBlock::new(dim, raft, height, expansion, vb.pp(1))?,
            horizontal: PermutedBlock::new(dim, raft, width, expansion, vb.pp(3))?,
            raft,
            grid: (height, width),
        })
    }
}

impl TokenMixer for RaftTokenMixing {
    fn name(&self) -> &'static str {
        "raft_token_mixing"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::ChannelsLast
    }

    /// Unlike most mixers this includes the residual connections, as RaftMLP's blocks do.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = x.dims4()?;
        let resized = (h, w) != self.grid;
        let mut y = if resized {
            let nchw = x.permute((0, 3, 1, 2))?;
            interpolate_bicubic(&nchw, self.grid, false)?
                .permute((0, 2, 3, 1))?
                .contiguous()?
        } else {
            x.clone()
        };
        y = self.vertical.forward(&y, self.raft, true)?;
        y = self.horizontal.forward(&y, self.raft, false)?;
        if resized {
            let nchw = y.permute((0, 3, 1, 2))?;
            y = interpolate_bicubic(&nchw, (h, w), false)?
                .permute((0, 2, 3, 1))?
                .contiguous()?;
        }
        Ok(y)
    }
}
