"""GMM clipping: the fast torch fit and the exact (sklearn-reproducing) torch fit vs sklearn,
one GaussianMixture fit per K per vector, on the same rows in one process.

    # real rows: one calibration window of SmolLM2's AFR scores (per-weight, 46,080 neurons)
    .venv/bin/llmslim prune smollm2-135m --nsamples 1 --seqlen 512 --calib wikitext2 \
        --accumulate signed-sum --method afr:abs --save-scores runs/window1.pt
    .venv/bin/python benchmarks/gmm_speed.py --scores runs/window1.pt --threads 2
    .venv/bin/python benchmarks/gmm_speed.py                    # 1536 synthetic neurons x 1728
    # SmolLM2's 30 FFN layers (1,536 neurons each) one call a layer against one call for all
    python benchmarks/gmm_speed.py --n 46080 --m 1728 --fast-only --layers 30 --out benchmarks/results/gmm_layers_cpu.json
    # the Llama-3-8B FFN shape on a GPU, fast fit only (one window: 32 layers x 14,336 neurons)
    python benchmarks/gmm_speed.py --n 458752 --m 12288 --device cuda --fast-only \
        --out benchmarks/results/gmm_speed_gpu.json

The fast fit clips all N vectors in one gmm_clip call (on --device), timed twice on all of
them (the quicker run is reported; both are in the JSON). The exact fit runs on --exact-limit of them, sklearn on --limit (spread evenly over the
N); their totals for N are extrapolated from the mean time per vector, and the output says
so. Agreement (same K; both clip bounds equal to 1e-6 row std) is measured over the --limit
vectors: fast vs sklearn, exact vs sklearn, and sklearn with seed+1 vs sklearn - the last
is how much sklearn agrees with itself, the bar the fast fit has to clear. Then layer scope:
one row of all N x m values, fitted on a 2**16-value subsample on both sides.

--scores: an llmslim scores file with per-weight "snip" and "refer" (then the rows are the
paper's per-window AFR scores, z(ReFer) + z(SNIP)), or a .pt tensor [rows, values] or a dict
/ list of them (rows of the first width found). Default data: heavy-tailed synthetic rows
shaped like per-neuron weight x gradient scores (tests/prune/test_gmm.py's recipe).
--fast-only: time the fast fit alone (twice, on rows generated on --device by
heavy_tailed_torch, which is heavy_tailed_rows' recipe vectorised) - for shapes where the
other fits would take hours. Both sides get --threads CPU threads (default 1: the numbers are per core, and extra
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

from llmslim.core.device import device_label
from llmslim.prune.gmm import MAX_FIT_VALUES, gmm_clip, sklearn_gmm_clip

parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=1536, help="neuron vectors (synthetic)")
parser.add_argument("--m", type=int, default=1728, help="values per vector (synthetic)")
parser.add_argument("--scores", default=None, help=".pt of real score vectors instead of synthetic")
parser.add_argument("--limit", type=int, default=96, help="vectors fitted by sklearn (twice: seed, seed+1)")
parser.add_argument("--exact-limit", type=int, default=3072, help="vectors timed with the exact torch fit")
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--no-layer", action="store_true", help="skip the layer-scope comparison")
parser.add_argument("--fast-only", action="store_true", help="time the fast fit only, on rows made on --device")
parser.add_argument("--layers", type=int, default=0,
                    help="with --fast-only: split the rows into this many layers and time one call per layer (seed + "
                         "layer, as calibration did) against all layers in one call with per-row seeds (as it does now)")
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


def heavy_tailed_torch(n: int, m: int, seed: int, device: str, chunk: int = 8192) -> torch.Tensor:
    """heavy_tailed_rows' three row kinds, vectorised and made on the device in chunks of rows."""
    gen = torch.Generator(device).manual_seed(seed)
    out = torch.empty((n, m), dtype=torch.float32, device=device)
    third = m // 3
    channels = torch.ones(m, device=device)
    pick = torch.randperm(third, generator=gen, device=device)[:6]
    boost = torch.rand(6, generator=gen, device=device) * 30 + 10
    channels[pick], channels[third + pick] = boost, boost

    def laplace(shape, loc=0.0, scale=1.0):
        u = torch.rand(shape, generator=gen, device=device) - 0.5
        return loc - scale * u.sign() * torch.log1p(-2 * u.abs().clamp(max=0.5 - 2**-24))

    def student_t(shape, df):
        z = torch.randn(shape, generator=gen, device=device)
        chi2 = torch.randn((*shape, df), generator=gen, device=device).square().sum(-1)
        return z / (chi2 / df).sqrt()

    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        kind = (torch.arange(start, start + rows, device=device) % 3)[:, None]
        shape = (rows, m)
        products = torch.randn(shape, generator=gen, device=device) * 0.02 * laplace(shape) * channels * 1e-3
        products[:, 2 * third:] = (torch.randn((rows, m - 2 * third), generator=gen, device=device) * 0.02
                                   * student_t((rows, m - 2 * third), 4) * 1e-3)
        wide = torch.rand(shape, generator=gen, device=device) < 0.3
        two_scale = torch.where(wide, laplace(shape, 0.5, 3.0), laplace(shape)) * 1e-5
        rows_out = torch.where(kind == 0, products, torch.where(kind == 1, student_t(shape, 3) * 1e-5, two_scale))
        out[start : start + rows] = rows_out * torch.exp(0.5 * torch.randn((rows, 1), generator=gen, device=device))
    return out


def load_scores(path: str) -> torch.Tensor:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and obj.get("snip") and obj.get("refer"):
        from llmslim.prune.aggregate import zscore_all

        return torch.cat([r + s for r, s in zip(zscore_all(obj["refer"]), zscore_all(obj["snip"]))])
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
if args.fast_only:
    X_dev = heavy_tailed_torch(args.n, args.m, args.seed, args.device)
    device_name = device_label(torch.device(args.device))
    print(f"{args.n} synthetic vectors x {args.m} values on {device_name}")
    times = []
    with threadpool_limits(args.threads):
        gmm_clip(X_dev[:64], seed=args.seed)  # warm-up
        for _ in range(2):
            (_, info), t = timed(lambda: gmm_clip(X_dev, seed=args.seed, return_info=True))
            times.append(t)
            print(f"fast fit, all rows: {t:.2f} s ({args.n / t:.0f} rows/s)", flush=True)
    layers = {}
    if args.layers > 1:  # the same rows as L per-layer calls and as one call with per-row seeds
        if args.m > MAX_FIT_VALUES:
            raise SystemExit(f"--layers: rows of at most {MAX_FIT_VALUES} values (longer ones are fitted on a subsample, one layer a call)")
        parts = X_dev.chunk(args.layers)
        per_layer = one = None
        seeds = torch.cat([torch.full((len(p),), args.seed + i, dtype=torch.long) for i, p in enumerate(parts)])
        with threadpool_limits(args.threads):
            for _ in range(2):
                del per_layer, one  # the first pass's outputs: two copies of the rows
                per_layer, t_layers = timed(lambda: [gmm_clip(p, seed=args.seed + i) for i, p in enumerate(parts)])
                one, t_one = timed(lambda: gmm_clip(X_dev, seed=seeds))
                layers.setdefault("per_layer_s", []).append(t_layers)
                layers.setdefault("one_call_s", []).append(t_one)
                print(f"{args.layers} layers: one call a layer {t_layers:.2f} s, one call {t_one:.2f} s "
                      f"({t_layers / t_one:.2f}x)", flush=True)
        # bit-equal on a CPU (tested); a GPU's reduction kernels may sum in another order for
        # another row count, so there also count the rows that differ and by how much
        differs = (torch.cat(per_layer) != one).any(dim=1)
        scale = X_dev.abs().amax(dim=1)
        layers |= {"layers": args.layers, "equal": not bool(differs.any()), "rows_differing": int(differs.sum()),
                   "max_diff_of_row_max": float(((torch.cat(per_layer) - one).abs().amax(dim=1) / scale).max()),
                   "speedup_one_call": min(layers["per_layer_s"]) / min(layers["one_call_s"])}
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    result = dict(layers=layers or None, n=args.n, m=args.m, source=f"synthetic heavy-tailed (torch), seed {args.seed}", device=device_name,
                  torch_version=torch.__version__, fast_s=times, fast_rows_per_s=args.n / min(times),
                  peak_gpu_memory_gib=peak, k_hist_fast=torch.bincount(info.k.cpu(), minlength=6)[1:].tolist(),
                  clipped_frac_mean=((info.n_low + info.n_high).float().mean() / args.m).item())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    raise SystemExit(0)
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
def agreement(k_a, lo_a, up_a, ref, std):
    gap = np.maximum(np.abs(np.asarray(lo_a) - np.array([r["lower"] for r in ref])),
                     np.abs(np.asarray(up_a) - np.array([r["upper"] for r in ref]))) / std
    return dict(same_k=float((np.asarray(k_a) == np.array([r["k"] for r in ref])).mean()),
                bounds_equal=float((gap <= 1e-6).mean()), median_bound_gap_std=float(np.median(gap)),
                max_bound_gap_std=float(gap.max()))


exact_pick = np.unique(np.linspace(0, n - 1, min(args.exact_limit, n)).round().astype(int))
with threadpool_limits(args.threads):
    gmm_clip(X_dev[:8], seed=args.seed)  # warm-up (and sklearn's imports, below)
    sklearn_gmm_clip(X[0].numpy(), seed=args.seed)
    fast_runs = [timed(lambda: gmm_clip(X_dev, seed=args.seed, return_info=True, fit="fast")) for _ in range(2)]
    (_, info), t_fast = min(fast_runs, key=lambda run: run[1])  # the quicker of two: less of the machine's noise
    (_, einfo), t_exact_part = timed(lambda: gmm_clip(X_dev[exact_pick], seed=args.seed, return_info=True, fit="exact"))
    (_, einfo_pick), _ = timed(lambda: gmm_clip(X_dev[pick], seed=args.seed, return_info=True, fit="exact"))
    t0 = time.perf_counter()
    ref = [sklearn_gmm_clip(X[i].numpy(), seed=args.seed, return_info=True)[1] for i in pick]
    t_sk_part = time.perf_counter() - t0
    ref_other = [sklearn_gmm_clip(X[i].numpy(), seed=args.seed + 1, return_info=True)[1] for i in pick]

std = X[pick].double().std(1).numpy()
t_sk_all = t_sk_part / len(pick) * n
t_exact_all = t_exact_part / len(exact_pick) * n
cpu = lambda t: t.cpu().numpy()  # noqa: E731
fast_vs_sk = agreement(cpu(info.k)[pick], cpu(info.lower)[pick], cpu(info.upper)[pick], ref, std)
exact_vs_sk = agreement(cpu(einfo_pick.k), cpu(einfo_pick.lower), cpu(einfo_pick.upper), ref, std)
sk_vs_sk = agreement([r["k"] for r in ref_other], [r["lower"] for r in ref_other], [r["upper"] for r in ref_other], ref, std)
clipped = (info.n_low + info.n_high).cpu().numpy() / m
neuron = dict(
    fast_s=t_fast, fast_runs_s=[run[1] for run in fast_runs], fast_rows_per_s=n / t_fast,
    exact_measured_vectors=len(exact_pick), exact_measured_s=t_exact_part, exact_extrapolated_s=t_exact_all,
    exact_rows_per_s=n / t_exact_all,
    sklearn_measured_vectors=len(pick), sklearn_measured_s=t_sk_part, sklearn_extrapolated_s=t_sk_all,
    sklearn_rows_per_s=n / t_sk_all,
    speedup_fast_vs_sklearn=t_sk_all / t_fast, speedup_fast_vs_exact=t_exact_all / t_fast,
    fast_vs_sklearn=fast_vs_sk, exact_vs_sklearn=exact_vs_sk, sklearn_other_seed_vs_sklearn=sk_vs_sk,
    k_hist_fast=np.bincount(cpu(info.k), minlength=6)[1:].tolist(),
    k_hist_sklearn_subset=np.bincount([r["k"] for r in ref], minlength=6)[1:].tolist(),
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
rows = [("fit", "time for all rows (s)", "rows/s", "same K as sklearn", "bounds equal", "median gap (std)")]
for name, t, measured, agree in (
    ("fast (default)", t_fast, "measured", fast_vs_sk),
    ("exact torch", t_exact_all, f"from {len(exact_pick)}", exact_vs_sk),
    (f"sklearn seed {args.seed + 1}", t_sk_all, f"from {len(pick)}", sk_vs_sk),
):
    rows.append((name, f"{t:.1f} ({measured})", f"{n / t:.0f}", f"{agree['same_k']:.1%}", f"{agree['bounds_equal']:.1%}",
                 f"{agree['median_bound_gap_std']:.2g}"))
widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
for j, row in enumerate(rows):
    print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
    if j == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
print(f"\nfast vs sklearn: {t_sk_all / t_fast:.1f}x, fast vs exact: {t_exact_all / t_fast:.1f}x "
      f"(sklearn's time is per-row mean x {n}; agreement over {len(pick)} rows against sklearn seed {args.seed})")
print(f"K chosen by the fast fit over all {n}: {dict(zip(range(1, 6), neuron['k_hist_fast']))}; "
      f"values clipped per vector: mean {neuron['clipped_frac_mean']:.2%}, max {neuron['clipped_frac_max']:.2%}")
if layer:
    print(f"layer scope ({layer['values']} values): torch {layer['torch_s']:.2f} s, sklearn {layer['sklearn_s']:.1f} s, "
          f"same K: {layer['k_torch'] == layer['k_sklearn']}, bound gap {layer['max_bound_gap_std']:.2g} std")

Path(args.out).parent.mkdir(parents=True, exist_ok=True)
result = dict(
    n=n, m=m, source=source, device=args.device, threads=args.threads, seed=args.seed,
    torch_version=torch.__version__, neuron=neuron, layer=layer,
    note="*_extrapolated_s = mean time per vector x n, measured on *_measured_vectors vectors",
)
Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
print(f"wrote {args.out}")
