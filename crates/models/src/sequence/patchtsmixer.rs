//! IBM's TSMixer as Hugging Face transformers has it (`PatchTSMixerForPrediction`,
//! `models/patchtsmixer/modeling_patchtsmixer.py`): a multivariate series is scaled per
//! channel, cut into patches, embedded, mixed by [`TsMixerLayer`]s (patch, feature and, in
//! `mix_channel` mode, channel mixers with gated attention) and flattened into a linear
//! forecast head; the forecast is scaled back.
//!
//! `config.json` is `PatchTSMixerConfig`'s (`model_type` `"patchtsmixer"`); state-dict names
//! are the reference's (`model.encoder.patcher.weight`,
//! `model.encoder.mlp_mixer_encoder.mixers.0.patch_mixer.mlp.fc1.weight`,
//! `head.base_forecast_block.weight`, ...). Implemented: the point forecast (`loss` `"mse"`),
//! `std` / `mean` / no scaling, LayerNorm or BatchNorm, gated attention, self-attention,
//! positional encodings, `prediction_channel_indices`. Not implemented, and refused by name:
//! the distribution heads (`loss` `"nll"`) and the pretraining, classification and regression
//! models.

use candle_core::{Module, Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use serde_json::{json, Map, Value};
use tokenmix_mixers::layers::Pointwise;
use tokenmix_mixers::tsmixer::{TsMixerLayer, TsMixerLayerConfig, TsNormKind};
use tokenmix_mixers::{MixerLayout, MixerSpec};

use super::keys::{architecture, bool_or, f64_or, indices, str_or, usize_or};
use super::{SequenceArchitecture, SequenceConfig, SequenceEntry, SequenceModel, SequenceTask};

/// How the input is scaled per channel before the model and the forecast scaled back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scaling {
    /// `(x - mean) / sqrt(var + minimum_scale)` over time (`PatchTSMixerStdScaler`).
    Std {
        /// Added to the variance (the reference's default 1e-5).
        minimum_scale: f64,
    },
    /// `x / max(mean |x|, minimum_scale)` (`PatchTSMixerMeanScaler`).
    Mean {
        /// Smallest scale (default 1e-10).
        minimum_scale: f64,
    },
    /// No scaling.
    None,
}

impl Scaling {
    /// `(scaled, loc, scale)` of `x` `(B, L, V)`, `loc` and `scale` `(B, 1, V)`.
    pub fn apply(&self, x: &Tensor) -> CandleResult<(Tensor, Tensor, Tensor)> {
        match *self {
            Self::Std { minimum_scale } => {
                let loc = x.mean_keepdim(1)?;
                let centered = x.broadcast_sub(&loc)?;
                let scale = (centered.sqr()?.mean_keepdim(1)? + minimum_scale)?.sqrt()?;
                Ok((centered.broadcast_div(&scale)?, loc, scale))
            }
            Self::Mean { minimum_scale } => {
                let scale = x.abs()?.mean_keepdim(1)?.clamp(minimum_scale, f64::MAX)?;
                let loc = scale.zeros_like()?;
                Ok((x.broadcast_div(&scale)?, loc, scale))
            }
            Self::None => {
                let (b, _, v) = x.dims3()?;
                let loc = Tensor::zeros((b, 1, v), x.dtype(), x.device())?;
                Ok((x.clone(), loc.clone(), (loc + 1.0)?))
            }
        }
    }

    /// The config's `scaling` value (`"std"`, `"mean"` or null).
    fn hf_value(&self) -> Value {
        match self {
            Self::Std { .. } => json!("std"),
            Self::Mean { .. } => json!("mean"),
            Self::None => Value::Null,
        }
    }

    /// Reads `scaling` (a string, a boolean or null) and `minimum_scale` as the reference's
    /// model does: `"mean"` is the mean scaler, `"std"` and `true` the std scaler, anything
    /// else none.
    pub(crate) fn from_hf(map: &Map<String, Value>) -> std::result::Result<Self, String> {
        let std = match map.get("scaling") {
            None => Some(true),
            Some(Value::String(s)) if s == "std" => Some(true),
            Some(Value::String(s)) if s == "mean" => Some(false),
            Some(Value::Bool(true)) => Some(true),
            _ => None,
        };
        Ok(match std {
            Some(true) => Self::Std {
                minimum_scale: f64_or(map, "minimum_scale", 1e-5)?,
            },
            Some(false) => Self::Mean {
                minimum_scale: f64_or(map, "minimum_scale", 1e-10)?,
            },
            None => Self::None,
        })
    }
}

/// `PatchTSMixerConfig` for forecasting, with the reference's key names (see
/// [`PatchTsMixerConfig::from_hf`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchTsMixerConfig {
    /// Time steps read.
    pub context_length: usize,
    /// Time steps per patch.
    pub patch_length: usize,
    /// Steps between patch starts.
    pub patch_stride: usize,
    /// Channels of the series.
    pub num_input_channels: usize,
    /// Features per patch.
    pub d_model: usize,
    /// MLP expansion factor.
    pub expansion_factor: usize,
    /// Mixer layers.
    pub num_layers: usize,
    /// `mix_channel` mode (a channel mixer in every layer) instead of `common_channel`.
    pub mix_channel: bool,
    /// Gated attention after every MLP.
    pub gated_attn: bool,
    /// The norm of every branch (`norm_mlp`).
    pub norm: TsNormKind,
    /// Self-attention in the patch mixers.
    pub self_attn: bool,
    /// Its heads.
    pub self_attn_heads: usize,
    /// A learned or sin-cos position table `[num_patches, d_model]` added to the embeddings.
    pub use_positional_encoding: bool,
    /// `"sincos"` or `"random"` (which only changes the table's initialisation).
    pub positional_encoding_type: String,
    /// Per-channel scaling.
    pub scaling: Scaling,
    /// Norm epsilon.
    pub norm_eps: f64,
    /// Time steps predicted.
    pub prediction_length: usize,
    /// Channels predicted (sorted, as the reference sorts them); all when `None`.
    pub prediction_channel_indices: Option<Vec<usize>>,
    /// Dropout in training (kept for the config; tokenmix's layers run without it).
    pub dropout: f64,
    /// Head dropout in training (ditto).
    pub head_dropout: f64,
}

impl Default for PatchTsMixerConfig {
    /// `PatchTSMixerConfig()`'s defaults.
    fn default() -> Self {
        Self {
            context_length: 32,
            patch_length: 8,
            patch_stride: 8,
            num_input_channels: 1,
            d_model: 8,
            expansion_factor: 2,
            num_layers: 3,
            mix_channel: false,
            gated_attn: true,
            norm: TsNormKind::LayerNorm,
            self_attn: false,
            self_attn_heads: 1,
            use_positional_encoding: false,
            positional_encoding_type: "sincos".into(),
            scaling: Scaling::Std {
                minimum_scale: 1e-5,
            },
            norm_eps: 1e-5,
            prediction_length: 16,
            prediction_channel_indices: None,
            dropout: 0.2,
            head_dropout: 0.2,
        }
    }
}

/// The largest sizes tokenmix builds for these models (far beyond the published ones).
pub(crate) const MAX_LENGTH: usize = 1 << 20;
pub(crate) const MAX_WIDTH: usize = 1 << 14;
pub(crate) const MAX_LAYERS: usize = 1024;

impl PatchTsMixerConfig {
    /// The configuration of `ibm-granite/granite-timeseries-patchtsmixer` (ETTh1: 7 channels,
    /// 512 steps in, 96 out, patches of 8, `d_model` 16, 8 layers), as transformers'
    /// PatchTSMixer example trains it.
    pub fn granite_etth1() -> Self {
        Self {
            context_length: 512,
            prediction_length: 96,
            num_input_channels: 7,
            d_model: 16,
            num_layers: 8,
            ..Self::default()
        }
    }

    /// Patches per series, as the reference counts them.
    pub fn num_patches(&self) -> usize {
        (self.context_length.max(self.patch_length) - self.patch_length) / self.patch_stride.max(1)
            + 1
    }

    /// What the model takes and returns: any number of channels in `common_channel` mode
    /// (the weights are shared across channels), exactly `num_input_channels` in
    /// `mix_channel` mode.
    pub(crate) fn forecast_task(&self, mixes_channels: bool) -> SequenceTask {
        let fixed = mixes_channels.then_some(self.num_input_channels);
        let picked = self.prediction_channel_indices.as_ref();
        SequenceTask::Forecast {
            context_length: self.context_length,
            prediction_length: self.prediction_length,
            num_input_channels: fixed,
            min_input_channels: picked.and_then(|ix| ix.iter().max()).map_or(1, |m| m + 1),
            num_output_channels: picked.map(Vec::len).or(fixed),
        }
    }

    /// The layer config every mixer layer shares.
    pub fn layer(&self) -> TsMixerLayerConfig {
        TsMixerLayerConfig {
            d_model: self.d_model,
            num_patches: self.num_patches(),
            num_channels: self.num_input_channels,
            expansion_factor: self.expansion_factor,
            gated_attn: self.gated_attn,
            self_attn: self.self_attn,
            self_attn_heads: self.self_attn_heads,
            norm: self.norm,
            norm_eps: self.norm_eps,
            mix_channel: self.mix_channel,
            skip_single_patch: false,
        }
    }

    /// Reads a `PatchTSMixerConfig` `config.json` (absent keys take the reference's defaults;
    /// keys that only training or other heads use are ignored).
    pub fn from_hf(map: &Map<String, Value>) -> std::result::Result<SequenceConfig, String> {
        Ok(SequenceConfig::new(Self::read(map)?))
    }

    pub(crate) fn read(map: &Map<String, Value>) -> std::result::Result<Self, String> {
        if let Some(arch) = architecture(map) {
            if arch != "PatchTSMixerForPrediction" {
                return Err(format!(
                    "architectures names {arch}; tokenmix implements PatchTSMixerForPrediction \
                     (forecasting) of this family"
                ));
            }
        }
        let d = Self::default();
        let loss = str_or(map, "loss", "mse")?;
        if loss.as_deref() != Some("mse") {
            return Err(format!(
                "loss {loss:?} selects a distribution head, which tokenmix does not implement \
                 (it forecasts point values: loss \"mse\")"
            ));
        }
        let mode = str_or(map, "mode", "common_channel")?.unwrap_or_default();
        let mix_channel = match mode.as_str() {
            "common_channel" => false,
            "mix_channel" => true,
            other => {
                return Err(format!(
                    "mode must be \"common_channel\" or \"mix_channel\", got \"{other}\""
                ))
            }
        };
        let norm_mlp = str_or(map, "norm_mlp", "LayerNorm")?.unwrap_or_default();
        let norm = if norm_mlp.to_lowercase().contains("batch") {
            TsNormKind::BatchNorm
        } else {
            TsNormKind::LayerNorm
        };
        let mut prediction_channel_indices = indices(map, "prediction_channel_indices")?;
        if let Some(ix) = prediction_channel_indices.as_mut() {
            ix.sort_unstable();
        }
        Ok(Self {
            context_length: usize_or(map, "context_length", d.context_length)?,
            patch_length: usize_or(map, "patch_length", d.patch_length)?,
            patch_stride: usize_or(map, "patch_stride", d.patch_stride)?,
            num_input_channels: usize_or(map, "num_input_channels", d.num_input_channels)?,
            d_model: usize_or(map, "d_model", d.d_model)?,
            expansion_factor: usize_or(map, "expansion_factor", d.expansion_factor)?,
            num_layers: usize_or(map, "num_layers", d.num_layers)?,
            mix_channel,
            gated_attn: bool_or(map, "gated_attn", d.gated_attn)?,
            norm,
            self_attn: bool_or(map, "self_attn", d.self_attn)?,
            self_attn_heads: usize_or(map, "self_attn_heads", d.self_attn_heads)?,
            use_positional_encoding: bool_or(map, "use_positional_encoding", false)?,
            positional_encoding_type: str_or(map, "positional_encoding_type", "sincos")?
                .unwrap_or_default(),
            scaling: Scaling::from_hf(map)?,
            norm_eps: f64_or(map, "norm_eps", d.norm_eps)?,
            prediction_length: usize_or(map, "prediction_length", d.prediction_length)?,
            prediction_channel_indices,
            dropout: f64_or(map, "dropout", d.dropout)?,
            head_dropout: f64_or(map, "head_dropout", d.head_dropout)?,
        })
    }

    /// The config's keys as `PatchTSMixerConfig` writes them (TTM's config extends them).
    pub(crate) fn hf_map(&self) -> Map<String, Value> {
        let json = json!({
            "architectures": ["PatchTSMixerForPrediction"],
            "model_type": "patchtsmixer",
            "context_length": self.context_length,
            "patch_length": self.patch_length,
            "patch_stride": self.patch_stride,
            "num_input_channels": self.num_input_channels,
            "d_model": self.d_model,
            "expansion_factor": self.expansion_factor,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
            "mode": if self.mix_channel { "mix_channel" } else { "common_channel" },
            "gated_attn": self.gated_attn,
            "norm_mlp": match self.norm {
                TsNormKind::LayerNorm => "LayerNorm",
                TsNormKind::BatchNorm => "BatchNorm",
            },
            "self_attn": self.self_attn,
            "self_attn_heads": self.self_attn_heads,
            "use_positional_encoding": self.use_positional_encoding,
            "positional_encoding_type": self.positional_encoding_type,
            "scaling": self.scaling.hf_value(),
            "loss": "mse",
            "norm_eps": self.norm_eps,
            "head_dropout": self.head_dropout,
            "prediction_length": self.prediction_length,
            "prediction_channel_indices": self.prediction_channel_indices,
        });
        match json {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    /// The size rules shared with TTM: lengths, widths and layer counts in range, the
    /// context longer than a patch, channel indices in range.
    pub(crate) fn check_sizes(&self) -> std::result::Result<(), String> {
        let in_range = |name: &str, v: usize, max: usize| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be in 1..={max}, got {v}"))
            }
        };
        in_range("context_length", self.context_length, MAX_LENGTH)?;
        in_range("prediction_length", self.prediction_length, MAX_LENGTH)?;
        in_range("patch_length", self.patch_length, MAX_LENGTH)?;
        in_range("patch_stride", self.patch_stride, MAX_LENGTH)?;
        in_range("num_input_channels", self.num_input_channels, MAX_WIDTH)?;
        in_range("d_model", self.d_model, MAX_WIDTH)?;
        in_range("num_layers", self.num_layers, MAX_LAYERS)?;
        in_range("expansion_factor", self.expansion_factor, 64)?;
        in_range("num_patches", self.num_patches(), 1 << 16)?;
        if self.context_length <= self.patch_length {
            return Err(format!(
                "context_length ({}) must be greater than patch_length ({})",
                self.context_length, self.patch_length
            ));
        }
        if let Some(ix) = &self.prediction_channel_indices {
            if ix.is_empty() || ix.iter().any(|&i| i >= self.num_input_channels) {
                return Err(format!(
                    "prediction_channel_indices {ix:?} must be a non-empty list of channels \
                     below num_input_channels ({})",
                    self.num_input_channels
                ));
            }
        }
        if !matches!(self.positional_encoding_type.as_str(), "sincos" | "random") {
            return Err(format!(
                "positional_encoding_type must be \"sincos\" or \"random\", got \"{}\"",
                self.positional_encoding_type
            ));
        }
        self.layer()
            .patch_mixer()
            .validate(self.d_model)
            .map_err(|e| e.to_string())
    }
}

impl SequenceArchitecture for PatchTsMixerConfig {
    fn model_type(&self) -> &'static str {
        "patchtsmixer"
    }

    fn architecture(&self) -> &'static str {
        "PatchTSMixerForPrediction"
    }

    fn task(&self) -> SequenceTask {
        self.forecast_task(self.mix_channel)
    }

    fn build(&self, vb: VarBuilder) -> CandleResult<Box<dyn SequenceModel>> {
        Ok(Box::new(PatchTsMixer::new(self.clone(), vb)?))
    }

    fn validate(&self) -> std::result::Result<(), String> {
        self.check_sizes()
    }

    fn to_hf_config(&self) -> Value {
        Value::Object(self.hf_map())
    }

    fn macs(&self, _len: usize) -> u64 {
        let (v, p, d) = (
            self.num_input_channels as u64,
            self.num_patches() as u64,
            self.d_model as u64,
        );
        let layer = self.layer();
        let patch = layer
            .patch_mixer()
            .macs(self.d_model, 1, self.num_patches());
        let e = self.expansion_factor as u64;
        let gate = u64::from(self.gated_attn);
        let feature = p * (2 * d * d * e + gate * d * d);
        let channel = if self.mix_channel {
            p * d * (2 * v * v * e + gate * v * v)
        } else {
            0
        };
        let per_variate = p * self.patch_length as u64 * d
            + self.num_layers as u64 * (patch + feature)
            + p * d * self.prediction_length as u64;
        v * per_variate + self.num_layers as u64 * channel
    }

    fn clone_box(&self) -> Box<dyn SequenceArchitecture> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Indices into the time axis that cut a series of `context_length` steps into the
/// reference's patches: the last `patch_length + stride * (num_patches - 1)` steps, patch `p`
/// starting at `start + p * stride`. `(num_patches * patch_length)` u32 values.
pub(crate) fn patch_indices(
    context_length: usize,
    patch_length: usize,
    stride: usize,
    num_patches: usize,
) -> Vec<u32> {
    let used = patch_length + stride * (num_patches - 1);
    let start = context_length - used;
    (0..num_patches)
        .flat_map(|p| (0..patch_length).map(move |j| (start + p * stride + j) as u32))
        .collect()
}

/// `(B, L, V)` to the patches `(B, V, num_patches, patch_length)` that `index` (from
/// [`patch_indices`]) picks.
pub(crate) fn patchify(x: &Tensor, index: &Tensor, patch_length: usize) -> CandleResult<Tensor> {
    let (b, _, v) = x.dims3()?;
    let n = index.dim(0)? / patch_length;
    x.transpose(1, 2)?
        .contiguous()?
        .index_select(index, 2)?
        .reshape((b, v, n, patch_length))
}

/// The reference's sin-cos position table `[num_patches, d_model]`: sines in the even
/// columns, cosines in the odd ones, then centred and divided by ten times its standard
/// deviation (unbiased).
pub fn sincos_table(num_patches: usize, d_model: usize) -> Vec<f32> {
    let mut t = vec![0f64; num_patches * d_model];
    for p in 0..num_patches {
        for i in (0..d_model).step_by(2) {
            let div = (-(i as f64) * (10000f64.ln() / d_model as f64)).exp();
            t[p * d_model + i] = (p as f64 * div).sin();
            if i + 1 < d_model {
                t[p * d_model + i + 1] = (p as f64 * div).cos();
            }
        }
    }
    let n = t.len() as f64;
    let mean = t.iter().sum::<f64>() / n;
    let var = t.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let std = var.sqrt();
    t.iter()
        .map(|v| ((v - mean) / (std * 10.0)) as f32)
        .collect()
}

/// A built PatchTSMixer forecaster (see the [module docs](self)).
#[derive(Debug)]
pub struct PatchTsMixer {
    cfg: PatchTsMixerConfig,
    patcher: Pointwise,
    position: Option<Tensor>,
    layers: Vec<TsMixerLayer>,
    head: Pointwise,
    patch_index: Tensor,
    channels: Option<Tensor>,
}

impl PatchTsMixer {
    /// Builds the model from `vb` (the root of the reference's state dict).
    pub fn new(cfg: PatchTsMixerConfig, vb: VarBuilder) -> CandleResult<Self> {
        let (p, d) = (cfg.num_patches(), cfg.d_model);
        let enc = vb.pp("model").pp("encoder");
        let layout = MixerLayout::Tokens;
        let patcher = Pointwise::from_linear(cfg.patch_length, d, true, layout, enc.pp("patcher"))?;
        let position = cfg
            .use_positional_encoding
            .then(|| enc.pp("positional_encoder").get((p, d), "position_enc"))
            .transpose()?;
        let layer = cfg.layer();
        let mixers = enc.pp("mlp_mixer_encoder").pp("mixers");
        let layers = (0..cfg.num_layers)
            .map(|i| TsMixerLayer::new(&layer, mixers.pp(i)))
            .collect::<CandleResult<Vec<_>>>()?;
        let head = Pointwise::from_linear(
            p * d,
            cfg.prediction_length,
            true,
            layout,
            vb.pp("head").pp("base_forecast_block"),
        )?;
        let index = patch_indices(cfg.context_length, cfg.patch_length, cfg.patch_stride, p);
        let patch_index = Tensor::from_vec(index, p * cfg.patch_length, vb.device())?;
        let channels = channel_index(cfg.prediction_channel_indices.as_deref(), vb.device())?;
        Ok(Self {
            cfg,
            patcher,
            position,
            layers,
            head,
            patch_index,
            channels,
        })
    }

    /// The encoder's last hidden state `(B, V, num_patches, d_model)` and the scaler's
    /// `(loc, scale)` `(B, 1, V)` for a series `(B, context_length, V)`.
    pub fn forward_hidden(&self, x: &Tensor) -> CandleResult<(Tensor, Tensor, Tensor)> {
        let (scaled, loc, scale) = self.cfg.scaling.apply(x)?;
        let patches = patchify(&scaled, &self.patch_index, self.cfg.patch_length)?;
        let mut h = self.patcher.forward(&patches)?;
        if let Some(pos) = &self.position {
            h = h.broadcast_add(pos)?;
        }
        for layer in &self.layers {
            h = layer.forward(&h)?;
        }
        Ok((h, loc, scale))
    }
}

/// The sorted predicted channels as a u32 index tensor, `None` for all.
pub(crate) fn channel_index(
    channels: Option<&[usize]>,
    device: &candle_core::Device,
) -> CandleResult<Option<Tensor>> {
    channels
        .map(|ix| {
            let ix: Vec<u32> = ix.iter().map(|&i| i as u32).collect();
            Tensor::from_vec(ix.clone(), ix.len(), device)
        })
        .transpose()
}

/// The forecast head's output `(B, V, H)` as `(B, H, V')`: transposed, the predicted channels
/// picked, and scaled back with their `loc` and `scale` `(B, 1, V)`.
pub(crate) fn descale(
    y: &Tensor,
    loc: &Tensor,
    scale: &Tensor,
    channels: Option<&Tensor>,
) -> CandleResult<Tensor> {
    let y = y.transpose(1, 2)?.contiguous()?;
    let (y, loc, scale) = match channels {
        Some(ix) => (
            y.index_select(ix, 2)?,
            loc.index_select(ix, 2)?,
            scale.index_select(ix, 2)?,
        ),
        None => (y, loc.clone(), scale.clone()),
    };
    y.broadcast_mul(&scale)?.broadcast_add(&loc)
}

impl SequenceModel for PatchTsMixer {
    fn task(&self) -> SequenceTask {
        self.cfg.task()
    }

    fn forward_t(&self, x: &Tensor, _mask: Option<&Tensor>, _train: bool) -> CandleResult<Tensor> {
        let (h, loc, scale) = self.forward_hidden(x)?;
        let (b, v, p, d) = h.dims4()?;
        let y = self.head.forward(&h.reshape((b, v, p * d))?)?;
        descale(&y, &loc, &scale, self.channels.as_ref())
    }
}

/// The named PatchTSMixer models.
pub(crate) static MODELS: &[SequenceEntry] = &[SequenceEntry {
    name: "granite-timeseries-patchtsmixer",
    source:
        "ibm-granite/granite-timeseries-patchtsmixer (PatchTSMixerForPrediction, ETTh1 512 -> 96)",
    config: || SequenceConfig::new(PatchTsMixerConfig::granite_etth1()),
}];
