//! Every fused op's CUDA kernel against its CPU path (f32) on random inputs: odd sizes, batch 1
//! and > 1, non-contiguous inputs, f32 / f16 / bf16, forward and gradients.
//!
//! Needs a CUDA device; without one each test says so and passes, unless
//! `TOKENMIX_REQUIRE_GPU=1` (the GPU bundle sets it), which turns a missing device into a failure.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Result, Tensor, Var};
use tokenmix_kernels::NormAxes;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) if std::env::var("TOKENMIX_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("no CUDA device: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

/// Largest absolute difference relative to `1 + max |reference|`.
fn rel_diff(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let got = got
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    let diff = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0);
    let (d, s) = (
        diff.unwrap().to_scalar::<f32>().unwrap(),
        scale.to_scalar::<f32>().unwrap(),
    );
    d / (1.0 + s)
}

fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 2e-4,
        DType::F16 => 1e-2,
        _ => 4e-2,
    }
}

/// `f` on the CPU in f32 and on the GPU in `dtype`, forward and the gradients of
/// `sum(f(args) * probe)` with respect to every argument, compared within `tol(dtype)` times
/// `grad_factor` for the gradients. `args` are f32 CPU tensors, possibly non-contiguous.
fn check(name: &str, args: &[Tensor], grad_factor: f32, f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let Some(dev) = gpu() else { return };
    for dtype in DTYPES {
        // The reference sees the same rounded inputs and probe as the GPU, computed in f32.
        let (cpu_out, cpu_grads) = run(args, &Device::Cpu, DType::F32, dtype, &f);
        let (out, grads) = run(args, &dev, dtype, dtype, &f);
        let tol = tolerance(dtype);
        let d = rel_diff(&out, &cpu_out);
        assert!(d < tol, "{name} {dtype:?} forward: relative diff {d}");
        for (i, (g, want)) in grads.iter().zip(&cpu_grads).enumerate() {
            let d = rel_diff(g, want);
            assert!(
                d < tol * grad_factor,
                "{name} {dtype:?} grad {i}: relative diff {d}"
            );
        }
    }
}

/// Output and gradients of `f` on `dev` in `dtype`, with inputs and probe first rounded to
/// `round`; the probe gradient is fixed by a seedless deterministic pattern so both devices see
/// the same one.
fn run(
    args: &[Tensor],
    dev: &Device,
    dtype: DType,
    round: DType,
    f: &impl Fn(&[Tensor]) -> Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let cast = |t: &Tensor| {
        t.to_dtype(round)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
            .to_device(dev)
            .unwrap()
    };
    let vars: Vec<Var> = args
        .iter()
        .map(|a| Var::from_tensor(&cast(a)).unwrap())
        .collect();
    let inputs: Vec<Tensor> = args
        .iter()
        .zip(&vars)
        .map(|(a, v)| relayout(a, v.as_tensor()))
        .collect();
    let out = f(&inputs).unwrap();
    let n = out.elem_count();
    let probe = Tensor::arange(0u32, n as u32, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .affine(0.37, 0.0)
        .unwrap()
        .sin()
        .unwrap()
        .reshape(out.dims())
        .unwrap();
    let probe = cast(&probe);
    let grads = (&out * probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grads = vars
        .iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .expect("a gradient for every argument")
                .clone()
        })
        .collect();
    (out.to_dtype(DType::F32).unwrap(), grads)
}

/// `t` (a contiguous copy of `like`) viewed with `like`'s layout when `like` is transposed in
/// its last two axes, so the GPU also sees non-contiguous inputs.
fn relayout(like: &Tensor, t: &Tensor) -> Tensor {
    let n = like.rank();
    if like.is_contiguous() || n < 2 {
        return t.clone();
    }
    t.transpose(n - 2, n - 1)
        .unwrap()
        .contiguous()
        .unwrap()
        .transpose(n - 2, n - 1)
        .unwrap()
}

/// A `(.., H, W)` tensor stored transposed in its last two axes.
fn strided(shape: &[usize]) -> Tensor {
    let mut swapped = shape.to_vec();
    let n = swapped.len();
    swapped.swap(n - 2, n - 1);
    randn(&swapped).transpose(n - 2, n - 1).unwrap()
}

#[test]
fn depthwise_conv2d_cuda_matches_cpu() {
    for (b, c, h, w, k, s, p) in [
        (1, 3, 7, 9, 3, 1, 1),
        (2, 5, 13, 11, 7, 1, 3),
        (3, 4, 10, 15, 5, 2, 2),
        (2, 3, 5, 7, 4, 1, 2),
    ] {
        for x in [randn(&[b, c, h, w]), strided(&[b, c, h, w])] {
            let args = [x, randn(&[c, 1, k, k]), randn(&[c])];
            check("depthwise_conv2d", &args, 4.0, |t| {
                tokenmix_kernels::depthwise_conv2d(&t[0], &t[1], Some(&t[2]), s, p)
            });
        }
    }
}

#[test]
fn pool_mixer_cuda_matches_cpu() {
    for (b, c, h, w, k) in [
        (1, 3, 7, 9, 3),
        (2, 5, 13, 11, 5),
        (2, 2, 1, 6, 3),
        (1, 4, 4, 4, 7),
    ] {
        for x in [randn(&[b, c, h, w]), strided(&[b, c, h, w])] {
            check("pool_mixer", &[x], 2.0, |t| {
                tokenmix_kernels::pool_mixer(&t[0], k)
            });
        }
    }
}

#[test]
fn channel_norm_cuda_matches_cpu() {
    let cases: [(&[usize], NormAxes, usize); 4] = [
        (&[2, 7, 5, 9], NormAxes::Channels, 1),
        (&[3, 11, 37], NormAxes::Channels, 2),
        (&[2, 5, 9, 13], NormAxes::AllButBatch, 1),
        (&[1, 67, 3, 3], NormAxes::AllButBatch, 1),
    ];
    for (shape, axes, axis) in cases {
        let c = shape[axis];
        for x in [randn(shape), strided(shape)] {
            let args = [x, randn(&[c]), randn(&[c])];
            check("channel_norm", &args, 4.0, |t| {
                tokenmix_kernels::channel_norm(&t[0], &t[1], Some(&t[2]), axes, 1e-5, axis)
            });
        }
    }
}

#[test]
fn activations_cuda_match_cpu() {
    for shape in [&[3, 5, 7, 9][..], &[1, 1000003][..]] {
        for x in [randn(shape), strided(shape)] {
            check("gelu", std::slice::from_ref(&x), 2.0, |t| {
                tokenmix_kernels::gelu(&t[0])
            });
            let args = [
                x,
                Tensor::new(&[0.8f32], &Device::Cpu).unwrap(),
                randn(&[1]),
            ];
            check("star_relu", &args, 4.0, |t| {
                tokenmix_kernels::star_relu(&t[0], &t[1], &t[2])
            });
        }
    }
}

#[test]
fn selective_scan_cuda_matches_cpu() {
    for (b, d, l, n) in [(1, 3, 7, 16), (2, 5, 13, 5), (2, 4, 9, 33), (1, 3, 5, 70)] {
        let delta = randn(&[b, d, l]).exp().unwrap().affine(0.1, 0.0).unwrap();
        let a = randn(&[d, n]).abs().unwrap().neg().unwrap();
        let args = [
            randn(&[b, d, l]),
            delta,
            a,
            randn(&[b, n, l]),
            strided(&[b, n, l]),
        ];
        check("selective_scan", &args, 8.0, |t| {
            tokenmix_kernels::selective_scan(&t[0], &t[1], &t[2], &t[3], &t[4])
        });
    }
}

#[test]
fn mix_shift_cuda_matches_cpu() {
    for (b, c, h, w, k) in [(1, 5, 7, 9, 3), (2, 6, 11, 8, 5), (1, 3, 4, 13, 7)] {
        let shifts: Vec<i32> = (0..c as i32).map(|i| i % 5 - 2).collect();
        for x in [randn(&[b, c, h, w]), strided(&[b, c, h, w])] {
            let args = [x, randn(&[2, c, k, k]), randn(&[2, c])];
            check("mix_shift", &args, 4.0, |t| {
                tokenmix_kernels::mix_shift(&t[0], &t[1], &t[2], &shifts)
            });
        }
    }
}

#[test]
fn haar_dwt_cuda_matches_cpu() {
    for (b, h, w, c) in [(1, 6, 4, 3), (2, 7, 9, 5), (2, 56, 56, 48)] {
        for x in [randn(&[b, h, w, c]), strided(&[b, h, w, c])] {
            check("haar_dwt", &[x], 1.0, |t| tokenmix_kernels::haar_dwt(&t[0]));
        }
        let coeffs = randn(&[b, h.div_ceil(2), w.div_ceil(2), 4 * c]);
        check("haar_dwt_adjoint", &[coeffs], 1.0, |t| {
            tokenmix_kernels::haar_dwt_adjoint(&t[0], h, w)
        });
    }
}

#[test]
fn spectral_filter_cuda_matches_cpu() {
    for (b, h, w, c) in [(1, 7, 7, 3), (2, 14, 8, 5), (2, 5, 9, 4), (1, 56, 56, 2)] {
        for x in [randn(&[b, h, w, c]), strided(&[b, h, w, c])] {
            let args = [x, randn(&[h, w / 2 + 1, c, 2])];
            check("spectral_filter", &args, 4.0, |t| {
                tokenmix_kernels::spectral_filter(&t[0], &t[1])
            });
        }
    }
}

#[test]
fn fft_pair_cuda_matches_cpu() {
    let Some(dev) = gpu() else { return };
    for (shape, w) in [
        (&[2, 3, 7, 9][..], 9),
        (&[4, 14, 14][..], 14),
        (&[1, 6, 8][..], 8),
    ] {
        let x = randn(shape);
        let (re, im) = tokenmix_kernels::rfft2_ortho(&x).unwrap();
        let (gre, gim) = tokenmix_kernels::rfft2_ortho(&x.to_device(&dev).unwrap()).unwrap();
        assert!(
            rel_diff(&gre, &re) < 2e-4 && rel_diff(&gim, &im) < 2e-4,
            "rfft2 {shape:?}"
        );
        let back = tokenmix_kernels::irfft2_ortho(&gre, &gim, w).unwrap();
        assert!(rel_diff(&back, &x) < 2e-4, "irfft2 {shape:?}");
    }
}

#[test]
fn neighborhood_attention_cuda_matches_cpu() {
    // (batch, heads, h, w, d, window): odd sizes, a map narrower than the window, and a
    // TransNeXt-sized stage.
    for (b, heads, h, w, d, win) in [
        (2, 2, 5, 7, 3, 3),
        (1, 2, 1, 4, 5, 5),
        (2, 3, 6, 9, 8, 7),
        (1, 2, 56, 56, 32, 3),
    ] {
        let shape = [b, heads, h * w, d];
        let taps = win * win;
        for q in [randn(&shape), strided(&shape)] {
            // The logits through softmax (exp(-inf) = 0 outside the map), then the aggregate.
            let args = [q, randn(&shape), strided(&shape)];
            check("neighborhood attention", &args, 4.0, |t| {
                let logits = tokenmix_kernels::neighborhood_logits(&t[0], &t[1], h, w, win)?;
                let attn = tokenmix_kernels::composed::softmax_last_dim(&logits)?;
                tokenmix_kernels::neighborhood_aggregate(&attn, &t[2], h, w, win)
            });
            let args = [randn(&[b, heads, h * w, taps]), randn(&shape)];
            check("neighborhood_aggregate", &args, 4.0, |t| {
                tokenmix_kernels::neighborhood_aggregate(&t[0], &t[1], h, w, win)
            });
        }
    }
}

#[test]
fn ssd_scan_cuda_matches_cpu() {
    // (batch, length, heads, head size, groups, state): odd sizes, one step, a Hydra-sized head
    // (P = N = 64) and the largest state the kernel holds.
    for (b, l, h, p, g, n) in [
        (2, 7, 4, 3, 2, 5),
        (1, 1, 2, 5, 1, 3),
        (2, 33, 4, 64, 1, 64),
        (1, 130, 2, 40, 2, 128),
    ] {
        for reverse in [false, true] {
            // Log-decays mostly negative (dt * A), some positive.
            let ld = randn(&[b, l, h]).affine(0.3, -0.2).unwrap();
            let args = [
                randn(&[b, l, h, p]),
                ld,
                strided(&[b, l, g, n]),
                randn(&[b, l, g, n]),
            ];
            check(&format!("ssd_scan reverse={reverse}"), &args, 4.0, |t| {
                tokenmix_kernels::ssd_scan(&t[0], &t[1], &t[2], &t[3], reverse)
            });
        }
    }
}
