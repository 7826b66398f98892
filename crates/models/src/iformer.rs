//! The Inception Transformer, iFormer (Si et al., NeurIPS 2022, arXiv 2205.12956), with the
//! tensor names and registered names of sail-sg/iFormer (`models/inception_transformer.py`,
//! `InceptionTransformer`, `iformer_{small,base,large}` and their `_384` variants).
//!
//! A stem of two `conv 3x3 / 2 -> BN` (GELU between), four stages of pre-norm blocks
//! (`x + mixer(LN(x))`, `x + mlp(LN(x))`, layer scales in stages 3-4) with the inception mixer
//! ([`tokenmix_mixers::inception`]; its attention share grows block by block through
//! `attention_heads`, its attention pooled 2x2 in stages 1-2), a learned position embedding added
//! at the start of each stage (bilinearly interpolated when the map differs from the one
//! `img_size` gives), `conv 3x3 / 2 -> BN` between stages, and a head `LN -> mean -> linear`.
//! Inputs and features are channel-first; inside, the model runs channel-last with the stem's and
//! downsamplers' batch norms folded into their convolutions.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_mixers::inception::{InceptionMixer, InceptionMixerConfig};
use tokenmix_mixers::layers::{drop_path_rates, ActKind, ConvBnNhwc, DropPath, Mlp};
use tokenmix_mixers::layers::{Norm, NormConfig, Scale};
use tokenmix_mixers::{MixerLayout, MixerSpec, TokenMixer};

use crate::args::{parse, set};
use crate::features::{check_take, pruned_error, truncate_after_last};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, PretrainedCfg, Ratio};
use crate::{Architecture, Family, FeatureInfo, ImageModel, Indices};

/// Hyper-parameters of an [`IFormer`], named as the reference's `InceptionTransformer` keyword
/// arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IFormerConfig {
    /// Training input size: the position embeddings are `img_size / 4` ... `img_size / 32` on a
    /// side.
    pub img_size: usize,
    /// Input image channels.
    pub in_chans: usize,
    /// Classifier outputs; 0 means none (the head returns pooled, normed features).
    pub num_classes: usize,
    /// Channels per stage.
    pub embed_dims: Vec<usize>,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Heads per stage; `embed_dims[i] / num_heads[i]` is the stage's head width.
    pub num_heads: Vec<usize>,
    /// Hidden width of the block MLPs as a multiple of the stage width.
    pub mlp_ratio: f64,
    /// Whether the attention's qkv projection has a bias.
    pub qkv_bias: bool,
    /// Attention heads of each block's mixer, one per block over all stages.
    pub attention_heads: Vec<usize>,
    /// Whether the blocks of stages 3 and 4 scale their branches (`layer_scale_1/2`).
    pub use_layer_scale: bool,
    /// Stochastic depth of the last block in training (linear from 0); 0 for inference.
    #[serde(default)]
    pub drop_path_rate: f64,
}

impl IFormerConfig {
    /// iFormer at `img_size` with the given stages and per-block attention heads; head width 32,
    /// layer scales on (as every registered iFormer).
    fn new(img_size: usize, depths: [usize; 4], dims: [usize; 4], heads: [usize; 4], attention: &[(usize, usize)]) -> Self {
        Self {
            img_size,
            in_chans: 3,
            num_classes: 1000,
            embed_dims: dims.to_vec(),
            depths: depths.to_vec(),
            num_heads: heads.to_vec(),
            mlp_ratio: 4.0,
            qkv_bias: true,
            attention_heads: attention.iter().flat_map(|&(h, n)| std::iter::repeat_n(h, n)).collect(),
            use_layer_scale: true,
            drop_path_rate: 0.0,
        }
    }

    fn small(img_size: usize) -> Self {
        Self::new(img_size, [3, 3, 9, 3], [96, 192, 320, 384], [3, 6, 10, 12], &[(1, 3), (3, 3), (7, 4), (9, 5), (11, 3)])
    }

    fn base(img_size: usize) -> Self {
        Self::new(img_size, [4, 6, 14, 6], [96, 192, 384, 512], [3, 6, 12, 16], &[(1, 4), (3, 6), (8, 7), (10, 7), (15, 6)])
    }

    fn large(img_size: usize) -> Self {
        Self::new(img_size, [4, 6, 18, 8], [96, 192, 448, 640], [3, 6, 14, 20], &[(1, 4), (3, 6), (10, 9), (12, 9), (19, 8)])
    }

    /// The mixer of block `j` (over all stages) in stage `i`.
    fn mixer(&self, i: usize, j: usize) -> InceptionMixerConfig {
        InceptionMixerConfig {
            head_dim: Some(self.embed_dims[i] / self.num_heads[i].max(1)),
            attention_head: self.attention_heads.get(j).copied().unwrap_or(1),
            pool_size: if i < 2 { 2 } else { 1 },
            qkv_bias: self.qkv_bias,
        }
    }

    /// `(stage, block index over all stages)` of every block.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut j = 0;
        self.depths.iter().enumerate().flat_map(move |(i, &d)| {
            let start = j;
            j += d;
            (start..start + d).map(move |k| (i, k))
        })
    }

    /// Side of stage `i`'s position embedding.
    fn pos_side(&self, i: usize) -> usize {
        (self.img_size / 4) >> i
    }
}

/// `model_args` of an iFormer, named as the reference's keyword arguments; dropout rates and the
/// reference's init options are accepted and unused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IFormerArgs {
    img_size: Option<usize>,
    in_chans: Option<usize>,
    num_classes: Option<usize>,
    embed_dims: Option<Vec<usize>>,
    depths: Option<Vec<usize>>,
    num_heads: Option<Vec<usize>>,
    mlp_ratio: Option<f64>,
    qkv_bias: Option<bool>,
    attention_heads: Option<Vec<usize>>,
    use_layer_scale: Option<bool>,
    drop_path_rate: Option<f64>,
    #[serde(rename = "layer_scale_init_value")]
    _layer_scale_init_value: Option<IgnoredAny>,
    #[serde(rename = "drop_rate")]
    _drop_rate: Option<IgnoredAny>,
    #[serde(rename = "attn_drop_rate")]
    _attn_drop_rate: Option<IgnoredAny>,
    #[serde(rename = "patch_size")]
    _patch_size: Option<IgnoredAny>,
}

impl IFormerArgs {
    fn apply(self, cfg: &mut IFormerConfig) {
        set(&mut cfg.img_size, self.img_size);
        set(&mut cfg.in_chans, self.in_chans);
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.embed_dims, self.embed_dims);
        set(&mut cfg.depths, self.depths);
        set(&mut cfg.num_heads, self.num_heads);
        set(&mut cfg.mlp_ratio, self.mlp_ratio);
        set(&mut cfg.qkv_bias, self.qkv_bias);
        set(&mut cfg.attention_heads, self.attention_heads);
        set(&mut cfg.use_layer_scale, self.use_layer_scale);
        set(&mut cfg.drop_path_rate, self.drop_path_rate);
    }
}

/// The reference's `_cfg`: crop 0.9 at 224², 1.0 at 384², bicubic, ImageNet mean and std.
fn pretrained(size: usize) -> PretrainedCfg {
    if size == 384 {
        PretrainedCfg::square(384, 1.0)
    } else {
        PretrainedCfg::metaformer(0.9)
    }
}

impl Family for IFormerConfig {
    const NAME: &'static str = "inception_transformer";

    /// Top-1 from the reference's docstrings and README (the 384² figures from its README).
    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("iformer_small", "iformer", Some(83.4), ArchConfig::new(IFormerConfig::small(224)), pretrained: pretrained(224)),
        entry!("iformer_base", "iformer", Some(84.6), ArchConfig::new(IFormerConfig::base(224)), pretrained: pretrained(224)),
        entry!("iformer_large", "iformer", Some(84.8), ArchConfig::new(IFormerConfig::large(224)), pretrained: pretrained(224)),
        entry!("iformer_small_384", "iformer", Some(84.6), ArchConfig::new(IFormerConfig::small(384)), pretrained: pretrained(384)),
        entry!("iformer_base_384", "iformer", Some(85.7), ArchConfig::new(IFormerConfig::base(384)), pretrained: pretrained(384)),
        entry!("iformer_large_384", "iformer", Some(85.8), ArchConfig::new(IFormerConfig::large(384)), pretrained: pretrained(384)),
    ];
}

impl Architecture for IFormerConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(IFormer::new(self, vb)?))
    }

    crate::arch::common_fields!();

    /// Every stage, `blocks{1..4}`, at strides 4 ... 32.
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let info = |(i, &dim): (usize, &usize)| FeatureInfo::new(dim, 4 << i, format!("blocks{}", i + 1));
        self.embed_dims.iter().enumerate().map(info).collect()
    }

    fn check(&self) -> std::result::Result<(), String> {
        let n = self.depths.len();
        if n != 4 || self.embed_dims.len() != 4 || self.num_heads.len() != 4 {
            return Err(format!(
                "depths, embed_dims and num_heads must have 4 entries (the reference's four stages), got {}, {} and {}",
                n,
                self.embed_dims.len(),
                self.num_heads.len()
            ));
        }
        if let Some(d) = self.embed_dims.iter().find(|&&d| !(2..=16_384).contains(&d)) {
            return Err(format!("every embed_dim must be in 2..=16384, got {d}"));
        }
        if let Some(d) = self.depths.iter().find(|&&d| !(1..=1000).contains(&d)) {
            return Err(format!("every stage depth must be in 1..=1000, got {d}"));
        }
        for (&dim, &heads) in self.embed_dims.iter().zip(&self.num_heads) {
            if heads == 0 || heads > dim {
                return Err(format!("num_heads {heads} must be in 1..={dim} for embed_dim {dim}"));
            }
        }
        let blocks: usize = self.depths.iter().sum();
        if self.attention_heads.len() != blocks {
            return Err(format!(
                "attention_heads must have one entry per block ({blocks}), got {}",
                self.attention_heads.len()
            ));
        }
        if !(32..=4096).contains(&self.img_size) {
            return Err(format!("img_size must be in 32..=4096, got {}", self.img_size));
        }
        for (i, j) in self.blocks() {
            self.mixer(i, j)
                .validate(self.embed_dims[i])
                .map_err(|e| format!("block {j}: {e}"))?;
        }
        Ok(())
    }

    fn ratios(&self) -> Vec<Ratio> {
        let ratio = |&dim| Ratio::of("mlp_ratio", self.mlp_ratio, dim);
        self.embed_dims.iter().map(ratio).collect()
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<IFormerArgs>(Self::NAME, args)?.apply(self);
        Ok(())
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let down = |n: usize| n.div_ceil(2);
        let (mut total, (mut sh, mut sw)) =
            crate::two_conv_stem_macs(self.in_chans, self.embed_dims[0], h, w);
        for (i, j) in self.blocks() {
            if i > 0 && j == self.depths[..i].iter().sum::<usize>() {
                (sh, sw) = (down(sh), down(sw));
                total += (sh * sw * 9 * self.embed_dims[i - 1] * self.embed_dims[i]) as u64;
            }
            let dim = self.embed_dims[i];
            let hidden = (self.mlp_ratio * dim as f64) as u64;
            let mlp = 2 * (sh * sw) as u64 * dim as u64 * hidden;
            total += self.mixer(i, j).macs(dim, sh, sw) + mlp;
        }
        total + (self.embed_dims[3] * self.num_classes) as u64
    }
}

/// Bilinear interpolation weights from `n` to `m` samples as PyTorch's `F.interpolate(...,
/// mode="bilinear", align_corners=False)` computes them: `(m, n)`, each row two taps.
fn bilinear_matrix(m: usize, n: usize, dev: &candle_core::Device) -> Result<Tensor> {
    let mut w = vec![0f32; m * n];
    let scale = n as f64 / m as f64;
    for (o, row) in w.chunks_exact_mut(n).enumerate() {
        let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        let frac = (src - i0 as f64) as f32;
        row[i0] += 1.0 - frac;
        row[i1] += frac;
    }
    Tensor::from_vec(w, (m, n), dev)
}

/// A stage's position embedding `(1, n, n, C)` (`pos_embed{i}`) added to a channel-last map,
/// resized bilinearly when the map is not `n x n` (two products, so it trains at any size).
fn add_position(x: &Tensor, pos: &Tensor) -> Result<Tensor> {
    let (_, h, w, _) = x.dims4()?;
    let (_, n, m, _) = pos.dims4()?;
    if (h, w) == (n, m) {
        return x.broadcast_add(pos);
    }
    let dev = x.device();
    let rows = bilinear_matrix(h, n, dev)?.to_dtype(pos.dtype())?;
    let cols = bilinear_matrix(w, m, dev)?.to_dtype(pos.dtype())?;
    let resized = tokenmix_mixers::layers::separable_product(pos, &rows, &cols)?;
    x.broadcast_add(&resized)
}

/// The reference's `Block` on channel-last `(B, H, W, C)`.
#[derive(Debug)]
struct Block {
    norm1: Norm,
    mixer: InceptionMixer,
    scale1: Option<Scale>,
    norm2: Norm,
    mlp: Mlp,
    drop_path: DropPath,
}

impl Block {
    fn new(cfg: &IFormerConfig, i: usize, j: usize, drop_path: DropPath, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.embed_dims[i];
        let cl = MixerLayout::ChannelsLast;
        let ln = NormConfig::LAYER_NORM;
        let scaled = cfg.use_layer_scale && i >= 2;
        let scale = |name: &str| scaled.then(|| Scale::new_named(dim, cl, name, vb.clone())).transpose();
        let hidden = (cfg.mlp_ratio * dim as f64) as usize;
        Ok(Self {
            norm1: ln.build(dim, cl, vb.pp("norm1"))?,
            mixer: InceptionMixer::new(&cfg.mixer(i, j), dim, vb.pp("attn"))?,
            scale1: scale("layer_scale_1")?,
            norm2: ln.build(dim, cl, vb.pp("norm2"))?,
            mlp: Mlp::new(dim, hidden, ActKind::Gelu, true, cl, vb.pp("mlp"))?
                .with_output_scale(scale("layer_scale_2")?),
            drop_path,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mixed = self.mixer.forward(&self.norm1.forward(x)?)?;
        let mixed = match &self.scale1 {
            Some(s) => s.forward(&mixed)?,
            None => mixed,
        };
        let x = (x + self.drop_path.forward_t(&mixed, train)?)?;
        self.mlp
            .forward_residual(&self.norm2.forward(&x)?, &x, self.drop_path, train)
    }
}

/// One stage: the patch embedding in front of it (the stem for the first), its position
/// embedding and blocks.
#[derive(Debug)]
struct Stage {
    embed: Vec<ConvBnNhwc>,
    pos: Tensor,
    blocks: Vec<Block>,
}

/// An Inception Transformer image classifier.
#[derive(Debug)]
pub struct IFormer {
    cfg: IFormerConfig,
    stages: Vec<Stage>,
    /// `norm` and `head`; `None` once pruned.
    head: Option<(Norm, Option<Linear>)>,
}

fn conv_bn(cin: usize, cout: usize, conv: VarBuilder, bn: VarBuilder) -> Result<ConvBnNhwc> {
    crate::conv_bn_3x3_s2(cin, cout, true, conv, bn)
}

impl IFormer {
    /// Builds the model, reading every tensor from `vb` under the reference's names.
    pub fn new(cfg: &IFormerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let total: usize = cfg.depths.iter().sum();
        let mut drop_paths = drop_path_rates(cfg.drop_path_rate, total).into_iter();
        let mut blocks_of = cfg.blocks().peekable();
        let mut stages = Vec::with_capacity(4);
        for i in 0..4 {
            let dim = cfg.embed_dims[i];
            let embed = if i == 0 {
                let p = vb.pp("patch_embed");
                vec![
                    conv_bn(cfg.in_chans, dim / 2, p.pp("proj1"), p.pp("norm1"))?,
                    conv_bn(dim / 2, dim, p.pp("proj2"), p.pp("norm2"))?,
                ]
            } else {
                let p = vb.pp(format!("patch_embed{}", i + 1));
                vec![conv_bn(cfg.embed_dims[i - 1], dim, p.pp("proj"), p.pp("norm"))?]
            };
            let side = cfg.pos_side(i);
            let pos = vb.get((1, side, side, dim), &format!("pos_embed{}", i + 1))?;
            let stage_vb = vb.pp(format!("blocks{}", i + 1));
            let mut blocks = Vec::with_capacity(cfg.depths[i]);
            for k in 0..cfg.depths[i] {
                let (_, j) = blocks_of.next().unwrap_or((i, 0));
                let dp = drop_paths.next().unwrap_or(DropPath::new(0.0));
                blocks.push(Block::new(cfg, i, j, dp, stage_vb.pp(k))?);
            }
            stages.push(Stage { embed, pos, blocks });
        }
        let last = cfg.embed_dims[3];
        let head = (
            NormConfig::LAYER_NORM.build(last, MixerLayout::ChannelsLast, vb.pp("norm"))?,
            crate::optional_linear(last, cfg.num_classes, vb.pp("head"))?,
        );
        Ok(Self {
            cfg: cfg.clone(),
            stages,
            head: Some(head),
        })
    }
}

impl ImageModel for IFormer {
    fn in_chans(&self) -> usize {
        self.cfg.in_chans
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let all: Vec<usize> = (0..self.stages.len()).collect();
        self.forward_intermediates_t(x, &all, false, train)
    }

    /// `norm` is ignored: the head norm belongs to the classifier.
    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        _norm: bool,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let last = check_take(take, self.stages.len())?;
        let mut x = x.permute((0, 2, 3, 1))?.contiguous()?;
        let mut features = Vec::with_capacity(take.len());
        for (i, stage) in self.stages.iter().enumerate().take(last + 1) {
            for (k, conv) in stage.embed.iter().enumerate() {
                x = conv.forward(&x)?;
                if k + 1 < stage.embed.len() {
                    x = tokenmix_kernels::gelu(&x)?;
                }
            }
            x = add_position(&x, &stage.pos)?;
            for block in &stage.blocks {
                x = block.forward_t(&x, train)?;
            }
            if take.contains(&i) {
                features.push(x.permute((0, 3, 1, 2))?.contiguous()?);
            }
        }
        Ok(features)
    }

    fn feature_info(&self) -> Vec<FeatureInfo> {
        self.cfg.feature_info()
    }

    fn prune_intermediate_layers(&mut self, indices: &Indices) -> Result<Vec<usize>> {
        let (take, kept) = truncate_after_last(&mut self.stages, indices)?;
        self.cfg.depths.truncate(kept);
        self.cfg.embed_dims.truncate(kept);
        self.cfg.num_classes = 0;
        self.head = None;
        Ok(take)
    }

    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        let Some((_, fc)) = &mut self.head else {
            return pruned_error();
        };
        *fc = crate::optional_linear(self.cfg.embed_dims[3], num_classes, vb.pp("head"))?;
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    /// `LN` over the last map's tokens, their mean, the classifier.
    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        let Some((norm, fc)) = &self.head else {
            return tokenmix_mixers::layers::global_avg_pool(last);
        };
        let tokens = norm.forward(&last.permute((0, 2, 3, 1))?.contiguous()?)?;
        let pooled = tokenmix_mixers::layers::position_mean(&tokens)?;
        match fc {
            Some(fc) => fc.forward(&pooled),
            None => Ok(pooled),
        }
    }
}
