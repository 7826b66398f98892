//! `tokenmix text`: train a PoNet text classifier on labelled TSV files, from scratch or
//! fine-tuned from a pre-trained PoNet, and report its test accuracy against the majority
//! class, or classify texts with a trained one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, Subcommand};
use tokenmix::models::sequence::ponet::{PoNetConfig, PoNetHead};
use tokenmix::models::sequence::{load_sequence_dir, save_sequence_dir, SequenceConfig};
use tokenmix::train::text::{
    fit_classifier, read_tsv, Example, TextClassifier, TextTokenizer, TextTrainConfig, WordVocab,
};

/// Arguments of `tokenmix text`.
#[derive(Args)]
pub struct TextArgs {
    #[command(subcommand)]
    command: TextCommand,
}

#[derive(Subcommand)]
enum TextCommand {
    /// Train a PoNet classifier on DATA/{train,val,test}.tsv (lines
    /// `label<TAB>field<TAB>field...`, as scripts/prepare_text.py writes them): from scratch
    /// with a word vocabulary from the training part, or with `--init-from` on a pre-trained
    /// PoNet's encoder and its WordPiece tokenizer; `[CLS] field [SEP] field [SEP]` ids (each
    /// field one PoNet segment), AdamW with cross-entropy; prints validation accuracy per epoch
    /// and test accuracy against the majority class.
    Train(TrainArgs),
    /// Classify the lines of a TSV file (`field<TAB>field...`, or `label<TAB>...` with
    /// `--labelled`) with a model directory `train` wrote; prints the class and its
    /// probability per line (tab-separated).
    Predict(PredictArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// Directory with train.tsv, val.tsv and test.tsv.
    data: PathBuf,
    /// Where the model goes (config.json, model.safetensors and the tokenizer: words.txt, or
    /// the pre-trained model's tokenizer files).
    #[arg(long, default_value = "runs/text")]
    out: PathBuf,
    /// Fine-tune the pre-trained PoNet in this directory (config.json and model.safetensors or
    /// pytorch_model.bin, with tokenizer.json or vocab.txt, as chtan/ponet-base-uncased holds
    /// them) instead of training from scratch; --hidden, --layers, --heads, --vocab-size and
    /// --min-count are then the checkpoint's. A --max-len above its positions extends the
    /// position embedding by repetition.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Passes over the training samples.
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Hidden width.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// PoNet layers.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Heads of the global attention pooling.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Longest id sequence (longer texts are cut).
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Most words in the vocabulary (the most frequent ones of the training part).
    #[arg(long, default_value_t = 8000)]
    vocab_size: usize,
    /// Fewest training occurrences of a vocabulary word.
    #[arg(long, default_value_t = 2)]
    min_count: usize,
    /// Samples per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Peak learning rate (default 1e-3 from scratch, 3e-5 fine-tuning).
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct PredictArgs {
    /// TSV file of texts to classify.
    file: PathBuf,
    /// The directory `tokenmix text train` wrote.
    #[arg(long)]
    model_dir: PathBuf,
    /// The file's lines start with a label (then accuracy is printed too).
    #[arg(long)]
    labelled: bool,
}

/// Runs `tokenmix text`.
pub fn run(args: &TextArgs, device: &Device) -> Result<()> {
    match &args.command {
        TextCommand::Train(a) => train(a, device),
        TextCommand::Predict(a) => predict(a, device),
    }
}

fn encode(
    tok: &TextTokenizer,
    rows: &[(usize, Vec<String>)],
    max_len: usize,
) -> Result<Vec<Example>> {
    rows.iter()
        .map(|(label, fields)| {
            let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
            Ok(Example {
                ids: tok.encode(&fields, max_len)?,
                label: *label,
            })
        })
        .collect()
}

/// The classes of the training part (one more than the highest label).
fn class_count(rows: &[(usize, Vec<String>)], data: &Path) -> Result<usize> {
    let num_labels = rows.iter().map(|(l, _)| *l).max().unwrap_or(0) + 1;
    if num_labels < 2 {
        bail!("{}: the training part has one class", data.display());
    }
    Ok(num_labels)
}

/// The tokenizer and the initial model: from scratch, or `--init-from`'s.
fn initial_model(
    a: &TrainArgs,
    train_rows: &[(usize, Vec<String>)],
    num_labels: usize,
    device: &Device,
) -> Result<(TextTokenizer, TextClassifier)> {
    if let Some(dir) = &a.init_from {
        let tok = TextTokenizer::from_dir(dir)?;
        let clf =
            TextClassifier::from_pretrained(dir, num_labels, Some(a.max_len), a.seed, device)?;
        let cfg = clf.model.config();
        tok.check_fits(cfg)
            .with_context(|| format!("the tokenizer of {}", dir.display()))?;
        eprintln!(
            "encoder from {} ({} layers, width {}, {} positions); pre-training heads not used, \
             a new {num_labels}-class classifier",
            dir.display(),
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.max_position_embeddings
        );
        return Ok((tok, clf));
    }
    let vocab = WordVocab::build(
        train_rows
            .iter()
            .flat_map(|(_, f)| f.iter().map(String::as_str)),
        a.vocab_size,
        a.min_count,
    );
    let cfg = PoNetConfig {
        vocab_size: vocab.vocab_size(),
        hidden_size: a.hidden,
        num_hidden_layers: a.layers,
        num_attention_heads: a.heads,
        intermediate_size: 2 * a.hidden,
        max_position_embeddings: a.max_len,
        num_labels,
        ..PoNetConfig::default()
    };
    SequenceConfig::new(cfg.clone())
        .validate()
        .map_err(|e| anyhow::anyhow!("the classifier's configuration: {e}"))?;
    let clf = TextClassifier::init(&cfg, a.seed, device)?;
    Ok((TextTokenizer::Words(vocab), clf))
}

fn train(a: &TrainArgs, device: &Device) -> Result<()> {
    let train_rows = read_tsv(&a.data.join("train.tsv"))?;
    let num_labels = class_count(&train_rows, &a.data)?;
    let (tok, clf) = initial_model(a, &train_rows, num_labels, device)?;
    let train = encode(&tok, &train_rows, a.max_len)?;
    let val = encode(&tok, &read_tsv(&a.data.join("val.tsv"))?, a.max_len)?;
    let test = encode(&tok, &read_tsv(&a.data.join("test.tsv"))?, a.max_len)?;
    let mut counts = vec![0usize; num_labels];
    train.iter().for_each(|e| counts[e.label] += 1);
    let majority = (0..num_labels).max_by_key(|&i| counts[i]).unwrap_or(0);
    let baseline =
        test.iter().filter(|e| e.label == majority).count() as f64 / test.len().max(1) as f64;
    eprintln!(
        "{}: {} train / {} val / {} test samples, {num_labels} classes, vocabulary {} ids",
        a.data.display(),
        train.len(),
        val.len(),
        test.len(),
        tok.vocab_size()
    );
    let default_lr = if a.init_from.is_some() { 3e-5 } else { 1e-3 };
    let tc = TextTrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr.unwrap_or(default_lr),
        seed: a.seed,
        ..TextTrainConfig::default()
    };
    let start = std::time::Instant::now();
    let clf = fit_classifier(clf, &train, &tc, device, |epoch, loss, clf| {
        let acc = clf.accuracy(&val, 64, device)?;
        eprintln!(
            "epoch {:>3}  train loss {loss:.4}  val accuracy {:.2}%  ({:.0} s)",
            epoch + 1,
            100.0 * acc,
            start.elapsed().as_secs_f64()
        );
        Ok(())
    })?;
    let acc = clf.accuracy(&test, 64, device)?;
    println!(
        "test accuracy {:.2}% ({} samples); majority class ({majority}) {:.2}%",
        100.0 * acc,
        test.len(),
        100.0 * baseline
    );
    let seq = SequenceConfig::new(clf.model.config().clone());
    save_sequence_dir(&a.out, &seq, &clf.tensors())?;
    tok.save(&a.out, a.init_from.as_deref())?;
    eprintln!("saved {}", a.out.display());
    Ok(())
}

fn predict(a: &PredictArgs, device: &Device) -> Result<()> {
    let loaded = load_sequence_dir(&a.model_dir, device)?;
    let Some(cfg) = loaded.config.downcast_ref::<PoNetConfig>() else {
        bail!("{} is not a PoNet text classifier", a.model_dir.display());
    };
    if cfg.head != PoNetHead::SequenceClassification {
        bail!(
            "{} holds a {}, not a classifier; fine-tune it with `tokenmix text train \
             --init-from {}`",
            a.model_dir.display(),
            cfg.head.architecture(),
            a.model_dir.display()
        );
    }
    let tok = TextTokenizer::from_dir(&a.model_dir)?;
    tok.check_fits(cfg)?;
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    let (mut right, mut total) = (0usize, 0usize);
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut fields: Vec<&str> = line.split('\t').collect();
        let label = if a.labelled {
            let l = fields.remove(0);
            Some(
                l.parse::<usize>()
                    .with_context(|| format!("{l:?} is not a class number"))?,
            )
        } else {
            None
        };
        let ids = tok.encode(&fields, cfg.max_position_embeddings)?;
        let n = ids.len();
        let x = Tensor::from_vec(ids, (1, n), device)?;
        let logits = loaded.model.forward_t(&x, None, false)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        let best = (0..probs.len())
            .max_by(|&i, &j| probs[i].total_cmp(&probs[j]))
            .unwrap_or(0);
        println!("{best}\t{:.4}", probs[best]);
        if let Some(l) = label {
            total += 1;
            right += usize::from(l == best);
        }
    }
    if total > 0 {
        eprintln!(
            "accuracy {:.2}% ({right} of {total})",
            100.0 * right as f64 / total as f64
        );
    }
    Ok(())
}
