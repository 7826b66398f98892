//! Training a PoNet text classifier ([`PoNetForSequenceClassification`]), from scratch or
//! fine-tuned from a pre-trained PoNet ([`TextClassifier::from_pretrained`], e.g. the
//! authors' `chtan/ponet-base-uncased` directory).
//!
//! Text becomes ids through a [`TextTokenizer`]: a pre-trained model's own BERT WordPiece
//! tokenizer (its `tokenizer.json`, else its `vocab.txt`; run by the `tokenizers` crate, so
//! the ids are the ones Hugging Face's tokenizer gives), or, from scratch, a [`WordVocab`]
//! built from the training split: lower-cased runs of
//! letters and digits are words; the `max_words` most frequent words (seen at least
//! `min_count` times; ties in alphabetical order) get ids from [`FIRST_WORD_ID`] on, every
//! other word is `[UNK]`. The special ids are BERT's, which PoNet's segments read: `[PAD]` 0,
//! `[UNK]` 100, [`CLS_ID`] 101, [`SEP_ID`] 102 (`[MASK]` 103 is reserved, 1..=99 unused). A
//! sample of several fields (subject, body, ...) is `[CLS] field [SEP] field [SEP] ...`, so
//! that each field is a PoNet segment.
//!
//! Either way a sample is `[CLS] field [SEP] field [SEP] ...` with token type 0 throughout.
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
use tokenmix_models::sequence::{
    load_sequence_tensors, read_sequence_config, sequence_tensors, sequence_weights_path,
    SequenceConfig, SequenceModel,
};

use crate::train::error::{bail, Context, Result, TrainError};
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
        let ids = frame_fields(fields, max_len, |field, budget| {
            Ok::<_, std::convert::Infallible>(
                words(field)
                    .take(budget)
                    .map(|w| self.index.get(&w).copied().unwrap_or(UNK_ID))
                    .collect(),
            )
        });
        ids.unwrap_or_else(|never| match never {})
    }
}

/// `[CLS] f1 [SEP] f2 [SEP] ...` of at most `max_len` ids, field `f_i` the first ids of
/// `ids_of(field, budget)` within what is left of the budget after the fields before it.
fn frame_fields<E>(
    fields: &[&str],
    max_len: usize,
    mut ids_of: impl FnMut(&str, usize) -> Result<Vec<u32>, E>,
) -> Result<Vec<u32>, E> {
    let mut ids = vec![CLS_ID];
    let mut budget = max_len.saturating_sub(1 + fields.len());
    for field in fields {
        if budget > 0 {
            let mut field_ids = ids_of(field, budget)?;
            field_ids.truncate(budget);
            budget -= field_ids.len();
            ids.extend(field_ids);
        }
        ids.push(SEP_ID);
    }
    ids.truncate(max_len.max(1));
    Ok(ids)
}

/// The files a model directory's tokenizer may consist of, copied with a fine-tuned model.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// The word list of a from-scratch model (one word per line, the first has id
/// [`FIRST_WORD_ID`]).
pub const WORDS_FILE: &str = "words.txt";

/// How a text model's input becomes ids (see the [module docs](self)).
#[derive(Debug, Clone)]
pub enum TextTokenizer {
    /// tokenmix's word vocabulary of a from-scratch model.
    Words(WordVocab),
    /// A pre-trained model's BERT WordPiece tokenizer (no special tokens added by it).
    WordPiece(Box<tokenizers::Tokenizer>),
}

fn tokenizer_error(path: &Path, e: tokenizers::Error) -> TrainError {
    TrainError::Context {
        context: format!("cannot read the tokenizer {}", path.display()),
        source: e,
    }
}

impl TextTokenizer {
    /// The tokenizer of the model directory `dir`: `tokenizer.json` (Hugging Face's format),
    /// else a BERT WordPiece over `vocab.txt` (lower-casing and accent stripping as
    /// `tokenizer_config.json`'s `do_lower_case` / `strip_accents` say, BERT's defaults when
    /// absent), else tokenmix's [`WORDS_FILE`]. A WordPiece vocabulary must give `[PAD]`,
    /// `[CLS]` and `[SEP]` the ids PoNet reads (0, [`CLS_ID`], [`SEP_ID`]).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        let words = dir.join(WORDS_FILE);
        let mut tok = if json.is_file() {
            tokenizers::Tokenizer::from_file(&json).map_err(|e| tokenizer_error(&json, e))?
        } else if vocab.is_file() {
            let mut first = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(
                    std::fs::File::open(&vocab)
                        .with_context(|| format!("cannot read {}", vocab.display()))?,
                ),
                &mut first,
            )
            .with_context(|| format!("cannot read {}", vocab.display()))?;
            if first.trim_end() != "[PAD]" {
                bail!(
                    "{} does not start with [PAD], so it is not a BERT vocabulary; a word \
                     list written by an older `tokenmix text train` is read as {WORDS_FILE} \
                     (rename it)",
                    vocab.display()
                );
            }
            bert_wordpiece(&vocab, &dir.join("tokenizer_config.json"))?
        } else if words.is_file() {
            let text = std::fs::read_to_string(&words)
                .with_context(|| format!("cannot read {}", words.display()))?;
            return Ok(Self::Words(WordVocab::from_words(
                text.lines().map(str::to_string).collect(),
            )));
        } else {
            bail!(
                "{} has no tokenizer (tokenizer.json, vocab.txt or {WORDS_FILE})",
                dir.display()
            );
        };
        // Samples are cut and padded by the caller, never by settings stored in the file.
        tok.with_truncation(None)
            .map_err(|e| tokenizer_error(dir, e))?;
        tok.with_padding(None);
        if tok.token_to_id("[UNK]").is_none() {
            bail!("the tokenizer of {} has no [UNK] token", dir.display());
        }
        for (token, id) in [("[PAD]", PAD_ID), ("[CLS]", CLS_ID), ("[SEP]", SEP_ID)] {
            let found = tok.token_to_id(token);
            if found != Some(id) {
                bail!(
                    "the tokenizer of {} gives {token} the id {found:?}; PoNet reads \
                     [PAD] as 0, [CLS] as {CLS_ID} and [SEP] as {SEP_ID} (BERT's uncased \
                     vocabulary)",
                    dir.display()
                );
            }
        }
        Ok(Self::WordPiece(Box::new(tok)))
    }

    /// Ids the tokenizer can give (the model's `vocab_size` must be at least this).
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Words(v) => v.vocab_size(),
            Self::WordPiece(t) => t.get_vocab_size(true),
        }
    }

    /// `[CLS] f1 [SEP] f2 [SEP] ...` of the `fields`' tokens, at most `max_len` ids: each
    /// field keeps what is left of the budget after the ones before it.
    pub fn encode(&self, fields: &[&str], max_len: usize) -> Result<Vec<u32>> {
        let tok = match self {
            Self::Words(v) => return Ok(v.encode(fields, max_len)),
            Self::WordPiece(t) => t,
        };
        frame_fields(fields, max_len, |field, _| {
            let enc = tok.encode(field, false).map_err(|e| TrainError::Context {
                context: "cannot tokenize a text".into(),
                source: e,
            })?;
            Ok(enc.get_ids().to_vec())
        })
    }

    /// Fails unless every id this tokenizer gives is a row of `cfg`'s word embedding.
    pub fn check_fits(&self, cfg: &PoNetConfig) -> Result<()> {
        if self.vocab_size() > cfg.vocab_size {
            bail!(
                "the tokenizer gives {} ids but the model has {} (vocab_size)",
                self.vocab_size(),
                cfg.vocab_size
            );
        }
        Ok(())
    }

    /// Writes the tokenizer into the model directory `dir`: [`WORDS_FILE`] for a word
    /// vocabulary; a WordPiece tokenizer's files in `source` ([`TOKENIZER_FILES`]) are copied.
    /// Tokenizer files of the other kind left in `dir` by an earlier run are removed, so that
    /// [`from_dir`](Self::from_dir) reads back this tokenizer.
    pub fn save(&self, dir: &Path, source: Option<&Path>) -> Result<()> {
        let same_dir = source.is_some_and(|src| {
            matches!(
                (src.canonicalize(), dir.canonicalize()),
                (Ok(a), Ok(b)) if a == b
            )
        });
        if same_dir {
            return Ok(());
        }
        let stale: Vec<&str> = match self {
            Self::Words(_) => TOKENIZER_FILES.to_vec(),
            Self::WordPiece(_) => std::iter::once(WORDS_FILE).chain(TOKENIZER_FILES).collect(),
        };
        for name in stale {
            let path = dir.join(name);
            if path.is_file() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        match (self, source) {
            (Self::Words(v), _) => {
                let path = dir.join(WORDS_FILE);
                std::fs::write(&path, v.words().join("\n") + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))
            }
            (Self::WordPiece(_), Some(src)) => {
                for name in TOKENIZER_FILES {
                    let from = src.join(name);
                    if from.is_file() {
                        std::fs::copy(&from, dir.join(name)).with_context(|| {
                            format!("cannot copy {} into {}", from.display(), dir.display())
                        })?;
                    }
                }
                Ok(())
            }
            (Self::WordPiece(t), None) => {
                let path = dir.join("tokenizer.json");
                t.save(&path, true).map_err(|e| TrainError::Context {
                    context: format!("cannot write {}", path.display()),
                    source: e,
                })
            }
        }
    }
}

/// BERT's tokenizer over `vocab` (one token per line, line `i` has id `i`): text cleaned,
/// Chinese characters split, lower-cased and accents stripped as `config` (a
/// `tokenizer_config.json`, optional) says, punctuation split, WordPiece with `[UNK]`.
fn bert_wordpiece(vocab: &Path, config: &Path) -> Result<tokenizers::Tokenizer> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    let settings: serde_json::Value = if config.is_file() {
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("cannot read {}", config.display()))?;
        serde_json::from_str(&text).with_context(|| format!("cannot parse {}", config.display()))?
    } else {
        serde_json::Value::Null
    };
    let flag = |key: &str| settings.get(key).and_then(serde_json::Value::as_bool);
    let lowercase = flag("do_lower_case").unwrap_or(true);
    let chinese = flag("tokenize_chinese_chars").unwrap_or(true);
    let path = vocab
        .to_str()
        .with_context(|| format!("the path {} is not valid UTF-8", vocab.display()))?;
    let model = WordPiece::from_file(path)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| tokenizer_error(vocab, e))?;
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_normalizer(Some(BertNormalizer::new(
        true,
        chinese,
        flag("strip_accents"),
        lowercase,
    )))
    .map_err(|e| tokenizer_error(vocab, e))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    Ok(tok)
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
        Self::with_weights(cfg, HashMap::new(), seed, device)
    }

    /// A classifier of `num_labels` classes on the encoder of the pre-trained PoNet in `dir`
    /// (`config.json` and `model.safetensors` or `pytorch_model.bin` as the hub holds them:
    /// `PoNetForPreTraining`, or a PoNet classifier). The encoder (`ponet.*`) is read with
    /// the loader's strict checks; the pre-training heads (`cls.*`) and an old classifier are
    /// left out, and the new classifier is drawn as [`init`](Self::init) draws it. With
    /// `max_positions` above the checkpoint's `max_position_embeddings`, the position
    /// embedding is extended by repeating it, as the authors' `run_long_classification.py`
    /// extends it.
    pub fn from_pretrained(
        dir: &Path,
        num_labels: usize,
        max_positions: Option<usize>,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let source = read_sequence_config(dir)?;
        let Some(pretrained) = source.downcast_ref::<PoNetConfig>() else {
            bail!(
                "{} holds a {} model, not PoNet",
                dir.display(),
                source.model_type()
            );
        };
        let stored = pretrained.classifier(num_labels);
        let encoder: Vec<_> = sequence_tensors(&SequenceConfig::new(stored.clone()))?
            .into_iter()
            .filter(|(name, _)| name.starts_with("ponet."))
            .collect();
        let ignore = |name: &str| {
            name.starts_with("cls.")
                || name.starts_with("classifier.")
                || source.ignored_tensor(name)
        };
        let weights = sequence_weights_path(dir)?;
        let mut tensors =
            load_sequence_tensors(&weights, &encoder, &ignore, "a PoNet encoder", device)?;
        let mut cfg = stored;
        if let Some(n) = max_positions.filter(|&n| n > cfg.max_position_embeddings) {
            let key = "ponet.embeddings.position_embeddings.weight";
            let pos = &tensors[key];
            let copies = n.div_ceil(cfg.max_position_embeddings);
            let tiled = Tensor::cat(&vec![pos; copies], 0)?.narrow(0, 0, n)?;
            tensors.insert(key.to_string(), tiled);
            cfg.max_position_embeddings = n;
        }
        SequenceConfig::new(cfg.clone())
            .validate()
            .map_err(|e| TrainError::Invalid(format!("the classifier's configuration: {e}")))?;
        Self::with_weights(&cfg, tensors, seed, device)
    }

    /// A model of `cfg` whose tensors are `given` where it has them, else drawn from `seed`
    /// with the reference's initialisation.
    fn with_weights(
        cfg: &PoNetConfig,
        mut given: HashMap<String, Tensor>,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let specs = sequence_tensors(&SequenceConfig::new(cfg.clone()))?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = Normal::new(0f32, cfg.initializer_range as f32)
            .map_err(|e| crate::train::error::TrainError::Invalid(e.to_string()))?;
        let vars = VarMap::new();
        {
            let mut data = vars.data().lock().unwrap_or_else(|e| e.into_inner());
            for (name, shape) in specs {
                if let Some(t) = given.remove(&name) {
                    data.insert(name, Var::from_tensor(&t)?);
                    continue;
                }
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
    on_epoch: impl FnMut(usize, f64, &TextClassifier) -> Result<()>,
) -> Result<TextClassifier> {
    let clf = TextClassifier::init(cfg, tc.seed, device)?;
    fit_classifier(clf, train, tc, device, on_epoch)
}

/// Trains `clf` (e.g. [`TextClassifier::from_pretrained`]) on `train`, every parameter, as
/// [`train_classifier`] does.
pub fn fit_classifier(
    clf: TextClassifier,
    train: &[Example],
    tc: &TextTrainConfig,
    device: &Device,
    mut on_epoch: impl FnMut(usize, f64, &TextClassifier) -> Result<()>,
) -> Result<TextClassifier> {
    let cfg = clf.model.config();
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
    if let Some(e) = train
        .iter()
        .find(|e| e.ids.len() > cfg.max_position_embeddings)
    {
        bail!(
            "a sample of {} ids is longer than max_position_embeddings ({})",
            e.ids.len(),
            cfg.max_position_embeddings
        );
    }
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
