//! The Mamba block as a token mixer (Gu & Dao, arXiv 2312.00752), scanning the flattened token
//! sequence in both directions as Vision Mamba does (Zhu et al., arXiv 2401.09417, "bimamba v2").
//! Tensor names follow state-spaces/mamba (`in_proj`, `conv1d`, `x_proj`, `dt_proj`, `A_log`,
//! `D`, `out_proj`) and Vim for the backward direction (`conv1d_b`, `x_proj_b`, `dt_proj_b`,
//! `A_b_log`, `D_b`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use serde::{Deserialize, Serialize};

use crate::layers::softplus;
use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};

/// Hidden width and dt rank of a Mamba block on `dim` channels.
pub fn widths(dim: usize, expand: usize, dt_rank: Option<usize>) -> (usize, usize) {
    (expand * dim, dt_rank.unwrap_or(dim.div_ceil(16)))
}


/// The parameters of one scan direction.
#[derive(Debug, Clone)]
struct Direction {
    conv_weight: Tensor,
    conv_bias: Tensor,
    x_proj: Linear,
    dt_weight: Tensor,
    dt_bias: Tensor,
    a_log: Tensor,
    d: Tensor,
    dt_rank: usize,
    d_state: usize,
    /// Whether this direction reads the sequence from its end (Vim's backward branch).
    reverse: bool,
}

impl Direction {
    fn new(
        inner: usize,
        dt_rank: usize,
        d_state: usize,
        d_conv: usize,
        suffix: &str,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let conv = vb.pp(format!("conv1d{suffix}"));
        let dt = vb.pp(format!("dt_proj{suffix}"));
        let a_name = if suffix.is_empty() {
            "A_log".to_string()
        } else {
            format!("A{suffix}_log")
        };
        Ok(Self {
            conv_weight: conv.get((inner, 1, d_conv), "weight")?,
            conv_bias: conv.get(inner, "bias")?,
            x_proj: Linear::new(
                vb.pp(format!("x_proj{suffix}"))
                    .get((dt_rank + 2 * d_state, inner), "weight")?,
                None,
            ),
            dt_weight: dt.get((inner, dt_rank), "weight")?,
            dt_bias: dt.get(inner, "bias")?,
            a_log: vb.get((inner, d_state), &a_name)?,
            d: vb.get(inner, &format!("D{suffix}"))?,
            dt_rank,
            d_state,
            reverse: !suffix.is_empty(),
        })
    }

    /// Causal depthwise conv along `L` of `(B, D, L)` (left padding `k - 1`), plus bias; in
    /// reverse, causal in the reversed order (right padding, taps from the end): the conv of
    /// the flipped sequence, flipped back.
    fn causal_conv(&self, x: &Tensor) -> Result<Tensor> {
        let (_, inner, l) = x.dims3()?;
        let k = self.conv_weight.dim(2)?;
        let padded = if self.reverse {
            x.pad_with_zeros(2, 0, k - 1)?
        } else {
            x.pad_with_zeros(2, k - 1, 0)?
        };
        let mut y = self
            .conv_bias
            .reshape((inner, 1))?
            .broadcast_as(x.shape())?
            .contiguous()?;
        for j in 0..k {
            let w = self.conv_weight.narrow(2, j, 1)?.reshape((inner, 1))?;
            let tap = if self.reverse { k - 1 - j } else { j };
            y = (y + padded.narrow(2, tap, l)?.broadcast_mul(&w)?)?;
        }
        Ok(y)
    }

    /// The SSM branch on `(B, D, L)`: conv, SiLU, input-dependent `dt`, `B`, `C`, selective scan,
    /// `D` skip (all in reversed time for the backward direction, without flipping the
    /// sequence: every other step is per position).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, inner, _) = x.dims3()?;
        let x = self.causal_conv(x)?.silu()?;
        // candle 0.11.1's Linear gives wrong results on a transposed (non-contiguous) 3-D input
        // with batch > 1, so every projection here gets contiguous input.
        let x_dbl = self.x_proj.forward(&x.transpose(1, 2)?.contiguous()?)?;
        let (r, n) = (self.dt_rank, self.d_state);
        let dt = x_dbl.narrow(2, 0, r)?.contiguous()?;
        let b = x_dbl.narrow(2, r, n)?.transpose(1, 2)?;
        let c = x_dbl.narrow(2, r + n, n)?.transpose(1, 2)?;
        let delta = dt
            .broadcast_matmul(&self.dt_weight.t()?)?
            .broadcast_add(&self.dt_bias)?
            .transpose(1, 2)?;
        let delta = softplus(&delta.contiguous()?)?;
        let a = self.a_log.exp()?.neg()?;
        let y =
            tokenmix_kernels::selective_scan_with(&x.contiguous()?, &delta, &a, &b, &c, self.reverse)?;
        y + x.broadcast_mul(&self.d.reshape((inner, 1))?)?
    }
}

/// The Mamba block on `(B, N, C)`: `in_proj` to `[x, z]` (`2 * expand * C`), the SSM branch on
/// `x` (and, bidirectionally, on the reversed sequence with its own parameters, added back in
/// order and halved when `divide_out`), gated by `SiLU(z)`, then `out_proj`.
#[derive(Debug, Clone)]
pub struct Mamba {
    in_proj: Linear,
    forward_dir: Direction,
    backward_dir: Option<Direction>,
    out_proj: Linear,
    inner: usize,
    divide_out: bool,
}

impl Mamba {
    /// Loads a Mamba block for `dim` channels.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dim: usize,
        d_state: usize,
        d_conv: usize,
        expand: usize,
        dt_rank: Option<usize>,
        bidirectional: bool,
        divide_out: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (inner, rank) = widths(dim, expand, dt_rank);
        Ok(Self {
            in_proj: Linear::new(vb.pp("in_proj").get((2 * inner, dim), "weight")?, None),
            forward_dir: Direction::new(inner, rank, d_state, d_conv, "", &vb)?,
            backward_dir: bidirectional
                .then(|| Direction::new(inner, rank, d_state, d_conv, "_b", &vb))
                .transpose()?,
            out_proj: Linear::new(vb.pp("out_proj").get((dim, inner), "weight")?, None),
            inner,
            divide_out: bidirectional && divide_out,
        })
    }
}

impl TokenMixer for Mamba {
    fn name(&self) -> &'static str {
        "mamba"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Tokens
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // candle 0.11's Linear miscomputes strided 3-D inputs with batch > 1.
        let xz = self.in_proj.forward(&x.contiguous()?)?.transpose(1, 2)?;
        let xs = xz.narrow(1, 0, self.inner)?.contiguous()?;
        let z = xz.narrow(1, self.inner, self.inner)?;
        let mut y = self.forward_dir.forward(&xs)?;
        if let Some(back) = &self.backward_dir {
            y = (y + back.forward(&xs)?)?;
        }
        let mut y = (y * z.silu()?)?;
        if self.divide_out {
            y = (y * 0.5)?;
        }
        self.out_proj.forward(&y.transpose(1, 2)?.contiguous()?)
    }
}

/// Config of the [`Mamba`] mixer; JSON `{"type": "mamba", "d_state": 16, "d_conv": 4,
/// "expand": 2, "dt_rank": null, "bidirectional": true, "divide_out": true}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MambaConfig {
    /// State size `N` per channel.
    pub d_state: usize,
    /// Width of the causal depthwise conv.
    pub d_conv: usize,
    /// Hidden width as a multiple of the channels.
    pub expand: usize,
    /// Rank of the `dt` projection; `None` for `ceil(dim / 16)`.
    #[serde(default)]
    pub dt_rank: Option<usize>,
    /// Also scan the reversed sequence with its own parameters.
    pub bidirectional: bool,
    /// Halve the sum of the two directions (Vim's `if_devide_out`).
    pub divide_out: bool,
}

impl Default for MambaConfig {
    /// Vision Mamba's bidirectional block: state 16, conv 4, expansion 2.
    fn default() -> Self {
        Self {
            d_state: 16,
            d_conv: 4,
            expand: 2,
            dt_rank: None,
            bidirectional: true,
            divide_out: true,
        }
    }
}

impl MixerSpec for MambaConfig {
    fn kind(&self) -> &'static str {
        "mamba"
    }

    fn validate(&self, _dim: usize) -> Result<()> {
        let Self {
            d_state,
            d_conv,
            expand,
            dt_rank,
            ..
        } = *self;
        let bad = |n: usize, max: usize| n == 0 || n > max;
        if bad(d_state, 1024) || bad(d_conv, 64) || bad(expand, 64) || dt_rank == Some(0) {
            return Err(config_error(
                "mamba",
                format!(
                    "d_state ({d_state}, 1..=1024), d_conv ({d_conv}, 1..=64), expand \
                     ({expand}, 1..=64) and dt_rank ({dt_rank:?}) must be positive and in range"
                ),
            ));
        }
        Ok(())
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(Mamba::new(
            dim,
            self.d_state,
            self.d_conv,
            self.expand,
            self.dt_rank,
            self.bidirectional,
            self.divide_out,
            vb,
        )?))
    }

    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let (inner, rank) = widths(dim, self.expand, self.dt_rank);
        let (inner, rank, ns) = (inner as u64, rank as u64, self.d_state as u64);
        let per_dir = inner * (self.d_conv as u64 + rank + 2 * ns) + rank * inner + 3 * inner * ns;
        let dirs = if self.bidirectional { 2 } else { 1 };
        (h * w) as u64 * (dim as u64 * 2 * inner + dirs * per_dir + inner * dim as u64)
    }
}
