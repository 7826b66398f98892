//! Conversions between f32 and the half-precision dtypes on the CPU, in parallel and with
//! AVX-512 where the CPU has it (`vcvtneps2bf16`, `vcvtps2ph`): what half-precision models pay
//! around every op that computes in f32. candle's own conversion goes one element at a time
//! through the `half` crate (bf16 rounding with a branch per value), several times slower.
//!
//! Rounding is to nearest, ties to even, as `half` and PyTorch round; NaN stays NaN. One
//! difference: `vcvtneps2bf16` flushes f32 subnormals (below 1.2e-38 in magnitude) to zero,
//! where the portable path keeps their bf16 rounding.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Values per parallel task.
const CHUNK: usize = 1 << 14;

/// `x` converted to `dtype` (f32, bf16 or f16): on the CPU by [`Cast`], elsewhere (and for
/// other dtype pairs) by candle. Differentiable.
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let fast = x.device().is_cpu()
        && x.dtype() != dtype
        && matches!(
            (x.dtype(), dtype),
            (DType::F32, DType::BF16 | DType::F16) | (DType::BF16 | DType::F16, DType::F32)
        );
    if fast && crate::fused_enabled() {
        x.contiguous()?.apply_op1(Cast { to: dtype })
    } else {
        x.to_dtype(dtype)
    }
}

/// A CPU tensor of `shape` in `dtype` (bf16 or f16) holding `values` rounded as [`cast`]
/// rounds them, with no f32 tensor in between (how a half-precision model reads f32 weights).
pub fn narrow_f32(values: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
    let device = candle_core::Device::Cpu;
    match dtype {
        DType::BF16 => Tensor::from_vec(narrow_bf16(values), shape, &device),
        DType::F16 => Tensor::from_vec(narrow_f16(values), shape, &device),
        other => candle_core::bail!("narrow_f32 converts to bf16 or f16, not {other:?}"),
    }
}

/// Candle custom op converting a contiguous CPU tensor between f32 and bf16 / f16 (see the
/// module). Its gradient is the incoming gradient converted back.
#[derive(Debug, Clone, Copy)]
pub struct Cast {
    /// The dtype converted to.
    pub to: DType,
}

impl CustomOp1 for Cast {
    fn name(&self) -> &'static str {
        "tokenmix-cast"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            return Err(crate::KernelError::NotContiguous {
                op: "cast",
                what: "input",
            }
            .into());
        };
        let out = match (s, self.to) {
            (CpuStorage::F32(v), DType::BF16) => CpuStorage::BF16(narrow_bf16(&v[a..b])),
            (CpuStorage::F32(v), DType::F16) => CpuStorage::F16(narrow_f16(&v[a..b])),
            (CpuStorage::BF16(v), DType::F32) => CpuStorage::F32(widen_bf16(&v[a..b])),
            (CpuStorage::F16(v), DType::F32) => CpuStorage::F32(widen_f16(&v[a..b])),
            (_, to) => candle_core::bail!("cast to {to:?} of a dtype it does not convert"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(cast(grad, arg.dtype())?))
    }
}

/// `f(src chunk, dst chunk)` over matching chunks in parallel, into a new vector.
fn convert<S: Sync, D: Send + Copy + Default>(
    src: &[S],
    f: impl Fn(&[S], &mut [D]) + Sync,
) -> Vec<D> {
    let mut out = vec![D::default(); src.len()];
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(o, s)| f(s, o));
    out
}

fn narrow_bf16(src: &[f32]) -> Vec<bf16> {
    convert(src, narrow_bf16_into)
}

/// `o = s` rounded to bf16 (one thread; `o` as long as `s`).
pub(crate) fn narrow_bf16_into(s: &[f32], o: &mut [bf16]) {
    #[cfg(target_arch = "x86_64")]
    if crate::bf16::has_avx512_bf16() {
        // SAFETY: the CPU has AVX512_BF16; `o` is at least as long as `s`.
        return unsafe { narrow_bf16_avx512(s, &mut o[..s.len()]) };
    }
    narrow_bf16_bits(s, o);
}

/// Round-to-nearest-even on the bit patterns (NaN kept quiet), branch-free so it vectorizes.
#[inline]
fn narrow_bf16_bits(s: &[f32], o: &mut [bf16]) {
    for (o, &v) in o.iter_mut().zip(s) {
        let bits = v.to_bits();
        let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
        let nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
        let quiet = ((bits >> 16) as u16) | 0x40;
        *o = bf16::from_bits(if nan { quiet } else { rounded });
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn narrow_bf16_avx512(s: &[f32], o: &mut [bf16]) {
    use std::arch::x86_64::*;
    let n = s.len() / 16 * 16;
    for i in (0..n).step_by(16) {
        let v = _mm512_loadu_ps(s.as_ptr().add(i));
        let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        _mm256_storeu_si256(o.as_mut_ptr().add(i).cast(), h);
    }
    narrow_bf16_bits(&s[n..], &mut o[n..]);
}

fn widen_bf16(src: &[bf16]) -> Vec<f32> {
    convert(src, |s, o| {
        for (o, &v) in o.iter_mut().zip(s) {
            *o = f32::from_bits(u32::from(v.to_bits()) << 16);
        }
    })
}

fn narrow_f16(src: &[f32]) -> Vec<f16> {
    convert(src, |s, o| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F; `s` and `o` have the same length.
            return unsafe { narrow_f16_avx512(s, o) };
        }
        for (o, &v) in o.iter_mut().zip(s) {
            *o = f16::from_f32(v);
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn narrow_f16_avx512(s: &[f32], o: &mut [f16]) {
    use std::arch::x86_64::*;
    let n = s.len() / 16 * 16;
    for i in (0..n).step_by(16) {
        let v = _mm512_loadu_ps(s.as_ptr().add(i));
        let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        _mm256_storeu_si256(o.as_mut_ptr().add(i).cast(), h);
    }
    for (o, &v) in o[n..].iter_mut().zip(&s[n..]) {
        *o = f16::from_f32(v);
    }
}

fn widen_f16(src: &[f16]) -> Vec<f32> {
    convert(src, |s, o| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F; `s` and `o` have the same length.
            return unsafe { widen_f16_avx512(s, o) };
        }
        for (o, &v) in o.iter_mut().zip(s) {
            *o = v.to_f32();
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widen_f16_avx512(s: &[f16], o: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = s.len() / 16 * 16;
    for i in (0..n).step_by(16) {
        let h = _mm256_loadu_si256(s.as_ptr().add(i).cast());
        _mm512_storeu_ps(o.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
    }
    for (o, &v) in o[n..].iter_mut().zip(&s[n..]) {
        *o = v.to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every conversion equals the `half` crate's (round to nearest even), on values that
    /// round up, down and to even, subnormals, infinities, NaN and a tail shorter than a
    /// vector.
    #[test]
    fn conversions_equal_the_half_crates_rounding() {
        let mut values: Vec<f32> = (0..40_000u32)
            .map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761)))
            .filter(|v| !v.is_nan())
            .collect();
        values.extend([
            0.0,
            -0.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            65504.0,
            65520.0,
            1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
        ]);
        values.push(1.5);
        let bf: Vec<bf16> = narrow_bf16(&values);
        let hf: Vec<f16> = narrow_f16(&values);
        let fast_bf16 = crate::bf16::has_avx512_bf16();
        for (i, &v) in values.iter().enumerate() {
            let exact = bf[i].to_bits() == bf16::from_f32(v).to_bits();
            // vcvtneps2bf16 flushes f32 subnormals to a zero of their sign.
            let flushed = fast_bf16
                && v.abs() < f32::MIN_POSITIVE
                && bf[i].to_bits() == (v.to_bits() >> 16) as u16 & 0x8000;
            assert!(exact || flushed, "bf16 of {v:e}: {:#x}", bf[i].to_bits());
            assert_eq!(hf[i].to_bits(), f16::from_f32(v).to_bits(), "f16 of {v:e}");
        }
        let back = widen_bf16(&bf);
        let back16 = widen_f16(&hf);
        for i in 0..values.len() {
            assert_eq!(back[i].to_bits(), bf[i].to_f32().to_bits());
            assert_eq!(back16[i].to_bits(), hf[i].to_f32().to_bits());
        }
        // The portable rounding (the whole conversion on CPUs without AVX512_BF16).
        let mut portable = vec![bf16::ZERO; values.len()];
        narrow_bf16_bits(&values, &mut portable);
        for (p, v) in portable.iter().zip(&values) {
            assert_eq!(
                p.to_bits(),
                bf16::from_f32(*v).to_bits(),
                "portable bf16 of {v:e}"
            );
        }
        let nan = narrow_bf16(&[f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001)]);
        assert!(nan.iter().all(|v| v.is_nan()), "{nan:?}");
        let mut nan = [bf16::ZERO; 2];
        narrow_bf16_bits(&[f32::NAN, f32::from_bits(0x7f80_0001)], &mut nan);
        assert!(nan.iter().all(|v| v.is_nan()), "{nan:?}");
    }
}
