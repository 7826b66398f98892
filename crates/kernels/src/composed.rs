//! Reference implementations of every fused op as plain compositions of candle ops: the
//! fallback when fused kernels are off, and what the fused kernels are tested against.

use candle_core::{DType, Result, Tensor};

use crate::{KernelError, NormAxes};

/// Depthwise convolution through candle's grouped `conv2d` (no bias).
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let channels = x.dim(1)?;
    x.conv2d(weight, padding, stride, 1, channels)
}

/// Channel-last depthwise convolution `(B, H, W, C) -> (B, Ho, Wo, C)`: the input permuted to
/// `(B, C, H, W)`, convolved by `conv` (the fused op or [`depthwise_conv2d`]), the bias added,
/// the result permuted back.
pub fn depthwise_conv2d_nhwc(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    conv: impl Fn(&Tensor, &Tensor, Option<&Tensor>, usize, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    via_channels_first(x, |x| conv(x, weight, bias, stride, padding))
}

/// `f` applied to a channel-last `x` `(B, H, W, C)` viewed as `(B, C, H, W)`, its result
/// permuted back to a contiguous channel-last tensor.
pub fn via_channels_first(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    x.dims4()?;
    f(&x.permute((0, 3, 1, 2))?)?
        .permute((0, 2, 3, 1))?
        .contiguous()
}

/// Checks the operands of [`crate::conv2d_nhwc`] (`x` `(B, H, W, Cin)`, `matrix`
/// `(k * k * Cin, Cout)`, `bias` `(Cout)`) and returns `Cout`.
pub fn check_conv_nhwc(
    x: &Tensor,
    matrix: &Tensor,
    bias: Option<&Tensor>,
    k: usize,
) -> Result<usize> {
    let (_, _, _, cin) = x.dims4()?;
    let shape_error = |what: &'static str, expected: String, t: &Tensor| {
        Err(KernelError::Shape {
            op: "conv2d_nhwc",
            what,
            expected,
            found: t.dims().to_vec(),
        }
        .into())
    };
    let cout = match matrix.dims() {
        [rows, cout] if *rows == k * k * cin => *cout,
        _ => return shape_error("weight matrix", format!("[{}, Cout]", k * k * cin), matrix),
    };
    match bias {
        Some(b) if b.dims() != [cout] => shape_error("bias", format!("[{cout}]"), b),
        _ => Ok(cout),
    }
}

/// [`crate::conv2d_nhwc`] as candle ops: `x` permuted to `(B, Cin, H, W)`, candle's `conv2d`
/// with the weight `(Cout, Cin, k, k)` rebuilt from `matrix`, bias added, permuted back.
pub fn conv2d_nhwc(
    x: &Tensor,
    matrix: &Tensor,
    bias: Option<&Tensor>,
    window: crate::Window,
) -> Result<Tensor> {
    let (_, _, _, cin) = x.dims4()?;
    let k = window.kernel;
    let cout = check_conv_nhwc(x, matrix, bias, k)?;
    let weight = matrix
        .reshape((k, k, cin, cout))?
        .permute((3, 2, 0, 1))?
        .contiguous()?;
    via_channels_first(x, |x| {
        let y = x.conv2d(&weight, window.padding, window.stride, 1, 1)?;
        match bias {
            Some(b) => y.broadcast_add(&b.reshape((cout, 1, 1))?),
            None => Ok(y),
        }
    })
}

/// Checks the operands of [`crate::conv_transpose2d_nhwc`] (`x` `(B, H, W, Cin)`, `matrix`
/// `(Cin, k * k * Cout)`, `bias` `(Cout)`) and returns `Cout`.
pub fn check_conv_transpose_nhwc(
    x: &Tensor,
    matrix: &Tensor,
    bias: Option<&Tensor>,
    k: usize,
) -> Result<usize> {
    let (_, _, _, cin) = x.dims4()?;
    let shape_error = |what: &'static str, expected: String, t: &Tensor| {
        Err(KernelError::Shape {
            op: "conv_transpose2d_nhwc",
            what,
            expected,
            found: t.dims().to_vec(),
        }
        .into())
    };
    let cout = match matrix.dims() {
        [rows, cols] if *rows == cin && k > 0 && cols % (k * k) == 0 => cols / (k * k),
        _ => return shape_error("weight matrix", format!("[{cin}, {k}*{k}*Cout]"), matrix),
    };
    match bias {
        Some(b) if b.dims() != [cout] => shape_error("bias", format!("[{cout}]"), b),
        _ => Ok(cout),
    }
}

/// [`crate::conv_transpose2d_nhwc`] as candle ops: `x` permuted to `(B, Cin, H, W)`, candle's
/// `conv_transpose2d` with the weight `(Cin, Cout, k, k)` rebuilt from `matrix`, bias added,
/// permuted back.
pub fn conv_transpose2d_nhwc(
    x: &Tensor,
    matrix: &Tensor,
    bias: Option<&Tensor>,
    window: crate::Window,
) -> Result<Tensor> {
    let (_, _, _, cin) = x.dims4()?;
    let k = window.kernel;
    let cout = check_conv_transpose_nhwc(x, matrix, bias, k)?;
    let weight = matrix
        .reshape((cin, k, k, cout))?
        .permute((0, 3, 1, 2))?
        .contiguous()?;
    via_channels_first(x, |x| {
        let y = x.conv_transpose2d(&weight, window.padding, 0, window.stride, 1)?;
        match bias {
            Some(b) => y.broadcast_add(&b.reshape((cout, 1, 1))?),
            None => Ok(y),
        }
    })
}

/// [`crate::haar_dwt`] as candle ops: odd sizes zero-padded, the four pixels of every 2x2 block
/// taken by reshapes and narrows, the butterflies by adds and subtracts, the bands interleaved
/// by a stack and a reshape.
pub fn haar_dwt(x: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let x = x
        .pad_with_zeros(1, 0, 2 * ho - h)?
        .pad_with_zeros(2, 0, 2 * wo - w)?;
    let blocks = x.reshape((b, ho, 2, wo, 2, c))?;
    let at = |dy: usize, dx: usize| -> Result<Tensor> {
        blocks
            .narrow(2, dy, 1)?
            .narrow(4, dx, 1)?
            .reshape((b, ho, wo, c))
    };
    let (pa, pb, pc, pd) = (at(0, 0)?, at(0, 1)?, at(1, 0)?, at(1, 1)?);
    let (s0, s1) = ((&pa + &pb)?, (&pc + &pd)?);
    let (d0, d1) = ((&pa - &pb)?, (&pc - &pd)?);
    let low = ((&s0 + &s1)? * 0.5)?;
    let highs = Tensor::stack(
        &[
            ((&s0 - &s1)? * 0.5)?,
            ((&d0 + &d1)? * 0.5)?,
            ((&d0 - &d1)? * 0.5)?,
        ],
        4,
    )?
    .reshape((b, ho, wo, 3 * c))?;
    Tensor::cat(&[low, highs], 3)
}

/// [`crate::haar_dwt_adjoint`] as candle ops: the bands split out, the butterflies inverted,
/// the four pixels of every block interleaved back and the padding of odd sizes dropped.
pub fn haar_dwt_adjoint(coeffs: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (b, ho, wo, c4) = coeffs.dims4()?;
    let c = c4 / 4;
    if ho != height.div_ceil(2) || wo != width.div_ceil(2) || c4 % 4 != 0 {
        return Err(KernelError::Shape {
            op: "haar_dwt_adjoint",
            what: "coefficients",
            expected: format!("(B, {}, {}, 4C)", height.div_ceil(2), width.div_ceil(2)),
            found: coeffs.dims().to_vec(),
        }
        .into());
    }
    let low = coeffs.narrow(3, 0, c)?;
    let highs = coeffs.narrow(3, c, 3 * c)?.reshape((b, ho, wo, c, 3))?;
    let band = |k: usize| -> Result<Tensor> { highs.narrow(4, k, 1)?.reshape((b, ho, wo, c)) };
    let (g1, g2, g3) = (band(0)?, band(1)?, band(2)?);
    let (s0, s1) = ((&low + &g1)?, (&g2 + &g3)?);
    let (d0, d1) = ((&low - &g1)?, (&g2 - &g3)?);
    let top = Tensor::stack(&[((&s0 + &s1)? * 0.5)?, ((&s0 - &s1)? * 0.5)?], 3)?;
    let bottom = Tensor::stack(&[((&d0 + &d1)? * 0.5)?, ((&d0 - &d1)? * 0.5)?], 3)?;
    Tensor::stack(&[top, bottom], 2)?
        .reshape((b, 2 * ho, 2 * wo, c))?
        .narrow(1, 0, height)?
        .narrow(2, 0, width)?
        .contiguous()
}

/// [`crate::self_attention`] as candle ops: q, k, v split out of `qkv` `(B, N, 3, H, D)` as
/// contiguous `(B, H, N, D)`, `softmax(scale · q kᵀ)` by batched matmul, times v, heads
/// concatenated into `(B, N, H * D)`.
pub fn self_attention(qkv: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, n, h, d) = crate::attention::qkv_dims(qkv.shape())?;
    let (q, k, v) = qkv_heads(qkv)?;
    let q = (q * scale)?;
    let dtype = q.dtype();
    let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
    let attn = softmax_last_dim(&scores)?.to_dtype(dtype)?;
    attn.matmul(&v)?.transpose(1, 2)?.reshape((b, n, h * d))
}

/// q, k and v of a packed `qkv` `(B, N, 3, H, D)`, each as a contiguous `(B, H, N, D)`.
pub fn qkv_heads(qkv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let heads = qkv.permute((2, 0, 3, 1, 4))?;
    Ok((
        heads.get(0)?.contiguous()?,
        heads.get(1)?.contiguous()?,
        heads.get(2)?.contiguous()?,
    ))
}

/// `exp(x - max) / sum(exp(x - max))` over the last axis.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let e = x
        .broadcast_sub(&x.max_keepdim(candle_core::D::Minus1)?)?
        .exp()?;
    e.broadcast_div(&e.sum_keepdim(candle_core::D::Minus1)?)
}

/// Number of in-image pixels in the window of size `k` centred on each of `n` positions.
fn window_counts(n: usize, k: usize) -> Vec<f32> {
    let half = k / 2;
    (0..n)
        .map(|i| ((i + half).min(n - 1) + 1 - i.saturating_sub(half)) as f32)
        .collect()
}

/// `(H, W)` map of the number of in-image pixels in the `k x k` window at each position, on
/// `like`'s device and dtype.
pub fn window_count_map(h: usize, w: usize, k: usize, like: &Tensor) -> Result<Tensor> {
    let rows = Tensor::new(window_counts(h, k), like.device())?.reshape((h, 1))?;
    let cols = Tensor::new(window_counts(w, k), like.device())?.reshape((1, w))?;
    rows.broadcast_mul(&cols)?.to_dtype(like.dtype())
}

/// Pooling mixer by zero padding, `avg_pool2d`, rescaling by the in-image pixel counts and
/// subtracting the input.
pub fn pool_mixer(x: &Tensor, pool_size: usize) -> Result<Tensor> {
    if pool_size.is_multiple_of(2) {
        return Err(KernelError::Param {
            op: "pool_mixer",
            msg: format!("pool_size must be odd, got {pool_size}"),
        }
        .into());
    }
    let (_, _, h, w) = x.dims4()?;
    let p = pool_size / 2;
    let padded = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    let sums = (padded.avg_pool2d_with_stride(pool_size, 1)? * (pool_size * pool_size) as f64)?;
    let counts = window_count_map(h, w, pool_size, x)?;
    sums.broadcast_div(&counts)? - x
}

/// The pooling mixer on a channel-last `x` `(B, H, W, C)`: `mixer` (the fused or the composed
/// channel-first one) applied to `x` permuted to `(B, C, H, W)`, permuted back.
pub fn pool_mixer_nhwc(
    x: &Tensor,
    pool_size: usize,
    mixer: impl Fn(&Tensor, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    via_channels_first(x, |x| mixer(x, pool_size))
}

/// Normalized `x` and `1 / sqrt(var + eps)` for `x` viewed as `(outer, C, inner)`: statistics
/// over `C` (LayerNorm) or over `(C, inner)` (GroupNorm with one group), in f32.
pub fn normalize(x: &Tensor, axes: NormAxes, eps: f64) -> Result<(Tensor, Tensor)> {
    let x = x.to_dtype(DType::F32)?;
    let mean = |t: &Tensor| match axes {
        NormAxes::Channels => t.mean_keepdim(1),
        NormAxes::AllButBatch => t.mean_keepdim(2)?.mean_keepdim(1),
    };
    let centered = x.broadcast_sub(&mean(&x)?)?;
    let inv = (mean(&centered.sqr()?)? + eps)?.sqrt()?.recip()?;
    Ok((centered.broadcast_mul(&inv)?, inv))
}

/// [`normalize`] of `x` with channels split as `(outer, C, inner)`: LayerNorm statistics over
/// the channels of that view, GroupNorm statistics over everything but the first axis of `x`
/// (viewed as `(B, 1, rest)`). The normalized tensor keeps the view's shape.
pub fn normalize_over(
    x: &Tensor,
    axes: NormAxes,
    eps: f64,
    (outer, c, inner): (usize, usize, usize),
) -> Result<(Tensor, Tensor)> {
    let view = match axes {
        NormAxes::Channels => x.reshape((outer, c, inner))?,
        NormAxes::AllButBatch => x.reshape((x.dim(0)?, 1, ()))?,
    };
    normalize(&view, axes, eps)
}

/// Channel LayerNorm / GroupNorm1 as plain candle ops: `x` has its channels at `channel_axis`,
/// `weight` and `bias` are `[C]`; GroupNorm1 takes its statistics over all axes but the first.
pub fn channel_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    axes: NormAxes,
    eps: f64,
    channel_axis: usize,
) -> Result<Tensor> {
    let dims = x.dims();
    if channel_axis >= dims.len() {
        return Err(KernelError::Shape {
            op: "channel_norm",
            what: "x",
            expected: format!("an axis {channel_axis}"),
            found: dims.to_vec(),
        }
        .into());
    }
    let outer: usize = dims[..channel_axis].iter().product();
    let inner: usize = dims[channel_axis + 1..].iter().product();
    let c = dims[channel_axis];
    let (xhat, _) = normalize_over(x, axes, eps, (outer, c, inner))?;
    let y = xhat
        .reshape((outer, c, inner))?
        .to_dtype(x.dtype())?
        .broadcast_mul(&weight.reshape((1, c, 1))?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, c, 1))?)?,
        None => y,
    };
    y.reshape(dims)
}

/// `cos(2 pi i j / n) * scale(j)` and `sin(...) * scale(j)` for `i < rows`, `j < cols`.
fn dft_matrices(
    rows: usize,
    cols: usize,
    n: usize,
    scale: impl Fn(usize) -> f64,
    device: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    let mut cos = Vec::with_capacity(rows * cols);
    let mut sin = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        for j in 0..cols {
            let angle = 2.0 * std::f64::consts::PI * ((i * j) % n) as f64 / n as f64;
            cos.push((angle.cos() * scale(j)) as f32);
            sin.push((angle.sin() * scale(j)) as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (rows, cols), device)?,
        Tensor::from_vec(sin, (rows, cols), device)?,
    ))
}

/// `rfft2(x, norm="ortho")` over the last two axes of `x` `(..., H, W)` as real matrix
/// products: the real and imaginary parts, each `(..., H, W/2 + 1)`, in f32.
pub fn rfft2_ortho(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let dims = x.dims();
    let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let k = w / 2 + 1;
    let dev = x.device();
    let x = x.to_dtype(DType::F32)?;
    let (cos_w, sin_w) = dft_matrices(w, k, w, |_| 1.0, dev)?;
    let (cos_h, sin_h) = dft_matrices(h, h, h, |_| 1.0, dev)?;
    let r1 = x.broadcast_matmul(&cos_w)?;
    let i1 = x.broadcast_matmul(&sin_w)?.neg()?;
    let scale = 1.0 / ((h * w) as f64).sqrt();
    let re = ((cos_h.broadcast_matmul(&r1)? + sin_h.broadcast_matmul(&i1)?)? * scale)?;
    let im = ((cos_h.broadcast_matmul(&i1)? - sin_h.broadcast_matmul(&r1)?)? * scale)?;
    Ok((re, im))
}

/// `irfft2(re + i im, s=(H, w), norm="ortho")` over the last two axes, the inverse of
/// [`rfft2_ortho`] (imaginary parts of the zero and Nyquist columns are ignored, as PyTorch does).
pub fn irfft2_ortho(re: &Tensor, im: &Tensor, w: usize) -> Result<Tensor> {
    let dims = re.dims();
    let (h, k) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if k != w / 2 + 1 {
        return Err(KernelError::Shape {
            op: "irfft2",
            what: "spectrum",
            expected: format!("{} columns for width {w}", w / 2 + 1),
            found: dims.to_vec(),
        }
        .into());
    }
    let dev = re.device();
    let (cos_h, sin_h) = dft_matrices(h, h, h, |_| 1.0, dev)?;
    let r = (cos_h.broadcast_matmul(re)? - sin_h.broadcast_matmul(im)?)?;
    let i = (cos_h.broadcast_matmul(im)? + sin_h.broadcast_matmul(re)?)?;
    let hermitian = |j: usize| {
        if j == 0 || (w.is_multiple_of(2) && j == w / 2) {
            1.0
        } else {
            2.0
        }
    };
    let (cos_k, sin_k) = dft_matrices(w, k, w, hermitian, dev)?;
    let y = (r.broadcast_matmul(&cos_k.t()?)? - i.broadcast_matmul(&sin_k.t()?)?)?;
    y / ((h * w) as f64).sqrt()
}

/// GFNet's global filter as discrete Fourier transforms written as real matrix products (no
/// FFT): [`rfft2_ortho`], complex product with the weight, [`irfft2_ortho`]; `x` `(B, H, W, C)`,
/// `weight` `(H, W/2 + 1, C, 2)`.
pub fn spectral_filter(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (_, h, w, c) = x.dims4()?;
    let k = w / 2 + 1;
    if weight.dims() != [h, k, c, 2] {
        return Err(KernelError::Shape {
            op: "spectral_filter",
            what: "weight",
            expected: format!("[{h}, {k}, {c}, 2]"),
            found: weight.dims().to_vec(),
        }
        .into());
    }
    let dtype = x.dtype();
    let (re, im) = rfft2_ortho(&x.permute((0, 3, 1, 2))?.contiguous()?)?;
    let wt = weight.to_dtype(DType::F32)?.permute((2, 0, 1, 3))?;
    let (wr, wi) = (
        wt.narrow(3, 0, 1)?.squeeze(3)?,
        wt.narrow(3, 1, 1)?.squeeze(3)?,
    );
    let yr = (re.broadcast_mul(&wr)? - im.broadcast_mul(&wi)?)?;
    let yi = (re.broadcast_mul(&wi)? + im.broadcast_mul(&wr)?)?;
    irfft2_ortho(&yr, &yi, w)?
        .permute((0, 2, 3, 1))?
        .to_dtype(dtype)
}

/// The selective scan as a per-step loop of candle ops (the recurrence as Mamba's
/// `selective_scan_ref` writes it): `u`, `delta` `(B, D, L)`, `a` `(D, N)`, `b`, `c`
/// `(B, N, L)`; returns `y` `(B, D, L)` without the `D` skip or gating.
pub fn selective_scan(
    u: &Tensor,
    delta: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
) -> Result<Tensor> {
    let (batch, d, l) = u.dims3()?;
    let n = a.dim(1)?;
    let delta_a = delta
        .unsqueeze(3)?
        .broadcast_mul(&a.reshape((1, d, 1, n))?)?
        .exp()?;
    let delta_b_u = (delta * u)?
        .unsqueeze(3)?
        .broadcast_mul(&b.transpose(1, 2)?.unsqueeze(1)?)?;
    let c = c.transpose(1, 2)?;
    let mut state = Tensor::zeros((batch, d, n), u.dtype(), u.device())?;
    let mut ys = Vec::with_capacity(l);
    for t in 0..l {
        state = ((delta_a.narrow(2, t, 1)?.squeeze(2)? * &state)?
            + delta_b_u.narrow(2, t, 1)?.squeeze(2)?)?;
        let ct = c.narrow(1, t, 1)?;
        ys.push(state.broadcast_mul(&ct)?.sum(2)?);
    }
    Tensor::stack(&ys, 2)
}

/// The SSD scan of [`crate::ssd_scan`] in its quadratic dual form, as candle ops: per
/// `(batch, head)`, `y = (M ⊙ (C Bᵀ)) X` with `M[t, s] = exp(cs_t - cs_s)` over `s ≤ t`
/// (`cs` the inclusive cumulative sum of `log_decay`), or `exp(e_s - e_t)` over `s ≥ t` for the
/// reverse scan (`e` the exclusive one). The segment sums of the masked half are replaced by 0
/// before the `exp` (`where_cond`), so they are never exponentiated to infinity and pass no
/// gradient. `x` `(B, L, H, P)`, `log_decay` `(B, L, H)`, `b`, `c` `(B, L, G, N)`; `O(L²)`
/// memory per head. The fallback of the fused op and its backward on CUDA.
pub fn ssd_scan(
    x: &Tensor,
    log_decay: &Tensor,
    b: &Tensor,
    c: &Tensor,
    reverse: bool,
) -> Result<Tensor> {
    let d = crate::ssd::dims(x.dims(), log_decay.dims(), b.dims(), c.dims())?;
    if d.is_empty() {
        return Tensor::zeros((d.b, d.l, d.h, d.p), x.dtype(), x.device());
    }
    let (bs, l, h, g) = (d.b, d.l, d.h, d.g);
    let dev = x.device();
    // (B, H, L)
    let ld = log_decay.transpose(1, 2)?.contiguous()?;
    let cs = ld.cumsum(2)?;
    let (rows, cols) = if reverse {
        let e = (&cs - &ld)?;
        (e.neg()?, e)
    } else {
        (cs.clone(), cs.neg()?)
    };
    // seg[t, s] = rows_t + cols_s.
    let seg = rows.unsqueeze(3)?.broadcast_add(&cols.unsqueeze(2)?)?;
    let idx = Tensor::arange(0u32, l as u32, dev)?;
    let (t, s) = (idx.reshape((l, 1))?, idx.reshape((1, l))?);
    let mask = if reverse {
        s.broadcast_ge(&t)?
    } else {
        s.broadcast_le(&t)?
    };
    let mask = mask.broadcast_as(seg.shape())?;
    let decay = mask.where_cond(&seg, &seg.zeros_like()?)?.exp()?;
    let decay = mask.where_cond(&decay, &decay.zeros_like()?)?;
    // c_t · b_s per group, (B, G, L, L), shared by the heads of the group.
    let cb = c
        .transpose(1, 2)?
        .contiguous()?
        .matmul(&b.transpose(1, 2)?.transpose(2, 3)?.contiguous()?)?;
    let m = decay
        .reshape((bs, g, h / g, l, l))?
        .broadcast_mul(&cb.unsqueeze(2)?)?
        .reshape((bs, h, l, l))?;
    m.matmul(&x.transpose(1, 2)?.contiguous()?)?
        .transpose(1, 2)?
        .contiguous()
}

/// `gelu(x + bias)` with `bias` `[C]` broadcast along axis `channel_axis` of `x`, as candle ops.
pub fn bias_gelu(x: &Tensor, bias: &Tensor, channel_axis: usize) -> Result<Tensor> {
    let mut shape = vec![1; x.rank()];
    shape[channel_axis] = bias.elem_count();
    x.broadcast_add(&bias.reshape(shape)?)?.gelu_erf()
}

/// A channel MLP and residual add as candle ops: `base + act(x fc1 + b1) fc2 + b2` for `x`
/// `(rows, C)` and `base` `(rows, N)`.
pub fn residual_mlp(x: &Tensor, base: &Tensor, mlp: &crate::MlpWeights) -> Result<Tensor> {
    base.add(&mlp.compose(x)?)
}

/// MambaOut's gate as candle ops: `gelu(g) * concat(i, conv)` for `h = [g, i, c]` `(rows,
/// 2 * hidden)` split at `hidden` and `2 * hidden - k`, `conv` `(rows, k)`.
pub fn gelu_gate(h: &Tensor, conv: &Tensor, hidden: usize) -> Result<Tensor> {
    let k = conv.dim(1)?;
    let gate = h.narrow(1, 0, hidden)?.gelu_erf()?;
    let values = if k == hidden {
        conv.clone()
    } else {
        Tensor::cat(&[&h.narrow(1, hidden, hidden - k)?, conv], 1)?
    };
    gate * values
}

/// StarReLU as candle ops: `scale * relu(x)^2 + bias`.
pub fn star_relu(x: &Tensor, scale: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.relu()?.sqr()?.broadcast_mul(scale)?.broadcast_add(bias)
}

/// MS-MLP's mix-shift as candle ops, per channel: roll along the width / height
/// (`torch.roll`), depthwise convolution with the packed `(2, C, k, k)` kernels, plus the
/// `(2, C)` biases, summed.
pub fn mix_shift(x: &Tensor, weights: &Tensor, biases: &Tensor, shifts: &[i32]) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let k = weights.dim(3)?;
    let mut outs = Vec::with_capacity(c);
    for (ch, &s) in shifts.iter().enumerate().take(c) {
        let xc = x.narrow(1, ch, 1)?;
        let mut y: Option<Tensor> = None;
        for (dir, axis) in [(0, 3), (1, 2)] {
            let wk = weights.get(dir)?.narrow(0, ch, 1)?.unsqueeze(0)?;
            let conv = xc.roll(s, axis)?.conv2d(&wk, k / 2, 1, 1, 1)?;
            let conv =
                conv.broadcast_add(&biases.get(dir)?.narrow(0, ch, 1)?.reshape((1, 1, 1))?)?;
            y = Some(match y {
                Some(acc) => (acc + conv)?,
                None => conv,
            });
        }
        if let Some(y) = y {
            outs.push(y);
        }
    }
    Tensor::cat(&outs, 1)
}

/// Every neighbour of a `height x width` map over a `window`, as candle ops: `x` `(B, heads,
/// N, d)` viewed as a map, zero-padded by `window / 2` on each side, and each of the
/// `window * window` shifted views (row-major over the window) reshaped to `(B, heads, N, d)`.
fn neighbors(x: &Tensor, height: usize, width: usize, window: usize) -> Result<Vec<Tensor>> {
    let (b, heads, n, d) = x.dims4()?;
    let r = window / 2;
    let padded = x
        .reshape((b, heads, height, width, d))?
        .pad_with_zeros(2, r, r)?
        .pad_with_zeros(3, r, r)?;
    let mut out = Vec::with_capacity(window * window);
    for dy in 0..window {
        for dx in 0..window {
            out.push(
                padded
                    .narrow(2, dy, height)?
                    .narrow(3, dx, width)?
                    .reshape((b, heads, n, d))?,
            );
        }
    }
    Ok(out)
}

/// `(1, 1, N, window * window)` mask (u8) of the neighbours inside a `height x width` map: the
/// neighbours of a map of ones, by [`neighbors`], compared with zero.
fn neighbors_inside(height: usize, width: usize, window: usize, like: &Tensor) -> Result<Tensor> {
    let ones = Tensor::ones((1, 1, height * width, 1), DType::F32, like.device())?;
    Tensor::cat(&neighbors(&ones, height, width, window)?, 3)?.ne(0f32)
}

/// [`crate::neighborhood_logits`] as candle ops: `k` zero-padded and shifted to every
/// neighbour, multiplied by `q` and summed over `d`, the logits of the
/// neighbours outside the map replaced by `-inf` (`where_cond`, so they pass no gradient).
pub fn neighborhood_logits(
    q: &Tensor,
    k: &Tensor,
    height: usize,
    width: usize,
    window: usize,
) -> Result<Tensor> {
    crate::neighborhood::logits_dims(q.dims(), k.dims(), height, width, window)?;
    let cols = neighbors(k, height, width, window)?
        .iter()
        .map(|kj| (q * kj)?.sum_keepdim(3))
        .collect::<Result<Vec<_>>>()?;
    let logits = Tensor::cat(&cols, 3)?;
    let inside = neighbors_inside(height, width, window, q)?.broadcast_as(logits.shape())?;
    let neg_inf = Tensor::new(f32::NEG_INFINITY, q.device())?
        .to_dtype(q.dtype())?
        .broadcast_as(logits.shape())?;
    inside.where_cond(&logits, &neg_inf)
}

/// [`crate::neighborhood_aggregate`] as candle ops: the weights of the neighbours outside the
/// map replaced by zero (`where_cond`, so an infinite weight there gives no NaN and no
/// gradient), then the sum over the neighbours of each weight column times `v` zero-padded and
/// shifted to that neighbour.
pub fn neighborhood_aggregate(
    weights: &Tensor,
    v: &Tensor,
    height: usize,
    width: usize,
    window: usize,
) -> Result<Tensor> {
    crate::neighborhood::aggregate_dims(weights.dims(), v.dims(), height, width, window)?;
    let inside = neighbors_inside(height, width, window, weights)?.broadcast_as(weights.shape())?;
    let weights = inside.where_cond(weights, &weights.zeros_like()?)?;
    let mut out = v.zeros_like()?;
    for (j, vj) in neighbors(v, height, width, window)?.iter().enumerate() {
        out = (out + weights.narrow(3, j, 1)?.broadcast_mul(vj)?)?;
    }
    Ok(out)
}
