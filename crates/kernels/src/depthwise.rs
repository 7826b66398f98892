//! Fused depthwise 2-D convolution.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::error::contiguous_f32;
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
pub(crate) fn out_len(n: usize, k: usize, stride: usize, padding: usize) -> Option<usize> {
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

impl DepthwiseConv2d {
    /// `(B, C, H, W, k, Ho, Wo)` of a valid `(B, C, H, W)` input and weight.
    #[allow(clippy::type_complexity)]
    fn check(
        &self,
        xl: &Layout,
        wl: &Layout,
    ) -> Result<(usize, usize, usize, usize, usize, usize, usize)> {
        let (b, c, h, w) = xl.shape().dims4()?;
        self.check_dims([b, c, h, w], xl.shape().dims(), wl.shape().dims())
    }

    /// `(B, C, H, W, k, Ho, Wo)` of an input with sizes `[b, c, h, w]` (shaped `found`, in
    /// whichever layout) and a weight shaped `weight`.
    #[allow(clippy::type_complexity)]
    fn check_dims(
        &self,
        [b, c, h, w]: [usize; 4],
        found: &[usize],
        weight: &[usize],
    ) -> Result<(usize, usize, usize, usize, usize, usize, usize)> {
        let (wc, one, k, k2) = match weight {
            &[wc, one, k, k2] => (wc, one, k, k2),
            _ => (0, 0, 0, 1),
        };
        if wc != c || one != 1 || k != k2 {
            return Err(KernelError::Shape {
                op: "depthwise_conv2d",
                what: "weight",
                expected: format!("[{c}, 1, k, k] to fit input {found:?}"),
                found: weight.to_vec(),
            }
            .into());
        }
        if b * c * h * w == 0 {
            return Err(KernelError::Shape {
                op: "depthwise_conv2d",
                what: "input",
                expected: "a non-empty 4-D tensor".into(),
                found: found.to_vec(),
            }
            .into());
        }
        let (s, p) = (self.stride, self.padding);
        let (Some(ho), Some(wo)) = (out_len(h, k, s, p), out_len(w, k, s, p)) else {
            return Err(KernelError::Shape {
                op: "depthwise_conv2d",
                what: "input",
                expected: format!("at least the kernel size {k} after padding"),
                found: found.to_vec(),
            }
            .into());
        };
        Ok((b, c, h, w, k, ho, wo))
    }

    /// Gradients `(d input, d weight)` for a contiguous `(B, C, H, W)` input `x`, weight `w`
    /// and output gradient `grad`.
    fn grads(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let g = grad.contiguous()?;
        let gx = w.contiguous()?.apply_op2_no_bwd(
            &g,
            &InputGrad {
                conv: *self,
                input: x.dims().to_vec(),
            },
        )?;
        let gw = x.contiguous()?.apply_op2_no_bwd(
            &g,
            &WeightGrad {
                conv: *self,
                kernel: w.dim(3)?,
            },
        )?;
        Ok((gx, gw))
    }
}

impl DepthwiseConv2d {
    /// The CPU forward pass of the `(B, C, H, W)` op, with the bias (one value per channel)
    /// added as each output plane is written.
    fn cpu_forward(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w, k, ho, wo) = self.check(xl, wl)?;
        let (s, p) = (self.stride, self.padding);
        let x = contiguous_f32(xs, xl, "depthwise_conv2d", "input")?;
        let wt = contiguous_f32(ws, wl, "depthwise_conv2d", "weight")?;
        let mut out = vec![0f32; b * c * ho * wo];
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        let bias_of = |ch: usize| bias.map_or(0.0, |b| b[ch]);
        if s == 1 && hp * wp <= MAX_PADDED_PLANE {
            let geo = PlaneGeo { w, k, p, wo };
            out.par_chunks_mut(ho * wo).enumerate().for_each_init(
                || vec![0f32; hp * wp],
                |padded, (plane, dst)| {
                    let ch = plane % c;
                    let src = &x[plane * h * w..(plane + 1) * h * w];
                    let kern = &wt[ch * k * k..(ch + 1) * k * k];
                    conv_plane_s1(src, kern, bias_of(ch), padded, dst, geo);
                },
            );
        } else {
            out.par_chunks_mut(ho * wo)
                .enumerate()
                .for_each(|(plane, dst)| {
                    let ch = plane % c;
                    let src = &x[plane * h * w..(plane + 1) * h * w];
                    let kern = &wt[ch * k * k..(ch + 1) * k * k];
                    dst.fill(bias_of(ch));
                    conv_plane(src, h, w, kern, k, s, p, dst, ho, wo);
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, ho, wo))))
    }
}

/// Fails unless the bias layout `bl` is `[c]`.
fn check_bias(bl: &Layout, c: usize) -> Result<()> {
    if bl.shape().dims() == [c] {
        return Ok(());
    }
    Err(KernelError::Shape {
        op: "depthwise_conv2d",
        what: "bias",
        expected: format!("[{c}]"),
        found: bl.shape().dims().to_vec(),
    }
    .into())
}

/// Largest zero-padded input plane (elements) the stride-1 path copies into its scratch.
const MAX_PADDED_PLANE: usize = 1 << 20;

/// Sizes of one plane of the stride-1 path: input width `w`, kernel `k`, padding `p`, output
/// width `wo`.
#[derive(Debug, Clone, Copy)]
struct PlaneGeo {
    w: usize,
    k: usize,
    p: usize,
    wo: usize,
}

/// One output plane of a stride-1 depthwise convolution: the input plane is copied into the
/// zero-padded scratch `padded` (`(h + 2p) x (w + 2p)`, borders left zero), then each output row
/// is the bias plus the `k x k` taps over shifted slices of `k` padded rows (3x3: all nine taps
/// in one pass, so each output element is written once).
#[inline(always)]
fn conv_plane_s1_body(
    src: &[f32],
    kern: &[f32],
    bias: f32,
    padded: &mut [f32],
    dst: &mut [f32],
    g: PlaneGeo,
) {
    let (k, p, wo) = (g.k, g.p, g.wo);
    let wp = g.w + 2 * p;
    for (y, row) in src.chunks_exact(g.w).enumerate() {
        padded[(y + p) * wp + p..][..g.w].copy_from_slice(row);
    }
    for (oy, out) in dst.chunks_exact_mut(wo).enumerate() {
        let rows = &padded[oy * wp..(oy + k) * wp];
        if k == 3 {
            let (r0, r1, r2) = (&rows[..wp], &rows[wp..2 * wp], &rows[2 * wp..3 * wp]);
            let t: [f32; 9] = kern[..9].try_into().unwrap_or([0.0; 9]);
            let (a0, a1, a2) = (&r0[..wo], &r0[1..wo + 1], &r0[2..wo + 2]);
            let (b0, b1, b2) = (&r1[..wo], &r1[1..wo + 1], &r1[2..wo + 2]);
            let (c0, c1, c2) = (&r2[..wo], &r2[1..wo + 1], &r2[2..wo + 2]);
            for x in 0..wo {
                out[x] = bias
                    + t[0] * a0[x]
                    + t[1] * a1[x]
                    + t[2] * a2[x]
                    + t[3] * b0[x]
                    + t[4] * b1[x]
                    + t[5] * b2[x]
                    + t[6] * c0[x]
                    + t[7] * c1[x]
                    + t[8] * c2[x];
            }
        } else {
            out.fill(bias);
            for ky in 0..k {
                let r = &rows[ky * wp..(ky + 1) * wp];
                for kx in 0..k {
                    let wv = kern[ky * k + kx];
                    for (o, i) in out.iter_mut().zip(&r[kx..kx + wo]) {
                        *o += wv * i;
                    }
                }
            }
        }
    }
}

crate::simd::dispatch! {
    /// [`conv_plane_s1_body`], on wide vectors where the CPU has them.
    fn conv_plane_s1(
        src: &[f32],
        kern: &[f32],
        bias: f32,
        padded: &mut [f32],
        dst: &mut [f32],
        g: PlaneGeo,
    ) => conv_plane_s1_body
}

/// Candle custom op: [`DepthwiseConv2d`] with a `(C)` bias added as the output is written (one
/// pass over the output instead of two), CPU only.
#[derive(Debug, Clone, Copy)]
pub struct DepthwiseConv2dBias {
    conv: DepthwiseConv2d,
}

impl DepthwiseConv2dBias {
    /// The op for `stride >= 1` and any padding.
    pub fn new(stride: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: DepthwiseConv2d::new(stride, padding)?,
        })
    }
}

impl CustomOp3 for DepthwiseConv2dBias {
    fn name(&self) -> &'static str {
        "tokenmix-depthwise-conv2d-bias"
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = self.conv.grads(x, w, grad)?;
        let gb = grad.sum((0, 2, 3))?;
        Ok((Some(gx), Some(gw), Some(gb)))
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
        let c = xl.shape().dims4()?.1;
        check_bias(bl, c)?;
        let bias = contiguous_f32(bs, bl, "depthwise_conv2d", "bias")?;
        self.conv.cpu_forward(xs, xl, ws, wl, Some(bias))
    }
}

impl CustomOp2 for DepthwiseConv2d {
    fn name(&self) -> &'static str {
        "tokenmix-depthwise-conv2d"
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = self.grads(x, w, grad)?;
        Ok((Some(gx), Some(gw)))
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu_forward(xs, xl, ws, wl, None)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, c, h, w, k, ho, wo) = self.check(xl, wl)?;
        let geo = gpu::Geo::new([b, c, h, w, k, self.stride, self.padding, ho, wo])?;
        let out = gpu::Launch::grid(geo, "dw_fwd", b * c * ho * wo).run(xs, xl, ws, wl)?;
        Ok((out, Shape::from((b, c, ho, wo))))
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

/// Candle custom op: depthwise convolution of a contiguous f32 channel-last `(B, H, W, C)`
/// input with a `(C, 1, k, k)` kernel and a `(C)` bias, stride and zero padding; output
/// `(B, Ho, Wo, C)`. The inner loops run along the channels, so they vectorize at any image
/// size (the `(B, C, H, W)` op's run along a row, which is short in late stages).
#[derive(Debug, Clone, Copy)]
pub struct DepthwiseConv2dNhwc {
    conv: DepthwiseConv2d,
}

impl DepthwiseConv2dNhwc {
    /// The op for `stride >= 1` and any padding.
    pub fn new(stride: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: DepthwiseConv2d::new(stride, padding)?,
        })
    }
}

/// Channels a register block of the channel-last kernel covers.
const LANES: usize = 16;
/// Output columns a register block of the channel-last kernel covers.
const COLUMNS: usize = 4;

/// Sizes one output row of the channel-last kernel needs: input height, padded input width,
/// padded channel stride of the input, taps and bias, channels of the output, kernel, stride,
/// padding, output width.
#[derive(Debug, Clone, Copy)]
struct RowGeo {
    h: usize,
    wp: usize,
    c: usize,
    out_c: usize,
    k: usize,
    s: usize,
    p: usize,
    wo: usize,
}

impl RowGeo {
    /// The kernel rows `ky` whose input row `oy * s + ky - p` lies in the image.
    fn taps_in_image(&self, oy: usize) -> std::ops::Range<usize> {
        let first = self.p.saturating_sub(oy * self.s);
        let last = (self.h + self.p).saturating_sub(oy * self.s).min(self.k);
        first..last.max(first)
    }
}

/// Output columns `ox..ox + N`, channels `c0..c0 + LANES` of output row `oy`, accumulated in
/// registers over the taps. `src` is one image `(H, Wp, C)` padded horizontally; `taps` is the
/// kernel as `(k * k, C)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn nhwc_block<const N: usize>(
    src: &[f32],
    taps: &[f32],
    bias: &[f32],
    dst: &mut [f32],
    g: RowGeo,
    oy: usize,
    ox: usize,
    c0: usize,
) {
    let c = g.c;
    let mut acc = [[0f32; LANES]; N];
    for a in acc.iter_mut() {
        a.copy_from_slice(&bias[c0..c0 + LANES]);
    }
    let (first_col, last_col) = (ox * g.s, (ox + N - 1) * g.s + g.k);
    assert!(last_col <= g.wp && c0 + LANES <= c && taps.len() == g.k * g.k * c);
    for ky in g.taps_in_image(oy) {
        let iy = oy * g.s + ky - g.p;
        let cols = &src[(iy * g.wp + first_col) * c..(iy * g.wp + last_col) * c];
        let row_taps = &taps[ky * g.k * c..(ky + 1) * g.k * c];
        for kx in 0..g.k {
            // SAFETY: `cols` holds input columns first_col..last_col of row iy, so column
            // (ox + o) * s + kx for o < N and kx < k lies in it, and channels c0..c0 + LANES
            // lie in each column; `row_taps` holds k taps of c channels.
            let wv = unsafe { row_taps.as_ptr().add(kx * c + c0) };
            for (o, a) in acc.iter_mut().enumerate() {
                let xv = unsafe { cols.as_ptr().add((o * g.s + kx) * c + c0) };
                for (l, a) in a.iter_mut().enumerate() {
                    *a += unsafe { *wv.add(l) * *xv.add(l) };
                }
            }
        }
    }
    let n = LANES.min(g.out_c - c0);
    for (o, a) in acc.iter().enumerate() {
        dst[(ox + o) * g.out_c + c0..][..n].copy_from_slice(&a[..n]);
    }
}

/// Output row `oy` `(Wo, C)` of one image in register blocks of `COLUMNS x LANES` (the last
/// block of a row overlaps its neighbour rather than running short).
#[inline(always)]
fn nhwc_row_body(src: &[f32], taps: &[f32], bias: &[f32], dst: &mut [f32], g: RowGeo, oy: usize) {
    if g.wo < COLUMNS {
        for ox in 0..g.wo {
            for c0 in (0..g.out_c).step_by(LANES) {
                nhwc_block::<1>(src, taps, bias, dst, g, oy, ox, c0);
            }
        }
        return;
    }
    for ox in (0..g.wo).step_by(COLUMNS) {
        let ox = ox.min(g.wo - COLUMNS);
        for c0 in (0..g.out_c).step_by(LANES) {
            nhwc_block::<COLUMNS>(src, taps, bias, dst, g, oy, ox, c0);
        }
    }
}

crate::simd::dispatch! {
    /// [`nhwc_row_body`], on wide vectors where the CPU has them.
    fn nhwc_row(src: &[f32], taps: &[f32], bias: &[f32], dst: &mut [f32], g: RowGeo, oy: usize)
        => nhwc_row_body
}

impl CustomOp3 for DepthwiseConv2dNhwc {
    fn name(&self) -> &'static str {
        "tokenmix-depthwise-conv2d-nhwc"
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let to_nchw = |t: &Tensor| t.permute((0, 3, 1, 2))?.contiguous();
        let (gx, gw) = self.conv.grads(&to_nchw(x)?, w, &to_nchw(grad)?)?;
        let gx = gx.permute((0, 2, 3, 1))?.contiguous()?;
        let gb = grad.sum((0, 1, 2))?;
        Ok((Some(gx), Some(gw), Some(gb)))
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
        let (b, h, w, c) = xl.shape().dims4()?;
        let found = xl.shape().dims();
        let (_, _, _, _, k, ho, wo) =
            self.conv
                .check_dims([b, c, h, w], found, wl.shape().dims())?;
        check_bias(bl, c)?;
        let op = "depthwise_conv2d";
        let x = contiguous_f32(xs, xl, op, "input")?;
        let wt = contiguous_f32(ws, wl, op, "weight")?;
        let bias = contiguous_f32(bs, bl, op, "bias")?;
        // Channels padded to whole register blocks plus one more, so that neither a tail nor
        // a power-of-two channel stride (4 KiB at 1024 channels) lands every tap of a block
        // in the same L1 cache set.
        let cp = c.div_ceil(LANES) * LANES + LANES;
        let mut taps = vec![0f32; k * k * cp];
        for (ch, kern) in wt.chunks_exact(k * k).enumerate() {
            for (t, &v) in kern.iter().enumerate() {
                taps[t * cp + ch] = v;
            }
        }
        let mut padded_bias = vec![0f32; cp];
        padded_bias[..c].copy_from_slice(bias);
        let (s, p) = (self.conv.stride, self.conv.padding);
        let wp = w + 2 * p;
        let mut src = vec![0f32; b * h * wp * cp];
        src.par_chunks_mut(wp * cp)
            .zip(x.par_chunks(w * c))
            .for_each(|(dst, row)| {
                for (d, col) in dst[p * cp..].chunks_mut(cp).zip(row.chunks_exact(c)) {
                    d[..c].copy_from_slice(col);
                }
            });
        let g = RowGeo {
            h,
            wp,
            c: cp,
            out_c: c,
            k,
            s,
            p,
            wo,
        };
        let image_len = h * wp * cp;
        let mut out = vec![0f32; b * ho * wo * c];
        out.par_chunks_mut(wo * c)
            .enumerate()
            .for_each(|(row, dst)| {
                let image = &src[(row / ho) * image_len..(row / ho + 1) * image_len];
                nhwc_row(image, &taps, &padded_bias, dst, g, row % ho);
            });
        Ok((CpuStorage::F32(out), Shape::from((b, ho, wo, c))))
    }
}

/// Geometry shared by the backward loops: `(planes, channels, h, w, ho, wo)`.
fn geometry(input: &[usize], grad: &[usize]) -> Result<(usize, usize, usize, usize, usize, usize)> {
    match (input, grad) {
        ([b, c, h, w], [gb, gc, ho, wo]) if b == gb && c == gc => Ok((b * c, *c, *h, *w, *ho, *wo)),
        _ => Err(KernelError::Shape {
            op: "depthwise_conv2d backward",
            what: "gradient",
            expected: format!("the output shape for input {input:?}"),
            found: grad.to_vec(),
        }
        .into()),
    }
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    contiguous_f32(s, l, "depthwise_conv2d backward", "operands")
}

/// Gradient of the input: `(weight (C, 1, k, k), grad (B, C, Ho, Wo)) -> (B, C, H, W)`.
#[derive(Debug, Clone)]
struct InputGrad {
    conv: DepthwiseConv2d,
    input: Vec<usize>,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "tokenmix-depthwise-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (planes, c, h, w, ho, wo) = geometry(&self.input, gl.shape().dims())?;
        let k = wl.shape().dims4()?.3;
        let (s, p) = (self.conv.stride, self.conv.padding);
        let (wt, g) = (slice(ws, wl)?, slice(gs, gl)?);
        let mut gx = vec![0f32; planes * h * w];
        gx.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(plane, dst)| {
                let kern = &wt[(plane % c) * k * k..(plane % c + 1) * k * k];
                let src = &g[plane * ho * wo..(plane + 1) * ho * wo];
                for ky in 0..k {
                    let (oy0, oy1) = valid_outputs(h, ho, ky, s, p);
                    for kx in 0..k {
                        let wv = kern[ky * k + kx];
                        let (ox0, ox1) = valid_outputs(w, wo, kx, s, p);
                        for oy in oy0..oy1 {
                            let iy = oy * s + ky - p;
                            for ox in ox0..ox1 {
                                dst[iy * w + ox * s + kx - p] += wv * src[oy * wo + ox];
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(gx), Shape::from(self.input.clone())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (planes, c, h, w, ho, wo) = geometry(&self.input, gl.shape().dims())?;
        let k = wl.shape().dims4()?.3;
        let (s, p) = (self.conv.stride, self.conv.padding);
        let geo = gpu::Geo::new([planes / c, c, h, w, k, s, p, ho, wo])?;
        let out = gpu::Launch::grid(geo, "dw_bwd_input", planes * h * w).run(ws, wl, gs, gl)?;
        Ok((out, Shape::from(self.input.clone())))
    }
}

/// Gradient of the weight: `(input (B, C, H, W), grad (B, C, Ho, Wo)) -> (C, 1, k, k)`.
#[derive(Debug, Clone)]
struct WeightGrad {
    conv: DepthwiseConv2d,
    kernel: usize,
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "tokenmix-depthwise-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (planes, c, h, w, ho, wo) = geometry(xl.shape().dims(), gl.shape().dims())?;
        let (k, s, p) = (self.kernel, self.conv.stride, self.conv.padding);
        let (x, g) = (slice(xs, xl)?, slice(gs, gl)?);
        let mut gw = vec![0f32; c * k * k];
        gw.par_chunks_mut(k * k).enumerate().for_each(|(ch, dst)| {
            for plane in (ch..planes).step_by(c) {
                let src = &x[plane * h * w..(plane + 1) * h * w];
                let grad = &g[plane * ho * wo..(plane + 1) * ho * wo];
                for ky in 0..k {
                    let (oy0, oy1) = valid_outputs(h, ho, ky, s, p);
                    for kx in 0..k {
                        let (ox0, ox1) = valid_outputs(w, wo, kx, s, p);
                        let mut acc = 0f32;
                        for oy in oy0..oy1 {
                            let iy = oy * s + ky - p;
                            for ox in ox0..ox1 {
                                acc += src[iy * w + ox * s + kx - p] * grad[oy * wo + ox];
                            }
                        }
                        dst[ky * k + kx] += acc;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(gw), Shape::from((c, 1, k, k))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (planes, c, h, w, ho, wo) = geometry(xl.shape().dims(), gl.shape().dims())?;
        let (k, s, p) = (self.kernel, self.conv.stride, self.conv.padding);
        let geo = gpu::Geo::new([planes / c, c, h, w, k, s, p, ho, wo])?;
        let launch = gpu::Launch {
            per_block: true,
            ..gpu::Launch::grid(geo, "dw_bwd_weight", c * k * k)
        };
        Ok((launch.run(xs, xl, gs, gl)?, Shape::from((c, 1, k, k))))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DeviceRepr, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDevice, Map2, WrapErr};
    use candle_core::{CudaStorage, Layout, Result, WithDType};

    use crate::cuda::{blocks_of, func, grid, int, view, wrap, BLOCK, DEPTHWISE};

    /// The kernels' `Conv` struct: `b, c, h, w, k, s, p, ho, wo`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Geo([i32; 9]);

    // SAFETY: a plain array of i32, laid out as the kernels' struct of nine ints.
    unsafe impl DeviceRepr for Geo {}

    impl Geo {
        pub(super) fn new(dims: [usize; 9]) -> Result<Self> {
            let mut g = [0i32; 9];
            for (d, v) in g.iter_mut().zip(dims) {
                *d = int(v, "depthwise_conv2d")?;
            }
            Ok(Self(g))
        }
    }

    /// Kernel `kernel(Conv, a, b, out)` writing `out_len` elements: grid-stride over them, or
    /// one block per element (`per_block`).
    pub(super) struct Launch {
        pub(super) geo: Geo,
        pub(super) kernel: &'static str,
        pub(super) out_len: usize,
        pub(super) per_block: bool,
    }

    impl Launch {
        pub(super) fn grid(geo: Geo, kernel: &'static str, out_len: usize) -> Self {
            Self {
                geo,
                kernel,
                out_len,
                per_block: false,
            }
        }

        pub(super) fn run(
            &self,
            a: &CudaStorage,
            al: &Layout,
            b: &CudaStorage,
            bl: &Layout,
        ) -> Result<CudaStorage> {
            Ok(wrap(self.map(&a.slice, al, &b.slice, bl, &a.device)?, a))
        }
    }

    impl Map2 for Launch {
        fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
            &self,
            a: &CudaSlice<T>,
            al: &Layout,
            b: &CudaSlice<T>,
            bl: &Layout,
            dev: &CudaDevice,
        ) -> Result<CudaSlice<T>> {
            let (a, b) = (
                view(a, al, "depthwise_conv2d", "operand")?,
                view(b, bl, "depthwise_conv2d", "operand")?,
            );
            let f = func::<T>(dev, &DEPTHWISE, self.kernel)?;
            // SAFETY: every kernel writes all out_len elements.
            let out = unsafe { dev.alloc::<T>(self.out_len) }?;
            let stream = dev.cuda_stream();
            let mut builder = stream.launch_builder(&f);
            builder.arg(&self.geo).arg(&a).arg(&b).arg(&out);
            let cfg = match self.per_block {
                true => blocks_of(self.out_len, BLOCK, "depthwise_conv2d")?,
                false => grid(self.out_len),
            };
            // SAFETY: the arguments match the kernel's signature.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(out)
        }
    }
}
