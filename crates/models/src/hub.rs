//! Loading model directories as the Hugging Face hub serves `timm/<name>` and as timm's
//! `save_for_hf` writes them: `config.json` (`architecture`, `num_classes`, `model_args`,
//! `pretrained_cfg`, optionally `label_names`) next to `model.safetensors` — given directly, or
//! found in the local Hugging Face cache by hub id ([`load_from_hub_cache`]), or, with the `hub`
//! feature, downloaded into that cache when it is not there yet (`load_from_hub`, `HubSource`).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::checkpoint::{load_safetensors, load_safetensors_bytes};
use crate::registry::model_entry;
use crate::{check_input, ArchConfig, Error, ImageModel, PretrainedCfg, Result};

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
}

impl LoadedModel {
    /// Logits `(B, num_classes)` for an input batch `(B, in_chans, H, W)`, after checking its
    /// shape.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_input(self.model.as_ref(), x)?;
        Ok(self.model.forward(x)?)
    }

    /// Every stage's feature map for an input batch, after checking its shape.
    pub fn forward_features(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        check_input(self.model.as_ref(), x)?;
        Ok(self.model.forward_features(x)?)
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
    model: Box<dyn ImageModel>,
) -> LoadedModel {
    LoadedModel {
        name: entry.name.to_string(),
        pretrained_cfg: preprocessing(hub.pretrained_cfg, entry, &config),
        config,
        label_names: hub.label_names,
        model,
    }
}

/// [`load_model_dir`] on the contents of `config.json` and `model.safetensors` held in memory.
pub fn load_from_bytes(config_json: &str, weights: &[u8], device: &Device) -> Result<LoadedModel> {
    let (hub, entry, config) = resolve_config(config_json, Path::new("config.json"))?;
    let model = load_safetensors_bytes(
        weights,
        Path::new("model.safetensors"),
        &config,
        entry.name,
        device,
    )?;
    Ok(loaded(hub, entry, config, model))
}

/// Loads the model in `dir` (`config.json` + `model.safetensors`) onto `device`.
///
/// The architecture comes from `config.json`'s `architecture` (a zoo name, with or without a
/// pretrained tag); `model_args` override the named config with timm's kwarg names; the
/// classifier width is `model_args.num_classes`, else the top-level `num_classes`, and the
/// input channels follow `pretrained_cfg.input_size` unless `model_args.in_chans` is given.
pub fn load_model_dir(dir: &Path, device: &Device) -> Result<LoadedModel> {
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
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        return Err(Error::Io {
            path: weights,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "model.safetensors not found (only safetensors checkpoints are supported)",
            ),
        });
    }
    let model = load_safetensors(&weights, &config, entry.name, device)?;
    Ok(loaded(hub, entry, config, model))
}

/// Loads zoo model `name` at its default config from a bare safetensors file.
pub fn load_weights(name: &str, weights: &Path, device: &Device) -> Result<LoadedModel> {
    let entry = model_entry(name)?;
    let config = entry.config();
    let model = load_safetensors(weights, &config, entry.name, device)?;
    Ok(LoadedModel {
        name: entry.name.to_string(),
        pretrained_cfg: preprocessing(None, entry, &config),
        config,
        label_names: None,
        model,
    })
}

/// The Hugging Face hub cache directory: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (where `huggingface_hub` and the `hf-hub` crate store downloads).
pub fn hub_cache_dir() -> Option<PathBuf> {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => hf_home().map(|home| home.join("hub")),
    }
}

/// `$HF_HOME`, else `~/.cache/huggingface`.
fn hf_home() -> Option<PathBuf> {
    match std::env::var_os("HF_HOME") {
        Some(home) => Some(PathBuf::from(home)),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")),
    }
}

/// [`hub_cache_dir`], or an error saying that none is set.
fn cache_dir() -> Result<PathBuf> {
    hub_cache_dir()
        .ok_or_else(|| Error::config("hub", "no HF_HUB_CACHE, HF_HOME or HOME to find the cache"))
}

/// The directory of hub model `repo` in the local Hugging Face cache ([`hub_cache_dir`],
/// [`resolve_in_hub_cache`]); nothing is downloaded.
pub fn snapshot_in_hub_cache(repo: &str) -> Result<PathBuf> {
    resolve_in_hub_cache(&cache_dir()?, repo)
}

/// Splits `ORG/NAME[@revision]` into the id and the revision (`main` when none is given), after
/// checking that neither can step outside the cache.
fn parse_repo(repo: &str) -> Result<(&str, &str)> {
    let (id, revision) = repo.split_once('@').unwrap_or((repo, "main"));
    let bad_part = |p: &str| p.is_empty() || p == "." || p == "..";
    if id.split('/').count() != 2 || id.split('/').any(bad_part) || id.contains('\\') {
        return Err(Error::config(
            "hub",
            format!("'{id}' is not a hub model id like timm/poolformer_s12.sail_in1k"),
        ));
    }
    if revision.split('/').any(bad_part) || revision.contains('\\') {
        return Err(Error::config(
            "hub",
            format!("'{revision}' is not a branch, tag or commit of {id}"),
        ));
    }
    Ok((id, revision))
}

/// Why a snapshot is not in the cache.
enum NotCached {
    /// No `refs/{revision}` file names a commit.
    NoRef(PathBuf),
    /// The snapshot directory lacks a file.
    Incomplete(PathBuf),
}

/// The cached snapshot of `id` at `revision` (a branch, tag or 40-hex commit) holding both files.
fn cached_snapshot(
    cache: &Path,
    id: &str,
    revision: &str,
) -> std::result::Result<PathBuf, NotCached> {
    let root = cache.join(format!("models--{}", id.replace('/', "--")));
    let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        revision.to_string()
    } else {
        let reference = root.join("refs").join(revision);
        match std::fs::read_to_string(&reference) {
            Ok(text) => text.trim().to_string(),
            Err(_) => return Err(NotCached::NoRef(reference)),
        }
    };
    let snapshot = root.join("snapshots").join(&commit);
    if commit.is_empty()
        || commit.contains(['/', '\\'])
        || !snapshot.join("config.json").is_file()
        || !snapshot.join("model.safetensors").is_file()
    {
        return Err(NotCached::Incomplete(snapshot));
    }
    Ok(snapshot)
}

/// The snapshot directory of hub model `repo` (`timm/poolformer_s12.sail_in1k`, optionally
/// `@revision` with a branch, tag or commit) in the cache at `cache`, laid out as the hub clients
/// write it: `models--{org}--{name}/refs/{revision}` holds the commit, and
/// `models--{org}--{name}/snapshots/{commit}/` the files. Nothing is downloaded.
pub fn resolve_in_hub_cache(cache: &Path, repo: &str) -> Result<PathBuf> {
    let (id, revision) = parse_repo(repo)?;
    cached_snapshot(cache, id, revision).map_err(|missing| match missing {
        NotCached::NoRef(path) => Error::Io {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{id} (revision {revision}) is not in the Hugging Face cache at {}; tokenmix \
                     does not download: fetch it with `huggingface-cli download {id}` or use --model-dir",
                    cache.display()
                ),
            ),
        },
        NotCached::Incomplete(path) => Error::Io {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "cached snapshot lacks config.json or model.safetensors",
            ),
        },
    })
}

/// Loads hub model `repo` from the local Hugging Face cache ([`hub_cache_dir`]) only; nothing is
/// downloaded. With the `hub` feature, `load_from_hub` also downloads what is missing.
pub fn load_from_hub_cache(repo: &str, device: &Device) -> Result<LoadedModel> {
    load_model_dir(&snapshot_in_hub_cache(repo)?, device)
}

/// Whether an environment variable is set to a true value as `huggingface_hub` reads it
/// (`1`, `true`, `yes` or `on`, in any case).
#[cfg(feature = "hub")]
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// The access token as `huggingface_hub` finds it: `$HF_TOKEN`, else the file `$HF_TOKEN_PATH`,
/// `$HF_HOME/token` or `~/.cache/huggingface/token`.
#[cfg(feature = "hub")]
fn hf_token() -> Option<String> {
    let nonempty = |t: String| {
        let t = t.trim().to_string();
        (!t.is_empty()).then_some(t)
    };
    if let Some(token) = std::env::var("HF_TOKEN").ok().and_then(nonempty) {
        return Some(token);
    }
    let path = match std::env::var_os("HF_TOKEN_PATH") {
        Some(p) => PathBuf::from(p),
        None => hf_home()?.join("token"),
    };
    std::fs::read_to_string(path).ok().and_then(nonempty)
}

/// Where and how hub models are found and downloaded: the cache directory, the hub endpoint,
/// whether the network may be used, and the access token.
///
/// [`HubSource::from_env`] reads these as `huggingface_hub` does; tests and embedders can fill
/// the fields directly.
#[cfg(feature = "hub")]
#[derive(Debug, Clone)]
pub struct HubSource {
    /// The cache directory, laid out as `huggingface_hub` and `hf-hub` lay it out
    /// (`models--{org}--{name}/{blobs,refs,snapshots}`).
    pub cache: PathBuf,
    /// The hub's base URL, `https://huggingface.co` unless `$HF_ENDPOINT` says otherwise.
    pub endpoint: String,
    /// Never use the network: a model not in the cache is an error (`$HF_HUB_OFFLINE`).
    pub offline: bool,
    /// The access token for gated or private models.
    pub token: Option<String>,
    /// Draw a progress bar on stderr while downloading (hidden when stderr is not a terminal).
    pub progress: bool,
}

#[cfg(feature = "hub")]
impl HubSource {
    /// The default hub: `https://huggingface.co`, cache in `cache`, online, no token, no
    /// progress bar.
    pub fn new(cache: impl Into<PathBuf>) -> Self {
        Self {
            cache: cache.into(),
            endpoint: "https://huggingface.co".to_string(),
            offline: false,
            token: None,
            progress: false,
        }
    }

    /// The hub as the environment sets it: cache [`hub_cache_dir`] (`$HF_HUB_CACHE`,
    /// `$HF_HOME/hub`, `~/.cache/huggingface/hub`), endpoint `$HF_ENDPOINT`, offline when
    /// `$HF_HUB_OFFLINE` is true, token `$HF_TOKEN` or the saved login, with a progress bar.
    pub fn from_env() -> Result<Self> {
        let mut source = Self::new(cache_dir()?);
        if let Some(endpoint) = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()) {
            source.endpoint = endpoint.trim_end_matches('/').to_string();
        }
        source.offline = env_flag("HF_HUB_OFFLINE");
        source.token = hf_token();
        source.progress = true;
        Ok(source)
    }

    /// The snapshot directory holding `config.json` and `model.safetensors` of hub model `repo`
    /// (`ORG/NAME`, optionally `@revision` with a branch, tag or commit): from the cache when it
    /// is there, else downloaded into the cache (unless [`offline`](Self::offline)), where the
    /// Python client and later runs find it.
    pub fn snapshot(&self, repo: &str) -> Result<PathBuf> {
        let (id, revision) = parse_repo(repo)?;
        if let Ok(snapshot) = cached_snapshot(&self.cache, id, revision) {
            return Ok(snapshot);
        }
        let hub_error = |msg: String| Error::Hub {
            repo: id.to_string(),
            revision: revision.to_string(),
            cache: self.cache.clone(),
            msg,
        };
        if self.offline {
            return Err(hub_error(format!(
                "HF_HUB_OFFLINE is set, so nothing is downloaded; fetch it while online \
                 (`huggingface-cli download {id}`) or use --model-dir"
            )));
        }
        self.download(id, revision)
            .map_err(|e| hub_error(format!("downloading it from {} failed: {e}", self.endpoint)))
    }

    /// Downloads both files of `id` at `revision` into the cache; the snapshot directory.
    fn download(&self, id: &str, revision: &str) -> std::result::Result<PathBuf, String> {
        use hf_hub::api::sync::ApiBuilder;
        use hf_hub::{Cache, Repo, RepoType};
        let api = ApiBuilder::from_cache(Cache::new(self.cache.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(self.progress)
            .with_user_agent("tokenmix", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| e.to_string())?;
        let repo = api.repo(Repo::with_revision(
            id.to_string(),
            RepoType::Model,
            revision.to_string(),
        ));
        let fetch = |file: &str| repo.get(file).map_err(|e| format!("{file}: {e}"));
        let config = fetch("config.json")?;
        let weights = fetch("model.safetensors")?;
        let snapshot = weights
            .parent()
            .ok_or("the downloaded model.safetensors has no directory")?;
        if config.parent() != Some(snapshot) {
            return Err(format!(
                "{id} changed on the hub while downloading (config.json and model.safetensors \
                 are from different commits); try again"
            ));
        }
        Ok(snapshot.to_path_buf())
    }

    /// Loads hub model `repo` (see [`snapshot`](Self::snapshot)) onto `device`.
    pub fn load(&self, repo: &str, device: &Device) -> Result<LoadedModel> {
        load_model_dir(&self.snapshot(repo)?, device)
    }
}

/// Loads hub model `repo` (`timm/poolformer_s12.sail_in1k`, optionally `@revision` with a
/// branch, tag or commit) onto `device`, through the Hugging Face cache: from the cache when it
/// is there (no network access), else downloaded into it with the `hf-hub` client. The cache,
/// endpoint, token and `HF_HUB_OFFLINE` come from the environment ([`HubSource::from_env`]).
///
/// A model that is neither cached nor downloadable is an [`Error::Hub`] saying which cache was
/// searched and why the download did not happen or failed.
#[cfg(feature = "hub")]
pub fn load_from_hub(repo: &str, device: &Device) -> Result<LoadedModel> {
    HubSource::from_env()?.load(repo, device)
}
