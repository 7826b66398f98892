//! Fused normalization over channels: LayerNorm over `C` at every position, or GroupNorm with
//! one group over all of `(C, H, W)`, with a per-channel weight and bias.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ptr::SyncPtr;
use crate::KernelError;

/// Which elements share one mean and variance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormAxes {
    /// LayerNorm over the channel axis: one mean per `(b, h, w)` (or per token).
    Channels,
    /// GroupNorm with one group: one mean per sample over `(C, H, W)`.
    AllButBatch,
}

/// Candle custom op `(x, weight, bias) -> y`: `x` contiguous f32 viewed as `(outer, C, inner)`
/// (`(B, C, H*W)` for NCHW maps, `(B*N, C, 1)` for tokens or channel-last maps), `weight` and
/// `bias` `[C]`; `y = (x - mean) / sqrt(var + eps) * weight + bias` with the biased variance
/// taken over the axes of [`NormAxes`] (for GroupNorm, everything but the first axis; on CUDA
/// the channels must then be axis 1).
#[derive(Debug, Clone, Copy)]
pub struct ChannelNorm {
    axes: NormAxes,
    eps: f32,
    channel_axis: usize,
}

impl ChannelNorm {
    /// The op normalizing over `axes` with `eps`, channels at `channel_axis` of the input.
    pub fn new(axes: NormAxes, eps: f64, channel_axis: usize) -> Self {
        Self {
            axes,
            eps: eps as f32,
            channel_axis,
        }
    }

    fn split(&self, shape: &Shape) -> Result<(usize, usize, usize)> {
        let dims = shape.dims();
        if self.channel_axis >= dims.len() {
            return Err(KernelError::Shape {
                op: "channel_norm",
                what: "x",
                expected: format!("an axis {}", self.channel_axis),
                found: dims.to_vec(),
            }
            .into());
        }
        let outer = dims[..self.channel_axis].iter().product();
        let inner = dims[self.channel_axis + 1..].iter().product();
        Ok((outer, dims[self.channel_axis], inner))
    }

    /// How many slabs share one mean for [`NormAxes::AllButBatch`]: the batch size, with the
    /// channels on any axis after the batch axis.
    fn samples(&self, shape: &Shape) -> Result<usize> {
        match shape.dims() {
            [b, ..] if self.channel_axis >= 1 => Ok(*b),
            dims => Err(KernelError::Shape {
                op: "channel_norm",
                what: "x",
                expected: "a batch axis before the channel axis".into(),
                found: dims.to_vec(),
            }
            .into()),
        }
    }
}

const CHUNK: usize = 256;

/// LayerNorm over `c` for positions `i0..i1` of one `(c, inner)` slab.
#[allow(clippy::too_many_arguments)]
fn layer_norm_chunk(
    src: &[f32],
    c: usize,
    inner: usize,
    i0: usize,
    i1: usize,
    w: &[f32],
    b: &[f32],
    eps: f32,
    dst: SyncPtr,
) {
    let n = i1 - i0;
    let mut mean = [0f32; CHUNK];
    let mut var = [0f32; CHUNK];
    for ch in 0..c {
        let row = &src[ch * inner + i0..ch * inner + i1];
        for (m, v) in mean[..n].iter_mut().zip(row) {
            *m += v;
        }
    }
    let inv_c = 1.0 / c as f32;
    mean[..n].iter_mut().for_each(|m| *m *= inv_c);
    for ch in 0..c {
        let row = &src[ch * inner + i0..ch * inner + i1];
        for ((s, v), m) in var[..n].iter_mut().zip(row).zip(&mean[..n]) {
            let d = v - m;
            *s += d * d;
        }
    }
    var[..n]
        .iter_mut()
        .for_each(|s| *s = 1.0 / (*s * inv_c + eps).sqrt());
    for ch in 0..c {
        let row = &src[ch * inner + i0..ch * inner + i1];
        // SAFETY: each task writes only positions i0..i1 of its own slab, so writes are disjoint.
        let out = unsafe { std::slice::from_raw_parts_mut(dst.0.add(ch * inner + i0), n) };
        let (wc, bc) = (w[ch], b[ch]);
        for (((o, v), m), s) in out.iter_mut().zip(row).zip(&mean[..n]).zip(&var[..n]) {
            *o = (v - m) * s * wc + bc;
        }
    }
}

crate::simd::dispatch! {
    /// [`layer_norm_row_body`] on wide vectors where the CPU has them.
    pub(crate) fn layer_norm_row(row: &[f32], w: &[f32], b: &[f32], eps: f32, dst: &mut [f32]) => layer_norm_row_body
}

/// LayerNorm of one channel-last row: `dst = (row - mean) / sqrt(var + eps) * w + b`, the sums
/// kept in eight lanes so the loops vectorize.
#[inline(always)]
fn layer_norm_row_body(row: &[f32], w: &[f32], b: &[f32], eps: f32, dst: &mut [f32]) {
    let c = row.len() as f32;
    let mut lanes = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for ch in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(ch) {
            *l += v;
        }
    }
    let mean = (lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()) / c;
    let mut lanes = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for ch in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(ch) {
            *l += (v - mean) * (v - mean);
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    let var = (lanes.iter().sum::<f32>() + tail) / c;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, v), wc), bc) in dst.iter_mut().zip(row).zip(w).zip(b) {
        *o = (v - mean) * inv * wc + bc;
    }
}

fn layer_norm(
    x: &[f32],
    (outer, c, inner): (usize, usize, usize),
    w: &[f32],
    b: &[f32],
    eps: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    if inner == 1 {
        out.par_chunks_mut(c)
            .zip(x.par_chunks(c))
            .for_each(|(dst, row)| layer_norm_row(row, w, b, eps, dst));
        return out;
    }
    let ptr = SyncPtr(out.as_mut_ptr());
    let chunks = inner.div_ceil(CHUNK);
    (0..outer * chunks).into_par_iter().for_each(|task| {
        let (o, k) = (task / chunks, task % chunks);
        let (i0, i1) = (k * CHUNK, ((k + 1) * CHUNK).min(inner));
        let slab = &x[o * c * inner..(o + 1) * c * inner];
        // SAFETY: o < outer, so the slab start is inside `out`.
        let dst = unsafe { ptr.add(o * c * inner) };
        layer_norm_chunk(slab, c, inner, i0, i1, w, b, eps, dst);
    });
    out
}

/// GroupNorm with one group over each of the `samples` equal slabs of `x`; the channel of an
/// element is that of its run of `inner` consecutive values, runs cycling through the `c`
/// channels (`inner = H * W` channel-first, `inner = 1` channel-last).
fn group_norm1(
    x: &[f32],
    samples: usize,
    (c, inner): (usize, usize),
    w: &[f32],
    b: &[f32],
    eps: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let per = x.len() / samples;
    let run = if inner == 1 { c } else { inner };
    for (slab, dst) in x.chunks(per).zip(out.chunks_mut(per)) {
        let n = per as f64;
        let mean = slab
            .par_chunks(run.max(1024))
            .map(|r| r.iter().map(|&v| v as f64).sum::<f64>())
            .sum::<f64>()
            / n;
        let m = mean as f32;
        let var = slab
            .par_chunks(run.max(1024))
            .map(|r| r.iter().map(|&v| ((v - m) * (v - m)) as f64).sum::<f64>())
            .sum::<f64>()
            / n;
        let inv = (1.0 / (var + eps as f64).sqrt()) as f32;
        let scale: Vec<f32> = w.iter().map(|wc| inv * wc).collect();
        let shift: Vec<f32> = b.iter().zip(&scale).map(|(bc, s)| bc - m * s).collect();
        if inner == 1 {
            let task = (CHUNK * 16 / c).max(1) * c;
            dst.par_chunks_mut(task)
                .zip(slab.par_chunks(task))
                .for_each(|(d, src)| affine_rows(src, &scale, &shift, d));
        } else {
            let runs = dst.par_chunks_mut(run).zip(slab.par_chunks(run));
            runs.enumerate().for_each(|(j, (d, src))| {
                let ch = j % c;
                for (o, v) in d.iter_mut().zip(src) {
                    *o = v * scale[ch] + shift[ch];
                }
            });
        }
    }
    out
}

crate::simd::dispatch! {
    /// [`affine_rows_body`] on wide vectors where the CPU has them.
    fn affine_rows(src: &[f32], scale: &[f32], shift: &[f32], dst: &mut [f32]) => affine_rows_body
}

/// `dst = src * scale + shift` on channel-last rows, `scale` and `shift` per channel.
#[inline(always)]
fn affine_rows_body(src: &[f32], scale: &[f32], shift: &[f32], dst: &mut [f32]) {
    let c = scale.len();
    for (d, row) in dst.chunks_exact_mut(c).zip(src.chunks_exact(c)) {
        for (((o, v), s), t) in d.iter_mut().zip(row).zip(scale).zip(shift) {
            *o = v * s + t;
        }
    }
}

/// Checks that `weight` and `bias` (their layouts) hold one value per channel of `c`, naming
/// the first that does not.
fn check_affine(c: usize, weight: &Layout, bias: &Layout) -> Result<()> {
    match [weight, bias]
        .into_iter()
        .find(|l| l.shape().elem_count() != c)
    {
        None => Ok(()),
        Some(bad) => Err(KernelError::Shape {
            op: "channel_norm",
            what: "weight and bias",
            expected: format!("[{c}]"),
            found: bad.shape().dims().to_vec(),
        }
        .into()),
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &'static str) -> Result<&'a [f32]> {
    crate::error::contiguous_f32(s, l, "channel_norm", what)
}

impl CustomOp3 for ChannelNorm {
    fn name(&self) -> &'static str {
        "tokenmix-channel-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = self.split(xl.shape())?;
        let (x, w, b) = (
            contiguous(xs, xl, "x")?,
            contiguous(ws, wl, "weight")?,
            contiguous(bs, bl, "bias")?,
        );
        check_affine(dims.1, wl, bl)?;
        if x.is_empty() {
            return Ok((CpuStorage::F32(vec![]), xl.shape().clone()));
        }
        let y = match self.axes {
            NormAxes::Channels => layer_norm(x, dims, w, b, self.eps),
            NormAxes::AllButBatch => {
                let samples = self.samples(xl.shape())?;
                group_norm1(x, samples, (dims.1, dims.2), w, b, self.eps)
            }
        };
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map3;
        let dims = self.split(xl.shape())?;
        check_affine(dims.1, wl, bl)?;
        if self.axes == NormAxes::AllButBatch && self.samples(xl.shape())? != dims.0 {
            return Err(KernelError::Shape {
                op: "channel_norm",
                what: "x (GroupNorm on CUDA)",
                expected: "channels at axis 1".into(),
                found: xl.shape().dims().to_vec(),
            }
            .into());
        }
        let launch = gpu::Launch {
            axes: self.axes,
            eps: self.eps,
            dims,
        };
        let y = launch.map(&xs.slice, xl, &ws.slice, wl, &bs.slice, bl, &xs.device)?;
        Ok((crate::cuda::wrap(y, xs), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (outer, c, inner) = self.split(x.shape())?;
        let f32 = candle_core::DType::F32;
        // (slabs sharing a mean, runs before the channel axis, C, inner)
        let (slabs, pre) = match self.axes {
            NormAxes::Channels => (outer, 1),
            NormAxes::AllButBatch => {
                let samples = self.samples(x.shape())?;
                (samples, outer / samples)
            }
        };
        let dims4 = (slabs, pre, c, inner);
        let g4 = grad.to_dtype(f32)?.reshape(dims4)?;
        let w4 = w.to_dtype(f32)?.reshape((1, 1, c, 1))?;
        let (xhat, inv) =
            crate::composed::normalize_over(x, self.axes, self.eps as f64, (outer, c, inner))?;
        let (xhat, inv) = (xhat.reshape(dims4)?, inv.unsqueeze(1)?);
        let gw = g4.broadcast_mul(&w4)?;
        let mean = |t: &Tensor| match self.axes {
            NormAxes::Channels => t.mean_keepdim(2),
            NormAxes::AllButBatch => t.mean_keepdim(3)?.mean_keepdim(2)?.mean_keepdim(1),
        };
        let dx = gw
            .broadcast_sub(&mean(&gw)?)?
            .sub(&xhat.broadcast_mul(&mean(&(&gw * &xhat)?)?)?)?
            .broadcast_mul(&inv)?
            .reshape(x.shape())?
            .to_dtype(x.dtype())?;
        let per_channel = |t: Tensor| t.sum(3)?.sum(1)?.sum(0)?.reshape(w.shape());
        let dw = per_channel((&g4 * &xhat)?)?;
        let db = per_channel(g4)?;
        Ok((
            Some(dx),
            Some(dw.to_dtype(w.dtype())?),
            Some(db.to_dtype(w.dtype())?),
        ))
    }
}

/// The most samples one GroupNorm statistics launch takes: its grid's y dimension indexes them.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const MAX_GRID_Y: usize = 65535;

/// `(first, count)` of consecutive chunks of at most [`MAX_GRID_Y`] samples covering
/// `0..samples`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn sample_chunks(samples: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..samples)
        .step_by(MAX_GRID_Y)
        .map(move |first| (first, MAX_GRID_Y.min(samples - first)))
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDevice, Map3, WrapErr};
    use candle_core::{Layout, Result, WithDType};

    use super::NormAxes;
    use crate::cuda::{func, grid, int, product, threads_for, view, BLOCK, NORM};
    use crate::KernelError;

    const OP: &str = "channel_norm";

    /// The channel-norm launch for `x` viewed as `dims = (outer, C, inner)`.
    pub(super) struct Launch {
        pub(super) axes: NormAxes,
        pub(super) eps: f32,
        pub(super) dims: (usize, usize, usize),
    }

    /// `x`, `weight`, `bias` and the output of one launch.
    struct Operands<'a, T> {
        x: CudaView<'a, T>,
        w: CudaView<'a, T>,
        b: CudaView<'a, T>,
        y: CudaSlice<T>,
    }

    impl Launch {
        fn ints(&self) -> Result<(i32, i32, i32)> {
            let (o, c, i) = self.dims;
            Ok((int(o, OP)?, int(c, OP)?, int(i, OP)?))
        }

        fn layer_norm<T: DeviceRepr + WithDType>(
            &self,
            dev: &CudaDevice,
            ops: &Operands<'_, T>,
        ) -> Result<()> {
            let (outer, c, inner) = self.ints()?;
            let rows = inner == 1;
            let kernel = if rows { "ln_rows" } else { "ln_strided" };
            let f = func::<T>(dev, &NORM, kernel)?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&outer).arg(&c);
            if !rows {
                b.arg(&inner);
            }
            b.arg(&self.eps)
                .arg(&ops.x)
                .arg(&ops.w)
                .arg(&ops.b)
                .arg(&ops.y);
            let cfg = match rows {
                // One warp per row; the kernel's flat thread index is unsigned.
                true => threads_for(product(&[self.dims.0, 32], OP)?, BLOCK, u32::MAX, OP)?,
                false => grid(product(&[self.dims.0, self.dims.2], OP)?),
            };
            // SAFETY: the arguments match the kernel's signature.
            unsafe { b.launch(cfg) }.w()?;
            Ok(())
        }

        fn group_norm<T: DeviceRepr + WithDType>(
            &self,
            dev: &CudaDevice,
            ops: &Operands<'_, T>,
        ) -> Result<()> {
            let (outer, c, inner) = self.ints()?;
            let samples = self.dims.0;
            let per = product(&[self.dims.1, self.dims.2], OP)?;
            let mut acc = dev.alloc_zeros::<f64>(product(&[samples, 2], OP)?)?;
            let stream = dev.cuda_stream();
            let stats = func::<T>(dev, &NORM, "gn_stats")?;
            // At most 256 blocks per sample, so the conversion is exact.
            let per_sample = per.div_ceil(BLOCK as usize * 8).clamp(1, 256) as u32;
            let chunk = |what: &str, start: usize, len: usize| KernelError::Param {
                op: OP,
                msg: format!("{what} {start}..{} is out of range", start + len),
            };
            // gn_stats finds its sample at blockIdx.y: launch chunks of samples, each on its own
            // slices of x and of the sums.
            for (first, count) in super::sample_chunks(samples) {
                let (x0, xn) = (first * per, count * per);
                let x = ops
                    .x
                    .try_slice(x0..x0 + xn)
                    .ok_or_else(|| chunk("x", x0, xn))?;
                let mut sums = acc
                    .try_slice_mut(2 * first..2 * (first + count))
                    .ok_or_else(|| chunk("sums", 2 * first, 2 * count))?;
                let mut b = stream.launch_builder(&stats);
                b.arg(&per).arg(&x).arg(&mut sums);
                let cfg = LaunchConfig {
                    // `count` is at most 65535 (`sample_chunks`), so the conversion is exact.
                    grid_dim: (per_sample, count as u32, 1),
                    block_dim: (BLOCK, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: the arguments match the kernel's signature, and the slices hold the
                // `count` samples of `per` values and their `2 * count` sums it touches.
                unsafe { b.launch(cfg) }.w()?;
            }
            let apply = func::<T>(dev, &NORM, "gn_apply")?;
            let mut b = stream.launch_builder(&apply);
            b.arg(&outer).arg(&c).arg(&inner).arg(&self.eps).arg(&acc);
            b.arg(&ops.x).arg(&ops.w).arg(&ops.b).arg(&ops.y);
            // SAFETY: the arguments match the kernel's signature.
            unsafe { b.launch(grid(product(&[samples, per], OP)?)) }.w()?;
            Ok(())
        }
    }

    impl Map3 for Launch {
        fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
            &self,
            xs: &CudaSlice<T>,
            xl: &Layout,
            ws: &CudaSlice<T>,
            wl: &Layout,
            bs: &CudaSlice<T>,
            bl: &Layout,
            dev: &CudaDevice,
        ) -> Result<CudaSlice<T>> {
            let x = view(xs, xl, OP, "x")?;
            // SAFETY: both kernels write every element.
            let y = unsafe { dev.alloc::<T>(x.len()) }?;
            let ops = Operands {
                x,
                w: view(ws, wl, OP, "weight")?,
                b: view(bs, bl, OP, "bias")?,
                y,
            };
            if !ops.x.is_empty() {
                match self.axes {
                    NormAxes::Channels => self.layer_norm(dev, &ops)?,
                    NormAxes::AllButBatch => self.group_norm(dev, &ops)?,
                }
            }
            Ok(ops.y)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sample_chunks_cover_every_sample_within_the_grid() {
        for samples in [1, 2, 65534, 65535, 65536, 200_000, 3 * 65535] {
            let chunks: Vec<_> = super::sample_chunks(samples).collect();
            let mut next = 0;
            for &(first, count) in &chunks {
                assert!(first == next && (1..=65535).contains(&count), "{samples}");
                next += count;
            }
            assert_eq!(next, samples);
            assert_eq!(chunks.len(), samples.div_ceil(65535));
        }
        assert_eq!(super::sample_chunks(0).count(), 0);
    }
}
