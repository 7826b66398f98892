//! NiNformer (Abdullah & Aydin, arXiv 2403.02411) with the tensor names and keyword arguments
//! of Abdullah-88/NiNformer (`ninformer.py` `NiNformer`, `train.py`
//! `NiNformerImageClassification`).
//!
//! An isotropic network on a fixed grid of patches: a `patch x patch / patch` convolution
//! (`patcher`), `num_layers` blocks `x + mgu(LN(x))`, `x + ffn(LN(x))` — one LayerNorm serves both
//! pre-norms, as in the reference — where `mgu` is the mixer gating unit of
//! [`tokenmix_mixers::ninformer`], a mean over tokens and a linear `classifier`. No final norm.
//!
//! The reference registers no model names: `ninformer_cifar10` is `train.py`'s CIFAR-10 model
//! (its defaults). `ninformer_s16_224` and `ninformer_b16_224` are tokenmix's ImageNet-sized
//! compositions (patch 16 at 224², widths of MLP-Mixer's S and B, `d_ffn = 2 d_model` as the
//! reference's CIFAR model), not the authors'. The token MLPs fix the input size.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_mixers::layers::{ActKind, ConvNhwc, Mlp, Norm};
use tokenmix_mixers::ninformer::{MixerGatingUnit, MixerGatingUnitConfig, TORCH_LAYER_NORM};
use tokenmix_mixers::{MixerLayout, MixerSpec, TokenMixer};

use crate::args::{parse, set};
use crate::features::{check_take, truncate_after_last};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, Common, PretrainedCfg};
use crate::{Architecture, Family, FeatureInfo, ImageModel, Indices};

/// Hyper-parameters of a [`NiNformer`], named as `NiNformerImageClassification`'s keyword
/// arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NiNformerConfig {
    /// Input `(height, width)`, fixed by the token MLPs (the reference takes a square
    /// `image_size`; `model_args` accept a number or `[height, width]`).
    pub image_size: (usize, usize),
    /// Side of the square patches.
    pub patch_size: usize,
    /// Input image channels.
    pub in_channels: usize,
    /// Classifier outputs; 0 means none (the head returns pooled features).
    pub num_classes: usize,
    /// Channels.
    pub d_model: usize,
    /// Hidden units of every MLP (the gate's token and channel MLPs and the block's FFN).
    pub d_ffn: usize,
    /// Number of blocks.
    pub num_layers: usize,
    /// The reference's dropout (accepted, not applied).
    pub dropout: f64,
}

impl NiNformerConfig {
    /// `NiNformerImageClassification`'s defaults: 32², patch 4, 256 channels, `d_ffn` 512,
    /// 4 blocks, 10 classes.
    pub fn cifar10() -> Self {
        Self {
            image_size: (32, 32),
            patch_size: 4,
            in_channels: 3,
            num_classes: 10,
            d_model: 256,
            d_ffn: 512,
            num_layers: 4,
            dropout: 0.5,
        }
    }

    /// tokenmix's ImageNet-sized composition: 224², patch 16, `d_model` channels, `d_ffn =
    /// 2 d_model`, 1000 classes.
    pub fn imagenet(d_model: usize, num_layers: usize) -> Self {
        Self {
            image_size: (224, 224),
            patch_size: 16,
            num_classes: 1000,
            d_model,
            d_ffn: 2 * d_model,
            num_layers,
            ..Self::cifar10()
        }
    }

    /// Patch grid `(rows, columns)`.
    pub fn grid(&self) -> (usize, usize) {
        let p = self.patch_size.max(1);
        (self.image_size.0 / p, self.image_size.1 / p)
    }

    fn seq_len(&self) -> usize {
        let (h, w) = self.grid();
        h * w
    }

    fn mixer(&self) -> MixerGatingUnitConfig {
        MixerGatingUnitConfig {
            seq_len: self.seq_len(),
            token_dim: self.d_ffn,
            channel_dim: self.d_ffn,
            dropout: self.dropout,
        }
    }
}

/// `model_args` of a NiNformer, named as `NiNformerImageClassification`'s keyword arguments
/// (`seq_len`, which the reference must be given equal to the number of patches, is checked
/// against it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NiNformerArgs {
    image_size: Option<crate::args::ImgSize>,
    patch_size: Option<usize>,
    in_channels: Option<usize>,
    num_classes: Option<usize>,
    d_model: Option<usize>,
    d_ffn: Option<usize>,
    seq_len: Option<usize>,
    num_layers: Option<usize>,
    dropout: Option<f64>,
}

impl NiNformerArgs {
    fn apply(self, cfg: &mut NiNformerConfig) -> crate::Result<()> {
        set(&mut cfg.image_size, self.image_size.map(|s| s.pair()));
        set(&mut cfg.patch_size, self.patch_size);
        set(&mut cfg.in_channels, self.in_channels);
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.d_model, self.d_model);
        set(&mut cfg.d_ffn, self.d_ffn);
        set(&mut cfg.num_layers, self.num_layers);
        set(&mut cfg.dropout, self.dropout);
        match self.seq_len {
            Some(n) if n != cfg.seq_len() => Err(crate::Error::config(
                "model_args of a ninformer model",
                format!(
                    "seq_len {n} is not the number of patches, {} ({}x{} / patch {})",
                    cfg.seq_len(),
                    cfg.image_size.0,
                    cfg.image_size.1,
                    cfg.patch_size
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// `train.py`'s preprocessing: 32², mean and std 0.5, no resize.
fn cifar() -> PretrainedCfg {
    PretrainedCfg {
        input_size: vec![3, 32, 32],
        crop_pct: 1.0,
        mean: vec![0.5; 3],
        std: vec![0.5; 3],
        num_classes: 10,
        ..PretrainedCfg::default()
    }
}

impl Family for NiNformerConfig {
    const NAME: &'static str = "ninformer";

    /// `ninformer_cifar10` is the reference's CIFAR-10 model; the `_224` ones are tokenmix's
    /// ImageNet-sized compositions (see the module docs). No weights are released.
    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("ninformer_cifar10", "ninformer", None, ArchConfig::new(NiNformerConfig::cifar10()), pretrained: cifar()),
        entry!("ninformer_s16_224", "ninformer", None, ArchConfig::new(NiNformerConfig::imagenet(384, 12)), pretrained: PretrainedCfg::inception(0.875)),
        entry!("ninformer_b16_224", "ninformer", None, ArchConfig::new(NiNformerConfig::imagenet(768, 12)), pretrained: PretrainedCfg::inception(0.875)),
    ];
}

impl Architecture for NiNformerConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(NiNformer::new(self, vb)?))
    }

    fn common(&self) -> Common {
        Common {
            in_chans: self.in_channels,
            num_classes: self.num_classes,
            drop_path_rate: None,
        }
    }

    fn set_common(&mut self, c: Common) {
        self.in_channels = c.in_chans;
        self.num_classes = c.num_classes;
    }

    /// Every block, `model.{i}`, at the patch stride.
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let info = |i| FeatureInfo::new(self.d_model, self.patch_size, format!("model.{i}"));
        (0..self.num_layers).map(info).collect()
    }

    fn check(&self) -> std::result::Result<(), String> {
        let (h, w) = self.image_size;
        let p = self.patch_size;
        if p == 0 || h == 0 || w == 0 || h % p != 0 || w % p != 0 || h > 16_384 || w > 16_384 {
            return Err(format!(
                "image_size {h}x{w} must be positive, at most 16384 and divisible by patch_size {p}"
            ));
        }
        if !(1..=65_536).contains(&self.d_model) || !(1..=1000).contains(&self.num_layers) {
            return Err(format!(
                "d_model must be in 1..=65536 and num_layers in 1..=1000, got {} and {}",
                self.d_model, self.num_layers
            ));
        }
        self.mixer()
            .validate(self.d_model)
            .map_err(|e| e.to_string())
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<NiNformerArgs>(Self::NAME, args)?.apply(self)
    }

    fn set_image_size(&mut self, h: usize, w: usize) {
        self.image_size = (h, w);
    }

    fn fixed_image_size(&self) -> Option<(usize, usize)> {
        Some(self.image_size)
    }

    /// At `image_size`; other sizes are not accepted.
    fn macs(&self, _h: usize, _w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let (n, d) = (self.seq_len() as u64, self.d_model as u64);
        let p2 = (self.patch_size * self.patch_size) as u64;
        let (gh, gw) = self.grid();
        let block = self.mixer().macs(self.d_model, gh, gw) + 2 * n * d * self.d_ffn as u64;
        n * d * self.in_channels as u64 * p2
            + block * self.num_layers as u64
            + d * self.num_classes as u64
    }
}

/// One NiNformer block (`NiNBlock`): `x + mgu(norm(x))`, then `x + ffn(norm(x))` with the same
/// norm.
#[derive(Debug)]
struct Block {
    norm: Norm,
    mgu: MixerGatingUnit,
    ffn: Mlp,
}

impl Block {
    fn new(cfg: &NiNformerConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let net = vb.pp("ffn").pp("net");
        Ok(Self {
            norm: TORCH_LAYER_NORM.build(d, MixerLayout::Tokens, vb.pp("norm"))?,
            mgu: MixerGatingUnit::new(&cfg.mixer(), d, vb.pp("mgu"))?,
            ffn: Mlp::from_parts(d, cfg.d_ffn, ActKind::Gelu, net.pp(0), net.pp(3))?,
        })
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.mgu.forward(&self.norm.forward(x)?)?)?;
        let no_drop = tokenmix_mixers::layers::DropPath::new(0.0);
        self.ffn
            .forward_residual(&self.norm.forward(&x)?, &x, no_drop, false)
    }
}

/// A NiNformer image classifier.
#[derive(Debug)]
pub struct NiNformer {
    cfg: NiNformerConfig,
    patcher: ConvNhwc,
    blocks: Vec<Block>,
    /// `classifier`; `None` without classes or once pruned.
    classifier: Option<Linear>,
}

impl NiNformer {
    /// Builds the model, reading every tensor from `vb` under the reference's names.
    pub fn new(cfg: &NiNformerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let d = cfg.d_model;
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::new(cfg, vb.pp("model").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            patcher: crate::patch_embed(cfg.in_channels, d, cfg.patch_size, vb.pp("patcher"))?,
            blocks,
            classifier: crate::optional_linear(d, cfg.num_classes, vb.pp("classifier"))?,
        })
    }
}

impl ImageModel for NiNformer {
    fn in_chans(&self) -> usize {
        self.cfg.in_channels
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    /// The last block's tokens as a `(B, C, H/p, W/p)` map.
    fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let last = self.blocks.len().saturating_sub(1);
        self.forward_intermediates_t(x, &[last], false, train)
    }

    /// Each block's tokens as `(B, C, H/p, W/p)` (there is no norm to apply).
    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        _norm: bool,
        _train: bool,
    ) -> Result<Vec<Tensor>> {
        let last = check_take(take, self.blocks.len())?;
        crate::check_fixed_size(x, self.cfg.image_size, "its token MLPs fix the grid")?;
        let (mut x, grid) = crate::patch_tokens(&self.patcher, x)?;
        let mut features = Vec::with_capacity(take.len());
        for (i, block) in self.blocks.iter().enumerate().take(last + 1) {
            x = block.forward(&x)?;
            if take.contains(&i) {
                features.push(crate::tokens_to_map(&x, grid)?);
            }
        }
        Ok(features)
    }

    fn feature_info(&self) -> Vec<FeatureInfo> {
        self.cfg.feature_info()
    }

    fn prune_intermediate_layers(&mut self, indices: &Indices) -> Result<Vec<usize>> {
        let (take, kept) = truncate_after_last(&mut self.blocks, indices)?;
        self.cfg.num_layers = kept;
        self.cfg.num_classes = 0;
        self.classifier = None;
        Ok(take)
    }

    /// The classifier sits on the pooled tokens, so it can be reset after pruning too.
    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        self.classifier =
            crate::optional_linear(self.cfg.d_model, num_classes, vb.pp("classifier"))?;
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        crate::pool_and_classify(last, self.classifier.as_ref())
    }
}
