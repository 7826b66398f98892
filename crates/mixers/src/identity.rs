//! The identity mixer of IdentityFormer: no token mixing at all.

use candle_core::{Result, Tensor};

use crate::{MixerLayout, TokenMixer};

/// `mixer(x) = x`, in any layout. Has no parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl TokenMixer for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Any
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
}
