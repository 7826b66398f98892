//! Reading PyTorch `torch.save` checkpoints: the files under tests/fixtures/pth/ were written by
//! torch.save itself (scripts/make_pth_fixtures.py; versions in PROVENANCE.json).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;
use tokenmix::models::pth::{read_state_dict, Dtype, PthTensor};
use tokenmix::models::{checkpoint, load_model_dir, Error, LoadedModel};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(name: &str, key: Option<&str>) -> tokenmix::models::Result<Vec<(String, PthTensor)>> {
    let path = fixture(&format!("pth/{name}"));
    read_state_dict(&std::fs::read(&path).unwrap(), &path, key)
}

/// The elements of `t` as f64.
fn values(t: &PthTensor) -> Vec<f64> {
    let d = &t.data;
    match t.dtype {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        Dtype::I64 => d
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("unexpected dtype {other:?}"),
    }
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "float32",
        Dtype::F64 => "float64",
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        Dtype::I64 => "int64",
        _ => "other",
    }
}

/// Every tensor of plain.pth (protocol 2) and plain_p4.pth (protocol 4) has the dtype, shape
/// and elements torch wrote (values.json), in the checkpoint's order: non-contiguous views,
/// views sharing a storage, 0-d tensors and parameters included.
#[test]
fn state_dicts_read_as_torch_wrote_them() {
    let want: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("pth/values.json")).unwrap())
            .unwrap();
    for file in ["plain.pth", "plain_p4.pth"] {
        let got = read(file, None).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        let want_names: Vec<&str> = want.iter().map(|w| w["name"].as_str().unwrap()).collect();
        assert_eq!(names, want_names, "{file}");
        for ((name, t), w) in got.iter().zip(&want) {
            assert_eq!(dtype_name(t.dtype), w["dtype"], "{file} {name}");
            let shape: Vec<usize> = serde_json::from_value(w["shape"].clone()).unwrap();
            assert_eq!(t.shape, shape, "{file} {name}");
            let vals: Vec<f64> = serde_json::from_value(w["values"].clone()).unwrap();
            assert_eq!(values(t), vals, "{file} {name}");
        }
    }
}

#[test]
fn training_checkpoints_give_their_state_dict() {
    let got = read("nested.pth", None).unwrap();
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["f32", "f32_t", "view_a"], "module. prefix removed");
    assert_eq!(read("nested.pth", Some("state_dict")).unwrap(), got);
    let err = read("nested.pth", Some("model_ema"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no key 'model_ema'") && err.contains("epoch"),
        "{err}"
    );
    let err = read("nested.pth", Some("epoch")).unwrap_err().to_string();
    assert!(err.contains("'epoch' is an int, not a dict"), "{err}");
}

#[test]
fn unreadable_checkpoints_are_named_errors() {
    let cases = [
        ("legacy.pth", "legacy (pre-1.6) format"),
        ("whole_model.pth", "not a dict"),
    ];
    for (file, want) in cases {
        let err = read(file, None).unwrap_err();
        assert!(matches!(err, Error::Checkpoint { .. }), "{file}: {err:?}");
        assert!(err.to_string().contains(want), "{file}: {err}");
    }
    let plain = std::fs::read(fixture("pth/plain.pth")).unwrap();
    let path = Path::new("x.pth");
    let zip_err = |bytes: &[u8]| read_state_dict(bytes, path, None).unwrap_err().to_string();
    assert!(zip_err(b"hello").contains("not a PyTorch checkpoint"));
    for cut in [10, plain.len() / 2, plain.len() - 30] {
        let err = zip_err(&plain[..cut]);
        assert!(
            err.contains("x.pth: not a readable PyTorch checkpoint"),
            "{cut}: {err}"
        );
    }
}

/// Rewrites zip entry `entry` of `archive` with `data` (stored, as torch.save writes).
fn replace_entry(archive: &[u8], entry: &str, data: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        out.start_file(name.as_str(), opts).unwrap();
        out.write_all(if name == entry { data } else { &bytes })
            .unwrap();
    }
    out.finish().unwrap().into_inner()
}

#[test]
fn storages_must_hold_what_the_pickle_says() {
    let plain = std::fs::read(fixture("pth/plain.pth")).unwrap();
    let path = Path::new("x.pth");
    let short = replace_entry(&plain, "plain/data/0", &[0u8; 20]);
    let err = read_state_dict(&short, path, None).unwrap_err().to_string();
    assert!(err.contains("plain/data/0 holds 20 bytes"), "{err}");
    let bad_pickle = replace_entry(&plain, "plain/data.pkl", b"\x80\x02}q\x00(X\x01");
    let err = read_state_dict(&bad_pickle, path, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("plain/data.pkl"), "{err}");
    let big_endian = replace_entry(&plain, "plain/byteorder", b"big");
    let err = read_state_dict(&big_endian, path, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("big-endian"), "{err}");
}

/// Fixture `name`'s weights as the authors' code saved them (`pth/{name}.pth` or `.pth.tar`) load from a model
/// directory as `pytorch_model.bin` and give the authors' logits; converted, they hold exactly
/// the model's tensors under its names and load as safetensors to the same logits. Returns the
/// loaded model and the checkpoint's bytes.
fn authors_pth_loads_and_converts(name: &str, model_name: &str) -> (LoadedModel, Vec<u8>) {
    let device = Device::Cpu;
    let src = fixture(name);
    let reference =
        candle_core::safetensors::load(src.join("reference.safetensors"), &device).unwrap();
    let want = &reference["logits"];
    let check = |logits: Tensor| {
        let err = (logits - want).unwrap().sqr().unwrap().sum_all().unwrap();
        let norm = want.sqr().unwrap().sum_all().unwrap();
        let rel = (err.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap()).sqrt();
        assert!(rel <= 1e-4, "{name}: relative L2 error {rel:e}");
    };
    let pth_path = ["pth", "pth.tar"]
        .iter()
        .map(|ext| fixture(&format!("pth/{name}.{ext}")))
        .find(|p| p.is_file())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    std::fs::copy(&pth_path, dir.path().join("pytorch_model.bin")).unwrap();
    let model = load_model_dir(dir.path(), &device).unwrap();
    check(model.forward(&reference["input"]).unwrap());

    // Converted: exactly the model's tensors (no num_batches_tracked), loadable as safetensors.
    let pth = std::fs::read(&pth_path).unwrap();
    let st =
        checkpoint::convert_pth(&pth, Path::new("c.pth"), &model.config, model_name, None).unwrap();
    let converted = candle_core::safetensors::load_buffer(&st, &Device::Cpu).unwrap();
    let mut names: Vec<String> = converted.into_keys().collect();
    let mut expected: Vec<String> = checkpoint::expected_tensors(&model.config)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected, "{name}");
    std::fs::remove_file(dir.path().join("pytorch_model.bin")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), &st).unwrap();
    check(
        load_model_dir(dir.path(), &device)
            .unwrap()
            .forward(&reference["input"])
            .unwrap(),
    );
    (model, pth)
}

/// EfficientViM's training checkpoint layout (`model` and `model_ema` beside the optimizer and
/// config) loads by its `model` entry.
#[test]
fn efficientvim_checkpoint_loads_and_matches() {
    authors_pth_loads_and_converts("EfficientViM_M1_custom", "EfficientViM_M1");
}

/// FFNet's training checkpoints (timm's CheckpointSaver: `state_dict` and `state_dict_ema`,
/// unfused) load by their `state_dict` and are folded at load.
#[test]
fn ffnet_checkpoint_loads_and_matches() {
    authors_pth_loads_and_converts("ffnet_3_custom", "ffnet_3");
}

/// sail-sg/poolformer's original names (`network.{0..6}`, `layer_scale_1`, `patch_embed.proj`,
/// `norm`, `head`) load into timm's PoolFormer through the MetaFormer family's renaming (timm's
/// `checkpoint_filter_fn` as code), to the logits of the sail-sg model itself.
#[test]
fn sail_sg_poolformer_checkpoint_loads_and_matches() {
    authors_pth_loads_and_converts("poolformer_s12_sail_custom", "poolformer_s12");
}

/// iFormer's released weights are a plain state dict.
#[test]
fn iformer_checkpoint_loads_and_matches() {
    authors_pth_loads_and_converts("iformer_small_custom", "iformer_small");
}

/// WaveMix's released weights name the classifier `pool.2` (wavemix/classification.py); the
/// family's declared rename maps it onto timm.py's `head.2`, for `.pth` and safetensors alike.
#[test]
fn wavemix_checkpoint_loads_through_its_rename() {
    let (model, pth) = authors_pth_loads_and_converts("wavemix_custom", "wavemix");
    let tensors = read_state_dict(&pth, Path::new("w.pth"), None).unwrap();
    assert!(tensors.iter().any(|(n, _)| n == "pool.2.weight"));
    assert!(!tensors.iter().any(|(n, _)| n.starts_with("head.")));
    // A safetensors file with the authors' names loads too.
    let st = tokenmix::models::pth::to_safetensors(&tensors).unwrap();
    let loaded = checkpoint::load_safetensors_bytes(
        &st,
        Path::new("w.safetensors"),
        &model.config,
        "wavemix",
        &Device::Cpu,
    );
    assert!(loaded.is_ok(), "{:?}", loaded.err());
    // Both names at once is an error naming the second.
    let mut both = tensors.clone();
    let head = both
        .iter()
        .find(|(n, _)| n == "pool.2.weight")
        .unwrap()
        .1
        .clone();
    both.push(("head.2.weight".to_string(), head));
    let st = tokenmix::models::pth::to_safetensors(&both).unwrap();
    let err = checkpoint::load_safetensors_bytes(
        &st,
        Path::new("w.safetensors"),
        &model.config,
        "wavemix",
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("unexpected tensors") && err.contains("a second head.2.weight"),
        "{err}"
    );
}

/// The CAS-ViT fixture's weights saved by the authors' RCViT as a training checkpoint load
/// through every path and give the authors' logits.
#[test]
fn authors_checkpoint_loads_and_matches() {
    let device = Device::Cpu;
    let (_, pth) = authors_pth_loads_and_converts("rcvit_xs_custom", "rcvit_xs");

    // A checkpoint of another model is refused by name.
    let other = load_model_dir(&fixture("poolformer_s12"), &device).unwrap();
    let err = checkpoint::convert_pth(
        &pth,
        Path::new("c.pth"),
        &other.config,
        "poolformer_s12",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("missing tensors") && err.contains("unexpected tensors"),
        "{err}"
    );
}

/// NiNformer's train.py saves a plain state dict.
#[test]
fn ninformer_checkpoint_loads_and_matches() {
    authors_pth_loads_and_converts("ninformer_cifar10_custom", "ninformer_cifar10");
}

/// TransNeXt's training checkpoints (DeiT-style: `model` beside the optimizer, scheduler, epoch
/// and args) load by their `model` entry.
#[test]
fn transnext_checkpoint_loads_and_matches() {
    authors_pth_loads_and_converts("transnext_micro_custom", "transnext_micro");
}
