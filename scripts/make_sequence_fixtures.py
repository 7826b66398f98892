#!/usr/bin/env python3
"""Writes the parity fixtures of tokenmix's sequence models from the reference code.

Each fixture is a model directory written by the reference's own `save_pretrained` (its
`config.json` and `model.safetensors`, exactly the hub layout), plus `reference.safetensors`
with `input` (a series `(B, context_length, channels)`, batch 2) and `output` (the reference's
`prediction_outputs`). Every parameter and norm statistic is drawn at random (the draws of
make_wave2_fixtures.py's `randomize_`: weights ~ N(0, 1/fan_in), biases ~ 0.5 N(0, 1), other
vectors 0.5 + U(0, 1), running means ~ 0.5 N(0, 1), running variances 0.5 + U(0, 1)); inputs
mix channels of different levels and spreads. Lengths, patch counts and channel counts are odd
where the architecture allows. The provenance (script, package versions, seed) is written
into every file's metadata and into tests/fixtures/sequence/PROVENANCE.json.

References:
  * PatchTSMixer: Hugging Face transformers, models/patchtsmixer/modeling_patchtsmixer.py
    (`PatchTSMixerForPrediction`), the installed `transformers` package.
  * Tiny Time Mixers: IBM's granite-tsfm (PyPI `granite-tsfm`),
    tsfm_public/models/tinytimemixer/modeling_tinytimemixer.py (`TinyTimeMixerForPrediction`).

Usage (a venv outside the repo with torch, transformers, granite-tsfm, safetensors):
    python scripts/make_sequence_fixtures.py [--out tests/fixtures/sequence]
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_wave2_fixtures import randomize_  # noqa: E402

SEED = 20261202


def series(gen, batch, length, channels):
    """Random walks plus noise, each channel at its own level and spread."""
    level = 3.0 * torch.randn(1, 1, channels, generator=gen)
    spread = 0.2 + 4.0 * torch.rand(1, 1, channels, generator=gen)
    walk = torch.randn(batch, length, channels, generator=gen).cumsum(1) * 0.3
    noise = torch.randn(batch, length, channels, generator=gen)
    return level + spread * (walk + noise)


def write(out, name, model, context, channels, metadata, gen):
    randomize_(model, gen)
    model.eval()
    x = series(gen, 2, context, channels)
    with torch.no_grad():
        y = model(past_values=x, return_loss=False).prediction_outputs
    path = os.path.join(out, name)
    model.save_pretrained(path, safe_serialization=True)
    save_file(
        {"input": x.contiguous(), "output": y.contiguous()},
        os.path.join(path, "reference.safetensors"),
        metadata=metadata,
    )
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {params} parameters, output {tuple(y.shape)}")


def patchtsmixer(out, metadata, gen):
    from transformers import PatchTSMixerConfig, PatchTSMixerForPrediction

    cases = {
        # Overlapping patches (37 steps, patches of 6 every 4: 8 patches from step 3), std
        # scaling, LayerNorm, gated attention, 3 channels.
        "patchtsmixer_common": dict(
            context_length=37, patch_length=6, patch_stride=4, num_input_channels=3,
            d_model=10, num_layers=2, expansion_factor=3, prediction_length=5,
            mode="common_channel", gated_attn=True, norm_mlp="LayerNorm", scaling="std",
        ),
        # Every option: channel mixing, BatchNorm, two-head self-attention, sin-cos positions,
        # mean scaling, two of five channels predicted (given unsorted).
        "patchtsmixer_mix": dict(
            context_length=41, patch_length=8, patch_stride=8, num_input_channels=5,
            d_model=12, num_layers=3, expansion_factor=2, prediction_length=7,
            mode="mix_channel", gated_attn=True, norm_mlp="BatchNorm", self_attn=True,
            self_attn_heads=2, use_positional_encoding=True, positional_encoding_type="sincos",
            scaling="mean", prediction_channel_indices=[3, 0],
        ),
        # No gates, no scaling, random positions.
        "patchtsmixer_plain": dict(
            context_length=30, patch_length=5, patch_stride=3, num_input_channels=1,
            d_model=9, num_layers=1, expansion_factor=2, prediction_length=4,
            gated_attn=False, scaling=None, use_positional_encoding=True,
            positional_encoding_type="random",
        ),
    }
    for name, kwargs in cases.items():
        config = PatchTSMixerConfig(**kwargs)
        write(out, name, PatchTSMixerForPrediction(config), kwargs["context_length"],
              kwargs["num_input_channels"], metadata, gen)


def ttm(out, metadata, gen):
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerForPrediction

    cases = {
        # The r1/r2 hub architecture at small sizes: 3 adaptive-patching levels (sub-patch
        # widths 6, 12, 24), 2 layers each, a narrower 2-layer decoder; 45 steps in patches of
        # 6 (7 patches from step 3), 3 channels, std scaling.
        "ttm_r1_small": dict(
            context_length=45, patch_length=6, patch_stride=6, num_input_channels=3,
            d_model=24, num_layers=2, adaptive_patching_levels=3, decoder_d_model=16,
            decoder_num_layers=2, prediction_length=7, scaling="std",
        ),
        # Channel mixing in encoder and decoder, BatchNorm, mean scaling, two of five channels
        # predicted (given unsorted), the horizon filtered to 4 of 6 steps, and a level whose
        # width would fall to 4 (so it stays unsplit).
        "ttm_mix": dict(
            context_length=33, patch_length=4, patch_stride=4, num_input_channels=5,
            d_model=8, num_layers=1, adaptive_patching_levels=2, decoder_d_model=12,
            decoder_num_layers=2, decoder_mode="mix_channel", mode="mix_channel",
            norm_mlp="BatchNorm", scaling="mean", prediction_length=6,
            prediction_channel_indices=[2, 0], prediction_filter_length=4,
        ),
        # No decoder, no gates, no scaling, a single patch (so no patch mixer).
        "ttm_single_patch": dict(
            context_length=20, patch_length=16, patch_stride=16, num_input_channels=2,
            d_model=10, num_layers=2, adaptive_patching_levels=1, use_decoder=False,
            gated_attn=False, scaling=None, prediction_length=3,
        ),
    }
    for name, kwargs in cases.items():
        config = TinyTimeMixerConfig(**kwargs)
        write(out, name, TinyTimeMixerForPrediction(config), kwargs["context_length"],
              kwargs["num_input_channels"], metadata, gen)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "fixtures", "sequence"))
    args = ap.parse_args()
    import importlib.metadata

    import transformers

    metadata = {
        "script": "scripts/make_sequence_fixtures.py",
        "seed": str(SEED),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "granite-tsfm": importlib.metadata.version("granite-tsfm"),
    }
    gen = torch.Generator().manual_seed(SEED)
    os.makedirs(args.out, exist_ok=True)
    patchtsmixer(args.out, metadata, gen)
    ttm(args.out, metadata, gen)
    with open(os.path.join(args.out, "PROVENANCE.json"), "w") as f:
        json.dump(metadata, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
