//! Fused one-level 2-D Haar wavelet transform of channel-last maps, in the channel order of
//! WaveMix's blocks (pranavphoenix/WaveMix: `DWTForward(J=1, wave="db1", mode="zero")`, then
//! `cat(LL, highs.reshape(B, 3C, ...))`), and its adjoint (the gradient, and the inverse
//! transform: Haar is orthonormal).
//!
//! For each 2x2 block `[[a, b], [c, d]]` of channel `c` (rows are the height) the transform gives
//! `LL = (a + b + c + d) / 2` at output channel `c`, and at channels `C + 3c + {0, 1, 2}` the
//! details `(a + b - c - d) / 2` (top minus bottom), `(a - b + c - d) / 2` (left minus right) and
//! `(a - b - c + d) / 2` (diagonal). An odd height or width is padded with one zero row or column
//! at its end, as pywt's zero mode does, so the output is `ceil(H / 2) x ceil(W / 2)`.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Candle custom op: the Haar transform of a contiguous channel-last map `(B, H, W, C)`, giving
/// `(B, ceil(H/2), ceil(W/2), 4C)` (see the module docs for the channel order). Its backward is
/// [`HaarDwtAdjoint`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HaarDwt;

/// Candle custom op: the adjoint of [`HaarDwt`] for an input of `height x width`: a map
/// `(B, ceil(H/2), ceil(W/2), 4C)` of band coefficients to `(B, H, W, C)` (the padding of odd
/// sizes dropped). For even sizes it is the inverse transform. Its backward is [`HaarDwt`].
#[derive(Debug, Clone, Copy)]
pub struct HaarDwtAdjoint {
    /// Height of the map the coefficients came from.
    pub height: usize,
    /// Width of the map the coefficients came from.
    pub width: usize,
}

/// The output size of the transform of an `n`-long axis.
pub(crate) fn half(n: usize) -> usize {
    n.div_ceil(2)
}

/// Butterflies of one 2x2 block: `(a, b, c, d)` to `(LL, top-bottom, left-right, diagonal)`;
/// the same map is its own inverse.
#[inline(always)]
fn butterfly(a: f32, b: f32, c: f32, d: f32) -> [f32; 4] {
    let (s0, s1, d0, d1) = (a + b, c + d, a - b, c - d);
    [
        0.5 * (s0 + s1),
        0.5 * (s0 - s1),
        0.5 * (d0 + d1),
        0.5 * (d0 - d1),
    ]
}

/// Pixel `ix` `(C)` of a channel-last row, or `zeros` past its end.
fn pixel_of<'a>(row: &'a [f32], ix: usize, c: usize, zeros: &'a [f32]) -> &'a [f32] {
    row.get(ix * c..(ix + 1) * c).unwrap_or(zeros)
}

impl CustomOp1 for HaarDwt {
    fn name(&self) -> &'static str {
        "tokenmix-haar-dwt"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, w, c) = layout.shape().dims4()?;
        let x = crate::error::contiguous_f32(storage, layout, "haar_dwt", "input")?;
        let (ho, wo) = (half(h), half(w));
        let shape = Shape::from((b, ho, wo, 4 * c));
        let mut y = vec![0f32; shape.elem_count()];
        if y.is_empty() {
            return Ok((CpuStorage::F32(y), shape));
        }
        let zeros = vec![0f32; c];
        y.par_chunks_mut(wo * 4 * c)
            .enumerate()
            .for_each(|(r, dst)| {
                let (image, oy) = (r / ho, r % ho);
                let row =
                    |iy: usize| &x[((image * h) + iy) * w * c..((image * h) + iy + 1) * w * c];
                let top = row(2 * oy);
                let bottom = (2 * oy + 1 < h).then(|| row(2 * oy + 1));
                for (ox, out) in dst.chunks_exact_mut(4 * c).enumerate() {
                    let pixel = |r, ix| pixel_of(r, ix, c, &zeros);
                    let (pa, pb) = (pixel(top, 2 * ox), pixel(top, 2 * ox + 1));
                    let (pc, pd) = match bottom {
                        Some(r) => (pixel(r, 2 * ox), pixel(r, 2 * ox + 1)),
                        None => (&zeros[..], &zeros[..]),
                    };
                    let (low, highs) = out.split_at_mut(c);
                    for (ch, (l, hi)) in low.iter_mut().zip(highs.chunks_exact_mut(3)).enumerate() {
                        let [ll, v, hz, dg] = butterfly(pa[ch], pb[ch], pc[ch], pd[ch]);
                        *l = ll;
                        hi[0] = v;
                        hi[1] = hz;
                        hi[2] = dg;
                    }
                }
            });
        Ok((CpuStorage::F32(y), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map1;
        let (b, h, w, c) = l.shape().dims4()?;
        let launch = gpu::Launch::new("haar_dwt_fwd", [b, h, w, c])?;
        let y = launch.map(&s.slice, &s.device, l)?;
        Ok((
            crate::cuda::wrap(y, s),
            Shape::from((b, half(h), half(w), 4 * c)),
        ))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, h, w, _) = x.dims4()?;
        Ok(Some(crate::haar_dwt_adjoint(grad, h, w)?))
    }
}

impl HaarDwtAdjoint {
    /// `(B, C)` of valid coefficients `(B, ceil(H/2), ceil(W/2), 4C)`.
    fn check(&self, shape: &Shape) -> Result<(usize, usize)> {
        let (b, ho, wo, c4) = shape.dims4()?;
        if ho != half(self.height) || wo != half(self.width) || c4 % 4 != 0 {
            return Err(crate::error::shape_error_of(
                "haar_dwt_adjoint",
                "coefficients",
                format!(
                    "(B, {}, {}, 4C) for a {}x{} map",
                    half(self.height),
                    half(self.width),
                    self.height,
                    self.width
                ),
                shape.dims(),
            ));
        }
        Ok((b, c4 / 4))
    }
}

impl CustomOp1 for HaarDwtAdjoint {
    fn name(&self) -> &'static str {
        "tokenmix-haar-dwt-adjoint"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c) = self.check(layout.shape())?;
        let g = crate::error::contiguous_f32(storage, layout, "haar_dwt_adjoint", "input")?;
        let (h, w) = (self.height, self.width);
        let wo = half(w);
        let shape = Shape::from((b, h, w, c));
        let mut x = vec![0f32; shape.elem_count()];
        if x.is_empty() {
            return Ok((CpuStorage::F32(x), shape));
        }
        x.par_chunks_mut(w * c).enumerate().for_each(|(r, dst)| {
            let (image, iy) = (r / h, r % h);
            let oy = iy / 2;
            let bottom = iy % 2 == 1;
            let coeffs = &g[(image * half(h) + oy) * wo * 4 * c..][..wo * 4 * c];
            for (ix, px) in dst.chunks_exact_mut(c).enumerate() {
                let ox = ix / 2;
                let right = ix % 2 == 1;
                let (low, highs) = coeffs[ox * 4 * c..(ox + 1) * 4 * c].split_at(c);
                for (ch, (v, hi)) in px.iter_mut().zip(highs.chunks_exact(3)).enumerate() {
                    // The butterfly is its own inverse: (a, b, c, d) from the four bands.
                    let [a, b, c, d] = butterfly(low[ch], hi[0], hi[1], hi[2]);
                    *v = match (bottom, right) {
                        (false, false) => a,
                        (false, true) => b,
                        (true, false) => c,
                        (true, true) => d,
                    };
                }
            }
        });
        Ok((CpuStorage::F32(x), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map1;
        let (b, c) = self.check(l.shape())?;
        let (h, w) = (self.height, self.width);
        let launch = gpu::Launch::new("haar_dwt_adjoint", [b, h, w, c])?;
        let y = launch.map(&s.slice, &s.device, l)?;
        Ok((crate::cuda::wrap(y, s), Shape::from((b, h, w, c))))
    }

    fn bwd(&self, _g: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(crate::haar_dwt(grad)?))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DeviceRepr, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDevice, Map1, WrapErr};
    use candle_core::{Layout, Result, WithDType};

    use crate::cuda::{func, grid, int, view, WAVELET};

    /// The kernels' `Haar` struct: `b, h, w, c` of the full-resolution map.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    struct Geo([i32; 4]);

    // SAFETY: a plain array of i32, laid out as the kernel's struct of four ints.
    unsafe impl DeviceRepr for Geo {}

    /// One launch of `kernel` (one thread per full-resolution pixel-channel of each 2x2 block).
    pub(super) struct Launch {
        kernel: &'static str,
        dims: [usize; 4],
        geo: Geo,
    }

    impl Launch {
        pub(super) fn new(kernel: &'static str, dims: [usize; 4]) -> Result<Self> {
            let mut g = [0i32; 4];
            for (d, v) in g.iter_mut().zip(dims) {
                *d = int(v, "haar_dwt")?;
            }
            Ok(Self {
                kernel,
                dims,
                geo: Geo(g),
            })
        }
    }

    impl Map1 for Launch {
        fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
            &self,
            s: &CudaSlice<T>,
            dev: &CudaDevice,
            l: &Layout,
        ) -> Result<CudaSlice<T>> {
            let x = view(s, l, "haar_dwt", "input")?;
            let [b, h, w, c] = self.dims;
            let (ho, wo) = (super::half(h), super::half(w));
            let blocks = crate::cuda::product(&[b, ho, wo, c], "haar_dwt")?;
            let n = if self.kernel == "haar_dwt_fwd" {
                4 * blocks
            } else {
                crate::cuda::product(&[b, h, w, c], "haar_dwt")?
            };
            let f = func::<T>(dev, &WAVELET, self.kernel)?;
            // SAFETY: the kernel writes all n output elements.
            let y = unsafe { dev.alloc::<T>(n) }?;
            let stream = dev.cuda_stream();
            let mut launch = stream.launch_builder(&f);
            launch.arg(&self.geo).arg(&x).arg(&y);
            // SAFETY: the arguments match the kernel's signature.
            unsafe { launch.launch(grid(blocks)) }.w()?;
            Ok(y)
        }
    }
}
