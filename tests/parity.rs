//! Parity with the reference implementations (timm; sail-sg for IdentityFormer/RandFormer):
//! each fixture under tests/fixtures/ is a model directory written by
//! scripts/make_fixtures.py with every parameter drawn at random, plus the reference input,
//! logits and stage features.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tokenmix::models::load_model_dir;

const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// The device under test: the CPU, or the first CUDA GPU with `TOKENMIX_DEVICE=cuda` (a build
/// with `--features cuda`; the GPU bundle runs the parity tests this way).
fn test_device() -> Device {
    match std::env::var("TOKENMIX_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0).expect("TOKENMIX_DEVICE=cuda but no usable CUDA GPU"),
        _ => Device::Cpu,
    }
}

fn rel_l2(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shape");
    let want = &want.to_device(got.device()).unwrap();
    let diff = (got - want).unwrap().sqr().unwrap().sum_all().unwrap();
    let norm = want.sqr().unwrap().sum_all().unwrap();
    let d: f32 = diff.to_scalar().unwrap();
    let n: f32 = norm.to_scalar().unwrap();
    (d as f64).sqrt() / (n as f64).sqrt().max(1e-12)
}

fn check(name: &str) {
    let dir = fixture(name);
    let device = test_device();
    let model = load_model_dir(&dir, &device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &device).unwrap();
    let input = &reference["input"];
    let features = model.forward_features(input).unwrap();
    for (i, f) in features.iter().enumerate() {
        let err = rel_l2(f, &reference[&format!("features.{i}")]);
        assert!(
            err <= TOLERANCE,
            "{name} features.{i}: relative L2 error {err:e}"
        );
    }
    assert!(!reference.contains_key(&format!("features.{}", features.len())));
    let logits = model.forward(input).unwrap();
    let err = rel_l2(&logits, &reference["logits"]);
    assert!(err <= TOLERANCE, "{name} logits: relative L2 error {err:e}");
    let strided = model.forward(&strided(input)).unwrap();
    let err = rel_l2(&strided, &reference["logits"]);
    assert!(
        err <= TOLERANCE,
        "{name} logits of a strided input: relative L2 error {err:e}"
    );
}

/// `x` `(B, C, H, W)` as a non-contiguous view: the same values, stored with H and W swapped.
fn strided(x: &Tensor) -> Tensor {
    let view = x
        .transpose(2, 3)
        .unwrap()
        .contiguous()
        .unwrap()
        .transpose(2, 3)
        .unwrap();
    assert!(!view.is_contiguous());
    view
}

#[test]
fn poolformer_v1_matches_timm() {
    check("poolformer_s12");
}

#[test]
fn poolformer_v2_matches_timm() {
    check("poolformerv2_s12");
}

#[test]
fn convformer_matches_timm() {
    check("convformer_s18");
}

#[test]
fn caformer_matches_timm() {
    check("caformer_s18");
}

#[test]
fn caformer_with_custom_model_args_matches_timm() {
    check("caformer_custom");
}

#[test]
fn identityformer_matches_sail_sg() {
    check("identityformer_s12");
}

#[test]
fn randformer_matches_sail_sg() {
    check("randformer_s12");
}

/// f16 and bf16 checkpoints load and give the logits of the f32 model run on the rounded weights.
#[test]
fn half_precision_checkpoints_load() {
    let src = fixture("convformer_s18");
    let device = test_device();
    let reference =
        candle_core::safetensors::load(src.join("reference.safetensors"), &device).unwrap();
    let weights = candle_core::safetensors::load(src.join("model.safetensors"), &device).unwrap();
    for (dtype, tol) in [(DType::F16, 5e-3), (DType::BF16, 4e-2)] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
        let half: std::collections::HashMap<String, Tensor> = weights
            .iter()
            .map(|(k, v)| (k.clone(), v.to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&half, dir.path().join("model.safetensors")).unwrap();
        let model = load_model_dir(dir.path(), &device).unwrap();
        let logits = model.forward(&reference["input"]).unwrap();
        assert_eq!(logits.dtype(), DType::F32);
        let err = rel_l2(&logits, &reference["logits"]);
        assert!(err <= tol, "{dtype:?}: relative L2 error {err:e}");
    }
}

#[test]
fn mambaout_matches_timm() {
    check("mambaout_femto");
}

#[test]
fn mambaout_with_custom_model_args_matches_timm() {
    check("mambaout_custom");
}

#[test]
fn mlp_mixer_matches_timm() {
    check("mixer_s16_224");
}

#[test]
fn gmixer_matches_timm() {
    check("gmixer_12_224");
}

#[test]
fn resmlp_matches_timm() {
    check("resmlp_12_224");
}

#[test]
fn gmlp_matches_timm() {
    check("gmlp_s16_224");
}

#[test]
fn mlp_mixer_with_custom_model_args_matches_timm() {
    check("mixer_custom");
}

#[test]
fn gfnet_matches_the_reference() {
    check("gfnet_ti");
}

/// A checkpoint trained at 64x64 loaded at 96x96: filters and position embedding resized as
/// GFNet's fine-tuning script does.
#[test]
fn gfnet_at_another_resolution_matches_the_reference() {
    check("gfnet_resized");
}

#[test]
fn msmlp_matches_the_reference() {
    check("msmlp_tiny");
}

#[test]
fn msmlp_with_custom_model_args_matches_the_reference() {
    check("msmlp_custom");
}

#[test]
fn mambaformer_matches_the_mamba_reference() {
    check("mambaformer_s18");
}

#[test]
fn mambamixer_matches_its_pytorch_reference() {
    check("mambamixer_ti");
}

#[test]
fn raftmlp_matches_the_reference() {
    check("raftmlp_s");
}

/// A non-square input: every level's grid is resized bicubically to the trained one and back.
#[test]
fn raftmlp_at_another_resolution_matches_the_reference() {
    check("raftmlp_resized");
}

/// timm's PoolFormer against sail-sg/poolformer's own model (weights renamed by timm's
/// `checkpoint_filter_fn`).
#[test]
fn poolformer_matches_sail_sg() {
    check("poolformer_s12_sail_custom");
}

#[test]
fn affnet_matches_the_reference() {
    check("affnet_et");
}

/// AFFNet whose config.json says `attn_norm_layer: layer_norm` (cvnets' per-pixel LayerNorm,
/// std + eps) loads the same tensor names and matches the authors' model built that way.
#[test]
fn affnet_with_cvnets_layer_norm_matches_the_reference() {
    check("affnet_et_layer_norm");
}

#[test]
fn rcvit_matches_cas_vit() {
    check("rcvit_xs_custom");
}

/// Loads fixture `name` as trainable variables (a `VarMap`), checks its logits against the
/// reference and that the gradient of a loss reaches each tensor of `grads`.
fn check_trainable(name: &str, grads: &[&str]) {
    let dir = fixture(name);
    let device = Device::Cpu;
    let frozen = load_model_dir(&dir, &device).unwrap();
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &device).unwrap();
    let varmap = candle_nn::VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in weights {
            data.insert(name, candle_core::Var::from_tensor(&t).unwrap());
        }
    }
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let trainable = frozen.config.build(vb).unwrap();
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &device).unwrap();
    let logits = trainable.forward_t(&reference["input"], false).unwrap();
    let err = rel_l2(&logits, &reference["logits"]);
    assert!(
        err <= TOLERANCE,
        "{name} trainable: relative L2 error {err:e}"
    );
    let grad_store = logits.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let data = varmap.data().lock().unwrap();
    for tensor in grads {
        let g = grad_store.get(data[*tensor].as_tensor()).expect(tensor);
        let norm: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 0.0, "{name} {tensor}: zero gradient");
    }
}

/// CAS-ViT folds its batch norms into the neighbouring convolutions and products when its
/// weights are frozen; with trainable weights (a `VarMap`) it runs the norms unfolded. Both give
/// the authors' logits, and the trainable model's gradients reach the norms.
#[test]
fn rcvit_trainable_path_matches_cas_vit() {
    check_trainable(
        "rcvit_xs_custom",
        &[
            "network.0.0.norm1.weight",
            "network.0.0.norm2.bias",
            "patch_embed.1.weight",
        ],
    );
}

/// EfficientViM with trainable weights: the folded batch norms are re-derived each pass and the
/// gradients reach the stem, the channel LayerNorms, the mixer and the head weights.
#[test]
fn efficientvim_trainable_path_matches_mlvlab() {
    check_trainable(
        "EfficientViM_M1_custom",
        &[
            "patch_embed.conv.0.conv.weight",
            "patch_embed.conv.0.norm.weight",
            "stages.0.blocks.0.norm.weight",
            // Not `mixer.A`: added along the softmax's axis, it gets no gradient (in the
            // reference too).
            "stages.0.blocks.0.mixer.BCdt_proj.conv.weight",
            "stages.0.blocks.0.alpha",
            "norm.3.weight",
            "weights",
        ],
    );
}

#[test]
fn wavemix_matches_the_authors() {
    check("wavemix_custom");
    check("wavemix_lite_custom");
}

/// WaveMix with trainable weights: the batch norms after the transposed convolutions and in the
/// stem are unfolded, and the gradients reach every level's layers and the stem.
#[test]
fn wavemix_trainable_path_matches_the_authors() {
    check_trainable(
        "wavemix_custom",
        &[
            "conv.0.weight",
            "conv.4.weight",
            "layers.0.reduction.weight",
            "layers.0.feedforward3.0.weight",
            "layers.1.feedforward1.4.weight",
            "layers.1.feedforward2.5.bias",
            "head.2.weight",
        ],
    );
}

/// Run at 96x96 with position embeddings for 64x64, so every stage interpolates its embedding.
#[test]
fn iformer_matches_sail_sg() {
    check("iformer_small_custom");
}

/// iFormer with trainable weights: the gradients reach the stem, the interpolated position
/// embeddings, both high-frequency branches, the attention and the layer scales.
#[test]
fn iformer_trainable_path_matches_sail_sg() {
    check_trainable(
        "iformer_small_custom",
        &[
            "patch_embed.proj1.weight",
            "patch_embed.norm2.weight",
            "pos_embed1",
            "pos_embed4",
            "blocks1.0.attn.high_mixer.proj1.weight",
            "blocks2.0.attn.high_mixer.proj2.bias",
            "blocks3.1.attn.low_mixer.qkv.weight",
            "blocks3.0.layer_scale_1",
            "blocks4.0.attn.conv_fuse.weight",
            "norm.weight",
        ],
    );
}

/// FFNet from the authors' training (unfused) checkpoint layout, folded at load, on an odd
/// non-square input: its logits match both the reference's unfused model and the reference's
/// own fused form (`logits_fused`).
#[test]
fn ffnet_matches_its_unfused_and_fused_forms() {
    check("ffnet_3_custom");
    let dir = fixture("ffnet_3_custom");
    let model = load_model_dir(&dir, &Device::Cpu).unwrap();
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let logits = model.forward(&reference["input"]).unwrap();
    let err = rel_l2(&logits, &reference["logits_fused"]);
    assert!(
        err <= TOLERANCE,
        "ffnet_3_custom against the fused reference: {err:e}"
    );
}

/// FFNet with trainable weights: the folds are recomputed each pass, so the gradients reach both
/// branches of every RepVGG pair, the norms they fold and the layer scales.
#[test]
fn ffnet_trainable_path_matches_the_authors() {
    check_trainable(
        "ffnet_3_custom",
        &[
            "patch_embed.0.c.weight",
            "patch_embed.2.bn.weight",
            "stages.0.0.token_mixer.0.main.fc.bn.weight",
            "stages.0.0.token_mixer.0.main.conv1.weight",
            "stages.0.0.channel_mixer.main.conv.bn.bias",
            "stages.2.1.token_mixer.0.main.conv1.conv.c.weight",
            "stages.2.1.token_mixer.0.main.conv2.conv1.bn.weight",
            "stages.2.0.proj.0.conv1.c.weight",
            "stages.2.0.proj.1.conv.bn.weight",
            "stages.3.1.channel_mixer.main.conv.conv.c.weight",
            "stages.3.1.channel_mixer.layer_scale",
            "stages.1.1.token_mixer.0.layer_scale",
            "norm.weight",
        ],
    );
}

#[test]
fn efficientvim_matches_mlvlab() {
    check("EfficientViM_M1_custom");
}

/// Every fixture model loaded as trainable variables passes a gradient to every tensor a
/// training step updates (all but batch-norm statistics, frozen random matrices and tensors
/// whose gradient is zero by construction), so no op on the way drops it.
#[test]
fn every_trained_tensor_gets_a_gradient() {
    let frozen = |n: &str| {
        n.ends_with("running_mean")
            || n.ends_with("running_var")
            || n.ends_with("random_matrix")
            || n.ends_with("num_batches_tracked")
            // EfficientViM's `A` is added along the axis its softmax normalises.
            || n.ends_with("mixer.A")
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        // The `_resized` fixtures hold tensors the loader resizes to the model's.
        let resized = dir.to_string_lossy().ends_with("_resized");
        if !dir.join("reference.safetensors").is_file() || resized {
            continue;
        }
        let device = Device::Cpu;
        let model = load_model_dir(&dir, &device).unwrap();
        let weights =
            candle_core::safetensors::load(dir.join("model.safetensors"), &device).unwrap();
        let varmap = candle_nn::VarMap::new();
        {
            let mut data = varmap.data().lock().unwrap();
            for (name, t) in weights {
                data.insert(name, candle_core::Var::from_tensor(&t).unwrap());
            }
        }
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let trainable = model.config.build(vb).unwrap();
        let reference =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &device).unwrap();
        let logits = trainable.forward_t(&reference["input"], true).unwrap();
        let grads = logits.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let data = varmap.data().lock().unwrap();
        for (name, var) in data.iter() {
            if frozen(name) {
                continue;
            }
            let flows = grads.get(var.as_tensor()).is_some_and(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            });
            if !flows {
                missing.push(format!(
                    "{}: {name}",
                    dir.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    missing.sort();
    assert!(missing.is_empty(), "no gradient: {missing:#?}");
}

/// NiNformer on a non-square 28x20 input (7x5 patches).
#[test]
fn ninformer_matches_the_authors() {
    check("ninformer_cifar10_custom");
}

/// A CAFormer-shaped MetaFormer with LinFusion's linear attention in stages 2-3.
#[test]
fn linattnformer_matches_linfusion_in_timm_metaformer() {
    check("linattnformer_s18_custom");
}

/// TransNeXt at 96x96 with its position bias trained at 64x64 (the coordinates rescale), and the
/// all-aggregated variant with a 5x5 window in stage 2 (square inputs: the reference's only
/// kind).
#[test]
fn transnext_matches_the_authors() {
    check("transnext_micro_custom");
    check("transnext_micro_AAAA_custom");
}

/// TransNeXt with trainable weights: the position-bias MLP, the query embedding, the temperature
/// and the local biases get gradients through the shared softmax and the neighbourhood kernels.
#[test]
fn transnext_trainable_path_matches_the_authors() {
    check_trainable(
        "transnext_micro_custom",
        &[
            "patch_embed1.proj.weight",
            "block1.0.attn.q.weight",
            "block1.0.attn.kv.weight",
            "block1.0.attn.temperature",
            "block1.0.attn.query_embedding",
            "block1.0.attn.cpb_fc1.weight",
            "block2.0.attn.relative_pos_bias_local",
            "block2.0.attn.learnable_tokens",
            "block3.1.attn.sr.weight",
            "block3.0.mlp.dwconv.dwconv.weight",
            "block4.0.attn.qkv.weight",
            "block4.0.attn.cpb_fc2.bias",
            "norm4.weight",
        ],
    );
}

/// A CAFormer-shaped MetaFormer with goombalab/hydra's Hydra in stages 2-3.
#[test]
fn hydraformer_matches_hydra_in_timm_metaformer() {
    check("hydraformer_s18_custom");
}

/// tokenmix's readings of the two papers without code, against the same equations in PyTorch.
#[test]
fn dsm_and_s2aformer_match_their_readings() {
    check("tokenmix_dsm_s18_custom");
    check("tokenmix_s2a_t_custom");
}

/// Hydra with trainable weights: gradients reach the scan's inputs (dt bias, A, B/C through the
/// convolution), the diagonal and the gated norm.
#[test]
fn hydraformer_trainable_path_matches_hydra() {
    check_trainable(
        "hydraformer_s18_custom",
        &[
            "stages.2.blocks.0.token_mixer.in_proj.weight",
            "stages.2.blocks.0.token_mixer.conv1d.weight",
            "stages.2.blocks.0.token_mixer.dt_bias",
            "stages.2.blocks.0.token_mixer.A_log",
            "stages.2.blocks.1.token_mixer.D",
            "stages.2.blocks.1.token_mixer.fc_D.weight",
            "stages.3.blocks.0.token_mixer.norm.weight",
            "stages.3.blocks.0.token_mixer.out_proj.weight",
        ],
    );
}
