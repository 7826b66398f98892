#!/usr/bin/env python3
"""Writes the parity fixtures of the wave-2 part-B families from the authors' code.

Same formats, random draws and provenance records as scripts/make_wave2_fixtures.py (whose
helpers this script imports): model fixtures are model directories (config.json + model.safetensors)
with a reference.safetensors (input, logits, features); mixer fixtures are
tests/fixtures/mixers/<name>.safetensors with the module's state dict, `input` and `output`.
Token mixers here take tokens `(B, N, C)`, so their fixtures' inputs are token batches (batch 2,
odd token counts).

References (checkouts given on the command line, never committed):
  * mixer_gating_unit and the ninformer_cifar10 fixture (small model_args, non-square 28x20
    input, 7x5 patches): Abdullah-88/NiNformer, ninformer.py `MixerGatingUnit` and `NiNformer`.
    The image classifier around `NiNformer` lives in the repository's train.py, which trains
    CIFAR-10 when imported; its `NiNformerImageClassification` (patcher conv, tokens, blocks,
    mean over tokens, classifier) is re-typed here as `ImageClassifier`.
  * linear_attention (diffusers-style defaults: no q/k/v bias, projections at full width),
    linear_attention_mid16_bias (q/k/v biases, projection_mid_dim 16) and the
    linattnformer_s18 fixture: Huage001/LinFusion, src/linfusion/attention.py
    `GeneralizedLinearAttention` (needs diffusers for its `Attention` base class). The
    linattnformer model is timm's MetaFormer with caformer_s18's kwargs, small depths/dims, and
    `GeneralizedLinearAttention(query_dim=dim, heads=dim // 32, dim_head=32)` as the token mixer
    of stages 2-3: the architecture is tokenmix's composition, every module the reference's or
    timm's code.

  * the transnext_micro fixture (small model_args, img_size 96 with pretrain_size 64, so the
    position-bias coordinates are rescaled) and transnext_micro_AAAA (aggregated attention in
    every stage, a 5x5 window in stage 2, img_size 64): DaiShiResearch/TransNeXt,
    classification/transnext.py `TransNeXt` with attention_native.py's `AggregatedAttention`
    (the pure-PyTorch one it picks without the swattention CUDA package; its `pkg_resources`
    probe is stubbed). The reference runs square inputs at `img_size` only.

PyTorch checkpoints (tests/fixtures/pth/, recorded in PROVENANCE-wave2b.json there): the same
weights saved by torch.save as the authors' code saves them: ninformer_cifar10_custom.pth a plain
state dict (train.py's `torch.save(model.state_dict(), ...)`), transnext_micro_custom.pth a
DeiT-style training checkpoint (TransNeXt's main.py: 'model' beside 'optimizer', 'lr_scheduler',
'epoch' and 'args').

Usage (venv outside the repo with torch, timm, einops, safetensors, diffusers):
    python scripts/make_wave2b_fixtures.py --ninformer-repo /path/to/Abdullah-88/NiNformer \
        --ninformer-commit COMMIT --linfusion-repo /path/to/Huage001/LinFusion \
        --linfusion-commit COMMIT --transnext-repo /path/to/DaiShiResearch/TransNeXt \
        --transnext-commit COMMIT [--out tests/fixtures]
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_wave2_fixtures import load_module, write, write_model  # noqa: E402

TOKENS_SHAPE = (2, 35, 24)  # mixers: batch 2, 35 tokens (a 7x5 grid), 24 channels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ninformer-repo")
    ap.add_argument("--ninformer-commit")
    ap.add_argument("--linfusion-repo")
    ap.add_argument("--linfusion-commit")
    ap.add_argument("--transnext-repo")
    ap.add_argument("--transnext-commit")
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(1)
    common = {
        "torch": torch.__version__,
        "command": "python " + " ".join(sys.argv),
        "seed": "1",
    }
    if args.ninformer_repo:
        write_ninformer(args, common, gen)
    if args.linfusion_repo:
        write_linfusion(args, common, gen)
    if args.transnext_repo:
        write_transnext(args, common, gen)
    if PTH:
        pth_dir = os.path.join(args.out, "pth")
        with open(os.path.join(pth_dir, "PROVENANCE-wave2b.json"), "w") as f:
            json.dump({"torch": torch.__version__, "command": common["command"], **PTH}, f,
                      indent=1)


PTH = {}


def save_pth(out, obj, file, fixture, reference, commit):
    """torch.save of fixture `fixture`'s weights as the authors' code holds them, recorded."""
    torch.save(obj, os.path.join(out, "pth", file))
    PTH[file] = {
        "reference": reference,
        "commit": commit,
        "weights": f"tests/fixtures/{fixture}/model.safetensors",
    }


def write_ninformer(args, common, gen):
    """NiNformer: the mixer gating unit alone and a small image classifier."""
    nin = load_module(os.path.join(args.ninformer_repo, "ninformer.py"), "ninformer_reference")
    meta = {
        **common,
        "reference": "https://github.com/Abdullah-88/NiNformer ninformer.py",
        "commit": args.ninformer_commit,
    }
    n, d = TOKENS_SHAPE[1], TOKENS_SHAPE[2]
    write(
        os.path.join(args.out, "mixers"),
        "mixer_gating_unit",
        nin.MixerGatingUnit(d, n, 20, 28, 0.5),
        {**meta, "module": f"MixerGatingUnit(dim={d}, seq_len={n}, token_dim=20, channel_dim=28)"},
        gen,
        shape=TOKENS_SHAPE,
    )

    class ImageClassifier(nin.NiNformer):
        """train.py's NiNformerImageClassification, re-typed (train.py trains when imported)."""

        def __init__(self, patch_size, in_channels, num_classes, d_model, d_ffn, seq_len,
                     num_layers, dropout, **_):
            super().__init__(d_model, d_ffn, seq_len, num_layers, dropout)
            self.patcher = nn.Conv2d(in_channels, d_model, kernel_size=patch_size,
                                     stride=patch_size)
            self.classifier = nn.Linear(d_model, num_classes)

        def forward(self, x):
            p = self.patcher(x)
            b, c = p.shape[:2]
            tokens = self.model(p.permute(0, 2, 3, 1).reshape(b, -1, c))
            return self.classifier(tokens.mean(dim=1))

    shape = (2, 3, 28, 20)
    grid = (shape[2] // 4, shape[3] // 4)
    model_args = {
        "image_size": [shape[2], shape[3]],
        "patch_size": 4,
        "in_channels": 3,
        "num_classes": 5,
        "d_model": 24,
        "d_ffn": 40,
        "seq_len": grid[0] * grid[1],
        "num_layers": 2,
        "dropout": 0.5,
    }
    model = ImageClassifier(**model_args)
    write_model(
        args.out,
        "ninformer_cifar10_custom",
        model,
        model_args,
        {**meta, "module": "NiNformer with train.py's NiNformerImageClassification (re-typed), "
                           "small model_args"},
        gen,
        # The isotropic families' features: the last block's tokens as a map.
        [model.model[-1]],
        feature=lambda o: o.transpose(1, 2).reshape(o.shape[0], -1, *grid),
        shape=shape,
    )
    save_pth(args.out, model.state_dict(), "ninformer_cifar10_custom.pth",
             "ninformer_cifar10_custom", meta["reference"], args.ninformer_commit)


def write_linfusion(args, common, gen):
    """LinFusion's generalized linear attention alone (two settings) and in a CAFormer-shaped
    MetaFormer."""
    import timm
    from timm.models import metaformer as tmf

    from make_fixtures import timm_kwargs

    la = load_module(
        os.path.join(args.linfusion_repo, "src", "linfusion", "attention.py"),
        "linfusion_attention_reference",
    )
    meta = {
        **common,
        "reference": "https://github.com/Huage001/LinFusion src/linfusion/attention.py",
        "commit": args.linfusion_commit,
    }
    mixers = os.path.join(args.out, "mixers")
    d = TOKENS_SHAPE[2]
    write(
        mixers,
        "linear_attention",
        la.GeneralizedLinearAttention(query_dim=d, heads=3, dim_head=8),
        {**meta, "module": f"GeneralizedLinearAttention(query_dim={d}, heads=3, dim_head=8)"},
        gen,
        shape=TOKENS_SHAPE,
    )
    write(
        mixers,
        "linear_attention_mid16_bias",
        la.GeneralizedLinearAttention(query_dim=d, heads=2, dim_head=12, bias=True,
                                      projection_mid_dim=16),
        {**meta, "module": f"GeneralizedLinearAttention(query_dim={d}, heads=2, dim_head=12, "
                           "bias=True, projection_mid_dim=16)"},
        gen,
        shape=TOKENS_SHAPE,
    )

    class Mixer(la.GeneralizedLinearAttention):
        """The reference mixer as a timm MetaFormer token mixer (tokens in, tokens out)."""

        def __init__(self, dim, proj_drop=0.0, **_):
            super().__init__(query_dim=dim, heads=dim // 32, dim_head=32)

        def forward(self, x):
            return super().forward(x)

    model_args = {"depths": [1, 1, 2, 1], "dims": [16, 24, 32, 64], "num_classes": 5}
    kwargs = {**timm_kwargs("caformer_s18"), **model_args}
    kwargs["token_mixers"] = [tmf.SepConv, tmf.SepConv, Mixer, Mixer]
    # timm's stages run channel-last tokens only for subclasses of its Attention.
    attention = tmf.Attention
    tmf.Attention = Mixer
    try:
        model = tmf.MetaFormer(**kwargs)
    finally:
        tmf.Attention = attention
    write_model(
        args.out,
        "linattnformer_s18_custom",
        model,
        model_args,
        {**meta, "module": f"timm {timm.__version__} timm.models.metaformer.MetaFormer "
                           "(caformer_s18 kwargs + model_args) with GeneralizedLinearAttention "
                           "(heads dim // 32, dim_head 32) as the stage 2-3 token mixer: "
                           "tokenmix's composition"},
        gen,
        list(model.stages),
        shape=(2, 3, 64, 96),
    )


def write_transnext(args, common, gen):
    """TransNeXt: two small models on square inputs (the reference's only kind)."""
    import math
    import types
    from functools import partial

    # transnext.py asks pkg_resources whether the swattention CUDA package is installed.
    probe = types.ModuleType("pkg_resources")

    class DistributionNotFound(Exception):
        pass

    def get_distribution(name):
        raise DistributionNotFound(name)

    probe.DistributionNotFound = DistributionNotFound
    probe.get_distribution = get_distribution
    sys.modules.setdefault("pkg_resources", probe)
    sys.path.insert(0, os.path.join(args.transnext_repo, "classification"))
    tn = load_module(
        os.path.join(args.transnext_repo, "classification", "transnext.py"), "transnext_reference"
    )
    meta = {
        **common,
        "reference": "https://github.com/DaiShiResearch/TransNeXt classification/transnext.py, "
        "classification/attention_native.py",
        "commit": args.transnext_commit,
    }

    def as_map(o):
        side = math.isqrt(o.shape[1])
        return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], side, side)

    cases = [
        ("transnext_micro_custom", 96, {
            "img_size": 96, "pretrain_size": 64, "window_size": [3, 3, 3, None],
            "embed_dims": [16, 24, 32, 40], "num_heads": [2, 2, 4, 4], "mlp_ratios": [8, 8, 4, 4],
            "depths": [1, 1, 2, 1], "sr_ratios": [8, 4, 2, 1],
        }),
        ("transnext_micro_AAAA_custom", 64, {
            "img_size": 64, "window_size": [3, 5, 3, 3],
            "embed_dims": [16, 24, 32, 40], "num_heads": [2, 2, 4, 4], "mlp_ratios": [8, 8, 4, 4],
            "depths": [1, 1, 2, 1], "sr_ratios": [4, 4, 2, 2],
        }),
    ]
    for name, size, extra in cases:
        model_args = {"patch_size": 4, "qkv_bias": True, "num_classes": 5, **extra}
        model = tn.TransNeXt(norm_layer=partial(nn.LayerNorm, eps=1e-6), **model_args)
        write_model(
            args.out,
            name,
            model,
            model_args,
            {**meta, "module": "TransNeXt (the registered models' norm_layer, LayerNorm eps "
                               "1e-6; small model_args)"},
            gen,
            [model.norm1, model.norm2, model.norm3, model.norm4],
            feature=as_map,
            shape=(2, 3, size, size),
        )
        if name == "transnext_micro_custom":
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "weight_decay": 0.05}]},
                "lr_scheduler": {"last_epoch": 299},
                "epoch": 299,
                "args": argparse.Namespace(model="transnext_micro", input_size=size),
            }
            save_pth(args.out, checkpoint, f"{name}.pth", name, meta["reference"],
                     args.transnext_commit)


if __name__ == "__main__":
    main()
