#!/usr/bin/env python3
"""Writes the parity fixtures under tests/fixtures/ from the reference implementations.

Each fixture is a model directory as timm's `save_for_hf` writes it (config.json with
`architecture`, `num_classes`, `model_args`, `pretrained_cfg`, plus model.safetensors) and a
`reference.safetensors` with the input batch (`input`, batch 2, non-square), the reference
`logits` and every stage's feature map (`features.0` ...).

Every parameter is re-drawn at random (weights ~ N(0, 1/fan_in), gains ~ U(0.5, 1.5), biases
~ N(0, 0.5)), so a 1e-5 layer scale or a zero bias cannot hide a wrong mixer.

References: timm for PoolFormer v1/v2, ConvFormer, CAFormer, MambaOut and the MLP-Mixer family;
the authors' code for IdentityFormer and RandFormer (sail-sg/metaformer; checkpoints converted to
timm names with timm's own `checkpoint_filter_fn`), GFNet (raoyongming/GFNet), MS-MLP
(JegZheng/MS-MLP), RaftMLP (okojoalg/raft-mlp) and AFFNet (microsoft/TokenMixers), the last four
with their own tensor names. The Mamba block of MambaFormer and MambaMixer is Vision Mamba's
bidirectional `Mamba` (hustvl/Vim `mamba-1p1p1/mamba_ssm/modules/mamba_simple.py`,
`bimamba_type="v2"`, `if_divide_out=True`) on state-spaces/mamba's pure-PyTorch reference path
(`mamba_inner_ref` and `selective_scan_ref` from `mamba_ssm/ops/selective_scan_interface.py`) and
Dao-AILab/causal-conv1d's `causal_conv1d_ref`, imported from the checkouts with their CUDA/Triton
extensions stubbed (see `mamba_reference`). What remains tokenmix's own: the MambaFormer layout
(timm's MetaFormer with that block in stages 2-3), the whole MambaMixer model around the blocks
(the paper has no public code), the identity-`out_proj` adapter standing in for Vim's fused
`mamba_inner_fn_no_out_proj`, and GFNet's checkpoint resize (inlined in GFNet's `main_gfnet.py`).

The authors' code is never committed: each `--*-repo` is a checkout or a bare git directory (as
`git clone --bare` or the session `fetch` mirrors give); from a bare directory the files listed in
`REPOS` are extracted with `git archive HEAD` into a temporary directory outside the repository,
imported from there and deleted at the end.

Provenance: `__metadata__` of every model.safetensors, reference.safetensors and
expected.safetensors records the generator, the exact command, the seed, the python / torch / timm
/ safetensors / numpy / einops versions, the fixture, the reference (`reference`), the URL, commit
and paths of each authors' repository used (`reference_sources`, JSON) and what is tokenmix's own
reading rather than the reference's code (`tokenmix_reading`). Read it with
`safetensors.safe_open(path, "pt").metadata()`.

Regenerating (venv outside the repo: torch 2.15.0, timm 1.0.31, safetensors 0.8.0, numpy 2.4.6,
einops 0.8.2, Pillow, and for AFFNet requests, ujson, psutil); the fixtures in the repo were written
from these commits:
    sail-sg/metaformer 64c534ab8f65105fd21713b38e3393a449ca742d
    raoyongming/GFNet 2de48b626ea805de82a7f389fed930af1ae0340d
    JegZheng/MS-MLP a10d34d955c6061c767600937b534abd8a200871
    okojoalg/raft-mlp 6060d5d95e142acf80cea6d180adfb075cbe87d0
    microsoft/TokenMixers 99dbe38c2a5c3ea3c655b8c42c763a6d595e18f9
    state-spaces/mamba e9594ce1c732d97440f0332fdc43170a2294dbfa
    hustvl/Vim dd0358ad1e42701f22afbefa0717cc8825cf9f45
    Dao-AILab/causal-conv1d 0d2252d161f25f7907bbd05985c08ab98d255874

    for r in sail-sg/metaformer raoyongming/GFNet JegZheng/MS-MLP okojoalg/raft-mlp \
             microsoft/TokenMixers state-spaces/mamba hustvl/Vim Dao-AILab/causal-conv1d; do
        git clone --bare https://github.com/$r /tmp/src/${r#*/}.git
        # pin the commit above: git --git-dir=/tmp/src/${r#*/}.git update-ref --no-deref HEAD COMMIT
    done
    S=/tmp/src
    python scripts/make_fixtures.py --metaformer-repo $S/metaformer.git --gfnet-repo $S/GFNet.git \
        --msmlp-repo $S/MS-MLP.git --raftmlp-repo $S/raft-mlp.git --affnet-repo $S/TokenMixers.git \
        --mamba-repo $S/mamba.git --vim-repo $S/Vim.git --causal-conv1d-repo $S/causal-conv1d.git [--out DIR]
    python scripts/make_feature_info.py    # feature_info.json and the two intermediates files

Every random draw comes from one seeded generator, in a fixed order, and every reference runs on
the CPU in f32, so the same versions rewrite the same tensors (only the `command` metadata, which
names the local paths, differs).
"""
import argparse
from functools import partial
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import tempfile
import io

import torch
import torch.nn as nn
import timm
from timm.models import metaformer as tmf
from timm.models import mlp_mixer as tmm
from timm.models._hub import save_for_hf
import safetensors
from safetensors import safe_open
from safetensors.torch import save_file

INPUT_SHAPE = (2, 3, 32, 64)  # batch 2, non-square
SEED = 20261124

# The authors' repositories: command-line option -> (GitHub repository, the paths the fixtures use).
REPOS = {
    "metaformer": ("sail-sg/metaformer", ["metaformer_baselines.py"]),
    "gfnet": ("raoyongming/GFNet", ["gfnet.py"]),
    "msmlp": ("JegZheng/MS-MLP", ["models"]),
    "raftmlp": ("okojoalg/raft-mlp", ["libs"]),
    "affnet": ("microsoft/TokenMixers", ["Adaptive Frequency Filters"]),
    "mamba": ("state-spaces/mamba", ["mamba_ssm/ops/selective_scan_interface.py", "mamba_ssm/utils/torch.py"]),
    "vim": ("hustvl/Vim", ["mamba-1p1p1/mamba_ssm/modules/mamba_simple.py"]),
    "causal-conv1d": ("Dao-AILab/causal-conv1d", ["causal_conv1d/causal_conv1d_interface.py"]),
}

MAMBA_SOURCES = ("mamba", "vim", "causal-conv1d")

# What every fixture's `__metadata__` records besides its own reference (filled in by main()).
PROVENANCE = {}
# Option -> {"url", "commit", "paths"} of each authors' checkout used (filled in by main()).
SOURCES = {}


def git(*args):
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout.strip()


def source(option, path, tmp):
    """The directory to import an authors' repository from, and its provenance.

    `path` is a checkout (its HEAD commit is recorded, with "+dirty" if `git status` shows local
    changes) or a bare git directory (as the `fetch` mirrors are), whose needed paths are
    extracted with `git archive HEAD` into `tmp`, outside the repository."""
    repo, paths = REPOS[option]
    path = os.path.abspath(path)
    bare = os.path.isfile(os.path.join(path, "HEAD")) and os.path.isdir(os.path.join(path, "objects"))
    if bare:
        commit = git("--git-dir", path, "rev-parse", "HEAD")
        out = os.path.join(tmp, option)
        os.makedirs(out)
        archive = subprocess.run(["git", "--git-dir", path, "archive", "--format=tar", "HEAD", *paths],
                                 check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as t:
            t.extractall(out, filter="data")
    else:
        commit = git("-C", path, "rev-parse", "HEAD")
        if git("-C", path, "status", "--porcelain", "--", *paths):
            commit += "+dirty"
        out = git("-C", path, "rev-parse", "--show-toplevel")
    SOURCES[option] = {"url": f"https://github.com/{repo}", "commit": commit, "paths": paths}
    return out


def stamp(d, reference, sources=(), tokenmix_reading=None):
    """Writes the provenance into `__metadata__` of every safetensors file of fixture `d`
    (the model checkpoint and the reference outputs), keeping what the writer put there."""
    meta = dict(PROVENANCE)
    meta["fixture"] = os.path.basename(os.path.normpath(d))
    meta["reference"] = reference
    meta["reference_sources"] = json.dumps({REPOS[k][0]: SOURCES[k] for k in sources}) if sources else "none"
    meta["tokenmix_reading"] = tokenmix_reading or "none: the model is built and run by the reference's own code"
    for name in sorted(os.listdir(d)):
        if name in ("model.safetensors", "reference.safetensors", "expected.safetensors"):
            path = os.path.join(d, name)
            with safe_open(path, "pt") as f:
                old = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            save_file(tensors, path, metadata={**old, **meta, "file": name})


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


def mamba_reference(mamba_src, vim_src, conv_src):
    """The bidirectional Mamba block of Vision Mamba (hustvl/Vim's `mamba-1p1p1/mamba_ssm/modules/
    mamba_simple.py`, `Mamba(bimamba_type="v2", if_divide_out=True)` as Vim's models build it),
    running on state-spaces/mamba's reference path: `mamba_ssm/ops/selective_scan_interface.py`
    imported from the mamba checkout, its `mamba_inner_ref` with `selective_scan_fn` pointed at its
    own `selective_scan_ref`, and Dao-AILab/causal-conv1d's `causal_conv1d_ref` as
    `causal_conv1d_fn`. The CUDA/Triton extensions those files import (`selective_scan_cuda`,
    `causal_conv1d_cuda` through `causal_conv1d.cpp_functions`, `mamba_ssm.ops.triton.*`) are
    stubbed in `sys.modules`; none of their code runs.

    The one piece written here is `mamba_inner_fn_no_out_proj` (the fused CUDA function Vim's
    bimamba v2 path calls, which has no reference in either repository): `mamba_inner_ref` with an
    identity `out_proj`, transposed back to (B, D, L). Multiplying by an identity is exact.

    Returns `(Mamba class, selective_scan_interface module)`."""
    import importlib.util
    import types

    def module(name, path=None, **attrs):
        if path is None:
            mod = types.ModuleType(name)
            mod.__path__ = []
            mod.__dict__.update(attrs)
            sys.modules[name] = mod
            return mod
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod

    # causal-conv1d: its interface file; the compiled kernels it imports are stubbed.
    cc = module("causal_conv1d")
    module("causal_conv1d.cpp_functions", causal_conv1d_fwd_function=None, causal_conv1d_bwd_function=None,
           causal_conv1d_update_function=None)
    cci = module("causal_conv1d.causal_conv1d_interface",
                 os.path.join(conv_src, "causal_conv1d", "causal_conv1d_interface.py"))
    cc.causal_conv1d_fn, cc.causal_conv1d_update = cci.causal_conv1d_ref, None

    # state-spaces/mamba: the selective-scan interface and the helper module it imports.
    for pkg in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.utils", "mamba_ssm.ops.triton"):
        module(pkg)
    module("mamba_ssm.utils.torch", os.path.join(mamba_src, "mamba_ssm", "utils", "torch.py"))
    module("mamba_ssm.ops.triton.layer_norm", _layer_norm_fwd=None)  # Triton; fused path only
    ssi = module("mamba_ssm.ops.selective_scan_interface",
                 os.path.join(mamba_src, "mamba_ssm", "ops", "selective_scan_interface.py"))
    assert ssi.causal_conv1d_fn is cci.causal_conv1d_ref
    ssi.selective_scan_fn = ssi.selective_scan_ref

    def mamba_inner_fn_no_out_proj(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B=None,
                                   C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                                   delta_softplus=True):
        eye = torch.eye(A.shape[0], dtype=xz.dtype)
        y = ssi.mamba_inner_ref(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, eye, None, A,
                                B, C, D, delta_bias, B_proj_bias, C_proj_bias, delta_softplus)
        return y.transpose(1, 2)

    def fused_only(*args, **kwargs):
        raise RuntimeError("fused CUDA path; not used by bimamba v2")

    ssi.mamba_inner_fn_no_out_proj = mamba_inner_fn_no_out_proj
    ssi.bimamba_inner_fn = fused_only
    vim = module("vim_mamba_simple", os.path.join(vim_src, "mamba-1p1p1", "mamba_ssm", "modules", "mamba_simple.py"))

    class VimMamba(tmf.Attention, vim.Mamba):
        """Vim's `Mamba(d_model=dim, bimamba_type="v2", if_divide_out=True)`. It subclasses timm's
        metaformer `Attention` only so that timm's `MetaFormerStage` runs it on (B, N, C) tokens
        (the stage checks `issubclass(token_mixer, Attention)`); none of Attention's code runs."""

        forward = vim.Mamba.forward

        def __init__(self, dim, d_state=16, expand=2, **kwargs):
            vim.Mamba.__init__(self, dim, d_state=d_state, expand=expand, bimamba_type="v2", if_divide_out=True)
            assert self.use_fast_path and self.dt_rank == math.ceil(dim / 16)

    return VimMamba, ssi


class MambaMixerRef(nn.Module):
    """tokenmix's reading of MambaMixer (arXiv 2403.19888, no official code): patch embedding,
    blocks of a bidirectional Mamba over tokens and one over channels, each pre-normed and
    residual, each fed a learned weighted sum of all earlier features; LayerNorm, mean, head.
    The Mamba blocks are `mamba` (Vim's, see `mamba_reference`)."""

    def __init__(self, mamba, img_size, patch_size, embed_dim, depth, num_classes, in_chans=3, d_state=16,
                 expand=2):
        super().__init__()
        n = (img_size[0] // patch_size) * (img_size[1] // patch_size)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.blocks = nn.ModuleList()
        for i in range(depth):
            b = nn.Module()
            b.token_weights = nn.Parameter(torch.eye(1 + 2 * i)[-1])
            b.token_norm = nn.LayerNorm(embed_dim, eps=1e-6)
            b.token_mixer = mamba(embed_dim, d_state=d_state, expand=expand)
            b.channel_weights = nn.Parameter(torch.eye(2 + 2 * i)[-1])
            b.channel_norm = nn.LayerNorm(embed_dim, eps=1e-6)
            b.channel_mixer = mamba(n, d_state=d_state, expand=expand)
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


def mambamixer_case(out, mamba, gen):
    args = dict(img_size=[16, 32], patch_size=8, embed_dim=24, depth=2, num_classes=10)
    model = MambaMixerRef(mamba, **args).eval()
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
    stamp(d, "make_fixtures.py MambaMixerRef around hustvl/Vim's bidirectional Mamba (bimamba v2, if_divide_out) "
             "on state-spaces/mamba's mamba_inner_ref + selective_scan_ref and causal-conv1d's causal_conv1d_ref",
          MAMBA_SOURCES,
          "the MambaMixer model (arXiv 2403.19888 has no public code): patch embedding, token and channel "
          "Mamba blocks with pre-norm, residuals and learned weighted sums of all earlier features, final "
          "LayerNorm, mean pool and head are tokenmix's reading of the paper (MambaMixerRef); the Mamba "
          "blocks are Vim's code; mamba_inner_fn_no_out_proj is mamba_inner_ref with an identity out_proj")


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
        stamp(d, "okojoalg/raft-mlp libs.models.RaftMLP", ("raftmlp",))


def affnet_case(out, aff_repo, gen, attn_norm="layer_norm_2d", fixture="affnet_et"):
    """AFFNet from microsoft/TokenMixers (cvnets), at small widths through its configuration
    function, swish activation and `attn_norm` block norms (the code's default layer_norm_2d, or
    cvnets' per-pixel layer_norm); batch-norm statistics redrawn too."""
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
                 "model.normalization.name": "batch_norm", "model.classification.n_classes": 10,
                 "model.classification.affnet.attn_norm_layer": attn_norm}.items():
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
    if attn_norm != "layer_norm_2d":
        args["attn_norm_layer"] = attn_norm
    cfg = dict(input_size=(3, 256, 256), interpolation="bicubic", crop_pct=0.875,
               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    d = os.path.join(out, fixture)
    write_model_dir(d, "affnet_et", model.state_dict(), args, cfg, 128)
    write_reference(d, x, logits, feats)
    stamp(d, "microsoft/TokenMixers 'Adaptive Frequency Filters' affnet.models.classification.affnet.AffNet, "
             "small widths through its get_configuration", ("affnet",))


def mambaformer_case(out, mamba, gen):
    """tokenmix's MambaFormer (CAFormer with Mamba mixers in stages 2-3) built as a timm
    MetaFormer around Vim's bidirectional Mamba block (`mamba_reference`)."""
    args = dict(depths=[1, 1, 2, 1], dims=[16, 24, 32, 48], num_classes=10)
    kwargs = {**timm_kwargs("caformer_s18"), **args}
    kwargs["token_mixers"] = [tmf.SepConv, tmf.SepConv, mamba, mamba]
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
    stamp(d, f"timm {timm.__version__} timm.models.metaformer.MetaFormer (caformer_s18 kwargs + model_args) with "
             "hustvl/Vim's bidirectional Mamba (bimamba v2, if_divide_out) as the stage 2-3 token mixer, on "
             "state-spaces/mamba's mamba_inner_ref + selective_scan_ref and causal-conv1d's causal_conv1d_ref",
          MAMBA_SOURCES,
          "the MambaFormer architecture (CAFormer with Mamba token mixers in stages 2-3) is tokenmix's own; "
          "every module is timm's or Vim's code; mamba_inner_fn_no_out_proj is mamba_inner_ref with an "
          "identity out_proj")


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
    built = (f"timm.create_model({arch!r}, **model_args)" if arch.startswith("mambaout") else
             f"{type(model).__module__}.{type(model).__name__} ({arch} entry point kwargs + model_args)")
    stamp(d, f"timm {timm.__version__} {built}, saved by timm's save_for_hf")


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
    stamp(d, f"sail-sg/metaformer metaformer_baselines.MetaFormer ({arch} kwargs + overrides), tensors renamed "
             f"by timm {timm.__version__} metaformer.checkpoint_filter_fn", ("metaformer",))


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
    import PIL
    stamp(d, f"timm {timm.__version__} timm.data.create_transform (eval; 112x112, crop_pct 0.9, bicubic) on "
             f"PIL {PIL.__version__} Image.open(...).convert('RGB'); PNGs drawn by numpy formulas, no random draw")


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
    stamp(os.path.join(out, "gfnet_ti"), "raoyongming/GFNet gfnet.GFNet", ("gfnet",))

    big = gf.GFNet(**dict(args, img_size=96), mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    big.load_state_dict(gfnet_resize_state(state, 4, 6), strict=True)
    x = torch.randn((2, 3, 96, 96), generator=gen)
    with torch.no_grad():
        feats, logits = gfnet_forward(big, x)
    d = os.path.join(out, "gfnet_resized")
    write_model_dir(d, "gfnet_ti", state, dict(args, img_size=96), cfg, 32)
    write_reference(d, x, logits, feats)
    stamp(d, "raoyongming/GFNet gfnet.GFNet at img_size 96, loaded (strict) from the gfnet_ti checkpoint resized "
             "for 64 -> 96", ("gfnet",),
          "the checkpoint resize (make_fixtures.py gfnet_resize_state) re-types the --finetune interpolation "
          "inlined in GFNet's main_gfnet.py main() (bicubic pos_embed, align_corners=False; bicubic complex "
          "filters, align_corners=True), which cannot be imported")


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
    stamp(d, "JegZheng/MS-MLP models.ms_mlp.MS_MLP", ("msmlp",))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for option, (repo, paths) in REPOS.items():
        ap.add_argument(f"--{option}-repo", required=True, metavar="PATH",
                        help=f"checkout or bare git directory of {repo} (uses {', '.join(paths)})")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tokenmix-fixture-sources-")
    src = {option: source(option, getattr(args, f"{option.replace('-', '_')}_repo"), tmp) for option in REPOS}
    import einops
    import timm.layers.helpers  # (binds `timm` in this function too)
    PROVENANCE.update({
        "generator": "scripts/make_fixtures.py (tokenmix)",
        "command": "python scripts/make_fixtures.py " + shlex.join(sys.argv[1:]),
        "seed": f"torch.Generator().manual_seed({SEED}), one generator drawn through the fixtures in main()'s order",
        "weights": "redrawn by randomize_: weights N(0, 1/fan_in), gains U(0.5, 1.5), biases N(0, 0.5)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "safetensors": safetensors.__version__,
        "numpy": __import__("numpy").__version__,
        "einops": einops.__version__,
    })
    sys.path.insert(0, src["metaformer"])
    # The sail-sg code imports a module path that timm 1.x moved.
    sys.modules.setdefault("timm.models.layers.helpers", timm.layers.helpers)
    import metaformer_baselines as mb

    gen = torch.Generator().manual_seed(SEED)
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
    sys.path.insert(0, src["gfnet"])
    import gfnet as gf
    gfnet_cases(args.out, gf, gen)

    sys.path.insert(0, src["msmlp"])
    from models import ms_mlp as ms
    msmlp_case(args.out, "msmlp_tiny", ms,
               dict(img_size=list(INPUT_SHAPE[2:]), embed_dim=14, depths=[1, 1, 1, 1], num_classes=10,
                    mix_size=[[1, 1, 3, 5, 7], [1, 3, 3, 5, 7], [1, 5, 5, 5, 7], [1, 7, 7, 7, 7]]),
               INPUT_SHAPE, gen)
    msmlp_case(args.out, "msmlp_custom", ms,
               dict(img_size=[20, 12], patch_size=2, in_chans=1, embed_dim=9, depths=[1, 2], num_classes=0,
                    shift_size=3, shift_dist=[-1, 0, 2], mix_size=[[1, 3, 5], [3, 3, 3]], mlp_ratio=2.0,
                    patch_norm=False), (3, 1, 20, 12), gen)

    sys.path.insert(0, src["raftmlp"])
    from libs import models as rf
    raftmlp_cases(args.out, rf, gen)
    affnet_case(args.out, os.path.join(src["affnet"], "Adaptive Frequency Filters"), gen)
    mamba, _ = mamba_reference(src["mamba"], src["vim"], src["causal-conv1d"])
    mambaformer_case(args.out, mamba, gen)
    mambamixer_case(args.out, mamba, gen)

    preprocess_case(args.out)
    import shutil
    shutil.rmtree(tmp)
    print("fixtures written to", os.path.abspath(args.out))


if __name__ == "__main__":
    main()
