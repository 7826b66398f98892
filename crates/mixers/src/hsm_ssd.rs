//! EfficientViM's hidden-state mixer SSD (Lee, Choi and Kim, "EfficientViM: Efficient Vision
//! Mamba with Hidden State Mixer based State Space Duality", CVPR 2025, arXiv 2411.15241), with
//! the tensor names of mlvlab/EfficientViM (`classification/models/EfficientViM.py`, `HSMSSD`).
//!
//! A state-space dual without a scan: per position, `B`, `C` and `dt` (`state_dim` channels
//! each) come from a 1x1 projection and a depthwise 3x3; `A = softmax over positions (dt + a)`;
//! the state `h = (A ⊙ B) x` `(state_dim, C)` pools every position into each state slot; the
//! state is gated in its own space, `h = out(h ⊙ silu(z) + D h)` with `[h, z] = hz(h)`; and each
//! position reads it back, `y = C h`. Cost `O(L · state_dim · C)`.
//!
//! Runs channel-last `(B, H, W, C)`. The reference reshapes its maps as `H x H` (square inputs
//! only); here any `H x W` works, and on square maps the two agree.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use tokenmix_kernels::depthwise_conv2d_nhwc;

use crate::layers::Pointwise;
use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};

/// A `Conv1d` with kernel 1 and no bias on channel-last tokens (checkpoint `conv.weight`
/// `[out, in, 1]`).
fn conv1d_1x1(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Pointwise> {
    let weight = vb.pp("conv").get((out_dim, in_dim, 1), "weight")?;
    Pointwise::from_tensors(weight, None, MixerLayout::ChannelsLast)
}

/// EfficientViM's HSM-SSD mixer; see the module docs. Checkpoint names `BCdt_proj.conv`,
/// `dw.conv`, `hz_proj.conv`, `out_proj.conv`, `A` `[state_dim]` and `D` `[1]`.
#[derive(Debug, Clone)]
pub struct HsmSsd {
    bcdt_proj: Pointwise,
    dw: Tensor,
    hz_proj: Pointwise,
    out_proj: Pointwise,
    a: Tensor,
    d: Tensor,
    state_dim: usize,
    d_inner: usize,
}

impl HsmSsd {
    /// Loads the mixer for `dim` channels with `state_dim` state slots and a gated state of
    /// `d_inner` (`ssd_expand * dim`) channels.
    pub fn new(dim: usize, state_dim: usize, d_inner: usize, vb: VarBuilder) -> Result<Self> {
        let n3 = 3 * state_dim;
        Ok(Self {
            bcdt_proj: conv1d_1x1(dim, n3, vb.pp("BCdt_proj"))?,
            dw: vb.pp("dw").pp("conv").get((n3, 1, 3, 3), "weight")?,
            hz_proj: conv1d_1x1(dim, 2 * d_inner, vb.pp("hz_proj"))?,
            out_proj: conv1d_1x1(d_inner, dim, vb.pp("out_proj"))?,
            a: vb.get(state_dim, "A")?,
            d: vb.get(1, "D")?,
            state_dim,
            d_inner,
        })
    }

    /// The mixer's output `(B, H, W, C)` for channel-last `x`, and the gated hidden state
    /// `(B, state_dim, C)` (the reference's `h` `(B, C, state_dim)`, transposed), which
    /// EfficientViM's multi-stage heads read.
    pub fn forward_with_state(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, h, w, c) = x.dims4()?;
        let (n, l) = (self.state_dim, h * w);
        let bcdt = self.bcdt_proj.forward(x)?;
        let bcdt = depthwise_conv2d_nhwc(&bcdt, &self.dw, None, 1, 1)?.reshape((b, l, 3 * n))?;
        let part = |i: usize| bcdt.narrow(2, i * n, n);
        // (B, N, L): the softmax runs over the positions.
        let dt = part(2)?.broadcast_add(&self.a)?.transpose(1, 2)?.contiguous()?;
        // candle-nn's fused softmax passes no gradient; trainable mixers take the composed one.
        let weights = if self.a.is_variable() {
            crate::layers::in_f32(&dt, |dt| candle_nn::ops::softmax(dt, candle_core::D::Minus1))?
        } else {
            crate::layers::softmax_last_dim(&dt)?
        };
        let ab = (weights * part(0)?.transpose(1, 2)?)?;
        let state = ab.matmul(&x.reshape((b, l, c))?)?;
        let hz = self.hz_proj.forward(&state)?;
        let (hs, z) = (hz.narrow(2, 0, self.d_inner)?, hz.narrow(2, self.d_inner, self.d_inner)?);
        let gated = ((&hs * candle_nn::ops::silu(&z)?)? + hs.broadcast_mul(&self.d)?)?;
        let state = self.out_proj.forward(&gated)?;
        let y = part(1)?.contiguous()?.matmul(&state)?;
        Ok((y.reshape((b, h, w, c))?, state))
    }
}

impl TokenMixer for HsmSsd {
    fn name(&self) -> &'static str {
        "hsm_ssd"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::ChannelsLast
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_state(x)?.0)
    }
}

/// Config of the [`HsmSsd`] mixer; JSON `{"type": "hsm_ssd", "state_dim": 49, "ssd_expand":
/// 1.0}` (the reference's keyword names).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmSsdConfig {
    /// State slots (`N`).
    #[serde(default = "default_state_dim")]
    pub state_dim: usize,
    /// Channels of the gated state as a multiple of the block's.
    #[serde(default = "default_expand")]
    pub ssd_expand: f64,
}

fn default_state_dim() -> usize {
    64
}

fn default_expand() -> f64 {
    1.0
}

impl Default for HsmSsdConfig {
    fn default() -> Self {
        Self {
            state_dim: default_state_dim(),
            ssd_expand: default_expand(),
        }
    }
}

impl HsmSsdConfig {
    /// Channels of the gated state for a block of `dim` channels (`int(ssd_expand * dim)`).
    pub fn d_inner(&self, dim: usize) -> usize {
        (self.ssd_expand * dim as f64) as usize
    }
}

impl MixerSpec for HsmSsdConfig {
    fn kind(&self) -> &'static str {
        "hsm_ssd"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        if !(1..=4096).contains(&self.state_dim) {
            return Err(config_error(
                "hsm_ssd",
                format!("state_dim must be in 1..=4096, got {}", self.state_dim),
            ));
        }
        let inner = self.ssd_expand * dim as f64;
        if !(self.ssd_expand.is_finite() && (1.0..=65_536.0).contains(&inner)) {
            return Err(config_error(
                "hsm_ssd",
                format!(
                    "ssd_expand {} gives {inner} gated channels for {dim}; it must give 1..=65536",
                    self.ssd_expand
                ),
            ));
        }
        Ok(())
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(HsmSsd::new(
            dim,
            self.state_dim,
            self.d_inner(dim),
            vb,
        )?))
    }

    /// The projections, the depthwise 3x3 and the two state products.
    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let (l, c, n) = ((h * w) as u64, dim as u64, self.state_dim as u64);
        let inner = self.d_inner(dim) as u64;
        l * c * 3 * n + l * 9 * 3 * n + 2 * l * n * c + n * c * 2 * inner + n * inner * c
    }
}
