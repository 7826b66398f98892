//! IBM's Tiny Time Mixers (TTM; granite-tsfm `tsfm_public/models/tinytimemixer/`,
//! `TinyTimeMixerForPrediction`), the pretrained forecasters of the hub's
//! `ibm-granite/granite-timeseries-ttm-r1` and `-r2`.
//!
//! The series is scaled per channel and cut into patches as in
//! [PatchTSMixer](super::patchtsmixer); the encoder runs TSMixer layers at several
//! resolutions ("adaptive patching": at level `i` each `d_model` vector is split into `2^i`
//! consecutive sub-patches of `d_model / 2^i` features, finest level first, `num_layers` layers
//! each), a linear `adapter` narrows to `decoder_d_model` for a small decoder of the same
//! layers, and a linear head maps the flattened patches to the horizon, which is scaled back.
//! Weights are shared across channels in `common_channel` mode, so such a model forecasts a
//! series of any number of channels.
//!
//! `config.json` is `TinyTimeMixerConfig`'s (`model_type` `"tinytimemixer"`), state-dict names
//! are the reference's (`backbone.encoder.patcher.weight`,
//! `backbone.encoder.mlp_mixer_encoder.mixers.0.mixer_layers.1.patch_mixer.mlp.fc1.weight`,
//! `decoder.adapter.weight`, `decoder.decoder_block.mixers.0...`,
//! `head.base_forecast_block.weight`). Implemented: what the r1 and r2 hub models use, plus
//! `mix_channel` modes, `prediction_channel_indices`, `prediction_filter_length`, mean or no
//! scaling and BatchNorm. Refused by name when set: the resolution prefix of the r2.1 models
//! (`resolution_prefix_tuning`), self-attention, positional encodings, exogenous and
//! categorical inputs (forecast channel mixing), register and FFT tokens, multi-scale
//! patching, quantile heads, gate modes other than softmax and distribution heads. Unlike the
//! reference, which pads or truncates, an input must have exactly `context_length` steps.

use candle_core::{Module, Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use serde_json::{json, Map, Value};
use tokenmix_mixers::layers::Pointwise;
use tokenmix_mixers::tsmixer::{TsMixerLayer, TsMixerLayerConfig};
use tokenmix_mixers::MixerLayout;

use super::keys::{architecture, bool_or, f64_or, indices, str_or, usize_or};
use super::patchtsmixer::{channel_index, descale, patch_indices, patchify, PatchTsMixerConfig};
use super::{SequenceArchitecture, SequenceConfig, SequenceEntry, SequenceModel, SequenceTask};

/// `TinyTimeMixerConfig` for forecasting, with the reference's key names. The shared
/// patching, width and scaling hyper-parameters are a [`PatchTsMixerConfig`]'s
/// (`num_layers` there is the layers per encoder level).
#[derive(Debug, Clone, PartialEq)]
pub struct TinyTimeMixerConfig {
    /// Context, patches, `d_model`, encoder layers per level, mode, norm, gates, scaling,
    /// horizon and predicted channels.
    pub base: PatchTsMixerConfig,
    /// Encoder resolutions (`adaptive_patching_levels`; 0 is one level at `d_model`).
    pub adaptive_patching_levels: usize,
    /// Whether a decoder follows the encoder.
    pub use_decoder: bool,
    /// Decoder width.
    pub decoder_d_model: usize,
    /// Decoder layers (per level).
    pub decoder_num_layers: usize,
    /// Decoder resolutions.
    pub decoder_adaptive_patching_levels: usize,
    /// The decoder's `mix_channel` mode.
    pub decoder_mix_channel: bool,
    /// Steps of the horizon kept (`prediction_filter_length`); all when `None`.
    pub prediction_filter_length: Option<usize>,
}

impl TinyTimeMixerConfig {
    /// `ibm-granite/granite-timeseries-ttm-r1` at revision `main` (512 steps in, 96 out;
    /// patches of 64, `d_model` 192 over 3 levels of 2 layers, decoder 128 wide with 2
    /// layers): its published config.json. r2's `main` (512-96-r2) has the same architecture.
    pub fn r1_512_96() -> Self {
        Self {
            base: PatchTsMixerConfig {
                context_length: 512,
                patch_length: 64,
                patch_stride: 64,
                d_model: 192,
                num_layers: 2,
                prediction_length: 96,
                ..PatchTsMixerConfig::default()
            },
            adaptive_patching_levels: 3,
            use_decoder: true,
            decoder_d_model: 128,
            decoder_num_layers: 2,
            decoder_adaptive_patching_levels: 0,
            decoder_mix_channel: false,
            prediction_filter_length: None,
        }
    }

    /// r1 at revision `1024_96_v1`: as [`r1_512_96`](Self::r1_512_96) with 1024 steps (16
    /// patches). Inferred from the parameter count IBM's notebooks print (946,336).
    pub fn r1_1024_96() -> Self {
        let mut c = Self::r1_512_96();
        c.base.context_length = 1024;
        c
    }

    /// r2 at revision `1024-96-r2`: 1024 steps in patches of 128, `d_model` 384, decoder
    /// 256. Inferred from the parameter count IBM's notebooks print (2,964,960).
    pub fn r2_1024_96() -> Self {
        let mut c = Self::r1_512_96();
        c.base.context_length = 1024;
        c.base.patch_length = 128;
        c.base.patch_stride = 128;
        c.base.d_model = 384;
        c.decoder_d_model = 256;
        c
    }

    /// r2 at revision `1536-96-r2`: as [`r2_1024_96`](Self::r2_1024_96) with 1536 steps (12
    /// patches; 3,081,120 parameters).
    pub fn r2_1536_96() -> Self {
        let mut c = Self::r2_1024_96();
        c.base.context_length = 1536;
        c
    }

    /// The width of the head's input patches.
    fn head_d_model(&self) -> usize {
        if self.use_decoder {
            self.decoder_d_model
        } else {
            self.base.d_model
        }
    }

    /// The per-level `(f, layer config)` of a block of `levels` resolutions at width `d`
    /// (finest first, as the reference orders its `mixers`); `f` is 1 where `d / 2^i <= 4`.
    fn levels(
        &self,
        d: usize,
        levels: usize,
        mix_channel: bool,
    ) -> Vec<(usize, TsMixerLayerConfig)> {
        let base = TsMixerLayerConfig {
            d_model: d,
            mix_channel,
            skip_single_patch: true,
            ..self.base.layer()
        };
        if levels == 0 {
            return vec![(1, base)];
        }
        (0..levels)
            .rev()
            .map(|i| {
                let f = if d >> i <= 4 { 1 } else { 1 << i };
                let cfg = TsMixerLayerConfig {
                    d_model: d / f,
                    num_patches: base.num_patches * f,
                    ..base
                };
                (f, cfg)
            })
            .collect()
    }

    /// Reads a `TinyTimeMixerConfig` `config.json` (absent keys take the reference's
    /// defaults; options tokenmix does not implement are refused when set).
    pub fn from_hf(map: &Map<String, Value>) -> std::result::Result<SequenceConfig, String> {
        Ok(SequenceConfig::new(Self::read(map)?))
    }

    fn read(map: &Map<String, Value>) -> std::result::Result<Self, String> {
        if let Some(arch) = architecture(map) {
            if arch != "TinyTimeMixerForPrediction" {
                return Err(format!(
                    "architectures names {arch}; tokenmix implements TinyTimeMixerForPrediction \
                     of this family"
                ));
            }
        }
        refuse_unimplemented(map)?;
        let mut base_map = map.clone();
        base_map.remove("architectures");
        for (key, default) in [
            ("context_length", 64),
            ("d_model", 16),
            ("num_layers", 3),
            ("prediction_length", 16),
        ] {
            base_map.entry(key).or_insert(json!(default));
        }
        // Patching, scaling, norms, gates and predicted channels are PatchTSMixer's keys
        // with the same meaning (loss "mae" and the like only change training).
        if let Some(loss) = base_map.get("loss").and_then(Value::as_str) {
            if loss != "nll" {
                base_map.insert("loss".into(), json!("mse"));
            }
        }
        let base = PatchTsMixerConfig::read(&base_map)?;
        if base.patch_length != base.patch_stride {
            return Err(format!(
                "patch_stride ({}) must equal patch_length ({}), as the reference requires",
                base.patch_stride, base.patch_length
            ));
        }
        let decoder_mode = str_or(map, "decoder_mode", "common_channel")?.unwrap_or_default();
        let decoder_mix_channel = match decoder_mode.as_str() {
            "common_channel" => false,
            "mix_channel" => true,
            other => {
                return Err(format!(
                    "decoder_mode must be \"common_channel\" or \"mix_channel\", got \"{other}\""
                ))
            }
        };
        let prediction_filter_length = match map.get("prediction_filter_length") {
            None | Some(Value::Null) => None,
            Some(_) => Some(usize_or(map, "prediction_filter_length", 0)?),
        };
        let cfg = Self {
            adaptive_patching_levels: usize_or(map, "adaptive_patching_levels", 0)?,
            use_decoder: bool_or(map, "use_decoder", true)?,
            decoder_d_model: usize_or(map, "decoder_d_model", 8)?,
            decoder_num_layers: usize_or(map, "decoder_num_layers", 8)?,
            decoder_adaptive_patching_levels: usize_or(map, "decoder_adaptive_patching_levels", 0)?,
            decoder_mix_channel,
            prediction_filter_length,
            base,
        };
        if let Some(stated) = map.get("num_patches").filter(|v| !v.is_null()) {
            let n = usize_or(map, "num_patches", 0)?;
            if n != cfg.base.num_patches() {
                return Err(format!(
                    "num_patches {stated} does not match context_length {} in patches of {} \
                     ({} patches)",
                    cfg.base.context_length,
                    cfg.base.patch_length,
                    cfg.base.num_patches()
                ));
            }
        }
        Ok(cfg)
    }
}

/// Fails naming the first option that is set although tokenmix does not implement it.
fn refuse_unimplemented(map: &Map<String, Value>) -> std::result::Result<(), String> {
    let on = |key: &str| -> std::result::Result<bool, String> { bool_or(map, key, false) };
    for key in [
        "resolution_prefix_tuning",
        "self_attn",
        "use_positional_encoding",
        "enable_forecast_channel_mixing",
        "decoder_raw_residual",
        "multi_scale",
        "multi_quantile_head",
        "enable_base_norm_always",
    ] {
        if on(key)? {
            return Err(format!(
                "{key} is set; tokenmix's TinyTimeMixer does not implement it (the r1 and r2 \
                 hub models leave it off)"
            ));
        }
    }
    for key in ["register_tokens", "fft_length"] {
        if usize_or(map, key, 0)? != 0 {
            return Err(format!(
                "{key} is set; tokenmix's TinyTimeMixer does not implement it"
            ));
        }
    }
    for key in ["categorical_vocab_size_list", "exogenous_channel_indices"] {
        if indices(map, key)?.is_some_and(|v| !v.is_empty()) {
            return Err(format!(
                "{key} is set; exogenous and categorical inputs are not implemented"
            ));
        }
    }
    if let Some(mode) = str_or(map, "gate_mode", "softmax")? {
        if mode != "softmax" {
            return Err(format!(
                "gate_mode \"{mode}\" is not implemented (only the softmax gate)"
            ));
        }
    }
    if f64_or(map, "minimum_scale", 1e-5)? <= 0.0 {
        return Err("minimum_scale must be positive".into());
    }
    Ok(())
}

impl SequenceArchitecture for TinyTimeMixerConfig {
    fn model_type(&self) -> &'static str {
        "tinytimemixer"
    }

    fn architecture(&self) -> &'static str {
        "TinyTimeMixerForPrediction"
    }

    fn task(&self) -> SequenceTask {
        let mixes = self.base.mix_channel || (self.use_decoder && self.decoder_mix_channel);
        let mut task = self.base.forecast_task(mixes);
        if let (
            SequenceTask::Forecast {
                prediction_length, ..
            },
            Some(kept),
        ) = (&mut task, self.prediction_filter_length)
        {
            *prediction_length = kept;
        }
        task
    }

    fn build(&self, vb: VarBuilder) -> CandleResult<Box<dyn SequenceModel>> {
        Ok(Box::new(TinyTimeMixer::new(self.clone(), vb)?))
    }

    fn validate(&self) -> std::result::Result<(), String> {
        self.base.check_sizes()?;
        let in_range = |name: &str, v: usize, max: usize| {
            if v <= max {
                Ok(())
            } else {
                Err(format!("{name} must be at most {max}, got {v}"))
            }
        };
        in_range(
            "adaptive_patching_levels",
            self.adaptive_patching_levels,
            10,
        )?;
        in_range(
            "decoder_adaptive_patching_levels",
            self.decoder_adaptive_patching_levels,
            10,
        )?;
        in_range(
            "decoder_num_layers",
            self.decoder_num_layers,
            super::patchtsmixer::MAX_LAYERS,
        )?;
        if self.use_decoder && !(1..=super::patchtsmixer::MAX_WIDTH).contains(&self.decoder_d_model)
        {
            return Err(format!(
                "decoder_d_model must be in 1..={}, got {}",
                super::patchtsmixer::MAX_WIDTH,
                self.decoder_d_model
            ));
        }
        let mut blocks = vec![(
            "d_model",
            self.base.d_model,
            self.adaptive_patching_levels,
            self.base.mix_channel,
        )];
        if self.use_decoder {
            blocks.push((
                "decoder_d_model",
                self.decoder_d_model,
                self.decoder_adaptive_patching_levels,
                self.decoder_mix_channel,
            ));
        }
        for (name, d, levels, mix) in blocks {
            for (f, layer) in self.levels(d, levels, mix) {
                if !d.is_multiple_of(f) {
                    return Err(format!(
                        "{name} ({d}) must be divisible by {f} for adaptive patching"
                    ));
                }
                if layer.num_patches > 1 << 16 {
                    return Err(format!(
                        "adaptive patching makes {} patches, more than 65536",
                        layer.num_patches
                    ));
                }
            }
        }
        match self.prediction_filter_length {
            Some(n) if n == 0 || n > self.base.prediction_length => Err(format!(
                "prediction_filter_length must be in 1..={} (prediction_length), got {n}",
                self.base.prediction_length
            )),
            _ => Ok(()),
        }
    }

    fn to_hf_config(&self) -> Value {
        let mut map = self.base.hf_map();
        for key in ["self_attn", "self_attn_heads", "use_positional_encoding"] {
            map.remove(key);
        }
        map.insert(
            "architectures".into(),
            json!(["TinyTimeMixerForPrediction"]),
        );
        map.insert("model_type".into(), json!("tinytimemixer"));
        map.insert("num_patches".into(), json!(self.base.num_patches()));
        map.insert(
            "adaptive_patching_levels".into(),
            json!(self.adaptive_patching_levels),
        );
        map.insert("use_decoder".into(), json!(self.use_decoder));
        map.insert("decoder_d_model".into(), json!(self.decoder_d_model));
        map.insert("decoder_num_layers".into(), json!(self.decoder_num_layers));
        map.insert(
            "decoder_adaptive_patching_levels".into(),
            json!(self.decoder_adaptive_patching_levels),
        );
        let mode = if self.decoder_mix_channel {
            "mix_channel"
        } else {
            "common_channel"
        };
        map.insert("decoder_mode".into(), json!(mode));
        map.insert(
            "prediction_filter_length".into(),
            json!(self.prediction_filter_length),
        );
        map.insert("resolution_prefix_tuning".into(), json!(false));
        Value::Object(map)
    }

    fn macs(&self, _len: usize) -> u64 {
        let b = &self.base;
        let (p, pl) = (b.num_patches() as u64, b.patch_length as u64);
        let (d, dd) = (b.d_model as u64, self.decoder_d_model as u64);
        let v = b.num_input_channels as u64;
        let block = |width: usize, levels: usize, layers: usize, mix: bool| -> u64 {
            self.levels(width, levels, mix)
                .iter()
                .map(|(_, l)| layers as u64 * layer_macs(l, v))
                .sum()
        };
        let mut total = v * p * pl * d
            + block(
                b.d_model,
                self.adaptive_patching_levels,
                b.num_layers,
                b.mix_channel,
            );
        if self.use_decoder {
            if d != dd {
                total += v * p * d * dd;
            }
            total += block(
                self.decoder_d_model,
                self.decoder_adaptive_patching_levels,
                self.decoder_num_layers,
                self.decoder_mix_channel,
            );
        }
        total + v * p * self.head_d_model() as u64 * b.prediction_length as u64
    }

    fn clone_box(&self) -> Box<dyn SequenceArchitecture> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Multiply-accumulates of one layer on `v` channels.
fn layer_macs(l: &TsMixerLayerConfig, v: u64) -> u64 {
    let (n, d, e) = (
        l.num_patches as u64,
        l.d_model as u64,
        l.expansion_factor as u64,
    );
    let gate = u64::from(l.gated_attn);
    let patch = if n > 1 { d * n * n * (2 * e + gate) } else { 0 };
    let feature = n * d * d * (2 * e + gate);
    let channel = if l.mix_channel {
        n * d * v * v * (2 * e + gate)
    } else {
        0
    };
    v * (patch + feature) + channel
}

/// One stack of TSMixer layers at several resolutions (the reference's
/// `TinyTimeMixerBlock`): for each level, `(B, V, P, D)` is viewed as `(B, V, P f, D / f)`,
/// its layers run, and the view is undone.
#[derive(Debug)]
struct Block {
    levels: Vec<(usize, Vec<TsMixerLayer>)>,
}

impl Block {
    fn new(
        cfg: &TinyTimeMixerConfig,
        width: usize,
        levels: usize,
        layers: usize,
        mix_channel: bool,
        vb: VarBuilder,
    ) -> CandleResult<Self> {
        let mixers = vb.pp("mixers");
        let plan = cfg.levels(width, levels, mix_channel);
        let levels = plan
            .iter()
            .enumerate()
            .map(|(j, (f, layer))| {
                let at = if levels == 0 {
                    mixers.clone()
                } else {
                    mixers.pp(j).pp("mixer_layers")
                };
                let built = (0..layers)
                    .map(|l| TsMixerLayer::new(layer, at.pp(l)))
                    .collect::<CandleResult<Vec<_>>>()?;
                Ok((*f, built))
            })
            .collect::<CandleResult<Vec<_>>>()?;
        Ok(Self { levels })
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        let (b, v, p, d) = x.dims4()?;
        let mut h = x.clone();
        for (f, layers) in &self.levels {
            let mut y = h.reshape((b, v, p * f, d / f))?;
            for layer in layers {
                y = layer.forward(&y)?;
            }
            h = y.reshape((b, v, p, d))?;
        }
        Ok(h)
    }
}

/// A built Tiny Time Mixer forecaster (see the [module docs](self)).
#[derive(Debug)]
pub struct TinyTimeMixer {
    cfg: TinyTimeMixerConfig,
    patcher: Pointwise,
    encoder: Block,
    adapter: Option<Pointwise>,
    decoder: Option<Block>,
    head: Pointwise,
    patch_index: Tensor,
    channels: Option<Tensor>,
}

impl TinyTimeMixer {
    /// Builds the model from `vb` (the root of the reference's state dict).
    pub fn new(cfg: TinyTimeMixerConfig, vb: VarBuilder) -> CandleResult<Self> {
        let b = &cfg.base;
        let (p, d, dd) = (b.num_patches(), b.d_model, cfg.decoder_d_model);
        let layout = MixerLayout::Tokens;
        let enc = vb.pp("backbone").pp("encoder");
        let patcher = Pointwise::from_linear(b.patch_length, d, true, layout, enc.pp("patcher"))?;
        let encoder = Block::new(
            &cfg,
            d,
            cfg.adaptive_patching_levels,
            b.num_layers,
            b.mix_channel,
            enc.pp("mlp_mixer_encoder"),
        )?;
        let (adapter, decoder) = if cfg.use_decoder {
            let dec = vb.pp("decoder");
            let adapter = (d != dd)
                .then(|| Pointwise::from_linear(d, dd, true, layout, dec.pp("adapter")))
                .transpose()?;
            let block = Block::new(
                &cfg,
                dd,
                cfg.decoder_adaptive_patching_levels,
                cfg.decoder_num_layers,
                cfg.decoder_mix_channel,
                dec.pp("decoder_block"),
            )?;
            (adapter, Some(block))
        } else {
            (None, None)
        };
        let head = Pointwise::from_linear(
            p * cfg.head_d_model(),
            b.prediction_length,
            true,
            layout,
            vb.pp("head").pp("base_forecast_block"),
        )?;
        let index = patch_indices(b.context_length, b.patch_length, b.patch_stride, p);
        let patch_index = Tensor::from_vec(index, p * b.patch_length, vb.device())?;
        let channels = channel_index(b.prediction_channel_indices.as_deref(), vb.device())?;
        Ok(Self {
            cfg,
            patcher,
            encoder,
            adapter,
            decoder,
            head,
            patch_index,
            channels,
        })
    }
}

impl SequenceModel for TinyTimeMixer {
    fn task(&self) -> SequenceTask {
        self.cfg.task()
    }

    fn forward_t(&self, x: &Tensor, _mask: Option<&Tensor>, _train: bool) -> CandleResult<Tensor> {
        let base = &self.cfg.base;
        let (scaled, loc, scale) = base.scaling.apply(x)?;
        let patches = patchify(&scaled, &self.patch_index, base.patch_length)?;
        let mut h = self.encoder.forward(&self.patcher.forward(&patches)?)?;
        if let Some(adapter) = &self.adapter {
            h = adapter.forward(&h)?;
        }
        if let Some(decoder) = &self.decoder {
            h = decoder.forward(&h)?;
        }
        let (b, v, p, d) = h.dims4()?;
        let mut y = self.head.forward(&h.reshape((b, v, p * d))?)?;
        if let Some(kept) = self.cfg.prediction_filter_length {
            y = y.narrow(2, 0, kept)?;
        }
        descale(&y, &loc, &scale, self.channels.as_ref())
    }
}

/// The named Tiny Time Mixers: the hub repositories' default revisions and the longer-context
/// revisions (`repo@revision`).
pub(crate) static MODELS: &[SequenceEntry] = &[
    SequenceEntry {
        name: "granite-timeseries-ttm-r1",
        source: "ibm-granite/granite-timeseries-ttm-r1 at main (512 -> 96), its config.json",
        config: || SequenceConfig::new(TinyTimeMixerConfig::r1_512_96()),
    },
    SequenceEntry {
        name: "granite-timeseries-ttm-r1@1024_96_v1",
        source: "ibm-granite/granite-timeseries-ttm-r1 at 1024_96_v1 (inferred from its parameter count)",
        config: || SequenceConfig::new(TinyTimeMixerConfig::r1_1024_96()),
    },
    SequenceEntry {
        name: "granite-timeseries-ttm-r2",
        source: "ibm-granite/granite-timeseries-ttm-r2 at main (512-96-r2; r1's architecture)",
        config: || SequenceConfig::new(TinyTimeMixerConfig::r1_512_96()),
    },
    SequenceEntry {
        name: "granite-timeseries-ttm-r2@1024-96-r2",
        source: "ibm-granite/granite-timeseries-ttm-r2 at 1024-96-r2 (inferred from its parameter count)",
        config: || SequenceConfig::new(TinyTimeMixerConfig::r2_1024_96()),
    },
    SequenceEntry {
        name: "granite-timeseries-ttm-r2@1536-96-r2",
        source: "ibm-granite/granite-timeseries-ttm-r2 at 1536-96-r2 (inferred from its parameter count)",
        config: || SequenceConfig::new(TinyTimeMixerConfig::r2_1536_96()),
    },
];
