//! Training a PoNet text classifier ([`PoNetForSequenceClassification`]) from scratch.
//!
//! Text is tokenized by a [`WordVocab`] built from the training split: lower-cased runs of
//! letters and digits are words; the `max_words` most frequent words (seen at least
//! `min_count` times; ties in alphabetical order) get ids from [`FIRST_WORD_ID`] on, every
//! other word is `[UNK]`. The special ids are BERT's, which PoNet's segments read: `[PAD]` 0,
//! `[UNK]` 100, [`CLS_ID`] 101, [`SEP_ID`] 102 (`[MASK]` 103 is reserved, 1..=99 unused). A
//! sample of several fields (subject, body, ...) is `[CLS] field [SEP] field [SEP] ...`, so
//! that each field is a PoNet segment.
//!
//! [`train_classifier`] draws the reference's initialisation (normal weights of std
//! `initializer_range`, zero biases and padding row, unit LayerNorms), then runs AdamW on the
//! cross-entropy of shuffled, padded mini-batches (dropout on), with linear warmup and cosine
//! decay of the learning rate.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use tokenmix_models::sequence::ponet::{
    PoNetConfig, PoNetForSequenceClassification, CLS_ID, SEP_ID,
};
use tokenmix_models::sequence::{sequence_tensors, SequenceConfig, SequenceModel};

use crate::train::error::{bail, Context, Result};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::schedule::WarmupCosine;

/// The padding id.
pub const PAD_ID: u32 = 0;
/// The id of words outside the vocabulary.
pub const UNK_ID: u32 = 100;
/// The id of the most frequent word; the others follow.
pub const FIRST_WORD_ID: u32 = 104;

/// The words of `text`: lower-cased runs of alphanumeric characters.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// A word-level vocabulary built from training text (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct WordVocab {
    words: Vec<String>,
    index: HashMap<String, u32>,
}

impl WordVocab {
    /// The `max_words` most frequent words of `texts` seen at least `min_count` times.
    pub fn build<'a>(
        texts: impl IntoIterator<Item = &'a str>,
        max_words: usize,
        min_count: usize,
    ) -> Self {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for text in texts {
            for w in words(text) {
                *counts.entry(w).or_default() += 1;
            }
        }
        let mut ranked: Vec<(String, usize)> = counts
            .into_iter()
            .filter(|(_, c)| *c >= min_count)
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(max_words);
        Self::from_words(ranked.into_iter().map(|(w, _)| w).collect())
    }

    /// The vocabulary whose word `i` has id `FIRST_WORD_ID + i`.
    pub fn from_words(words: Vec<String>) -> Self {
        let index = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), FIRST_WORD_ID + i as u32))
            .collect();
        Self { words, index }
    }

    /// The words in id order (one per line is the vocabulary file).
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// The model's `vocab_size`: the reserved ids and the words.
    pub fn vocab_size(&self) -> usize {
        FIRST_WORD_ID as usize + self.words.len()
    }

    /// `[CLS] f1 [SEP] f2 [SEP] ...` of the `fields`' words, at most `max_len` ids: each
    /// field keeps what is left of the budget after the ones before it.
    pub fn encode(&self, fields: &[&str], max_len: usize) -> Vec<u32> {
        let mut ids = vec![CLS_ID];
        let mut budget = max_len.saturating_sub(1 + fields.len());
        for field in fields {
            for w in words(field).take(budget) {
                ids.push(self.index.get(&w).copied().unwrap_or(UNK_ID));
                budget -= 1;
            }
            ids.push(SEP_ID);
        }
        ids.truncate(max_len.max(1));
        ids
    }
}

/// One encoded sample: its ids and its class.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// `[CLS] ... [SEP]` ids.
    pub ids: Vec<u32>,
    /// The class, below `num_labels`.
    pub label: usize,
}

/// The labelled samples of a TSV file, `label<TAB>field<TAB>field...` per line (the files
/// `scripts/prepare_text.py` writes): `(label, fields)`.
pub fn read_tsv(path: &Path) -> Result<Vec<(usize, Vec<String>)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let mut parts = line.split('\t');
        let label = parts.next().unwrap_or_default();
        let Ok(label) = label.parse::<usize>() else {
            bail!(
                "{}:{}: the label {label:?} is not a class number",
                path.display(),
                i + 1
            );
        };
        rows.push((label, parts.map(str::to_string).collect()));
    }
    Ok(rows)
}

/// Settings of [`train_classifier`].
#[derive(Debug, Clone, PartialEq)]
pub struct TextTrainConfig {
    /// Passes over the training samples.
    pub epochs: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay of the matrices.
    pub weight_decay: f64,
    /// Steps of linear warmup.
    pub warmup_steps: usize,
    /// Seed of the initialisation and the shuffling (dropout draws are candle's own).
    pub seed: u64,
}

impl Default for TextTrainConfig {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 32,
            lr: 1e-3,
            weight_decay: 0.01,
            warmup_steps: 50,
            seed: 0,
        }
    }
}

/// A classifier being trained: the model and its variables under the reference's names.
pub struct TextClassifier {
    /// The model.
    pub model: PoNetForSequenceClassification,
    /// Its parameters.
    pub vars: VarMap,
}

impl std::fmt::Debug for TextClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextClassifier")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl TextClassifier {
    /// A model of `cfg` with the reference's initialisation, drawn from `seed`.
    pub fn init(cfg: &PoNetConfig, seed: u64, device: &Device) -> Result<Self> {
        let specs = sequence_tensors(&SequenceConfig::new(cfg.clone()))?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = Normal::new(0f32, cfg.initializer_range as f32)
            .map_err(|e| crate::train::error::TrainError::Invalid(e.to_string()))?;
        let vars = VarMap::new();
        {
            let mut data = vars.data().lock().unwrap_or_else(|e| e.into_inner());
            for (name, shape) in specs {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = if name.ends_with("LayerNorm.weight") {
                    vec![1.0; n]
                } else if shape.len() == 1 {
                    vec![0.0; n]
                } else {
                    let mut v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
                    if name.ends_with("word_embeddings.weight") {
                        let d = shape[1];
                        let pad = cfg.pad_token_id * d;
                        v[pad..pad + d].fill(0.0);
                    }
                    v
                };
                let var = Var::from_tensor(&Tensor::from_vec(values, shape.as_slice(), device)?)?;
                data.insert(name, var);
            }
        }
        let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
        let model = PoNetForSequenceClassification::new(cfg.clone(), vb)?;
        Ok(Self { model, vars })
    }

    /// The parameters as named tensors, for `save_sequence_dir`.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let data = self.vars.data().lock().unwrap_or_else(|e| e.into_inner());
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// The fraction of `data` classified correctly, in batches of `batch_size`.
    pub fn accuracy(&self, data: &[Example], batch_size: usize, device: &Device) -> Result<f64> {
        let mut right = 0usize;
        for chunk in data.chunks(batch_size.max(1)) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let (ids, mask, _) = batch(&refs, device)?;
            let logits = self.model.forward_t(&ids, Some(&mask), false)?;
            let guess: Vec<u32> = logits.argmax(1)?.to_vec1()?;
            right += guess
                .iter()
                .zip(chunk)
                .filter(|(g, e)| **g as usize == e.label)
                .count();
        }
        Ok(right as f64 / data.len().max(1) as f64)
    }
}

/// Ids `(B, L)` padded with [`PAD_ID`] to the longest sample, the mask `(B, L)` and the labels
/// `(B,)`.
fn batch(samples: &[&Example], device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let len = samples.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for e in samples {
        ids.extend(
            e.ids
                .iter()
                .copied()
                .chain(std::iter::repeat(PAD_ID))
                .take(len),
        );
        mask.extend((0..len).map(|i| u32::from(i < e.ids.len())));
    }
    let b = samples.len();
    let labels: Vec<u32> = samples.iter().map(|e| e.label as u32).collect();
    Ok((
        Tensor::from_vec(ids, (b, len), device)?,
        Tensor::from_vec(mask, (b, len), device)?,
        Tensor::from_vec(labels, b, device)?,
    ))
}

/// Trains a PoNet of `cfg` from scratch on `train`; `on_epoch(epoch, mean loss, model)` is
/// called after every epoch (to evaluate, log or stop nothing: it cannot change the run).
pub fn train_classifier(
    cfg: &PoNetConfig,
    train: &[Example],
    tc: &TextTrainConfig,
    device: &Device,
    mut on_epoch: impl FnMut(usize, f64, &TextClassifier) -> Result<()>,
) -> Result<TextClassifier> {
    if tc.epochs == 0 || tc.batch_size == 0 || train.is_empty() {
        bail!("training needs at least one epoch, a positive batch size and samples");
    }
    if let Some(e) = train.iter().find(|e| e.label >= cfg.num_labels) {
        bail!(
            "label {} is not below num_labels ({})",
            e.label,
            cfg.num_labels
        );
    }
    let clf = TextClassifier::init(cfg, tc.seed, device)?;
    let params = super::trainable(&clf.vars);
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: tc.lr,
            weight_decay: tc.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let steps_per_epoch = train.len().div_ceil(tc.batch_size);
    let schedule = WarmupCosine {
        base_lr: tc.lr,
        warmup_lr: tc.lr / 100.0,
        min_lr: tc.lr / 100.0,
        warmup_steps: tc.warmup_steps,
        total_steps: steps_per_epoch * tc.epochs,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(tc.seed ^ 0x5eed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut step = 0;
    for epoch in 0..tc.epochs {
        order.shuffle(&mut rng);
        let mut total = 0.0;
        for chunk in order.chunks(tc.batch_size) {
            let samples: Vec<&Example> = chunk.iter().map(|&i| &train[i]).collect();
            let (ids, mask, labels) = batch(&samples, device)?;
            let logits = clf.model.forward_t(&ids, Some(&mask), true)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
            opt.set_lr(schedule.lr(step));
            opt.step(&loss.backward()?)?;
            total += loss.to_scalar::<f32>()? as f64;
            step += 1;
        }
        on_epoch(epoch, total / steps_per_epoch as f64, &clf)?;
    }
    Ok(clf)
}
