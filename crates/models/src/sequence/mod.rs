//! Models of 1-D sequences: multivariate time series (forecasting) and text (classification).
//!
//! A [`SequenceModel`] is the counterpart of [`ImageModel`](crate::ImageModel): a forecaster
//! takes `(B, context_length, num_input_channels)` values and returns
//! `(B, prediction_length, channels)`; a text classifier takes token ids `(B, L)` (with an
//! optional attention mask) and returns `(B, num_labels)` logits. What a model takes is its
//! [`SequenceTask`].
//!
//! A family is one file: its config implements [`SequenceArchitecture`], reading and writing
//! the reference's `config.json` with the reference's key names (Hugging Face transformers'
//! config classes where the reference has one, else the reference constructor's arguments), and one line of [`SEQUENCE_FAMILIES`] registers it under the config's `model_type`.
//! The named models are [`sequence_models`]. A hub directory (`config.json` +
//! `model.safetensors`, as `ibm-granite/granite-timeseries-ttm-r2` serves it) loads with
//! [`load_sequence_dir`], strictly: every missing, unexpected, mis-shaped or non-finite tensor
//! is named before anything is built, and a config option tokenmix does not implement is an
//! error naming it, never silently ignored.

pub mod justdense;
pub mod patchtsmixer;
pub mod ponet;
pub mod tinytimemixer;
pub mod tsm2;

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use serde_json::{Map, Value};

use crate::checkpoint::{self, CheckpointBytes, Rules, TensorSpec};
use crate::{Error, Result};

/// What a sequence model takes and returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceTask {
    /// Forecasting: `(B, context_length, V)` f32 values in, the next `prediction_length`
    /// steps of the predicted channels out (`(B, prediction_length, V')`).
    Forecast {
        /// Time steps the model reads.
        context_length: usize,
        /// Time steps it predicts.
        prediction_length: usize,
        /// Channels the input must have: `Some(V)` for models whose weights mix channels,
        /// `None` for channel-independent ones, which take any number (at least
        /// `min_input_channels`).
        num_input_channels: Option<usize>,
        /// The fewest input channels (one more than the highest predicted channel index).
        min_input_channels: usize,
        /// Channels predicted: `Some(V')` (the config's `prediction_channel_indices`, or a
        /// fixed channel count), `None` for as many as the input has.
        num_output_channels: Option<usize>,
    },
    /// Classification of token sequences: ids `(B, L)` (u32, `L` at most `max_length`) in,
    /// `(B, num_labels)` logits out.
    Classify {
        /// Size of the vocabulary.
        vocab_size: usize,
        /// Longest sequence the position embeddings cover.
        max_length: usize,
        /// Classes.
        num_labels: usize,
    },
    /// Masked-language-model pre-training: ids `(B, L)` (u32, `L` at most `max_length`) in,
    /// `(B, L, vocab_size)` logits of every position's token out.
    MaskedLm {
        /// Size of the vocabulary.
        vocab_size: usize,
        /// Longest sequence the position embeddings cover.
        max_length: usize,
    },
}

impl SequenceTask {
    /// The task of a forecaster whose weights are shared across channels: any number of
    /// input channels, all of them predicted.
    pub fn channel_independent_forecast(context_length: usize, prediction_length: usize) -> Self {
        Self::Forecast {
            context_length,
            prediction_length,
            num_input_channels: None,
            min_input_channels: 1,
            num_output_channels: None,
        }
    }
}

/// A sequence model (see the [module docs](self)).
pub trait SequenceModel: Send + Sync + Debug {
    /// What it takes and returns.
    fn task(&self) -> SequenceTask;

    /// The model's output for `input` (see [`SequenceTask`]); `mask` is a text model's
    /// attention mask `(B, L)` (1 for tokens, 0 for padding; forecasters take none); `train`
    /// turns on the training-only randomness the model has.
    fn forward_t(&self, input: &Tensor, mask: Option<&Tensor>, train: bool)
        -> CandleResult<Tensor>;

    /// [`forward_t`](Self::forward_t) in evaluation mode, without a mask.
    fn forward(&self, input: &Tensor) -> CandleResult<Tensor> {
        self.forward_t(input, None, false)
    }
}

/// The architecture of one sequence family: builds the model and reads and writes its
/// reference `config.json`.
pub trait SequenceArchitecture: Debug + Send + Sync {
    /// The `model_type` of the reference config (`"patchtsmixer"`, `"tinytimemixer"`, ...).
    fn model_type(&self) -> &'static str;
    /// The model class the config's `architectures` names (`"PatchTSMixerForPrediction"`).
    fn architecture(&self) -> &'static str;
    /// What the built model takes and returns.
    fn task(&self) -> SequenceTask;
    /// Builds the model, reading its tensors from `vb` under the reference's state-dict names.
    fn build(&self, vb: VarBuilder) -> CandleResult<Box<dyn SequenceModel>>;
    /// Checks the whole configuration; the message names the bad value.
    fn validate(&self) -> std::result::Result<(), String>;
    /// The config as the reference's `config.json` holds it (its key names).
    fn to_hf_config(&self) -> Value;
    /// Multiply-accumulates of one forward pass of one sample (of `len` tokens for text
    /// models; forecasters read their fixed context).
    fn macs(&self, len: usize) -> u64;
    /// The config keys of a forecaster's context length, horizon and input channel count
    /// (transformers' names by default; Time-Series-Library models say `seq_len`, `pred_len`,
    /// ...), for adapting a config to a series.
    fn forecast_keys(&self) -> [&'static str; 3] {
        ["context_length", "prediction_length", "num_input_channels"]
    }
    /// Stored tensors the model has no use for (e.g. buffers an older reference saved).
    fn ignored_tensor(&self, _name: &str) -> bool {
        false
    }
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn SequenceArchitecture>;
    /// The config, for downcasting.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// One line of the family list: a reference `model_type` and how to read its config.
#[derive(Debug, Clone, Copy)]
pub struct SequenceFamily {
    /// The config's `model_type`.
    pub model_type: &'static str,
    /// Reads the reference config's keys (every other key is the reference's bookkeeping and
    /// ignored; an option that changes the computation and is not implemented is an error).
    pub from_hf_config: fn(&Map<String, Value>) -> std::result::Result<SequenceConfig, String>,
    /// The family's named models.
    pub models: &'static [SequenceEntry],
}

/// Every sequence family, by `model_type`: one line per family.
pub static SEQUENCE_FAMILIES: &[SequenceFamily] = &[
    SequenceFamily {
        model_type: "patchtsmixer",
        from_hf_config: patchtsmixer::PatchTsMixerConfig::from_hf,
        models: patchtsmixer::MODELS,
    },
    SequenceFamily {
        model_type: "tinytimemixer",
        from_hf_config: tinytimemixer::TinyTimeMixerConfig::from_hf,
        models: tinytimemixer::MODELS,
    },
    SequenceFamily {
        model_type: "jd_patchtst",
        from_hf_config: justdense::JdPatchTstConfig::from_hf,
        models: justdense::MODELS,
    },
    SequenceFamily {
        model_type: "tsm2",
        from_hf_config: tsm2::Tsm2Config::from_hf,
        models: tsm2::MODELS,
    },
    SequenceFamily {
        model_type: "ponet",
        from_hf_config: ponet::PoNetConfig::from_hf,
        models: ponet::MODELS,
    },
    SequenceFamily {
        model_type: "bert",
        from_hf_config: ponet::PoNetConfig::from_bert_hf,
        models: &[],
    },
];

/// Any sequence family's architecture.
#[derive(Debug)]
pub struct SequenceConfig(Box<dyn SequenceArchitecture>);

impl SequenceConfig {
    /// Wraps a family's config.
    pub fn new(config: impl SequenceArchitecture + 'static) -> Self {
        Self(Box::new(config))
    }

    /// Reads a reference `config.json` (named `context` in errors): its `model_type` picks the
    /// family, which reads the rest; the configuration is validated.
    pub fn from_hf_json(json: &Value, context: &str) -> Result<Self> {
        let map = json
            .as_object()
            .ok_or_else(|| Error::config(context, "config.json is not a JSON object"))?;
        let model_type = map
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::config(context, "config.json has no \"model_type\" string"))?;
        let family = SEQUENCE_FAMILIES
            .iter()
            .find(|f| f.model_type == model_type)
            .ok_or_else(|| {
                let known: Vec<&str> = SEQUENCE_FAMILIES.iter().map(|f| f.model_type).collect();
                Error::config(
                    context,
                    format!(
                        "model_type \"{model_type}\" is not a sequence family tokenmix has \
                         (known: {})",
                        known.join(", ")
                    ),
                )
            })?;
        let config = (family.from_hf_config)(map).map_err(|e| Error::config(context, e))?;
        config.validate().map_err(|e| Error::config(context, e))?;
        Ok(config)
    }

    /// The config's own value, if it is a `T`.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }
}

impl Clone for SequenceConfig {
    fn clone(&self) -> Self {
        Self(self.0.clone_box())
    }
}

impl std::ops::Deref for SequenceConfig {
    type Target = dyn SequenceArchitecture;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

/// A named sequence model of the zoo.
#[derive(Debug, Clone, Copy)]
pub struct SequenceEntry {
    /// The name, the reference's (for hub models, the hub repository's name).
    pub name: &'static str,
    /// Where the configuration comes from.
    pub source: &'static str,
    /// Its configuration.
    pub config: fn() -> SequenceConfig,
}

/// The sequence models of the zoo, in registration order.
pub fn sequence_models() -> impl Iterator<Item = &'static SequenceEntry> {
    SEQUENCE_FAMILIES.iter().flat_map(|f| f.models.iter())
}

/// The sequence models whose name matches `pattern` (a glob with `*` and `?`, else a
/// substring; the empty pattern lists all), as [`crate::list_models`] matches image models.
pub fn list_sequence_models(pattern: &str) -> Vec<&'static SequenceEntry> {
    sequence_models()
        .filter(|e| crate::registry::name_matches(pattern, e.name))
        .collect()
}

/// The zoo's sequence model called `name`; an unknown name is an error listing them.
pub fn sequence_entry(name: &str) -> Result<&'static SequenceEntry> {
    sequence_models().find(|e| e.name == name).ok_or_else(|| {
        let names: Vec<&str> = sequence_models().map(|e| e.name).collect();
        Error::UnknownModel {
            name: name.to_string(),
            hint: format!("; the sequence models are {}", names.join(", ")),
        }
    })
}

/// Every tensor `cfg` reads, with its shape, in build order (nothing allocated; refused over
/// [`checkpoint::MAX_PARAMS`]).
pub fn sequence_tensors(cfg: &SequenceConfig) -> Result<Vec<TensorSpec>> {
    let context = format!("a {} model", cfg.model_type());
    Ok(checkpoint::record_build(|vb| cfg.build(vb).map(drop), &context)?.0)
}

/// Parameters of `cfg`: every tensor but batch-norm running statistics.
pub fn sequence_param_count(cfg: &SequenceConfig) -> Result<u64> {
    Ok(checkpoint::count_params(&sequence_tensors(cfg)?))
}

/// Builds `cfg` with random weights (normal, std 0.02; norm weights near one).
pub fn random_sequence_model(
    cfg: &SequenceConfig,
    device: &Device,
) -> Result<Box<dyn SequenceModel>> {
    let tensors = checkpoint::random_tensors(sequence_tensors(cfg)?, device)?;
    Ok(cfg.build(VarBuilder::from_tensors(tensors, DType::F32, device))?)
}

/// Loads a model of architecture `cfg` from safetensors `bytes` (named `path` in errors) onto
/// `device`, in f32: the file must hold exactly the model's tensors (stored names as the
/// reference writes them; f32, f16 or bf16; finite), else every problem is named in one error.
pub fn load_sequence_bytes(
    cfg: &SequenceConfig,
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> Result<Box<dyn SequenceModel>> {
    let bytes = CheckpointBytes::from_slice(bytes, path)?;
    load_expected(cfg, &sequence_tensors(cfg)?, &bytes, path, device)
}

/// [`load_sequence_bytes`] with the model's tensor list already recorded.
fn load_expected(
    cfg: &SequenceConfig,
    expected: &[TensorSpec],
    bytes: &CheckpointBytes<'_>,
    path: &Path,
    device: &Device,
) -> Result<Box<dyn SequenceModel>> {
    let ignore = |name: &str| cfg.ignored_tensor(name);
    let tensors = stored_tensors(bytes, path, expected, &ignore, cfg.architecture(), device)?;
    Ok(cfg.build(VarBuilder::from_tensors(tensors, DType::F32, device))?)
}

/// The `expected` tensors of checkpoint `bytes` under their stored names (sequence models
/// rename nothing and resize nothing), with the checks of [`checkpoint::load_checked`].
fn stored_tensors(
    bytes: &CheckpointBytes<'_>,
    path: &Path,
    expected: &[TensorSpec],
    ignore: &dyn Fn(&str) -> bool,
    model_name: &str,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let rules = Rules {
        rename: &|names| names.iter().map(|n| n.to_string()).collect(),
        can_resize: &|_, _, _| false,
        ignore,
    };
    Ok(checkpoint::load_checked(
        bytes,
        path,
        expected,
        &rules,
        model_name,
        device,
        DType::F32,
    )?
    .tensors)
}

/// A loaded sequence model and its configuration.
#[derive(Debug)]
pub struct LoadedSequenceModel {
    /// The architecture `config.json` describes.
    pub config: SequenceConfig,
    /// The model.
    pub model: Box<dyn SequenceModel>,
}

impl LoadedSequenceModel {
    /// The model's output for `input`, after checking its shape against the model's task.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        check_sequence_input(self.config.task(), input)?;
        Ok(self.model.forward(input)?)
    }
}

/// Fails unless `input` fits `task`: `(B, context_length, num_input_channels)` f32 values for
/// a forecaster, `(B, L)` u32 ids with `1 <= L <= max_length` for a text model.
pub fn check_sequence_input(task: SequenceTask, input: &Tensor) -> Result<()> {
    let dims = input.dims();
    match task {
        SequenceTask::Forecast {
            context_length,
            num_input_channels,
            min_input_channels,
            ..
        } => {
            let channels_ok = |c: usize| match num_input_channels {
                Some(n) => c == n,
                None => c >= min_input_channels,
            };
            if dims.len() != 3 || dims[0] == 0 || dims[1] != context_length || !channels_ok(dims[2])
            {
                let channels = match num_input_channels {
                    Some(n) => n.to_string(),
                    None if min_input_channels > 1 => format!("channels >= {min_input_channels}"),
                    None => "channels".to_string(),
                };
                return Err(Error::Input(format!(
                    "expected a (batch, {context_length}, {channels}) series \
                     (batch, context_length, channels), got shape {dims:?}"
                )));
            }
            if input.dtype() != DType::F32 {
                return Err(Error::Input(format!(
                    "series values must be f32, got {:?}",
                    input.dtype()
                )));
            }
        }
        SequenceTask::Classify { max_length, .. } | SequenceTask::MaskedLm { max_length, .. } => {
            if dims.len() != 2 || dims[0] == 0 || dims[1] == 0 || dims[1] > max_length {
                return Err(Error::Input(format!(
                    "expected token ids of shape (batch, length) with length in \
                     1..={max_length}, got shape {dims:?}"
                )));
            }
            if input.dtype() != DType::U32 {
                return Err(Error::Input(format!(
                    "token ids must be u32, got {:?}",
                    input.dtype()
                )));
            }
        }
    }
    Ok(())
}

/// Reads and validates `dir/config.json` (the reference's keys; its `model_type` picks the
/// family).
pub fn read_sequence_config(dir: &Path) -> Result<SequenceConfig> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|source| Error::Io {
        path: config_path.clone(),
        source,
    })?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::config(config_path.display().to_string(), e))?;
    SequenceConfig::from_hf_json(&json, &config_path.display().to_string())
}

/// The weights file of a reference directory: `model.safetensors`, else `pytorch_model.bin`
/// (the hub's older layout, a `torch.save` archive).
pub fn sequence_weights_path(dir: &Path) -> Result<PathBuf> {
    ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Io {
            path: dir.join("model.safetensors"),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the directory has neither model.safetensors nor pytorch_model.bin",
            ),
        })
}

/// The `expected` tensors of the checkpoint at `path` as f32 on `device`, with the strict
/// checks of loading (every expected tensor present, shaped and finite; every other stored
/// tensor an error unless `ignore` accepts its name; all problems named in one error about
/// `model_name`). For building a model from part of a checkpoint, e.g. a classifier from a
/// pre-trained encoder.
pub fn load_sequence_tensors(
    path: &Path,
    expected: &[TensorSpec],
    ignore: &dyn Fn(&str) -> bool,
    model_name: &str,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let bytes = CheckpointBytes::open(path)?;
    stored_tensors(&bytes, path, expected, ignore, model_name, device)
}

/// Loads the model in `dir` onto `device`: `config.json` as the reference writes it (its
/// `model_type` picks the family) and `model.safetensors` (else `pytorch_model.bin`) with the
/// reference's tensor names.
pub fn load_sequence_dir(dir: &Path, device: &Device) -> Result<LoadedSequenceModel> {
    let config = read_sequence_config(dir)?;
    let weights = sequence_weights_path(dir)?;
    // The tensor list is recorded (and absurd configs refused) before the file is read.
    let expected = sequence_tensors(&config)?;
    let bytes = CheckpointBytes::open(&weights)?;
    let model = load_expected(&config, &expected, &bytes, &weights, device)?;
    Ok(LoadedSequenceModel { config, model })
}

/// Writes `config.json` (the reference's keys) and `model.safetensors` (`tensors`, under the
/// reference's names) into `dir`, creating it: a directory [`load_sequence_dir`] and the
/// reference both load.
pub fn save_sequence_dir(
    dir: &Path,
    config: &SequenceConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let text = serde_json::to_string_pretty(&config.to_hf_config())
        .map_err(|e| Error::config("config.json", e))?;
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, text).map_err(|source| Error::Io {
        path: config_path,
        source,
    })?;
    let weights = dir.join("model.safetensors");
    candle_core::safetensors::save(tensors, &weights)?;
    Ok(())
}

/// Typed readers of reference config keys, with the reference's defaults.
pub(crate) mod keys {
    use serde_json::{Map, Value};

    /// `map[key]` as an unsigned integer, `default` when absent or null.
    pub fn usize_or(map: &Map<String, Value>, key: &str, default: usize) -> Result<usize, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("{key} must be a non-negative integer, got {v}")),
        }
    }

    /// `map[key]` as a float, `default` when absent or null.
    pub fn f64_or(map: &Map<String, Value>, key: &str, default: f64) -> Result<f64, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| format!("{key} must be a number, got {v}")),
        }
    }

    /// `map[key]` as a boolean, `default` when absent or null.
    pub fn bool_or(map: &Map<String, Value>, key: &str, default: bool) -> Result<bool, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("{key} must be true or false, got {v}")),
        }
    }

    /// `map[key]` as a string, `default` when absent; `None` when null.
    pub fn str_or(
        map: &Map<String, Value>,
        key: &str,
        default: &str,
    ) -> Result<Option<String>, String> {
        match map.get(key) {
            None => Ok(Some(default.to_string())),
            Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(format!("{key} must be a string, got {v}")),
        }
    }

    /// `map[key]` as a list of unsigned integers; `None` when absent or null.
    pub fn indices(map: &Map<String, Value>, key: &str) -> Result<Option<Vec<usize>>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| format!("{key} must list non-negative integers, got {v}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(format!("{key} must be a list of integers, got {v}")),
        }
    }

    /// The first entry of `architectures`, if there is one.
    pub fn architecture(map: &Map<String, Value>) -> Option<&str> {
        map.get("architectures")?.as_array()?.first()?.as_str()
    }
}
