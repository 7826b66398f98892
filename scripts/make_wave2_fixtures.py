#!/usr/bin/env python3
"""Writes mixer-level parity fixtures under tests/fixtures/mixers/ from the authors' code.

One fixture per mixer whose reference is a standalone module: `<kind>.safetensors` holds the
module's state dict under its own names (prefix-free, as a backbone's `token_mixer` /
`attn` sub-module stores it, `num_batches_tracked` left out), the input `input` (batch 2,
non-square) and the reference output `output`; its `__metadata__` records the reference
repository and commit, the versions of torch and the command. Every parameter and batch-norm
statistic is drawn at random (weights ~ N(0, 1/fan_in), gains, biases and running means ~
N(0, 0.5) around their defaults, running variances ~ U(0.5, 1.5)); the module runs in eval mode.

References (checkouts given on the command line, never committed):
  * additive_token_mixer: Tianfang-Zhang/CAS-ViT, classification/model/rcvit.py,
    `AdditiveTokenMixer` (needs timm and einops).

Usage (venv outside the repo with torch, timm, einops, safetensors):
    python scripts/make_mixer_fixtures.py --casvit-repo /path/to/Tianfang-Zhang/CAS-ViT \
        --casvit-commit COMMIT [--out tests/fixtures/mixers]
"""
import argparse
import importlib.util
import math
import os
import sys

import torch
from safetensors.torch import save_file

INPUT_SHAPE = (2, 24, 7, 10)  # batch 2, 24 channels, non-square grid


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


def write(out, kind, module, metadata, gen):
    randomize_(module, gen)
    module.eval()
    x = torch.randn(INPUT_SHAPE, generator=gen)
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--casvit-repo", required=True)
    ap.add_argument("--casvit-commit", required=True)
    ap.add_argument("--out", default="tests/fixtures/mixers")
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
    write(
        args.out,
        "additive_token_mixer",
        rcvit.AdditiveTokenMixer(dim=INPUT_SHAPE[1]),
        {
            **common,
            "reference": "https://github.com/Tianfang-Zhang/CAS-ViT "
            "classification/model/rcvit.py AdditiveTokenMixer",
            "commit": args.casvit_commit,
        },
        gen,
    )


if __name__ == "__main__":
    main()
