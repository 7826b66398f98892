//! MS-MLP (Mix-Shift-MLP, arXiv 2202.06510) with the tensor names of JegZheng/MS-MLP
//! (`models/ms_mlp.py`, class `MS_MLP`).
//!
//! A four-stage pyramid on `(B, C, H, W)`: a patch embedding (conv + LayerNorm), stages of
//! mix-shift blocks each followed (except the last) by a 2x2 patch embedding that doubles the
//! width, then global average pooling, LayerNorm and a linear head. No weight depends on the
//! input size, so any input whose side survives the strides is accepted (the reference asserts
//! its configured `img_size`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_mixers::layers::{drop_path_rates, DropPath, Norm, NormConfig, Pointwise, Scale};
use tokenmix_mixers::shift::MixShiftConfig;
use tokenmix_mixers::{MixerConfig, MixerLayout, TokenMixer};

use crate::args::{parse, set};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, PretrainedCfg};
use crate::features::{check_take, pruned_error, truncate_after_last};
use crate::{Architecture, Error, Family, FeatureInfo, ImageModel, Indices, Ratio};

/// Hyper-parameters of an [`MsMlp`], named as `MS_MLP`'s constructor arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsMlpConfig {
    /// Input image channels.
    pub in_chans: usize,
    /// Classifier outputs; 0 means none (the head returns pooled features).
    pub num_classes: usize,
    /// Side of the square patches of the stem.
    pub patch_size: usize,
    /// Channels of the first stage; stage `i` has `embed_dim * 2^i`.
    pub embed_dim: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Roll distance of each channel group.
    pub shift_dist: Vec<i32>,
    /// Per stage, the depthwise kernel size of each channel group.
    pub mix_size: Vec<Vec<usize>>,
    /// Hidden width of the block MLPs as a multiple of the stage width.
    pub mlp_ratio: f64,
    /// Whether the stem's patch embedding is followed by a LayerNorm (the downsamplers always
    /// are, as in the reference).
    pub patch_norm: bool,
    /// Stochastic depth of the last block in training (linear from 0); 0 for inference.
    #[serde(default)]
    pub drop_path_rate: f64,
}

impl MsMlpConfig {
    /// MS-MLP with the released configs' shifts and mix sizes.
    pub fn new(embed_dim: usize, depths: [usize; 4]) -> Self {
        Self {
            in_chans: 3,
            num_classes: 1000,
            patch_size: 4,
            embed_dim,
            depths: depths.to_vec(),
            shift_dist: vec![-2, -1, 0, 1, 2],
            mix_size: vec![
                vec![1, 1, 3, 5, 7],
                vec![1, 3, 3, 5, 7],
                vec![1, 5, 5, 5, 7],
                vec![1, 7, 7, 7, 7],
            ],
            mlp_ratio: 4.0,
            patch_norm: true,
            drop_path_rate: 0.0,
        }
    }

    fn dim(&self, stage: usize) -> usize {
        self.embed_dim << stage
    }

    fn mixer(&self, stage: usize) -> MixerConfig {
        MixerConfig::new(MixShiftConfig {
            shift_dist: self.shift_dist.clone(),
            mix_size: self.mix_size[stage].clone(),
        })
    }
}

/// `model_args` of an MS-MLP, named as `MS_MLP`'s constructor arguments; `img_size` (the
/// reference's input check), dropout and `use_checkpoint` are accepted and ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MsMlpArgs {
    in_chans: Option<usize>,
    num_classes: Option<usize>,
    drop_path_rate: Option<f64>,
    embed_dim: Option<usize>,
    patch_size: Option<usize>,
    depths: Option<Vec<usize>>,
    mlp_ratio: Option<f64>,
    patch_norm: Option<bool>,
    shift_dist: Option<Vec<i32>>,
    /// Must be the length of `shift_dist`.
    shift_size: Option<usize>,
    mix_size: Option<Vec<Vec<usize>>>,
    #[serde(rename = "img_size")]
    _img_size: Option<IgnoredAny>,
    #[serde(rename = "drop_rate")]
    _drop_rate: Option<IgnoredAny>,
    #[serde(rename = "use_checkpoint")]
    _use_checkpoint: Option<IgnoredAny>,
}

impl MsMlpArgs {
    fn apply(self, cfg: &mut MsMlpConfig) -> crate::Result<()> {
        set(&mut cfg.in_chans, self.in_chans);
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.drop_path_rate, self.drop_path_rate);
        set(&mut cfg.embed_dim, self.embed_dim);
        set(&mut cfg.patch_size, self.patch_size);
        set(&mut cfg.depths, self.depths);
        set(&mut cfg.mlp_ratio, self.mlp_ratio);
        set(&mut cfg.patch_norm, self.patch_norm);
        set(&mut cfg.shift_dist, self.shift_dist);
        set(&mut cfg.mix_size, self.mix_size);
        match self.shift_size {
            Some(n) if n != cfg.shift_dist.len() => Err(Error::config(
                format!("model_args of a {} model", MsMlpConfig::NAME),
                format!(
                    "shift_size = {n}: must be the number of entries of shift_dist ({})",
                    cfg.shift_dist.len()
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl Family for MsMlpConfig {
    const NAME: &'static str = "ms_mlp";

    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("msmlp_tiny", "msmlp", Some(82.1), ArchConfig::new(MsMlpConfig::new(96, [3, 3, 9, 3])), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("msmlp_small", "msmlp", Some(83.4), ArchConfig::new(MsMlpConfig::new(96, [3, 3, 27, 3])), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("msmlp_base", "msmlp", Some(83.8), ArchConfig::new(MsMlpConfig::new(128, [3, 3, 27, 3])), pretrained: PretrainedCfg::metaformer(0.875)),
    ];
}

impl Architecture for MsMlpConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(MsMlp::new(self, vb)?))
    }

    /// Every stage, `layers.{i}` (before its downsampler): the patch stride, doubled by each
    /// earlier stage's downsampler.
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let info = |i| FeatureInfo::new(self.dim(i), self.patch_size << i, format!("layers.{i}"));
        (0..self.depths.len()).map(info).collect()
    }

    crate::arch::common_fields!();

    fn check(&self) -> std::result::Result<(), String> {
        let n = self.depths.len();
        if n == 0 || n > 8 || self.mix_size.len() != n {
            return Err(format!(
                "need 1..=8 stages with one mix_size list each, got {n} and {}",
                self.mix_size.len()
            ));
        }
        if self.patch_size == 0 {
            return Err("patch_size must be positive".into());
        }
        if self.embed_dim == 0 || self.dim(n - 1) > 65_536 || self.depths.iter().any(|&d| d > 1000)
        {
            return Err(format!(
                "embed_dim {} with {n} stages is out of range",
                self.embed_dim
            ));
        }
        for i in 0..n {
            self.mixer(i)
                .validate(self.dim(i))
                .map_err(|e| format!("stage {i}: {e}"))?;
        }
        Ok(())
    }

    fn ratios(&self) -> Vec<Ratio> {
        let ratio = |i| Ratio::of("mlp_ratio", self.mlp_ratio, self.dim(i));
        (0..self.depths.len()).map(ratio).collect()
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<MsMlpArgs>(Self::NAME, args)?.apply(self)
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let p = self.patch_size;
        let (mut sh, mut sw) = (h / p, w / p);
        let mut total = (sh * sw * self.embed_dim * self.in_chans * p * p) as u64;
        for (i, &depth) in self.depths.iter().enumerate() {
            let dim = self.dim(i);
            let n = (sh * sw) as u64;
            let hidden = (self.mlp_ratio * dim as f64) as u64;
            let block = self.mixer(i).macs(dim, sh, sw) + 2 * n * dim as u64 * hidden;
            total += block * depth as u64;
            if i + 1 < self.depths.len() {
                (sh, sw) = (sh / 2, sw / 2);
                total += (sh * sw * 2 * dim * dim * 4) as u64;
            }
        }
        total + (self.dim(self.depths.len() - 1) * self.num_classes) as u64
    }
}

/// Conv `k x k / k` then LayerNorm over channels (`proj`, `norm`).
#[derive(Debug)]
struct PatchEmbed {
    proj: Conv2d,
    norm: Option<Norm>,
}

impl PatchEmbed {
    fn new(cin: usize, cout: usize, k: usize, norm: bool, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig {
            stride: k,
            ..Default::default()
        };
        Ok(Self {
            proj: candle_nn::conv2d(cin, cout, k, cfg, vb.pp("proj"))?,
            norm: norm
                .then(|| NormConfig::LAYER_NORM.build(cout, MixerLayout::Spatial, vb.pp("norm")))
                .transpose()?,
        })
    }
}

impl Module for PatchEmbed {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let cfg = self.proj.config();
        let mut x = tokenmix_kernels::conv2d(
            x,
            self.proj.weight(),
            cfg.padding,
            cfg.stride,
            cfg.dilation,
            cfg.groups,
        )?;
        if let Some(b) = self.proj.bias() {
            x = x.broadcast_add(&b.reshape((b.elem_count(), 1, 1))?)?;
        }
        match &self.norm {
            Some(n) => n.forward(&x),
            None => Ok(x),
        }
    }
}

/// `x + gamma * pwconv2(GELU(pwconv1(norm(mix_shift(x)))))` on `(B, C, H, W)`.
#[derive(Debug)]
struct Block {
    mixer: Box<dyn TokenMixer>,
    norm: Norm,
    pwconv1: Pointwise,
    pwconv2: Pointwise,
    gamma: Scale,
    drop_path: DropPath,
}

impl Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.norm.forward(&self.mixer.forward(x)?)?;
        let y = self
            .pwconv2
            .forward(&tokenmix_kernels::gelu(&self.pwconv1.forward(&y)?)?)?;
        x + self.drop_path.forward_t(&self.gamma.forward(&y)?, train)?
    }
}

#[derive(Debug)]
struct Stage {
    blocks: Vec<Block>,
    downsample: Option<PatchEmbed>,
}

/// An MS-MLP classifier.
#[derive(Debug)]
pub struct MsMlp {
    cfg: MsMlpConfig,
    patch_embed: PatchEmbed,
    stages: Vec<Stage>,
    /// `None` once pruned.
    norm: Option<Norm>,
    head: Option<Linear>,
}

impl MsMlp {
    /// Builds the model, reading every tensor from `vb` under MS-MLP's names.
    pub fn new(cfg: &MsMlpConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let sp = MixerLayout::Spatial;
        let n = cfg.depths.len();
        let mut stages = Vec::with_capacity(n);
        let mut drop_paths =
            drop_path_rates(cfg.drop_path_rate, cfg.depths.iter().sum()).into_iter();
        for (i, &depth) in cfg.depths.iter().enumerate() {
            let (dim, l) = (cfg.dim(i), vb.pp("layers").pp(i));
            let hidden = (cfg.mlp_ratio * dim as f64) as usize;
            let blocks = (0..depth)
                .map(|j| {
                    let b = l.pp("blocks").pp(j);
                    Ok(Block {
                        mixer: cfg.mixer(i).build(dim, b.clone())?,
                        norm: NormConfig::LAYER_NORM.build(dim, sp, b.pp("norm"))?,
                        pwconv1: Pointwise::from_linear(dim, hidden, true, sp, b.pp("pwconv1"))?,
                        pwconv2: Pointwise::from_linear(hidden, dim, true, sp, b.pp("pwconv2"))?,
                        gamma: Scale::new_named(dim, sp, "gamma", b)?,
                        drop_path: drop_paths.next().unwrap_or(DropPath::new(0.0)),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let downsample = (i + 1 < n)
                .then(|| PatchEmbed::new(dim, 2 * dim, 2, true, l.pp("downsample")))
                .transpose()?;
            stages.push(Stage { blocks, downsample });
        }
        let last = cfg.dim(n - 1);
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed: PatchEmbed::new(
                cfg.in_chans,
                cfg.embed_dim,
                cfg.patch_size,
                cfg.patch_norm,
                vb.pp("patch_embed"),
            )?,
            stages,
            norm: Some(NormConfig::LAYER_NORM.build(last, MixerLayout::Tokens, vb.pp("norm"))?),
            head: crate::optional_linear(last, cfg.num_classes, vb.pp("head"))?,
        })
    }
}

impl ImageModel for MsMlp {
    fn in_chans(&self) -> usize {
        self.cfg.in_chans
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    /// Every stage's output before its downsampling.
    fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let all: Vec<usize> = (0..self.stages.len()).collect();
        self.forward_intermediates_t(x, &all, false, train)
    }

    /// `norm` is ignored: the final norm follows the pooling.
    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        _norm: bool,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let last = check_take(take, self.stages.len())?;
        let (_, _, h, w) = x.dims4()?;
        let min = self.cfg.patch_size << (self.stages.len() - 1);
        if h < min || w < min {
            candle_core::bail!("MS-MLP needs inputs of at least {min}x{min}, got {h}x{w}")
        }
        let mut x = self.patch_embed.forward(x)?;
        let mut features = Vec::with_capacity(take.len());
        for (i, stage) in self.stages.iter().enumerate().take(last + 1) {
            for block in &stage.blocks {
                x = block.forward_t(&x, train)?;
            }
            if take.contains(&i) {
                features.push(x.clone());
            }
            if i == last {
                break;
            }
            if let Some(d) = &stage.downsample {
                x = d.forward(&x)?;
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
        self.cfg.depths.truncate(kept);
        self.cfg.mix_size.truncate(kept);
        self.cfg.num_classes = 0;
        self.norm = None;
        self.head = None;
        Ok(take)
    }

    /// The classifier is `head`, after the final norm (kept).
    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        if self.norm.is_none() {
            return pruned_error();
        }
        let dim = self.cfg.dim(self.stages.len() - 1);
        self.head = crate::optional_linear(dim, num_classes, vb.pp("head"))?;
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        let pooled = tokenmix_mixers::layers::global_avg_pool(last)?;
        let pooled = match &self.norm {
            Some(norm) => norm.forward(&pooled)?,
            None => pooled,
        };
        match &self.head {
            Some(fc) => fc.forward(&pooled),
            None => Ok(pooled),
        }
    }
}
