//! EfficientViM (Lee, Choi and Kim, "EfficientViM: Efficient Vision Mamba with Hidden State
//! Mixer based State Space Duality", CVPR 2025, arXiv 2411.15241) with the tensor names,
//! registered names (`EfficientViM_M1` ... `M4`) and keyword names of mlvlab/EfficientViM
//! (`classification/models/EfficientViM.py`, `models/utils.py`).
//!
//! Inputs and features are channel-first `(B, C, H, W)`; inside, the model runs channel-last.
//! A stem of four `conv 3x3 / 2 -> BN (-> ReLU)` (stride 16), three stages of blocks, each block
//! four gated residual branches `x = (1 - a_i) x + a_i f_i(x)` with `a = sigmoid(alpha)`: a
//! depthwise 3x3 + BN, the [`HsmSsd`] mixer on a channel LayerNorm, another depthwise 3x3 + BN,
//! and a `1x1 + BN -> ReLU -> 1x1 + BN` FFN. Between stages a patch merging block (depthwise
//! residual, `1x1 -> dw 3x3 / 2 -> squeeze-excite -> 1x1`, depthwise residual). The head is a
//! softmax-weighted sum of four classifiers: one per stage on the normed, averaged hidden state
//! of its last mixer, and one on the normed, averaged final map (with distillation, a second
//! set averaged in at evaluation). Every batch norm is folded into the convolution before it
//! (exact: the norms are evaluated with their running statistics, in training too).
//!
//! The reference reshapes its mixer's maps as `H x H`, so it runs square inputs only; tokenmix
//! runs any `H x W`, and the two agree on square inputs (the parity fixture's).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_kernels::Window;
use tokenmix_mixers::hsm_ssd::{HsmSsd, HsmSsdConfig};
use tokenmix_mixers::layers::{position_mean, ConvBnNhwc, ConvKind, Norm, NormConfig, NormKind, Pointwise};
use tokenmix_mixers::{MixerConfig, MixerLayout};

use crate::args::{parse, set};
use crate::features::{check_take, pruned_error, truncate_after_last};
use crate::registry::{entry, ModelEntry};
use crate::{ArchConfig, Common, PretrainedCfg};
use crate::{Architecture, Family, FeatureInfo, ImageModel, Indices, Ratio};

/// Hyper-parameters of an [`EfficientVim`], named as the reference's `EfficientViM` keyword
/// arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EfficientVimConfig {
    /// Input image channels.
    pub in_dim: usize,
    /// Classifier outputs; 0 means none (the head returns the pooled, normed final map).
    pub num_classes: usize,
    /// Channels per stage (three stages).
    pub embed_dim: Vec<usize>,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// FFN hidden width as a multiple of the stage width.
    pub mlp_ratio: f64,
    /// Channels of the mixers' gated state as a multiple of the stage width.
    pub ssd_expand: f64,
    /// State slots of each stage's mixers.
    pub state_dim: Vec<usize>,
    /// Whether the model has the distillation heads `heads_dist` (averaged in at evaluation).
    pub distillation: bool,
}

impl EfficientVimConfig {
    /// An EfficientViM with the given widths, depths and state sizes (MLP ratio 4, no
    /// distillation, as every registered variant).
    pub fn new(embed_dim: [usize; 3], depths: [usize; 3], state_dim: [usize; 3]) -> Self {
        Self {
            in_dim: 3,
            num_classes: 1000,
            embed_dim: embed_dim.to_vec(),
            depths: depths.to_vec(),
            mlp_ratio: 4.0,
            ssd_expand: 1.0,
            state_dim: state_dim.to_vec(),
            distillation: false,
        }
    }

    fn mixer(&self, stage: usize) -> HsmSsdConfig {
        HsmSsdConfig {
            state_dim: self.state_dim.get(stage).copied().unwrap_or(1),
            ssd_expand: self.ssd_expand,
        }
    }

    /// Hidden width of the patch merging into `out_dim` channels (`int(out_dim * 4.0)`), and of
    /// its squeeze-excite (timm's `make_divisible(hidden * 0.25, 8)`).
    fn merging_widths(out_dim: usize) -> (usize, usize) {
        let hidden = out_dim * 4;
        let v = hidden as f64 * 0.25;
        let rd = ((v + 4.0) as usize / 8 * 8).max(8);
        (hidden, rd)
    }

    /// Stride of each stage's output: 16 after the stem, doubled by every patch merging.
    fn strides(&self) -> Vec<usize> {
        (0..self.embed_dim.len()).map(|i| 16 << i).collect()
    }
}

/// `model_args` of an EfficientViM, named as the reference's keyword arguments.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EfficientVimArgs {
    in_dim: Option<usize>,
    num_classes: Option<usize>,
    embed_dim: Option<Vec<usize>>,
    depths: Option<Vec<usize>>,
    mlp_ratio: Option<f64>,
    ssd_expand: Option<f64>,
    state_dim: Option<Vec<usize>>,
    distillation: Option<bool>,
}

impl EfficientVimArgs {
    fn apply(self, cfg: &mut EfficientVimConfig) {
        set(&mut cfg.in_dim, self.in_dim);
        set(&mut cfg.num_classes, self.num_classes);
        set(&mut cfg.embed_dim, self.embed_dim);
        set(&mut cfg.depths, self.depths);
        set(&mut cfg.mlp_ratio, self.mlp_ratio);
        set(&mut cfg.ssd_expand, self.ssd_expand);
        set(&mut cfg.state_dim, self.state_dim);
        set(&mut cfg.distillation, self.distillation);
    }
}

impl Family for EfficientVimConfig {
    const NAME: &'static str = "efficientvim";

    /// Top-1: the 300-epoch, non-distilled figures of the authors' README.
    #[rustfmt::skip]
    const MODELS: &'static [ModelEntry] = &[
        entry!("EfficientViM_M1", "efficientvim", Some(72.9), ArchConfig::new(EfficientVimConfig::new([128, 192, 320], [2, 2, 2], [49, 25, 9])), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("EfficientViM_M2", "efficientvim", Some(75.4), ArchConfig::new(EfficientVimConfig::new([128, 256, 512], [2, 2, 2], [49, 25, 9])), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("EfficientViM_M3", "efficientvim", Some(77.6), ArchConfig::new(EfficientVimConfig::new([224, 320, 512], [2, 2, 2], [49, 25, 9])), pretrained: PretrainedCfg::metaformer(0.875)),
        entry!("EfficientViM_M4", "efficientvim", Some(79.4), ArchConfig::new(EfficientVimConfig::new([224, 320, 512], [3, 4, 2], [64, 32, 16])), pretrained: PretrainedCfg::square(256, 0.875)),
    ];
}

impl Architecture for EfficientVimConfig {
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn ImageModel>> {
        Ok(Box::new(EfficientVim::new(self, vb)?))
    }

    fn common(&self) -> Common {
        Common {
            in_chans: self.in_dim,
            num_classes: self.num_classes,
            drop_path_rate: None,
        }
    }

    fn set_common(&mut self, c: Common) {
        self.in_dim = c.in_chans;
        self.num_classes = c.num_classes;
    }

    /// Every stage, `stages.{i}`.
    fn feature_info(&self) -> Vec<FeatureInfo> {
        let strides = self.strides();
        let info = |(i, &dim): (usize, &usize)| {
            FeatureInfo::new(dim, strides[i], format!("stages.{i}"))
        };
        self.embed_dim.iter().enumerate().map(info).collect()
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.embed_dim.len() != 3 || self.depths.len() != 3 || self.state_dim.len() != 3 {
            return Err(format!(
                "embed_dim ({}), depths ({}) and state_dim ({}) must have 3 entries (the \
                 reference's heads and norms are built for three stages)",
                self.embed_dim.len(),
                self.depths.len(),
                self.state_dim.len()
            ));
        }
        if let Some(d) = self.embed_dim.iter().find(|&&d| !(8..=16_384).contains(&d)) {
            return Err(format!("every embed_dim must be in 8..=16384, got {d}"));
        }
        if let Some(d) = self.depths.iter().find(|&&d| d > 1000) {
            return Err(format!("every depth must be at most 1000, got {d}"));
        }
        for (i, &dim) in self.embed_dim.iter().enumerate() {
            MixerConfig::new(self.mixer(i))
                .validate(dim)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The reference leaves its convolutions at PyTorch's default (fan-based) initialization;
    /// with batch norms on running statistics, `std 0.02` would shrink the stem's output a
    /// thousandfold.
    fn conv_init(&self) -> crate::ConvInit {
        crate::ConvInit::KaimingFanOut
    }

    fn ratios(&self) -> Vec<Ratio> {
        let ratio = |&dim| Ratio::of("mlp_ratio", self.mlp_ratio, dim);
        self.embed_dim.iter().map(ratio).collect()
    }

    fn set_model_args(&mut self, args: &Map<String, Value>) -> crate::Result<()> {
        parse::<EfficientVimArgs>(Self::NAME, args)?.apply(self);
        Ok(())
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let down = |n: usize| n.div_ceil(2);
        let d0 = self.embed_dim[0];
        let widths = [self.in_dim, d0 / 8, d0 / 4, d0 / 2, d0];
        let (mut total, (mut sh, mut sw)) = (0u64, (h, w));
        for pair in widths.windows(2) {
            (sh, sw) = (down(sh), down(sw));
            total += (sh * sw * pair[0] * pair[1] * 9) as u64;
        }
        for (i, (&dim, &depth)) in self.embed_dim.iter().zip(&self.depths).enumerate() {
            let n = (sh * sw) as u64;
            let (c, hidden) = (dim as u64, (self.mlp_ratio * dim as f64) as u64);
            let mixer = MixerConfig::new(self.mixer(i)).macs(dim, sh, sw);
            total += depth as u64 * (2 * n * 9 * c + mixer + 2 * n * c * hidden);
            if let Some(&out) = self.embed_dim.get(i + 1) {
                let (hid, rd) = Self::merging_widths(out);
                let (o, hid, rd) = (out as u64, hid as u64, rd as u64);
                let (nh, nw) = (down(sh), down(sw));
                let m = (nh * nw) as u64;
                total += n * 9 * c + n * c * hid + m * 9 * hid + 2 * hid * rd + m * hid * o;
                total += m * 9 * o;
                (sh, sw) = (nh, nw);
            }
        }
        let heads: u64 = self.embed_dim.iter().map(|&d| d as u64).sum::<u64>()
            + *self.embed_dim.last().unwrap_or(&0) as u64;
        let sets = if self.distillation { 2 } else { 1 };
        total + sets * heads * self.num_classes as u64
    }
}

const fn window(kernel: usize, stride: usize) -> Window {
    Window {
        kernel,
        stride,
        padding: kernel / 2,
    }
}

/// The reference's `ConvLayer2D` (convolution without bias, batch norm) at prefix `vb`
/// (`conv`, `norm`), on channel-last maps.
fn conv_layer(
    cin: usize,
    cout: usize,
    w: Window,
    kind: ConvKind,
    vb: VarBuilder,
) -> Result<ConvBnNhwc> {
    ConvBnNhwc::new(cin, cout, w, kind, false, vb.pp("conv"), vb.pp("norm"))
}

/// A channel LayerNorm stored as the reference's `LayerNorm1D` / `LayerNorm2D`
/// (`weight`, `bias` shaped `[1, C, 1]` or `[1, C, 1, 1]`; eps 1e-5, biased variance), applied
/// over the last axis of channel-last tensors. (tokenmix's fused norm, which has a backward
/// pass: candle-nn's `LayerNorm` passes no gradient through its fast path.)
fn channel_norm(dim: usize, dims: usize, vb: VarBuilder) -> Result<Norm> {
    let shape: Vec<usize> = [1, dim]
        .into_iter()
        .chain(std::iter::repeat_n(1, dims - 2))
        .collect();
    let weight = vb.get(shape.as_slice(), "weight")?.flatten_all()?;
    let bias = vb.get(shape.as_slice(), "bias")?.flatten_all()?;
    let cfg = NormConfig {
        kind: NormKind::LayerNorm,
        eps: 1e-5,
        bias: true,
    };
    Ok(Norm::from_tensors(cfg, MixerLayout::ChannelsLast, weight, Some(bias)))
}

/// The reference's `EfficientViMBlock` on channel-last `(B, H, W, C)`.
#[derive(Debug)]
struct Block {
    alpha: Tensor,
    dwconv1: ConvBnNhwc,
    norm: Norm,
    mixer: HsmSsd,
    dwconv2: ConvBnNhwc,
    fc1: ConvBnNhwc,
    fc2: ConvBnNhwc,
}

impl Block {
    fn new(cfg: &EfficientVimConfig, stage: usize, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.embed_dim[stage];
        let hidden = (cfg.mlp_ratio * dim as f64) as usize;
        let mixer = cfg.mixer(stage);
        let (dw, dense) = (ConvKind::Depthwise, ConvKind::Dense);
        let ffn = vb.pp("ffn");
        Ok(Self {
            alpha: vb.get((4, dim), "alpha")?,
            dwconv1: conv_layer(dim, dim, window(3, 1), dw, vb.pp("dwconv1"))?,
            norm: channel_norm(dim, 3, vb.pp("norm"))?,
            mixer: HsmSsd::new(dim, mixer.state_dim, mixer.d_inner(dim), vb.pp("mixer"))?,
            dwconv2: conv_layer(dim, dim, window(3, 1), dw, vb.pp("dwconv2"))?,
            fc1: conv_layer(dim, hidden, window(1, 1), dense, ffn.pp("fc1"))?,
            fc2: conv_layer(hidden, dim, window(1, 1), dense, ffn.pp("fc2"))?,
        })
    }

    /// The block's output and its mixer's hidden state `(B, state_dim, C)`.
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let alpha = candle_nn::ops::sigmoid(&self.alpha)?;
        let blend = |x: &Tensor, f: &Tensor, i: usize| -> Result<Tensor> {
            let a = alpha.get(i)?;
            x.broadcast_mul(&(1.0 - &a)?)? + f.broadcast_mul(&a)?
        };
        let x = blend(x, &self.dwconv1.forward(x)?, 0)?;
        let (mixed, state) = self.mixer.forward_with_state(&self.norm.forward(&x)?)?;
        let x = blend(&x, &mixed, 1)?;
        let x = blend(&x, &self.dwconv2.forward(&x)?, 2)?;
        let ffn = self.fc2.forward(&self.fc1.forward(&x)?.relu()?)?;
        Ok((blend(&x, &ffn, 3)?, state))
    }
}

/// The reference's `PatchMerging` on channel-last maps: `x + dw(x)`, `1x1 -> ReLU -> dw 3x3 / 2
/// -> ReLU -> squeeze-excite -> 1x1`, `x + dw(x)` (`dwconv1`, `conv.{0..3}`, `dwconv2`).
#[derive(Debug)]
struct PatchMerging {
    dwconv1: ConvBnNhwc,
    expand: ConvBnNhwc,
    down: ConvBnNhwc,
    se_reduce: Pointwise,
    se_expand: Pointwise,
    project: ConvBnNhwc,
    dwconv2: ConvBnNhwc,
}

impl PatchMerging {
    fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let (hidden, rd) = EfficientVimConfig::merging_widths(out_dim);
        let (dw, dense) = (ConvKind::Depthwise, ConvKind::Dense);
        let (conv, cl) = (vb.pp("conv"), MixerLayout::ChannelsLast);
        let se = conv.pp(2);
        Ok(Self {
            dwconv1: conv_layer(in_dim, in_dim, window(3, 1), dw, vb.pp("dwconv1"))?,
            expand: conv_layer(in_dim, hidden, window(1, 1), dense, conv.pp(0))?,
            down: conv_layer(hidden, hidden, window(3, 2), dw, conv.pp(1))?,
            se_reduce: Pointwise::conv1x1(hidden, rd, true, cl, se.pp("fc1"))?,
            se_expand: Pointwise::conv1x1(rd, hidden, true, cl, se.pp("fc2"))?,
            project: conv_layer(hidden, out_dim, window(1, 1), dense, conv.pp(3))?,
            dwconv2: conv_layer(out_dim, out_dim, window(3, 1), dw, vb.pp("dwconv2"))?,
        })
    }
}

impl Module for PatchMerging {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.dwconv1.forward(x)?)?;
        let h = self.down.forward(&self.expand.forward(&x)?.relu()?)?.relu()?;
        let (b, c) = (h.dim(0)?, h.dim(3)?);
        let pooled = position_mean(&h)?.reshape((b, 1, 1, c))?;
        let gate = self.se_expand.forward(&self.se_reduce.forward(&pooled)?.relu()?)?;
        let h = h.broadcast_mul(&candle_nn::ops::sigmoid(&gate)?)?;
        let x = self.project.forward(&h)?;
        &x + self.dwconv2.forward(&x)?
    }
}

/// One stage: its blocks, then the patch merging into the next stage, if any.
#[derive(Debug)]
struct Stage {
    blocks: Vec<Block>,
    downsample: Option<PatchMerging>,
}

/// One set of classifiers: a softmax-weighted sum of one per stage (on its hidden state) and
/// one on the final map (`weights`, `heads.{0..3}`; `weights_dist`, `heads_dist.{0..3}`).
#[derive(Debug)]
struct Heads {
    weights: Tensor,
    fcs: Vec<Linear>,
}

impl Heads {
    fn new(dims: &[usize], classes: usize, weights: &str, heads: &str, vb: &VarBuilder) -> Result<Self> {
        let fcs = dims
            .iter()
            .enumerate()
            .map(|(i, &d)| candle_nn::linear(d, classes, vb.pp(heads).pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            weights: vb.get(dims.len(), weights)?,
            fcs,
        })
    }

    /// `sum_i softmax(weights)_i * fc_i(pooled_i)`.
    fn forward(&self, pooled: &[Tensor]) -> Result<Tensor> {
        let weights =
            tokenmix_mixers::layers::in_f32(&self.weights, |w| candle_nn::ops::softmax(w, D::Minus1))?;
        let mut z: Option<Tensor> = None;
        for (i, (fc, p)) in self.fcs.iter().zip(pooled).enumerate() {
            let term = fc.forward(p)?.broadcast_mul(&weights.get(i)?)?;
            z = Some(match z {
                Some(z) => (z + term)?,
                None => term,
            });
        }
        z.ok_or_else(|| candle_core::Error::msg("EfficientViM head without classifiers"))
    }
}

/// The head: the norms of the stages' hidden states and of the final map (`norm.{0..3}`), and
/// the classifiers.
#[derive(Debug)]
struct Head {
    norms: Vec<Norm>,
    heads: Option<Heads>,
    dist: Option<Heads>,
}

/// An EfficientViM image classifier.
#[derive(Debug)]
pub struct EfficientVim {
    cfg: EfficientVimConfig,
    stem: Vec<ConvBnNhwc>,
    stages: Vec<Stage>,
    /// `None` once pruned.
    head: Option<Head>,
}

impl EfficientVim {
    /// Builds the model, reading every tensor from `vb` under the reference's names.
    pub fn new(cfg: &EfficientVimConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let d0 = cfg.embed_dim[0];
        let widths = [cfg.in_dim, d0 / 8, d0 / 4, d0 / 2, d0];
        let stem_vb = vb.pp("patch_embed").pp("conv");
        let stem = widths
            .windows(2)
            .enumerate()
            .map(|(i, p)| conv_layer(p[0], p[1], window(3, 2), ConvKind::Dense, stem_vb.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let mut stages = Vec::with_capacity(3);
        for (i, &depth) in cfg.depths.iter().enumerate() {
            let s = vb.pp("stages").pp(i);
            let blocks = (0..depth)
                .map(|j| Block::new(cfg, i, s.pp("blocks").pp(j)))
                .collect::<Result<Vec<_>>>()?;
            let downsample = cfg
                .embed_dim
                .get(i + 1)
                .map(|&out| PatchMerging::new(cfg.embed_dim[i], out, s.pp("downsample")))
                .transpose()?;
            stages.push(Stage { blocks, downsample });
        }
        let last = cfg.embed_dim[2];
        let mut norms = (0..3)
            .map(|i| channel_norm(cfg.embed_dim[i], 3, vb.pp("norm").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        norms.push(channel_norm(last, 4, vb.pp("norm").pp(3))?);
        let dims = [cfg.embed_dim[0], cfg.embed_dim[1], last, last];
        let classes = cfg.num_classes;
        let heads = (classes > 0)
            .then(|| Heads::new(&dims, classes, "weights", "heads", &vb))
            .transpose()?;
        let dist = (classes > 0 && cfg.distillation)
            .then(|| Heads::new(&dims, classes, "weights_dist", "heads_dist", &vb))
            .transpose()?;
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            stages,
            head: Some(Head { norms, heads, dist }),
        })
    }

    /// Runs the stem and the stages up to `last`: the channel-last output of every stage in
    /// `take` and the hidden state of each stage's last mixer.
    fn run(&self, x: &Tensor, take: &[usize], last: usize) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let mut x = x.permute((0, 2, 3, 1))?.contiguous()?;
        for (i, conv) in self.stem.iter().enumerate() {
            x = conv.forward(&x)?;
            if i + 1 < self.stem.len() {
                x = x.relu()?;
            }
        }
        let (mut maps, mut states) = (Vec::new(), Vec::new());
        for (i, stage) in self.stages.iter().enumerate().take(last + 1) {
            let mut state = None;
            for block in &stage.blocks {
                let (y, h) = block.forward(&x)?;
                (x, state) = (y, Some(h));
            }
            if let Some(h) = state {
                states.push(h);
            }
            if take.contains(&i) {
                maps.push(x.clone());
            }
            if let (Some(d), true) = (&stage.downsample, i < last) {
                x = d.forward(&x)?;
            }
        }
        Ok((maps, states))
    }
}

impl ImageModel for EfficientVim {
    fn in_chans(&self) -> usize {
        self.cfg.in_dim
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let all: Vec<usize> = (0..self.stages.len()).collect();
        self.forward_intermediates_t(x, &all, false, train)
    }

    /// The head reads every stage's hidden state, so the logits come from one pass here, not
    /// from [`forward_head`](ImageModel::forward_head) on the last map.
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let last = self.stages.len().saturating_sub(1);
        let (maps, states) = self.run(x, &[last], last)?;
        let (Some(head), Some(map)) = (&self.head, maps.last()) else {
            let map = maps.last().ok_or_else(|| candle_core::Error::msg("no stages"))?;
            return position_mean(map);
        };
        let final_pooled = position_mean(&head.norms[3].forward(map)?)?;
        let Some(heads) = &head.heads else {
            return Ok(final_pooled);
        };
        let mut pooled = states
            .iter()
            .zip(&head.norms)
            .map(|(h, norm)| position_mean(&norm.forward(h)?))
            .collect::<Result<Vec<_>>>()?;
        pooled.push(final_pooled);
        let z = heads.forward(&pooled)?;
        match &head.dist {
            Some(dist) => (z + dist.forward(&pooled)?)? * 0.5,
            None => Ok(z),
        }
    }

    /// `norm` is ignored: the head norms belong to the classifier.
    fn forward_intermediates_t(
        &self,
        x: &Tensor,
        take: &[usize],
        _norm: bool,
        _train: bool,
    ) -> Result<Vec<Tensor>> {
        let last = check_take(take, self.stages.len())?;
        let (maps, _) = self.run(x, take, last)?;
        maps.iter()
            .map(|m| m.permute((0, 3, 1, 2))?.contiguous())
            .collect()
    }

    fn feature_info(&self) -> Vec<FeatureInfo> {
        self.cfg.feature_info()
    }

    fn prune_intermediate_layers(&mut self, indices: &Indices) -> Result<Vec<usize>> {
        let (take, kept) = truncate_after_last(&mut self.stages, indices)?;
        if let Some(stage) = self.stages.last_mut() {
            stage.downsample = None;
        }
        self.cfg.depths.truncate(kept);
        self.cfg.embed_dim.truncate(kept);
        self.cfg.state_dim.truncate(kept);
        self.cfg.num_classes = 0;
        self.head = None;
        Ok(take)
    }

    /// The classifiers are `heads` (and, with distillation, `heads_dist`); the fusion weights
    /// and norms are kept.
    fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        let Some(head) = &mut self.head else {
            return pruned_error();
        };
        let e = &self.cfg.embed_dim;
        let dims = [e[0], e[1], e[2], e[2]];
        let make = |w: &str, h: &str| {
            (num_classes > 0)
                .then(|| Heads::new(&dims, num_classes, w, h, &vb))
                .transpose()
        };
        head.heads = make("weights", "heads")?;
        head.dist = if self.cfg.distillation {
            make("weights_dist", "heads_dist")?
        } else {
            None
        };
        self.cfg.num_classes = num_classes;
        Ok(())
    }

    /// After pruning, the global average of `last`. Before, an error: EfficientViM's
    /// classifiers also read every stage's hidden state, which only
    /// [`forward`](ImageModel::forward) has.
    fn forward_head(&self, last: &Tensor) -> Result<Tensor> {
        if self.head.is_some() {
            candle_core::bail!(
                "EfficientViM's head reads every stage's hidden state as well as the last map:                  take logits from forward, not forward_head"
            );
        }
        crate::pool_and_classify(last, None)
    }
}
