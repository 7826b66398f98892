//! FFNet (Yun, Lee, Ro, "Metamixer Is All You Need", arXiv 2406.02021) with the tensor names
//! and registered names of ysj9909/FFNet (`models/ffnet.py`, `FFNet`, `ffnet_1` ... `ffnet_4`).
//!
//! A stem `conv 3x3 / 2 -> BN -> GELU -> conv 3x3 / 2 -> BN`, four stages of FFBlocks
//! (`x + ls * token_mixer(x)` with the FFNified token mixer of [`tokenmix_mixers::ffn`], then
//! `x + ls * fc2(GELU(fc1(dw(x))))`; no norms in front of the branches), a patch merging between
//! stages (a stride-2 RepVGG 7x7 + 3x3 depthwise pair doubling the channels, then
//! `y + 1x1(BN(y))`), and a head `BN -> mean -> linear`. Checkpoints are the training form the
//! authors release (unfused RepVGG branches and batch norms); every branch and norm is folded at
//! load, so inference runs one depthwise convolution per mixer convolution and one product per
//! 1x1, channel-last. Training recomputes the folds from the trainable tensors on each pass
//! (batch norms keep their running statistics, as in tokenmix's other BN families).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_mixers::ffn::{DwConv, FfnTokenMixer, FfnTokenMixerConfig, RepVggDw};
use tokenmix_mixers::layers::{drop_path_rates, global_avg_pool, ActKind, BatchNorm, ConvBnNhwc};
use tokenmix_mixers::layers::{Derived, DropPath, Mlp, Pointwise, Scale};
use tokenmix_mixers::{MixerLayout, MixerSpec, TokenMixer};

use crate::args::{parse, set};
use crate::features::{check_take, pruned_error, truncate_after_last};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, PretrainedCfg, Ratio};
use crate::{Architecture, Family, FeatureInfo, ImageModel, Indices};

/// Hyper-parameters of an [`FfNet`], named as the reference's `FFNet` keyword arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FfNetConfig {
    /// Input image channels (the reference's stem always takes 3).
    pub in_chans: usize,
    /// Classifier outputs; 0 means none (the head returns pooled, normed features).
    pub num_classes: usize,
    /// Channels per stage; each a multiple of the one before (the patch merging multiplies them).
    pub embed_dim: Vec<usize>,
    /// Width of the stem's first convolution.
    pub in_dim: usize,
    /// Blocks per stage.
    pub depth: Vec<usize>,
    /// Per stage, the channel mixer's depthwise kernel (7: a RepVGG pair; else conv + BN).
    pub kernel_sizes: Vec<usize>,
    /// Per stage, the token mixer's first depthwise kernel (7: a RepVGG pair; else plain).
    pub kernel_sizes1: Vec<usize>,
    /// Per stage, the token mixer's second depthwise kernel.
    pub kernel_sizes2: Vec<usize>,
    /// Per stage, the channel MLP's hidden width as a multiple of the stage width.
    pub expansion_ratios: Vec<f64>,
    /// Whether both branches of every block are scaled by a learned `layer_scale`.
    pub use_layer_scale: bool,
    /// Stochastic depth of the last block in training (linear from 0); 0 for inference.
    #[serde(default)]
    pub drop_path_rate: f64,
}

impl FfNetConfig {
    fn new(depth: [usize; 4], embed_dim: [usize; 4], channel_kernel: usize, layer_scale: bool) -> Self {
        Self {
            in_chans: 3,
            num_classes: 1000,
            embed_dim: embed_dim.to_vec(),
            in_dim: 64,
            depth: depth.to_vec(),
            kernel_sizes: vec![channel_kernel; 4],
            kernel_sizes1: vec![3, 3, 7, 7],
            kernel_sizes2: vec![3, 3, 7, 7],
            expansion_ratios: vec![3.0; 4],
            use_layer_scale: layer_scale,
            drop_path_rate: 0.0,
        }
    }

    fn mixer(&self, i: usize) -> FfnTokenMixerConfig {
        FfnTokenMixerConfig {
            kernel_size1: self.kernel_sizes1[i],
            kernel_size2: self.kernel_sizes2[i],
        }
    }

    fn hidden(&self, i: usize) -> usize {
        (self.expansion_ratios[i] * self.embed_dim[i] as f64) as usize
    }
}

/// `model_args` of an FFNet, named as the reference's keyword arguments. The reference's options
/// that no released model changes are accepted at their defaults only (`use_gelus` all true,
/// `use_ses` all false, `layer_norm_last` false); those it ignores itself (`in_channels`,
/// `down_ops`, `distillation`, `layer_scale_init_value`, dropout) are accepted and unused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FfNetArgs {
    in_chans: Option<usize>,
    num_classes: Option<usize>,
    embed_dim: Option<Vec<usize>>,
    in_dim: Option<usize>,
    depth: Option<Vec<usize>>,
    kernel_sizes: Option<Vec<usize>>,
    kernel_sizes1: Option<Vec<usize>>,
    kernel_sizes2: Option<Vec<usize>>,
    expansion_ratios: Option<Vec<f64>>,
    use_layer_scale: Option<bool>,
    drop_path_rate: Option<f64>,
    use_gelus: Option<Value>,
    use_ses: Option<Value>,
    layer_norm_last: Option<Value>,
    #[serde(rename = "in_channels")]
    _in_channels: Option<IgnoredAny>,
    #[serde(rename = "down_ops")]
    _down_ops: Option<IgnoredAny>,
    #[serde(rename = "distillation")]
    _distillation: Option<IgnoredAny>,
    #[serde(rename = "layer_scale_init_value")]
    _layer_scale_init_value: Option<IgnoredAny>,
    #[serde(rename = "drop_rate")]
    _drop_rate: Option<IgnoredAny>,
}

impl FfNetArgs {
    fn apply(self, cfg: &mut FfNetConfig) -> crate::Result<()> {
        let name = FfNetConfig::NAME;
        crate::args::only(name, "use_gelus", &self.use_gelus, serde_json::json!([true, true, true, true]))?;
        crate::args::only(name, "use_ses", &self.use_ses, serde_json::json!([false, false, false, false]))?;
        crate::args::only(name, "layer_norm_last", &self.layer_norm_last, false.into())?;
        set(&mut cfg.in_chans, self.in_chans);
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.embed_dim, self.embed_dim);
        set(&mut cfg.in_dim, self.in_dim);
        set(&mut cfg.depth, self.depth);
        set(&mut cfg.kernel_sizes, self.kernel_sizes);
        set(&mut cfg.kernel_sizes1, self.kernel_sizes1);
        set(&mut cfg.kernel_sizes2, self.kernel_sizes2);
        set(&mut cfg.expansion_ratios, self.expansion_ratios);
        set(&mut cfg.use_layer_scale, self.use_layer_scale);
        set(&mut cfg.drop_path_rate, self.drop_path_rate);
        Ok(())
    }
}

impl Family for FfNetConfig {
    const NAME: &'static str = "ffnet";

    /// Top-1 from the authors' README (non-distilled; ffnet_4's only figure is at 384²), their
    /// default cfgs' 256² input and crop.
    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("ffnet_1", "ffnet", Some(81.3), ArchConfig::new(FfNetConfig::new([2, 2, 8, 2], [80, 160, 320, 640], 3, false)), pretrained: PretrainedCfg::square(256, 0.9)),
        entry!("ffnet_2", "ffnet", Some(82.9), ArchConfig::new(FfNetConfig::new([3, 3, 15, 3], [88, 176, 352, 704], 7, false)), pretrained: PretrainedCfg::square(256, 0.9)),
        entry!("ffnet_3", "ffnet", Some(83.9), ArchConfig::new(FfNetConfig::new([4, 4, 22, 5], [96, 192, 384, 768], 7, true)), pretrained: PretrainedCfg::square(256, 0.95)),
        entry!("ffnet_4", "ffnet", Some(85.3), ArchConfig::new(FfNetConfig::new([4, 4, 27, 3], [128, 256, 512, 1024], 7, true)), pretrained: PretrainedCfg::square(256, 0.95)),
    ];
}

impl Architecture for FfNetConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(FfNet::new(self, vb)?))
    }

    crate::arch::common_fields!();

    /// Every stage, `stages.{i}`, at strides 4 ... 32.
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let info = |(i, &dim): (usize, &usize)| FeatureInfo::new(dim, 4 << i, format!("stages.{i}"));
        self.embed_dim.iter().enumerate().map(info).collect()
    }

    fn check(&self) -> std::result::Result<(), String> {
        let lists = [
            ("embed_dim", self.embed_dim.len()),
            ("depth", self.depth.len()),
            ("kernel_sizes", self.kernel_sizes.len()),
            ("kernel_sizes1", self.kernel_sizes1.len()),
            ("kernel_sizes2", self.kernel_sizes2.len()),
            ("expansion_ratios", self.expansion_ratios.len()),
        ];
        if let Some((name, n)) = lists.iter().find(|(_, n)| *n != 4) {
            return Err(format!("{name} must have 4 entries (the reference's four stages), got {n}"));
        }
        if !(1..=16_384).contains(&self.in_dim) {
            return Err(format!("in_dim must be in 1..=16384, got {}", self.in_dim));
        }
        if let Some(d) = self.embed_dim.iter().find(|&&d| !(1..=16_384).contains(&d)) {
            return Err(format!("every embed_dim must be in 1..=16384, got {d}"));
        }
        for w in self.embed_dim.windows(2) {
            if w[1] % w[0] != 0 {
                return Err(format!(
                    "embed_dim {} is not a multiple of the stage before ({}): the patch merging multiplies channels",
                    w[1], w[0]
                ));
            }
        }
        if let Some(d) = self.depth.iter().find(|&&d| !(1..=1000).contains(&d)) {
            return Err(format!("every stage depth must be in 1..=1000, got {d}"));
        }
        if let Some(k) = self.kernel_sizes.iter().find(|&&k| k % 2 == 0 || !(1..=31).contains(&k)) {
            return Err(format!("kernel_sizes must be odd and in 1..=31, got {k}"));
        }
        for i in 0..4 {
            self.mixer(i)
                .validate(self.embed_dim[i])
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn ratios(&self) -> Vec<Ratio> {
        (0..self.embed_dim.len().min(self.expansion_ratios.len()))
            .map(|i| Ratio::of("expansion_ratios", self.expansion_ratios[i], self.embed_dim[i]))
            .collect()
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<FfNetArgs>(Self::NAME, args)?.apply(self)
    }

    /// The folded network's products and convolutions.
    fn macs(&self, h: usize, w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let down = |n: usize| n.div_ceil(2);
        let (h1, w1) = (down(h), down(w));
        let (mut sh, mut sw) = (down(h1), down(w1));
        let mut total = (h1 * w1 * 9 * self.in_chans * self.in_dim
            + sh * sw * 9 * self.in_dim * self.embed_dim[0]) as u64;
        for i in 0..4 {
            let c = self.embed_dim[i] as u64;
            if i > 0 {
                (sh, sw) = (down(sh), down(sw));
                total += (sh * sw) as u64 * (c * 49 + c * c);
            }
            let n = (sh * sw) as u64;
            let k = self.kernel_sizes[i] as u64;
            let channel = n * (c * k * k + 2 * c * self.hidden(i) as u64);
            total += self.depth[i] as u64 * (self.mixer(i).macs(c as usize, sh, sw) + channel);
        }
        total + (self.embed_dim[3] * self.num_classes) as u64
    }
}

/// `(C, 1, 1)` `layer_scale` of `vb`, if the model has layer scales.
fn layer_scale(cfg: &FfNetConfig, dim: usize, vb: &VarBuilder) -> Result<Option<Tensor>> {
    cfg.use_layer_scale
        .then(|| vb.get((dim, 1, 1), "layer_scale"))
        .transpose()
}

/// `x * scale` for a `(C, 1, 1)` checkpoint scale on channel-last `x`.
fn scaled(x: Tensor, scale: &Option<Tensor>) -> Result<Tensor> {
    match scale {
        Some(s) => x.broadcast_mul(&s.flatten_all()?),
        None => Ok(x),
    }
}

/// The reference's `FFBlock` on channel-last `(B, H, W, C)`.
#[derive(Debug)]
struct Block {
    token_mixer: FfnTokenMixer,
    token_scale: Option<Tensor>,
    conv: DwConv,
    /// The channel MLP with `channel_scale` as its output scale.
    mlp: Mlp,
    /// The checkpoint's `(C, 1, 1)` layer scale, kept to tell whether it trains.
    channel_scale: Option<Tensor>,
    drop_path: DropPath,
}

impl Block {
    fn new(cfg: &FfNetConfig, i: usize, drop_path: DropPath, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.embed_dim[i];
        let (token, channel) = (vb.pp("token_mixer").pp(0), vb.pp("channel_mixer"));
        let main = channel.pp("main");
        let mlp = Mlp::conv1x1(dim, cfg.hidden(i), ActKind::Gelu, true, MixerLayout::ChannelsLast, main.clone())?;
        let channel_scale = layer_scale(cfg, dim, &channel)?;
        let scale = channel_scale
            .as_ref()
            .map(|s| Ok::<_, candle_core::Error>(Scale::from_tensor(s.flatten_all()?, MixerLayout::ChannelsLast)))
            .transpose()?;
        Ok(Self {
            token_mixer: FfnTokenMixer::new(&cfg.mixer(i), dim, token.pp("main"))?,
            token_scale: layer_scale(cfg, dim, &token)?,
            conv: DwConv::channel(dim, cfg.kernel_sizes[i], main.pp("conv"))?,
            mlp: mlp.with_output_scale(scale),
            channel_scale,
            drop_path,
        })
    }

    fn trainable(&self) -> bool {
        self.mlp.trainable() || self.channel_scale.as_ref().is_some_and(|s| s.is_variable())
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mixed = scaled(self.token_mixer.forward(x)?, &self.token_scale)?;
        let x = (x + self.drop_path.forward_t(&mixed, train)?)?;
        let local = self.conv.forward(&x)?;
        // The scale is a flattened view of the variable, which the fused residual MLP would not
        // see as trainable.
        if self.trainable() {
            return &x + self.drop_path.forward_t(&self.mlp.forward(&local)?, train)?;
        }
        self.mlp.forward_residual(&local, &x, self.drop_path, train)
    }
}

/// The reference's `PatchMerging`: a stride-2 RepVGG depthwise pair (`proj.0`), then
/// `Conv2d_BN_skip` (`proj.1`: `y + 1x1(BN(y))`), folded into one product with the identity
/// added to its matrix.
#[derive(Debug)]
struct PatchMerging {
    dw: RepVggDw,
    bn: BatchNorm,
    weight: Tensor,
    folded: Derived<Pointwise>,
}

impl PatchMerging {
    fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let skip = vb.pp("proj").pp(1).pp("conv");
        Ok(Self {
            dw: RepVggDw::new(in_dim, out_dim, 2, vb.pp("proj").pp(0))?,
            bn: BatchNorm::new(out_dim, skip.pp("bn"))?,
            weight: skip.pp("c").get((out_dim, out_dim, 1, 1), "weight")?,
            folded: Derived::default(),
        })
    }

    /// `W diag(scale) + I`, bias `W shift`.
    fn fold(&self) -> Result<Pointwise> {
        let (scale, shift) = self.bn.scale_shift()?;
        let c = scale.dim(0)?;
        let w = self.weight.reshape((c, c))?;
        let bias = w.matmul(&shift.reshape((c, 1))?)?.flatten_all()?;
        let eye = Tensor::eye(c, w.dtype(), w.device())?;
        let folded = (w.broadcast_mul(&scale.reshape((1, c))?)? + eye)?;
        Pointwise::from_tensors(folded.reshape((c, c, 1, 1))?, Some(bias), MixerLayout::ChannelsLast)
    }
}

impl Module for PatchMerging {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let trainable = self.weight.is_variable() || self.bn.trainable();
        let skip = self.folded.get(trainable, || self.fold())?;
        skip.forward(&self.dw.forward(x)?)
    }
}

/// One stage: the patch merging in front of it (none for the first) and its blocks.
#[derive(Debug)]
struct Stage {
    merge: Option<PatchMerging>,
    blocks: Vec<Block>,
}

/// An FFNet image classifier.
#[derive(Debug)]
pub struct FfNet {
    cfg: FfNetConfig,
    stem: (ConvBnNhwc, ConvBnNhwc),
    stages: Vec<Stage>,
    /// `norm` and `head`; `None` once pruned.
    head: Option<(BatchNorm, Option<Linear>)>,
}

fn stem_conv(cin: usize, cout: usize, vb: VarBuilder) -> Result<ConvBnNhwc> {
    crate::conv_bn_3x3_s2(cin, cout, false, vb.pp("c"), vb.pp("bn"))
}

impl FfNet {
    /// Builds the model, reading every tensor from `vb` under the reference's (unfused) names.
    pub fn new(cfg: &FfNetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let p = vb.pp("patch_embed");
        let stem = (
            stem_conv(cfg.in_chans, cfg.in_dim, p.pp(0))?,
            stem_conv(cfg.in_dim, cfg.embed_dim[0], p.pp(2))?,
        );
        let mut drop_paths = drop_path_rates(cfg.drop_path_rate, cfg.depth.iter().sum()).into_iter();
        let mut stages = Vec::with_capacity(4);
        for i in 0..4 {
            let s = vb.pp("stages").pp(i);
            let merge = (i > 0)
                .then(|| PatchMerging::new(cfg.embed_dim[i - 1], cfg.embed_dim[i], s.pp(0)))
                .transpose()?;
            let offset = usize::from(i > 0);
            let blocks = (0..cfg.depth[i])
                .map(|k| {
                    let dp = drop_paths.next().unwrap_or(DropPath::new(0.0));
                    Block::new(cfg, i, dp, s.pp(k + offset))
                })
                .collect::<Result<Vec<_>>>()?;
            stages.push(Stage { merge, blocks });
        }
        let last = cfg.embed_dim[3];
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            stages,
            head: Some((
                BatchNorm::new(last, vb.pp("norm"))?,
                crate::optional_linear(last, cfg.num_classes, vb.pp("head"))?,
            )),
        })
    }
}

impl ImageModel for FfNet {
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
        let x = x.permute((0, 2, 3, 1))?.contiguous()?;
        let x = tokenmix_kernels::gelu(&self.stem.0.forward(&x)?)?;
        let mut x = self.stem.1.forward(&x)?;
        let mut features = Vec::with_capacity(take.len());
        for (i, stage) in self.stages.iter().enumerate().take(last + 1) {
            if let Some(m) = &stage.merge {
                x = m.forward(&x)?;
            }
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
        self.cfg.depth.truncate(kept);
        self.cfg.embed_dim.truncate(kept);
        self.cfg.num_classes = 0;
        self.head = None;
        Ok(take)
    }

    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        let Some((_, fc)) = &mut self.head else {
            return pruned_error();
        };
        *fc = crate::optional_linear(self.cfg.embed_dim[3], num_classes, vb.pp("head"))?;
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    /// `BN -> mean -> linear`; the norm, per channel, is applied after the mean (the same).
    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        let pooled = global_avg_pool(last)?;
        let Some((norm, fc)) = &self.head else {
            return Ok(pooled);
        };
        let pooled = norm.forward_channels_last(&pooled)?;
        match fc {
            Some(fc) => fc.forward(&pooled),
            None => Ok(pooled),
        }
    }
}
