//! Fused ops against their candle compositions, at the sizes the zoo models run them
//! (224² input: stage 1 is 56x56, stage 4 is 7x7).
//!
//! `cargo bench --bench ops`

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use tokenmix::kernels::{composed, DepthwiseConv2d, Gelu, PoolMixer, PoolMixerNhwc, Window};

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
        let x_last = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
        group.bench_function(format!("fused_channel_last/8x{hw}x{hw}x{ch}"), |b| {
            b.iter(|| x_last.apply_op1(PoolMixerNhwc::new(3).unwrap()).unwrap())
        });
    }
    group.finish();
}

/// The stem (7x7 / 4 from 3 channels) and the first downsampler (3x3 / 2, 64 -> 128).
fn conv(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d_channel_last");
    for (cin, hw, cout, k, s, p) in [(3, 224, 64, 7, 4, 2), (64, 56, 128, 3, 2, 1)] {
        let x = Tensor::randn(0f32, 1.0, (1, hw, hw, cin), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (cout, cin, k, k), &Device::Cpu).unwrap();
        let m = tokenmix::kernels::conv_weight_matrix(&w).unwrap();
        let window = Window {
            kernel: k,
            stride: s,
            padding: p,
        };
        let name = format!("{hw}x{hw}x{cin}_k{k}s{s}_to_{cout}");
        group.bench_function(format!("im2col_matmul/{name}"), |b| {
            b.iter(|| tokenmix::kernels::conv2d_nhwc(&x, &m, None, window).unwrap())
        });
        group.bench_function(format!("candle_conv2d/{name}"), |b| {
            b.iter(|| composed::conv2d_nhwc(&x, &m, None, window).unwrap())
        });
    }
    group.finish();
}

/// CAFormer's stage-3 attention at batch 1: 196 tokens, 10 heads of 32.
fn attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("self_attention");
    let qkv = Tensor::randn(0f32, 1.0, (1, 196, 3, 10, 32), &Device::Cpu).unwrap();
    let scale = 32f64.powf(-0.5);
    group.bench_function("fused/1x196x10x32", |b| {
        b.iter(|| tokenmix::kernels::self_attention(&qkv, scale).unwrap())
    });
    group.bench_function("composed/1x196x10x32", |b| {
        b.iter(|| composed::self_attention(&qkv, scale).unwrap())
    });
    group.finish();
}

/// A block's MLP (GELU, biases) and residual add: rows x C -> 4C -> C at PoolFormer-S12's
/// stage 1 (batch 1 and 8), stage 3 and stage 4 sizes, and MLP-Mixer-S/16's channel MLP at
/// batch 8. `fused` is one [`tokenmix::kernels::residual_mlp`]; `separate` the ops models ran
/// before it: product, fused bias + GELU, product, bias add, residual add.
fn residual_mlp(c: &mut Criterion) {
    let mut group = c.benchmark_group("residual_mlp");
    for (rows, ch) in [
        (3136, 64),
        (25088, 64),
        (196, 320),
        (1568, 320),
        (49, 512),
        (1568, 512),
    ] {
        let hidden = 4 * ch;
        let randn = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
        let w = tokenmix::kernels::MlpWeights {
            fc1: randn(&[ch, hidden]),
            fc1_bias: Some(randn(&[hidden])),
            act: tokenmix::kernels::MlpActivation::Gelu,
            fc2: randn(&[hidden, ch]),
            fc2_bias: Some(randn(&[ch])),
        };
        let (x, base) = (randn(&[rows, ch]), randn(&[rows, ch]));
        group.bench_function(format!("fused/{rows}x{ch}x{hidden}"), |b| {
            b.iter(|| tokenmix::kernels::residual_mlp(&x, &base, &w).unwrap())
        });
        group.bench_function(format!("separate/{rows}x{ch}x{hidden}"), |b| {
            b.iter(|| {
                let h = x.matmul(&w.fc1).unwrap();
                let h = tokenmix::kernels::bias_gelu(&h, w.fc1_bias.as_ref().unwrap(), 1).unwrap();
                let y = h.matmul(&w.fc2).unwrap();
                (&base + y.broadcast_add(w.fc2_bias.as_ref().unwrap()).unwrap()).unwrap()
            })
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
    targets = depthwise, pooling, conv, attention, residual_mlp, gelu
}
criterion_main!(benches);
