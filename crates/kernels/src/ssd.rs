//! Fused Mamba-2 SSD scan (a state-space recurrence with one scalar decay per head), the scan
//! Hydra (goombalab/hydra, `hydra/modules/hydra.py`) runs forward and on the flipped sequence
//! (`mamba_chunk_scan_combined`).
//!
//! Operands: `x` `(B, L, H, P)` (already multiplied by `dt`), `log_decay` `(B, L, H)`
//! (`dt * A`), `b` and `c` `(B, L, G, N)` with `G` dividing `H` (head `h` reads group
//! `h / (H / G)`). Per `(batch, head)` the state `S` `(P, N)` follows
//! `S_t = exp(ld_t) S_{t-1} + x_t ⊗ b_t` (forward) or `S_t = exp(ld_t) S_{t+1} + x_t ⊗ b_t`
//! (reverse), and `y_t = S_t c_t`.
//!
//! Two CPU forms, picked by [`SsdPath`]:
//! * the recurrence, one pass over time with the `P x N` state on the stack of the task,
//!   `O(L P N)`;
//! * the quadratic dual form, `y_t = Σ_s M[t, s] x_s` with
//!   `M[t, s] = (c_t · b_s) exp(Σ ld over the steps between)` over `s ≤ t` (or `s ≥ t`), the
//!   segment sums accumulated outward from `t` (never formed where the mask is 0, so never
//!   exponentiated to infinity), `O(L² (N + P))`.
//!
//! The backward is fused on the CPU: one pass of the recurrence in the scan's direction gives
//! `dc_t = Σ_heads S_tᵀ dy_t` and `y_t · dy_t`; one pass of its adjoint (the opposite
//! direction, the decay of the neighbour step: `dS_t = exp(ld_{t+1}) dS_{t+1} + dy_t ⊗ c_t`
//! going forward) gives `dx_t = dS_t b_t`, `db_t = Σ_heads dS_tᵀ x_t` and
//! `d ld_t = Σ_{k ≥ t} (y_k · dy_k - x_k · dx_k)` (for the reverse scan the sum runs over
//! `k ≤ t`), which is `Σ dS_t ⊙ exp(ld_t) S_{t-1}` without the previous states (each dot taken
//! without its diagonal term `(c_k · b_k)(x_k · dy_k)`, which cancels exactly). On CUDA the
//! forward is the kernel of `src/cuda/ssd.cu` and the backward differentiates the composition
//! [`crate::composed::ssd_scan`].

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{contiguous_f32, shape_error_of};
use crate::ptr::SyncPtr;
use crate::KernelError;

const OP: &str = "ssd_scan";

/// Largest state size `N` the GPU kernel takes (larger ones run the composed path).
pub(crate) const MAX_STATE_GPU: usize = 128;

/// Largest head size `P` the GPU kernel takes (one thread per `p`, one block per head).
pub(crate) const MAX_HEAD_GPU: usize = 1024;

/// Which CPU form of the scan [`crate::ssd_scan_with`] runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SsdPath {
    /// The dual form where [`dual_is_faster`] says so, the recurrence otherwise.
    #[default]
    Auto,
    /// The state recurrence, `O(L P N)`.
    Recurrent,
    /// The quadratic dual form, `O(L² (N + P))`.
    Dual,
}

/// Whether the dual form is the faster CPU forward for a sequence of `l` steps, heads of `p`
/// and states of `n`: `l (n + p) < p n`, i.e. below `p n / (n + p)` steps (`L < 32` at
/// Hydra's `P = N = 64`, `L < 43` at `P = 64`, `N = 128`, `L < 11` at `P = 32`, `N = 16`).
///
/// Measured with the ignored test `ssd_scan_path_timing` (`cargo test --release -p
/// tokenmix-kernels --test fused_vs_composed ssd_scan_path_timing -- --ignored --nocapture`;
/// one thread, AVX2, on the 2-core AMD EPYC dev machine), milliseconds per head:
///
/// | P, N    | L = 8           | 16              | 33              | 65              | 128            |
/// |---------|-----------------|-----------------|-----------------|-----------------|----------------|
/// | 64, 64  | 0.0053 / 0.0019 | 0.0099 / 0.0058 | 0.0199 / 0.0198 | 0.040 / 0.070   | 0.080 / 0.331  |
/// | 64, 128 | 0.0086 / 0.0021 | 0.0181 / 0.0064 | 0.0361 / 0.0250 | 0.069 / 0.078   | 0.121 / 0.373  |
/// | 32, 16  | 0.0021 / 0.0010 | 0.0032 / 0.0034 | 0.0092 / 0.0158 | 0.017 / 0.049   | 0.034 / 0.182  |
/// | 3, 5    | 0.0006 / 0.0008 | 0.0009 / 0.0018 | 0.0015 / 0.0060 | 0.0023 / 0.0192 | 0.004 / 0.074  |
///
/// (recurrence / dual). The recurrence vectorizes over the whole `P x N` state and costs
/// about `l p n` steps of a few flops; the dual form `l² (n + p) / 2` plus an `exp` per pair, and
/// gets slower than its flop count past a few hundred steps (cache). The crossings
/// (about `L = 33` at `P = N = 64`, 50 at `P = 64, N = 128`, 16 at `P = 32, N = 16`, below 8 at
/// `P = 3, N = 5`) all lie at `l (n + p) ≈ p n` to `1.5 p n`; the rule takes the lower end,
/// as the recurrence loses at most a factor of 3 below it while the dual form loses ever
/// more above it.
pub fn dual_is_faster(l: usize, p: usize, n: usize) -> bool {
    l.saturating_mul(n + p) < p.saturating_mul(n)
}

/// The sizes of an SSD scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub(crate) b: usize,
    pub(crate) l: usize,
    pub(crate) h: usize,
    pub(crate) p: usize,
    pub(crate) g: usize,
    pub(crate) n: usize,
}

impl Dims {
    /// Heads per group.
    fn ratio(&self) -> usize {
        self.h / self.g.max(1)
    }

    /// Whether any operand or the output is empty.
    pub(crate) fn is_empty(&self) -> bool {
        [self.b, self.l, self.h, self.p, self.g, self.n].contains(&0)
    }
}

/// Checks the shapes of `x` `(B, L, H, P)`, `log_decay` `(B, L, H)`, `b` and `c` `(B, L, G, N)`
/// (`G` dividing `H`), and that the sizes the kernels index stay in `usize`.
pub(crate) fn dims(x: &[usize], ld: &[usize], b: &[usize], c: &[usize]) -> Result<Dims> {
    let [bs, l, h, p] = *x else {
        return Err(shape_error_of(OP, "x", "(B, L, H, P)".into(), x));
    };
    if ld != [bs, l, h] {
        return Err(shape_error_of(
            OP,
            "log_decay",
            format!("({bs}, {l}, {h}) (B, L, H of x)"),
            ld,
        ));
    }
    let (g, n) = match *b {
        [bb, bl, g, n] if (bb, bl) == (bs, l) => (g, n),
        _ => {
            return Err(shape_error_of(
                OP,
                "b",
                format!("({bs}, {l}, G, N) (B, L of x)"),
                b,
            ))
        }
    };
    if c != b {
        return Err(shape_error_of(
            OP,
            "c",
            format!("{b:?} (the shape of b)"),
            c,
        ));
    }
    if !h.is_multiple_of(g) {
        return Err(KernelError::Param {
            op: OP,
            msg: format!("the {g} groups of b and c do not divide the {h} heads of x"),
        }
        .into());
    }
    let dims = Dims {
        b: bs,
        l,
        h,
        p,
        g,
        n,
    };
    // The state P x N per head, the outputs, the packed (B, L, 2, G, N) operand and the
    // backward's (B, L, H, 2, N) per-head gradients.
    crate::sizes::product(&[bs, l, h, p, n], OP)?;
    crate::sizes::product(&[bs, l, h, 2, n.max(p)], OP)?;
    crate::sizes::product(&[bs, l, 2, g, n], OP)?;
    Ok(dims)
}

/// Candle custom op `(x, log_decay, bc) -> y` for the SSD scan (see the module docs): `x`
/// `(B, L, H, P)`, `log_decay` `(B, L, H)`, `bc` `(B, L, 2, G, N)` (`b` then `c` on axis 2),
/// `y` `(B, L, H, P)`; all contiguous, f32 on the CPU. One rayon task per `(batch, head)`.
/// Its backward is fused on the CPU and the composition's on CUDA.
#[derive(Debug, Clone, Copy, Default)]
pub struct SsdScan {
    /// The reverse scan (`s ≥ t`).
    pub reverse: bool,
    /// The CPU form of the forward.
    pub path: SsdPath,
}

/// `Dims` of the packed operands of [`SsdScan`].
fn op_dims(xl: &Layout, ldl: &Layout, bcl: &Layout) -> Result<Dims> {
    let bcd = bcl.shape().dims();
    let (b, c) = match *bcd {
        [bs, l, 2, g, n] => ([bs, l, g, n], [bs, l, g, n]),
        _ => return Err(shape_error_of(OP, "bc", "(B, L, 2, G, N)".into(), bcd)),
    };
    dims(xl.shape().dims(), ldl.shape().dims(), &b, &c)
}

/// The operands of one `(batch, head)` row, read in place from the `(B, L, H, ·)` layouts.
#[derive(Clone, Copy)]
struct Row<'a> {
    d: Dims,
    bi: usize,
    hi: usize,
    /// `(B, L, H, P)`.
    x: &'a [f32],
    /// `(B, L, H)`.
    ld: &'a [f32],
    /// `(B, L, 2, G, N)`.
    bc: &'a [f32],
}

impl<'a> Row<'a> {
    /// The flat `(b, t, h)` index.
    #[inline(always)]
    fn tok(&self, t: usize) -> usize {
        (self.bi * self.d.l + t) * self.d.h + self.hi
    }

    #[inline(always)]
    fn x(&self, t: usize) -> &'a [f32] {
        let p = self.d.p;
        &self.x[self.tok(t) * p..][..p]
    }

    #[inline(always)]
    fn ld(&self, t: usize) -> f32 {
        self.ld[self.tok(t)]
    }

    /// `b_t` (`which` 0) or `c_t` (1) of this head's group.
    #[inline(always)]
    fn bc(&self, t: usize, which: usize) -> &'a [f32] {
        let Dims { l, g, n, .. } = self.d;
        let gi = self.hi / self.d.ratio();
        &self.bc[(((self.bi * l + t) * 2 + which) * g + gi) * n..][..n]
    }

    /// Time steps in scan order.
    fn order(&self, reverse: bool) -> impl Iterator<Item = usize> {
        let l = self.d.l;
        (0..l).map(move |i| if reverse { l - 1 - i } else { i })
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

/// `dst += k * src`.
#[inline(always)]
fn axpy(dst: &mut [f32], k: f32, src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += k * s;
    }
}

/// One step of a recurrence on the `(P, N)` state: `S = decay S + u ⊗ v`.
#[inline(always)]
fn update(state: &mut [f32], decay: f32, u: &[f32], v: &[f32]) {
    for (row, &uk) in state.chunks_exact_mut(v.len()).zip(u) {
        for (s, &vk) in row.iter_mut().zip(v) {
            *s = decay * *s + uk * vk;
        }
    }
}

crate::simd::dispatch! {
    /// [`recurrent_row_body`] on wide vectors where the CPU has them.
    fn recurrent_row(row: Row<'_>, reverse: bool, y: SyncPtr) => recurrent_row_body
}

/// The recurrence of one row, writing its `y_t` into the `(B, L, H, P)` output `y`.
#[inline(always)]
fn recurrent_row_body(row: Row<'_>, reverse: bool, y: SyncPtr) {
    let (p, n) = (row.d.p, row.d.n);
    let mut state = vec![0f32; p * n];
    for t in row.order(reverse) {
        update(&mut state, row.ld(t).exp(), row.x(t), row.bc(t, 0));
        let ct = row.bc(t, 1);
        // SAFETY: this row alone writes the P outputs at (b, t, h), inside the output.
        let out = unsafe { std::slice::from_raw_parts_mut(y.add(row.tok(t) * p).0, p) };
        for (o, s) in out.iter_mut().zip(state.chunks_exact(n)) {
            *o = dot(s, ct);
        }
    }
}

crate::simd::dispatch! {
    /// [`dual_row_body`] on wide vectors where the CPU has them.
    fn dual_row(row: Row<'_>, reverse: bool, y: SyncPtr) => dual_row_body
}

/// The dual form of one row: `y_t = Σ_s (c_t · b_s) exp(seg(t, s)) x_s` over `s ≤ t` (or
/// `s ≥ t`), the segment sum `seg` accumulated from `t` outward (only the unmasked half).
#[inline(always)]
fn dual_row_body(row: Row<'_>, reverse: bool, y: SyncPtr) {
    let (l, p) = (row.d.l, row.d.p);
    for t in 0..l {
        // SAFETY: this row alone writes the P outputs at (b, t, h), inside the output.
        let out = unsafe { std::slice::from_raw_parts_mut(y.add(row.tok(t) * p).0, p) };
        out.fill(0.0);
        let ct = row.bc(t, 1);
        match reverse {
            true => dual_terms(row, ct, t..l, out),
            false => dual_terms(row, ct, (0..=t).rev(), out),
        }
    }
}

/// `out += Σ_s exp(seg) (c_t · b_s) x_s` over `sources` (from `t` outward), `seg` the sum of
/// the log-decays of the sources passed before `s`.
#[inline(always)]
fn dual_terms(row: Row<'_>, ct: &[f32], sources: impl Iterator<Item = usize>, out: &mut [f32]) {
    let mut seg = 0f32;
    for s in sources {
        axpy(out, seg.exp() * dot(ct, row.bc(s, 0)), row.x(s));
        seg += row.ld(s);
    }
}

/// `(B * H)` rows run by `f(row, out)` in parallel, writing into a zeroed buffer of `len`.
fn by_rows(d: Dims, len: usize, f: impl Fn(usize, usize, SyncPtr) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; len];
    // An empty operand leaves every output 0 (with N = 0, y and all its gradients are 0).
    if d.is_empty() {
        return out;
    }
    let ptr = SyncPtr(out.as_mut_ptr());
    (0..d.b * d.h)
        .into_par_iter()
        .for_each(|r| f(r / d.h, r % d.h, ptr));
    out
}

impl CustomOp3 for SsdScan {
    fn name(&self) -> &'static str {
        "tokenmix-ssd-scan"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        lds: &CpuStorage,
        ldl: &Layout,
        bcs: &CpuStorage,
        bcl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = op_dims(xl, ldl, bcl)?;
        let x = contiguous_f32(xs, xl, OP, "x")?;
        let ld = contiguous_f32(lds, ldl, OP, "log_decay")?;
        let bc = contiguous_f32(bcs, bcl, OP, "bc")?;
        let dual = match self.path {
            SsdPath::Auto => dual_is_faster(d.l, d.p, d.n),
            SsdPath::Recurrent => false,
            SsdPath::Dual => true,
        };
        let reverse = self.reverse;
        let y = by_rows(d, d.b * d.l * d.h * d.p, |bi, hi, y| {
            let row = Row {
                d,
                bi,
                hi,
                x,
                ld,
                bc,
            };
            match dual {
                true => dual_row(row, reverse, y),
                false => recurrent_row(row, reverse, y),
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((d.b, d.l, d.h, d.p))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        lds: &candle_core::CudaStorage,
        ldl: &Layout,
        bcs: &candle_core::CudaStorage,
        bcl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map3;
        let d = op_dims(xl, ldl, bcl)?;
        let launch = gpu::Launch::new(d, self.reverse)?;
        let y = launch.map(&xs.slice, xl, &lds.slice, ldl, &bcs.slice, bcl, &xs.device)?;
        Ok((crate::cuda::wrap(y, xs), Shape::from((d.b, d.l, d.h, d.p))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        ld: &Tensor,
        bc: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let reverse = self.reverse;
        if !(grad.device().is_cpu() && grad.dtype() == candle_core::DType::F32) {
            let g = crate::grad::via_composition(&[x, ld, bc], grad, |t| {
                let (b, c) = (t[2].narrow(2, 0, 1)?, t[2].narrow(2, 1, 1)?);
                crate::composed::ssd_scan(&t[0], &t[1], &b.squeeze(2)?, &c.squeeze(2)?, reverse)
            })?;
            return Ok((Some(g[0].clone()), Some(g[1].clone()), Some(g[2].clone())));
        }
        let d = op_dims(x.layout(), ld.layout(), bc.layout())?;
        let xdy = Tensor::stack(&[x, &grad.contiguous()?], 0)?;
        let packed = xdy.apply_op3(&ld.contiguous()?, &bc.contiguous()?, SsdScanBackward(*self))?;
        let (xlen, ldlen) = (d.b * d.l * d.h * d.p, d.b * d.l * d.h);
        let dx = packed.narrow(0, 0, xlen)?.reshape(x.shape())?;
        let dld = packed.narrow(0, xlen, ldlen)?.reshape(ld.shape())?;
        // (B, L, H, 2, N) per head, summed over the heads of each group, to (B, L, 2, G, N).
        let dbc = packed
            .narrow(0, xlen + ldlen, ldlen * 2 * d.n)?
            .reshape((d.b, d.l, d.g, d.ratio(), 2, d.n))?
            .sum(3)?
            .transpose(2, 3)?
            .contiguous()?;
        Ok((Some(dx), Some(dld), Some(dbc)))
    }
}

/// The fused CPU backward of [`SsdScan`] on `(xdy, log_decay, bc)`, `xdy` `(2, B, L, H, P)`
/// holding `x` then the output's gradient: one flat f32 vector of `dx` `(B, L, H, P)`, `d ld`
/// `(B, L, H)` and the per-head `db, dc` `(B, L, H, 2, N)`.
#[derive(Debug, Clone, Copy)]
struct SsdScanBackward(SsdScan);

crate::simd::dispatch! {
    /// [`backward_row_body`] on wide vectors where the CPU has them.
    fn backward_row(row: Row<'_>, dy: &[f32], reverse: bool, out: SyncPtr) => backward_row_body
}

/// The gradients of one row (see the module docs), written into the packed output `out`.
#[inline(always)]
fn backward_row_body(row: Row<'_>, dy: &[f32], reverse: bool, out: SyncPtr) {
    let Dims { b, l, h, p, n, .. } = row.d;
    let (xlen, ldlen) = (b * l * h * p, b * l * h);
    let dy_at = |t: usize| &dy[row.tok(t) * p..][..p];
    // SAFETY (for the three slices below): this row alone writes its (b, t, h) entries of each
    // part of the packed output, all inside it.
    let part = |offset: usize, len: usize| unsafe {
        std::slice::from_raw_parts_mut(out.add(offset).0, len)
    };
    let mut state = vec![0f32; p * n];
    let mut v = vec![0f32; n];
    // `y_t · dy_t` less its diagonal term `(c_t · b_t)(x_t · dy_t)`, which `x_t · dx_t` holds
    // too: the two cancel exactly in `d ld` (no rounding left at L = 1).
    let mut ydy = vec![0f32; l];
    // The scan again: with `v = S_{t-1}ᵀ dy_t`, `dc_t = S_tᵀ dy_t = a_t v + (x_t · dy_t) b_t`
    // and `y_t · dy_t = a_t (v · c_t) + (c_t · b_t)(x_t · dy_t)`.
    for t in row.order(reverse) {
        let (a, xt, bt, dyt) = (row.ld(t).exp(), row.x(t), row.bc(t, 0), dy_at(t));
        v.fill(0.0);
        for ((s, &g), &xk) in state.chunks_exact_mut(n).zip(dyt).zip(xt) {
            axpy(&mut v, g, s);
            for (e, &bk) in s.iter_mut().zip(bt) {
                *e = a * *e + xk * bk;
            }
        }
        let dc = part(xlen + ldlen + (row.tok(t) * 2 + 1) * n, n);
        let xdy = dot(xt, dyt);
        for ((o, &vk), &bk) in dc.iter_mut().zip(&v).zip(bt) {
            *o = a * vk + xdy * bk;
        }
        ydy[t] = a * dot(&v, row.bc(t, 1));
    }
    // Its adjoint in the opposite order, each step decayed by the step processed before it:
    // with `D` that decayed state, `dx_t = D b_t + (c_t · b_t) dy_t`,
    // `db_t = Dᵀ x_t + (x_t · dy_t) c_t`, then `dS_t = D + dy_t ⊗ c_t`.
    state.fill(0.0);
    let (mut decay, mut acc) = (0f32, 0f32);
    for t in row.order(!reverse) {
        let (xt, bt, ct, dyt) = (row.x(t), row.bc(t, 0), row.bc(t, 1), dy_at(t));
        let (cb, xdy) = (dot(ct, bt), dot(xt, dyt));
        let dx = part(row.tok(t) * p, p);
        let db = part(xlen + ldlen + row.tok(t) * 2 * n, n);
        for (o, &ck) in db.iter_mut().zip(ct) {
            *o = xdy * ck;
        }
        let mut xdx = 0f32;
        for (((s, dxk), &xk), &g) in state
            .chunks_exact_mut(n)
            .zip(dx.iter_mut())
            .zip(xt)
            .zip(dyt)
        {
            for e in s.iter_mut() {
                *e *= decay;
            }
            let off = dot(s, bt);
            xdx += xk * off;
            *dxk = off + cb * g;
            axpy(db, xk, s);
            axpy(s, g, ct);
        }
        decay = row.ld(t).exp();
        acc += ydy[t] - xdx;
        part(xlen + row.tok(t), 1)[0] = acc;
    }
}

impl CustomOp3 for SsdScanBackward {
    fn name(&self) -> &'static str {
        "tokenmix-ssd-scan-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        lds: &CpuStorage,
        ldl: &Layout,
        bcs: &CpuStorage,
        bcl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xd = xl.shape().dims();
        if xd.first() != Some(&2) {
            return Err(shape_error_of(OP, "xdy", "(2, B, L, H, P)".into(), xd));
        }
        let x_only = Layout::contiguous(&xd[1..]);
        let d = op_dims(&x_only, ldl, bcl)?;
        let xdy = contiguous_f32(xs, xl, OP, "xdy")?;
        let ld = contiguous_f32(lds, ldl, OP, "log_decay")?;
        let bc = contiguous_f32(bcs, bcl, OP, "bc")?;
        let (x, dy) = xdy.split_at(xdy.len() / 2);
        let len = d.b * d.l * d.h * (d.p + 1 + 2 * d.n);
        let reverse = self.0.reverse;
        let out = by_rows(d, len, |bi, hi, out| {
            let row = Row {
                d,
                bi,
                hi,
                x,
                ld,
                bc,
            };
            backward_row(row, dy, reverse, out)
        });
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// `(rows, elements)` of the GPU scan: `B * H` blocks and `B * L * H * P` outputs, computed
/// in `usize`; refused where a size the kernel computes in 32-bit ints (each dimension, the
/// rows `B * H`) would not fit.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn gpu_sizes(d: Dims) -> Result<(usize, usize)> {
    use crate::sizes::{int, product};
    for dim in [d.b, d.l, d.h, d.p, d.g, d.n] {
        int(dim, OP)?;
    }
    let rows = product(&[d.b, d.h], OP)?;
    int(rows, OP)?;
    Ok((rows, product(&[rows, d.l, d.p], OP)?))
}

/// Whether the GPU kernel takes heads of `p` and states of `n`.
pub(crate) fn fits_gpu(p: usize, n: usize) -> bool {
    p <= MAX_HEAD_GPU && n <= MAX_STATE_GPU
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DeviceRepr, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDevice, Map3, WrapErr};
    use candle_core::{Layout, Result, WithDType};

    use super::{Dims, MAX_HEAD_GPU, MAX_STATE_GPU, OP};
    use crate::cuda::{blocks_of, func, int, view, SSD};
    use crate::KernelError;

    /// The kernel's `Ssd` struct: `b, l, h, p, g, n, reverse`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    struct Geo([i32; 7]);

    // SAFETY: a plain array of i32, laid out as the kernel's struct of seven ints.
    unsafe impl DeviceRepr for Geo {}

    /// An SSD scan launch: one block per `(batch, head)`, one thread per `p`.
    pub(super) struct Launch {
        geo: Geo,
        rows: usize,
        len: usize,
        d: Dims,
    }

    impl Launch {
        pub(super) fn new(d: Dims, reverse: bool) -> Result<Self> {
            let (rows, len) = super::gpu_sizes(d)?;
            let mut g = [0i32; 7];
            for (v, dim) in g.iter_mut().zip([d.b, d.l, d.h, d.p, d.g, d.n]) {
                *v = int(dim, OP)?;
            }
            g[6] = reverse as i32;
            Ok(Self {
                geo: Geo(g),
                rows,
                len,
                d,
            })
        }

        /// The kernel instance whose register state holds `n`.
        fn kernel(&self) -> Result<&'static str> {
            if self.d.p > MAX_HEAD_GPU {
                return Err(KernelError::Param {
                    op: OP,
                    msg: format!(
                        "head size {} exceeds the GPU kernel's {MAX_HEAD_GPU}",
                        self.d.p
                    ),
                }
                .into());
            }
            match self.d.n {
                0..=16 => Ok("ssd_fwd_n16"),
                17..=32 => Ok("ssd_fwd_n32"),
                33..=64 => Ok("ssd_fwd_n64"),
                65..=MAX_STATE_GPU => Ok("ssd_fwd_n128"),
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
            xs: &CudaSlice<T>,
            xl: &Layout,
            lds: &CudaSlice<T>,
            ldl: &Layout,
            bcs: &CudaSlice<T>,
            bcl: &Layout,
            dev: &CudaDevice,
        ) -> Result<CudaSlice<T>> {
            let kernel = self.kernel()?;
            if self.d.is_empty() {
                return dev.alloc_zeros::<T>(self.len);
            }
            let x = view(xs, xl, OP, "x")?;
            let ld = view(lds, ldl, OP, "log_decay")?;
            let bc = view(bcs, bcl, OP, "bc")?;
            let f = func::<T>(dev, &SSD, kernel)?;
            // Whole warps covering P (at most 1024 threads).
            let threads = self.d.p.div_ceil(32).max(1) * 32;
            let cfg = blocks_of(self.rows, threads as u32, OP)?;
            // SAFETY: the kernel writes all B * L * H * P elements.
            let y = unsafe { dev.alloc::<T>(self.len) }?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&self.geo).arg(&x).arg(&ld).arg(&bc).arg(&y);
            // SAFETY: the arguments match the kernel's signature.
            unsafe { b.launch(cfg) }.w()?;
            Ok(y)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(b: usize, l: usize, h: usize, p: usize, g: usize, n: usize) -> Dims {
        Dims { b, l, h, p, g, n }
    }

    #[test]
    fn gpu_sizes_refuse_rows_past_32_bits() {
        assert_eq!(gpu_sizes(d(2, 5, 4, 3, 2, 16)).unwrap(), (8, 120));
        let e = gpu_sizes(d(1 << 16, 1, 1 << 16, 1, 1, 1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("size 4294967296 exceeds the kernels' 32-bit indices"),
            "{e}"
        );
        // Outputs are indexed in size_t: only their count must not overflow.
        assert!(gpu_sizes(d(1 << 10, 1 << 20, 1 << 4, 64, 1, 64)).is_ok());
    }

    #[test]
    fn shapes_whose_sizes_overflow_are_refused() {
        let big = 1usize << 20;
        let e = dims(
            &[big, big, 1, big],
            &[big, big, 1],
            &[big, big, 1, big],
            &[big, big, 1, big],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ssd_scan: the size") && e.contains("overflows"),
            "{e}"
        );
        let big = 1usize << 22;
        let e = dims(
            &[1, big, big, big],
            &[1, big, big],
            &[1, big, 1, 1],
            &[1, big, 1, 1],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("overflows"), "{e}");
        assert!(dims(&[2, 5, 4, 3], &[2, 5, 4], &[2, 5, 2, 6], &[2, 5, 2, 6]).is_ok());
        // No groups for some heads: refused; no heads and no groups: empty, accepted.
        assert!(dims(&[2, 5, 4, 3], &[2, 5, 4], &[2, 5, 0, 6], &[2, 5, 0, 6]).is_err());
        assert!(dims(&[2, 5, 0, 3], &[2, 5, 0], &[2, 5, 0, 6], &[2, 5, 0, 6]).is_ok());
    }

    #[test]
    fn the_dual_form_is_picked_for_short_sequences() {
        assert!(dual_is_faster(31, 64, 64));
        assert!(!dual_is_faster(32, 64, 64));
        assert!(dual_is_faster(1, 3, 5));
        assert!(!dual_is_faster(2, 3, 5));
        assert!(!dual_is_faster(usize::MAX, 64, 64));
    }
}
