//! MLP-Mixer, gMixer, ResMLP and gMLP: isotropic all-MLP models on a fixed grid of patches, with
//! timm's tensor names (`timm/models/mlp_mixer.py`).
//!
//! Papers: MLP-Mixer (arXiv 2105.01601), ResMLP (arXiv 2105.03404), gMLP (arXiv 2105.08050).
//! The input size is fixed by the token-mixing weights: `img_size` (any `[height, width]`
//! divisible by `patch_size`) is part of the configuration.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use tokenmix_mixers::layers::ConvNhwc;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_mixers::layers::{ActKind, DropPath, Mlp, Norm, NormConfig, Scale};
use tokenmix_mixers::linear_tokens::LinearTokensConfig;
use tokenmix_mixers::token_mlp::TokenMlpConfig;
use tokenmix_mixers::{MixerConfig, MixerLayout, SpatialGatingUnit, TokenMixer};

use crate::args::{only, parse, set, ImgSize};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, PretrainedCfg};
use crate::features::{check_take, truncate_after_last};
use crate::{Architecture, Family, FeatureInfo, ImageModel, Indices, Ratio};

/// Which block the model stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MixerBlockKind {
    /// `x + token_mlp(LN(x))`, `x + channel_mlp(LN(x))` (MLP-Mixer; gMixer with GLU MLPs).
    Mixer,
    /// `x + ls1 * linear_tokens(Affine(x))`, `x + ls2 * channel_mlp(Affine(x))` (ResMLP).
    Res,
    /// `x + fc2(u * sgu(v))` with `[u, v] = GELU(fc1(LN(x)))` (gMLP).
    SpatialGating,
}

/// Hyper-parameters of an [`MlpMixer`], named as timm's `MlpMixer` kwargs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpMixerConfig {
    /// Input image channels.
    pub in_chans: usize,
    /// Classifier outputs; 0 means none (the head returns pooled features).
    pub num_classes: usize,
    /// Input `(height, width)`, fixed by the token-mixing weights.
    pub img_size: (usize, usize),
    /// Side of the square patches.
    pub patch_size: usize,
    /// Number of blocks.
    pub num_blocks: usize,
    /// Channels.
    pub embed_dim: usize,
    /// Hidden widths as multiples of `embed_dim`: `(tokens, channels)` (the token ratio only
    /// matters for [`MixerBlockKind::Mixer`]).
    pub mlp_ratio: (f64, f64),
    /// The block.
    pub block: MixerBlockKind,
    /// gMixer: GLU MLPs with SiLU instead of GELU MLPs.
    pub glu: bool,
    /// Whether the patch embedding is followed by a norm (`stem.norm`).
    pub stem_norm: bool,
    /// Stochastic depth of every block in training (timm gives the MLP-Mixer family one rate
    /// for all blocks); 0 for inference.
    #[serde(default)]
    pub drop_path_rate: f64,
}

impl MlpMixerConfig {
    fn base(
        block: MixerBlockKind,
        patch_size: usize,
        num_blocks: usize,
        embed_dim: usize,
        ratio: (f64, f64),
    ) -> Self {
        Self {
            in_chans: 3,
            num_classes: 1000,
            img_size: (224, 224),
            patch_size,
            num_blocks,
            embed_dim,
            mlp_ratio: ratio,
            block,
            glu: false,
            stem_norm: false,
            drop_path_rate: 0.0,
        }
    }

    /// MLP-Mixer with token/channel MLP ratios 0.5 and 4.
    pub fn mixer(patch_size: usize, num_blocks: usize, embed_dim: usize) -> Self {
        Self::base(
            MixerBlockKind::Mixer,
            patch_size,
            num_blocks,
            embed_dim,
            (0.5, 4.0),
        )
    }

    /// gMixer: MLP-Mixer with SiLU GLU MLPs, ratios 1 and 4.
    pub fn gmixer(num_blocks: usize) -> Self {
        Self {
            glu: true,
            ..Self::base(MixerBlockKind::Mixer, 16, num_blocks, 384, (1.0, 4.0))
        }
    }

    /// ResMLP: Affine norms, linear token mixing, layer scales, channel ratio 4.
    pub fn resmlp(num_blocks: usize) -> Self {
        Self::base(MixerBlockKind::Res, 16, num_blocks, 384, (4.0, 4.0))
    }

    /// gMLP: spatial gating units, channel ratio 6, 30 blocks.
    pub fn gmlp(embed_dim: usize) -> Self {
        Self::base(MixerBlockKind::SpatialGating, 16, 30, embed_dim, (6.0, 6.0))
    }

    /// Patch grid `(rows, columns)`.
    pub fn grid(&self) -> (usize, usize) {
        (
            self.img_size.0 / self.patch_size.max(1),
            self.img_size.1 / self.patch_size.max(1),
        )
    }

    fn num_tokens(&self) -> usize {
        let (h, w) = self.grid();
        h * w
    }

    fn widths(&self) -> (usize, usize) {
        let d = self.embed_dim as f64;
        (
            (self.mlp_ratio.0 * d) as usize,
            (self.mlp_ratio.1 * d) as usize,
        )
    }

    /// The token mixer of every block; for gMLP, the token projection of its spatial gating
    /// unit (a `Linear(N, N)` along tokens, as ResMLP's), which the block builds itself.
    pub fn token_mixer(&self) -> MixerConfig {
        let num_tokens = self.num_tokens();
        match self.block {
            MixerBlockKind::Mixer => MixerConfig::new(TokenMlpConfig {
                num_tokens,
                hidden: self.widths().0,
                act: if self.glu {
                    ActKind::Silu
                } else {
                    ActKind::Gelu
                },
                glu: self.glu,
            }),
            MixerBlockKind::Res | MixerBlockKind::SpatialGating => {
                MixerConfig::new(LinearTokensConfig { num_tokens })
            }
        }
    }
}

/// A number for both MLPs or `[tokens, channels]`.
#[derive(Clone, Copy, Deserialize)]
#[serde(untagged, expecting = "a number or [tokens, channels]")]
enum MlpRatio {
    Both(f64),
    Pair(f64, f64),
}

/// `model_args` of the MLP-Mixer family, named as timm's `MlpMixer` kwargs; dropout and `nlhb`
/// are accepted and ignored, `global_pool` only as `avg`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MlpMixerArgs {
    in_chans: Option<usize>,
    num_classes: Option<usize>,
    drop_path_rate: Option<f64>,
    img_size: Option<ImgSize>,
    patch_size: Option<usize>,
    num_blocks: Option<usize>,
    embed_dim: Option<usize>,
    mlp_ratio: Option<MlpRatio>,
    stem_norm: Option<bool>,
    global_pool: Option<Value>,
    #[serde(rename = "drop_rate")]
    _drop_rate: Option<IgnoredAny>,
    #[serde(rename = "proj_drop_rate")]
    _proj_drop_rate: Option<IgnoredAny>,
    #[serde(rename = "nlhb")]
    _nlhb: Option<IgnoredAny>,
}

impl MlpMixerArgs {
    fn apply(self, cfg: &mut MlpMixerConfig) -> crate::Result<()> {
        only(
            MlpMixerConfig::NAME,
            "global_pool",
            &self.global_pool,
            "avg".into(),
        )?;
        set(&mut cfg.in_chans, self.in_chans);
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.drop_path_rate, self.drop_path_rate);
        set(&mut cfg.img_size, self.img_size.map(ImgSize::pair));
        set(&mut cfg.patch_size, self.patch_size);
        set(&mut cfg.num_blocks, self.num_blocks);
        set(&mut cfg.embed_dim, self.embed_dim);
        set(&mut cfg.stem_norm, self.stem_norm);
        cfg.mlp_ratio = match self.mlp_ratio {
            Some(MlpRatio::Both(r)) => (r, r),
            Some(MlpRatio::Pair(t, c)) => (t, c),
            None => cfg.mlp_ratio,
        };
        Ok(())
    }
}

impl Family for MlpMixerConfig {
    const NAME: &'static str = "mlp_mixer";

    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("mixer_s32_224", "mlp_mixer", None, ArchConfig::new(MlpMixerConfig::mixer(32, 8, 512)), pretrained: PretrainedCfg::inception(0.875)),
        entry!("mixer_s16_224", "mlp_mixer", None, ArchConfig::new(MlpMixerConfig::mixer(16, 8, 512)), pretrained: PretrainedCfg::inception(0.875)),
        entry!("mixer_b32_224", "mlp_mixer", None, ArchConfig::new(MlpMixerConfig::mixer(32, 12, 768)), pretrained: PretrainedCfg::inception(0.875)),
        entry!("mixer_b16_224", "mlp_mixer", Some(76.4), ArchConfig::new(MlpMixerConfig::mixer(16, 12, 768)), pretrained: PretrainedCfg::inception(0.875), hub: "goog_in21k_ft_in1k"),
        entry!("mixer_l32_224", "mlp_mixer", None, ArchConfig::new(MlpMixerConfig::mixer(32, 24, 1024)), pretrained: PretrainedCfg::inception(0.875)),
        entry!("mixer_l16_224", "mlp_mixer", Some(71.8), ArchConfig::new(MlpMixerConfig::mixer(16, 24, 1024)), pretrained: PretrainedCfg::inception(0.875), hub: "goog_in21k_ft_in1k"),
        entry!("gmixer_12_224", "gmixer", None, ArchConfig::new(MlpMixerConfig::gmixer(12)), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("gmixer_24_224", "gmixer", None, ArchConfig::new(MlpMixerConfig::gmixer(24)), pretrained: PretrainedCfg::metaformer(0.875), hub: "ra3_in1k"),
        entry!("resmlp_12_224", "resmlp", Some(76.6), ArchConfig::new(MlpMixerConfig::resmlp(12)), pretrained: PretrainedCfg::metaformer(0.875), hub: "fb_in1k"),
        entry!("resmlp_24_224", "resmlp", Some(79.4), ArchConfig::new(MlpMixerConfig::resmlp(24)), pretrained: PretrainedCfg::metaformer(0.875), hub: "fb_in1k"),
        entry!("resmlp_36_224", "resmlp", Some(79.7), ArchConfig::new(MlpMixerConfig::resmlp(36)), pretrained: PretrainedCfg::metaformer(0.875), hub: "fb_in1k"),
        entry!("gmlp_ti16_224", "gmlp", Some(72.3), ArchConfig::new(MlpMixerConfig::gmlp(128)), pretrained: PretrainedCfg::inception(0.875)),
        entry!("gmlp_s16_224", "gmlp", Some(79.6), ArchConfig::new(MlpMixerConfig::gmlp(256)), pretrained: PretrainedCfg::inception(0.875), hub: "ra3_in1k"),
        entry!("gmlp_b16_224", "gmlp", Some(81.6), ArchConfig::new(MlpMixerConfig::gmlp(512)), pretrained: PretrainedCfg::inception(0.875)),
    ];
}

impl Architecture for MlpMixerConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(MlpMixer::new(self, vb)?))
    }

    crate::arch::common_fields!();

    /// Every block, `blocks.{i}`, at the patch stride (as timm).
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let info = |i| FeatureInfo::new(self.embed_dim, self.patch_size, format!("blocks.{i}"));
        (0..self.num_blocks).map(info).collect()
    }

    fn check(&self) -> std::result::Result<(), String> {
        let (h, w) = self.img_size;
        let p = self.patch_size;
        if p == 0 || h == 0 || w == 0 || h % p != 0 || w % p != 0 || h > 16_384 || w > 16_384 {
            return Err(format!(
                "img_size {h}x{w} must be positive, at most 16384 and divisible by patch_size {p}"
            ));
        }
        if self.embed_dim < 2 || self.embed_dim > 65_536 || self.num_blocks > 1000 {
            return Err(format!(
                "embed_dim must be in 2..=65536 and num_blocks at most 1000, got {} and {}",
                self.embed_dim, self.num_blocks
            ));
        }
        let (_, channels) = self.widths();
        if (self.glu || self.block == MixerBlockKind::SpatialGating)
            && (channels < 2 || channels % 2 == 1)
        {
            return Err(format!(
                "the gated channel MLP needs an even hidden width, got {channels}"
            ));
        }
        self.token_mixer()
            .validate(self.embed_dim)
            .map_err(|e| e.to_string())
    }

    fn ratios(&self) -> Vec<Ratio> {
        let (tokens, channels) = self.mlp_ratio;
        vec![
            Ratio::of("mlp_ratio (tokens)", tokens, self.embed_dim),
            Ratio::of("mlp_ratio (channels)", channels, self.embed_dim),
        ]
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<MlpMixerArgs>(Self::NAME, args)?.apply(self)
    }

    fn set_image_size(&mut self, h: usize, w: usize) {
        self.img_size = (h, w);
    }

    fn fixed_image_size(&self) -> Option<(usize, usize)> {
        Some(self.img_size)
    }

    /// At `img_size`; other sizes are not accepted.
    fn macs(&self, _h: usize, _w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let n = self.num_tokens() as u64;
        let d = self.embed_dim as u64;
        let p2 = (self.patch_size * self.patch_size) as u64;
        let (_, c) = self.widths();
        let c = c as u64;
        let channel = match (self.block, self.glu) {
            (MixerBlockKind::SpatialGating, _) => n * (d * c + c / 2 * d),
            (_, true) => n * (d * c + c / 2 * d),
            _ => 2 * n * d * c,
        };
        let mixed_dim = match self.block {
            MixerBlockKind::SpatialGating => self.widths().1 / 2,
            _ => self.embed_dim,
        };
        let block = self.token_mixer().macs(mixed_dim, 1, n as usize) + channel;
        n * d * self.in_chans as u64 * p2
            + block * self.num_blocks as u64
            + d * self.num_classes as u64
    }
}

/// `alpha * x + beta` with `alpha`, `beta` of shape `[1, 1, C]` (ResMLP's norm).
#[derive(Debug, Clone)]
struct Affine {
    alpha: Tensor,
    beta: Tensor,
}

impl Affine {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            alpha: vb.get((1, 1, dim), "alpha")?,
            beta: vb.get((1, 1, dim), "beta")?,
        })
    }
}

impl Module for Affine {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.alpha)?.broadcast_add(&self.beta)
    }
}

#[derive(Debug, Clone)]
enum TokenNorm {
    LayerNorm(Norm),
    Affine(Affine),
}

impl Module for TokenNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::LayerNorm(n) => n.forward(x),
            Self::Affine(a) => a.forward(x),
        }
    }
}

fn token_norm(cfg: &MlpMixerConfig, dim: usize, vb: VarBuilder) -> Result<TokenNorm> {
    Ok(match cfg.block {
        MixerBlockKind::Res => TokenNorm::Affine(Affine::new(dim, vb)?),
        _ => TokenNorm::LayerNorm(NormConfig::LAYER_NORM.build(dim, MixerLayout::Tokens, vb)?),
    })
}

/// A channel MLP: `fc2(act(fc1(x)))`, or the GLU form `fc2(a * silu(g))` (gMixer); times a
/// per-channel scale (ResMLP's `ls2`) if it has one.
#[derive(Debug, Clone)]
enum ChannelMlp {
    Plain(Mlp),
    Glu {
        fc1: Linear,
        fc2: Linear,
        scale: Option<Scale>,
    },
}

impl ChannelMlp {
    fn new(cfg: &MlpMixerConfig, scale: Option<Scale>, vb: VarBuilder) -> Result<Self> {
        let (d, (_, hidden)) = (cfg.embed_dim, cfg.widths());
        Ok(if cfg.glu {
            Self::Glu {
                fc1: candle_nn::linear(d, hidden, vb.pp("fc1"))?,
                fc2: candle_nn::linear(hidden / 2, d, vb.pp("fc2"))?,
                scale,
            }
        } else {
            Self::Plain(
                Mlp::new(d, hidden, ActKind::Gelu, true, MixerLayout::Tokens, vb)?
                    .with_output_scale(scale),
            )
        })
    }

    /// `x + mlp(norm(x))`, the MLP branch under `drop_path` (one fused op for plain MLPs at
    /// inference, see [`Mlp::forward_residual`]).
    fn residual(
        &self,
        normed: &Tensor,
        x: &Tensor,
        drop_path: DropPath,
        train: bool,
    ) -> Result<Tensor> {
        match self {
            Self::Plain(m) => m.forward_residual(normed, x, drop_path, train),
            Self::Glu { .. } => x + drop_path.forward_t(&self.forward(normed)?, train)?,
        }
    }
}

impl Module for ChannelMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Plain(m) => m.forward(x),
            Self::Glu { fc1, fc2, scale } => {
                let h = fc1.forward(x)?;
                let half = h.dim(D::Minus1)? / 2;
                let gated =
                    (h.narrow(D::Minus1, 0, half)? * h.narrow(D::Minus1, half, half)?.silu()?)?;
                let y = fc2.forward(&gated)?;
                match scale {
                    Some(s) => s.forward(&y),
                    None => Ok(y),
                }
            }
        }
    }
}

#[derive(Debug)]
enum Block {
    Mixer {
        norm1: TokenNorm,
        mixer: Box<dyn TokenMixer>,
        norm2: TokenNorm,
        mlp: ChannelMlp,
    },
    Res {
        norm1: TokenNorm,
        mixer: Box<dyn TokenMixer>,
        ls1: Tensor,
        norm2: TokenNorm,
        /// Scaled by `ls2`.
        mlp: ChannelMlp,
    },
    Gating {
        norm: TokenNorm,
        fc1: Linear,
        gate: SpatialGatingUnit,
        fc2: Linear,
    },
}

impl Block {
    fn new(cfg: &MlpMixerConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.embed_dim;
        let mixer_cfg = cfg.token_mixer();
        Ok(match cfg.block {
            MixerBlockKind::Mixer => Self::Mixer {
                norm1: token_norm(cfg, d, vb.pp("norm1"))?,
                mixer: mixer_cfg.build(d, vb.pp("mlp_tokens"))?,
                norm2: token_norm(cfg, d, vb.pp("norm2"))?,
                mlp: ChannelMlp::new(cfg, None, vb.pp("mlp_channels"))?,
            },
            MixerBlockKind::Res => Self::Res {
                norm1: token_norm(cfg, d, vb.pp("norm1"))?,
                mixer: mixer_cfg.build(d, vb.pp("linear_tokens"))?,
                ls1: vb.get(d, "ls1")?,
                norm2: token_norm(cfg, d, vb.pp("norm2"))?,
                mlp: ChannelMlp::new(
                    cfg,
                    Some(Scale::new_named(d, MixerLayout::Tokens, "ls2", vb.clone())?),
                    vb.pp("mlp_channels"),
                )?,
            },
            MixerBlockKind::SpatialGating => {
                let hidden = cfg.widths().1;
                let m = vb.pp("mlp_channels");
                Self::Gating {
                    norm: token_norm(cfg, d, vb.pp("norm"))?,
                    fc1: candle_nn::linear(d, hidden, m.pp("fc1"))?,
                    gate: SpatialGatingUnit::new(hidden / 2, cfg.num_tokens(), m.pp("gate"))?,
                    fc2: candle_nn::linear(hidden / 2, d, m.pp("fc2"))?,
                }
            }
        })
    }
}

impl Block {
    fn forward_t(&self, x: &Tensor, drop_path: DropPath, train: bool) -> Result<Tensor> {
        let dp = |branch: Tensor| drop_path.forward_t(&branch, train);
        match self {
            Self::Mixer {
                norm1,
                mixer,
                norm2,
                mlp,
            } => {
                let x = (x + dp(mixer.forward(&norm1.forward(x)?)?)?)?;
                mlp.residual(&norm2.forward(&x)?, &x, drop_path, train)
            }
            Self::Res {
                norm1,
                mixer,
                ls1,
                norm2,
                mlp,
            } => {
                let x = (x + dp(mixer.forward(&norm1.forward(x)?)?.broadcast_mul(ls1)?)?)?;
                mlp.residual(&norm2.forward(&x)?, &x, drop_path, train)
            }
            Self::Gating {
                norm,
                fc1,
                gate,
                fc2,
            } => {
                let h = tokenmix_kernels::gelu(&fc1.forward(&norm.forward(x)?)?)?;
                x + dp(fc2.forward(&gate.forward(&h)?)?)?
            }
        }
    }
}

/// An MLP-Mixer-family classifier: patch embedding, blocks on `(B, N, C)` tokens, final norm,
/// mean over tokens, linear head.
#[derive(Debug)]
pub struct MlpMixer {
    cfg: MlpMixerConfig,
    stem: ConvNhwc,
    stem_norm: Option<TokenNorm>,
    blocks: Vec<Block>,
    /// Every block's stochastic depth (uniform, as timm's `MlpMixer`).
    drop_path: DropPath,
    norm: TokenNorm,
    head: Option<Linear>,
}

impl MlpMixer {
    /// Builds the model, reading every tensor from `vb` under timm's names.
    pub fn new(cfg: &MlpMixerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let d = cfg.embed_dim;
        let stem = crate::patch_embed(cfg.in_chans, d, cfg.patch_size, vb.pp("stem").pp("proj"))?;
        let stem_norm = cfg
            .stem_norm
            .then(|| token_norm(cfg, d, vb.pp("stem").pp("norm")))
            .transpose()?;
        let blocks = (0..cfg.num_blocks)
            .map(|i| Block::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            stem_norm,
            blocks,
            drop_path: DropPath::new(cfg.drop_path_rate),
            norm: token_norm(cfg, d, vb.pp("norm"))?,
            head: crate::optional_linear(d, cfg.num_classes, vb.pp("head"))?,
        })
    }
}

impl ImageModel for MlpMixer {
    fn in_chans(&self) -> usize {
        self.cfg.in_chans
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    /// One feature map: the normed tokens after the last block as `(B, C, H/p, W/p)`.
    fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let last = self.blocks.len() - 1;
        self.forward_intermediates_t(x, &[last], true, train)
    }

    /// Each block's tokens as `(B, C, H/p, W/p)`; `norm` applies the final norm to each (as
    /// timm).
    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        norm: bool,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let last = check_take(take, self.blocks.len())?;
        crate::check_fixed_size(
            x,
            self.cfg.img_size,
            "its token-mixing weights fix the grid",
        )?;
        let (mut x, grid) = crate::patch_tokens(&self.stem, x)?;
        if let Some(n) = &self.stem_norm {
            x = n.forward(&x)?;
        }
        let mut features = Vec::with_capacity(take.len());
        for (i, block) in self.blocks.iter().enumerate().take(last + 1) {
            x = block.forward_t(&x, self.drop_path, train)?;
            if take.contains(&i) {
                let t = if norm {
                    self.norm.forward(&x)?
                } else {
                    x.clone()
                };
                features.push(crate::tokens_to_map(&t, grid)?);
            }
        }
        Ok(features)
    }

    fn feature_info(&self) -> Vec<FeatureInfo> {
        self.cfg.feature_info()
    }

    /// Keeps the final norm, which `forward_features` still applies.
    fn prune_intermediate_layers(&mut self, indices: &Indices) -> Result<Vec<usize>> {
        let (take, kept) = truncate_after_last(&mut self.blocks, indices)?;
        self.cfg.num_blocks = kept;
        self.cfg.num_classes = 0;
        self.head = None;
        Ok(take)
    }

    /// The classifier is `head`, on the pooled normed tokens (pruned or not).
    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        self.head = crate::optional_linear(self.cfg.embed_dim, num_classes, vb.pp("head"))?;
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        crate::pool_and_classify(last, self.head.as_ref())
    }
}
