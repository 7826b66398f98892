//! TransNeXt's token mixers (Dai Shi, CVPR 2024, arXiv 2311.17132; DaiShiResearch/TransNeXt
//! `classification/attention_native.py` `AggregatedAttention` and `classification/transnext.py`
//! `Attention`): aggregated attention — every query attends, in one softmax, to its 3x3
//! neighbourhood and to an average-pooled summary of the whole map — and, where the pooling ratio
//! is 1, full attention; both with length-scaled cosine similarity, a learned query embedding and
//! a continuous position bias from a small MLP on log-spaced relative coordinates.
//!
//! The reference builds its masks, length scales and position-bias tables for one input
//! resolution; tokenmix builds them for the grid each call runs at (kept for the last grid while
//! no weight trains), with the coordinates normalised by the pre-training grid as the reference
//! does, so the two agree at the reference's resolution and tokenmix also runs any other size.
//! The neighbourhood products are [`tokenmix_kernels::neighborhood_logits`] and
//! [`tokenmix_kernels::neighborhood_aggregate`]: no unfolded copy of the keys and values.

use std::sync::Mutex;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::layers::{separable_product, softplus, split_heads, Norm, Pointwise};
use crate::ninformer::TORCH_LAYER_NORM;
use crate::{config_error, MixerLayout, MixerSpec, TokenMixer};

/// `x / max(|x|_2, 1e-12)` over the last axis (torch's `F.normalize`).
fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    crate::layers::in_f32(x, |x| {
        // Clamped before the square root, so an all-zero row has a zero (not NaN) gradient.
        let norm = x.sqr()?.sum_keepdim(D::Minus1)?.maximum(1e-24)?.sqrt()?;
        x.broadcast_div(&norm)
    })
}


/// The rows averaged by `nn.AdaptiveAvgPool1d` from `n` inputs into output `i` of `out`.
fn adaptive_window(n: usize, out: usize, i: usize) -> std::ops::Range<usize> {
    (i * n / out)..((i + 1) * n).div_ceil(out)
}

/// `[out, n]` matrix of `nn.AdaptiveAvgPool1d(out)` on an `n`-long axis.
fn adaptive_pool_matrix(n: usize, out: usize, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; out * n];
    for i in 0..out {
        let window = adaptive_window(n, out, i);
        let weight = 1.0 / window.len() as f32;
        window.for_each(|j| m[i * n + j] = weight);
    }
    Tensor::from_vec(m, (out, n), device)
}

/// `nn.AdaptiveAvgPool2d((oh, ow))` of a channel-last map `(B, H, W, C)`, as two products.
fn adaptive_avg_pool(x: &Tensor, (oh, ow): (usize, usize)) -> Result<Tensor> {
    let (_, h, w, _) = x.dims4()?;
    let rows = adaptive_pool_matrix(h, oh, x.device())?.to_dtype(x.dtype())?;
    let cols = adaptive_pool_matrix(w, ow, x.device())?.to_dtype(x.dtype())?;
    separable_product(x, &rows, &cols)
}

/// The inputs of TransNeXt's continuous position bias for queries on a `query` grid and keys on
/// a `key` grid (the key axis positions are the adaptive averages of the query positions, as
/// the reference's `get_relative_position_cpb`), normalised by a `pretrain` grid: the distinct
/// log-spaced coordinates `[T, 2]` and, for every (query, key) pair in row-major order, its row
/// of that table.
fn position_bias_inputs(
    query: (usize, usize),
    key: (usize, usize),
    pretrain: (usize, usize),
) -> (Vec<f32>, Vec<u32>) {
    /// The distinct relative coordinates along one axis and each (query, key) pair's index.
    fn axis(q: usize, k: usize, pretrain: usize) -> (Vec<f32>, Vec<usize>) {
        let key_pos: Vec<f32> = (0..k)
            .map(|i| {
                let w = adaptive_window(q, k, i);
                w.clone().map(|j| j as f32).sum::<f32>() / w.len() as f32
            })
            .collect();
        // A one-position pre-training grid scales by 1 (the reference divides by zero there).
        let scale = (pretrain as f32 - 1.0).max(1.0);
        let mut values: Vec<f32> = Vec::new();
        let index = (0..q)
            .flat_map(|a| key_pos.iter().map(move |&kp| (a as f32 - kp) / scale * 8.0))
            .map(|r| match values.iter().position(|v| v.to_bits() == r.to_bits()) {
                Some(i) => i,
                None => {
                    values.push(r);
                    values.len() - 1
                }
            })
            .collect();
        let log_spaced = values
            .iter()
            .map(|&r| r.signum() * (r.abs() + 1.0).log2() / 3.0)
            .map(|r| if r == 0.0 { 0.0 } else { r })
            .collect();
        (log_spaced, index)
    }
    let (rows, row_index) = axis(query.0, key.0, pretrain.0);
    let (cols, col_index) = axis(query.1, key.1, pretrain.1);
    let table = rows
        .iter()
        .flat_map(|&r| cols.iter().flat_map(move |&c| [r, c]))
        .collect();
    let (qh, qw, kh, kw) = (query.0, query.1, key.0, key.1);
    let mut index = Vec::with_capacity(qh * qw * kh * kw);
    for a in 0..qh {
        for c in 0..qw {
            for b in 0..kh {
                for d in 0..kw {
                    let r = row_index[a * kh + b];
                    let col = col_index[c * kw + d];
                    index.push((r * cols.len() + col) as u32);
                }
            }
        }
    }
    (table, index)
}

/// TransNeXt's continuous position bias: `cpb_fc2(relu(cpb_fc1(coords)))` (`2 -> 512 -> heads`)
/// gathered into `(heads, Nq, Nk)`; kept for the last grid while its weights are constants.
#[derive(Debug)]
struct PositionBias {
    fc1: Pointwise,
    fc2: Pointwise,
    heads: usize,
    last: Mutex<Option<(GridKey, Tensor)>>,
}

type GridKey = ((usize, usize), (usize, usize), (usize, usize));

impl PositionBias {
    fn new(heads: usize, vb: VarBuilder) -> Result<Self> {
        let linear = |i, o, vb| Pointwise::from_linear(i, o, true, MixerLayout::Tokens, vb);
        Ok(Self {
            fc1: linear(2, 512, vb.pp("cpb_fc1"))?,
            fc2: linear(512, heads, vb.pp("cpb_fc2"))?,
            heads,
            last: Mutex::new(None),
        })
    }

    fn bias(&self, key: GridKey, device: &Device, dtype: DType) -> Result<Tensor> {
        let trainable = self.fc1.trainable() || self.fc2.trainable();
        if !trainable {
            if let Some((k, t)) = self.last.lock().map_err(poisoned)?.as_ref() {
                if *k == key {
                    return Ok(t.clone());
                }
            }
        }
        let (query, keys, pretrain) = key;
        let (table, index) = position_bias_inputs(query, keys, pretrain);
        let rows = table.len() / 2;
        let coords = Tensor::from_vec(table, (rows, 2), device)?.to_dtype(dtype)?;
        let per_row = self.fc2.forward(&self.fc1.forward(&coords)?.relu()?)?;
        let index = Tensor::from_vec(index, query.0 * query.1 * keys.0 * keys.1, device)?;
        let bias = per_row
            .t()?
            .contiguous()?
            .index_select(&index, 1)?
            .reshape((self.heads, query.0 * query.1, keys.0 * keys.1))?;
        if !trainable {
            *self.last.lock().map_err(poisoned)? = Some((key, bias.clone()));
        }
        Ok(bias)
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> candle_core::Error {
    candle_core::Error::msg("aggregated_attention: a thread panicked while holding its bias cache")
}



/// `(B, heads, N, d)` to `(B, N, heads * d)`.
fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, n, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, n, h * d))
}

/// The parts both attentions share: query scaling, output projection, position bias.
#[derive(Debug)]
struct Common {
    /// `softplus(temperature)` is computed per call from `temperature` `[heads, 1, 1]`.
    temperature: Tensor,
    /// `[heads, 1, head_dim]`.
    query_embedding: Tensor,
    proj: Pointwise,
    bias: PositionBias,
    heads: usize,
}

impl Common {
    fn new(cfg: &AggregatedAttentionConfig, dim: usize, vb: &VarBuilder) -> Result<Self> {
        let heads = cfg.num_heads;
        Ok(Self {
            temperature: vb.get((heads, 1, 1), "temperature")?,
            query_embedding: vb.get((heads, 1, dim / heads), "query_embedding")?,
            proj: Pointwise::from_linear(dim, dim, true, MixerLayout::Tokens, vb.pp("proj"))?,
            bias: PositionBias::new(heads, vb.clone())?,
            heads,
        })
    }

    /// `(normalize(q) + query_embedding) * softplus(temperature) * length_scale`, with the
    /// normalized queries; `length_scale` broadcasts against `(B, heads, N, d)`.
    fn scaled_queries(&self, q: &Tensor, length_scale: &Tensor) -> Result<(Tensor, Tensor)> {
        let q_norm = l2_normalize(q)?;
        let scaled = q_norm
            .broadcast_add(&self.query_embedding)?
            .broadcast_mul(&softplus(&self.temperature)?)?
            .broadcast_mul(length_scale)?;
        Ok((q_norm, scaled))
    }
}

/// TransNeXt's full attention (`transnext.py` `Attention`, the stages with pooling ratio 1) on a
/// channel-last map `(B, H, W, C)`: `qkv` (`C -> 3C`, rows `[q | k | v]`, heads in order),
/// `softmax(((norm(q) + query_embedding) * softplus(temperature) * ln(N)) norm(k)^T + bias) v`,
/// `proj`. Checkpoint names as the reference's.
#[derive(Debug)]
struct FullAttention {
    qkv: Pointwise,
    common: Common,
    pretrain: Option<(usize, usize)>,
}

impl FullAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let n = h * w;
        let heads = self.common.heads;
        let qkv = self.qkv.forward(&x.reshape((b, n, c))?)?;
        let part = |i: usize| split_heads(&qkv.narrow(2, i * c, c)?, heads);
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scale = Tensor::new((n as f32).ln(), x.device())?.to_dtype(x.dtype())?;
        let (_, q) = self.common.scaled_queries(&q, &scale)?;
        let grid = (h, w);
        let key = (grid, grid, self.pretrain.unwrap_or(grid));
        let bias = self.common.bias.bias(key, x.device(), x.dtype())?;
        let logits = q
            .matmul(&l2_normalize(&k)?.transpose(2, 3)?)?
            .broadcast_add(&bias)?;
        let attn = crate::layers::softmax_last_dim(&logits)?;
        let y = merge_heads(&attn.matmul(&v)?)?;
        self.common.proj.forward(&y)?.reshape((b, h, w, c))
    }
}

/// TransNeXt's aggregated attention (`attention_native.py` `AggregatedAttention`) on a
/// channel-last map `(B, H, W, C)`, per head: queries `q`, local keys/values from `kv`
/// (`C -> 2C`, `[k | v]`) at each pixel's `window x window` neighbourhood (zero-padded, masked),
/// pooled keys/values from `kv(LN(pool(GELU(sr(x)))))` (`sr` a 1x1 convolution, adaptive average
/// pooling to `H / sr_ratio x W / sr_ratio` or `fixed_pool_size`), one softmax over
/// `[q_s . k_local + relative_pos_bias_local | q_s . k_pool + position bias]` with
/// `q_s = (norm(q) + query_embedding) * softplus(temperature) * ln(local length + pool length)`
/// and normalized keys; the local weights get the dynamic bias
/// `norm(q) . learnable_tokens + learnable_bias` before they weight the values; the two
/// aggregates are summed and projected (`proj`). Checkpoint names as the reference's.
#[derive(Debug)]
struct LocalPooledAttention {
    q: Pointwise,
    kv: Pointwise,
    sr: Pointwise,
    norm: Norm,
    /// `[heads, window²]`.
    relative_pos_bias_local: Tensor,
    /// `[heads, head_dim, window²]`.
    learnable_tokens: Tensor,
    /// `[heads, 1, window²]`.
    learnable_bias: Tensor,
    common: Common,
    window: usize,
    sr_ratio: usize,
    fixed_pool_size: Option<usize>,
    pretrain: Option<(usize, usize)>,
}

impl LocalPooledAttention {
    /// The pooled grid for an `h x w` map.
    fn pool_grid(&self, h: usize, w: usize) -> (usize, usize) {
        match self.fixed_pool_size {
            Some(p) => (p, p),
            None => ((h / self.sr_ratio).max(1), (w / self.sr_ratio).max(1)),
        }
    }

    /// `ln(valid neighbours + pool_len)` for every token, `[N, 1]`.
    fn length_scale(&self, h: usize, w: usize, pool_len: usize, device: &Device) -> Result<Tensor> {
        let r = self.window / 2;
        let span = |i: usize, n: usize| (i + r).min(n - 1) + 1 - i.saturating_sub(r);
        let scale: Vec<f32> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (span(y, h) * span(x, w) + pool_len) as f32))
            .map(f32::ln)
            .collect();
        Tensor::from_vec(scale, (h * w, 1), device)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let (n, heads, win) = (h * w, self.common.heads, self.window);
        if let Some(p) = self.fixed_pool_size.filter(|&p| p > h.min(w)) {
            return Err(config_error(
                "aggregated_attention",
                format!("fixed_pool_size {p} is larger than the {h}x{w} map it pools"),
            ));
        }
        let tokens = x.reshape((b, n, c))?;
        let pool = self.pool_grid(h, w);
        let pool_len = pool.0 * pool.1;
        let scale = self
            .length_scale(h, w, pool_len, x.device())?
            .to_dtype(x.dtype())?;
        let q = split_heads(&self.q.forward(&tokens)?, heads)?;
        let (q_norm, q) = self.common.scaled_queries(&q, &scale)?;

        let kv = self.kv.forward(&tokens)?;
        let k_local = l2_normalize(&split_heads(&kv.narrow(2, 0, c)?, heads)?)?;
        let v_local = split_heads(&kv.narrow(2, c, c)?, heads)?;
        let local = tokenmix_kernels::neighborhood_logits(&q, &k_local, h, w, win)?
            .broadcast_add(&self.relative_pos_bias_local.unsqueeze(1)?)?;

        let pooled = adaptive_avg_pool(&tokenmix_kernels::gelu(&self.sr.forward(x)?)?, pool)?;
        let pooled = self.norm.forward(&pooled.reshape((b, pool_len, c))?)?;
        let kv_pool = self.kv.forward(&pooled)?;
        let k_pool = l2_normalize(&split_heads(&kv_pool.narrow(2, 0, c)?, heads)?)?;
        let v_pool = split_heads(&kv_pool.narrow(2, c, c)?, heads)?;
        let key = ((h, w), pool, self.pretrain.unwrap_or((h, w)));
        let bias = self.common.bias.bias(key, x.device(), x.dtype())?;
        let pooled_logits = q.matmul(&k_pool.transpose(2, 3)?)?.broadcast_add(&bias)?;

        let logits = Tensor::cat(&[&local, &pooled_logits], 3)?;
        let attn = crate::layers::softmax_last_dim(&logits)?;
        let (attn_local, attn_pool) = (attn.narrow(3, 0, win * win)?, attn.narrow(3, win * win, pool_len)?);
        let dynamic = q_norm
            .broadcast_matmul(&self.learnable_tokens)?
            .broadcast_add(&self.learnable_bias)?;
        let local_weights = (dynamic + attn_local)?;
        let y_local = tokenmix_kernels::neighborhood_aggregate(&local_weights, &v_local, h, w, win)?;
        let y_pool = attn_pool.contiguous()?.matmul(&v_pool)?;
        let y = merge_heads(&(y_local + y_pool)?)?;
        self.common.proj.forward(&y)?.reshape((b, h, w, c))
    }
}

/// TransNeXt's attention mixer on channel-last maps `(B, H, W, C)`: aggregated attention, or full
/// attention where `sr_ratio` is 1 (as the reference's `Block` picks them).
#[derive(Debug)]
pub struct AggregatedAttention {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Full(Box<FullAttention>),
    Aggregated(Box<LocalPooledAttention>),
}

impl AggregatedAttention {
    /// Loads the mixer for `dim` channels under the reference's names.
    pub fn new(cfg: &AggregatedAttentionConfig, dim: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate(dim)?;
        let common = Common::new(cfg, dim, &vb)?;
        let linear = |i, o, bias, vb| Pointwise::from_linear(i, o, bias, MixerLayout::Tokens, vb);
        let kind = if cfg.sr_ratio == 1 {
            Kind::Full(Box::new(FullAttention {
                qkv: linear(dim, 3 * dim, cfg.qkv_bias, vb.pp("qkv"))?,
                common,
                pretrain: cfg.pretrain_size,
            }))
        } else {
            let (heads, w2) = (cfg.num_heads, cfg.window_size * cfg.window_size);
            Kind::Aggregated(Box::new(LocalPooledAttention {
                q: linear(dim, dim, cfg.qkv_bias, vb.pp("q"))?,
                kv: linear(dim, 2 * dim, cfg.qkv_bias, vb.pp("kv"))?,
                sr: Pointwise::conv1x1(dim, dim, true, MixerLayout::ChannelsLast, vb.pp("sr"))?,
                norm: TORCH_LAYER_NORM.build(dim, MixerLayout::Tokens, vb.pp("norm"))?,
                relative_pos_bias_local: vb.get((heads, w2), "relative_pos_bias_local")?,
                learnable_tokens: vb.get((heads, dim / heads, w2), "learnable_tokens")?,
                learnable_bias: vb.get((heads, 1, w2), "learnable_bias")?,
                common,
                window: cfg.window_size,
                sr_ratio: cfg.sr_ratio,
                fixed_pool_size: cfg.fixed_pool_size,
                pretrain: cfg.pretrain_size,
            }))
        };
        Ok(Self { kind })
    }
}

impl TokenMixer for AggregatedAttention {
    fn name(&self) -> &'static str {
        "aggregated_attention"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::ChannelsLast
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.kind {
            Kind::Full(a) => a.forward(x),
            Kind::Aggregated(a) => a.forward(x),
        }
    }
}

/// Config of the [`AggregatedAttention`] mixer, named as the reference's constructor
/// arguments; JSON `{"type": "aggregated_attention", "num_heads": 2, "window_size": 3,
/// "qkv_bias": true, "sr_ratio": 8, "fixed_pool_size": null, "pretrain_size": null}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatedAttentionConfig {
    /// Number of heads (dividing the channels).
    pub num_heads: usize,
    /// Side of the local window, odd.
    pub window_size: usize,
    /// Whether `q`, `kv` (or `qkv`) have biases.
    #[serde(default)]
    pub qkv_bias: bool,
    /// Pooling ratio of the summary keys; 1 means full attention.
    pub sr_ratio: usize,
    /// A fixed pooled grid side instead of `H / sr_ratio` (at most the map's shorter side).
    #[serde(default)]
    pub fixed_pool_size: Option<usize>,
    /// The grid `(height, width)` the position bias was trained at (the reference's
    /// `pretrain_size` divided by the stage's stride), which scales its coordinates (by
    /// `8 / (side - 1)`; by 8 for a one-position side, where the reference divides by zero);
    /// `None` means the grid each call runs at.
    #[serde(default)]
    pub pretrain_size: Option<(usize, usize)>,
}

impl Default for AggregatedAttentionConfig {
    /// TransNeXt-Micro's first stage: 2 heads, 3x3 window, biases, pooling ratio 8.
    fn default() -> Self {
        Self {
            num_heads: 2,
            window_size: 3,
            qkv_bias: true,
            sr_ratio: 8,
            fixed_pool_size: None,
            pretrain_size: None,
        }
    }
}

impl AggregatedAttentionConfig {
    fn pool_len(&self, h: usize, w: usize) -> usize {
        match self.fixed_pool_size {
            Some(p) => p * p,
            None => (h / self.sr_ratio.max(1)).max(1) * (w / self.sr_ratio.max(1)).max(1),
        }
    }
}

impl MixerSpec for AggregatedAttentionConfig {
    fn kind(&self) -> &'static str {
        "aggregated_attention"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        let fail = |msg: String| Err(config_error("aggregated_attention", msg));
        let heads = self.num_heads;
        if heads == 0 || heads > 4096 || dim == 0 || !dim.is_multiple_of(heads) {
            return fail(format!(
                "num_heads must be in 1..=4096 and divide dim, got {heads} for {dim}"
            ));
        }
        if self.sr_ratio == 0 || self.sr_ratio > 1024 {
            return fail(format!("sr_ratio must be in 1..=1024, got {}", self.sr_ratio));
        }
        let ws = self.window_size;
        if self.sr_ratio > 1 && (ws.is_multiple_of(2) || ws > 15) {
            return fail(format!("window_size must be odd and at most 15, got {ws}"));
        }
        if let Some(p) = self.fixed_pool_size {
            if p == 0 || p > 1024 {
                return fail(format!("fixed_pool_size must be in 1..=1024, got {p}"));
            }
        }
        if let Some((h, w)) = self.pretrain_size {
            if h == 0 || w == 0 || h > 16_384 || w > 16_384 {
                return fail(format!(
                    "pretrain_size must be in 1..=16384 per side, got {h}x{w}"
                ));
            }
        }
        Ok(())
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(AggregatedAttention::new(self, dim, vb)?))
    }

    /// The products and attention sums; the position-bias MLP is left out (a constant at
    /// inference, computed once per grid).
    fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        let (n, c) = ((h * w) as u64, dim as u64);
        if self.sr_ratio == 1 {
            return n * c * 3 * c + 2 * n * n * c + n * c * c;
        }
        let p = self.pool_len(h, w) as u64;
        let w2 = (self.window_size * self.window_size) as u64;
        let projections = n * c * c + n * c * 2 * c + n * c * c + p * c * 2 * c + n * c * c;
        // Local logits, dynamic bias and aggregation (window² per channel each); pooled ones.
        projections + 3 * n * c * w2 + 2 * n * p * c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-position pre-training grid (a 32x32 input's last stage) gives finite coordinates.
    #[test]
    fn a_one_position_pretrain_grid_scales_by_one() {
        let (table, index) = position_bias_inputs((3, 2), (3, 2), (1, 1));
        assert!(table.iter().all(|v| v.is_finite()), "{table:?}");
        assert_eq!(index.len(), 36);
        // Row 0 against row 2: a distance of 2 at scale 8, log-spaced: log2(17) / 3.
        let want = 17f32.log2() / 3.0;
        assert!(table.iter().any(|&v| (v - want).abs() < 1e-6), "{table:?}");
    }

    /// The coordinates are the reference's: positions relative to the adaptive-pooled key
    /// positions, times 8 / (pretrain side - 1), then sign * log2(|x| + 1) / 3.
    #[test]
    fn position_bias_inputs_follow_the_reference() {
        let (table, index) = position_bias_inputs((4, 1), (2, 1), (5, 1));
        // Key rows average query rows {0, 1} and {2, 3}: 0.5 and 2.5.
        let coord = |d: f32| {
            let r = d / 4.0 * 8.0;
            r.signum() * (r.abs() + 1.0).log2() / 3.0
        };
        for (q, k) in [(0, 0), (0, 1), (3, 0), (3, 1)] {
            let row = index[q * 2 + k] as usize;
            let want = coord(q as f32 - [0.5, 2.5][k]);
            assert!((table[2 * row] - want).abs() < 1e-6, "q {q} k {k}");
            assert_eq!(table[2 * row + 1], 0.0);
        }
    }
}

#[cfg(test)]
mod gradient_tests {
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    use super::*;

    /// With every other weight constant, the key projection (which reaches the output only
    /// through the shared softmax; the fused candle-nn softmax would cut it) still gets a
    /// gradient in its key rows, for both attention kinds.
    #[test]
    fn keys_get_gradients_through_an_otherwise_frozen_attention() {
        for (sr_ratio, name) in [(2, "kv.weight"), (1, "qkv.weight")] {
            let cfg = AggregatedAttentionConfig {
                sr_ratio,
                pretrain_size: Some((3, 4)),
                ..Default::default()
            };
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            AggregatedAttention::new(&cfg, 8, vb).unwrap();
            let mut key = None;
            let weights: std::collections::HashMap<String, Tensor> = varmap
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    let t = Tensor::randn(0f32, 0.5, v.shape(), &Device::Cpu).unwrap();
                    if k == name {
                        let var = Var::from_tensor(&t).unwrap();
                        key = Some(var.clone());
                        return (k.clone(), var.as_tensor().clone());
                    }
                    (k.clone(), t)
                })
                .collect();
            let key = key.unwrap();
            let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
            let mixer = AggregatedAttention::new(&cfg, 8, vb).unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, 5, 6, 8), &Device::Cpu).unwrap();
            let y = mixer.forward(&x).unwrap();
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            // The key rows: the second block of 8 in `qkv`, the first in `kv`.
            let first = if sr_ratio == 1 { 8 } else { 0 };
            let g = grads.get(key.as_tensor()).unwrap().narrow(0, first, 8).unwrap();
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(norm.is_finite() && norm > 0.0, "sr_ratio {sr_ratio}: {norm}");
        }
    }
}
