#!/usr/bin/env python3
"""Writes tokenmix's PoNet parity fixtures from the authors' reference code.

References (github lxchtan/PoNet):
  * text model: tag v1.0 = commit 81390375e719bcbaff07a87e030439debf1622e2,
    models/modeling_ponet.py (`PoNetForSequenceClassification`, BERT config with
    model_type "ponet" and `clsgsepg`);
  * generic mixer: commit cc9a29a3c7732e8c5cdda7eae32e556a2fa71b1d,
    examples/LRA/code/attention.py (`Attention` with attn_type "ponet") and
    examples/LRA/code/attention_ponet.py (`PoNetAttention`, fixed `segment_num` chunks).

The reference files are read from a checkout given by --v1 and --lra and imported as they are,
with two run-time adjustments for transformers 4.29 (the v1.0 code pins 4.7): the three
`tokenizer_class=` arguments of its doc-sample decorators are dropped (that keyword no longer
exists), and `torch_scatter.scatter_max`, its only extra dependency, is provided by a few lines
over `torch.Tensor.scatter_reduce("amax")` (same values; torch_scatter has no wheel here).

Fixtures, under tests/fixtures/sequence/:
  * ponet_cls, ponet_plain: directories written by the reference model's `save_pretrained`
    (config.json, model.safetensors) plus reference.safetensors with `input_ids` (u32), and
    `attention_mask` (u32) of a batch of 2 and length 23 with [CLS]=101 / [SEP]=102 placed to
    give several segments (adjacent specials included), one row padded, and the reference's
    `logits`. ponet_cls: clsgsepg on, GELU; ponet_plain: clsgsepg off, ReLU, other sizes.
  * ponet_pretrain: the hub's layout of the pre-trained model (chtan/ponet-base-uncased:
    `PoNetForPreTraining`, its config.json and pytorch_model.bin, written by save_pretrained
    without safetensors; the tied MLM decoder stored twice as torch.save stores shared tensors),
    a 200-token BERT vocab.txt with the tokenizer files BertTokenizerFast.save_pretrained
    writes, tokenized.json (the fast and slow BERT tokenizers' ids of TEXTS, checked equal), and
    reference.safetensors with the MLM `prediction_logits` and the sentence-structure
    `seq_relationship_logits` of a batch like the classifiers' (own generator, SEED + 1).
  * ponet_mixer: the LRA `Attention` module's weights (model.safetensors, its names `W_q.weight`,
    ...), config.json (tokenmix's mixer JSON) and reference.safetensors with `x` (2, 23, 24),
    `mask` (one row padded), `y_masked` (output with the mask) and `y` (without one).
Every parameter is drawn at random as make_sequence_fixtures.py's `randomize_` draws them
(weights ~ N(0, 1/fan_in), biases ~ 0.5 N(0, 1), other vectors 0.5 + U(0, 1)). The provenance
(script, reference commits, versions, seed) is in every safetensors file's metadata and in
tests/fixtures/sequence/ponet_PROVENANCE.json.

Usage (a venv with torch >= 1.12, transformers 4.29.1, safetensors), from the repo root:
    git --git-dir=<PoNet mirror> archive v1.0 models | tar -x -C /tmp/ponet-v1
    git --git-dir=<PoNet mirror> archive cc9a29a examples/LRA/code | tar -x -C /tmp/ponet-lra
    python scripts/make_ponet_fixtures.py --v1 /tmp/ponet-v1 --lra /tmp/ponet-lra [--only NAMES]
"""
import argparse
import json
import math
import os
import sys
import types

import torch
from safetensors.torch import save_file

SEED = 20261203
V1_COMMIT = "81390375e719bcbaff07a87e030439debf1622e2"
LRA_COMMIT = "cc9a29a3c7732e8c5cdda7eae32e556a2fa71b1d"
CLS, SEP = 101, 102


def randomize_(module, gen):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))


def install_scatter_shim():
    def scatter_max(src, index, dim=1):
        rows = list(src.shape)
        rows[dim] = int(index.max()) + 1
        full = index.unsqueeze(-1).expand_as(src)
        out = torch.zeros(rows, dtype=src.dtype).scatter_reduce(
            dim, full, src, reduce="amax", include_self=False)
        return out, None

    shim = types.ModuleType("torch_scatter")
    shim.scatter_max = scatter_max
    sys.modules["torch_scatter"] = shim


def load_module(name, path, drop=()):
    text = open(path).read()
    for line in drop:
        text = text.replace(line, "")
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module
    exec(compile(text, path, "exec"), module.__dict__)
    return module


def token_ids(gen, vocab):
    """Two rows of 23 ids: sentences between specials, adjacent specials, one padded row."""
    def words(n):
        w = torch.randint(1, vocab, (n,), generator=gen)
        w[(w == CLS) | (w == SEP)] = 7
        return w.tolist()

    row0 = [CLS] + words(4) + [SEP] + words(6) + [SEP] + words(2) + [SEP]
    mask0 = [1] * len(row0) + [0] * (23 - len(row0))
    row0 = row0 + [0] * (23 - len(row0))
    row1 = [CLS] + words(5) + [SEP, SEP] + words(3) + [SEP] + words(1) + [SEP] + words(8) + [SEP]
    assert len(row1) == 23, len(row1)
    ids = torch.tensor([row0, row1])
    mask = torch.tensor([mask0, [1] * 23])
    return ids, mask


def text_fixture(mp, out, name, kwargs, clsgsepg, metadata, gen):
    from transformers.models.bert.configuration_bert import BertConfig

    config = BertConfig(**kwargs)
    config.clsgsepg = clsgsepg
    model = mp.PoNetForSequenceClassification(config)
    randomize_(model, gen)
    model.eval()
    ids, mask = token_ids(gen, kwargs["vocab_size"])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    path = os.path.join(out, name)
    model.save_pretrained(path, safe_serialization=True)
    save_file(
        {
            "input_ids": ids.to(torch.int32).contiguous(),
            "attention_mask": mask.to(torch.int32).contiguous(),
            "logits": logits.contiguous(),
        },
        os.path.join(path, "reference.safetensors"),
        metadata=metadata,
    )
    print(f"{name}: logits {tuple(logits.shape)}, segments {mp.get_segment_index(ids).tolist()}")


def mixer_fixture(lra_dir, out, metadata, gen):
    sys.path.insert(0, lra_dir)
    attention = load_module("attention", os.path.join(lra_dir, "attention.py"))
    dim, heads, segment_num = 24, 3, 4
    config = {
        "transformer_dim": dim, "head_dim": dim // heads, "num_head": heads,
        "attn_type": "ponet", "segment_num": segment_num,
        "attention_grad_checkpointing": False, "attention_dropout": 0.0,
    }
    module = attention.Attention(config)
    randomize_(module, gen)
    module.eval()
    x = torch.randn(2, 23, dim, generator=gen)
    mask = torch.ones(2, 23)
    mask[1, 17:] = 0
    with torch.no_grad():
        y_masked = module(x.clone(), mask)
        # The reference's unmasked branch (`attention_mask is None`) of PoNetAttention.
        q = module.split_heads(module.W_q(x))
        k = module.split_heads(module.W_k(x))
        o = module.split_heads(module.W_v(x))
        y = module.ff(module.attn(x, q, k, o, module.W_local(x), module.W_segment(x), None))
    path = os.path.join(out, "ponet_mixer")
    os.makedirs(path, exist_ok=True)
    weights = {k: v.contiguous() for k, v in module.state_dict().items()}
    save_file(weights, os.path.join(path, "model.safetensors"), metadata=metadata)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"type": "ponet", "head_dim": dim // heads, "segment_num": segment_num}, f,
                  indent=2)
        f.write("\n")
    save_file(
        {"x": x, "mask": mask, "y_masked": y_masked.contiguous(), "y": y.contiguous()},
        os.path.join(path, "reference.safetensors"),
        metadata=metadata,
    )
    print(f"ponet_mixer: {sorted(weights)}")


WORDS = [
    "the", "a", "cat", "sat", "on", "mat", "dog", "is", "cute", "hello", "my", "play", "##ing",
    "##ed", "##s", "un", "##bel", "##ie", "##va", "##ble", "caf", "##e", "na", "##ive", "free",
    "money", "now", "click", "here", "meeting", "at", "noon", "re", ":", "!", ",", ".", "?", "'",
    "-", "$", "1", "##0", "2", "中", "文", "win", "##ner", "offer",
]


def write_vocab(path, size):
    """A BERT-style vocab.txt of `size` lines: [PAD], [unused1-99], [UNK], [CLS], [SEP],
    [MASK], then WORDS and filler tokens."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)]
    tokens += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tokens += [f"tok{i}" for i in range(size - len(tokens))]
    assert tokens.index("[CLS]") == CLS and tokens.index("[SEP]") == SEP
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(tokens) + "\n")
    return tokens


TEXTS = [
    "Hello, my dog is cute!",
    "The cat sat on the mat.",
    "Playing, played; plays?",
    "Unbelievable CAFÉ naïve 中文 xyzzy",
    "  FREE money\tnow!!  click here\n$100 winner's offer - re: meeting at noon",
    "",
]


def pretrain_fixture(mp, out, metadata, gen):
    """The hub's layout of a pre-trained PoNet: PoNetForPreTraining's config.json and
    pytorch_model.bin (save_pretrained without safetensors) beside a BERT tokenizer's files,
    with the MLM and sentence-structure logits and the tokenizer's ids of TEXTS."""
    from transformers import BertTokenizer, BertTokenizerFast
    from transformers.models.bert.configuration_bert import BertConfig

    path = os.path.join(out, "ponet_pretrain")
    os.makedirs(path, exist_ok=True)
    tokens = write_vocab(path, 200)
    config = BertConfig(vocab_size=len(tokens), hidden_size=24, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=36,
                        max_position_embeddings=40, type_vocab_size=2)
    config.clsgsepg = True
    model = mp.PoNetForPreTraining(config)
    randomize_(model, gen)
    model.eval()
    ids, mask = token_ids(gen, len(tokens))
    with torch.no_grad():
        o = model(input_ids=ids, attention_mask=mask)
    model.save_pretrained(path, safe_serialization=False)
    fast = BertTokenizerFast(vocab_file=os.path.join(path, "vocab.txt"))
    fast.save_pretrained(path)
    slow = BertTokenizer(vocab_file=os.path.join(path, "vocab.txt"))
    encoded = []
    for text in TEXTS:
        a = fast(text, add_special_tokens=False)["input_ids"]
        b = slow(text, add_special_tokens=False)["input_ids"]
        assert a == b, (text, a, b)
        encoded.append({"text": text, "ids": a,
                        "with_special_tokens": fast(text)["input_ids"]})
    with open(os.path.join(path, "tokenized.json"), "w") as f:
        json.dump(encoded, f, indent=1, ensure_ascii=False)
        f.write("\n")
    save_file(
        {
            "input_ids": ids.to(torch.int32).contiguous(),
            "attention_mask": mask.to(torch.int32).contiguous(),
            "prediction_logits": o.prediction_logits.contiguous(),
            "seq_relationship_logits": o.seq_relationship_logits.contiguous(),
        },
        os.path.join(path, "reference.safetensors"),
        metadata=metadata,
    )
    print(f"ponet_pretrain: {sorted(os.listdir(path))}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--v1", required=True, help="checkout of PoNet tag v1.0")
    ap.add_argument("--lra", required=True, help="checkout of PoNet examples/LRA/code")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "fixtures", "sequence"))
    ap.add_argument("--only", default="", help="comma-separated fixtures to write (default all)")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    wanted = lambda name: not only or name in only
    import transformers

    metadata = {
        "script": "scripts/make_ponet_fixtures.py",
        "reference": "github lxchtan/PoNet",
        "text_model": f"models/modeling_ponet.py @ v1.0 {V1_COMMIT}",
        "mixer": f"examples/LRA/code/attention.py, attention_ponet.py @ {LRA_COMMIT}",
        "seed": str(SEED),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    gen = torch.Generator().manual_seed(SEED)
    os.makedirs(args.out, exist_ok=True)
    install_scatter_shim()
    mp = load_module(
        "modeling_ponet_v1", os.path.join(args.v1, "models", "modeling_ponet.py"),
        drop=("tokenizer_class=_TOKENIZER_FOR_DOC,",),
    )
    base = dict(vocab_size=200, max_position_embeddings=32, type_vocab_size=2)
    if wanted("ponet_cls"):
        text_fixture(mp, args.out, "ponet_cls", dict(
            base, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
            intermediate_size=40, num_labels=3), True, metadata, gen)
    if wanted("ponet_plain"):
        text_fixture(mp, args.out, "ponet_plain", dict(
            base, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=28, num_labels=2, hidden_act="relu", layer_norm_eps=1e-5),
            False, metadata, gen)
    if wanted("ponet_mixer"):
        mixer_fixture(args.lra, args.out, metadata, gen)
    provenance = os.path.join(args.out, "ponet_PROVENANCE.json")
    record = json.load(open(provenance)) if only and os.path.exists(provenance) else {}
    if not only:
        record.update(metadata)
    if wanted("ponet_pretrain"):
        # Its own generator, so that it does not depend on which other fixtures are written.
        import tokenizers

        meta = dict(metadata, seed=str(SEED + 1), tokenizers=tokenizers.__version__)
        pretrain_fixture(mp, args.out, meta, torch.Generator().manual_seed(SEED + 1))
        record["ponet_pretrain"] = meta
    with open(provenance, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")

if __name__ == "__main__":
    main()
