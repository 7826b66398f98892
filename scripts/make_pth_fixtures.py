#!/usr/bin/env python3
"""Writes the PyTorch-checkpoint fixtures of tests/fixtures/pth/ with torch.save itself.

Files (all written by torch.save; PROVENANCE.json records torch's version and this command):
  * plain.pth: a state dict (OrderedDict) of small tensors covering what the reader must handle:
    f32 / f16 / bf16 / f64 / int64 storages, a transposed (non-contiguous) view, two views of one
    storage at different offsets, a 0-d tensor and an nn.Parameter. values.json lists every
    tensor's name, dtype, shape and elements (row-major), in the dict's order, for the Rust test to compare against.
  * plain_p4.pth: the same state dict pickled with protocol 4 (FRAME, MEMOIZE, STACK_GLOBAL).
  * nested.pth: a training checkpoint as DeiT-style scripts write it ({'state_dict': ...,
    'epoch', 'args' (argparse.Namespace), 'optimizer'}) whose names carry DataParallel's `module.`
    prefix.
  * legacy.pth: plain.pth's dict in the pre-1.6 format (_use_new_zipfile_serialization=False).
  * whole_model.pth: a pickled nn.Module (not a state dict).
  * rcvit_xs_custom.pth (with --casvit-repo): the weights of tests/fixtures/rcvit_xs_custom loaded
    into the authors' RCViT (strict load_state_dict), saved from its state_dict() (batch-norm
    num_batches_tracked included) as the authors' training checkpoints hold it, under 'model'
    beside 'epoch', 'optimizer' and 'args'.
  * EfficientViM_M1_custom.pth (with --efficientvim-repo): tests/fixtures/EfficientViM_M1_custom
    loaded into the authors' EfficientViM, saved as their save_checkpoint_ema writes it: 'model'
    and 'model_ema' state dicts beside 'epoch', 'max_accuracy', 'optimizer' and 'config' (an
    argparse.Namespace standing in for their yacs config).
  * wavemix_custom.pth (with --wavemix-repo): tests/fixtures/wavemix_custom loaded into the
    authors' wavemix/classification.py WaveMix (classifier `pool.2`, not timm.py's `head.2`),
    saved as a plain state dict as their released weights are.
  * iformer_small_custom.pth (with --iformer-repo): tests/fixtures/iformer_small_custom loaded
    into the authors' InceptionTransformer, saved as a plain state dict as their released
    weights are (their iformer_* functions call load_state_dict on the file itself).
  * ffnet_3_custom.pth.tar (with --ffnet-repo): tests/fixtures/ffnet_3_custom loaded into the
    authors' (unfused) FFNet, saved as their timm train script's CheckpointSaver writes it:
    'state_dict' and 'state_dict_ema' beside 'epoch', 'arch', 'optimizer', 'version' and 'args'.
  * poolformer_s12_sail_custom.pth (with --poolformer-repo): a small PoolFormer built by
    sail-sg/poolformer's own models/poolformer.py (original names: `network.{0..6}`,
    `patch_embed.proj`, `layer_scale_1`, `norm`, `head`), every parameter drawn at random, saved as
    a plain state dict as its released weights are; beside it the fixture directory
    tests/fixtures/poolformer_s12_sail_custom (config.json with timm's poolformer_s12 keywords,
    model.safetensors: the same weights under timm's names by timm's own checkpoint_filter_fn,
    reference.safetensors: input, the sail-sg model's stage outputs and timm's logits on those
    weights — sail-sg's head norms the whole map before its mean, timm's the pooled vector, and
    timm's conversion renames only).

Usage (venv outside the repo with torch, timm, einops, safetensors; PyWavelets for WaveMix):
    python scripts/make_pth_fixtures.py [--casvit-repo DIR --casvit-commit COMMIT] \
        [--efficientvim-repo DIR --efficientvim-commit COMMIT] \
        [--wavemix-repo DIR --wavemix-commit COMMIT] \
        [--iformer-repo DIR --iformer-commit COMMIT] [--ffnet-repo DIR --ffnet-commit COMMIT] \
        [--poolformer-repo DIR --poolformer-commit COMMIT] [--out tests/fixtures/pth]
"""
import argparse
import collections
import importlib.util
import json
import os
import sys

import torch
from safetensors.torch import load_file


def plain_state_dict():
    base = torch.arange(12, dtype=torch.float32) * 0.5 - 2.0
    sd = collections.OrderedDict()
    sd["f32"] = base.reshape(3, 4)
    sd["f32_t"] = (torch.arange(6, dtype=torch.float32) + 0.25).reshape(2, 3).t()
    shared = torch.arange(10, dtype=torch.float32)
    sd["view_a"] = shared[2:5]
    sd["view_b"] = shared[6:10].reshape(2, 2)
    sd["f16"] = torch.tensor([[1.5, -2.0], [0.125, 65504.0]], dtype=torch.float16)
    sd["bf16"] = torch.tensor([3.0, -0.5, 1e10], dtype=torch.bfloat16)
    sd["f64"] = torch.tensor([1.0 / 3.0, -7.0], dtype=torch.float64)
    sd["i64"] = torch.tensor(7, dtype=torch.int64)
    sd["param"] = torch.nn.Parameter(torch.tensor([[0.5, 1.5, 2.5]]))
    return sd


def values_json(sd):
    out = []
    for name, t in sd.items():
        t = t.detach()
        out.append({
            "name": name,
            "dtype": str(t.dtype).replace("torch.", ""),
            "shape": list(t.shape),
            "values": [float(v) for v in t.to(torch.float64).reshape(-1).tolist()],
        })
    return out


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # timm's register_model looks the module up
    spec.loader.exec_module(module)
    return module


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def fixture_path(name):
    return os.path.join(FIXTURES, name, "model.safetensors")


def fixture_args(name):
    with open(os.path.join(FIXTURES, name, "config.json")) as f:
        return json.load(f)["model_args"]


def load_fixture(model, name):
    """Loads fixture `name`'s weights strictly (batch-norm step counters aside)."""
    missing, unexpected = model.load_state_dict(load_file(fixture_path(name)), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (
        missing,
        unexpected,
    )


def write_sail_poolformer(args, save_authors):
    """A small PoolFormer from sail-sg/poolformer under its original names, and its fixture
    directory under timm's names (see the module docstring)."""
    import timm
    from safetensors.torch import save_file
    from timm.models.metaformer import checkpoint_filter_fn

    ref = load_module(os.path.join(args.poolformer_repo, "models", "poolformer.py"), "poolformer")
    gen = torch.Generator().manual_seed(7)
    layers, dims = [1, 1, 2, 1], [16, 24, 32, 40]
    model = ref.PoolFormer(layers, embed_dims=dims, mlp_ratios=[4] * 4, downsamples=[True] * 4,
                           num_classes=5).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5 if p.dim() >= 2 else 2))
    x = torch.randn(2, 3, 64, 96, generator=gen)
    features = []
    hooks = [model.network[i].register_forward_hook(lambda _m, _i, o: features.append(o))
             for i in (0, 2, 4, 6)]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    name = "poolformer_s12_sail_custom"
    model_args = {"depths": layers, "dims": dims, "num_classes": 5}
    # timm's poolformer_s12 entry point sets depths and dims itself; its kwargs with ours on top.
    from timm.models import metaformer as tmf

    timm_model = tmf.MetaFormer(
        downsample_norm=None, mlp_act=torch.nn.GELU, mlp_bias=True, norm_layers=tmf.GroupNorm1,
        layer_scale_init_values=1e-5, res_scale_init_values=None, use_mlp_head=False, **model_args,
    )
    timm_weights = checkpoint_filter_fn(model.state_dict(), timm_model)
    timm_model.load_state_dict(timm_weights, strict=True)
    # The stage outputs are sail-sg's; the logits timm's: sail-sg's head norms the map (GroupNorm)
    # before the mean, timm's norms the pooled vector, and timm converts the names only.
    with torch.no_grad():
        logits = timm_model.eval()(x)
    meta = {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "command": "python " + " ".join(sys.argv),
        "seed": "7",
        "reference": "https://github.com/sail-sg/poolformer models/poolformer.py (PoolFormer)",
        "commit": args.poolformer_commit,
        "model.safetensors": "the same weights renamed by timm's metaformer checkpoint_filter_fn",
    }
    d = os.path.join(os.path.dirname(args.out.rstrip("/")), name)
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in timm_weights.items()}, os.path.join(d, "model.safetensors"), metadata=meta)
    reference = {"input": x, "logits": logits}
    reference.update({f"features.{i}": f.contiguous() for i, f in enumerate(features)})
    save_file(reference, os.path.join(d, "reference.safetensors"), metadata=meta)
    config = {
        "architecture": "poolformer_s12",
        "num_classes": 5,
        "model_args": model_args,
        "pretrained_cfg": {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.9,
                           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 5},
    }
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_authors(model.state_dict(), f"{name}.pth", name,
                 "https://github.com/sail-sg/poolformer models/poolformer.py", args.poolformer_commit)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--casvit-repo")
    ap.add_argument("--casvit-commit")
    ap.add_argument("--efficientvim-repo")
    ap.add_argument("--efficientvim-commit")
    ap.add_argument("--wavemix-repo")
    ap.add_argument("--wavemix-commit")
    ap.add_argument("--iformer-repo")
    ap.add_argument("--iformer-commit")
    ap.add_argument("--ffnet-repo")
    ap.add_argument("--ffnet-commit")
    ap.add_argument("--poolformer-repo")
    ap.add_argument("--poolformer-commit")
    ap.add_argument("--out", default="tests/fixtures/pth")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    out = lambda name: os.path.join(args.out, name)

    sd = plain_state_dict()
    torch.save(sd, out("plain.pth"))
    torch.save(sd, out("plain_p4.pth"), pickle_protocol=4)
    with open(out("values.json"), "w") as f:
        json.dump(values_json(sd), f, indent=1)
    torch.save(sd, out("legacy.pth"), _use_new_zipfile_serialization=False)
    training = {
        "state_dict": collections.OrderedDict(
            (f"module.{k}", v) for k, v in list(sd.items())[:3]
        ),
        "epoch": 12,
        "args": argparse.Namespace(model="tiny", lr=1e-3, drop_path=0.1, betas=(0.9, 0.999)),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1, 2]}]},
    }
    torch.save(training, out("nested.pth"))
    torch.save(torch.nn.Linear(2, 3), out("whole_model.pth"))

    files = ["plain.pth", "plain_p4.pth", "legacy.pth", "nested.pth", "whole_model.pth"]
    provenance = {
        "torch": torch.__version__,
        "command": "python " + " ".join(sys.argv),
        "writer": "torch.save (protocol 2 unless named)",
    }

    def save_authors(obj, file, fixture, reference, commit):
        """torch.save of fixture `fixture`'s weights as the authors' code holds them, recorded."""
        torch.save(obj, out(file))
        files.append(file)
        provenance[file] = {
            "reference": reference,
            "commit": commit,
            "weights": f"tests/fixtures/{fixture}/model.safetensors",
        }
    if args.casvit_repo:
        rcvit = load_module(
            os.path.join(args.casvit_repo, "classification", "model", "rcvit.py"), "rcvit"
        )
        fixture = os.path.join(os.path.dirname(args.out.rstrip("/")), "rcvit_xs_custom")
        with open(os.path.join(fixture, "config.json")) as f:
            model_args = json.load(f)["model_args"]
        model = rcvit.RCViT(**model_args)
        model.load_state_dict(load_file(os.path.join(fixture, "model.safetensors")), strict=True)
        checkpoint = {
            "model": model.state_dict(),
            "epoch": 299,
            "optimizer": {"state": {}, "param_groups": [{"lr": 6e-3, "weight_decay": 0.05}]},
            "args": argparse.Namespace(model="rcvit_xs", input_size=224, lr=6e-3),
        }
        save_authors(
            checkpoint, "rcvit_xs_custom.pth", "rcvit_xs_custom", "https://github.com/Tianfang-Zhang/CAS-ViT classification/model/rcvit.py", args.casvit_commit
        )
    if args.efficientvim_repo:
        import types

        sys.path.insert(0, os.path.join(args.efficientvim_repo, "classification"))
        fvcore, fvcore_nn = types.ModuleType("fvcore"), types.ModuleType("fvcore.nn")
        fvcore_nn.flop_count = None
        sys.modules.update({"fvcore": fvcore, "fvcore.nn": fvcore_nn})
        from models import EfficientViM as evim

        model = evim.EfficientViM(**fixture_args("EfficientViM_M1_custom"))
        load_fixture(model, "EfficientViM_M1_custom")
        checkpoint = {
            "model": model.state_dict(),
            "model_ema": model.state_dict(),
            "epoch": 299,
            "max_accuracy": 72.9,
            "optimizer": {"state": {}, "param_groups": [{"lr": 2e-3}]},
            "config": argparse.Namespace(MODEL=argparse.Namespace(NAME="EfficientViM_M1")),
        }
        save_authors(
            checkpoint, "EfficientViM_M1_custom.pth", "EfficientViM_M1_custom", "https://github.com/mlvlab/EfficientViM classification/models/EfficientViM.py", args.efficientvim_commit
        )
    if args.wavemix_repo:
        import types

        import numpy

        stub = types.ModuleType("numpy.lib.function_base")
        stub.hamming = numpy.hamming
        sys.modules["numpy.lib.function_base"] = stub
        sys.path.insert(0, args.wavemix_repo)
        from wavemix.classification import WaveMix

        model = WaveMix(**fixture_args("wavemix_custom"))
        weights = {
            k.replace("head.2.", "pool.2."): v
            for k, v in load_file(fixture_path("wavemix_custom")).items()
        }
        model.load_state_dict(weights, strict=False)
        missing = set(model.state_dict()) - set(weights)
        assert all(k.endswith("num_batches_tracked") for k in missing), missing
        save_authors(
            model.state_dict(), "wavemix_custom.pth", "wavemix_custom", "https://github.com/pranavphoenix/WaveMix wavemix/classification.py", args.wavemix_commit
        )
    if args.iformer_repo:
        import types

        import timm.layers

        helpers = types.ModuleType("timm.models.layers.helpers")
        helpers.to_2tuple = timm.layers.to_2tuple
        sys.modules["timm.models.layers.helpers"] = helpers
        ref = load_module(
            os.path.join(args.iformer_repo, "models", "inception_transformer.py"),
            "inception_transformer",
        )
        model = ref.InceptionTransformer(**fixture_args("iformer_small_custom"))
        load_fixture(model, "iformer_small_custom")
        save_authors(
            model.state_dict(), "iformer_small_custom.pth", "iformer_small_custom", "https://github.com/sail-sg/iFormer models/inception_transformer.py", args.iformer_commit
        )
    if args.ffnet_repo:
        import timm.models._builder as builder

        if not hasattr(builder, "_update_default_kwargs"):
            builder._update_default_kwargs = builder._update_default_model_kwargs
        ref = load_module(os.path.join(args.ffnet_repo, "models", "ffnet.py"), "ffnet")
        model = ref.FFNet(**fixture_args("ffnet_3_custom"))
        load_fixture(model, "ffnet_3_custom")
        checkpoint = {
            "epoch": 299,
            "arch": "ffnet_3",
            "state_dict": model.state_dict(),
            "state_dict_ema": model.state_dict(),
            "optimizer": {"state": {}, "param_groups": [{"lr": 4e-3}]},
            "version": 2,
            "args": argparse.Namespace(model="ffnet_3", input_size=[3, 256, 256]),
        }
        save_authors(
            checkpoint, "ffnet_3_custom.pth.tar", "ffnet_3_custom", "https://github.com/ysj9909/FFNet models/ffnet.py", args.ffnet_commit
        )
    if args.poolformer_repo:
        write_sail_poolformer(args, save_authors)
    provenance["files"] = files
    with open(out("PROVENANCE.json"), "w") as f:
        json.dump(provenance, f, indent=1)


if __name__ == "__main__":
    main()
