//! Fused activations: exact GELU with a vectorizable erf (alone or after a bias add) and
//! StarReLU (also SquaredReLU).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::error::contiguous_f32;
use crate::KernelError;

/// `erf(x)` as a rational function of `x` clamped to `[-4, 4]` (the coefficients of Eigen's
/// `generic_fast_erf_float`; error a few ulp in f32). Branch-free, so loops over it vectorize.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_6e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_2e-3;
    p = p * x2 - 1.609_603_3e-2;
    p *= x;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    p / q
}

const CHUNK: usize = 16 * 1024;

/// Candle custom op: exact (erf) GELU `0.5 x (1 + erf(x / sqrt(2)))` on a contiguous f32 tensor,
/// in parallel chunks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "tokenmix-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "gelu", "input")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| gelu_slice(x, 0.0, o));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map1;
        let slice = cuda_kernel("gelu_fwd", "gelu").map(&s.slice, &s.device, l)?;
        Ok((crate::cuda::wrap(slice, s), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if x.device().is_cuda() {
            return Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?));
        }
        let g = crate::grad::via_composition(&[x], grad, |t| t[0].gelu_erf())?;
        Ok(g.into_iter().next())
    }
}

/// Candle custom op: `gelu(x + bias)` on a contiguous f32 `x` whose channel axis has
/// `channels` entries, each followed by `inner` contiguous elements, and `bias` `[channels]`:
/// a linear layer's bias add folded into its activation (CPU only).
#[derive(Debug, Clone, Copy)]
pub struct BiasGelu {
    /// Length of the channel axis.
    pub channels: usize,
    /// Elements after the channel axis (1 for channel-last tensors).
    pub inner: usize,
    /// Index of the channel axis (for the backward's composition).
    pub axis: usize,
}

#[inline(always)]
pub(crate) fn gelu_of(v: f32) -> f32 {
    0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// `out[i] = gelu(x[i] + bias)`.
#[inline(always)]
fn gelu_slice_body(x: &[f32], bias: f32, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = gelu_of(v + bias);
    }
}

/// `out[i] = gelu(x[i] + bias[i % C])` over rows of `C = bias.len()` channels.
#[inline(always)]
fn gelu_rows_body(x: &[f32], bias: &[f32], out: &mut [f32]) {
    let c = bias.len();
    for (o, x) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        for ((o, &v), &b) in o.iter_mut().zip(x).zip(bias) {
            *o = gelu_of(v + b);
        }
    }
}

/// `x[i] = gelu(x[i] + bias[i % C])` in place over rows of `C = bias.len()` channels.
#[inline(always)]
fn gelu_rows_in_place_body(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v = gelu_of(*v + b);
        }
    }
}

crate::simd::dispatch! {
    /// [`gelu_rows_in_place_body`] on wide vectors where the CPU has them.
    pub(crate) fn gelu_rows_in_place(x: &mut [f32], bias: &[f32]) => gelu_rows_in_place_body
}

crate::simd::dispatch! {
    /// [`gelu_slice_body`] on wide vectors where the CPU has them.
    pub(crate) fn gelu_slice(x: &[f32], bias: f32, out: &mut [f32]) => gelu_slice_body
}

crate::simd::dispatch! {
    /// [`gelu_rows_body`] on wide vectors where the CPU has them.
    fn gelu_rows(x: &[f32], bias: &[f32], out: &mut [f32]) => gelu_rows_body
}

impl BiasGelu {
    /// Channel-last: every row of `channels` values gets the whole bias vector.
    fn rows_of_channels(&self, x: &[f32], b: &[f32], out: &mut [f32]) {
        let c = self.channels;
        let task = (CHUNK / c).max(1) * c;
        out.par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .for_each(|(o, x)| gelu_rows(x, &b[..c], o));
    }

    /// Channel-first: every run of `inner` values shares one channel's bias.
    fn runs_per_channel(&self, x: &[f32], b: &[f32], out: &mut [f32]) {
        let (c, inner) = (self.channels, self.inner);
        let runs = (CHUNK / inner).max(1);
        out.par_chunks_mut(runs * inner)
            .zip(x.par_chunks(runs * inner))
            .enumerate()
            .for_each(|(task, (o, x))| {
                let first = task * runs;
                for (r, (o, x)) in o
                    .chunks_exact_mut(inner)
                    .zip(x.chunks_exact(inner))
                    .enumerate()
                {
                    gelu_slice(x, b[(first + r) % c], o);
                }
            });
    }
}

impl candle_core::CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "tokenmix-bias-gelu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "bias_gelu", "input")?;
        let b = contiguous_f32(bs, bl, "bias_gelu", "bias")?;
        let (c, inner) = (self.channels, self.inner);
        if b.len() != c || c == 0 || inner == 0 || x.len() % (c * inner) != 0 {
            return Err(KernelError::Param {
                op: "bias_gelu",
                msg: format!("a bias of {} for {c} channels of {inner}", b.len()),
            }
            .into());
        }
        let mut out = vec![0f32; x.len()];
        if inner == 1 {
            self.rows_of_channels(x, b, &mut out);
        } else {
            self.runs_per_channel(x, b, &mut out);
        }
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let axis = self.axis;
        let g = crate::grad::via_composition(&[x, bias], grad, |t| {
            crate::composed::bias_gelu(&t[0], &t[1], axis)
        })?;
        let mut g = g.into_iter();
        Ok((g.next(), g.next()))
    }
}

#[cfg(feature = "cuda")]
fn cuda_kernel(kernel: &'static str, op: &'static str) -> crate::cuda::Elementwise {
    crate::cuda::Elementwise {
        module: &crate::cuda::ACTIVATION,
        kernel,
        op,
    }
}

/// `(x, grad) -> grad * gelu'(x)`: the input gradient of exact GELU in one pass (the GPU's
/// backward; the CPU differentiates the composition).
#[derive(Debug, Clone, Copy)]
struct GeluGrad;

impl candle_core::CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "tokenmix-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "gelu backward", "input")?;
        let g = contiguous_f32(gs, gl, "gelu backward", "gradient")?;
        let density = |v: f32| (-0.5 * v * v).exp() * 0.398_942_3;
        let dx = x
            .iter()
            .zip(g)
            .map(|(&v, &g)| {
                g * (0.5 * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2)) + v * density(v))
            })
            .collect();
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map2;
        let slice = cuda_kernel("gelu_bwd", "gelu backward")
            .map(&xs.slice, xl, &gs.slice, gl, &xs.device)?;
        Ok((crate::cuda::wrap(slice, xs), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn erf_is_accurate() {
        // Reference values of erf.
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (-1.5, -0.966_105_1),
            (5.0, 1.0),
        ] {
            assert!(
                (super::erf(x) - want).abs() < 2e-7,
                "erf({x}) = {} vs {want}",
                super::erf(x)
            );
        }
    }
}

/// Candle custom op `(x, scale, bias) -> scale * relu(x)^2 + bias` (StarReLU) on a contiguous
/// f32 tensor with scalar (`[1]`) `scale` and `bias`, in one pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct StarRelu;

impl candle_core::CustomOp3 for StarRelu {
    fn name(&self) -> &'static str {
        "tokenmix-star-relu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check_scalars(sl, bl)?;
        let scale = contiguous_f32(ss, sl, "star_relu", "scale")?[0];
        let bias = contiguous_f32(bs, bl, "star_relu", "bias")?[0];
        let x = contiguous_f32(xs, xl, "star_relu", "input")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| {
                for (o, &v) in o.iter_mut().zip(x) {
                    let r = v.max(0.0);
                    *o = scale * r * r + bias;
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ss: &candle_core::CudaStorage,
        sl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map3;
        check_scalars(sl, bl)?;
        let k = cuda_kernel("star_relu_fwd", "star_relu");
        let slice = k.map(&xs.slice, xl, &ss.slice, sl, &bs.slice, bl, &xs.device)?;
        Ok((crate::cuda::wrap(slice, xs), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if x.device().is_cuda() {
            return star_relu_grads(x, scale, bias, &grad.contiguous()?);
        }
        let g = crate::grad::via_composition(&[x, scale, bias], grad, |t| {
            crate::composed::star_relu(&t[0], &t[1], &t[2])
        })?;
        Ok((Some(g[0].clone()), Some(g[1].clone()), Some(g[2].clone())))
    }
}

/// Checks that StarReLU's `scale` and `bias` (their layouts) are single values, naming the
/// first that is not.
fn check_scalars(scale: &Layout, bias: &Layout) -> Result<()> {
    for (l, what) in [(scale, "scale"), (bias, "bias")] {
        if l.shape().elem_count() != 1 {
            return Err(KernelError::Shape {
                op: "star_relu",
                what,
                expected: "[1]".into(),
                found: l.shape().dims().to_vec(),
            }
            .into());
        }
    }
    Ok(())
}

/// StarReLU's gradients on the GPU: the input's in one kernel pass, the scalars' as sums.
fn star_relu_grads(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let dx = x.apply_op3_no_bwd(grad, &scale.contiguous()?, &StarReluGrad)?;
    // Half-precision sums over a whole tensor lose the result; accumulate in f32.
    let (g32, x32) = (grad.to_dtype(DType::F32)?, x.to_dtype(DType::F32)?);
    let dscale = (&g32 * x32.relu()?.sqr()?)?
        .sum_all()?
        .to_dtype(scale.dtype())?
        .reshape(scale.shape())?;
    let dbias = g32
        .sum_all()?
        .to_dtype(bias.dtype())?
        .reshape(bias.shape())?;
    Ok((Some(dx), Some(dscale), Some(dbias)))
}

/// `(x, grad, scale) -> grad * 2 scale relu(x)`: StarReLU's input gradient in one pass.
#[derive(Debug, Clone, Copy)]
struct StarReluGrad;

impl candle_core::CustomOp3 for StarReluGrad {
    fn name(&self) -> &'static str {
        "tokenmix-star-relu-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "star_relu backward", "input")?;
        let g = contiguous_f32(gs, gl, "star_relu backward", "gradient")?;
        let s2 = 2.0 * contiguous_f32(ss, sl, "star_relu backward", "scale")?[0];
        let dx = x
            .iter()
            .zip(g)
            .map(|(&v, &g)| g * s2 * v.max(0.0))
            .collect();
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        ss: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map3;
        let k = cuda_kernel("star_relu_bwd", "star_relu backward");
        let slice = k.map(&xs.slice, xl, &gs.slice, gl, &ss.slice, sl, &xs.device)?;
        Ok((crate::cuda::wrap(slice, xs), xl.shape().clone()))
    }
}

/// Candle custom op on `(h, conv)`: MambaOut's gate. `h` `(rows, 2 * hidden)` is a gated
/// block's first projection, split along the channels as `[g (hidden), i (hidden - k),
/// c (k)]`, and `conv` `(rows, k)` the depthwise convolution of `c`; the output `(rows, hidden)`
/// is `gelu(g) * concat(i, conv)` in one pass, without slicing or concatenating tensors.
/// Both operands contiguous f32; differentiable in both.
#[derive(Debug, Clone, Copy)]
pub struct GeluGate {
    hidden: usize,
}

impl GeluGate {
    /// The gate for `hidden` gated channels.
    pub fn new(hidden: usize) -> Self {
        Self { hidden }
    }

    /// `(rows, k)` after checking that `h` is `(rows, 2 * hidden)` and `conv` `(rows, k)`
    /// with `1 <= k <= hidden`.
    pub(crate) fn dims(&self, h: &Shape, conv: &Shape) -> Result<(usize, usize)> {
        let hidden = self.hidden;
        let err = |what, expected, found: &Shape| {
            crate::error::shape_error_of("gelu_gate", what, expected, found.dims())
        };
        let rows = match *h.dims() {
            [rows, w] if w == 2 * hidden && hidden > 0 => rows,
            _ => return Err(err("h", format!("(rows, {})", 2 * hidden), h)),
        };
        match *conv.dims() {
            [r, k] if r == rows && (1..=hidden).contains(&k) => Ok((rows, k)),
            _ => Err(err("conv", format!("({rows}, 1..={hidden})"), conv)),
        }
    }
}

impl candle_core::CustomOp2 for GeluGate {
    fn name(&self) -> &'static str {
        "tokenmix-gelu-gate"
    }

    fn cpu_fwd(
        &self,
        hs: &CpuStorage,
        hl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, k) = self.dims(hl.shape(), cl.shape())?;
        let h = contiguous_f32(hs, hl, "gelu_gate", "h")?;
        let conv = contiguous_f32(cs, cl, "gelu_gate", "conv")?;
        let hidden = self.hidden;
        let mut out = vec![0f32; rows * hidden];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), Shape::from((rows, hidden))));
        }
        let task = (CHUNK / hidden).max(1);
        out.par_chunks_mut(task * hidden)
            .zip(h.par_chunks(task * 2 * hidden))
            .zip(conv.par_chunks(task * k))
            .for_each(|((o, h), c)| gelu_gate_rows(h, c, hidden, k, o));
        Ok((CpuStorage::F32(out), Shape::from((rows, hidden))))
    }

    fn bwd(
        &self,
        h: &Tensor,
        conv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let hidden = self.hidden;
        let g = crate::grad::via_composition(&[h, conv], grad, |t| {
            crate::composed::gelu_gate(&t[0], &t[1], hidden)
        })?;
        let mut g = g.into_iter();
        Ok((g.next(), g.next()))
    }
}

/// Rows of [`GeluGate`]: `out` `(r, hidden)` from `h` `(r, 2 * hidden)` and `conv` `(r, k)`.
#[inline(always)]
fn gelu_gate_rows_body(h: &[f32], conv: &[f32], hidden: usize, k: usize, out: &mut [f32]) {
    let identity = hidden - k;
    for ((o, h), c) in out
        .chunks_exact_mut(hidden)
        .zip(h.chunks_exact(2 * hidden))
        .zip(conv.chunks_exact(k))
    {
        let (g, rest) = h.split_at(hidden);
        let (o_id, o_conv) = o.split_at_mut(identity);
        for ((o, &g), &i) in o_id.iter_mut().zip(g).zip(&rest[..identity]) {
            *o = gelu_of(g) * i;
        }
        for ((o, &g), &c) in o_conv.iter_mut().zip(&g[identity..]).zip(c) {
            *o = gelu_of(g) * c;
        }
    }
}

crate::simd::dispatch! {
    /// [`gelu_gate_rows_body`] on wide vectors where the CPU has them.
    fn gelu_gate_rows(h: &[f32], conv: &[f32], hidden: usize, k: usize, out: &mut [f32]) => gelu_gate_rows_body
}
