//! GPU benchmark of the fused ops (built only with the `cuda` feature): for each op at a large
//! model-like size, the fused kernel's time and achieved bandwidth (bytes read + written, once
//! each), as a share of a plain device-to-device copy of the same input on the same GPU, and
//! the composed candle version's time; f32 and bf16. Prints one markdown table.
//!
//! `cargo bench --features cuda -p tokenmix-kernels --bench gpu_bandwidth` (or run the binary);
//! `TOKENMIX_BENCH_ITERS` sets the timed iterations (default 20).

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use tokenmix_kernels::{composed, NormAxes};

type OpFn = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

/// One benchmark row: inputs and the fused and composed versions of the op.
struct Case {
    name: &'static str,
    inputs: Vec<Tensor>,
    fused: OpFn,
    composed: OpFn,
}

fn iters() -> usize {
    std::env::var("TOKENMIX_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Seconds per call of `f`, after two warm-up calls.
fn time(dev: &Device, n: usize, f: impl Fn() -> Result<Tensor>) -> Result<f64> {
    f()?;
    f()?;
    dev.synchronize()?;
    let start = Instant::now();
    for _ in 0..n {
        f()?;
    }
    dev.synchronize()?;
    Ok(start.elapsed().as_secs_f64() / n as f64)
}

fn bytes(ts: &[Tensor]) -> usize {
    ts.iter()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum()
}

fn randn(dev: &Device, dtype: DType, shape: &[usize]) -> Result<Tensor> {
    Tensor::randn(0f32, 1.0, shape, dev)?.to_dtype(dtype)
}

fn cases(dev: &Device, dt: DType) -> Result<Vec<Case>> {
    let r = |s: &[usize]| randn(dev, dt, s);
    let scalar = |v: f32| Tensor::new(&[v], dev)?.to_dtype(dt);
    let shifts: Vec<i32> = (0..96).map(|i| i % 5 - 2).collect();
    let shifts2 = shifts.clone();
    let scan_delta = (r(&[8, 384, 196])?.exp()? * 0.1)?;
    Ok(vec![
        Case {
            name: "depthwise 7x7 (128,128,56,56)",
            inputs: vec![r(&[128, 128, 56, 56])?, r(&[128, 1, 7, 7])?],
            fused: Box::new(|t| tokenmix_kernels::depthwise_conv2d(&t[0], &t[1], None, 1, 3)),
            composed: Box::new(|t| composed::depthwise_conv2d(&t[0], &t[1], 1, 3)),
        },
        Case {
            name: "pool mixer 3x3 (128,64,56,56)",
            inputs: vec![r(&[128, 64, 56, 56])?],
            fused: Box::new(|t| tokenmix_kernels::pool_mixer(&t[0], 3)),
            composed: Box::new(|t| composed::pool_mixer(&t[0], 3)),
        },
        Case {
            name: "layernorm2d (128,64,56,56)",
            inputs: vec![r(&[128, 64, 56, 56])?, r(&[64])?, r(&[64])?],
            fused: Box::new(|t| norm(t, NormAxes::Channels, 1, true)),
            composed: Box::new(|t| norm(t, NormAxes::Channels, 1, false)),
        },
        Case {
            name: "layernorm tokens (128,196,320)",
            inputs: vec![r(&[128, 196, 320])?, r(&[320])?, r(&[320])?],
            fused: Box::new(|t| norm(t, NormAxes::Channels, 2, true)),
            composed: Box::new(|t| norm(t, NormAxes::Channels, 2, false)),
        },
        Case {
            name: "groupnorm1 (128,64,56,56)",
            inputs: vec![r(&[128, 64, 56, 56])?, r(&[64])?, r(&[64])?],
            fused: Box::new(|t| norm(t, NormAxes::AllButBatch, 1, true)),
            composed: Box::new(|t| norm(t, NormAxes::AllButBatch, 1, false)),
        },
        Case {
            name: "gelu (128,256,56,56)",
            inputs: vec![r(&[128, 256, 56, 56])?],
            fused: Box::new(|t| tokenmix_kernels::gelu(&t[0])),
            composed: Box::new(|t| t[0].gelu_erf()),
        },
        Case {
            name: "star_relu (128,256,56,56)",
            inputs: vec![r(&[128, 256, 56, 56])?, scalar(0.8)?, scalar(-0.1)?],
            fused: Box::new(|t| tokenmix_kernels::star_relu(&t[0], &t[1], &t[2])),
            composed: Box::new(|t| composed::star_relu(&t[0], &t[1], &t[2])),
        },
        Case {
            name: "selective scan (8,384,196) N=16",
            inputs: vec![
                r(&[8, 384, 196])?,
                scan_delta,
                r(&[384, 16])?.abs()?.neg()?,
                r(&[8, 16, 196])?,
                r(&[8, 16, 196])?,
            ],
            fused: Box::new(|t| {
                tokenmix_kernels::selective_scan(&t[0], &t[1], &t[2], &t[3], &t[4])
            }),
            composed: Box::new(|t| composed::selective_scan(&t[0], &t[1], &t[2], &t[3], &t[4])),
        },
        Case {
            name: "mix shift 5x5 (32,96,56,56)",
            inputs: vec![r(&[32, 96, 56, 56])?, r(&[2, 96, 5, 5])?, r(&[2, 96])?],
            fused: Box::new(move |t| tokenmix_kernels::mix_shift(&t[0], &t[1], &t[2], &shifts)),
            composed: Box::new(move |t| composed::mix_shift(&t[0], &t[1], &t[2], &shifts2)),
        },
        Case {
            name: "spectral filter (128,14,14,384)",
            inputs: vec![r(&[128, 14, 14, 384])?, r(&[14, 8, 384, 2])?],
            fused: Box::new(|t| tokenmix_kernels::spectral_filter(&t[0], &t[1])),
            composed: Box::new(|t| composed::spectral_filter(&t[0], &t[1])),
        },
    ])
}

fn norm(t: &[Tensor], axes: NormAxes, axis: usize, fused: bool) -> Result<Tensor> {
    match fused {
        true => tokenmix_kernels::channel_norm(&t[0], &t[1], Some(&t[2]), axes, 1e-5, axis),
        false => composed::channel_norm(&t[0], &t[1], Some(&t[2]), axes, 1e-5, axis),
    }
}

/// One table row: fused and composed times, the fused op's bandwidth and its share of the copy's.
fn row(dev: &Device, dt: DType, case: &Case, n: usize) -> Result<String> {
    let x = &case.inputs[0];
    let copy = time(dev, n, || x.copy())?;
    let copy_bw = 2.0 * bytes(std::slice::from_ref(x)) as f64 / copy;
    let out = (case.fused)(&case.inputs)?;
    let moved = (bytes(&case.inputs) + bytes(&[out])) as f64;
    let fused = time(dev, n, || (case.fused)(&case.inputs))?;
    let composed = time(dev, n.min(5), || (case.composed)(&case.inputs))?;
    Ok(format!(
        "| {} | {dt:?} | {:.3} | {:.3} | {:.1}x | {:.0} | {:.0} | {:.0}% |",
        case.name,
        fused * 1e3,
        composed * 1e3,
        composed / fused,
        moved / fused / 1e9,
        copy_bw / 1e9,
        100.0 * moved / fused / copy_bw,
    ))
}

fn main() -> Result<()> {
    let dev = Device::new_cuda(0)?;
    let n = iters();
    println!(
        "| op | dtype | fused ms | composed ms | speed-up | fused GB/s | copy GB/s | of copy |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for dt in [DType::F32, DType::BF16] {
        for case in cases(&dev, dt)? {
            match row(&dev, dt, &case, n) {
                Ok(line) => println!("{line}"),
                Err(e) => println!("| {} | {dt:?} | error: {e} | | | | | |", case.name),
            }
        }
    }
    Ok(())
}
