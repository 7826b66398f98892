//! Trains a small ConvFormer on an image-folder dataset through the library API, evaluating
//! after every epoch and saving a checkpoint `tokenmix classify --model-dir` can load.
//!
//! ```sh
//! python3 scripts/prepare_digits.py data/digits
//! cargo run --release --example train -- data/digits runs/example 10
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use tokenmix::train::data::{Augment, ImageFolder};
use tokenmix::train::{ModelSpec, TrainConfig, Trainer};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(args.next().context("usage: train DATA [OUT] [EPOCHS]")?);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "runs/example".into()));
    let epochs: usize = args.next().map_or(Ok(10), |e| e.parse())?;

    let train = ImageFolder::open(&root.join("train"))?;
    let val = ImageFolder::open_with_classes(&root.join("val"), &train.classes)?;
    let model_args = serde_json::json!({"depths": [1, 1, 2, 1], "dims": [16, 32, 64, 128]});
    let spec = ModelSpec::new(
        "convformer_s18",
        model_args.as_object().cloned().unwrap_or_default(),
        train.classes.clone(),
        Some((32, 32)),
    )?;
    let cfg = TrainConfig {
        epochs,
        batch_size: 32,
        lr: 3e-3,
        augment: Augment {
            scale: (0.35, 1.0),
            hflip: 0.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut trainer = Trainer::from_scratch(spec, cfg, train.len(), &Device::Cpu)?;
    trainer.fit(&train, Some(&val), Some(&out), &mut |_| {}, &mut |e| {
        if let Some(v) = e.val {
            println!(
                "epoch {:>2}: train loss {:.3}, val top-1 {:.1}%, {:.0} img/s",
                e.epoch, e.train_loss, v.top1, e.images_per_sec
            );
        }
    })?;
    println!("saved to {}", out.display());
    Ok(())
}
