//! `tokenmix text`: train a PoNet text classifier from scratch on labelled TSV files and report
//! its test accuracy against the majority class, or classify texts with a trained one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, Subcommand};
use tokenmix::models::sequence::ponet::PoNetConfig;
use tokenmix::models::sequence::{load_sequence_dir, save_sequence_dir, SequenceConfig};
use tokenmix::train::text::{read_tsv, train_classifier, Example, TextTrainConfig, WordVocab};

/// Arguments of `tokenmix text`.
#[derive(Args)]
pub struct TextArgs {
    #[command(subcommand)]
    command: TextCommand,
}

#[derive(Subcommand)]
enum TextCommand {
    /// Train a PoNet classifier from scratch on DATA/{train,val,test}.tsv (lines
    /// `label<TAB>field<TAB>field...`, as scripts/prepare_text.py writes them): a word
    /// vocabulary from the training part, `[CLS] field [SEP] field [SEP]` ids (each field one
    /// PoNet segment), AdamW with cross-entropy; prints validation accuracy per epoch and test
    /// accuracy against the majority class.
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
    /// Where the model goes (config.json, model.safetensors, vocab.txt).
    #[arg(long, default_value = "runs/text")]
    out: PathBuf,
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
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
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

fn encode(vocab: &WordVocab, rows: &[(usize, Vec<String>)], max_len: usize) -> Vec<Example> {
    rows.iter()
        .map(|(label, fields)| {
            let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
            Example {
                ids: vocab.encode(&fields, max_len),
                label: *label,
            }
        })
        .collect()
}

fn train(a: &TrainArgs, device: &Device) -> Result<()> {
    let train_rows = read_tsv(&a.data.join("train.tsv"))?;
    let vocab = WordVocab::build(
        train_rows
            .iter()
            .flat_map(|(_, f)| f.iter().map(String::as_str)),
        a.vocab_size,
        a.min_count,
    );
    let train = encode(&vocab, &train_rows, a.max_len);
    let val = encode(&vocab, &read_tsv(&a.data.join("val.tsv"))?, a.max_len);
    let test = encode(&vocab, &read_tsv(&a.data.join("test.tsv"))?, a.max_len);
    let num_labels = train.iter().map(|e| e.label).max().unwrap_or(0) + 1;
    if num_labels < 2 {
        bail!("{}: the training part has one class", a.data.display());
    }
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
    let seq = SequenceConfig::new(cfg.clone());
    seq.validate()
        .map_err(|e| anyhow::anyhow!("the classifier's configuration: {e}"))?;
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
        vocab.vocab_size()
    );
    let tc = TextTrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        seed: a.seed,
        ..TextTrainConfig::default()
    };
    let start = std::time::Instant::now();
    let clf = train_classifier(&cfg, &train, &tc, device, |epoch, loss, clf| {
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
    save_sequence_dir(&a.out, &seq, &clf.tensors())?;
    std::fs::write(a.out.join("vocab.txt"), vocab.words().join("\n") + "\n")
        .with_context(|| format!("cannot write {}", a.out.join("vocab.txt").display()))?;
    eprintln!("saved {}", a.out.display());
    Ok(())
}

fn read_vocab(dir: &Path) -> Result<WordVocab> {
    let path = dir.join("vocab.txt");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (written by `tokenmix text train`)",
            path.display()
        )
    })?;
    Ok(WordVocab::from_words(
        text.lines().map(str::to_string).collect(),
    ))
}

fn predict(a: &PredictArgs, device: &Device) -> Result<()> {
    let loaded = load_sequence_dir(&a.model_dir, device)?;
    let Some(cfg) = loaded.config.downcast_ref::<PoNetConfig>() else {
        bail!("{} is not a PoNet text classifier", a.model_dir.display());
    };
    let vocab = read_vocab(&a.model_dir)?;
    if vocab.vocab_size() != cfg.vocab_size {
        bail!(
            "vocab.txt gives {} ids but the model has {}",
            vocab.vocab_size(),
            cfg.vocab_size
        );
    }
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
        let ids = vocab.encode(&fields, cfg.max_position_embeddings);
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
