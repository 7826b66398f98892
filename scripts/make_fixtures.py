#!/usr/bin/env python3
"""Writes the parity fixtures under tests/fixtures/ from the reference implementations.

Each fixture is a model directory as timm's `save_for_hf` writes it (config.json with
`architecture`, `num_classes`, `model_args`, `pretrained_cfg`, plus model.safetensors) and a
`reference.safetensors` with the input batch (`input`, batch 2, non-square), the reference
`logits` and every stage's feature map (`features.0` ...).

Every parameter is re-drawn at random (weights ~ N(0, 1/fan_in), gains ~ U(0.5, 1.5), biases
~ N(0, 0.5)), so a 1e-5 layer scale or a zero bias cannot hide a wrong mixer.

References: timm for PoolFormer v1/v2, ConvFormer, CAFormer, MambaOut and the MLP-Mixer family;
the authors' code, from checkouts given on the command line and never committed, for
IdentityFormer and RandFormer (sail-sg/metaformer; checkpoints converted to timm names with
timm's own `checkpoint_filter_fn`), GFNet (raoyongming/GFNet), MS-MLP (JegZheng/MS-MLP) and
RaftMLP (okojoalg/raft-mlp, needs `einops`) and AFFNet (microsoft/TokenMixers, needs `einops`,
`requests`, `ujson`, `psutil`), the last four with their own tensor names. The Mamba block is a plain PyTorch reference of
state-spaces/mamba's `selective_scan_ref` equations written here (Vim-style bidirectional).

Usage (venv outside the repo with torch, timm, safetensors):
    python scripts/make_fixtures.py --metaformer-repo /path/to/sail-sg/metaformer \
        --gfnet-repo /path/to/raoyongming/GFNet --msmlp-repo /path/to/JegZheng/MS-MLP \
        --raftmlp-repo /path/to/okojoalg/raft-mlp \
        --affnet-repo "/path/to/microsoft/TokenMixers/Adaptive Frequency Filters" [--out DIR]
"""
import argparse
from functools import partial
import json
import math
import os
import sys

import torch
import torch.nn as nn
import timm
from timm.models import metaformer as tmf
from timm.models import mlp_mixer as tmm
from timm.models._hub import save_for_hf
from safetensors.torch import save_file

INPUT_SHAPE = (2, 3, 32, 64)  # batch 2, non-square


def randomize_(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("complex_weight", "pos_embed")):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith("random_matrix"):
                p.copy_(torch.softmax(2.0 * torch.randn(p.shape, generator=gen), dim=-1))
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))


def timm_features(model, x):
    x = model.stem(x)
    feats = []
    for stage in model.stages:
        x = stage(x)
        feats.append(x)
    return feats


def sail_features(model, x):
    feats = []
    for i in range(model.num_stage):
        x = model.downsample_layers[i](x)
        x = model.stages[i](x)
        feats.append(x.permute(0, 3, 1, 2))
    return feats


def write_reference(out_dir, x, logits, feats):
    tensors = {"input": x, "logits": logits}
    for i, f in enumerate(feats):
        tensors[f"features.{i}"] = f
    save_file({k: v.detach().contiguous() for k, v in tensors.items()},
              os.path.join(out_dir, "reference.safetensors"))


def selective_scan_ref(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=False):
    """The equations of state-spaces/mamba's `selective_scan_ref` (mamba_ssm/ops/
    selective_scan_interface.py), for real A, B and C of shape (B, N, L): a plain PyTorch loop
    over the sequence."""
    import torch.nn.functional as F
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = u.new_zeros((u.shape[0], u.shape[1], A.shape[1]))
    ys = []
    for i in range(u.shape[2]):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    out = torch.stack(ys, dim=2) + u * D[:, None]
    return out if z is None else out * F.silu(z)


class MambaRef(tmf.Attention):
    """The Mamba block of state-spaces/mamba (`Mamba.forward`'s reference path, no fused kernels),
    bidirectional as Vision Mamba's "bimamba v2" (backward parameters with a `_b` suffix, the two
    directions added and halved). It subclasses timm's metaformer `Attention` only so that timm's
    `MetaFormerStage` runs it on (B, N, C) tokens."""

    def __init__(self, dim, d_state=16, d_conv=4, expand=2, **kwargs):
        nn.Module.__init__(self)
        inner, self.rank, self.n = expand * dim, math.ceil(dim / 16), d_state
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        for sfx in ("", "_b"):
            setattr(self, "conv1d" + sfx, nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1))
            setattr(self, "x_proj" + sfx, nn.Linear(inner, self.rank + 2 * d_state, bias=False))
            setattr(self, "dt_proj" + sfx, nn.Linear(self.rank, inner, bias=True))
            a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(inner, 1)
            setattr(self, "A" + sfx + "_log", nn.Parameter(torch.log(a)))
            setattr(self, "D" + sfx, nn.Parameter(torch.ones(inner)))
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def branch(self, x, z, sfx):
        import torch.nn.functional as F
        L = x.shape[-1]
        x = F.silu(getattr(self, "conv1d" + sfx)(x)[..., :L])
        x_dbl = getattr(self, "x_proj" + sfx)(x.transpose(1, 2))
        dt, B, C = torch.split(x_dbl, [self.rank, self.n, self.n], dim=-1)
        dt_proj = getattr(self, "dt_proj" + sfx)
        dt = (dt @ dt_proj.weight.t()).transpose(1, 2)
        A = -torch.exp(getattr(self, "A" + sfx + "_log").float())
        return selective_scan_ref(x, dt, A, B.transpose(1, 2), C.transpose(1, 2), getattr(self, "D" + sfx).float(),
                                  z=z, delta_bias=dt_proj.bias.float(), delta_softplus=True)

    def forward(self, hidden):
        xz = self.in_proj(hidden).transpose(1, 2)
        x, z = xz.chunk(2, dim=1)
        out = self.branch(x, z, "")
        out_b = self.branch(x.flip(-1), z.flip(-1), "_b")
        return self.out_proj(((out + out_b.flip(-1)) / 2).transpose(1, 2))


class MambaMixerRef(nn.Module):
    """tokenmix's reading of MambaMixer (arXiv 2403.19888, no official code): patch embedding,
    blocks of a bidirectional Mamba over tokens and one over channels, each pre-normed and
    residual, each fed a learned weighted sum of all earlier features; LayerNorm, mean, head."""

    def __init__(self, img_size, patch_size, embed_dim, depth, num_classes, in_chans=3, d_state=16, expand=2):
        super().__init__()
        n = (img_size[0] // patch_size) * (img_size[1] // patch_size)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.blocks = nn.ModuleList()
        for i in range(depth):
            b = nn.Module()
            b.token_weights = nn.Parameter(torch.eye(1 + 2 * i)[-1])
            b.token_norm = nn.LayerNorm(embed_dim, eps=1e-6)
            b.token_mixer = MambaRef(embed_dim, d_state=d_state, expand=expand)
            b.channel_weights = nn.Parameter(torch.eye(2 + 2 * i)[-1])
            b.channel_norm = nn.LayerNorm(embed_dim, eps=1e-6)
            b.channel_mixer = MambaRef(n, d_state=d_state, expand=expand)
            self.blocks.append(b)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def features(self, x):
        x = self.patch_embed.proj(x)
        B, C, H, W = x.shape
        hist = [x.flatten(2).transpose(1, 2)]
        for b in self.blocks:
            u = sum(w * h for w, h in zip(b.token_weights, hist))
            hist.append(u + b.token_mixer(b.token_norm(u)))
            v = sum(w * h for w, h in zip(b.channel_weights, hist))
            hist.append(v + b.channel_mixer(b.channel_norm(v).transpose(1, 2)).transpose(1, 2))
        return self.norm(hist[-1]).transpose(1, 2).reshape(B, C, H, W)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def mamba_init_(model, gen):
    """Keeps A = -exp(A_log) a decay and dt in Mamba's usual range after `randomize_`."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=gen) * 2 + 0.1))
            elif ".dt_proj" in name and name.endswith("bias"):
                p.copy_(torch.rand(p.shape, generator=gen) * 2 - 3)


def mambamixer_case(out, gen):
    args = dict(img_size=[16, 32], patch_size=8, embed_dim=24, depth=2, num_classes=10)
    model = MambaMixerRef(**args).eval()
    randomize_(model, gen)
    mamba_init_(model, gen)
    x = torch.randn((2, 3, 16, 32), generator=gen)
    with torch.no_grad():
        feats = [model.features(x)]
        logits = model(x)
    cfg = dict(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.875,
               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    d = os.path.join(out, "mambamixer_ti")
    write_model_dir(d, "mambamixer_ti", model.state_dict(), args, cfg, args["embed_dim"])
    write_reference(d, x, logits, feats)


def raftmlp_cases(out, rf, gen):
    """RaftMLP from okojoalg/raft-mlp (ser_pm token mixing, cross-scale MLP embedding, no
    shortcut), with its own tensor names; once at its native (square) size and once on a
    non-square input, which the reference handles by bicubic resizing of each level's grid."""
    layers = [dict(depth=1, dim=8, patch_size=4, raft_size=2, embedding_kernels=[4, 8]),
              dict(depth=1, dim=16, patch_size=2, raft_size=2, embedding_kernels=[2, 4]),
              dict(depth=2, dim=24, patch_size=2, raft_size=4, embedding_kernels=[2, 4]),
              dict(depth=1, dim=32, patch_size=2, raft_size=2, embedding_kernels=[2])]
    args = dict(layers=layers, in_channels=3, pretrained_image_size=32, num_classes=10,
                token_expansion_factor=2, channel_expansion_factor=4, token_mixing_type="ser_pm",
                embedding_type="emb_cross_mlp", shortcut=False)
    model = rf.RaftMLP(**args).eval()
    randomize_(model, gen)
    cfg = dict(input_size=(3, 32, 32), interpolation="bicubic", crop_pct=0.875,
               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    for case, shape in [("raftmlp_s", (2, 3, 32, 32)), ("raftmlp_resized", (2, 3, 32, 48))]:
        x = torch.randn(shape, generator=gen)
        with torch.no_grad():
            feats, t = [], x
            for level in model.levels:
                t = level(t)
                feats.append(t)
            logits = model(x)
        d = os.path.join(out, case)
        write_model_dir(d, "raftmlp_s", model.state_dict(), args, cfg, 32)
        write_reference(d, x, logits, feats)


def affnet_case(out, aff_repo, gen):
    """AFFNet from microsoft/TokenMixers (cvnets), at small widths through its configuration
    function, swish activation and layer_norm_2d block norms; batch-norm statistics redrawn too."""
    import argparse
    import types
    sys.path.insert(0, aff_repo)
    from affnet.models.classification import affnet as aff
    small = dict(channels=[8, 16, 16, 24, 32], mv2_expand=2, aff_depths=[1, 2, 1])
    c, d = small["channels"], small["aff_depths"]
    config = {
        "layer1": dict(out_channels=c[0], expand_ratio=2, num_blocks=1, stride=1, block_type="mv2"),
        "layer2": dict(out_channels=c[1], expand_ratio=2, num_blocks=3, stride=2, block_type="mv2"),
        "last_layer_exp_factor": 4,
    }
    for i in range(3):
        config[f"layer{i + 3}"] = dict(out_channels=c[i + 2], transformer_channels=c[i + 2], ffn_dim=2 * c[i + 2],
                                       transformer_blocks=d[i], patch_h=2, patch_w=2, stride=2, mv_expand_ratio=2,
                                       head_dim=None, num_heads=4, block_type="aff_block")
    original = aff.get_configuration
    aff.get_configuration = lambda opts: config
    opts = argparse.Namespace()
    for k, v in {"model.classification.affnet.mode": "xx_small", "model.activation.name": "swish",
                 "model.normalization.name": "batch_norm", "model.classification.n_classes": 10}.items():
        setattr(opts, k, v)
    try:
        import io, contextlib
        with contextlib.redirect_stdout(io.StringIO()):
            model = aff.AffNet(opts).eval()
    finally:
        aff.get_configuration = original
    randomize_(model, gen)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.5 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    x = torch.randn(INPUT_SHAPE, generator=gen)
    with torch.no_grad():
        t = model.conv_1(x)
        feats = []
        for layer in [model.layer_1, model.layer_2, model.layer_3, model.layer_4, model.layer_5]:
            t = layer(t)
            feats.append(t)
        logits = model(x)
    args = dict(mode="xx_small", num_classes=10, activation="swish", **small)
    cfg = dict(input_size=(3, 256, 256), interpolation="bicubic", crop_pct=0.875,
               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    d = os.path.join(out, "affnet_et")
    write_model_dir(d, "affnet_et", model.state_dict(), args, cfg, 128)
    write_reference(d, x, logits, feats)


def mambaformer_case(out, gen):
    """tokenmix's MambaFormer (CAFormer with Mamba mixers in stages 2-3) built as a timm
    MetaFormer around the reference Mamba block."""
    args = dict(depths=[1, 1, 2, 1], dims=[16, 24, 32, 48], num_classes=10)
    kwargs = {**timm_kwargs("caformer_s18"), **args}
    kwargs["token_mixers"] = [tmf.SepConv, tmf.SepConv, MambaRef, MambaRef]
    model = tmf.MetaFormer(**kwargs).eval()
    randomize_(model, gen)
    mamba_init_(model, gen)
    x = torch.randn(INPUT_SHAPE, generator=gen)
    with torch.no_grad():
        feats = timm_features(model, x)
        logits = model.forward_head(feats[-1])
    cfg = timm.models.get_pretrained_cfg("caformer_s18").to_dict()
    d = os.path.join(out, "mambaformer_s18")
    write_model_dir(d, "mambaformer_s18", model.state_dict(), args, cfg, args["dims"][-1])
    write_reference(d, x, logits, feats)


def timm_family(arch):
    """(module, name of its create function, model class) of a timm MetaFormer or MLP-Mixer."""
    if arch.split("_")[0] in ("mixer", "gmixer", "resmlp", "gmlp"):
        return tmm, "_create_mixer", tmm.MlpMixer
    return tmf, "_create_metaformer", tmf.MetaFormer


def timm_kwargs(arch):
    """The model kwargs timm's entry point `arch` builds with.

    timm's MetaFormer and MLP-Mixer entry points cannot take overrides of the kwargs they set
    (`depths`, `dims`, `patch_size`, ...: they pass them twice), so the fixtures build the model
    class from the entry point's own kwargs with `model_args` on top, which is what
    `model_args` in a config.json mean."""
    module, create, _ = timm_family(arch)
    captured = {}
    original = getattr(module, create)
    setattr(module, create, lambda variant, pretrained=False, **kw: captured.update(kw))
    try:
        getattr(module, arch)()
    finally:
        setattr(module, create, original)
    return captured


def timm_case(out, case, arch, model_args, gen, input_shape=None):
    if arch.startswith("mambaout"):
        model = timm.create_model(arch, **model_args).eval()
    else:
        model = timm_family(arch)[2](**{**timm_kwargs(arch), **model_args}).eval()
        cfg = timm.models.get_pretrained_cfg(arch).to_dict()
        cfg["architecture"] = arch
        if "in_chans" in model_args:
            cfg["input_size"] = (model_args["in_chans"],) + tuple(cfg["input_size"][1:])
        model.pretrained_cfg = cfg
    randomize_(model, gen)
    input_shape = input_shape or (INPUT_SHAPE[0], model_args.get("in_chans", 3)) + INPUT_SHAPE[2:]
    x = torch.randn(input_shape, generator=gen)
    with torch.no_grad():
        if arch.startswith("mambaout"):
            feats = model.forward_intermediates(x, intermediates_only=True)
            logits = model(x)
        elif timm_family(arch)[0] is tmm:
            tokens = model.forward_features(x)
            grid = model.stem.grid_size
            feats = [tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid)]
            logits = model.forward_head(tokens)
            assert torch.allclose(logits, model(x), atol=1e-5)
        else:
            feats = timm_features(model, x)
            logits = model.forward_head(feats[-1])
            assert torch.allclose(logits, model(x), atol=1e-5)
    d = os.path.join(out, case)
    save_for_hf(model, d, model_args=model_args, safe_serialization=True)
    write_reference(d, x, logits, feats)


def random_mixing(mb, num_tokens):
    """sail-sg's RandomMixing for `num_tokens` tokens, as a class (timm's stages need one)."""

    class RandomMixingN(mb.RandomMixing):
        def __init__(self, **kwargs):
            super().__init__(num_tokens=num_tokens)

    return RandomMixingN


def sail_kwargs_of(mb, arch):
    """The MetaFormer kwargs of the sail-sg entry point `arch` (which, like timm's, cannot take
    `depths`/`dims` overrides)."""

    class Capture:
        def __init__(self, **kw):
            self.kw = kw

    original = mb.MetaFormer
    mb.MetaFormer = Capture
    try:
        return getattr(mb, arch)().kw
    finally:
        mb.MetaFormer = original


def sail_case(out, case, arch, sail_kwargs, model_args, timm_kwargs, mb, gen):
    """A sail-sg model, saved under timm names through timm's checkpoint_filter_fn."""
    captured = sail_kwargs_of(mb, arch)
    model = mb.MetaFormer(**{**captured, **sail_kwargs}).eval()
    model.default_cfg = mb.default_cfgs[arch]
    randomize_(model, gen)
    x = torch.randn(INPUT_SHAPE, generator=gen)
    with torch.no_grad():
        feats = sail_features(model, x)
        logits = model(x)
    # A timm MetaFormer with the same tensor names gives the shapes the filter reshapes to.
    shape_model = tmf.MetaFormer(**timm_kwargs)
    state = tmf.checkpoint_filter_fn(model.state_dict(), shape_model)
    missing = set(shape_model.state_dict()) ^ set(state)
    assert not missing, missing
    d = os.path.join(out, case)
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(d, "model.safetensors"))
    cfg = model.default_cfg
    config = {
        "architecture": arch,
        "num_classes": model_args["num_classes"],
        "num_features": model_args["dims"][-1],
        "global_pool": "avg",
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": list(cfg["input_size"]),
            "interpolation": cfg["interpolation"],
            "crop_pct": cfg["crop_pct"],
            "mean": list(cfg["mean"]),
            "std": list(cfg["std"]),
            "num_classes": model_args["num_classes"],
        },
    }
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    write_reference(d, x, logits, feats)


def preprocess_case(out):
    """Two PNGs (one upscaled, one downscaled by the eval resize) and timm's eval transform of
    each (112x112 crop, crop_pct 0.9, bicubic), as `expected.safetensors`."""
    import numpy as np
    from PIL import Image
    from timm.data import create_transform

    d = os.path.join(out, "preprocess")
    os.makedirs(d, exist_ok=True)
    transform = create_transform(input_size=(3, 112, 112), interpolation="bicubic", crop_pct=0.9,
                                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    expected = {}
    for name, (h, w) in [("small", (71, 93)), ("large", (300, 411))]:
        yy, xx = np.mgrid[0:h, 0:w] * (131.0 / h)
        pixels = np.stack([127 + 120 * np.sin(xx / 9.0 + yy / 23.0), 127 + 120 * np.cos(yy / 7.0),
                           (xx * 3 + yy * 2) % 256], -1).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(d, f"{name}.png"))
        expected[name] = transform(Image.open(os.path.join(d, f"{name}.png")).convert("RGB")).half().contiguous()
    save_file(expected, os.path.join(d, "expected.safetensors"))


def write_model_dir(d, arch, state, model_args, pretrained_cfg, num_features):
    """A model directory as timm's save_for_hf writes it, for models timm does not have."""
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(d, "model.safetensors"))
    config = {
        "architecture": arch,
        "num_classes": model_args["num_classes"],
        "num_features": num_features,
        "global_pool": "avg",
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": list(pretrained_cfg["input_size"]),
            "interpolation": pretrained_cfg["interpolation"],
            "crop_pct": pretrained_cfg["crop_pct"],
            "mean": list(pretrained_cfg["mean"]),
            "std": list(pretrained_cfg["std"]),
            "num_classes": model_args["num_classes"],
        },
    }
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def gfnet_forward(model, x):
    """GFNet's forward_features up to the final norm, as a (B, C, g, g) map, and the logits."""
    t = model.pos_drop(model.patch_embed(x) + model.pos_embed)
    for blk in model.blocks:
        t = blk(t)
    t = model.norm(t)
    g = int(round(t.shape[1] ** 0.5))
    return [t.transpose(1, 2).reshape(t.shape[0], -1, g, g)], model(x)


def gfnet_resize_state(state, old_grid, new_grid):
    """GFNet's own fine-tuning resize (main_gfnet.py, `--finetune`): bicubic position embedding
    (align_corners=False) and bicubic complex filters (align_corners=True)."""
    import torch.nn.functional as F
    out = dict(state)
    pos = state["pos_embed"]
    d = pos.shape[-1]
    pos = pos.reshape(-1, old_grid, old_grid, d).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    out["pos_embed"] = pos.permute(0, 2, 3, 1).flatten(1, 2)
    for name, w in state.items():
        if "complex_weight" in name:
            h, wd, c = w.shape[0:3]
            up_h = h * new_grid // old_grid
            up_w = up_h // 2 + 1
            w = w.reshape(1, h, wd, c * 2).permute(0, 3, 1, 2)
            w = F.interpolate(w, size=(up_h, up_w), mode="bicubic", align_corners=True)
            out[name] = w.permute(0, 2, 3, 1).reshape(up_h, up_w, c, 2)
    return out


def gfnet_cases(out, gf, gen):
    """GFNet from raoyongming/GFNet: one model at 64x64, and the same checkpoint loaded at 96x96
    through GFNet's resize."""
    args = dict(img_size=64, patch_size=16, embed_dim=32, depth=2, num_classes=10)
    model = gf.GFNet(**args, mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    randomize_(model, gen)
    x = torch.randn((2, 3, 64, 64), generator=gen)
    with torch.no_grad():
        feats, logits = gfnet_forward(model, x)
    state = model.state_dict()
    cfg = gf._cfg()
    write_model_dir(os.path.join(out, "gfnet_ti"), "gfnet_ti", state, args, cfg, 32)
    write_reference(os.path.join(out, "gfnet_ti"), x, logits, feats)

    big = gf.GFNet(**dict(args, img_size=96), mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    big.load_state_dict(gfnet_resize_state(state, 4, 6), strict=True)
    x = torch.randn((2, 3, 96, 96), generator=gen)
    with torch.no_grad():
        feats, logits = gfnet_forward(big, x)
    d = os.path.join(out, "gfnet_resized")
    write_model_dir(d, "gfnet_ti", state, dict(args, img_size=96), cfg, 32)
    write_reference(d, x, logits, feats)


def msmlp_case(out, case, ms, args, input_shape, gen):
    """MS-MLP from JegZheng/MS-MLP with its own tensor names."""
    model = ms.MS_MLP(**args).eval()
    randomize_(model, gen)
    x = torch.randn(input_shape, generator=gen)
    with torch.no_grad():
        t = model.patch_embed(x)
        feats = []
        for layer in model.layers:
            for blk in layer.blocks:
                t = blk(t)
            feats.append(t)
            if layer.downsample is not None:
                t = layer.downsample(t)
        logits = model(x)
    cfg = dict(input_size=(args.get("in_chans", 3), 224, 224), interpolation="bicubic", crop_pct=0.875,
               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    num_features = args["embed_dim"] * 2 ** (len(args["depths"]) - 1)
    d = os.path.join(out, case)
    write_model_dir(d, "msmlp_tiny", model.state_dict(), args, cfg, num_features)
    write_reference(d, x, logits, feats)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metaformer-repo", required=True, help="checkout of sail-sg/metaformer")
    ap.add_argument("--gfnet-repo", required=True, help="checkout of raoyongming/GFNet")
    ap.add_argument("--msmlp-repo", required=True, help="checkout of JegZheng/MS-MLP")
    ap.add_argument("--raftmlp-repo", required=True, help="checkout of okojoalg/raft-mlp")
    ap.add_argument("--affnet-repo", required=True,
                    help="the 'Adaptive Frequency Filters' folder of a microsoft/TokenMixers checkout")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    args = ap.parse_args()
    sys.path.insert(0, args.metaformer_repo)
    # The sail-sg code imports a module path that timm 1.x moved.
    import timm.layers.helpers
    sys.modules.setdefault("timm.models.layers.helpers", timm.layers.helpers)
    import metaformer_baselines as mb

    gen = torch.Generator().manual_seed(20261124)
    small = dict(depths=[1, 2, 2, 1], dims=[16, 24, 32, 48], num_classes=10)
    timm_case(args.out, "poolformer_s12", "poolformer_s12", small, gen)
    timm_case(args.out, "poolformerv2_s12", "poolformerv2_s12", dict(small, depths=[2, 1, 1, 2]), gen)
    timm_case(args.out, "convformer_s18", "convformer_s18", small, gen)
    timm_case(args.out, "caformer_s18", "caformer_s18", dict(small, dims=[16, 24, 32, 64]), gen)
    # timm kwargs that change the layout: 3 stages, 1 input channel, no MLP head, layer scale.
    timm_case(args.out, "caformer_custom", "caformer_s36",
              dict(depths=[1, 1, 2], dims=[16, 32, 64], in_chans=1, num_classes=5,
                   use_mlp_head=False, layer_scale_init_values=1e-5), gen)

    timm_case(args.out, "mambaout_femto", "mambaout_femto", small, gen)
    timm_case(args.out, "mambaout_custom", "mambaout_kobe",
              dict(depths=[1, 1, 2], dims=[16, 24, 32], in_chans=2, num_classes=0, ls_init_value=1e-6,
                   conv_ratio=0.5, kernel_size=5, downsample="conv_nf", stem_mid_norm=False), gen)

    tokens = dict(img_size=list(INPUT_SHAPE[2:]), embed_dim=32, num_blocks=2, num_classes=10)
    for arch in ["mixer_s16_224", "gmixer_12_224", "resmlp_12_224", "gmlp_s16_224"]:
        timm_case(args.out, arch, arch, tokens, gen)
    timm_case(args.out, "mixer_custom", "mixer_b32_224",
              dict(img_size=[40, 24], patch_size=8, embed_dim=24, num_blocks=2, in_chans=1, num_classes=0,
                   mlp_ratio=[0.25, 2.0], stem_norm=True), gen, input_shape=(3, 1, 40, 24))

    gn1 = tmf.GroupNorm1NoBias
    grid = [(INPUT_SHAPE[2] // 2 ** (i + 2)) * (INPUT_SHAPE[3] // 2 ** (i + 2)) for i in range(4)]
    sail_small = dict(depths=small["depths"], dims=small["dims"], num_classes=10)
    timm_base = dict(sail_small, norm_layers=gn1, use_mlp_head=False)
    sail_case(args.out, "identityformer_s12", "identityformer_s12", sail_small, sail_small,
              dict(timm_base, token_mixers=nn.Identity), mb, gen)
    rand = [nn.Identity, nn.Identity, random_mixing(mb, grid[2]), random_mixing(mb, grid[3])]
    sail_case(args.out, "randformer_s12", "randformer_s12",
              dict(sail_small, token_mixers=rand),
              dict(sail_small, img_size=list(INPUT_SHAPE[2:])),
              dict(timm_base, token_mixers=rand), mb, gen)
    import types
    import numpy
    sys.modules.setdefault("numpy.lib.arraypad", types.SimpleNamespace(pad=numpy.pad))
    sys.path.insert(0, args.gfnet_repo)
    import gfnet as gf
    gfnet_cases(args.out, gf, gen)

    sys.path.insert(0, args.msmlp_repo)
    from models import ms_mlp as ms
    msmlp_case(args.out, "msmlp_tiny", ms,
               dict(img_size=list(INPUT_SHAPE[2:]), embed_dim=14, depths=[1, 1, 1, 1], num_classes=10,
                    mix_size=[[1, 1, 3, 5, 7], [1, 3, 3, 5, 7], [1, 5, 5, 5, 7], [1, 7, 7, 7, 7]]),
               INPUT_SHAPE, gen)
    msmlp_case(args.out, "msmlp_custom", ms,
               dict(img_size=[20, 12], patch_size=2, in_chans=1, embed_dim=9, depths=[1, 2], num_classes=0,
                    shift_size=3, shift_dist=[-1, 0, 2], mix_size=[[1, 3, 5], [3, 3, 3]], mlp_ratio=2.0,
                    patch_norm=False), (3, 1, 20, 12), gen)

    sys.path.insert(0, args.raftmlp_repo)
    from libs import models as rf
    raftmlp_cases(args.out, rf, gen)
    affnet_case(args.out, args.affnet_repo, gen)
    mambaformer_case(args.out, gen)
    mambamixer_case(args.out, gen)

    preprocess_case(args.out)
    print("fixtures written to", os.path.abspath(args.out))


if __name__ == "__main__":
    main()
