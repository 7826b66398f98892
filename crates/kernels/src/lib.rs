//! Fused ops for the hot token-mixing paths of tokenmix, as candle custom ops.
//!
//! Each op has one module holding its fused CPU implementation and, in [`composed`], the plain
//! composition of candle ops it must agree with. Every fused op has a backward pass, so models
//! train on the fused path (channel norms analytically, the others by differentiating their
//! composition). The public functions pick the fused path for
//! contiguous-able f32 CPU tensors and, with the `cuda` feature, for f32 / f16 / bf16 CUDA
//! tensors (kernels in `src/cuda/*.cu`, compiled to PTX by `build.rs`), and the composed one
//! otherwise; setting the environment variable `TOKENMIX_FUSED=0` forces the composed path
//! everywhere (for debugging).
//!
//! Ops:
//! * [`depthwise_conv2d`]: per-channel `k x k` convolution with stride and zero padding;
//!   [`depthwise_conv2d_nhwc`] the same on channel-last tensors.
//! * [`conv2d_nhwc`]: dense convolution of channel-last maps (stems and downsamplers) as
//!   patches times one weight matrix ([`conv_weight_matrix`]).
//! * [`gelu_gate`]: MambaOut's `gelu(g) * concat(i, conv)` in one pass.
//! * [`linear`]: `x w + b`, the output starting as the bias (no zero fill, no bias pass).
//! * [`residual_mlp`]: a block's channel MLP and the residual add after it,
//!   `base + act(x W1 + b1) W2 + b2`, a block of rows at a time (inference: the weights are
//!   constants).
//! * [`self_attention`]: the multi-head attention core `softmax(scale · q kᵀ) v` on a packed
//!   `qkv` projection.
//! * [`pool_mixer`]: PoolFormer's `avg_pool(k, 1, k/2, count_include_pad=False)(x) - x`;
//!   [`pool_mixer_nhwc`] the same on channel-last tensors.
//! * [`channel_norm`]: LayerNorm over channels (NCHW or tokens) and GroupNorm with one group.
//! * [`spectral_filter`]: GFNet's global filter `irfft2(rfft2(x) * W)` (realfft/rustfft).
//! * [`selective_scan`]: Mamba's selective state-space recurrence.
//! * [`ssd_scan`]: the Mamba-2 SSD scan (one scalar decay per head) Hydra runs forward and
//!   reversed, as the state recurrence or, for short sequences, its quadratic dual form
//!   ([`ssd_scan_with`] picks the form); forward and backward fused on the CPU, the forward on
//!   CUDA (`src/cuda/ssd.cu`, the backward there by the composition).
//! * [`mix_shift`]: MS-MLP's channel-group shifts with their depthwise convolutions.
//! * [`gelu`]: exact (erf) GELU with a vectorized erf; [`bias_gelu`]: a bias add and GELU in one
//!   pass; [`star_relu`]: StarReLU in one pass; [`squared_relu`]: SquaredReLU in one pass.
//! * [`rfft2_ortho`] / [`irfft2_ortho`]: orthonormal 2-D real FFTs (realfft/rustfft).
//! * [`haar_dwt`]: WaveMix's one-level 2-D Haar wavelet transform of channel-last maps, bands
//!   in its channel order; [`haar_dwt_adjoint`] its adjoint (and inverse).
//! * [`neighborhood_logits`] / [`neighborhood_aggregate`]: TransNeXt's sliding-window attention
//!   over the `w x w` neighbours of every token of a map (the logits `q · k` of each neighbour,
//!   `-inf` at padding, and the weighted sum of the neighbours' values), with no unfolded keys
//!   or values in memory; forward and backward fused on the CPU and on CUDA.
//! * [`conv_transpose2d_nhwc`]: transposed convolution of channel-last maps as one matrix
//!   product and a scatter of its rows ([`conv_transpose_weight_matrix`]).
#![deny(missing_docs)]

mod activation;
mod attention;
mod bf16;
mod cast;
pub mod composed;
mod conv;
#[cfg(feature = "cuda")]
mod cuda;
mod depthwise;
mod error;
mod grad;
mod mlp;
mod neighborhood;
mod norm;
mod pool;
mod ptr;
pub mod resize;
mod scan;
mod shift;
mod simd;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod sizes;
mod spectral;
mod ssd;
mod wavelet;

use candle_core::{DType, Device, Result, Tensor};
use std::sync::OnceLock;

pub use activation::{Gelu, GeluGate, StarRelu};
pub use attention::SelfAttention;
pub use bf16::{
    has_avx512_bf16, Activation as Bf16Activation, LinearBf16, ResidualMlpBf16, RowOp, RowsBf16,
    ScaledAddBf16,
};
pub use cast::{cast, narrow_f32, Cast};
pub use conv::{Im2ColNhwc, Window};
pub use depthwise::{DepthwiseConv2d, DepthwiseConv2dBias, DepthwiseConv2dNhwc};
pub use error::KernelError;
pub use mlp::{Linear, MlpActivation, MlpPlan, MlpWeights, ResidualMlp};
pub use neighborhood::{NeighborhoodAggregate, NeighborhoodLogits, MAX_NEIGHBORHOOD_WINDOW};
pub use norm::{ChannelNorm, NormAxes};
pub use pool::{PoolMixer, PoolMixerNhwc};
pub use scan::SelectiveScan;
pub use shift::MixShiftOp;
pub use spectral::{Irfft2, Rfft2, SpectralFilter};
pub use ssd::{dual_is_faster, SsdPath, SsdScan};
pub use wavelet::{HaarDwt, HaarDwtAdjoint};

/// Whether fused kernels are enabled (`TOKENMIX_FUSED` is not `0`/`false`/`off`).
pub fn fused_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        !matches!(
            std::env::var("TOKENMIX_FUSED").as_deref(),
            Ok("0") | Ok("false") | Ok("off")
        )
    })
}

/// Whether `x` takes the fused path: f32 on the CPU; f32, f16 or bf16 on a CUDA device.
fn use_fused(x: &Tensor) -> bool {
    fused_enabled()
        && x.elem_count() > 0
        && match x.device() {
            Device::Cpu => x.dtype() == DType::F32,
            Device::Cuda(_) => {
                cfg!(feature = "cuda") && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
            }
            _ => false,
        }
}

/// Whether every operand has `x`'s dtype (the fused ops take one dtype).
fn same_dtype(x: &Tensor, others: &[&Tensor]) -> bool {
    others.iter().all(|t| t.dtype() == x.dtype())
}

/// The dtype of `x` when it is a bf16 or f16 CPU tensor: the CPU kernels (and candle's CPU
/// convolutions) compute in f32, so each op runs on f32 copies of such operands and returns
/// its result in this dtype.
fn half_on_cpu(x: &Tensor) -> Option<DType> {
    (x.device().is_cpu() && matches!(x.dtype(), DType::BF16 | DType::F16)).then(|| x.dtype())
}

/// Whether `x` and `others` are bf16 CPU tensors and the CPU multiplies bf16 natively
/// (AVX512_BF16): then products run in [`LinearBf16`] rather than widened to f32.
fn bf16_products(x: &Tensor, others: &[&Tensor]) -> bool {
    x.dtype() == DType::BF16
        && x.device().is_cpu()
        && fused_enabled()
        && bf16::has_avx512_bf16()
        && same_dtype(x, others)
}

/// A kernel's f32 result returned in a half-precision model's dtype.
trait Narrowed {
    /// `self` converted to `dtype` by [`cast`].
    fn narrowed(&self, dtype: DType) -> Result<Tensor>;
}

impl Narrowed for Tensor {
    fn narrowed(&self, dtype: DType) -> Result<Tensor> {
        cast(self, dtype)
    }
}

/// `x w` for rows `x` `(M, K)` and `w` `(K, N)`: candle's matmul, or [`LinearBf16`] (with a
/// zero bias) for bf16 CPU operands on a CPU with AVX512_BF16.
pub fn matmul_rows(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if bf16_products(x, &[w]) {
        let zero = Tensor::zeros(w.dim(1)?, DType::BF16, x.device())?;
        return linear(x, w, &zero);
    }
    x.matmul(w)
}

/// `gelu(x w + bias)` (exact GELU) for `x` `(..., K)`: one pass of [`LinearBf16`] for bf16
/// CPU operands on a CPU with AVX512_BF16, else [`linear`] without its bias and
/// [`bias_gelu`].
pub fn linear_gelu(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if bf16_products(x, &[w, bias]) {
        return linear_bf16(x, w, bias, bf16::Activation::Gelu);
    }
    let y = linear(x, w, &bias.zeros_like()?)?;
    bias_gelu(&y, bias, y.rank() - 1)
}

/// `a * a_scale + b * b_scale` for `a`, `b` of one shape `(..., C)` and optional per-channel
/// scales `[C]` over the last axis (a block's res-scaled shortcut plus its layer-scaled
/// branch): in one pass with f32 math for bf16 CPU tensors outside autograd
/// ([`ScaledAddBf16`]), else as candle's broadcast products and sum.
pub fn scaled_add(
    a: &Tensor,
    a_scale: Option<&Tensor>,
    b: &Tensor,
    b_scale: Option<&Tensor>,
) -> Result<Tensor> {
    let half_cpu = a.dtype() == DType::BF16 && a.device().is_cpu() && fused_enabled();
    if half_cpu && b.dtype() == DType::BF16 && !a.track_op() && !b.track_op() {
        let scales = |s: Option<&Tensor>| -> Result<Option<Vec<f32>>> {
            s.map(|s| s.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>())
                .transpose()
        };
        let op = ScaledAddBf16 {
            a_scale: scales(a_scale)?,
            b_scale: scales(b_scale)?,
        };
        return a.contiguous()?.apply_op2(&b.contiguous()?, op);
    }
    let scaled = |t: &Tensor, s: Option<&Tensor>| match s {
        Some(s) => t.broadcast_mul(s),
        None => Ok(t.clone()),
    };
    scaled(a, a_scale)? + scaled(b, b_scale)?
}

/// Whether `x` is a bf16 CPU tensor outside autograd, which [`RowsBf16`] takes.
fn bf16_rows(x: &Tensor) -> bool {
    x.dtype() == DType::BF16 && x.device().is_cpu() && fused_enabled() && !x.track_op()
}

/// [`RowsBf16`] on `x` with rows of `row` values.
fn rows_bf16(x: &Tensor, row: usize, op: RowOp) -> Result<Tensor> {
    x.contiguous()?.apply_op1(RowsBf16 { row, op })
}

/// `act(x w + bias)` by [`LinearBf16`] for `x` `(..., K)` (any layout), `w` `(K, N)`, giving
/// `(..., N)`; the caller has checked [`bf16_products`].
fn linear_bf16(x: &Tensor, w: &Tensor, bias: &Tensor, act: bf16::Activation) -> Result<Tensor> {
    let (rows, k, n) = mlp::linear_dims(x.shape(), w.shape(), bias.shape())?;
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    x.reshape((rows, k))?
        .contiguous()?
        .apply_op3(&w.contiguous()?, &bias.contiguous()?, LinearBf16 { act })?
        .reshape(out_dims)
}

/// `t` in f32.
fn widened(t: &Tensor) -> Result<Tensor> {
    cast(t, DType::F32)
}

/// `t`, if any, in f32.
fn widened_opt(t: Option<&Tensor>) -> Result<Option<Tensor>> {
    t.map(widened).transpose()
}

/// A dense 2-D convolution `(B, Cin, H, W) -> (B, Cout, Ho, Wo)`, candle's `conv2d` with its
/// arguments; bf16 and f16 CPU tensors are convolved in f32 (candle's CPU convolution has no
/// bf16 product) and the result returned in their dtype.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    match half_on_cpu(x) {
        Some(half) => widened(x)?
            .conv2d(&widened(weight)?, padding, stride, dilation, groups)?
            .narrowed(half),
        None => x.conv2d(weight, padding, stride, dilation, groups),
    }
}

/// Depthwise 2-D convolution of `x` `(B, C, H, W)` with `weight` `(C, 1, k, k)` and optional
/// `bias` `(C)`: output `(B, C, Ho, Wo)` with `Ho = (H + 2 * padding - k) / stride + 1`.
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(x) {
        return depthwise_conv2d(
            &widened(x)?,
            &widened(weight)?,
            widened_opt(bias)?.as_ref(),
            stride,
            padding,
        )?
        .narrowed(half);
    }
    let fused = use_fused(x) && same_dtype(x, &[weight]);
    if let (true, true, Some(b)) = (fused, x.device().is_cpu(), bias) {
        if b.dtype() == x.dtype() {
            let op = DepthwiseConv2dBias::new(stride, padding)?;
            return x
                .contiguous()?
                .apply_op3(&weight.contiguous()?, &b.contiguous()?, op);
        }
    }
    let y = if fused {
        let op = DepthwiseConv2d::new(stride, padding)?;
        x.contiguous()?.apply_op2(&weight.contiguous()?, op)?
    } else {
        composed::depthwise_conv2d(x, weight, stride, padding)?
    };
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}

/// Depthwise 2-D convolution of a channel-last `x` `(B, H, W, C)` with `weight` `(C, 1, k, k)`
/// and optional `bias` `(C)`: output `(B, Ho, Wo, C)`, the values of [`depthwise_conv2d`] on
/// `x` permuted to `(B, C, H, W)`, permuted back. On the CPU the fused kernel reads the
/// channel-last layout directly; elsewhere the input is permuted around [`depthwise_conv2d`].
pub fn depthwise_conv2d_nhwc(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(x) {
        return depthwise_conv2d_nhwc(
            &widened(x)?,
            &widened(weight)?,
            widened_opt(bias)?.as_ref(),
            stride,
            padding,
        )?
        .narrowed(half);
    }
    if x.device().is_cpu() && use_fused(x) && same_dtype(x, &[weight]) {
        let op = DepthwiseConv2dNhwc::new(stride, padding)?;
        let bias = match bias {
            Some(b) => b.contiguous()?,
            None => Tensor::zeros(weight.dim(0)?, x.dtype(), x.device())?,
        };
        return x.contiguous()?.apply_op3(&weight.contiguous()?, &bias, op);
    }
    composed::depthwise_conv2d_nhwc(x, weight, bias, stride, padding, depthwise_conv2d)
}

/// The `(k * k * Cin, Cout)` matrix [`conv2d_nhwc`] multiplies patches by, from a convolution
/// weight `(Cout, Cin, k, k)`: rows ordered `(ky, kx, cin)`, contiguous.
pub fn conv_weight_matrix(weight: &Tensor) -> Result<Tensor> {
    let (cout, cin, kh, kw) = weight.dims4()?;
    if kh != kw {
        return Err(KernelError::Shape {
            op: "conv_weight_matrix",
            what: "weight",
            expected: "a square kernel (Cout, Cin, k, k)".into(),
            found: weight.dims().to_vec(),
        }
        .into());
    }
    weight
        .permute((2, 3, 1, 0))?
        .contiguous()?
        .reshape((kh * kw * cin, cout))
}

/// Convolution of a channel-last `x` `(B, H, W, Cin)` by `matrix` `(k * k * Cin, Cout)` (see
/// [`conv_weight_matrix`]) over `window`, plus an optional `bias` `(Cout)`: output
/// `(B, Ho, Wo, Cout)`, the values of a `(Cout, Cin, k, k)` convolution of `x` permuted to
/// `(B, Cin, H, W)`, permuted back. On the CPU the patches of all images are gathered into rows
/// and multiplied by `matrix` in one product; elsewhere the input is permuted around candle's
/// `conv2d`.
pub fn conv2d_nhwc(
    x: &Tensor,
    matrix: &Tensor,
    bias: Option<&Tensor>,
    window: Window,
) -> Result<Tensor> {
    if bf16_products(x, &[matrix]) && bias.is_none_or(|b| b.dtype() == DType::BF16) {
        let (b, h, w, cin) = x.dims4()?;
        let cout = composed::check_conv_nhwc(x, matrix, bias, window.kernel)?;
        let (ho, wo) = window.output(h, w)?;
        let rows = if (window.kernel, window.stride, window.padding) == (1, 1, 0) {
            x.reshape((b * h * w, cin))?
        } else {
            widened(&x.contiguous()?)?
                .apply_op1(Im2ColNhwc::new(window))?
                .narrowed(DType::BF16)?
        };
        let y = match bias {
            Some(bias) => linear(&rows, matrix, bias)?,
            None => matmul_rows(&rows, matrix)?,
        };
        return y.reshape((b, ho, wo, cout));
    }
    if let Some(half) = half_on_cpu(x) {
        return conv2d_nhwc(
            &widened(x)?,
            &widened(matrix)?,
            widened_opt(bias)?.as_ref(),
            window,
        )?
        .narrowed(half);
    }
    let (b, h, w, cin) = x.dims4()?;
    let k = window.kernel;
    let cout = composed::check_conv_nhwc(x, matrix, bias, k)?;
    let (ho, wo) = window.output(h, w)?;
    if !(x.device().is_cpu() && use_fused(x) && same_dtype(x, &[matrix])) {
        return composed::conv2d_nhwc(x, matrix, bias, window);
    }
    let rows = if (k, window.stride, window.padding) == (1, 1, 0) {
        x.reshape((b * h * w, cin))?
    } else {
        x.contiguous()?.apply_op1(Im2ColNhwc::new(window))?
    };
    let y = match bias {
        Some(bias) => linear(&rows, matrix, bias)?,
        None => rows.matmul(matrix)?,
    };
    y.reshape((b, ho, wo, cout))
}

/// The `(Cin, k * k * Cout)` matrix [`conv_transpose2d_nhwc`] multiplies pixels by, from a
/// transposed convolution's weight `(Cin, Cout, k, k)` (PyTorch's `ConvTranspose2d` layout):
/// columns ordered `(ky, kx, cout)`, contiguous.
pub fn conv_transpose_weight_matrix(weight: &Tensor) -> Result<Tensor> {
    let (cin, cout, kh, kw) = weight.dims4()?;
    if kh != kw {
        return Err(KernelError::Shape {
            op: "conv_transpose_weight_matrix",
            what: "weight",
            expected: "a square kernel (Cin, Cout, k, k)".into(),
            found: weight.dims().to_vec(),
        }
        .into());
    }
    weight
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((cin, kh * kw * cout))
}

/// Transposed convolution of a channel-last `x` `(B, H, W, Cin)` by `matrix`
/// `(Cin, k * k * Cout)` (see [`conv_transpose_weight_matrix`]) over `window` (no output
/// padding), plus an optional `bias` `(Cout)`: output `(B, Ho, Wo, Cout)` with
/// `Ho = (H - 1) * stride - 2 * padding + k`, the values of PyTorch's `conv_transpose2d` of `x`
/// permuted to `(B, Cin, H, W)`, permuted back. On the CPU every pixel is multiplied by `matrix`
/// in one product and the rows are summed into an output that starts as the bias (the adjoint of
/// the patch gather of [`conv2d_nhwc`]); elsewhere the input is permuted around candle's `conv_transpose2d`.
pub fn conv_transpose2d_nhwc(
    x: &Tensor,
    matrix: &Tensor,
    bias: Option<&Tensor>,
    window: Window,
) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(x) {
        return conv_transpose2d_nhwc(
            &widened(x)?,
            &widened(matrix)?,
            widened_opt(bias)?.as_ref(),
            window,
        )?
        .narrowed(half);
    }
    let (b, h, w, cin) = x.dims4()?;
    let (k, s, p) = (window.kernel, window.stride, window.padding);
    let cout = composed::check_conv_transpose_nhwc(x, matrix, bias, k)?;
    let out_len = |n: usize| {
        ((n.max(1) - 1) * s + k)
            .checked_sub(2 * p)
            .filter(|&o| o > 0)
    };
    let (Some(ho), Some(wo)) = (out_len(h), out_len(w)) else {
        return Err(KernelError::Param {
            op: "conv_transpose2d_nhwc",
            msg: format!(
                "a {h}x{w} input gives no output with kernel {k}, stride {s}, padding {p}"
            ),
        }
        .into());
    };
    // Checks the kernel and stride; without output padding the window maps Ho back onto H.
    window.output(ho, wo)?;
    if !(x.device().is_cpu() && use_fused(x) && same_dtype(x, &[matrix])) {
        return composed::conv_transpose2d_nhwc(x, matrix, bias, window);
    }
    let rows = x.reshape((b * h * w, cin))?.matmul(matrix)?;
    let op = conv::Col2ImNhwc {
        window,
        input: (b, ho, wo, cout),
    };
    match bias {
        Some(bias) if same_dtype(x, &[bias]) => {
            rows.apply_op2(&bias.contiguous()?, conv::Col2ImBiasNhwc(op))
        }
        Some(bias) => rows.apply_op1(op)?.broadcast_add(bias),
        None => rows.apply_op1(op),
    }
}

/// WaveMix's one-level 2-D Haar transform of a channel-last map `x` `(B, H, W, C)`: output
/// `(B, ceil(H/2), ceil(W/2), 4C)` holding at channel `c` the approximation
/// `(a + b + c + d) / 2` of each 2x2 block `[[a, b], [c, d]]` and at channels `C + 3c + {0, 1, 2}`
/// its details `(a + b - c - d) / 2`, `(a - b + c - d) / 2`, `(a - b - c + d) / 2` (pywt `db1`,
/// zero mode: odd sizes padded with zeros at the end). One pass on the CPU (f32) and on CUDA;
/// the composition [`composed::haar_dwt`] elsewhere. Differentiable.
pub fn haar_dwt(x: &Tensor) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(x) {
        return haar_dwt(&widened(x)?)?.narrowed(half);
    }
    x.dims4()?;
    if use_fused(x) {
        x.contiguous()?.apply_op1(HaarDwt)
    } else {
        composed::haar_dwt(x)
    }
}

/// The adjoint of [`haar_dwt`] for a `height x width` map: coefficients
/// `(B, ceil(H/2), ceil(W/2), 4C)` to `(B, H, W, C)`; for even sizes the inverse transform.
pub fn haar_dwt_adjoint(coeffs: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(coeffs) {
        return haar_dwt_adjoint(&widened(coeffs)?, height, width)?.narrowed(half);
    }
    let op = HaarDwtAdjoint { height, width };
    if use_fused(coeffs) {
        coeffs.contiguous()?.apply_op1(op)
    } else {
        composed::haar_dwt_adjoint(coeffs, height, width)
    }
}

/// TransNeXt's sliding-window attention logits: for `q` and `k` `(B, heads, N, d)` with
/// `N = height * width` tokens in row-major order, `(B, heads, N, window²)` holding
/// `q[b, h, n] · k[b, h, nbr(n, j)]`, where neighbour `j = (dy + r) * window + (dx + r)`
/// (`r = window / 2`, `dy, dx` in `-r..=r`) of token `(y, x)` is the token at `(y + dy, x + dx)`
/// (torch's unfold order), and `-inf` where that lies outside the map (TransNeXt's
/// `masked_fill`). `window` must be odd, at most [`MAX_NEIGHBORHOOD_WINDOW`]. Differentiable in
/// `q` and `k` (the `-inf` entries pass no gradient). Fused on the CPU (f32) and on CUDA,
/// forward and backward, with no unfolded `k` in memory; the composition
/// [`composed::neighborhood_logits`] elsewhere.
pub fn neighborhood_logits(
    q: &Tensor,
    k: &Tensor,
    height: usize,
    width: usize,
    window: usize,
) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(q) {
        return neighborhood_logits(&widened(q)?, &widened(k)?, height, width, window)?
            .narrowed(half);
    }
    let op = NeighborhoodLogits::new(height, width, window)?;
    neighborhood::logits_dims(q.dims(), k.dims(), height, width, window)?;
    if use_fused(q) && same_dtype(q, &[k]) {
        q.contiguous()?.apply_op2(&k.contiguous()?, op)
    } else {
        composed::neighborhood_logits(q, k, height, width, window)
    }
}

/// TransNeXt's sliding-window aggregation: for `weights` `(B, heads, N, window²)` (the softmax
/// of [`neighborhood_logits`], say) and `v` `(B, heads, N, d)`, `(B, heads, N, d)` holding
/// `Σ_j weights[b, h, n, j] v[b, h, nbr(n, j)]` over the neighbours inside the map (the
/// neighbour order of [`neighborhood_logits`]); the weights of neighbours outside it are never
/// read (TransNeXt's unfold zero-pads `v`), even when infinite. `window` must be odd, at most
/// [`MAX_NEIGHBORHOOD_WINDOW`]. Differentiable in both (zero gradient for the weights outside
/// the map). Fused on the CPU (f32) and on CUDA, forward and backward, with no unfolded `v` in
/// memory; the composition [`composed::neighborhood_aggregate`] elsewhere.
pub fn neighborhood_aggregate(
    weights: &Tensor,
    v: &Tensor,
    height: usize,
    width: usize,
    window: usize,
) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(weights) {
        return neighborhood_aggregate(&widened(weights)?, &widened(v)?, height, width, window)?
            .narrowed(half);
    }
    let op = NeighborhoodAggregate::new(height, width, window)?;
    neighborhood::aggregate_dims(weights.dims(), v.dims(), height, width, window)?;
    if use_fused(v) && same_dtype(v, &[weights]) {
        weights.contiguous()?.apply_op2(&v.contiguous()?, op)
    } else {
        composed::neighborhood_aggregate(weights, v, height, width, window)
    }
}

/// A linear layer on the last axis: `x w + bias` for `x` `(..., K)`, `w` `(K, N)` (a `Linear`
/// weight transposed) and `bias` `(N)`, giving `(..., N)`. On the CPU in f32 the output starts
/// as the bias and gemm adds the product to it (one op, no zero fill or bias pass);
/// elsewhere it is candle's matmul and broadcast add. Differentiable in all three operands.
pub fn linear(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if bf16_products(x, &[w, bias]) {
        return linear_bf16(x, w, bias, bf16::Activation::Identity);
    }
    if let Some(half) = half_on_cpu(x) {
        return linear(&widened(x)?, &widened(w)?, &widened(bias)?)?.narrowed(half);
    }
    let (rows, k, n) = mlp::linear_dims(x.shape(), w.shape(), bias.shape())?;
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    let x2 = x.reshape((rows, k))?;
    let y = if x.device().is_cpu() && use_fused(x) && same_dtype(x, &[w, bias]) {
        x2.contiguous()?
            .apply_op3(&w.contiguous()?, &bias.contiguous()?, Linear)?
    } else {
        x2.matmul(w)?.broadcast_add(bias)?
    };
    y.reshape(out_dims)
}

/// MambaOut's gate `gelu(g) * concat(i, conv)` from a gated block's projection `h`
/// `(rows, 2 * hidden)` = `[g (hidden), i (hidden - k), c (k)]` and the depthwise convolution
/// `conv` `(rows, k)` of `c`: output `(rows, hidden)`. One pass on the CPU in f32 (no slices
/// or concatenation); candle ops elsewhere.
pub fn gelu_gate(h: &Tensor, conv: &Tensor, hidden: usize) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(h) {
        return gelu_gate(&widened(h)?, &widened(conv)?, hidden)?.narrowed(half);
    }
    let op = GeluGate::new(hidden);
    op.dims(h.shape(), conv.shape())?;
    if h.device().is_cpu() && use_fused(h) && same_dtype(h, &[conv]) {
        h.contiguous()?.apply_op2(&conv.contiguous()?, op)
    } else {
        composed::gelu_gate(h, conv, hidden)
    }
}

/// A block's channel MLP and residual add: `base + act(x fc1 + b1) fc2 + b2` for `x`
/// `(..., C)` and `base` `(..., N)` (same leading axes), with the weights of `mlp` (see
/// [`MlpWeights`]). On the CPU in f32 one op computes it a block of rows at a time, never
/// materializing the hidden `(..., H)` tensor; elsewhere it is candle's matmuls and element-wise
/// ops. The weights are treated as constants: gradients reach `x` and `base` only, so a layer
/// whose weights train must compose the MLP itself.
pub fn residual_mlp(x: &Tensor, base: &Tensor, mlp: &MlpWeights) -> Result<Tensor> {
    if bf16_products(x, &[base, &mlp.fc1, &mlp.fc2]) && !x.track_op() {
        let (rows, c, _, n) = mlp.operand_dims(x.dims(), base.dims())?;
        let x2 = x.reshape((rows, c))?.contiguous()?;
        let base2 = base.reshape((rows, n))?.contiguous()?;
        return x2
            .apply_op2(&base2, bf16::ResidualMlpBf16::new(mlp)?)?
            .reshape(base.dims());
    }
    if let Some(half) = half_on_cpu(x) {
        return residual_mlp(&widened(x)?, &widened(base)?, &mlp.widened()?)?.narrowed(half);
    }
    let (rows, c, _, n) = mlp.operand_dims(x.dims(), base.dims())?;
    let x2 = x.reshape((rows, c))?;
    let base2 = base.reshape((rows, n))?;
    let y = if x.device().is_cpu() && use_fused(x) && base.dtype() == x.dtype() && mlp.all_cpu_f32()
    {
        x2.contiguous()?
            .apply_op2(&base2.contiguous()?, ResidualMlp::new(mlp)?)?
    } else {
        composed::residual_mlp(&x2, &base2, mlp)?
    };
    y.reshape(base.dims())
}

/// Multi-head self-attention on the packed projection `qkv` `(B, N, 3, H, D)` (a
/// `Linear(C, 3 * H * D)` output reshaped; q, k, v each `(B, N, H, D)`): per sample and head
/// `softmax(scale · q kᵀ) v`, softmax over the keys, returned as `(B, N, H * D)` with the heads
/// concatenated. The fused CPU kernel runs one single-threaded product pair per head, in
/// parallel over heads; other devices and dtypes take candle's batched matmuls and softmax.
pub fn self_attention(qkv: &Tensor, scale: f64) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(qkv) {
        return self_attention(&widened(qkv)?, scale)?.narrowed(half);
    }
    attention::qkv_dims(qkv.shape())?;
    if qkv.device().is_cpu() && use_fused(qkv) {
        qkv.contiguous()?.apply_op1(SelfAttention::new(scale))
    } else {
        composed::self_attention(qkv, scale)
    }
}

/// PoolFormer's pooling mixer on `(B, C, H, W)`: the average over the `k x k` window around each
/// position (stride 1, only in-image pixels counted), minus the input. `k` must be odd.
pub fn pool_mixer(x: &Tensor, pool_size: usize) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(x) {
        return pool_mixer(&widened(x)?, pool_size)?.narrowed(half);
    }
    if use_fused(x) {
        x.contiguous()?.apply_op1(PoolMixer::new(pool_size)?)
    } else {
        composed::pool_mixer(x, pool_size)
    }
}

/// [`pool_mixer`] on a channel-last `x` `(B, H, W, C)`: the values of [`pool_mixer`] on `x`
/// permuted to `(B, C, H, W)`, permuted back. The fused CPU kernel reads the channel-last
/// layout directly; elsewhere the input is permuted around [`pool_mixer`].
pub fn pool_mixer_nhwc(x: &Tensor, pool_size: usize) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(x) {
        return pool_mixer_nhwc(&widened(x)?, pool_size)?.narrowed(half);
    }
    if x.device().is_cpu() && use_fused(x) {
        x.contiguous()?.apply_op1(PoolMixerNhwc::new(pool_size)?)
    } else {
        composed::pool_mixer_nhwc(x, pool_size, pool_mixer)
    }
}

/// Normalizes `x` with channels at `channel_axis` (1 for `(B, C, H, W)`, the last axis for
/// `(B, N, C)` tokens or `(B, H, W, C)` maps) over the channels ([`NormAxes::Channels`],
/// LayerNorm) or over all but the batch axis ([`NormAxes::AllButBatch`], GroupNorm with one
/// group), then applies the per-channel `weight` and optional `bias` (`[C]`). On CUDA a
/// GroupNorm with channels after axis 1 takes the composed path.
pub fn channel_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    axes: NormAxes,
    eps: f64,
    channel_axis: usize,
) -> Result<Tensor> {
    let last = x.rank().saturating_sub(1);
    let constants = !weight.track_op() && bias.is_none_or(|b| !b.track_op());
    if bf16_rows(x) && axes == NormAxes::Channels && channel_axis == last && constants {
        let values = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
        let c = x.dim(last)?;
        let op = RowOp::LayerNorm {
            weight: values(weight)?,
            bias: match bias {
                Some(b) => values(b)?,
                None => vec![0.0; c],
            },
            eps: eps as f32,
        };
        return rows_bf16(x, c, op);
    }
    if let Some(half) = half_on_cpu(x) {
        return channel_norm(
            &widened(x)?,
            &widened(weight)?,
            widened_opt(bias)?.as_ref(),
            axes,
            eps,
            channel_axis,
        )?
        .narrowed(half);
    }
    let fusable = use_fused(x)
        && same_dtype(x, &[weight])
        && bias.is_none_or(|b| b.dtype() == x.dtype())
        && (axes == NormAxes::Channels
            || channel_axis == 1
            || (x.device().is_cpu() && channel_axis >= 1));
    if !fusable {
        return composed::channel_norm(x, weight, bias, axes, eps, channel_axis);
    }
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => weight.zeros_like()?,
    };
    let op = ChannelNorm::new(axes, eps, channel_axis);
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias, op)
}

/// GFNet's global filter on a channel-last map `x` `(B, H, W, C)` with the complex `weight`
/// `(H, W/2 + 1, C, 2)`: `irfft2(rfft2(x, norm="ortho") * weight, s=(H, W), norm="ortho")`
/// over `(H, W)`, computed in f32.
pub fn spectral_filter(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(x) {
        return spectral_filter(&widened(x)?, &widened(weight)?)?.narrowed(half);
    }
    if use_fused(x) && same_dtype(x, &[weight]) && spectral::fits_device(x, true, None) {
        x.contiguous()?
            .apply_op2(&weight.contiguous()?, SpectralFilter)
    } else {
        composed::spectral_filter(x, weight)
    }
}

/// Mamba's selective scan: `s_t = exp(delta_t * A) * s_{t-1} + delta_t * B_t * u_t`,
/// `y_t = <s_t, C_t>` with a state of size `N` per `(batch, channel)`. `u`, `delta` are
/// `(B, D, L)` (`delta` already biased and softplus-ed), `a` is `(D, N)`, `b` and `c` are
/// `(B, N, L)`; returns `y` `(B, D, L)` (without the `D` skip or gating). The fused CPU path is a
/// sequential loop over `L` parallel over `(B, D)`; the composed path a per-step loop of candle
/// ops.
pub fn selective_scan(
    u: &Tensor,
    delta: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
) -> Result<Tensor> {
    selective_scan_with(u, delta, a, b, c, false)
}

/// [`selective_scan`], or with `reverse` the scan from the last step to the first
/// (`s_t` from `s_{t+1}`): the forward scan of the time-flipped operands, flipped back, which
/// is what a bidirectional Mamba's backward branch computes, without the flips on the fused
/// CPU path (the other paths flip).
pub fn selective_scan_with(
    u: &Tensor,
    delta: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    reverse: bool,
) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(u) {
        return selective_scan_with(
            &widened(u)?,
            &widened(delta)?,
            &widened(a)?,
            &widened(b)?,
            &widened(c)?,
            reverse,
        )?
        .narrowed(half);
    }
    let state_fits = u.device().is_cpu() || a.dim(1)? <= scan::MAX_STATE_GPU;
    let fused = use_fused(u) && same_dtype(u, &[delta, a, b, c]) && state_fits;
    if reverse && !(fused && u.device().is_cpu()) {
        return scan::through_time_flip([u, delta, b, c], |[u, delta, b, c]| {
            selective_scan_with(u, delta, a, b, c, false)
        });
    }
    if fused {
        let ud = Tensor::stack(&[u, delta], 0)?;
        let bc = Tensor::stack(&[&b.transpose(1, 2)?, &c.transpose(1, 2)?], 0)?;
        ud.apply_op3(
            &a.contiguous()?,
            &bc.contiguous()?,
            SelectiveScan { reverse },
        )
    } else {
        composed::selective_scan(u, delta, a, b, c)
    }
}

/// The Mamba-2 SSD scan (one scalar decay per head; Hydra's `mamba_chunk_scan_combined`):
/// `y[b, t, h] = Σ_s exp(Σ log_decay over the steps between) (c[b, t, g] · b[b, s, g]) x[b, s, h]`
/// over `s ≤ t`, or `s ≥ t` with `reverse` (the forward scan of the time-flipped inputs,
/// flipped back). As a recurrence on a state `S` `(P, N)` per `(batch, head)`:
/// `S_t = exp(log_decay_t) S_{t-1} + x_t ⊗ b_t` (`S_{t+1}` in reverse), `y_t = S_t c_t`.
///
/// `x` `(B, L, H, P)` (already multiplied by `dt`), `log_decay` `(B, L, H)` (`dt * A`, any real
/// value), `b` and `c` `(B, L, G, N)` with `G` dividing `H` (head `h` reads group
/// `h / (H / G)`); returns `(B, L, H, P)` (zeros where an operand is empty). Differentiable in
/// all four. On the CPU in f32 the forward is the state recurrence, or the quadratic dual form
/// for short sequences ([`dual_is_faster`]), and the backward is fused (a scan and its adjoint
/// scan); on CUDA (f32 / f16 / bf16, `P ≤ 1024`, `N ≤ 128`) the forward is fused and the
/// backward differentiates [`composed::ssd_scan`], which every other case runs.
pub fn ssd_scan(
    x: &Tensor,
    log_decay: &Tensor,
    b: &Tensor,
    c: &Tensor,
    reverse: bool,
) -> Result<Tensor> {
    ssd_scan_with(x, log_decay, b, c, reverse, SsdPath::Auto)
}

/// [`ssd_scan`] with the form of the fused CPU forward chosen by `path` (the other devices
/// and the composed path ignore it).
pub fn ssd_scan_with(
    x: &Tensor,
    log_decay: &Tensor,
    b: &Tensor,
    c: &Tensor,
    reverse: bool,
    path: SsdPath,
) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(x) {
        return ssd_scan_with(
            &widened(x)?,
            &widened(log_decay)?,
            &widened(b)?,
            &widened(c)?,
            reverse,
            path,
        )?
        .narrowed(half);
    }
    let d = ssd::dims(x.dims(), log_decay.dims(), b.dims(), c.dims())?;
    if d.is_empty() {
        return Tensor::zeros((d.b, d.l, d.h, d.p), x.dtype(), x.device());
    }
    let fits = x.device().is_cpu() || ssd::fits_gpu(d.p, d.n);
    if use_fused(x) && same_dtype(x, &[log_decay, b, c]) && fits {
        let bc = Tensor::stack(&[b, c], 2)?.contiguous()?;
        let op = SsdScan { reverse, path };
        x.contiguous()?.apply_op3(&log_decay.contiguous()?, &bc, op)
    } else {
        composed::ssd_scan(x, log_decay, b, c, reverse)
    }
}

/// `rfft2(x, norm="ortho")` over the last two axes of `x` `(..., H, W)`: real and imaginary
/// parts, each `(..., H, W/2 + 1)`, in f32.
pub fn rfft2_ortho(x: &Tensor) -> Result<(Tensor, Tensor)> {
    if let Some(half) = half_on_cpu(x) {
        let (re, im) = rfft2_ortho(&widened(x)?)?;
        return Ok((cast(&re, half)?, cast(&im, half)?));
    }
    if use_fused(x) && x.dtype() == DType::F32 && spectral::fits_device(x, false, None) {
        let spec = x.contiguous()?.apply_op1(Rfft2)?;
        Ok((spec.get(0)?, spec.get(1)?))
    } else {
        composed::rfft2_ortho(x)
    }
}

/// `irfft2(re + i im, s=(H, width), norm="ortho")` over the last two axes: the inverse of
/// [`rfft2_ortho`] for a real signal of width `width`.
pub fn irfft2_ortho(re: &Tensor, im: &Tensor, width: usize) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(re) {
        return irfft2_ortho(&widened(re)?, &widened(im)?, width)?.narrowed(half);
    }
    let f32s = re.dtype() == DType::F32 && im.dtype() == DType::F32;
    if use_fused(re) && f32s && spectral::fits_device(re, false, Some(width)) {
        Tensor::stack(&[re, im], 0)?.apply_op1(Irfft2 { width })
    } else {
        composed::irfft2_ortho(re, im, width)
    }
}

/// Exact (erf) GELU, `0.5 x (1 + erf(x / sqrt(2)))`, as PyTorch's `nn.GELU()`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if bf16_rows(x) {
        return rows_bf16(x, 4096, RowOp::Gelu);
    }
    if let Some(half) = half_on_cpu(x) {
        return gelu(&widened(x)?)?.narrowed(half);
    }
    if use_fused(x) {
        x.contiguous()?.apply_op1(Gelu)
    } else {
        x.gelu_erf()
    }
}

/// Exact GELU of `x` plus a per-channel `bias` `[C]` broadcast along axis `channel_axis`:
/// `gelu(x + bias)` in one pass on the CPU (a linear layer's bias add folded into its
/// activation); other devices and dtypes take the composition.
pub fn bias_gelu(x: &Tensor, bias: &Tensor, channel_axis: usize) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(x) {
        return bias_gelu(&widened(x)?, &widened(bias)?, channel_axis)?.narrowed(half);
    }
    let c = x.dim(channel_axis)?;
    if bias.dims() != [c] {
        return Err(KernelError::Shape {
            op: "bias_gelu",
            what: "bias",
            expected: format!("[{c}]"),
            found: bias.dims().to_vec(),
        }
        .into());
    }
    if use_fused(x) && x.device().is_cpu() && same_dtype(x, &[bias]) {
        let inner = x.dims()[channel_axis + 1..].iter().product();
        let op = activation::BiasGelu {
            channels: c,
            inner,
            axis: channel_axis,
        };
        x.contiguous()?.apply_op2(&bias.contiguous()?, op)
    } else {
        composed::bias_gelu(x, bias, channel_axis)
    }
}

/// StarReLU, `scale * relu(x)^2 + bias`, with learned scalars `scale` and `bias` (`[1]`).
pub fn star_relu(x: &Tensor, scale: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if bf16_rows(x) && !scale.track_op() && !bias.track_op() {
        let scalar = |t: &Tensor| {
            t.flatten_all()?
                .to_dtype(DType::F32)?
                .get(0)?
                .to_scalar::<f32>()
        };
        let op = RowOp::StarRelu {
            scale: scalar(scale)?,
            bias: scalar(bias)?,
        };
        return rows_bf16(x, 4096, op);
    }
    if let Some(half) = half_on_cpu(x) {
        return star_relu(&widened(x)?, &widened(scale)?, &widened(bias)?)?.narrowed(half);
    }
    if use_fused(x) && same_dtype(x, &[scale, bias]) {
        x.contiguous()?.apply_op3(scale, bias, StarRelu)
    } else {
        composed::star_relu(x, scale, bias)
    }
}

/// SquaredReLU, `relu(x)^2`, in one pass: the [`StarRelu`] kernel with scale 1 and bias 0
/// (gradient `2 relu(x) · grad`).
pub fn squared_relu(x: &Tensor) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(x) {
        return squared_relu(&widened(x)?)?.narrowed(half);
    }
    if use_fused(x) {
        let one = Tensor::ones(1, x.dtype(), x.device())?;
        x.contiguous()?
            .apply_op3(&one, &one.zeros_like()?, StarRelu)
    } else {
        x.relu()?.sqr()
    }
}

/// MS-MLP's mix-shift on `(B, C, H, W)`: per channel, the depthwise convolution (kernels
/// `weights` `(2, C, k, k)`, biases `(2, C)`) of the map rolled by `shifts[c]` along the width
/// plus that of the map rolled along the height (`torch.roll` semantics, zero padding `k/2`).
pub fn mix_shift(x: &Tensor, weights: &Tensor, biases: &Tensor, shifts: &[i32]) -> Result<Tensor> {
    if let Some(half) = half_on_cpu(x) {
        return mix_shift(&widened(x)?, &widened(weights)?, &widened(biases)?, shifts)?
            .narrowed(half);
    }
    if use_fused(x) && same_dtype(x, &[weights, biases]) {
        let op = MixShiftOp {
            shifts: shifts.to_vec(),
        };
        x.contiguous()?
            .apply_op3(&weights.contiguous()?, &biases.contiguous()?, op)
    } else {
        composed::mix_shift(x, weights, biases, shifts)
    }
}
