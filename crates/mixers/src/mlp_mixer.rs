//! Token-mixing MLPs of MLP-Mixer, gMixer, ResMLP and gMLP (timm `mlp_mixer.py`).
//!
//! All work on token sequences `(B, N, C)` with a fixed token count `N`, mixing along `N`
//! independently for every channel: `y[b, :, c] = f(x[b, :, c])`. They are written as products
//! `W @ x` with `W` of shape `[out, N]`, so no transposes are needed.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{Act, ActKind, NormConfig, NormKind};
use crate::{MixerError, MixerLayout, TokenMixer};
use candle_core::Module;

/// `W @ x + b[:, None]` for `x` `(B, N, C)`, `W` `[out, N]`, `b` `[out]`.
#[derive(Debug, Clone)]
struct TokenLinear {
    weight: Tensor,
    bias: Tensor,
}

impl TokenLinear {
    fn new(n_in: usize, n_out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get((n_out, n_in), "weight")?,
            bias: vb.get(n_out, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n_out = self.bias.dim(0)?;
        self.weight
            .broadcast_matmul(x)?
            .broadcast_add(&self.bias.reshape((n_out, 1))?)
    }
}

fn check_tokens(mixer: &'static str, x: &Tensor, expected: usize) -> Result<()> {
    let n = x.dim(1)?;
    if n != expected {
        return Err(MixerError::TokenCount {
            mixer,
            expected,
            height: 1,
            width: n,
        }
        .into());
    }
    Ok(())
}

/// MLP-Mixer's token MLP `fc2(act(fc1(x)))` along the token axis (`fc1: N -> hidden`,
/// `fc2: hidden -> N`, biases); with `glu`, `fc1`'s output is split in halves `(a, g)` and
/// `a * act(g)` feeds `fc2: hidden / 2 -> N` (gMixer). Checkpoint names `fc1`, `fc2`.
#[derive(Debug, Clone)]
pub struct TokenMlp {
    fc1: TokenLinear,
    act: Act,
    fc2: TokenLinear,
    glu: bool,
    num_tokens: usize,
}

impl TokenMlp {
    /// Loads `fc1` and `fc2` for `num_tokens` tokens and `hidden` hidden units.
    pub fn new(
        num_tokens: usize,
        hidden: usize,
        act: ActKind,
        glu: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let out_hidden = if glu { hidden / 2 } else { hidden };
        Ok(Self {
            fc1: TokenLinear::new(num_tokens, hidden, vb.pp("fc1"))?,
            act: Act::new(act, vb.pp("act"))?,
            fc2: TokenLinear::new(out_hidden, num_tokens, vb.pp("fc2"))?,
            glu,
            num_tokens,
        })
    }
}

impl TokenMixer for TokenMlp {
    fn name(&self) -> &'static str {
        "token_mlp"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Tokens
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_tokens("token_mlp", x, self.num_tokens)?;
        let h = self.fc1.forward(x)?;
        let h = if self.glu {
            let half = h.dim(1)? / 2;
            (h.narrow(1, 0, half)? * self.act.forward(&h.narrow(1, half, half)?)?)?
        } else {
            self.act.forward(&h)?
        };
        self.fc2.forward(&h)
    }
}

/// ResMLP's token mixing: one `Linear(N, N)` with bias along the token axis
/// (checkpoint `weight [N, N]`, `bias [N]`).
#[derive(Debug, Clone)]
pub struct LinearTokens {
    linear: TokenLinear,
    num_tokens: usize,
}

impl LinearTokens {
    /// Loads `weight` and `bias` for `num_tokens` tokens.
    pub fn new(num_tokens: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear: TokenLinear::new(num_tokens, num_tokens, vb)?,
            num_tokens,
        })
    }
}

impl TokenMixer for LinearTokens {
    fn name(&self) -> &'static str {
        "linear_tokens"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Tokens
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_tokens("linear_tokens", x, self.num_tokens)?;
        self.linear.forward(x)
    }
}

/// The token-mixing half of gMLP's spatial gating unit: `proj(norm(v))` with `norm` a
/// LayerNorm over channels (eps 1e-5, with bias) and `proj` a `Linear(N, N)` along the token
/// axis. The gating `u * proj(norm(v))` is done by the caller. Checkpoint names `norm`, `proj`.
#[derive(Debug, Clone)]
pub struct SpatialGating {
    norm: crate::layers::Norm,
    proj: TokenLinear,
    num_tokens: usize,
}

/// The norm of gMLP's spatial gating unit (PyTorch's default `nn.LayerNorm`).
const SGU_NORM: NormConfig = NormConfig {
    kind: NormKind::LayerNorm,
    eps: 1e-5,
    bias: true,
};

impl SpatialGating {
    /// Loads `norm` and `proj` for `dim` channels and `num_tokens` tokens.
    pub fn new(dim: usize, num_tokens: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: SGU_NORM.build(dim, MixerLayout::Tokens, vb.pp("norm"))?,
            proj: TokenLinear::new(num_tokens, num_tokens, vb.pp("proj"))?,
            num_tokens,
        })
    }
}

impl TokenMixer for SpatialGating {
    fn name(&self) -> &'static str {
        "spatial_gating"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Tokens
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_tokens("spatial_gating", x, self.num_tokens)?;
        self.proj.forward(&self.norm.forward(x)?)
    }
}
