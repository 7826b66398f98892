//! Half precision against the references: every image parity fixture (random weights, the
//! reference's own input and f32 logits) run with the model computing in bf16 and in f16.
//! The relative L2 error of the logits must stay within what the dtype's 8 (bf16) or 11 (f16)
//! mantissa bits allow through a network of these depths; the figures are printed per fixture
//! (`cargo test --release --test half_precision -- --nocapture`) and recorded in
//! docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tokenmix::models::{load_model_dir_as, load_weights_as};

/// Largest relative L2 error of the logits in bf16 (8 mantissa bits).
const BF16_TOLERANCE: f64 = 4e-2;
/// Largest relative L2 error of the logits in f16 (11 mantissa bits).
const F16_TOLERANCE: f64 = 4e-3;

/// Fixtures whose random network amplifies rounding errors more than the others, with their
/// own (bf16, f16) bounds: CAS-ViT's random batch-norm statistics grow the error of every
/// dtype about 7x from the first stage to the last (f32: 3.3e-7 -> 2.3e-6; bf16: 9.6e-3 ->
/// 8.5e-2 in the stage features), where the other fixtures stay within 2x; its bf16 logits
/// are off by 0.08 to 0.21 depending on where the products round (not explained further yet).
const ILL_CONDITIONED: &[(&str, f64, f64)] = &[("rcvit_xs_custom", 3e-1, 4e-2)];

/// The (bf16, f16) bounds of fixture `name`.
fn tolerances(name: &str) -> (f64, f64) {
    ILL_CONDITIONED
        .iter()
        .find(|(n, ..)| *n == name)
        .map_or((BF16_TOLERANCE, F16_TOLERANCE), |&(_, b, f)| (b, f))
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every fixture that is an image model directory with a reference (sorted).
fn image_fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file() && p.join("reference.safetensors").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn rel_l2(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shape");
    let got = got.to_dtype(DType::F64).unwrap();
    let want = want.to_dtype(DType::F64).unwrap();
    let diff: f64 = (&got - &want)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let norm: f64 = want.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    diff.sqrt() / norm.sqrt().max(1e-12)
}

/// The fixture's logits computed in `dtype`, and the reference's.
fn logits_in(dir: &Path, dtype: DType) -> (Tensor, Tensor) {
    let name = dir.file_name().unwrap().to_string_lossy();
    let model = load_model_dir_as(dir, &Device::Cpu, dtype)
        .unwrap_or_else(|e| panic!("{name} in {dtype:?}: {e}"));
    assert_eq!(model.dtype, dtype);
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let logits = model
        .forward(&reference["input"])
        .unwrap_or_else(|e| panic!("{name} in {dtype:?}: {e}"));
    assert_eq!(
        logits.dtype(),
        DType::F32,
        "{name}: logits come back in f32"
    );
    (logits, reference["logits"].clone())
}

#[test]
fn every_fixture_runs_in_bf16_and_f16_within_the_dtypes_precision() {
    let mut failures = Vec::new();
    let fixtures = image_fixtures();
    assert!(fixtures.len() >= 30, "found {} fixtures", fixtures.len());
    println!(
        "{:<32} {:>12} {:>12}",
        "fixture", "bf16 rel L2", "f16 rel L2"
    );
    for dir in &fixtures {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut row = Vec::new();
        let (bf16, f16) = tolerances(&name);
        for (dtype, tolerance) in [(DType::BF16, bf16), (DType::F16, f16)] {
            let (got, want) = logits_in(dir, dtype);
            let err = rel_l2(&got, &want);
            if err.is_nan() || err > tolerance {
                failures.push(format!("{name} {dtype:?}: {err:.3e} > {tolerance:e}"));
            }
            row.push(err);
        }
        println!("{name:<32} {:>12.3e} {:>12.3e}", row[0], row[1]);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A checkpoint stored in bf16 loads without up-casting when the model computes in bf16, and
/// its weights arrive unchanged; the logits agree with the model loaded in f32 from the same
/// file to bf16's precision.
#[test]
fn a_bf16_checkpoint_runs_in_bf16_as_stored() {
    let dir = fixtures_dir().join("poolformer_s12");
    let weights =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let halved: std::collections::HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::BF16).unwrap()))
        .collect();
    let tmp = std::env::temp_dir().join(format!("tokenmix-bf16-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let file = tmp.join("model.safetensors");
    candle_core::safetensors::save(&halved, &file).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    std::fs::write(tmp.join("config.json"), config.to_string()).unwrap();

    let in_bf16 = load_model_dir_as(&tmp, &Device::Cpu, DType::BF16).unwrap();
    assert_eq!(in_bf16.stored_dtypes, vec![(DType::BF16, weights.len())]);
    let in_f32 = load_model_dir_as(&tmp, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(in_f32.stored_dtypes, vec![(DType::BF16, weights.len())]);
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let x = &reference["input"];
    let err = rel_l2(&in_bf16.forward(x).unwrap(), &in_f32.forward(x).unwrap());
    assert!(
        err <= BF16_TOLERANCE,
        "bf16 vs f32 from one bf16 file: {err:e}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A dtype models do not run in is refused by name before the checkpoint is read.
#[test]
fn an_unsupported_dtype_is_refused_by_name() {
    let dir = fixtures_dir().join("poolformer_s12");
    for dtype in [DType::F64, DType::U8, DType::I64] {
        let err = load_model_dir_as(&dir, &Device::Cpu, dtype)
            .unwrap_err()
            .to_string();
        assert!(err.contains(dtype.as_str()) && err.contains("CPU"), "{err}");
        let err = load_weights_as(
            "poolformer_s12",
            Path::new("/nonexistent"),
            &Device::Cpu,
            dtype,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(dtype.as_str()), "{err}");
    }
}
