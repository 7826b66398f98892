//! Fused selective scan (Mamba's S6 recurrence), sequential in the sequence, parallel over
//! batch and channels.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::KernelError;

/// Largest state size `N` the GPU kernel takes (larger ones run the composed path).
pub(crate) const MAX_STATE_GPU: usize = 64;

/// Candle custom op `(ud, a, bc) -> y` for the selective scan
/// `s_l = exp(delta_l * A) * s_{l-1} + delta_l * B_l * u_l`, `y_l = <s_l, C_l>` with state
/// `s` of size `N` per `(batch, channel)`:
/// * `ud`: `(2, B, D, L)`, `u` then `delta` (already biased and softplus-ed);
/// * `a`: `(D, N)`, the (negative) state matrix diagonal;
/// * `bc`: `(2, B, L, N)`, the input-dependent `B` then `C`;
/// * `y`: `(B, D, L)`.
///
/// All f32 and contiguous. One rayon task per batch item and group of [`LANES`] channels, which
/// keeps their states in vector registers, one channel per lane.
#[derive(Debug, Clone, Copy, Default)]
pub struct SelectiveScan {
    /// Scan from the last step to the first.
    pub reverse: bool,
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &'static str) -> Result<&'a [f32]> {
    crate::error::contiguous_f32(s, l, "selective_scan", what)
}

/// `(B, D, L, N)` of valid operands.
fn check(udl: &Layout, al: &Layout, bcl: &Layout) -> Result<(usize, usize, usize, usize)> {
    let dims = udl.shape().dims();
    let (two, b, d, l) = match dims {
        [two, b, d, l] => (*two, *b, *d, *l),
        _ => (0, 0, 0, 0),
    };
    let (ad, n) = al.shape().dims2()?;
    let shape_err = |what: &'static str, expected: String, found: &[usize]| {
        Err(KernelError::Shape {
            op: "selective_scan",
            what,
            expected,
            found: found.to_vec(),
        }
        .into())
    };
    if two != 2 {
        return shape_err("ud", "(2, B, D, L)".into(), dims);
    }
    if ad != d {
        return shape_err("a", format!("({d}, N)"), al.shape().dims());
    }
    if bcl.shape().dims() != [2, b, l, n] {
        return shape_err("bc", format!("(2, {b}, {l}, {n})"), bcl.shape().dims());
    }
    Ok((b, d, l, n))
}

impl CustomOp3 for SelectiveScan {
    fn name(&self) -> &'static str {
        "tokenmix-selective-scan"
    }

    fn bwd(
        &self,
        ud: &Tensor,
        a: &Tensor,
        bc: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let reverse = self.reverse;
        let g = crate::grad::via_composition(&[ud, a, bc], grad, |t| {
            let (b, c) = (t[2].get(0)?.transpose(1, 2)?, t[2].get(1)?.transpose(1, 2)?);
            let (u, delta) = (t[0].get(0)?, t[0].get(1)?);
            let scan = |[u, delta, b, c]: [&Tensor; 4]| {
                crate::composed::selective_scan(u, delta, &t[1], b, c)
            };
            if reverse {
                through_time_flip([&u, &delta, &b, &c], scan)
            } else {
                scan([&u, &delta, &b, &c])
            }
        })?;
        Ok((Some(g[0].clone()), Some(g[1].clone()), Some(g[2].clone())))
    }

    fn cpu_fwd(
        &self,
        uds: &CpuStorage,
        udl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bcs: &CpuStorage,
        bcl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, d, l, n) = check(udl, al, bcl)?;
        let ud = contiguous(uds, udl, "ud")?;
        let a = contiguous(as_, al, "a")?;
        let bc = contiguous(bcs, bcl, "bc")?;
        let (u, delta) = ud.split_at(b * d * l);
        let (bm, cm) = bc.split_at(b * l * n);
        let mut y = vec![0f32; b * d * l];
        y.par_chunks_mut((d * l).max(1))
            .enumerate()
            .for_each(|(bi, item)| {
                let (bm, cm) = (
                    &bm[bi * l * n..(bi + 1) * l * n],
                    &cm[bi * l * n..(bi + 1) * l * n],
                );
                item.par_chunks_mut(l.max(1))
                    .chunks(LANES)
                    .enumerate()
                    .for_each(|(g, mut rows)| {
                        let (d0, count) = (g * LANES, rows.len());
                        let span = (bi * d + d0) * l..(bi * d + d0 + count) * l;
                        scan_group(
                            &u[span.clone()],
                            &delta[span],
                            &a[d0 * n..(d0 + count) * n],
                            (bm, cm),
                            &mut rows,
                            n,
                            self.reverse,
                        );
                    });
            });
        Ok((CpuStorage::F32(y), Shape::from((b, d, l))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        uds: &candle_core::CudaStorage,
        udl: &Layout,
        as_: &candle_core::CudaStorage,
        al: &Layout,
        bcs: &candle_core::CudaStorage,
        bcl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map3;
        if self.reverse {
            return Err(KernelError::Param {
                op: "selective_scan",
                msg: "the reverse scan has no CUDA kernel; selective_scan_with flips for it".into(),
            }
            .into());
        }
        let (b, d, l, n) = check(udl, al, bcl)?;
        let launch = gpu::Launch::new([b, d, l, n])?;
        let y = launch.map(
            &uds.slice,
            udl,
            &as_.slice,
            al,
            &bcs.slice,
            bcl,
            &uds.device,
        )?;
        Ok((crate::cuda::wrap(y, uds), Shape::from((b, d, l))))
    }
}

/// The reverse scan as the forward `scan` of `u`, `delta`, `b`, `c` (`(B, ·, L)`) flipped in
/// time, its output flipped back.
pub(crate) fn through_time_flip(
    operands: [&Tensor; 4],
    scan: impl FnOnce([&Tensor; 4]) -> Result<Tensor>,
) -> Result<Tensor> {
    let flip = |t: &Tensor| t.contiguous()?.flip(&[2]);
    let [u, delta, b, c] = operands.map(flip);
    flip(&scan([&u?, &delta?, &b?, &c?])?)
}

/// Channels scanned together, one per vector lane.
const LANES: usize = 8;

crate::simd::dispatch! {
    /// [`scan_group_body`] on wide vectors where the CPU has them.
    fn scan_group(
        u: &[f32],
        delta: &[f32],
        a: &[f32],
        bc: (&[f32], &[f32]),
        out: &mut Vec<&mut [f32]>,
        n: usize,
        reverse: bool,
    ) => scan_group_body
}

/// The recurrence of up to [`LANES`] channels of one batch item at once, one channel per lane
/// (their `B` and `C` rows are shared): `u`, `delta` hold the channels' rows of length `L`
/// back to back, `a` their `(channels, n)` rows, `bc` the item's `B` and `C` `(L, n)`, and `out`
/// one `L`-long output row per channel. Each lane computes what the one-channel loop does, in
/// the same order (the state update, then `C · state` summed over `k` in order), with
/// [`crate::attention::exp`] for `exp(Δ A)`; with `reverse` the steps run from the last.
#[inline(always)]
fn scan_group_body(
    u: &[f32],
    delta: &[f32],
    a: &[f32],
    (bm, cm): (&[f32], &[f32]),
    out: &mut Vec<&mut [f32]>,
    n: usize,
    reverse: bool,
) {
    use crate::attention::exp;
    let rows = out.len();
    let l = out.first().map_or(0, |r| r.len());
    let mut a_t = vec![[0f32; LANES]; n];
    for (lane, row) in a.chunks_exact(n.max(1)).take(rows).enumerate() {
        for (k, &v) in row.iter().enumerate() {
            a_t[k][lane] = v;
        }
    }
    let mut state = vec![[0f32; LANES]; n];
    for step in 0..l {
        let t = if reverse { l - 1 - step } else { step };
        let (mut dt, mut du) = ([0f32; LANES], [0f32; LANES]);
        for lane in 0..rows {
            dt[lane] = delta[lane * l + t];
            du[lane] = dt[lane] * u[lane * l + t];
        }
        let (bt, ct) = (&bm[t * n..(t + 1) * n], &cm[t * n..(t + 1) * n]);
        let mut acc = [0f32; LANES];
        for (((s, ak), &bk), &ck) in state.iter_mut().zip(&a_t).zip(bt).zip(ct) {
            let mut decay = [0f32; LANES];
            for ((e, &d), &a) in decay.iter_mut().zip(&dt).zip(ak) {
                *e = exp(d * a);
            }
            for (((s, &e), &du), acc) in s.iter_mut().zip(&decay).zip(&du).zip(acc.iter_mut()) {
                *s = e * *s + du * bk;
                *acc += *s * ck;
            }
        }
        for (row, &v) in out.iter_mut().zip(&acc) {
            row[t] = v;
        }
    }
}

/// `(rows, elements)` of the GPU scan of `(B, D, L, N)`: `B * D` rows (one thread each) and
/// `B * D * L` outputs, computed in `usize`; refused where a size the kernel computes in 32-bit
/// ints (each dimension, the rows `B * D`, the state offsets `D * N`) would not fit.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn gpu_sizes([b, d, l, n]: [usize; 4]) -> Result<(usize, usize)> {
    use crate::sizes::{int, product};
    const OP: &str = "selective_scan";
    for dim in [b, d, l, n] {
        int(dim, OP)?;
    }
    let rows = product(&[b, d], OP)?;
    int(rows, OP)?;
    int(product(&[d, n], OP)?, OP)?;
    Ok((rows, product(&[rows, l], OP)?))
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DeviceRepr, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDevice, Map3, WrapErr};
    use candle_core::{Layout, Result, WithDType};

    use super::MAX_STATE_GPU;
    use crate::cuda::{func, int, threads_for, view, SCAN};
    use crate::KernelError;

    /// The kernel's `Scan` struct: `b, d, l, n`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    struct Geo([i32; 4]);

    // SAFETY: a plain array of i32, laid out as the kernel's struct of four ints.
    unsafe impl DeviceRepr for Geo {}

    const THREADS: u32 = 128;

    const OP: &str = "selective_scan";

    /// A scan launch: the kernel's sizes, and its row and element counts computed in `usize`.
    pub(super) struct Launch {
        geo: Geo,
        /// `B * D` rows, one thread each.
        rows: usize,
        /// `B * D * L` output elements.
        len: usize,
        /// The state size `N`.
        n: usize,
    }

    impl Launch {
        /// The launch for `(B, D, L, N)` (see [`super::gpu_sizes`]).
        pub(super) fn new(dims: [usize; 4]) -> Result<Self> {
            let (rows, len) = super::gpu_sizes(dims)?;
            let mut g = [0i32; 4];
            for (v, dim) in g.iter_mut().zip(dims) {
                *v = int(dim, OP)?;
            }
            Ok(Self {
                geo: Geo(g),
                rows,
                len,
                n: dims[3],
            })
        }

        /// The kernel instance whose register state holds `n`.
        fn kernel(&self) -> Result<&'static str> {
            match self.n {
                0..=16 => Ok("scan_fwd_n16"),
                17..=32 => Ok("scan_fwd_n32"),
                33..=MAX_STATE_GPU => Ok("scan_fwd_n64"),
                n => Err(KernelError::Param {
                    op: OP,
                    msg: format!("state size {n} exceeds the GPU kernel's {MAX_STATE_GPU}"),
                }
                .into()),
            }
        }
    }

    impl Map3 for Launch {
        fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
            &self,
            uds: &CudaSlice<T>,
            udl: &Layout,
            as_: &CudaSlice<T>,
            al: &Layout,
            bcs: &CudaSlice<T>,
            bcl: &Layout,
            dev: &CudaDevice,
        ) -> Result<CudaSlice<T>> {
            let ud = view(uds, udl, OP, "ud")?;
            let a = view(as_, al, OP, "a")?;
            let bc = view(bcs, bcl, OP, "bc")?;
            let f = func::<T>(dev, &SCAN, self.kernel()?)?;
            // The kernel keeps its row index in an int.
            let cfg = threads_for(self.rows, THREADS, i32::MAX as u32, OP)?;
            // SAFETY: the kernel writes all B * D * L elements.
            let y = unsafe { dev.alloc::<T>(self.len) }?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&self.geo).arg(&ud).arg(&a).arg(&bc).arg(&y);
            // SAFETY: the arguments match the kernel's signature.
            unsafe { b.launch(cfg) }.w()?;
            Ok(y)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn gpu_sizes_refuse_rows_past_32_bits() {
        assert_eq!(super::gpu_sizes([2, 3, 5, 16]).unwrap(), (6, 30));
        // Each dimension fits an int, their product does not: it used to wrap in i32.
        let e = super::gpu_sizes([1 << 16, 1 << 16, 1, 1])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("size 4294967296 exceeds the kernels' 32-bit indices"),
            "{e}"
        );
        assert!(super::gpu_sizes([1 << 15, 1 << 16, 1, 1]).is_err());
        assert!(super::gpu_sizes([1, 1 << 20, 1, 1 << 12]).is_err());
        // Outputs are indexed in size_t: only their count must not overflow.
        assert!(super::gpu_sizes([1 << 10, 1 << 10, 1 << 20, 16]).is_ok());
    }
}
