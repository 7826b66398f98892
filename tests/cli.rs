//! The `tokenmix` binary end to end: listing, info, run, convert, classify, validate, bench, train,
//! threads, and one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;

fn tokenmix(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokenmix"))
        .args(args)
        .output()
        .unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed command printed exactly one line, starting with `error:`.
fn assert_one_line_error(o: &Output, needle: &str) {
    assert!(!o.status.success());
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
}

#[test]
fn list_filters_by_glob() {
    let o = tokenmix(&["list", "caformer_*"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(out.contains("caformer_b36") && !out.contains("convformer"));
    assert_one_line_error(&tokenmix(&["list", "zzz*"]), "no model matches");
}

#[test]
fn info_shows_facts_and_rejects_unknown_names() {
    let o = tokenmix(&["info", "convformer_s18"]);
    let out = stdout(&o);
    assert!(
        out.contains("26774448") && out.contains("83.0%") && out.contains("\"crop_pct\":1.0"),
        "{out}"
    );
    assert!(out.contains("GMACs @ 224²:   3.941"), "{out}");
    assert!(
        out.contains("hub id:         timm/convformer_s18.sail_in1k"),
        "{out}"
    );
    assert_one_line_error(
        &tokenmix(&["info", "convformer_s19"]),
        "unknown model 'convformer_s19'",
    );
    // AFFNet's MACs are counted at its 256x256 input, and timm has no AFFNet repository.
    let out = stdout(&tokenmix(&["info", "affnet"]));
    assert!(out.contains("GMACs @ 256²:   1.464"), "{out}");
    assert!(
        out.contains("hub id:         none") && !out.contains("timm/"),
        "{out}"
    );
}

#[test]
fn run_writes_the_reference_logits() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.safetensors");
    let fx = fixture("caformer_s18");
    let reference = fx.join("reference.safetensors");
    let o = tokenmix(&[
        "run",
        "--model-dir",
        fx.to_str().unwrap(),
        "--input",
        reference.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = &candle_core::safetensors::load(&out, &Device::Cpu).unwrap()["logits"];
    let want = &candle_core::safetensors::load(&reference, &Device::Cpu).unwrap()["logits"];
    let err: f32 = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(err < 1e-3, "{err}");

    // The same with --model and --weights.
    let weights = fx.join("model.safetensors");
    let o = tokenmix(&[
        "run",
        "--model",
        "caformer_s18",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        reference.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "checkpoint does not fit caformer_s18");

    // A file without an `input` tensor.
    let o = tokenmix(&[
        "run",
        "--model-dir",
        fx.to_str().unwrap(),
        "--input",
        weights.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "no tensor named 'input'");
}

/// `convert` turns the authors' CAS-ViT training checkpoint into a model directory that `run`
/// loads and that gives the authors' logits; a checkpoint of another model, or a file that is
/// not one, is a one-line error and writes nothing.
#[test]
fn convert_writes_a_loadable_model_dir_from_a_pth() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("rcvit");
    let fx = fixture("rcvit_xs_custom");
    let pth = fixture("pth/rcvit_xs_custom.pth");
    let o = tokenmix(&[
        "convert",
        pth.to_str().unwrap(),
        "--config",
        fx.join("config.json").to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("rcvit_xs: 253 tensors (31 left out"),
        "{}",
        stdout(&o)
    );
    let reference = fx.join("reference.safetensors");
    let logits = dir.path().join("logits.safetensors");
    let o = tokenmix(&[
        "run",
        "--model-dir",
        out_dir.to_str().unwrap(),
        "--input",
        reference.to_str().unwrap(),
        "--output",
        logits.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = &candle_core::safetensors::load(&logits, &Device::Cpu).unwrap()["logits"];
    let want = &candle_core::safetensors::load(&reference, &Device::Cpu).unwrap()["logits"];
    let err: f32 = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let scale: f32 = want.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    assert!(err <= 1e-4 * scale, "{err} vs {scale}");

    // The same model named with --model and --model-args.
    let again = dir.path().join("again");
    let o = tokenmix(&[
        "convert",
        pth.to_str().unwrap(),
        "--model",
        "rcvit_xs",
        "--model-args",
        r#"{"layers": [1, 1, 2, 1], "embed_dims": [16, 24, 32, 40], "num_classes": 5}"#,
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(again.join("model.safetensors")).unwrap(),
        std::fs::read(out_dir.join("model.safetensors")).unwrap()
    );

    let elsewhere = dir.path().join("other");
    let o = tokenmix(&[
        "convert",
        pth.to_str().unwrap(),
        "--model",
        "poolformer_s12",
        "--out",
        elsewhere.to_str().unwrap(),
    ]);
    assert_one_line_error(
        &o,
        "checkpoint does not fit poolformer_s12: 82 missing tensors",
    );
    assert!(!elsewhere.exists());
    let o = tokenmix(&[
        "convert",
        fx.join("model.safetensors").to_str().unwrap(),
        "--model",
        "rcvit_xs",
        "--out",
        elsewhere.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "not a torch.save file");
}

#[test]
fn classify_prints_top_classes_and_rejects_non_images() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("gradient.png");
    image::RgbImage::from_fn(80, 50, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 5) as u8, 128])
    })
    .save(&png)
    .unwrap();
    let fx = fixture("poolformer_s12");
    let o = tokenmix(&[
        "classify",
        "--model-dir",
        fx.to_str().unwrap(),
        "--image",
        png.to_str().unwrap(),
        "--top",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    // Three lines `  PP.PP%  class I (I)`, most probable first (the fixture has no label
    // names, so each label is its index).
    let top: Vec<(f64, String)> = out
        .lines()
        .filter_map(|l| {
            let (p, rest) = l.trim().split_once("%  ")?;
            Some((p.trim().parse().ok()?, rest.to_string()))
        })
        .collect();
    assert_eq!(top.len(), 3, "{out}");
    assert!(top.windows(2).all(|w| w[0].0 >= w[1].0), "{out}");
    for (p, label) in &top {
        let (name, index) = label.split_once(" (").unwrap();
        assert_eq!(
            name,
            format!("class {}", index.trim_end_matches(')')),
            "{out}"
        );
        assert!((0.0..=100.0).contains(p), "{out}");
    }

    let txt = dir.path().join("readme.txt");
    std::fs::write(&txt, "hello").unwrap();
    let o = tokenmix(&[
        "classify",
        "--model-dir",
        fx.to_str().unwrap(),
        "--image",
        txt.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("warning: skipped ")
            && lines[0].contains("readme.txt: cannot read image"),
        "{err}"
    );
    assert_eq!(
        lines[1],
        "error: 1 of 1 images could not be read (each is listed above)"
    );
}

/// Writes `n` distinct small RGB images into `dir` (patterns vary with `seed` and the index).
fn write_images(dir: &Path, n: u32, seed: u32) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let path = dir.join(format!("{i:02}.png"));
            let k = seed * 31 + i * 7;
            image::RgbImage::from_fn(40 + 3 * i, 30 + 2 * seed, |x, y| {
                image::Rgb([
                    ((x * (k % 5 + 1) + y * 3) % 256) as u8,
                    ((y * (k % 7 + 2) + k * 13) % 256) as u8,
                    ((x * y + k * 29) % 256) as u8,
                ])
            })
            .save(&path)
            .unwrap();
            path
        })
        .collect()
}

/// `classify --json` lines by path.
fn json_lines(o: &Output) -> std::collections::BTreeMap<String, serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            (v["path"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[test]
fn classify_streams_json_over_directories_and_globs_past_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("photos");
    let mut images = write_images(&root, 3, 1);
    images.extend(write_images(&root.join("nested/deeper"), 2, 2));
    std::fs::write(root.join("corrupt.png"), b"\x89PNG but not really").unwrap();
    std::fs::write(root.join("notes.txt"), "not an image, and not looked at").unwrap();
    let fx = fixture("poolformer_s12");
    let o = tokenmix(&[
        "classify",
        "--model-dir",
        fx.to_str().unwrap(),
        root.to_str().unwrap(),
        "--json",
        "--top",
        "3",
        "--batch-size",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(
        err.contains("warning: skipped ") && err.contains("corrupt.png: cannot read image"),
        "{err}"
    );
    assert!(
        err.contains("error: 1 of 6 images could not be read"),
        "{err}"
    );
    let lines = json_lines(&o);
    let mut want: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    want.sort();
    assert_eq!(lines.keys().cloned().collect::<Vec<_>>(), want);
    for v in lines.values() {
        let idx: Vec<u64> = serde_json::from_value(v["indices"].clone()).unwrap();
        let p: Vec<f64> = serde_json::from_value(v["probabilities"].clone()).unwrap();
        assert_eq!((idx.len(), p.len()), (3, 3), "{v}");
        assert!(
            idx.iter().all(|&i| i < 10) && p.windows(2).all(|w| w[0] >= w[1]),
            "{v}"
        );
        assert!(p.iter().sum::<f64>() <= 1.0 + 1e-5 && p[0] > 0.0, "{v}");
        // The fixture has no label_names and 10 classes: labels are null.
        assert_eq!(v["labels"], serde_json::json!([null, null, null]));
    }

    // A quoted glob takes what it matches; the same images give the same answer.
    let pattern = format!("{}/nested/*/*.png", root.display());
    let o = tokenmix(&[
        "classify",
        "--model-dir",
        fx.to_str().unwrap(),
        &pattern,
        "--json",
        "--top",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let glob_lines = json_lines(&o);
    assert_eq!(glob_lines.len(), 2);
    for (path, v) in &glob_lines {
        assert_eq!(v["indices"], lines[path]["indices"]);
        let (a, b) = (
            v["probabilities"][0].as_f64().unwrap(),
            lines[path]["probabilities"][0].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-5, "batching changed {path}: {a} vs {b}");
    }
    assert_one_line_error(
        &tokenmix(&[
            "classify",
            "--model-dir",
            fx.to_str().unwrap(),
            "/nonexistent/*.png",
        ]),
        "matches no file",
    );
}

#[test]
fn shards_cover_the_inputs_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let images = write_images(&dir.path().join("a"), 4, 3);
    let images: Vec<_> = images
        .into_iter()
        .chain(write_images(&dir.path().join("b"), 3, 4))
        .collect();
    let fx = fixture("poolformer_s12");
    let run = |shard: Option<&str>| {
        let mut args = vec![
            "classify",
            "--model-dir",
            fx.to_str().unwrap(),
            dir.path().to_str().unwrap(),
            "--json",
            "--top",
            "1",
        ];
        if let Some(s) = shard {
            args.extend(["--shard", s]);
        }
        let o = tokenmix(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        json_lines(&o).into_keys().collect::<Vec<_>>()
    };
    let all = run(None);
    assert_eq!(all.len(), images.len());
    let mut covered = Vec::new();
    for i in 0..3 {
        let part = run(Some(&format!("{i}/3")));
        assert!(part.len() == 2 || part.len() == 3, "{part:?}");
        covered.extend(part);
    }
    covered.sort();
    assert_eq!(covered, all, "the shards overlap or miss files");
    let o = tokenmix(&[
        "classify",
        "--model-dir",
        fx.to_str().unwrap(),
        dir.path().to_str().unwrap(),
        "--shard",
        "3/3",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("index must be below the count"),
        "{}",
        stderr(&o)
    );
}

/// Cross-entropy, top-1 and top-5 from `classify --json --top 10` probabilities, for images
/// labelled by `label_of(path)`.
fn expected_stats(
    lines: &std::collections::BTreeMap<String, serde_json::Value>,
    label_of: impl Fn(&str) -> u64,
) -> (f64, f64, f64) {
    let (mut top1, mut top5, mut loss) = (0.0, 0.0, 0.0);
    for (path, v) in lines {
        let idx: Vec<u64> = serde_json::from_value(v["indices"].clone()).unwrap();
        let p: Vec<f64> = serde_json::from_value(v["probabilities"].clone()).unwrap();
        let label = label_of(path);
        let rank = idx.iter().position(|&i| i == label).unwrap();
        top1 += f64::from(rank == 0);
        top5 += f64::from(rank < 5);
        loss -= p[rank].ln();
    }
    let n = lines.len() as f64;
    (100.0 * top1 / n, 100.0 * top5 / n, loss / n)
}

#[test]
fn validate_agrees_with_classify_and_writes_timm_results() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (k, class) in ["ant", "bee", "cat"].iter().enumerate() {
        write_images(&data.join("val").join(class), 4, k as u32 + 5);
    }
    let fx = fixture("poolformer_s12");
    let fxs = fx.to_str().unwrap();
    let o = tokenmix(&[
        "classify",
        "--model-dir",
        fxs,
        data.to_str().unwrap(),
        "--json",
        "--top",
        "10",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 12);
    let folder = |path: &str| {
        Path::new(path)
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    let sorted_label = |path: &str| {
        ["ant", "bee", "cat"]
            .iter()
            .position(|c| *c == folder(path))
            .unwrap() as u64
    };

    let results = dir.path().join("results.json");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "validate",
            data.to_str().unwrap(),
            "--model-dir",
            fxs,
            "--batch-size",
            "5",
            "--results-file",
            results.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = tokenmix(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
        (stdout(&o), r)
    };
    let check = |r: &serde_json::Value, (top1, top5, loss): (f64, f64, f64)| {
        let round4 = |x: f64| (x * 1e4).round() / 1e4;
        assert_eq!(r["top1"].as_f64().unwrap(), round4(top1), "{r}");
        assert_eq!(r["top1_err"].as_f64().unwrap(), round4(100.0 - top1), "{r}");
        assert_eq!(r["top5"].as_f64().unwrap(), round4(top5), "{r}");
        assert!(
            (r["loss"].as_f64().unwrap() - loss).abs() < 1e-3,
            "{r} vs loss {loss}"
        );
    };
    // Folders in sorted order: ant 0, bee 1, cat 2.
    let (out, r) = run(&[]);
    let want = expected_stats(&lines, sorted_label);
    check(&r, want);
    assert!(
        out.contains(&format!("top-1:       {:.3}%", want.0)),
        "{out}"
    );
    assert!(out.contains("12 images in 3 classes"), "{out}");
    assert_eq!(r["model"], "poolformer_s12");
    let weights =
        candle_core::safetensors::load(fx.join("model.safetensors"), &Device::Cpu).unwrap();
    let params: usize = weights.values().map(|t| t.elem_count()).sum();
    assert_eq!(
        r["param_count"].as_f64(),
        Some((params as f64 / 1e4).round() / 100.0)
    );
    assert_eq!(
        (
            r["img_size"].as_u64(),
            r["crop_pct"].as_f64(),
            r["interpolation"].as_str()
        ),
        (Some(224), Some(0.9), Some("bicubic"))
    );

    // A class map sending each folder to the class the model predicts most for it: top-1 > 0.
    let mut map = serde_json::Map::new();
    for class in ["ant", "bee", "cat"] {
        let mut votes = [0; 10];
        for (path, v) in &lines {
            if folder(path) == class {
                votes[v["indices"][0].as_u64().unwrap() as usize] += 1;
            }
        }
        let best = (0..10)
            .max_by_key(|&i| (votes[i], std::cmp::Reverse(i)))
            .unwrap();
        map.insert(class.to_string(), best.into());
    }
    let map_file = dir.path().join("classes.json");
    std::fs::write(
        &map_file,
        serde_json::Value::Object(map.clone()).to_string(),
    )
    .unwrap();
    let (_, r) = run(&["--class-map", map_file.to_str().unwrap()]);
    let want = expected_stats(&lines, |p| map[&folder(p)].as_u64().unwrap());
    assert!(want.0 > 0.0);
    check(&r, want);

    // timm's text format: line i is the folder of class i.
    let txt = dir.path().join("classes.txt");
    std::fs::write(&txt, "x\ncat\nant\nbee\n").unwrap();
    let (_, r) = run(&["--class-map", txt.to_str().unwrap()]);
    check(
        &r,
        expected_stats(&lines, |p| [2, 3, 1][sorted_label(p) as usize]),
    );

    // Overridden preprocessing is what the results record; CSV has timm's columns.
    let csv = dir.path().join("results.csv");
    let o = tokenmix(&[
        "validate",
        data.join("val").to_str().unwrap(),
        "--model-dir",
        fxs,
        "--img-size",
        "64",
        "--crop-pct",
        "1.0",
        "--interpolation",
        "bilinear",
        "--results-file",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows[0], "model,top1,top1_err,top5,top5_err,param_count,img_size,crop_pct,interpolation,loss,images_per_sec");
    let row: Vec<&str> = rows[1].split(',').collect();
    assert_eq!(
        (row[0], row[6], row[7], row[8]),
        ("poolformer_s12", "64", "1.0", "bilinear"),
        "{text}"
    );

    assert_one_line_error(
        &tokenmix(&[
            "validate",
            data.to_str().unwrap(),
            "--model-dir",
            fxs,
            "--crop-pct",
            "1.5",
        ]),
        "--crop-pct",
    );
    std::fs::write(&txt, "ant\nbee\n").unwrap();
    assert_one_line_error(
        &tokenmix(&[
            "validate",
            data.to_str().unwrap(),
            "--model-dir",
            fxs,
            "--class-map",
            txt.to_str().unwrap(),
        ]),
        "no entry for folder 'cat'",
    );
    std::fs::write(data.join("val/bee/bad.png"), b"nope").unwrap();
    assert_one_line_error(
        &tokenmix(&["validate", data.to_str().unwrap(), "--model-dir", fxs]),
        "bad.png: cannot read image",
    );
}

#[test]
fn threads_apply_to_every_command_and_errors_print_once() {
    let o = tokenmix(&[
        "--threads",
        "1",
        "bench",
        "--models",
        "identityformer_s12",
        "--image-size",
        "32",
        "--batch",
        "1",
        "--iters",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["threads"], 1);
    assert!(tokenmix(&["info", "poolformer_s12", "--threads", "2"])
        .status
        .success());
    assert!(tokenmix(&["list", "--threads", "3", "s12"])
        .status
        .success());
    let o = tokenmix(&["--threads", "0", "list"]);
    assert!(
        !o.status.success() && stderr(&o).contains("--threads"),
        "{}",
        stderr(&o)
    );

    let dir = tempfile::tempdir().unwrap();
    let img = write_images(dir.path(), 1, 0).remove(0);
    let once = |o: &Output, needle: &str| {
        assert_one_line_error(o, needle);
        assert_eq!(stderr(o).matches(needle).count(), 1, "{}", stderr(o));
    };
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    once(
        &tokenmix(&[
            "classify",
            "--model-dir",
            empty.to_str().unwrap(),
            img.to_str().unwrap(),
        ]),
        "No such file or directory",
    );
    std::fs::copy(
        fixture("poolformer_s12").join("config.json"),
        empty.join("config.json"),
    )
    .unwrap();
    once(
        &tokenmix(&[
            "classify",
            "--model-dir",
            empty.to_str().unwrap(),
            img.to_str().unwrap(),
        ]),
        "neither model.safetensors nor pytorch_model.bin is in the directory",
    );
    once(
        &tokenmix(&[
            "run",
            "--model",
            "poolformer_s12",
            "--weights",
            "/nonexistent.safetensors",
            "--input",
            "x",
            "--output",
            "y",
        ]),
        "No such file or directory",
    );
    once(
        &tokenmix(&["train", "/nonexistent", "--model", "poolformer_s12"]),
        "No such file or directory",
    );
}

#[test]
fn bench_reports_json() {
    let o = tokenmix(&[
        "bench",
        "--models",
        "identityformer_s12",
        "--image-size",
        "64",
        "--batch",
        "2",
        "--iters",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let r = &v.as_array().unwrap()[0];
    assert_eq!(r["name"], "identityformer_s12");
    assert_eq!(r["batch"], 2);
    assert!(r["latency_ms"].as_f64().unwrap() > 0.0 && r["images_per_s"].as_f64().unwrap() > 0.0);
    assert!((r["top1"].as_f64().unwrap() - 74.6).abs() < 1e-9);
}

/// A Hugging Face cache laid out as the hub clients write it: blobs, a snapshot of symlinks, a ref.
#[test]
fn hub_models_resolve_through_the_local_cache() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--timm--poolformer_s12.sail_in1k");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for (i, file) in ["config.json", "model.safetensors"].iter().enumerate() {
        let blob = repo.join("blobs").join(format!("blob{i}"));
        std::fs::copy(fixture("poolformer_s12").join(file), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snapshot.join(file)).unwrap();
    }
    let out = cache.path().join("logits.safetensors");
    let reference = fixture("poolformer_s12").join("reference.safetensors");
    let run = |id: &str| {
        Command::new(env!("CARGO_BIN_EXE_tokenmix"))
            .env("HF_HUB_CACHE", cache.path())
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .args([
                "run",
                "--hub",
                id,
                "--input",
                reference.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let o = run("timm/poolformer_s12.sail_in1k");
    assert!(o.status.success(), "{}", stderr(&o));
    let got = &candle_core::safetensors::load(&out, &Device::Cpu).unwrap()["logits"];
    let want = &candle_core::safetensors::load(&reference, &Device::Cpu).unwrap()["logits"];
    let err: f32 = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(err < 1e-3, "{err}");
    assert!(run(&format!("timm/poolformer_s12.sail_in1k@{commit}"))
        .status
        .success());
    assert_one_line_error(
        &run("timm/caformer_s18.sail_in1k"),
        "is not in the Hugging Face cache",
    );
    assert_one_line_error(&run("timm/poolformer_s12.sail_in1k@v2"), "revision v2");
    assert_one_line_error(&run("../etc"), "is not a hub model id");
}

/// Two classes of 16x16 images (bright top half / bright bottom half) in `root/{train,val}`.
fn halves_dataset(root: &Path) {
    for split in ["train", "val"] {
        for (k, class) in ["bottom", "top"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..6u32 {
                let img = image::RgbImage::from_fn(16, 16, |x, y| {
                    let bright = (y < 8) == (k == 1);
                    let v = if bright { 220 } else { 30 } + ((x * 7 + y * 3 + i * 11) % 20) as u8;
                    image::Rgb([v, v, v])
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

#[test]
fn train_writes_a_loadable_checkpoint_curves_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    halves_dataset(&data);
    let out = tmp.path().join("run");
    let plot = tmp.path().join("curves.svg");
    let (d, o, p) = (
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        plot.to_str().unwrap(),
    );
    let common = [
        "--img-size",
        "16",
        "--batch-size",
        "4",
        "--hflip",
        "0",
        "--out",
        o,
    ];
    let mut args = vec!["train", d, "--model", "poolformerv2_s12", "--epochs", "2"];
    args.extend([
        "--model-args",
        r#"{"depths":[1,1],"dims":[8,16]}"#,
        "--plot",
        p,
    ]);
    args.extend(common);
    let o1 = tokenmix(&args);
    assert!(o1.status.success(), "{}", stderr(&o1));
    assert!(stdout(&o1).contains("validation top-1"), "{}", stdout(&o1));
    assert!(std::fs::read_to_string(&plot).unwrap().contains("top-1"));
    for f in [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "trainer.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let img = data.join("val/top/0.png");
    let c = tokenmix(&[
        "classify",
        "--model-dir",
        o,
        "--image",
        img.to_str().unwrap(),
        "--top",
        "1",
    ]);
    assert!(c.status.success(), "{}", stderr(&c));
    // The label line, not the path (which contains "top"): `  97.12%  top (1)`.
    let printed = stdout(&c);
    let label_line = printed.lines().nth(1).unwrap_or_default();
    let (pct, label) = label_line
        .trim()
        .split_once("%  ")
        .unwrap_or_else(|| panic!("{printed}"));
    assert!(
        pct.parse::<f64>().is_ok_and(|p| (0.0..=100.0).contains(&p)),
        "{printed}"
    );
    assert!(label == "top (1)" || label == "bottom (0)", "{printed}");

    // validate's loss and accuracy equal the trainer's own validation of the last epoch.
    let v = tokenmix(&["validate", d, "--model-dir", o, "--batch-size", "5"]);
    assert!(v.status.success(), "{}", stderr(&v));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("trainer.json")).unwrap()).unwrap();
    let last = &state["history"][1]["val"];
    let text = stdout(&v);
    let field = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..]
            .trim()
            .split('%')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!(
        (field("loss:") - last["loss"].as_f64().unwrap()).abs() < 1e-4,
        "{text} vs {last}"
    );
    assert!(
        (field("top-1:") - last["top1"].as_f64().unwrap()).abs() < 1e-9,
        "{text} vs {last}"
    );
    assert!(
        (field("top-5:") - last["top5"].as_f64().unwrap()).abs() < 1e-9,
        "{text} vs {last}"
    );

    let r = tokenmix(&["train", d, "--resume", o, "--epochs", "3", "--out", o]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("after epoch 2"), "{}", stderr(&r));
    assert!(stderr(&r).contains("epoch   3"), "{}", stderr(&r));
    let clash = tokenmix(&["train", d, "--resume", o, "--lr", "0.1"]);
    assert!(!clash.status.success());
    assert!(
        stderr(&clash).contains("cannot be used with"),
        "{}",
        stderr(&clash)
    );
    // A fine-tuned checkpoint keeps its architecture: overrides are refused, not ignored.
    let ignored = tokenmix(&[
        "train",
        d,
        "--init-from",
        o,
        "--model-args",
        "{\"dims\": [8]}",
    ]);
    assert!(!ignored.status.success());
    assert!(
        stderr(&ignored).contains("cannot be used with"),
        "{}",
        stderr(&ignored)
    );

    let missing = tmp.path().join("nope");
    assert_one_line_error(
        &tokenmix(&[
            "train",
            missing.to_str().unwrap(),
            "--model",
            "poolformer_s12",
        ]),
        "cannot read",
    );
    assert_one_line_error(
        &tokenmix(&[
            "train",
            d,
            "--model",
            "poolformer_s12",
            "--model-args",
            "[1]",
        ]),
        "JSON object",
    );
    assert_one_line_error(&tokenmix(&["train", d]), "give --model");
    assert_one_line_error(
        &tokenmix(&[
            "train",
            d,
            "--model",
            "poolformer_s12",
            "--crop-scale",
            "1.5",
        ]),
        "crop scale",
    );
    assert_one_line_error(
        &tokenmix(&["train", d, "--model", "poolformer_s12", "--epochs", "0"]),
        "epochs must be at least 1",
    );
}
