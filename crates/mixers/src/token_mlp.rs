//! MLP-Mixer's token-mixing MLP (timm `mlp_mixer.py` `MixerBlock.mlp_tokens`), with gMixer's
//! GLU variant.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::layers::{Act, ActKind, TokenLinear};
use crate::{check_num_tokens, check_token_count, config_error, MixerLayout, MixerSpec, TokenMixer};

/// MLP-Mixer's token MLP `fc2(act(fc1(x)))` along the token axis of `(B, N, C)` (`fc1: N ->
/// hidden`, `fc2: hidden -> N`, biases), independently for every channel; with `glu`, `fc1`'s
/// output is split in halves `(a, g)` and `a * act(g)` feeds `fc2: hidden / 2 -> N` (gMixer).
/// Checkpoint names `fc1`, `fc2`.
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
        check_token_count("token_mlp", x, self.num_tokens)?;
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

/// Config of the [`TokenMlp`] mixer; JSON `{"type": "token_mlp", "num_tokens": 196,
/// "hidden": 256, "act": "gelu", "glu": false}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenMlpConfig {
    /// Tokens `N` the MLP was built for (fitted to the stage grid by
    /// [`MixerSpec::for_grid`]).
    pub num_tokens: usize,
    /// Hidden units (halved by the GLU gate when `glu`).
    pub hidden: usize,
    /// Activation (GELU for MLP-Mixer, SiLU for gMixer).
    pub act: ActKind,
    /// GLU gating: `a * act(g)` on the two halves of the hidden units.
    pub glu: bool,
}

impl Default for TokenMlpConfig {
    /// Mixer-S/16's: 196 tokens, 256 hidden units, GELU.
    fn default() -> Self {
        Self {
            num_tokens: 196,
            hidden: 256,
            act: ActKind::Gelu,
            glu: false,
        }
    }
}

impl MixerSpec for TokenMlpConfig {
    fn kind(&self) -> &'static str {
        "token_mlp"
    }

    fn validate(&self, _dim: usize) -> Result<()> {
        let h = self.hidden;
        if h == 0 || h > 1 << 20 || (self.glu && h % 2 == 1) {
            return Err(config_error(
                "token_mlp",
                format!("hidden must be in 1..=1048576 (and even with glu), got {h}"),
            ));
        }
        check_num_tokens("token_mlp", self.num_tokens)
    }

    fn build(&self, _dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(TokenMlp::new(
            self.num_tokens,
            self.hidden,
            self.act,
            self.glu,
            vb,
        )?))
    }

    fn macs(&self, dim: usize, _h: usize, _w: usize) -> u64 {
        let (t, h) = (self.num_tokens as u64, self.hidden as u64);
        let h_out = if self.glu { h / 2 } else { h };
        dim as u64 * (t * h + h_out * t)
    }

    fn for_grid(&self, h: usize, w: usize) -> Option<Self> {
        Some(Self {
            num_tokens: h * w,
            ..*self
        })
    }
}
