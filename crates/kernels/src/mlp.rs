//! A block's channel MLP and the residual add after it in one op,
//! `base + act(x W1 + b1) W2 + b2` over rows of channels. The CPU kernel works a block of rows at
//! a time: the block's hidden activations (usually 4x the width) are made, activated and consumed
//! while they sit in cache instead of being written to memory and read back twice, and the output
//! starts as `base + b2`, so no zero fill, bias add or residual add runs as a pass of its own.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::error::{contiguous_f32, shape_error_of};
use crate::ptr::SyncPtr;
use crate::KernelError;

const OP: &str = "residual_mlp";

/// Bytes of hidden activations one row block may hold (half this machine class's 1 MiB L2).
const HIDDEN_BLOCK_BYTES: usize = 512 * 1024;

/// Fewest rows a block is given (each block streams both weight matrices through gemm's
/// packing once, a cost that shrinks with the rows sharing it); below `threads` blocks of this
/// many rows, the whole input is one block whose products and passes are split across threads.
const MIN_BLOCK_ROWS: usize = 128;

/// Largest weights (both matrices) worth working in row blocks: each block streams them
/// through gemm's packing again, which pays off while they stay in a core's L2 cache; larger
/// ones run as one block over all rows, each product split across the threads.
const MAX_BLOCKED_WEIGHT_BYTES: usize = 1024 * 1024;

/// Rows per task of the element-wise passes when one block spans the threads.
const PASS_ROWS: usize = 16;

/// The activation between the MLP's two products.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MlpActivation {
    /// Exact (erf) GELU.
    Gelu,
    /// `scale * relu(x)^2 + bias` (StarReLU; SquaredReLU is scale 1, bias 0).
    StarRelu {
        /// Factor on the squared ReLU.
        scale: f32,
        /// Added after scaling.
        bias: f32,
    },
}

impl MlpActivation {
    /// The activation of `x` as candle ops.
    fn compose(&self, x: &Tensor) -> Result<Tensor> {
        match *self {
            Self::Gelu => x.gelu_erf(),
            Self::StarRelu { scale, bias } => x.relu()?.sqr()?.affine(scale as f64, bias as f64),
        }
    }
}

/// The weights of a two-layer channel MLP `C -> H -> N`: `fc1` `(C, H)` and `fc2` `(H, N)`
/// as the products multiply by them (a `Linear` weight transposed), optional biases `(H)` and
/// `(N)`, and the activation between.
#[derive(Debug, Clone)]
pub struct MlpWeights {
    /// First product's matrix `(C, H)`.
    pub fc1: Tensor,
    /// First product's bias `(H)`.
    pub fc1_bias: Option<Tensor>,
    /// Activation of the hidden values.
    pub act: MlpActivation,
    /// Second product's matrix `(H, N)`.
    pub fc2: Tensor,
    /// Second product's bias `(N)`.
    pub fc2_bias: Option<Tensor>,
}

impl MlpWeights {
    /// `(C, H, N)` after checking that the matrices chain and the biases fit them.
    pub fn dims(&self) -> Result<(usize, usize, usize)> {
        let matrix = |t: &Tensor, what: &'static str, expected: &str| {
            t.dims2()
                .map_err(|_| shape_error(what, expected.into(), t.dims()))
        };
        let (c, h) = matrix(&self.fc1, "fc1", "a matrix (C, H)")?;
        let (h2, n) = matrix(&self.fc2, "fc2", "a matrix (H, N)")?;
        if h2 != h {
            return Err(shape_error(
                "fc2",
                format!("({h}, N) after fc1 ({c}, {h})"),
                self.fc2.dims(),
            ));
        }
        for (bias, what, len) in [
            (&self.fc1_bias, "fc1 bias", h),
            (&self.fc2_bias, "fc2 bias", n),
        ] {
            if let Some(b) = bias {
                if b.dims() != [len] {
                    return Err(shape_error(what, format!("[{len}]"), b.dims()));
                }
            }
        }
        Ok((c, h, n))
    }

    /// `(rows, C, H, N)` after checking the weights and that the input is `(..., C)` and the
    /// base `(..., N)` with the input's leading axes (`rows` their product).
    pub(crate) fn operand_dims(
        &self,
        x: &[usize],
        base: &[usize],
    ) -> Result<(usize, usize, usize, usize)> {
        let (c, h, n) = self.dims()?;
        let Some((_, lead)) = x.split_last().filter(|(&xc, _)| xc == c) else {
            return Err(shape_error("input", format!("(..., {c})"), x));
        };
        let want: Vec<usize> = lead.iter().copied().chain([n]).collect();
        if base != want {
            return Err(shape_error("base", format!("{want:?}"), base));
        }
        Ok((lead.iter().product(), c, h, n))
    }

    /// Every weight tensor, biases included.
    fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        [
            Some(&self.fc1),
            self.fc1_bias.as_ref(),
            Some(&self.fc2),
            self.fc2_bias.as_ref(),
        ]
        .into_iter()
        .flatten()
    }

    /// Whether every weight is f32 on the CPU.
    pub(crate) fn all_cpu_f32(&self) -> bool {
        self.tensors()
            .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
    }

    /// `act(x fc1 + b1) fc2 + b2` as candle ops, `x` `(rows, C)`.
    pub(crate) fn compose(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.matmul(&self.fc1)?;
        if let Some(b) = &self.fc1_bias {
            h = h.broadcast_add(b)?;
        }
        let mut y = self.act.compose(&h)?.matmul(&self.fc2)?;
        if let Some(b) = &self.fc2_bias {
            y = y.broadcast_add(b)?;
        }
        Ok(y)
    }

    /// The weights in f32 (the CPU kernel's dtype).
    pub(crate) fn widened(&self) -> Result<Self> {
        let f = |t: &Tensor| crate::cast(t, candle_core::DType::F32);
        let c = |t: &Option<Tensor>| t.as_ref().map(f).transpose();
        Ok(Self {
            fc1: f(&self.fc1)?,
            fc1_bias: c(&self.fc1_bias)?,
            act: self.act,
            fc2: f(&self.fc2)?,
            fc2_bias: c(&self.fc2_bias)?,
        })
    }

    /// The weights with contiguous matrices and biases.
    pub(crate) fn contiguous(&self) -> Result<Self> {
        let c = |t: &Option<Tensor>| t.as_ref().map(|t| t.contiguous()).transpose();
        Ok(Self {
            fc1: self.fc1.contiguous()?,
            fc1_bias: c(&self.fc1_bias)?,
            act: self.act,
            fc2: self.fc2.contiguous()?,
            fc2_bias: c(&self.fc2_bias)?,
        })
    }
}

fn shape_error(what: &'static str, expected: String, found: &[usize]) -> candle_core::Error {
    shape_error_of(OP, what, expected, found)
}

/// Candle custom op on `(x, base)`, `x` `(..., C)` and `base` `(..., N)` contiguous f32:
/// `base + act(x fc1 + b1) fc2 + b2` as `(rows, N)`, `rows` the product of the leading axes.
/// The weights are constants of the op (contiguous f32 on the CPU): its backward gives the
/// gradients of `x` and `base` only, so layers use it only when no weight is a trainable
/// variable.
#[derive(Debug, Clone)]
pub struct ResidualMlp {
    weights: MlpWeights,
}

impl ResidualMlp {
    /// The op for `weights` (made contiguous; their shapes are checked against the operands
    /// when it runs).
    pub fn new(weights: &MlpWeights) -> Result<Self> {
        Ok(Self {
            weights: weights.contiguous()?,
        })
    }
}

/// A weight's contiguous f32 values, from a read guard of its storage.
fn weight_values<'a>(
    guard: &'a (candle_core::StorageRef<'a>, &'a Layout),
    what: &'static str,
) -> Result<&'a [f32]> {
    match &*guard.0 {
        Storage::Cpu(s) => contiguous_f32(s, guard.1, OP, what),
        _ => Err(KernelError::Param {
            op: OP,
            msg: format!("{what} is not on the CPU"),
        }
        .into()),
    }
}

/// The f32 slices the CPU kernel reads.
struct Slices<'a> {
    fc1: &'a [f32],
    fc1_bias: &'a [f32],
    fc2: &'a [f32],
    fc2_bias: Option<&'a [f32]>,
    act: MlpActivation,
    /// `(C, H, N)`.
    dims: (usize, usize, usize),
}

impl CustomOp2 for ResidualMlp {
    fn name(&self) -> &'static str {
        "tokenmix-residual-mlp"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, c, h, n) = self.weights.operand_dims(xl.dims(), bl.dims())?;
        let x = contiguous_f32(xs, xl, OP, "input")?;
        let base = contiguous_f32(bs, bl, OP, "base")?;
        let w = &self.weights;
        let g1 = w.fc1.storage_and_layout();
        let g2 = w.fc2.storage_and_layout();
        let gb1 = w.fc1_bias.as_ref().map(|b| b.storage_and_layout());
        let gb2 = w.fc2_bias.as_ref().map(|b| b.storage_and_layout());
        let zeros;
        let fc1_bias = match &gb1 {
            Some(g) => weight_values(g, "fc1 bias")?,
            None => {
                zeros = vec![0f32; h];
                &zeros
            }
        };
        let slices = Slices {
            fc1: weight_values(&g1, "fc1")?,
            fc1_bias,
            fc2: weight_values(&g2, "fc2")?,
            fc2_bias: gb2
                .as_ref()
                .map(|g| weight_values(g, "fc2 bias"))
                .transpose()?,
            act: w.act,
            dims: (c, h, n),
        };
        let out = slices.run(x, base, rows);
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        base: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = crate::grad::via_composition(&[x, base], grad, |t| {
            let (rows, c, _, n) = self.weights.operand_dims(t[0].dims(), t[1].dims())?;
            let y = self.weights.compose(&t[0].reshape((rows, c))?)?;
            t[1].reshape((rows, n))?.add(&y)
        })?;
        let mut g = g.into_iter();
        Ok((g.next(), g.next()))
    }
}

impl Slices<'_> {
    /// The op's output `(rows, N)` for `x` `(rows, C)` and `base` `(rows, N)`.
    fn run(&self, x: &[f32], base: &[f32], rows: usize) -> Vec<f32> {
        let (c, h, n) = self.dims;
        let mut out: Vec<f32> = Vec::with_capacity(rows * n);
        let dst = SyncPtr(out.as_mut_ptr());
        match plan(self.dims, rows, rayon::current_num_threads()) {
            MlpPlan::Blocks { rows: block, count } => {
                (0..count).into_par_iter().for_each_init(
                    || Vec::<f32>::with_capacity(block * h),
                    |hidden, i| {
                        let (r0, m) = (i * block, block.min(rows - i * block));
                        // SAFETY: rows `r0..r0 + m` of `out` are inside its capacity and written
                        // by this task only.
                        unsafe {
                            self.block(
                                &x[r0 * c..(r0 + m) * c],
                                &base[r0 * n..(r0 + m) * n],
                                m,
                                &mut hidden.spare_capacity_mut()[..m * h],
                                dst.add(r0 * n),
                                false,
                            )
                        };
                    },
                );
            }
            one => {
                let mut hidden = Vec::with_capacity(rows * h);
                let parallel = one == MlpPlan::SplitProducts;
                // SAFETY: `out` holds `rows * n` elements of capacity.
                unsafe {
                    let scratch = hidden.spare_capacity_mut();
                    self.block(x, base, rows, scratch, dst, parallel)
                };
            }
        }
        // SAFETY: every block wrote its rows, so all `rows * n` elements are initialized.
        unsafe { out.set_len(rows * n) };
        out
    }

    /// Rows `x` `(m, C)` of the op into `out` `(m, N)`, with `hidden` `(m, H)` as scratch
    /// (uninitialized: the first product writes it without reading it, so no zero fill);
    /// `parallel`: split the products and passes across the threads (else this thread only).
    ///
    /// # Safety
    /// `out` must point to `m * N` writable elements no one else touches meanwhile.
    unsafe fn block(
        &self,
        x: &[f32],
        base: &[f32],
        m: usize,
        hidden: &mut [MaybeUninit<f32>],
        out: SyncPtr,
        parallel: bool,
    ) {
        let (c, h, n) = self.dims;
        // Debug builds poison the scratch, so that the tests would see it if gemm ever read
        // `dst` without `accumulate` (gemm-common 0.19 stores it without reading it).
        if cfg!(debug_assertions) {
            hidden[..m * h].fill(MaybeUninit::new(f32::NAN));
        }
        let par = if parallel {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        } else {
            gemm::Parallelism::None
        };
        matmul(
            m,
            h,
            c,
            hidden.as_mut_ptr().cast(),
            x.as_ptr(),
            self.fc1.as_ptr(),
            false,
            par,
        );
        // gemm without `accumulate` stores every element of `hidden` (it never reads it).
        let hidden = std::slice::from_raw_parts_mut(hidden.as_mut_ptr().cast::<f32>(), m * h);
        let out_rows = std::slice::from_raw_parts_mut(out.0.cast::<MaybeUninit<f32>>(), m * n);
        if parallel {
            let step = PASS_ROWS;
            hidden
                .par_chunks_mut(step * h)
                .for_each(|rows| activate_rows(rows, self.fc1_bias, self.act));
            out_rows
                .par_chunks_mut(step * n)
                .zip(base.par_chunks(step * n))
                .for_each(|(o, b)| self.start_output(b, o));
        } else {
            activate_rows(hidden, self.fc1_bias, self.act);
            self.start_output(base, out_rows);
        }
        matmul(
            m,
            n,
            h,
            out.0,
            hidden.as_ptr(),
            self.fc2.as_ptr(),
            true,
            par,
        );
    }

    /// `out = base + b2` (or `base`), rows of `N`.
    fn start_output(&self, base: &[f32], out: &mut [MaybeUninit<f32>]) {
        match self.fc2_bias {
            Some(b) => base_plus_bias(base, b, out),
            None => {
                for (o, &v) in out.iter_mut().zip(base) {
                    o.write(v);
                }
            }
        }
    }
}

/// How the CPU kernel of [`ResidualMlp`] splits its rows (see [`MlpWeights::cpu_plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpPlan {
    /// All rows in one block on the calling thread (a pool of one thread).
    Serial,
    /// All rows in one block whose products and element-wise passes are split across the
    /// pool's threads: too few rows to give every thread a block, or weights too large to
    /// stream through the cache once per block.
    SplitProducts,
    /// `count` blocks of `rows` rows (the last one shorter when they do not divide), one
    /// single-threaded task each, run in parallel.
    Blocks {
        /// Rows per block.
        rows: usize,
        /// Number of blocks.
        count: usize,
    },
}

impl MlpWeights {
    /// How [`ResidualMlp`]'s CPU kernel would split `rows` rows of input on the current rayon
    /// pool (`rayon::current_num_threads()`), after checking the weights.
    pub fn cpu_plan(&self, rows: usize) -> Result<MlpPlan> {
        Ok(plan(self.dims()?, rows, rayon::current_num_threads()))
    }
}

/// The [`MlpPlan`] for `rows` rows of an MLP of sizes `(C, H, N)` on `threads` threads.
fn plan((c, h, n): (usize, usize, usize), rows: usize, threads: usize) -> MlpPlan {
    let threads = threads.max(1);
    let weight_bytes = (c + n).saturating_mul(h).saturating_mul(4);
    let block = if weight_bytes > MAX_BLOCKED_WEIGHT_BYTES {
        rows
    } else {
        block_rows(rows, h, threads)
    };
    if block < rows {
        MlpPlan::Blocks {
            rows: block,
            count: rows.div_ceil(block),
        }
    } else if threads > 1 {
        MlpPlan::SplitProducts
    } else {
        MlpPlan::Serial
    }
}

/// Rows per block: enough that a block's hidden values fit [`HIDDEN_BLOCK_BYTES`], a multiple
/// of blocks per thread; `rows` (one block) when there are too few rows to give every thread
/// [`MIN_BLOCK_ROWS`].
fn block_rows(rows: usize, hidden: usize, threads: usize) -> usize {
    if rows < threads * MIN_BLOCK_ROWS {
        return rows.max(1);
    }
    let target = (HIDDEN_BLOCK_BYTES / 4 / hidden.max(1)).max(MIN_BLOCK_ROWS);
    let blocks = rows.div_ceil(target).div_ceil(threads) * threads;
    rows.div_ceil(blocks).max(MIN_BLOCK_ROWS.min(rows))
}

/// `dst (m, n) [+]= lhs (m, k) · rhs (k, n)`, all row-major and contiguous; `accumulate` adds
/// to what `dst` holds instead of overwriting it.
///
/// # Safety
/// The pointers must cover their matrices, `dst` initialized if `accumulate`.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    lhs: *const f32,
    rhs: *const f32,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    gemm::gemm(
        m, n, k, dst, 1, n as isize, accumulate, lhs, 1, k as isize, rhs, 1, n as isize, 1.0, 1.0,
        false, false, false, par,
    );
}

crate::simd::dispatch! {
    /// [`base_plus_bias_body`] on wide vectors where the CPU has them.
    fn base_plus_bias(base: &[f32], bias: &[f32], out: &mut [MaybeUninit<f32>]) => base_plus_bias_body
}

/// `out = base + bias` row by row (`bias` one value per column).
#[inline(always)]
fn base_plus_bias_body(base: &[f32], bias: &[f32], out: &mut [MaybeUninit<f32>]) {
    for (o, b) in out
        .chunks_exact_mut(bias.len())
        .zip(base.chunks_exact(bias.len()))
    {
        for ((o, &v), &c) in o.iter_mut().zip(b).zip(bias) {
            o.write(v + c);
        }
    }
}

/// `hidden = act(hidden + bias)` in place, `bias` one value per column.
fn activate_rows(hidden: &mut [f32], bias: &[f32], act: MlpActivation) {
    match act {
        MlpActivation::Gelu => crate::activation::gelu_rows_in_place(hidden, bias),
        MlpActivation::StarRelu { scale, bias: shift } => {
            star_relu_rows_in_place(hidden, bias, scale, shift)
        }
    }
}

#[inline(always)]
fn star_relu_rows_body(hidden: &mut [f32], bias: &[f32], scale: f32, shift: f32) {
    for row in hidden.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            let r = (*v + b).max(0.0);
            *v = scale * r * r + shift;
        }
    }
}

crate::simd::dispatch! {
    /// [`star_relu_rows_body`] on wide vectors where the CPU has them.
    fn star_relu_rows_in_place(hidden: &mut [f32], bias: &[f32], scale: f32, shift: f32) => star_relu_rows_body
}

/// Candle custom op on `(x, w, bias)`, `x` `(..., K)`, `w` `(K, N)`, `bias` `(N)`, all
/// contiguous f32: `x w + bias` as `(rows, N)` (`rows` the product of the leading axes), the
/// output rows starting as the bias and the product added to them by gemm (no zero fill and no
/// separate bias pass). Differentiable in all three.
#[derive(Debug, Clone, Copy, Default)]
pub struct Linear;

impl candle_core::CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "tokenmix-linear"
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
        const OP: &str = "linear";
        let (rows, k, n) = linear_dims(xl.shape(), wl.shape(), bl.shape())?;
        let x = contiguous_f32(xs, xl, OP, "input")?;
        let w = contiguous_f32(ws, wl, OP, "weight")?;
        let b = contiguous_f32(bs, bl, OP, "bias")?;
        let mut out: Vec<f32> = Vec::with_capacity(rows * n);
        out.spare_capacity_mut()
            .par_chunks_mut(PASS_ROWS * n.max(1))
            .for_each(|o| {
                for row in o.chunks_exact_mut(n.max(1)) {
                    for (o, &v) in row.iter_mut().zip(b) {
                        o.write(v);
                    }
                }
            });
        // SAFETY: every element was written above; the product adds to them.
        unsafe {
            out.set_len(rows * n);
            let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
            matmul(
                rows,
                n,
                k,
                out.as_mut_ptr(),
                x.as_ptr(),
                w.as_ptr(),
                true,
                par,
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = crate::grad::via_composition(&[x, w, bias], grad, |t| {
            let k = t[1].dim(0)?;
            t[0].reshape(((), k))?.matmul(&t[1])?.broadcast_add(&t[2])
        })?;
        let mut g = g.into_iter();
        Ok((g.next(), g.next(), g.next()))
    }
}

/// `(rows, K, N)` of a linear layer's input `(..., K)` (`rows` the product of the leading
/// axes), weight `(K, N)` and bias `(N)`, or an error naming the operand that does not fit.
pub(crate) fn linear_dims(x: &Shape, w: &Shape, b: &Shape) -> Result<(usize, usize, usize)> {
    let err =
        |what, expected, found: &Shape| shape_error_of("linear", what, expected, found.dims());
    let &[k, n] = w.dims() else {
        return Err(err("weight", "a matrix (K, N)".into(), w));
    };
    let Some((_, lead)) = x.dims().split_last().filter(|(&xk, _)| xk == k) else {
        return Err(err("input", format!("(..., {k})"), x));
    };
    let rows = lead.iter().product();
    if b.dims() != [n] {
        return Err(err("bias", format!("[{n}]"), b));
    }
    Ok((rows, k, n))
}

#[cfg(test)]
mod tests {
    use super::block_rows;

    #[test]
    fn blocks_cover_the_rows_evenly() {
        for (rows, hidden, threads) in [
            (3136, 256, 2),
            (784, 512, 2),
            (196, 1280, 2),
            (49, 2048, 2),
            (25088, 256, 16),
            (97, 64, 2),
        ] {
            let block = block_rows(rows, hidden, threads);
            assert!(block >= 1 && block <= rows, "{rows} rows: block {block}");
            let blocks = rows.div_ceil(block);
            if block < rows {
                assert!(
                    block * hidden * 4
                        <= super::HIDDEN_BLOCK_BYTES.max(super::MIN_BLOCK_ROWS * hidden * 4)
                );
                assert!(
                    blocks >= threads,
                    "{rows} rows in {blocks} blocks for {threads} threads"
                );
            }
        }
        assert_eq!(block_rows(49, 2048, 2), 49);
    }
}
