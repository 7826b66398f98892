//! Bicubic resizing as PyTorch's `F.interpolate(mode="bicubic")` does it (cubic convolution with
//! A = -0.75, border pixels repeated), for weight grids and small feature maps: [`bicubic`] on
//! CPU slices in f64, [`interpolate_bicubic`] as two f32 matrix products on the tensor's device.

use candle_core::{DType, Result, Tensor};

const A: f64 = -0.75;

fn near(x: f64) -> f64 {
    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
}

fn far(x: f64) -> f64 {
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// Source taps and weights of every output position along one axis.
fn taps(n_in: usize, n_out: usize, align_corners: bool) -> Vec<([usize; 4], [f64; 4])> {
    let scale = if align_corners {
        if n_out > 1 {
            (n_in as f64 - 1.0) / (n_out as f64 - 1.0)
        } else {
            0.0
        }
    } else {
        n_in as f64 / n_out as f64
    };
    (0..n_out)
        .map(|o| {
            let src = if align_corners {
                scale * o as f64
            } else {
                scale * (o as f64 + 0.5) - 0.5
            };
            let base = src.floor();
            let t = src - base;
            let clamp = |i: f64| (i.max(0.0) as usize).min(n_in - 1);
            (
                [
                    clamp(base - 1.0),
                    clamp(base),
                    clamp(base + 1.0),
                    clamp(base + 2.0),
                ],
                [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)],
            )
        })
        .collect()
}

/// Resizes stacked `(P, H, W)` grids to `(P, out_h, out_w)` bicubically.
pub fn bicubic(
    data: &[f32],
    (p, h, w): (usize, usize, usize),
    (oh, ow): (usize, usize),
    align_corners: bool,
) -> Vec<f32> {
    if (h, w) == (oh, ow) {
        return data.to_vec();
    }
    let ty = taps(h, oh, align_corners);
    let tx = taps(w, ow, align_corners);
    let mut out = Vec::with_capacity(p * oh * ow);
    for plane in data.chunks(h * w).take(p) {
        for (iy, wy) in &ty {
            for (ix, wx) in &tx {
                let mut acc = 0.0f64;
                for (yy, cy) in iy.iter().zip(wy) {
                    for (xx, cx) in ix.iter().zip(wx) {
                        acc += cy * cx * plane[yy * w + xx] as f64;
                    }
                }
                out.push(acc as f32);
            }
        }
    }
    out
}

/// The `(n_out, n_in)` matrix of bicubic interpolation weights along one axis (repeated edge
/// taps summed).
fn tap_matrix(n_in: usize, n_out: usize, align_corners: bool) -> Vec<f32> {
    let mut m = vec![0f32; n_out * n_in];
    for (o, (idx, wts)) in taps(n_in, n_out, align_corners).into_iter().enumerate() {
        for (i, w) in idx.iter().zip(wts) {
            m[o * n_in + i] += w as f32;
        }
    }
    m
}

/// Bicubic resize of the last two axes of `x` (`(..., H, W)` to `(..., oh, ow)`) with PyTorch's
/// `F.interpolate(mode="bicubic")` weights; computed as `Wy · x · Wxᵀ`, so it is
/// differentiable. `x` of another float dtype is computed in f32 and converted back.
pub fn interpolate_bicubic(
    x: &Tensor,
    (oh, ow): (usize, usize),
    align_corners: bool,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    if dims.len() < 2 {
        candle_core::bail!("interpolate_bicubic: need at least 2 axes, got {dims:?}")
    }
    let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if (h, w) == (oh, ow) {
        return Ok(x.clone());
    }
    let dev = x.device();
    let wy = Tensor::from_vec(tap_matrix(h, oh, align_corners), (oh, h), dev)?;
    let wxt = Tensor::from_vec(tap_matrix(w, ow, align_corners), (ow, w), dev)?.t()?;
    let xf = x.to_dtype(DType::F32)?.contiguous()?;
    let rows = xf.broadcast_matmul(&wxt.contiguous()?)?;
    let out = wy.broadcast_matmul(&rows)?;
    out.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_and_linear_grids_survive() {
        let ones = vec![2.0f32; 12];
        assert!(bicubic(&ones, (1, 3, 4), (5, 7), true)
            .iter()
            .all(|v| (v - 2.0).abs() < 1e-6));
        // Cubic convolution reproduces linear ramps away from the border (align_corners).
        let ramp: Vec<f32> = (0..5).map(|i| i as f32).collect();
        let up = bicubic(&ramp, (1, 1, 5), (1, 9), true);
        for (i, v) in up.iter().enumerate().take(7).skip(2) {
            assert!((v - i as f32 / 2.0).abs() < 1e-5, "{up:?}");
        }
        // Next to the border the repeated edge pixel bends the ramp, as in PyTorch.
        assert!((up[1] - 0.40625).abs() < 1e-6, "{up:?}");
    }

    #[test]
    fn tensor_resize_matches_the_slice_resize_and_has_gradients() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let data: Vec<f32> = (0..2 * 3 * 5 * 7)
            .map(|i| ((i * 37) % 11) as f32 - 5.0)
            .collect();
        for align in [false, true] {
            let x = candle_core::Var::from_vec(data.clone(), (2, 3, 5, 7), &dev)?;
            let y = interpolate_bicubic(x.as_tensor(), (9, 4), align)?;
            let want = bicubic(&data, (6, 5, 7), (9, 4), align);
            let got: Vec<f32> = y.flatten_all()?.to_vec1()?;
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "{g} vs {w}");
            }
            let grads = y.sum_all()?.backward()?;
            let g = grads
                .get(x.as_tensor())
                .expect("gradient reaches the input");
            // Each output row of weights sums to one, so d(sum)/dx sums to the output size.
            let total = g.sum_all()?.to_scalar::<f32>()?;
            assert!((total - (6 * 9 * 4) as f32).abs() < 1e-2, "{total}");
        }
        Ok(())
    }
}
