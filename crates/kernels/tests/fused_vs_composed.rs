//! Every fused op against its plain candle composition on random inputs: odd sizes, batch 1
//! and > 1, non-contiguous inputs.

use candle_core::{Device, Tensor};
use tokenmix_kernels::{
    composed, DepthwiseConv2d, MlpActivation, MlpPlan, MlpWeights, PoolMixer, PoolMixerNhwc, Window,
};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // A NaN anywhere counts as an infinite difference, so it fails every `d < tol` check.
    d.iter().fold(0f32, |m, v| {
        if v.is_nan() {
            f32::INFINITY
        } else {
            m.max(v.abs())
        }
    })
}

/// Thread counts the kernels whose work split depends on `rayon::current_num_threads()` are
/// tested under, whatever this machine's core count: a single thread, two, and more than the
/// kernels' block sizes give work for.
const POOL_SIZES: [usize; 3] = [1, 2, 16];

/// `f(threads)` run inside a rayon pool of each of [`POOL_SIZES`], with the results.
fn in_pools<T: Send>(f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    POOL_SIZES
        .iter()
        .map(|&threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| f(threads))
        })
        .collect()
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

/// A tensor with the given logical shape whose memory is laid out transposed (H and W swapped).
fn non_contiguous(shape: [usize; 4]) -> Tensor {
    let [b, c, h, w] = shape;
    let t = randn(&[b, c, w, h]).transpose(2, 3).unwrap();
    assert!(h == 1 || w == 1 || !t.is_contiguous());
    t
}

#[test]
fn depthwise_conv_matches_grouped_conv() {
    let cases = [
        // (batch, channels, h, w, k, stride, padding)
        (1, 3, 7, 9, 3, 1, 1),
        (2, 5, 13, 11, 7, 1, 3),
        (3, 4, 10, 15, 5, 2, 2),
        (2, 6, 9, 8, 3, 2, 1),
        (1, 2, 8, 7, 7, 1, 0),
        (2, 3, 5, 7, 4, 1, 2),
        (1, 8, 17, 19, 11, 1, 5),
        (2, 3, 1, 1, 3, 1, 1),
        (1, 2, 2, 9, 3, 1, 2),
        (1, 2, 6, 5, 3, 1, 0),
    ];
    for (b, c, h, w, k, s, p) in cases {
        let weight = randn(&[c, 1, k, k]);
        for x in [randn(&[b, c, h, w]), non_contiguous([b, c, h, w])] {
            let fused = x
                .contiguous()
                .unwrap()
                .apply_op2(&weight, DepthwiseConv2d::new(s, p).unwrap())
                .unwrap();
            let reference = composed::depthwise_conv2d(&x, &weight, s, p).unwrap();
            let d = max_abs_diff(&fused, &reference);
            assert!(d < 1e-4, "k={k} s={s} p={p} {h}x{w}: max diff {d}");
            let public = tokenmix_kernels::depthwise_conv2d(&x, &weight, None, s, p).unwrap();
            assert!(max_abs_diff(&public, &reference) < 1e-4);
            // The bias added while the output is written (DepthwiseConv2dBias).
            let bias = randn(&[c]);
            let with_bias =
                tokenmix_kernels::depthwise_conv2d(&x, &weight, Some(&bias), s, p).unwrap();
            let reference = reference
                .broadcast_add(&bias.reshape((c, 1, 1)).unwrap())
                .unwrap();
            let d = max_abs_diff(&with_bias, &reference);
            assert!(d < 1e-4, "bias k={k} s={s} p={p} {h}x{w}: max diff {d}");
        }
    }
}

/// The channel-last reference: permute to `(B, C, H, W)`, candle's grouped conv, add the bias,
/// permute back.
fn composed_nhwc(x: &Tensor, w: &Tensor, b: &Tensor, s: usize, p: usize) -> Tensor {
    composed::depthwise_conv2d_nhwc(x, w, Some(b), s, p, |x, w, b, s, p| {
        let c = w.dim(0)?;
        composed::depthwise_conv2d(x, w, s, p)?.broadcast_add(&b.unwrap().reshape((c, 1, 1))?)
    })
    .unwrap()
}

#[test]
fn channel_last_depthwise_conv_matches_grouped_conv() {
    let cases = [
        // (batch, channels, h, w, k, stride, padding): channel counts below, at and between
        // whole 16-channel blocks, widths below and between 4-column blocks.
        (1, 3, 7, 9, 3, 1, 1),
        (2, 16, 13, 11, 7, 1, 3),
        (3, 21, 10, 15, 5, 2, 2),
        (2, 33, 9, 8, 3, 2, 1),
        (1, 48, 8, 7, 7, 1, 0),
        (2, 7, 5, 7, 4, 1, 2),
        (1, 64, 7, 7, 7, 1, 3),
        (2, 19, 3, 2, 3, 1, 1),
        (1, 8, 17, 19, 11, 1, 5),
    ];
    for (b, c, h, w, k, s, p) in cases {
        let weight = randn(&[c, 1, k, k]);
        let bias = randn(&[c]);
        let transposed = randn(&[b, w, h, c]).transpose(1, 2).unwrap();
        assert!(h == 1 || w == 1 || !transposed.is_contiguous());
        for x in [randn(&[b, h, w, c]), transposed] {
            let reference = composed_nhwc(&x, &weight, &bias, s, p);
            let fused =
                tokenmix_kernels::depthwise_conv2d_nhwc(&x, &weight, Some(&bias), s, p).unwrap();
            let d = max_abs_diff(&fused, &reference);
            assert!(d < 1e-4, "c={c} k={k} s={s} p={p} {h}x{w}: max diff {d}");
            let no_bias = tokenmix_kernels::depthwise_conv2d_nhwc(&x, &weight, None, s, p)
                .unwrap()
                .broadcast_add(&bias)
                .unwrap();
            assert!(max_abs_diff(&no_bias, &reference) < 1e-4);
        }
    }
    let x = randn(&[1, 5, 5, 3]);
    let err = tokenmix_kernels::depthwise_conv2d_nhwc(&x, &randn(&[4, 1, 3, 3]), None, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("weight has shape [4, 1, 3, 3], expected [3, 1, k, k]"),
        "{err}"
    );
    let bad_bias = randn(&[4]);
    let err =
        tokenmix_kernels::depthwise_conv2d_nhwc(&x, &randn(&[3, 1, 3, 3]), Some(&bad_bias), 1, 1)
            .unwrap_err()
            .to_string();
    assert!(err.contains("bias has shape [4], expected [3]"), "{err}");
}

#[test]
fn depthwise_conv_adds_bias_and_rejects_bad_weights() {
    let x = randn(&[2, 3, 6, 7]);
    let weight = randn(&[3, 1, 3, 3]);
    let bias = randn(&[3]);
    let with_bias = tokenmix_kernels::depthwise_conv2d(&x, &weight, Some(&bias), 1, 1).unwrap();
    let reference = composed::depthwise_conv2d(&x, &weight, 1, 1)
        .unwrap()
        .broadcast_add(&bias.reshape((3, 1, 1)).unwrap())
        .unwrap();
    assert!(max_abs_diff(&with_bias, &reference) < 1e-4);
    let wrong = randn(&[4, 1, 3, 3]);
    let err = x
        .apply_op2(&wrong, DepthwiseConv2d::new(1, 1).unwrap())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("depthwise_conv2d: weight has shape [4, 1, 3, 3], expected [3, 1, k, k]"),
        "{err}"
    );
    assert!(DepthwiseConv2d::new(0, 1).is_err());
}

#[test]
fn pool_mixer_matches_padded_avg_pool() {
    for (b, c, h, w, k) in [
        (1, 1, 1, 1, 3),
        (2, 3, 5, 7, 3),
        (1, 4, 9, 6, 5),
        (3, 2, 14, 11, 3),
        (2, 2, 4, 3, 7),
    ] {
        for x in [randn(&[b, c, h, w]), non_contiguous([b, c, h, w])] {
            let fused = x
                .contiguous()
                .unwrap()
                .apply_op1(PoolMixer::new(k).unwrap())
                .unwrap();
            let reference = composed::pool_mixer(&x, k).unwrap();
            let d = max_abs_diff(&fused, &reference);
            assert!(d < 1e-5, "k={k} {h}x{w}: max diff {d}");
            let public = tokenmix_kernels::pool_mixer(&x, k).unwrap();
            assert!(max_abs_diff(&public, &reference) < 1e-5);
        }
    }
}

#[test]
fn channel_last_pool_mixer_matches_the_permuted_composition() {
    for (b, c, h, w, k) in [
        (1, 1, 1, 1, 3),
        (2, 3, 5, 7, 3),
        (1, 20, 9, 6, 5),
        (3, 2, 14, 11, 3),
        (2, 17, 4, 3, 7),
    ] {
        let permuted = non_contiguous([b, c, h, w]).permute((0, 2, 3, 1)).unwrap();
        for x in [randn(&[b, h, w, c]), permuted] {
            let reference = composed::pool_mixer_nhwc(&x, k, composed::pool_mixer).unwrap();
            let fused = x
                .contiguous()
                .unwrap()
                .apply_op1(PoolMixerNhwc::new(k).unwrap())
                .unwrap();
            let d = max_abs_diff(&fused, &reference);
            assert!(d < 1e-5, "k={k} {h}x{w}x{c}: max diff {d}");
            let public = tokenmix_kernels::pool_mixer_nhwc(&x, k).unwrap();
            assert!(max_abs_diff(&public, &reference) < 1e-5);
        }
    }
    assert!(PoolMixerNhwc::new(2).is_err());
    let not_a_map = randn(&[2, 3, 4]);
    assert!(tokenmix_kernels::pool_mixer_nhwc(&not_a_map, 3).is_err());
}

#[test]
fn pool_mixer_excludes_padding_from_the_average() {
    // A constant map pools to itself everywhere, corners included, so the mixer returns zeros.
    let x = Tensor::full(3f32, (1, 2, 4, 5), &Device::Cpu).unwrap();
    for y in [
        tokenmix_kernels::pool_mixer(&x, 3).unwrap(),
        composed::pool_mixer(&x, 3).unwrap(),
    ] {
        let m: f32 = y
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(m < 1e-6, "{m}");
    }
    assert!(PoolMixer::new(4).is_err());
    assert!(composed::pool_mixer(&x, 2).is_err());
}

use candle_core::Var;
use tokenmix_kernels::NormAxes;

/// Forward and gradients (x, weight, bias) of `channel_norm` against the composed version.
fn check_norm(x: &Tensor, axes: NormAxes, axis: usize, with_bias: bool) {
    let c = x.dim(axis).unwrap();
    let w = Var::from_tensor(&(randn(&[c]) + 1.0).unwrap()).unwrap();
    let b = Var::from_tensor(&randn(&[c])).unwrap();
    let probe = randn(x.dims());
    let run = |fused: bool| {
        let xv = Var::from_tensor(x).unwrap();
        let bias = with_bias.then(|| b.as_tensor());
        let y = if fused {
            tokenmix_kernels::channel_norm(xv.as_tensor(), w.as_tensor(), bias, axes, 1e-6, axis)
                .unwrap()
        } else {
            composed::channel_norm(xv.as_tensor(), w.as_tensor(), bias, axes, 1e-6, axis).unwrap()
        };
        let grads = (&y * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gx = grads.get(xv.as_tensor()).unwrap().clone();
        let gw = grads.get(w.as_tensor()).unwrap().clone();
        let gb = grads.get(b.as_tensor()).cloned();
        (y, gx, gw, gb)
    };
    let (y1, gx1, gw1, gb1) = run(true);
    let (y2, gx2, gw2, gb2) = run(false);
    let what = format!("{axes:?} axis {axis} {:?} bias {with_bias}", x.dims());
    assert!(
        max_abs_diff(&y1, &y2) < 1e-4,
        "{what}: forward {}",
        max_abs_diff(&y1, &y2)
    );
    assert!(
        max_abs_diff(&gx1, &gx2) < 1e-3,
        "{what}: dx {}",
        max_abs_diff(&gx1, &gx2)
    );
    assert!(
        max_abs_diff(&gw1, &gw2) < 1e-3,
        "{what}: dw {}",
        max_abs_diff(&gw1, &gw2)
    );
    if with_bias {
        assert!(
            max_abs_diff(&gb1.unwrap(), &gb2.unwrap()) < 1e-3,
            "{what}: db"
        );
    }
}

#[test]
fn channel_norm_matches_composition_forward_and_backward() {
    for (b, c, h, w) in [(1, 3, 5, 7), (2, 16, 17, 19), (3, 5, 1, 1), (2, 7, 23, 13)] {
        for x in [randn(&[b, c, h, w]), non_contiguous([b, c, h, w])] {
            for with_bias in [true, false] {
                check_norm(&x, NormAxes::Channels, 1, with_bias);
                check_norm(&x, NormAxes::AllButBatch, 1, with_bias);
            }
        }
    }
    for (b, h, w, c) in [(1, 5, 7, 3), (2, 9, 6, 20), (3, 1, 1, 5)] {
        let permuted = non_contiguous([b, c, h, w]).permute((0, 2, 3, 1)).unwrap();
        for x in [randn(&[b, h, w, c]), permuted] {
            for with_bias in [true, false] {
                check_norm(&x, NormAxes::Channels, 3, with_bias);
                check_norm(&x, NormAxes::AllButBatch, 3, with_bias);
            }
        }
    }
    check_norm(&randn(&[2, 3, 4, 5]), NormAxes::AllButBatch, 2, true);
    for (b, n, c) in [(1, 7, 5), (2, 49, 64), (3, 1, 9)] {
        let tokens = randn(&[b, n, c]);
        check_norm(&tokens, NormAxes::Channels, 2, true);
        check_norm(&tokens, NormAxes::Channels, 2, false);
        check_norm(&tokens, NormAxes::AllButBatch, 2, true);
        check_norm(
            &tokens.transpose(0, 1).unwrap(),
            NormAxes::Channels,
            2,
            true,
        );
    }
}

#[test]
fn group_norm_is_the_same_in_every_layout() {
    let x = randn(&[2, 6, 5, 7]);
    let (w, b) = (randn(&[6]), randn(&[6]));
    let nchw = |x: &Tensor| {
        tokenmix_kernels::channel_norm(x, &w, Some(&b), NormAxes::AllButBatch, 1e-5, 1).unwrap()
    };
    let reference = nchw(&x);
    let nhwc = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
    let tokens = nhwc.reshape((2, 35, 6)).unwrap();
    for (what, y, axis) in [("channel-last", &nhwc, 3), ("tokens", &tokens, 2)] {
        for fused in [true, false] {
            let norm = if fused {
                tokenmix_kernels::channel_norm
            } else {
                composed::channel_norm
            };
            let got = norm(y, &w, Some(&b), NormAxes::AllButBatch, 1e-5, axis)
                .unwrap()
                .reshape((2, 5, 7, 6))
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap();
            let d = max_abs_diff(&got, &reference);
            assert!(d < 1e-5, "{what} (fused {fused}): max diff {d}");
        }
    }
    // The reference itself: per sample, mean 0 and variance 1 before the affine.
    let plain = composed::channel_norm(
        &x,
        &randn(&[6]).ones_like().unwrap(),
        None,
        NormAxes::AllButBatch,
        1e-5,
        1,
    )
    .unwrap();
    let per_sample = plain.flatten_from(1).unwrap();
    let mean = per_sample.mean(1).unwrap().abs().unwrap().max(0).unwrap();
    let var = per_sample.sqr().unwrap().mean(1).unwrap();
    assert!(mean.to_scalar::<f32>().unwrap() < 1e-5);
    for v in var.to_vec1::<f32>().unwrap() {
        assert!((v - 1.0).abs() < 1e-3, "variance {v}");
    }
}

#[test]
fn spectral_filter_matches_dft_composition() {
    use tokenmix_kernels::SpectralFilter;
    for (b, h, w, c) in [
        (1, 4, 4, 3),
        (2, 5, 7, 4),
        (2, 6, 3, 5),
        (1, 1, 1, 2),
        (3, 7, 2, 1),
        (2, 14, 14, 8),
    ] {
        let weight = randn(&[h, w / 2 + 1, c, 2]);
        let x = randn(&[b, h, w, c]);
        let strided = randn(&[b, w, h, c]).transpose(1, 2).unwrap();
        for x in [x, strided] {
            let fused = x
                .contiguous()
                .unwrap()
                .apply_op2(&weight, SpectralFilter)
                .unwrap();
            let reference = composed::spectral_filter(&x, &weight).unwrap();
            let d = max_abs_diff(&fused, &reference);
            assert!(d < 1e-4, "{b}x{h}x{w}x{c}: max diff {d}");
            let public = tokenmix_kernels::spectral_filter(&x, &weight).unwrap();
            assert!(max_abs_diff(&public, &reference) < 1e-4);
        }
    }
}

#[test]
fn spectral_filter_with_unit_weight_is_the_identity() {
    // A filter of ones passes every frequency: irfft2(rfft2(x)) = x.
    let x = randn(&[2, 6, 5, 3]);
    let mut ones = Tensor::ones((6, 3, 3, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
    ones = Tensor::cat(&[&ones, &ones.zeros_like().unwrap()], 3).unwrap();
    for y in [
        tokenmix_kernels::spectral_filter(&x, &ones).unwrap(),
        composed::spectral_filter(&x, &ones).unwrap(),
    ] {
        assert!(max_abs_diff(&y, &x) < 1e-5);
    }
    let bad = randn(&[6, 4, 3, 2]);
    let err = tokenmix_kernels::spectral_filter(&x, &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected [6, 3, 3, 2]"), "{err}");
}

/// candle's `conv2d` of the channel-first `x` by the checkpoint-shaped `weight`, plus `bias`,
/// back to channel-last: the reference for [`tokenmix_kernels::conv2d_nhwc`].
fn reference_conv_nhwc(x: &Tensor, w: &Tensor, b: Option<&Tensor>, s: usize, p: usize) -> Tensor {
    let y = x
        .permute((0, 3, 1, 2))
        .unwrap()
        .conv2d(w, p, s, 1, 1)
        .unwrap();
    let y = match b {
        Some(b) => y
            .broadcast_add(&b.reshape((b.elem_count(), 1, 1)).unwrap())
            .unwrap(),
        None => y,
    };
    y.permute((0, 2, 3, 1)).unwrap()
}

fn fused_conv_nhwc(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    s: usize,
    p: usize,
) -> candle_core::Result<Tensor> {
    let window = Window {
        kernel: w.dim(2)?,
        stride: s,
        padding: p,
    };
    tokenmix_kernels::conv2d_nhwc(x, &tokenmix_kernels::conv_weight_matrix(w)?, b, window)
}

#[test]
fn channel_last_conv_matches_candle_conv2d() {
    for (b, h, w, cin, cout, k, s, p) in [
        (1, 7, 5, 3, 4, 3, 1, 1),
        (2, 9, 11, 5, 6, 3, 2, 1),
        (2, 13, 10, 3, 8, 7, 4, 2),
        (1, 4, 4, 16, 5, 1, 1, 0),
        (3, 6, 5, 2, 3, 2, 2, 0),
        (1, 1, 1, 3, 2, 3, 1, 1),
        (1, 3, 3, 4, 2, 3, 1, 0),
    ] {
        let weight = randn(&[cout, cin, k, k]);
        let bias = randn(&[cout]);
        let permuted = non_contiguous([b, cin, h, w])
            .permute((0, 2, 3, 1))
            .unwrap();
        for x in [randn(&[b, h, w, cin]), permuted] {
            for bias in [None, Some(&bias)] {
                let want = reference_conv_nhwc(&x, &weight, bias, s, p);
                let got = fused_conv_nhwc(&x, &weight, bias, s, p).unwrap();
                assert_eq!(got.dims(), want.dims());
                let d = max_abs_diff(&got, &want);
                assert!(
                    d < 1e-4,
                    "{h}x{w} {cin}->{cout} k{k} s{s} p{p}: max diff {d}"
                );
            }
        }
    }
}

#[test]
fn channel_last_conv_rejects_bad_operands() {
    let x = randn(&[1, 5, 5, 3]);
    let m = tokenmix_kernels::conv_weight_matrix(&randn(&[4, 3, 3, 3])).unwrap();
    let window = Window {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let err = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
    let e = err(tokenmix_kernels::conv2d_nhwc(
        &x,
        &m.narrow(0, 0, 26).unwrap(),
        None,
        window,
    ));
    assert!(
        e.contains("weight matrix") && e.contains("[27, Cout]"),
        "{e}"
    );
    let e = err(tokenmix_kernels::conv2d_nhwc(
        &x,
        &m,
        Some(&randn(&[5])),
        window,
    ));
    assert!(e.contains("bias") && e.contains("[4]"), "{e}");
    let big = Window {
        kernel: 9,
        stride: 1,
        padding: 1,
    };
    let m9 = tokenmix_kernels::conv_weight_matrix(&randn(&[4, 3, 9, 9])).unwrap();
    let e = err(tokenmix_kernels::conv2d_nhwc(&x, &m9, None, big));
    assert!(e.contains("smaller than the 9x9 kernel"), "{e}");
    let e = err(tokenmix_kernels::conv2d_nhwc(
        &x,
        &m,
        None,
        Window {
            stride: 0,
            ..window
        },
    ));
    assert!(e.contains("stride must be positive"), "{e}");
    let e = err(tokenmix_kernels::conv_weight_matrix(&randn(&[4, 3, 3, 2])));
    assert!(e.contains("square kernel"), "{e}");
}

#[test]
fn self_attention_matches_batched_matmuls() {
    in_pools(|_| self_attention_cases());
}

fn self_attention_cases() {
    // (batch, tokens, heads, head_dim): one token, a token count above the kernel's 128-row
    // score block, odd sizes.
    for (b, n, h, d) in [
        (1, 1, 1, 1),
        (2, 7, 3, 5),
        (1, 49, 16, 32),
        (3, 131, 2, 8),
        (2, 200, 1, 3),
    ] {
        let qkv = randn(&[b, n, 3, h, d]);
        // The same values through a non-contiguous view (tokens and the q/k/v axis swapped).
        let strided = qkv
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .transpose(1, 2)
            .unwrap();
        assert!(n == 1 || !strided.is_contiguous());
        let scale = (d as f64).powf(-0.5);
        let reference = composed::self_attention(&qkv, scale).unwrap();
        assert_eq!(reference.dims(), [b, n, h * d]);
        for x in [&qkv, &strided] {
            let fused = tokenmix_kernels::self_attention(x, scale).unwrap();
            let diff = max_abs_diff(&fused, &reference);
            assert!(diff < 1e-5, "{b}x{n}x{h}x{d}: max diff {diff}");
        }
    }
    let bad = randn(&[2, 7, 2, 3, 5]);
    let err = tokenmix_kernels::self_attention(&bad, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("(B, N, 3, heads, head_dim)"), "{err}");
}

#[test]
fn self_attention_softmax_survives_large_scores() {
    // Scores of +-400 overflow a naive exp; the max-subtracted softmax picks the largest key.
    let (n, d) = (5, 4);
    let q = Tensor::ones((1, n, 1, 1, d), candle_core::DType::F32, &Device::Cpu).unwrap();
    let keys: Vec<f32> = (0..n * d)
        .map(|i| if i / d == 3 { 100.0 } else { -100.0 })
        .collect();
    let k = Tensor::from_vec(keys, (1, n, 1, 1, d), &Device::Cpu).unwrap();
    let v = randn(&[1, n, 1, 1, d]);
    let qkv = Tensor::cat(&[&q, &k, &v], 2).unwrap();
    let out = tokenmix_kernels::self_attention(&qkv, 1.0).unwrap();
    let want = v.get_on_dim(1, 3).unwrap().flatten_all().unwrap();
    for row in 0..n {
        let got = out.get_on_dim(1, row).unwrap().flatten_all().unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-6);
    }
}

/// The whole-sequence fused scan against the step-by-step recurrence.
#[test]
fn selective_scan_matches_the_step_recurrence() {
    for (b, d, l, n) in [
        (1, 1, 1, 1),
        (2, 3, 7, 4),
        (1, 5, 33, 16),
        (3, 2, 12, 3),
        (2, 19, 9, 16),
        (2, 16, 5, 5),
    ] {
        let u = randn(&[b, d, l]);
        let delta = (randn(&[b, d, l]).exp().unwrap() * 0.5).unwrap();
        let a = randn(&[d, n]).abs().unwrap().neg().unwrap();
        // B and C as views of (B, L, N) tensors: non-contiguous inputs.
        let bm = randn(&[b, l, n]).transpose(1, 2).unwrap();
        let cm = randn(&[b, l, n]).transpose(1, 2).unwrap();
        let fused = tokenmix_kernels::selective_scan(&u, &delta, &a, &bm, &cm).unwrap();
        let reference = composed::selective_scan(&u, &delta, &a, &bm, &cm).unwrap();
        let d_max = max_abs_diff(&fused, &reference);
        assert!(d_max < 1e-4, "{b}x{d}x{l}x{n}: max diff {d_max}");
        // The reverse scan is the scan of the time-flipped operands, flipped back.
        let flip = |t: &Tensor| t.contiguous().unwrap().flip(&[2]).unwrap();
        let reversed =
            tokenmix_kernels::selective_scan_with(&u, &delta, &a, &bm, &cm, true).unwrap();
        let reference = flip(
            &composed::selective_scan(&flip(&u), &flip(&delta), &a, &flip(&bm), &flip(&cm))
                .unwrap(),
        );
        let d_max = max_abs_diff(&reversed, &reference);
        assert!(d_max < 1e-4, "{b}x{d}x{l}x{n} reverse: max diff {d_max}");
    }
}

/// The reverse scan's gradients are those of its composition (flip, scan, flip).
#[test]
fn reverse_selective_scan_has_the_gradients_of_its_composition() {
    use candle_core::Var;
    let (b, d, l, n) = (2, 11, 6, 4);
    let u = Var::from_tensor(&randn(&[b, d, l])).unwrap();
    let delta = Var::from_tensor(&(randn(&[b, d, l]).exp().unwrap() * 0.5).unwrap()).unwrap();
    let a = Var::from_tensor(&randn(&[d, n]).abs().unwrap().neg().unwrap()).unwrap();
    let bm = Var::from_tensor(&randn(&[b, n, l])).unwrap();
    let cm = Var::from_tensor(&randn(&[b, n, l])).unwrap();
    let weights = randn(&[b, d, l]);
    let grads = |y: Tensor| {
        (y * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    };
    let fused =
        grads(tokenmix_kernels::selective_scan_with(&u, &delta, &a, &bm, &cm, true).unwrap());
    let flip = |t: &Tensor| t.contiguous().unwrap().flip(&[2]).unwrap();
    let composed = grads(flip(
        &composed::selective_scan(&flip(&u), &flip(&delta), &a, &flip(&bm), &flip(&cm)).unwrap(),
    ));
    for (name, v) in [
        ("u", &u),
        ("delta", &delta),
        ("a", &a),
        ("b", &bm),
        ("c", &cm),
    ] {
        let (g1, g2) = (fused.get(v).unwrap(), composed.get(v).unwrap());
        let diff = max_abs_diff(g1, g2);
        assert!(diff < 1e-4, "{name}: max diff {diff}");
    }
}

#[test]
fn selective_scan_rejects_mismatched_shapes() {
    let u = randn(&[1, 3, 5]);
    let a = randn(&[4, 2]);
    let bm = randn(&[1, 2, 5]);
    let err = tokenmix_kernels::selective_scan(&u, &u, &a, &bm, &bm)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("selective_scan: a has shape [4, 2], expected (3, N)"),
        "{err}"
    );
}

#[test]
fn fft_pair_matches_dft_composition_and_inverts() {
    for shape in [
        vec![1, 1, 4, 4],
        vec![2, 3, 5, 7],
        vec![3, 6, 8],
        vec![2, 2, 7, 2],
        vec![1, 1, 1, 1],
    ] {
        let x = randn(&shape);
        let (re, im) = tokenmix_kernels::rfft2_ortho(&x).unwrap();
        let (cre, cim) = composed::rfft2_ortho(&x).unwrap();
        assert!(
            max_abs_diff(&re, &cre) < 1e-4 && max_abs_diff(&im, &cim) < 1e-4,
            "{shape:?}"
        );
        let w = *shape.last().unwrap();
        let back = tokenmix_kernels::irfft2_ortho(&re, &im, w).unwrap();
        assert!(max_abs_diff(&back, &x) < 1e-4, "{shape:?}: round trip");
        let cback = composed::irfft2_ortho(&cre, &cim, w).unwrap();
        assert!(
            max_abs_diff(&cback, &x) < 1e-4,
            "{shape:?}: composed round trip"
        );
    }
    // Non-contiguous input and an arbitrary (non-Hermitian-consistent) spectrum.
    let x = randn(&[2, 7, 6]).transpose(1, 2).unwrap();
    let (re, im) = tokenmix_kernels::rfft2_ortho(&x).unwrap();
    let (cre, cim) = composed::rfft2_ortho(&x).unwrap();
    assert!(max_abs_diff(&re, &cre) < 1e-4 && max_abs_diff(&im, &cim) < 1e-4);
    let (sr, si) = (randn(&[2, 5, 4]), randn(&[2, 5, 4]));
    let fused = tokenmix_kernels::irfft2_ortho(&sr, &si, 6).unwrap();
    let reference = composed::irfft2_ortho(&sr, &si, 6).unwrap();
    assert!(max_abs_diff(&fused, &reference) < 1e-4);
}

/// Gradients of `<f(inputs), probe>` for the fused and the composed version of an op.
fn check_grads(
    what: &str,
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) {
    let grads = |f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>| -> Vec<Tensor> {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts).unwrap();
        // The same non-uniform probe for both runs: sin of the flat index.
        let n = out.elem_count();
        let probe = (Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap() * 0.37)
            .unwrap()
            .sin()
            .unwrap()
            .reshape(out.dims())
            .unwrap();
        let g = (out * probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        ts.iter().map(|t| g.get(t).unwrap().clone()).collect()
    };
    let a = grads(&fused);
    let b = grads(&reference);
    for (i, (ga, gb)) in a.iter().zip(&b).enumerate() {
        let d = max_abs_diff(ga, gb);
        assert!(d < 1e-3, "{what}: gradient of input {i} differs by {d}");
    }
}

/// The gradient of `sum(f(x) * probe)` with respect to `x`, for a random `probe`; returns
/// `(gradient, probe)`.
fn input_gradient(
    x: &Tensor,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> (Tensor, Tensor) {
    let xv = Var::from_tensor(x).unwrap();
    let out = f(xv.as_tensor()).unwrap();
    let probe = randn(out.dims());
    let g = (out * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    (g.get(xv.as_tensor()).unwrap().clone(), probe)
}

/// The pooling mixer's adjoint applied to `probe` `(B, C, H, W)`, written out: every pixel
/// receives `probe / count` from each window containing it, minus its own `probe` (candle cannot
/// differentiate `avg_pool2d` with stride 1, so this is the reference for the gradient).
fn pool_mixer_adjoint(probe: &Tensor, k: usize) -> Tensor {
    let (_, _, h, w) = probe.dims4().unwrap();
    let counts = composed::window_count_map(h, w, k, probe).unwrap();
    let scaled: Vec<f32> = probe
        .broadcast_div(&counts)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let p: Vec<f32> = probe.flatten_all().unwrap().to_vec1().unwrap();
    let half = k / 2;
    let mut want = vec![0f32; p.len()];
    for plane in 0..p.len() / (h * w) {
        for i in 0..h {
            for j in 0..w {
                let at = plane * h * w + i * w + j;
                want[at] -= p[at];
                for oi in i.saturating_sub(half)..(i + half + 1).min(h) {
                    for oj in j.saturating_sub(half)..(j + half + 1).min(w) {
                        want[at] += scaled[plane * h * w + oi * w + oj];
                    }
                }
            }
        }
    }
    Tensor::from_vec(want, probe.dims(), &Device::Cpu).unwrap()
}

#[test]
fn fused_ops_have_the_gradients_of_their_compositions() {
    let x = randn(&[2, 3, 7, 6]);
    for (k, s, p) in [(3, 1, 1), (7, 1, 3), (3, 2, 1), (5, 2, 2)] {
        let w = randn(&[3, 1, k, k]);
        // candle's grouped conv2d backward mis-sizes odd inputs at stride 2; compare there on an
        // even input.
        let x = if s == 2 {
            randn(&[2, 3, 8, 6])
        } else {
            x.clone()
        };
        check_grads(
            &format!("depthwise k{k} s{s}"),
            &[x, w],
            |t| tokenmix_kernels::depthwise_conv2d(&t[0], &t[1], None, s, p),
            |t| composed::depthwise_conv2d(&t[0], &t[1], s, p),
        );
        let b = randn(&[3]);
        let x = if s == 2 {
            randn(&[2, 3, 8, 6])
        } else {
            randn(&[2, 3, 7, 5])
        };
        check_grads(
            &format!("depthwise with bias k{k} s{s}"),
            &[x, randn(&[3, 1, k, k]), b],
            |t| tokenmix_kernels::depthwise_conv2d(&t[0], &t[1], Some(&t[2]), s, p),
            |t| {
                composed::depthwise_conv2d(&t[0], &t[1], s, p)?
                    .broadcast_add(&t[2].reshape((3, 1, 1))?)
            },
        );
    }
    for (c, k, s, p) in [(5, 3, 1, 1), (18, 7, 1, 3), (4, 3, 2, 1)] {
        let (h, w) = if s == 2 { (8, 6) } else { (7, 6) };
        check_grads(
            &format!("channel-last depthwise c{c} k{k} s{s}"),
            &[randn(&[2, h, w, c]), randn(&[c, 1, k, k]), randn(&[c])],
            |t| tokenmix_kernels::depthwise_conv2d_nhwc(&t[0], &t[1], Some(&t[2]), s, p),
            |t| Ok(composed_nhwc(&t[0], &t[1], &t[2], s, p)),
        );
    }
    for (h, w, cin, cout, k, s, p) in [
        (5, 4, 3, 4, 3, 1, 1),
        (8, 6, 5, 3, 3, 2, 1),
        (8, 12, 3, 6, 7, 4, 2),
    ] {
        check_grads(
            &format!("channel-last conv k{k} s{s} p{p}"),
            &[
                randn(&[2, h, w, cin]),
                randn(&[cout, cin, k, k]),
                randn(&[cout]),
            ],
            |t| fused_conv_nhwc(&t[0], &t[1], Some(&t[2]), s, p),
            |t| Ok(reference_conv_nhwc(&t[0], &t[1], Some(&t[2]), s, p)),
        );
    }
    in_pools(|threads| {
        for (b, n, h, d) in [(2, 7, 3, 4), (1, 130, 2, 3)] {
            check_grads(
                &format!("self attention {b}x{n}x{h}x{d} on {threads} threads"),
                &[randn(&[b, n, 3, h, d])],
                |t| tokenmix_kernels::self_attention(&t[0], 0.5),
                |t| composed::self_attention(&t[0], 0.5),
            );
        }
    });
    for k in [3, 5] {
        let (got, probe) = input_gradient(&x, |x| tokenmix_kernels::pool_mixer(x, k));
        let want = pool_mixer_adjoint(&probe, k);
        assert!(max_abs_diff(&got, &want) < 1e-4, "pool mixer k{k} gradient");
        let nhwc = randn(&[2, 5, 4, 3]);
        let (got, probe) = input_gradient(&nhwc, |x| tokenmix_kernels::pool_mixer_nhwc(x, k));
        let want = pool_mixer_adjoint(&probe.permute((0, 3, 1, 2)).unwrap(), k);
        let want = want.permute((0, 2, 3, 1)).unwrap();
        assert!(
            max_abs_diff(&got, &want) < 1e-4,
            "channel-last pool mixer k{k} gradient"
        );
    }
    let xc = randn(&[2, 5, 6, 4]);
    let filt = randn(&[5, 4, 4, 2]);
    check_grads(
        "spectral filter",
        &[xc.clone(), filt],
        |t| tokenmix_kernels::spectral_filter(&t[0], &t[1]),
        |t| composed::spectral_filter(&t[0], &t[1]),
    );
    check_grads(
        "rfft2 then irfft2 with a nonlinearity between",
        std::slice::from_ref(&xc),
        |t| {
            let (re, im) = tokenmix_kernels::rfft2_ortho(&t[0])?;
            tokenmix_kernels::irfft2_ortho(&re.sqr()?, &(im * 2.0)?, 4)
        },
        |t| {
            let (re, im) = composed::rfft2_ortho(&t[0])?;
            composed::irfft2_ortho(&re.sqr()?, &(im * 2.0)?, 4)
        },
    );
    let (b, d, l, n) = (2, 3, 9, 4);
    let u = randn(&[b, d, l]);
    let delta = (randn(&[b, d, l]).exp().unwrap() * 0.3).unwrap();
    let a = randn(&[d, n]).abs().unwrap().neg().unwrap();
    let (bm, cm) = (randn(&[b, n, l]), randn(&[b, n, l]));
    check_grads(
        "selective scan",
        &[u, delta, a, bm, cm],
        |t| tokenmix_kernels::selective_scan(&t[0], &t[1], &t[2], &t[3], &t[4]),
        |t| composed::selective_scan(&t[0], &t[1], &t[2], &t[3], &t[4]),
    );
}

#[test]
fn gelu_matches_candle_exact_gelu() {
    for x in [
        randn(&[3, 5, 7]),
        (randn(&[2, 9, 4]) * 6.0).unwrap().transpose(1, 2).unwrap(),
        randn(&[1]),
    ] {
        let fused = tokenmix_kernels::gelu(&x).unwrap();
        let reference = x.gelu_erf().unwrap();
        assert!(max_abs_diff(&fused, &reference) < 1e-5, "{:?}", x.dims());
    }
    check_grads(
        "gelu",
        &[randn(&[2, 3, 5])],
        |t| tokenmix_kernels::gelu(&t[0]),
        |t| t[0].gelu_erf(),
    );
}

#[test]
fn bias_gelu_matches_its_composition() {
    let cases = [
        (randn(&[2, 5, 3, 7]), 1),
        (randn(&[1, 6, 20, 20]), 1),
        (randn(&[3, 4, 9]), 2),
        (randn(&[5, 3000]), 1),
        (
            (randn(&[2, 9, 4]) * 4.0).unwrap().transpose(1, 2).unwrap(),
            1,
        ),
        (randn(&[7, 3]), 0),
    ];
    for (x, axis) in cases {
        let bias = randn(&[x.dim(axis).unwrap()]);
        let fused = tokenmix_kernels::bias_gelu(&x, &bias, axis).unwrap();
        let reference = composed::bias_gelu(&x, &bias, axis).unwrap();
        assert!(
            max_abs_diff(&fused, &reference) < 1e-5,
            "{:?} axis {axis}",
            x.dims()
        );
    }
    check_grads(
        "bias_gelu",
        &[randn(&[2, 3, 5, 4]), randn(&[3])],
        |t| tokenmix_kernels::bias_gelu(&t[0], &t[1], 1),
        |t| composed::bias_gelu(&t[0], &t[1], 1),
    );
    let err = tokenmix_kernels::bias_gelu(&randn(&[2, 3]), &randn(&[2]), 1).unwrap_err();
    assert!(
        err.to_string().contains("bias has shape [2], expected [3]"),
        "{err}"
    );
}

#[test]
fn squared_relu_matches_relu_then_square() {
    for x in [randn(&[3, 17, 5]), non_contiguous([2, 3, 5, 7])] {
        let fused = tokenmix_kernels::squared_relu(&x).unwrap();
        let reference = x.relu().unwrap().sqr().unwrap();
        assert!(max_abs_diff(&fused, &reference) < 1e-6);
    }
    check_grads(
        "squared relu",
        &[randn(&[4, 9, 3])],
        |t| tokenmix_kernels::squared_relu(&t[0]),
        |t| t[0].relu()?.sqr(),
    );
}

#[test]
fn star_relu_matches_its_composition() {
    let (scale, bias) = (randn(&[1]), randn(&[1]));
    for x in [randn(&[2, 3, 5, 7]), randn(&[4, 6]).t().unwrap()] {
        let fused = tokenmix_kernels::star_relu(&x, &scale, &bias).unwrap();
        let reference = composed::star_relu(&x, &scale, &bias).unwrap();
        assert!(max_abs_diff(&fused, &reference) < 1e-5);
    }
    check_grads(
        "star_relu",
        &[randn(&[2, 3, 4]), scale, bias],
        |t| tokenmix_kernels::star_relu(&t[0], &t[1], &t[2]),
        |t| composed::star_relu(&t[0], &t[1], &t[2]),
    );
    let err = tokenmix_kernels::star_relu(&randn(&[3]), &randn(&[2]), &randn(&[1])).unwrap_err();
    assert!(
        err.to_string()
            .contains("star_relu: scale has shape [2], expected [1]"),
        "{err}"
    );
}

#[test]
fn mix_shift_matches_roll_and_conv() {
    for (b, c, h, w, k) in [
        (2, 5, 7, 6, 3),
        (1, 3, 4, 9, 5),
        (2, 2, 3, 3, 7),
        (1, 4, 1, 5, 1),
    ] {
        let weights = randn(&[2, c, k, k]);
        let biases = randn(&[2, c]);
        let shifts: Vec<i32> = (0..c as i32).map(|i| i - 2).collect();
        for x in [randn(&[b, c, h, w]), non_contiguous([b, c, h, w])] {
            let fused = tokenmix_kernels::mix_shift(&x, &weights, &biases, &shifts).unwrap();
            let reference = composed::mix_shift(&x, &weights, &biases, &shifts).unwrap();
            let d = max_abs_diff(&fused, &reference);
            assert!(d < 1e-4, "{b}x{c}x{h}x{w} k{k}: {d}");
        }
    }
    let shifts = [1, -1, 2];
    check_grads(
        "mix_shift",
        &[randn(&[2, 3, 5, 4]), randn(&[2, 3, 3, 3]), randn(&[2, 3])],
        |t| tokenmix_kernels::mix_shift(&t[0], &t[1], &t[2], &shifts),
        |t| composed::mix_shift(&t[0], &t[1], &t[2], &shifts),
    );
}

/// `base + act(x fc1 + b1) fc2 + b2` written out with candle ops.
fn reference_mlp(x: &Tensor, base: &Tensor, w: &MlpWeights) -> candle_core::Result<Tensor> {
    let c = w.dims()?.0;
    let rows = x.elem_count() / c;
    let mut h = x.reshape((rows, c))?.matmul(&w.fc1)?;
    if let Some(b) = &w.fc1_bias {
        h = h.broadcast_add(b)?;
    }
    let h = match w.act {
        MlpActivation::Gelu => h.gelu_erf()?,
        MlpActivation::StarRelu { scale, bias } => {
            ((h.relu()?.sqr()? * scale as f64)? + bias as f64)?
        }
    };
    let mut y = h.matmul(&w.fc2)?;
    if let Some(b) = &w.fc2_bias {
        y = y.broadcast_add(b)?;
    }
    base + y.reshape(base.dims())?
}

fn mlp_weights(
    c: usize,
    h: usize,
    n: usize,
    act: MlpActivation,
    biases: (bool, bool),
) -> MlpWeights {
    MlpWeights {
        fc1: (randn(&[c, h]) / (c as f64).sqrt()).unwrap(),
        fc1_bias: biases.0.then(|| randn(&[h])),
        act,
        fc2: (randn(&[h, n]) / (h as f64).sqrt()).unwrap(),
        fc2_bias: biases.1.then(|| randn(&[n])),
    }
}

#[test]
fn residual_mlp_matches_its_composition() {
    let star = MlpActivation::StarRelu {
        scale: 0.8,
        bias: -0.3,
    };
    // (leading axes, C, H, N, activation, biases): one row; a few rows; 1221 rows of a narrow
    // MLP and 300 of a small one (one block on one thread, blocks on two, split products on 16);
    // 700 rows of a wide one (128-row blocks and a partial last block on 1 and 2 threads);
    // weights over the blocking limit (never blocks); 2300 rows of a tiny MLP (blocks on 16
    // threads too); N != C.
    let big_weights = 64 * 2100 * 4 * 2 > 1 << 20;
    assert!(big_weights);
    let cases = [
        (vec![1, 1], 1, 1, 1, MlpActivation::Gelu, (false, false)),
        (vec![2, 7], 5, 20, 5, MlpActivation::Gelu, (true, true)),
        (vec![3, 37, 11], 16, 64, 16, star, (true, true)),
        (
            vec![2, 350],
            33,
            1030,
            17,
            MlpActivation::Gelu,
            (true, false),
        ),
        (vec![1, 300], 24, 96, 24, star, (false, true)),
        (vec![300], 64, 2100, 64, MlpActivation::Gelu, (true, true)),
        (vec![2300], 8, 32, 8, star, (true, false)),
    ];
    let plans = in_pools(|threads| {
        let mut plans = Vec::new();
        for (lead, c, h, n, act, biases) in &cases {
            let (c, h, n) = (*c, *h, *n);
            let w = mlp_weights(c, h, n, *act, *biases);
            let rows: usize = lead.iter().product();
            let plan = w.cpu_plan(rows).unwrap();
            check_residual_mlp(lead, &w);
            plans.push((threads, rows, h, plan));
        }
        plans
    });
    let plans: Vec<_> = plans.into_iter().flatten().collect();
    for &(threads, rows, h, plan) in &plans {
        let what = format!("{rows} rows, hidden {h}, {threads} threads: {plan:?}");
        match plan {
            MlpPlan::Serial => assert_eq!(threads, 1, "{what}"),
            MlpPlan::SplitProducts => assert!(threads > 1, "{what}"),
            MlpPlan::Blocks { rows: block, count } => {
                assert!(h != 2100, "{what}: weights over 1 MiB in blocks");
                assert!(count > 1 && block * (count - 1) < rows && rows <= block * count);
            }
        }
    }
    let seen = |threads: usize, f: &dyn Fn(&MlpPlan) -> bool| {
        plans.iter().any(|p| p.0 == threads && f(&p.3))
    };
    let blocks = |p: &MlpPlan| matches!(p, MlpPlan::Blocks { .. });
    let partial = |p: &MlpPlan| matches!(p, MlpPlan::Blocks { rows, .. } if 700 % rows != 0);
    assert!(seen(1, &|p| *p == MlpPlan::Serial) && seen(1, &blocks) && seen(1, &partial));
    for threads in [2, 16] {
        assert!(
            seen(threads, &|p| *p == MlpPlan::SplitProducts),
            "{threads} threads"
        );
        assert!(seen(threads, &blocks), "{threads} threads");
    }
}

/// The fused `residual_mlp` on `x` `(lead..., C)` and its flattened, transposed-view twin
/// against [`reference_mlp`] and the composition.
fn check_residual_mlp(lead: &[usize], w: &MlpWeights) {
    let (c, h, n) = w.dims().unwrap();
    let rows: usize = lead.iter().product();
    let x = randn(&[lead, &[c]].concat());
    let base = randn(&[lead, &[n]].concat());
    // The same values as `(rows, C)` through a transposed (non-contiguous) view.
    let strided = x
        .reshape((rows, c))
        .unwrap()
        .t()
        .unwrap()
        .contiguous()
        .unwrap()
        .t()
        .unwrap();
    assert!(rows == 1 || c == 1 || !strided.is_contiguous());
    let flat_base = base.reshape((rows, n)).unwrap();
    for (x, base) in [(&x, &base), (&strided, &flat_base)] {
        let fused = tokenmix_kernels::residual_mlp(x, base, w).unwrap();
        let reference = reference_mlp(x, base, w).unwrap();
        let d = max_abs_diff(&fused, &reference);
        assert!(d < 1e-4, "{lead:?}x{c} -> {h} -> {n}: max diff {d}");
        let composed = composed::residual_mlp(&x.reshape((rows, c)).unwrap(), &flat_base, w)
            .unwrap()
            .reshape(base.dims())
            .unwrap();
        assert!(max_abs_diff(&composed, &reference) < 1e-4);
    }
}

#[test]
fn residual_mlp_has_the_gradients_of_its_composition() {
    in_pools(|threads| {
        for (rows, c, h, n) in [(5, 3, 7, 3), (600, 8, 1100, 6)] {
            let w = mlp_weights(c, h, n, MlpActivation::Gelu, (true, true));
            check_grads(
                &format!("residual_mlp {rows} rows on {threads} threads"),
                &[randn(&[rows, c]), randn(&[rows, n])],
                |t| tokenmix_kernels::residual_mlp(&t[0], &t[1], &w),
                |t| reference_mlp(&t[0], &t[1], &w),
            );
        }
    });
}

#[test]
fn residual_mlp_rejects_mismatched_operands() {
    let w = mlp_weights(4, 8, 4, MlpActivation::Gelu, (true, true));
    let err = |x: &Tensor, base: &Tensor, w: &MlpWeights| {
        tokenmix_kernels::residual_mlp(x, base, w)
            .unwrap_err()
            .to_string()
    };
    let (x, base) = (randn(&[2, 3, 4]), randn(&[2, 3, 4]));
    let e = err(&randn(&[2, 3, 5]), &base, &w);
    assert!(
        e.contains("residual_mlp: input has shape [2, 3, 5], expected (..., 4)"),
        "{e}"
    );
    let e = err(&x, &randn(&[2, 4, 4]), &w);
    assert!(
        e.contains("residual_mlp: base has shape [2, 4, 4], expected [2, 3, 4]"),
        "{e}"
    );
    let mut bad = w.clone();
    bad.fc2 = randn(&[7, 4]);
    let e = err(&x, &base, &bad);
    assert!(e.contains("fc2 has shape [7, 4], expected (8, N)"), "{e}");
    let mut bad = w.clone();
    bad.fc1_bias = Some(randn(&[4]));
    let e = err(&x, &base, &bad);
    assert!(e.contains("fc1 bias has shape [4], expected [8]"), "{e}");
    let mut bad = w;
    bad.fc1 = randn(&[4, 8, 1]);
    let e = err(&x, &base, &bad);
    assert!(
        e.contains("fc1 has shape [4, 8, 1], expected a matrix (C, H)"),
        "{e}"
    );
}

#[test]
fn linear_matches_matmul_plus_bias() {
    in_pools(|_| linear_cases());
    let err = |x: &[usize], w: &[usize], b: &[usize]| {
        tokenmix_kernels::linear(&randn(x), &randn(w), &randn(b))
            .unwrap_err()
            .to_string()
    };
    let e = err(&[2, 4], &[3, 5], &[5]);
    assert!(
        e.contains("linear: input has shape [2, 4], expected (..., 3)"),
        "{e}"
    );
    let e = err(&[2, 3], &[3, 5], &[4]);
    assert!(
        e.contains("linear: bias has shape [4], expected [5]"),
        "{e}"
    );
    let e = err(&[2, 3], &[3, 5, 1], &[5]);
    assert!(
        e.contains("linear: weight has shape [3, 5, 1], expected a matrix (K, N)"),
        "{e}"
    );
}

fn linear_cases() {
    // (leading axes, K, N): one element, odd sizes, more rows than one pass task.
    for (lead, k, n) in [
        (vec![1], 1, 1),
        (vec![2, 7], 5, 3),
        (vec![3, 37], 64, 19),
        (vec![1000], 17, 130),
    ] {
        let rows: usize = lead.iter().product();
        let (w, b) = (randn(&[k, n]), randn(&[n]));
        let x = randn(&[lead.clone(), vec![k]].concat());
        let strided = x
            .reshape((rows, k))
            .unwrap()
            .t()
            .unwrap()
            .contiguous()
            .unwrap()
            .t()
            .unwrap();
        assert!(rows == 1 || k == 1 || !strided.is_contiguous());
        for x in [x, strided] {
            let fused = tokenmix_kernels::linear(&x, &w, &b).unwrap();
            let reference = x
                .reshape((rows, k))
                .unwrap()
                .matmul(&w)
                .unwrap()
                .broadcast_add(&b)
                .unwrap()
                .reshape([&x.dims()[..x.rank() - 1], &[n]].concat())
                .unwrap();
            let d = max_abs_diff(&fused, &reference);
            assert!(d < 1e-4, "{lead:?}x{k} -> {n}: max diff {d}");
        }
    }
    check_grads(
        "linear",
        &[randn(&[2, 9, 7]), randn(&[7, 5]), randn(&[5])],
        |t| tokenmix_kernels::linear(&t[0], &t[1], &t[2]),
        |t| t[0].broadcast_matmul(&t[1])?.broadcast_add(&t[2]),
    );
}

#[test]
fn gelu_gate_matches_split_and_concatenate() {
    // (rows, hidden, conv channels): every channel convolved, a few, one; odd sizes.
    for (rows, hidden, k) in [(1, 1, 1), (5, 8, 8), (37, 13, 5), (300, 128, 48), (4, 9, 1)] {
        let h = randn(&[rows, 2 * hidden]);
        let conv = randn(&[rows, k]);
        let strided = conv.t().unwrap().contiguous().unwrap().t().unwrap();
        for conv in [&conv, &strided] {
            let fused = tokenmix_kernels::gelu_gate(&h, conv, hidden).unwrap();
            let g = h.narrow(1, 0, hidden).unwrap().gelu_erf().unwrap();
            let values =
                Tensor::cat(&[&h.narrow(1, hidden, hidden - k).unwrap(), conv], 1).unwrap();
            let d = max_abs_diff(&fused, &(g * values).unwrap());
            assert!(d < 1e-5, "{rows}x{hidden} k={k}: max diff {d}");
        }
    }
    check_grads(
        "gelu_gate",
        &[randn(&[6, 14]), randn(&[6, 3])],
        |t| tokenmix_kernels::gelu_gate(&t[0], &t[1], 7),
        |t| composed::gelu_gate(&t[0], &t[1], 7),
    );
    let e = tokenmix_kernels::gelu_gate(&randn(&[6, 14]), &randn(&[6, 8]), 7)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gelu_gate: conv has shape [6, 8], expected (6, 1..=7)"),
        "{e}"
    );
    let e = tokenmix_kernels::gelu_gate(&randn(&[6, 13]), &randn(&[6, 3]), 7)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gelu_gate: h has shape [6, 13], expected (rows, 14)"),
        "{e}"
    );
}

/// The Haar transform written out pixel by pixel from its definition (pywt `db1`, zero mode,
/// WaveMix's channel order), on a channel-last `(B, H, W, C)` map.
fn haar_by_definition(x: &Tensor) -> Tensor {
    let (b, h, w, c) = x.dims4().unwrap();
    let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let at = |n: usize, y: usize, xx: usize, ch: usize| {
        if y < h && xx < w {
            v[((n * h + y) * w + xx) * c + ch]
        } else {
            0.0
        }
    };
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let mut out = vec![0f32; b * ho * wo * 4 * c];
    for n in 0..b {
        for oy in 0..ho {
            for ox in 0..wo {
                for ch in 0..c {
                    let (pa, pb) = (at(n, 2 * oy, 2 * ox, ch), at(n, 2 * oy, 2 * ox + 1, ch));
                    let (pc, pd) = (
                        at(n, 2 * oy + 1, 2 * ox, ch),
                        at(n, 2 * oy + 1, 2 * ox + 1, ch),
                    );
                    let base = ((n * ho + oy) * wo + ox) * 4 * c;
                    out[base + ch] = (pa + pb + pc + pd) / 2.0;
                    out[base + c + 3 * ch] = (pa + pb - pc - pd) / 2.0;
                    out[base + c + 3 * ch + 1] = (pa - pb + pc - pd) / 2.0;
                    out[base + c + 3 * ch + 2] = (pa - pb - pc + pd) / 2.0;
                }
            }
        }
    }
    Tensor::from_vec(out, (b, ho, wo, 4 * c), &Device::Cpu).unwrap()
}

#[test]
fn haar_dwt_matches_its_definition_and_composition() {
    for (b, h, w, c) in [
        (1, 2, 2, 1),
        (2, 6, 4, 3),
        (2, 7, 5, 4),
        (1, 1, 3, 2),
        (3, 9, 8, 5),
    ] {
        let permuted = non_contiguous([b, c, h, w]).permute((0, 2, 3, 1)).unwrap();
        for x in [randn(&[b, h, w, c]), permuted] {
            let want = haar_by_definition(&x);
            let fused = in_pools(|_| tokenmix_kernels::haar_dwt(&x).unwrap());
            let composed = composed::haar_dwt(&x).unwrap();
            for got in fused.iter().chain([&composed]) {
                let d = max_abs_diff(got, &want);
                assert!(d < 1e-5, "{b}x{h}x{w}x{c}: max diff {d}");
            }
            let inverse = tokenmix_kernels::haar_dwt_adjoint(&want, h, w).unwrap();
            let composed_inverse = composed::haar_dwt_adjoint(&want, h, w).unwrap();
            assert!(max_abs_diff(&inverse, &composed_inverse) < 1e-5);
            if h % 2 == 0 && w % 2 == 0 {
                let d = max_abs_diff(&inverse, &x.contiguous().unwrap());
                assert!(
                    d < 1e-5,
                    "{h}x{w}: the adjoint does not invert, max diff {d}"
                );
            }
        }
    }
}

#[test]
fn haar_dwt_gradients_match_the_composition() {
    for (b, h, w, c) in [(2, 6, 4, 3), (1, 7, 5, 2)] {
        check_grads(
            "haar_dwt",
            &[randn(&[b, h, w, c])],
            |t| tokenmix_kernels::haar_dwt(&t[0]),
            |t| composed::haar_dwt(&t[0]),
        );
        let coeffs = randn(&[b, h.div_ceil(2), w.div_ceil(2), 4 * c]);
        check_grads(
            "haar_dwt_adjoint",
            &[coeffs],
            |t| tokenmix_kernels::haar_dwt_adjoint(&t[0], h, w),
            |t| composed::haar_dwt_adjoint(&t[0], h, w),
        );
    }
}

#[test]
fn haar_dwt_adjoint_rejects_mismatched_coefficients() {
    let e = tokenmix_kernels::haar_dwt_adjoint(&randn(&[1, 3, 2, 8]), 7, 5)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("coefficients") && e.contains("(B, 4, 3, 4C)"),
        "{e}"
    );
    let e = tokenmix_kernels::haar_dwt_adjoint(&randn(&[1, 4, 3, 6]), 7, 5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("coefficients"), "{e}");
}

fn fused_conv_transpose_nhwc(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    s: usize,
    p: usize,
) -> candle_core::Result<Tensor> {
    let window = Window {
        kernel: w.dim(2)?,
        stride: s,
        padding: p,
    };
    let m = tokenmix_kernels::conv_transpose_weight_matrix(w)?;
    tokenmix_kernels::conv_transpose2d_nhwc(x, &m, b, window)
}

/// candle's `conv_transpose2d` of the channel-first `x` by the checkpoint-shaped `weight`
/// `(Cin, Cout, k, k)`, plus `bias`, back to channel-last.
fn reference_conv_transpose_nhwc(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    s: usize,
    p: usize,
) -> candle_core::Result<Tensor> {
    let y = x.permute((0, 3, 1, 2))?.conv_transpose2d(w, p, 0, s, 1)?;
    let y = match b {
        Some(b) => y.broadcast_add(&b.reshape((b.elem_count(), 1, 1))?)?,
        None => y,
    };
    y.permute((0, 2, 3, 1))
}

#[test]
fn channel_last_conv_transpose_matches_candle() {
    for (b, h, w, cin, cout, k, s, p) in [
        (2, 3, 5, 4, 3, 4, 2, 1),
        (1, 4, 4, 6, 5, 4, 2, 1),
        (2, 5, 3, 3, 2, 3, 1, 1),
        (1, 1, 1, 2, 3, 4, 2, 1),
        (3, 2, 3, 5, 4, 2, 2, 0),
        (1, 3, 4, 3, 2, 3, 2, 1),
    ] {
        let weight = randn(&[cin, cout, k, k]);
        let bias = randn(&[cout]);
        let permuted = non_contiguous([b, cin, h, w])
            .permute((0, 2, 3, 1))
            .unwrap();
        for x in [randn(&[b, h, w, cin]), permuted] {
            for bias in [None, Some(&bias)] {
                let label = format!("{h}x{w} {cin}->{cout} k{k} s{s} p{p}");
                let want = reference_conv_transpose_nhwc(&x, &weight, bias, s, p).unwrap();
                let got = fused_conv_transpose_nhwc(&x, &weight, bias, s, p).unwrap();
                let d = max_abs_diff(&got, &want);
                assert!(d < 1e-4, "{label}: max diff {d}");
            }
        }
        check_grads(
            "conv_transpose2d_nhwc",
            &[randn(&[b, h, w, cin]), weight.clone(), bias.clone()],
            |t| fused_conv_transpose_nhwc(&t[0], &t[1], Some(&t[2]), s, p),
            |t| reference_conv_transpose_nhwc(&t[0], &t[1], Some(&t[2]), s, p),
        );
    }
}

/// `(B, heads, N, d)` with its memory laid out as `(B, heads, d, N)` (a transposed view).
fn tokens_transposed(shape: [usize; 4]) -> Tensor {
    let [b, heads, n, d] = shape;
    let t = randn(&[b, heads, d, n]).transpose(2, 3).unwrap();
    assert!(n == 1 || d == 1 || !t.is_contiguous());
    t
}

/// Token `(y + a - r, x + b - r)` of a `h x w` map, if inside.
fn neighbor_of(h: usize, w: usize, win: usize, n: usize, j: usize) -> Option<usize> {
    let r = win / 2;
    let (y, x) = ((n / w) as isize, (n % w) as isize);
    let sy = y + (j / win) as isize - r as isize;
    let sx = x + (j % win) as isize - r as isize;
    let inside = (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx);
    inside.then(|| sy as usize * w + sx as usize)
}

/// The neighbourhood logits written out with loops, `-inf` outside the map.
fn neighborhood_logits_by_definition(
    q: &Tensor,
    k: &Tensor,
    h: usize,
    w: usize,
    win: usize,
) -> Tensor {
    let (b, heads, n, d) = q.dims4().unwrap();
    let qv: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
    let kv: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
    let taps = win * win;
    let mut out = vec![f32::NEG_INFINITY; b * heads * n * taps];
    for p in 0..b * heads {
        for t in 0..n {
            for j in 0..taps {
                if let Some(s) = neighbor_of(h, w, win, t, j) {
                    out[(p * n + t) * taps + j] = (0..d)
                        .map(|c| qv[(p * n + t) * d + c] * kv[(p * n + s) * d + c])
                        .sum();
                }
            }
        }
    }
    Tensor::from_vec(out, (b, heads, n, taps), &Device::Cpu).unwrap()
}

/// The neighbourhood aggregate written out with loops, only neighbours inside the map.
fn neighborhood_aggregate_by_definition(
    wts: &Tensor,
    v: &Tensor,
    h: usize,
    w: usize,
    win: usize,
) -> Tensor {
    let (b, heads, n, d) = v.dims4().unwrap();
    let wv: Vec<f32> = wts.flatten_all().unwrap().to_vec1().unwrap();
    let vv: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
    let taps = win * win;
    let mut out = vec![0f32; b * heads * n * d];
    for p in 0..b * heads {
        for t in 0..n {
            for j in 0..taps {
                if let Some(s) = neighbor_of(h, w, win, t, j) {
                    let weight = wv[(p * n + t) * taps + j];
                    for c in 0..d {
                        out[(p * n + t) * d + c] += weight * vv[(p * n + s) * d + c];
                    }
                }
            }
        }
    }
    Tensor::from_vec(out, (b, heads, n, d), &Device::Cpu).unwrap()
}

/// Logits equal within `tol`, with `-inf` exactly where `want` has it.
fn assert_logits_match(got: &Tensor, want: &Tensor, tol: f32, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = if *b == f32::NEG_INFINITY {
            *a == f32::NEG_INFINITY
        } else {
            (a - b).abs() < tol
        };
        assert!(ok, "{what}: logit {i} is {a}, expected {b}");
    }
}

/// (batch, heads, h, w, d, window): odd sizes, maps narrower or shorter than the window, a
/// window wider than the whole map, `d` past the eight-lane dot, a 1x1 window.
const NEIGHBORHOOD_CASES: [(usize, usize, usize, usize, usize, usize); 8] = [
    (2, 2, 5, 7, 3, 3),
    (2, 2, 5, 7, 3, 5),
    (1, 2, 1, 4, 3, 3),
    (2, 1, 4, 1, 5, 5),
    (1, 3, 2, 3, 4, 7),
    (1, 2, 9, 11, 19, 3),
    (2, 1, 6, 5, 8, 1),
    (1, 1, 3, 3, 2, 15),
];

#[test]
fn neighborhood_ops_match_their_definition_and_composition() {
    for (b, heads, h, w, d, win) in NEIGHBORHOOD_CASES {
        let shape = [b, heads, h * w, d];
        let taps = win * win;
        let what = format!("{b}x{heads}x{h}x{w}x{d} window {win}");
        for (q, k) in [
            (randn(&shape), randn(&shape)),
            (tokens_transposed(shape), randn(&shape)),
            (randn(&shape), tokens_transposed(shape)),
        ] {
            let want = neighborhood_logits_by_definition(&q, &k, h, w, win);
            let fused =
                in_pools(|_| tokenmix_kernels::neighborhood_logits(&q, &k, h, w, win).unwrap());
            for got in &fused {
                assert_logits_match(got, &want, 1e-4, &format!("fused logits {what}"));
            }
            let composed = composed::neighborhood_logits(&q, &k, h, w, win).unwrap();
            assert_logits_match(&composed, &want, 1e-4, &format!("composed logits {what}"));

            // Weights: random, the logits themselves (-inf outside the map, which the
            // composition would turn into NaN times its zero padding if it read them), huge
            // weights outside the map, and a transposed view.
            let v = k.clone();
            let huge: Vec<f32> = want
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&x| if x == f32::NEG_INFINITY { 1e30 } else { x })
                .collect();
            let huge = Tensor::from_vec(huge, want.dims(), &Device::Cpu).unwrap();
            let weights = [
                randn(&[b, heads, h * w, taps]),
                fused[0].clone(),
                huge,
                tokens_transposed([b, heads, h * w, taps]),
            ];
            for wts in weights {
                let want = neighborhood_aggregate_by_definition(&wts, &v, h, w, win);
                let fused = in_pools(|_| {
                    tokenmix_kernels::neighborhood_aggregate(&wts, &v, h, w, win).unwrap()
                });
                let composed = composed::neighborhood_aggregate(&wts, &v, h, w, win).unwrap();
                for got in fused.iter().chain([&composed]) {
                    let diff = max_abs_diff(got, &want);
                    assert!(diff < 1e-4, "aggregate {what}: max diff {diff}");
                }
            }
        }
    }
}

#[test]
fn neighborhood_gradients_match_the_composition() {
    in_pools(|threads| {
        for (b, heads, h, w, d, win) in NEIGHBORHOOD_CASES {
            let shape = [b, heads, h * w, d];
            let what = format!("{b}x{heads}x{h}x{w}x{d} window {win} on {threads} threads");
            let taps = win * win;
            // The logits alone (their -inf entries make the probed sum -inf, but its
            // gradients stay finite: the padding passes none).
            check_grads(
                &format!("neighborhood_logits {what}"),
                &[randn(&shape), tokens_transposed(shape)],
                |t| tokenmix_kernels::neighborhood_logits(&t[0], &t[1], h, w, win),
                |t| composed::neighborhood_logits(&t[0], &t[1], h, w, win),
            );
            check_grads(
                &format!("neighborhood_aggregate {what}"),
                &[randn(&[b, heads, h * w, taps]), randn(&shape)],
                |t| tokenmix_kernels::neighborhood_aggregate(&t[0], &t[1], h, w, win),
                |t| composed::neighborhood_aggregate(&t[0], &t[1], h, w, win),
            );
            // The attention they make: softmax over the neighbours, then the aggregate.
            check_grads(
                &format!("neighborhood attention {what}"),
                &[randn(&shape), randn(&shape), randn(&shape)],
                |t| {
                    let logits = tokenmix_kernels::neighborhood_logits(&t[0], &t[1], h, w, win)?;
                    let attn = composed::softmax_last_dim(&logits)?;
                    tokenmix_kernels::neighborhood_aggregate(&attn, &t[2], h, w, win)
                },
                |t| {
                    let logits = composed::neighborhood_logits(&t[0], &t[1], h, w, win)?;
                    let attn = composed::softmax_last_dim(&logits)?;
                    composed::neighborhood_aggregate(&attn, &t[2], h, w, win)
                },
            );
        }
    });
}

#[test]
fn neighborhood_gradients_skip_the_padding() {
    // With weights that are infinite outside the map, the gradients are still finite and the
    // weights' gradient is zero there.
    let (h, w, win) = (2, 3, 5);
    let logits = tokenmix_kernels::neighborhood_logits(
        &randn(&[1, 2, 6, 4]),
        &randn(&[1, 2, 6, 4]),
        h,
        w,
        win,
    )
    .unwrap();
    let wts = Var::from_tensor(&logits.neg().unwrap()).unwrap();
    let v = Var::from_tensor(&randn(&[1, 2, 6, 4])).unwrap();
    let out = tokenmix_kernels::neighborhood_aggregate(wts.as_tensor(), v.as_tensor(), h, w, win)
        .unwrap();
    let g = out.sum_all().unwrap().backward().unwrap();
    let gw: Vec<f32> = g
        .get(wts.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let lv: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    for (gw, l) in gw.iter().zip(&lv) {
        assert!(gw.is_finite());
        if *l == f32::NEG_INFINITY {
            assert_eq!(*gw, 0.0);
        }
    }
    let gv = g.get(v.as_tensor()).unwrap();
    assert!(max_abs_diff(gv, &gv.zeros_like().unwrap()).is_finite());
}

#[test]
fn neighborhood_ops_reject_bad_shapes() {
    let q = randn(&[2, 3, 12, 4]);
    let err = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
    let e = err(tokenmix_kernels::neighborhood_logits(&q, &q, 3, 5, 3));
    assert!(
        e.contains("neighborhood_logits") && e.contains("(B, heads, 15, d)"),
        "{e}"
    );
    for win in [0, 2, 4, 17] {
        let e = err(tokenmix_kernels::neighborhood_logits(&q, &q, 3, 4, win));
        assert!(
            e.contains("window must be odd") && e.contains(&format!("got {win}")),
            "{e}"
        );
        let e = err(composed::neighborhood_logits(&q, &q, 3, 4, win));
        assert!(e.contains("window must be odd"), "{e}");
        let e = err(tokenmix_kernels::neighborhood_aggregate(
            &randn(&[2, 3, 12, 9]),
            &q,
            3,
            4,
            win,
        ));
        assert!(
            e.contains("neighborhood_aggregate") && e.contains("window"),
            "{e}"
        );
    }
    let e = err(tokenmix_kernels::neighborhood_logits(
        &q,
        &randn(&[2, 3, 12, 5]),
        3,
        4,
        3,
    ));
    assert!(e.contains(": k has shape [2, 3, 12, 5]"), "{e}");
    let e = err(tokenmix_kernels::neighborhood_logits(
        &randn(&[3, 12, 4]),
        &randn(&[3, 12, 4]),
        3,
        4,
        3,
    ));
    assert!(e.contains(": q has shape [3, 12, 4]"), "{e}");
    let e = err(tokenmix_kernels::neighborhood_aggregate(
        &randn(&[2, 3, 12, 8]),
        &q,
        3,
        4,
        3,
    ));
    assert!(
        e.contains(": weights has shape") && e.contains("(B, heads, 12, 9)"),
        "{e}"
    );
    let e = err(tokenmix_kernels::neighborhood_aggregate(
        &randn(&[2, 3, 12, 9]),
        &randn(&[2, 1, 12, 4]),
        3,
        4,
        3,
    ));
    assert!(e.contains(": v has shape [2, 1, 12, 4]"), "{e}");
    let e = err(composed::neighborhood_aggregate(
        &randn(&[2, 3, 12, 9]),
        &randn(&[2, 3, 11, 4]),
        3,
        4,
        3,
    ));
    assert!(e.contains(": v has shape"), "{e}");
    // The ops themselves check their operands too.
    let e = err(q.apply_op2(
        &q,
        tokenmix_kernels::NeighborhoodLogits::new(3, 5, 3).unwrap(),
    ));
    assert!(e.contains("neighborhood_logits"), "{e}");
    assert!(tokenmix_kernels::NeighborhoodAggregate::new(3, 4, 2).is_err());
}

use tokenmix_kernels::SsdPath;

/// The SSD scan step by step with loops, in f64: the state `S` `(P, N)` of each
/// `(batch, head)` decayed by `exp(ld_t)` and fed `x_t ⊗ b_t`, read out as `S_t c_t`.
fn ssd_by_recurrence(x: &Tensor, ld: &Tensor, b: &Tensor, c: &Tensor, reverse: bool) -> Tensor {
    let (bs, l, h, p) = x.dims4().unwrap();
    let (_, _, g, n) = b.dims4().unwrap();
    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (xv, ldv, bv, cv) = (v(x), v(ld), v(b), v(c));
    let mut y = vec![0f32; bs * l * h * p];
    for bi in 0..bs {
        for hi in 0..h {
            let gi = hi / (h / g);
            let mut s = vec![0f64; p * n];
            for step in 0..l {
                let t = if reverse { l - 1 - step } else { step };
                let tok = (bi * l + t) * h + hi;
                let a = (ldv[tok] as f64).exp();
                let bc = ((bi * l + t) * g + gi) * n;
                for pi in 0..p {
                    let mut acc = 0f64;
                    for k in 0..n {
                        let e = &mut s[pi * n + k];
                        *e = a * *e + xv[tok * p + pi] as f64 * bv[bc + k] as f64;
                        acc += *e * cv[bc + k] as f64;
                    }
                    y[tok * p + pi] = acc as f32;
                }
            }
        }
    }
    Tensor::from_vec(y, (bs, l, h, p), &Device::Cpu).unwrap()
}

/// `t` reversed along axis 1 (time).
fn flip_time(t: &Tensor) -> Tensor {
    let l = t.dim(1).unwrap();
    let idx: Vec<u32> = (0..l as u32).rev().collect();
    let idx = Tensor::from_vec(idx, l, &Device::Cpu).unwrap();
    t.contiguous().unwrap().index_select(&idx, 1).unwrap()
}

/// SSD operands `(x, log_decay, b, c)` for `(B, L, H, P, G, N)`, each a transposed view (not
/// contiguous) where `transposed`; log-decays mostly negative, some positive.
fn ssd_inputs(dims: [usize; 6], transposed: bool) -> [Tensor; 4] {
    let [bs, l, h, p, g, n] = dims;
    let view = |shape: [usize; 4]| -> Tensor {
        if transposed {
            let [a, b, c, d] = shape;
            randn(&[a, c, b, d]).transpose(1, 2).unwrap()
        } else {
            randn(&shape)
        }
    };
    let ld = if transposed {
        randn(&[bs, h, l]).transpose(1, 2).unwrap()
    } else {
        randn(&[bs, l, h])
    };
    let ld = ld.affine(0.3, -0.2).unwrap();
    [
        view([bs, l, h, p]),
        ld,
        view([bs, l, g, n]),
        view([bs, l, g, n]),
    ]
}

const SSD_LENGTHS: [usize; 5] = [1, 2, 7, 33, 130];

#[test]
fn ssd_scan_matches_the_step_recurrence_and_the_composition() {
    in_pools(|threads| {
        for l in SSD_LENGTHS {
            for g in [1, 2] {
                for transposed in [false, true] {
                    let [x, ld, b, c] = ssd_inputs([2, l, 4, 3, g, 5], transposed);
                    for reverse in [false, true] {
                        let what = format!(
                            "L={l} G={g} reverse={reverse} transposed={transposed} \
                             on {threads} threads"
                        );
                        let want = ssd_by_recurrence(&x, &ld, &b, &c, reverse);
                        let scale = 1.0
                            + want
                                .abs()
                                .unwrap()
                                .max_all()
                                .unwrap()
                                .to_scalar::<f32>()
                                .unwrap();
                        let composed = composed::ssd_scan(&x, &ld, &b, &c, reverse).unwrap();
                        let diff = max_abs_diff(&composed, &want) / scale;
                        assert!(diff < 1e-4, "composition {what}: relative diff {diff}");
                        for path in [SsdPath::Recurrent, SsdPath::Dual, SsdPath::Auto] {
                            let got =
                                tokenmix_kernels::ssd_scan_with(&x, &ld, &b, &c, reverse, path)
                                    .unwrap();
                            let diff = max_abs_diff(&got, &want) / scale;
                            assert!(diff < 1e-5, "{path:?} {what}: relative diff {diff}");
                        }
                        let public = tokenmix_kernels::ssd_scan(&x, &ld, &b, &c, reverse).unwrap();
                        assert!(max_abs_diff(&public, &want) / scale < 1e-5, "{what}");
                    }
                }
            }
        }
    });
}

#[test]
fn reverse_ssd_scan_is_the_forward_scan_of_the_flipped_sequence() {
    for l in SSD_LENGTHS {
        let [x, ld, b, c] = ssd_inputs([2, l, 4, 3, 2, 5], true);
        for path in [SsdPath::Recurrent, SsdPath::Dual] {
            let reverse = tokenmix_kernels::ssd_scan_with(&x, &ld, &b, &c, true, path).unwrap();
            let [fx, fld, fb, fc] = [&x, &ld, &b, &c].map(flip_time);
            let flipped =
                tokenmix_kernels::ssd_scan_with(&fx, &fld, &fb, &fc, false, path).unwrap();
            let d = max_abs_diff(&reverse, &flip_time(&flipped));
            assert!(d < 1e-5, "L={l} {path:?}: max diff {d}");
        }
    }
}

#[test]
fn ssd_scan_has_the_gradients_of_its_composition() {
    in_pools(|threads| {
        for l in [1, 2, 7, 33] {
            for g in [1, 2] {
                for reverse in [false, true] {
                    for path in [SsdPath::Recurrent, SsdPath::Dual] {
                        let inputs = ssd_inputs([2, l, 4, 3, g, 5], l == 7);
                        check_grads(
                            &format!("ssd_scan L={l} G={g} reverse={reverse} {path:?} on {threads} threads"),
                            &inputs,
                            |t| tokenmix_kernels::ssd_scan_with(&t[0], &t[1], &t[2], &t[3], reverse, path),
                            |t| composed::ssd_scan(&t[0], &t[1], &t[2], &t[3], reverse),
                        );
                    }
                }
            }
        }
    });
}

#[test]
fn ssd_scan_of_empty_operands_is_zeros() {
    for dims in [
        [0, 5, 4, 3, 2, 5],
        [2, 0, 4, 3, 2, 5],
        [2, 5, 4, 0, 2, 5],
        [2, 5, 4, 3, 2, 0],
        [2, 5, 0, 3, 1, 5],
    ] {
        let [x, ld, b, c] = ssd_inputs(dims, false);
        for reverse in [false, true] {
            let y = tokenmix_kernels::ssd_scan(&x, &ld, &b, &c, reverse).unwrap();
            assert_eq!(y.dims(), x.dims(), "{dims:?}");
            assert!(y
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|&v| v == 0.0));
            let y = composed::ssd_scan(&x, &ld, &b, &c, reverse).unwrap();
            assert_eq!(y.dims(), x.dims(), "{dims:?}");
        }
    }
    // N = 0 through the op itself: y and its gradients are 0.
    let [x, ld, b, c] = ssd_inputs([2, 5, 4, 3, 2, 0], false);
    let bc = Tensor::stack(&[&b, &c], 2).unwrap();
    let y = x
        .apply_op3(&ld, &bc, tokenmix_kernels::SsdScan::default())
        .unwrap();
    assert_eq!(max_abs_diff(&y, &x.zeros_like().unwrap()), 0.0);
}

#[test]
fn ssd_scan_rejects_bad_shapes() {
    let err = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
    let [x, ld, b, c] = ssd_inputs([2, 5, 4, 3, 2, 6], false);
    let scan = |x: &Tensor, ld: &Tensor, b: &Tensor, c: &Tensor| {
        err(tokenmix_kernels::ssd_scan(x, ld, b, c, false))
    };
    let e = scan(&x.flatten_from(2).unwrap(), &ld, &b, &c);
    assert!(
        e.contains("ssd_scan: x has shape [2, 5, 12], expected (B, L, H, P)"),
        "{e}"
    );
    let e = scan(&x, &ld.narrow(1, 0, 4).unwrap(), &b, &c);
    assert!(
        e.contains("log_decay has shape [2, 4, 4], expected (2, 5, 4)"),
        "{e}"
    );
    let e = scan(&x, &ld, &b.narrow(1, 0, 4).unwrap(), &c);
    assert!(
        e.contains("b has shape [2, 4, 2, 6], expected (2, 5, G, N)"),
        "{e}"
    );
    let e = scan(&x, &ld, &b, &c.narrow(3, 0, 5).unwrap());
    assert!(
        e.contains("c has shape [2, 5, 2, 5], expected [2, 5, 2, 6]"),
        "{e}"
    );
    let b3 = randn(&[2, 5, 3, 6]);
    let e = scan(&x, &ld, &b3, &b3);
    assert!(
        e.contains("the 3 groups of b and c do not divide the 4 heads"),
        "{e}"
    );
    let e = err(composed::ssd_scan(&x, &ld, &b3, &b3, true));
    assert!(e.contains("do not divide"), "{e}");
}

/// Timings of the two CPU forms (run with `--ignored --nocapture`): the measurements behind
/// [`tokenmix_kernels::dual_is_faster`].
#[test]
#[ignore]
fn ssd_scan_path_timing() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        for (p, n) in [(64, 64), (3, 5), (32, 16), (64, 128)] {
            for l in [8, 16, 33, 65, 128, 256, 512, 1024] {
                let [x, ld, b, c] = ssd_inputs([1, l, 4, p, 1, n], false);
                let time = |path| {
                    let run = || tokenmix_kernels::ssd_scan_with(&x, &ld, &b, &c, false, path).unwrap();
                    run();
                    let reps = (20_000_000 / (l * l * (p + n)).max(l * p * n)).clamp(3, 2000);
                    let start = std::time::Instant::now();
                    for _ in 0..reps {
                        run();
                    }
                    start.elapsed().as_secs_f64() / reps as f64 / 4.0 * 1e3
                };
                let (rec, dual) = (time(SsdPath::Recurrent), time(SsdPath::Dual));
                println!(
                    "P={p} N={n} L={l}: recurrence {rec:.4} ms/head, dual {dual:.4} ms/head, rule picks {}",
                    if tokenmix_kernels::dual_is_faster(l, p, n) { "dual" } else { "recurrence" }
                );
            }
        }
    });
}

/// The bf16 product (`LinearBf16`, AVX512_BF16) and the residual MLP built on it against the
/// f32 composition of the same bf16 values: odd sizes, a transposed (non-contiguous) input,
/// rayon pools of 1, 2 and 16 threads, and the gradients of all three operands. Where the CPU
/// lacks AVX512_BF16 the same calls take the widened f32 kernels, which this checks too.
#[test]
fn bf16_products_match_the_f32_composition_of_their_values() {
    use candle_core::DType;
    let bf = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
    let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let rel = |got: &Tensor, want: &Tensor| {
        max_abs_diff(&f32(got), want)
            / want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
    };
    for &(rows, k, n) in &[(1, 1, 1), (7, 33, 17), (50, 129, 200), (97, 48, 10)] {
        let x = bf(randn(&[k, rows])).t().unwrap();
        assert!(rows == 1 || !x.is_contiguous());
        let w = bf(randn(&[k, n]));
        let b = bf(randn(&[n]));
        let want = f32(&x)
            .matmul(&f32(&w))
            .unwrap()
            .broadcast_add(&f32(&b))
            .unwrap();
        for got in in_pools(|_| tokenmix_kernels::linear(&x, &w, &b).unwrap()) {
            assert_eq!(got.dtype(), DType::BF16);
            let err = rel(&got, &want);
            assert!(err < 1e-2, "linear ({rows}, {k}, {n}): {err}");
        }
        // Gradients against those of the f32 composition.
        let (xv, wv, bv) = (
            candle_core::Var::from_tensor(&x.contiguous().unwrap()).unwrap(),
            candle_core::Var::from_tensor(&w).unwrap(),
            candle_core::Var::from_tensor(&b).unwrap(),
        );
        let y = tokenmix_kernels::linear(xv.as_tensor(), wv.as_tensor(), bv.as_tensor()).unwrap();
        let grads = f32(&y)
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (x32, w32, b32) = (
            candle_core::Var::from_tensor(&f32(&x)).unwrap(),
            candle_core::Var::from_tensor(&f32(&w)).unwrap(),
            candle_core::Var::from_tensor(&f32(&b)).unwrap(),
        );
        let y32 = x32
            .matmul(w32.as_tensor())
            .unwrap()
            .broadcast_add(b32.as_tensor())
            .unwrap();
        let want_grads = y32.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for (v, v32, what) in [(&xv, &x32, "x"), (&wv, &w32, "w"), (&bv, &b32, "bias")] {
            let g = grads.get(v.as_tensor()).unwrap();
            let err = rel(g, want_grads.get(v32.as_tensor()).unwrap());
            assert!(
                err < 3e-2,
                "linear ({rows}, {k}, {n}) gradient of {what}: {err}"
            );
        }
        // The residual MLP with GELU between two bf16 products.
        let w2 = bf(randn(&[n, k]));
        let b2 = bf(randn(&[k]));
        let base = bf(randn(&[rows, k]));
        let mlp = MlpWeights {
            fc1: w.clone(),
            fc1_bias: Some(b.clone()),
            act: MlpActivation::Gelu,
            fc2: w2.clone(),
            fc2_bias: Some(b2.clone()),
        };
        let hidden = want.gelu_erf().unwrap();
        let hidden = f32(&bf(hidden));
        let want = (hidden
            .matmul(&f32(&w2))
            .unwrap()
            .broadcast_add(&f32(&b2))
            .unwrap()
            + f32(&base))
        .unwrap();
        let got = tokenmix_kernels::residual_mlp(&x, &base, &mlp).unwrap();
        let err = rel(&got, &want);
        assert!(err < 2e-2, "residual_mlp ({rows}, {k}, {n}): {err}");
    }
}

/// The bf16 row kernels (LayerNorm over the last axis, exact GELU, StarReLU) and the bf16
/// block sum against the f32 composition of the same bf16 values: odd channel counts, element
/// counts that are no multiple of a row, a transposed (non-contiguous) input.
#[test]
fn bf16_row_ops_match_the_f32_composition_of_their_values() {
    use candle_core::DType;
    use tokenmix_kernels::NormAxes;
    let bf = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
    let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let check = |got: &Tensor, want: &Tensor, what: &str| {
        assert_eq!(got.dtype(), DType::BF16, "{what}");
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1e-3);
        let err = max_abs_diff(&f32(got), want) / scale;
        assert!(err < 1e-2, "{what}: {err}");
    };
    for &(rows, c) in &[(1, 1), (5, 3), (37, 19), (64, 96), (3, 4099)] {
        let x = bf(randn(&[c, rows])).t().unwrap();
        assert!(rows == 1 || c == 1 || !x.is_contiguous());
        let w = bf((randn(&[c]) + 1.0).unwrap());
        let b = bf(randn(&[c]));
        let got =
            tokenmix_kernels::channel_norm(&x, &w, Some(&b), NormAxes::Channels, 1e-6, 1).unwrap();
        let want = composed::channel_norm(
            &f32(&x),
            &f32(&w),
            Some(&f32(&b)),
            NormAxes::Channels,
            1e-6,
            1,
        )
        .unwrap();
        check(&got, &want, &format!("layer norm ({rows}, {c})"));
        check(
            &tokenmix_kernels::gelu(&x).unwrap(),
            &f32(&x).gelu_erf().unwrap(),
            "gelu",
        );
        let (s, t) = (
            bf(Tensor::new(&[0.9f32], &Device::Cpu).unwrap()),
            bf(Tensor::new(&[-0.2f32], &Device::Cpu).unwrap()),
        );
        let want = composed::star_relu(&f32(&x), &f32(&s), &f32(&t)).unwrap();
        check(
            &tokenmix_kernels::star_relu(&x, &s, &t).unwrap(),
            &want,
            "star_relu",
        );
        let y = bf(randn(&[rows, c]));
        let got = tokenmix_kernels::scaled_add(&x, Some(&w), &y, Some(&b)).unwrap();
        let want = (f32(&x).broadcast_mul(&f32(&w)).unwrap()
            + f32(&y).broadcast_mul(&f32(&b)).unwrap())
        .unwrap();
        check(&got, &want, "scaled_add");
        let got = tokenmix_kernels::scaled_add(&x, None, &y, Some(&b)).unwrap();
        let want = (f32(&x) + f32(&y).broadcast_mul(&f32(&b)).unwrap()).unwrap();
        check(&got, &want, "scaled_add without the first scale");
    }
}
