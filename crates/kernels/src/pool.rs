//! Fused pooling mixer.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::KernelError;

/// Candle custom op: `avg_pool(k, stride 1, padding k/2, count_include_pad=False)(x) - x` on a
/// contiguous f32 `(B, C, H, W)` input, computed as a separable box filter per plane.
#[derive(Debug, Clone, Copy)]
pub struct PoolMixer {
    pool_size: usize,
}

impl PoolMixer {
    /// The op for an odd window `pool_size`.
    pub fn new(pool_size: usize) -> Result<Self> {
        if pool_size % 2 == 0 {
            return Err(KernelError::Param {
                op: "pool_mixer",
                msg: format!("pool_size must be odd, got {pool_size}"),
            }
            .into());
        }
        Ok(Self { pool_size })
    }
}

impl CustomOp1 for PoolMixer {
    fn name(&self) -> &'static str {
        "tokenmix-pool-mixer"
    }

    /// The window average is symmetric, so its adjoint spreads `grad / count` over the same
    /// windows: `dx = box_sum(grad / count) - grad`, with `box_sum(v) = (mixer(v) + v) * count`.
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let counts = crate::composed::window_count_map(h, w, self.pool_size, grad)?;
        let v = grad.broadcast_div(&counts)?;
        let mixed = crate::pool_mixer(&v, self.pool_size)?;
        Ok(Some(((mixed + &v)?.broadcast_mul(&counts)? - grad)?))
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let x = crate::error::contiguous_f32(storage, layout, "pool_mixer", "input")?;
        if x.is_empty() {
            return Ok((CpuStorage::F32(vec![]), layout.shape().clone()));
        }
        let half = self.pool_size / 2;
        let mut out = vec![0f32; b * c * h * w];
        out.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| pool_plane(src, h, w, half, dst));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

fn pool_plane(src: &[f32], h: usize, w: usize, half: usize, dst: &mut [f32]) {
    let mut row_sums = vec![0f32; h * w];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for x in 0..w {
            let (a, b) = (x.saturating_sub(half), (x + half).min(w - 1));
            row_sums[y * w + x] = row[a..=b].iter().sum::<f32>() / (b + 1 - a) as f32;
        }
    }
    for y in 0..h {
        let (a, b) = (y.saturating_sub(half), (y + half).min(h - 1));
        let inv = 1.0 / (b + 1 - a) as f32;
        let out = &mut dst[y * w..(y + 1) * w];
        out.copy_from_slice(&row_sums[a * w..(a + 1) * w]);
        for r in a + 1..=b {
            for (o, v) in out.iter_mut().zip(&row_sums[r * w..(r + 1) * w]) {
                *o += v;
            }
        }
        for (o, v) in out.iter_mut().zip(&src[y * w..(y + 1) * w]) {
            *o = *o * inv - v;
        }
    }
}
