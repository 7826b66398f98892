#!/usr/bin/env python3
"""Writes the parity fixtures of the wave-2 families from the authors' code.

Model fixtures (tests/fixtures/<name>/) are model directories as timm's `save_for_hf` writes them
(config.json with `architecture`, `model_args`, `pretrained_cfg`, plus model.safetensors) and a
`reference.safetensors` with the input (batch 2, non-square), the reference `logits` and every
stage's output (`features.0` ...), as scripts/make_fixtures.py writes them.

Mixer fixtures, one per mixer whose reference is a standalone module: `<kind>.safetensors` holds the
module's state dict under its own names (prefix-free, as a backbone's `token_mixer` /
`attn` sub-module stores it, `num_batches_tracked` left out), the input `input` (batch 2,
non-square) and the reference output `output`; its `__metadata__` records the reference
repository and commit, the versions of torch and the command. Every parameter and batch-norm
statistic is drawn at random (weights ~ N(0, 1/fan_in), gains, biases and running means ~
N(0, 0.5) around their defaults, running variances ~ U(0.5, 1.5)); the module runs in eval mode.

References (checkouts given on the command line, never committed):
  * additive_token_mixer and the rcvit_xs fixture (small `model_args`): Tianfang-Zhang/CAS-ViT,
    classification/model/rcvit.py, `AdditiveTokenMixer` and `rcvit_xs` (needs timm, einops).

  * wave_block and the wavemix / wavemix_lite fixtures (small `model_args`; the lite one with
    the `strided` stem): pranavphoenix/WaveMix, wavemix/__init__.py `Level3Waveblock` and
    Image_Classification/timm.py `WaveMix` (needs timm, einops, PyWavelets; the module's
    `numpy.lib.function_base` import, gone from numpy 2, is stubbed).

  * inception_mixer and the iformer_small fixture (small `model_args`, img_size 64 run at
    96x96 so that every position embedding is interpolated; square: the reference views its
    attention output as sqrt(N) x sqrt(N)): sail-sg/iFormer, models/inception_transformer.py,
    `Mixer` and `InceptionTransformer`.

  * ffn_token_mixer and the ffnet_3 fixture (small `model_args`, channel-mixer kernels
    [3, 3, 7, 7] so both its forms are covered, odd non-square 67x93 input): ysj9909/FFNet,
    models/ffnet.py, `Token_Mixer` and `FFNet`, in their training (unfused) form; the fixture's
    reference.safetensors also holds `logits_fused`, the logits of the same weights after the
    reference's own fusion (export_model.py's replace_batchnorm, re-typed here: it calls every
    module's `fuse`). timm 1.0 renamed the `_update_default_kwargs` it imports; aliased.

  * affnet_et_layer_norm (with --affnet-repo): AFFNet-ET at small widths as
    scripts/make_fixtures.py builds it (its `affnet_case`, reused), but with the AFF blocks'
    norm set to cvnets' `layer_norm` (per pixel over channels, `(x - mean) / (std + eps)`), the
    authors' training choice, instead of the code's default `layer_norm_2d`.

  * hsm_ssd and the EfficientViM_M1 fixture (small `model_args`, distillation heads, square
    96x96 input: the reference reshapes its maps as H x H): mlvlab/EfficientViM,
    classification/models/EfficientViM.py, `HSMSSD` and `EfficientViM`.

Usage (venv outside the repo with torch, timm, einops, safetensors):
    python scripts/make_wave2_fixtures.py --casvit-repo /path/to/Tianfang-Zhang/CAS-ViT \
        --casvit-commit COMMIT [--efficientvim-repo /path/to/mlvlab/EfficientViM \
        --efficientvim-commit COMMIT] [--wavemix-repo /path/to/pranavphoenix/WaveMix \
        --wavemix-commit COMMIT] [--iformer-repo /path/to/sail-sg/iFormer \
        --iformer-commit COMMIT] [--ffnet-repo /path/to/ysj9909/FFNet --ffnet-commit COMMIT] \
        [--affnet-repo /path/to/microsoft/TokenMixers --affnet-commit COMMIT] [--out tests/fixtures]
"""
import argparse
import importlib.util
import json
import math
import os
import sys
import types

import torch
from safetensors.torch import save_file

INPUT_SHAPE = (2, 24, 7, 10)  # mixers: batch 2, 24 channels, non-square grid
IMAGE_SHAPE = (2, 3, 64, 96)  # models: batch 2, non-square (stages 16x24 ... 2x3)


def randomize_(module, gen):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.5 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # timm's register_model looks the module up
    spec.loader.exec_module(module)
    return module


def write(out, kind, module, metadata, gen, shape=INPUT_SHAPE):
    randomize_(module, gen)
    module.eval()
    x = torch.randn(shape, generator=gen)
    with torch.no_grad():
        y = module(x)
    tensors = {
        k: v.contiguous()
        for k, v in module.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    tensors["input"] = x.contiguous()
    tensors["output"] = y.contiguous()
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, f"{kind}.safetensors"), metadata=metadata)
    print(f"{kind}: {len(tensors) - 2} tensors, output {tuple(y.shape)}")


def write_model(out, name, model, model_args, metadata, gen, stages, feature=lambda o: o,
                shape=IMAGE_SHAPE, residual=False):
    """A model directory for `name` built with `model_args`, with the outputs of `stages`
    (`feature` picks the map from a stage's output; with `residual` the stage's input is added,
    for models whose loop adds it)."""
    randomize_(model, gen)
    model.eval()
    x = torch.randn(shape, generator=gen)
    features = []

    def hook(_m, i, o):
        features.append(feature(o) + i[0] if residual else feature(o))

    hooks = [s.register_forward_hook(hook) for s in stages]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    path = os.path.join(out, name)
    os.makedirs(path, exist_ok=True)
    weights = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    save_file(weights, os.path.join(path, "model.safetensors"), metadata=metadata)
    reference = {"input": x.contiguous(), "logits": logits.contiguous()}
    reference.update({f"features.{i}": f.contiguous() for i, f in enumerate(features)})
    save_file(reference, os.path.join(path, "reference.safetensors"), metadata=metadata)
    classes = model_args["num_classes"]
    config = {
        "architecture": name.split("_custom")[0],
        "num_classes": classes,
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [3, 224, 224],
            "interpolation": "bicubic",
            "crop_pct": 0.875,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "num_classes": classes,
        },
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"{name}: {len(weights)} tensors, logits {tuple(logits.shape)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--casvit-repo", required=True)
    ap.add_argument("--casvit-commit", required=True)
    ap.add_argument("--efficientvim-repo")
    ap.add_argument("--efficientvim-commit")
    ap.add_argument("--wavemix-repo")
    ap.add_argument("--wavemix-commit")
    ap.add_argument("--iformer-repo")
    ap.add_argument("--iformer-commit")
    ap.add_argument("--ffnet-repo")
    ap.add_argument("--ffnet-commit")
    ap.add_argument("--affnet-repo")
    ap.add_argument("--affnet-commit")
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    common = {
        "torch": torch.__version__,
        "command": "python " + " ".join(sys.argv),
        "seed": "0",
    }
    rcvit = load_module(
        os.path.join(args.casvit_repo, "classification", "model", "rcvit.py"), "rcvit"
    )
    casvit = {
        **common,
        "reference": "https://github.com/Tianfang-Zhang/CAS-ViT classification/model/rcvit.py",
        "commit": args.casvit_commit,
    }
    write(
        os.path.join(args.out, "mixers"),
        "additive_token_mixer",
        rcvit.AdditiveTokenMixer(dim=INPUT_SHAPE[1]),
        {**casvit, "module": "AdditiveTokenMixer"},
        gen,
    )
    model_args = {"layers": [1, 1, 2, 1], "embed_dims": [16, 24, 32, 40], "num_classes": 5}
    model = rcvit.RCViT(**model_args)
    write_model(
        args.out,
        "rcvit_xs_custom",
        # rcvit_xs's other arguments are RCViT's defaults.
        model,
        model_args,
        {**casvit, "module": "RCViT (rcvit_xs's defaults, small model_args)"},
        gen,
        [m for m in model.network if not hasattr(m, "proj")],
    )
    if args.efficientvim_repo:
        write_efficientvim(args, common, gen)
    if args.wavemix_repo:
        write_wavemix(args, common, gen)
    if args.iformer_repo:
        write_iformer(args, common, gen)
    if args.ffnet_repo:
        write_ffnet(args, common, gen)
    if args.affnet_repo:
        write_affnet_layer_norm(args, common, gen)


def write_efficientvim(args, common, gen):
    """EfficientViM (mlvlab/EfficientViM): the HSM-SSD mixer alone and a small model with
    distillation heads, on square inputs (the reference reshapes its maps as H x H)."""
    sys.path.insert(0, os.path.join(args.efficientvim_repo, "classification"))
    # fvcore is imported only for the reference's FLOP counter.
    fvcore, fvcore_nn = types.ModuleType("fvcore"), types.ModuleType("fvcore.nn")
    fvcore_nn.flop_count = None
    sys.modules.update({"fvcore": fvcore, "fvcore.nn": fvcore_nn})
    from models import EfficientViM as evim

    meta = {
        **common,
        "reference": "https://github.com/mlvlab/EfficientViM classification/models/EfficientViM.py",
        "commit": args.efficientvim_commit,
    }

    class Mixer(evim.HSMSSD):
        """HSMSSD on a (B, C, H, W) map: the reference flattens it and returns (y, h)."""

        def forward(self, x):
            return super().forward(x.flatten(2))[0]

    write(
        os.path.join(args.out, "mixers"),
        "hsm_ssd",
        Mixer(d_model=24, state_dim=64),
        {**meta, "module": "HSMSSD (d_model 24, state_dim 64: the mixer's defaults)"},
        gen,
        shape=(2, 24, 7, 7),
    )
    model_args = {
        "embed_dim": [16, 24, 32],
        "depths": [1, 2, 1],
        "state_dim": [6, 5, 4],
        "num_classes": 5,
        "distillation": True,
    }
    model = evim.EfficientViM(**model_args)
    write_model(
        args.out,
        "EfficientViM_M1_custom",
        model,
        model_args,
        {**meta, "module": "EfficientViM (EfficientViM_M1's defaults, small model_args)"},
        gen,
        list(model.stages),
        feature=lambda o: o[1],
        shape=(2, 3, 96, 96),
    )


def write_wavemix(args, common, gen):
    """WaveMix (pranavphoenix/WaveMix): a level-3 wave block alone, a small level-3 WaveMix
    with the patchify stem and a small level-1 one (wavemix_lite) with the strided stem."""
    import numpy

    # wavemix/__init__.py imports numpy.lib.function_base (removed in numpy 2) and never uses it.
    stub = types.ModuleType("numpy.lib.function_base")
    stub.hamming = numpy.hamming
    sys.modules["numpy.lib.function_base"] = stub
    sys.path.insert(0, args.wavemix_repo)
    import wavemix

    timm_py = load_module(
        os.path.join(args.wavemix_repo, "Image_Classification", "timm.py"), "wavemix_timm"
    )
    meta = {
        **common,
        "reference": "https://github.com/pranavphoenix/WaveMix wavemix/__init__.py, "
        "Image_Classification/timm.py",
        "commit": args.wavemix_commit,
    }
    write(
        os.path.join(args.out, "mixers"),
        "wave_block",
        wavemix.Level3Waveblock(mult=2, ff_channel=24, final_dim=24, dropout=0.5),
        {**meta, "module": "Level3Waveblock (mult 2, ff_channel = final_dim = 24: the mixer's defaults)"},
        gen,
        shape=(2, 24, 8, 16),
    )
    for name, extra in [
        ("wavemix_custom", {"level": 3}),
        ("wavemix_lite_custom", {"level": 1, "initial_conv": "strided", "stride": 2}),
    ]:
        model_args = {
            "num_classes": 5,
            "depth": 2,
            "mult": 2,
            "ff_channel": 16,
            "final_dim": 24,
            **extra,
        }
        model = timm_py.WaveMix(**model_args)
        write_model(
            args.out,
            name,
            model,
            model_args,
            {**meta, "module": f"timm.py WaveMix ({name.split('_custom')[0]}'s kind, small model_args)"},
            gen,
            # The isotropic families' features: the last block's map (WaveMix has no final norm).
            [model.layers[-1]],
            residual=True,
        )


def write_iformer(args, common, gen):
    """Inception Transformer (sail-sg/iFormer): the inception mixer alone and a small model."""
    import timm.layers

    # The reference imports timm 0.5's timm.models.layers.helpers, gone from timm 1.0.
    helpers = types.ModuleType("timm.models.layers.helpers")
    helpers.to_2tuple = timm.layers.to_2tuple
    sys.modules["timm.models.layers.helpers"] = helpers
    ref = load_module(
        os.path.join(args.iformer_repo, "models", "inception_transformer.py"), "inception_transformer"
    )
    meta = {
        **common,
        "reference": "https://github.com/sail-sg/iFormer models/inception_transformer.py",
        "commit": args.iformer_commit,
    }

    class Mixer(ref.Mixer):
        """The reference's Mixer takes (B, H, W, C); the fixtures are channel-first."""

        def forward(self, x):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    write(
        os.path.join(args.out, "mixers"),
        "inception_mixer",
        Mixer(64, num_heads=2, qkv_bias=True, attention_head=1, pool_size=2),
        {**meta, "module": "Mixer (dim 64, num_heads 2: head_dim 32 = dim / 2, attention_head 1, pool_size 2: the mixer's defaults)"},
        gen,
        shape=(2, 64, 8, 8),
    )
    model_args = {
        "img_size": 64,
        "embed_dims": [64, 96, 128, 160],
        "depths": [1, 1, 2, 1],
        "num_heads": [2, 3, 4, 5],
        "attention_heads": [1, 2, 2, 3, 3],
        "use_layer_scale": True,
        "num_classes": 5,
    }
    model = ref.InceptionTransformer(**model_args)
    write_model(
        args.out,
        "iformer_small_custom",
        model,
        model_args,
        {**meta, "module": "InceptionTransformer (small model_args, img_size 64 run at 96x96)"},
        gen,
        [model.blocks1, model.blocks2, model.blocks3, model.blocks4],
        feature=lambda o: o.permute(0, 3, 1, 2),
        shape=(2, 3, 96, 96),
    )


def replace_batchnorm(net):
    """FFNet's export_model.py fusion: every child with a `fuse` method replaced by its result."""
    for name, child in net.named_children():
        if hasattr(child, "fuse"):
            fused = child.fuse()
            setattr(net, name, fused)
            replace_batchnorm(fused)
        else:
            replace_batchnorm(child)


def write_ffnet(args, common, gen):
    """FFNet (ysj9909/FFNet): the FFNified token mixer alone and a small model, unfused, with the
    logits of the reference's fused form beside."""
    import copy

    import timm.models._builder as builder
    from safetensors.torch import load_file

    if not hasattr(builder, "_update_default_kwargs"):
        builder._update_default_kwargs = builder._update_default_model_kwargs
    ref = load_module(os.path.join(args.ffnet_repo, "models", "ffnet.py"), "ffnet")
    meta = {
        **common,
        "reference": "https://github.com/ysj9909/FFNet models/ffnet.py",
        "commit": args.ffnet_commit,
    }
    write(
        os.path.join(args.out, "mixers"),
        "ffn_token_mixer",
        ref.Token_Mixer(24, 7, 7),
        {**meta, "module": "Token_Mixer (dim 24, kernel sizes 7 and 7: RepVGG pairs, unfused)"},
        gen,
    )
    model_args = {
        "embed_dim": [8, 16, 32, 64],
        "in_dim": 8,
        "depth": [1, 1, 2, 1],
        "kernel_sizes": [3, 3, 7, 7],
        "use_layer_scale": True,
        "num_classes": 5,
    }
    model = ref.FFNet(**model_args)
    write_model(
        args.out,
        "ffnet_3_custom",
        model,
        model_args,
        {**meta, "module": "FFNet (ffnet_3's kind: layer scales; small model_args), unfused"},
        gen,
        list(model.stages),
        shape=(2, 3, 67, 93),
    )
    path = os.path.join(args.out, "ffnet_3_custom", "reference.safetensors")
    reference = load_file(path)
    fused = copy.deepcopy(model).eval()
    replace_batchnorm(fused)
    with torch.no_grad():
        reference["logits_fused"] = fused(reference["input"]).contiguous()
    save_file(reference, path, metadata={**meta, "module": "FFNet (fused: logits_fused)"})
    print("ffnet_3_custom: logits_fused added")


def write_affnet_layer_norm(args, common, gen):
    """AFFNet-ET with cvnets' per-pixel layer_norm in its AFF blocks, through make_fixtures.py's
    own AFFNet case (its provenance stamp filled from this script's)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_fixtures as mf

    mf.PROVENANCE.update(common)
    mf.SOURCES["affnet"] = {
        "url": "https://github.com/microsoft/TokenMixers",
        "commit": args.affnet_commit,
        "paths": ["Adaptive Frequency Filters"],
    }
    repo = os.path.join(args.affnet_repo, "Adaptive Frequency Filters")
    mf.affnet_case(args.out, repo, gen, attn_norm="layer_norm", fixture="affnet_et_layer_norm")
    print("affnet_et_layer_norm: written")


if __name__ == "__main__":
    main()
