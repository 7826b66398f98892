#!/usr/bin/env python3
"""Writes scikit-learn's handwritten digits (UCI ML digits: 1,797 real 8x8 scans of digits
written by 43 people) as an image-folder dataset for `tokenmix train`:

    OUT/train/<digit>/<index>.png   (80%, stratified)
    OUT/val/<digit>/<index>.png     (20%)

Each 8x8 image (ink levels 0-16) is scaled to 0-255 and upsampled to --size pixels (bilinear),
as RGB so the zoo's 3-channel models take it. Needs only scikit-learn and Pillow; the data ship
inside scikit-learn, so nothing is downloaded.

    python3 scripts/prepare_digits.py data/digits
"""
import argparse
import pathlib

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=pathlib.Path, help="dataset root to create")
    p.add_argument("--size", type=int, default=32, help="side of the written images (default 32)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    idx = np.arange(len(images))
    train_idx, val_idx = train_test_split(
        idx, test_size=args.val_fraction, random_state=args.seed, stratify=digits.target
    )
    for split, ids in (("train", train_idx), ("val", val_idx)):
        for i in ids:
            d = args.out / split / str(digits.target[i])
            d.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(images[i], mode="L").resize((args.size, args.size), Image.BILINEAR)
            img.convert("RGB").save(d / f"{i:04d}.png")
    print(f"wrote {len(train_idx)} training and {len(val_idx)} validation images to {args.out}")


if __name__ == "__main__":
    main()
