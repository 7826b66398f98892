//! Fused depthwise 2-D convolution.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};
use rayon::prelude::*;

use crate::KernelError;

/// Candle custom op: depthwise convolution of a contiguous f32 `(B, C, H, W)` input with a
/// `(C, 1, k, k)` kernel, stride `stride` and zero padding `padding` on each side.
#[derive(Debug, Clone, Copy)]
pub struct DepthwiseConv2d {
    stride: usize,
    padding: usize,
}

impl DepthwiseConv2d {
    /// The op for `stride >= 1` and any padding.
    pub fn new(stride: usize, padding: usize) -> Result<Self> {
        if stride == 0 {
            return Err(KernelError::Param {
                op: "depthwise_conv2d",
                msg: "stride must be at least 1".into(),
            }
            .into());
        }
        Ok(Self { stride, padding })
    }
}

/// Output length of a convolution over `n` inputs.
fn out_len(n: usize, k: usize, stride: usize, padding: usize) -> Option<usize> {
    (n + 2 * padding).checked_sub(k).map(|v| v / stride + 1)
}

/// Range of output indices `o` whose input index `o * stride + tap - padding` lies in `[0, n)`.
fn valid_outputs(
    n: usize,
    out: usize,
    tap: usize,
    stride: usize,
    padding: usize,
) -> (usize, usize) {
    let first = padding.saturating_sub(tap).div_ceil(stride);
    let last = if n + padding > tap {
        ((n - 1 + padding - tap) / stride + 1).min(out)
    } else {
        0
    };
    (first.min(last), last)
}

impl CustomOp2 for DepthwiseConv2d {
    fn name(&self) -> &'static str {
        "tokenmix-depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = xl.shape().dims4()?;
        let (wc, one, k, k2) = wl.shape().dims4()?;
        if wc != c || one != 1 || k != k2 {
            return Err(KernelError::Shape {
                op: "depthwise_conv2d",
                what: "weight",
                expected: format!("[{c}, 1, k, k] to fit input {:?}", xl.shape().dims()),
                found: wl.shape().dims().to_vec(),
            }
            .into());
        }
        if b * c * h * w == 0 {
            return Err(KernelError::Shape {
                op: "depthwise_conv2d",
                what: "input",
                expected: "a non-empty (B, C, H, W) tensor".into(),
                found: xl.shape().dims().to_vec(),
            }
            .into());
        }
        let (s, p) = (self.stride, self.padding);
        let (Some(ho), Some(wo)) = (out_len(h, k, s, p), out_len(w, k, s, p)) else {
            return Err(KernelError::Shape {
                op: "depthwise_conv2d",
                what: "input",
                expected: format!("at least the kernel size {k} after padding"),
                found: xl.shape().dims().to_vec(),
            }
            .into());
        };
        let (Some((xa, xb)), Some((wa, wb))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            return Err(KernelError::NotContiguous {
                op: "depthwise_conv2d",
                what: "inputs",
            }
            .into());
        };
        let x = &xs.as_slice::<f32>()?[xa..xb];
        let wt = &ws.as_slice::<f32>()?[wa..wb];
        let mut out = vec![0f32; b * c * ho * wo];
        out.par_chunks_mut(ho * wo)
            .enumerate()
            .for_each(|(plane, dst)| {
                let ch = plane % c;
                let src = &x[plane * h * w..(plane + 1) * h * w];
                let kern = &wt[ch * k * k..(ch + 1) * k * k];
                conv_plane(src, h, w, kern, k, s, p, dst, ho, wo);
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, ho, wo))))
    }
}

#[allow(clippy::too_many_arguments)]
fn conv_plane(
    src: &[f32],
    h: usize,
    w: usize,
    kern: &[f32],
    k: usize,
    s: usize,
    p: usize,
    dst: &mut [f32],
    ho: usize,
    wo: usize,
) {
    for ky in 0..k {
        let (oy0, oy1) = valid_outputs(h, ho, ky, s, p);
        for kx in 0..k {
            let wv = kern[ky * k + kx];
            let (ox0, ox1) = valid_outputs(w, wo, kx, s, p);
            if ox0 >= ox1 {
                continue;
            }
            for oy in oy0..oy1 {
                let iy = oy * s + ky - p;
                let row = &src[iy * w..(iy + 1) * w];
                let out = &mut dst[oy * wo + ox0..oy * wo + ox1];
                let ix0 = ox0 * s + kx - p;
                if s == 1 {
                    for (o, i) in out.iter_mut().zip(&row[ix0..ix0 + (ox1 - ox0)]) {
                        *o += wv * i;
                    }
                } else {
                    for (j, o) in out.iter_mut().enumerate() {
                        *o += wv * row[ix0 + j * s];
                    }
                }
            }
        }
    }
}
