//! Fused ops against their candle compositions, at the sizes the zoo models run them
//! (224² input: stage 1 is 56x56, stage 4 is 7x7).
//!
//! `cargo bench --bench ops`

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use tokenmix::kernels::{composed, DepthwiseConv2d, Gelu, PoolMixer};

fn depthwise(c: &mut Criterion) {
    let mut group = c.benchmark_group("depthwise_conv2d_7x7");
    for (ch, hw) in [(128, 56), (1024, 7)] {
        let x = Tensor::randn(0f32, 1.0, (1, ch, hw, hw), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (ch, 1, 7, 7), &Device::Cpu).unwrap();
        group.bench_function(format!("fused/{ch}x{hw}x{hw}"), |b| {
            b.iter(|| {
                x.apply_op2(&w, DepthwiseConv2d::new(1, 3).unwrap())
                    .unwrap()
            })
        });
        group.bench_function(format!("composed/{ch}x{hw}x{hw}"), |b| {
            b.iter(|| composed::depthwise_conv2d(&x, &w, 1, 3).unwrap())
        });
        let x_last = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
        group.bench_function(format!("fused_channel_last/{hw}x{hw}x{ch}"), |b| {
            b.iter(|| tokenmix_kernels::depthwise_conv2d_nhwc(&x_last, &w, None, 1, 3).unwrap())
        });
    }
    group.finish();
}

fn pooling(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool_mixer_3x3");
    for (ch, hw) in [(64, 56), (512, 7)] {
        let x = Tensor::randn(0f32, 1.0, (8, ch, hw, hw), &Device::Cpu).unwrap();
        group.bench_function(format!("fused/8x{ch}x{hw}x{hw}"), |b| {
            b.iter(|| x.apply_op1(PoolMixer::new(3).unwrap()).unwrap())
        });
        group.bench_function(format!("composed/8x{ch}x{hw}x{hw}"), |b| {
            b.iter(|| composed::pool_mixer(&x, 3).unwrap())
        });
    }
    group.finish();
}

fn gelu(c: &mut Criterion) {
    let mut group = c.benchmark_group("gelu");
    let x = Tensor::randn(0f32, 1.0, (8, 256, 56, 56), &Device::Cpu).unwrap();
    group.bench_function("fused/8x256x56x56", |b| {
        b.iter(|| x.apply_op1(Gelu).unwrap())
    });
    group.bench_function("candle_gelu_erf/8x256x56x56", |b| {
        b.iter(|| x.gelu_erf().unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = depthwise, pooling, gelu
}
criterion_main!(benches);
