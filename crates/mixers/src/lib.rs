//! Token mixers for tokenmix.
//!
//! A token mixer is the part of a MetaFormer block that lets tokens exchange information. Every
//! mixer implements [`TokenMixer`]: it maps a tensor to one of the same shape, in the layout it
//! declares through [`TokenMixer::layout`]:
//!
//! * [`MixerLayout::Spatial`]: a channel-first feature map `(B, C, H, W)`;
//! * [`MixerLayout::Tokens`]: a token sequence `(B, N, C)` (a 2-D map is flattened row-major,
//!   `n = h * W + w`), which is also how 1-D sequence models feed a mixer;
//! * [`MixerLayout::ChannelsLast`]: a channel-last feature map `(B, H, W, C)` (pooling,
//!   separable and gated convolutions, global filters);
//! * [`MixerLayout::Any`]: any of these (element-wise or identity mixers).
//!
//! Mixers are chosen at run time through the serde-friendly [`MixerConfig`], whose
//! [`MixerConfig::build`] returns a `Box<dyn TokenMixer>` loaded from a [`VarBuilder`] whose
//! paths mirror timm's checkpoint names (`token_mixer.qkv.weight`, ...).
//!
//! # Families in this crate
//! * [`Identity`] (IdentityFormer), [`Pooling`] (PoolFormer), [`RandomMixing`] (RandFormer),
//!   [`SepConv`] (ConvFormer), [`Attention`] (CAFormer), [`GatedConv`] (MambaOut),
//!   [`TokenMlp`] (MLP-Mixer, gMixer), [`LinearTokens`] (ResMLP), [`SpatialGating`] (gMLP),
//!   [`GlobalFilter`] (GFNet), [`MixShift`] (MS-MLP), [`Mamba`] (bidirectional selective SSM),
//!   [`RaftTokenMixing`] (RaftMLP), [`AdaptiveFrequencyFilter`] (AFFNet).
//! * [`layers`]: the building blocks the backbones share (norms, activations, scales, MLPs).
#![deny(missing_docs)]

pub mod aff;
pub mod attention;
mod error;
pub mod gated_conv;
pub mod global_filter;
pub mod identity;
pub mod layers;
pub mod mlp_mixer;
pub mod pooling;
pub mod raft;
pub mod random_mixing;
pub mod sepconv;
pub mod shift;
pub mod ssm;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

pub use aff::AdaptiveFrequencyFilter;
pub use attention::Attention;
pub use error::MixerError;
pub use gated_conv::GatedConv;
pub use global_filter::GlobalFilter;
pub use identity::Identity;
pub use mlp_mixer::{LinearTokens, SpatialGating, TokenMlp};
pub use pooling::Pooling;
pub use raft::RaftTokenMixing;
pub use random_mixing::RandomMixing;
pub use sepconv::SepConv;
pub use shift::MixShift;
pub use ssm::Mamba;

/// The tensor layout a token mixer consumes and produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MixerLayout {
    /// Channel-first feature map `(B, C, H, W)`.
    Spatial,
    /// Token sequence `(B, N, C)`.
    Tokens,
    /// Channel-last feature map `(B, H, W, C)`.
    ChannelsLast,
    /// Works on either layout, e.g. the identity.
    Any,
}

/// A token mixer: maps a tensor of one shape to a tensor of the same shape, mixing information
/// across tokens (spatial positions). Object-safe, so a stage can hold mixers chosen at run time.
pub trait TokenMixer: Send + Sync + std::fmt::Debug {
    /// Short name of the mixer family (`"pooling"`, `"attention"`, ...).
    fn name(&self) -> &'static str;
    /// The layout [`TokenMixer::forward`] expects and returns.
    fn layout(&self) -> MixerLayout;
    /// Mixes `x` (laid out as [`TokenMixer::layout`] says) into a tensor of the same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

/// Serializable description of a token mixer: which family and its hyper-parameters.
///
/// The channel count is not part of the config; it is given to [`MixerConfig::build`] by the
/// stage that owns the mixer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MixerConfig {
    /// No mixing at all (IdentityFormer).
    Identity,
    /// `avg_pool(k, stride 1, padding k/2, padding excluded from the average) - x` (PoolFormer).
    Pooling {
        /// Pooling window, odd.
        pool_size: usize,
    },
    /// Multiplication of the `N` tokens by a frozen `N x N` matrix stored in the checkpoint
    /// (RandFormer).
    RandomMixing {
        /// Number of tokens `N = H * W` the matrix was drawn for.
        num_tokens: usize,
    },
    /// Inverted separable convolution: 1x1 expand, StarReLU, depthwise k x k, 1x1 project.
    SepConv {
        /// Hidden channels are `expansion_ratio * dim`.
        expansion_ratio: f64,
        /// Depthwise kernel size, odd.
        kernel_size: usize,
        /// Whether the three convolutions have biases.
        bias: bool,
    },
    /// MambaOut's gated CNN: `fc2(GELU(g) * [i, dwconv(c)])` with `[g, i, c] = fc1(x)` on a
    /// channel-last map; the depthwise conv sees `conv_ratio * dim` channels.
    GatedConv {
        /// Hidden channels are `int(expansion_ratio * dim)`.
        expansion_ratio: f64,
        /// Depthwise kernel size, odd.
        kernel_size: usize,
        /// Fraction of the channels that go through the depthwise conv.
        conv_ratio: f64,
    },
    /// MLP-Mixer's token MLP along the token axis (gMixer's with `glu`).
    TokenMlp {
        /// Tokens `N` the MLP was built for.
        num_tokens: usize,
        /// Hidden units (halved by the GLU gate when `glu`).
        hidden: usize,
        /// Activation (GELU for MLP-Mixer, SiLU for gMixer).
        act: layers::ActKind,
        /// GLU gating: `a * act(g)` on the two halves of the hidden units.
        glu: bool,
    },
    /// ResMLP's `Linear(N, N)` along the token axis.
    LinearTokens {
        /// Tokens `N`.
        num_tokens: usize,
    },
    /// gMLP's spatial gating projection `proj(norm(v))` along the token axis.
    SpatialGating {
        /// Tokens `N`.
        num_tokens: usize,
    },
    /// GFNet's learned global filter in the 2-D Fourier domain, on a channel-last map.
    GlobalFilter {
        /// Grid height the filter was built for.
        height: usize,
        /// Grid width the filter was built for.
        width: usize,
    },
    /// MS-MLP's mix-shift: channel groups rolled along width and height, each followed by a
    /// depthwise convolution.
    MixShift {
        /// Roll distance of each channel group (one group per entry).
        shift_dist: Vec<i32>,
        /// Depthwise kernel size of each group (odd).
        mix_size: Vec<usize>,
    },
    /// The Mamba block (selective state-space scan) over the token sequence, Vision-Mamba style
    /// in both directions when `bidirectional`.
    Mamba {
        /// State size `N` per channel.
        d_state: usize,
        /// Width of the causal depthwise conv.
        d_conv: usize,
        /// Hidden width as a multiple of the channels.
        expand: usize,
        /// Rank of the `dt` projection; `None` for `ceil(dim / 16)`.
        dt_rank: Option<usize>,
        /// Also scan the reversed sequence with its own parameters.
        bidirectional: bool,
        /// Halve the sum of the two directions (Vim's `if_devide_out`).
        divide_out: bool,
    },
    /// RaftMLP's serial vertical and horizontal token mixing over rafts of channels, on a
    /// channel-last map (residuals included).
    RaftTokenMixing {
        /// Channels per raft.
        raft_size: usize,
        /// Grid height the MLPs were built for.
        height: usize,
        /// Grid width the MLPs were built for.
        width: usize,
        /// Hidden width of the token MLPs as a multiple of their input width.
        expansion: usize,
    },
    /// AFFNet's adaptive frequency filter (residual included): a spectrum-dependent mask from a
    /// block-diagonal complex MLP, applied in the Fourier domain.
    AdaptiveFrequencyFilter {
        /// Channel groups of the block-diagonal MLP.
        num_blocks: usize,
        /// Soft-shrink threshold of the mask.
        sparsity_threshold: f64,
        /// Activation inside the MLP (AFFNet's global activation).
        act: layers::ActKind,
    },
    /// Multi-head self-attention over all tokens (CAFormer).
    Attention {
        /// Channels per head.
        head_dim: usize,
        /// Whether the qkv projection has a bias.
        qkv_bias: bool,
        /// Whether the output projection has a bias.
        proj_bias: bool,
    },
}

impl MixerConfig {
    /// PoolFormer's 3x3 pooling mixer.
    pub fn pooling() -> Self {
        Self::Pooling { pool_size: 3 }
    }

    /// ConvFormer's SepConv: expansion 2, 7x7 depthwise, no biases.
    pub fn sepconv() -> Self {
        Self::SepConv {
            expansion_ratio: 2.0,
            kernel_size: 7,
            bias: false,
        }
    }

    /// CAFormer's attention: head dim 32, no biases.
    pub fn attention() -> Self {
        Self::Attention {
            head_dim: 32,
            qkv_bias: false,
            proj_bias: false,
        }
    }

    /// The layout the built mixer works in.
    pub fn layout(&self) -> MixerLayout {
        match self {
            Self::Identity => MixerLayout::Any,
            Self::RandomMixing { .. }
            | Self::MixShift { .. }
            | Self::AdaptiveFrequencyFilter { .. } => MixerLayout::Spatial,
            Self::Attention { .. }
            | Self::Mamba { .. }
            | Self::TokenMlp { .. }
            | Self::LinearTokens { .. }
            | Self::SpatialGating { .. } => MixerLayout::Tokens,
            Self::Pooling { .. }
            | Self::SepConv { .. }
            | Self::GatedConv { .. }
            | Self::GlobalFilter { .. }
            | Self::RaftTokenMixing { .. } => MixerLayout::ChannelsLast,
        }
    }

    /// Checks the hyper-parameters for `dim` channels; the error ([`MixerError::Config`]) says
    /// which one is wrong.
    pub fn validate(&self, dim: usize) -> Result<()> {
        let bad = |mixer: &'static str, msg: String| Err(MixerError::Config { mixer, msg }.into());
        match self {
            Self::Pooling { pool_size } if pool_size % 2 == 0 => {
                bad("pooling", format!("pool_size must be odd, got {pool_size}"))
            }
            Self::SepConv { kernel_size, .. } if kernel_size % 2 == 0 => bad(
                "sepconv",
                format!("kernel_size must be odd, got {kernel_size}"),
            ),
            Self::SepConv {
                expansion_ratio, ..
            } if !(*expansion_ratio > 0.0 && *expansion_ratio <= 64.0) => bad(
                "sepconv",
                format!("expansion_ratio must be in (0, 64], got {expansion_ratio}"),
            ),
            Self::Attention { head_dim, .. } if *head_dim == 0 || dim == 0 => {
                bad("attention", "head_dim and dim must be positive".into())
            }
            Self::GatedConv {
                expansion_ratio,
                kernel_size,
                conv_ratio,
            } => gated_conv::validate(dim, *expansion_ratio, *kernel_size, *conv_ratio).map_err(
                |msg| {
                    MixerError::Config {
                        mixer: "gated_conv",
                        msg,
                    }
                    .into()
                },
            ),
            Self::TokenMlp { hidden, glu, .. } if *hidden == 0 || (*glu && hidden % 2 == 1) => bad(
                "token_mlp",
                format!("hidden must be positive (and even with glu), got {hidden}"),
            ),
            Self::GlobalFilter { height, width }
                if *height == 0 || *width == 0 || height * width > 1 << 16 =>
            {
                bad(
                    "global_filter",
                    format!("the grid must have 1..=65536 positions, got {height}x{width}"),
                )
            }
            Self::MixShift {
                shift_dist,
                mix_size,
            } if shift_dist.len() != mix_size.len()
                || mix_size.iter().any(|k| k % 2 == 0)
                || shift::chunk_sizes(dim, shift_dist.len()).len() != shift_dist.len() =>
            {
                bad(
                    "mix_shift",
                    format!(
                        "need one odd kernel per shift and {} channel groups of {dim} channels \
                         (torch.chunk), got shifts {shift_dist:?} and kernels {mix_size:?}",
                        shift_dist.len()
                    ),
                )
            }
            Self::AdaptiveFrequencyFilter { num_blocks, .. }
                if *num_blocks == 0 || !dim.is_multiple_of(*num_blocks) =>
            {
                bad(
                    "adaptive_frequency_filter",
                    format!("num_blocks {num_blocks} must divide {dim} channels"),
                )
            }
            Self::RaftTokenMixing {
                raft_size,
                height,
                width,
                expansion,
            } if *raft_size == 0
                || !dim.is_multiple_of(*raft_size)
                || *height == 0
                || *width == 0
                || height * width > 1 << 16
                || *expansion == 0
                || *expansion > 64 =>
            {
                bad(
                    "raft_token_mixing",
                    format!(
                        "raft_size {raft_size} must divide {dim} channels, the grid \
                         {height}x{width} be non-empty and the expansion {expansion} sane"
                    ),
                )
            }
            Self::Mamba {
                d_state,
                d_conv,
                expand,
                dt_rank,
                ..
            } if *d_state == 0
                || *d_state > 1024
                || *d_conv == 0
                || *d_conv > 64
                || *expand == 0
                || *expand > 64
                || *dt_rank == Some(0) =>
            {
                bad(
                    "mamba",
                    format!(
                        "d_state ({d_state}), d_conv ({d_conv}), expand ({expand}) and dt_rank \
                         ({dt_rank:?}) must be positive and sane"
                    ),
                )
            }
            Self::TokenMlp { num_tokens, .. }
            | Self::LinearTokens { num_tokens }
            | Self::SpatialGating { num_tokens }
            | Self::RandomMixing { num_tokens }
                if *num_tokens == 0 || *num_tokens > 1 << 16 =>
            {
                bad(
                    "token",
                    format!("num_tokens must be in 1..=65536, got {num_tokens}"),
                )
            }
            _ => Ok(()),
        }
    }

    /// Builds the mixer for `dim` channels, reading its weights from `vb` (the `token_mixer`
    /// prefix of a block).
    pub fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        self.validate(dim)?;
        Ok(match self {
            Self::Identity => Box::new(Identity),
            Self::Pooling { pool_size } => Box::new(Pooling::new(*pool_size)),
            Self::RandomMixing { num_tokens } => Box::new(RandomMixing::new(*num_tokens, vb)?),
            Self::SepConv {
                expansion_ratio,
                kernel_size,
                bias,
            } => Box::new(SepConv::new(
                dim,
                *expansion_ratio,
                *kernel_size,
                *bias,
                vb,
            )?),
            Self::Attention {
                head_dim,
                qkv_bias,
                proj_bias,
            } => Box::new(Attention::new(dim, *head_dim, *qkv_bias, *proj_bias, vb)?),
            Self::GatedConv {
                expansion_ratio,
                kernel_size,
                conv_ratio,
            } => Box::new(GatedConv::new(
                dim,
                *expansion_ratio,
                *kernel_size,
                *conv_ratio,
                vb,
            )?),
            Self::TokenMlp {
                num_tokens,
                hidden,
                act,
                glu,
            } => Box::new(TokenMlp::new(*num_tokens, *hidden, *act, *glu, vb)?),
            Self::LinearTokens { num_tokens } => Box::new(LinearTokens::new(*num_tokens, vb)?),
            Self::SpatialGating { num_tokens } => {
                Box::new(SpatialGating::new(dim, *num_tokens, vb)?)
            }
            Self::GlobalFilter { height, width } => {
                Box::new(GlobalFilter::new(dim, *height, *width, vb)?)
            }
            Self::MixShift {
                shift_dist,
                mix_size,
            } => Box::new(MixShift::new(dim, shift_dist, mix_size, vb)?),
            Self::Mamba {
                d_state,
                d_conv,
                expand,
                dt_rank,
                bidirectional,
                divide_out,
            } => Box::new(Mamba::new(
                dim,
                *d_state,
                *d_conv,
                *expand,
                *dt_rank,
                *bidirectional,
                *divide_out,
                vb,
            )?),
            Self::AdaptiveFrequencyFilter {
                num_blocks,
                sparsity_threshold,
                act,
            } => Box::new(AdaptiveFrequencyFilter::new(
                dim,
                *num_blocks,
                *sparsity_threshold,
                *act,
                vb,
            )?),
            Self::RaftTokenMixing {
                raft_size,
                height,
                width,
                expansion,
            } => Box::new(RaftTokenMixing::new(
                dim,
                *raft_size,
                (*height, *width),
                *expansion,
                vb,
            )?),
        })
    }

    /// Multiply-accumulates of one forward pass for one sample with `dim` channels on an
    /// `h x w` token grid (convolutions and matrix products; element-wise work is not counted).
    pub fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let (dim, n) = (dim as u64, (h * w) as u64);
        match self {
            Self::Identity | Self::Pooling { .. } => 0,
            Self::RandomMixing { num_tokens } => (*num_tokens as u64).pow(2) * dim,
            Self::SepConv {
                expansion_ratio,
                kernel_size,
                ..
            } => {
                let mid = sepconv::hidden_channels(dim as usize, *expansion_ratio) as u64;
                let k2 = (*kernel_size as u64).pow(2);
                n * (dim * mid * 2 + mid * k2)
            }
            Self::Attention { head_dim, .. } => {
                let a = (attention::num_heads(dim as usize, *head_dim) * head_dim) as u64;
                n * dim * a * 3 + n * a * dim + 2 * n * n * a
            }
            Self::TokenMlp {
                num_tokens,
                hidden,
                glu,
                ..
            } => {
                let (t, h) = (*num_tokens as u64, *hidden as u64);
                let h_out = if *glu { h / 2 } else { h };
                dim * (t * h + h_out * t)
            }
            Self::LinearTokens { num_tokens } | Self::SpatialGating { num_tokens } => {
                (*num_tokens as u64).pow(2) * dim
            }
            Self::Mamba {
                d_state,
                d_conv,
                expand,
                dt_rank,
                bidirectional,
                ..
            } => {
                let (inner, rank) = ssm::widths(dim as usize, *expand, *dt_rank);
                let (inner, rank, ns) = (inner as u64, rank as u64, *d_state as u64);
                let per_dir =
                    inner * (*d_conv as u64 + rank + 2 * ns) + rank * inner + 3 * inner * ns;
                let dirs = if *bidirectional { 2 } else { 1 };
                n * (dim * 2 * inner + dirs * per_dir + inner * dim)
            }
            Self::MixShift {
                shift_dist,
                mix_size,
            } => {
                let sizes = shift::chunk_sizes(dim as usize, shift_dist.len());
                let taps: u64 = sizes
                    .iter()
                    .zip(mix_size)
                    .map(|(&c, &k)| (c * k * k) as u64)
                    .sum();
                2 * n * taps
            }
            Self::RaftTokenMixing {
                raft_size,
                height,
                width,
                expansion,
            } => {
                let (r, e) = (*raft_size as u64, *expansion as u64);
                let (gh, gw) = (*height as u64, *width as u64);
                let rafts = dim / r.max(1);
                // Each token MLP maps r*extent -> e*r*extent -> r*extent for every raft and line.
                2 * e * rafts * (gw * (r * gh).pow(2) + gh * (r * gw).pow(2))
            }
            Self::AdaptiveFrequencyFilter { num_blocks, .. } => {
                // FFTs plus the two block-diagonal complex layers (4 real products each) on
                // the half spectrum.
                let log = (n.max(2) as f64).log2().ceil() as u64;
                let half = (h * (w / 2 + 1)) as u64;
                dim * 2 * n * log + 2 * 4 * half * dim * dim / (*num_blocks as u64).max(1)
            }
            Self::GlobalFilter { .. } => {
                // The two FFTs (~ N log2 N each) and the complex product, per channel.
                let log = (n.max(2) as f64).log2().ceil() as u64;
                dim * (2 * n * log + (n / 2 + 1) * 4)
            }
            Self::GatedConv {
                expansion_ratio,
                kernel_size,
                conv_ratio,
            } => {
                let (hidden, conv) =
                    gated_conv::widths(dim as usize, *expansion_ratio, *conv_ratio);
                let (hidden, conv) = (hidden as u64, conv as u64);
                n * (dim * 2 * hidden + conv * (*kernel_size as u64).pow(2) + hidden * dim)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn mixers(dim: usize) -> Vec<Box<dyn TokenMixer>> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        [
            MixerConfig::Identity,
            MixerConfig::pooling(),
            MixerConfig::RandomMixing { num_tokens: 35 },
            MixerConfig::sepconv(),
            MixerConfig::attention(),
        ]
        .iter()
        .enumerate()
        .map(|(i, c)| c.build(dim, vb.pp(i)).unwrap())
        .collect()
    }

    #[test]
    fn mixers_chosen_at_run_time_keep_the_shape_in_their_layout() {
        let (b, c, h, w) = (2, 64, 5, 7);
        for mixer in mixers(c) {
            let shape: Vec<usize> = match mixer.layout() {
                MixerLayout::Tokens => vec![b, h * w, c],
                MixerLayout::ChannelsLast => vec![b, h, w, c],
                _ => vec![b, c, h, w],
            };
            let x = Tensor::randn(0f32, 1.0, shape.as_slice(), &Device::Cpu).unwrap();
            let y = mixer.forward(&x).unwrap();
            assert_eq!(y.dims(), x.dims(), "{}", mixer.name());
        }
    }

    #[test]
    fn configs_round_trip_through_json() {
        for c in [
            MixerConfig::Identity,
            MixerConfig::sepconv(),
            MixerConfig::attention(),
        ] {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(
                serde_json::from_str::<MixerConfig>(&json).unwrap(),
                c,
                "{json}"
            );
        }
        let err = MixerConfig::Pooling { pool_size: 4 }
            .validate(8)
            .unwrap_err();
        assert!(err.to_string().contains("pool_size must be odd"));
    }

    #[test]
    fn attention_on_a_token_sequence_is_permutation_equivariant() {
        let mixer = &mixers(64)[4];
        let x = Tensor::randn(0f32, 1.0, (1, 6, 64), &Device::Cpu).unwrap();
        let perm = Tensor::new(&[5u32, 4, 3, 2, 1, 0], &Device::Cpu).unwrap();
        let y_of_perm = mixer.forward(&x.index_select(&perm, 1).unwrap()).unwrap();
        let perm_of_y = mixer.forward(&x).unwrap().index_select(&perm, 1).unwrap();
        let d: f32 = (y_of_perm - perm_of_y)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-5, "{d}");
    }
}
