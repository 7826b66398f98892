//! Classify images with a model directory as the Hugging Face hub serves `timm/<name>`
//! (`config.json` + `model.safetensors`), using timm's eval preprocessing; prints the top 5.
//!
//! `cargo run --release --example classify -- MODEL_DIR IMAGE [IMAGE...]`

use candle_core::{Device, Tensor};
use tokenmix::models::load_model_dir;
use tokenmix::models::preprocess::load_image;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, images @ ..] = args.as_slice() else {
        return Err("usage: classify MODEL_DIR IMAGE [IMAGE...]".into());
    };
    if images.is_empty() {
        return Err("usage: classify MODEL_DIR IMAGE [IMAGE...]".into());
    }
    let device = Device::Cpu;
    let model = load_model_dir(dir.as_ref(), &device)?;
    let batch = images
        .iter()
        .map(|p| load_image(p.as_ref(), &model.pretrained_cfg, &device))
        .collect::<Result<Vec<_>, _>>()?;
    let logits = model.forward(&Tensor::stack(&batch, 0)?)?;
    let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
    for (path, p) in images.iter().zip(probs) {
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        println!("{path}:");
        for &i in order.iter().take(5) {
            let name = model.class_name(i).unwrap_or_else(|| format!("class {i}"));
            println!("  {:>6.2}%  {name}", 100.0 * p[i]);
        }
    }
    Ok(())
}
