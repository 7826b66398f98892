//! PoNet (Tan et al., ICLR 2022) as its authors' code has it (`lxchtan/PoNet` tag v1.0,
//! `models/modeling_ponet.py`): a BERT encoder whose self-attention is replaced by PoNet's
//! multi-granularity pooling ([`MultiGranularityPooling`]), with BERT's embeddings, post-norm
//! residual layers, `[CLS]` pooler and a linear classifier (`PoNetForSequenceClassification`).
//!
//! `config.json` is a BERT config with `model_type` `"ponet"` and PoNet's one key, `clsgsepg`;
//! state-dict names are the reference's (`ponet.embeddings.word_embeddings.weight`,
//! `ponet.encoder.layer.0.attention.self.dense_q.weight`, `ponet.pooler.dense.weight`,
//! `classifier.weight`, ...); the `position_ids` / `token_type_ids` buffers an older checkpoint
//! holds are accepted and unused.
//!
//! Segments come from the token ids as in the reference: `[CLS]` (id [`CLS_ID`]) and `[SEP]`
//! ([`SEP_ID`]) are segments of their own and each run of tokens between them is one; with
//! `clsgsepg` (the default) these special tokens are kept out of the local and segment poolings
//! and get neither term. A row that does not start with `[CLS]` is numbered as the authors'
//! later Hugging Face port numbers it (v1.0 fails on it). Token types are all 0 (the
//! reference's default when none are passed). In training, dropout (`hidden_dropout_prob`,
//! `classifier_dropout`) is applied where the reference applies it.
//!
//! Implemented: `PoNetForSequenceClassification` (its logits; the loss is the caller's) and
//! `PoNetForPreTraining`, the class of the authors' published checkpoint
//! (`chtan/ponet-base-uncased`): BERT's masked-LM head, whose decoder is the word embedding
//! (tied, as the reference ties it: a stored `cls.predictions.decoder.*` copy is not read), and
//! the 3-way sentence-structure head on the pooler. Its directory is read as the hub holds it
//! (`config.json` with `model_type` `"ponet"`, or `"bert"` as an older save may say, and
//! `pytorch_model.bin` or `model.safetensors`). Refused by name: `PoNetForTokenClassification`,
//! the bare `PoNetModel`, untied output embeddings, position embeddings other than
//! `"absolute"`, and activations other than `gelu`, `relu` and `silu`.

use candle_core::{DType, Module, Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use serde_json::{json, Map, Value};
use tokenmix_mixers::layers::{Act, ActKind, Norm, NormConfig, NormKind, Pointwise};
use tokenmix_mixers::ponet::{MultiGranularityPooling, SegmentLayout};
use tokenmix_mixers::MixerLayout;

use super::keys::{architecture, bool_or, f64_or, str_or, usize_or};
use super::{SequenceArchitecture, SequenceConfig, SequenceEntry, SequenceModel, SequenceTask};
use crate::{Error, Result};

/// The id of `[CLS]`, fixed in the reference (BERT's uncased vocabulary).
pub const CLS_ID: u32 = 101;
/// The id of `[SEP]`, fixed in the reference.
pub const SEP_ID: u32 = 102;

const MAX_WIDTH: usize = 1 << 14;
const MAX_LAYERS: usize = 1024;
const MAX_VOCAB: usize = 1 << 22;
const MAX_POSITIONS: usize = 1 << 16;

/// The model class on top of the encoder, as `architectures` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoNetHead {
    /// `PoNetForSequenceClassification`: the `[CLS]` pooler and a linear classifier.
    SequenceClassification,
    /// `PoNetForPreTraining`: the masked-LM head (tied to the word embedding) on every token
    /// and the 3-way sentence-structure head on the pooler.
    PreTraining,
}

impl PoNetHead {
    /// The reference's class name.
    pub fn architecture(self) -> &'static str {
        match self {
            Self::SequenceClassification => "PoNetForSequenceClassification",
            Self::PreTraining => "PoNetForPreTraining",
        }
    }

    fn from_architecture(name: &str) -> std::result::Result<Self, String> {
        match name {
            "PoNetForSequenceClassification" => Ok(Self::SequenceClassification),
            "PoNetForPreTraining" => Ok(Self::PreTraining),
            other => Err(format!(
                "architectures names {other}; tokenmix implements PoNetForSequenceClassification \
                 and PoNetForPreTraining of this family (not PoNetForTokenClassification, \
                 PoNetForMaskedLM or PoNetModel)"
            )),
        }
    }
}

/// The reference's config (BERT's keys plus `clsgsepg`) and the head it names.
#[derive(Debug, Clone, PartialEq)]
pub struct PoNetConfig {
    /// The model class: classifier or pre-training heads.
    pub head: PoNetHead,
    /// Rows of the word embedding.
    pub vocab_size: usize,
    /// Width `D` of every token.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Heads of the global attention pooling (they divide `hidden_size`).
    pub num_attention_heads: usize,
    /// Hidden width of the feed-forward blocks.
    pub intermediate_size: usize,
    /// Activation of the feed-forward blocks.
    pub hidden_act: ActKind,
    /// Dropout after the embeddings and every residual branch, in training.
    pub hidden_dropout_prob: f64,
    /// Kept for the config; the reference never applies it.
    pub attention_probs_dropout_prob: f64,
    /// Rows of the position embedding: the longest input.
    pub max_position_embeddings: usize,
    /// Rows of the token-type embedding (row 0 is used).
    pub type_vocab_size: usize,
    /// Standard deviation of the reference's initialisation.
    pub initializer_range: f64,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f64,
    /// Id of the padding token (the reference zeroes its embedding at initialisation only).
    pub pad_token_id: usize,
    /// Whether special tokens are kept out of the local and segment poolings.
    pub clsgsepg: bool,
    /// Classes of the classifier.
    pub num_labels: usize,
    /// Dropout before the classifier in training; `hidden_dropout_prob` when `None`.
    pub classifier_dropout: Option<f64>,
}

impl Default for PoNetConfig {
    /// The reference's defaults (BERT-base sizes): a classifier with two labels.
    fn default() -> Self {
        Self {
            head: PoNetHead::SequenceClassification,
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: ActKind::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            clsgsepg: true,
            num_labels: 2,
            classifier_dropout: None,
        }
    }
}

/// A checked text input: the ids and mask read to the host, and the pooling's layout.
#[derive(Debug, Clone)]
pub struct TextInput {
    /// `(B, L)`.
    pub dims: (usize, usize),
    /// The pooling layout of the batch (segments, padding, special tokens).
    pub layout: SegmentLayout,
}

fn act_name(kind: ActKind) -> &'static str {
    match kind {
        ActKind::Relu => "relu",
        ActKind::Silu => "silu",
        _ => "gelu",
    }
}

impl PoNetConfig {
    /// `ponet-base-uncased`'s configuration: the authors' pre-trained checkpoint
    /// (`PoNetForPreTraining`, BERT-base sizes, 512 positions).
    pub fn base_uncased() -> Self {
        Self {
            head: PoNetHead::PreTraining,
            ..Self::default()
        }
    }

    /// The classifier of `num_labels` classes on this config's encoder (what fine-tuning a
    /// pre-trained checkpoint builds).
    pub fn classifier(&self, num_labels: usize) -> Self {
        Self {
            head: PoNetHead::SequenceClassification,
            num_labels,
            ..self.clone()
        }
    }

    /// Reads a PoNet `config.json`; absent keys take the reference's defaults, the head is the
    /// one `architectures` names (a classifier when absent), and the number of labels is the
    /// length of `id2label` (else `num_labels`, else 2).
    pub fn from_hf(map: &Map<String, Value>) -> std::result::Result<SequenceConfig, String> {
        Ok(SequenceConfig::new(Self::read(map)?))
    }

    /// Reads a `config.json` whose `model_type` is `"bert"`: only as PoNet's, when its
    /// `architectures` names a PoNet class (the authors' v1.0 code built PoNet on BERT's
    /// config class).
    pub fn from_bert_hf(map: &Map<String, Value>) -> std::result::Result<SequenceConfig, String> {
        match architecture(map) {
            Some(arch) if arch.starts_with("PoNet") => Self::from_hf(map),
            other => Err(format!(
                "model_type \"bert\" is read only as PoNet's config (architectures naming a \
                 PoNet class); this one names {}, and tokenmix has no BERT",
                other.unwrap_or("no architecture")
            )),
        }
    }

    fn read(map: &Map<String, Value>) -> std::result::Result<Self, String> {
        let head = match architecture(map) {
            Some(arch) => PoNetHead::from_architecture(arch)?,
            None => PoNetHead::SequenceClassification,
        };
        if head == PoNetHead::PreTraining && !bool_or(map, "tie_word_embeddings", true)? {
            return Err(
                "tie_word_embeddings false (an MLM decoder of its own) is not \
                        implemented; PoNet's checkpoints tie it to the word embedding"
                    .into(),
            );
        }
        let position = str_or(map, "position_embedding_type", "absolute")?;
        if position.as_deref() != Some("absolute") {
            return Err(format!(
                "position_embedding_type {position:?} is not implemented (only \"absolute\")"
            ));
        }
        let act = str_or(map, "hidden_act", "gelu")?.unwrap_or_default();
        let hidden_act = match act.as_str() {
            "gelu" => ActKind::Gelu,
            "relu" => ActKind::Relu,
            "silu" | "swish" => ActKind::Silu,
            other => {
                return Err(format!(
                    "hidden_act \"{other}\" is not implemented (gelu, relu, silu)"
                ))
            }
        };
        let num_labels = match map.get("id2label") {
            Some(Value::Object(labels)) => labels.len(),
            _ => usize_or(map, "num_labels", 2)?,
        };
        let classifier_dropout = match map.get("classifier_dropout") {
            None | Some(Value::Null) => None,
            Some(_) => Some(f64_or(map, "classifier_dropout", 0.0)?),
        };
        let d = Self::default();
        Ok(Self {
            head,
            vocab_size: usize_or(map, "vocab_size", d.vocab_size)?,
            hidden_size: usize_or(map, "hidden_size", d.hidden_size)?,
            num_hidden_layers: usize_or(map, "num_hidden_layers", d.num_hidden_layers)?,
            num_attention_heads: usize_or(map, "num_attention_heads", d.num_attention_heads)?,
            intermediate_size: usize_or(map, "intermediate_size", d.intermediate_size)?,
            hidden_act,
            hidden_dropout_prob: f64_or(map, "hidden_dropout_prob", d.hidden_dropout_prob)?,
            attention_probs_dropout_prob: f64_or(
                map,
                "attention_probs_dropout_prob",
                d.attention_probs_dropout_prob,
            )?,
            max_position_embeddings: usize_or(
                map,
                "max_position_embeddings",
                d.max_position_embeddings,
            )?,
            type_vocab_size: usize_or(map, "type_vocab_size", d.type_vocab_size)?,
            initializer_range: f64_or(map, "initializer_range", d.initializer_range)?,
            layer_norm_eps: f64_or(map, "layer_norm_eps", d.layer_norm_eps)?,
            pad_token_id: usize_or(map, "pad_token_id", d.pad_token_id)?,
            clsgsepg: bool_or(map, "clsgsepg", true)?,
            num_labels,
            classifier_dropout,
        })
    }

    /// Checks token ids `(B, L)` (u32, each below `vocab_size`, `1 <= L <=
    /// max_position_embeddings`) and an optional attention mask of the same shape (any
    /// numeric dtype, values 0 or 1, at least one 1 per row), and lays the batch out for the
    /// pooling. Nothing model-sized is allocated before the checks pass.
    pub fn check_input(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<TextInput> {
        let dims = ids.dims();
        let max = self.max_position_embeddings;
        if dims.len() != 2 || dims[0] == 0 || dims[1] == 0 || dims[1] > max {
            return Err(Error::Input(format!(
                "expected token ids of shape (batch, length) with length in 1..={max} \
                 (max_position_embeddings), got shape {dims:?}"
            )));
        }
        if ids.dtype() != DType::U32 {
            return Err(Error::Input(format!(
                "token ids must be u32, got {:?}",
                ids.dtype()
            )));
        }
        let (b, l) = (dims[0], dims[1]);
        let host: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        if let Some(bad) = host.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is out of the vocabulary (vocab_size {})",
                self.vocab_size
            )));
        }
        let valid = match mask {
            None => None,
            Some(m) => {
                if m.dims() != dims {
                    return Err(Error::Input(format!(
                        "the attention mask must have the ids' shape {dims:?}, got {:?}",
                        m.dims()
                    )));
                }
                let values: Vec<f32> = m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                if values.iter().any(|&v| v != 0.0 && v != 1.0) {
                    return Err(Error::Input(
                        "the attention mask must hold only 0 (padding) and 1 (token)".into(),
                    ));
                }
                let valid: Vec<bool> = values.iter().map(|&v| v == 1.0).collect();
                if let Some(row) = valid.chunks(l).position(|r| !r.contains(&true)) {
                    return Err(Error::Input(format!(
                        "row {row} of the attention mask has no tokens"
                    )));
                }
                Some(valid)
            }
        };
        let special: Vec<bool> = host
            .iter()
            .map(|&id| id == CLS_ID || id == SEP_ID)
            .collect();
        let segments = segment_index(&host, &special, l);
        let layout = SegmentLayout::new(
            b,
            l,
            &segments,
            valid.as_deref(),
            self.clsgsepg.then_some(special.as_slice()),
            ids.device(),
        )?;
        Ok(TextInput {
            dims: (b, l),
            layout,
        })
    }

    fn classifier_dropout_prob(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }
}

/// The reference's segment of every token of rows of `len` ids: each special token and each
/// run between them is a segment, numbered from 0 in a row that starts with `[CLS]`.
pub fn segment_index(ids: &[u32], special: &[bool], len: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(ids.len());
    for (row, flags) in ids.chunks(len).zip(special.chunks(len)) {
        let mut count = 0u32;
        for (i, &f) in flags.iter().enumerate() {
            count += u32::from(f) + u32::from(i > 0 && flags[i - 1]);
            out.push(count);
        }
        if row[0] == CLS_ID {
            let start = out.len() - len;
            out[start..].iter_mut().for_each(|s| *s -= 1);
        }
    }
    out
}

impl SequenceArchitecture for PoNetConfig {
    fn model_type(&self) -> &'static str {
        "ponet"
    }

    fn architecture(&self) -> &'static str {
        self.head.architecture()
    }

    fn task(&self) -> SequenceTask {
        match self.head {
            PoNetHead::SequenceClassification => SequenceTask::Classify {
                vocab_size: self.vocab_size,
                max_length: self.max_position_embeddings,
                num_labels: self.num_labels,
            },
            PoNetHead::PreTraining => SequenceTask::MaskedLm {
                vocab_size: self.vocab_size,
                max_length: self.max_position_embeddings,
            },
        }
    }

    fn build(&self, vb: VarBuilder) -> CandleResult<Box<dyn SequenceModel>> {
        Ok(match self.head {
            PoNetHead::SequenceClassification => {
                Box::new(PoNetForSequenceClassification::new(self.clone(), vb)?)
            }
            PoNetHead::PreTraining => Box::new(PoNetForPreTraining::new(self.clone(), vb)?),
        })
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let in_range = |name: &str, v: usize, max: usize| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be in 1..={max}, got {v}"))
            }
        };
        in_range("vocab_size", self.vocab_size, MAX_VOCAB)?;
        in_range("hidden_size", self.hidden_size, MAX_WIDTH)?;
        in_range("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS)?;
        in_range("num_attention_heads", self.num_attention_heads, MAX_WIDTH)?;
        in_range("intermediate_size", self.intermediate_size, 4 * MAX_WIDTH)?;
        in_range(
            "max_position_embeddings",
            self.max_position_embeddings,
            MAX_POSITIONS,
        )?;
        in_range("type_vocab_size", self.type_vocab_size, 1 << 10)?;
        in_range("num_labels", self.num_labels, 1 << 16)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size ({}) must be a multiple of num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(format!(
                "layer_norm_eps must be positive, got {}",
                self.layer_norm_eps
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("classifier_dropout", self.classifier_dropout_prob()),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        Ok(())
    }

    fn to_hf_config(&self) -> Value {
        let mut config = json!({
            "architectures": [self.head.architecture()],
            "model_type": "ponet",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": act_name(self.hidden_act),
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "attention_probs_dropout_prob": self.attention_probs_dropout_prob,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute",
            "clsgsepg": self.clsgsepg,
            "classifier_dropout": self.classifier_dropout,
            "tie_word_embeddings": true,
        });
        if self.head == PoNetHead::SequenceClassification {
            let id2label: Map<String, Value> = (0..self.num_labels)
                .map(|i| (i.to_string(), json!(format!("LABEL_{i}"))))
                .collect();
            let label2id: Map<String, Value> = (0..self.num_labels)
                .map(|i| (format!("LABEL_{i}"), json!(i)))
                .collect();
            config["id2label"] = Value::Object(id2label);
            config["label2id"] = Value::Object(label2id);
        }
        config
    }

    fn macs(&self, len: usize) -> u64 {
        let (l, d, i) = (
            len as u64,
            self.hidden_size as u64,
            self.intermediate_size as u64,
        );
        let layer = 6 * l * d * d + 2 * l * d + 2 * l * d * i;
        let head = match self.head {
            PoNetHead::SequenceClassification => d * self.num_labels as u64,
            PoNetHead::PreTraining => l * d * d + l * d * self.vocab_size as u64 + 3 * d,
        };
        self.num_hidden_layers as u64 * layer + d * d + head
    }

    fn ignored_tensor(&self, name: &str) -> bool {
        let tied = self.head == PoNetHead::PreTraining
            && matches!(
                name,
                "cls.predictions.decoder.weight" | "cls.predictions.decoder.bias"
            );
        tied || matches!(
            name,
            "ponet.embeddings.position_ids" | "ponet.embeddings.token_type_ids"
        )
    }

    fn clone_box(&self) -> Box<dyn SequenceArchitecture> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// One encoder layer: pooling, `attention.output.dense` + LayerNorm over the residual, then
/// the feed-forward block `output.dense(act(intermediate.dense(x)))` + LayerNorm.
#[derive(Debug)]
struct PoNetLayer {
    pooling: MultiGranularityPooling,
    attn_out: Pointwise,
    attn_norm: Norm,
    intermediate: Pointwise,
    act: Act,
    output: Pointwise,
    out_norm: Norm,
}

fn dropout(x: &Tensor, p: f64, train: bool) -> CandleResult<Tensor> {
    if train && p > 0.0 {
        candle_nn::ops::dropout(x, p as f32)
    } else {
        Ok(x.clone())
    }
}

impl PoNetLayer {
    fn new(cfg: &PoNetConfig, vb: VarBuilder) -> CandleResult<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        let tokens = MixerLayout::Tokens;
        let norm = NormConfig {
            kind: NormKind::LayerNorm,
            eps: cfg.layer_norm_eps,
            bias: true,
        };
        let attn = vb.pp("attention");
        let names = [
            "dense_q",
            "dense_k",
            "dense_o",
            "dense_local",
            "dense_segment",
        ];
        let pooling =
            MultiGranularityPooling::load(d, cfg.num_attention_heads, names, &attn.pp("self"))?;
        let out = attn.pp("output");
        Ok(Self {
            pooling,
            attn_out: Pointwise::from_linear(d, d, true, tokens, out.pp("dense"))?,
            attn_norm: norm.build(d, tokens, out.pp("LayerNorm"))?,
            intermediate: Pointwise::from_linear(
                d,
                i,
                true,
                tokens,
                vb.pp("intermediate").pp("dense"),
            )?,
            act: Act::new(cfg.hidden_act, vb.pp("intermediate"))?,
            output: Pointwise::from_linear(i, d, true, tokens, vb.pp("output").pp("dense"))?,
            out_norm: norm.build(d, tokens, vb.pp("output").pp("LayerNorm"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        layout: &SegmentLayout,
        p: f64,
        train: bool,
    ) -> CandleResult<Tensor> {
        let pooled = self.pooling.forward(x, layout)?;
        let h = dropout(&self.attn_out.forward(&pooled)?, p, train)?;
        let h = self.attn_norm.forward(&(h + x)?)?;
        let f = self.act.forward(&self.intermediate.forward(&h)?)?;
        let f = dropout(&self.output.forward(&f)?, p, train)?;
        self.out_norm.forward(&(f + h)?)
    }
}

/// The encoder every PoNet head sits on: BERT's embeddings, the pooling layers and the
/// `[CLS]` pooler, under the state-dict prefix `ponet`.
#[derive(Debug)]
struct PoNetEncoder {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: Norm,
    layers: Vec<PoNetLayer>,
    pooler: Pointwise,
}

fn layer_norm(cfg: &PoNetConfig, vb: VarBuilder) -> CandleResult<Norm> {
    NormConfig {
        kind: NormKind::LayerNorm,
        eps: cfg.layer_norm_eps,
        bias: true,
    }
    .build(cfg.hidden_size, MixerLayout::Tokens, vb)
}

impl PoNetEncoder {
    fn new(cfg: &PoNetConfig, root: VarBuilder) -> CandleResult<Self> {
        let d = cfg.hidden_size;
        let emb = root.pp("embeddings");
        let layer_vb = root.pp("encoder").pp("layer");
        Ok(Self {
            word: emb
                .pp("word_embeddings")
                .get((cfg.vocab_size, d), "weight")?,
            position: emb
                .pp("position_embeddings")
                .get((cfg.max_position_embeddings, d), "weight")?,
            token_type: emb
                .pp("token_type_embeddings")
                .get((cfg.type_vocab_size, d), "weight")?,
            emb_norm: layer_norm(cfg, emb.pp("LayerNorm"))?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| PoNetLayer::new(cfg, layer_vb.pp(i)))
                .collect::<CandleResult<Vec<_>>>()?,
            pooler: Pointwise::from_linear(
                d,
                d,
                true,
                MixerLayout::Tokens,
                root.pp("pooler").pp("dense"),
            )?,
        })
    }

    /// The last hidden states `(B, L, D)` and the pooled `[CLS]` state `(B, 1, D)`.
    fn forward(
        &self,
        cfg: &PoNetConfig,
        ids: &Tensor,
        input: &TextInput,
        train: bool,
    ) -> CandleResult<(Tensor, Tensor)> {
        let (b, l) = input.dims;
        let d = cfg.hidden_size;
        let p = cfg.hidden_dropout_prob;
        let words = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, d))?;
        let extra = (self.position.narrow(0, 0, l)?
            + self.token_type.narrow(0, 0, 1)?.broadcast_as((l, d))?)?;
        let x = self.emb_norm.forward(&words.broadcast_add(&extra)?)?;
        let mut x = dropout(&x, p, train)?;
        for layer in &self.layers {
            x = layer.forward(&x, &input.layout, p, train)?;
        }
        let first = x.narrow(1, 0, 1)?.contiguous()?;
        let pooled = self.pooler.forward(&first)?.tanh()?;
        Ok((x, pooled))
    }
}

/// A built `PoNetForSequenceClassification`: ids `(B, L)` u32 (and an optional 0/1 mask
/// `(B, L)`) to logits `(B, num_labels)` (see the [module docs](self)).
#[derive(Debug)]
pub struct PoNetForSequenceClassification {
    cfg: PoNetConfig,
    encoder: PoNetEncoder,
    classifier: Pointwise,
}

impl PoNetForSequenceClassification {
    /// Builds the model from `vb` (the root of the reference's state dict).
    pub fn new(cfg: PoNetConfig, vb: VarBuilder) -> CandleResult<Self> {
        let encoder = PoNetEncoder::new(&cfg, vb.pp("ponet"))?;
        let classifier = Pointwise::from_linear(
            cfg.hidden_size,
            cfg.num_labels,
            true,
            MixerLayout::Tokens,
            vb.pp("classifier"),
        )?;
        Ok(Self {
            cfg,
            encoder,
            classifier,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PoNetConfig {
        &self.cfg
    }

    /// The logits `(B, num_labels)` of checked input (see [`PoNetConfig::check_input`]);
    /// `train` turns dropout on.
    pub fn forward_checked(
        &self,
        ids: &Tensor,
        input: &TextInput,
        train: bool,
    ) -> CandleResult<Tensor> {
        let (_, pooled) = self.encoder.forward(&self.cfg, ids, input, train)?;
        let pooled = dropout(&pooled, self.cfg.classifier_dropout_prob(), train)?;
        self.classifier.forward(&pooled)?.squeeze(1)
    }

    /// The logits `(B, num_labels)` of token ids `(B, L)` with an optional attention mask,
    /// in evaluation mode; bad input is an [`Error::Input`] naming the problem.
    pub fn classify(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let input = self.cfg.check_input(ids, mask)?;
        Ok(self.forward_checked(ids, &input, false)?)
    }
}

impl SequenceModel for PoNetForSequenceClassification {
    fn task(&self) -> SequenceTask {
        self.cfg.task()
    }

    fn forward_t(&self, ids: &Tensor, mask: Option<&Tensor>, train: bool) -> CandleResult<Tensor> {
        let input = self
            .cfg
            .check_input(ids, mask)
            .map_err(candle_core::Error::wrap)?;
        self.forward_checked(ids, &input, train)
    }
}

/// A built `PoNetForPreTraining`: ids `(B, L)` u32 (and an optional 0/1 mask) to the
/// masked-LM logits `(B, L, vocab_size)` and the sentence-structure logits `(B, 3)` (see the
/// [module docs](self)). The MLM decoder is the word embedding; its bias is
/// `cls.predictions.bias`.
#[derive(Debug)]
pub struct PoNetForPreTraining {
    cfg: PoNetConfig,
    encoder: PoNetEncoder,
    transform: Pointwise,
    act: Act,
    transform_norm: Norm,
    decoder_bias: Tensor,
    seq_relationship: Pointwise,
}

impl PoNetForPreTraining {
    /// Builds the model from `vb` (the root of the reference's state dict).
    pub fn new(cfg: PoNetConfig, vb: VarBuilder) -> CandleResult<Self> {
        let d = cfg.hidden_size;
        let tokens = MixerLayout::Tokens;
        let encoder = PoNetEncoder::new(&cfg, vb.pp("ponet"))?;
        let heads = vb.pp("cls");
        let predictions = heads.pp("predictions");
        let transform = predictions.pp("transform");
        Ok(Self {
            transform: Pointwise::from_linear(d, d, true, tokens, transform.pp("dense"))?,
            act: Act::new(cfg.hidden_act, transform.clone())?,
            transform_norm: layer_norm(&cfg, transform.pp("LayerNorm"))?,
            decoder_bias: predictions.get(cfg.vocab_size, "bias")?,
            seq_relationship: Pointwise::from_linear(
                d,
                3,
                true,
                tokens,
                heads.pp("seq_relationship"),
            )?,
            cfg,
            encoder,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PoNetConfig {
        &self.cfg
    }

    /// The MLM logits `(B, L, vocab_size)` and sentence-structure logits `(B, 3)` of checked
    /// input (see [`PoNetConfig::check_input`]); `train` turns dropout on.
    pub fn forward_checked(
        &self,
        ids: &Tensor,
        input: &TextInput,
        train: bool,
    ) -> CandleResult<(Tensor, Tensor)> {
        let (b, l) = input.dims;
        let (hidden, pooled) = self.encoder.forward(&self.cfg, ids, input, train)?;
        let h = self.act.forward(&self.transform.forward(&hidden)?)?;
        let h = self
            .transform_norm
            .forward(&h)?
            .reshape((b * l, self.cfg.hidden_size))?;
        let mlm = h
            .matmul(&self.encoder.word.t()?)?
            .broadcast_add(&self.decoder_bias)?
            .reshape((b, l, self.cfg.vocab_size))?;
        let sso = self.seq_relationship.forward(&pooled)?.squeeze(1)?;
        Ok((mlm, sso))
    }

    /// The MLM and sentence-structure logits of token ids `(B, L)` with an optional attention
    /// mask, in evaluation mode; bad input is an [`Error::Input`] naming the problem.
    pub fn pretraining_logits(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let input = self.cfg.check_input(ids, mask)?;
        Ok(self.forward_checked(ids, &input, false)?)
    }
}

impl SequenceModel for PoNetForPreTraining {
    fn task(&self) -> SequenceTask {
        self.cfg.task()
    }

    /// The masked-LM logits `(B, L, vocab_size)`.
    fn forward_t(&self, ids: &Tensor, mask: Option<&Tensor>, train: bool) -> CandleResult<Tensor> {
        let input = self
            .cfg
            .check_input(ids, mask)
            .map_err(candle_core::Error::wrap)?;
        Ok(self.forward_checked(ids, &input, train)?.0)
    }
}

/// The named PoNet models.
pub(crate) static MODELS: &[SequenceEntry] = &[SequenceEntry {
    name: "ponet-base-uncased",
    source: "chtan/ponet-base-uncased (the authors' pre-trained PoNet, BERT-base sizes, \
             512 positions: PoNetForPreTraining, masked-LM and sentence-structure heads)",
    config: || SequenceConfig::new(PoNetConfig::base_uncased()),
}];
