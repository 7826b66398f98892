//! `tokenmix text` end to end on a small synthetic keyword task: a PoNet trained from scratch
//! beats the majority class, the saved directory classifies a file with the same accuracy,
//! and bad files get one-line errors.

use std::path::Path;
use std::process::{Command, Output};

fn tokenmix(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokenmix"))
        .env("RUST_BACKTRACE", "0")
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The test accuracy (percent) `text train` reported.
fn test_accuracy(report: &str) -> f64 {
    report
        .split("test accuracy ")
        .nth(1)
        .and_then(|r| r.split('%').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in {report}"))
}

/// `text predict FILE --labelled --model-dir DIR`.
fn predict_labelled(file: &Path, dir: &Path) -> Output {
    tokenmix(&[
        "text",
        "predict",
        file.to_str().unwrap(),
        "--labelled",
        "--model-dir",
        dir.to_str().unwrap(),
    ])
}

/// A synthetic two-class task: bodies of `body_len` filler words, class 1 when one of them is a
/// keyword; the subject is `subject`, or a filler word when `None`; `end` closes the body.
struct KeywordTask<'a> {
    filler: &'a [&'a str],
    keywords: &'a [&'a str],
    body_len: usize,
    subject: Option<&'a str>,
    end: &'a str,
}

impl KeywordTask<'_> {
    /// `rows` lines `label<TAB>subject<TAB>body` (deterministic draws from `seed`).
    fn write(&self, path: &Path, rows: usize, seed: u64) {
        let mut state = seed;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % n
        };
        let mut out = String::new();
        for _ in 0..rows {
            let label = next(2);
            let mut body: Vec<&str> = (0..self.body_len)
                .map(|_| self.filler[next(self.filler.len())])
                .collect();
            if label == 1 {
                let at = next(body.len());
                body[at] = self.keywords[next(self.keywords.len())];
            }
            let subject = match self.subject {
                Some(s) => s,
                None => self.filler[next(self.filler.len())],
            };
            out.push_str(&format!(
                "{label}\t{subject}\t{}{}\n",
                body.join(" "),
                self.end
            ));
        }
        std::fs::write(path, out).unwrap();
    }
}

/// Office words, with "prize", "winner", "cash" marking class 1.
fn write_split(path: &Path, rows: usize, seed: u64) {
    KeywordTask {
        filler: &[
            "meeting", "report", "team", "today", "lunch", "project", "update", "notes", "call",
            "schedule", "draft", "review",
        ],
        keywords: &["prize", "winner", "cash"],
        body_len: 8,
        subject: None,
        end: "",
    }
    .write(path, rows, seed);
}

#[test]
fn a_ponet_classifier_trained_from_tsv_files_beats_the_majority_class() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_split(&data.join("train.tsv"), 400, 1);
    write_split(&data.join("val.tsv"), 80, 2);
    write_split(&data.join("test.tsv"), 80, 3);
    let out = dir.path().join("run");
    let o = tokenmix(&[
        "text",
        "train",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "6",
        "--hidden",
        "32",
        "--layers",
        "1",
        "--heads",
        "2",
        "--max-len",
        "16",
        "--min-count",
        "1",
        "--lr",
        "3e-3",
    ]);
    let report = text(&o.stdout);
    assert!(o.status.success(), "{report}\n{}", text(&o.stderr));
    let accuracy = test_accuracy(&report);
    assert!(accuracy >= 90.0, "{report}");
    for file in ["config.json", "model.safetensors", "words.txt"] {
        assert!(out.join(file).is_file(), "{file}");
    }

    let o = predict_labelled(&data.join("test.tsv"), &out);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().count(), 80);
    let again = text(&o.stderr);
    assert!(
        again.contains(&format!("accuracy {accuracy:.2}%")),
        "{again} vs {accuracy}"
    );
}

#[test]
fn bad_text_files_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.tsv"), "spam\tsubject\tbody\n").unwrap();
    let o = tokenmix(&[
        "text",
        "train",
        dir.path().to_str().unwrap(),
        "--epochs",
        "1",
    ]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("train.tsv:1") && err.contains("\"spam\""),
        "{err}"
    );
    let o = tokenmix(&[
        "text",
        "predict",
        "x.tsv",
        "--model-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("config.json"),
        "{}",
        text(&o.stderr)
    );
}

fn pretrained_fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sequence/ponet_pretrain")
}

/// The ids Hugging Face's BERT tokenizers (fast and slow, checked equal when the fixture was
/// written) give the fixture's texts, from the directory's tokenizer.json and from its
/// vocab.txt alone.
#[test]
fn wordpiece_ids_are_the_reference_tokenizers() {
    use tokenmix::train::text::TextTokenizer;
    let src = pretrained_fixture();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenized.json")).unwrap())
            .unwrap();
    let vocab_only = tempfile::tempdir().unwrap();
    for file in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(src.join(file), vocab_only.path().join(file)).unwrap();
    }
    for dir in [src.as_path(), vocab_only.path()] {
        let tok = TextTokenizer::from_dir(dir).unwrap();
        assert!(matches!(tok, TextTokenizer::WordPiece(_)));
        assert_eq!(tok.vocab_size(), 200);
        for case in cases.as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<u32> = tok.encode(&[text], 1000).unwrap();
            let expected: Vec<u32> = case["with_special_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, expected, "{text:?} from {}", dir.display());
        }
        // Two fields are two segments; the budget cuts the second.
        let ids = tok.encode(&["the cat", "sat on the mat"], 7).unwrap();
        assert_eq!(ids, [101, 104, 106, 102, 107, 108, 102]);
    }
    // A vocabulary that does not put [CLS] at 101 is refused by name.
    let bad = tempfile::tempdir().unwrap();
    let vocab = std::fs::read_to_string(src.join("vocab.txt")).unwrap();
    std::fs::write(bad.path().join("vocab.txt"), format!("extra\n{vocab}")).unwrap();
    let msg = TextTokenizer::from_dir(bad.path()).unwrap_err().to_string();
    assert!(msg.contains("[PAD]") && msg.contains("words.txt"), "{msg}");
    // Saving a word vocabulary over a directory holding a WordPiece tokenizer replaces it.
    let over = tempfile::tempdir().unwrap();
    TextTokenizer::from_dir(&src)
        .unwrap()
        .save(over.path(), Some(&src))
        .unwrap();
    assert!(over.path().join("tokenizer.json").is_file());
    let words = TextTokenizer::Words(tokenmix::train::text::WordVocab::from_words(vec![
        "cat".into()
    ]));
    words.save(over.path(), None).unwrap();
    assert!(!over.path().join("tokenizer.json").exists());
    assert!(!over.path().join("vocab.txt").exists());
    let back = TextTokenizer::from_dir(over.path()).unwrap();
    assert!(matches!(back, TextTokenizer::Words(_)));
    // Saving into the source directory itself keeps its files.
    TextTokenizer::from_dir(over.path()).unwrap();
    let tok = TextTokenizer::from_dir(&src).unwrap();
    let copy = tempfile::tempdir().unwrap();
    tok.save(copy.path(), Some(&src)).unwrap();
    tok.save(copy.path(), Some(copy.path())).unwrap();
    assert!(
        std::fs::metadata(copy.path().join("tokenizer.json"))
            .unwrap()
            .len()
            > 0
    );
}

/// `text train --init-from` on the hub layout of a pre-trained PoNet (the reference-written
/// fixture: random weights, a 200-token WordPiece vocabulary): the encoder is taken, the
/// positions extended, the tokenizer files travel with the model and `predict` reads them.
#[test]
fn a_pretrained_ponet_is_fine_tuned_from_its_hub_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let task = KeywordTask {
        filler: &[
            "the", "cat", "sat", "on", "mat", "dog", "is", "cute", "meeting", "noon",
        ],
        keywords: &["free", "money", "offer"],
        body_len: 6,
        subject: Some("Hello!"),
        end: ".",
    };
    let write = |name: &str, rows: usize, seed: u64| task.write(&data.join(name), rows, seed);
    write("train.tsv", 300, 11);
    write("val.tsv", 60, 12);
    write("test.tsv", 60, 13);
    let out = dir.path().join("run");
    let src = pretrained_fixture();
    let o = tokenmix(&[
        "text",
        "train",
        data.to_str().unwrap(),
        "--init-from",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "20",
        "--batch-size",
        "16",
        "--max-len",
        "48",
        "--lr",
        "3e-3",
    ]);
    let report = text(&o.stdout);
    let log = text(&o.stderr);
    assert!(o.status.success(), "{report}\n{log}");
    assert!(log.contains("48 positions"), "{log}");
    let accuracy = test_accuracy(&report);
    assert!(accuracy >= 90.0, "{report}\n{log}");
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(
        config.contains("PoNetForSequenceClassification"),
        "{config}"
    );
    let o = predict_labelled(&data.join("test.tsv"), &out);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains(&format!("accuracy {accuracy:.2}%")),
        "{}",
        text(&o.stderr)
    );
    // The pre-trained directory itself is no classifier.
    let o = predict_labelled(&data.join("test.tsv"), &src);
    let msg = text(&o.stderr);
    assert!(
        !o.status.success() && msg.contains("PoNetForPreTraining") && msg.contains("--init-from"),
        "{msg}"
    );
}
