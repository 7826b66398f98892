//! WaveMix's wavelet token mixer (Jeevan & Sethi, "WaveMix: A Resource-efficient Neural Network
//! for Image Analysis", arXiv 2203.03689), with the tensor names of pranavphoenix/WaveMix
//! (`wavemix/__init__.py`, `Level{1,2,3,4}Waveblock`).
//!
//! Tokens mix through a fixed 2-D Haar wavelet transform instead of attention: a 1x1 convolution
//! reduces the channels to a quarter, a `level`-deep Haar cascade splits the map into bands at
//! 1/2 ... 1/2^level resolution (each level's four bands concatenated back to the full channel
//! count), and from the coarsest level up an MLP per level (`1x1 -> GELU -> 1x1`) and a 4x4
//! stride-2 transposed convolution with batch norm bring the bands back up, each level's result
//! concatenated with the next finer level's bands.
//!
//! The reference needs maps whose sides are divisible by `2^level`. Here the transform
//! zero-pads odd sides (pywt's zero mode, as the reference's transform does) and each upsampling
//! is cropped to the finer level's size, so any size runs and sizes the reference takes give
//! its values.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use tokenmix_kernels::{conv_transpose2d_nhwc, conv_transpose_weight_matrix, haar_dwt, Window};

use crate::layers::{Act, BatchNorm, Derived, Pointwise};
use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};

/// The 4x4, stride 2, padding 1 upsampling of every level.
const UPSAMPLE: Window = Window {
    kernel: 4,
    stride: 2,
    padding: 1,
};

/// A transposed convolution followed by a batch norm on channel-last maps, the norm folded into
/// the product's columns and the bias (kept unless a tensor trains). Checkpoint names `weight`
/// `[Cin, Cout, 4, 4]` and `bias` under the convolution's prefix, the norm's four tensors under
/// its own.
#[derive(Debug, Clone)]
struct UpsampleBn {
    weight: Tensor,
    bias: Tensor,
    bn: BatchNorm,
    folded: Derived<(Tensor, Tensor)>,
}

impl UpsampleBn {
    fn new(in_dim: usize, out_dim: usize, conv: VarBuilder, bn: VarBuilder) -> Result<Self> {
        let k = UPSAMPLE.kernel;
        Ok(Self {
            weight: conv.get((in_dim, out_dim, k, k), "weight")?,
            bias: conv.get(out_dim, "bias")?,
            bn: BatchNorm::new(out_dim, bn)?,
            folded: Derived::default(),
        })
    }

    fn trainable(&self) -> bool {
        self.weight.is_variable() || self.bias.is_variable() || self.bn.trainable()
    }

    /// `(matrix (Cin, 16 * Cout), bias (Cout))` with the norm's scale and shift folded in.
    fn fold(&self) -> Result<(Tensor, Tensor)> {
        let (scale, shift) = self.bn.scale_shift()?;
        let (cin, cout) = (self.weight.dim(0)?, self.weight.dim(1)?);
        let taps = UPSAMPLE.kernel * UPSAMPLE.kernel;
        let matrix = conv_transpose_weight_matrix(&self.weight)?
            .reshape((cin, taps, cout))?
            .broadcast_mul(&scale)?
            .reshape((cin, taps * cout))?;
        Ok((matrix, ((&self.bias * &scale)? + shift)?))
    }

    /// `(B, h, w, Cin)` to `(B, out_h, out_w, Cout)`, `out_h <= 2h` (a crop of the upsampling).
    fn forward(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        let (matrix, bias) = self.folded.get(self.trainable(), || self.fold())?;
        let y = conv_transpose2d_nhwc(x, &matrix, Some(&bias), UPSAMPLE)?;
        if (y.dim(1)?, y.dim(2)?) == (out_h, out_w) {
            return Ok(y);
        }
        y.narrow(1, 0, out_h)?.narrow(2, 0, out_w)
    }
}

/// One level's `feedforward` `Sequential`: `0` a 1x1 convolution to `mult * dim` channels,
/// GELU, (dropout), `3` a 1x1 convolution to `ff_channel`, `4` the upsampling and `5` its
/// batch norm.
#[derive(Debug, Clone)]
struct LevelMlp {
    fc1: Pointwise,
    fc2: Pointwise,
    up: UpsampleBn,
}

impl LevelMlp {
    fn new(dims: LevelDims, vb: VarBuilder) -> Result<Self> {
        let cl = MixerLayout::ChannelsLast;
        Ok(Self {
            fc1: Pointwise::conv1x1(dims.input, dims.hidden, true, cl, vb.pp(0))?,
            fc2: Pointwise::conv1x1(dims.hidden, dims.ff, true, cl, vb.pp(3))?,
            up: UpsampleBn::new(dims.ff, dims.output, vb.pp(4), vb.pp(5))?,
        })
    }

    fn trainable(&self) -> bool {
        self.fc1.trainable() || self.fc2.trainable() || self.up.trainable()
    }

    fn forward(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        let hidden = self.fc1.forward_act(x, &Act::Gelu)?;
        self.up.forward(&self.fc2.forward(&hidden)?, out_h, out_w)
    }
}

/// Channel counts of one level's MLP.
#[derive(Debug, Clone, Copy)]
struct LevelDims {
    input: usize,
    hidden: usize,
    ff: usize,
    output: usize,
}

/// WaveMix's `Level{k}Waveblock` on channel-last `(B, H, W, C)`, `C` divisible by 4: the mixing
/// term `feedforward1(cat(dwt_1, feedforward2(cat(dwt_2, ... feedforward_k(dwt_k)))))` of the
/// reduced map `r = reduction(x)`, where `dwt_j` is the Haar transform of the approximation of
/// level `j - 1` (`dwt_1` that of `r`), each `C` channels. Checkpoint names `reduction` and
/// `feedforward` (level 1) or `feedforward1` ... `feedforward{k}`.
#[derive(Debug, Clone)]
pub struct WaveBlock {
    reduction: Pointwise,
    /// The level MLPs, finest (`feedforward1`) first.
    levels: Vec<LevelMlp>,
}

impl WaveBlock {
    /// Loads a block of `config.level` levels for `dim` channels.
    pub fn new(config: &WaveBlockConfig, dim: usize, vb: VarBuilder) -> Result<Self> {
        config.validate(dim)?;
        let hidden = config.mult * dim;
        let ff = config.ff_channel.unwrap_or(dim);
        let levels = (1..=config.level)
            .map(|j| {
                let dims = LevelDims {
                    input: if j == config.level { dim } else { dim + dim / 2 },
                    hidden,
                    ff,
                    output: if j == 1 { dim } else { dim / 2 },
                };
                let name = if config.level == 1 {
                    "feedforward".to_string()
                } else {
                    format!("feedforward{j}")
                };
                LevelMlp::new(dims, vb.pp(name))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            reduction: Pointwise::conv1x1(dim, dim / 4, true, MixerLayout::ChannelsLast, vb.pp("reduction"))?,
            levels,
        })
    }

    /// Whether any of its weights is a trainable variable.
    pub fn trainable(&self) -> bool {
        self.reduction.trainable() || self.levels.iter().any(LevelMlp::trainable)
    }
}

impl TokenMixer for WaveBlock {
    fn name(&self) -> &'static str {
        "wave_block"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::ChannelsLast
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = x.dims4()?;
        let reduced = self.reduction.forward(x)?;
        let quarter = reduced.dim(3)?;
        let mut bands = Vec::with_capacity(self.levels.len());
        let mut sizes = vec![(h, w)];
        let mut approx = reduced;
        for _ in &self.levels {
            let level = haar_dwt(&approx)?;
            sizes.push((level.dim(1)?, level.dim(2)?));
            approx = level.narrow(3, 0, quarter)?;
            bands.push(level);
        }
        let mut up: Option<Tensor> = None;
        for (j, mlp) in self.levels.iter().enumerate().rev() {
            let input = match up.take() {
                Some(coarser) => Tensor::cat(&[&bands[j], &coarser], 3)?,
                None => bands[j].clone(),
            };
            let (oh, ow) = sizes[j];
            up = Some(mlp.forward(&input, oh, ow)?);
        }
        up.ok_or_else(|| config_error("wave_block", "a block needs at least one level".into()))
    }
}

/// Config of the [`WaveBlock`]; JSON `{"type": "wave_block", "level": 3, "mult": 2,
/// "ff_channel": null, "dropout": 0.5}` (the reference's keyword names; `ff_channel` null means
/// the block's width, as every released WaveMix has it). `dropout` is the reference's rate after
/// the GELU, accepted and recorded but not applied (tokenmix's blocks have no dropout).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveBlockConfig {
    /// Depth of the Haar cascade, 1 to 4 (WaveMix-Lite: 1; WaveMix: 3).
    #[serde(default = "default_level")]
    pub level: usize,
    /// Hidden width of the level MLPs as a multiple of the block's width.
    #[serde(default = "default_mult")]
    pub mult: usize,
    /// Output width of the level MLPs before the upsampling; `None` is the block's width.
    #[serde(default)]
    pub ff_channel: Option<usize>,
    /// The reference's dropout rate in the level MLPs (not applied).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
}

fn default_level() -> usize {
    3
}

fn default_mult() -> usize {
    2
}

fn default_dropout() -> f64 {
    0.5
}

impl Default for WaveBlockConfig {
    fn default() -> Self {
        Self {
            level: default_level(),
            mult: default_mult(),
            ff_channel: None,
            dropout: default_dropout(),
        }
    }
}

impl MixerSpec for WaveBlockConfig {
    fn kind(&self) -> &'static str {
        "wave_block"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        let bad = |msg: String| Err(config_error("wave_block", msg));
        if !(1..=4).contains(&self.level) {
            return bad(format!("level must be 1, 2, 3 or 4, got {}", self.level));
        }
        if !dim.is_multiple_of(4) || dim == 0 {
            return bad(format!(
                "the block's width must be a positive multiple of 4 (its reduction keeps a quarter), got {dim}"
            ));
        }
        if !(1..=64).contains(&self.mult) {
            return bad(format!("mult must be in 1..=64, got {}", self.mult));
        }
        if let Some(ff) = self.ff_channel {
            if !(1..=65_536).contains(&ff) {
                return bad(format!("ff_channel must be in 1..=65536, got {ff}"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(WaveBlock::new(self, dim, vb)?))
    }

    /// The reduction, and per level its two 1x1 products and the transposed convolution (16
    /// taps per input pixel), at that level's resolution.
    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let c = dim as u64;
        let (hidden, ff) = (self.mult as u64 * c, self.ff_channel.map_or(c, |f| f as u64));
        let mut total = (h * w) as u64 * c * (c / 4);
        let (mut lh, mut lw) = (h, w);
        for j in 1..=self.level {
            (lh, lw) = (lh.div_ceil(2), lw.div_ceil(2));
            let input = if j == self.level { c } else { c + c / 2 };
            let output = if j == 1 { c } else { c / 2 };
            total += (lh * lw) as u64 * (input * hidden + hidden * ff + 16 * ff * output);
        }
        total
    }
}
