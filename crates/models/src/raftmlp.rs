//! RaftMLP (Tatsunami & Taki, arXiv 2108.04384) with the tensor names of okojoalg/raft-mlp
//! (`libs/models.py` `RaftMLP` with `token_mixing_type="ser_pm"`,
//! `embedding_type="emb_cross_mlp"`, `shortcut=False`).
//!
//! Four levels on `(B, C, H, W)`: a cross-scale patch embedding (unfolds at several kernel sizes
//! concatenated and projected — computed here as a sum of strided convolutions, which is the same
//! linear map), raft blocks (vertical and horizontal token mixing over rafts of channels, then a
//! channel MLP) on channel-last tokens, and, after the last level, LayerNorm, mean and a linear
//! classifier. The token MLPs fix each level's grid to the one of `pretrained_image_size`;
//! other inputs are resized bicubically, as the reference does.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_kernels::resize::interpolate_bicubic;
use tokenmix_mixers::layers::{drop_path_rates, ActKind, Derived, DropPath, Mlp, Norm};
use tokenmix_mixers::raft::{RaftTokenMixingConfig, RAFT_NORM};
use tokenmix_mixers::{MixerConfig, MixerLayout, TokenMixer};

use crate::args::{only, parse, set};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, PretrainedCfg};
use crate::features::{check_take, pruned_error, truncate_after_last};
use crate::{Architecture, Family, FeatureInfo, ImageModel, Indices, Ratio};

/// One level of a RaftMLP (the reference's `layers` entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaftLevel {
    /// Raft blocks.
    pub depth: usize,
    /// Channels.
    pub dim: usize,
    /// Stride of the patch embedding.
    pub patch_size: usize,
    /// Channels per raft.
    pub raft_size: usize,
    /// Unfold kernel sizes of the cross-scale embedding; the first equals `patch_size`.
    pub embedding_kernels: Vec<usize>,
}

/// Hyper-parameters of a [`RaftMlp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaftMlpConfig {
    /// Input image channels.
    pub in_chans: usize,
    /// Classifier outputs (the reference always has a classifier).
    pub num_classes: usize,
    /// Side of the square input the token MLPs were built for.
    pub pretrained_image_size: usize,
    /// The levels.
    pub layers: Vec<RaftLevel>,
    /// Hidden width of the token MLPs as a multiple of their width.
    pub token_expansion_factor: usize,
    /// Hidden width of the channel MLPs as a multiple of the channels.
    pub channel_expansion_factor: usize,
    /// Stochastic depth of the last block's channel-MLP branch in training (linear from 0; the
    /// token-mixing branch is never dropped, as in the reference); 0 for inference.
    #[serde(default)]
    pub drop_path_rate: f64,
}

impl RaftMlpConfig {
    /// RaftMLP-S/M/L layout with the given widths.
    pub fn new(dims: [usize; 4]) -> Self {
        let kernels = [vec![4, 8], vec![2, 4], vec![2, 4], vec![2]];
        let layers = dims
            .iter()
            .zip([2, 2, 6, 2])
            .zip([4, 2, 2, 2])
            .zip(kernels)
            .map(
                |(((&dim, depth), patch_size), embedding_kernels)| RaftLevel {
                    depth,
                    dim,
                    patch_size,
                    raft_size: 2,
                    embedding_kernels,
                },
            )
            .collect();
        Self {
            in_chans: 3,
            num_classes: 1000,
            pretrained_image_size: 224,
            layers,
            token_expansion_factor: 2,
            channel_expansion_factor: 4,
            drop_path_rate: 0.0,
        }
    }

    /// The grid each level's token MLPs were built for.
    pub fn grids(&self) -> Vec<usize> {
        let mut size = self.pretrained_image_size;
        self.layers
            .iter()
            .map(|l| {
                size = size.div_ceil(l.patch_size.max(1));
                size
            })
            .collect()
    }

    fn mixer(&self, i: usize, grid: usize) -> MixerConfig {
        MixerConfig::new(RaftTokenMixingConfig {
            raft_size: self.layers[i].raft_size,
            height: grid,
            width: grid,
            expansion: self.token_expansion_factor,
        })
    }
}

/// `model_args` of a RaftMLP, named as the reference's `RaftMLP` arguments (`in_channels` or
/// timm's `in_chans`); the mixing, embedding and shortcut choices only at the values tokenmix
/// implements, dropout accepted and ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RaftMlpArgs {
    in_chans: Option<usize>,
    in_channels: Option<usize>,
    num_classes: Option<usize>,
    drop_path_rate: Option<f64>,
    layers: Option<Vec<RaftLevel>>,
    pretrained_image_size: Option<usize>,
    token_expansion_factor: Option<usize>,
    channel_expansion_factor: Option<usize>,
    token_mixing_type: Option<Value>,
    embedding_type: Option<Value>,
    shortcut: Option<Value>,
    #[serde(rename = "dropout")]
    _dropout: Option<IgnoredAny>,
}

impl RaftMlpArgs {
    fn apply(self, cfg: &mut RaftMlpConfig) -> crate::Result<()> {
        let family = RaftMlpConfig::NAME;
        only(
            family,
            "token_mixing_type",
            &self.token_mixing_type,
            "ser_pm".into(),
        )?;
        only(
            family,
            "embedding_type",
            &self.embedding_type,
            "emb_cross_mlp".into(),
        )?;
        only(family, "shortcut", &self.shortcut, false.into())?;
        set(&mut cfg.in_chans, self.in_chans.or(self.in_channels));
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.drop_path_rate, self.drop_path_rate);
        set(&mut cfg.layers, self.layers);
        set(&mut cfg.pretrained_image_size, self.pretrained_image_size);
        set(&mut cfg.token_expansion_factor, self.token_expansion_factor);
        set(
            &mut cfg.channel_expansion_factor,
            self.channel_expansion_factor,
        );
        Ok(())
    }
}

impl Family for RaftMlpConfig {
    const NAME: &'static str = "raft_mlp";

    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("raftmlp_s", "raftmlp", Some(76.1), ArchConfig::new(RaftMlpConfig::new([64, 128, 256, 512])), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("raftmlp_m", "raftmlp", Some(78.8), ArchConfig::new(RaftMlpConfig::new([96, 192, 384, 768])), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("raftmlp_l", "raftmlp", Some(79.4), ArchConfig::new(RaftMlpConfig::new([128, 192, 512, 1024])), pretrained: PretrainedCfg::metaformer(0.875)),
    ];
}

impl Architecture for RaftMlpConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(RaftMlp::new(self, vb)?))
    }

    /// Every level, `levels.{i}`: the product of the patch sizes so far.
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let mut reduction = 1;
        let info = |(i, l): (usize, &RaftLevel)| {
            reduction *= l.patch_size;
            FeatureInfo::new(l.dim, reduction, format!("levels.{i}"))
        };
        self.layers.iter().enumerate().map(info).collect()
    }

    crate::arch::common_fields!();

    fn needs_classifier(&self) -> bool {
        true
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.layers.is_empty() || self.layers.len() > 8 {
            return Err(format!("need 1..=8 levels, got {}", self.layers.len()));
        }
        if self.pretrained_image_size == 0 || self.pretrained_image_size > 4096 {
            return Err(format!(
                "pretrained_image_size {} out of range",
                self.pretrained_image_size
            ));
        }
        for (i, (l, grid)) in self.layers.iter().zip(self.grids()).enumerate() {
            let k = &l.embedding_kernels;
            if l.dim == 0 || l.dim > 16_384 || l.depth > 1000 || l.patch_size == 0 {
                return Err(format!("level {i}: dim, depth or patch_size out of range"));
            }
            if k.first() != Some(&l.patch_size)
                || k.iter().any(|&k| k == 0 || k % l.patch_size != 0)
            {
                return Err(format!(
                    "level {i}: embedding_kernels {k:?} must start with patch_size {} and be its multiples",
                    l.patch_size
                ));
            }
            self.mixer(i, grid)
                .validate(l.dim)
                .map_err(|e| format!("level {i}: {e}"))?;
        }
        Ok(())
    }

    fn ratios(&self) -> Vec<Ratio> {
        let ratio = |l: &RaftLevel| {
            let factor = self.channel_expansion_factor as f64;
            Ratio::of("channel_expansion_factor", factor, l.dim)
        };
        self.layers.iter().map(ratio).collect()
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<RaftMlpArgs>(Self::NAME, args)?.apply(self)
    }

    /// At `pretrained_image_size`.
    fn macs(&self, _h: usize, _w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let mut cin = self.in_chans as u64;
        let mut total = 0u64;
        for (i, (l, grid)) in self.layers.iter().zip(self.grids()).enumerate() {
            let n = (grid * grid) as u64;
            let (d, e) = (l.dim as u64, self.channel_expansion_factor as u64);
            let taps: u64 = l.embedding_kernels.iter().map(|&k| (k * k) as u64).sum();
            total += n * d * cin * taps;
            let block = self.mixer(i, grid).macs(l.dim, grid, grid) + 2 * n * d * d * e;
            total += block * l.depth as u64;
            cin = d;
        }
        total + cin * self.num_classes as u64
    }
}

/// The cross-scale embedding as convolutions: one per unfold kernel, all with the level's
/// stride, summed, plus the projection's bias. The projection's weight is kept as loaded and cut
/// into the convolution kernels on the first forward pass (on every pass while it is
/// trainable), so building the embedding allocates nothing.
#[derive(Debug)]
struct Embedding {
    /// The projection's weight `[dim, cin * sum(k^2)]`.
    weight: Tensor,
    /// `(k, padding)` of each unfold kernel.
    kernels: Vec<(usize, usize)>,
    cin: usize,
    /// Each kernel's `(dim, cin, k, k)` convolution weight.
    convs: Derived<Vec<Tensor>>,
    bias: Tensor,
    stride: usize,
}

impl Embedding {
    fn new(cin: usize, level: &RaftLevel, vb: VarBuilder) -> Result<Self> {
        let fc = vb.pp("fc");
        let taps: usize = level.embedding_kernels.iter().map(|k| k * k).sum();
        let weight = fc.get((level.dim, cin * taps), "weight")?;
        let kernels = level
            .embedding_kernels
            .iter()
            .map(|&k| (k, (k - level.patch_size) / 2))
            .collect();
        Ok(Self {
            weight,
            kernels,
            cin,
            convs: Derived::default(),
            bias: fc.get(level.dim, "bias")?,
            stride: level.patch_size,
        })
    }

    /// The convolution weights, cut from the projection's weight.
    fn convs(&self) -> Result<Vec<Tensor>> {
        self.convs.get(self.weight.is_variable(), || {
            let dim = self.weight.dim(0)?;
            let mut offset = 0;
            let mut convs = Vec::with_capacity(self.kernels.len());
            for &(k, _) in &self.kernels {
                let taps = self.cin * k * k;
                let w = self.weight.narrow(1, offset, taps)?;
                convs.push(w.reshape((dim, self.cin, k, k))?.contiguous()?);
                offset += taps;
            }
            Ok(convs)
        })
    }
}

impl Module for Embedding {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y: Option<Tensor> = None;
        for (w, &(_, pad)) in self.convs()?.iter().zip(&self.kernels) {
            let c = tokenmix_kernels::conv2d(x, w, pad, self.stride, 1, 1)?;
            y = Some(match y {
                Some(acc) => (acc + c)?,
                None => c,
            });
        }
        let bias = self.bias.reshape((self.bias.elem_count(), 1, 1))?;
        match y {
            Some(y) => y.broadcast_add(&bias),
            None => candle_core::bail!("raft embedding without kernels"),
        }
    }
}

#[derive(Debug)]
struct Block {
    tokens: Box<dyn TokenMixer>,
    norm: Norm,
    mlp: Mlp,
    drop_path: DropPath,
}

#[derive(Debug)]
struct Level {
    embedding: Embedding,
    blocks: Vec<Block>,
    patch_size: usize,
}

/// A RaftMLP classifier.
#[derive(Debug)]
pub struct RaftMlp {
    cfg: RaftMlpConfig,
    levels: Vec<Level>,
    /// `None` once pruned.
    head_norm: Option<Norm>,
    /// `None` once pruned or reset to 0 classes.
    classifier: Option<Linear>,
}

impl RaftMlp {
    /// Builds the model, reading every tensor from `vb` under the reference's names.
    pub fn new(cfg: &RaftMlpConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let cl = MixerLayout::ChannelsLast;
        let mut cin = cfg.in_chans;
        let mut levels = Vec::new();
        let total = cfg.layers.iter().map(|l| l.depth).sum();
        let mut drop_paths = drop_path_rates(cfg.drop_path_rate, total).into_iter();
        for (i, (l, grid)) in cfg.layers.iter().zip(cfg.grids()).enumerate() {
            let f = vb.pp("levels").pp(i).pp("fn");
            let hidden = l.dim * cfg.channel_expansion_factor;
            let blocks = (0..l.depth)
                .map(|j| {
                    let b = f.pp(2 + j);
                    let c = b.pp(5);
                    Ok(Block {
                        tokens: cfg.mixer(i, grid).build(l.dim, b.clone())?,
                        norm: RAFT_NORM.build(l.dim, cl, c.pp("norm"))?,
                        mlp: Mlp::from_parts(
                            l.dim,
                            hidden,
                            ActKind::Gelu,
                            c.pp("fn").pp(0),
                            c.pp("fn").pp(3),
                        )?,
                        drop_path: drop_paths.next().unwrap_or(DropPath::new(0.0)),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            levels.push(Level {
                embedding: Embedding::new(cin, l, f.pp(0))?,
                blocks,
                patch_size: l.patch_size,
            });
            cin = l.dim;
        }
        Ok(Self {
            cfg: cfg.clone(),
            levels,
            head_norm: Some(RAFT_NORM.build(cin, cl, vb.pp("heads").pp(0).pp(1))?),
            classifier: Some(candle_nn::linear(
                cin,
                cfg.num_classes,
                vb.pp("classifier"),
            )?),
        })
    }
}

impl ImageModel for RaftMlp {
    fn in_chans(&self) -> usize {
        self.cfg.in_chans
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    /// Every level's output `(B, C_i, H_i, W_i)`.
    fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let all: Vec<usize> = (0..self.levels.len()).collect();
        self.forward_intermediates_t(x, &all, false, train)
    }

    /// `norm` applies the head's norm (a per-position LayerNorm, before the mean) to the last
    /// level's map, the one it is built for.
    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        norm: bool,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let last = check_take(take, self.levels.len())?;
        let mut x = x.clone();
        let mut features = Vec::with_capacity(take.len());
        for (i, level) in self.levels.iter().enumerate().take(last + 1) {
            let (_, _, h, w) = x.dims4()?;
            let p = level.patch_size;
            if h % p != 0 || w % p != 0 {
                x = interpolate_bicubic(&x, (h.div_ceil(p) * p, w.div_ceil(p) * p), false)?;
            }
            let mut t = level
                .embedding
                .forward(&x)?
                .permute((0, 2, 3, 1))?
                .contiguous()?;
            for block in &level.blocks {
                t = (&t + block.tokens.forward(&t)?)?;
                let branch = block.mlp.forward(&block.norm.forward(&t)?)?;
                t = (&t + block.drop_path.forward_t(&branch, train)?)?;
            }
            x = t.permute((0, 3, 1, 2))?.contiguous()?;
            if take.contains(&i) {
                features.push(match &self.head_norm {
                    Some(n) if norm && i + 1 == self.levels.len() => {
                        n.forward(&t)?.permute((0, 3, 1, 2))?
                    }
                    _ => x.clone(),
                });
            }
        }
        Ok(features)
    }

    fn feature_info(&self) -> Vec<FeatureInfo> {
        self.cfg.feature_info()
    }

    fn prune_intermediate_layers(&mut self, indices: &Indices) -> Result<Vec<usize>> {
        let (take, kept) = truncate_after_last(&mut self.levels, indices)?;
        self.cfg.layers.truncate(kept);
        self.cfg.num_classes = 0;
        self.head_norm = None;
        self.classifier = None;
        Ok(take)
    }

    /// The classifier is `classifier`, after the head norm and mean (kept).
    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        if self.head_norm.is_none() {
            return pruned_error();
        }
        let dim = self.cfg.layers[self.cfg.layers.len() - 1].dim;
        self.classifier = crate::optional_linear(dim, num_classes, vb.pp("classifier"))?;
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        let Some(head_norm) = &self.head_norm else {
            return tokenmix_mixers::layers::global_avg_pool(last);
        };
        let normed = head_norm.forward(&last.permute((0, 2, 3, 1))?)?;
        let pooled = tokenmix_mixers::layers::in_f32(&normed, |x| x.mean(1)?.mean(1))?;
        match &self.classifier {
            Some(fc) => fc.forward(&pooled),
            None => Ok(pooled),
        }
    }
}
