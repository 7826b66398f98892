//! PoNet against its authors' code (scripts/make_ponet_fixtures.py): the v1.0
//! `PoNetForSequenceClassification` loaded from the directory its `save_pretrained` wrote, the
//! LRA pooling mixer from its weights, and the errors bad input gets.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenmix::mixers::ponet::{local_max3, PoNetMixer, SegmentLayout};
use tokenmix::mixers::MixerConfig;
use tokenmix::models::sequence::ponet::{
    segment_index, PoNetConfig, PoNetForPreTraining, CLS_ID, SEP_ID,
};
use tokenmix::models::sequence::{
    load_sequence_dir, load_sequence_tensors, sequence_entry, sequence_param_count,
    sequence_tensors, LoadedSequenceModel, SequenceConfig,
};
use tokenmix::models::Error;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sequence")
        .join(name)
}

fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
    let norm = b.sqr().unwrap().sum_all().unwrap();
    (diff.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap()).sqrt()
}

fn reference(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

/// The fixture's ids as u32 and its mask.
fn inputs(name: &str) -> (Tensor, Tensor) {
    let r = reference(name);
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    (ids, r["attention_mask"].clone())
}

fn load(name: &str) -> LoadedSequenceModel {
    load_sequence_dir(&fixture(name), &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn check(name: &str) {
    let loaded = load(name);
    let (ids, mask) = inputs(name);
    let logits = loaded.model.forward_t(&ids, Some(&mask), false).unwrap();
    let expected = &reference(name)["logits"];
    assert_eq!(logits.dims(), expected.dims(), "{name}");
    let err = rel_l2(&logits, expected);
    eprintln!("{name}: relative L2 {err:e}");
    assert!(err <= 1e-4, "{name}: relative L2 error {err:e}");
}

#[test]
fn ponet_classifier_with_clsgsepg_matches_the_reference() {
    check("ponet_cls");
}

#[test]
fn ponet_classifier_without_clsgsepg_matches_the_reference() {
    check("ponet_plain");
}

#[test]
fn padding_does_not_change_the_logits_of_the_tokens() {
    let loaded = load("ponet_cls");
    let (ids, mask) = inputs("ponet_cls");
    let all = loaded.model.forward_t(&ids, Some(&mask), false).unwrap();
    let len = mask
        .get(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as usize;
    let short = ids.narrow(0, 0, 1).unwrap().narrow(1, 0, len).unwrap();
    let alone = loaded.model.forward_t(&short, None, false).unwrap();
    let err = rel_l2(&alone, &all.narrow(0, 0, 1).unwrap());
    assert!(err <= 1e-5, "{err:e}");
}

#[test]
fn ponet_lra_mixer_matches_the_reference() {
    let dev = Device::Cpu;
    let dir = fixture("ponet_mixer");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let config = MixerConfig::from_json(&json).unwrap();
    let r = reference("ponet_mixer");
    let x = &r["x"];
    let dim = x.dim(2).unwrap();
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &dev).unwrap();
    let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &dev);
    let mixer = config.build(dim, vb).unwrap();
    assert_eq!(mixer.name(), "ponet");
    let y = mixer.forward(x).unwrap();
    let err = rel_l2(&y, &r["y"]);
    eprintln!("ponet_mixer (no mask): relative L2 {err:e}");
    assert!(err <= 1e-4, "{err:e}");

    let spec = json.as_object().unwrap();
    let heads = dim / spec["head_dim"].as_u64().unwrap() as usize;
    let segment_num = spec["segment_num"].as_u64().unwrap() as usize;
    let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
    let mixer = PoNetMixer::new(dim, heads, segment_num, vb).unwrap();
    let y = mixer.forward_masked(x, Some(&r["mask"])).unwrap();
    let err = rel_l2(&y, &r["y_masked"]);
    eprintln!("ponet_mixer (mask): relative L2 {err:e}");
    assert!(err <= 1e-4, "{err:e}");
}

#[test]
fn segments_follow_the_special_tokens() {
    let (c, s) = (CLS_ID, SEP_ID);
    let ids = [c, 5, 6, 7, s, 8, 9, s, 0, 0];
    let special: Vec<bool> = ids.iter().map(|&i| i == c || i == s).collect();
    assert_eq!(
        segment_index(&ids, &special, ids.len()),
        [0, 1, 1, 1, 2, 3, 3, 4, 5, 5]
    );
    let ids = [5, 6, s, 7, 8];
    let special: Vec<bool> = ids.iter().map(|&i| i == s).collect();
    assert_eq!(segment_index(&ids, &special, 5), [0, 0, 1, 2, 2]);
}

#[test]
fn segment_and_local_max_pool_as_the_reference_does() {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[[3f32], [1.], [4.], [1.], [5.], [9.], [2.], [6.]]], &dev).unwrap();
    let layout = SegmentLayout::new(1, 8, &[0, 0, 0, 1, 2, 2, 2, 2], None, None, &dev).unwrap();
    let seg: Vec<f32> = layout
        .segment_max(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(seg, [4., 4., 4., 1., 9., 9., 9., 9.]);
    let local: Vec<f32> = local_max3(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(local, [3., 4., 4., 5., 9., 9., 9., 6.]);
    // LRA chunks: 12 tokens, segment_num 4 -> chunks of 4, three segments.
    let x = Tensor::arange(0f32, 12., &dev)
        .unwrap()
        .reshape((1, 12, 1))
        .unwrap();
    let layout = SegmentLayout::chunks(1, 12, 4, None, &dev).unwrap();
    let seg: Vec<f32> = layout
        .segment_max(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(seg, [3., 3., 3., 3., 7., 7., 7., 7., 11., 11., 11., 11.]);
    let decreasing = SegmentLayout::new(1, 3, &[0, 1, 0], None, None, &dev).unwrap_err();
    assert!(
        decreasing.to_string().contains("must not decrease"),
        "{decreasing}"
    );
}

#[test]
fn the_mixer_trains_through_every_pooling() {
    let dev = Device::Cpu;
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let config = MixerConfig::default_of("ponet").unwrap();
    let mixer = config.build(64, vb).unwrap();
    for var in varmap.all_vars() {
        let noise = Tensor::randn(0f32, 0.1, var.shape(), &dev).unwrap();
        var.set(&noise).unwrap();
    }
    let x = Tensor::randn(0f32, 1.0, (2, 70, 64), &dev).unwrap();
    let y = mixer.forward(&x).unwrap();
    assert_eq!(y.dims(), x.dims());
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: {norm}");
    }
}

fn input_error(loaded: &LoadedSequenceModel, ids: &Tensor, mask: Option<&Tensor>) -> String {
    let cfg = loaded.config.downcast_ref::<PoNetConfig>().unwrap();
    let typed = cfg.check_input(ids, mask).unwrap_err();
    assert!(matches!(typed, Error::Input(_)), "{typed}");
    let err = loaded
        .model
        .forward_t(ids, mask, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&typed.to_string()), "{err} / {typed}");
    err
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let dev = Device::Cpu;
    let loaded = load("ponet_cls");
    let (ids, mask) = inputs("ponet_cls");
    let big = Tensor::new(&[[CLS_ID, 5, 200, SEP_ID]], &dev).unwrap();
    let msg = input_error(&loaded, &big, None);
    assert!(
        msg.contains("200") && msg.contains("vocab_size 200"),
        "{msg}"
    );
    let long = Tensor::zeros((1, 33), DType::U32, &dev).unwrap();
    let msg = input_error(&loaded, &long, None);
    assert!(
        msg.contains("1..=32") && msg.contains("max_position_embeddings"),
        "{msg}"
    );
    let float = ids.to_dtype(DType::F32).unwrap();
    let msg = input_error(&loaded, &float, None);
    assert!(msg.contains("u32") && msg.contains("F32"), "{msg}");
    let short_mask = mask.narrow(1, 0, 22).unwrap();
    let msg = input_error(&loaded, &ids, Some(&short_mask));
    assert!(msg.contains("mask") && msg.contains("[2, 22]"), "{msg}");
    let twos = (mask.to_dtype(DType::F32).unwrap() * 2.0).unwrap();
    assert!(input_error(&loaded, &ids, Some(&twos)).contains("only 0"));
    let empty = mask.zeros_like().unwrap();
    assert!(input_error(&loaded, &ids, Some(&empty)).contains("no tokens"));
    let flat = ids.flatten_all().unwrap();
    assert!(input_error(&loaded, &flat, None).contains("(batch, length)"));
}

#[test]
fn other_heads_and_options_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("ponet_cls");
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let edit = |key: &str, value: serde_json::Value| {
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json[key] = value;
        std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
        std::fs::copy(
            src.join("model.safetensors"),
            dir.path().join("model.safetensors"),
        )
        .unwrap();
        load_sequence_dir(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string()
    };
    let msg = edit(
        "architectures",
        serde_json::json!(["PoNetForTokenClassification"]),
    );
    assert!(msg.contains("PoNetForTokenClassification"), "{msg}");
    let msg = edit("architectures", serde_json::json!(["PoNetForPreTraining"]));
    assert!(msg.contains("cls.predictions"), "{msg}");
    // A classifier has no decoder to tie (it loads); a pre-training head with its own is
    // refused.
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["architectures"] = serde_json::json!(["PoNetForPreTraining"]);
    json["tie_word_embeddings"] = false.into();
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    let msg = load_sequence_dir(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("tie_word_embeddings"), "{msg}");
    let msg = edit("position_embedding_type", "relative_key".into());
    assert!(msg.contains("relative_key"), "{msg}");
    let msg = edit("hidden_act", "gelu_fast".into());
    assert!(msg.contains("gelu_fast"), "{msg}");
    let msg = edit("num_attention_heads", 5.into());
    assert!(msg.contains("num_attention_heads"), "{msg}");
    let msg = edit("hidden_size", 30.into());
    assert!(msg.contains("wrong shape"), "{msg}");
}

#[test]
fn a_saved_classifier_reloads_and_the_zoo_entry_counts_as_the_reference() {
    let dev = Device::Cpu;
    let loaded = load("ponet_cls");
    let mut tensors =
        candle_core::safetensors::load(fixture("ponet_cls").join("model.safetensors"), &dev)
            .unwrap();
    tensors.remove("ponet.embeddings.position_ids");
    let dir = tempfile::tempdir().unwrap();
    tokenmix::models::sequence::save_sequence_dir(dir.path(), &loaded.config, &tensors).unwrap();
    let again = load_sequence_dir(dir.path(), &dev).unwrap();
    let (ids, mask) = inputs("ponet_cls");
    let a = loaded.model.forward_t(&ids, Some(&mask), false).unwrap();
    let b = again.model.forward_t(&ids, Some(&mask), false).unwrap();
    assert_eq!(rel_l2(&a, &b), 0.0);
    // The reference's count (v1.0 `PoNetForPreTraining(BertConfig())`, parameters summed):
    // BERT-base's 109,482,240 + two more 768x768 projections per layer + the MLM transform,
    // its bias and the 3-way head; the decoder is the word embedding.
    let base = (sequence_entry("ponet-base-uncased").unwrap().config)();
    assert_eq!(base.architecture(), "PoNetForPreTraining");
    assert_eq!(sequence_param_count(&base).unwrap(), 124_281_405);
    let cfg = base.downcast_ref::<PoNetConfig>().unwrap().classifier(2);
    let cls = SequenceConfig::new(cfg);
    assert_eq!(sequence_param_count(&cls).unwrap(), 123_657_986);
}

/// The pre-trained model in the hub's layout (config.json, pytorch_model.bin) and its
/// reference logits.
#[test]
fn ponet_pretraining_loads_from_the_hub_layout_and_matches_the_reference() {
    let name = "ponet_pretrain";
    let dir = fixture(name);
    assert!(!dir.join("model.safetensors").exists());
    let loaded = load(name);
    assert_eq!(loaded.config.architecture(), "PoNetForPreTraining");
    let (ids, mask) = inputs(name);
    let r = reference(name);
    let mlm = loaded.model.forward_t(&ids, Some(&mask), false).unwrap();
    let err = rel_l2(&mlm, &r["prediction_logits"]);
    eprintln!("{name} MLM logits: relative L2 {err:e}");
    assert!(err <= 1e-4, "MLM logits: relative L2 {err:e}");

    let cfg = loaded.config.downcast_ref::<PoNetConfig>().unwrap().clone();
    let expected = sequence_tensors(&loaded.config).unwrap();
    let weights = dir.join("pytorch_model.bin");
    let tensors = load_sequence_tensors(
        &weights,
        &expected,
        &|n| loaded.config.ignored_tensor(n),
        "PoNetForPreTraining",
        &Device::Cpu,
    )
    .unwrap();
    let model = PoNetForPreTraining::new(
        cfg,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let (mlm2, sso) = model.pretraining_logits(&ids, Some(&mask)).unwrap();
    assert_eq!(rel_l2(&mlm2, &mlm), 0.0);
    let err = rel_l2(&sso, &r["seq_relationship_logits"]);
    eprintln!("{name} sentence-structure logits: relative L2 {err:e}");
    assert!(err <= 1e-4, "SSO logits: relative L2 {err:e}");
}

/// An older save's `model_type` "bert" reads as PoNet when its architectures name PoNet; a
/// plain BERT config is refused, and so is a pre-training checkpoint missing a head tensor.
#[test]
fn bert_typed_configs_read_only_as_ponet() {
    let src = fixture("ponet_pretrain");
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("pytorch_model.bin"),
        dir.path().join("pytorch_model.bin"),
    )
    .unwrap();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        edit(&mut json);
        std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
        load_sequence_dir(dir.path(), &Device::Cpu)
    };
    let bert = with(&|j| j["model_type"] = "bert".into()).unwrap();
    assert_eq!(bert.config.architecture(), "PoNetForPreTraining");
    let msg = with(&|j| {
        j["model_type"] = "bert".into();
        j["architectures"] = serde_json::json!(["BertForPreTraining"]);
    })
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("BertForPreTraining") && msg.contains("no BERT"),
        "{msg}"
    );
    // The same weights read as a classifier: the heads are extra, the classifier missing.
    let msg = with(&|j| j["architectures"] = serde_json::json!(["PoNetForSequenceClassification"]))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("classifier.weight") && msg.contains("cls.seq_relationship"),
        "{msg}"
    );
}

#[test]
fn words_are_encoded_between_the_special_ids_and_a_small_ponet_learns_a_keyword() {
    use tokenmix::train::text::{train_classifier, Example, TextTrainConfig, WordVocab, UNK_ID};
    let vocab = WordVocab::build(["b a a", "c b a"], 10, 1);
    assert_eq!(vocab.words(), ["a", "b", "c"]);
    let ids = vocab.encode(&["A, b!", "zz c"], 16);
    assert_eq!(ids, [CLS_ID, 104, 105, SEP_ID, UNK_ID, 106, SEP_ID]);
    assert_eq!(
        vocab.encode(&["a a a a", "b b"], 5),
        [CLS_ID, 104, 104, SEP_ID, SEP_ID]
    );

    let fillers = ["red", "green", "blue", "cyan", "gray", "pink"];
    let texts: Vec<(String, usize)> = (0..48)
        .map(|i| {
            let mut w: Vec<&str> = (0..6).map(|j| fillers[(i * 7 + j * 5) % 6]).collect();
            if i % 2 == 1 {
                w[(i / 2) % 6] = "offer";
            }
            (w.join(" "), i % 2)
        })
        .collect();
    let vocab = WordVocab::build(texts.iter().map(|(t, _)| t.as_str()), 100, 1);
    let data: Vec<Example> = texts
        .iter()
        .map(|(t, label)| Example {
            ids: vocab.encode(&[t.as_str()], 16),
            label: *label,
        })
        .collect();
    let cfg = PoNetConfig {
        vocab_size: vocab.vocab_size(),
        hidden_size: 16,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 16,
        ..PoNetConfig::default()
    };
    let tc = TextTrainConfig {
        epochs: 25,
        batch_size: 16,
        lr: 3e-3,
        warmup_steps: 5,
        ..TextTrainConfig::default()
    };
    let mut losses = Vec::new();
    let clf = train_classifier(&cfg, &data, &tc, &Device::Cpu, |_, loss, _| {
        losses.push(loss);
        Ok(())
    })
    .unwrap();
    let acc = clf.accuracy(&data, 16, &Device::Cpu).unwrap();
    assert!(acc >= 0.95, "accuracy {acc}, losses {losses:?}");
    assert!(losses.last().unwrap() < &losses[0], "{losses:?}");
}
