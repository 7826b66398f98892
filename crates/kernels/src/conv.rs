//! Dense convolution on channel-last maps: patches gathered into rows (`im2col`, one copy of
//! `C` contiguous channels per tap), then one matrix product over the batch.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::KernelError;

/// Window geometry of a square convolution: kernel size, stride and zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Kernel height and width.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Zeros added on every side.
    pub padding: usize,
}

impl Window {
    /// Checks the geometry against an input of `h x w` and returns the output size.
    pub(crate) fn output(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let bad = |msg: String| {
            Err(KernelError::Param {
                op: "conv2d_nhwc",
                msg,
            }
            .into())
        };
        if self.kernel == 0 || self.stride == 0 {
            return bad(format!(
                "kernel size and stride must be positive, got {} and {}",
                self.kernel, self.stride
            ));
        }
        let out = |n| crate::depthwise::out_len(n, self.kernel, self.stride, self.padding);
        match (out(h), out(w)) {
            (Some(ho), Some(wo)) => Ok((ho, wo)),
            _ => bad(format!(
                "a {h}x{w} input padded by {} is smaller than the {k}x{k} kernel",
                self.padding,
                k = self.kernel
            )),
        }
    }

    /// Copies the `k` taps of output column `ox` from one input row `src_row` `(W, C)` into
    /// `taps` `(k, C)`, leaving the taps in the padding untouched: one copy when the window
    /// lies inside the row.
    fn gather_row(&self, src_row: &[f32], ox: usize, c: usize, taps: &mut [f32]) {
        let (k, w) = (self.kernel, src_row.len() / c);
        let start = ox * self.stride;
        if start >= self.padding && start - self.padding + k <= w {
            let ix = start - self.padding;
            taps.copy_from_slice(&src_row[ix * c..(ix + k) * c]);
            return;
        }
        for kx in 0..k {
            if let Some(ix) = self.source(ox, kx, w) {
                taps[kx * c..(kx + 1) * c].copy_from_slice(&src_row[ix * c..(ix + 1) * c]);
            }
        }
    }

    /// The input index read by output index `o` at tap `t`, if inside `0..n`.
    fn source(&self, o: usize, t: usize, n: usize) -> Option<usize> {
        (o * self.stride + t)
            .checked_sub(self.padding)
            .filter(|&i| i < n)
    }
}

/// Candle custom op: the patches of a contiguous f32 channel-last map `(B, H, W, C)` as rows,
/// `(B * Ho * Wo, k * k * C)`, columns ordered `(ky, kx, c)`, zeros where a tap falls in the
/// padding. Its backward adds each row back onto the pixels it was read from (CPU only).
#[derive(Debug, Clone, Copy)]
pub struct Im2ColNhwc {
    window: Window,
}

impl Im2ColNhwc {
    /// The op for `window`.
    pub fn new(window: Window) -> Self {
        Self { window }
    }
}

impl CustomOp1 for Im2ColNhwc {
    fn name(&self) -> &'static str {
        "tokenmix-im2col-nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, w, c) = layout.shape().dims4()?;
        let x = crate::error::contiguous_f32(storage, layout, "conv2d_nhwc", "input")?;
        let (ho, wo) = self.window.output(h, w)?;
        let k = self.window.kernel;
        let row = k * k * c;
        let shape = Shape::from((b * ho * wo, row));
        let mut cols = vec![0f32; shape.elem_count()];
        if cols.is_empty() {
            return Ok((CpuStorage::F32(cols), shape));
        }
        cols.par_chunks_mut(wo * row)
            .enumerate()
            .for_each(|(r, dst)| {
                let (image, oy) = (r / ho, r % ho);
                let plane = &x[image * h * w * c..(image + 1) * h * w * c];
                for ky in 0..k {
                    let Some(iy) = self.window.source(oy, ky, h) else {
                        continue;
                    };
                    let src_row = &plane[iy * w * c..(iy + 1) * w * c];
                    for (ox, patch) in dst.chunks_exact_mut(row).enumerate() {
                        let taps = &mut patch[ky * k * c..(ky + 1) * k * c];
                        self.window.gather_row(src_row, ox, c, taps);
                    }
                }
            });
        Ok((CpuStorage::F32(cols), shape))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = Col2ImNhwc {
            window: self.window,
            input: x.dims4()?,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// The adjoint of [`Im2ColNhwc`]: rows `(B * Ho * Wo, k * k * C)` summed back into the
/// `(B, H, W, C)` map they were read from (the backward of a convolution, and the scatter of a
/// transposed convolution). Its backward is [`Im2ColNhwc`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Col2ImNhwc {
    pub(crate) window: Window,
    pub(crate) input: (usize, usize, usize, usize),
}

impl Col2ImNhwc {
    /// Adds the rows `cols` onto `dx` `(B, H, W, C)`, each pixel's taps in one pass.
    fn scatter(&self, cols: &[f32], dx: &mut [f32]) -> Result<()> {
        let (_, h, w, c) = self.input;
        let (ho, wo) = self.window.output(h, w)?;
        let k = self.window.kernel;
        let row = k * k * c;
        if dx.is_empty() {
            return Ok(());
        }
        dx.par_chunks_mut(w * c).enumerate().for_each(|(r, dst)| {
            let (image, iy) = (r / h, r % h);
            for oy in 0..ho {
                let Some(ky) = (iy + self.window.padding).checked_sub(oy * self.window.stride)
                else {
                    break;
                };
                if ky >= k {
                    continue;
                }
                let rows = &cols[(image * ho + oy) * wo * row..(image * ho + oy + 1) * wo * row];
                for (ox, patch) in rows.chunks_exact(row).enumerate() {
                    for kx in 0..k {
                        if let Some(ix) = self.window.source(ox, kx, w) {
                            let at = (ky * k + kx) * c;
                            let acc = &mut dst[ix * c..(ix + 1) * c];
                            for (a, v) in acc.iter_mut().zip(&patch[at..at + c]) {
                                *a += v;
                            }
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

impl CustomOp1 for Col2ImNhwc {
    fn name(&self) -> &'static str {
        "tokenmix-col2im-nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = crate::error::contiguous_f32(storage, layout, "conv2d_nhwc backward", "grad")?;
        let (b, h, w, c) = self.input;
        let mut dx = vec![0f32; b * h * w * c];
        self.scatter(cols, &mut dx)?;
        Ok((CpuStorage::F32(dx), Shape::from(self.input)))
    }

    fn bwd(&self, _cols: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = Im2ColNhwc::new(self.window);
        Ok(Some(grad.contiguous()?.apply_op1(op)?))
    }
}

/// [`Col2ImNhwc`] onto a map that starts as `bias` `(C)` at every pixel: the scatter of a
/// transposed convolution with its bias, in one pass over the output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Col2ImBiasNhwc(pub(crate) Col2ImNhwc);

impl CustomOp2 for Col2ImBiasNhwc {
    fn name(&self) -> &'static str {
        "tokenmix-col2im-bias-nhwc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "conv_transpose2d_nhwc";
        let cols = crate::error::contiguous_f32(s1, l1, op, "rows")?;
        let bias = crate::error::contiguous_f32(s2, l2, op, "bias")?;
        let (b, h, w, c) = self.0.input;
        if bias.len() != c {
            return Err(crate::error::shape_error_of(
                op,
                "bias",
                format!("[{c}]"),
                l2.dims(),
            ));
        }
        let mut dx = bias.repeat(b * h * w);
        self.0.scatter(cols, &mut dx)?;
        Ok((CpuStorage::F32(dx), Shape::from(self.0.input)))
    }

    fn bwd(
        &self,
        _cols: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let c = self.0.input.3;
        let rows = grad
            .contiguous()?
            .apply_op1(Im2ColNhwc::new(self.0.window))?;
        let bias = grad.reshape(((), c))?.sum(0)?;
        Ok((Some(rows), Some(bias)))
    }
}
