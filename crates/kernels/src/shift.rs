//! Fused MS-MLP mix-shift: for every channel, a depthwise convolution of the map rolled along
//! the width plus one of the map rolled along the height, in one pass without materializing the
//! rolled copies.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::KernelError;

/// Candle custom op `(x, weights, biases) -> y` on a contiguous f32 `(B, C, H, W)` input:
/// `y[c] = conv(roll_w(x[c], s_c), lr_c) + conv(roll_h(x[c], s_c), td_c) + b_lr[c] + b_td[c]`
/// with zero padding `k/2`. `weights` is `(2, C, k, k)` (width-rolled kernels, then
/// height-rolled; smaller kernels centred and zero-padded to the common `k`), `biases` `(2, C)`;
/// `shifts` holds each channel's roll (`torch.roll` semantics: `out[i] = in[i - shift]`).
#[derive(Debug, Clone)]
pub struct MixShiftOp {
    /// Roll distance per channel.
    pub shifts: Vec<i32>,
}

/// Adds `w * conv(rolled, single tap)` of one plane: tap `(ky, kx)` of a `k x k` kernel with
/// padding `p`, the plane rolled by `shift` along the width (`along_w`) or the height.
#[allow(clippy::too_many_arguments)]
fn add_tap(
    src: &[f32],
    dst: &mut [f32],
    (h, w): (usize, usize),
    (ky, kx): (usize, usize),
    p: usize,
    shift: i64,
    along_w: bool,
    wv: f32,
) {
    let (hi, wi) = (h as i64, w as i64);
    for y in 0..h {
        let ry = y as i64 + ky as i64 - p as i64;
        if ry < 0 || ry >= hi {
            continue;
        }
        let x0 = (p as i64 - kx as i64).max(0);
        let x1 = (wi + p as i64 - kx as i64).min(wi);
        let (row, col_shift) = if along_w {
            (ry, shift)
        } else {
            ((ry - shift).rem_euclid(hi), 0)
        };
        let src_row = &src[row as usize * w..(row as usize + 1) * w];
        let out = &mut dst[y * w..(y + 1) * w];
        if x0 >= x1 {
            continue;
        }
        // Source columns of x0..x1 form one run that wraps around the width at most once.
        let (x0, x1) = (x0 as usize, x1 as usize);
        let start = (x0 as i64 + kx as i64 - p as i64 - col_shift).rem_euclid(wi) as usize;
        let first = (x1 - x0).min(w - start);
        for (o, v) in out[x0..x0 + first]
            .iter_mut()
            .zip(&src_row[start..start + first])
        {
            *o += wv * v;
        }
        for (o, v) in out[x0 + first..x1]
            .iter_mut()
            .zip(&src_row[..x1 - x0 - first])
        {
            *o += wv * v;
        }
    }
}

impl MixShiftOp {
    /// `(B, C, H, W, k)` of valid operands.
    fn check(
        &self,
        xl: &Layout,
        wl: &Layout,
        bl: &Layout,
    ) -> Result<(usize, usize, usize, usize, usize)> {
        let (b, c, h, w) = xl.shape().dims4()?;
        let (two, wc, k, k2) = wl.shape().dims4()?;
        if two != 2
            || wc != c
            || k != k2
            || k % 2 == 0
            || bl.shape().dims() != [2, c]
            || self.shifts.len() != c
        {
            return Err(KernelError::Shape {
                op: "mix_shift",
                what: "weights, biases or shifts",
                expected: format!("(2, {c}, k, k) with odd k, (2, {c}) and {c} shifts"),
                found: wl.shape().dims().to_vec(),
            }
            .into());
        }
        Ok((b, c, h, w, k))
    }
}

impl CustomOp3 for MixShiftOp {
    fn name(&self) -> &'static str {
        "tokenmix-mix-shift"
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
        let (b, c, h, w, k) = self.check(xl, wl, bl)?;
        let slice = |s, l, what| crate::error::contiguous_f32(s, l, "mix_shift", what);
        let (x, wt, bias) = (
            slice(xs, xl, "input")?,
            slice(ws, wl, "weights")?,
            slice(bs, bl, "biases")?,
        );
        let p = k / 2;
        let mut out = vec![0f32; b * c * h * w];
        out.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(plane, dst)| {
                let ch = plane % c;
                let src = &x[plane * h * w..(plane + 1) * h * w];
                dst.fill(bias[ch] + bias[c + ch]);
                let shift = self.shifts[ch] as i64;
                for (dir, along_w) in [(0, true), (1, false)] {
                    let kern = &wt[(dir * c + ch) * k * k..(dir * c + ch + 1) * k * k];
                    for ky in 0..k {
                        for kx in 0..k {
                            let wv = kern[ky * k + kx];
                            if wv != 0.0 {
                                add_tap(src, dst, (h, w), (ky, kx), p, shift, along_w, wv);
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
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
        use candle_core::cuda_backend::{Map3, WrapErr};
        let (b, c, h, w, k) = self.check(xl, wl, bl)?;
        let shifts = xs.device.cuda_stream().clone_htod(&self.shifts).w()?;
        let launch = gpu::Launch::new([b, c, h, w, k], shifts)?;
        let y = launch.map(&xs.slice, xl, &ws.slice, wl, &bs.slice, bl, &xs.device)?;
        Ok((crate::cuda::wrap(y, xs), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weights: &Tensor,
        biases: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let shifts = self.shifts.clone();
        let g = crate::grad::via_composition(&[x, weights, biases], grad, |t| {
            crate::composed::mix_shift(&t[0], &t[1], &t[2], &shifts)
        })?;
        Ok((Some(g[0].clone()), Some(g[1].clone()), Some(g[2].clone())))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DeviceRepr, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDevice, Map3, WrapErr};
    use candle_core::{Layout, Result, WithDType};

    use crate::cuda::{func, grid, int, view, SHIFT};

    /// The kernel's `Shift` struct: `b, c, h, w, k`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    struct Geo([i32; 5]);

    // SAFETY: a plain array of i32, laid out as the kernel's struct of five ints.
    unsafe impl DeviceRepr for Geo {}

    /// One mix-shift launch: the geometry and the per-channel shifts on the device.
    pub(super) struct Launch {
        geo: Geo,
        shifts: CudaSlice<i32>,
    }

    impl Launch {
        pub(super) fn new(dims: [usize; 5], shifts: CudaSlice<i32>) -> Result<Self> {
            let mut g = [0i32; 5];
            for (d, v) in g.iter_mut().zip(dims) {
                *d = int(v, "mix_shift")?;
            }
            Ok(Self {
                geo: Geo(g),
                shifts,
            })
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
            let x = view(xs, xl, "mix_shift", "input")?;
            let w = view(ws, wl, "mix_shift", "weights")?;
            let bias = view(bs, bl, "mix_shift", "biases")?;
            let n = x.len();
            let f = func::<T>(dev, &SHIFT, "mix_shift_fwd")?;
            // SAFETY: the kernel writes all n elements.
            let y = unsafe { dev.alloc::<T>(n) }?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&self.geo)
                .arg(&self.shifts)
                .arg(&x)
                .arg(&w)
                .arg(&bias)
                .arg(&y);
            // SAFETY: the arguments match the kernel's signature.
            unsafe { b.launch(grid(n)) }.w()?;
            Ok(y)
        }
    }
}
