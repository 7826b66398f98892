#!/usr/bin/env python3
"""Checks `tokenmix run` against timm on freshly drawn configurations (not in the repo).

For each of N trials: pick a timm MetaFormer family, draw depths, dims, in_chans, num_classes,
layer/res-scale switches, batch size and input size at random, redraw every parameter, save the
model with timm's `save_for_hf`, run `tokenmix run` on a random batch and compare its logits with
timm's (relative L2 error, must be <= 2e-4).

Usage (venv outside the repo with torch, timm, safetensors; tokenmix built in release):
    python scripts/check_timm_run.py [--trials 20] [--seed 1] [--tokenmix target/release/tokenmix]
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from make_fixtures import randomize_, timm_case  # noqa: E402

ARCHS = ["poolformer_s12", "poolformerv2_s24", "convformer_s18", "caformer_s18", "caformer_m36",
         "mambaout_femto", "mambaout_tiny", "mixer_b16_224", "gmixer_12_224", "resmlp_24_224", "gmlp_ti16_224"]


def draw_mixer_args(rng, arch):
    patch = rng.choice([4, 8, 16])
    args = dict(
        img_size=[patch * rng.randint(1, 6), patch * rng.randint(1, 6)],
        patch_size=patch,
        embed_dim=rng.choice([16, 24, 32]),
        num_blocks=rng.randint(1, 3),
        in_chans=rng.choice([1, 3, 4]),
        num_classes=rng.choice([0, 3, 17]),
    )
    if arch.startswith("mixer") and rng.random() < 0.5:
        args["mlp_ratio"] = [rng.choice([0.5, 1.0]), rng.choice([2.0, 4.0])]
    if rng.random() < 0.3:
        args["stem_norm"] = True
    return args


def draw_args(rng, arch):
    if arch.split("_")[0] in ("mixer", "gmixer", "resmlp", "gmlp"):
        return draw_mixer_args(rng, arch)
    stages = rng.choice([2, 3, 4]) if not arch.startswith("caformer") else 4
    step = 32 if arch.startswith("caformer") else 8
    dims = sorted(rng.randrange(1, 4) * step for _ in range(stages))
    args = dict(
        depths=[rng.randint(1, 2) for _ in range(stages)],
        dims=dims,
        in_chans=rng.choice([1, 3, 4]),
        num_classes=rng.choice([0, 3, 17]),
    )
    if arch.startswith("mambaout"):
        if rng.random() < 0.5:
            args["ls_init_value"] = 1e-6
        args["conv_ratio"] = rng.choice([0.5, 1.0])
        args["kernel_size"] = rng.choice([3, 7])
        args["downsample"] = rng.choice(["conv", "conv_nf"])
        return args
    if rng.random() < 0.5:
        args["layer_scale_init_values"] = 1e-5
    if rng.random() < 0.3:
        args["res_scale_init_values"] = [1.0] * stages
    if arch.startswith("caformer") and rng.random() < 0.5:
        args["use_mlp_head"] = False
    return args


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tokenmix", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "tokenmix"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    worst = 0.0
    failures = 0
    for trial in range(args.trials):
        arch = rng.choice(ARCHS)
        model_args = draw_args(rng, arch)
        batch = rng.randint(1, 3)
        h, w = model_args.get("img_size") or (rng.randrange(33, 129), rng.randrange(33, 129))
        with tempfile.TemporaryDirectory() as tmp:
            timm_case(tmp, "model", arch, model_args, gen, input_shape=(batch, model_args["in_chans"], h, w))
            d = os.path.join(tmp, "model")
            ref = load_file(os.path.join(d, "reference.safetensors"))
            out = os.path.join(tmp, "logits.safetensors")
            proc = subprocess.run([args.tokenmix, "run", "--model-dir", d, "--input",
                                   os.path.join(d, "reference.safetensors"), "--output", out],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"[{trial}] {arch} {model_args} {batch}x{h}x{w}: tokenmix failed: {proc.stderr.strip()}")
                failures += 1
                continue
            got = load_file(out)["logits"]
            want = ref["logits"]
            err = ((got - want).norm() / want.norm().clamp_min(1e-12)).item()
            worst = max(worst, err)
            status = "ok" if err <= 2e-4 else "FAIL"
            failures += status != "ok"
            print(f"[{trial}] {status} {arch} {model_args} input {batch}x{model_args['in_chans']}x{h}x{w}: rel L2 {err:.2e}")
    print(f"{args.trials} trials, {failures} failures, worst relative L2 {worst:.2e}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
