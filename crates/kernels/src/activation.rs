//! Fused exact GELU with a vectorizable erf.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::error::contiguous_f32;
use crate::KernelError;

/// `erf(x)` as a rational function of `x` clamped to `[-4, 4]` (the coefficients of Eigen's
/// `generic_fast_erf_float`; error a few ulp in f32). Branch-free, so loops over it vectorize.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_6e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_2e-3;
    p = p * x2 - 1.609_603_3e-2;
    p *= x;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    p / q
}

const CHUNK: usize = 16 * 1024;

/// Candle custom op: exact (erf) GELU `0.5 x (1 + erf(x / sqrt(2)))` on a contiguous f32 tensor,
/// in parallel chunks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "tokenmix-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "gelu", "input")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| {
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = crate::grad::via_composition(&[x], grad, |t| t[0].gelu_erf())?;
        Ok(g.into_iter().next())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn erf_is_accurate() {
        // Reference values of erf.
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (-1.5, -0.966_105_1),
            (5.0, 1.0),
        ] {
            assert!(
                (super::erf(x) - want).abs() < 2e-7,
                "erf({x}) = {} vs {want}",
                super::erf(x)
            );
        }
    }
}

/// Candle custom op `(x, scale, bias) -> scale * relu(x)^2 + bias` (StarReLU) on a contiguous
/// f32 tensor with scalar (`[1]`) `scale` and `bias`, in one pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct StarRelu;

impl candle_core::CustomOp3 for StarRelu {
    fn name(&self) -> &'static str {
        "tokenmix-star-relu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let scalar = |s: &CpuStorage, l: &Layout, what: &'static str| -> Result<f32> {
            match (
                l.shape().elem_count(),
                s.as_slice::<f32>()?.get(l.start_offset()),
            ) {
                (1, Some(&v)) => Ok(v),
                _ => Err(KernelError::Shape {
                    op: "star_relu",
                    what,
                    expected: "[1]".into(),
                    found: l.shape().dims().to_vec(),
                }
                .into()),
            }
        };
        let (scale, bias) = (scalar(ss, sl, "scale")?, scalar(bs, bl, "bias")?);
        let x = contiguous_f32(xs, xl, "star_relu", "input")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| {
                for (o, &v) in o.iter_mut().zip(x) {
                    let r = v.max(0.0);
                    *o = scale * r * r + bias;
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = crate::grad::via_composition(&[x, scale, bias], grad, |t| {
            crate::composed::star_relu(&t[0], &t[1], &t[2])
        })?;
        Ok((Some(g[0].clone()), Some(g[1].clone()), Some(g[2].clone())))
    }
}
