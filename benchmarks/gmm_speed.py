"""Batched torch GMM clipping vs sklearn, one GaussianMixture fit per K per vector.

    .venv/bin/python benchmarks/gmm_speed.py                          # 1536 synthetic neurons x 1728
    .venv/bin/python benchmarks/gmm_speed.py --scores scores.pt --limit 64
    .venv/bin/python benchmarks/gmm_speed.py --n 256 --limit 32 --threads 2

The torch side clips all N vectors in one gmm_clip call (on --device). sklearn fits every
vector on its own, so it runs on --limit of them (spread evenly over the N) and its total
for N is extrapolated as N x its mean time per vector; the output says so. K agreement and
bound gaps are over those --limit vectors. The same is then done for layer scope: one row
of all N x m values, fitted on a 2**16-value subsample, the same positions on both sides.

--scores: a torch .pt holding a tensor [rows, values] or a dict / list of them (rows of the
first width found are used). Default data: heavy-tailed synthetic rows shaped like
per-neuron weight x gradient scores (tests/prune/test_gmm.py uses the same recipe).
Both sides get --threads CPU threads (default 1: the numbers are per core, and extra
threads on a shared machine mostly wait on each other).
Writes benchmarks/results/gmm_speed.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from llmslim.prune.gmm import gmm_clip, sklearn_gmm_clip

parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=1536, help="neuron vectors (synthetic)")
parser.add_argument("--m", type=int, default=1728, help="values per vector (synthetic)")
parser.add_argument("--scores", default=None, help=".pt of real score vectors instead of synthetic")
parser.add_argument("--limit", type=int, default=96, help="vectors timed with sklearn")
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--no-layer", action="store_true", help="skip the layer-scope comparison")
parser.add_argument("--out", default="benchmarks/results/gmm_speed.json")
args = parser.parse_args()


def heavy_tailed_rows(n: int, m: int, seed: int) -> np.ndarray:
    """[gate | up | down] weight x gradient products with a few massive input channels,
    Student-t(3) rows and two-scale Laplace rows, in turn; float32 at ~1e-5 like raw scores."""
    rng = np.random.default_rng(seed)
    third = m // 3
    channels = np.ones(third)
    channels[rng.choice(third, 6, replace=False)] = rng.uniform(10, 40, 6)
    rows = []
    for i in range(n):
        if i % 3 == 0:
            parts = [rng.normal(0, 0.02, third) * rng.laplace(0, 1, third) * channels for _ in range(2)]
            parts.append(rng.normal(0, 0.02, m - 2 * third) * rng.standard_t(4, m - 2 * third))
            row = np.concatenate(parts) * 1e-3
        elif i % 3 == 1:
            row = rng.standard_t(3, m) * 1e-5
        else:
            wide = rng.random(m) < 0.3
            row = np.where(wide, rng.laplace(0.5, 3, m), rng.laplace(0, 1, m)) * 1e-5
        rows.append(row * np.exp(rng.normal(0, 0.5)))
    return np.stack(rows).astype(np.float32)


def load_scores(path: str) -> torch.Tensor:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    items = [obj] if isinstance(obj, torch.Tensor) else list(obj.values() if isinstance(obj, dict) else obj)
    rows = [t.reshape(-1, t.shape[-1]).float() for t in items if isinstance(t, torch.Tensor) and t.dim() >= 1]
    return torch.cat([r for r in rows if r.shape[1] == rows[0].shape[1]])


def timed(fn):
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def gap_in_std(a: np.ndarray, b: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.abs(a - b) / std


# --- data ---------------------------------------------------------------------------------
torch.set_num_threads(args.threads)
if args.scores:
    X = load_scores(args.scores)
    source = args.scores
else:
    X = torch.from_numpy(heavy_tailed_rows(args.n, args.m, args.seed))
    source = f"synthetic heavy-tailed, seed {args.seed}"
n, m = X.shape
limit = min(args.limit, n)
pick = np.unique(np.linspace(0, n - 1, limit).round().astype(int))
X_dev = X.to(args.device)
print(f"{n} vectors x {m} values ({source}); torch on {args.device}, sklearn on {len(pick)} of them; "
      f"{args.threads} thread(s)")

# --- neuron scope: one mixture per vector ---------------------------------------------------
with threadpool_limits(args.threads):
    gmm_clip(X_dev[:8], seed=args.seed)  # warm-up (and sklearn's imports, below)
    sklearn_gmm_clip(X[0].numpy(), seed=args.seed)
    (_, info), t_torch = timed(lambda: gmm_clip(X_dev, seed=args.seed, return_info=True))
    t0 = time.perf_counter()
    ref = [sklearn_gmm_clip(X[i].numpy(), seed=args.seed, return_info=True)[1] for i in pick]
    t_sk_part = time.perf_counter() - t0

t_sk_vec = t_sk_part / len(pick)
t_sk_all = t_sk_vec * n
std = X[pick].double().std(1).numpy()
k_torch, k_sk = info.k.cpu().numpy()[pick], np.array([r["k"] for r in ref])
gaps = np.maximum(
    gap_in_std(info.lower.cpu().numpy()[pick], np.array([r["lower"] for r in ref]), std),
    gap_in_std(info.upper.cpu().numpy()[pick], np.array([r["upper"] for r in ref]), std),
)
clipped = (info.n_low + info.n_high).cpu().numpy() / m
neuron = dict(
    torch_s=t_torch, torch_per_vector_ms=1e3 * t_torch / n,
    sklearn_measured_vectors=len(pick), sklearn_measured_s=t_sk_part, sklearn_per_vector_ms=1e3 * t_sk_vec,
    sklearn_extrapolated_s=t_sk_all, speedup=t_sk_all / t_torch,
    k_agreement=float((k_torch == k_sk).mean()), bounds_equal=float((gaps <= 1e-6).mean()),
    max_bound_gap_std=float(gaps.max()),
    k_hist_torch=np.bincount(info.k.cpu().numpy(), minlength=6)[1:].tolist(),
    k_hist_sklearn_subset=np.bincount(k_sk, minlength=6)[1:].tolist(),
    clipped_frac_mean=float(clipped.mean()), clipped_frac_max=float(clipped.max()),
)

# --- layer scope: one mixture for all n x m values ------------------------------------------
layer = None
if not args.no_layer:
    flat = X.reshape(1, -1)
    with threadpool_limits(args.threads):
        (_, linfo), t_torch_layer = timed(lambda: gmm_clip(flat.to(args.device), seed=args.seed, return_info=True))
        (_, lref), t_sk_layer = timed(lambda: sklearn_gmm_clip(flat[0].numpy(), seed=args.seed, return_info=True))
    lstd = flat.double().std().item()
    layer = dict(
        values=flat.shape[1], torch_s=t_torch_layer, sklearn_s=t_sk_layer, speedup=t_sk_layer / t_torch_layer,
        k_torch=linfo.k.item(), k_sklearn=lref["k"],
        max_bound_gap_std=max(abs(linfo.lower.item() - lref["lower"]), abs(linfo.upper.item() - lref["upper"])) / lstd,
        clipped_frac=(linfo.n_low + linfo.n_high).item() / flat.shape[1],
    )

# --- report ----------------------------------------------------------------------------------
print()
sk_cell = f"{t_sk_all:.1f} extrapolated ({1e3 * t_sk_vec:.0f} ms x {n})"
table = [
    ("scope", "torch (s)", "sklearn (s)", "speed-up", "same K", "bounds equal", "max bound gap"),
    ("neuron", f"{t_torch:.2f}", sk_cell, f"{neuron['speedup']:.1f}x", f"{neuron['k_agreement']:.1%}",
     f"{neuron['bounds_equal']:.1%}", f"{neuron['max_bound_gap_std']:.2g} std"),
]
if layer:
    table.append(("layer", f"{layer['torch_s']:.2f}", f"{layer['sklearn_s']:.1f} measured", f"{layer['speedup']:.1f}x",
                  "yes" if layer["k_torch"] == layer["k_sklearn"] else "no", "", f"{layer['max_bound_gap_std']:.2g} std"))
widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
for j, row in enumerate(table):
    print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
    if j == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
print()
print(f"sklearn timed on {len(pick)} of {n} vectors ({t_sk_part:.1f} s); its {n}-vector time is that mean x {n}, "
      f"not measured. K agreement and bound gaps are over those {len(pick)} vectors.")
print(f"K chosen by torch over all {n}: {dict(zip(range(1, 6), neuron['k_hist_torch']))}; "
      f"values clipped per vector: mean {neuron['clipped_frac_mean']:.2%}, max {neuron['clipped_frac_max']:.2%}")

Path(args.out).parent.mkdir(parents=True, exist_ok=True)
result = dict(
    n=n, m=m, source=source, device=args.device, threads=args.threads, seed=args.seed,
    torch_version=torch.__version__, neuron=neuron, layer=layer,
    note="sklearn_extrapolated_s = sklearn_per_vector_ms x n, measured on sklearn_measured_vectors vectors",
)
Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
print(f"wrote {args.out}")
