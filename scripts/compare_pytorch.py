#!/usr/bin/env python3
"""tokenmix vs PyTorch (timm, eager, fp32) and ONNX Runtime (CPU provider, the timm model exported
to ONNX; when onnxruntime is installed) on this machine, side by side, same thread count.

For each model, one fresh process per framework builds the model with random weights, measures
batch-1 latency and images/s at --batch (median of --iters timed runs after a warm-up) at 224²,
and reports its peak resident memory. Prints a markdown table (and --json FILE writes the raw
numbers).

Run through scripts/compare_pytorch.sh, which sets up torch + timm in a venv outside the repo.
"""
import argparse
import json
import os
import subprocess
import sys

TIMM_WORKER = r"""
import json, resource, statistics, sys, time
import torch, timm
name, batch, iters, threads, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
model = timm.create_model(name).eval()
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
import json, os, resource, statistics, sys, tempfile, time
import numpy as np, torch, timm, onnxruntime as ort
name, batch, iters, threads, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
model = timm.create_model(name).eval()
path = os.path.join(tempfile.mkdtemp(), name + ".onnx")
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


def run_ort(python, name, batch, iters, threads, size):
    """ONNX Runtime's CPU provider on the timm model exported to ONNX (None if onnxruntime is not
    installed)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([python, "-c", ORT_WORKER, name, str(batch), str(iters), str(threads), str(size)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"{name}: ONNX export/run failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_timm(python, name, batch, iters, threads, size):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run([python, "-c", TIMM_WORKER, name, str(batch), str(iters), str(threads), str(size)],
                         capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_tokenmix(binary, name, batch, iters, threads, size):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), CANDLE_NUM_THREADS=str(threads))
    out = subprocess.run([binary, "bench", "--models", name, "--batch", str(batch), "--iters", str(iters),
                          "--image-size", str(size), "--json"],
                         capture_output=True, text=True, env=env, check=True).stdout
    r = json.loads(out)[0]
    return dict(latency_ms=r["latency_ms"], images_per_s=r["images_per_s"], peak_rss_mb=r["peak_rss_mb"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="poolformer_s12,convformer_s18,caformer_s18")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--tokenmix", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "tokenmix"))
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args()
    import torch
    print(f"threads {args.threads}, {args.image_size}x{args.image_size}, batch 1 and {args.batch}, "
          f"torch {torch.__version__} ({'MKL' if torch.backends.mkl.is_available() else 'no MKL'})", file=sys.stderr)
    rows = []
    for name in args.models.split(","):
        t = run_timm(sys.executable, name, args.batch, args.iters, args.threads, args.image_size)
        m = run_tokenmix(args.tokenmix, name, args.batch, args.iters, args.threads, args.image_size)
        o = run_ort(sys.executable, name, args.batch, args.iters, args.threads, args.image_size)
        rows.append(dict(model=name, timm=t, tokenmix=m, ort=o))
        print(f"{name}: timm {t}, tokenmix {m}, onnxruntime {o}", file=sys.stderr)
    b = args.batch
    print(f"| model | b1 latency ms (timm / tokenmix) | tokenmix/timm b1 speed | b{b} img/s (timm / tokenmix) "
          f"| tokenmix/timm b{b} speed | peak RSS MB (timm / tokenmix) |")
    print("|---|---|---:|---|---:|---|")
    for r in rows:
        t, m = r["timm"], r["tokenmix"]
        print(f"| {r['model']} | {t['latency_ms']:.1f} / {m['latency_ms']:.1f} | {t['latency_ms'] / m['latency_ms']:.2f}x "
              f"| {t['images_per_s']:.1f} / {m['images_per_s']:.1f} | {m['images_per_s'] / t['images_per_s']:.2f}x "
              f"| {t['peak_rss_mb']:.0f} / {m['peak_rss_mb']:.0f} |")
    if any(r["ort"] for r in rows):
        print()
        print(f"| model | b1 latency ms (ORT / tokenmix) | tokenmix/ORT b1 speed | b{b} img/s (ORT / tokenmix) "
              f"| tokenmix/ORT b{b} speed | peak RSS MB (ORT / tokenmix) |")
        print("|---|---|---:|---|---:|---|")
        for r in rows:
            o, m = r["ort"], r["tokenmix"]
            if not o:
                print(f"| {r['model']} | export failed | | | | |")
                continue
            print(f"| {r['model']} | {o['latency_ms']:.1f} / {m['latency_ms']:.1f} | {o['latency_ms'] / m['latency_ms']:.2f}x "
                  f"| {o['images_per_s']:.1f} / {m['images_per_s']:.1f} | {m['images_per_s'] / o['images_per_s']:.2f}x "
                  f"| {o['peak_rss_mb']:.0f} / {m['peak_rss_mb']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=args.threads, batch=b, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
