//! The Hugging Face hub cache: finding a model directory of hub id `org/name[@revision]` in the
//! local cache ([`resolve_in_hub_cache`], [`load_from_hub_cache`]) and, with the `hub` feature,
//! downloading it into that cache when it is not there yet (`load_from_hub`, `HubSource`). The
//! directory is then loaded by [`crate::loader`].

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::loader::{load_model_dir, LoadedModel};
use crate::{Error, Result};

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
