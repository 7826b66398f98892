//! AFFNet (Huang et al., "Adaptive Frequency Filters As Efficient Global Token Mixers", ICCV 2023,
//! arXiv 2307.14008) with the tensor names of microsoft/TokenMixers (`AffNet`, built on
//! ml-cvnets): a MobileViT-like network whose global blocks mix tokens with adaptive frequency
//! filters.
//!
//! The released YAML configs (not in the public repository) fix two choices the code leaves
//! open; tokenmix makes them configuration fields: the activation (`swish`, the cvnets MobileViT
//! default) and the AFF blocks' norm (`attn_norm_layer`: the code's default `layer_norm_2d`,
//! GroupNorm with one group, or cvnets' `layer_norm`, per pixel over the channels, the authors'
//! training default; both have the same tensor names, so the loaded config decides). Batch norms apply their running statistics as a per-channel
//! scale and shift (in training too: they are not updated, the affine parameters are); their
//! `num_batches_tracked` counters are ignored.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_mixers::aff::AdaptiveFrequencyFilterConfig;
use tokenmix_mixers::layers::{Act, ActKind, Derived, Norm, NormConfig};
use tokenmix_mixers::{MixerConfig, MixerLayout, TokenMixer};

use crate::args::{parse, set};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, PretrainedCfg};
use crate::features::{check_take, pruned_error, truncate_after_last};
use crate::{
    Architecture, Common, ConvInit, Error, Family, FeatureInfo, ImageModel, Indices, Ratio,
};

/// Hyper-parameters of an [`AffNet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AffNetConfig {
    /// Input image channels.
    pub in_chans: usize,
    /// Classifier outputs.
    pub num_classes: usize,
    /// Output channels of layers 1 to 5.
    pub channels: Vec<usize>,
    /// Expansion of the MobileNetV2 blocks.
    pub mv2_expand: f64,
    /// AFF blocks in layers 3, 4 and 5.
    pub aff_depths: Vec<usize>,
    /// Hidden width of the AFF blocks' inverted residuals as a multiple of their width.
    pub ffn_ratio: f64,
    /// Channel groups of the frequency filters' block-diagonal MLPs.
    pub filter_blocks: usize,
    /// Soft-shrink threshold of the frequency masks.
    pub sparsity_threshold: f64,
    /// Activation everywhere (cvnets' `model.activation.name`).
    pub activation: ActKind,
    /// The AFF blocks' norm (cvnets' `model.classification.affnet.attn_norm_layer`).
    #[serde(default)]
    pub attn_norm_layer: AttnNorm,
}

/// The norm of AFFNet's AFF blocks (cvnets' `attn_norm_layer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AttnNorm {
    /// `layer_norm_2d`: GroupNorm with one group over `(C, H, W)`, eps 1e-5 (the code's default).
    #[default]
    #[serde(rename = "layer_norm_2d")]
    LayerNorm2d,
    /// `layer_norm`: cvnets' `LayerNorm` on channel-first maps, per pixel over the channels,
    /// `(x - mean) / (std + eps) * weight + bias` with eps 1e-5 added to the standard deviation
    /// (not to the variance).
    #[serde(rename = "layer_norm")]
    LayerNorm,
}

/// A built [`AttnNorm`] on `(B, C, H, W)`, tensors `weight` and `bias` either way.
#[derive(Debug)]
enum BlockNorm {
    Group(Norm),
    Pixel { weight: Tensor, bias: Tensor },
}

impl BlockNorm {
    const EPS: f64 = 1e-5;

    fn new(kind: AttnNorm, c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            AttnNorm::LayerNorm2d => {
                Self::Group(NormConfig::GROUP_NORM1.build(c, MixerLayout::Spatial, vb)?)
            }
            AttnNorm::LayerNorm => Self::Pixel {
                weight: vb.get(c, "weight")?.reshape((c, 1, 1))?,
                bias: vb.get(c, "bias")?.reshape((c, 1, 1))?,
            },
        })
    }
}

impl Module for BlockNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Group(n) => n.forward(x),
            Self::Pixel { weight, bias } => {
                let normed = tokenmix_mixers::layers::in_f32(x, |x| {
                    let centred = x.broadcast_sub(&x.mean_keepdim(1)?)?;
                    let std = centred.sqr()?.mean_keepdim(1)?.sqrt()?;
                    centred.broadcast_div(&(std + Self::EPS)?)
                })?;
                normed.broadcast_mul(weight)?.broadcast_add(bias)
            }
        }
    }
}

impl AffNetConfig {
    /// The reference's `mode`s: `xx_small` (AFFNet-ET), `x_small` (AFFNet-T), `small` (AFFNet).
    pub fn mode(mode: &str) -> Option<Self> {
        match mode {
            "xx_small" => Some(Self::et()),
            "x_small" => Some(Self::t()),
            "small" => Some(Self::small()),
            _ => None,
        }
    }

    /// AFFNet-ET (`xx_small`).
    pub fn et() -> Self {
        Self::with_widths([32, 48, 64, 104, 144], 2.0)
    }

    /// AFFNet-T (`x_small`).
    pub fn t() -> Self {
        Self::with_widths([32, 48, 96, 160, 192], 4.0)
    }

    /// AFFNet (`small`).
    pub fn small() -> Self {
        Self::with_widths([32, 64, 128, 256, 320], 4.0)
    }

    fn with_widths(channels: [usize; 5], expand: f64) -> Self {
        Self {
            in_chans: 3,
            num_classes: 1000,
            channels: channels.to_vec(),
            mv2_expand: expand,
            aff_depths: vec![2, 4, 3],
            ffn_ratio: 2.0,
            filter_blocks: 8,
            sparsity_threshold: 0.01,
            activation: ActKind::Silu,
            attn_norm_layer: AttnNorm::LayerNorm2d,
        }
    }

    fn filter(&self) -> MixerConfig {
        MixerConfig::new(AdaptiveFrequencyFilterConfig {
            num_blocks: self.filter_blocks,
            sparsity_threshold: self.sparsity_threshold,
            act: self.activation,
        })
    }

    fn exp_channels(&self) -> usize {
        (4 * self.channels[4]).min(960)
    }
}

/// cvnets' activation names.
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Activation {
    Swish,
    Silu,
    Gelu,
    Relu,
}

/// `model_args` of an AFFNet: `mode` (applied first) and the reference's options (`n_classes` or
/// timm's `num_classes`), with the widths the modes fix; dropout is accepted and ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AffNetArgs {
    mode: Option<String>,
    in_chans: Option<usize>,
    num_classes: Option<usize>,
    n_classes: Option<usize>,
    activation: Option<Activation>,
    sparsity_threshold: Option<f64>,
    channels: Option<Vec<usize>>,
    aff_depths: Option<Vec<usize>>,
    mv2_expand: Option<f64>,
    ffn_ratio: Option<f64>,
    attn_norm_layer: Option<AttnNorm>,
    #[serde(rename = "dropout")]
    _dropout: Option<IgnoredAny>,
    #[serde(rename = "ffn_dropout")]
    _ffn_dropout: Option<IgnoredAny>,
    #[serde(rename = "attn_dropout")]
    _attn_dropout: Option<IgnoredAny>,
    #[serde(rename = "classifier_dropout")]
    _classifier_dropout: Option<IgnoredAny>,
}

impl AffNetArgs {
    fn apply(self, cfg: &mut AffNetConfig) -> crate::Result<()> {
        let family = AffNetConfig::NAME;
        if let Some(mode) = self.mode {
            let preset = AffNetConfig::mode(&mode).ok_or_else(|| {
                Error::config(
                    format!("model_args of a {family} model"),
                    format!("mode = {mode:?}: must be xx_small, x_small or small"),
                )
            })?;
            *cfg = AffNetConfig {
                in_chans: cfg.in_chans,
                num_classes: cfg.num_classes,
                ..preset
            };
        }
        set(&mut cfg.in_chans, self.in_chans);
        set(&mut cfg.num_classes, self.num_classes.or(self.n_classes));
        set(&mut cfg.sparsity_threshold, self.sparsity_threshold);
        set(&mut cfg.channels, self.channels);
        set(&mut cfg.aff_depths, self.aff_depths);
        set(&mut cfg.mv2_expand, self.mv2_expand);
        set(&mut cfg.ffn_ratio, self.ffn_ratio);
        let activation = self.activation.map(|a| match a {
            Activation::Swish | Activation::Silu => ActKind::Silu,
            Activation::Gelu => ActKind::Gelu,
            Activation::Relu => ActKind::Relu,
        });
        set(&mut cfg.activation, activation);
        set(&mut cfg.attn_norm_layer, self.attn_norm_layer);
        Ok(())
    }
}

impl Family for AffNetConfig {
    const NAME: &'static str = "aff_net";

    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("affnet_et", "affnet", Some(73.0), ArchConfig::new(AffNetConfig::et()), pretrained: PretrainedCfg::square(256, 0.875)),
        entry!("affnet_t", "affnet", Some(77.0), ArchConfig::new(AffNetConfig::t()), pretrained: PretrainedCfg::square(256, 0.875)),
        entry!("affnet", "affnet", Some(79.8), ArchConfig::new(AffNetConfig::small()), pretrained: PretrainedCfg::square(256, 0.875)),
    ];
}

impl Architecture for AffNetConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(AffNet::new(self, vb)?))
    }

    /// Every layer, `layer_{i + 1}`: strides 2, 4, 8, 16, 32 (`conv_1` halves the input, the
    /// first layer keeps its size, every later one halves it).
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let info =
            |(i, &c): (usize, &usize)| FeatureInfo::new(c, 2 << i, format!("layer_{}", i + 1));
        self.channels.iter().enumerate().map(info).collect()
    }

    /// No stochastic depth: the reference has none.
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

    fn needs_classifier(&self) -> bool {
        true
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.channels.len() != 5 || self.aff_depths.len() != 3 {
            return Err("need 5 layer widths and 3 AFF depths".into());
        }
        if self.channels.iter().any(|&c| c == 0 || c > 16_384)
            || self.aff_depths.iter().any(|&d| d > 1000)
        {
            return Err(format!(
                "channels {:?} or depths {:?} out of range",
                self.channels, self.aff_depths
            ));
        }
        for &c in &self.channels[2..] {
            self.filter().validate(c).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The inverted residuals round their hidden widths with `make_divisible`.
    fn ratios(&self) -> Vec<Ratio> {
        let ratio = |name, value: f64, dim: usize| Ratio {
            name,
            value,
            dim,
            hidden: make_divisible(dim as f64 * value),
        };
        let mv2 = self
            .channels
            .iter()
            .map(|&c| ratio("mv2_expand", self.mv2_expand, c));
        let ffn = self.channels.iter().skip(2);
        let ffn = ffn.map(|&c| ratio("ffn_ratio", self.ffn_ratio, c));
        mv2.chain(ffn).collect()
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<AffNetArgs>(Self::NAME, args)?.apply(self)
    }

    fn conv_init(&self) -> ConvInit {
        ConvInit::KaimingFanOut
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let down = |n: usize| n.div_ceil(2);
        let (mut sh, mut sw) = (down(h), down(w));
        let ir = |cin: usize, cout: usize, e: f64, n: u64, n_out: u64| -> u64 {
            let hidden = make_divisible(cin as f64 * e) as u64;
            let exp = if e != 1.0 { n * cin as u64 * hidden } else { 0 };
            exp + n_out * hidden * 9 + n_out * hidden * cout as u64
        };
        let mut total = (sh * sw * 16 * self.in_chans * 9) as u64;
        let mut cin = 16;
        for (i, &c) in self.channels.iter().enumerate() {
            let n_in = (sh * sw) as u64;
            if i > 0 {
                (sh, sw) = (down(sh), down(sw));
            }
            let n = (sh * sw) as u64;
            let blocks = if i == 1 { 3 } else { 1 };
            total += ir(cin, c, self.mv2_expand, n_in, n);
            total += (blocks - 1) * ir(c, c, self.mv2_expand, n, n);
            if i >= 2 {
                let per = ir(c, c, self.ffn_ratio, n, n) + self.filter().macs(c, sh, sw);
                total += per * self.aff_depths[i - 2] as u64 + n * (c * c + 2 * c * c) as u64;
            }
            cin = c;
        }
        let e = self.exp_channels() as u64;
        total + (sh * sw) as u64 * cin as u64 * e + e * self.num_classes as u64
    }
}

/// cvnets' `make_divisible(v, 8)`.
fn make_divisible(v: f64) -> usize {
    let d = 8.0;
    let mut new_v = ((v + d / 2.0) as usize / 8 * 8).max(8);
    if (new_v as f64) < 0.9 * v {
        new_v += 8;
    }
    new_v
}

/// cvnets `ConvLayer`: conv (no bias) + batch norm with its running statistics (applied as a
/// per-channel scale and shift) + optional activation.
#[derive(Debug)]
struct ConvBn {
    weight: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    /// The batch norm folded into `(scale, shift)`, each `(C, 1, 1)`.
    folded: Derived<(Tensor, Tensor)>,
    stride: usize,
    groups: usize,
    act: Option<Act>,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
        act: Option<ActKind>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let b = vb.pp("block");
        let n = b.pp("norm");
        Ok(Self {
            weight: b.pp("conv").get((cout, cin / groups, k, k), "weight")?,
            bn_weight: n.get(cout, "weight")?,
            bn_bias: n.get(cout, "bias")?,
            running_mean: n.get(cout, "running_mean")?,
            running_var: n.get(cout, "running_var")?,
            folded: Derived::default(),
            stride,
            groups,
            act: act.map(|a| Act::new(a, b.pp("act"))).transpose()?,
        })
    }
}

impl ConvBn {
    /// `scale = weight / sqrt(running_var + eps)`, `shift = bias - running_mean * scale`.
    fn folded(&self) -> Result<(Tensor, Tensor)> {
        let stats = [
            &self.bn_weight,
            &self.bn_bias,
            &self.running_mean,
            &self.running_var,
        ];
        let trainable = stats.iter().any(|t| t.is_variable());
        self.folded.get(trainable, || {
            let c = self.bn_weight.dim(0)?;
            let scale = (&self.bn_weight / (&self.running_var + 1e-5)?.sqrt()?)?;
            let shift = (&self.bn_bias - (&self.running_mean * &scale)?)?;
            Ok((scale.reshape((c, 1, 1))?, shift.reshape((c, 1, 1))?))
        })
    }
}

impl Module for ConvBn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.weight.dim(3)?;
        let y = if self.groups > 1 {
            tokenmix_kernels::depthwise_conv2d(x, &self.weight, None, self.stride, k / 2)?
        } else {
            tokenmix_kernels::conv2d(x, &self.weight, k / 2, self.stride, 1, 1)?
        };
        let (scale, shift) = self.folded()?;
        let y = y.broadcast_mul(&scale)?.broadcast_add(&shift)?;
        match &self.act {
            Some(a) => a.forward(&y),
            None => Ok(y),
        }
    }
}

/// MobileNetV2 inverted residual: [1x1 expand] -> 3x3 depthwise (stride) -> 1x1 project,
/// with a skip when the shape is kept.
#[derive(Debug)]
struct InvertedResidual {
    exp: Option<ConvBn>,
    dw: ConvBn,
    red: ConvBn,
    skip: bool,
}

impl InvertedResidual {
    fn new(
        cin: usize,
        cout: usize,
        stride: usize,
        expand: f64,
        act: ActKind,
        vb: VarBuilder,
    ) -> Result<Self> {
        let hidden = make_divisible(cin as f64 * expand);
        let b = vb.pp("block");
        Ok(Self {
            exp: (expand != 1.0)
                .then(|| ConvBn::new(cin, hidden, 1, 1, 1, Some(act), b.pp("exp_1x1")))
                .transpose()?,
            dw: ConvBn::new(
                hidden,
                hidden,
                3,
                stride,
                hidden,
                Some(act),
                b.pp("conv_3x3"),
            )?,
            red: ConvBn::new(hidden, cout, 1, 1, 1, None, b.pp("red_1x1"))?,
            skip: stride == 1 && cin == cout,
        })
    }
}

impl Module for InvertedResidual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = match &self.exp {
            Some(e) => e.forward(x)?,
            None => x.clone(),
        };
        let y = self.red.forward(&self.dw.forward(&h)?)?;
        if self.skip {
            x + y
        } else {
            Ok(y)
        }
    }
}

/// `x + m + filter(m)` with `m = norm2(mlp(norm1(x)))` (the inverted residual comes first, and
/// the filter's own residual `m`, inside `AFNO2D_channelfirst` in the reference, is added here).
#[derive(Debug)]
struct AffLayer {
    norm1: BlockNorm,
    mlp: InvertedResidual,
    norm2: BlockNorm,
    filter: Box<dyn TokenMixer>,
}

/// AFF blocks, a norm, a 1x1 projection, and a fusion of the block input with the result.
#[derive(Debug)]
struct AffBlock {
    layers: Vec<AffLayer>,
    norm: BlockNorm,
    conv_proj: ConvBn,
    fusion: ConvBn,
}

impl AffBlock {
    fn new(cfg: &AffNetConfig, c: usize, depth: usize, vb: VarBuilder) -> Result<Self> {
        let norm = |vb: VarBuilder| BlockNorm::new(cfg.attn_norm_layer, c, vb);
        let g = vb.pp("global_rep");
        let layers = (0..depth)
            .map(|j| {
                let b = g.pp(j);
                Ok(AffLayer {
                    norm1: norm(b.pp("norm1"))?,
                    mlp: InvertedResidual::new(
                        c,
                        c,
                        1,
                        cfg.ffn_ratio,
                        cfg.activation,
                        b.pp("mlp"),
                    )?,
                    norm2: norm(b.pp("norm2"))?,
                    filter: cfg.filter().build(c, b.pp("filter"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            norm: norm(g.pp(depth))?,
            conv_proj: ConvBn::new(c, c, 1, 1, 1, None, vb.pp("conv_proj"))?,
            fusion: ConvBn::new(2 * c, c, 1, 1, 1, Some(cfg.activation), vb.pp("fusion"))?,
        })
    }
}

impl Module for AffBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for l in &self.layers {
            let m = l.norm2.forward(&l.mlp.forward(&l.norm1.forward(&y)?)?)?;
            y = ((&y + &m)? + l.filter.forward(&m)?)?;
        }
        let fm = self.conv_proj.forward(&self.norm.forward(&y)?)?;
        self.fusion.forward(&Tensor::cat(&[x, &fm], 1)?)
    }
}

#[derive(Debug)]
struct Layer {
    irs: Vec<InvertedResidual>,
    aff: Option<AffBlock>,
}

/// An AFFNet classifier.
#[derive(Debug)]
pub struct AffNet {
    cfg: AffNetConfig,
    conv_1: ConvBn,
    layers: Vec<Layer>,
    /// `None` once pruned.
    conv_1x1_exp: Option<ConvBn>,
    /// `None` once pruned or reset to 0 classes.
    fc: Option<Linear>,
}

impl AffNet {
    /// Builds the model, reading every tensor from `vb` under the reference's names.
    pub fn new(cfg: &AffNetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let act = Some(cfg.activation);
        let conv_1 = ConvBn::new(cfg.in_chans, 16, 3, 2, 1, act, vb.pp("conv_1"))?;
        let mut cin = 16;
        let mut layers = Vec::new();
        for (i, &c) in cfg.channels.iter().enumerate() {
            let l = vb.pp(format!("layer_{}", i + 1));
            let stride = if i == 0 { 1 } else { 2 };
            let count = if i == 1 { 3 } else { 1 };
            let mut irs = vec![InvertedResidual::new(
                cin,
                c,
                stride,
                cfg.mv2_expand,
                cfg.activation,
                l.pp(0),
            )?];
            for j in 1..count {
                irs.push(InvertedResidual::new(
                    c,
                    c,
                    1,
                    cfg.mv2_expand,
                    cfg.activation,
                    l.pp(j),
                )?);
            }
            let aff = (i >= 2)
                .then(|| AffBlock::new(cfg, c, cfg.aff_depths[i - 2], l.pp(1)))
                .transpose()?;
            layers.push(Layer { irs, aff });
            cin = c;
        }
        let e = cfg.exp_channels();
        Ok(Self {
            cfg: cfg.clone(),
            conv_1,
            layers,
            conv_1x1_exp: Some(ConvBn::new(cin, e, 1, 1, 1, act, vb.pp("conv_1x1_exp"))?),
            fc: Some(candle_nn::linear(
                e,
                cfg.num_classes,
                vb.pp("classifier").pp("fc"),
            )?),
        })
    }
}

impl ImageModel for AffNet {
    fn in_chans(&self) -> usize {
        self.cfg.in_chans
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    /// The outputs of layers 1 to 5 (strides 2, 4, 8, 16, 32). AFFNet's reference has no
    /// stochastic depth; batch norms use their running statistics in training too (they act as
    /// learned per-channel affines), so `train` changes nothing.
    fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let all: Vec<usize> = (0..self.layers.len()).collect();
        self.forward_intermediates_t(x, &all, false, train)
    }

    /// `norm` is ignored: AFFNet has no final norm.
    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        _norm: bool,
        _train: bool,
    ) -> Result<Vec<Tensor>> {
        let last = check_take(take, self.layers.len())?;
        let mut x = self.conv_1.forward(x)?;
        let mut features = Vec::with_capacity(take.len());
        for (i, layer) in self.layers.iter().enumerate().take(last + 1) {
            for ir in &layer.irs {
                x = ir.forward(&x)?;
            }
            if let Some(aff) = &layer.aff {
                x = aff.forward(&x)?;
            }
            if take.contains(&i) {
                features.push(x.clone());
            }
        }
        Ok(features)
    }

    fn feature_info(&self) -> Vec<FeatureInfo> {
        self.cfg.feature_info()
    }

    fn prune_intermediate_layers(&mut self, indices: &Indices) -> Result<Vec<usize>> {
        let (take, kept) = truncate_after_last(&mut self.layers, indices)?;
        self.cfg.channels.truncate(kept);
        self.cfg.aff_depths.truncate(kept.saturating_sub(2));
        self.cfg.num_classes = 0;
        self.conv_1x1_exp = None;
        self.fc = None;
        Ok(take)
    }

    /// The classifier is `classifier.fc`, after `conv_1x1_exp` and the pooling (kept).
    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        if self.conv_1x1_exp.is_none() {
            return pruned_error();
        }
        let e = self.cfg.exp_channels();
        self.fc = crate::optional_linear(e, num_classes, vb.pp("classifier").pp("fc"))?;
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        let Some(exp) = &self.conv_1x1_exp else {
            return tokenmix_mixers::layers::global_avg_pool(last);
        };
        let pooled = tokenmix_mixers::layers::global_avg_pool(&exp.forward(last)?)?;
        match &self.fc {
            Some(fc) => fc.forward(&pooled),
            None => Ok(pooled),
        }
    }
}
