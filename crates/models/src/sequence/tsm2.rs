//! TSM2, the Time Series MambaMixer (Behrouz, Santacatterina, Zabih, "MambaMixer: Efficient
//! Selective State Space Models with Dual Token and Channel Selection", arXiv 2403.19888).
//!
//! The authors released no code (their repository, MambaMixer/M2, holds a README and a
//! figure), so this is **tokenmix's reading** of the paper, not a port; its names and the
//! choices below are tokenmix's:
//!
//! * the series `(B, seq_len, M)` is normalized per sample and variate over time (mean and
//!   biased standard deviation, 1e-5 added to the variance, no learned affine) and the
//!   forecast de-normalized;
//! * each variate is cut into `P = (seq_len - patch_len) / stride + 1` patches of `patch_len`
//!   steps, from the last `patch_len + stride * (P - 1)` steps, and embedded by
//!   `patch_embedding` (`Linear(patch_len, d_model)` with bias), giving `(B, M, P, d_model)`;
//! * each of the `num_layers` blocks has a **selective time mixer**, a unidirectional (causal)
//!   Mamba over the `P` patches of every variate (tokenmix's [`Mamba`] with
//!   `bidirectional: false`), and a **selective variate mixer**, a bidirectional Mamba over the
//!   `M` variates of every patch (its own parameters for the reversed order, the two directions
//!   summed and halved); each is pre-normed (LayerNorm over `d_model`, eps 1e-5) and residual;
//! * **weighted averaging of earlier features**: the input of every mixer is a learned weighted
//!   sum of the embedding and of all earlier mixers' outputs: with the history
//!   `[x0, t0, v0, t1, v1, ...]` (embedding, time-mixer and variate-mixer outputs), block `i`'s
//!   time mixer reads `sum_j time_weights[j] h_j` over its `1 + 2i` entries and its variate
//!   mixer `sum_j variate_weights[j] h_j` over `2 + 2i` (a plain stack is the one-hot weight on
//!   the latest entry, which the random initialization does not assume);
//! * a final LayerNorm, and a linear head `Linear(P * d_model, pred_len)` on the flattened
//!   (patch-major) features of every variate, shared by all variates.
//!
//! `config.json` has `model_type` `"tsm2"` and keys named after the paper's hyper-parameters:
//! `seq_len` (look-back `L`), `pred_len` (horizon `H`), `num_variates` (`M`), `patch_len`,
//! `stride`, `d_model`, `d_state` (the SSM state size `N`), `d_conv`, `expand`, `dt_rank`
//! (null for `ceil(d_model / 16)`) and `num_layers`. Tensor names are tokenmix's
//! (`patch_embedding.weight`, `blocks.{i}.time_weights`, `blocks.{i}.time_norm.weight`,
//! `blocks.{i}.time_mixer.in_proj.weight`, ... with state-spaces/mamba's names inside a mixer
//! and Vision Mamba's `_b` names for the variate mixer's reversed direction, `norm.weight`,
//! `head.weight`). The parity fixture compares against a PyTorch module written from the same
//! equations, which shows only that the Rust code computes this reading.

use candle_core::{Module, Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use serde_json::{json, Map, Value};
use tokenmix_mixers::layers::{Norm, NormConfig, NormKind, Pointwise};
use tokenmix_mixers::ssm::{Mamba, MambaConfig};
use tokenmix_mixers::{MixerLayout, MixerSpec, TokenMixer};

use super::keys::usize_or;
use super::patchtsmixer::{
    descale, patch_indices, patchify, Scaling, MAX_LAYERS, MAX_LENGTH, MAX_WIDTH,
};
use super::{SequenceArchitecture, SequenceConfig, SequenceEntry, SequenceModel, SequenceTask};

/// TSM2's configuration (tokenmix's reading; see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tsm2Config {
    /// Look-back window `L` (time steps read).
    pub seq_len: usize,
    /// Horizon `H` (time steps predicted).
    pub pred_len: usize,
    /// Variates `M` of the series the model was trained on (no weight depends on it: the
    /// variate mixer scans any number, so any count runs).
    pub num_variates: usize,
    /// Time steps per patch.
    pub patch_len: usize,
    /// Steps between patch starts.
    pub stride: usize,
    /// Features per patch.
    pub d_model: usize,
    /// State size `N` of every selective scan.
    pub d_state: usize,
    /// Width of the mixers' causal depthwise convolutions.
    pub d_conv: usize,
    /// Hidden width of the mixers as a multiple of `d_model`.
    pub expand: usize,
    /// Rank of the `dt` projections; `None` for `ceil(d_model / 16)`.
    pub dt_rank: Option<usize>,
    /// Blocks.
    pub num_layers: usize,
}

impl Default for Tsm2Config {
    /// tokenmix's ETTh1-sized setting: 96 steps in and out, 7 variates, patches of 16 every
    /// 8, `d_model` 64, state 16, conv 4, expansion 2, 2 blocks (the paper's table of
    /// hyper-parameters is not reproduced here: no configuration was released).
    fn default() -> Self {
        Self {
            seq_len: 96,
            pred_len: 96,
            num_variates: 7,
            patch_len: 16,
            stride: 8,
            d_model: 64,
            d_state: 16,
            d_conv: 4,
            expand: 2,
            dt_rank: None,
            num_layers: 2,
        }
    }
}

impl Tsm2Config {
    /// Patches per variate (0 when the series is shorter than a patch).
    pub fn num_patches(&self) -> usize {
        if self.seq_len < self.patch_len || self.stride == 0 {
            return 0;
        }
        (self.seq_len - self.patch_len) / self.stride + 1
    }

    /// The Mamba mixer of either axis.
    pub fn mixer(&self, bidirectional: bool) -> MambaConfig {
        MambaConfig {
            d_state: self.d_state,
            d_conv: self.d_conv,
            expand: self.expand,
            dt_rank: self.dt_rank,
            bidirectional,
            divide_out: true,
        }
    }

    /// Reads a TSM2 `config.json` (absent keys take [`Tsm2Config::default`]'s values).
    pub fn from_hf(map: &Map<String, Value>) -> std::result::Result<SequenceConfig, String> {
        let d = Self::default();
        let dt_rank = match map.get("dt_rank") {
            None | Some(Value::Null) => None,
            Some(_) => Some(usize_or(map, "dt_rank", 0)?),
        };
        Ok(SequenceConfig::new(Self {
            seq_len: usize_or(map, "seq_len", d.seq_len)?,
            pred_len: usize_or(map, "pred_len", d.pred_len)?,
            num_variates: usize_or(map, "num_variates", d.num_variates)?,
            patch_len: usize_or(map, "patch_len", d.patch_len)?,
            stride: usize_or(map, "stride", d.stride)?,
            d_model: usize_or(map, "d_model", d.d_model)?,
            d_state: usize_or(map, "d_state", d.d_state)?,
            d_conv: usize_or(map, "d_conv", d.d_conv)?,
            expand: usize_or(map, "expand", d.expand)?,
            dt_rank,
            num_layers: usize_or(map, "num_layers", d.num_layers)?,
        }))
    }
}

impl SequenceArchitecture for Tsm2Config {
    fn forecast_keys(&self) -> [&'static str; 3] {
        ["seq_len", "pred_len", "num_variates"]
    }

    fn model_type(&self) -> &'static str {
        "tsm2"
    }

    fn architecture(&self) -> &'static str {
        "TSM2"
    }

    fn task(&self) -> SequenceTask {
        SequenceTask::channel_independent_forecast(self.seq_len, self.pred_len)
    }

    fn build(&self, vb: VarBuilder) -> CandleResult<Box<dyn SequenceModel>> {
        Ok(Box::new(Tsm2::new(*self, vb)?))
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let in_range = |name: &str, v: usize, max: usize| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be in 1..={max}, got {v}"))
            }
        };
        in_range("seq_len", self.seq_len, MAX_LENGTH)?;
        in_range("pred_len", self.pred_len, MAX_LENGTH)?;
        in_range("num_variates", self.num_variates, MAX_WIDTH)?;
        in_range("patch_len", self.patch_len, MAX_LENGTH)?;
        in_range("stride", self.stride, MAX_LENGTH)?;
        in_range("d_model", self.d_model, MAX_WIDTH)?;
        in_range("num_layers", self.num_layers, MAX_LAYERS)?;
        if self.seq_len < self.patch_len {
            return Err(format!(
                "seq_len ({}) must be at least patch_len ({})",
                self.seq_len, self.patch_len
            ));
        }
        in_range("num_patches", self.num_patches(), 1 << 16)?;
        self.mixer(true)
            .validate(self.d_model)
            .map_err(|e| e.to_string())
    }

    fn to_hf_config(&self) -> Value {
        json!({
            "model_type": "tsm2",
            "seq_len": self.seq_len,
            "pred_len": self.pred_len,
            "num_variates": self.num_variates,
            "patch_len": self.patch_len,
            "stride": self.stride,
            "d_model": self.d_model,
            "d_state": self.d_state,
            "d_conv": self.d_conv,
            "expand": self.expand,
            "dt_rank": self.dt_rank,
            "num_layers": self.num_layers,
        })
    }

    fn macs(&self, _len: usize) -> u64 {
        let (m, p, d) = (
            self.num_variates as u64,
            self.num_patches() as u64,
            self.d_model as u64,
        );
        let time = self.mixer(false).macs(self.d_model, 1, p as usize);
        let variate = self.mixer(true).macs(self.d_model, 1, m as usize);
        m * p * self.patch_len as u64 * d
            + self.num_layers as u64 * (m * time + p * variate)
            + m * p * d * self.pred_len as u64
    }

    fn clone_box(&self) -> Box<dyn SequenceArchitecture> {
        Box::new(*self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `sum_j weights[j] * history[j]` (differentiable in the weights).
fn weighted(weights: &Tensor, history: &[Tensor]) -> CandleResult<Tensor> {
    let mut acc = history[0].broadcast_mul(&weights.narrow(0, 0, 1)?)?;
    for (j, h) in history.iter().enumerate().skip(1) {
        acc = (acc + h.broadcast_mul(&weights.narrow(0, j, 1)?)?)?;
    }
    Ok(acc)
}

/// One TSM2 block (`blocks.{i}`).
#[derive(Debug)]
struct Block {
    time_weights: Tensor,
    time_norm: Norm,
    time_mixer: Mamba,
    variate_weights: Tensor,
    variate_norm: Norm,
    variate_mixer: Mamba,
}

/// A built TSM2 forecaster (see the [module docs](self)).
#[derive(Debug)]
pub struct Tsm2 {
    cfg: Tsm2Config,
    embedding: Pointwise,
    blocks: Vec<Block>,
    norm: Norm,
    head: Pointwise,
    patch_index: Tensor,
}

const LAYER_NORM: NormConfig = NormConfig {
    kind: NormKind::LayerNorm,
    eps: 1e-5,
    bias: true,
};

fn mamba(cfg: &MambaConfig, dim: usize, vb: VarBuilder) -> CandleResult<Mamba> {
    Mamba::new(
        dim,
        cfg.d_state,
        cfg.d_conv,
        cfg.expand,
        cfg.dt_rank,
        cfg.bidirectional,
        cfg.divide_out,
        vb,
    )
}

impl Tsm2 {
    /// Builds the model from `vb` (the root of tokenmix's TSM2 tensor names).
    pub fn new(cfg: Tsm2Config, vb: VarBuilder) -> CandleResult<Self> {
        let (p, d) = (cfg.num_patches(), cfg.d_model);
        let tokens = MixerLayout::Tokens;
        let embedding =
            Pointwise::from_linear(cfg.patch_len, d, true, tokens, vb.pp("patch_embedding"))?;
        let (time, variate) = (cfg.mixer(false), cfg.mixer(true));
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let b = vb.pp("blocks").pp(i);
                Ok(Block {
                    time_weights: b.get(1 + 2 * i, "time_weights")?,
                    time_norm: LAYER_NORM.build(d, tokens, b.pp("time_norm"))?,
                    time_mixer: mamba(&time, d, b.pp("time_mixer"))?,
                    variate_weights: b.get(2 + 2 * i, "variate_weights")?,
                    variate_norm: LAYER_NORM.build(d, tokens, b.pp("variate_norm"))?,
                    variate_mixer: mamba(&variate, d, b.pp("variate_mixer"))?,
                })
            })
            .collect::<CandleResult<Vec<_>>>()?;
        let norm = LAYER_NORM.build(d, tokens, vb.pp("norm"))?;
        let head = Pointwise::from_linear(p * d, cfg.pred_len, true, tokens, vb.pp("head"))?;
        let index = patch_indices(cfg.seq_len, cfg.patch_len, cfg.stride, p);
        let patch_index = Tensor::from_vec(index, p * cfg.patch_len, vb.device())?;
        Ok(Self {
            cfg,
            embedding,
            blocks,
            norm,
            head,
            patch_index,
        })
    }

    /// The normed features after the last block `(B, M, P, d_model)` and the normalization's
    /// `(mean, std)` `(B, 1, M)` for a series `(B, seq_len, M)`.
    pub fn forward_hidden(&self, x: &Tensor) -> CandleResult<(Tensor, Tensor, Tensor)> {
        if x.dims3()?.1 != self.cfg.seq_len {
            candle_core::bail!(
                "TSM2 expects a (batch, {}, variates) series, got {:?}",
                self.cfg.seq_len,
                x.dims()
            );
        }
        let scaling = Scaling::Std {
            minimum_scale: 1e-5,
        };
        let (scaled, loc, scale) = scaling.apply(x)?;
        let patches = patchify(&scaled, &self.patch_index, self.cfg.patch_len)?;
        let (b, m, p, _) = patches.dims4()?;
        let d = self.cfg.d_model;
        // Every entry of the history is `(B * M, P, d)`, variate-major.
        let mut history =
            vec![self
                .embedding
                .forward(&patches.reshape((b * m, p, self.cfg.patch_len))?)?];
        for block in &self.blocks {
            let u = weighted(&block.time_weights, &history)?;
            let t = (&u + block.time_mixer.forward(&block.time_norm.forward(&u)?)?)?;
            history.push(t);
            let v = weighted(&block.variate_weights, &history)?;
            let across = v
                .reshape((b, m, p, d))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * p, m, d))?;
            let mixed = block
                .variate_mixer
                .forward(&block.variate_norm.forward(&across)?)?
                .reshape((b, p, m, d))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * m, p, d))?;
            history.push((v + mixed)?);
        }
        let h = self
            .norm
            .forward(&history[history.len() - 1])?
            .reshape((b, m, p, d))?;
        Ok((h, loc, scale))
    }
}

impl SequenceModel for Tsm2 {
    fn task(&self) -> SequenceTask {
        self.cfg.task()
    }

    fn forward_t(&self, x: &Tensor, _mask: Option<&Tensor>, _train: bool) -> CandleResult<Tensor> {
        let (h, loc, scale) = self.forward_hidden(x)?;
        let (b, m, p, d) = h.dims4()?;
        let y = self.head.forward(&h.reshape((b, m, p * d))?)?;
        descale(&y, &loc, &scale, None)
    }
}

/// The named TSM2 models.
pub(crate) static MODELS: &[SequenceEntry] = &[SequenceEntry {
    name: "tsm2-etth1",
    source: "tokenmix's reading of arXiv 2403.19888 (no released configuration): ETTh1-sized, \
             96 -> 96, 7 variates",
    config: || SequenceConfig::new(Tsm2Config::default()),
}];
