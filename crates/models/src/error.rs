//! The error type of tokenmix-models.

use std::path::PathBuf;

/// Everything that can go wrong building, loading or feeding a model. Each variant names the
/// file, model, tensor or value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No zoo entry has this name.
    #[error("unknown model '{name}'{hint}")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// A suggestion such as "; did you mean poolformer_s12?".
        hint: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A configuration (config.json, model_args, a config struct) is invalid.
    #[error("{context}: {msg}")]
    Config {
        /// Where the configuration came from.
        context: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A file is not a readable safetensors file.
    #[error("{}: not a valid safetensors file: {msg}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        msg: String,
    },
    /// A file is not a readable PyTorch (`torch.save`) checkpoint.
    #[error("{}: not a readable PyTorch checkpoint: {msg}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A checkpoint's tensors do not match what the model needs.
    #[error("{}: checkpoint does not fit {model}: {details}", path.display())]
    WeightMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The model being loaded.
        model: String,
        /// The missing, unexpected, mis-shaped or wrongly typed tensors.
        details: String,
    },
    /// A tensor fed to a model or written by a user has the wrong shape or dtype.
    #[error("bad input: {0}")]
    Input(String),
    /// An image could not be decoded.
    #[error("{}: cannot read image: {msg}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        msg: String,
    },
    /// A hub model is not in the local Hugging Face cache and could not be downloaded (or
    /// downloading is off).
    #[error("{repo}{} is not in the Hugging Face cache at {} and {msg}", revision_note(revision), cache.display())]
    Hub {
        /// The hub model id, `org/name`.
        repo: String,
        /// The branch, tag or commit asked for.
        revision: String,
        /// The cache directory searched and downloaded into.
        cache: PathBuf,
        /// Why it was not downloaded, or what the download said ("downloading it failed: ...").
        msg: String,
    },
    /// An error from candle while computing.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// A [`Error::Config`] from anything printable.
    pub fn config(context: impl Into<String>, msg: impl std::fmt::Display) -> Self {
        Self::Config {
            context: context.into(),
            msg: msg.to_string(),
        }
    }
}

/// " (revision R)" unless `revision` is the default branch.
fn revision_note(revision: &str) -> String {
    if revision == "main" {
        String::new()
    } else {
        format!(" (revision {revision})")
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
