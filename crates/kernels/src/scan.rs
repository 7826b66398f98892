//! Fused selective scan (Mamba's S6 recurrence), sequential in the sequence, parallel over
//! batch and channels.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::KernelError;

/// Candle custom op `(ud, a, bc) -> y` for the selective scan
/// `s_l = exp(delta_l * A) * s_{l-1} + delta_l * B_l * u_l`, `y_l = <s_l, C_l>` with state
/// `s` of size `N` per `(batch, channel)`:
/// * `ud`: `(2, B, D, L)`, `u` then `delta` (already biased and softplus-ed);
/// * `a`: `(D, N)`, the (negative) state matrix diagonal;
/// * `bc`: `(2, B, L, N)`, the input-dependent `B` then `C`;
/// * `y`: `(B, D, L)`.
///
/// All f32 and contiguous. One rayon task per `(batch, channel)` keeps its state in registers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SelectiveScan;

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &'static str) -> Result<&'a [f32]> {
    crate::error::contiguous_f32(s, l, "selective_scan", what)
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
        let g = crate::grad::via_composition(&[ud, a, bc], grad, |t| {
            let (b, c) = (t[2].get(0)?.transpose(1, 2)?, t[2].get(1)?.transpose(1, 2)?);
            crate::composed::selective_scan(&t[0].get(0)?, &t[0].get(1)?, &t[1], &b, &c)
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
        let ud = contiguous(uds, udl, "ud")?;
        let a = contiguous(as_, al, "a")?;
        let bc = contiguous(bcs, bcl, "bc")?;
        let (u, delta) = ud.split_at(b * d * l);
        let (bm, cm) = bc.split_at(b * l * n);
        let mut y = vec![0f32; b * d * l];
        y.par_chunks_mut(l.max(1))
            .enumerate()
            .for_each(|(row, out)| {
                let (bi, di) = (row / d, row % d);
                let u = &u[row * l..(row + 1) * l];
                let delta = &delta[row * l..(row + 1) * l];
                let a = &a[di * n..(di + 1) * n];
                let bm = &bm[bi * l * n..(bi + 1) * l * n];
                let cm = &cm[bi * l * n..(bi + 1) * l * n];
                let mut state = vec![0f32; n];
                for t in 0..l {
                    let (dt, du) = (delta[t], delta[t] * u[t]);
                    let (bt, ct) = (&bm[t * n..(t + 1) * n], &cm[t * n..(t + 1) * n]);
                    let mut acc = 0f32;
                    for (((s, &ak), &bk), &ck) in state.iter_mut().zip(a).zip(bt).zip(ct) {
                        *s = (dt * ak).exp() * *s + du * bk;
                        acc += *s * ck;
                    }
                    out[t] = acc;
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((b, d, l))))
    }
}
