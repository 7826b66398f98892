#!/usr/bin/env python3
"""tokenmix vs PyTorch (timm, eager, fp32) and ONNX Runtime (CPU provider, the timm model exported
to ONNX; when onnxruntime is installed) on this machine, side by side, same thread count.

For each model, one fresh process per framework builds the model with random weights, measures
batch-1 latency and images/s at --batch (median of --iters timed runs after a warm-up) at 224²,
and reports its peak resident memory. The frameworks take turns: --rounds rounds, each running
every framework once, in an order that rotates from round to round, so a slow spell of the machine
(seen to swing throughput 1.5x within minutes) hits all of them alike. The table reports each
framework's best round (the fastest latency and the highest images/s of its rounds; noise only ever
slows a run down, as timeit's docs argue) and, per ratio, the range over the rounds' own ratios.
Prints a markdown table (and --json FILE writes every round's raw numbers).

Models timm does not have come from the authors' code: `--reference FILE` (repeatable) imports
a model file whose `@register_model` functions add their names to timm's registry, e.g.
`--reference CAS-ViT/classification/model/rcvit.py --models rcvit_xs` or
`--reference WaveMix/Image_Classification/timm.py --models wavemix_lite` (checkouts outside the
repo; their imports must be installed in the venv: WaveMix needs PyWavelets).

Run through scripts/compare_pytorch.sh, which sets up torch + timm in a venv outside the repo.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

# Imports the authors' model files named in $TOKENMIX_REFERENCE into a worker, so their
# @register_model names are in timm's registry (pasted into both workers below).
REFERENCE_IMPORT = r"""
import importlib, importlib.util, os as _os, types as _types
try:
    import fvcore.nn  # noqa: F401  (EfficientViM imports its FLOP counter)
except ImportError:
    _fv, _fvnn = _types.ModuleType("fvcore"), _types.ModuleType("fvcore.nn")
    _fvnn.flop_count = None
    sys.modules.update({"fvcore": _fv, "fvcore.nn": _fvnn})
import numpy as _np
if not hasattr(_np.lib, "function_base"):
    # WaveMix imports numpy.lib.function_base (gone in numpy 2) and never uses it.
    _fb = _types.ModuleType("numpy.lib.function_base")
    _fb.hamming = _np.hamming
    sys.modules["numpy.lib.function_base"] = _fb
try:
    import timm.models.layers.helpers  # noqa: F401  (iFormer imports timm 0.5's to_2tuple)
except ImportError:
    import timm.layers as _tl
    _h = _types.ModuleType("timm.models.layers.helpers")
    _h.to_2tuple = _tl.to_2tuple
    sys.modules["timm.models.layers.helpers"] = _h
import timm.models._builder as _builder
if not hasattr(_builder, "_update_default_kwargs"):
    # FFNet imports timm 0.9's name of _update_default_model_kwargs.
    _builder._update_default_kwargs = _builder._update_default_model_kwargs
for _path in filter(None, _os.environ.get("TOKENMIX_REFERENCE", "").split(_os.pathsep)):
    _dir, _name = _os.path.dirname(_path), _os.path.basename(_path)[:-3]
    if _os.path.exists(_os.path.join(_dir, "__init__.py")):
        # A module of a package with relative imports (EfficientViM's models/): import it
        # as package.module.
        sys.path.insert(0, _os.path.dirname(_dir))
        importlib.import_module(_os.path.basename(_dir) + "." + _name)
        continue
    # The checkout root too, for files importing their repository's package (WaveMix's
    # Image_Classification/timm.py imports wavemix/); the module gets its own name, as WaveMix's
    # timm.py would shadow timm.
    sys.path.insert(0, _os.path.dirname(_os.path.abspath(_dir)))
    _spec = importlib.util.spec_from_file_location("tokenmix_reference_" + _name, _path)
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _mod  # the authors' @register_model adds their names to timm's
    _spec.loader.exec_module(_mod)
def _create(name):
    try:
        return timm.create_model(name)
    except TypeError:
        # Entry points that pass timm's pretrained_cfg on to a constructor that takes no such
        # argument (WaveMix's wavemix_lite): call the registered function itself.
        return timm.models.model_entrypoint(name)(pretrained=False)
"""

def worker(template):
    """A worker's code with the reference import pasted in."""
    return template.replace("#REFERENCE_IMPORT\n", REFERENCE_IMPORT)


TIMM_WORKER = r"""
import json, resource, statistics, sys, time
import torch, timm
name, batch, iters, threads, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
#REFERENCE_IMPORT
model = _create(name).eval()
def median_time(x, n):
    model(x)
    times = []
    for _ in range(n):
        t = time.perf_counter(); model(x); times.append(time.perf_counter() - t)
    return statistics.median(times)
with torch.inference_mode():
    t1 = median_time(torch.randn(1, 3, size, size), iters)
    tb = median_time(torch.randn(batch, 3, size, size), max(1, (iters + 1) // 2))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(latency_ms=t1 * 1e3, images_per_s=batch / tb, peak_rss_mb=rss)))
"""


ORT_WORKER = r"""
import json, os, resource, statistics, sys, time
import numpy as np, torch, timm, onnxruntime as ort
name, batch, iters, threads, size, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(threads)
#REFERENCE_IMPORT
if not os.path.exists(path):
    model = _create(name).eval()
    with torch.no_grad():
        torch.onnx.export(model, torch.randn(1, 3, size, size), path, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)
    del model
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
def median_time(x, n):
    sess.run(None, {"x": x})
    times = []
    for _ in range(n):
        t = time.perf_counter(); sess.run(None, {"x": x}); times.append(time.perf_counter() - t)
    return statistics.median(times)
t1 = median_time(np.random.randn(1, 3, size, size).astype(np.float32), iters)
tb = median_time(np.random.randn(batch, 3, size, size).astype(np.float32), max(1, (iters + 1) // 2))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(latency_ms=t1 * 1e3, images_per_s=batch / tb, peak_rss_mb=rss)))
"""


def have_ort():
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def run_ort(python, name, batch, iters, threads, size, onnx_path):
    """ONNX Runtime's CPU provider on the timm model exported to `onnx_path` (exported there by the
    first call; None if the export or the run fails)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([python, "-c", worker(ORT_WORKER), name, str(batch), str(iters), str(threads), str(size), onnx_path],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"{name}: ONNX export/run failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_timm(python, name, batch, iters, threads, size):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run([python, "-c", worker(TIMM_WORKER), name, str(batch), str(iters), str(threads), str(size)],
                         capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_tokenmix(binary, name, batch, iters, threads, size):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), CANDLE_NUM_THREADS=str(threads))
    out = subprocess.run([binary, "bench", "--models", name, "--batch", str(batch), "--iters", str(iters),
                          "--image-size", str(size), "--json"],
                         capture_output=True, text=True, env=env, check=True).stdout
    r = json.loads(out)[0]
    return dict(latency_ms=r["latency_ms"], images_per_s=r["images_per_s"], peak_rss_mb=r["peak_rss_mb"])


def best_of(rounds):
    """One framework's best round: the lowest latency, the highest images/s, the highest peak RSS
    (memory is not noise, so the worst is reported). None if every round failed."""
    rounds = [r for r in rounds if r]
    if not rounds:
        return None
    return dict(latency_ms=min(r["latency_ms"] for r in rounds),
                images_per_s=max(r["images_per_s"] for r in rounds),
                peak_rss_mb=max(r["peak_rss_mb"] for r in rounds))


def round_ratios(rounds, other):
    """(b1 speed-ups, b-batch speed-ups) of tokenmix over `other`, one per round where both ran."""
    pairs = [(r["tokenmix"], r[other]) for r in rounds if r.get(other)]
    return ([o["latency_ms"] / m["latency_ms"] for m, o in pairs],
            [m["images_per_s"] / o["images_per_s"] for m, o in pairs])


def spread(values):
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else ""


def print_table(rows, other, label, b):
    print(f"| model | b1 latency ms ({label} / tokenmix) | tokenmix/{label} b1 speed | per-round | "
          f"b{b} img/s ({label} / tokenmix) | tokenmix/{label} b{b} speed | per-round | peak RSS MB ({label} / tokenmix) |")
    print("|---|---|---:|---|---|---:|---|---|")
    for r in rows:
        o, m = r["best"][other], r["best"]["tokenmix"]
        if not o:
            print(f"| {r['model']} | failed | | | | | | |")
            continue
        lat, ips = round_ratios(r["rounds"], other)
        print(f"| {r['model']} | {o['latency_ms']:.1f} / {m['latency_ms']:.1f} | {o['latency_ms'] / m['latency_ms']:.2f}x "
              f"| {spread(lat)} | {o['images_per_s']:.1f} / {m['images_per_s']:.1f} "
              f"| {m['images_per_s'] / o['images_per_s']:.2f}x | {spread(ips)} "
              f"| {o['peak_rss_mb']:.0f} / {m['peak_rss_mb']:.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="poolformer_s12,convformer_s18,caformer_s18")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="times each framework runs, taking turns")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--tokenmix", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "tokenmix"))
    ap.add_argument("--json", help="write every round's raw results here")
    ap.add_argument("--reference", action="append", default=[],
                    help="an authors' model file registering its models with timm (repeatable)")
    args = ap.parse_args()
    os.environ["TOKENMIX_REFERENCE"] = os.pathsep.join(os.path.abspath(p) for p in args.reference)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    import torch
    print(f"threads {args.threads}, {args.image_size}x{args.image_size}, batch 1 and {args.batch}, "
          f"{args.rounds} rounds, torch {torch.__version__} "
          f"({'MKL' if torch.backends.mkl.is_available() else 'no MKL'})", file=sys.stderr)
    py, b, n, th, size = sys.executable, args.batch, args.iters, args.threads, args.image_size
    onnx_dir = tempfile.mkdtemp(prefix="tokenmix-onnx-")
    runners = {
        "timm": lambda name: run_timm(py, name, b, n, th, size),
        "tokenmix": lambda name: run_tokenmix(args.tokenmix, name, b, n, th, size),
    }
    if have_ort():
        runners["ort"] = lambda name: run_ort(py, name, b, n, th, size, os.path.join(onnx_dir, name + ".onnx"))
    order = list(runners)
    rows = []
    for name in args.models.split(","):
        if "ort" in runners:
            runners["ort"](name)  # export (and warm the file cache) outside the timed rounds
        rounds = []
        for k in range(args.rounds):
            turn = order[k % len(order):] + order[:k % len(order)]
            result = {fw: runners[fw](name) for fw in turn}
            rounds.append(result)
            print(f"{name} round {k + 1} ({', '.join(turn)}): {result}", file=sys.stderr)
        best = {fw: best_of([r.get(fw) for r in rounds]) for fw in order}
        rows.append(dict(model=name, best=best, rounds=rounds))
    print_table(rows, "timm", "timm", b)
    if "ort" in runners:
        print()
        print_table(rows, "ort", "ORT", b)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=th, batch=b, rounds=args.rounds, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
