//! MambaOut: gated CNN blocks without state-space models (Yu & Wang, arXiv 2405.07992), with
//! timm's tensor names (`timm/models/mambaout.py`).
//!
//! Layout: the stem and downsamplers are convolutions on `(B, C, H, W)`; the blocks run on
//! channel-last maps `(B, H, W, C)`. `forward_features` returns `(B, C, H, W)` maps like every
//! other model.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_kernels::Window;
use tokenmix_mixers::gated_conv::{GatedConv, GatedConvConfig};
use tokenmix_mixers::layers::{drop_path_rates, ConvNhwc, DropPath, Norm, NormConfig, Scale};
use tokenmix_mixers::MixerLayout;

use crate::args::{only, parse, present, set};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, PretrainedCfg};
use crate::features::{check_take, pruned_error, truncate_after_last};
use crate::{Architecture, Family, FeatureInfo, ImageModel, Indices, Ratio};

/// Hyper-parameters of [`MambaOut`], named as timm's `MambaOut` kwargs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MambaOutConfig {
    /// Input image channels.
    pub in_chans: usize,
    /// Classifier outputs; 0 means none (the head returns its pre-logits).
    pub num_classes: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Channels per stage.
    pub dims: Vec<usize>,
    /// Hidden width of a gated block as a multiple of its width (8/3).
    pub expansion_ratio: f64,
    /// Depthwise kernel size (7).
    pub kernel_size: usize,
    /// Fraction of channels through the depthwise conv (1.0).
    pub conv_ratio: f64,
    /// Whether the stem normalizes between its two convolutions.
    pub stem_mid_norm: bool,
    /// Layer scale on the block branch (`ls.gamma`) when set.
    pub ls_init_value: Option<f64>,
    /// `conv` (conv then norm) or `conv_nf` (norm then conv) downsampling.
    pub downsample: String,
    /// Stochastic depth of the last block in training (linear from 0); 0 for inference.
    #[serde(default)]
    pub drop_path_rate: f64,
}

impl MambaOutConfig {
    /// A MambaOut with timm's defaults and the given depths and widths.
    pub fn new(depths: [usize; 4], dims: [usize; 4]) -> Self {
        Self {
            in_chans: 3,
            num_classes: 1000,
            depths: depths.to_vec(),
            dims: dims.to_vec(),
            expansion_ratio: 8.0 / 3.0,
            kernel_size: 7,
            conv_ratio: 1.0,
            stem_mid_norm: true,
            ls_init_value: None,
            downsample: "conv".into(),
            drop_path_rate: 0.0,
        }
    }

    fn mixer(&self) -> GatedConvConfig {
        GatedConvConfig {
            expansion_ratio: self.expansion_ratio,
            kernel_size: self.kernel_size,
            conv_ratio: self.conv_ratio,
        }
    }
}

/// `model_args` of a MambaOut, named as timm's `MambaOut` kwargs; dropout is accepted and
/// ignored, `global_pool` and `head_fn` only at the values tokenmix implements.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MambaOutArgs {
    in_chans: Option<usize>,
    num_classes: Option<usize>,
    drop_path_rate: Option<f64>,
    depths: Option<Vec<usize>>,
    dims: Option<Vec<usize>>,
    kernel_size: Option<usize>,
    expansion_ratio: Option<f64>,
    conv_ratio: Option<f64>,
    stem_mid_norm: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    ls_init_value: Option<Option<f64>>,
    downsample: Option<String>,
    global_pool: Option<Value>,
    head_fn: Option<Value>,
    #[serde(rename = "drop_rate")]
    _drop_rate: Option<IgnoredAny>,
}

impl MambaOutArgs {
    fn apply(self, cfg: &mut MambaOutConfig) -> crate::Result<()> {
        only(
            MambaOutConfig::NAME,
            "global_pool",
            &self.global_pool,
            "avg".into(),
        )?;
        only(
            MambaOutConfig::NAME,
            "head_fn",
            &self.head_fn,
            "default".into(),
        )?;
        set(&mut cfg.in_chans, self.in_chans);
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.drop_path_rate, self.drop_path_rate);
        set(&mut cfg.depths, self.depths);
        set(&mut cfg.dims, self.dims);
        set(&mut cfg.kernel_size, self.kernel_size);
        set(&mut cfg.expansion_ratio, self.expansion_ratio);
        set(&mut cfg.conv_ratio, self.conv_ratio);
        set(&mut cfg.stem_mid_norm, self.stem_mid_norm);
        set(&mut cfg.ls_init_value, self.ls_init_value);
        set(&mut cfg.downsample, self.downsample);
        Ok(())
    }
}

impl Family for MambaOutConfig {
    const NAME: &'static str = "mamba_out";

    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("mambaout_femto", "mambaout", Some(78.9), ArchConfig::new(MambaOutConfig::new([3, 3, 9, 3], [48, 96, 192, 288])), pretrained: PretrainedCfg::metaformer(1.0), hub: "in1k"),
        entry!("mambaout_kobe", "mambaout", Some(80.0), ArchConfig::new(MambaOutConfig::new([3, 3, 15, 3], [48, 96, 192, 288])), pretrained: PretrainedCfg::metaformer(1.0), hub: "in1k"),
        entry!("mambaout_tiny", "mambaout", Some(82.7), ArchConfig::new(MambaOutConfig::new([3, 3, 9, 3], [96, 192, 384, 576])), pretrained: PretrainedCfg::metaformer(1.0), hub: "in1k"),
        entry!("mambaout_small", "mambaout", Some(84.1), ArchConfig::new(MambaOutConfig::new([3, 4, 27, 3], [96, 192, 384, 576])), pretrained: PretrainedCfg::metaformer(1.0), hub: "in1k"),
        entry!("mambaout_base", "mambaout", Some(84.2), ArchConfig::new(MambaOutConfig::new([3, 4, 27, 3], [128, 256, 512, 768])), pretrained: PretrainedCfg::metaformer(1.0), hub: "in1k"),
    ];
}

impl Architecture for MambaOutConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(MambaOut::new(self, vb)?))
    }

    crate::arch::common_fields!();

    /// Every stage, `stages.{i}`: stride 4 after the stem, doubled by every later stage.
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let info =
            |(i, &dim): (usize, &usize)| FeatureInfo::new(dim, 4 << i, format!("stages.{i}"));
        self.dims.iter().enumerate().map(info).collect()
    }

    fn check(&self) -> std::result::Result<(), String> {
        let n = self.depths.len();
        if n == 0 || self.dims.len() != n {
            return Err(format!(
                "depths ({n}) and dims ({}) must be non-empty and of equal length",
                self.dims.len()
            ));
        }
        if let Some(d) = self.dims.iter().find(|&&d| !(2..=65_536).contains(&d)) {
            return Err(format!("every dim must be in 2..=65536, got {d}"));
        }
        if let Some(d) = self.depths.iter().find(|&&d| d > 1000) {
            return Err(format!("every depth must be at most 1000, got {d}"));
        }
        if !matches!(self.downsample.as_str(), "conv" | "conv_nf") {
            return Err(format!(
                "downsample must be 'conv' or 'conv_nf', got '{}'",
                self.downsample
            ));
        }
        for &dim in &self.dims {
            self.mixer().validate(dim).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn ratios(&self) -> Vec<Ratio> {
        let ratio = |&dim| Ratio::of("expansion_ratio", self.expansion_ratio, dim);
        self.dims.iter().map(ratio).collect()
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<MambaOutArgs>(Self::NAME, args)?.apply(self)
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let down = |n: usize| n.div_ceil(2);
        let (mut total, (mut sh, mut sw)) =
            crate::two_conv_stem_macs(self.in_chans, self.dims[0], h, w);
        let mut prev = self.dims[0];
        for (i, (&dim, &depth)) in self.dims.iter().zip(&self.depths).enumerate() {
            if i > 0 {
                (sh, sw) = (down(sh), down(sw));
                total += (sh * sw * dim * prev * 9) as u64;
            }
            prev = dim;
            total += self.mixer().macs(dim, sh, sw) * depth as u64;
        }
        let d = prev as u64;
        total + d * 4 * d + 4 * d * self.num_classes as u64
    }
}

/// A channel-last `conv 3x3 / 2, padding 1` with bias.
fn conv3x3_s2(cin: usize, cout: usize, vb: VarBuilder) -> Result<ConvNhwc> {
    let window = Window {
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    ConvNhwc::new(cin, cout, window, true, vb)
}

/// conv 3x3/2 -> [LN] -> GELU -> conv 3x3/2 -> LN on the image `(B, Cin, H, W)`, computed
/// channel-last and returning `(B, H/4, W/4, C)`.
#[derive(Debug)]
struct Stem {
    conv1: ConvNhwc,
    norm1: Option<Norm>,
    conv2: ConvNhwc,
    norm2: Norm,
}

impl Stem {
    fn new(cfg: &MambaOutConfig, vb: VarBuilder) -> Result<Self> {
        let (dim, half) = (cfg.dims[0], cfg.dims[0] / 2);
        let ln = NormConfig::LAYER_NORM;
        let cl = MixerLayout::ChannelsLast;
        Ok(Self {
            conv1: conv3x3_s2(cfg.in_chans, half, vb.pp("conv1"))?,
            norm1: cfg
                .stem_mid_norm
                .then(|| ln.build(half, cl, vb.pp("norm1")))
                .transpose()?,
            conv2: conv3x3_s2(half, dim, vb.pp("conv2"))?,
            norm2: ln.build(dim, cl, vb.pp("norm2"))?,
        })
    }
}

impl Module for Stem {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.conv1.forward(&x.permute((0, 2, 3, 1))?)?;
        if let Some(n) = &self.norm1 {
            x = n.forward(&x)?;
        }
        let x = self.conv2.forward(&tokenmix_kernels::gelu(&x)?)?;
        self.norm2.forward(&x)
    }
}

/// Channel-last in and out: conv 3x3/2 with the norm after (`conv`) or before (`conv_nf`).
#[derive(Debug)]
struct Downsample {
    conv: ConvNhwc,
    norm: Norm,
    norm_first: bool,
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.norm_first {
            self.conv.forward(&self.norm.forward(x)?)
        } else {
            self.norm.forward(&self.conv.forward(x)?)
        }
    }
}

/// MambaOut's block kind, `x + ls(gated_conv(norm(x)))` on `(B, H, W, C)`: the gated CNN
/// replaces both the mixer and the MLP of a MetaFormer block.
#[derive(Debug)]
struct Block {
    norm: Norm,
    mixer: GatedConv,
    ls: Option<Scale>,
    drop_path: DropPath,
}

impl Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.mixer.forward(&self.norm.forward(x)?)?;
        let y = match &self.ls {
            Some(ls) => ls.forward(&y)?,
            None => y,
        };
        x + self.drop_path.forward_t(&y, train)?
    }
}

#[derive(Debug)]
struct Stage {
    downsample: Option<Downsample>,
    blocks: Vec<Block>,
}

/// mean over (H, W) -> LN -> fc (4C) -> GELU -> LN -> fc (classes).
#[derive(Debug)]
struct Head {
    norm: Norm,
    pre_fc: Linear,
    pre_norm: Norm,
    fc: Option<Linear>,
}

/// A MambaOut image classifier.
#[derive(Debug)]
pub struct MambaOut {
    cfg: MambaOutConfig,
    stem: Stem,
    stages: Vec<Stage>,
    /// `None` once pruned.
    head: Option<Head>,
}

impl MambaOut {
    /// Builds the model, reading every tensor from `vb` under timm's names.
    pub fn new(cfg: &MambaOutConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let cl = MixerLayout::ChannelsLast;
        let ln = NormConfig::LAYER_NORM;
        let stem = Stem::new(cfg, vb.pp("stem"))?;
        let mut prev = cfg.dims[0];
        let mut stages = Vec::new();
        let mut drop_paths =
            drop_path_rates(cfg.drop_path_rate, cfg.depths.iter().sum()).into_iter();
        for (i, (&dim, &depth)) in cfg.dims.iter().zip(&cfg.depths).enumerate() {
            let vb = vb.pp("stages").pp(i);
            let downsample = if i == 0 {
                None
            } else {
                let d = vb.pp("downsample");
                let norm_first = cfg.downsample == "conv_nf";
                Some(Downsample {
                    conv: conv3x3_s2(prev, dim, d.pp("conv"))?,
                    norm: ln.build(if norm_first { prev } else { dim }, cl, d.pp("norm"))?,
                    norm_first,
                })
            };
            let blocks = (0..depth)
                .map(|j| {
                    let b = vb.pp("blocks").pp(j);
                    Ok(Block {
                        norm: ln.build(dim, cl, b.pp("norm"))?,
                        mixer: cfg.mixer().build(dim, b.clone())?,
                        ls: cfg
                            .ls_init_value
                            .map(|_| Scale::new_named(dim, cl, "gamma", b.pp("ls")))
                            .transpose()?,
                        drop_path: drop_paths.next().unwrap_or(DropPath::new(0.0)),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            stages.push(Stage { downsample, blocks });
            prev = dim;
        }
        let h = vb.pp("head");
        let hidden = 4 * prev;
        let head = Head {
            norm: ln.build(prev, MixerLayout::Tokens, h.pp("norm"))?,
            pre_fc: candle_nn::linear(prev, hidden, h.pp("pre_logits").pp("fc"))?,
            pre_norm: ln.build(hidden, MixerLayout::Tokens, h.pp("pre_logits").pp("norm"))?,
            fc: crate::optional_linear(hidden, cfg.num_classes, h.pp("fc"))?,
        };
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            stages,
            head: Some(head),
        })
    }
}

impl ImageModel for MambaOut {
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

    /// `norm` is ignored: the head norm follows the pooling (as timm).
    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        _norm: bool,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let last = check_take(take, self.stages.len())?;
        let mut x = self.stem.forward(x)?;
        let mut features = Vec::with_capacity(take.len());
        for (i, stage) in self.stages.iter().enumerate().take(last + 1) {
            if let Some(d) = &stage.downsample {
                x = d.forward(&x)?;
            }
            for block in &stage.blocks {
                x = block.forward_t(&x, train)?;
            }
            if take.contains(&i) {
                features.push(x.permute((0, 3, 1, 2))?);
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
        self.cfg.dims.truncate(kept);
        self.cfg.num_classes = 0;
        self.head = None;
        Ok(take)
    }

    /// The classifier is `head.fc`, after the head's pre-logits (kept).
    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        let Some(head) = &mut self.head else {
            return pruned_error();
        };
        let hidden = head.pre_fc.weight().dim(0)?;
        head.fc = crate::optional_linear(hidden, num_classes, vb.pp("head").pp("fc"))?;
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        let pooled = tokenmix_mixers::layers::global_avg_pool(last)?;
        let Some(head) = &self.head else {
            return Ok(pooled);
        };
        let h = head.pre_fc.forward(&head.norm.forward(&pooled)?)?;
        let h = tokenmix_kernels::gelu(&h)?;
        let h = head.pre_norm.forward(&h)?;
        match &head.fc {
            Some(fc) => fc.forward(&h),
            None => Ok(h),
        }
    }
}
