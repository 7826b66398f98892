//! TransNeXt (Dai Shi, CVPR 2024, arXiv 2311.17132) with the registered names, tensor names and
//! keyword arguments of DaiShiResearch/TransNeXt (`classification/transnext.py`).
//!
//! Four stages, each an overlapping patch embedding (a `2p-1` convolution with stride `p`, then
//! 3x3 / 2, each followed by a LayerNorm), blocks `x + attn(LN(x))`, `x + ConvGLU(LN(x))` and a
//! LayerNorm; the classifier is a mean over the last stage's tokens and a linear `head`. The
//! attention of a stage is aggregated attention (a 3x3 neighbourhood plus pooled keys, see
//! [`tokenmix_mixers::aggregated_attention`]) or, with pooling ratio 1, full attention; the channel
//! mixer is [`tokenmix_mixers::layers::ConvGlu`]. Inside, the model runs channel-last.
//!
//! The reference builds its position biases and masks for `img_size` only; tokenmix builds them
//! for the map each call runs at, scaled by `pretrain_size` (default `img_size`) as the reference
//! scales them, so it matches the reference at `img_size` and runs any other size too.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_kernels::Window;
use tokenmix_mixers::aggregated_attention::{AggregatedAttention, AggregatedAttentionConfig};
use tokenmix_mixers::layers::{drop_path_rates, ConvGlu, ConvNhwc, DropPath, Norm, NormConfig};
use tokenmix_mixers::{MixerLayout, MixerSpec, TokenMixer};

use crate::args::{parse, set, ImgSize};
use crate::features::{check_take, truncate_after_last};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, PretrainedCfg};
use crate::{Architecture, Family, FeatureInfo, ImageModel, Indices};

/// Hyper-parameters of a [`TransNeXt`], named as the reference's `TransNeXt` keyword arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransNeXtConfig {
    /// The resolution the model is built for (the reference's `img_size`); only its default
    /// `pretrain_size` depends on it here, since tokenmix builds the biases per input.
    pub img_size: (usize, usize),
    /// The resolution the position-bias MLP was trained at; `None` means `img_size`.
    pub pretrain_size: Option<(usize, usize)>,
    /// Local window side per stage (`None` where the stage has full attention).
    pub window_size: Vec<Option<usize>>,
    /// Stride of the first patch embedding (its kernel is `2 patch_size - 1`).
    pub patch_size: usize,
    /// Input image channels.
    pub in_chans: usize,
    /// Classifier outputs; 0 means none (the head returns pooled features).
    pub num_classes: usize,
    /// Channels per stage.
    pub embed_dims: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    /// ConvGLU hidden width per stage as a multiple of its channels (before the 2/3).
    pub mlp_ratios: Vec<f64>,
    /// Whether the attention projections `q`, `kv`, `qkv` have biases.
    pub qkv_bias: bool,
    /// Stochastic depth, rising linearly over all blocks to this rate.
    pub drop_path_rate: f64,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Pooling ratio of the pooled keys per stage; 1 means full attention.
    pub sr_ratios: Vec<usize>,
    /// A fixed pooled grid side for the aggregated stages instead of `H / sr_ratio`.
    pub fixed_pool_size: Option<usize>,
    /// Epsilon of the model's LayerNorms (the reference's `norm_layer`; 1e-6 for every
    /// registered model; not a `model_args` key, as `norm_layer` is a class there).
    pub norm_eps: f64,
}

impl TransNeXtConfig {
    fn base(dims: [usize; 4], heads: [usize; 4], depths: [usize; 4]) -> Self {
        Self {
            img_size: (224, 224),
            pretrain_size: None,
            window_size: vec![Some(3), Some(3), Some(3), None],
            patch_size: 4,
            in_chans: 3,
            num_classes: 1000,
            embed_dims: dims.to_vec(),
            num_heads: heads.to_vec(),
            mlp_ratios: vec![8.0, 8.0, 4.0, 4.0],
            qkv_bias: true,
            drop_path_rate: 0.0,
            depths: depths.to_vec(),
            sr_ratios: vec![8, 4, 2, 1],
            fixed_pool_size: None,
            norm_eps: 1e-6,
        }
    }

    /// TransNeXt-Micro.
    pub fn micro() -> Self {
        Self::base([48, 96, 192, 384], [2, 4, 8, 16], [2, 2, 15, 2])
    }

    /// TransNeXt-Tiny.
    pub fn tiny() -> Self {
        Self::base([72, 144, 288, 576], [3, 6, 12, 24], [2, 2, 15, 2])
    }

    /// TransNeXt-Small.
    pub fn small() -> Self {
        Self::base([72, 144, 288, 576], [3, 6, 12, 24], [5, 5, 22, 5])
    }

    /// TransNeXt-Base.
    pub fn base_model() -> Self {
        Self::base([96, 192, 384, 768], [4, 8, 16, 32], [5, 5, 23, 5])
    }

    /// TransNeXt-Micro with aggregated attention in all four stages (pooling ratios 16, 8, 4,
    /// 2), trained at 256².
    pub fn micro_aaaa() -> Self {
        Self {
            window_size: vec![Some(3); 4],
            sr_ratios: vec![16, 8, 4, 2],
            img_size: (256, 256),
            ..Self::micro()
        }
    }

    fn num_stages(&self) -> usize {
        self.depths.len()
    }

    /// The token mixer of stage `i`.
    fn mixer(&self, i: usize) -> AggregatedAttentionConfig {
        let pretrain = self.pretrain_size.unwrap_or(self.img_size);
        let stride = self.patch_size << i;
        AggregatedAttentionConfig {
            num_heads: self.num_heads[i],
            window_size: self.window_size[i].unwrap_or(3),
            qkv_bias: self.qkv_bias,
            sr_ratio: self.sr_ratios[i],
            fixed_pool_size: self.fixed_pool_size.filter(|_| self.sr_ratios[i] > 1),
            pretrain_size: Some(((pretrain.0 / stride).max(1), (pretrain.1 / stride).max(1))),
        }
    }

    fn hidden(&self, i: usize) -> usize {
        (self.embed_dims[i] as f64 * self.mlp_ratios[i]) as usize
    }

    /// The patch embedding of stage `i`.
    fn embed_window(&self, i: usize) -> Window {
        let (kernel, stride) = if i == 0 {
            (2 * self.patch_size - 1, self.patch_size)
        } else {
            (3, 2)
        };
        Window {
            kernel,
            stride,
            padding: kernel / 2,
        }
    }

    /// Each stage's grid for an `h x w` input.
    fn stage_sizes(&self, h: usize, w: usize) -> Vec<(usize, usize)> {
        let mut size = (h, w);
        (0..self.num_stages())
            .map(|i| {
                let win = self.embed_window(i);
                let out = |n: usize| (n + 2 * win.padding).saturating_sub(win.kernel) / win.stride + 1;
                size = (out(size.0), out(size.1));
                size
            })
            .collect()
    }
}

/// `model_args` of a TransNeXt, named as the reference's `TransNeXt` keyword arguments
/// (`drop_rate`, `attn_drop_rate` accepted and ignored; `num_stages` must match the lists).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransNeXtArgs {
    img_size: Option<ImgSize>,
    #[serde(default, deserialize_with = "crate::args::present")]
    pretrain_size: Option<Option<ImgSize>>,
    window_size: Option<Vec<Option<usize>>>,
    patch_size: Option<usize>,
    in_chans: Option<usize>,
    num_classes: Option<usize>,
    embed_dims: Option<Vec<usize>>,
    num_heads: Option<Vec<usize>>,
    mlp_ratios: Option<Vec<f64>>,
    qkv_bias: Option<bool>,
    drop_path_rate: Option<f64>,
    depths: Option<Vec<usize>>,
    sr_ratios: Option<Vec<usize>>,
    num_stages: Option<usize>,
    #[serde(default, deserialize_with = "crate::args::present")]
    fixed_pool_size: Option<Option<usize>>,
    #[serde(rename = "drop_rate")]
    _drop_rate: Option<IgnoredAny>,
    #[serde(rename = "attn_drop_rate")]
    _attn_drop_rate: Option<IgnoredAny>,
    #[serde(rename = "pretrained")]
    _pretrained: Option<IgnoredAny>,
}

impl TransNeXtArgs {
    fn apply(self, cfg: &mut TransNeXtConfig) -> crate::Result<()> {
        set(&mut cfg.img_size, self.img_size.map(ImgSize::pair));
        if let Some(p) = self.pretrain_size {
            cfg.pretrain_size = p.map(ImgSize::pair);
        }
        set(&mut cfg.window_size, self.window_size);
        set(&mut cfg.patch_size, self.patch_size);
        set(&mut cfg.in_chans, self.in_chans);
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.embed_dims, self.embed_dims);
        set(&mut cfg.num_heads, self.num_heads);
        set(&mut cfg.mlp_ratios, self.mlp_ratios);
        set(&mut cfg.qkv_bias, self.qkv_bias);
        set(&mut cfg.drop_path_rate, self.drop_path_rate);
        set(&mut cfg.depths, self.depths);
        set(&mut cfg.sr_ratios, self.sr_ratios);
        if let Some(p) = self.fixed_pool_size {
            cfg.fixed_pool_size = p;
        }
        match self.num_stages {
            Some(n) if n != cfg.num_stages() => Err(crate::Error::config(
                "model_args of a transnext model",
                format!("num_stages {n} does not match depths of length {}", cfg.num_stages()),
            )),
            _ => Ok(()),
        }
    }
}

impl Family for TransNeXtConfig {
    const NAME: &'static str = "transnext";

    /// The reference's registered models; top-1 from its README (ImageNet-1k, 224², the
    /// AAAA variant at 256²).
    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("transnext_micro", "transnext", Some(82.5), ArchConfig::new(TransNeXtConfig::micro()), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("transnext_tiny", "transnext", Some(84.0), ArchConfig::new(TransNeXtConfig::tiny()), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("transnext_small", "transnext", Some(84.7), ArchConfig::new(TransNeXtConfig::small()), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("transnext_base", "transnext", Some(84.8), ArchConfig::new(TransNeXtConfig::base_model()), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("transnext_micro_AAAA", "transnext", Some(82.6), ArchConfig::new(TransNeXtConfig::micro_aaaa()), pretrained: PretrainedCfg { input_size: vec![3, 256, 256], ..PretrainedCfg::metaformer(0.875) }),
    ];
}

impl Architecture for TransNeXtConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(TransNeXt::new(self, vb)?))
    }

    crate::arch::common_fields!();

    /// Every stage's normed map, `norm{i+1}`, at strides `patch_size * 2^i`.
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let dims = self.embed_dims.iter().take(self.num_stages());
        dims.enumerate()
            .map(|(i, &dim)| FeatureInfo::new(dim, self.patch_size << i, format!("norm{}", i + 1)))
            .collect()
    }

    fn check(&self) -> std::result::Result<(), String> {
        let n = self.num_stages();
        if !(1..=4).contains(&n) {
            return Err(format!("depths must list 1 to 4 stages, got {n}"));
        }
        let lists = [
            ("embed_dims", self.embed_dims.len()),
            ("num_heads", self.num_heads.len()),
            ("mlp_ratios", self.mlp_ratios.len()),
            ("sr_ratios", self.sr_ratios.len()),
            ("window_size", self.window_size.len()),
        ];
        if let Some((name, len)) = lists.iter().find(|(_, len)| *len < n) {
            return Err(format!("{name} has {len} entries for {n} stages"));
        }
        if !(2..=32).contains(&self.patch_size) {
            return Err(format!("patch_size must be in 2..=32, got {}", self.patch_size));
        }
        if self.depths.iter().any(|&d| d > 1000) {
            return Err(format!("depths must be at most 1000 each, got {:?}", self.depths));
        }
        for i in 0..n {
            let dim = self.embed_dims[i];
            if !(1..=65_536).contains(&dim) {
                return Err(format!("embed_dims must be in 1..=65536, got {dim}"));
            }
            let ratio = self.mlp_ratios[i];
            let hidden = self.hidden(i);
            if !(ratio > 0.0 && ratio <= 64.0) || ConvGlu::gated_width(hidden) == 0 {
                return Err(format!(
                    "mlp_ratios[{i}] must be in (0, 64] and leave a gated width of at least one \
                     channel, got {ratio}"
                ));
            }
            if self.sr_ratios[i] > 1 && self.window_size[i].is_none() {
                return Err(format!("stage {i} pools (sr_ratio > 1) but has no window_size"));
            }
            self.mixer(i).validate(dim).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<TransNeXtArgs>(Self::NAME, args)?.apply(self)
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let mut cin = self.in_chans;
        let mut total = 0u64;
        for (i, (gh, gw)) in self.stage_sizes(h, w).into_iter().enumerate() {
            let (dim, n) = (self.embed_dims[i], (gh * gw) as u64);
            let k = self.embed_window(i).kernel;
            total += n * (k * k * cin * dim) as u64;
            let g = ConvGlu::gated_width(self.hidden(i)) as u64;
            let mlp = n * (dim as u64 * 2 * g + 9 * g + g * dim as u64);
            let block = self.mixer(i).macs(dim, gh, gw) + mlp;
            total += block * self.depths[i] as u64;
            cin = dim;
        }
        total + (cin * self.num_classes) as u64
    }
}

/// One TransNeXt block on channel-last maps.
#[derive(Debug)]
struct Block {
    norm1: Norm,
    attn: AggregatedAttention,
    norm2: Norm,
    mlp: ConvGlu,
    drop_path: DropPath,
}

impl Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.attn.forward(&self.norm1.forward(x)?)?;
        let x = (x + self.drop_path.forward_t(&y, train)?)?;
        let y = self.mlp.forward(&self.norm2.forward(&x)?)?;
        &x + self.drop_path.forward_t(&y, train)?
    }
}

/// One stage: patch embedding (convolution and norm), blocks, norm.
#[derive(Debug)]
struct Stage {
    embed: ConvNhwc,
    embed_norm: Norm,
    blocks: Vec<Block>,
    norm: Norm,
}

impl Stage {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.embed_norm.forward(&self.embed.forward(x)?)?;
        for block in &self.blocks {
            x = block.forward_t(&x, train)?;
        }
        self.norm.forward(&x)
    }
}

/// A TransNeXt image classifier.
#[derive(Debug)]
pub struct TransNeXt {
    cfg: TransNeXtConfig,
    stages: Vec<Stage>,
    /// `head`; `None` without classes or once pruned.
    head: Option<Linear>,
}

impl TransNeXt {
    /// Builds the model, reading every tensor from `vb` under the reference's names.
    pub fn new(cfg: &TransNeXtConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let norm_cfg = NormConfig {
            eps: cfg.norm_eps,
            ..NormConfig::LAYER_NORM
        };
        let layout = MixerLayout::ChannelsLast;
        let rates = drop_path_rates(cfg.drop_path_rate, cfg.depths.iter().sum());
        let mut rates = rates.into_iter();
        let mut cin = cfg.in_chans;
        let mut stages = Vec::with_capacity(cfg.num_stages());
        for i in 0..cfg.num_stages() {
            let dim = cfg.embed_dims[i];
            let embed = vb.pp(format!("patch_embed{}", i + 1));
            let blocks = (0..cfg.depths[i])
                .map(|j| {
                    let b = vb.pp(format!("block{}", i + 1)).pp(j);
                    Ok(Block {
                        norm1: norm_cfg.build(dim, layout, b.pp("norm1"))?,
                        attn: AggregatedAttention::new(&cfg.mixer(i), dim, b.pp("attn"))?,
                        norm2: norm_cfg.build(dim, layout, b.pp("norm2"))?,
                        mlp: ConvGlu::new(dim, cfg.hidden(i), b.pp("mlp"))?,
                        drop_path: rates.next().unwrap_or(DropPath::new(0.0)),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            stages.push(Stage {
                embed: ConvNhwc::new(cin, dim, cfg.embed_window(i), true, embed.pp("proj"))?,
                embed_norm: norm_cfg.build(dim, layout, embed.pp("norm"))?,
                blocks,
                norm: norm_cfg.build(dim, layout, vb.pp(format!("norm{}", i + 1)))?,
            });
            cin = dim;
        }
        Ok(Self {
            cfg: cfg.clone(),
            stages,
            head: crate::optional_linear(cin, cfg.num_classes, vb.pp("head"))?,
        })
    }
}

impl ImageModel for TransNeXt {
    fn in_chans(&self) -> usize {
        self.cfg.in_chans
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    /// Every stage's normed map `(B, C_i, H_i, W_i)`.
    fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let all: Vec<usize> = (0..self.stages.len()).collect();
        self.forward_intermediates_t(x, &all, true, train)
    }

    /// The stages' outputs (each already normed by its stage's norm, as the reference).
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
            x = stage.forward_t(&x, train)?;
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
        self.cfg.num_classes = 0;
        self.head = None;
        Ok(take)
    }

    /// The classifier sits on the mean of the last map's tokens.
    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        let dim = self.cfg.embed_dims[self.stages.len() - 1];
        self.head = crate::optional_linear(dim, num_classes, vb.pp("head"))?;
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        crate::pool_and_classify(last, self.head.as_ref())
    }
}
