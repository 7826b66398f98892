//! One model shared by 8 threads gives the same logits as sequential runs.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use tokenmix::models::{load_model_dir, LoadedModel};

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn threads_share_one_model() {
    assert_send_sync::<LoadedModel>();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/caformer_s18");
    let model = Arc::new(load_model_dir(&dir, &Device::Cpu).unwrap());
    let inputs: Vec<Tensor> = (0..8)
        .map(|i| Tensor::randn(0f32, 1.0 + i as f32, (1 + i % 3, 3, 64, 96), &Device::Cpu).unwrap())
        .collect();
    let sequential: Vec<Vec<Vec<f32>>> = inputs
        .iter()
        .map(|x| model.forward(x).unwrap().to_vec2().unwrap())
        .collect();
    for _round in 0..3 {
        let handles: Vec<_> = inputs
            .iter()
            .cloned()
            .map(|x| {
                let model = Arc::clone(&model);
                std::thread::spawn(move || model.forward(&x).unwrap().to_vec2::<f32>().unwrap())
            })
            .collect();
        for (h, want) in handles.into_iter().zip(&sequential) {
            assert_eq!(&h.join().unwrap(), want);
        }
    }
}
