//! Fused global spectral filter (GFNet): `irfft2(rfft2(x) * W)` over the spatial axes of a
//! channel-last map, with orthonormal scaling both ways.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};
use rayon::prelude::*;
use realfft::num_complex::Complex32;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::{Fft, FftPlanner};

use crate::KernelError;

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

/// Filters one `(H, W)` plane: `plane` in, filtered plane out (in place). `weight(h, k)` gives
/// the filter coefficient; `spec` is `K * H` scratch, spectrum stored column-major (`k * H + h`).
fn filter_plane(
    plans: &Plans,
    plane: &mut [f32],
    (h, w): (usize, usize),
    weight: impl Fn(usize, usize) -> Complex32,
    spec: &mut [Complex32],
    row: &mut [Complex32],
) {
    let k = w / 2 + 1;
    let scale = 1.0 / (h * w) as f32;
    for y in 0..h {
        let input = &mut plane[y * w..(y + 1) * w];
        // Lengths are right by construction, so the transform cannot fail.
        let _ = plans.row_fwd.process(input, row);
        for (kk, v) in row.iter().enumerate() {
            spec[kk * h + y] = *v;
        }
    }
    for kk in 0..k {
        let column = &mut spec[kk * h..(kk + 1) * h];
        plans.col_fwd.process(column);
        for (y, v) in column.iter_mut().enumerate() {
            *v = *v * weight(y, kk) * scale;
        }
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

impl CustomOp2 for SpectralFilter {
    fn name(&self) -> &'static str {
        "tokenmix-spectral-filter"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, h, w, c) = xl.shape().dims4()?;
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
        let (Some((xa, xb)), Some((wa, wb))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            return Err(KernelError::NotContiguous {
                op: "spectral_filter",
                what: "inputs",
            }
            .into());
        };
        let x = &xs.as_slice::<f32>()?[xa..xb];
        let wt = &ws.as_slice::<f32>()?[wa..wb];
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
