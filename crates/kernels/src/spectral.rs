//! Fused global spectral filter (GFNet): `irfft2(rfft2(x) * W)` over the spatial axes of a
//! channel-last map, with orthonormal scaling both ways.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use realfft::num_complex::Complex32;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::{Fft, FftPlanner};

use crate::error::contiguous_f32;
use crate::KernelError;

/// Largest dynamic shared memory of the GPU kernels (Hopper allows 227 KiB per block); larger
/// planes run the composed path.
const MAX_SMEM_GPU: usize = 200 * 1024;

/// Dynamic shared memory of the GPU kernels for an `(H, W)` plane: the plane in f32 (rounded up
/// to an even count) and two `H x (W/2 + 1)` complex buffers.
fn smem_bytes(h: usize, w: usize) -> usize {
    (h * w).next_multiple_of(2) * 4 + 2 * h * (w / 2 + 1) * 8
}

/// Whether `x`'s planes fit the GPU kernels (always true on the CPU): `x` is `(B, H, W, C)`
/// when `channel_last`, `(..., H, W)` otherwise; `width` overrides `W` (for spectra).
pub(crate) fn fits_device(x: &Tensor, channel_last: bool, width: Option<usize>) -> bool {
    if x.device().is_cpu() {
        return true;
    }
    let dims = x.dims();
    let n = dims.len();
    let (h, w) = match (channel_last, n) {
        (true, 4) => (dims[1], dims[2]),
        (false, 2..) => (dims[n - 2], dims[n - 1]),
        _ => return false,
    };
    smem_bytes(h, width.unwrap_or(w)) <= MAX_SMEM_GPU
}

/// Candle custom op `(x, weight) -> y` on a contiguous f32 channel-last map `x` `(B, H, W, C)`
/// and `weight` `(H, W/2 + 1, C, 2)` (complex numbers as real pairs):
/// `y = irfft2(rfft2(x, norm="ortho") * weight, s=(H, W), norm="ortho")` per channel, the FFTs
/// over `(H, W)` (GFNet's `GlobalFilter`). Computed with realfft along `W` and rustfft along `H`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpectralFilter;

struct Plans {
    row_fwd: Arc<dyn RealToComplex<f32>>,
    row_inv: Arc<dyn ComplexToReal<f32>>,
    col_fwd: Arc<dyn Fft<f32>>,
    col_inv: Arc<dyn Fft<f32>>,
}

impl Plans {
    fn new(h: usize, w: usize) -> Self {
        let mut real = RealFftPlanner::<f32>::new();
        let mut complex = FftPlanner::<f32>::new();
        Self {
            row_fwd: real.plan_fft_forward(w),
            row_inv: real.plan_fft_inverse(w),
            col_fwd: complex.plan_fft_forward(h),
            col_inv: complex.plan_fft_inverse(h),
        }
    }
}

/// Unnormalized 2-D real FFT of one `(H, W)` plane into `spec` (`K * H`, column-major:
/// `k * H + h`); `row` is `K` scratch. `plane` is used as scratch too.
fn forward_plane(
    plans: &Plans,
    plane: &mut [f32],
    (h, w): (usize, usize),
    spec: &mut [Complex32],
    row: &mut [Complex32],
) {
    for y in 0..h {
        // Lengths are right by construction, so the transform cannot fail.
        let _ = plans.row_fwd.process(&mut plane[y * w..(y + 1) * w], row);
        for (kk, v) in row.iter().enumerate() {
            spec[kk * h + y] = *v;
        }
    }
    for column in spec.chunks_mut(h) {
        plans.col_fwd.process(column);
    }
}

/// Unnormalized inverse of [`forward_plane`]: `spec` (consumed) back to the `(H, W)` plane.
fn inverse_plane(
    plans: &Plans,
    spec: &mut [Complex32],
    (h, w): (usize, usize),
    plane: &mut [f32],
    row: &mut [Complex32],
) {
    let k = w / 2 + 1;
    for column in spec.chunks_mut(h) {
        plans.col_inv.process(column);
    }
    for y in 0..h {
        for (kk, v) in row.iter_mut().enumerate() {
            *v = spec[kk * h + y];
        }
        row[0].im = 0.0;
        if w % 2 == 0 {
            row[k - 1].im = 0.0;
        }
        let _ = plans.row_inv.process(row, &mut plane[y * w..(y + 1) * w]);
    }
}

/// Filters one `(H, W)` plane in place: `weight(h, k)` gives the filter coefficient.
fn filter_plane(
    plans: &Plans,
    plane: &mut [f32],
    (h, w): (usize, usize),
    weight: impl Fn(usize, usize) -> Complex32,
    spec: &mut [Complex32],
    row: &mut [Complex32],
) {
    let scale = 1.0 / (h * w) as f32;
    forward_plane(plans, plane, (h, w), spec, row);
    for (kk, column) in spec.chunks_mut(h).enumerate() {
        for (y, v) in column.iter_mut().enumerate() {
            *v = *v * weight(y, kk) * scale;
        }
    }
    inverse_plane(plans, spec, (h, w), plane, row);
}

fn last_two(shape: &Shape) -> Result<(usize, usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 2 {
        return Err(KernelError::Shape {
            op: "rfft2",
            what: "input",
            expected: "at least 2 axes".into(),
            found: dims.to_vec(),
        }
        .into());
    }
    let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    Ok((dims[..dims.len() - 2].iter().product(), h, w))
}

/// Candle custom op: `rfft2(x, norm="ortho")` over the last two axes of a contiguous f32
/// `(..., H, W)` input, returned as `(2, ..., H, W/2 + 1)` (real parts, then imaginary).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rfft2;

impl Rfft2 {
    /// `(planes, H, W)` of an input `(..., H, W)` and the output dims `(2, ..., H, W/2 + 1)`.
    fn check(shape: &Shape) -> Result<(usize, usize, usize, Vec<usize>)> {
        let (planes, h, w) = last_two(shape)?;
        let mut dims = vec![2];
        dims.extend_from_slice(shape.dims());
        if let Some(last) = dims.last_mut() {
            *last = w / 2 + 1;
        }
        Ok((planes, h, w, dims))
    }
}

impl CustomOp1 for Rfft2 {
    fn name(&self) -> &'static str {
        "tokenmix-rfft2"
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = crate::grad::via_composition(&[x], grad, |t| {
            let (re, im) = crate::composed::rfft2_ortho(&t[0])?;
            Tensor::stack(&[re, im], 0)
        })?;
        Ok(g.into_iter().next())
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, h, w, dims) = Rfft2::check(l.shape())?;
        let k = w / 2 + 1;
        let x = contiguous_f32(s, l, "rfft2", "input")?;
        let mut out = vec![0f32; 2 * planes * h * k];
        if planes * h * w == 0 {
            return Ok((CpuStorage::F32(out), Shape::from(dims)));
        }
        let plans = Plans::new(h, w);
        let scale = 1.0 / ((h * w) as f32).sqrt();
        let (re, im) = out.split_at_mut(planes * h * k);
        re.par_chunks_mut(h * k)
            .zip(im.par_chunks_mut(h * k))
            .zip(x.par_chunks(h * w))
            .for_each_init(
                || {
                    (
                        vec![Complex32::default(); k * h],
                        vec![Complex32::default(); k],
                        vec![0f32; h * w],
                    )
                },
                |(spec, row, plane), ((re, im), src)| {
                    plane.copy_from_slice(src);
                    forward_plane(&plans, plane, (h, w), spec, row);
                    for y in 0..h {
                        for kk in 0..k {
                            let v = spec[kk * h + y] * scale;
                            re[y * k + kk] = v.re;
                            im[y * k + kk] = v.im;
                        }
                    }
                },
            );
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map1;
        let (planes, h, w, dims) = Rfft2::check(l.shape())?;
        let launch = gpu::Launch::new("rfft2", planes, h, w, 2 * planes * h * (w / 2 + 1))?;
        let out = launch.map(&s.slice, &s.device, l)?;
        Ok((crate::cuda::wrap(out, s), Shape::from(dims)))
    }
}

/// Candle custom op: `irfft2(re + i im, s=(H, width), norm="ortho")` over the last two axes of
/// a contiguous f32 `(2, ..., H, width/2 + 1)` input (as [`Rfft2`] writes it), giving
/// `(..., H, width)`. Imaginary parts of the zero and Nyquist columns are ignored.
#[derive(Debug, Clone, Copy)]
pub struct Irfft2 {
    /// Width of the real output.
    pub width: usize,
}

impl Irfft2 {
    /// `(H, planes, output dims)` of a valid `(2, ..., H, width/2 + 1)` spectrum.
    fn check(&self, shape: &Shape) -> Result<(usize, usize, Vec<usize>)> {
        let dims = shape.dims();
        let (w, k) = (self.width, self.width / 2 + 1);
        if dims.len() < 3 || dims[0] != 2 || dims[dims.len() - 1] != k {
            return Err(KernelError::Shape {
                op: "irfft2",
                what: "spectrum",
                expected: format!("(2, ..., H, {k}) for width {w}"),
                found: dims.to_vec(),
            }
            .into());
        }
        let h = dims[dims.len() - 2];
        let planes: usize = dims[1..dims.len() - 2].iter().product();
        let mut out_dims = dims[1..].to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = w;
        }
        Ok((h, planes, out_dims))
    }
}

impl CustomOp1 for Irfft2 {
    fn name(&self) -> &'static str {
        "tokenmix-irfft2"
    }

    fn bwd(&self, spec: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let w = self.width;
        let g = crate::grad::via_composition(&[spec], grad, |t| {
            crate::composed::irfft2_ortho(&t[0].get(0)?, &t[0].get(1)?, w)
        })?;
        Ok(g.into_iter().next())
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (h, planes, out_dims) = self.check(l.shape())?;
        let (w, k) = (self.width, self.width / 2 + 1);
        let x = contiguous_f32(s, l, "irfft2", "spectrum")?;
        let mut out = vec![0f32; planes * h * w];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), Shape::from(out_dims)));
        }
        let plans = Plans::new(h, w);
        let scale = 1.0 / ((h * w) as f32).sqrt();
        let (re, im) = x.split_at(planes * h * k);
        out.par_chunks_mut(h * w)
            .zip(re.par_chunks(h * k).zip(im.par_chunks(h * k)))
            .for_each_init(
                || {
                    (
                        vec![Complex32::default(); k * h],
                        vec![Complex32::default(); k],
                    )
                },
                |(spec, row), (plane, (re, im))| {
                    for y in 0..h {
                        for kk in 0..k {
                            spec[kk * h + y] =
                                Complex32::new(re[y * k + kk], im[y * k + kk]) * scale;
                        }
                    }
                    inverse_plane(&plans, spec, (h, w), plane, row);
                },
            );
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map1;
        let (h, planes, out_dims) = self.check(l.shape())?;
        let launch = gpu::Launch::new("irfft2", planes, h, self.width, planes * h * self.width)?;
        let out = launch.map(&s.slice, &s.device, l)?;
        Ok((crate::cuda::wrap(out, s), Shape::from(out_dims)))
    }
}

/// `(B, H, W, C)` of a valid input and weight of [`SpectralFilter`].
fn check_filter(xl: &Layout, wl: &Layout) -> Result<(usize, usize, usize, usize)> {
    let (b, h, w, c) = xl.shape().dims4()?;
    let k = w / 2 + 1;
    if wl.shape().dims() != [h, k, c, 2] {
        return Err(KernelError::Shape {
            op: "spectral_filter",
            what: "weight",
            expected: format!("[{h}, {k}, {c}, 2] for input {:?}", xl.shape().dims()),
            found: wl.shape().dims().to_vec(),
        }
        .into());
    }
    Ok((b, h, w, c))
}

impl CustomOp2 for SpectralFilter {
    fn name(&self) -> &'static str {
        "tokenmix-spectral-filter"
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = crate::grad::via_composition(&[x, w], grad, |t| {
            crate::composed::spectral_filter(&t[0], &t[1])
        })?;
        Ok((Some(g[0].clone()), Some(g[1].clone())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map2;
        let (b, h, w, c) = check_filter(xl, wl)?;
        let launch =
            gpu::Launch::new("spectral_filter", b * c, h, w, b * h * w * c)?.with_channels(c);
        let y = launch.map(&xs.slice, xl, &ws.slice, wl, &xs.device)?;
        Ok((crate::cuda::wrap(y, xs), xl.shape().clone()))
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, h, w, c) = check_filter(xl, wl)?;
        let k = w / 2 + 1;
        let x = contiguous_f32(xs, xl, "spectral_filter", "input")?;
        let wt = contiguous_f32(ws, wl, "spectral_filter", "weight")?;
        if x.is_empty() {
            return Ok((CpuStorage::F32(vec![]), xl.shape().clone()));
        }
        let plans = Plans::new(h, w);
        // Channel-first planes: (b, c) -> H x W, filtered independently.
        let mut planes = vec![0f32; x.len()];
        planes.par_chunks_mut(h * w).enumerate().for_each_init(
            || {
                (
                    vec![Complex32::default(); k * h],
                    vec![Complex32::default(); k],
                )
            },
            |(spec, row), (index, plane)| {
                let (bi, ch) = (index / c, index % c);
                let src = &x[bi * h * w * c..(bi + 1) * h * w * c];
                for (p, v) in plane.iter_mut().zip(src.iter().skip(ch).step_by(c)) {
                    *p = *v;
                }
                let weight = |y: usize, kk: usize| {
                    let at = ((y * k + kk) * c + ch) * 2;
                    Complex32::new(wt[at], wt[at + 1])
                };
                filter_plane(&plans, plane, (h, w), weight, spec, row);
            },
        );
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(h * w * c)
            .zip(planes.par_chunks(h * w * c))
            .for_each(|(dst, src)| {
                for (ch, plane) in src.chunks(h * w).enumerate() {
                    for (pos, v) in plane.iter().enumerate() {
                        dst[pos * c + ch] = *v;
                    }
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDevice, Map1, Map2, WrapErr};
    use candle_core::{Layout, Result, WithDType};

    use super::{smem_bytes, MAX_SMEM_GPU};
    use crate::cuda::{blocks_of, func, int, view, BLOCK, SPECTRAL};
    use crate::KernelError;

    /// The kernels' `Plane` struct: `h, w, k = w/2 + 1`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    struct Plane([i32; 3]);

    // SAFETY: a plain array of i32, laid out as the kernels' struct of three ints.
    unsafe impl DeviceRepr for Plane {}

    /// One block per plane of `(h, w)`, writing `out_len` elements; `channels` is the channel
    /// count of a channel-last input (the spectral filter).
    pub(super) struct Launch {
        kernel: &'static str,
        planes: usize,
        plane: Plane,
        smem: usize,
        out_len: usize,
        channels: usize,
    }

    impl Launch {
        pub(super) fn new(
            kernel: &'static str,
            planes: usize,
            h: usize,
            w: usize,
            out_len: usize,
        ) -> Result<Self> {
            let smem = smem_bytes(h, w);
            if smem > MAX_SMEM_GPU {
                return Err(KernelError::Param {
                    op: "spectral",
                    msg: format!("a {h} x {w} plane exceeds the GPU kernels' shared memory"),
                }
                .into());
            }
            let plane = Plane([
                int(h, "spectral")?,
                int(w, "spectral")?,
                int(w / 2 + 1, "spectral")?,
            ]);
            Ok(Self {
                kernel,
                planes,
                plane,
                smem,
                out_len,
                channels: 1,
            })
        }

        /// The launch for a channel-last input of `channels` channels.
        pub(super) fn with_channels(self, channels: usize) -> Self {
            Self { channels, ..self }
        }

        fn run<T: DeviceRepr + WithDType>(
            &self,
            dev: &CudaDevice,
            inputs: &[CudaView<'_, T>],
        ) -> Result<CudaSlice<T>> {
            let f = func::<T>(dev, &SPECTRAL, self.kernel)?;
            if self.smem > 48 * 1024 {
                let attr =
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
                f.set_attribute(attr, self.smem as i32).w()?;
            }
            // SAFETY: the kernels write all out_len elements.
            let out = unsafe { dev.alloc::<T>(self.out_len) }?;
            if self.planes == 0 || self.out_len == 0 {
                return Ok(out);
            }
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            let channels = int(self.channels, "spectral")?;
            b.arg(&self.plane);
            if self.kernel == "spectral_filter" {
                b.arg(&channels);
            }
            for v in inputs {
                b.arg(v);
            }
            b.arg(&out);
            let cfg = LaunchConfig {
                // At most MAX_SMEM_GPU bytes (checked in `new`), so the conversion is exact.
                shared_mem_bytes: self.smem as u32,
                ..blocks_of(self.planes, BLOCK, "spectral")?
            };
            // SAFETY: the arguments match the kernel's signature.
            unsafe { b.launch(cfg) }.w()?;
            Ok(out)
        }
    }

    impl Map1 for Launch {
        fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
            &self,
            s: &CudaSlice<T>,
            dev: &CudaDevice,
            l: &Layout,
        ) -> Result<CudaSlice<T>> {
            self.run(dev, &[view(s, l, self.kernel, "input")?])
        }
    }

    impl Map2 for Launch {
        fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
            &self,
            s1: &CudaSlice<T>,
            l1: &Layout,
            s2: &CudaSlice<T>,
            l2: &Layout,
            dev: &CudaDevice,
        ) -> Result<CudaSlice<T>> {
            let ins = [
                view(s1, l1, self.kernel, "input")?,
                view(s2, l2, self.kernel, "weight")?,
            ];
            self.run(dev, &ins)
        }
    }
}
