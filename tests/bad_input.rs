//! Bad input gets a clear error naming the problem: corrupt and truncated checkpoints, missing,
//! unexpected, mis-shaped and mistyped tensors, bad configs, unknown names, wrong input shapes
//! and non-image files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tokenmix::models::preprocess::load_image;
use tokenmix::models::{load_model_dir, load_weights, Error, PretrainedCfg};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A copy of a fixture's model directory in a temporary directory.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    load_model_dir(dir, &Device::Cpu).unwrap_err().to_string()
}

fn edit_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn truncated_checkpoint_is_reported() {
    let dir = copy_fixture("poolformer_s12");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors: not a valid safetensors file"),
        "{err}"
    );
}

#[test]
fn corrupt_checkpoint_is_reported() {
    let dir = copy_fixture("poolformer_s12");
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    assert!(load_err(dir.path()).contains("not a valid safetensors file"));
    std::fs::write(&path, b"").unwrap();
    assert!(load_err(dir.path()).contains("not a valid safetensors file"));
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("convformer_s18");
    edit_weights(dir.path(), |t| {
        t.remove("stages.1.blocks.0.token_mixer.dwconv.weight");
    });
    let err = load_err(dir.path());
    assert!(
        err.contains("1 missing tensors: stages.1.blocks.0.token_mixer.dwconv.weight"),
        "{err}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let dir = copy_fixture("convformer_s18");
    edit_weights(dir.path(), |t| {
        t.insert(
            "head.extra.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_err(dir.path());
    assert!(
        err.contains("1 unexpected tensors: head.extra.weight"),
        "{err}"
    );
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let dir = copy_fixture("caformer_s18");
    edit_weights(dir.path(), |t| {
        t.insert(
            "stages.2.blocks.0.token_mixer.qkv.weight".into(),
            Tensor::zeros((96, 31), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_err(dir.path());
    assert!(
        err.contains(
            "stages.2.blocks.0.token_mixer.qkv.weight (expected [96, 32], found [96, 31])"
        ),
        "{err}"
    );
}

#[test]
fn integer_tensor_is_rejected() {
    let dir = copy_fixture("poolformerv2_s12");
    edit_weights(dir.path(), |t| {
        t.insert(
            "stem.conv.bias".into(),
            Tensor::zeros(16, DType::U32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_err(dir.path());
    assert!(err.contains("unsupported dtype: stem.conv.bias"), "{err}");
}

#[test]
fn weights_for_another_model_are_rejected() {
    let err = load_weights(
        "caformer_s18",
        &fixture("poolformer_s12").join("model.safetensors"),
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("checkpoint does not fit caformer_s18") && err.contains("missing tensors"),
        "{err}"
    );
}

#[test]
fn unknown_architecture_is_reported() {
    let dir = copy_fixture("poolformer_s12");
    edit_config(dir.path(), |c| c["architecture"] = "poolformer_s13".into());
    let err = load_err(dir.path());
    assert!(
        err.contains("unknown model 'poolformer_s13'") && err.contains("poolformer_s12"),
        "{err}"
    );
}

#[test]
fn bad_model_args_are_reported() {
    let dir = copy_fixture("poolformer_s12");
    edit_config(dir.path(), |c| {
        c["model_args"]["token_mixer"] = "attention".into()
    });
    let err = load_err(dir.path());
    assert!(
        err.contains("poolformer_s12") && err.contains("unknown field `token_mixer`"),
        "{err}"
    );
    let dir = copy_fixture("poolformer_s12");
    edit_config(dir.path(), |c| {
        c["model_args"]["dims"] = serde_json::json!([16, 24, 4000000, 48])
    });
    let err = load_err(dir.path());
    assert!(err.contains("every dim must be in 1..=65536"), "{err}");
}

#[test]
fn unreadable_config_is_reported() {
    let dir = copy_fixture("poolformer_s12");
    std::fs::write(dir.path().join("config.json"), "{\"architecture\": ").unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("config.json") && err.contains("EOF"), "{err}");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert!(load_err(dir.path()).contains("config.json"));
}

#[test]
fn missing_weights_file_is_reported() {
    let dir = copy_fixture("poolformer_s12");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors: neither model.safetensors nor pytorch_model.bin"),
        "{err}"
    );
    assert!(load_err(&dir.path().join("nope")).contains("no such model directory"));
}

#[test]
fn wrong_input_shapes_are_rejected() {
    let model = load_model_dir(&fixture("caformer_custom"), &Device::Cpu).unwrap();
    for shape in [vec![2, 3, 64, 96], vec![1, 64, 96], vec![1, 1, 2, 2]] {
        let x = Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap();
        let err = model.forward(&x).unwrap_err();
        assert!(matches!(err, Error::Input(_)), "{shape:?}: {err}");
    }
    let x = Tensor::zeros((2, 1, 64, 96), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.forward(&x).unwrap().dims(), &[2, 5]);
}

#[test]
fn randformer_at_another_size_is_an_error_not_garbage() {
    let model = load_model_dir(&fixture("randformer_s12"), &Device::Cpu).unwrap();
    let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&x).unwrap_err().to_string();
    assert!(
        err.contains("random_mixing mixer: built for 8 tokens"),
        "{err}"
    );
}

#[test]
fn non_image_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PretrainedCfg::default();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "this is not an image").unwrap();
    let err = load_image(&text, &cfg, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("notes.jpg: cannot read image"), "{err}");
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let err = load_image(&empty, &cfg, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty.png: cannot read image"), "{err}");
    let missing = dir.path().join("missing.png");
    assert!(load_image(&missing, &cfg, &Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("missing.png"));
}

/// A safetensors file whose header is `header` (JSON) followed by `data`.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn headers_that_lie_are_reported() {
    let dir = copy_fixture("poolformer_s12");
    let path = dir.path().join("model.safetensors");
    let cases = [
        // offsets past the end of the data
        raw_safetensors(
            r#"{"stem.conv.bias":{"dtype":"F32","shape":[16],"data_offsets":[0,640]}}"#,
            &[0; 64],
        ),
        // size that disagrees with the shape
        raw_safetensors(
            r#"{"stem.conv.bias":{"dtype":"F32","shape":[16],"data_offsets":[0,32]}}"#,
            &[0; 32],
        ),
        // header length beyond the file
        {
            let mut b = raw_safetensors("{}", &[]);
            b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            b
        },
        // header that is not JSON
        raw_safetensors("{not json", &[]),
    ];
    for bytes in cases {
        std::fs::write(&path, &bytes).unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("not a valid safetensors file"), "{err}");
    }
}

#[test]
fn nan_and_infinite_weights_are_named() {
    for (dtype, value) in [
        (DType::F32, f32::NAN),
        (DType::F16, f32::INFINITY),
        (DType::BF16, f32::NEG_INFINITY),
    ] {
        let dir = copy_fixture("poolformer_s12");
        edit_weights(dir.path(), |t| {
            let bad = Tensor::full(value, 16, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            t.insert("stem.conv.bias".into(), bad);
        });
        let err = load_err(dir.path());
        assert!(
            err.contains("1 tensors with NaN or infinite values: stem.conv.bias"),
            "{dtype:?}: {err}"
        );
    }
}

#[test]
fn config_with_wrong_types_is_reported() {
    let dir = copy_fixture("poolformer_s12");
    edit_config(dir.path(), |c| c["num_classes"] = "ten".into());
    let err = load_err(dir.path());
    assert!(
        err.contains("config.json") && err.contains("invalid type"),
        "{err}"
    );
    let dir = copy_fixture("poolformer_s12");
    edit_config(dir.path(), |c| {
        c["pretrained_cfg"]["input_size"] = serde_json::json!("big")
    });
    assert!(load_err(dir.path()).contains("invalid type"));
    let dir = copy_fixture("poolformer_s12");
    edit_config(dir.path(), |c| {
        c["model_args"]["depths"] = serde_json::json!([1, -2, 1, 1])
    });
    let err = load_err(dir.path());
    assert!(
        err.contains("depths = [1,-2,1,1]") && err.contains("expected usize"),
        "{err}"
    );
}

/// Each family's `model_args` are its reference constructor's keywords; an unknown one is named
/// with every accepted one, the shared ones (`in_chans`, `num_classes`, ...) included.
#[test]
fn unknown_model_args_list_the_accepted_ones() {
    let cases = [
        (
            "caformer_custom",
            "depth",
            "`in_chans`, `num_classes`, `drop_path_rate`, `depths`, `dims`",
        ),
        (
            "mixer_custom",
            "hidden_dim",
            "`img_size`, `patch_size`, `num_blocks`",
        ),
        (
            "raftmlp_s",
            "raft",
            "`in_chans`, `in_channels`, `num_classes`",
        ),
        (
            "affnet_et",
            "width",
            "`mode`, `in_chans`, `num_classes`, `n_classes`",
        ),
    ];
    for (fixture, key, accepted) in cases {
        let dir = copy_fixture(fixture);
        edit_config(dir.path(), |c| c["model_args"][key] = 1.into());
        let err = load_err(dir.path());
        assert!(
            err.contains(&format!("unknown field `{key}`")) && err.contains(accepted),
            "{err}"
        );
    }
}

/// A ratio that rounds a hidden layer down to no channels is refused before anything is built
/// (the fused MLP kernels cannot run a 0-wide layer).
#[test]
fn zero_wide_hidden_layers_are_refused() {
    let dir = copy_fixture("mixer_s16_224");
    edit_config(dir.path(), |c| {
        c["model_args"]["embed_dim"] = 2.into();
        c["model_args"]["mlp_ratio"] = serde_json::json!([0.5, 0.25]);
    });
    let err = load_err(dir.path());
    assert!(
        err.contains("mlp_ratio (channels) 0.25 gives a hidden width of 0 at width 2"),
        "{err}"
    );
}

#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let dir = copy_fixture("poolformer_s12");
    edit_config(dir.path(), |c| {
        c["model_args"]["dims"] = serde_json::json!([65536, 65536, 65536, 65536]);
        c["model_args"]["depths"] = serde_json::json!([1000, 1000, 1000, 1000]);
    });
    let start = std::time::Instant::now();
    let err = load_err(dir.path());
    assert!(
        err.contains("a model of more than 8000000000 parameters, the most tokenmix builds"),
        "{err}"
    );
    assert!(start.elapsed().as_secs() < 30, "took {:?}", start.elapsed());
    let dir = copy_fixture("poolformer_s12");
    edit_config(dir.path(), |c| {
        c["model_args"]["num_classes"] = serde_json::json!(1u64 << 40)
    });
    assert!(load_err(dir.path()).contains("num_classes"));
}

/// A PNG claiming `w x h` pixels whose pixel data is a few bytes (a decompression bomb's
/// header).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    for (kind, data) in [
        (&b"IHDR"[..], ihdr),
        (b"IDAT", vec![0x78, 0x9c, 0x03, 0x00]),
        (b"IEND", vec![]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(&data);
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn huge_and_tiny_images() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PretrainedCfg::default();
    let huge = dir.path().join("huge.png");
    std::fs::write(&huge, png_header(20000, 20000)).unwrap();
    let err = load_image(&huge, &cfg, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("image is 20000x20000 pixels"), "{err}");
    let tiny = dir.path().join("tiny.png");
    image::RgbImage::from_pixel(1, 1, image::Rgb([10, 200, 30]))
        .save(&tiny)
        .unwrap();
    let x = load_image(&tiny, &cfg, &Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[3, 224, 224]);
}

#[test]
fn grayscale_rgba_and_16_bit_images_become_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PretrainedCfg::default();
    let rgb = dir.path().join("rgb.png");
    image::RgbImage::from_pixel(40, 30, image::Rgb([200, 100, 50]))
        .save(&rgb)
        .unwrap();
    let rgba = dir.path().join("rgba.png");
    image::RgbaImage::from_pixel(40, 30, image::Rgba([200, 100, 50, 7]))
        .save(&rgba)
        .unwrap();
    let rgb16 = dir.path().join("rgb16.png");
    image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(
        40,
        30,
        image::Rgb([200 * 257, 100 * 257, 50 * 257]),
    )
    .save(&rgb16)
    .unwrap();
    let gray = dir.path().join("gray.png");
    image::GrayImage::from_pixel(40, 30, image::Luma([90]))
        .save(&gray)
        .unwrap();
    let reference = load_image(&rgb, &cfg, &Device::Cpu).unwrap();
    for path in [&rgba, &rgb16] {
        let x = load_image(path, &cfg, &Device::Cpu).unwrap();
        let d: f32 = (x - &reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-5, "{}: {d}", path.display());
    }
    let g = load_image(&gray, &cfg, &Device::Cpu).unwrap();
    assert_eq!(g.dims(), &[3, 224, 224]);
    let red: f32 = g.get(0).unwrap().mean_all().unwrap().to_scalar().unwrap();
    assert!(
        (red - ((90.0 / 255.0 - 0.485) / 0.229) as f32).abs() < 1e-4,
        "{red}"
    );
}

/// Address-space limit (KiB) of the child that tries absurd `model_args`: far below what any of
/// them would need if a size reached an allocation, far above what refusing them takes.
const ABSURD_MEMORY_LIMIT_KIB: u64 = 3 << 20;

/// Every key each family's `model_args` accept (the `deny_unknown_fields` error lists them),
/// in every zoo entry's config, set to huge, zero, negative and fractional values (and huge,
/// empty or extreme lists), plus absurd `pretrained_cfg` input sizes: each is refused with a
/// clean error (never a panic, a candle error from the build or a giant allocation). The cases
/// run in a child process (this test binary, `absurd_model_args_child`) under `ulimit -v`, since
/// a failed allocation aborts the process; the child prints each case before trying it, so an
/// abort is reported with the case that caused it.
#[test]
fn absurd_model_args_are_refused_within_bounded_memory() {
    let exe = std::env::current_exe().unwrap();
    let script = format!("ulimit -v {ABSURD_MEMORY_LIMIT_KIB} && exec \"$0\" \"$@\"");
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .arg(&exe)
        .args(["--ignored", "--exact", "absurd_model_args_child"])
        .args(["--nocapture", "--test-threads", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last_case = stdout.lines().rev().find(|l| l.starts_with("CASE "));
    assert!(
        out.status.success() && stdout.contains("ABSURD CASES DONE"),
        "the child failed ({}); last case started: {last_case:?}\nstdout tail: {}\nstderr tail: {}",
        out.status,
        tail(&stdout, 4000),
        tail(&stderr, 4000)
    );
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

/// Numbers tried for every numeric `model_args` entry: bounds the families allow and values
/// far beyond them, zero, negative and fractional ones.
fn absurd_numbers() -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        json!(0),
        json!(-1),
        json!(63),
        json!(64),
        json!(1000),
        json!(4096),
        json!(16384),
        json!(65536),
        json!(1_000_000),
        json!(1_000_000_000u64),
        json!(1u64 << 40),
        json!(1u64 << 62),
        json!(u64::MAX),
        json!(0.0001),
        json!(0.5),
        json!(1.5),
        json!(-1.5),
        json!(1e9),
        json!(1e300),
    ]
}

/// Values of one `model_args` key to try, shaped after `template` (the config's value of the
/// field of that name, if any): the number itself, every entry or the first entry of a list (or
/// of every inner list) replaced, a huge and an empty list.
fn absurd_values(template: Option<&serde_json::Value>) -> Vec<serde_json::Value> {
    use serde_json::Value;
    let numbers = absurd_numbers();
    let mut out = Vec::new();
    match template {
        Some(Value::Array(items)) if !items.is_empty() => {
            let nested = matches!(items[0], Value::Array(_));
            for v in &numbers {
                let fill = |item: &Value| match item {
                    Value::Array(inner) => Value::Array(vec![v.clone(); inner.len().max(1)]),
                    _ => v.clone(),
                };
                out.push(Value::Array(items.iter().map(fill).collect()));
                let mut first = items.clone();
                match &mut first[0] {
                    Value::Array(inner) if !inner.is_empty() => inner[0] = v.clone(),
                    slot => *slot = v.clone(),
                }
                out.push(Value::Array(first));
                if nested {
                    out.push(Value::Array(vec![
                        Value::Array(vec![v.clone()]);
                        items.len()
                    ]));
                }
            }
            // Lists of objects (RaftMLP's `layers`): each numeric field of every entry, then of
            // the first entry alone.
            if let Value::Object(first) = &items[0] {
                for (field, value) in first {
                    if !matches!(value, Value::Number(_) | Value::Array(_)) {
                        continue;
                    }
                    for v in &numbers {
                        let set = |item: &Value| {
                            let mut item = item.clone();
                            item[field] = fill(Some(value), v);
                            item
                        };
                        out.push(Value::Array(items.iter().map(set).collect()));
                        let mut first_only = items.clone();
                        first_only[0] = set(&items[0]);
                        out.push(Value::Array(first_only));
                    }
                }
            }
            out.push(Value::Array(vec![items[0].clone(); 100_000]));
            out.push(Value::Array(Vec::new()));
            if nested {
                out.push(Value::Array(vec![Value::Array(Vec::new()); items.len()]));
            }
        }
        _ => {
            for v in &numbers {
                out.push(v.clone());
                out.push(Value::Array(vec![v.clone(); 4]));
            }
            out.push(Value::Array(vec![serde_json::json!(1); 100_000]));
        }
    }
    out
}

/// `template` (a number, a list or a list of lists or of objects) with every number set to `v`.
fn fill(template: Option<&serde_json::Value>, v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match template {
        Some(Value::Array(items)) => Value::Array(items.iter().map(|i| fill(Some(i), v)).collect()),
        Some(Value::Object(fields)) => Value::Object(
            fields
                .iter()
                .map(|(k, f)| (k.clone(), fill(Some(f), v)))
                .collect(),
        ),
        Some(Value::Number(_)) | None => v.clone(),
        Some(other) => other.clone(),
    }
}

/// The keys a zoo model's `model_args` accept, from the unknown-field error.
fn accepted_keys(model: &str, weights: &[u8]) -> Vec<String> {
    let config = serde_json::json!({"architecture": model, "model_args": {"no_such_key": 1}});
    let err = tokenmix::models::load_from_bytes(&config.to_string(), weights, &Device::Cpu)
        .unwrap_err()
        .to_string();
    let listed = err
        .split("expected one of ")
        .nth(1)
        .unwrap_or_else(|| panic!("{model}: no key list in {err}"));
    listed
        .split(", ")
        .map(|k| k.trim().trim_matches('`').to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

/// The child half of [`absurd_model_args_are_refused_within_bounded_memory`].
#[test]
#[ignore = "run by absurd_model_args_are_refused_within_bounded_memory in a memory-limited child"]
fn absurd_model_args_child() {
    use std::io::Write;
    let weights = raw_safetensors("{}", &[]);
    let mut failures = Vec::new();
    let (mut cases, mut accepted) = (0usize, 0usize);
    let mut slowest = (std::time::Duration::ZERO, String::new());
    let mut families_seen = std::collections::BTreeSet::new();
    for entry in tokenmix::models::list_models("") {
        let config = entry.config();
        let first_of_family = families_seen.insert(config.family());
        let fields = serde_json::to_value(&config).unwrap();
        let keys = accepted_keys(entry.name, &weights);
        let with_args = |args: serde_json::Value| serde_json::json!({"architecture": entry.name, "model_args": args});
        let mut trials: Vec<serde_json::Value> = Vec::new();
        for key in &keys {
            for value in absurd_values(fields.get(key)) {
                trials.push(with_args(serde_json::json!({ key: value })));
            }
        }
        // Two sizes at once (wide and deep, wide with large kernels, ...), each within the
        // bounds a key alone is checked against, for one model of each family.
        if first_of_family {
            let sizes = [63, 1000, 4096, 16384, 65536].map(serde_json::Value::from);
            for (i, a) in keys.iter().enumerate() {
                for b in &keys[i + 1..] {
                    for va in &sizes {
                        for vb in &sizes {
                            let (fa, fb) = (fill(fields.get(a), va), fill(fields.get(b), vb));
                            trials.push(with_args(serde_json::json!({ a: fa, b: fb })));
                        }
                    }
                }
            }
        }
        for v in absurd_numbers() {
            let half = [0.5, 0.5, 0.5];
            let cfg = serde_json::json!({"input_size": [3, v, v], "mean": half, "std": half});
            trials.push(serde_json::json!({"architecture": entry.name, "pretrained_cfg": cfg}));
            trials.push(serde_json::json!({"architecture": entry.name, "num_classes": v}));
        }
        for trial in trials {
            let text = trial.to_string();
            let shown: String = text.chars().take(300).collect();
            println!("CASE {shown}");
            std::io::stdout().flush().unwrap();
            cases += 1;
            let start = std::time::Instant::now();
            let result = std::panic::catch_unwind(|| {
                tokenmix::models::load_from_bytes(&text, &weights, &Device::Cpu).map(|_| ())
            });
            let took = start.elapsed();
            if took > slowest.0 {
                slowest = (took, shown.clone());
            }
            match result {
                Err(_) => failures.push(format!("panicked: {shown}")),
                Ok(Ok(())) => failures.push(format!("loaded without weights: {shown}")),
                Ok(Err(Error::Config { .. })) => {}
                Ok(Err(Error::WeightMismatch { details, .. })) if details.contains("missing") => {
                    accepted += 1
                }
                Ok(Err(e)) => failures.push(format!("unclean error {e}: {shown}")),
            }
        }
    }
    println!(
        "ABSURD CASES DONE: {cases} cases, {accepted} accepted (all tensors missing), slowest \
         {:?}: {}",
        slowest.0, slowest.1
    );
    let all: Vec<&str> = tokenmix::models::FAMILIES.iter().map(|f| f.name).collect();
    assert_eq!(
        families_seen.len(),
        all.len(),
        "{families_seen:?} vs {all:?}"
    );
    assert!(slowest.0.as_secs() < 20, "{slowest:?}");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
