#!/usr/bin/env python3
"""Writes the parity fixtures of tokenmix's JDPatchTST and TSM2 forecasters.

References:
  * JDPatchTST: the JustDense repository (Park et al., arXiv 2508.09153),
    github.com/Thrillcrazyer/JustDense at commit 28285e34e0d9f92b6935e2bbe6362737ea8a010b,
    `models/JDPatchTST.py` (`Model`), built with Time-Series-Library-style arguments and run in
    eval mode. Importing the repository pulls in `mamba_ssm` (through
    `layers/matrix_mixers/quasiseparable.py`) and `reformer_pytorch` (through
    `layers/SelfAttention_Family.py`), which JDPatchTST never calls: this script installs empty
    stand-in modules under those names in `sys.modules` before the import.
  * TSM2 (MambaMixer paper, arXiv 2403.19888): no code was released, so `TSM2` below is a
    plain-PyTorch module written from the same equations as tokenmix's reading
    (crates/models/src/sequence/tsm2.rs). Its parity shows only that the Rust code computes
    that reading, not that it matches the authors' model.

Each fixture directory under tests/fixtures/sequence/<name>/ holds `config.json` (JDPatchTST:
Time-Series-Library argument names with `model_type` "jd_patchtst"; TSM2: tokenmix's keys with
`model_type` "tsm2"), `model.safetensors` (the module's `state_dict()` as it is, saved with
safetensors: for JDPatchTST exactly what the reference saves, including the unused
`in_proj`/`norm`/`out_proj` tensors, the `pe` buffer and BatchNorm's `num_batches_tracked`), and
`reference.safetensors` with `input` (a series `(2, seq_len, channels)`, odd length and channel
count) and `output` (the forecast `(2, pred_len, channels)`). Parameters and norm statistics are
drawn with make_sequence_fixtures.py's `randomize_`. The provenance (script, commit, package
versions, seed) is written into every file's metadata and into tests/fixtures/sequence/PROVENANCE_JD.json.

Usage (any venv with torch, einops and safetensors; CPU is enough):
    git clone https://github.com/Thrillcrazyer/JustDense /tmp/jd   # at the commit above
    python scripts/make_jd_fixtures.py --justdense /tmp/jd [--out tests/fixtures/sequence]
"""
import argparse
import json
import math
import os
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_sequence_fixtures import randomize_, series  # noqa: E402

SEED = 20261203
JUSTDENSE_COMMIT = "28285e34e0d9f92b6935e2bbe6362737ea8a010b"


def save(out, name, model, config, x, y, metadata):
    path = os.path.join(out, name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(path, "model.safetensors"), metadata=metadata)
    save_file({"input": x.contiguous(), "output": y.contiguous()},
              os.path.join(path, "reference.safetensors"), metadata=metadata)
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {params} parameters, input {tuple(x.shape)}, output {tuple(y.shape)}")


# --- JDPatchTST, from the reference repository -------------------------------------------------

def import_justdense(root):
    for name in ["mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton",
                 "mamba_ssm.ops.triton.ssd_combined", "mamba_ssm.ops.triton.layernorm_gated"]:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["mamba_ssm.ops.triton.ssd_combined"].mamba_chunk_scan_combined = None
    sys.modules["mamba_ssm"].Mamba = None
    reformer = types.ModuleType("reformer_pytorch")
    reformer.LSHSelfAttention = None
    sys.modules.setdefault("reformer_pytorch", reformer)
    sys.path.insert(0, root)
    from models import JDPatchTST
    return JDPatchTST


def jd_patchtst(out, metadata, gen, root):
    JDPatchTST = import_justdense(root)
    cases = {
        # 45 steps -> 5 patches, 3 channels, 3 heads of 4 channels, GELU, two layers.
        "jd_patchtst": dict(seq_len=45, pred_len=7, enc_in=3, d_model=12, n_heads=3,
                            e_layers=2, d_ff=20, dropout=0.1, activation="gelu"),
        # 29 steps -> 3 patches, 5 channels; n_heads 4 on d_model 10 gives 5 matrices of 2
        # channels (the wrapper's head_dim quirk), ReLU, one layer.
        "jd_patchtst_heads": dict(seq_len=29, pred_len=6, enc_in=5, d_model=10, n_heads=4,
                                  e_layers=1, d_ff=16, dropout=0.1, activation="relu"),
    }
    for name, args in cases.items():
        config = dict(model_type="jd_patchtst", model="JDPatchTST",
                      task_name="long_term_forecast", **args)
        model = JDPatchTST.Model(types.SimpleNamespace(**config))
        randomize_(model, gen)
        model.eval()
        x = series(gen, 2, args["seq_len"], args["enc_in"])
        with torch.no_grad():
            y = model(x.clone(), None, None, None)
        save(out, name, model, config, x, y, dict(metadata, reference="JustDense " + JUSTDENSE_COMMIT))


# --- TSM2, tokenmix's reading (no reference code) --------------------------------------------

class MambaDirection(nn.Module):
    """One scan direction of a Mamba block (state-spaces/mamba names, `suffix` for Vim's `_b`)."""

    def __init__(self, inner, dt_rank, d_state, d_conv):
        super().__init__()
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner)
        self.A_log = nn.Parameter(torch.zeros(inner, d_state))
        self.D = nn.Parameter(torch.ones(inner))
        self.dt_rank, self.d_state = dt_rank, d_state

    def forward(self, x):  # (B, D, L)
        length = x.shape[-1]
        x = F.silu(self.conv1d(x)[..., :length])
        dbl = self.x_proj(x.transpose(1, 2))  # (B, L, r + 2N)
        r, n = self.dt_rank, self.d_state
        delta = F.softplus(self.dt_proj(dbl[..., :r])).transpose(1, 2)  # (B, D, L)
        bm, cm = dbl[..., r:r + n], dbl[..., r + n:]  # (B, L, N)
        a = -torch.exp(self.A_log)  # (D, N)
        state = torch.zeros(x.shape[0], x.shape[1], n)
        ys = []
        for t in range(length):
            dt = delta[:, :, t, None]
            state = torch.exp(dt * a) * state + dt * bm[:, None, t, :] * x[:, :, t, None]
            ys.append((state * cm[:, None, t, :]).sum(-1))
        return torch.stack(ys, -1) + x * self.D[:, None]


class Mamba(nn.Module):
    """in_proj to [x, z]; the scan (and, bidirectionally, the scan of the reversed sequence with
    its own parameters, summed in order and halved); gate SiLU(z); out_proj. (B, L, C)."""

    def __init__(self, dim, d_state, d_conv, expand, bidirectional):
        super().__init__()
        inner, rank = expand * dim, math.ceil(dim / 16)
        self.inner, self.bidirectional = inner, bidirectional
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        fwd = MambaDirection(inner, rank, d_state, d_conv)
        self.conv1d, self.x_proj, self.dt_proj = fwd.conv1d, fwd.x_proj, fwd.dt_proj
        self.A_log, self.D = fwd.A_log, fwd.D
        self._fwd = [fwd]
        if bidirectional:
            bwd = MambaDirection(inner, rank, d_state, d_conv)
            self.conv1d_b, self.x_proj_b, self.dt_proj_b = bwd.conv1d, bwd.x_proj, bwd.dt_proj
            self.A_b_log, self.D_b = bwd.A_log, bwd.D
            self._bwd = [bwd]
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, u):
        xz = self.in_proj(u).transpose(1, 2)
        x, z = xz[:, :self.inner], xz[:, self.inner:]
        y = self._fwd[0](x)
        if self.bidirectional:
            y = y + self._bwd[0](x.flip(-1)).flip(-1)
        y = y * F.silu(z)
        if self.bidirectional:
            y = y * 0.5
        return self.out_proj(y.transpose(1, 2))


class TSM2(nn.Module):
    """tokenmix's reading of TSM2 (see crates/models/src/sequence/tsm2.rs)."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        p = (c["seq_len"] - c["patch_len"]) // c["stride"] + 1
        self.num_patches = p
        d = c["d_model"]
        self.patch_embedding = nn.Linear(c["patch_len"], d)
        self.blocks = nn.ModuleList()
        for i in range(c["num_layers"]):
            b = nn.Module()
            b.time_weights = nn.Parameter(torch.zeros(1 + 2 * i))
            b.time_norm = nn.LayerNorm(d)
            b.time_mixer = Mamba(d, c["d_state"], c["d_conv"], c["expand"], False)
            b.variate_weights = nn.Parameter(torch.zeros(2 + 2 * i))
            b.variate_norm = nn.LayerNorm(d)
            b.variate_mixer = Mamba(d, c["d_state"], c["d_conv"], c["expand"], True)
            self.blocks.append(b)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(p * d, c["pred_len"])

    def forward(self, x):  # (B, L, M)
        bsz, _, m = x.shape
        mu = x.mean(1, keepdim=True)
        xc = x - mu
        sd = torch.sqrt(xc.var(1, keepdim=True, unbiased=False) + 1e-5)
        xn = (xc / sd).permute(0, 2, 1)  # (B, M, L)
        pl, st, p = self.c["patch_len"], self.c["stride"], self.num_patches
        start = self.c["seq_len"] - (pl + st * (p - 1))
        patches = xn[..., start:].unfold(-1, pl, st)  # (B, M, P, pl)
        d = self.c["d_model"]
        history = [self.patch_embedding(patches.reshape(bsz * m, p, pl))]
        for b in self.blocks:
            u = sum(w * h for w, h in zip(b.time_weights, history))
            history.append(u + b.time_mixer(b.time_norm(u)))
            v = sum(w * h for w, h in zip(b.variate_weights, history))
            across = v.reshape(bsz, m, p, d).transpose(1, 2).reshape(bsz * p, m, d)
            mixed = b.variate_mixer(b.variate_norm(across))
            history.append(v + mixed.reshape(bsz, p, m, d).transpose(1, 2).reshape(bsz * m, p, d))
        h = self.norm(history[-1]).reshape(bsz, m, p * d)
        y = self.head(h).permute(0, 2, 1)  # (B, H, M)
        return y * sd + mu


def tsm2(out, metadata, gen):
    # 41 steps, patches of 8 every 4 from step 1: 9 patches; 3 variates; two blocks.
    config = dict(model_type="tsm2", seq_len=41, pred_len=5, num_variates=3, patch_len=8,
                  stride=4, d_model=8, d_state=4, d_conv=3, expand=2, dt_rank=None,
                  num_layers=2)
    model = TSM2(config)
    randomize_(model, gen)
    model.eval()
    x = series(gen, 2, config["seq_len"], config["num_variates"])
    with torch.no_grad():
        y = model(x)
    save(out, "tsm2", model, config, x, y,
         dict(metadata, reference="tokenmix's reading of arXiv 2403.19888 (this script)"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--justdense", required=True,
                    help="a checkout of Thrillcrazyer/JustDense at " + JUSTDENSE_COMMIT)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "fixtures", "sequence"))
    args = ap.parse_args()
    import einops

    metadata = {
        "script": "scripts/make_jd_fixtures.py",
        "seed": str(SEED),
        "torch": torch.__version__,
        "einops": einops.__version__,
        "justdense_commit": JUSTDENSE_COMMIT,
    }
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    os.makedirs(args.out, exist_ok=True)
    jd_patchtst(args.out, metadata, gen, os.path.abspath(args.justdense))
    tsm2(args.out, metadata, gen)
    with open(os.path.join(args.out, "PROVENANCE_JD.json"), "w") as f:
        json.dump(metadata, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
