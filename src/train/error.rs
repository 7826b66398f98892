//! The typed error of [`crate::train`]: what went wrong reading a dataset, a checkpoint or a
//! trainer state, or running a step.

use std::fmt::Display;

/// What went wrong while training, evaluating or saving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A bad setting, dataset, checkpoint or state; the message says which and why.
    #[error("{0}")]
    Invalid(String),
    /// A lower-level failure, with what was being done when it happened.
    #[error("{context}: {source}")]
    Context {
        /// What was being done (`cannot read data/train`).
        context: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Building or loading the model failed.
    #[error(transparent)]
    Model(#[from] tokenmix_models::Error),
    /// Reading or writing a file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A JSON file could not be read or written.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// The result of the training API.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Returns early with a [`TrainError::Invalid`] formatted like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::train::error::TrainError::Invalid(format!($($arg)*)))
    };
}
pub(crate) use bail;

/// Adds what was being done to an error or a missing value.
pub(crate) trait Context<T> {
    /// The error, or `None`, as a [`TrainError::Context`] / [`TrainError::Invalid`] saying
    /// `context()`.
    fn with_context<C: Display, F: FnOnce() -> C>(self, context: F) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn with_context<C: Display, F: FnOnce() -> C>(self, context: F) -> Result<T> {
        self.map_err(|e| TrainError::Context {
            context: context().to_string(),
            source: Box::new(e),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn with_context<C: Display, F: FnOnce() -> C>(self, context: F) -> Result<T> {
        self.ok_or_else(|| TrainError::Invalid(context().to_string()))
    }
}
