//! Fused sliding-window ("neighbourhood") attention ops of TransNeXt's aggregated attention
//! (DaiShiResearch/TransNeXt, `attention_native.py`), which builds them from
//! `nn.Unfold(kernel_size=w, padding=w//2, stride=1)` of the keys and values; here no unfolded
//! tensor is ever materialized.
//!
//! Operands are `(B, heads, N, d)` with `N = H * W` tokens in row-major order (`n = y * W + x`).
//! For an odd `window` `w` with `r = w / 2`, neighbour `j = (dy + r) * w + (dx + r)`
//! (`dy, dx` in `-r..=r`, row-major over the window: the kernel-position order of torch's
//! unfold) of token `(y, x)` is the token at `(y + dy, x + dx)`; a neighbour outside the map is
//! padding.
//!
//! * [`NeighborhoodLogits`]: `out[n, j] = q[n] · k[nbr(n, j)]`, `-inf` at padding.
//! * [`NeighborhoodAggregate`]: `out[n] = Σ_j weights[n, j] v[nbr(n, j)]` over the neighbours
//!   inside the map (padding contributes nothing, whatever its weight).
//!
//! Their gradients are the same three kernels again: the gather form of the aggregate, the
//! logits (padding 0), and the transposed aggregate `out[m] = Σ_j weights[m - off_j, j]
//! x[m - off_j]` (the scatter of the gather written as a gather over the inverse offsets), so
//! forward and backward are fused on the CPU and on CUDA.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{contiguous_f32, shape_error_of};
use crate::KernelError;

/// The largest window the neighbourhood ops take.
pub const MAX_NEIGHBORHOOD_WINDOW: usize = 15;

/// A `height x width` token map and an odd window over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grid {
    height: usize,
    width: usize,
    window: usize,
}

impl Grid {
    fn new(op: &'static str, height: usize, width: usize, window: usize) -> Result<Self> {
        if window.is_multiple_of(2) || window > MAX_NEIGHBORHOOD_WINDOW {
            return Err(KernelError::Param {
                op,
                msg: format!(
                    "window must be odd, from 1 to {MAX_NEIGHBORHOOD_WINDOW}, got {window}"
                ),
            }
            .into());
        }
        Ok(Self {
            height,
            width,
            window,
        })
    }

    fn tokens(&self) -> usize {
        self.height * self.width
    }

    fn taps(&self) -> usize {
        self.window * self.window
    }

    /// `(B, heads, d)` of a `(B, heads, N, d)` operand `what` of `op`.
    fn token_dims(
        &self,
        op: &'static str,
        what: &'static str,
        dims: &[usize],
    ) -> Result<(usize, usize, usize)> {
        match *dims {
            [b, heads, n, d] if n == self.tokens() => Ok((b, heads, d)),
            _ => Err(shape_error_of(
                op,
                what,
                format!(
                    "(B, heads, {}, d) for a {}x{} map",
                    self.tokens(),
                    self.height,
                    self.width
                ),
                dims,
            )),
        }
    }

    /// The neighbours of position `pos` along an axis of `len`: `(tap, source position)` for
    /// each tap whose source lies inside; the source is `pos + tap - r`, or `pos - (tap - r)`
    /// for the transposed (inverse-offset) form.
    #[inline(always)]
    fn taps_of(
        &self,
        pos: usize,
        len: usize,
        transposed: bool,
    ) -> impl Iterator<Item = (usize, usize)> {
        let r = self.window / 2;
        (0..self.window).filter_map(move |a| {
            let src = if transposed {
                (pos + r).checked_sub(a)
            } else {
                (pos + a).checked_sub(r)
            };
            src.filter(|&s| s < len).map(|s| (a, s))
        })
    }
}

/// Checks `q` and `k` of [`crate::neighborhood_logits`] and returns `(B, heads, d)`.
pub(crate) fn logits_dims(
    q: &[usize],
    k: &[usize],
    height: usize,
    width: usize,
    window: usize,
) -> Result<(usize, usize, usize)> {
    let op = "neighborhood_logits";
    let grid = Grid::new(op, height, width, window)?;
    let dims = grid.token_dims(op, "q", q)?;
    if k != q {
        return Err(shape_error_of(
            op,
            "k",
            format!("{q:?} (the shape of q)"),
            k,
        ));
    }
    Ok(dims)
}

/// Checks `weights` and `v` of [`crate::neighborhood_aggregate`] and returns
/// `(B, heads, d)`.
pub(crate) fn aggregate_dims(
    weights: &[usize],
    v: &[usize],
    height: usize,
    width: usize,
    window: usize,
) -> Result<(usize, usize, usize)> {
    let op = "neighborhood_aggregate";
    let grid = Grid::new(op, height, width, window)?;
    let (b, heads, taps) = grid.token_dims(op, "weights", weights)?;
    if taps != grid.taps() {
        return Err(shape_error_of(
            op,
            "weights",
            format!("(B, heads, {}, {})", grid.tokens(), grid.taps()),
            weights,
        ));
    }
    let (vb, vh, d) = grid.token_dims(op, "v", v)?;
    if (vb, vh) != (b, heads) {
        return Err(shape_error_of(
            op,
            "v",
            format!("({b}, {heads}, {}, d) to match the weights", grid.tokens()),
            v,
        ));
    }
    Ok((b, heads, d))
}

/// Candle custom op: the neighbourhood logits of contiguous `q` and `k` `(B, heads, N, d)`,
/// `(B, heads, N, w * w)` with `out[b, h, n, j] = q[b, h, n] · k[b, h, nbr(n, j)]` and
/// `-inf` where neighbour `j` is padding (see the module docs for the neighbour order). Its
/// backward gives `q` and `k` their gradients (none from the padding).
#[derive(Debug, Clone, Copy)]
pub struct NeighborhoodLogits {
    grid: Grid,
    /// The value at padding: `-inf`, or 0 where the op is the weights' gradient of
    /// [`NeighborhoodAggregate`].
    pad: f32,
}

impl NeighborhoodLogits {
    /// The op over a `height x width` map with an odd `window` (at most
    /// [`MAX_NEIGHBORHOOD_WINDOW`]).
    pub fn new(height: usize, width: usize, window: usize) -> Result<Self> {
        Ok(Self {
            grid: Grid::new("neighborhood_logits", height, width, window)?,
            pad: f32::NEG_INFINITY,
        })
    }

    /// `(B, heads, d)` of valid operands.
    fn dims(&self, q: &[usize], k: &[usize]) -> Result<(usize, usize, usize)> {
        let g = self.grid;
        logits_dims(q, k, g.height, g.width, g.window)
    }
}

/// Candle custom op: the neighbourhood aggregate of contiguous `weights` `(B, heads, N, w * w)`
/// and `v` `(B, heads, N, d)`, `(B, heads, N, d)` with
/// `out[b, h, n] = Σ_j weights[b, h, n, j] v[b, h, nbr(n, j)]` over the neighbours inside the
/// map (the weights of padding are never read). Its backward gives both operands their
/// gradients (zero for the weights of padding).
#[derive(Debug, Clone, Copy)]
pub struct NeighborhoodAggregate {
    grid: Grid,
    /// The transposed form, `out[m] = Σ_j weights[m - off_j, j] v[m - off_j]`: the gradient
    /// of the gather form with respect to `v` (and of the logits with respect to `k`).
    transposed: bool,
}

impl NeighborhoodAggregate {
    /// The op over a `height x width` map with an odd `window` (at most
    /// [`MAX_NEIGHBORHOOD_WINDOW`]).
    pub fn new(height: usize, width: usize, window: usize) -> Result<Self> {
        Ok(Self {
            grid: Grid::new("neighborhood_aggregate", height, width, window)?,
            transposed: false,
        })
    }

    fn transposed(self) -> Self {
        Self {
            transposed: !self.transposed,
            ..self
        }
    }

    /// `(B, heads, d)` of valid operands.
    fn dims(&self, weights: &[usize], v: &[usize]) -> Result<(usize, usize, usize)> {
        let g = self.grid;
        aggregate_dims(weights, v, g.height, g.width, g.window)
    }
}

/// `a · b` with eight lanes of partial sums, so the loop vectorizes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((l, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *l += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

crate::simd::dispatch! {
    /// [`logits_row_body`] on wide vectors where the CPU has them.
    fn logits_row(q: &[f32], k: &[f32], y: usize, grid: Grid, pad: f32, out: &mut [f32]) => logits_row_body
}

/// Logits of the tokens of row `y` of one `(N, d)` plane of `q` and `k`: `out` `(W, w * w)`.
#[inline(always)]
fn logits_row_body(q: &[f32], k: &[f32], y: usize, grid: Grid, pad: f32, out: &mut [f32]) {
    let (w, taps, win) = (grid.width, grid.taps(), grid.window);
    let d = q.len() / grid.tokens();
    out.fill(pad);
    for (x, dst) in out.chunks_exact_mut(taps).enumerate() {
        let qi = &q[(y * w + x) * d..][..d];
        for (a, sy) in grid.taps_of(y, grid.height, false) {
            for (b, sx) in grid.taps_of(x, w, false) {
                dst[a * win + b] = dot(qi, &k[(sy * w + sx) * d..][..d]);
            }
        }
    }
}

crate::simd::dispatch! {
    /// [`aggregate_row_body`] on wide vectors where the CPU has them.
    fn aggregate_row(wts: &[f32], src: &[f32], y: usize, grid: Grid, transposed: bool, out: &mut [f32]) => aggregate_row_body
}

/// Aggregates of the tokens of row `y` of one plane: weights `(N, w * w)`, sources `(N, d)`,
/// `out` `(W, d)`. The gather form weighs source `n + off_j` by `weights[n, j]`; the
/// transposed form weighs source `s = n - off_j` by `weights[s, j]`.
#[inline(always)]
fn aggregate_row_body(
    wts: &[f32],
    src: &[f32],
    y: usize,
    grid: Grid,
    transposed: bool,
    out: &mut [f32],
) {
    let (w, taps, win) = (grid.width, grid.taps(), grid.window);
    let d = src.len() / grid.tokens();
    out.fill(0.0);
    for (x, dst) in out.chunks_exact_mut(d).enumerate() {
        let n = y * w + x;
        for (a, sy) in grid.taps_of(y, grid.height, transposed) {
            for (b, sx) in grid.taps_of(x, w, transposed) {
                let s = sy * w + sx;
                let weight = wts[if transposed { s } else { n } * taps + a * win + b];
                for (o, v) in dst.iter_mut().zip(&src[s * d..][..d]) {
                    *o += weight * v;
                }
            }
        }
    }
}

/// `(B * heads * H)` rows of `per_token` outputs per token, each computed by `row(plane, y,
/// dst)`.
fn by_rows(
    grid: Grid,
    planes: usize,
    per_token: usize,
    row: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; planes * grid.tokens() * per_token];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(grid.width * per_token)
        .enumerate()
        .for_each(|(r, dst)| row(r / grid.height, r % grid.height, dst));
    out
}

impl CustomOp2 for NeighborhoodLogits {
    fn name(&self) -> &'static str {
        "tokenmix-neighborhood-logits"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, heads, d) = self.dims(ql.dims(), kl.dims())?;
        let q = contiguous_f32(qs, ql, "neighborhood_logits", "q")?;
        let k = contiguous_f32(ks, kl, "neighborhood_logits", "k")?;
        let (grid, pad) = (self.grid, self.pad);
        let plane = grid.tokens() * d;
        let out = by_rows(grid, b * heads, grid.taps(), |p, y, dst| {
            let (q, k) = (&q[p * plane..][..plane], &k[p * plane..][..plane]);
            logits_row(q, k, y, grid, pad, dst);
        });
        let shape = Shape::from((b, heads, grid.tokens(), grid.taps()));
        Ok((CpuStorage::F32(out), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        qs: &candle_core::CudaStorage,
        ql: &Layout,
        ks: &candle_core::CudaStorage,
        kl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, heads, d) = self.dims(ql.dims(), kl.dims())?;
        let g = self.grid;
        let launch = gpu::Launch::new("nbhd_logits", g, b * heads, d, self.pad)?;
        let out = launch.run(qs, ql, ks, kl, b * heads * g.tokens() * g.taps())?;
        Ok((out, Shape::from((b, heads, g.tokens(), g.taps()))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // dq[n] = Σ_j g[n, j] k[n + off_j]; dk[m] = Σ_j g[m - off_j, j] q[m - off_j].
        let gather = NeighborhoodAggregate {
            grid: self.grid,
            transposed: false,
        };
        let grad = grad.contiguous()?;
        let dq = grad.apply_op2(&k.contiguous()?, gather)?;
        let dk = grad.apply_op2(&q.contiguous()?, gather.transposed())?;
        Ok((Some(dq), Some(dk)))
    }
}

impl CustomOp2 for NeighborhoodAggregate {
    fn name(&self) -> &'static str {
        "tokenmix-neighborhood-aggregate"
    }

    fn cpu_fwd(
        &self,
        ws: &CpuStorage,
        wl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, heads, d) = self.dims(wl.dims(), vl.dims())?;
        let wts = contiguous_f32(ws, wl, "neighborhood_aggregate", "weights")?;
        let v = contiguous_f32(vs, vl, "neighborhood_aggregate", "v")?;
        let (grid, transposed) = (self.grid, self.transposed);
        let (wplane, vplane) = (grid.tokens() * grid.taps(), grid.tokens() * d);
        let out = by_rows(grid, b * heads, d, |p, y, dst| {
            let (w, v) = (&wts[p * wplane..][..wplane], &v[p * vplane..][..vplane]);
            aggregate_row(w, v, y, grid, transposed, dst);
        });
        Ok((
            CpuStorage::F32(out),
            Shape::from((b, heads, grid.tokens(), d)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        vs: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, heads, d) = self.dims(wl.dims(), vl.dims())?;
        let g = self.grid;
        let kernel = match self.transposed {
            false => "nbhd_aggregate",
            true => "nbhd_aggregate_transposed",
        };
        let launch = gpu::Launch::new(kernel, g, b * heads, d, 0.0)?;
        let out = launch.run(ws, wl, vs, vl, b * heads * g.tokens() * d)?;
        Ok((out, Shape::from((b, heads, g.tokens(), d))))
    }

    fn bwd(
        &self,
        wts: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let logits = NeighborhoodLogits {
            grid: self.grid,
            pad: 0.0,
        };
        let (grad, v) = (grad.contiguous()?, v.contiguous()?);
        // Gather: dw[n, j] = g[n] · v[n + off_j], dv = the transposed aggregate of (w, g).
        // Transposed: dw[n, j] = v[n] · g[n + off_j], dv = the gather of (w, g).
        let dw = match self.transposed {
            false => grad.apply_op2(&v, logits)?,
            true => v.apply_op2(&grad, logits)?,
        };
        let dv = wts.contiguous()?.apply_op2(&grad, self.transposed())?;
        Ok((Some(dw), Some(dv)))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DeviceRepr, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDevice, Map2, WrapErr};
    use candle_core::{CudaStorage, Layout, Result, WithDType};

    use super::Grid;
    use crate::cuda::{func, grid, int, view, wrap, NEIGHBORHOOD};

    /// The kernels' `Nbhd` struct: `planes (B * heads), h, w, d, window`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    struct Geo([i32; 5]);

    // SAFETY: a plain array of i32, laid out as the kernels' struct of five ints.
    unsafe impl DeviceRepr for Geo {}

    /// Kernel `kernel(Nbhd, float pad, a, b, out)`, grid-stride over its outputs.
    pub(super) struct Launch {
        kernel: &'static str,
        geo: Geo,
        pad: f32,
        out_len: usize,
    }

    impl Launch {
        pub(super) fn new(
            kernel: &'static str,
            g: Grid,
            planes: usize,
            d: usize,
            pad: f32,
        ) -> Result<Self> {
            let mut geo = [0i32; 5];
            for (slot, v) in geo.iter_mut().zip([planes, g.height, g.width, d, g.window]) {
                *slot = int(v, "neighborhood")?;
            }
            Ok(Self {
                kernel,
                geo: Geo(geo),
                pad,
                out_len: 0,
            })
        }

        /// The kernel on `a` and `b`, writing `out_len` elements.
        pub(super) fn run(
            self,
            a: &CudaStorage,
            al: &Layout,
            b: &CudaStorage,
            bl: &Layout,
            out_len: usize,
        ) -> Result<CudaStorage> {
            let launch = Self { out_len, ..self };
            Ok(wrap(launch.map(&a.slice, al, &b.slice, bl, &a.device)?, a))
        }
    }

    impl Map2 for Launch {
        fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
            &self,
            a: &CudaSlice<T>,
            al: &Layout,
            b: &CudaSlice<T>,
            bl: &Layout,
            dev: &CudaDevice,
        ) -> Result<CudaSlice<T>> {
            let (a, b) = (
                view(a, al, "neighborhood", "first operand")?,
                view(b, bl, "neighborhood", "second operand")?,
            );
            let f = func::<T>(dev, &NEIGHBORHOOD, self.kernel)?;
            // SAFETY: every kernel writes all out_len elements.
            let out = unsafe { dev.alloc::<T>(self.out_len) }?;
            let stream = dev.cuda_stream();
            let mut builder = stream.launch_builder(&f);
            builder
                .arg(&self.geo)
                .arg(&self.pad)
                .arg(&a)
                .arg(&b)
                .arg(&out);
            // SAFETY: the arguments match the kernel's signature.
            unsafe { builder.launch(grid(self.out_len)) }.w()?;
            Ok(out)
        }
    }
}
