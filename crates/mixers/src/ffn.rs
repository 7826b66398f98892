//! MetaMixer's FFNified token mixer (Yun, Lee, Ro, "Metamixer Is All You Need", arXiv
//! 2406.02021), with the tensor names of ysj9909/FFNet (`models/ffnet.py`, `Token_Mixer`,
//! `RepVGGDW`, `Conv2d_BN`).
//!
//! Attention re-read as a feed-forward network: a 1x1 projection (the query), a large depthwise
//! convolution (the keys), GELU in place of the softmax and a second depthwise convolution (the
//! values): `conv2(GELU(conv1(BN(1x1(x)))))`. A 7x7 depthwise convolution is trained as a
//! RepVGG pair (7x7 and 3x3, each with a batch norm); checkpoints hold that training form, and
//! it is folded at load into one 7x7 convolution with a bias (exact: the norms use their running
//! statistics, and a 3x3 centred in a 7x7 is the same convolution). While training, the fold is
//! recomputed from the trainable branches on every pass, so they all receive gradients.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use tokenmix_kernels::{depthwise_conv2d_nhwc, Window};

use crate::layers::{BatchNorm, ConvBnNhwc, ConvKind, Derived};
use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};

/// One `Conv2d_BN` branch of a RepVGG pair: a depthwise weight `c.weight` `(out, 1, k, k)` (no
/// bias) and its norm `bn`.
#[derive(Debug, Clone)]
struct Branch {
    weight: Tensor,
    bn: BatchNorm,
}

impl Branch {
    fn new(out: usize, k: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.pp("c").get((out, 1, k, k), "weight")?,
            bn: BatchNorm::new(out, vb.pp("bn"))?,
        })
    }

    fn trainable(&self) -> bool {
        self.weight.is_variable() || self.bn.trainable()
    }

    /// The weight with the norm's scale folded in, and the norm's shift.
    fn fold(&self) -> Result<(Tensor, Tensor)> {
        let (scale, shift) = self.bn.scale_shift()?;
        let c = scale.dim(0)?;
        Ok((self.weight.broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?, shift))
    }
}

/// The reference's `RepVGGDW` on channel-last maps: `BN(dw7x7(x)) + BN(dw3x3(x))` with stride
/// `stride` and a channel multiplier `out / in` (output channel `o` reads input `o / mult`),
/// folded into one 7x7 depthwise convolution with a bias. Names `conv.{c,bn}` (7x7) and
/// `conv1.{c,bn}` (3x3).
#[derive(Debug, Clone)]
pub struct RepVggDw {
    large: Branch,
    small: Branch,
    stride: usize,
    mult: usize,
    folded: Derived<(Tensor, Tensor)>,
}

impl RepVggDw {
    /// Loads the pair mapping `in_dim` to `out_dim` (a multiple of it) channels.
    pub fn new(in_dim: usize, out_dim: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        if in_dim == 0 || !out_dim.is_multiple_of(in_dim) {
            return Err(config_error(
                "ffn_token_mixer",
                format!("a RepVGG depthwise pair needs out channels ({out_dim}) a multiple of its in channels ({in_dim})"),
            ));
        }
        Ok(Self {
            large: Branch::new(out_dim, 7, vb.pp("conv"))?,
            small: Branch::new(out_dim, 3, vb.pp("conv1"))?,
            stride,
            mult: out_dim / in_dim,
            folded: Derived::default(),
        })
    }

    /// Whether any branch tensor is a trainable variable.
    pub fn trainable(&self) -> bool {
        self.large.trainable() || self.small.trainable()
    }

    fn fold(&self) -> Result<(Tensor, Tensor)> {
        let (w7, b7) = self.large.fold()?;
        let (w3, b3) = self.small.fold()?;
        let w3 = w3.pad_with_zeros(2, 2, 2)?.pad_with_zeros(3, 2, 2)?;
        Ok(((w7 + w3)?, (b7 + b3)?))
    }
}

impl Module for RepVggDw {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = self.folded.get(self.trainable(), || self.fold())?;
        let x = if self.mult > 1 {
            let (n, h, wd, c) = x.dims4()?;
            x.unsqueeze(4)?
                .broadcast_as((n, h, wd, c, self.mult))?
                .reshape((n, h, wd, c * self.mult))?
        } else {
            x.clone()
        };
        depthwise_conv2d_nhwc(&x, &w, Some(&b), self.stride, 3)
    }
}

/// A depthwise `k x k` convolution of FFNet's blocks, in the form the reference picks by its
/// kernel size: a [`RepVggDw`] pair for 7, otherwise a plain convolution with a bias (the token
/// mixer) or a `Conv2d_BN` (the channel mixer).
#[derive(Debug, Clone)]
pub enum DwConv {
    /// The folded 7x7 + 3x3 pair.
    Rep(RepVggDw),
    /// `weight` `(C, 1, k, k)` and `bias`.
    Plain {
        /// The depthwise weight.
        weight: Tensor,
        /// Its bias.
        bias: Tensor,
        /// Zero padding, `k / 2`.
        padding: usize,
    },
    /// A depthwise convolution and its batch norm, folded.
    ConvBn(ConvBnNhwc),
}

impl DwConv {
    /// The token mixer's convolution of `dim` channels and kernel `k` (`conv1` / `conv2`).
    pub fn token(dim: usize, k: usize, vb: VarBuilder) -> Result<Self> {
        if k == 7 {
            return Ok(Self::Rep(RepVggDw::new(dim, dim, 1, vb)?));
        }
        Ok(Self::Plain {
            weight: vb.get((dim, 1, k, k), "weight")?,
            bias: vb.get(dim, "bias")?,
            padding: k / 2,
        })
    }

    /// The channel mixer's convolution of `dim` channels and kernel `k` (`conv`).
    pub fn channel(dim: usize, k: usize, vb: VarBuilder) -> Result<Self> {
        if k == 7 {
            return Ok(Self::Rep(RepVggDw::new(dim, dim, 1, vb)?));
        }
        let window = Window {
            kernel: k,
            stride: 1,
            padding: k / 2,
        };
        Ok(Self::ConvBn(ConvBnNhwc::new(
            dim,
            dim,
            window,
            ConvKind::Depthwise,
            false,
            vb.pp("c"),
            vb.pp("bn"),
        )?))
    }

    /// Whether any of its tensors is a trainable variable.
    pub fn trainable(&self) -> bool {
        match self {
            Self::Rep(r) => r.trainable(),
            Self::Plain { weight, bias, .. } => weight.is_variable() || bias.is_variable(),
            Self::ConvBn(c) => c.trainable(),
        }
    }
}

impl Module for DwConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Rep(r) => r.forward(x),
            Self::Plain {
                weight,
                bias,
                padding,
            } => depthwise_conv2d_nhwc(x, weight, Some(bias), 1, *padding),
            Self::ConvBn(c) => c.forward(x),
        }
    }
}

/// The FFNified token mixer on channel-last `(B, H, W, C)`: `conv2(GELU(conv1(fc(x))))`, `fc`
/// a 1x1 convolution with batch norm. Checkpoint names `fc.{c,bn}`, `conv1`, `conv2`.
#[derive(Debug, Clone)]
pub struct FfnTokenMixer {
    /// The 1x1 `Conv2d_BN`, its norm folded in.
    fc: ConvBnNhwc,
    conv1: DwConv,
    conv2: DwConv,
}

impl FfnTokenMixer {
    /// Loads the mixer of `config` for `dim` channels.
    pub fn new(config: &FfnTokenMixerConfig, dim: usize, vb: VarBuilder) -> Result<Self> {
        config.validate(dim)?;
        Ok(Self {
            fc: ConvBnNhwc::new(
                dim,
                dim,
                Window {
                    kernel: 1,
                    stride: 1,
                    padding: 0,
                },
                ConvKind::Dense,
                false,
                vb.pp("fc").pp("c"),
                vb.pp("fc").pp("bn"),
            )?,
            conv1: DwConv::token(dim, config.kernel_size1, vb.pp("conv1"))?,
            conv2: DwConv::token(dim, config.kernel_size2, vb.pp("conv2"))?,
        })
    }

    /// Whether any of its tensors is a trainable variable.
    pub fn trainable(&self) -> bool {
        self.fc.trainable() || self.conv1.trainable() || self.conv2.trainable()
    }
}

impl TokenMixer for FfnTokenMixer {
    fn name(&self) -> &'static str {
        "ffn_token_mixer"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::ChannelsLast
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let keys = self.conv1.forward(&self.fc.forward(x)?)?;
        self.conv2.forward(&tokenmix_kernels::gelu(&keys)?)
    }
}

/// Config of the [`FfnTokenMixer`]; JSON `{"type": "ffn_token_mixer", "kernel_size1": 7,
/// "kernel_size2": 7}` (the reference's per-stage `kernel_sizes1` / `kernel_sizes2`; 7 means
/// a RepVGG 7x7 + 3x3 pair, any other odd size a plain depthwise convolution with bias).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FfnTokenMixerConfig {
    /// Kernel of the first depthwise convolution (the keys).
    pub kernel_size1: usize,
    /// Kernel of the second depthwise convolution (the values).
    pub kernel_size2: usize,
}

impl Default for FfnTokenMixerConfig {
    /// FFNet's stages 3-4: two RepVGG 7x7 pairs.
    fn default() -> Self {
        Self {
            kernel_size1: 7,
            kernel_size2: 7,
        }
    }
}

impl MixerSpec for FfnTokenMixerConfig {
    fn kind(&self) -> &'static str {
        "ffn_token_mixer"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        for k in [self.kernel_size1, self.kernel_size2] {
            if k % 2 == 0 || !(1..=31).contains(&k) {
                return Err(config_error(
                    "ffn_token_mixer",
                    format!("kernel sizes must be odd and in 1..=31, got {k}"),
                ));
            }
        }
        if dim == 0 {
            return Err(config_error("ffn_token_mixer", "dim must be positive".into()));
        }
        Ok(())
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(FfnTokenMixer::new(self, dim, vb)?))
    }

    /// The 1x1 product and the two (folded) depthwise convolutions.
    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let (n, c) = ((h * w) as u64, dim as u64);
        let k2 = |k: usize| (k * k) as u64;
        n * (c * c + c * (k2(self.kernel_size1) + k2(self.kernel_size2)))
    }
}
