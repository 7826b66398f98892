//! Multi-scale features for a downstream head (detection, segmentation): a zoo model's
//! `feature_info` and the maps `forward_intermediates` returns (channel-last). Loads a model
//! directory when one is given, else builds the named model with random weights.
//!
//! `cargo run --release --example features -- [MODEL_DIR | MODEL_NAME]`

use candle_core::{Device, Tensor};
use tokenmix::models::checkpoint::random_model;
use tokenmix::models::{load_model_dir, model_entry, FeatureFormat, ImageModel, Indices};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "caformer_s18".to_string());
    let device = Device::Cpu;
    let model: Box<dyn ImageModel> = if std::path::Path::new(&arg).is_dir() {
        load_model_dir(arg.as_ref(), &device)?.model
    } else {
        random_model(&model_entry(&arg)?.config(), &device)?
    };
    let x = Tensor::randn(0f32, 1.0, (2, model.in_chans(), 224, 224), &device)?;
    let maps = model.forward_intermediates(&x, &Indices::All, false, FeatureFormat::Nhwc)?;
    for (info, map) in model.feature_info().iter().zip(&maps) {
        println!(
            "{}: {} channels, stride {}: {:?} (B, H, W, C)",
            info.module,
            info.num_chs,
            info.reduction,
            map.dims()
        );
    }
    Ok(())
}
