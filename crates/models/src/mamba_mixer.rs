//! A MambaMixer-style isotropic model (Behrouz et al., "MambaMixer: Efficient Selective State
//! Space Models with Dual Token and Channel Selection", arXiv 2403.19888; the ViM2 vision
//! variant). The authors released no code, so this is tokenmix's reading of the paper, with
//! every choice a configuration field:
//!
//! * patch embedding (conv `p x p / p`) to `N` tokens of `C` channels;
//! * each block has a **selective token mixer** (a bidirectional Mamba over the `N` tokens) and
//!   a **selective channel mixer** (a bidirectional Mamba over the `C` channels, whose features
//!   are the `N` token values), each pre-normed (LayerNorm over `C`) and residual;
//! * **weighted averaging of earlier features**: the input of every mixer is a learned weighted
//!   sum of the embedding and of all earlier mixers' outputs (`token_weights` `[1 + 2i]` and
//!   `channel_weights` `[2 + 2i]` in block `i`, over `[x0, t0, c0, t1, c1, ...]`; a plain stack
//!   is the one-hot weight on the latest output);
//! * final LayerNorm, mean over tokens, linear head.
//!
//! The channel mixer sees the tokens as features, so the input size is fixed by `img_size`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use tokenmix_mixers::layers::ConvNhwc;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_mixers::layers::{drop_path_rates, DropPath, Norm, NormConfig};
use tokenmix_mixers::ssm::MambaConfig;
use tokenmix_mixers::{MixerConfig, MixerLayout, TokenMixer};

use crate::args::{parse, set, ImgSize};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, PretrainedCfg};
use crate::features::{check_take, truncate_after_last};
use crate::{Architecture, Family, FeatureInfo, ImageModel, Indices};

/// Hyper-parameters of a [`MambaMixer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MambaMixerConfig {
    /// Input image channels.
    pub in_chans: usize,
    /// Classifier outputs; 0 means none (the head returns pooled features).
    pub num_classes: usize,
    /// Input `(height, width)`, fixed by the channel mixers.
    pub img_size: (usize, usize),
    /// Side of the square patches.
    pub patch_size: usize,
    /// Channels `C`.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Mamba state size.
    pub d_state: usize,
    /// Mamba hidden width as a multiple of its model width.
    pub expand: usize,
    /// Stochastic depth of the last block in training (linear from 0); 0 for inference.
    #[serde(default)]
    pub drop_path_rate: f64,
}

impl MambaMixerConfig {
    /// An isotropic MambaMixer with patch 16 at 224².
    pub fn new(embed_dim: usize, depth: usize) -> Self {
        Self {
            in_chans: 3,
            num_classes: 1000,
            img_size: (224, 224),
            patch_size: 16,
            embed_dim,
            depth,
            d_state: 16,
            expand: 2,
            drop_path_rate: 0.0,
        }
    }

    fn num_tokens(&self) -> usize {
        (self.img_size.0 / self.patch_size.max(1)) * (self.img_size.1 / self.patch_size.max(1))
    }

    fn mamba(&self) -> MixerConfig {
        MixerConfig::new(MambaConfig {
            d_state: self.d_state,
            expand: self.expand,
            ..MambaConfig::default()
        })
    }
}

/// `model_args` of a MambaMixer; dropout is accepted and ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MambaMixerArgs {
    in_chans: Option<usize>,
    num_classes: Option<usize>,
    drop_path_rate: Option<f64>,
    img_size: Option<ImgSize>,
    patch_size: Option<usize>,
    embed_dim: Option<usize>,
    depth: Option<usize>,
    d_state: Option<usize>,
    expand: Option<usize>,
    #[serde(rename = "drop_rate")]
    _drop_rate: Option<IgnoredAny>,
}

impl MambaMixerArgs {
    fn apply(self, cfg: &mut MambaMixerConfig) {
        set(&mut cfg.in_chans, self.in_chans);
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.drop_path_rate, self.drop_path_rate);
        set(&mut cfg.img_size, self.img_size.map(ImgSize::pair));
        set(&mut cfg.patch_size, self.patch_size);
        set(&mut cfg.embed_dim, self.embed_dim);
        set(&mut cfg.depth, self.depth);
        set(&mut cfg.d_state, self.d_state);
        set(&mut cfg.expand, self.expand);
    }
}

impl Family for MambaMixerConfig {
    const NAME: &'static str = "mamba_mixer";

    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("mambamixer_ti", "mambamixer", None, ArchConfig::new(MambaMixerConfig::new(192, 12)), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("mambamixer_s", "mambamixer", None, ArchConfig::new(MambaMixerConfig::new(384, 12)), pretrained: PretrainedCfg::metaformer(0.875)),
    ];
}

impl Architecture for MambaMixerConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(MambaMixer::new(self, vb)?))
    }

    /// Every block, `blocks.{i}`, at the patch stride.
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let info = |i| FeatureInfo::new(self.embed_dim, self.patch_size, format!("blocks.{i}"));
        (0..self.depth).map(info).collect()
    }

    crate::arch::common_fields!();

    fn check(&self) -> std::result::Result<(), String> {
        let ((h, w), p) = (self.img_size, self.patch_size);
        if p == 0 || h == 0 || w == 0 || h % p != 0 || w % p != 0 || self.num_tokens() > 16_384 {
            return Err(format!(
                "img_size {h}x{w} must be divisible by patch_size {p} into at most 16384 tokens"
            ));
        }
        if self.embed_dim == 0 || self.embed_dim > 16_384 || self.depth > 1000 {
            return Err(format!(
                "embed_dim {} or depth {} out of range",
                self.embed_dim, self.depth
            ));
        }
        self.mamba()
            .validate(self.embed_dim)
            .map_err(|e| e.to_string())
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<MambaMixerArgs>(Self::NAME, args)?.apply(self);
        Ok(())
    }

    fn set_image_size(&mut self, h: usize, w: usize) {
        self.img_size = (h, w);
    }

    fn fixed_image_size(&self) -> Option<(usize, usize)> {
        Some(self.img_size)
    }

    /// At `img_size`.
    fn macs(&self, _h: usize, _w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let (n, c) = (self.num_tokens(), self.embed_dim);
        let p2 = (self.patch_size * self.patch_size) as u64;
        let token = self.mamba().macs(c, 1, n);
        let channel = self.mamba().macs(n, 1, c);
        (n * c) as u64 * self.in_chans as u64 * p2
            + (token + channel) * self.depth as u64
            + (c * self.num_classes) as u64
    }
}

#[derive(Debug)]
struct Block {
    token_weights: Tensor,
    token_norm: Norm,
    token_mixer: Box<dyn TokenMixer>,
    channel_weights: Tensor,
    channel_norm: Norm,
    channel_mixer: Box<dyn TokenMixer>,
    drop_path: DropPath,
}

/// Learned weighted sum of the earlier features (differentiable in the weights).
fn weighted(weights: &Tensor, history: &[Tensor]) -> Result<Tensor> {
    let mut acc = history[0].broadcast_mul(&weights.narrow(0, 0, 1)?)?;
    for (i, h) in history.iter().enumerate().skip(1) {
        acc = (acc + h.broadcast_mul(&weights.narrow(0, i, 1)?)?)?;
    }
    Ok(acc)
}

/// A MambaMixer-style classifier (see the module documentation).
#[derive(Debug)]
pub struct MambaMixer {
    cfg: MambaMixerConfig,
    patch_embed: ConvNhwc,
    blocks: Vec<Block>,
    norm: Norm,
    head: Option<Linear>,
}

impl MambaMixer {
    /// Builds the model, reading its tensors from `vb`.
    pub fn new(cfg: &MambaMixerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let (c, n) = (cfg.embed_dim, cfg.num_tokens());
        let tokens = MixerLayout::Tokens;
        let ln = NormConfig::LAYER_NORM;
        let drop_paths = drop_path_rates(cfg.drop_path_rate, cfg.depth);
        let blocks = (0..cfg.depth)
            .map(|i| {
                let b = vb.pp("blocks").pp(i);
                Ok(Block {
                    drop_path: drop_paths[i],
                    token_weights: b.get(1 + 2 * i, "token_weights")?,
                    token_norm: ln.build(c, tokens, b.pp("token_norm"))?,
                    token_mixer: cfg.mamba().build(c, b.pp("token_mixer"))?,
                    channel_weights: b.get(2 + 2 * i, "channel_weights")?,
                    channel_norm: ln.build(c, tokens, b.pp("channel_norm"))?,
                    channel_mixer: cfg.mamba().build(n, b.pp("channel_mixer"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed: crate::patch_embed(cfg.in_chans, c, cfg.patch_size, vb.pp("patch_embed").pp("proj"))?,
            blocks,
            norm: ln.build(c, tokens, vb.pp("norm"))?,
            head: crate::optional_linear(c, cfg.num_classes, vb.pp("head"))?,
        })
    }
}

impl ImageModel for MambaMixer {
    fn in_chans(&self) -> usize {
        self.cfg.in_chans
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    /// One feature map: the normed tokens after the last block as `(B, C, H/p, W/p)`.
    fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let last = self.blocks.len() - 1;
        self.forward_intermediates_t(x, &[last], true, train)
    }

    /// Each block's output (its channel mixer's) as `(B, C, H/p, W/p)`; `norm` applies the final
    /// norm to each.
    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        norm: bool,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let last = check_take(take, self.blocks.len())?;
        crate::check_fixed_size(
            x,
            self.cfg.img_size,
            "its channel mixers fix the token count",
        )?;
        let (tokens, grid) = crate::patch_tokens(&self.patch_embed, x)?;
        let mut history = vec![tokens];
        let mut features = Vec::with_capacity(take.len());
        for (i, block) in self.blocks.iter().enumerate().take(last + 1) {
            let u = weighted(&block.token_weights, &history)?;
            let mixed = block.token_mixer.forward(&block.token_norm.forward(&u)?)?;
            let t = (&u + block.drop_path.forward_t(&mixed, train)?)?;
            history.push(t);
            let v = weighted(&block.channel_weights, &history)?;
            let normed = block
                .channel_norm
                .forward(&v)?
                .transpose(1, 2)?
                .contiguous()?;
            let mixed = block.channel_mixer.forward(&normed)?.transpose(1, 2)?;
            let out = (v + block.drop_path.forward_t(&mixed, train)?)?;
            if take.contains(&i) {
                let t = if norm {
                    self.norm.forward(&out)?
                } else {
                    out.clone()
                };
                features.push(crate::tokens_to_map(&t, grid)?);
            }
            history.push(out);
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

    /// The classifier is `head`, on the pooled normed tokens (pruned or not).
    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        self.head = crate::optional_linear(self.cfg.embed_dim, num_classes, vb.pp("head"))?;
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        crate::pool_and_classify(last, self.head.as_ref())
    }
}
