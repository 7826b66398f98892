//! Training: every family learns a fixed batch with every parameter getting a gradient, a
//! saved model reloads bit-exactly through the loader, resuming restores the run, and
//! fine-tuning re-initialises only the classifier.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use tokenmix::train::data::ImageFolder;
use tokenmix::train::mixup::{soft_targets, MixConfig};
use tokenmix::train::{ModelSpec, TrainConfig, Trainer};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One tiny configuration per family (the parity fixtures' configs), with three classes.
fn family_specs() -> Vec<(&'static str, ModelSpec)> {
    let names = [
        "poolformer_s12",
        "poolformerv2_s12",
        "identityformer_s12",
        "randformer_s12",
        "convformer_s18",
        "caformer_custom",
        "mambaformer_s18",
        "mambaout_custom",
        "mixer_s16_224",
        "resmlp_12_224",
        "gmlp_s16_224",
        "gfnet_ti",
        "msmlp_custom",
        "mambamixer_ti",
        "raftmlp_s",
        "affnet_et",
        "ninformer_cifar10_custom",
        "linattnformer_s18_custom",
        "transnext_micro_custom",
        "hydraformer_s18_custom",
        "tokenmix_s2a_t_custom",
    ];
    names
        .into_iter()
        .map(|n| {
            let mut spec = ModelSpec::read(&fixtures().join(n)).unwrap();
            spec.label_names = vec!["a".into(), "b".into(), "c".into()];
            (n, spec)
        })
        .collect()
}

fn input_for(spec: &ModelSpec, batch: usize, seed: u64) -> Tensor {
    let arch = spec.arch().unwrap();
    let (h, w) = arch.fixed_image_size().unwrap_or((32, 64));
    let c = arch.in_chans();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data: Vec<f32> = (0..batch * c * h * w)
        .map(|_| rng.random_range(-1.7..1.7))
        .collect();
    Tensor::from_vec(data, (batch, c, h, w), &Device::Cpu).unwrap()
}

fn config() -> TrainConfig {
    TrainConfig {
        epochs: 100,
        batch_size: 4,
        lr: 4e-3,
        warmup_epochs: 0,
        weight_decay: 0.0,
        drop_path: Some(0.1),
        mix: MixConfig {
            label_smoothing: 0.0,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn eval_loss(trainer: &Trainer, x: &Tensor, t: &Tensor) -> f32 {
    let logits = trainer.model().forward(x).unwrap();
    tokenmix::train::mixup::soft_cross_entropy(&logits, t)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn every_family_learns_a_fixed_batch_and_reloads() {
    let dev = Device::Cpu;
    let labels = [0, 1, 2, 1];
    let targets = Tensor::from_vec(soft_targets(&labels, 3, 1.0, 0.0), (4, 3), &dev).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (name, spec) in family_specs() {
        let x = input_for(&spec, 4, 1);
        let mut trainer = Trainer::from_scratch(spec, config(), 4, &dev).unwrap();
        let missing = trainer.parameters_without_gradient(&x, &targets).unwrap();
        assert!(missing.is_empty(), "{name}: no gradient for {missing:?}");
        let before = eval_loss(&trainer, &x, &targets);
        for _ in 0..60 {
            trainer.step(&x, &targets).unwrap();
        }
        let after = eval_loss(&trainer, &x, &targets);
        assert!(after < 0.5 * before, "{name}: loss {before} -> {after}");

        let dir = tmp.path().join(name);
        trainer.save_model(&dir).unwrap();
        let loaded = tokenmix::models::load_model_dir(&dir, &dev).unwrap();
        let ours = trainer.model().forward(&x).unwrap();
        let again = trainer.model().forward(&x).unwrap();
        assert_eq!(bits(&ours), bits(&again), "{name}: not deterministic");
        // The trainer's variables take the composed MLP, the reloaded constants the fused one
        // (`residual_mlp`), so the two agree to rounding, not to the bit.
        let theirs = loaded.forward(&x).unwrap();
        let diff = (&ours - &theirs)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "{name}: reloaded model differs by {diff}");
        assert_eq!(loaded.class_name(2).as_deref(), Some("c"));
    }
}

#[test]
fn drop_path_is_random_in_training_and_off_in_evaluation() {
    let dev = Device::Cpu;
    let (_, spec) = family_specs().remove(1);
    let x = input_for(&spec, 8, 2);
    let cfg = TrainConfig {
        drop_path: Some(0.9),
        ..config()
    };
    let trainer = Trainer::from_scratch(spec, cfg, 8, &dev).unwrap();
    let m = trainer.model();
    assert_eq!(bits(&m.forward(&x).unwrap()), bits(&m.forward(&x).unwrap()));
    let (a, b) = (
        m.forward_t(&x, true).unwrap(),
        m.forward_t(&x, true).unwrap(),
    );
    assert_ne!(bits(&a), bits(&b));
}

/// A folder dataset of `per_class` images per class: class `k`'s images are bright in band
/// `k` of the image, so a tiny model can learn them.
fn banded_dataset(root: &Path, per_class: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for k in 0..3u32 {
        let dir = root.join(format!("class{k}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let img = image::RgbImage::from_fn(24, 24, |_, y| {
                let on = y / 8 == k;
                let v = if on { 200 } else { 40 } + rng.random_range(0..40u8);
                image::Rgb([v, v, v])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

fn small_spec(classes: Vec<String>) -> ModelSpec {
    let args = serde_json::json!({"depths": [1, 1], "dims": [8, 16]});
    ModelSpec::new(
        "convformer_s18",
        args.as_object().unwrap().clone(),
        classes,
        Some((24, 24)),
    )
    .unwrap()
}

#[test]
fn fit_saves_resumes_and_fine_tunes() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    banded_dataset(&tmp.path().join("train"), 12, 1);
    banded_dataset(&tmp.path().join("val"), 4, 2);
    let train = ImageFolder::open(&tmp.path().join("train")).unwrap();
    let val = ImageFolder::open_with_classes(&tmp.path().join("val"), &train.classes).unwrap();
    assert_eq!(train.len(), 36);
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 8,
        lr: 3e-3,
        warmup_epochs: 1,
        mix: MixConfig {
            mixup_alpha: 0.8,
            cutmix_alpha: 1.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let out = tmp.path().join("run");
    let spec = small_spec(train.classes.clone());
    let mut trainer = Trainer::from_scratch(spec, cfg, train.len(), &dev).unwrap();
    let mut steps = 0;
    trainer
        .fit(
            &train,
            Some(&val),
            Some(&out),
            &mut |_| steps += 1,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(steps, 2 * 4);
    assert_eq!(trainer.history().len(), 2);
    assert!(out.join("best/model.safetensors").is_file());

    let mut resumed = Trainer::resume(&out, &dev).unwrap();
    assert_eq!(resumed.epochs_done(), 2);
    assert_eq!(resumed.history(), trainer.history());
    let x = input_for(resumed.spec(), 2, 3);
    assert_eq!(
        bits(&resumed.model().forward(&x).unwrap()),
        bits(&trainer.model().forward(&x).unwrap())
    );
    resumed.set_epochs(3);
    resumed
        .fit(&train, Some(&val), None, &mut |_| {}, &mut |_| {})
        .unwrap();
    assert_eq!(resumed.history().len(), 3);

    let two = vec!["x".to_string(), "y".to_string()];
    let spec = ModelSpec {
        label_names: two,
        ..ModelSpec::read(&out).unwrap()
    };
    let (tuned, fresh) = Trainer::fine_tune(&out, spec, config(), 8, &dev).unwrap();
    assert_eq!(fresh, vec!["head.fc.fc2.bias", "head.fc.fc2.weight"]);
    assert_eq!(tuned.model().num_classes(), 2);
    let features = tuned.model().forward_features(&x).unwrap();
    let original = trainer.model().forward_features(&x).unwrap();
    assert_eq!(bits(&features[1]), bits(&original[1]));
}

#[test]
fn bad_datasets_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ImageFolder::open(&tmp.path().join("missing")).unwrap_err();
    assert!(format!("{err:#}").contains("cannot read"), "{err:#}");
    let err = ImageFolder::open(tmp.path()).unwrap_err();
    assert!(
        err.to_string().contains("no class sub-directories"),
        "{err}"
    );
    std::fs::create_dir_all(tmp.path().join("cat")).unwrap();
    std::fs::write(tmp.path().join("cat/notes.txt"), "x").unwrap();
    let err = ImageFolder::open(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("no .jpg"), "{err}");
    let classes = vec!["dog".to_string()];
    let err = ImageFolder::open_with_classes(tmp.path(), &classes).unwrap_err();
    assert!(err.to_string().contains("does not have"), "{err}");
}

#[test]
fn fine_tuning_refuses_a_mis_shaped_backbone_tensor_and_one_class() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("convformer_s18");
    let dir = tmp.path().join("ckpt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut weights = candle_core::safetensors::load(src.join("model.safetensors"), &dev).unwrap();
    let name = "stages.0.blocks.0.mlp.fc1.weight";
    let bad = Tensor::zeros((3, 16), candle_core::DType::F32, &dev).unwrap();
    weights.insert(name.to_string(), bad);
    candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();
    let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let spec = ModelSpec {
        label_names: three,
        ..ModelSpec::read(&dir).unwrap()
    };
    let err = Trainer::fine_tune(&dir, spec, config(), 8, &dev).unwrap_err();
    assert!(err.to_string().contains(name), "{err}");

    let one = vec!["only".to_string()];
    let err = ModelSpec::new("poolformer_s12", Default::default(), one, None).unwrap_err();
    assert!(err.to_string().contains("at least 2 classes"), "{err}");
}

#[test]
fn fixed_size_models_take_their_input_size_from_model_args() {
    let args = serde_json::json!({"img_size": [32, 48], "num_blocks": 1, "embed_dim": 16});
    let classes: Vec<String> = ["a", "b"].map(String::from).to_vec();
    let spec = ModelSpec::new(
        "mixer_s16_224",
        args.as_object().unwrap().clone(),
        classes,
        None,
    )
    .unwrap();
    assert_eq!(spec.pretrained_cfg.image_size(), (32, 48));
}

#[test]
fn a_fixed_size_checkpoint_trains_at_the_size_it_was_built_for() {
    // The checkpoint's pretrained_cfg says 224x224, its model_args build the model for 32x64:
    // images must be loaded at 32x64, as the loader does.
    for name in ["mixer_s16_224", "gfnet_ti"] {
        let spec = ModelSpec::read(&fixtures().join(name)).unwrap();
        let built_for = spec.arch().unwrap().fixed_image_size().unwrap();
        assert_eq!(spec.pretrained_cfg.image_size(), built_for, "{name}");
    }
}

/// Replaces tensor `name` of the safetensors file at `path` by `t`.
fn replace_tensor(path: &Path, name: &str, t: Tensor) {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    assert!(
        tensors.contains_key(name),
        "{name} not in {}",
        path.display()
    );
    tensors.insert(name.to_string(), t);
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// `t` with its first value NaN, and `t` as integers.
fn poisoned(t: &Tensor) -> (Tensor, Tensor) {
    let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[0] = f32::NAN;
    let nan = Tensor::from_vec(v, t.shape(), t.device()).unwrap();
    (nan, t.to_dtype(candle_core::DType::I64).unwrap())
}

/// Fine-tuning and resuming read weights (and optimizer moments) with the checks model loading
/// applies: a NaN tensor and an integer tensor are refused, each named.
#[test]
fn fine_tuning_and_resuming_refuse_nan_and_integer_tensors() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let trainer = Trainer::from_scratch(small_spec(three.clone()), config(), 8, &dev).unwrap();
    let clean = tmp.path().join("clean");
    trainer.save(&clean).unwrap();
    let name = "stages.1.blocks.0.mlp.fc1.weight";
    let weights = candle_core::safetensors::load(clean.join("model.safetensors"), &dev).unwrap();
    let (nan, int) = poisoned(&weights[name]);
    for (what, t) in [("NaN or infinite", nan), ("unsupported dtype", int)] {
        let dir = tmp.path().join(what.replace(' ', "_"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "optimizer.safetensors",
            "trainer.json",
        ] {
            std::fs::copy(clean.join(f), dir.join(f)).unwrap();
        }
        replace_tensor(&dir.join("model.safetensors"), name, t.clone());
        let err = Trainer::resume(&dir, &dev).unwrap_err().to_string();
        assert!(err.contains(what) && err.contains(name), "resume: {err}");
        let spec = small_spec(three.clone());
        let err = Trainer::fine_tune(&dir, spec, config(), 8, &dev)
            .unwrap_err()
            .to_string();
        assert!(err.contains(what) && err.contains(name), "fine-tune: {err}");
    }
    // Optimizer moments too.
    let dir = tmp.path().join("bad_moments");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "trainer.json",
    ] {
        std::fs::copy(clean.join(f), dir.join(f)).unwrap();
    }
    let path = dir.join("optimizer.safetensors");
    let moments = candle_core::safetensors::load(&path, &dev).unwrap();
    let moment = moments.keys().min().unwrap().clone();
    let (nan, _) = poisoned(&moments[&moment]);
    replace_tensor(&path, &moment, nan);
    let err = Trainer::resume(&dir, &dev).unwrap_err().to_string();
    assert!(
        err.contains("NaN or infinite") && err.contains(&moment),
        "{err}"
    );
    // The clean checkpoint still resumes and fine-tunes.
    Trainer::resume(&clean, &dev).unwrap();
    Trainer::fine_tune(&clean, small_spec(three), config(), 8, &dev).unwrap();
}
