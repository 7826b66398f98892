//! Fused multi-head self-attention core: `softmax(scale · q kᵀ) v` per head, reading the packed
//! `qkv` projection in place.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ptr::SyncPtr;
use crate::KernelError;

/// Query rows per score block: bounds the scratch at `ROWS x N` scores per task.
const ROWS: usize = 128;

/// What the output and the score scratch start as: NaN in debug builds, so that the tests would
/// see it if gemm ever read `dst` without `read_dst` (gemm-common 0.19 stores it without
/// reading it) or a head left part of the output unwritten.
const UNWRITTEN: f32 = if cfg!(debug_assertions) {
    f32::NAN
} else {
    0.0
};

/// Candle custom op: the attention core on a contiguous f32 `qkv` `(B, N, 3, H, D)` (the
/// output of a `Linear(C, 3 * H * D)` reshaped): for every sample and head,
/// `softmax(scale · q kᵀ) v` with the softmax over keys, written as `(B, N, H * D)` (heads
/// concatenated, as the output projection reads them). One task per `(sample, head)`, each
/// running single-threaded matrix products on strided views of `qkv` (no copies of q, k, v).
#[derive(Debug, Clone, Copy)]
pub struct SelfAttention {
    scale: f32,
}

impl SelfAttention {
    /// The op with the score scale `scale` (usually `head_dim^-0.5`).
    pub fn new(scale: f64) -> Self {
        Self {
            scale: scale as f32,
        }
    }
}

/// `(B, N, H, D)` of a `qkv` shape `(B, N, 3, H, D)`, or an error naming the shape.
pub(crate) fn qkv_dims(shape: &Shape) -> Result<(usize, usize, usize, usize)> {
    match *shape.dims() {
        [b, n, 3, h, d] => Ok((b, n, h, d)),
        _ => Err(KernelError::Shape {
            op: "self_attention",
            what: "qkv",
            expected: "(B, N, 3, heads, head_dim)".into(),
            found: shape.dims().to_vec(),
        }
        .into()),
    }
}

impl CustomOp1 for SelfAttention {
    fn name(&self) -> &'static str {
        "tokenmix-self-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, n, h, d) = qkv_dims(layout.shape())?;
        let qkv = crate::error::contiguous_f32(storage, layout, "self_attention", "qkv")?;
        let shape = Shape::from((b, n, h * d));
        let mut out = vec![UNWRITTEN; shape.elem_count()];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), shape));
        }
        let dst = SyncPtr(out.as_mut_ptr());
        (0..b * h).into_par_iter().for_each_init(
            || vec![UNWRITTEN; ROWS.min(n) * n],
            |scores, task| {
                let (sample, head) = (task / h, task % h);
                let base = sample * n * 3 * h * d + head * d;
                // SAFETY: the offset is inside `out`, and this head's output columns of this
                // sample are written by this task only.
                unsafe {
                    let out = dst.add(sample * n * h * d + head * d);
                    self.head(&qkv[base..], (n, h, d), scores, out.0)
                };
            },
        );
        Ok((CpuStorage::F32(out), shape))
    }

    /// The attention gradients as candle ops on the unpacked `q`, `k`, `v` (`p` the attention
    /// weights): `dv = pᵀ do`, `ds = p ⊙ (do vᵀ - rowsum(do vᵀ ⊙ p))`, `dq = scale · ds k`,
    /// `dk = scale · dsᵀ q`, packed back as `(B, N, 3, H, D)`.
    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, n, h, d) = qkv_dims(qkv.shape())?;
        let (q, k, v) = crate::composed::qkv_heads(qkv)?;
        let scale = self.scale as f64;
        let p = crate::composed::softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?;
        let dout = grad.reshape((b, n, h, d))?.transpose(1, 2)?.contiguous()?;
        let dv = p.t()?.matmul(&dout)?;
        let dp = dout.matmul(&v.t()?)?;
        let ds = (&p * dp.broadcast_sub(&(&dp * &p)?.sum_keepdim(3)?)?)?;
        let dq = (ds.matmul(&k)? * scale)?;
        let dk = (ds.t()?.matmul(&q)? * scale)?;
        let packed = Tensor::stack(&[dq, dk, dv], 0)?.permute((1, 3, 0, 2, 4))?;
        Ok(Some(packed.contiguous()?))
    }
}

impl SelfAttention {
    /// One head of one sample: `qkv` starts at the head's first query value (tokens
    /// `3 * H * D` apart, k at `+ H * D`, v at `+ 2 * H * D`); `out` at its first output value
    /// (tokens `H * D` apart).
    ///
    /// # Safety
    /// `out` must be valid for the `N` rows of `D` values this head writes.
    unsafe fn head(
        &self,
        qkv: &[f32],
        (n, h, d): (usize, usize, usize),
        scores: &mut [f32],
        out: *mut f32,
    ) {
        let token = (3 * h * d) as isize;
        let (q, k, v) = (
            qkv.as_ptr(),
            qkv[h * d..].as_ptr(),
            qkv[2 * h * d..].as_ptr(),
        );
        for r0 in (0..n).step_by(ROWS) {
            let rows = ROWS.min(n - r0);
            let s = &mut scores[..rows * n];
            // s = scale · q[r0..r0 + rows] kᵀ, row-major (rows, n).
            gemm::gemm(
                rows,
                n,
                d,
                s.as_mut_ptr(),
                1,
                n as isize,
                false,
                q.offset(r0 as isize * token),
                1,
                token,
                k,
                token,
                1,
                0.0,
                self.scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
            s.chunks_exact_mut(n).for_each(softmax_row);
            // out[r0..r0 + rows] = s v.
            gemm::gemm(
                rows,
                d,
                n,
                out.add(r0 * h * d),
                1,
                (h * d) as isize,
                false,
                s.as_ptr(),
                1,
                n as isize,
                v,
                1,
                token,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

crate::simd::dispatch! {
    /// [`softmax_row_body`] on wide vectors where the CPU has them.
    pub(crate) fn softmax_row(row: &mut [f32]) => softmax_row_body
}

/// `row = exp(row - max) / sum` in place, with eight-lane max and sum accumulators so the
/// loops vectorize.
#[inline(always)]
fn softmax_row_body(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m = m.max(*v);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for (s, v) in sums.iter_mut().zip(c) {
            *v = exp(*v - max);
            *s += *v;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `e^x` to about 2 ulp for `x` in `[-87, 88]` (clamped to that range outside it): Cephes' `expf`,
/// `2^n · p(r)` with `n = round(x / ln 2)` and a degree-7 polynomial `p` on `|r| <= ln 2 / 2`,
/// branch-free so that loops over it vectorize.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n from the bits of n + 127 (an integer in [1, 254]): adding 2^23 puts it in the low
    // mantissa bits. Unlike `n as i32`, this has no saturating branch, so loops vectorize.
    let biased = (n + 127.0 + 8_388_608.0).to_bits() & 0xff;
    y * f32::from_bits(biased << 23)
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_accurate() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (got, want) = (super::exp(x), x.exp());
            let rel = ((got - want) / want).abs();
            assert!(rel < 1e-6, "exp({x}) = {got}, want {want}");
        }
        assert!(super::exp(-200.0) < 1e-37);
    }
}
