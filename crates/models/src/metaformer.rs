//! MetaFormer backbones: PoolFormer v1/v2, IdentityFormer, RandFormer, ConvFormer, CAFormer.
//!
//! One backbone, [`MetaFormer`], covers the whole family by choosing a token mixer, a norm and a
//! few switches per stage, as timm's `timm/models/metaformer.py` does; tensor names follow timm
//! (`stem.conv`, `stages.{i}.downsample`, `stages.{i}.blocks.{j}.token_mixer`, `head.fc`).
//!
//! Papers: "MetaFormer is Actually What You Need for Vision" (arXiv 2111.11418) and "MetaFormer
//! Baselines for Vision" (arXiv 2210.13452).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_kernels::Window;
use tokenmix_mixers::layers::{
    drop_path_rates, global_avg_pool, ActKind, ConvNhwc, DropPath, Mlp, Norm, NormConfig, Scale,
};
use tokenmix_mixers::random_mixing::RandomMixingConfig;
use tokenmix_mixers::ssm::MambaConfig;
use tokenmix_mixers::hydra::HydraConfig;
use tokenmix_mixers::spectrum::DynamicSpectrumConfig;
use tokenmix_mixers::linear_attention::LinearAttentionConfig;
use tokenmix_mixers::{MixerConfig, MixerLayout, TokenMixer};

use crate::args::{parse, present, set, ImgSize, PerStage};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, PretrainedCfg};
use crate::features::{check_take, pruned_error, truncate_after_last};
use crate::{Architecture, Error, Family, FeatureInfo, ImageModel, Indices, Ratio};

/// Depths and widths of the registered variants.
const S12: ([usize; 4], [usize; 4]) = ([2, 2, 6, 2], [64, 128, 320, 512]);
const S24: ([usize; 4], [usize; 4]) = ([4, 4, 12, 4], [64, 128, 320, 512]);
const S36: ([usize; 4], [usize; 4]) = ([6, 6, 18, 6], [64, 128, 320, 512]);
const M36: ([usize; 4], [usize; 4]) = ([6, 6, 18, 6], [96, 192, 384, 768]);
const M48: ([usize; 4], [usize; 4]) = ([8, 8, 24, 8], [96, 192, 384, 768]);
const CS18: ([usize; 4], [usize; 4]) = ([3, 3, 9, 3], [64, 128, 320, 512]);
const CS36: ([usize; 4], [usize; 4]) = ([3, 12, 18, 3], [64, 128, 320, 512]);
const CM36: ([usize; 4], [usize; 4]) = ([3, 12, 18, 3], [96, 192, 384, 576]);
const CB36: ([usize; 4], [usize; 4]) = ([3, 12, 18, 3], [128, 256, 512, 768]);

/// Hyper-parameters of a [`MetaFormer`]. Field names are timm's `MetaFormer` kwargs where timm
/// has one; per-stage lists have one entry per stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaFormerConfig {
    /// Input image channels.
    pub in_chans: usize,
    /// Classifier outputs; 0 means no classifier (the head returns pooled, normed features).
    pub num_classes: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Channels per stage.
    pub dims: Vec<usize>,
    /// Token mixer per stage.
    pub token_mixers: Vec<MixerConfig>,
    /// Block norm (`norm1`, `norm2`) per stage.
    pub norm_layers: Vec<NormConfig>,
    /// Norm of the stem (after its conv) and of the downsamplers (before their conv); `None` for
    /// PoolFormer v1.
    pub downsample_norm: Option<NormConfig>,
    /// Activation of the block MLPs.
    pub mlp_act: ActKind,
    /// Whether the block MLPs have biases.
    pub mlp_bias: bool,
    /// Hidden width of the block MLPs as a multiple of the stage width.
    pub mlp_ratio: f64,
    /// Per stage, whether blocks scale their branches (`layer_scale{1,2}.scale`); timm stores
    /// the init value, only its presence matters for inference.
    pub layer_scale_init_values: Vec<Option<f64>>,
    /// Per stage, whether blocks scale their shortcuts (`res_scale{1,2}.scale`).
    pub res_scale_init_values: Vec<Option<f64>>,
    /// Norm applied to the pooled features before the classifier.
    pub output_norm: NormConfig,
    /// `MlpHead` (fc1, SquaredReLU, LayerNorm, fc2) instead of a single Linear.
    pub use_mlp_head: bool,
    /// Stochastic depth of the last block in training (rates rise linearly from 0 over all
    /// blocks); 0 for inference.
    #[serde(default)]
    pub drop_path_rate: f64,
}

impl MetaFormerConfig {
    fn base(depths: [usize; 4], dims: [usize; 4], mixers: Vec<MixerConfig>) -> Self {
        Self {
            in_chans: 3,
            num_classes: 1000,
            depths: depths.to_vec(),
            dims: dims.to_vec(),
            token_mixers: mixers,
            norm_layers: vec![NormConfig::GROUP_NORM1_NO_BIAS; 4],
            downsample_norm: Some(NormConfig::LAYER_NORM_NO_BIAS),
            mlp_act: ActKind::StarRelu,
            mlp_bias: false,
            mlp_ratio: 4.0,
            layer_scale_init_values: vec![None; 4],
            res_scale_init_values: vec![None, None, Some(1.0), Some(1.0)],
            output_norm: NormConfig::LAYER_NORM,
            use_mlp_head: false,
            drop_path_rate: 0.0,
        }
    }

    /// PoolFormer v1: pooling mixers, GroupNorm1 with bias, GELU MLPs with bias, layer scale.
    pub fn poolformer_v1(depths: [usize; 4], dims: [usize; 4], layer_scale: f64) -> Self {
        Self {
            norm_layers: vec![NormConfig::GROUP_NORM1; 4],
            downsample_norm: None,
            mlp_act: ActKind::Gelu,
            mlp_bias: true,
            layer_scale_init_values: vec![Some(layer_scale); 4],
            res_scale_init_values: vec![None; 4],
            ..Self::base(depths, dims, vec![MixerConfig::pooling(); 4])
        }
    }

    /// PoolFormer v2: pooling mixers, GroupNorm1 without bias, StarReLU MLPs, res scale.
    pub fn poolformer_v2(depths: [usize; 4], dims: [usize; 4]) -> Self {
        Self::base(depths, dims, vec![MixerConfig::pooling(); 4])
    }

    /// IdentityFormer: PoolFormer v2 with identity mixers.
    pub fn identityformer(depths: [usize; 4], dims: [usize; 4]) -> Self {
        Self::base(depths, dims, vec![MixerConfig::identity(); 4])
    }

    /// RandFormer: identity mixers in stages 0-1, frozen random mixing in stages 2-3, for an
    /// input of `img_size` (height, width).
    pub fn randformer(depths: [usize; 4], dims: [usize; 4], img_size: (usize, usize)) -> Self {
        let random = MixerConfig::new(RandomMixingConfig { num_tokens: 0 });
        let identity = MixerConfig::identity();
        let mixers = vec![identity.clone(), identity, random.clone(), random];
        let mut cfg = Self::base(depths, dims, mixers);
        cfg.set_random_mixing_size(img_size);
        cfg
    }

    /// ConvFormer: SepConv mixers, channel LayerNorm without bias, MlpHead.
    pub fn convformer(depths: [usize; 4], dims: [usize; 4]) -> Self {
        Self {
            norm_layers: vec![NormConfig::LAYER_NORM_NO_BIAS; 4],
            use_mlp_head: true,
            ..Self::base(depths, dims, vec![MixerConfig::sepconv(); 4])
        }
    }

    /// CAFormer: SepConv in stages 0-1, attention in stages 2-3, MlpHead.
    pub fn caformer(depths: [usize; 4], dims: [usize; 4]) -> Self {
        let mixers = vec![
            MixerConfig::sepconv(),
            MixerConfig::sepconv(),
            MixerConfig::attention(),
            MixerConfig::attention(),
        ];
        Self {
            norm_layers: vec![NormConfig::LAYER_NORM_NO_BIAS; 4],
            use_mlp_head: true,
            ..Self::base(depths, dims, mixers)
        }
    }

    /// A CAFormer whose attention stages use bidirectional Mamba mixers instead (SepConv in
    /// stages 0-1, Mamba in stages 2-3): tokenmix's MetaFormer with a selective SSM.
    pub fn mambaformer(depths: [usize; 4], dims: [usize; 4]) -> Self {
        let mamba = MixerConfig::new(MambaConfig::default());
        let mixers = vec![
            MixerConfig::sepconv(),
            MixerConfig::sepconv(),
            mamba.clone(),
            mamba,
        ];
        Self {
            norm_layers: vec![NormConfig::LAYER_NORM_NO_BIAS; 4],
            use_mlp_head: true,
            ..Self::base(depths, dims, mixers)
        }
    }

    /// A CAFormer whose attention stages use LinFusion's generalized linear attention instead
    /// (SepConv in stages 0-1, linear attention with CAFormer's head width in stages 2-3):
    /// tokenmix's MetaFormer with an O(N) attention.
    pub fn linattnformer(depths: [usize; 4], dims: [usize; 4]) -> Self {
        let linear = MixerConfig::new(LinearAttentionConfig::default());
        let mixers = vec![
            MixerConfig::sepconv(),
            MixerConfig::sepconv(),
            linear.clone(),
            linear,
        ];
        Self {
            norm_layers: vec![NormConfig::LAYER_NORM_NO_BIAS; 4],
            use_mlp_head: true,
            ..Self::base(depths, dims, mixers)
        }
    }

    /// A CAFormer whose attention stages use Hydra's bidirectional matrix mixer instead (SepConv
    /// in stages 0-1, Hydra with the reference's defaults in stages 2-3): tokenmix's MetaFormer
    /// with a quasiseparable mixer.
    pub fn hydraformer(depths: [usize; 4], dims: [usize; 4]) -> Self {
        let hydra = MixerConfig::new(HydraConfig::default());
        let mixers = vec![
            MixerConfig::sepconv(),
            MixerConfig::sepconv(),
            hydra.clone(),
            hydra,
        ];
        Self {
            norm_layers: vec![NormConfig::LAYER_NORM_NO_BIAS; 4],
            use_mlp_head: true,
            ..Self::base(depths, dims, mixers)
        }
    }

    /// tokenmix's reading of the Dynamic Spectrum Mixer as a MetaFormer: the
    /// `dynamic_spectrum` mixer (see [`tokenmix_mixers::spectrum`]) in every stage, for an input
    /// of `img_size`, ConvFormer's norms and MlpHead.
    pub fn dsm(depths: [usize; 4], dims: [usize; 4], img_size: (usize, usize)) -> Self {
        let spectrum = MixerConfig::new(DynamicSpectrumConfig::default());
        let mut cfg = Self {
            norm_layers: vec![NormConfig::LAYER_NORM_NO_BIAS; 4],
            use_mlp_head: true,
            ..Self::base(depths, dims, vec![spectrum; 4])
        };
        cfg.set_random_mixing_size(img_size);
        cfg
    }

    /// Number of stages.
    pub fn num_stages(&self) -> usize {
        self.depths.len()
    }

    /// Spatial size of each stage's output for an `h x w` input.
    pub fn stage_sizes(&self, h: usize, w: usize) -> Vec<(usize, usize)> {
        let stem = |n: usize| (n + 4).saturating_sub(7) / 4 + 1;
        let down = |n: usize| n.div_ceil(2);
        let mut size = (stem(h), stem(w));
        let mut prev = self.dims.first().copied().unwrap_or(0);
        let mut out = Vec::new();
        for &dim in &self.dims {
            if dim != prev {
                size = (down(size.0), down(size.1));
            }
            prev = dim;
            out.push(size);
        }
        out
    }

    /// Fits every stage's mixer to its grid for an `img_size` (height, width) input (see
    /// [`MixerConfig::for_grid`]: RandFormer's token count, token MLPs, global filters).
    pub fn set_random_mixing_size(&mut self, img_size: (usize, usize)) {
        let sizes = self.stage_sizes(img_size.0, img_size.1);
        for (mixer, (h, w)) in self.token_mixers.iter_mut().zip(sizes) {
            *mixer = mixer.for_grid(h, w);
        }
    }

    /// Makes every per-stage list `n` long: truncating, or repeating a list whose entries are
    /// all equal. Lists that differ per stage cannot be extended.
    fn resize_stages(&mut self, n: usize) -> crate::Result<()> {
        fn fit<T: Clone + PartialEq>(name: &str, v: &mut Vec<T>, n: usize) -> crate::Result<()> {
            if n <= v.len() {
                v.truncate(n);
            } else if v.windows(2).all(|w| w[0] == w[1]) && !v.is_empty() {
                v.resize(n, v[0].clone());
            } else {
                return Err(Error::config(
                    "model_args",
                    format!("cannot extend the per-stage {name} of this model to {n} stages"),
                ));
            }
            Ok(())
        }
        fit("depths", &mut self.depths, n)?;
        fit("dims", &mut self.dims, n)?;
        fit("token_mixers", &mut self.token_mixers, n)?;
        fit("norm_layers", &mut self.norm_layers, n)?;
        fit(
            "layer_scale_init_values",
            &mut self.layer_scale_init_values,
            n,
        )?;
        fit("res_scale_init_values", &mut self.res_scale_init_values, n)
    }
}

/// `model_args` of a MetaFormer, named as timm's `MetaFormer` kwargs. Training-only kwargs
/// (dropout) and `global_pool` are accepted and ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaFormerArgs {
    in_chans: Option<usize>,
    num_classes: Option<usize>,
    drop_path_rate: Option<f64>,
    depths: Option<Vec<usize>>,
    dims: Option<Vec<usize>>,
    mlp_bias: Option<bool>,
    use_mlp_head: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    layer_scale_init_values: Option<PerStage>,
    #[serde(default, deserialize_with = "present")]
    res_scale_init_values: Option<PerStage>,
    /// RandFormer's token grid.
    img_size: Option<ImgSize>,
    #[serde(rename = "drop_rate")]
    _drop_rate: Option<IgnoredAny>,
    #[serde(rename = "proj_drop_rate")]
    _proj_drop_rate: Option<IgnoredAny>,
    #[serde(rename = "global_pool")]
    _global_pool: Option<IgnoredAny>,
}

impl MetaFormerArgs {
    /// Stage counts first (they resize the per-stage lists), then the per-stage values, then
    /// the token grid, which depends on the widths.
    fn apply(self, cfg: &mut MetaFormerConfig) -> crate::Result<()> {
        if let Some(depths) = self.depths {
            cfg.resize_stages(depths.len())?;
            cfg.depths = depths;
        }
        if let Some(dims) = self.dims {
            cfg.resize_stages(dims.len())?;
            cfg.dims = dims;
        }
        let n = cfg.num_stages();
        if let Some(v) = self.layer_scale_init_values {
            cfg.layer_scale_init_values = v.stages("layer_scale_init_values", n)?;
        }
        if let Some(v) = self.res_scale_init_values {
            cfg.res_scale_init_values = v.stages("res_scale_init_values", n)?;
        }
        set(&mut cfg.in_chans, self.in_chans);
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.drop_path_rate, self.drop_path_rate);
        set(&mut cfg.mlp_bias, self.mlp_bias);
        set(&mut cfg.use_mlp_head, self.use_mlp_head);
        if let Some(size) = self.img_size {
            cfg.set_random_mixing_size(size.pair());
        }
        Ok(())
    }
}

impl Family for MetaFormerConfig {
    const NAME: &'static str = "meta_former";

    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("poolformer_s12", "poolformer", 77.2, 0.9, MetaFormerConfig::poolformer_v1(S12.0, S12.1, 1e-5), hub: "sail_in1k"),
        entry!("poolformer_s24", "poolformer", 80.3, 0.9, MetaFormerConfig::poolformer_v1(S24.0, S24.1, 1e-5), hub: "sail_in1k"),
        entry!("poolformer_s36", "poolformer", 81.4, 0.9, MetaFormerConfig::poolformer_v1(S36.0, S36.1, 1e-6), hub: "sail_in1k"),
        entry!("poolformer_m36", "poolformer", 82.1, 0.95, MetaFormerConfig::poolformer_v1(M36.0, M36.1, 1e-6), hub: "sail_in1k"),
        entry!("poolformer_m48", "poolformer", 82.5, 0.95, MetaFormerConfig::poolformer_v1(M48.0, M48.1, 1e-6), hub: "sail_in1k"),
        entry!("poolformerv2_s12", "poolformerv2", 78.0, 1.0, MetaFormerConfig::poolformer_v2(S12.0, S12.1), hub: "sail_in1k"),
        entry!("poolformerv2_s24", "poolformerv2", 80.7, 1.0, MetaFormerConfig::poolformer_v2(S24.0, S24.1), hub: "sail_in1k"),
        entry!("poolformerv2_s36", "poolformerv2", 81.6, 1.0, MetaFormerConfig::poolformer_v2(S36.0, S36.1), hub: "sail_in1k"),
        entry!("poolformerv2_m36", "poolformerv2", 82.2, 1.0, MetaFormerConfig::poolformer_v2(M36.0, M36.1), hub: "sail_in1k"),
        entry!("poolformerv2_m48", "poolformerv2", 82.6, 1.0, MetaFormerConfig::poolformer_v2(M48.0, M48.1), hub: "sail_in1k"),
        entry!("identityformer_s12", "identityformer", 74.6, 1.0, MetaFormerConfig::identityformer(S12.0, S12.1)),
        entry!("identityformer_s24", "identityformer", 78.2, 1.0, MetaFormerConfig::identityformer(S24.0, S24.1)),
        entry!("identityformer_s36", "identityformer", 79.3, 1.0, MetaFormerConfig::identityformer(S36.0, S36.1)),
        entry!("identityformer_m36", "identityformer", 80.0, 1.0, MetaFormerConfig::identityformer(M36.0, M36.1)),
        entry!("identityformer_m48", "identityformer", 80.4, 1.0, MetaFormerConfig::identityformer(M48.0, M48.1)),
        entry!("randformer_s12", "randformer", 76.6, 1.0, MetaFormerConfig::randformer(S12.0, S12.1, (224, 224))),
        entry!("randformer_s24", "randformer", 78.2, 1.0, MetaFormerConfig::randformer(S24.0, S24.1, (224, 224))),
        entry!("randformer_s36", "randformer", 79.5, 1.0, MetaFormerConfig::randformer(S36.0, S36.1, (224, 224))),
        entry!("randformer_m36", "randformer", 81.2, 1.0, MetaFormerConfig::randformer(M36.0, M36.1, (224, 224))),
        entry!("randformer_m48", "randformer", 81.4, 1.0, MetaFormerConfig::randformer(M48.0, M48.1, (224, 224))),
        entry!("convformer_s18", "convformer", 83.0, 1.0, MetaFormerConfig::convformer(CS18.0, CS18.1), hub: "sail_in1k"),
        entry!("convformer_s36", "convformer", 84.1, 1.0, MetaFormerConfig::convformer(CS36.0, CS36.1), hub: "sail_in1k"),
        entry!("convformer_m36", "convformer", 84.5, 1.0, MetaFormerConfig::convformer(CM36.0, CM36.1), hub: "sail_in1k"),
        entry!("convformer_b36", "convformer", 84.8, 1.0, MetaFormerConfig::convformer(CB36.0, CB36.1), hub: "sail_in1k"),
        entry!("caformer_s18", "caformer", 83.6, 1.0, MetaFormerConfig::caformer(CS18.0, CS18.1), hub: "sail_in1k"),
        entry!("caformer_s36", "caformer", 84.5, 1.0, MetaFormerConfig::caformer(CS36.0, CS36.1), hub: "sail_in1k"),
        entry!("caformer_m36", "caformer", 85.2, 1.0, MetaFormerConfig::caformer(CM36.0, CM36.1), hub: "sail_in1k"),
        entry!("caformer_b36", "caformer", 85.5, 1.0, MetaFormerConfig::caformer(CB36.0, CB36.1), hub: "sail_in1k"),
        entry!("mambaformer_s18", "mambaformer", None, ArchConfig::new(MetaFormerConfig::mambaformer(CS18.0, CS18.1)), pretrained: PretrainedCfg::metaformer(1.0)),
        entry!("mambaformer_s36", "mambaformer", None, ArchConfig::new(MetaFormerConfig::mambaformer(CS36.0, CS36.1)), pretrained: PretrainedCfg::metaformer(1.0)),
        entry!("mambaformer_m36", "mambaformer", None, ArchConfig::new(MetaFormerConfig::mambaformer(CM36.0, CM36.1)), pretrained: PretrainedCfg::metaformer(1.0)),
        entry!("mambaformer_b36", "mambaformer", None, ArchConfig::new(MetaFormerConfig::mambaformer(CB36.0, CB36.1)), pretrained: PretrainedCfg::metaformer(1.0)),
        entry!("linattnformer_s18", "linattnformer", None, ArchConfig::new(MetaFormerConfig::linattnformer(CS18.0, CS18.1)), pretrained: PretrainedCfg::metaformer(1.0)),
        entry!("linattnformer_s36", "linattnformer", None, ArchConfig::new(MetaFormerConfig::linattnformer(CS36.0, CS36.1)), pretrained: PretrainedCfg::metaformer(1.0)),
        entry!("linattnformer_m36", "linattnformer", None, ArchConfig::new(MetaFormerConfig::linattnformer(CM36.0, CM36.1)), pretrained: PretrainedCfg::metaformer(1.0)),
        entry!("linattnformer_b36", "linattnformer", None, ArchConfig::new(MetaFormerConfig::linattnformer(CB36.0, CB36.1)), pretrained: PretrainedCfg::metaformer(1.0)),
        entry!("hydraformer_s18", "hydraformer", None, ArchConfig::new(MetaFormerConfig::hydraformer(CS18.0, CS18.1)), pretrained: PretrainedCfg::metaformer(1.0)),
        entry!("hydraformer_s36", "hydraformer", None, ArchConfig::new(MetaFormerConfig::hydraformer(CS36.0, CS36.1)), pretrained: PretrainedCfg::metaformer(1.0)),
        entry!("hydraformer_m36", "hydraformer", None, ArchConfig::new(MetaFormerConfig::hydraformer(CM36.0, CM36.1)), pretrained: PretrainedCfg::metaformer(1.0)),
        entry!("hydraformer_b36", "hydraformer", None, ArchConfig::new(MetaFormerConfig::hydraformer(CB36.0, CB36.1)), pretrained: PretrainedCfg::metaformer(1.0)),
        entry!("tokenmix_dsm_s18", "tokenmix_dsm", None, ArchConfig::new(MetaFormerConfig::dsm(CS18.0, CS18.1, (224, 224))), pretrained: PretrainedCfg::metaformer(1.0)),
        entry!("tokenmix_dsm_s36", "tokenmix_dsm", None, ArchConfig::new(MetaFormerConfig::dsm(CS36.0, CS36.1, (224, 224))), pretrained: PretrainedCfg::metaformer(1.0)),
    ];
}

/// A checkpoint tensor's name in sail-sg's original code (poolformer's `network.{0..6}` with the
/// downsamplers between the stages and `layer_scale_1`; metaformer's `downsample_layers`,
/// `stages.{i}.{j}` and its `MlpHead` as `head`) as timm's `checkpoint_filter_fn` maps it to
/// timm's names; `poolformer_v1` for poolformer's layout.
fn sail_sg_name(name: &str, poolformer_v1: bool) -> String {
    let mut k = name.to_string();
    if poolformer_v1 {
        let segments: Vec<String> = k
            .split('.')
            .flat_map(|seg| match seg.strip_prefix("layer_scale_") {
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    vec![format!("layer_scale{n}"), "scale".to_string()]
                }
                _ => vec![seg.to_string()],
            })
            .collect();
        k = segments.join(".");
        for (from, to) in [
            ("network.1", "downsample_layers.1"),
            ("network.3", "downsample_layers.2"),
            ("network.5", "downsample_layers.3"),
            ("network.2", "network.1"),
            ("network.4", "network.2"),
            ("network.6", "network.3"),
            ("network", "stages"),
        ] {
            k = k.replace(from, to);
        }
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = k.split('.').collect();
    let mut out: Vec<&str> = Vec::with_capacity(parts.len() + 2);
    for (i, part) in parts.iter().enumerate() {
        if *part == "downsample_layers" && parts.get(i + 1).is_some_and(|n| digits(n)) {
            out.push("stages");
            continue;
        }
        if i > 0 && parts[i - 1] == "downsample_layers" && digits(part) {
            out.extend([*part, "downsample"]);
            continue;
        }
        if i > 0 && digits(part) && digits(parts[i - 1]) {
            out.push("blocks");
        }
        out.push(part);
    }
    let mut k = out.join(".");
    for (from, to) in [
        ("downsample.proj", "downsample.conv"),
        ("patch_embed.proj", "patch_embed.conv"),
    ] {
        k = k.replace(from, to);
    }
    if let Some(rest) = k.strip_prefix("stages.0.downsample") {
        k = format!("stem{rest}");
    }
    k = k
        .replace("patch_embed", "stem")
        .replace("post_norm", "norm")
        .replace("pre_norm", "norm");
    if let Some(rest) = k.strip_prefix("head") {
        k = format!("head.fc{rest}");
    } else if let Some(rest) = k.strip_prefix("norm") {
        k = format!("head.norm{rest}");
    }
    k
}

impl Architecture for MetaFormerConfig {
    /// sail-sg's original PoolFormer and MetaFormer checkpoints (`network.*` or
    /// `downsample_layers.*`, no `stem.conv.weight`) are read under timm's names, as timm's
    /// `checkpoint_filter_fn` maps them; timm's own checkpoints are read as they are.
    fn checkpoint_names(&self, names: &[&str]) -> Vec<String> {
        let original = !names.contains(&"stem.conv.weight")
            && names
                .iter()
                .any(|n| n.starts_with("network.") || n.starts_with("downsample_layers."));
        if !original {
            return names.iter().map(|n| n.to_string()).collect();
        }
        let v1 = names.contains(&"network.0.0.mlp.fc1.weight");
        names.iter().map(|n| sail_sg_name(n, v1)).collect()
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(MetaFormer::new(self, vb)?))
    }

    crate::arch::common_fields!();

    /// Every stage, `stages.{i}`: stride 4 after the stem, doubled by each downsampler (there is
    /// one wherever the width changes; timm's list assumes one in every stage after the first).
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let mut reduction = 4;
        let mut prev = self.dims.first().copied().unwrap_or(0);
        let info = |(i, &dim): (usize, &usize)| {
            if dim != prev {
                reduction *= 2;
            }
            prev = dim;
            FeatureInfo::new(dim, reduction, format!("stages.{i}"))
        };
        self.dims.iter().enumerate().map(info).collect()
    }

    /// The per-stage lists agree and sizes are sane.
    fn check(&self) -> std::result::Result<(), String> {
        let n = self.num_stages();
        if n == 0 {
            return Err("depths is empty".into());
        }
        let lens = [
            ("dims", self.dims.len()),
            ("token_mixers", self.token_mixers.len()),
            ("norm_layers", self.norm_layers.len()),
            (
                "layer_scale_init_values",
                self.layer_scale_init_values.len(),
            ),
            ("res_scale_init_values", self.res_scale_init_values.len()),
        ];
        for (name, len) in lens {
            if len != n {
                return Err(format!(
                    "{name} has {len} entries but depths has {n} stages"
                ));
            }
        }
        if let Some(d) = self.dims.iter().find(|&&d| d == 0 || d > 65_536) {
            return Err(format!("every dim must be in 1..=65536, got {d}"));
        }
        if let Some(d) = self.depths.iter().find(|&&d| d > 1000) {
            return Err(format!("every depth must be at most 1000, got {d}"));
        }
        for (mixer, dim) in self.token_mixers.iter().zip(&self.dims) {
            mixer.validate(*dim).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn ratios(&self) -> Vec<Ratio> {
        let ratio = |&dim| Ratio::of("mlp_ratio", self.mlp_ratio, dim);
        self.dims.iter().map(ratio).collect()
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<MetaFormerArgs>(Self::NAME, args)?.apply(self)
    }

    fn set_image_size(&mut self, h: usize, w: usize) {
        self.set_random_mixing_size((h, w));
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let sizes = self.stage_sizes(h, w);
        let mut total = 0u64;
        let (h1, w1) = sizes[0];
        total += (h1 * w1 * self.dims[0] * self.in_chans * 49) as u64;
        let mut prev = self.dims[0];
        for (i, &(sh, sw)) in sizes.iter().enumerate() {
            let dim = self.dims[i];
            let n = (sh * sw) as u64;
            if dim != prev {
                total += n * (dim * prev * 9) as u64;
            }
            prev = dim;
            let hidden = (self.mlp_ratio * dim as f64) as u64;
            let block = self.token_mixers[i].macs(dim, sh, sw) + 2 * n * dim as u64 * hidden;
            total += block * self.depths[i] as u64;
        }
        let d = *self.dims.last().unwrap_or(&0) as u64;
        let classes = self.num_classes as u64;
        total += if self.num_classes == 0 {
            0
        } else if self.use_mlp_head {
            d * 4 * d + 4 * d * classes
        } else {
            d * classes
        };
        total
    }
}

/// Post-norm stem on the image `(B, Cin, H, W)`: `conv 7x7 / 4, padding 2` then an optional
/// norm, returning a channel-last map `(B, H/4, W/4, C)`.
#[derive(Debug, Clone)]
struct Stem {
    conv: ConvNhwc,
    norm: Option<Norm>,
}

impl Stem {
    fn new(cfg: &MetaFormerConfig, vb: VarBuilder) -> Result<Self> {
        let window = Window {
            kernel: 7,
            stride: 4,
            padding: 2,
        };
        let dim = cfg.dims[0];
        Ok(Self {
            conv: ConvNhwc::new(cfg.in_chans, dim, window, true, vb.pp("conv"))?,
            norm: cfg
                .downsample_norm
                .map(|n| n.build(dim, MixerLayout::ChannelsLast, vb.pp("norm")))
                .transpose()?,
        })
    }
}

impl Module for Stem {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.conv.forward(&x.permute((0, 2, 3, 1))?)?;
        match &self.norm {
            Some(n) => n.forward(&x),
            None => Ok(x),
        }
    }
}

/// Pre-norm downsampler on channel-last maps: optional norm then `conv 3x3 / 2, padding 1`.
#[derive(Debug, Clone)]
struct Downsample {
    norm: Option<Norm>,
    conv: ConvNhwc,
}

impl Downsample {
    fn new(
        norm: Option<NormConfig>,
        in_dim: usize,
        out_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let window = Window {
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        Ok(Self {
            norm: norm
                .map(|n| n.build(in_dim, MixerLayout::ChannelsLast, vb.pp("norm")))
                .transpose()?,
            conv: ConvNhwc::new(in_dim, out_dim, window, true, vb.pp("conv"))?,
        })
    }
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.norm {
            Some(n) => self.conv.forward(&n.forward(x)?),
            None => self.conv.forward(x),
        }
    }
}

/// `x = res_scale1(x) + layer_scale1(mixer(norm1(x)))`,
/// `x = res_scale2(x) + layer_scale2(mlp(norm2(x)))`.
#[derive(Debug)]
struct Block {
    norm1: Norm,
    token_mixer: Box<dyn TokenMixer>,
    layer_scale1: Option<Scale>,
    res_scale1: Option<Scale>,
    norm2: Norm,
    /// The MLP with `layer_scale2` as its output scale.
    mlp: Mlp,
    res_scale2: Option<Scale>,
    drop_path: DropPath,
    /// The layout the block runs in: its mixer's (channel-last for `Any`).
    layout: MixerLayout,
}

/// A block's MLP as timm stores it: `Linear` weights in token (attention) stages, 1x1
/// convolutions in every other stage, whichever layout the stage runs in.
fn mlp(
    dim: usize,
    hidden: usize,
    act: ActKind,
    bias: bool,
    layout: MixerLayout,
    vb: VarBuilder,
) -> Result<Mlp> {
    match layout {
        MixerLayout::Tokens => Mlp::new(dim, hidden, act, bias, layout, vb),
        _ => Mlp::conv1x1(dim, hidden, act, bias, layout, vb),
    }
}

fn apply_opt(scale: &Option<Scale>, x: &Tensor) -> Result<Tensor> {
    match scale {
        Some(s) => s.forward(x),
        None => Ok(x.clone()),
    }
}

impl Block {
    fn new(
        cfg: &MetaFormerConfig,
        stage: usize,
        drop_path: DropPath,
        vb: VarBuilder,
    ) -> Result<Self> {
        let dim = cfg.dims[stage];
        let token_mixer = cfg.token_mixers[stage].build(dim, vb.pp("token_mixer"))?;
        let layout = token_mixer.layout().resolved();
        let norm = cfg.norm_layers[stage];
        let scale = |on: bool, name: &str| -> Result<Option<Scale>> {
            on.then(|| Scale::new(dim, layout, vb.pp(name))).transpose()
        };
        let ls = cfg.layer_scale_init_values[stage].is_some();
        let rs = cfg.res_scale_init_values[stage].is_some();
        let hidden = (cfg.mlp_ratio * dim as f64) as usize;
        Ok(Self {
            norm1: norm.build(dim, layout, vb.pp("norm1"))?,
            token_mixer,
            layer_scale1: scale(ls, "layer_scale1")?,
            res_scale1: scale(rs, "res_scale1")?,
            norm2: norm.build(dim, layout, vb.pp("norm2"))?,
            mlp: mlp(dim, hidden, cfg.mlp_act, cfg.mlp_bias, layout, vb.pp("mlp"))?
                .with_output_scale(scale(ls, "layer_scale2")?),
            res_scale2: scale(rs, "res_scale2")?,
            drop_path,
            layout,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mixed = self.token_mixer.forward(&self.norm1.forward(x)?)?;
        let x = if train {
            let mixed = self
                .drop_path
                .forward_t(&apply_opt(&self.layer_scale1, &mixed)?, train)?;
            (apply_opt(&self.res_scale1, x)? + mixed)?
        } else {
            Scale::scaled_sum(
                x,
                self.res_scale1.as_ref(),
                &mixed,
                self.layer_scale1.as_ref(),
            )?
        };
        self.mlp.forward_residual(
            &self.norm2.forward(&x)?,
            &apply_opt(&self.res_scale2, &x)?,
            self.drop_path,
            train,
        )
    }
}

/// A downsampler (absent when the width does not change) and blocks, run in the layout of the
/// stage's mixer: `(B, N, C)` tokens for attention-like mixers, `(B, H, W, C)` for channel-last
/// ones, `(B, C, H, W)` otherwise.
#[derive(Debug)]
struct Stage {
    downsample: Option<Downsample>,
    blocks: Vec<Block>,
    layout: MixerLayout,
}

impl Stage {
    fn new(
        cfg: &MetaFormerConfig,
        i: usize,
        prev_dim: usize,
        drop_paths: &[DropPath],
        vb: VarBuilder,
    ) -> Result<Self> {
        let dim = cfg.dims[i];
        let downsample = (prev_dim != dim)
            .then(|| Downsample::new(cfg.downsample_norm, prev_dim, dim, vb.pp("downsample")))
            .transpose()?;
        let blocks = (0..cfg.depths[i])
            .map(|j| Block::new(cfg, i, drop_paths[j], vb.pp("blocks").pp(j)))
            .collect::<Result<Vec<_>>>()?;
        let layout = blocks
            .first()
            .map_or(MixerLayout::ChannelsLast, |b| b.layout);
        Ok(Self {
            downsample,
            blocks,
            layout,
        })
    }
}

impl Stage {
    /// Runs the stage on a channel-last map `(B, H, W, C)` and returns one, whatever layout its
    /// blocks work in.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        let (b, h, w, c) = x.dims4()?;
        let mut x = match self.layout {
            MixerLayout::Tokens => x.reshape((b, h * w, c))?,
            MixerLayout::Spatial => x.permute((0, 3, 1, 2))?.contiguous()?,
            _ => x,
        };
        for block in &self.blocks {
            x = block.forward_t(&x, train)?;
        }
        match self.layout {
            MixerLayout::Tokens => x.reshape((b, h, w, c)),
            MixerLayout::Spatial => x.permute((0, 2, 3, 1))?.contiguous(),
            _ => Ok(x),
        }
    }
}

/// ConvFormer/CAFormer classifier: `fc2(norm(squared_relu(fc1(x))))`.
#[derive(Debug, Clone)]
struct MlpHead {
    fc1: Linear,
    norm: Norm,
    fc2: Linear,
}

impl MlpHead {
    fn new(dim: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = 4 * dim;
        Ok(Self {
            fc1: candle_nn::linear(dim, hidden, vb.pp("fc1"))?,
            norm: NormConfig::LAYER_NORM.build(hidden, MixerLayout::Tokens, vb.pp("norm"))?,
            fc2: candle_nn::linear(hidden, classes, vb.pp("fc2"))?,
        })
    }
}

impl Module for MlpHead {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = tokenmix_kernels::squared_relu(&self.fc1.forward(x)?)?;
        self.fc2.forward(&self.norm.forward(&h)?)
    }
}

#[derive(Debug, Clone)]
enum Classifier {
    None,
    Linear(Linear),
    Mlp(MlpHead),
}

impl Classifier {
    fn new(cfg: &MetaFormerConfig, dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(match (cfg.num_classes, cfg.use_mlp_head) {
            (0, _) => Classifier::None,
            (n, true) => Classifier::Mlp(MlpHead::new(dim, n, vb)?),
            (n, false) => Classifier::Linear(candle_nn::linear(dim, n, vb)?),
        })
    }
}

/// A MetaFormer image classifier: stem, stages, and a head (global average pool, norm,
/// classifier).
#[derive(Debug)]
pub struct MetaFormer {
    cfg: MetaFormerConfig,
    stem: Stem,
    stages: Vec<Stage>,
    /// `None` once pruned.
    head_norm: Option<Norm>,
    head_fc: Classifier,
}

impl MetaFormer {
    /// Builds the model, reading every tensor from `vb` under timm's names.
    pub fn new(cfg: &MetaFormerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let stem = Stem::new(cfg, vb.pp("stem"))?;
        let mut prev = cfg.dims[0];
        let mut stages = Vec::with_capacity(cfg.num_stages());
        let drop_paths = drop_path_rates(cfg.drop_path_rate, cfg.depths.iter().sum());
        let mut first = 0;
        for i in 0..cfg.num_stages() {
            let rates = &drop_paths[first..first + cfg.depths[i]];
            stages.push(Stage::new(cfg, i, prev, rates, vb.pp("stages").pp(i))?);
            prev = cfg.dims[i];
            first += cfg.depths[i];
        }
        let head = vb.pp("head");
        let dim = prev;
        let head_fc = Classifier::new(cfg, dim, head.pp("fc"))?;
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            stages,
            head_norm: Some(
                cfg.output_norm
                    .build(dim, MixerLayout::Tokens, head.pp("norm"))?,
            ),
            head_fc,
        })
    }

    /// The configuration the model was built from (after
    /// [`prune_intermediate_layers`](ImageModel::prune_intermediate_layers), the kept stages and
    /// no classifier; after [`reset_classifier`](ImageModel::reset_classifier), its width).
    pub fn config(&self) -> &MetaFormerConfig {
        &self.cfg
    }
}

impl ImageModel for MetaFormer {
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
            x = stage.forward_t(&x, train)?;
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
        self.cfg
            .resize_stages(kept)
            .map_err(candle_core::Error::msg)?;
        self.cfg.num_classes = 0;
        self.head_norm = None;
        self.head_fc = Classifier::None;
        Ok(take)
    }

    /// The classifier is `head.fc`: a Linear, or ConvFormer's and CAFormer's MlpHead.
    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        if self.head_norm.is_none() {
            return pruned_error();
        }
        let dim = self.cfg.dims[self.cfg.dims.len() - 1];
        let mut cfg = self.cfg.clone();
        cfg.num_classes = num_classes;
        self.head_fc = Classifier::new(&cfg, dim, vb.pp("head").pp("fc"))?;
        self.cfg = cfg;
        Ok(())
    }

    fn forward_head(&self, x: &Tensor) -> Result<Tensor> {
        let pooled = global_avg_pool(x)?;
        let pooled = match &self.head_norm {
            Some(norm) => norm.forward(&pooled)?,
            None => pooled,
        };
        match &self.head_fc {
            Classifier::None => Ok(pooled),
            Classifier::Linear(fc) => fc.forward(&pooled),
            Classifier::Mlp(head) => head.forward(&pooled),
        }
    }
}

#[cfg(test)]
mod tests {

    /// sail-sg/metaformer's (v2) and poolformer's (v1) original names, mapped as timm's
    /// `checkpoint_filter_fn` maps them (expected names worked out from its regexes).
    #[test]
    fn sail_sg_names_map_to_timm_names() {
        let v2 = [
            ("downsample_layers.0.conv.weight", "stem.conv.weight"),
            ("downsample_layers.0.post_norm.weight", "stem.norm.weight"),
            ("downsample_layers.2.pre_norm.weight", "stages.2.downsample.norm.weight"),
            ("downsample_layers.2.conv.bias", "stages.2.downsample.conv.bias"),
            ("stages.1.10.token_mixer.qkv.weight", "stages.1.blocks.10.token_mixer.qkv.weight"),
            ("stages.3.0.res_scale1.scale", "stages.3.blocks.0.res_scale1.scale"),
            ("norm.weight", "head.norm.weight"),
            ("head.fc1.weight", "head.fc.fc1.weight"),
            ("head.norm.bias", "head.fc.norm.bias"),
        ];
        for (from, to) in v2 {
            assert_eq!(sail_sg_name(from, false), to, "{from}");
        }
        let v1 = [
            ("patch_embed.proj.weight", "stem.conv.weight"),
            ("network.0.1.layer_scale_2", "stages.0.blocks.1.layer_scale2.scale"),
            ("network.3.proj.bias", "stages.2.downsample.conv.bias"),
            ("network.6.1.mlp.fc2.weight", "stages.3.blocks.1.mlp.fc2.weight"),
            ("head.weight", "head.fc.weight"),
        ];
        for (from, to) in v1 {
            assert_eq!(sail_sg_name(from, true), to, "{from}");
        }
    }

    use super::*;

    /// A one-block-per-stage MetaFormer with `mixer` in every stage, its variables drawn at
    /// random, for a 48x80 input.
    fn random_metaformer(mixer: &MixerConfig) -> MetaFormer {
        use candle_core::{DType, Device};
        let mut cfg = MetaFormerConfig::poolformer_v2([1, 1, 1, 1], [16, 32, 64, 128]);
        cfg.num_classes = 10;
        cfg.token_mixers = vec![mixer.clone(); 4];
        cfg.set_random_mixing_size((48, 80));
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        MetaFormer::new(&cfg, vb.clone()).unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let t = Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu).unwrap();
            let t = if name.ends_with("var") {
                (t.abs().unwrap() + 0.5).unwrap()
            } else {
                t
            };
            var.set(&t).unwrap();
        }
        MetaFormer::new(&cfg, vb).unwrap()
    }

    #[test]
    fn every_registered_mixer_runs_in_every_metaformer_stage() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 48, 80), &candle_core::Device::Cpu).unwrap();
        for reg in tokenmix_mixers::registered_mixers() {
            let model = random_metaformer(&reg.default_config());
            for stage in &model.stages {
                let declared = stage.blocks[0].token_mixer.layout();
                assert_eq!(stage.layout, declared.resolved(), "{}", reg.kind);
            }
            let features = model.forward_features(&x).unwrap();
            let dims: Vec<_> = features.iter().map(|f| f.dims().to_vec()).collect();
            let expect = [
                [2, 16, 12, 20],
                [2, 32, 6, 10],
                [2, 64, 3, 5],
                [2, 128, 2, 3],
            ];
            assert_eq!(dims, expect, "{}", reg.kind);
            let logits = model.forward(&x).unwrap();
            assert_eq!(logits.dims(), [2, 10], "{}", reg.kind);
            let m: f32 = logits
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(m.is_finite(), "{}: {m}", reg.kind);
        }
    }

    #[test]
    fn stage_sizes_follow_the_convolutions() {
        let cfg = MetaFormerConfig::poolformer_v2([2, 2, 6, 2], [64, 128, 320, 512]);
        assert_eq!(
            cfg.stage_sizes(224, 224),
            vec![(56, 56), (28, 28), (14, 14), (7, 7)]
        );
        assert_eq!(
            cfg.stage_sizes(64, 97),
            vec![(16, 24), (8, 12), (4, 6), (2, 3)]
        );
    }

    #[test]
    fn randformer_tokens_follow_img_size() {
        let cfg = MetaFormerConfig::randformer([2, 2, 6, 2], [64, 128, 320, 512], (224, 224));
        let random = |n| MixerConfig::new(RandomMixingConfig { num_tokens: n });
        assert_eq!(cfg.token_mixers[2], random(196));
        assert_eq!(cfg.token_mixers[3], random(49));
        assert_eq!(cfg.token_mixers[0], MixerConfig::identity());
    }

    #[test]
    fn model_args_override_and_reject_unknown_keys() {
        let mut cfg = MetaFormerConfig::caformer([3, 3, 9, 3], [64, 128, 320, 512]);
        let args = serde_json::json!({"depths": [1, 1, 2], "dims": [16, 32, 64], "num_classes": 7});
        cfg.apply_model_args(args.as_object().unwrap()).unwrap();
        assert_eq!(cfg.depths, vec![1, 1, 2]);
        assert_eq!(cfg.token_mixers.len(), 3);
        assert_eq!(cfg.num_classes, 7);
        let bad = serde_json::json!({"depth": [1, 1, 2]});
        let err = cfg.apply_model_args(bad.as_object().unwrap()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("unknown field `depth`")
                && msg.contains("`depths`, `dims`")
                && msg.contains("`layer_scale_init_values`"),
            "{msg}"
        );
        let bad = serde_json::json!({"dims": "wide"});
        let err = cfg.apply_model_args(bad.as_object().unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("dims = \"wide\": invalid type"),
            "{err}"
        );
    }
}
