//! The error type of tokenmix-mixers. Mixers implement candle's `Module`-style API and return
//! `candle_core::Result`; their own failures are a [`MixerError`] wrapped in
//! `candle_core::Error`, which callers can downcast.

/// What went wrong building or running a mixer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MixerError {
    /// A hyper-parameter is out of range.
    #[error("{mixer} mixer: {msg}")]
    Config {
        /// The mixer family.
        mixer: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A mixer tied to a token count got a feature map of another size.
    #[error(
        "{mixer} mixer: built for {expected} tokens but the feature map is {height}x{width} = {} \
         tokens (RandFormer only runs at the input size its matrices were drawn for)",
        height * width
    )]
    TokenCount {
        /// The mixer family.
        mixer: &'static str,
        /// Tokens the mixer was built for.
        expected: usize,
        /// Height of the feature map it got.
        height: usize,
        /// Width of the feature map it got.
        width: usize,
    },
}

impl From<MixerError> for candle_core::Error {
    fn from(e: MixerError) -> Self {
        candle_core::Error::wrap(e)
    }
}
