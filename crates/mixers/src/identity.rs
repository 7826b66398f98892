//! The identity mixer of IdentityFormer: no token mixing at all.

use candle_core::{Result, Tensor};

use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::{MixerLayout, MixerSpec, TokenMixer};

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

/// Config of the [`Identity`] mixer (no hyper-parameters); JSON `{"type": "identity"}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {}

impl MixerSpec for IdentityConfig {
    fn kind(&self) -> &'static str {
        "identity"
    }

    fn build(&self, _dim: usize, _vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(Identity))
    }

    fn macs(&self, _dim: usize, _h: usize, _w: usize) -> u64 {
        0
    }
}
