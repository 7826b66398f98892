//! Trains a small PoNet spam classifier from scratch on the SpamAssassin corpus (as
//! `scripts/prepare_text.py` splits it) through `tokenmix::train::text`, reports validation
//! accuracy after every epoch and test accuracy against the majority class, and saves the
//! model (`config.json`, `model.safetensors`, `vocab.txt`).
//!
//! ```sh
//! python3 scripts/prepare_text.py --package /tmp/spam-assassin/package --out /tmp/spam
//! cargo run --release --example ponet_text -- /tmp/spam runs/ponet-spam 4
//! ```

#[cfg(feature = "train")]
fn main() -> anyhow::Result<()> {
    use std::path::PathBuf;

    use anyhow::Context;
    use candle_core::Device;
    use tokenmix::models::sequence::ponet::PoNetConfig;
    use tokenmix::models::sequence::{save_sequence_dir, SequenceConfig};
    use tokenmix::train::text::{read_tsv, train_classifier, Example, TextTrainConfig, WordVocab};

    const MAX_LEN: usize = 128;
    let mut args = std::env::args().skip(1);
    let data = PathBuf::from(
        args.next()
            .context("usage: ponet_text DATA [OUT] [EPOCHS]")?,
    );
    let out = PathBuf::from(args.next().unwrap_or_else(|| "runs/ponet-text".into()));
    let epochs: usize = args.next().map_or(Ok(4), |e| e.parse())?;
    let device = Device::Cpu;

    let train_rows = read_tsv(&data.join("train.tsv"))?;
    let vocab = WordVocab::build(
        train_rows
            .iter()
            .flat_map(|(_, f)| f.iter().map(String::as_str)),
        8000,
        2,
    );
    let encode = |rows: &[(usize, Vec<String>)]| -> Vec<Example> {
        rows.iter()
            .map(|(label, fields)| {
                let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
                Example {
                    ids: vocab.encode(&fields, MAX_LEN),
                    label: *label,
                }
            })
            .collect()
    };
    let train = encode(&train_rows);
    let val = encode(&read_tsv(&data.join("val.tsv"))?);
    let test = encode(&read_tsv(&data.join("test.tsv"))?);
    let num_labels = train.iter().map(|e| e.label).max().unwrap_or(0) + 1;
    let cfg = PoNetConfig {
        vocab_size: vocab.vocab_size(),
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 128,
        max_position_embeddings: MAX_LEN,
        num_labels,
        ..PoNetConfig::default()
    };
    let counts = |d: &[Example]| {
        let mut c = vec![0usize; num_labels];
        d.iter().for_each(|e| c[e.label.min(num_labels - 1)] += 1);
        c
    };
    let majority = counts(&train)
        .iter()
        .enumerate()
        .max_by_key(|(_, n)| **n)
        .map_or(0, |(i, _)| i);
    let baseline = counts(&test)[majority] as f64 / test.len() as f64;
    println!(
        "{} train / {} val / {} test samples, vocabulary {} ids, {num_labels} classes",
        train.len(),
        val.len(),
        test.len(),
        vocab.vocab_size()
    );
    let tc = TextTrainConfig {
        epochs,
        ..TextTrainConfig::default()
    };
    let start = std::time::Instant::now();
    let clf = train_classifier(&cfg, &train, &tc, &device, |epoch, loss, clf| {
        let acc = clf.accuracy(&val, 64, &device)?;
        println!(
            "epoch {}: train loss {loss:.4}, val accuracy {:.2}% ({:.0}s)",
            epoch + 1,
            100.0 * acc,
            start.elapsed().as_secs_f64()
        );
        Ok(())
    })?;
    let acc = clf.accuracy(&test, 64, &device)?;
    println!(
        "test accuracy {:.2}% (majority class {majority}: {:.2}%)",
        100.0 * acc,
        100.0 * baseline
    );
    save_sequence_dir(&out, &SequenceConfig::new(cfg), &clf.tensors())?;
    std::fs::write(out.join("vocab.txt"), vocab.words().join("\n") + "\n")?;
    println!("saved {}", out.display());
    Ok(())
}

#[cfg(not(feature = "train"))]
fn main() {
    eprintln!("this example needs the `train` feature");
}
