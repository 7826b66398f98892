//! The gradient of every fused op family against central finite differences of its own forward.
//!
//! The fused ops compute in f32 only, so the check is a directional one that stays accurate in
//! f32: for `f(x) = sum(w ⊙ op(x))` with a random `w` and a random direction `d` per input, the
//! autograd projection `⟨∇f, d⟩` must match `(f(x + εd) - f(x - εd)) / 2ε`, both sums taken in
//! f64, Richardson-extrapolated from steps ε and ε/2 so that the ε² truncation term cancels
//! (without it, LayerNorm over 5 channels was off by 2e-3 at ε = 1e-2). What remains is the f32
//! rounding of the outputs, about `6e-8 · sqrt(len) / ε` absolute: the worst case measured is
//! 4e-4 relative, at most 0.16 of the tolerance of [`RTOL`] relative plus [`ATOL`] times
//! `|∇f|`, while backwards broken on purpose (one gradient scaled by 1.01, or 1.1 for the norms'
//! `dx`) failed in every family. The inputs come from a fixed-seed generator, so a case that
//! passes once passes every time.

use candle_core::{Device, Result, Tensor, Var};
use tokenmix_kernels::{MlpActivation, MlpWeights, NormAxes, Window};

/// Step of the central differences.
const EPS: f64 = 1e-2;

/// Allowed error relative to the larger of the two projections.
const RTOL: f64 = 1e-3;

/// Allowed error relative to the gradient's norm (for a projection that is small by chance).
const ATOL: f64 = 1e-4;

/// SplitMix64 with Box-Muller normals: reproducible inputs, directions and weights.
struct Rng(u64);

impl Rng {
    fn new(name: &str) -> Self {
        // FNV-1a of the case name: each case its own stream, the same on every run.
        let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `(0, 1]`.
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// A tensor of independent `N(0, std²)` values.
    fn randn(&mut self, shape: &[usize], std: f64) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (self.normal() * std) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

/// `⟨a, b⟩` summed in f64.
fn dot(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Checks the gradient of `sum(w ⊙ op(inputs))` with respect to each input in `wrt` against
/// central differences along a random direction.
fn check(name: &str, inputs: &[Tensor], wrt: &[usize], op: impl Fn(&[Tensor]) -> Result<Tensor>) {
    assert!(tokenmix_kernels::fused_enabled(), "TOKENMIX_FUSED is off");
    let mut rng = Rng::new(name);
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = op(&ts).unwrap();
    let w = rng.randn(out.dims(), 1.0);
    let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let f = |args: &[Tensor]| dot(&op(args).unwrap(), &w);
    for &i in wrt {
        let g = grads
            .get(&ts[i])
            .unwrap_or_else(|| panic!("{name}: no gradient for input {i}"));
        let d = rng.randn(inputs[i].dims(), 1.0);
        let analytic = dot(g, &d);
        let shifted = |step: f64| {
            let mut args = inputs.to_vec();
            args[i] = (&inputs[i] + (&d * step).unwrap()).unwrap();
            f(&args)
        };
        let central = |h: f64| (shifted(h) - shifted(-h)) / (2.0 * h);
        // Richardson's extrapolation of two central differences cancels their ε² terms.
        let numeric = (4.0 * central(EPS / 2.0) - central(EPS)) / 3.0;
        let g_norm = dot(g, g).sqrt();
        let err = (analytic - numeric).abs();
        let tol = RTOL * analytic.abs().max(numeric.abs()) + ATOL * g_norm;
        assert!(
            err <= tol,
            "{name}: input {i}: autograd {analytic:.6e}, finite differences {numeric:.6e}, \
             error {err:.3e} > {tol:.3e} (|grad| {g_norm:.3e})"
        );
    }
}

#[test]
fn activations_match_finite_differences() {
    let mut rng = Rng::new("activations");
    let x = rng.randn(&[2, 3, 5, 4], 1.5);
    check("gelu", std::slice::from_ref(&x), &[0], |t| {
        tokenmix_kernels::gelu(&t[0])
    });
    check(
        "bias_gelu",
        &[x.clone(), rng.randn(&[3], 1.0)],
        &[0, 1],
        |t| tokenmix_kernels::bias_gelu(&t[0], &t[1], 1),
    );
    check(
        "bias_gelu last axis",
        &[rng.randn(&[3, 7], 1.5), rng.randn(&[7], 1.0)],
        &[0, 1],
        |t| tokenmix_kernels::bias_gelu(&t[0], &t[1], 1),
    );
    let (scale, bias) = (rng.randn(&[1], 1.0), rng.randn(&[1], 1.0));
    check("star_relu", &[x.clone(), scale, bias], &[0, 1, 2], |t| {
        tokenmix_kernels::star_relu(&t[0], &t[1], &t[2])
    });
    check("squared_relu", std::slice::from_ref(&x), &[0], |t| {
        tokenmix_kernels::squared_relu(&t[0])
    });
    check(
        "gelu_gate",
        &[rng.randn(&[6, 14], 1.5), rng.randn(&[6, 3], 1.0)],
        &[0, 1],
        |t| tokenmix_kernels::gelu_gate(&t[0], &t[1], 7),
    );
}

#[test]
fn channel_norms_match_finite_differences() {
    let mut rng = Rng::new("norms");
    // (what, x, channel axis): NCHW maps, channel-last maps, tokens.
    let cases = [
        ("NCHW", rng.randn(&[2, 5, 3, 4], 1.0), 1),
        ("NHWC", rng.randn(&[2, 3, 4, 5], 1.0), 3),
        ("tokens", rng.randn(&[2, 7, 6], 1.0), 2),
    ];
    for (what, x, axis) in cases {
        let c = x.dim(axis).unwrap();
        let weight = (rng.randn(&[c], 0.5) + 1.0).unwrap();
        let bias = rng.randn(&[c], 1.0);
        for axes in [NormAxes::Channels, NormAxes::AllButBatch] {
            check(
                &format!("{axes:?} {what}"),
                &[x.clone(), weight.clone(), bias.clone()],
                &[0, 1, 2],
                |t| tokenmix_kernels::channel_norm(&t[0], &t[1], Some(&t[2]), axes, 1e-5, axis),
            );
        }
    }
}

#[test]
fn depthwise_convs_match_finite_differences() {
    let mut rng = Rng::new("depthwise");
    // (k, stride, padding): same-size, wide, strided with an odd input.
    for (k, s, p) in [(3, 1, 1), (7, 1, 3), (3, 2, 1)] {
        let (c, h, w) = (3, 7, 6);
        check(
            &format!("depthwise NCHW k{k} s{s} p{p}"),
            &[
                rng.randn(&[2, c, h, w], 1.0),
                rng.randn(&[c, 1, k, k], 1.0),
                rng.randn(&[c], 1.0),
            ],
            &[0, 1, 2],
            |t| tokenmix_kernels::depthwise_conv2d(&t[0], &t[1], Some(&t[2]), s, p),
        );
        // 18 channels: one whole 16-channel block and a remainder.
        let c = 18;
        check(
            &format!("depthwise NHWC k{k} s{s} p{p}"),
            &[
                rng.randn(&[2, h, w, c], 1.0),
                rng.randn(&[c, 1, k, k], 1.0),
                rng.randn(&[c], 1.0),
            ],
            &[0, 1, 2],
            |t| tokenmix_kernels::depthwise_conv2d_nhwc(&t[0], &t[1], Some(&t[2]), s, p),
        );
    }
}

#[test]
fn pool_mixers_match_finite_differences() {
    let mut rng = Rng::new("pool");
    for k in [3, 5] {
        check(
            &format!("pool_mixer k{k}"),
            &[rng.randn(&[2, 3, 6, 5], 1.0)],
            &[0],
            |t| tokenmix_kernels::pool_mixer(&t[0], k),
        );
        check(
            &format!("pool_mixer_nhwc k{k}"),
            &[rng.randn(&[2, 6, 5, 3], 1.0)],
            &[0],
            |t| tokenmix_kernels::pool_mixer_nhwc(&t[0], k),
        );
    }
}

#[test]
fn haar_dwt_and_conv_transpose_match_finite_differences() {
    let mut rng = Rng::new("haar");
    for (h, w) in [(6, 4), (5, 7)] {
        check(
            &format!("haar_dwt {h}x{w}"),
            &[rng.randn(&[2, h, w, 3], 1.0)],
            &[0],
            |t| tokenmix_kernels::haar_dwt(&t[0]),
        );
        check(
            &format!("haar_dwt_adjoint {h}x{w}"),
            &[rng.randn(&[2, h.div_ceil(2), w.div_ceil(2), 8], 1.0)],
            &[0],
            |t| tokenmix_kernels::haar_dwt_adjoint(&t[0], h, w),
        );
    }
    let window = Window {
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    check(
        "conv_transpose2d_nhwc k4 s2 p1",
        &[
            rng.randn(&[2, 3, 5, 4], 1.0),
            rng.randn(&[4, 16 * 3], 0.5),
            rng.randn(&[3], 1.0),
        ],
        &[0, 1, 2],
        |t| tokenmix_kernels::conv_transpose2d_nhwc(&t[0], &t[1], Some(&t[2]), window),
    );
}

#[test]
fn dense_conv_and_linear_match_finite_differences() {
    let mut rng = Rng::new("dense");
    // (h, w, cin, cout, k, stride, padding): the 1x1 path (a reshape and a linear) and the
    // patch-gathering path.
    for (h, w, cin, cout, k, s, p) in [(4, 5, 3, 4, 1, 1, 0), (8, 7, 3, 5, 3, 2, 1)] {
        let window = Window {
            kernel: k,
            stride: s,
            padding: p,
        };
        check(
            &format!("conv2d_nhwc k{k} s{s} p{p}"),
            &[
                rng.randn(&[2, h, w, cin], 1.0),
                rng.randn(&[k * k * cin, cout], 0.5),
                rng.randn(&[cout], 1.0),
            ],
            &[0, 1, 2],
            |t| tokenmix_kernels::conv2d_nhwc(&t[0], &t[1], Some(&t[2]), window),
        );
    }
    check(
        "linear",
        &[
            rng.randn(&[2, 9, 7], 1.0),
            rng.randn(&[7, 5], 0.5),
            rng.randn(&[5], 1.0),
        ],
        &[0, 1, 2],
        |t| tokenmix_kernels::linear(&t[0], &t[1], &t[2]),
    );
}

#[test]
fn attention_core_matches_finite_differences() {
    let mut rng = Rng::new("attention");
    // (batch, tokens, heads, head_dim): small, and more tokens than one 128-row score block.
    for (b, n, h, d) in [(2, 7, 3, 4), (1, 130, 2, 3)] {
        check(
            &format!("self_attention {b}x{n}x{h}x{d}"),
            &[rng.randn(&[b, n, 3, h, d], 1.0)],
            &[0],
            |t| tokenmix_kernels::self_attention(&t[0], 0.5),
        );
    }
}

#[test]
fn residual_mlp_matches_finite_differences() {
    let mut rng = Rng::new("residual_mlp");
    let star = MlpActivation::StarRelu {
        scale: 0.8,
        bias: -0.3,
    };
    // (rows, C, H, N, activation): one block; enough rows for several blocks on 1-4 threads.
    for (rows, c, h, n, act) in [
        (5, 3, 7, 3, MlpActivation::Gelu),
        (7, 4, 9, 6, star),
        (600, 8, 1100, 6, MlpActivation::Gelu),
    ] {
        let weights = MlpWeights {
            fc1: rng.randn(&[c, h], 1.0 / (c as f64).sqrt()),
            fc1_bias: Some(rng.randn(&[h], 1.0)),
            act,
            fc2: rng.randn(&[h, n], 1.0 / (h as f64).sqrt()),
            fc2_bias: Some(rng.randn(&[n], 1.0)),
        };
        check(
            &format!("residual_mlp {rows}x{c}x{h}x{n} {act:?}"),
            &[rng.randn(&[rows, c], 1.0), rng.randn(&[rows, n], 1.0)],
            &[0, 1],
            |t| tokenmix_kernels::residual_mlp(&t[0], &t[1], &weights),
        );
    }
}

#[test]
fn mix_shift_matches_finite_differences() {
    let mut rng = Rng::new("mix_shift");
    let shifts = [1, -1, 2];
    check(
        "mix_shift",
        &[
            rng.randn(&[2, 3, 5, 4], 1.0),
            rng.randn(&[2, 3, 3, 3], 1.0),
            rng.randn(&[2, 3], 1.0),
        ],
        &[0, 1, 2],
        |t| tokenmix_kernels::mix_shift(&t[0], &t[1], &t[2], &shifts),
    );
}

#[test]
fn spectral_ops_match_finite_differences() {
    let mut rng = Rng::new("spectral");
    // Odd and even widths: the even one has a Nyquist column.
    for (h, w) in [(5, 6), (4, 7)] {
        let c = 3;
        check(
            &format!("spectral_filter {h}x{w}"),
            &[
                rng.randn(&[2, h, w, c], 1.0),
                rng.randn(&[h, w / 2 + 1, c, 2], 1.0),
            ],
            &[0, 1],
            |t| tokenmix_kernels::spectral_filter(&t[0], &t[1]),
        );
        check(
            &format!("rfft2_ortho {h}x{w}"),
            &[rng.randn(&[2, c, h, w], 1.0)],
            &[0],
            |t| {
                let (re, im) = tokenmix_kernels::rfft2_ortho(&t[0])?;
                Tensor::cat(&[re, im], 0)
            },
        );
        let half = [2, c, h, w / 2 + 1];
        check(
            &format!("irfft2_ortho {h}x{w}"),
            &[rng.randn(&half, 1.0), rng.randn(&half, 1.0)],
            &[0, 1],
            |t| tokenmix_kernels::irfft2_ortho(&t[0], &t[1], w),
        );
    }
}

#[test]
fn selective_scan_matches_finite_differences() {
    let mut rng = Rng::new("scan");
    let (b, d, l, n) = (2, 3, 9, 4);
    let delta = (rng.randn(&[b, d, l], 0.5).exp().unwrap() * 0.3).unwrap();
    let a = rng.randn(&[d, n], 1.0).abs().unwrap().neg().unwrap();
    check(
        "selective_scan",
        &[
            rng.randn(&[b, d, l], 1.0),
            delta,
            a,
            rng.randn(&[b, n, l], 1.0),
            rng.randn(&[b, n, l], 1.0),
        ],
        &[0, 1, 2, 3, 4],
        |t| tokenmix_kernels::selective_scan(&t[0], &t[1], &t[2], &t[3], &t[4]),
    );
}

#[test]
fn neighborhood_attention_matches_finite_differences() {
    let mut rng = Rng::new("neighborhood");
    for (h, w, win) in [(5, 7, 3), (4, 3, 5), (1, 4, 3)] {
        let shape = [2, 2, h * w, 3];
        check(
            &format!("neighborhood_aggregate {h}x{w} window {win}"),
            &[
                rng.randn(&[2, 2, h * w, win * win], 1.0),
                rng.randn(&shape, 1.0),
            ],
            &[0, 1],
            |t| tokenmix_kernels::neighborhood_aggregate(&t[0], &t[1], h, w, win),
        );
        // The logits through exp (exp(-inf) = 0 outside the map), and the whole attention.
        check(
            &format!("neighborhood_logits {h}x{w} window {win}"),
            &[rng.randn(&shape, 0.5), rng.randn(&shape, 0.5)],
            &[0, 1],
            |t| tokenmix_kernels::neighborhood_logits(&t[0], &t[1], h, w, win)?.exp(),
        );
        check(
            &format!("neighborhood attention {h}x{w} window {win}"),
            &[
                rng.randn(&shape, 1.0),
                rng.randn(&shape, 1.0),
                rng.randn(&shape, 1.0),
            ],
            &[0, 1, 2],
            |t| {
                let logits = tokenmix_kernels::neighborhood_logits(&t[0], &t[1], h, w, win)?;
                let attn = tokenmix_kernels::composed::softmax_last_dim(&logits)?;
                tokenmix_kernels::neighborhood_aggregate(&attn, &t[2], h, w, win)
            },
        );
    }
}

#[test]
fn ssd_scan_matches_finite_differences() {
    let mut rng = Rng::new("ssd");
    for (l, g) in [(9, 2), (5, 1), (1, 1)] {
        let (b, h, p, n) = (2, 4, 3, 5);
        for reverse in [false, true] {
            for path in [
                tokenmix_kernels::SsdPath::Recurrent,
                tokenmix_kernels::SsdPath::Dual,
            ] {
                // Log-decays mostly negative, some positive.
                let ld = rng.randn(&[b, l, h], 0.3).affine(1.0, -0.2).unwrap();
                check(
                    &format!("ssd_scan L={l} G={g} reverse={reverse} {path:?}"),
                    &[
                        rng.randn(&[b, l, h, p], 1.0),
                        ld,
                        rng.randn(&[b, l, g, n], 1.0),
                        rng.randn(&[b, l, g, n], 1.0),
                    ],
                    &[0, 1, 2, 3],
                    |t| tokenmix_kernels::ssd_scan_with(&t[0], &t[1], &t[2], &t[3], reverse, path),
                );
            }
        }
    }
}
