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

Hydra (with --hydra-repo and --mamba-repo): the `hydra` mixer alone (two settings: one group,
and two groups of heads) and the hydraformer_s18 fixture (timm's MetaFormer with caformer_s18's
kwargs, small depths/dims, the reference `Hydra` with its defaults as the stage 2-3 mixer:
tokenmix's composition), from goombalab/hydra hydra/modules/hydra.py. Its Triton pieces are
replaced by state-spaces/mamba's own pure-PyTorch references: `mamba_chunk_scan_combined` by
mamba_ssm/modules/ssd_minimal.py's `ssd_minimal_discrete` (one chunk spanning the sequence; `B`
and `C` repeated over the heads of their group), the gated RMSNorm by
mamba_ssm/ops/triton/layernorm_gated.py's `rms_norm_ref` (needs the triton package importable).

tokenmix's readings (the papers released no code; the modules below are this script's own,
written from tokenmix's equations, so parity only shows that the Rust matches that reading):
  * dynamic_spectrum and tokenmix_dsm_s18_custom: `DynamicSpectrumReading`, the Dynamic Spectrum
    Mixer as tokenmix reads it (crates/mixers/src/spectrum.rs), with its orthonormal DCT taken
    from scipy.fft.dct applied to the identity; the model is timm's MetaFormer with
    convformer_s18's kwargs and the mixer in every stage.
  * strip_attention and tokenmix_s2a_t_custom: `StripAttentionReading` and `S2AFormerReading`,
    S2AFormer as tokenmix reads it (crates/mixers/src/strip_attention.rs,
    crates/models/src/s2aformer.rs).

Usage (venv outside the repo with torch, timm, einops, safetensors, diffusers):
    python scripts/make_wave2b_fixtures.py --ninformer-repo /path/to/Abdullah-88/NiNformer \
        --ninformer-commit COMMIT --linfusion-repo /path/to/Huage001/LinFusion \
        --linfusion-commit COMMIT --transnext-repo /path/to/DaiShiResearch/TransNeXt \
        --transnext-commit COMMIT --hydra-repo /path/to/goombalab/hydra --hydra-commit COMMIT \
        --mamba-repo /path/to/state-spaces/mamba --mamba-commit COMMIT [--out tests/fixtures]
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
    ap.add_argument("--hydra-repo")
    ap.add_argument("--hydra-commit")
    ap.add_argument("--mamba-repo")
    ap.add_argument("--mamba-commit")
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
    if args.hydra_repo:
        write_hydra(args, common, gen)
    write_readings(args, common, gen)
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


def caformer_with(mixer, model_args):
    """timm's MetaFormer with caformer_s18's kwargs, `model_args` on top and `mixer` (a class
    taking `dim`) as the token mixer of stages 2-3, run on channel-last tokens there (timm's stages
    do that only for subclasses of its Attention, so the class stands in for it while building)."""
    from timm.models import metaformer as tmf

    from make_fixtures import timm_kwargs

    kwargs = {**timm_kwargs("caformer_s18"), **model_args}
    kwargs["token_mixers"] = [tmf.SepConv, tmf.SepConv, mixer, mixer]
    attention = tmf.Attention
    tmf.Attention = mixer
    try:
        return tmf.MetaFormer(**kwargs)
    finally:
        tmf.Attention = attention


def write_linfusion(args, common, gen):
    """LinFusion's generalized linear attention alone (two settings) and in a CAFormer-shaped
    MetaFormer."""
    import timm

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
    model = caformer_with(Mixer, model_args)
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


def hydra_module(args):
    """goombalab/hydra's `Hydra` on state-spaces/mamba's pure-PyTorch references."""
    import types

    def package(name):
        module = types.ModuleType(name)
        module.__path__ = []
        sys.modules[name] = module
        return module

    for name in ["mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton", "hydra", "hydra.modules"]:
        package(name)
    combined = types.ModuleType("mamba_ssm.ops.triton.ssd_combined")
    sys.modules[combined.__name__] = combined
    ssd = {}

    def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=None, D=None, z=None,
                                  seq_idx=None, initial_states=None, **_):
        assert D is None and z is None and initial_states is None
        per_group = x.shape[2] // B.shape[2]
        B, C = (t.repeat_interleave(per_group, dim=2) for t in (B, C))
        y, _ = ssd["minimal"].ssd_minimal_discrete(x * dt[..., None], A * dt, B, C,
                                                   block_len=x.shape[1])
        return y

    combined.mamba_chunk_scan_combined = mamba_chunk_scan_combined
    ssd["minimal"] = load_module(
        os.path.join(args.mamba_repo, "mamba_ssm", "modules", "ssd_minimal.py"),
        "mamba_ssm.modules.ssd_minimal",
    )
    gated = load_module(
        os.path.join(args.mamba_repo, "mamba_ssm", "ops", "triton", "layernorm_gated.py"),
        "mamba_ssm.ops.triton.layernorm_gated",
    )

    class RMSNorm(gated.RMSNorm):
        """The gated RMSNorm through its reference function (the module's kernel is Triton)."""

        def forward(self, x, z=None):
            return gated.rms_norm_ref(x, self.weight, self.bias, z=z, eps=self.eps,
                                      group_size=self.group_size,
                                      norm_before_gate=self.norm_before_gate)

    gated.RMSNorm = RMSNorm
    ops = types.ModuleType("hydra.modules.ops")
    ops.hydra_split_conv1d_scan_combined = None  # the memory-efficient path, not used
    sys.modules[ops.__name__] = ops
    return load_module(os.path.join(args.hydra_repo, "hydra", "modules", "hydra.py"),
                       "hydra.modules.hydra")


def write_hydra(args, common, gen):
    """Hydra: the mixer alone (one and two groups) and in a CAFormer-shaped MetaFormer."""
    import timm

    hy = hydra_module(args)
    meta = {
        **common,
        "reference": "https://github.com/goombalab/hydra hydra/modules/hydra.py on "
        "https://github.com/state-spaces/mamba mamba_ssm/modules/ssd_minimal.py and "
        "mamba_ssm/ops/triton/layernorm_gated.py (rms_norm_ref)",
        "commit": f"hydra {args.hydra_commit}, mamba {args.mamba_commit}",
    }
    mixers = os.path.join(args.out, "mixers")
    d = TOKENS_SHAPE[2]
    for name, kwargs in [
        ("hydra", dict(d_state=8, headdim=8)),
        ("hydra_g2_conv5", dict(d_state=6, headdim=12, ngroups=2, d_conv=5)),
    ]:
        write(mixers, name, hy.Hydra(d_model=d, **kwargs),
              {**meta, "module": f"Hydra(d_model={d}, {kwargs})"}, gen, shape=TOKENS_SHAPE)

    class Mixer(hy.Hydra):
        """The reference mixer with its defaults as a timm MetaFormer token mixer."""

        def __init__(self, dim, proj_drop=0.0, **_):
            super().__init__(d_model=dim)

    model_args = {"depths": [1, 1, 2, 1], "dims": [16, 24, 32, 64], "num_classes": 5}
    model = caformer_with(Mixer, model_args)
    write_model(
        args.out,
        "hydraformer_s18_custom",
        model,
        model_args,
        {**meta, "module": f"timm {timm.__version__} timm.models.metaformer.MetaFormer "
                           "(caformer_s18 kwargs + model_args) with Hydra (its defaults) as the "
                           "stage 2-3 token mixer: tokenmix's composition"},
        gen,
        list(model.stages),
        shape=(2, 3, 64, 96),
    )


def dct_matrix(n):
    """The orthonormal DCT-II matrix [n, n] (scipy's DCT of the identity's columns)."""
    import numpy
    import scipy.fft

    return torch.from_numpy(scipy.fft.dct(numpy.eye(n), type=2, norm="ortho", axis=0)).float()


class DynamicSpectrumReading(nn.Module):
    """tokenmix's reading of the Dynamic Spectrum Mixer on a (B, C, H, W) map: GELU(pwconv1)
    to C' channels, orthonormal 2-D DCT-II, times a softmax mixture of K weight banks chosen by
    an MLP on the pooled input, inverse DCT, pwconv2."""

    def __init__(self, dim, size, expansion_ratio=2.0, num_filters=4, reweight_ratio=0.25):
        super().__init__()
        mid, hidden = int(expansion_ratio * dim), max(int(reweight_ratio * dim), 1)
        self.pwconv1 = nn.Linear(dim, mid, bias=False)
        self.reweight = nn.Module()
        self.reweight.fc1 = nn.Linear(dim, hidden)
        self.reweight.fc2 = nn.Linear(hidden, num_filters * mid)
        self.banks = nn.Parameter(torch.ones(num_filters, size[0], size[1], mid))
        self.pwconv2 = nn.Linear(mid, dim, bias=False)
        self.register_buffer("dct_h", dct_matrix(size[0]), persistent=False)
        self.register_buffer("dct_w", dct_matrix(size[1]), persistent=False)
        self.k, self.mid = num_filters, mid

    def forward(self, x):
        t = x.permute(0, 2, 3, 1)
        u = torch.nn.functional.gelu(self.pwconv1(t))
        spectrum = torch.einsum("kh,bhwc,lw->bklc", self.dct_h, u, self.dct_w)
        r = self.reweight.fc2(torch.relu(self.reweight.fc1(t.mean(dim=(1, 2)))))
        r = r.reshape(-1, self.k, self.mid).softmax(dim=1)
        weights = torch.einsum("bkc,khwc->bhwc", r, self.banks)
        back = torch.einsum("kh,bklc,lw->bhwc", self.dct_h, spectrum * weights, self.dct_w)
        return self.pwconv2(back).permute(0, 3, 1, 2)


class StripAttentionReading(nn.Module):
    """tokenmix's reading of strip self-attention on a (B, C, H, W) map: queries at qk_ratio *
    C channels, keys and values from a depthwise R x R / R reduction and a LayerNorm, keys at the
    query width, values at full width, softmax attention per head, projection."""

    def __init__(self, dim, num_heads=1, sr_ratio=8, qk_ratio=0.5):
        super().__init__()
        qk = int(qk_ratio * dim)
        self.q, self.k = nn.Linear(dim, qk), nn.Linear(dim, qk)
        self.v, self.proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio, groups=dim)
            self.norm = nn.LayerNorm(dim)
        self.heads, self.sr_ratio, self.qk = num_heads, sr_ratio, qk

    def forward(self, x):
        b, c, h, w = x.shape
        r = x
        if self.sr_ratio > 1:
            pad = (0, max(self.sr_ratio - w, 0), 0, max(self.sr_ratio - h, 0))
            reduced = self.sr(torch.nn.functional.pad(x, pad))
            r = self.norm(reduced.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        tokens, reduced = x.flatten(2).transpose(1, 2), r.flatten(2).transpose(1, 2)

        def heads(t):
            return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = heads(self.q(tokens)), heads(self.k(reduced)), heads(self.v(reduced))
        attn = (q @ k.transpose(-2, -1) * (self.qk // self.heads) ** -0.5).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, h * w, c)
        return self.proj(y).transpose(1, 2).reshape(b, c, h, w)


class S2AFormerReading(nn.Module):
    """tokenmix's reading of S2AFormer (crates/models/src/s2aformer.rs), on (B, C, H, W)."""

    def __init__(self, embed_dims, depths, num_heads, sr_ratios, mlp_ratios, qk_ratio=0.5,
                 in_chans=3, num_classes=1000):
        super().__init__()
        c0 = embed_dims[0]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, c0 // 2, 3, 2, 1), nn.GELU(),
                                  nn.Conv2d(c0 // 2, c0 // 2, 3, 1, 1), nn.GELU(),
                                  nn.Conv2d(c0 // 2, c0, 3, 1, 1))
        self.stages = nn.ModuleList()
        cin = c0
        for i, c in enumerate(embed_dims):
            stage = nn.Module()
            stage.patch_embed = nn.Module()
            stage.patch_embed.proj = nn.Conv2d(cin, c, 3, 2, 1)
            stage.patch_embed.norm = nn.LayerNorm(c, eps=1e-6)
            stage.blocks = nn.ModuleList()
            for _ in range(depths[i]):
                blk = nn.Module()
                blk.dwconv = nn.Conv2d(c, c, 3, 1, 1, groups=c)
                blk.norm1, blk.norm2, blk.norm3 = (nn.LayerNorm(c, eps=1e-6) for _ in range(3))
                blk.attn = StripAttentionReading(c, num_heads[i], sr_ratios[i], qk_ratio)
                blk.lim = nn.Module()
                blk.lim.fc1, blk.lim.fc2 = nn.Linear(c, c), nn.Linear(c, c)
                blk.lim.dwconv = nn.Conv2d(c, c, 3, 1, 1, groups=c)
                blk.mlp = nn.Module()
                hidden = int(c * mlp_ratios[i])
                blk.mlp.fc1, blk.mlp.fc2 = nn.Linear(c, hidden), nn.Linear(hidden, c)
                stage.blocks.append(blk)
            stage.forward = self._stage_forward(stage)
            self.stages.append(stage)
            cin = c
        self.head = nn.Module()
        self.head.norm, self.head.fc = nn.LayerNorm(cin, eps=1e-6), nn.Linear(cin, num_classes)

    @staticmethod
    def _stage_forward(stage):
        gelu = torch.nn.functional.gelu

        def last(t, f):  # f on channel-last values of a (B, C, H, W) map
            return f(t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

        def forward(x):
            x = last(stage.patch_embed.proj(x), stage.patch_embed.norm)
            for blk in stage.blocks:
                x = x + blk.dwconv(x)
                x = x + blk.attn(last(x, blk.norm1))
                lim = last(last(x, blk.norm2), blk.lim.fc1)
                x = x + last(gelu(blk.lim.dwconv(lim)), blk.lim.fc2)
                x = x + last(x, lambda t: blk.mlp.fc2(gelu(blk.mlp.fc1(blk.norm3(t)))))
            return x

        return forward

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head.fc(self.head.norm(x.mean(dim=(2, 3))))


def write_readings(args, common, gen):
    """The papers without code, as tokenmix reads them (see the module docstring)."""
    import timm
    from timm.models import metaformer as tmf

    from make_fixtures import timm_kwargs

    meta = {**common, "reference": "tokenmix's reading (no public code); this script's own "
                                   "PyTorch modules", "commit": "none"}
    write(os.path.join(args.out, "mixers"), "dynamic_spectrum",
          DynamicSpectrumReading(24, (7, 10)),
          {**meta, "module": "DynamicSpectrumReading(24, (7, 10))"}, gen)

    shape = (2, 3, 64, 96)
    grids = [(16, 24), (8, 12), (4, 6), (2, 3)]

    def mixer(size):
        class Mixer(DynamicSpectrumReading):
            def __init__(self, dim, proj_drop=0.0, **_):
                super().__init__(dim, size)

        return Mixer

    model_args = {"depths": [1, 1, 2, 1], "dims": [16, 24, 32, 40], "num_classes": 5,
                  "img_size": [shape[2], shape[3]]}
    kwargs = {**timm_kwargs("convformer_s18"),
              **{k: v for k, v in model_args.items() if k != "img_size"}}
    kwargs["token_mixers"] = [mixer(g) for g in grids]
    model = tmf.MetaFormer(**kwargs)
    write_model(args.out, "tokenmix_dsm_s18_custom", model, model_args,
                {**meta, "module": f"timm {timm.__version__} MetaFormer (convformer_s18 kwargs + "
                                   "model_args) with DynamicSpectrumReading in every stage"},
                gen, list(model.stages), shape=shape)

    write(os.path.join(args.out, "mixers"), "strip_attention",
          StripAttentionReading(24, num_heads=2, sr_ratio=2, qk_ratio=0.5),
          {**meta, "module": "StripAttentionReading(24, num_heads=2, sr_ratio=2, qk_ratio=0.5)"},
          gen)
    model_args = {"embed_dims": [16, 24, 32, 40], "depths": [1, 1, 2, 1],
                  "num_heads": [1, 2, 2, 4], "sr_ratios": [8, 4, 2, 1],
                  "mlp_ratios": [4, 4, 4, 4], "num_classes": 5}
    model = S2AFormerReading(**model_args)
    write_model(args.out, "tokenmix_s2a_t_custom", model, model_args,
                {**meta, "module": "S2AFormerReading (small model_args)"},
                gen, list(model.stages), shape=shape)


if __name__ == "__main__":
    main()
