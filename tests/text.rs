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

/// `rows` lines `label<TAB>subject<TAB>body`: class 1 when the body holds one of the keywords
/// (deterministic draws).
fn write_split(path: &Path, rows: usize, seed: u64) {
    const FILLER: [&str; 12] = [
        "meeting", "report", "team", "today", "lunch", "project", "update", "notes", "call",
        "schedule", "draft", "review",
    ];
    const KEYWORDS: [&str; 3] = ["prize", "winner", "cash"];
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
        let mut body: Vec<&str> = (0..8).map(|_| FILLER[next(FILLER.len())]).collect();
        if label == 1 {
            let at = next(body.len());
            body[at] = KEYWORDS[next(KEYWORDS.len())];
        }
        let subject = FILLER[next(FILLER.len())];
        out.push_str(&format!("{label}\t{subject}\t{}\n", body.join(" ")));
    }
    std::fs::write(path, out).unwrap();
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
    let accuracy: f64 = report
        .split("test accuracy ")
        .nth(1)
        .and_then(|r| r.split('%').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in {report}"));
    assert!(accuracy >= 90.0, "{report}");
    for file in ["config.json", "model.safetensors", "vocab.txt"] {
        assert!(out.join(file).is_file(), "{file}");
    }

    let o = tokenmix(&[
        "text",
        "predict",
        data.join("test.tsv").to_str().unwrap(),
        "--labelled",
        "--model-dir",
        out.to_str().unwrap(),
    ]);
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
