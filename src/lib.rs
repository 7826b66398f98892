//! tokenmix: a model zoo of vision token mixers on candle.
//!
//! This facade re-exports the three crates of the workspace:
//! * [`kernels`] (`tokenmix-kernels`): fused ops for the hot mixing paths;
//! * [`mixers`] (`tokenmix-mixers`): the [`mixers::TokenMixer`] trait and the mixer families;
//! * [`models`] (`tokenmix-models`): backbones, the named zoo, checkpoint loading and
//!   preprocessing.
//!
//! It adds [`infer`] (batch inference over many files: directories and globs, sharding,
//! parallel decoding ahead of the model, validation) and, with feature `train`, `train`
//! (training on image folders).
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

pub mod infer;

#[cfg(feature = "train")]
pub mod train;

/// Tunes the process for CPU inference and training; call it first thing in `main`, before any
/// tensor work and before other threads exist (it changes the environment, which is only sound
/// while the program is single-threaded). Measured effects on 2 cores (docs/BENCHMARKS.md):
///
/// * candle's element-wise worker threads park as soon as they run out of work instead of
///   spinning 25,000 times first (`CANDLE_BARRIER_POOL_SPIN_LIMIT=0`, unless already set): the
///   spinning worker took time from the threads running the next op (5-30% lower batch-1
///   latency);
/// * on glibc, freed activation buffers stay in the heap for the next op instead of going back
///   to the kernel (`mallopt` mmap threshold 256 MiB, trim threshold 512 MiB): every fresh
///   buffer otherwise costs a page fault per 4 KiB (8-18% more batch-8 throughput; far fewer
///   page faults). Environment settings `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`
///   still win;
/// * the thread count is fixed once (`RAYON_NUM_THREADS`, unless already set, to candle's
///   default: the physical cores): without it candle re-counts the cores by reading and parsing
///   `/proc/cpuinfo` before every matrix product (800 reads for three MambaOut inferences;
///   mambaout_femto batch-1 latency 33 -> 25 ms). On machines with SMT this also sizes
///   rayon's pool, which runs tokenmix's kernels, to the physical cores.
pub fn configure_cpu() {
    const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN).is_none() {
        std::env::set_var(SPIN, "0");
    }
    const THREADS: &str = "RAYON_NUM_THREADS";
    if std::env::var_os(THREADS).is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var(THREADS, threads.to_string());
    }
    keep_freed_buffers();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_buffers() {
    const MIB: libc::c_int = 1 << 20;
    let set = |param, var: &str, value| {
        if std::env::var_os(var).is_none() {
            // SAFETY: mallopt only changes allocator tunables; any value is valid.
            unsafe { libc::mallopt(param, value) };
        }
    };
    set(libc::M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", 256 * MIB);
    set(libc::M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", 512 * MIB);
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_buffers() {}

/// The names most programs need.
pub mod prelude {
    pub use tokenmix_mixers::{MixerConfig, MixerLayout, TokenMixer};
    pub use tokenmix_models::{
        list_models, load_model_dir, load_model_dir_as, load_weights, load_weights_as, model_entry,
        ArchConfig, ImageModel, LoadedModel, PretrainedCfg,
    };
}
