//! bf16 matrix products on the CPU: bf16 operands, f32 accumulation, bf16 results, with
//! AVX512_BF16's `vdpbf16ps` (two bf16 multiply-adds per f32 lane and instruction) where the
//! CPU has it, detected at run time. Neither gemm 0.19 nor candle 0.11 has a bf16 kernel
//! (candle widens both operands to f32 on every call), hence this one.
//!
//! The weight `(K, N)` is packed into panels of 16 columns, each holding for every pair of rows
//! `(2p, 2p + 1)` the 16 column pairs interleaved, `w[2p][c], w[2p + 1][c]`, as `vdpbf16ps`
//! multiplies them against a broadcast pair `x[m][2p], x[m][2p + 1]`; an odd `K` and the
//! columns past `N` are padded with zeros.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

/// Columns per packed panel (one 512-bit register of f32 accumulators).
const PANEL: usize = 16;
/// Rows of the output one microkernel call computes.
const MR: usize = 6;
/// Panels one microkernel call computes (4 x 16 = 64 columns).
const NV: usize = 4;

/// Whether this CPU runs AVX512_BF16 (with the AVX-512 foundation and BW/VL it needs), detected
/// once.
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The activation applied to a product's sums (after the bias, before rounding).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// None.
    Identity,
    /// Exact (erf) GELU.
    Gelu,
    /// `scale * relu(v)^2 + bias` (StarReLU; SquaredReLU is scale 1, bias 0).
    StarRelu {
        /// Factor on the squared ReLU.
        scale: f32,
        /// Added after scaling.
        bias: f32,
    },
}

impl Activation {
    /// The activation on f32 sums, in place.
    fn apply(self, v: &mut [f32]) {
        match self {
            Self::Identity => {}
            Self::Gelu => crate::activation::gelu_rows_in_place(v, &[0.0; PANEL * NV][..v.len()]),
            Self::StarRelu { scale, bias } => {
                for v in v {
                    let r = v.max(0.0);
                    *v = scale * (r * r) + bias;
                }
            }
        }
    }

    /// The activation as candle ops (f32).
    fn compose(self, y: Tensor) -> Result<Tensor> {
        match self {
            Self::Identity => Ok(y),
            Self::Gelu => y.gelu_erf(),
            Self::StarRelu { scale, bias } => y.relu()?.sqr()?.affine(scale as f64, bias as f64),
        }
    }
}

/// A weight `(K, N)` packed for [`matmul_bf16`] (see the module's layout).
#[derive(Debug, Clone)]
pub(crate) struct PackedBf16 {
    k: usize,
    n: usize,
    /// `ceil(K / 2)` row pairs.
    pairs: usize,
    /// `ceil(N / 16)` panels of `pairs * 16` pairs of bf16 bits each.
    data: Vec<u32>,
}

impl PackedBf16 {
    /// Packs the row-major `(k, n)` matrix `w`.
    pub(crate) fn new(w: &[bf16], k: usize, n: usize) -> Self {
        assert_eq!(w.len(), k * n, "packed weight size");
        let pairs = k.div_ceil(2);
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0u32; panels * pairs * PANEL];
        let bits = |row: usize, c0: usize, len: usize| {
            w[row * n + c0..row * n + c0 + len]
                .iter()
                .map(|v| u32::from(v.to_bits()))
        };
        data.par_chunks_mut(pairs * PANEL)
            .enumerate()
            .for_each(|(j, panel)| {
                let c0 = j * PANEL;
                let live = (n - c0).min(PANEL);
                for (p, slot) in panel.chunks_exact_mut(PANEL).enumerate() {
                    let slot = &mut slot[..live];
                    for (s, lo) in slot.iter_mut().zip(bits(2 * p, c0, live)) {
                        *s = lo;
                    }
                    if 2 * p + 1 < k {
                        for (s, hi) in slot.iter_mut().zip(bits(2 * p + 1, c0, live)) {
                            *s |= hi << 16;
                        }
                    }
                }
            });
        Self { k, n, pairs, data }
    }
}

/// `x w + bias` for row-major `x` `(rows, K)` and the packed `w`, rounded to bf16 once from
/// the f32 sums; `bias` (f32, `N` values) is added, then `act` applied, then `residual` (bf16
/// `(rows, N)`) added, before rounding. Needs
/// [`has_avx512_bf16`]; parallel over tiles of rows and 64-column groups.
pub(crate) fn matmul_bf16(
    x: &[bf16],
    rows: usize,
    w: &PackedBf16,
    bias: &[f32],
    act: Activation,
    residual: Option<&[bf16]>,
) -> Vec<bf16> {
    assert!(has_avx512_bf16(), "matmul_bf16 needs AVX512_BF16");
    let (k, n) = (w.k, w.n);
    assert_eq!(x.len(), rows * k, "input size");
    assert_eq!(bias.len(), n, "bias size");
    if let Some(res) = residual {
        assert_eq!(res.len(), rows * n, "residual size");
    }
    let res_ptr =
        crate::ptr::SyncPtr(residual.map_or(std::ptr::null_mut(), |r| r.as_ptr().cast_mut()));
    if rows == 0 || n == 0 {
        return vec![bf16::ZERO; rows * n];
    }
    let mut out: Vec<bf16> = Vec::with_capacity(rows * n);
    let groups = n.div_ceil(PANEL * NV);
    let threads = rayon::current_num_threads().max(1);
    // Row blocks small enough that every thread gets several tiles, at most 8 microkernel rows.
    let tiles_wanted = 4 * threads;
    let row_blocks_wanted = tiles_wanted.div_ceil(groups);
    let block = rows
        .div_ceil(row_blocks_wanted)
        .next_multiple_of(MR)
        .clamp(MR, 8 * MR);
    let row_blocks = rows.div_ceil(block);
    let out_ptr = crate::ptr::SyncPtr(out.as_mut_ptr());
    (0..row_blocks * groups).into_par_iter().for_each(|t| {
        let (g, rb) = (t / row_blocks, t % row_blocks);
        let r0 = rb * block;
        let r1 = (r0 + block).min(rows);
        let c0 = g * PANEL * NV;
        let cols = (n - c0).min(PANEL * NV);
        let (out, res) = {
            let (whole, res) = (out_ptr, res_ptr);
            (whole.0, res.0.cast_const())
        };
        let mut r = r0;
        while r < r1 {
            let mr = (r1 - r).min(MR);
            // SAFETY: the CPU has AVX512_BF16 (asserted above); row `r..r + mr` of `x`, the
            // panels of group `g` and bias `c0..c0 + cols` are in bounds, and each tile writes
            // its own rows and columns of `out`.
            unsafe {
                tile(
                    mr,
                    cols.div_ceil(PANEL),
                    x.as_ptr().add(r * k),
                    k,
                    w.data.as_ptr().add(c0 / PANEL * w.pairs * PANEL),
                    w.pairs,
                    bias.as_ptr().add(c0),
                    out.add(r * n + c0),
                    n,
                    cols,
                    act,
                    if res.is_null() {
                        res
                    } else {
                        res.add(r * n + c0)
                    },
                );
            }
            r += mr;
        }
    });
    // SAFETY: the tiles above wrote every row and column (bf16 has no drop).
    unsafe { out.set_len(rows * n) };
    out
}

/// Dispatches a tile of `mr <= MR` rows and `nv <= NV` panels to its monomorphized kernel.
///
/// # Safety
/// As [`kernel`].
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    mr: usize,
    nv: usize,
    x: *const bf16,
    k: usize,
    panels: *const u32,
    pairs: usize,
    bias: *const f32,
    out: *mut bf16,
    ldo: usize,
    cols: usize,
    act: Activation,
    residual: *const bf16,
) {
    macro_rules! arms {
        ($($m:literal),*) => {
            match (mr, nv) {
                $(
                    ($m, 1) => kernel::<$m, 1>(x, k, panels, pairs, bias, out, ldo, cols, act, residual),
                    ($m, 2) => kernel::<$m, 2>(x, k, panels, pairs, bias, out, ldo, cols, act, residual),
                    ($m, 3) => kernel::<$m, 3>(x, k, panels, pairs, bias, out, ldo, cols, act, residual),
                    ($m, 4) => kernel::<$m, 4>(x, k, panels, pairs, bias, out, ldo, cols, act, residual),
                )*
                _ => unreachable!("tile of {mr} rows and {nv} panels"),
            }
        };
    }
    arms!(1, 2, 3, 4, 5, 6)
}

/// One tile: `R` rows of `x` (row stride `k`) against `V` consecutive panels, plus `bias`,
/// through `act`, plus `residual` (row stride `ldo`, unless null), rounded to bf16 into `out`
/// (row stride `ldo`), of which the first `cols` columns are written.
///
/// # Safety
/// The CPU must have AVX512_BF16 (and AVX-512 F/BW/VL); `x` must hold `R` rows of `k` values,
/// `panels` `V` panels of `pairs * 16` entries, `bias` `cols` values and `out` `R` rows of
/// `cols` writable values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize, const V: usize>(
    x: *const bf16,
    k: usize,
    panels: *const u32,
    pairs: usize,
    bias: *const f32,
    out: *mut bf16,
    ldo: usize,
    cols: usize,
    act: Activation,
    residual: *const bf16,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let full = k / 2;
    for p in 0..full {
        let pair = |r: usize| x.add(r * k + 2 * p).cast::<i32>().read_unaligned();
        step::<R, V>(&mut acc, panels.add(p * PANEL), pairs * PANEL, pair);
    }
    if k % 2 == 1 {
        // The last, unpaired column: its partner in the packed weight is zero.
        let single = |r: usize| i32::from((*x.add(r * k + k - 1)).to_bits());
        step::<R, V>(&mut acc, panels.add(full * PANEL), pairs * PANEL, single);
    }
    let mask_of = |c: usize| -> __mmask16 {
        match cols.saturating_sub(c) {
            0 => 0,
            live if live >= PANEL => !0,
            live => (1u16 << live) - 1,
        }
    };
    if act != Activation::Identity {
        let mut sums = [0f32; PANEL * NV];
        for acc in acc.iter_mut() {
            for (v, a) in acc.iter().enumerate() {
                let c = v * PANEL;
                let b = _mm512_maskz_loadu_ps(mask_of(c), bias.add(c));
                _mm512_storeu_ps(sums.as_mut_ptr().add(c), _mm512_add_ps(*a, b));
            }
            act.apply(&mut sums[..V * PANEL]);
            for (v, a) in acc.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(sums.as_ptr().add(v * PANEL));
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, a) in acc.iter().enumerate() {
            let c = v * PANEL;
            if c >= cols {
                break;
            }
            let mask = mask_of(c);
            let mut y = *a;
            if act == Activation::Identity {
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, bias.add(c)));
            }
            if !residual.is_null() {
                let h = _mm256_maskz_loadu_epi16(mask, residual.add(r * ldo + c).cast());
                let wide = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h));
                y = _mm512_add_ps(y, _mm512_castsi512_ps(wide));
            }
            let bits: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(y));
            _mm256_mask_storeu_epi16(out.add(r * ldo + c).cast(), mask, bits);
        }
    }
}

/// One row pair of the tile: `acc[r][v] += pair(r) · panel v` (`panel_stride` entries apart).
///
/// # Safety
/// As [`kernel`]: `V` panels readable at `b` and `pair` reading `x` in bounds.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn step<const R: usize, const V: usize>(
    acc: &mut [[std::arch::x86_64::__m512; V]; R],
    b: *const u32,
    panel_stride: usize,
    pair: impl Fn(usize) -> i32,
) {
    use std::arch::x86_64::*;
    let mut w = [_mm512_setzero_si512(); V];
    for (v, w) in w.iter_mut().enumerate() {
        *w = _mm512_loadu_si512(b.add(v * panel_stride).cast());
    }
    for (r, acc) in acc.iter_mut().enumerate() {
        let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair(r)));
        for (acc, &w) in acc.iter_mut().zip(&w) {
            *acc = _mm512_dpbf16_ps(*acc, a, std::mem::transmute::<__m512i, __m512bh>(w));
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize, const V: usize>(
    _: *const bf16,
    _: usize,
    _: *const u32,
    _: usize,
    _: *const f32,
    _: *mut bf16,
    _: usize,
    _: usize,
    _: Activation,
    _: *const bf16,
) {
    unreachable!("AVX512_BF16 is x86-64 only")
}

/// Candle custom op on bf16 `(x, w, bias)`, `x` `(..., K)`, `w` `(K, N)`, `bias` `(N)`, all
/// contiguous: `act(x w + bias)` as `(rows, N)` in bf16 with f32 sums ([`matmul_bf16`], the weight
/// packed on each call). Needs [`has_avx512_bf16`]. Differentiable in all three (by the
/// composition in f32).
#[derive(Debug, Clone, Copy)]
pub struct LinearBf16 {
    /// The activation of the result (before rounding to bf16).
    pub act: Activation,
}

/// The contiguous bf16 values of `storage` under `layout`.
fn contiguous_bf16<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &'static str,
) -> Result<&'a [bf16]> {
    let Some((a, b)) = layout.contiguous_offsets() else {
        return Err(crate::KernelError::NotContiguous {
            op: "linear_bf16",
            what,
        }
        .into());
    };
    Ok(&storage.as_slice::<bf16>()?[a..b])
}

impl candle_core::CustomOp3 for LinearBf16 {
    fn name(&self) -> &'static str {
        "tokenmix-linear-bf16"
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
        let (rows, k, n) = crate::mlp::linear_dims(xl.shape(), wl.shape(), bl.shape())?;
        if !has_avx512_bf16() {
            candle_core::bail!("linear_bf16 needs a CPU with AVX512_BF16");
        }
        let x = contiguous_bf16(xs, xl, "input")?;
        let w = contiguous_bf16(ws, wl, "weight")?;
        let bias: Vec<f32> = contiguous_bf16(bs, bl, "bias")?
            .iter()
            .map(|b| b.to_f32())
            .collect();
        let out = matmul_bf16(x, rows, &PackedBf16::new(w, k, n), &bias, self.act, None);
        Ok((CpuStorage::BF16(out), Shape::from((rows, n))))
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
            let f32 = |t: &Tensor| t.to_dtype(DType::F32);
            let k = t[1].dim(0)?;
            let y = f32(&t[0])?
                .reshape(((), k))?
                .matmul(&f32(&t[1])?)?
                .broadcast_add(&f32(&t[2])?)?;
            self.act.compose(y)?.to_dtype(DType::BF16)
        })?;
        let mut g = g.into_iter();
        Ok((g.next(), g.next(), g.next()))
    }
}

/// The contiguous bf16 values of a CPU tensor.
fn values_of(t: &Tensor, what: &'static str) -> Result<Vec<bf16>> {
    // A copy of the (weight-sized) tensor: candle hands out no borrow of a tensor's storage
    // across this call.
    t.flatten_all()?
        .to_dtype(DType::BF16)?
        .to_vec1::<bf16>()
        .map_err(|e| candle_core::Error::Msg(format!("residual_mlp_bf16 {what}: {e}")))
}

/// Candle custom op on bf16 `(x, base)`, `x` `(rows, C)`, `base` `(rows, N)`, with the MLP's
/// weights: `base + act(x fc1 + b1) fc2 + b2`, both products in [`matmul_bf16`] (the
/// activation and the residual add in their epilogues, f32 sums rounded once per product).
/// Needs [`has_avx512_bf16`]. Inference only (no backward).
#[derive(Debug, Clone)]
pub struct ResidualMlpBf16 {
    fc1: PackedBf16,
    b1: Vec<f32>,
    act: Activation,
    fc2: PackedBf16,
    b2: Vec<f32>,
}

impl ResidualMlpBf16 {
    /// Packs the weights (bf16 on the CPU; checked to chain).
    pub fn new(mlp: &crate::MlpWeights) -> Result<Self> {
        let (c, h, n) = mlp.dims()?;
        let bias = |b: &Option<Tensor>, len: usize| -> Result<Vec<f32>> {
            match b {
                Some(b) => Ok(values_of(b, "bias")?.iter().map(|v| v.to_f32()).collect()),
                None => Ok(vec![0.0; len]),
            }
        };
        let act = match mlp.act {
            crate::MlpActivation::Gelu => Activation::Gelu,
            crate::MlpActivation::StarRelu { scale, bias } => Activation::StarRelu { scale, bias },
        };
        Ok(Self {
            fc1: PackedBf16::new(&values_of(&mlp.fc1, "fc1")?, c, h),
            b1: bias(&mlp.fc1_bias, h)?,
            act,
            fc2: PackedBf16::new(&values_of(&mlp.fc2, "fc2")?, h, n),
            b2: bias(&mlp.fc2_bias, n)?,
        })
    }
}

impl candle_core::CustomOp2 for ResidualMlpBf16 {
    fn name(&self) -> &'static str {
        "tokenmix-residual-mlp-bf16"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if !has_avx512_bf16() {
            candle_core::bail!("residual_mlp_bf16 needs a CPU with AVX512_BF16");
        }
        let (rows, c) = xl.shape().dims2()?;
        let n = self.fc2.n;
        if c != self.fc1.k || bl.shape().dims2()? != (rows, n) {
            candle_core::bail!(
                "residual_mlp_bf16: input {:?} and base {:?} do not fit ({c} -> {n})",
                xl.shape(),
                bl.shape()
            );
        }
        let x = contiguous_bf16(xs, xl, "input")?;
        let base = contiguous_bf16(bs, bl, "base")?;
        let hidden = matmul_bf16(x, rows, &self.fc1, &self.b1, self.act, None);
        let out = matmul_bf16(
            &hidden,
            rows,
            &self.fc2,
            &self.b2,
            Activation::Identity,
            Some(base),
        );
        Ok((CpuStorage::BF16(out), Shape::from((rows, n))))
    }
}

/// Candle custom op on bf16 `(a, b)` of one shape `(..., C)`: `a * a_scale + b * b_scale` with
/// optional per-channel scales (`C` values each, over the last axis) in f32, rounded once: a
/// block's shortcut (res-scale) plus its layer-scaled branch. Inference only (no backward).
#[derive(Debug, Clone)]
pub struct ScaledAddBf16 {
    /// Scale of `a`, if any.
    pub a_scale: Option<Vec<f32>>,
    /// Scale of `b`, if any.
    pub b_scale: Option<Vec<f32>>,
}

impl candle_core::CustomOp2 for ScaledAddBf16 {
    fn name(&self) -> &'static str {
        "tokenmix-scaled-add-bf16"
    }

    fn cpu_fwd(
        &self,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if al.shape() != bl.shape() {
            candle_core::bail!("scaled_add: shapes {:?} and {:?}", al.shape(), bl.shape());
        }
        let c = al.shape().dims().last().copied().unwrap_or(1).max(1);
        for s in [&self.a_scale, &self.b_scale].into_iter().flatten() {
            if s.len() != c {
                candle_core::bail!("scaled_add: {} scales for {c} channels", s.len());
            }
        }
        let a = contiguous_bf16(as_, al, "a")?;
        let b = contiguous_bf16(bs, bl, "b")?;
        let mut out = vec![bf16::ZERO; a.len()];
        let rows_per_task = (1 << 14) / c + 1;
        out.par_chunks_mut(rows_per_task * c)
            .zip(
                a.par_chunks(rows_per_task * c)
                    .zip(b.par_chunks(rows_per_task * c)),
            )
            .for_each(|(o, (a, b))| {
                let mut wide = vec![0f32; c];
                for ((o, a), b) in o
                    .chunks_exact_mut(c)
                    .zip(a.chunks_exact(c))
                    .zip(b.chunks_exact(c))
                {
                    scaled_row(a, self.a_scale.as_deref(), &mut wide, false);
                    scaled_row(b, self.b_scale.as_deref(), &mut wide, true);
                    for (o, &v) in o.iter_mut().zip(&wide) {
                        *o = bf16::from_f32(v);
                    }
                }
            });
        Ok((CpuStorage::BF16(out), al.shape().clone()))
    }
}

/// `wide = v * scale` (or `+=` with `add`), `v` widened to f32.
fn scaled_row(v: &[bf16], scale: Option<&[f32]>, wide: &mut [f32], add: bool) {
    let widen = |v: bf16| f32::from_bits(u32::from(v.to_bits()) << 16);
    match (scale, add) {
        (Some(s), false) => wide
            .iter_mut()
            .zip(v)
            .zip(s)
            .for_each(|((w, &v), &s)| *w = widen(v) * s),
        (Some(s), true) => wide
            .iter_mut()
            .zip(v)
            .zip(s)
            .for_each(|((w, &v), &s)| *w += widen(v) * s),
        (None, false) => wide.iter_mut().zip(v).for_each(|(w, &v)| *w = widen(v)),
        (None, true) => wide.iter_mut().zip(v).for_each(|(w, &v)| *w += widen(v)),
    }
}

/// What [`RowsBf16`] computes on each row (in f32).
#[derive(Debug, Clone)]
pub enum RowOp {
    /// LayerNorm over the row with per-channel weight and bias and this epsilon.
    LayerNorm {
        /// Per-channel weight.
        weight: Vec<f32>,
        /// Per-channel bias.
        bias: Vec<f32>,
        /// Added to the variance.
        eps: f32,
    },
    /// Exact GELU.
    Gelu,
    /// `scale * relu(v)^2 + bias`.
    StarRelu {
        /// Factor on the squared ReLU.
        scale: f32,
        /// Added after scaling.
        bias: f32,
    },
}

/// Candle custom op on a bf16 CPU tensor `(..., C)`: [`RowOp`] on each row of `row` values
/// (`C` for a norm, which must divide the tensor; any length for an element-wise op, the last
/// row possibly shorter), each row widened to f32 in a task's buffer and
/// rounded once on the way out, so no f32 copy of the tensor exists. Inference only.
#[derive(Debug, Clone)]
pub struct RowsBf16 {
    /// Values per row.
    pub row: usize,
    /// What each row gets.
    pub op: RowOp,
}

impl candle_core::CustomOp1 for RowsBf16 {
    fn name(&self) -> &'static str {
        "tokenmix-rows-bf16"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_bf16(s, l, "input")?;
        let row = self.row.max(1);
        if let RowOp::LayerNorm { weight, bias, .. } = &self.op {
            if x.len() % row != 0 {
                candle_core::bail!("rows_bf16: {} values are not rows of {row}", x.len());
            }
            if weight.len() != row || bias.len() != row {
                candle_core::bail!(
                    "rows_bf16: norm of {} channels on rows of {row}",
                    weight.len()
                );
            }
        }
        let mut out = vec![bf16::ZERO; x.len()];
        let rows_per_task = ((1 << 13) / row).max(1);
        out.par_chunks_mut(rows_per_task * row)
            .zip(x.par_chunks(rows_per_task * row))
            .for_each(|(o, x)| {
                let (mut wide, mut done) = (vec![0f32; row], vec![0f32; row]);
                for (o, x) in o.chunks_mut(row).zip(x.chunks(row)) {
                    let (wide, done) = (&mut wide[..x.len()], &mut done[..x.len()]);
                    for (w, &v) in wide.iter_mut().zip(x) {
                        *w = f32::from_bits(u32::from(v.to_bits()) << 16);
                    }
                    match &self.op {
                        RowOp::LayerNorm { weight, bias, eps } => {
                            crate::norm::layer_norm_row(wide, weight, bias, *eps, done)
                        }
                        RowOp::Gelu => crate::activation::gelu_slice(wide, 0.0, done),
                        RowOp::StarRelu { scale, bias } => {
                            for (d, &v) in done.iter_mut().zip(wide.iter()) {
                                let r = v.max(0.0);
                                *d = scale * (r * r) + bias;
                            }
                        }
                    }
                    crate::cast::narrow_bf16_into(done, o);
                }
            });
        Ok((CpuStorage::BF16(out), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in about [-2, 2], rounded to bf16.
    fn values(len: usize, seed: u32) -> Vec<bf16> {
        (0..len)
            .map(|i| {
                let h = (i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503));
                bf16::from_f32(((h >> 8) % 4001) as f32 / 1000.0 - 2.0)
            })
            .collect()
    }

    /// The product in f64 from the same bf16 values, plus the bias.
    fn reference(
        x: &[bf16],
        w: &[bf16],
        bias: &[f32],
        rows: usize,
        k: usize,
        n: usize,
    ) -> Vec<f64> {
        let mut out = vec![0f64; rows * n];
        for r in 0..rows {
            for c in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| x[r * k + i].to_f64() * w[i * n + c].to_f64())
                    .sum();
                out[r * n + c] = dot + bias[c] as f64;
            }
        }
        out
    }

    /// Every tile shape (row and panel tails, odd `K`, `N` not a multiple of 16) agrees with
    /// the product of the same bf16 values to bf16's rounding of the f32 sum.
    #[test]
    fn products_of_every_tile_shape_match_the_exact_product() {
        if !has_avx512_bf16() {
            eprintln!("no AVX512_BF16 on this CPU: kernel not run");
            return;
        }
        for &(rows, k, n) in &[
            (1, 1, 1),
            (7, 3, 17),
            (13, 64, 64),
            (6, 33, 80),
            (50, 129, 200),
            (97, 48, 10),
            (5, 256, 65),
        ] {
            let x = values(rows * k, 1);
            let w = values(k * n, 2);
            let bias: Vec<f32> = values(n, 3).iter().map(|v| v.to_f32()).collect();
            let packed = PackedBf16::new(&w, k, n);
            let residual = values(rows * n, 4);
            let star = Activation::StarRelu {
                scale: 0.8,
                bias: -0.1,
            };
            for act in [Activation::Identity, Activation::Gelu, star] {
                for res in [None, Some(&residual[..])] {
                    let got = matmul_bf16(&x, rows, &packed, &bias, act, res);
                    let want = reference(&x, &w, &bias, rows, k, n);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let mut w = match act {
                            Activation::Identity => *w,
                            Activation::Gelu => f64::from(crate::activation::gelu_of(*w as f32)),
                            Activation::StarRelu { scale, bias } => {
                                let r = w.max(0.0);
                                scale as f64 * r * r + bias as f64
                            }
                        };
                        if let Some(res) = res {
                            w += res[i].to_f64();
                        }
                        let tol = w.abs() / 256.0 + 1e-4 * (1.0 + w.abs());
                        assert!(
                            (g.to_f64() - w).abs() <= tol,
                            "({rows}, {k}, {n}, {act:?}, residual {}) element {i}: {g} vs {w}",
                            res.is_some()
                        );
                    }
                }
            }
        }
    }
}
