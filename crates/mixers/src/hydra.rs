//! Hydra, the bidirectional quasiseparable matrix mixer (Hwang, Lahoti, Dao, Gu, arXiv
//! 2407.09941; goombalab/hydra `hydra/modules/hydra.py`, `Hydra`).
//!
//! Two Mamba-2 scans with one scalar decay per head, one causal and one anti-causal, each
//! shifted by one position so neither sees its own token, summed, plus a data-dependent
//! diagonal: together an `L x L` quasiseparable mixing matrix. The scans are
//! [`tokenmix_kernels::ssd_scan`] (one fused pass per direction, or the quadratic dual form for
//! short sequences).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::layers::{softplus, Pointwise};
use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};


/// Hydra on tokens `(B, L, C)`: `in_proj` (`C -> [z | x B_f C_f B_b C_b | dt_f dt_b]`), a
/// non-causal depthwise convolution (`d_conv`, "same" padding) and SiLU on `x B C`,
/// `dt = softplus(dt + dt_bias)`, `A = -exp(A_log)`; per head, a causal scan of `(x dt, dt A, B_f,
/// C_f)` and an anti-causal one of `(x dt, dt A, B_b, C_b)`, shifted one position later and
/// earlier and summed, plus `x * (fc_D(x) + D)`; then the gated RMSNorm
/// `rmsnorm(y) * norm.weight * silu(z)` (eps 1e-5) and `out_proj`. Checkpoint names as the
/// reference's: `in_proj`, `conv1d`, `dt_bias`, `A_log`, `D`, `fc_D`, `norm`, `out_proj`.
#[derive(Debug, Clone)]
pub struct Hydra {
    in_proj: Pointwise,
    /// `[conv_dim, 1, d_conv]`.
    conv_weight: Tensor,
    conv_bias: Option<Tensor>,
    dt_bias: Tensor,
    a_log: Tensor,
    d: Tensor,
    fc_d: Pointwise,
    norm_weight: Tensor,
    out_proj: Pointwise,
    d_inner: usize,
    d_state: usize,
    ngroups: usize,
    nheads: usize,
    headdim: usize,
}

impl Hydra {
    /// Loads the mixer for `dim` channels.
    pub fn new(cfg: &HydraConfig, dim: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate(dim)?;
        let d_inner = cfg.expand * dim;
        let headdim = cfg.headdim(dim);
        let nheads = d_inner / headdim;
        let bc = 2 * 2 * cfg.ngroups * cfg.d_state;
        let conv_dim = d_inner + bc;
        let layout = MixerLayout::Tokens;
        let conv = vb.pp("conv1d");
        Ok(Self {
            in_proj: Pointwise::from_linear(
                dim,
                2 * d_inner + bc + 2 * nheads,
                cfg.bias,
                layout,
                vb.pp("in_proj"),
            )?,
            conv_weight: conv.get((conv_dim, 1, cfg.d_conv), "weight")?,
            conv_bias: cfg.conv_bias.then(|| conv.get(conv_dim, "bias")).transpose()?,
            dt_bias: vb.get(nheads, "dt_bias")?,
            a_log: vb.get(nheads, "A_log")?,
            d: vb.get(nheads, "D")?,
            fc_d: Pointwise::from_linear(d_inner, nheads, false, layout, vb.pp("fc_D"))?,
            norm_weight: vb.pp("norm").get(d_inner, "weight")?,
            out_proj: Pointwise::from_linear(d_inner, dim, cfg.bias, layout, vb.pp("out_proj"))?,
            d_inner,
            d_state: cfg.d_state,
            ngroups: cfg.ngroups,
            nheads,
            headdim,
        })
    }

    /// The depthwise convolution along `L` of `(B, L, C)` with "same" zero padding, plus bias.
    fn conv(&self, x: &Tensor) -> Result<Tensor> {
        let (_, l, c) = x.dims3()?;
        let k = self.conv_weight.dim(2)?;
        let padded = x.pad_with_zeros(1, k / 2, k / 2)?;
        let taps = self.conv_weight.reshape((c, k))?.t()?.contiguous()?;
        let mut y = match &self.conv_bias {
            Some(b) => x.zeros_like()?.broadcast_add(b)?,
            None => x.zeros_like()?,
        };
        for j in 0..k {
            y = (y + padded.narrow(1, j, l)?.broadcast_mul(&taps.get(j)?)?)?;
        }
        Ok(y)
    }

    /// `(B, L, G * N)` to `(B, L, G, N)`.
    fn groups(&self, t: &Tensor) -> Result<Tensor> {
        let (b, l, _) = t.dims3()?;
        t.reshape((b, l, self.ngroups, self.d_state))?.contiguous()
    }
}

/// `y` `(B, L, ...)` moved one position later along `L` (zeros first) or, with `earlier`, one
/// position earlier (zeros last).
fn shift(y: &Tensor, earlier: bool) -> Result<Tensor> {
    let l = y.dim(1)?;
    if l <= 1 {
        return y.zeros_like();
    }
    if earlier {
        y.narrow(1, 1, l - 1)?.pad_with_zeros(1, 0, 1)
    } else {
        y.narrow(1, 0, l - 1)?.pad_with_zeros(1, 1, 0)
    }
}

impl TokenMixer for Hydra {
    fn name(&self) -> &'static str {
        "hydra"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Tokens
    }

    fn forward(&self, u: &Tensor) -> Result<Tensor> {
        let (b, l, _) = u.dims3()?;
        let (inner, h, p) = (self.d_inner, self.nheads, self.headdim);
        let gn = self.ngroups * self.d_state;
        let zxbcdt = self.in_proj.forward(u)?;
        let z = zxbcdt.narrow(2, 0, inner)?;
        let xbc = zxbcdt.narrow(2, inner, inner + 4 * gn)?;
        let dt = zxbcdt.narrow(2, 2 * inner + 4 * gn, 2 * h)?;
        let dt = |i: usize| softplus(&dt.narrow(2, i * h, h)?.broadcast_add(&self.dt_bias)?);
        let (dt_f, dt_b) = (dt(0)?, dt(1)?);
        let a = self.a_log.exp()?.neg()?;
        let xbc = self.conv(&xbc)?.silu()?;
        let x = xbc.narrow(2, 0, inner)?;
        let part = |i: usize| self.groups(&xbc.narrow(2, inner + i * gn, gn)?);
        let (b_f, c_f, b_b, c_b) = (part(0)?, part(1)?, part(2)?, part(3)?);
        let heads = x.reshape((b, l, h, p))?;
        let scan = |dt: &Tensor, bm: &Tensor, cm: &Tensor, reverse: bool| {
            let xdt = heads.broadcast_mul(&dt.unsqueeze(3)?)?;
            let decay = dt.broadcast_mul(&a)?;
            tokenmix_kernels::ssd_scan(&xdt, &decay, bm, cm, reverse)
        };
        let y_f = shift(&scan(&dt_f, &b_f, &c_f, false)?, false)?;
        let y_b = shift(&scan(&dt_b, &b_b, &c_b, true)?, true)?;
        let diag = self.fc_d.forward(&x)?.broadcast_add(&self.d)?;
        let y = ((y_f + y_b)? + heads.broadcast_mul(&diag.unsqueeze(3)?)?)?
            .reshape((b, l, inner))?;
        let rstd = crate::layers::in_f32(&y, |y| {
            (y.sqr()?.mean_keepdim(D::Minus1)? + 1e-5)?.sqrt()?.recip()
        })?;
        let y = y
            .broadcast_mul(&rstd)?
            .broadcast_mul(&self.norm_weight)?
            .mul(&z.silu()?)?;
        self.out_proj.forward(&y)
    }
}

/// Config of the [`Hydra`] mixer, named as the reference's `Hydra` arguments; JSON
/// `{"type": "hydra", "d_state": 64, "d_conv": 7, "expand": 2, "headdim": 64, "ngroups": 1,
/// "bias": false, "conv_bias": true}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HydraConfig {
    /// State size `N` per head and group.
    pub d_state: usize,
    /// Width of the depthwise convolution (odd: the reference pads it by `d_conv / 2` each side).
    pub d_conv: usize,
    /// Inner width as a multiple of the channels.
    pub expand: usize,
    /// Channels per head; an inner width smaller than it (which the reference refuses) is one
    /// head.
    pub headdim: usize,
    /// Groups of heads sharing `B` and `C`.
    pub ngroups: usize,
    /// Whether `in_proj` and `out_proj` have biases.
    #[serde(default)]
    pub bias: bool,
    /// Whether the convolution has a bias.
    #[serde(default = "yes")]
    pub conv_bias: bool,
}

fn yes() -> bool {
    true
}

impl Default for HydraConfig {
    /// The reference's defaults.
    fn default() -> Self {
        Self {
            d_state: 64,
            d_conv: 7,
            expand: 2,
            headdim: 64,
            ngroups: 1,
            bias: false,
            conv_bias: true,
        }
    }
}

impl HydraConfig {
    /// Channels per head for `dim` channels: `headdim`, or the whole inner width where that is
    /// smaller.
    fn headdim(&self, dim: usize) -> usize {
        self.headdim.min(self.expand * dim)
    }
}

impl MixerSpec for HydraConfig {
    fn kind(&self) -> &'static str {
        "hydra"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        let fail = |msg: String| Err(config_error("hydra", msg));
        let in_range = |v: usize, max: usize| (1..=max).contains(&v);
        if !in_range(self.d_state, 4096) || !in_range(self.expand, 16) || !in_range(dim, 65_536) {
            return fail(format!(
                "d_state must be in 1..=4096, expand in 1..=16 and dim in 1..=65536, got {}, {} \
                 and {dim}",
                self.d_state, self.expand
            ));
        }
        if !in_range(self.d_conv, 63) || self.d_conv.is_multiple_of(2) {
            return fail(format!("d_conv must be odd and at most 63, got {}", self.d_conv));
        }
        let inner = self.expand * dim;
        let p = self.headdim(dim);
        if p == 0 || !inner.is_multiple_of(p) {
            return fail(format!(
                "headdim {p} must divide the inner width expand * dim = {inner}"
            ));
        }
        let heads = inner / p;
        if self.ngroups == 0 || !heads.is_multiple_of(self.ngroups) {
            return fail(format!(
                "ngroups {} must divide the {heads} heads",
                self.ngroups
            ));
        }
        Ok(())
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(Hydra::new(self, dim, vb)?))
    }

    /// Projections, convolution, the two scans in their recurrent form (`2 L H P N` each: the
    /// state update and the read-out), the diagonal and its projection.
    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let (l, c) = ((h * w) as u64, dim as u64);
        let inner = (self.expand * dim) as u64;
        let gn = (self.ngroups * self.d_state) as u64;
        let heads = inner / self.headdim(dim).max(1) as u64;
        let proj = l * c * (2 * inner + 4 * gn + 2 * heads) + l * inner * c;
        let conv = l * (inner + 4 * gn) * self.d_conv as u64;
        let scans = 2 * 2 * l * inner * self.d_state as u64;
        proj + conv + scans + l * inner * heads + l * inner
    }
}
