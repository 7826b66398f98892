//! JDPatchTST, JustDense's PatchTST (Park et al., arXiv 2508.09153; Thrillcrazyer/JustDense at
//! 28285e3, `models/JDPatchTST.py`): PatchTST with every attention layer replaced by the dense
//! matrix mixer [`Dense`] over the patches.
//!
//! A series `(B, seq_len, enc_in)` is normalized per sample and channel over time (mean, and
//! the biased standard deviation with 1e-5 added to the variance; no learned affine), each
//! channel padded at the end with 8 copies of its last value and cut into patches of 16 every
//! 8 steps, embedded (`Linear(16, d_model)` without bias, plus the fixed sinusoidal position
//! table), passed through `e_layers` post-norm encoder layers and a BatchNorm over `d_model`,
//! flattened `(d_model, patch)` d-major into `Linear(d_model * patches, pred_len)` (one head
//! shared by all channels) and de-normalized. An encoder layer computes
//! `x = norm1(2 x + M x / sqrt(P))` (the reference's mixer adds its input back and the
//! Time-Series-Library layer adds it again; tokenmix's [`Dense`] returns only `M x / sqrt(P)`),
//! then `norm2(x + conv2(act(conv1(x))))` with `kernel_size = 1` convolutions.
//!
//! `config.json` (there is no Hugging Face config for it) holds Time-Series-Library's argument
//! names (`run.py`): `seq_len`, `pred_len`, `enc_in`, `d_model`, `n_heads`, `e_layers`, `d_ff`,
//! `dropout`, `activation`, `task_name`, with `model_type` `"jd_patchtst"` (and optionally
//! `model` `"JDPatchTST"`); the other arguments of `run.py` are ignored, as the model ignores
//! them (`--patch_len` too: the reference's constructor fixes patches of 16 every 8). Tensor
//! names are the reference's state-dict names, including the attention wrapper's `in_proj`,
//! `norm` and `out_proj`, which the reference creates but never uses in the forward pass:
//! they are read (and must have their shapes) so that a reference checkpoint loads as it is,
//! and take no part in the computation. The stored `position_embedding.pe` buffer is ignored:
//! the table is recomputed. Dropout is not applied (the evaluation-mode function, also in
//! training). Implemented: the forecasting tasks; the imputation, anomaly-detection and
//! classification heads are refused.
//!
//! The reference's wrapper takes `head_dim = d_model / n_heads` and builds
//! `d_model / head_dim` matrices, which is `n_heads` only when `n_heads` divides `d_model`
//! (`d_model` 10 with `n_heads` 4 has 5 matrices of 2 channels); tokenmix counts them the same
//! way.

use candle_core::{Module, Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use serde_json::{json, Map, Value};
use tokenmix_mixers::dense::Dense;
use tokenmix_mixers::layers::{Act, BatchNorm, Norm, NormConfig, NormKind, Pointwise};
use tokenmix_mixers::{MixerLayout, TokenMixer};

use super::keys::{f64_or, str_or, usize_or};
use super::patchtsmixer::{descale, patchify, Scaling, MAX_LAYERS, MAX_LENGTH, MAX_WIDTH};
use super::{SequenceArchitecture, SequenceConfig, SequenceEntry, SequenceModel, SequenceTask};

/// Time steps per patch (the reference constructor's default, which `exp` never overrides).
pub const PATCH_LEN: usize = 16;
/// Steps between patch starts, also the end padding.
pub const STRIDE: usize = 8;
/// Rows of the reference's position table (`PositionalEmbedding(max_len=5000)`).
pub const MAX_PATCHES: usize = 5000;

/// The encoder layers' activation (`F.relu` for `"relu"`, `F.gelu` otherwise in the reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JdActivation {
    /// Exact (erf) GELU.
    Gelu,
    /// ReLU.
    Relu,
}

/// JDPatchTST's configuration, with Time-Series-Library's argument names (see the
/// [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct JdPatchTstConfig {
    /// `"long_term_forecast"` or `"short_term_forecast"` (the same forecasting model).
    pub task_name: String,
    /// Time steps read.
    pub seq_len: usize,
    /// Time steps predicted.
    pub pred_len: usize,
    /// Channels of the series the model was trained on (the reference's `FlattenHead` keeps
    /// it and never uses it: the weights are shared by all channels, so any count runs).
    pub enc_in: usize,
    /// Features per patch.
    pub d_model: usize,
    /// Heads asked for (the mixer has `d_model / (d_model / n_heads)`, see
    /// [`JdPatchTstConfig::mixer_heads`]).
    pub n_heads: usize,
    /// Encoder layers.
    pub e_layers: usize,
    /// Hidden width of the feed-forward convolutions.
    pub d_ff: usize,
    /// Dropout in training (kept for the config; not applied).
    pub dropout: f64,
    /// Feed-forward activation.
    pub activation: JdActivation,
}

impl Default for JdPatchTstConfig {
    /// `run.py`'s defaults.
    fn default() -> Self {
        Self {
            task_name: "long_term_forecast".into(),
            seq_len: 96,
            pred_len: 96,
            enc_in: 7,
            d_model: 512,
            n_heads: 8,
            e_layers: 2,
            d_ff: 2048,
            dropout: 0.1,
            activation: JdActivation::Gelu,
        }
    }
}

impl JdPatchTstConfig {
    /// The paper's ETTh1 setting (`scripts/long_term_forecast/ETT_script/PatchTST_ETTh1.sh`,
    /// run for `PatchTST` and `JDPatchTST`): 96 steps in, `pred_len` out, 7 channels, one
    /// encoder layer, `n_heads` 2 for 96, 8 for 192 and 336, 16 for 720 (other horizons get
    /// 8), and `run.py`'s defaults otherwise (`d_model` 512, `d_ff` 2048, dropout 0.1, GELU).
    pub fn etth1(pred_len: usize) -> Self {
        Self {
            pred_len,
            e_layers: 1,
            n_heads: match pred_len {
                96 => 2,
                720 => 16,
                _ => 8,
            },
            ..Self::default()
        }
    }

    /// Patches per channel: `int((seq_len - 16) / 8 + 1) + 1` as the reference counts them
    /// (Python's `int` truncates toward zero), 0 for series shorter than 8 steps.
    pub fn num_patches(&self) -> usize {
        match self.seq_len {
            l if l >= PATCH_LEN => (l - PATCH_LEN) / STRIDE + 2,
            l if l + STRIDE >= PATCH_LEN => 1,
            _ => 0,
        }
    }

    /// Matrices of each dense mixer: `d_model / (d_model / n_heads)`.
    pub fn mixer_heads(&self) -> usize {
        self.d_model / (self.d_model / self.n_heads.max(1)).max(1)
    }

    /// Reads a JDPatchTST `config.json` (Time-Series-Library argument names; absent keys take
    /// `run.py`'s defaults, other arguments are ignored).
    pub fn from_hf(map: &Map<String, Value>) -> std::result::Result<SequenceConfig, String> {
        Ok(SequenceConfig::new(Self::read(map)?))
    }

    fn read(map: &Map<String, Value>) -> std::result::Result<Self, String> {
        if let Some(model) = map.get("model").and_then(Value::as_str) {
            if model != "JDPatchTST" {
                return Err(format!(
                    "model names {model}; this family is JDPatchTST (model_type \"jd_patchtst\")"
                ));
            }
        }
        let d = Self::default();
        let task_name = str_or(map, "task_name", &d.task_name)?.unwrap_or_default();
        let activation = match str_or(map, "activation", "gelu")?.as_deref() {
            Some("gelu") => JdActivation::Gelu,
            Some("relu") => JdActivation::Relu,
            other => {
                return Err(format!(
                    "activation must be \"gelu\" or \"relu\", got {other:?} (the reference would \
                     silently run GELU for it)"
                ))
            }
        };
        let d_model = usize_or(map, "d_model", d.d_model)?;
        // The encoder layer's `d_ff or 4 * d_model`.
        let d_ff = match map.get("d_ff") {
            Some(Value::Null) => 4 * d_model,
            _ => match usize_or(map, "d_ff", d.d_ff)? {
                0 => 4 * d_model,
                n => n,
            },
        };
        Ok(Self {
            task_name,
            seq_len: usize_or(map, "seq_len", d.seq_len)?,
            pred_len: usize_or(map, "pred_len", d.pred_len)?,
            enc_in: usize_or(map, "enc_in", d.enc_in)?,
            d_model,
            n_heads: usize_or(map, "n_heads", d.n_heads)?,
            e_layers: usize_or(map, "e_layers", d.e_layers)?,
            d_ff,
            dropout: f64_or(map, "dropout", d.dropout)?,
            activation,
        })
    }
}

impl SequenceArchitecture for JdPatchTstConfig {
    fn forecast_keys(&self) -> [&'static str; 3] {
        ["seq_len", "pred_len", "enc_in"]
    }

    fn model_type(&self) -> &'static str {
        "jd_patchtst"
    }

    fn architecture(&self) -> &'static str {
        "JDPatchTST"
    }

    fn task(&self) -> SequenceTask {
        SequenceTask::channel_independent_forecast(self.seq_len, self.pred_len)
    }

    fn build(&self, vb: VarBuilder) -> CandleResult<Box<dyn SequenceModel>> {
        Ok(Box::new(JdPatchTst::new(self.clone(), vb)?))
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if !matches!(
            self.task_name.as_str(),
            "long_term_forecast" | "short_term_forecast"
        ) {
            return Err(format!(
                "task_name \"{}\" is not implemented (tokenmix has JDPatchTST's forecasting \
                 head: \"long_term_forecast\" or \"short_term_forecast\")",
                self.task_name
            ));
        }
        let in_range = |name: &str, v: usize, min: usize, max: usize| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be in {min}..={max}, got {v}"))
            }
        };
        in_range("seq_len", self.seq_len, PATCH_LEN - STRIDE, MAX_LENGTH)?;
        in_range("pred_len", self.pred_len, 1, MAX_LENGTH)?;
        in_range("enc_in", self.enc_in, 1, MAX_WIDTH)?;
        in_range("d_model", self.d_model, 1, MAX_WIDTH)?;
        in_range("n_heads", self.n_heads, 1, self.d_model)?;
        in_range("e_layers", self.e_layers, 1, MAX_LAYERS)?;
        in_range("d_ff", self.d_ff, 1, 1 << 20)?;
        in_range("patches", self.num_patches(), 1, MAX_PATCHES)?;
        if !self.d_model.is_multiple_of(2) {
            return Err(format!(
                "d_model must be even (the reference's sin-cos position table needs it), got {}",
                self.d_model
            ));
        }
        let head_dim = self.d_model / self.n_heads;
        if !self.d_model.is_multiple_of(head_dim) {
            return Err(format!(
                "d_model ({}) must be a multiple of d_model / n_heads ({head_dim}), as the \
                 reference's MatrixMixer asserts",
                self.d_model
            ));
        }
        Ok(())
    }

    fn to_hf_config(&self) -> Value {
        json!({
            "model_type": "jd_patchtst",
            "model": "JDPatchTST",
            "task_name": self.task_name,
            "seq_len": self.seq_len,
            "pred_len": self.pred_len,
            "enc_in": self.enc_in,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "e_layers": self.e_layers,
            "d_ff": self.d_ff,
            "dropout": self.dropout,
            "activation": match self.activation {
                JdActivation::Gelu => "gelu",
                JdActivation::Relu => "relu",
            },
        })
    }

    fn macs(&self, _len: usize) -> u64 {
        let (p, d, f) = (
            self.num_patches() as u64,
            self.d_model as u64,
            self.d_ff as u64,
        );
        let layer = d * p * p + 2 * p * d * f;
        let per_channel =
            p * PATCH_LEN as u64 * d + self.e_layers as u64 * layer + p * d * self.pred_len as u64;
        self.enc_in as u64 * per_channel
    }

    fn ignored_tensor(&self, name: &str) -> bool {
        name == "patch_embedding.position_embedding.pe"
    }

    fn clone_box(&self) -> Box<dyn SequenceArchitecture> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The reference's `PositionalEmbedding` rows `0..rows` `[rows, d_model]`: `sin(p · w_i)` in
/// the even columns and `cos(p · w_i)` in the odd ones, `w_i = exp(-2i · ln(10000) / d_model)`,
/// computed in f32 as the reference does.
pub fn sinusoid_table(rows: usize, d_model: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * d_model];
    let step = (-(10000f64.ln()) / d_model as f64) as f32;
    for p in 0..rows {
        for i in (0..d_model).step_by(2) {
            let angle = p as f32 * (i as f32 * step).exp();
            t[p * d_model + i] = angle.sin();
            if i + 1 < d_model {
                t[p * d_model + i + 1] = angle.cos();
            }
        }
    }
    t
}

/// The time indices of the replication-padded patches: patch `p`, step `j` reads
/// `min(p * 8 + j, seq_len - 1)`. `(patches * 16)` u32 values.
fn padded_patch_indices(seq_len: usize, patches: usize) -> Vec<u32> {
    (0..patches)
        .flat_map(|p| (0..PATCH_LEN).map(move |j| (p * STRIDE + j).min(seq_len - 1) as u32))
        .collect()
}

/// A `kernel_size = 1` `Conv1d` (`weight` `[out, in, 1]`, `bias`) as a linear map of `(..., in)`.
fn conv1x1(in_dim: usize, out_dim: usize, vb: VarBuilder) -> CandleResult<Pointwise> {
    let weight = vb.get((out_dim, in_dim, 1), "weight")?;
    let bias = vb.get(out_dim, "bias")?;
    Pointwise::from_tensors(
        weight.reshape((out_dim, in_dim))?,
        Some(bias),
        MixerLayout::Tokens,
    )
}

/// One encoder layer (`encoder.attn_layers.{i}`).
#[derive(Debug)]
struct EncoderLayer {
    mixer: Dense,
    conv1: Pointwise,
    act: Act,
    conv2: Pointwise,
    norm1: Norm,
    norm2: Norm,
}

impl EncoderLayer {
    fn new(cfg: &JdPatchTstConfig, vb: VarBuilder) -> CandleResult<Self> {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let attn = vb.pp("attention");
        let mixer = Dense::new(
            cfg.num_patches(),
            cfg.mixer_heads(),
            attn.pp("matrix_mixer"),
        )?;
        // Created by the reference's MatrixMixer, never used by its dense forward pass.
        attn.pp("in_proj").get((2 * d, d), "weight")?;
        attn.pp("norm").get(d, "weight")?;
        attn.pp("norm").get(d, "bias")?;
        attn.pp("out_proj").get((d, d), "weight")?;
        let ln = NormConfig {
            kind: NormKind::LayerNorm,
            eps: 1e-5,
            bias: true,
        };
        Ok(Self {
            mixer,
            conv1: conv1x1(d, f, vb.pp("conv1"))?,
            act: match cfg.activation {
                JdActivation::Gelu => Act::Gelu,
                JdActivation::Relu => Act::Relu,
            },
            conv2: conv1x1(f, d, vb.pp("conv2"))?,
            norm1: ln.build(d, MixerLayout::Tokens, vb.pp("norm1"))?,
            norm2: ln.build(d, MixerLayout::Tokens, vb.pp("norm2"))?,
        })
    }

    /// `(B * C, P, d_model)` to the same.
    fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        let x = self
            .norm1
            .forward(&((x * 2.0)? + self.mixer.forward(x)?)?)?;
        let y = self
            .conv2
            .forward(&self.conv1.forward_act(&x, &self.act)?)?;
        self.norm2.forward(&(x + y)?)
    }
}

/// A built JDPatchTST forecaster (see the [module docs](self)).
#[derive(Debug)]
pub struct JdPatchTst {
    cfg: JdPatchTstConfig,
    embedding: Pointwise,
    position: Tensor,
    layers: Vec<EncoderLayer>,
    norm: BatchNorm,
    head: Pointwise,
    patch_index: Tensor,
}

impl JdPatchTst {
    /// Builds the model from `vb` (the root of the reference's state dict).
    pub fn new(cfg: JdPatchTstConfig, vb: VarBuilder) -> CandleResult<Self> {
        let (p, d) = (cfg.num_patches(), cfg.d_model);
        let embedding = Pointwise::from_linear(
            PATCH_LEN,
            d,
            false,
            MixerLayout::Tokens,
            vb.pp("patch_embedding").pp("value_embedding"),
        )?;
        let position = Tensor::from_vec(sinusoid_table(p, d), (p, d), vb.device())?;
        let enc = vb.pp("encoder");
        let layers = (0..cfg.e_layers)
            .map(|i| EncoderLayer::new(&cfg, enc.pp("attn_layers").pp(i)))
            .collect::<CandleResult<Vec<_>>>()?;
        let norm = BatchNorm::new(d, enc.pp("norm").pp("1"))?;
        let head = Pointwise::from_linear(
            d * p,
            cfg.pred_len,
            true,
            MixerLayout::Tokens,
            vb.pp("head").pp("linear"),
        )?;
        let index = padded_patch_indices(cfg.seq_len, p);
        let patch_index = Tensor::from_vec(index, p * PATCH_LEN, vb.device())?;
        Ok(Self {
            cfg,
            embedding,
            position,
            layers,
            norm,
            head,
            patch_index,
        })
    }

    /// The encoder's output `(B, C, P, d_model)` (after its BatchNorm) and the normalization's
    /// `(mean, std)` `(B, 1, C)` for a series `(B, seq_len, C)`.
    pub fn forward_hidden(&self, x: &Tensor) -> CandleResult<(Tensor, Tensor, Tensor)> {
        if x.dims3()?.1 != self.cfg.seq_len {
            candle_core::bail!(
                "JDPatchTST expects a (batch, {}, channels) series, got {:?}",
                self.cfg.seq_len,
                x.dims()
            );
        }
        let scaling = Scaling::Std {
            minimum_scale: 1e-5,
        };
        let (scaled, loc, scale) = scaling.apply(x)?;
        let patches = patchify(&scaled, &self.patch_index, PATCH_LEN)?;
        let (b, c, p, _) = patches.dims4()?;
        let mut h = self
            .embedding
            .forward(&patches.reshape((b * c, p, PATCH_LEN))?)?
            .broadcast_add(&self.position)?;
        for layer in &self.layers {
            h = layer.forward(&h)?;
        }
        let h = self.norm.forward_channels_last(&h)?;
        Ok((h.reshape((b, c, p, self.cfg.d_model))?, loc, scale))
    }
}

impl SequenceModel for JdPatchTst {
    fn task(&self) -> SequenceTask {
        self.cfg.task()
    }

    fn forward_t(&self, x: &Tensor, _mask: Option<&Tensor>, _train: bool) -> CandleResult<Tensor> {
        let (h, loc, scale) = self.forward_hidden(x)?;
        let (b, c, p, d) = h.dims4()?;
        let flat = h.transpose(2, 3)?.contiguous()?.reshape((b, c, d * p))?;
        descale(&self.head.forward(&flat)?, &loc, &scale, None)
    }
}

/// The named JDPatchTST models.
pub(crate) static MODELS: &[SequenceEntry] = &[SequenceEntry {
    name: "JDPatchTST",
    source: "Thrillcrazyer/JustDense scripts/long_term_forecast/ETT_script/PatchTST_ETTh1.sh \
             (JDPatchTST, ETTh1 96 -> 96)",
    config: || SequenceConfig::new(JdPatchTstConfig::etth1(96)),
}];
