//! The `tokenmix` binary end to end: listing, info, run, classify, bench, and one-line errors.

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
    assert_one_line_error(
        &tokenmix(&["info", "convformer_s19"]),
        "unknown model 'convformer_s19'",
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
    assert_eq!(out.lines().filter(|l| l.contains("% ")).count(), 3, "{out}");
    assert!(out.contains("class "), "{out}");

    let txt = dir.path().join("readme.txt");
    std::fs::write(&txt, "hello").unwrap();
    let o = tokenmix(&[
        "classify",
        "--model-dir",
        fx.to_str().unwrap(),
        "--image",
        txt.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "cannot read image");
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
    assert!(stdout(&c).contains("top") || stdout(&c).contains("bottom"));

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
