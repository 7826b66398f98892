//! Loading a model from local files: a model directory as the Hugging Face hub serves
//! `timm/<name>` and timm's `save_for_hf` writes it (`config.json` with `architecture`,
//! `num_classes`, `model_args`, `pretrained_cfg` and optionally `label_names`, next to
//! `model.safetensors`; [`load_model_dir`]), the same two files held in memory
//! ([`load_from_bytes`]), or a bare safetensors file of a zoo model ([`load_weights`]).
//!
//! Finding a directory in the Hugging Face cache, or downloading it there, is [`crate::hub`]'s.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::checkpoint::{load_bytes_as, load_file_as, StoredDTypes};
use crate::registry::model_entry;
use crate::{
    check_input, ArchConfig, Error, FeatureFormat, ImageModel, Indices, PretrainedCfg, Result,
};

/// A loaded model with everything needed to feed it and read its output.
#[derive(Debug)]
pub struct LoadedModel {
    /// The zoo name of the architecture.
    pub name: String,
    /// The architecture after `model_args`.
    pub config: ArchConfig,
    /// Preprocessing and input size.
    pub pretrained_cfg: PretrainedCfg,
    /// Class names from `config.json`, if it has them.
    pub label_names: Option<Vec<String>>,
    /// The model.
    pub model: Box<dyn ImageModel>,
    /// The dtype the model computes in (its weights' dtype): f32, bf16 or f16.
    pub dtype: DType,
    /// How many of the checkpoint's tensors were stored in each dtype (empty for a model not
    /// read from a checkpoint); those stored in another dtype than [`LoadedModel::dtype`] were
    /// converted once at load.
    pub stored_dtypes: StoredDTypes,
}

impl LoadedModel {
    /// Logits `(B, num_classes)` in f32 for an input batch `(B, in_chans, H, W)` of any float
    /// dtype, after checking its shape; the input is converted to the model's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_input(self.model.as_ref(), x)?;
        Ok(self.model.forward(&self.input(x)?)?.to_dtype(DType::F32)?)
    }

    /// Every stage's feature map (f32) for an input batch, after checking its shape.
    pub fn forward_features(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        check_input(self.model.as_ref(), x)?;
        let maps = self.model.forward_features(&self.input(x)?)?;
        Ok(maps
            .iter()
            .map(|m| m.to_dtype(DType::F32))
            .collect::<candle_core::Result<_>>()?)
    }

    /// `x` in the model's dtype.
    fn input(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.to_dtype(self.dtype)?)
    }

    /// The feature maps (f32) `indices` chooses, in the layout `format`, after checking the input's
    /// shape (see [`ImageModel::forward_intermediates`]; the maps are described by
    /// [`ImageModel::feature_info`]).
    pub fn forward_intermediates(
        &self,
        x: &Tensor,
        indices: &Indices,
        norm: bool,
        format: FeatureFormat,
    ) -> Result<Vec<Tensor>> {
        check_input(self.model.as_ref(), x)?;
        let maps = self
            .model
            .forward_intermediates(&self.input(x)?, indices, norm, format)?;
        Ok(maps
            .iter()
            .map(|m| m.to_dtype(DType::F32))
            .collect::<candle_core::Result<_>>()?)
    }

    /// Human-readable name of class `index`: `label_names` from the config, else the
    /// ImageNet-1k name for 1000-class models.
    pub fn class_name(&self, index: usize) -> Option<String> {
        if let Some(names) = &self.label_names {
            return names.get(index).cloned();
        }
        if self.model.num_classes() == 1000 {
            return crate::imagenet::class_names()
                .get(index)
                .map(|s| s.to_string());
        }
        None
    }
}

#[derive(Debug, Deserialize)]
struct HubConfig {
    architecture: String,
    num_classes: Option<usize>,
    #[serde(default)]
    model_args: Map<String, Value>,
    pretrained_cfg: Option<PretrainedCfg>,
    label_names: Option<Vec<String>>,
}

/// Parses `config.json` text and resolves the architecture it describes.
fn resolve_config(
    text: &str,
    path: &Path,
) -> Result<(HubConfig, &'static crate::ModelEntry, ArchConfig)> {
    let context = path.display().to_string();
    let hub: HubConfig = serde_json::from_str(text).map_err(|e| Error::config(&context, e))?;
    let entry = model_entry(&hub.architecture)?;
    let config = resolve_arch(
        entry,
        hub.pretrained_cfg.as_ref(),
        hub.num_classes,
        &hub.model_args,
    )
    .map_err(|e| Error::config(format!("{context} ({})", entry.name), e))?;
    Ok((hub, entry, config))
}

/// The architecture a `config.json` describes: `entry`'s, with the input channels and size of
/// `pretrained_cfg`, then `num_classes`, then `model_args` applied (in that order, so
/// `model_args` win).
pub fn resolve_arch(
    entry: &crate::ModelEntry,
    pretrained_cfg: Option<&PretrainedCfg>,
    num_classes: Option<usize>,
    model_args: &Map<String, Value>,
) -> Result<ArchConfig> {
    let mut config = entry.config();
    if let Some(cfg) = pretrained_cfg {
        if let Some(&c) = cfg.input_size.first() {
            config.set_in_chans(c);
        }
        let (h, w) = cfg.image_size();
        config.set_image_size(h, w);
    }
    if let Some(n) = num_classes {
        config.set_num_classes(n);
    }
    config.apply_model_args(model_args)?;
    Ok(config)
}

/// The preprocessing config: the checkpoint's, with the input size of fixed-size models set to
/// the size the model takes.
fn preprocessing(
    hub_cfg: Option<PretrainedCfg>,
    entry: &crate::ModelEntry,
    config: &ArchConfig,
) -> PretrainedCfg {
    let mut cfg = hub_cfg.unwrap_or_else(|| entry.pretrained_cfg());
    if let Some(size) = config.fixed_image_size() {
        cfg.set_image_size(size);
    }
    cfg
}

fn loaded(
    hub: HubConfig,
    entry: &crate::ModelEntry,
    config: ArchConfig,
    (model, stored_dtypes): (Box<dyn ImageModel>, StoredDTypes),
    dtype: DType,
) -> LoadedModel {
    LoadedModel {
        name: entry.name.to_string(),
        pretrained_cfg: preprocessing(hub.pretrained_cfg, entry, &config),
        config,
        label_names: hub.label_names,
        model,
        dtype,
        stored_dtypes,
    }
}

/// [`load_model_dir`] on the contents of `config.json` and `model.safetensors` held in memory.
pub fn load_from_bytes(config_json: &str, weights: &[u8], device: &Device) -> Result<LoadedModel> {
    load_from_bytes_as(config_json, weights, device, DType::F32)
}

/// [`load_from_bytes`] computing in `dtype` (f32, bf16 or f16), as [`load_model_dir_as`].
pub fn load_from_bytes_as(
    config_json: &str,
    weights: &[u8],
    device: &Device,
    dtype: DType,
) -> Result<LoadedModel> {
    let (hub, entry, config) = resolve_config(config_json, Path::new("config.json"))?;
    let model = load_bytes_as(
        weights,
        Path::new("model.safetensors"),
        &config,
        entry.name,
        device,
        dtype,
    )?;
    Ok(loaded(hub, entry, config, model, dtype))
}

/// Loads the model in `dir` (`config.json` + `model.safetensors`, or `pytorch_model.bin`) onto
/// `device`.
///
/// The architecture comes from `config.json`'s `architecture` (a zoo name, with or without a
/// pretrained tag); `model_args` override the named config with timm's kwarg names; the
/// classifier width is `model_args.num_classes`, else the top-level `num_classes`, and the
/// input channels follow `pretrained_cfg.input_size` unless `model_args.in_chans` is given.
pub fn load_model_dir(dir: &Path, device: &Device) -> Result<LoadedModel> {
    load_model_dir_as(dir, device, DType::F32)
}

/// [`load_model_dir`] computing in `dtype`: f32, bf16 or f16 (anything else is refused before
/// a file is read). Weights stored in another dtype are converted once at load (the
/// [`LoadedModel::stored_dtypes`] say which); norms, softmax and reductions accumulate in f32,
/// and [`LoadedModel::forward`] returns f32 logits.
pub fn load_model_dir_as(dir: &Path, device: &Device, dtype: DType) -> Result<LoadedModel> {
    crate::checkpoint::check_dtype(dtype, device)?;
    let config_path = dir.join("config.json");
    if !dir.is_dir() {
        return Err(Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such model directory"),
        });
    }
    let text = std::fs::read_to_string(&config_path).map_err(|source| Error::Io {
        path: config_path.clone(),
        source,
    })?;
    let (hub, entry, config) = resolve_config(&text, &config_path)?;
    let weights = checkpoint_in(dir)?;
    let model = load_file_as(&weights, &config, entry.name, device, dtype)?;
    Ok(loaded(hub, entry, config, model, dtype))
}

/// The checkpoint of a model directory: `model.safetensors`, else `pytorch_model.bin` (the
/// `torch.save` file older hub repositories hold).
fn checkpoint_in(dir: &Path) -> Result<std::path::PathBuf> {
    let safetensors = dir.join("model.safetensors");
    if safetensors.is_file() {
        return Ok(safetensors);
    }
    let torch = dir.join("pytorch_model.bin");
    if torch.is_file() {
        return Ok(torch);
    }
    Err(Error::Io {
        path: safetensors,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "neither model.safetensors nor pytorch_model.bin is in the directory",
        ),
    })
}

/// Loads zoo model `name` at its default config from a bare checkpoint file (safetensors, or a
/// PyTorch `torch.save` file).
pub fn load_weights(name: &str, weights: &Path, device: &Device) -> Result<LoadedModel> {
    load_weights_as(name, weights, device, DType::F32)
}

/// [`load_weights`] computing in `dtype` (f32, bf16 or f16), as [`load_model_dir_as`].
pub fn load_weights_as(
    name: &str,
    weights: &Path,
    device: &Device,
    dtype: DType,
) -> Result<LoadedModel> {
    let entry = model_entry(name)?;
    let config = entry.config();
    let (model, stored_dtypes) = load_file_as(weights, &config, entry.name, device, dtype)?;
    Ok(LoadedModel {
        name: entry.name.to_string(),
        pretrained_cfg: preprocessing(None, entry, &config),
        config,
        label_names: None,
        model,
        dtype,
        stored_dtypes,
    })
}

/// What [`convert_to_dir`] wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The zoo name of the architecture.
    pub name: String,
    /// Tensors written to `model.safetensors`.
    pub tensors: usize,
    /// Tensors of the checkpoint left out (batch-norm step counters).
    pub dropped: usize,
    /// Bytes of `model.safetensors`.
    pub bytes: usize,
}

/// Converts the PyTorch checkpoint at `checkpoint` (`torch.save`'s format; state dict found as
/// [`crate::checkpoint::load_pth`] finds it, or under `key`) into a model directory at `out`
/// that [`load_model_dir`] loads: `model.safetensors` with exactly the tensors the model
/// described by `config_json` needs, in their stored dtypes, and a `config.json` naming the
/// architecture, its `model_args`, classes and preprocessing. The checkpoint is checked as
/// loading checks it (every missing, unexpected, mis-shaped, non-float or non-finite tensor
/// named) before anything is written.
pub fn convert_to_dir(
    config_json: &str,
    checkpoint: &Path,
    key: Option<&str>,
    out: &Path,
) -> Result<Converted> {
    let (hub, entry, config) = resolve_config(config_json, Path::new("config.json"))?;
    let bytes = std::fs::read(checkpoint).map_err(|source| Error::Io {
        path: checkpoint.to_path_buf(),
        source,
    })?;
    if !crate::checkpoint::is_pth(&bytes) {
        return Err(Error::Checkpoint {
            path: checkpoint.to_path_buf(),
            msg: "not a torch.save file (a safetensors checkpoint loads as it is)".into(),
        });
    }
    let total = crate::pth::read_state_dict(&bytes, checkpoint, key)?.len();
    let st = crate::checkpoint::convert_pth(&bytes, checkpoint, &config, entry.name, key)?;
    let tensors = crate::checkpoint::expected_tensors(&config)?.len();
    let cfg_json = serde_json::json!({
        "architecture": hub.architecture,
        "num_classes": config.num_classes(),
        "model_args": hub.model_args,
        "pretrained_cfg": preprocessing(hub.pretrained_cfg, entry, &config),
        "label_names": hub.label_names,
    });
    let write = |name: &str, data: &[u8]| {
        let path = out.join(name);
        std::fs::write(&path, data).map_err(|source| Error::Io { path, source })
    };
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let text = serde_json::to_string_pretty(&cfg_json).map_err(|e| Error::config("config", e))?;
    write("model.safetensors", &st)?;
    write("config.json", text.as_bytes())?;
    Ok(Converted {
        name: entry.name.to_string(),
        tensors,
        dropped: total.saturating_sub(tensors),
        bytes: st.len(),
    })
}
