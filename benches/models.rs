//! Whole zoo models with random weights at 224², batch 1 and 8.
//!
//! `cargo bench --bench models` (set `TOKENMIX_FUSED=0` for candle's compositions).

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use tokenmix::models::checkpoint::random_model;
use tokenmix::models::model_entry;

fn models(c: &mut Criterion) {
    tokenmix::configure_cpu();
    let mut group = c.benchmark_group("models_224");
    group.sample_size(10);
    let names = [
        "poolformer_s12",
        "convformer_s18",
        "caformer_s18",
        "mambaout_femto",
        "mixer_s16_224",
    ];
    for name in names {
        let model = random_model(&model_entry(name).unwrap().config(), &Device::Cpu).unwrap();
        for batch in [1, 8] {
            let x = Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), &Device::Cpu).unwrap();
            group.bench_function(format!("{name}/b{batch}"), |b| {
                b.iter(|| model.forward(&x).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, models);
criterion_main!(benches);
