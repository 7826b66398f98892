//! CAS-ViT (Zhang et al., "CAS-ViT: Convolutional Additive Self-attention Vision Transformers
//! for Efficient Mobile Applications", arXiv 2408.03703) with the tensor names and registered
//! names of Tianfang-Zhang/CAS-ViT (`classification/model/rcvit.py`, `RCViT`, `rcvit_{xs,s,m,t}`).
//!
//! Inputs and features are channel-first `(B, C, H, W)`; inside, the model runs channel-last
//! `(B, H, W, C)` (one matrix product per 1x1 convolution, the fused residual MLP), and every
//! batch norm that sits next to a convolution or product is folded into it. A stem of two `conv 3x3 / 2 -> BN -> ReLU`,
//! stages of additive blocks (`x + local(x)`, `x + mixer(BN(x))`, `x + mlp(BN(x))`, with the
//! local integration `1x1 -> BN -> dw 3x3 -> GELU -> 1x1` and CAS-ViT's additive token mixer),
//! `conv 3x3 / 2 -> BN` between stages, and a head `BN -> mean -> (head + dist_head) / 2` (the
//! distillation head averaged in, as the reference does at evaluation). Batch norms use their
//! running statistics, in training too.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_kernels::depthwise_conv2d_nhwc;
use tokenmix_mixers::additive::{AdditiveTokenMixer, AdditiveTokenMixerConfig};
use tokenmix_mixers::layers::{drop_path_rates, global_avg_pool, BatchNorm, Derived, DropPath, Mlp};
use tokenmix_mixers::layers::{ActKind, ConvBnNhwc, Pointwise};
use tokenmix_mixers::{MixerConfig, MixerLayout, TokenMixer};

use crate::args::{parse, set};
use crate::features::{check_take, pruned_error, truncate_after_last};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, PretrainedCfg};
use crate::{Architecture, Family, FeatureInfo, ImageModel, Indices, Ratio};

/// Hyper-parameters of an [`RcVit`], named as the reference's `RCViT` keyword arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RcVitConfig {
    /// Input image channels (the reference's stem always takes 3).
    pub in_chans: usize,
    /// Classifier outputs; 0 means none (the head returns pooled, normed features).
    pub num_classes: usize,
    /// Blocks per stage.
    pub layers: Vec<usize>,
    /// Channels per stage.
    pub embed_dims: Vec<usize>,
    /// Hidden width of the block MLPs as a multiple of the stage width.
    pub mlp_ratios: f64,
    /// Per stage boundary, whether a `conv 3x3 / 2` downsampler follows the stage (one also
    /// follows wherever the width changes).
    pub downsamples: Vec<bool>,
    /// Whether the mixers' qkv projections have biases.
    pub attn_bias: bool,
    /// Whether the model has the distillation head `dist_head`, averaged with `head`.
    pub distillation: bool,
    /// Stochastic depth of the last block in training (linear from 0); 0 for inference.
    #[serde(default)]
    pub drop_path_rate: f64,
}

impl RcVitConfig {
    /// A CAS-ViT with the reference's defaults and the given depths and widths.
    pub fn new(layers: [usize; 4], embed_dims: [usize; 4]) -> Self {
        Self {
            in_chans: 3,
            num_classes: 1000,
            layers: layers.to_vec(),
            embed_dims: embed_dims.to_vec(),
            mlp_ratios: 4.0,
            downsamples: vec![true; 4],
            attn_bias: false,
            distillation: true,
            drop_path_rate: 0.0,
        }
    }

    fn mixer(&self) -> MixerConfig {
        MixerConfig::new(AdditiveTokenMixerConfig {
            attn_bias: self.attn_bias,
        })
    }

    /// Whether a downsampler follows stage `i` (the reference's rule).
    fn downsamples_after(&self, i: usize) -> bool {
        i + 1 < self.embed_dims.len()
            && (self.downsamples.get(i).copied().unwrap_or(false)
                || self.embed_dims[i] != self.embed_dims[i + 1])
    }

    /// Stride of each stage's output: 4 after the stem, doubled by every downsampler.
    fn strides(&self) -> Vec<usize> {
        let mut stride = 4;
        (0..self.embed_dims.len())
            .map(|i| {
                let s = stride;
                if self.downsamples_after(i) {
                    stride *= 2;
                }
                s
            })
            .collect()
    }

    /// The `network` index of stage `i` (downsamplers sit between stages).
    fn network_index(&self, i: usize) -> usize {
        i + (0..i).filter(|&j| self.downsamples_after(j)).count()
    }
}

/// `model_args` of a CAS-ViT, named as the reference's `RCViT` keyword arguments; dropout and
/// `fork_feat: false` are accepted (the dense-prediction fork is not built).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RcVitArgs {
    in_chans: Option<usize>,
    num_classes: Option<usize>,
    drop_path_rate: Option<f64>,
    layers: Option<Vec<usize>>,
    embed_dims: Option<Vec<usize>>,
    mlp_ratios: Option<f64>,
    downsamples: Option<Vec<bool>>,
    attn_bias: Option<bool>,
    distillation: Option<bool>,
    fork_feat: Option<Value>,
    #[serde(rename = "drop_rate")]
    _drop_rate: Option<IgnoredAny>,
}

impl RcVitArgs {
    fn apply(self, cfg: &mut RcVitConfig) -> crate::Result<()> {
        crate::args::only(RcVitConfig::NAME, "fork_feat", &self.fork_feat, false.into())?;
        set(&mut cfg.in_chans, self.in_chans);
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.drop_path_rate, self.drop_path_rate);
        set(&mut cfg.layers, self.layers);
        set(&mut cfg.embed_dims, self.embed_dims);
        set(&mut cfg.mlp_ratios, self.mlp_ratios);
        set(&mut cfg.downsamples, self.downsamples);
        set(&mut cfg.attn_bias, self.attn_bias);
        set(&mut cfg.distillation, self.distillation);
        Ok(())
    }
}

impl Family for RcVitConfig {
    const NAME: &'static str = "rc_vit";

    /// Top-1: the first (non-distilled) number of each pair in the authors' MODEL_ZOO.md.
    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("rcvit_xs", "casvit", Some(78.3), ArchConfig::new(RcVitConfig::new([2, 2, 4, 2], [48, 56, 112, 220])), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("rcvit_s", "casvit", Some(80.9), ArchConfig::new(RcVitConfig::new([3, 3, 6, 3], [48, 64, 128, 256])), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("rcvit_m", "casvit", Some(82.8), ArchConfig::new(RcVitConfig::new([3, 3, 6, 3], [64, 96, 192, 384])), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("rcvit_t", "casvit", Some(83.9), ArchConfig::new(RcVitConfig::new([3, 3, 6, 3], [96, 128, 256, 512])), pretrained: PretrainedCfg::metaformer(0.875)),
    ];
}

impl Architecture for RcVitConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(RcVit::new(self, vb)?))
    }

    crate::arch::common_fields!();

    /// Every stage, `network.{k}` (the reference's index, downsamplers included).
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let strides = self.strides();
        let info = |(i, &dim): (usize, &usize)| {
            FeatureInfo::new(dim, strides[i], format!("network.{}", self.network_index(i)))
        };
        self.embed_dims.iter().enumerate().map(info).collect()
    }

    fn check(&self) -> std::result::Result<(), String> {
        let n = self.layers.len();
        if n == 0 || n > 8 || self.embed_dims.len() != n {
            return Err(format!(
                "layers ({n}) and embed_dims ({}) must have the same 1..=8 entries",
                self.embed_dims.len()
            ));
        }
        if let Some(d) = self.embed_dims.iter().find(|&&d| !(2..=16_384).contains(&d)) {
            return Err(format!("every embed_dim must be in 2..=16384, got {d}"));
        }
        if let Some(d) = self.layers.iter().find(|&&d| d > 1000) {
            return Err(format!("every stage depth must be at most 1000, got {d}"));
        }
        for &dim in &self.embed_dims {
            self.mixer().validate(dim).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn ratios(&self) -> Vec<Ratio> {
        let ratio = |&dim| Ratio::of("mlp_ratios", self.mlp_ratios, dim);
        self.embed_dims.iter().map(ratio).collect()
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<RcVitArgs>(Self::NAME, args)?.apply(self)
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let down = |n: usize| n.div_ceil(2);
        let (mut total, (mut sh, mut sw)) =
            crate::two_conv_stem_macs(self.in_chans, self.embed_dims[0], h, w);
        for (i, (&dim, &depth)) in self.embed_dims.iter().zip(&self.layers).enumerate() {
            let n = (sh * sw) as u64;
            let (c, hidden) = (dim as u64, (self.mlp_ratios * dim as f64) as u64);
            let local = n * (2 * c * c + 9 * c);
            let mlp = 2 * n * c * hidden;
            total += depth as u64 * (local + self.mixer().macs(dim, sh, sw) + mlp);
            if self.downsamples_after(i) {
                (sh, sw) = (down(sh), down(sw));
                total += (sh * sw * dim * self.embed_dims[i + 1] * 9) as u64;
            }
        }
        let d = *self.embed_dims.last().unwrap_or(&0) as u64;
        let heads = if self.distillation { 2 } else { 1 };
        total + heads * d * self.num_classes as u64
    }
}

/// A `conv 3x3 / 2, padding 1` with bias, then a batch norm (the reference's `Embedding` and
/// stem convolutions), on channel-last maps, the norm folded into the convolution.
fn conv_bn(cin: usize, cout: usize, conv: VarBuilder, bn: VarBuilder) -> Result<ConvBnNhwc> {
    crate::conv_bn_3x3_s2(cin, cout, true, conv, bn)
}

/// The reference's `LocalIntegration`: `1x1 -> BN -> dw 3x3 -> GELU -> 1x1`, all with biases
/// (`network.0`, `.1`, `.2`, `.4`), on channel-last maps; the norm is folded into the first 1x1.
#[derive(Debug)]
struct LocalIntegration {
    expand: Pointwise,
    bn: BatchNorm,
    dw_weight: Tensor,
    dw_bias: Tensor,
    project: Pointwise,
    /// `expand` with `bn` folded in, kept unless trainable.
    folded: Derived<Pointwise>,
}

impl LocalIntegration {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let cl = MixerLayout::ChannelsLast;
        let dw = vb.pp(2);
        Ok(Self {
            expand: Pointwise::conv1x1(dim, dim, true, cl, vb.pp(0))?,
            bn: BatchNorm::new(dim, vb.pp(1))?,
            dw_weight: dw.get((dim, 1, 3, 3), "weight")?,
            dw_bias: dw.get(dim, "bias")?,
            project: Pointwise::conv1x1(dim, dim, true, cl, vb.pp(4))?,
            folded: Derived::default(),
        })
    }
}

impl Module for LocalIntegration {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let trainable = self.expand.trainable() || self.bn.trainable();
        let expand = self.folded.get(trainable, || {
            let (scale, shift) = self.bn.scale_shift()?;
            self.expand.with_output_affine(&scale, &shift)
        })?;
        let h = expand.forward(x)?;
        let h = depthwise_conv2d_nhwc(&h, &self.dw_weight, Some(&self.dw_bias), 1, 1)?;
        self.project.forward(&tokenmix_kernels::gelu(&h)?)
    }
}

/// The reference's `AdditiveBlock` on channel-last `(B, H, W, C)`: `x + local(x)`, then
/// `x + drop_path(mixer(norm1(x)))`, then `x + drop_path(mlp(norm2(x)))`. With frozen weights
/// `norm1` is folded into the mixer's q, k, v products and `norm2` into the MLP's `fc1` (exact:
/// the norms use their running statistics), so the block reads its input unnormed.
#[derive(Debug)]
struct Block {
    local: LocalIntegration,
    norm1: BatchNorm,
    mixer: AdditiveTokenMixer,
    norm2: BatchNorm,
    mlp: Mlp,
    drop_path: DropPath,
    folded: Derived<(AdditiveTokenMixer, Mlp)>,
}

impl Block {
    fn new(cfg: &RcVitConfig, dim: usize, drop_path: DropPath, vb: VarBuilder) -> Result<Self> {
        let hidden = (cfg.mlp_ratios * dim as f64) as usize;
        let cl = MixerLayout::ChannelsLast;
        Ok(Self {
            local: LocalIntegration::new(dim, vb.pp("local_perception").pp("network"))?,
            norm1: BatchNorm::new(dim, vb.pp("norm1"))?,
            mixer: AdditiveTokenMixer::new(dim, cfg.attn_bias, vb.pp("attn"))?,
            norm2: BatchNorm::new(dim, vb.pp("norm2"))?,
            mlp: Mlp::conv1x1(dim, hidden, ActKind::Gelu, true, cl, vb.pp("mlp"))?,
            drop_path,
            folded: Derived::default(),
        })
    }

    fn trainable(&self) -> bool {
        self.norm1.trainable()
            || self.norm2.trainable()
            || self.mixer.trainable()
            || self.mlp.trainable()
    }

    fn fold(&self) -> Result<(AdditiveTokenMixer, Mlp)> {
        let (s1, t1) = self.norm1.scale_shift()?;
        let (s2, t2) = self.norm2.scale_shift()?;
        Ok((
            self.mixer.with_input_affine(&s1, &t1)?,
            self.mlp.with_input_affine(&s2, &t2)?,
        ))
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = (x + self.local.forward(x)?)?;
        if self.trainable() {
            let mixed = self.mixer.forward(&self.norm1.forward_channels_last(&x)?)?;
            let x = (&x + self.drop_path.forward_t(&mixed, train)?)?;
            let normed = self.norm2.forward_channels_last(&x)?;
            return self
                .mlp
                .forward_residual(&normed, &x, self.drop_path, train);
        }
        let (mixer, mlp) = self.folded.get(false, || self.fold())?;
        let x = (&x + self.drop_path.forward_t(&mixer.forward(&x)?, train)?)?;
        mlp.forward_residual(&x, &x, self.drop_path, train)
    }
}

/// Blocks of one stage and the downsampler that follows it, if any.
#[derive(Debug)]
struct Stage {
    blocks: Vec<Block>,
    downsample: Option<ConvBnNhwc>,
}

/// `BN -> mean over (H, W) -> (head + dist_head) / 2`.
#[derive(Debug)]
struct Head {
    norm: BatchNorm,
    fc: Option<Linear>,
    dist: Option<Linear>,
}

/// A CAS-ViT image classifier.
#[derive(Debug)]
pub struct RcVit {
    cfg: RcVitConfig,
    stem: (ConvBnNhwc, ConvBnNhwc),
    stages: Vec<Stage>,
    /// `None` once pruned.
    head: Option<Head>,
}

impl RcVit {
    /// Builds the model, reading every tensor from `vb` under the reference's names.
    pub fn new(cfg: &RcVitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let (dim0, p) = (cfg.embed_dims[0], vb.pp("patch_embed"));
        let stem = (
            conv_bn(cfg.in_chans, dim0 / 2, p.pp(0), p.pp(1))?,
            conv_bn(dim0 / 2, dim0, p.pp(3), p.pp(4))?,
        );
        let mut drop_paths =
            drop_path_rates(cfg.drop_path_rate, cfg.layers.iter().sum()).into_iter();
        let net = vb.pp("network");
        let mut stages = Vec::with_capacity(cfg.layers.len());
        for (i, (&dim, &depth)) in cfg.embed_dims.iter().zip(&cfg.layers).enumerate() {
            let k = cfg.network_index(i);
            let blocks = (0..depth)
                .map(|j| {
                    let dp = drop_paths.next().unwrap_or(DropPath::new(0.0));
                    Block::new(cfg, dim, dp, net.pp(k).pp(j))
                })
                .collect::<Result<Vec<_>>>()?;
            let downsample = cfg
                .downsamples_after(i)
                .then(|| {
                    let d = net.pp(k + 1);
                    conv_bn(dim, cfg.embed_dims[i + 1], d.pp("proj"), d.pp("norm"))
                })
                .transpose()?;
            stages.push(Stage { blocks, downsample });
        }
        let last = *cfg.embed_dims.last().unwrap_or(&dim0);
        let head = Head {
            norm: BatchNorm::new(last, vb.pp("norm"))?,
            fc: crate::optional_linear(last, cfg.num_classes, vb.pp("head"))?,
            dist: if cfg.distillation {
                crate::optional_linear(last, cfg.num_classes, vb.pp("dist_head"))?
            } else {
                None
            },
        };
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            stages,
            head: Some(head),
        })
    }
}

impl ImageModel for RcVit {
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

    /// Only the last stage's map is laid out channel-first for the head.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let last = self.stages.len().saturating_sub(1);
        let features = self.forward_intermediates_t(x, &[last], false, train)?;
        match features.last() {
            Some(f) => self.forward_head(f),
            None => candle_core::bail!("model produced no features"),
        }
    }

    /// `norm` is ignored: the head norm belongs to the classifier (as `fork_feat` models
    /// norm each output with their own layers, which classification checkpoints lack).
    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        _norm: bool,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let last = check_take(take, self.stages.len())?;
        let x = x.permute((0, 2, 3, 1))?.contiguous()?;
        let stem = |x: &Tensor| -> Result<Tensor> { self.stem.0.forward(x)?.relu() };
        let mut x = self.stem.1.forward(&stem(&x)?)?.relu()?;
        let mut features = Vec::with_capacity(take.len());
        for (i, stage) in self.stages.iter().enumerate().take(last + 1) {
            for block in &stage.blocks {
                x = block.forward_t(&x, train)?;
            }
            if take.contains(&i) {
                features.push(x.permute((0, 3, 1, 2))?.contiguous()?);
            }
            if let Some(d) = &stage.downsample {
                if i < last {
                    x = d.forward(&x)?;
                }
            }
        }
        Ok(features)
    }

    fn feature_info(&self) -> Vec<FeatureInfo> {
        self.cfg.feature_info()
    }

    fn prune_intermediate_layers(&mut self, indices: &Indices) -> Result<Vec<usize>> {
        let (take, kept) = truncate_after_last(&mut self.stages, indices)?;
        if let Some(stage) = self.stages.last_mut() {
            stage.downsample = None;
        }
        self.cfg.layers.truncate(kept);
        self.cfg.embed_dims.truncate(kept);
        self.cfg.num_classes = 0;
        self.head = None;
        Ok(take)
    }

    /// The classifiers are `head` and, with distillation, `dist_head`.
    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        let Some(head) = &mut self.head else {
            return pruned_error();
        };
        let dim = *self.cfg.embed_dims.last().unwrap_or(&0);
        head.fc = crate::optional_linear(dim, num_classes, vb.pp("head"))?;
        head.dist = if self.cfg.distillation {
            crate::optional_linear(dim, num_classes, vb.pp("dist_head"))?
        } else {
            None
        };
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        let Some(head) = &self.head else {
            return global_avg_pool(last);
        };
        let pooled = global_avg_pool(&head.norm.forward(last)?)?;
        match (&head.fc, &head.dist) {
            (Some(fc), Some(dist)) => (fc.forward(&pooled)? + dist.forward(&pooled)?)? * 0.5,
            (Some(fc), None) => fc.forward(&pooled),
            _ => Ok(pooled),
        }
    }
}
