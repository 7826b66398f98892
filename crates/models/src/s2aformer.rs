//! tokenmix's reading of S2AFormer (Xu et al., IEEE TIP 2025, arXiv 2505.22195), which released
//! no code. Kept from the paper's abstract and public summaries: four stages at strides 4 to 32,
//! a stem of three 3x3 convolutions (the first with stride 2), and Hybrid Perception Blocks
//! `x + dw(x)`, `x + SSA(LN(x))`, `x + LIM(LN(x))`, `x + MLP(LN(x))` with strip self-attention
//! (see [`tokenmix_mixers::strip_attention`]). Everything else is tokenmix's choice: GELU between
//! the stem convolutions, a 3x3 / 2 convolution and LayerNorm as each stage's patch embedding, a
//! 3x3 depthwise convolution, the Local Interaction Module as `1x1 -> dw3x3 -> GELU -> 1x1`, a
//! GELU MLP, a LayerNorm and linear head on the pooled map, and the `tokenmix_s2a_*` sizes (in
//! the style of PVTv2's; the paper's are unknown here). Tensor names are tokenmix's own.
//! Channel-last inside.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_kernels::Window;
use tokenmix_mixers::layers::{
    drop_path_rates, ActKind, ConvNhwc, Depthwise3x3, DropPath, Mlp, Norm, NormConfig, Pointwise,
};
use tokenmix_mixers::strip_attention::{StripAttention, StripAttentionConfig};
use tokenmix_mixers::{MixerLayout, MixerSpec, TokenMixer};

use crate::args::{parse, set};
use crate::features::{check_take, truncate_after_last};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, PretrainedCfg};
use crate::{Architecture, Family, FeatureInfo, ImageModel, Indices};

/// Hyper-parameters of an [`S2AFormer`] (tokenmix's names: the paper has no code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct S2AFormerConfig {
    /// Input image channels.
    pub in_chans: usize,
    /// Classifier outputs; 0 means none (the head returns pooled features).
    pub num_classes: usize,
    /// Channels per stage.
    pub embed_dims: Vec<usize>,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    /// Key/value reduction per stage.
    pub sr_ratios: Vec<usize>,
    /// MLP hidden width as a multiple of the channels, per stage.
    pub mlp_ratios: Vec<f64>,
    /// Query/key width as a fraction of the channels.
    pub qk_ratio: f64,
    /// Stochastic depth, rising linearly over all blocks to this rate.
    pub drop_path_rate: f64,
}

impl S2AFormerConfig {
    fn new(embed_dims: [usize; 4], depths: [usize; 4]) -> Self {
        Self {
            in_chans: 3,
            num_classes: 1000,
            embed_dims: embed_dims.to_vec(),
            depths: depths.to_vec(),
            num_heads: vec![1, 2, 5, 8],
            sr_ratios: vec![8, 4, 2, 1],
            mlp_ratios: vec![4.0; 4],
            qk_ratio: 0.5,
            drop_path_rate: 0.0,
        }
    }

    fn num_stages(&self) -> usize {
        self.depths.len()
    }

    fn mixer(&self, i: usize) -> StripAttentionConfig {
        StripAttentionConfig {
            num_heads: self.num_heads[i],
            sr_ratio: self.sr_ratios[i],
            qk_ratio: self.qk_ratio,
        }
    }

    fn hidden(&self, i: usize) -> usize {
        (self.embed_dims[i] as f64 * self.mlp_ratios[i]) as usize
    }

    /// Each stage's grid for an `h x w` input (stride 2 in the stem, then 2 per stage).
    fn stage_sizes(&self, h: usize, w: usize) -> Vec<(usize, usize)> {
        let down = |n: usize| n.div_ceil(2);
        let mut size = (down(h), down(w));
        (0..self.num_stages())
            .map(|_| {
                size = (down(size.0), down(size.1));
                size
            })
            .collect()
    }
}

/// `model_args` of an S2AFormer (the config's field names).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct S2AFormerArgs {
    in_chans: Option<usize>,
    num_classes: Option<usize>,
    embed_dims: Option<Vec<usize>>,
    depths: Option<Vec<usize>>,
    num_heads: Option<Vec<usize>>,
    sr_ratios: Option<Vec<usize>>,
    mlp_ratios: Option<Vec<f64>>,
    qk_ratio: Option<f64>,
    drop_path_rate: Option<f64>,
}

impl Family for S2AFormerConfig {
    const NAME: &'static str = "tokenmix_s2a";

    /// tokenmix's placeholder sizes (PVTv2-style widths and depths), not the paper's.
    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("tokenmix_s2a_t", "tokenmix_s2a", None, ArchConfig::new(S2AFormerConfig::new([32, 64, 160, 256], [2, 2, 2, 2])), pretrained: PretrainedCfg::metaformer(0.9)),
        entry!("tokenmix_s2a_s", "tokenmix_s2a", None, ArchConfig::new(S2AFormerConfig::new([64, 128, 320, 512], [2, 2, 4, 2])), pretrained: PretrainedCfg::metaformer(0.9)),
        entry!("tokenmix_s2a_b", "tokenmix_s2a", None, ArchConfig::new(S2AFormerConfig::new([64, 128, 320, 512], [3, 4, 12, 3])), pretrained: PretrainedCfg::metaformer(0.9)),
    ];
}

impl Architecture for S2AFormerConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(S2AFormer::new(self, vb)?))
    }

    crate::arch::common_fields!();

    /// Every stage, `stages.{i}`, at strides 4, 8, 16, 32.
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let dims = self.embed_dims.iter().take(self.num_stages());
        dims.enumerate()
            .map(|(i, &dim)| FeatureInfo::new(dim, 4 << i, format!("stages.{i}")))
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
            ("sr_ratios", self.sr_ratios.len()),
            ("mlp_ratios", self.mlp_ratios.len()),
        ];
        if let Some((name, len)) = lists.iter().find(|(_, len)| *len < n) {
            return Err(format!("{name} has {len} entries for {n} stages"));
        }
        for i in 0..n {
            let dim = self.embed_dims[i];
            if !(2..=65_536).contains(&dim) || self.depths[i] > 1000 {
                return Err(format!(
                    "embed_dims must be in 2..=65536 and depths at most 1000, got {dim} and {}",
                    self.depths[i]
                ));
            }
            let r = self.mlp_ratios[i];
            if !(r > 0.0 && r <= 64.0) || self.hidden(i) == 0 {
                return Err(format!("mlp_ratios[{i}] must be in (0, 64], got {r}"));
            }
            self.mixer(i).validate(dim).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        let a = parse::<S2AFormerArgs>(Self::NAME, args)?;
        set(&mut self.in_chans, a.in_chans);
        set(&mut self.num_classes, a.num_classes);
        set(&mut self.embed_dims, a.embed_dims);
        set(&mut self.depths, a.depths);
        set(&mut self.num_heads, a.num_heads);
        set(&mut self.sr_ratios, a.sr_ratios);
        set(&mut self.mlp_ratios, a.mlp_ratios);
        set(&mut self.qk_ratio, a.qk_ratio);
        set(&mut self.drop_path_rate, a.drop_path_rate);
        Ok(())
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let c0 = self.embed_dims[0];
        let (h1, w1) = (h.div_ceil(2), w.div_ceil(2));
        let n1 = (h1 * w1) as u64;
        let stem = n1 * 9 * (self.in_chans * (c0 / 2) + (c0 / 2) * (c0 / 2) + (c0 / 2) * c0) as u64;
        let mut cin = c0;
        let mut total = stem;
        for (i, (gh, gw)) in self.stage_sizes(h, w).into_iter().enumerate() {
            let (n, c) = ((gh * gw) as u64, self.embed_dims[i] as u64);
            total += n * 9 * cin as u64 * c;
            let block = n * 9 * c
                + self.mixer(i).macs(c as usize, gh, gw)
                + n * (2 * c * c + 9 * c)
                + 2 * n * c * self.hidden(i) as u64;
            total += block * self.depths[i] as u64;
            cin = c as usize;
        }
        total + (cin * self.num_classes) as u64
    }
}

/// A Hybrid Perception Block (tokenmix's reading).
#[derive(Debug)]
struct Block {
    dwconv: Depthwise3x3,
    norm1: Norm,
    attn: StripAttention,
    norm2: Norm,
    lim_fc1: Pointwise,
    lim_dw: Depthwise3x3,
    lim_fc2: Pointwise,
    norm3: Norm,
    mlp: Mlp,
    drop_path: DropPath,
}

impl Block {
    fn new(cfg: &S2AFormerConfig, i: usize, drop_path: DropPath, vb: VarBuilder) -> Result<Self> {
        let (c, layout) = (cfg.embed_dims[i], MixerLayout::ChannelsLast);
        let ln = NormConfig::LAYER_NORM;
        let linear = |vb| Pointwise::from_linear(c, c, true, layout, vb);
        let lim = vb.pp("lim");
        Ok(Self {
            dwconv: Depthwise3x3::new(c, vb.pp("dwconv"))?,
            norm1: ln.build(c, layout, vb.pp("norm1"))?,
            attn: StripAttention::new(&cfg.mixer(i), c, vb.pp("attn"))?,
            norm2: ln.build(c, layout, vb.pp("norm2"))?,
            lim_fc1: linear(lim.pp("fc1"))?,
            lim_dw: Depthwise3x3::new(c, lim.pp("dwconv"))?,
            lim_fc2: linear(lim.pp("fc2"))?,
            norm3: ln.build(c, layout, vb.pp("norm3"))?,
            mlp: Mlp::new(c, cfg.hidden(i), ActKind::Gelu, true, layout, vb.pp("mlp"))?,
            drop_path,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let dp = |y: Tensor| self.drop_path.forward_t(&y, train);
        let x = (x + self.dwconv.forward(x)?)?;
        let x = (&x + dp(self.attn.forward(&self.norm1.forward(&x)?)?)?)?;
        let lim = self.lim_fc1.forward(&self.norm2.forward(&x)?)?;
        let lim = tokenmix_kernels::gelu(&self.lim_dw.forward(&lim)?)?;
        let x = (&x + dp(self.lim_fc2.forward(&lim)?)?)?;
        self.mlp
            .forward_residual(&self.norm3.forward(&x)?, &x, self.drop_path, train)
    }
}

#[derive(Debug)]
struct Stage {
    embed: ConvNhwc,
    embed_norm: Norm,
    blocks: Vec<Block>,
}

/// The S2AFormer image classifier (tokenmix's reading).
#[derive(Debug)]
pub struct S2AFormer {
    cfg: S2AFormerConfig,
    stem: [ConvNhwc; 3],
    stages: Vec<Stage>,
    /// `head.norm`; `None` once pruned.
    head_norm: Option<Norm>,
    head: Option<Linear>,
}

fn conv3x3(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<ConvNhwc> {
    let window = Window {
        kernel: 3,
        stride,
        padding: 1,
    };
    ConvNhwc::new(cin, cout, window, true, vb)
}

impl S2AFormer {
    /// Builds the model, reading every tensor from `vb` (tokenmix's names).
    pub fn new(cfg: &S2AFormerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let c0 = cfg.embed_dims[0];
        let s = vb.pp("stem");
        let stem = [
            conv3x3(cfg.in_chans, c0 / 2, 2, s.pp(0))?,
            conv3x3(c0 / 2, c0 / 2, 1, s.pp(2))?,
            conv3x3(c0 / 2, c0, 1, s.pp(4))?,
        ];
        let mut rates = drop_path_rates(cfg.drop_path_rate, cfg.depths.iter().sum()).into_iter();
        let mut cin = c0;
        let mut stages = Vec::new();
        for i in 0..cfg.num_stages() {
            let st = vb.pp("stages").pp(i);
            let c = cfg.embed_dims[i];
            let blocks = (0..cfg.depths[i])
                .map(|j| {
                    let dp = rates.next().unwrap_or(DropPath::new(0.0));
                    Block::new(cfg, i, dp, st.pp("blocks").pp(j))
                })
                .collect::<Result<Vec<_>>>()?;
            let pe = st.pp("patch_embed");
            stages.push(Stage {
                embed: conv3x3(cin, c, 2, pe.pp("proj"))?,
                embed_norm: NormConfig::LAYER_NORM.build(c, MixerLayout::ChannelsLast, pe.pp("norm"))?,
                blocks,
            });
            cin = c;
        }
        let head = vb.pp("head");
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            stages,
            head_norm: Some(NormConfig::LAYER_NORM.build(cin, MixerLayout::Tokens, head.pp("norm"))?),
            head: crate::optional_linear(cin, cfg.num_classes, head.pp("fc"))?,
        })
    }
}

impl ImageModel for S2AFormer {
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

    /// Every stage's output map `(B, C_i, H_i, W_i)` (no norm to apply).
    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        _norm: bool,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let last = check_take(take, self.stages.len())?;
        let x = x.permute((0, 2, 3, 1))?.contiguous()?;
        let x = tokenmix_kernels::gelu(&self.stem[0].forward(&x)?)?;
        let x = tokenmix_kernels::gelu(&self.stem[1].forward(&x)?)?;
        let mut x = self.stem[2].forward(&x)?;
        let mut features = Vec::with_capacity(take.len());
        for (i, stage) in self.stages.iter().enumerate().take(last + 1) {
            x = stage.embed_norm.forward(&stage.embed.forward(&x)?)?;
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
        self.cfg.depths.truncate(kept);
        self.cfg.num_classes = 0;
        self.head = None;
        self.head_norm = None;
        Ok(take)
    }

    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        let dim = self.cfg.embed_dims[self.stages.len() - 1];
        self.head = crate::optional_linear(dim, num_classes, vb.pp("head").pp("fc"))?;
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    /// Mean over the map, `head.norm` (unless pruned), `head.fc`.
    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        let mut pooled = tokenmix_mixers::layers::global_avg_pool(last)?;
        if let Some(norm) = &self.head_norm {
            pooled = norm.forward(&pooled)?;
        }
        match &self.head {
            Some(fc) => fc.forward(&pooled),
            None => Ok(pooled),
        }
    }
}
