//! GFNet: isotropic Global Filter Networks (Rao et al., NeurIPS 2021, arXiv 2107.00645), with
//! the tensor names of raoyongming/GFNet (`gfnet.py`, class `GFNet`).
//!
//! The filters and the position embedding fix the (square) input size. A checkpoint trained at
//! another size is adapted when loaded, as GFNet's fine-tuning script does: the position
//! embedding is resized bicubically (`align_corners=False`) and each complex filter bicubically
//! with `align_corners=True` to the new `(g, g/2 + 1)` grid.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use tokenmix_mixers::layers::ConvNhwc;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_mixers::global_filter::GlobalFilterConfig;
use tokenmix_mixers::layers::{drop_path_rates, ActKind, DropPath, Mlp, Norm, NormConfig};
use tokenmix_mixers::{MixerConfig, MixerLayout, TokenMixer};

use crate::args::{parse, set, ImgSize};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, PretrainedCfg};
use crate::features::{check_take, truncate_after_last};
use crate::{Architecture, Error, Family, FeatureInfo, ImageModel, Indices, Ratio};
use tokenmix_kernels::resize::bicubic;

/// Hyper-parameters of a [`Gfnet`], named as GFNet's constructor arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GfnetConfig {
    /// Input image channels.
    pub in_chans: usize,
    /// Classifier outputs; 0 means none (the head returns pooled features).
    pub num_classes: usize,
    /// Side of the square input.
    pub img_size: usize,
    /// Side of the square patches.
    pub patch_size: usize,
    /// Channels.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Hidden width of the MLPs as a multiple of `embed_dim`.
    pub mlp_ratio: f64,
    /// Stochastic depth of the last block in training (linear from 0); 0 for inference.
    #[serde(default)]
    pub drop_path_rate: f64,
    /// Every block drops with `drop_path_rate` instead of the linear ramp (the reference's
    /// `uniform_drop`).
    #[serde(default)]
    pub uniform_drop: bool,
}

impl GfnetConfig {
    /// An isotropic GFNet with patch 16 at 224².
    pub fn new(embed_dim: usize, depth: usize) -> Self {
        Self {
            in_chans: 3,
            num_classes: 1000,
            img_size: 224,
            patch_size: 16,
            embed_dim,
            depth,
            mlp_ratio: 4.0,
            drop_path_rate: 0.0,
            uniform_drop: false,
        }
    }

    /// Each block's stochastic depth: `drop_path_rate` everywhere with `uniform_drop`, rising
    /// linearly from 0 otherwise.
    pub fn drop_paths(&self) -> Vec<DropPath> {
        if self.uniform_drop {
            vec![DropPath::new(self.drop_path_rate); self.depth]
        } else {
            drop_path_rates(self.drop_path_rate, self.depth)
        }
    }

    /// Side of the patch grid.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size.max(1)
    }

    fn mixer(&self) -> MixerConfig {
        MixerConfig::new(GlobalFilterConfig {
            height: self.grid(),
            width: self.grid(),
        })
    }

    /// Whether a checkpoint tensor of shape `found` can be resized to `expected` (the position
    /// embedding or a filter trained at another input size).
    fn resizable(&self, name: &str, found: &[usize], expected: &[usize]) -> bool {
        match (found, expected) {
            ([1, n, d], [1, _, d2]) if name == "pos_embed" => d == d2 && square_side(*n).is_some(),
            ([_, _, c, 2], [_, _, c2, 2]) if name.ends_with("filter.complex_weight") => c == c2,
            _ => false,
        }
    }

    /// Resizes a tensor accepted by [`resizable`](Self::resizable) to `expected`.
    fn resize(&self, name: &str, t: &Tensor, expected: &[usize]) -> Result<Tensor> {
        let dev = t.device();
        if name == "pos_embed" {
            let (_, n, d) = t.dims3()?;
            let (g, new_g) = (square_side(n).unwrap_or(1), self.grid());
            let planes: Vec<f32> = t.squeeze(0)?.t()?.contiguous()?.flatten_all()?.to_vec1()?;
            let out = bicubic(&planes, (d, g, g), (new_g, new_g), false);
            return Tensor::from_vec(out, (d, new_g * new_g), dev)?
                .t()?
                .unsqueeze(0)?
                .contiguous();
        }
        let (h, k, c, _) = t.dims4()?;
        let (nh, nk) = (expected[0], expected[1]);
        let planes: Vec<f32> = t
            .permute((2, 3, 0, 1))?
            .contiguous()?
            .flatten_all()?
            .to_vec1()?;
        let out = bicubic(&planes, (c * 2, h, k), (nh, nk), true);
        Tensor::from_vec(out, (c, 2, nh, nk), dev)?
            .permute((2, 3, 0, 1))?
            .contiguous()
    }
}

/// `model_args` of a GFNet, named as GFNet's constructor arguments; dropout is accepted and
/// ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GfnetArgs {
    in_chans: Option<usize>,
    num_classes: Option<usize>,
    drop_path_rate: Option<f64>,
    img_size: Option<ImgSize>,
    patch_size: Option<usize>,
    embed_dim: Option<usize>,
    depth: Option<usize>,
    mlp_ratio: Option<f64>,
    uniform_drop: Option<bool>,
    #[serde(rename = "drop_rate")]
    _drop_rate: Option<IgnoredAny>,
    #[serde(rename = "dropcls")]
    _dropcls: Option<IgnoredAny>,
}

impl GfnetArgs {
    fn apply(self, cfg: &mut GfnetConfig) -> crate::Result<()> {
        if let Some(size) = self.img_size {
            cfg.img_size = match size.pair() {
                (h, w) if h == w => h,
                (h, w) => {
                    return Err(Error::config(
                        format!("model_args of a {} model", GfnetConfig::NAME),
                        format!("img_size = [{h}, {w}]: GFNet inputs are square"),
                    ))
                }
            };
        }
        set(&mut cfg.in_chans, self.in_chans);
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.drop_path_rate, self.drop_path_rate);
        set(&mut cfg.patch_size, self.patch_size);
        set(&mut cfg.embed_dim, self.embed_dim);
        set(&mut cfg.depth, self.depth);
        set(&mut cfg.mlp_ratio, self.mlp_ratio);
        set(&mut cfg.uniform_drop, self.uniform_drop);
        Ok(())
    }
}

impl Family for GfnetConfig {
    const NAME: &'static str = "gfnet";

    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("gfnet_ti", "gfnet", Some(74.6), ArchConfig::new(GfnetConfig::new(256, 12)), pretrained: PretrainedCfg::metaformer(0.9)),
        entry!("gfnet_xs", "gfnet", Some(78.6), ArchConfig::new(GfnetConfig::new(384, 12)), pretrained: PretrainedCfg::metaformer(0.9)),
        entry!("gfnet_s", "gfnet", Some(80.0), ArchConfig::new(GfnetConfig::new(384, 19)), pretrained: PretrainedCfg::metaformer(0.9)),
        entry!("gfnet_b", "gfnet", Some(80.7), ArchConfig::new(GfnetConfig::new(512, 19)), pretrained: PretrainedCfg::metaformer(0.9)),
    ];
}

impl Architecture for GfnetConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(Gfnet::new(self, vb)?))
    }

    /// Every block, `blocks.{i}`, at the patch stride.
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let info = |i| FeatureInfo::new(self.embed_dim, self.patch_size, format!("blocks.{i}"));
        (0..self.depth).map(info).collect()
    }

    crate::arch::common_fields!();

    fn check(&self) -> std::result::Result<(), String> {
        let (s, p) = (self.img_size, self.patch_size);
        if p == 0 || s == 0 || s % p != 0 || s > 16_384 {
            return Err(format!(
                "img_size {s} must be positive, at most 16384 and divisible by patch_size {p}"
            ));
        }
        if self.embed_dim == 0 || self.embed_dim > 65_536 || self.depth > 1000 {
            return Err(format!(
                "embed_dim must be in 1..=65536 and depth at most 1000, got {} and {}",
                self.embed_dim, self.depth
            ));
        }
        self.mixer()
            .validate(self.embed_dim)
            .map_err(|e| e.to_string())
    }

    fn ratios(&self) -> Vec<Ratio> {
        vec![Ratio::of("mlp_ratio", self.mlp_ratio, self.embed_dim)]
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<GfnetArgs>(Self::NAME, args)?.apply(self)
    }

    /// The smaller side: GFNet inputs are square.
    fn set_image_size(&mut self, h: usize, w: usize) {
        self.img_size = h.min(w);
    }

    fn fixed_image_size(&self) -> Option<(usize, usize)> {
        Some((self.img_size, self.img_size))
    }

    fn can_resize(&self, name: &str, found: &[usize], expected: &[usize]) -> bool {
        self.resizable(name, found, expected)
    }

    fn resize_tensor(&self, name: &str, t: &Tensor, expected: &[usize]) -> Result<Tensor> {
        self.resize(name, t, expected)
    }

    /// At `img_size`.
    fn macs(&self, _h: usize, _w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let g = self.grid();
        let n = (g * g) as u64;
        let d = self.embed_dim as u64;
        let hidden = (self.mlp_ratio * self.embed_dim as f64) as u64;
        let p2 = (self.patch_size * self.patch_size) as u64;
        let block = self.mixer().macs(self.embed_dim, g, g) + 2 * n * d * hidden;
        n * d * self.in_chans as u64 * p2 + block * self.depth as u64 + d * self.num_classes as u64
    }
}

fn square_side(n: usize) -> Option<usize> {
    let s = (n as f64).sqrt().round() as usize;
    (s * s == n).then_some(s)
}

/// `x + mlp(norm2(filter(norm1(x))))` on `(B, N, C)` tokens (the filter sees them as
/// `(B, g, g, C)`).
#[derive(Debug)]
struct Block {
    norm1: Norm,
    filter: Box<dyn TokenMixer>,
    norm2: Norm,
    mlp: Mlp,
    drop_path: DropPath,
}

/// An isotropic GFNet classifier.
#[derive(Debug)]
pub struct Gfnet {
    cfg: GfnetConfig,
    patch_embed: ConvNhwc,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: Norm,
    head: Option<Linear>,
}

impl Gfnet {
    /// Builds the model, reading every tensor from `vb` under GFNet's names.
    pub fn new(cfg: &GfnetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let (d, g) = (cfg.embed_dim, cfg.grid());
        let tokens = MixerLayout::Tokens;
        let ln = NormConfig::LAYER_NORM;
        let hidden = (cfg.mlp_ratio * d as f64) as usize;
        let drop_paths = cfg.drop_paths();
        let blocks = (0..cfg.depth)
            .map(|i| {
                let b = vb.pp("blocks").pp(i);
                Ok(Block {
                    norm1: ln.build(d, tokens, b.pp("norm1"))?,
                    filter: cfg.mixer().build(d, b.pp("filter"))?,
                    norm2: ln.build(d, tokens, b.pp("norm2"))?,
                    mlp: Mlp::new(d, hidden, ActKind::Gelu, true, tokens, b.pp("mlp"))?,
                    drop_path: drop_paths[i],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed: crate::patch_embed(cfg.in_chans, d, cfg.patch_size, vb.pp("patch_embed").pp("proj"))?,
            pos_embed: vb.get((1, g * g, d), "pos_embed")?,
            blocks,
            norm: ln.build(d, tokens, vb.pp("norm"))?,
            head: crate::optional_linear(d, cfg.num_classes, vb.pp("head"))?,
        })
    }
}

impl ImageModel for Gfnet {
    fn in_chans(&self) -> usize {
        self.cfg.in_chans
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    /// One feature map: the normed tokens after the last block as `(B, C, g, g)`.
    fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let last = self.blocks.len() - 1;
        self.forward_intermediates_t(x, &[last], true, train)
    }

    /// Each block's tokens as `(B, C, g, g)`; `norm` applies the final norm to each.
    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        norm: bool,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let last = check_take(take, self.blocks.len())?;
        let s = self.cfg.img_size;
        let why =
            "its filters fix the grid; load the checkpoint with model_args img_size to resize them";
        crate::check_fixed_size(x, (s, s), why)?;
        let (tokens, (g, _)) = crate::patch_tokens(&self.patch_embed, x)?;
        let (b, _, d) = tokens.dims3()?;
        let mut x = tokens.broadcast_add(&self.pos_embed)?;
        let mut features = Vec::with_capacity(take.len());
        for (i, block) in self.blocks.iter().enumerate().take(last + 1) {
            let t = block.norm1.forward(&x)?.reshape((b, g, g, d))?;
            let t = block.filter.forward(&t)?.reshape((b, g * g, d))?;
            let branch = block.mlp.forward(&block.norm2.forward(&t)?)?;
            x = (x + block.drop_path.forward_t(&branch, train)?)?;
            if take.contains(&i) {
                let t = if norm {
                    self.norm.forward(&x)?
                } else {
                    x.clone()
                };
                features.push(crate::tokens_to_map(&t, (g, g))?);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_drop_gives_every_block_the_same_rate() {
        let mut cfg = GfnetConfig::new(64, 4);
        let args = serde_json::json!({"drop_path_rate": 0.3, "uniform_drop": true});
        cfg.apply_model_args(args.as_object().unwrap()).unwrap();
        let rates: Vec<f64> = cfg.drop_paths().iter().map(|d| d.rate()).collect();
        assert_eq!(rates, vec![0.3; 4]);
        cfg.uniform_drop = false;
        let rates: Vec<f64> = cfg.drop_paths().iter().map(|d| d.rate()).collect();
        assert_eq!(rates[0], 0.0);
        assert!((rates[3] - 0.3).abs() < 1e-12);
        let bad = serde_json::json!({"uniform_drop": "yes"});
        let err = cfg.apply_model_args(bad.as_object().unwrap()).unwrap_err();
        assert!(err.to_string().contains("expected a boolean"), "{err}");
    }
}
