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

/// Makes candle's element-wise worker threads park as soon as they run out of work instead of
/// spinning 25,000 times first (`CANDLE_BARRIER_POOL_SPIN_LIMIT=0`), unless the variable is
/// already set. On few cores the spinning worker takes time from the threads that run the next
/// op (tokenmix's kernels and gemm use rayon's pool); parking measured 5-30% lower batch-1
/// latency on 2 cores (docs/BENCHMARKS.md). Call it at the start of `main`, before any tensor
/// work and before other threads exist: candle reads the variable once, and changing the
/// environment is only sound while the program is single-threaded.
pub fn park_idle_threads() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, "0");
    }
}

/// The names most programs need.
pub mod prelude {
    pub use tokenmix_mixers::{MixerConfig, MixerLayout, TokenMixer};
    pub use tokenmix_models::{
        list_models, load_model_dir, load_weights, model_entry, ArchConfig, ImageModel,
        LoadedModel, PretrainedCfg,
    };
}
