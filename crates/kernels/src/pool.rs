//! Fused pooling mixer.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::KernelError;

/// Candle custom op: `avg_pool(k, stride 1, padding k/2, count_include_pad=False)(x) - x` on a
/// contiguous f32 `(B, C, H, W)` input, computed as a separable box filter per plane.
#[derive(Debug, Clone, Copy)]
pub struct PoolMixer {
    pool_size: usize,
}

impl PoolMixer {
    /// The op for an odd window `pool_size`.
    pub fn new(pool_size: usize) -> Result<Self> {
        if pool_size.is_multiple_of(2) {
            return Err(KernelError::Param {
                op: "pool_mixer",
                msg: format!("pool_size must be odd, got {pool_size}"),
            }
            .into());
        }
        Ok(Self { pool_size })
    }
}

impl CustomOp1 for PoolMixer {
    fn name(&self) -> &'static str {
        "tokenmix-pool-mixer"
    }

    /// The window average is symmetric, so its adjoint spreads `grad / count` over the same
    /// windows: `dx = box_sum(grad / count) - grad`, with `box_sum(v) = (mixer(v) + v) * count`.
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if grad.device().is_cuda() {
            let adjoint = PoolMixerGrad {
                pool_size: self.pool_size,
            };
            return Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&adjoint)?));
        }
        let (_, _, h, w) = x.dims4()?;
        let counts = crate::composed::window_count_map(h, w, self.pool_size, grad)?;
        adjoint_via_mixer(grad, &counts, |v| crate::pool_mixer(v, self.pool_size)).map(Some)
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let x = crate::error::contiguous_f32(storage, layout, "pool_mixer", "input")?;
        if x.is_empty() {
            return Ok((CpuStorage::F32(vec![]), layout.shape().clone()));
        }
        let half = self.pool_size / 2;
        let mut out = vec![0f32; b * c * h * w];
        out.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| pool_plane(src, h, w, half, dst));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::run("pool_fwd", self.pool_size, s, l)
    }
}

/// The pooling mixer's adjoint through the mixer itself: `box_sum(grad / count) - grad` with
/// `box_sum(v) = (mixer(v) + v) * count`, `counts` (in-image pixels per window) broadcasting
/// against `grad` in its layout.
fn adjoint_via_mixer(
    grad: &Tensor,
    counts: &Tensor,
    mixer: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let v = grad.broadcast_div(counts)?;
    (mixer(&v)? + &v)?.broadcast_mul(counts)? - grad
}

/// The adjoint of [`PoolMixer`] applied to a gradient `(B, C, H, W)`:
/// `dx[i] = sum over the window around i of grad[j] / count(j) - grad[i]` (windows are
/// symmetric). One kernel pass on the GPU; the CPU differentiates through [`PoolMixer`] itself.
#[derive(Debug, Clone, Copy)]
struct PoolMixerGrad {
    pool_size: usize,
}

impl CustomOp1 for PoolMixerGrad {
    fn name(&self) -> &'static str {
        "tokenmix-pool-mixer-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, _, h, w) = layout.shape().dims4()?;
        let g = crate::error::contiguous_f32(storage, layout, "pool_mixer backward", "gradient")?;
        let half = self.pool_size / 2;
        let count =
            |i: usize, n: usize| ((i + half).min(n - 1) + 1 - i.saturating_sub(half)) as f32;
        let mut dx = vec![0f32; g.len()];
        for (i, d) in dx.iter_mut().enumerate() {
            let (x, y, base) = (i % w, (i / w) % h, i - i % (h * w));
            let mut acc = 0f32;
            for yy in y.saturating_sub(half)..=(y + half).min(h - 1) {
                for xx in x.saturating_sub(half)..=(x + half).min(w - 1) {
                    acc += g[base + yy * w + xx] / (count(yy, h) * count(xx, w));
                }
            }
            *d = acc - g[i];
        }
        Ok((CpuStorage::F32(dx), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::run("pool_bwd", self.pool_size, s, l)
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DeviceRepr, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDevice, Map1, WrapErr};
    use candle_core::{CudaStorage, Layout, Result, Shape, WithDType};

    use crate::cuda::{func, grid, int, view, wrap, POOL};

    /// Kernel `kernel(size_t n, int h, int w, int half, const T* in, T* out)` on `(B, C, H, W)`.
    struct Launch {
        kernel: &'static str,
        h: i32,
        w: i32,
        half: i32,
    }

    pub(super) fn run(
        kernel: &'static str,
        pool_size: usize,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (_, _, h, w) = l.shape().dims4()?;
        let (h, w, half) = (
            int(h, "pool_mixer")?,
            int(w, "pool_mixer")?,
            int(pool_size / 2, "pool_mixer")?,
        );
        let launch = Launch { kernel, h, w, half };
        Ok((
            wrap(launch.map(&s.slice, &s.device, l)?, s),
            l.shape().clone(),
        ))
    }

    impl Map1 for Launch {
        fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
            &self,
            s: &CudaSlice<T>,
            dev: &CudaDevice,
            l: &Layout,
        ) -> Result<CudaSlice<T>> {
            let x = view(s, l, "pool_mixer", "input")?;
            let n = x.len();
            let f = func::<T>(dev, &POOL, self.kernel)?;
            // SAFETY: the kernel writes all n elements.
            let out = unsafe { dev.alloc::<T>(n) }?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&n)
                .arg(&self.h)
                .arg(&self.w)
                .arg(&self.half)
                .arg(&x)
                .arg(&out);
            // SAFETY: the arguments match the kernel's signature.
            unsafe { b.launch(grid(n)) }.w()?;
            Ok(out)
        }
    }
}

fn pool_plane(src: &[f32], h: usize, w: usize, half: usize, dst: &mut [f32]) {
    let mut row_sums = vec![0f32; h * w];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for x in 0..w {
            let (a, b) = (x.saturating_sub(half), (x + half).min(w - 1));
            row_sums[y * w + x] = row[a..=b].iter().sum::<f32>() / (b + 1 - a) as f32;
        }
    }
    for y in 0..h {
        let (a, b) = (y.saturating_sub(half), (y + half).min(h - 1));
        let inv = 1.0 / (b + 1 - a) as f32;
        let out = &mut dst[y * w..(y + 1) * w];
        out.copy_from_slice(&row_sums[a * w..(a + 1) * w]);
        for r in a + 1..=b {
            for (o, v) in out.iter_mut().zip(&row_sums[r * w..(r + 1) * w]) {
                *o += v;
            }
        }
        for (o, v) in out.iter_mut().zip(&src[y * w..(y + 1) * w]) {
            *o = *o * inv - v;
        }
    }
}

/// Candle custom op: the pooling mixer of [`PoolMixer`] on a contiguous f32 channel-last
/// `(B, H, W, C)` input (CPU only), computed one output row at a time: the window's rows summed
/// into a `(W, C)` buffer, then its columns, channels innermost.
#[derive(Debug, Clone, Copy)]
pub struct PoolMixerNhwc {
    pool_size: usize,
}

impl PoolMixerNhwc {
    /// The op for an odd window `pool_size`.
    pub fn new(pool_size: usize) -> Result<Self> {
        PoolMixer::new(pool_size).map(|_| Self { pool_size })
    }
}

impl CustomOp1 for PoolMixerNhwc {
    fn name(&self) -> &'static str {
        "tokenmix-pool-mixer-nhwc"
    }

    /// As [`PoolMixer`]'s, the counts broadcast over the channels.
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, h, w, _) = x.dims4()?;
        let counts = crate::composed::window_count_map(h, w, self.pool_size, grad)?.unsqueeze(2)?;
        adjoint_via_mixer(grad, &counts, |v| crate::pool_mixer_nhwc(v, self.pool_size)).map(Some)
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, h, w, c) = layout.shape().dims4()?;
        let x = crate::error::contiguous_f32(storage, layout, "pool_mixer_nhwc", "input")?;
        if x.is_empty() {
            return Ok((CpuStorage::F32(vec![]), layout.shape().clone()));
        }
        let half = self.pool_size / 2;
        let row = w * c;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(row).enumerate().for_each_init(
            || vec![0f32; row],
            |sums, (r, dst)| {
                let (image, y) = (r / h, r % h);
                let plane = &x[image * h * row..(image + 1) * h * row];
                let (a, b) = (y.saturating_sub(half), (y + half).min(h - 1));
                column_sums(plane, row, a, b, sums);
                let src = &plane[y * row..(y + 1) * row];
                pool_row_nhwc(sums, src, c, half, 1.0 / (b + 1 - a) as f32, dst);
            },
        );
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

crate::simd::dispatch! {
    /// [`column_sums_body`] on wide vectors where the CPU has them.
    fn column_sums(plane: &[f32], row: usize, a: usize, b: usize, sums: &mut [f32]) => column_sums_body
}

/// `sums = plane rows a..=b` added element-wise (rows of `row` values).
#[inline(always)]
fn column_sums_body(plane: &[f32], row: usize, a: usize, b: usize, sums: &mut [f32]) {
    sums.copy_from_slice(&plane[a * row..(a + 1) * row]);
    for r in a + 1..=b {
        for (s, v) in sums.iter_mut().zip(&plane[r * row..(r + 1) * row]) {
            *s += v;
        }
    }
}

crate::simd::dispatch! {
    /// [`pool_row_nhwc_body`] on wide vectors where the CPU has them.
    fn pool_row_nhwc(sums: &[f32], src: &[f32], c: usize, half: usize, inv_rows: f32, dst: &mut [f32]) => pool_row_nhwc_body
}

/// One output row `(W, C)`: the window's column sums `sums` added over the `2 * half + 1`
/// columns around each position, divided by the in-image count, minus the input row `src`.
#[inline(always)]
fn pool_row_nhwc_body(
    sums: &[f32],
    src: &[f32],
    c: usize,
    half: usize,
    inv_rows: f32,
    dst: &mut [f32],
) {
    let w = src.len() / c;
    for (x, out) in dst.chunks_exact_mut(c).enumerate() {
        let (a, b) = (x.saturating_sub(half), (x + half).min(w - 1));
        let inv = inv_rows / (b + 1 - a) as f32;
        out.copy_from_slice(&sums[a * c..(a + 1) * c]);
        for col in a + 1..=b {
            for (o, s) in out.iter_mut().zip(&sums[col * c..(col + 1) * c]) {
                *o += s;
            }
        }
        for (o, v) in out.iter_mut().zip(&src[x * c..(x + 1) * c]) {
            *o = *o * inv - v;
        }
    }
}
