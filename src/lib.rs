//! tokenmix: a model zoo of vision token mixers on candle.
//!
//! This facade re-exports the three crates of the workspace:
//! * [`kernels`] (`tokenmix-kernels`): fused ops for the hot mixing paths;
//! * [`mixers`] (`tokenmix-mixers`): the [`mixers::TokenMixer`] trait and the mixer families;
//! * [`models`] (`tokenmix-models`): backbones, the named zoo, checkpoint loading and
//!   preprocessing.
//!
//! ```no_run
//! use candle_core::{Device, Tensor};
//! use tokenmix::models::{load_model_dir, preprocess::load_image};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::Cpu;
//! // A directory as the hub serves `timm/caformer_s18.sail_in1k`.
//! let model = load_model_dir("caformer_s18.sail_in1k".as_ref(), &device)?;
//! let image = load_image("cat.jpg".as_ref(), &model.pretrained_cfg, &device)?;
//! let logits = model.forward(&image.unsqueeze(0)?)?;
//! let probs = candle_nn::ops::softmax_last_dim(&logits)?.squeeze(0)?.to_vec1::<f32>()?;
//! let best = (0..probs.len()).max_by(|&a, &b| probs[a].total_cmp(&probs[b])).unwrap_or(0);
//! println!("{}: {:.1}%", model.class_name(best).unwrap_or_default(), 100.0 * probs[best]);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub use tokenmix_kernels as kernels;
pub use tokenmix_mixers as mixers;
pub use tokenmix_models as models;

pub mod plot;
pub mod train;

/// The names most programs need.
pub mod prelude {
    pub use tokenmix_mixers::{MixerConfig, MixerLayout, TokenMixer};
    pub use tokenmix_models::{
        list_models, load_model_dir, load_weights, model_entry, ArchConfig, ImageModel,
        LoadedModel, PretrainedCfg,
    };
}
