//! RaftMLP's serial permuted token mixing (Tatsunami & Taki, "RaftMLP: How Much Can Be Done
//! Without Attention and with Less Spatial Locality?", arXiv 2108.04384), with the tensor names
//! of okojoalg/raft-mlp.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use tokenmix_kernels::resize::interpolate_bicubic;

use crate::layers::{ActKind, Mlp, Norm, NormConfig, NormKind};
use serde::{Deserialize, Serialize};

use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};

/// PyTorch's default `nn.LayerNorm` (eps 1e-5), used throughout RaftMLP.
pub const RAFT_NORM: NormConfig = NormConfig {
    kind: NormKind::LayerNorm,
    eps: 1e-5,
    bias: true,
};

/// One permuted block's branch: `mlp(LN(x))` (the block adds `x`), where the MLP mixes, for every raft and every
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

    /// The branch for `x` `(B, H, W, C)`; `vertical` mixes along `H`, otherwise along `W`.
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
        z.reshape((b, h, w, c))
    }
}

/// RaftMLP's token mixing on a channel-last map `(B, H, W, C)`: a vertical then a horizontal
/// permuted block (each `y + mlp(LN(y))`) over rafts of `raft_size` channels, returned as the
/// mixing term `raft(x) - x` (the RaftMLP block adds `x` back). The MLP widths fix the grid to
/// `(height, width)`; other grids are resized to it bicubically and back, as the reference does.
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

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = x.dims4()?;
        if (h, w) == self.grid {
            let v = self.vertical.forward(x, self.raft, true)?;
            let hz = self.horizontal.forward(&(x + &v)?, self.raft, false)?;
            return v + hz;
        }
        let small = interpolate_bicubic(&x.permute((0, 3, 1, 2))?, self.grid, false)?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        let y = (&small + self.vertical.forward(&small, self.raft, true)?)?;
        let y = (&y + self.horizontal.forward(&y, self.raft, false)?)?;
        let back = interpolate_bicubic(&y.permute((0, 3, 1, 2))?, (h, w), false)?
            .permute((0, 2, 3, 1))?;
        back - x
    }
}

/// Config of the [`RaftTokenMixing`] mixer; JSON `{"type": "raft_token_mixing",
/// "raft_size": 2, "height": 56, "width": 56, "expansion": 2}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftTokenMixingConfig {
    /// Channels per raft; must divide the stage width.
    pub raft_size: usize,
    /// Grid height the MLPs were built for.
    pub height: usize,
    /// Grid width the MLPs were built for.
    pub width: usize,
    /// Hidden width of the token MLPs as a multiple of their input width.
    pub expansion: usize,
}

impl Default for RaftTokenMixingConfig {
    /// RaftMLP's first level: rafts of 2 channels on a 56x56 grid, expansion 2.
    fn default() -> Self {
        Self {
            raft_size: 2,
            height: 56,
            width: 56,
            expansion: 2,
        }
    }
}

impl MixerSpec for RaftTokenMixingConfig {
    fn kind(&self) -> &'static str {
        "raft_token_mixing"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        let Self {
            raft_size,
            height,
            width,
            expansion,
        } = *self;
        if raft_size == 0
            || !dim.is_multiple_of(raft_size)
            || height == 0
            || width == 0
            || height * width > 1 << 16
            || raft_size * height.max(width) > 1 << 16
            || expansion == 0
            || expansion > 64
        {
            return Err(config_error(
                "raft_token_mixing",
                format!(
                    "raft_size {raft_size} must divide {dim} channels, the grid \
                     {height}x{width} be non-empty and at most 65536 positions, and the \
                     expansion {expansion} in 1..=64"
                ),
            ));
        }
        Ok(())
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(RaftTokenMixing::new(
            dim,
            self.raft_size,
            (self.height, self.width),
            self.expansion,
            vb,
        )?))
    }

    /// Each token MLP maps `r * extent -> e * r * extent -> r * extent` for every raft and line.
    fn macs(&self, dim: usize, _h: usize, _w: usize) -> u64 {
        let (r, e) = (self.raft_size as u64, self.expansion as u64);
        let (gh, gw) = (self.height as u64, self.width as u64);
        let rafts = dim as u64 / r.max(1);
        2 * e * rafts * (gw * (r * gh).pow(2) + gh * (r * gw).pow(2))
    }

    fn for_grid(&self, h: usize, w: usize) -> Option<Self> {
        Some(Self {
            height: h,
            width: w,
            ..*self
        })
    }
}
