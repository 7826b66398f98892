#!/usr/bin/env python3
"""Writes tests/fixtures/feature_info.json: timm's `feature_info` of every zoo model timm has, and
tests/fixtures/{caformer_s18,mixer_s16_224}/intermediates.safetensors: timm's
`forward_intermediates` of two parity fixtures (written by make_fixtures.py), for
tests/backbone.rs.

The JSON maps each timm model name to its `feature_info` list (`num_chs`, `reduction`,
`module`), as `timm.create_model(name)` builds it (weights are never downloaded: the models are
built on the `meta` device), and records the timm and torch versions and this command.

The intermediates files hold (with the fixture's own provenance, these versions and this command
in their `__metadata__`), for the fixture's `input` (from its reference.safetensors):
* caformer_s18: `indices=[0, 2]` (`take.0`, `take.2`) and `indices=2` (`last2.2`, `last2.3`), NCHW;
* mixer_s16_224: every block with `norm=False` (`raw.{i}`) and with `norm=True` (`norm.{i}`), NCHW.

Usage (venv outside the repo with torch, timm, safetensors):
    python scripts/make_feature_info.py [--out tests/fixtures]
"""
import argparse
import json
import os
import shlex
import sys

import torch
import timm
import safetensors
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# Every model of tokenmix's zoo that timm has (the MetaFormer variants, MambaOut, the MLP-Mixer
# family). IdentityFormer, RandFormer, MambaFormer, GFNet, MS-MLP, MambaMixer, RaftMLP and
# AFFNet are not timm models; tests/backbone.rs checks them against their own maps only.
TIMM_MODELS = [
    "poolformer_s12", "poolformer_s24", "poolformer_s36", "poolformer_m36", "poolformer_m48",
    "poolformerv2_s12", "poolformerv2_s24", "poolformerv2_s36", "poolformerv2_m36", "poolformerv2_m48",
    "convformer_s18", "convformer_s36", "convformer_m36", "convformer_b36",
    "caformer_s18", "caformer_s36", "caformer_m36", "caformer_b36",
    "mambaout_femto", "mambaout_kobe", "mambaout_tiny", "mambaout_small", "mambaout_base",
    "mixer_s32_224", "mixer_s16_224", "mixer_b32_224", "mixer_b16_224", "mixer_l32_224", "mixer_l16_224",
    "gmixer_12_224", "gmixer_24_224", "resmlp_12_224", "resmlp_24_224", "resmlp_36_224",
    "gmlp_ti16_224", "gmlp_s16_224", "gmlp_b16_224",
]


def feature_info(name):
    model = timm.create_model(name, pretrained=False, device="meta")
    return [
        {"num_chs": f["num_chs"], "reduction": f["reduction"], "module": f["module"]}
        for f in model.feature_info
    ]


def fixture_model(fixtures, case):
    """The timm model of a make_fixtures.py fixture, with its weights, and its input."""
    sys.path.insert(0, os.path.dirname(__file__))
    import make_fixtures as mf

    d = os.path.join(fixtures, case)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    args = {k: v for k, v in cfg["model_args"].items() if k != "global_pool"}
    arch = cfg["architecture"]
    model = mf.timm_family(arch)[2](**{**mf.timm_kwargs(arch), **args}).eval()
    model.load_state_dict(load_file(os.path.join(d, "model.safetensors")))
    x = load_file(os.path.join(d, "reference.safetensors"))["input"]
    return model, x, d


def save_intermediates(d, tensors, what):
    """`intermediates.safetensors` of fixture `d`, its `__metadata__` naming what produced it."""
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        fixture = f.metadata() or {}
    meta = {
        "generator": "scripts/make_feature_info.py (tokenmix)",
        "command": "python scripts/make_feature_info.py " + shlex.join(sys.argv[1:]),
        "fixture": os.path.basename(os.path.normpath(d)),
        "fixture_command": fixture.get("command", "unknown"),
        "reference": f"timm {timm.__version__} {what}, on the fixture's model.safetensors and reference input",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "safetensors": safetensors.__version__,
        "file": "intermediates.safetensors",
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "intermediates.safetensors"),
              metadata=meta)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    args = ap.parse_args()

    info = {
        "provenance": {
            "timm": timm.__version__,
            "torch": torch.__version__,
            "command": "python scripts/make_feature_info.py",
            "what": "timm.create_model(name, pretrained=False, device='meta').feature_info",
        },
        "models": {name: feature_info(name) for name in TIMM_MODELS},
    }
    with open(os.path.join(args.out, "feature_info.json"), "w") as f:
        # One line per model, so that a diff shows which models changed.
        f.write('{\n "provenance": %s,\n "models": {\n' % json.dumps(info["provenance"]))
        lines = [f'  "{name}": {json.dumps(stages)}' for name, stages in info["models"].items()]
        f.write(",\n".join(lines) + "\n }\n}\n")

    with torch.no_grad():
        model, x, d = fixture_model(args.out, "caformer_s18")
        take = model.forward_intermediates(x, indices=[2, 0], intermediates_only=True)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        tensors = {"take.0": take[0], "take.2": take[1], "last2.2": last2[0], "last2.3": last2[1]}
        save_intermediates(d, tensors, "MetaFormer.forward_intermediates(indices=[2, 0] and 2)")

        model, x, d = fixture_model(args.out, "mixer_s16_224")
        raw = model.forward_intermediates(x, intermediates_only=True)
        normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
        tensors = {f"raw.{i}": t for i, t in enumerate(raw)}
        tensors.update({f"norm.{i}": t for i, t in enumerate(normed)})
        save_intermediates(d, tensors, "MlpMixer.forward_intermediates(norm=False and norm=True)")
    print("feature info and intermediates written to", os.path.abspath(args.out))


if __name__ == "__main__":
    main()
