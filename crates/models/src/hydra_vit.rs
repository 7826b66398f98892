//! An isotropic ViT-shaped backbone with Hydra in place of attention: tokenmix's composition
//! for Hydra's vision setting (Hwang et al., arXiv 2407.09941, report a ViT-B with Hydra mixers
//! on ImageNet-1k; goombalab/hydra releases the mixer and its BERT code, no vision model).
//!
//! A patch embedding (`patch x patch / patch` convolution), `depth` pre-norm blocks
//! `x + mixer(LN(x))`, `x + mlp(LN(x))` (GELU MLP, ratio `mlp_ratio`), a final LayerNorm, a mean
//! over tokens and a linear head. No class token and no position embedding (the two scans are
//! order-aware), so any input divisible by the patch size runs. Tensor names follow timm's
//! `VisionTransformer` with the mixer where its attention is: `patch_embed.proj`,
//! `blocks.{i}.norm1`, `blocks.{i}.attn.*` (Hydra's names), `blocks.{i}.norm2`,
//! `blocks.{i}.mlp.fc1/fc2`, `norm`, `head`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_mixers::hydra::{Hydra, HydraConfig};
use tokenmix_mixers::layers::{drop_path_rates, ActKind, ConvNhwc, DropPath, Mlp, Norm, NormConfig};
use tokenmix_mixers::{MixerLayout, MixerSpec, TokenMixer};

use crate::args::{parse, set};
use crate::features::{check_take, truncate_after_last};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, PretrainedCfg, Ratio};
use crate::{Architecture, Family, FeatureInfo, ImageModel, Indices};

/// Hyper-parameters of a [`HydraVit`], named as timm's `VisionTransformer` keyword arguments
/// where it has them, and the Hydra mixer's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HydraVitConfig {
    /// Side of the square patches.
    pub patch_size: usize,
    /// Input image channels.
    pub in_chans: usize,
    /// Classifier outputs; 0 means none (the head returns pooled features).
    pub num_classes: usize,
    /// Channels.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// MLP hidden width as a multiple of `embed_dim`.
    pub mlp_ratio: f64,
    /// Stochastic depth, rising linearly over the blocks to this rate.
    pub drop_path_rate: f64,
    /// The token mixer of every block.
    pub mixer: HydraConfig,
}

impl HydraVitConfig {
    /// Patch 16, MLP ratio 4, Hydra with the reference's defaults.
    pub fn new(embed_dim: usize, depth: usize) -> Self {
        Self {
            patch_size: 16,
            in_chans: 3,
            num_classes: 1000,
            embed_dim,
            depth,
            mlp_ratio: 4.0,
            drop_path_rate: 0.0,
            mixer: HydraConfig::default(),
        }
    }

    fn hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }
}

/// `model_args` of a Hydra ViT: timm's `VisionTransformer` names for the backbone, the Hydra
/// mixer's for its own (`d_state`, `d_conv`, `expand`, `headdim`, `ngroups`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HydraVitArgs {
    patch_size: Option<usize>,
    in_chans: Option<usize>,
    num_classes: Option<usize>,
    embed_dim: Option<usize>,
    depth: Option<usize>,
    mlp_ratio: Option<f64>,
    drop_path_rate: Option<f64>,
    d_state: Option<usize>,
    d_conv: Option<usize>,
    expand: Option<usize>,
    headdim: Option<usize>,
    ngroups: Option<usize>,
}

impl HydraVitArgs {
    fn apply(self, cfg: &mut HydraVitConfig) {
        set(&mut cfg.patch_size, self.patch_size);
        set(&mut cfg.in_chans, self.in_chans);
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.embed_dim, self.embed_dim);
        set(&mut cfg.depth, self.depth);
        set(&mut cfg.mlp_ratio, self.mlp_ratio);
        set(&mut cfg.drop_path_rate, self.drop_path_rate);
        set(&mut cfg.mixer.d_state, self.d_state);
        set(&mut cfg.mixer.d_conv, self.d_conv);
        set(&mut cfg.mixer.expand, self.expand);
        set(&mut cfg.mixer.headdim, self.headdim);
        set(&mut cfg.mixer.ngroups, self.ngroups);
    }
}

impl Family for HydraVitConfig {
    const NAME: &'static str = "hydra_vit";

    /// tokenmix's compositions at ViT-S and ViT-B widths (ViT-B is the paper's setting); no
    /// weights are released.
    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("hydra_vit_s16_224", "hydra_vit", None, ArchConfig::new(HydraVitConfig::new(384, 12)), pretrained: PretrainedCfg::metaformer(0.9)),
        entry!("hydra_vit_b16_224", "hydra_vit", None, ArchConfig::new(HydraVitConfig::new(768, 12)), pretrained: PretrainedCfg::metaformer(0.9)),
    ];
}

impl Architecture for HydraVitConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(HydraVit::new(self, vb)?))
    }

    crate::arch::common_fields!();

    /// Every block, `blocks.{i}`, at the patch stride.
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let info = |i| FeatureInfo::new(self.embed_dim, self.patch_size, format!("blocks.{i}"));
        (0..self.depth).map(info).collect()
    }

    fn check(&self) -> std::result::Result<(), String> {
        if !(1..=64).contains(&self.patch_size) {
            return Err(format!("patch_size must be in 1..=64, got {}", self.patch_size));
        }
        if !(1..=65_536).contains(&self.embed_dim) || !(1..=1000).contains(&self.depth) {
            return Err(format!(
                "embed_dim must be in 1..=65536 and depth in 1..=1000, got {} and {}",
                self.embed_dim, self.depth
            ));
        }
        self.mixer
            .validate(self.embed_dim)
            .map_err(|e| e.to_string())
    }

    fn ratios(&self) -> Vec<Ratio> {
        vec![Ratio::of("mlp_ratio", self.mlp_ratio, self.embed_dim)]
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<HydraVitArgs>(Self::NAME, args)?.apply(self);
        Ok(())
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let (n, d) = ((gh * gw) as u64, self.embed_dim as u64);
        let block = self.mixer.macs(self.embed_dim, gh, gw) + 2 * n * d * self.hidden() as u64;
        n * d * (self.in_chans * p * p) as u64
            + block * self.depth as u64
            + d * self.num_classes as u64
    }
}

/// One pre-norm block.
#[derive(Debug)]
struct Block {
    norm1: Norm,
    mixer: Hydra,
    norm2: Norm,
    mlp: Mlp,
    drop_path: DropPath,
}

impl Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.mixer.forward(&self.norm1.forward(x)?)?;
        let x = (x + self.drop_path.forward_t(&y, train)?)?;
        self.mlp
            .forward_residual(&self.norm2.forward(&x)?, &x, self.drop_path, train)
    }
}

/// The Hydra ViT image classifier.
#[derive(Debug)]
pub struct HydraVit {
    cfg: HydraVitConfig,
    patch_embed: ConvNhwc,
    blocks: Vec<Block>,
    norm: Norm,
    /// `head`; `None` without classes or once pruned.
    head: Option<Linear>,
}

impl HydraVit {
    /// Builds the model, reading every tensor from `vb` (names in the module docs).
    pub fn new(cfg: &HydraVitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let (d, layout) = (cfg.embed_dim, MixerLayout::Tokens);
        let ln = NormConfig::LAYER_NORM;
        let rates = drop_path_rates(cfg.drop_path_rate, cfg.depth);
        let blocks = rates
            .into_iter()
            .enumerate()
            .map(|(i, drop_path)| {
                let b = vb.pp("blocks").pp(i);
                Ok(Block {
                    norm1: ln.build(d, layout, b.pp("norm1"))?,
                    mixer: Hydra::new(&cfg.mixer, d, b.pp("attn"))?,
                    norm2: ln.build(d, layout, b.pp("norm2"))?,
                    mlp: Mlp::new(d, cfg.hidden(), ActKind::Gelu, true, layout, b.pp("mlp"))?,
                    drop_path,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed: crate::patch_embed(cfg.in_chans, d, cfg.patch_size, vb.pp("patch_embed").pp("proj"))?,
            blocks,
            norm: ln.build(d, layout, vb.pp("norm"))?,
            head: crate::optional_linear(d, cfg.num_classes, vb.pp("head"))?,
        })
    }
}

impl ImageModel for HydraVit {
    fn in_chans(&self) -> usize {
        self.cfg.in_chans
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    /// The normed tokens after the last block as a `(B, C, H/p, W/p)` map.
    fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let last = self.blocks.len().saturating_sub(1);
        self.forward_intermediates_t(x, &[last], true, train)
    }

    /// Each block's tokens as `(B, C, H/p, W/p)`; `norm` applies the final norm (as timm).
    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        norm: bool,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let last = check_take(take, self.blocks.len())?;
        let (mut x, grid) = crate::patch_tokens(&self.patch_embed, x)?;
        let mut features = Vec::with_capacity(take.len());
        for (i, block) in self.blocks.iter().enumerate().take(last + 1) {
            x = block.forward_t(&x, train)?;
            if take.contains(&i) {
                let t = if norm { self.norm.forward(&x)? } else { x.clone() };
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
        self.cfg.depth = kept;
        self.cfg.num_classes = 0;
        self.head = None;
        Ok(take)
    }

    /// The classifier sits on the pooled normed tokens (pruned or not).
    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        self.head = crate::optional_linear(self.cfg.embed_dim, num_classes, vb.pp("head"))?;
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        crate::pool_and_classify(last, self.head.as_ref())
    }
}
