//! PoNet's multi-granularity pooling (Tan et al., "PoNet: Pooling Network for Efficient Token
//! Mixing in Long Sequences", ICLR 2022; reference code `lxchtan/PoNet`): every token of
//! `(B, L, C)` mixes three poolings of the sequence, each of its own projection of the input:
//!
//! * **global attention pooling**: the mean of the queries `Q` over the (unpadded) tokens
//!   attends once over the keys `K` (which are also the values), giving one vector `g` per
//!   head and sample;
//! * **segment max-pooling**: the channel-wise max of `S` over the token's segment;
//! * **local max-pooling**: the channel-wise max of `Lc` over a window of 3 tokens (2 at the
//!   ends).
//!
//! They combine as `(g + segmax(S)) ⊙ O + localmax(Lc)` per token, `O` a fourth projection.
//! [`MultiGranularityPooling`] computes this for any segmentation a [`SegmentLayout`] describes
//! (padding, special tokens and segments of the text model, or fixed chunks);
//! [`PoNetMixer`] is the generic token mixer of the reference's Long Range Arena code
//! (`examples/LRA/code/attention_ponet.py`): fixed chunks of `L / segment_num + 1` tokens and
//! an output projection, with its checkpoint names `W_q`, `W_k`, `W_v` (the `O` projection),
//! `W_local`, `W_segment`, `ff`. A 2-D map is pooled as its row-major token sequence.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::layers::{softmax_last_dim, split_heads, Pointwise};
use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};

/// The value the reference writes into padded (and, for the local pooling, special) tokens
/// before max-pooling, so that they never win a max.
pub const MASKED_VALUE: f64 = -10000.0;

/// Added to comparisons across segment boundaries in the segmented max-scan.
const ACROSS: f32 = -1e30;

/// Where the tokens of a batch `(B, L, C)` stand for [`MultiGranularityPooling`]: which are
/// padding, which are special tokens (excluded from the local and segment poolings and given
/// no segment or local term, the reference's `clsgsepg`), and which segment each belongs to.
/// Segments are runs of consecutive tokens.
#[derive(Debug, Clone)]
pub struct SegmentLayout {
    batch: usize,
    len: usize,
    /// `(B, L, 1)` 1 at tokens, 0 at padding, with the tokens per row `(B, 1, 1)`, the
    /// additive score mask `(B, 1, 1, L)` and the fill `(B, L, 1)` (0 or [`MASKED_VALUE`]).
    padding: Option<Padding>,
    /// `(B, L, 1)` 1 at tokens that are not special, 0 at special tokens.
    not_special: Option<Tensor>,
    /// The local pooling's input mask `(B, L, 1)` and fill: padding and special tokens out.
    local_keep: Option<(Tensor, Tensor)>,
    /// Shifts of the segmented max-scan with their penalties `(B, L, 1)`: 0 where token `l`
    /// and token `l - s` (`prefix`) or `l + s` (`suffix`) share a segment, `-1e30` elsewhere.
    prefix: Vec<(usize, Tensor)>,
    suffix: Vec<(usize, Tensor)>,
}

#[derive(Debug, Clone)]
struct Padding {
    valid: Tensor,
    count: Tensor,
    score_bias: Tensor,
    fill: Tensor,
}

impl SegmentLayout {
    /// The Long Range Arena variant's fixed chunks for `batch` sequences of `len` tokens:
    /// token `t` is in segment `t / (len / segment_num + 1)` (so there are often fewer than
    /// `segment_num` segments, the last one shorter); `mask` `(B, L)` marks padding with
    /// values below 0.5, as the reference reads it. No special tokens.
    pub fn chunks(
        batch: usize,
        len: usize,
        segment_num: usize,
        mask: Option<&Tensor>,
        device: &Device,
    ) -> Result<Self> {
        if segment_num == 0 {
            return Err(config_error("ponet", "segment_num must be positive".into()));
        }
        let seg_len = len / segment_num + 1;
        let segments: Vec<u32> = (0..batch)
            .flat_map(|_| (0..len).map(|t| (t / seg_len) as u32))
            .collect();
        let valid = mask
            .map(|m| -> Result<Vec<bool>> {
                if m.dims() != [batch, len] {
                    return Err(config_error(
                        "ponet",
                        format!(
                            "the mask must be (batch, length) = ({batch}, {len}), got {:?}",
                            m.dims()
                        ),
                    ));
                }
                let v = m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                Ok(v.into_iter().map(|x| x >= 0.5).collect())
            })
            .transpose()?;
        Self::new(batch, len, &segments, valid.as_deref(), None, device)
    }

    /// A layout from host data for `batch` rows of `len` tokens, each slice row-major
    /// `(B, L)`: `segments` numbers each token's segment (non-decreasing along a row, so that
    /// segments are runs); `valid` is false at padding (all tokens valid when `None`; a row
    /// needs at least one); `special` is true at special tokens (none when `None`).
    pub fn new(
        batch: usize,
        len: usize,
        segments: &[u32],
        valid: Option<&[bool]>,
        special: Option<&[bool]>,
        device: &Device,
    ) -> Result<Self> {
        let n = batch * len;
        let bad = |msg: String| Err(config_error("ponet", msg));
        if batch == 0 || len == 0 {
            return bad(format!(
                "batch and length must be positive, got ({batch}, {len})"
            ));
        }
        if segments.len() != n
            || valid.is_some_and(|v| v.len() != n)
            || special.is_some_and(|s| s.len() != n)
        {
            return bad(format!(
                "segments, validity and special flags must each hold batch * length = {n} values"
            ));
        }
        for (b, row) in segments.chunks(len).enumerate() {
            if row.windows(2).any(|w| w[1] < w[0]) {
                return bad(format!(
                    "segment indices must not decrease along a row (row {b})"
                ));
            }
        }
        if let Some(v) = valid {
            if let Some(b) = v.chunks(len).position(|row| !row.contains(&true)) {
                return bad(format!("row {b} of the attention mask has no tokens"));
            }
        }
        let column = |values: Vec<f32>| Tensor::from_vec(values, (batch, len, 1), device);
        let ones = |flags: &[bool]| -> Vec<f32> { flags.iter().map(|&f| f32::from(u8::from(f))).collect() };
        let fill_of = |keep: &[f32]| -> Vec<f32> {
            keep.iter().map(|&k| (1.0 - k) * MASKED_VALUE as f32).collect()
        };
        let padding = valid
            .map(|v| -> Result<Padding> {
                let keep = ones(v);
                let counts: Vec<f32> = keep.chunks(len).map(|r| r.iter().sum()).collect();
                let bias: Vec<f32> = fill_of(&keep);
                Ok(Padding {
                    valid: column(keep.clone())?,
                    count: Tensor::from_vec(counts, (batch, 1, 1), device)?,
                    score_bias: Tensor::from_vec(bias.clone(), (batch, 1, 1, len), device)?,
                    fill: column(bias)?,
                })
            })
            .transpose()?;
        let not_special = special
            .map(|s| column(s.iter().map(|&f| f32::from(u8::from(!f))).collect()))
            .transpose()?;
        let local_keep = if valid.is_some() || special.is_some() {
            let keep: Vec<f32> = (0..n)
                .map(|i| {
                    let ok = valid.is_none_or(|v| v[i]) && special.is_none_or(|s| !s[i]);
                    f32::from(u8::from(ok))
                })
                .collect();
            let fill = fill_of(&keep);
            Some((column(keep)?, column(fill)?))
        } else {
            None
        };
        let longest = segments
            .chunks(len)
            .flat_map(|row| row.chunk_by(|a, b| a == b).map(<[u32]>::len))
            .max()
            .unwrap_or(1);
        let (mut prefix, mut suffix) = (Vec::new(), Vec::new());
        let mut s = 1;
        while s < longest {
            let penalty = |ahead: bool| -> Vec<f32> {
                (0..n)
                    .map(|i| {
                        let (b, l) = (i / len, i % len);
                        let other = if ahead { l + s } else { l.wrapping_sub(s) };
                        let same = other < len && segments[b * len + other] == segments[i];
                        if same {
                            0.0
                        } else {
                            ACROSS
                        }
                    })
                    .collect()
            };
            prefix.push((s, column(penalty(false))?));
            suffix.push((s, column(penalty(true))?));
            s *= 2;
        }
        Ok(Self {
            batch,
            len,
            padding,
            not_special,
            local_keep,
            prefix,
            suffix,
        })
    }

    /// `(B, L)`, the batch and length the layout describes.
    pub fn dims(&self) -> (usize, usize) {
        (self.batch, self.len)
    }

    /// The channel-wise max of `x` `(B, L, C)` over each token's segment, at every token.
    pub fn segment_max(&self, x: &Tensor) -> Result<Tensor> {
        let l = self.len;
        let mut fwd = x.clone();
        for (s, penalty) in &self.prefix {
            let shifted = Tensor::cat(&[fwd.narrow(1, 0, *s)?, fwd.narrow(1, 0, l - s)?], 1)?;
            fwd = fwd.maximum(&shifted.broadcast_add(penalty)?)?;
        }
        let mut bwd = x.clone();
        for (s, penalty) in &self.suffix {
            let shifted = Tensor::cat(&[bwd.narrow(1, *s, l - s)?, bwd.narrow(1, l - s, *s)?], 1)?;
            bwd = bwd.maximum(&shifted.broadcast_add(penalty)?)?;
        }
        fwd.maximum(&bwd)
    }
}

/// `nn.MaxPool1d(3, stride=1, padding=1)` along the tokens of `(B, L, C)`: the max of each
/// token and its neighbours (the padding never wins).
pub fn local_max3(x: &Tensor) -> Result<Tensor> {
    let l = x.dim(1)?;
    if l == 1 {
        return Ok(x.clone());
    }
    let left = Tensor::cat(&[x.narrow(1, 0, 1)?, x.narrow(1, 0, l - 1)?], 1)?;
    let right = Tensor::cat(&[x.narrow(1, 1, l - 1)?, x.narrow(1, l - 1, 1)?], 1)?;
    x.maximum(&left)?.maximum(&right)
}

/// `x` where `keep` `(B, L, 1)` is 1 and `fill` `(B, L, 1)` (the masked value) where it is 0.
fn masked(x: &Tensor, keep_fill: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    match keep_fill {
        Some((keep, fill)) => x.broadcast_mul(keep)?.broadcast_add(fill),
        None => Ok(x.clone()),
    }
}

/// PoNet's pooling of `(B, L, C)` tokens without the output projection (see the
/// [module docs](self)): five `Linear(C, C)` projections `Q`, `K`, `O`, local and segment,
/// `heads` heads of `C / heads` channels for the global attention pooling. Returns
/// `(B, L, C)`, zero at padding.
#[derive(Debug, Clone)]
pub struct MultiGranularityPooling {
    q: Pointwise,
    k: Pointwise,
    o: Pointwise,
    local: Pointwise,
    segment: Pointwise,
    heads: usize,
}

impl MultiGranularityPooling {
    /// The pooling from its projections, each `(B, L, C) -> (B, L, C)`; `heads` divides `C`.
    pub fn from_parts(
        q: Pointwise,
        k: Pointwise,
        o: Pointwise,
        local: Pointwise,
        segment: Pointwise,
        heads: usize,
    ) -> Self {
        Self {
            q,
            k,
            o,
            local,
            segment,
            heads,
        }
    }

    /// Loads the five `[dim, dim]` projections with biases from `vb` under `names` (`Q`,
    /// `K`, `O`, local, segment).
    pub fn load(dim: usize, heads: usize, names: [&str; 5], vb: &VarBuilder) -> Result<Self> {
        let proj = |name: &str| Pointwise::from_linear(dim, dim, true, MixerLayout::Tokens, vb.pp(name));
        Ok(Self::from_parts(
            proj(names[0])?,
            proj(names[1])?,
            proj(names[2])?,
            proj(names[3])?,
            proj(names[4])?,
            heads,
        ))
    }

    /// Pools `x` `(B, L, C)` laid out as `layout` says into `(B, L, C)`.
    pub fn forward(&self, x: &Tensor, layout: &SegmentLayout) -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        if layout.dims() != (b, l) {
            return Err(config_error(
                "ponet",
                format!(
                    "the segment layout is for (batch, length) = {:?}, the tokens are ({b}, {l})",
                    layout.dims()
                ),
            ));
        }
        let h = self.heads;
        let pad = layout.padding.as_ref();
        let q = self.q.forward(x)?;
        let k = split_heads(&self.k.forward(x)?, h)?;
        let o = self.o.forward(x)?;
        let g = match pad {
            Some(p) => q
                .broadcast_mul(&p.valid)?
                .sum_keepdim(1)?
                .broadcast_div(&p.count)?,
            None => q.mean_keepdim(1)?,
        };
        let g = g.reshape((b, 1, h, c / h))?.transpose(1, 2)?.contiguous()?;
        let scale = ((c / h) as f64).powf(-0.5);
        let mut scores = (g.matmul(&k.t()?.contiguous()?)? * scale)?;
        if let Some(p) = pad {
            scores = scores.broadcast_add(&p.score_bias)?;
        }
        let pooled = softmax_last_dim(&scores)?.matmul(&k)?;
        let pooled = pooled.transpose(1, 2)?.reshape((b, 1, c))?;

        let pad_fill = pad.map(|p| (&p.valid, &p.fill));
        let segment = masked(&self.segment.forward(x)?, pad_fill)?;
        let local_fill = layout.local_keep.as_ref().map(|(k, f)| (k, f));
        let local = masked(&self.local.forward(x)?, local_fill)?;
        let mut local = local_max3(&local)?;
        let mut segment = layout.segment_max(&segment)?;
        if let Some(keep) = &layout.not_special {
            segment = segment.broadcast_mul(keep)?;
            local = local.broadcast_mul(keep)?;
        }
        let y = (segment.broadcast_add(&pooled)? * o)?.add(&local)?;
        match pad {
            Some(p) => y.broadcast_mul(&p.valid),
            None => Ok(y),
        }
    }
}

/// The generic PoNet token mixer on `(B, N, C)` tokens (the reference's LRA `Attention` with
/// `attn_type` `"ponet"`): [`MultiGranularityPooling`] over fixed chunks (see
/// [`SegmentLayout::chunks`]) followed by the output projection `ff`. Checkpoint names
/// `W_q`, `W_k`, `W_v`, `W_local`, `W_segment`, `ff` (all `Linear(C, C)` with bias).
#[derive(Debug, Clone)]
pub struct PoNetMixer {
    pooling: MultiGranularityPooling,
    proj: Pointwise,
    segment_num: usize,
}

impl PoNetMixer {
    /// Loads the mixer for `dim` channels in `heads` heads, pooling over `segment_num`
    /// chunks.
    pub fn new(dim: usize, heads: usize, segment_num: usize, vb: VarBuilder) -> Result<Self> {
        let names = ["W_q", "W_k", "W_v", "W_local", "W_segment"];
        Ok(Self {
            pooling: MultiGranularityPooling::load(dim, heads, names, &vb)?,
            proj: Pointwise::from_linear(dim, dim, true, MixerLayout::Tokens, vb.pp("ff"))?,
            segment_num,
        })
    }

    /// The mixing term of `x` `(B, N, C)` with `mask` `(B, N)` (values below 0.5 mark
    /// padding, which gets a zero pooling), `(B, N, C)`.
    pub fn forward_masked(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let layout = SegmentLayout::chunks(b, n, self.segment_num, mask, x.device())?;
        self.proj.forward(&self.pooling.forward(x, &layout)?)
    }
}

impl TokenMixer for PoNetMixer {
    fn name(&self) -> &'static str {
        "ponet"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::Tokens
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_masked(x, None)
    }
}

/// Config of the [`PoNetMixer`]; JSON `{"type": "ponet", "head_dim": 32, "segment_num": 32}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoNetMixerConfig {
    /// Channels per head of the global attention pooling: a stage of `C` channels has
    /// `max(C / head_dim, 1)` heads, which must divide `C`.
    pub head_dim: usize,
    /// The reference's `segment_num`: chunks are `N / segment_num + 1` tokens long.
    pub segment_num: usize,
}

impl Default for PoNetMixerConfig {
    /// The LRA image task's: head dim 32, `segment_num` 32.
    fn default() -> Self {
        Self {
            head_dim: 32,
            segment_num: 32,
        }
    }
}

impl PoNetMixerConfig {
    /// The heads of a stage of `dim` channels.
    pub fn heads(&self, dim: usize) -> usize {
        (dim / self.head_dim.max(1)).max(1)
    }
}

impl MixerSpec for PoNetMixerConfig {
    fn kind(&self) -> &'static str {
        "ponet"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        let hd = self.head_dim;
        if hd == 0 || hd > 4096 || dim == 0 || !dim.is_multiple_of(self.heads(dim)) {
            return Err(config_error(
                "ponet",
                format!(
                    "head_dim must be in 1..=4096 and give a head count dividing dim, got {hd} \
                     and {dim}"
                ),
            ));
        }
        if self.segment_num == 0 || self.segment_num > 1 << 16 {
            return Err(config_error(
                "ponet",
                format!(
                    "segment_num must be in 1..=65536, got {}",
                    self.segment_num
                ),
            ));
        }
        Ok(())
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(PoNetMixer::new(
            dim,
            self.heads(dim),
            self.segment_num,
            vb,
        )?))
    }

    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let (n, d) = ((h * w) as u64, dim as u64);
        6 * n * d * d + 2 * n * d
    }
}
