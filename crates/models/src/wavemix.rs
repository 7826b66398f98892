//! WaveMix and WaveMix-Lite (Jeevan & Sethi, arXiv 2203.03689 and 2205.14375) with the tensor
//! names and registered names of pranavphoenix/WaveMix (`Image_Classification/timm.py`:
//! `WaveMix`, `wavemix`, `wavemix_lite`; the configs of its `Saved_weights/*/*.py` scripts under
//! the scripts' names).
//!
//! An isotropic network: a stem (`patchify`: `conv 3x3 -> conv 3x3 -> conv p x p / p -> GELU ->
//! BN`; or `strided`: two `conv 3x3 / stride`), `depth` blocks `x + wave_block(x)` (see
//! [`tokenmix_mixers::wave`]; no norms around the mixer), a global average pool and a linear
//! classifier. Inputs and features are channel-first `(B, C, H, W)`; inside, the model runs
//! channel-last, with every batch norm folded into the convolution or transposed convolution in
//! front of it (unfolded while training; the statistics stay frozen).
//!
//! Checkpoints: the authors' `.pth` files come from `wavemix/classification.py`, whose
//! classifier is `pool.2`; `timm.py` (whose names tokenmix uses) calls it `head.2`. The rename is
//! declared in [`WaveMixConfig::checkpoint_renames`], so both load.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_kernels::Window;
use tokenmix_mixers::layers::{BatchNorm, ConvNhwc};
use tokenmix_mixers::wave::{WaveBlock, WaveBlockConfig};
use tokenmix_mixers::{MixerSpec, TokenMixer};

use crate::args::{parse, set};
use crate::features::{check_take, truncate_after_last};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, Common, PretrainedCfg};
use crate::{Architecture, Family, FeatureInfo, ImageModel, Indices};

/// The stem of a WaveMix (the reference's `initial_conv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialConv {
    /// `conv 3x3 (C/4) -> conv 3x3 (C/2) -> conv patch x patch / patch (C) -> GELU -> BN`
    /// (the reference spells it `pachify`; both spellings are read).
    #[serde(alias = "pachify")]
    Patchify,
    /// `conv 3x3 / stride (C/2) -> conv 3x3 / stride (C)`.
    Strided,
}

/// Hyper-parameters of a [`WaveMix`], named as the reference's `WaveMix` keyword arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaveMixConfig {
    /// Input image channels (the reference's stem always takes 3).
    pub in_chans: usize,
    /// Classifier outputs; 0 means none (the head returns pooled features).
    pub num_classes: usize,
    /// Number of wave blocks.
    pub depth: usize,
    /// Hidden width of the level MLPs as a multiple of `final_dim`.
    pub mult: usize,
    /// Output width of the level MLPs before their upsampling.
    pub ff_channel: usize,
    /// Width of every block (a multiple of 4).
    pub final_dim: usize,
    /// The reference's dropout in the level MLPs (accepted, not applied).
    pub dropout: f64,
    /// Depth of each block's Haar cascade, 1 to 4.
    pub level: usize,
    /// The stem.
    pub initial_conv: InitialConv,
    /// Patch size of the `patchify` stem's last convolution.
    pub patch_size: usize,
    /// Stride of each of the `strided` stem's two convolutions.
    pub stride: usize,
}

impl WaveMixConfig {
    /// The reference's defaults with `level`, `final_dim` (= `ff_channel`) and `depth`: a
    /// `patchify` stem with patch 4, `mult` 2, 1000 classes.
    pub fn new(level: usize, final_dim: usize, depth: usize) -> Self {
        Self {
            in_chans: 3,
            num_classes: 1000,
            depth,
            mult: 2,
            ff_channel: final_dim,
            final_dim,
            dropout: 0.5,
            level,
            initial_conv: InitialConv::Patchify,
            patch_size: 4,
            stride: 2,
        }
    }

    /// A config with a `strided` stem of `stride` and `num_classes` outputs.
    fn strided(mut self, stride: usize, num_classes: usize) -> Self {
        self.initial_conv = InitialConv::Strided;
        self.stride = stride;
        self.num_classes = num_classes;
        self
    }

    fn mixer(&self) -> WaveBlockConfig {
        WaveBlockConfig {
            level: self.level,
            mult: self.mult,
            ff_channel: Some(self.ff_channel),
            dropout: self.dropout,
        }
    }

    /// Total stride of the stem.
    fn reduction(&self) -> usize {
        match self.initial_conv {
            InitialConv::Patchify => self.patch_size,
            InitialConv::Strided => self.stride * self.stride,
        }
    }

    /// The stem's output size for an `h x w` image, and its multiply-accumulates.
    fn stem_macs(&self, h: usize, w: usize) -> (u64, (usize, usize)) {
        let c = self.final_dim;
        let conv = |n: usize, k: usize, s: usize, p: usize| (n + 2 * p - k) / s + 1;
        match self.initial_conv {
            InitialConv::Patchify => {
                let p = self.patch_size;
                let (ph, pw) = (h / p, w / p);
                let full = (h * w) as u64;
                let macs = full * 9 * (self.in_chans * (c / 4) + (c / 4) * (c / 2)) as u64
                    + (ph * pw * p * p * (c / 2) * c) as u64;
                (macs, (ph, pw))
            }
            InitialConv::Strided => {
                let s = self.stride;
                let (h1, w1) = (conv(h, 3, s, 1), conv(w, 3, s, 1));
                let (h2, w2) = (conv(h1, 3, s, 1), conv(w1, 3, s, 1));
                let macs = (h1 * w1 * 9 * self.in_chans * (c / 2) + h2 * w2 * 9 * (c / 2) * c) as u64;
                (macs, (h2, w2))
            }
        }
    }
}

/// `model_args` of a WaveMix, named as the reference's `WaveMix` keyword arguments.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaveMixArgs {
    in_chans: Option<usize>,
    num_classes: Option<usize>,
    depth: Option<usize>,
    mult: Option<usize>,
    ff_channel: Option<usize>,
    final_dim: Option<usize>,
    dropout: Option<f64>,
    level: Option<usize>,
    initial_conv: Option<InitialConv>,
    patch_size: Option<usize>,
    stride: Option<usize>,
    #[serde(rename = "pretrained")]
    _pretrained: Option<IgnoredAny>,
}

impl WaveMixArgs {
    fn apply(self, cfg: &mut WaveMixConfig) {
        set(&mut cfg.in_chans, self.in_chans);
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.depth, self.depth);
        set(&mut cfg.mult, self.mult);
        set(&mut cfg.ff_channel, self.ff_channel);
        set(&mut cfg.final_dim, self.final_dim);
        set(&mut cfg.dropout, self.dropout);
        set(&mut cfg.level, self.level);
        set(&mut cfg.initial_conv, self.initial_conv);
        set(&mut cfg.patch_size, self.patch_size);
        set(&mut cfg.stride, self.stride);
    }
}

/// The evaluation preprocessing of the CIFAR configs: 32², CIFAR-10 test-set mean and std as the
/// authors' `example_cifar10.py` normalizes (used for the CIFAR-100 configs too, whose scripts
/// give none), no resize.
fn cifar() -> PretrainedCfg {
    PretrainedCfg {
        input_size: vec![3, 32, 32],
        crop_pct: 1.0,
        mean: vec![0.4941, 0.4853, 0.4507],
        std: vec![0.2468, 0.2430, 0.2618],
        ..PretrainedCfg::default()
    }
}

/// timm.py's `_cfg`: 224², crop 1.0, bicubic, ImageNet mean and std.
fn imagenet() -> PretrainedCfg {
    PretrainedCfg::metaformer(1.0)
}

impl Family for WaveMixConfig {
    const NAME: &'static str = "wave_mix";

    /// `wavemix` and `wavemix_lite` as timm.py registers them (top-1 from their weights' file
    /// names); the others are the configs of the authors' `Saved_weights` scripts, named after
    /// the scripts (top-1 on their dataset, from the script names). The level-4 model's input is
    /// 256²: its maps must halve four times after the stride-4 stem, which the reference's 224²
    /// does not allow (its scripts give no size).
    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("wavemix", "wavemix", Some(75.06), ArchConfig::new(WaveMixConfig::new(3, 192, 16)), pretrained: imagenet()),
        entry!("wavemix_lite", "wavemix", Some(71.18), ArchConfig::new(WaveMixConfig::new(1, 192, 16)), pretrained: imagenet()),
        entry!("wavemix_73", "wavemix", Some(73.03), ArchConfig::new(WaveMixConfig::new(3, 256, 16)), pretrained: imagenet()),
        entry!("wavemix_level4_imagenet_70_42", "wavemix", Some(70.42), ArchConfig::new(WaveMixConfig::new(4, 256, 16).strided(2, 1000)), pretrained: PretrainedCfg { input_size: vec![3, 256, 256], ..imagenet() }),
        entry!("wavemix_cifar10_94_58", "wavemix", Some(94.58), ArchConfig::new(WaveMixConfig::new(1, 144, 7).strided(1, 10)), pretrained: PretrainedCfg { num_classes: 10, ..cifar() }),
        entry!("wavemix_cifar10_95_37", "wavemix", Some(95.37), ArchConfig::new(WaveMixConfig::new(1, 320, 8).strided(1, 10)), pretrained: PretrainedCfg { num_classes: 10, ..cifar() }),
        entry!("wavemix_cifar100_77_82", "wavemix", Some(77.82), ArchConfig::new(WaveMixConfig::new(1, 256, 8).strided(1, 100)), pretrained: PretrainedCfg { num_classes: 100, ..cifar() }),
        entry!("wavemix_cifar100_78_81", "wavemix", Some(78.81), ArchConfig::new(WaveMixConfig::new(1, 256, 10).strided(1, 100)), pretrained: PretrainedCfg { num_classes: 100, ..cifar() }),
    ];
}

impl Architecture for WaveMixConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(WaveMix::new(self, vb)?))
    }

    fn common(&self) -> Common {
        Common {
            in_chans: self.in_chans,
            num_classes: self.num_classes,
            drop_path_rate: None,
        }
    }

    fn set_common(&mut self, c: Common) {
        self.in_chans = c.in_chans;
        self.num_classes = c.num_classes;
    }

    /// Every block, `layers.{i}`, at the stem's stride.
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let info = |i| FeatureInfo::new(self.final_dim, self.reduction(), format!("layers.{i}"));
        (0..self.depth).map(info).collect()
    }

    fn check(&self) -> std::result::Result<(), String> {
        if !(1..=1000).contains(&self.depth) {
            return Err(format!("depth must be in 1..=1000, got {}", self.depth));
        }
        if !(4..=16_384).contains(&self.final_dim) {
            return Err(format!("final_dim must be in 4..=16384, got {}", self.final_dim));
        }
        if !(1..=65_536).contains(&self.ff_channel) {
            return Err(format!("ff_channel must be in 1..=65536, got {}", self.ff_channel));
        }
        match self.initial_conv {
            InitialConv::Patchify if !(1..=64).contains(&self.patch_size) => {
                return Err(format!("patch_size must be in 1..=64, got {}", self.patch_size));
            }
            InitialConv::Strided if !(1..=8).contains(&self.stride) => {
                return Err(format!("stride must be in 1..=8, got {}", self.stride));
            }
            _ => {}
        }
        let hidden = self.mult.saturating_mul(self.final_dim);
        if hidden > 65_536 {
            return Err(format!(
                "mult {} gives {hidden} hidden channels at final_dim {}; at most 65536",
                self.mult, self.final_dim
            ));
        }
        self.mixer()
            .validate(self.final_dim)
            .map_err(|e| e.to_string())
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<WaveMixArgs>(Self::NAME, args)?.apply(self);
        Ok(())
    }

    /// The classifier of the authors' `.pth` files (`wavemix/classification.py`) is `pool.2`.
    fn checkpoint_renames(&self) -> &'static [(&'static str, &'static str)] {
        &[("pool.2.", "head.2.")]
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let (stem, (gh, gw)) = self.stem_macs(h, w);
        let block = self.mixer().macs(self.final_dim, gh, gw);
        stem + self.depth as u64 * block + (self.final_dim * self.num_classes) as u64
    }
}

/// The stem on channel-last maps.
#[derive(Debug)]
enum Stem {
    /// Two 3x3 convolutions, then the patch convolution with its batch norm folded in after
    /// the GELU (not foldable: the norm follows the activation).
    Patchify {
        convs: [ConvNhwc; 3],
        norm: BatchNorm,
    },
    Strided([ConvNhwc; 2]),
}

impl Stem {
    fn new(cfg: &WaveMixConfig, vb: VarBuilder) -> Result<Self> {
        let (c, cin) = (cfg.final_dim, cfg.in_chans);
        let conv = |i: usize, cin, cout, k, stride, padding| {
            let window = Window {
                kernel: k,
                stride,
                padding,
            };
            ConvNhwc::new(cin, cout, window, true, vb.pp(i))
        };
        Ok(match cfg.initial_conv {
            InitialConv::Patchify => {
                let p = cfg.patch_size;
                Stem::Patchify {
                    convs: [
                        conv(0, cin, c / 4, 3, 1, 1)?,
                        conv(1, c / 4, c / 2, 3, 1, 1)?,
                        conv(2, c / 2, c, p, p, 0)?,
                    ],
                    norm: BatchNorm::new(c, vb.pp(4))?,
                }
            }
            InitialConv::Strided => {
                let s = cfg.stride;
                Stem::Strided([conv(0, cin, c / 2, 3, s, 1)?, conv(1, c / 2, c, 3, s, 1)?])
            }
        })
    }
}

impl Module for Stem {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Stem::Patchify { convs, norm } => {
                let x = convs[1].forward(&convs[0].forward(x)?)?;
                let x = tokenmix_kernels::gelu(&convs[2].forward(&x)?)?;
                norm.forward_channels_last(&x)
            }
            Stem::Strided(convs) => convs[1].forward(&convs[0].forward(x)?),
        }
    }
}

/// A WaveMix image classifier.
#[derive(Debug)]
pub struct WaveMix {
    cfg: WaveMixConfig,
    stem: Stem,
    layers: Vec<WaveBlock>,
    /// `head.2`; `None` without classes or once pruned.
    head: Option<Linear>,
}

impl WaveMix {
    /// Builds the model, reading every tensor from `vb` under timm.py's names.
    pub fn new(cfg: &WaveMixConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let mixer = cfg.mixer();
        let layers = (0..cfg.depth)
            .map(|i| WaveBlock::new(&mixer, cfg.final_dim, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            stem: Stem::new(cfg, vb.pp("conv"))?,
            layers,
            head: crate::optional_linear(cfg.final_dim, cfg.num_classes, vb.pp("head").pp(2))?,
        })
    }
}

impl ImageModel for WaveMix {
    fn in_chans(&self) -> usize {
        self.cfg.in_chans
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    /// The last block's map, as the other isotropic families give theirs.
    fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let last = self.layers.len().saturating_sub(1);
        self.forward_intermediates_t(x, &[last], false, train)
    }

    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        _norm: bool,
        _train: bool,
    ) -> Result<Vec<Tensor>> {
        let last = check_take(take, self.layers.len())?;
        let mut x = self
            .stem
            .forward(&x.permute((0, 2, 3, 1))?.contiguous()?)?;
        let mut features = Vec::with_capacity(take.len());
        for (i, block) in self.layers.iter().enumerate().take(last + 1) {
            x = (&x + block.forward(&x)?)?;
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
        let (take, kept) = truncate_after_last(&mut self.layers, indices)?;
        self.cfg.depth = kept;
        self.cfg.num_classes = 0;
        self.head = None;
        Ok(take)
    }

    /// The classifier is `head.2`; it sits on the pooled features, so it can be reset after
    /// pruning too.
    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        self.head = crate::optional_linear(self.cfg.final_dim, num_classes, vb.pp("head").pp(2))?;
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        crate::pool_and_classify(last, self.head.as_ref())
    }
}
