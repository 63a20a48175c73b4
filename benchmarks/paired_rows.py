"""Paired difference of mean accuracy between any two rows of prune_table.py results, on the
same documents (rows keep every document's 0/1 since per-item results were added):

    .venv/bin/python benchmarks/paired_rows.py benchmarks/results/prune_table_paired20.json \
        "0.2 afr:abs+gmm@adaptive" "0.2 flap"

A row is "RATIO METHOD" in FILE, or "OTHER.json:RATIO METHOD" in another results file (both
scored with the same --limit and tasks). Prints A's and B's mean, A - B, the paired standard
error and the unpaired one; --json for the dict (eval/paired.paired_difference).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmslim.eval.paired import items_from_bits, paired_difference

parser = argparse.ArgumentParser()
parser.add_argument("file", help="a prune_table.py results file (or its .partial)")
parser.add_argument("a", help='"RATIO METHOD", e.g. "0.2 flap"; "OTHER.json:RATIO METHOD" for a row of another file')
parser.add_argument("b", help="the row A is compared with")
parser.add_argument("--json", action="store_true")
args = parser.parse_args()


def rows_of(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"no such results file: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}: not JSON ({err})") from None
    rows = data.get("rows") if isinstance(data, dict) else data  # a .partial is the bare list
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"ratio", "method"} <= set(r) for r in rows):
        raise SystemExit(f"{path}: not prune_table.py results (rows with a ratio and a method)")
    return rows


def find(spec: str) -> tuple[str, dict[str, list[float]]]:
    path, row = "", spec
    if ".json" in spec.split(" ")[0]:  # "OTHER.json:0.2 afr:abs" (method names have colons too)
        cut = spec.find(":", spec.index(".json"))
        path, row = (spec[:cut], spec[cut + 1:]) if cut > 0 else (spec, "")
    ratio, _, method = row.partition(" ")
    try:
        ratio = float(ratio)
    except ValueError:
        raise SystemExit(f'a row is "RATIO METHOD", e.g. "0.2 flap" (got {spec!r})') from None
    rows = rows_of(Path(path or args.file))
    match = [r for r in rows if r["ratio"] == ratio and r["method"] == method]
    if not match:
        known = ", ".join(f'"{r["ratio"]} {r["method"]}"' for r in rows)
        raise SystemExit(f"no row {spec!r} in {path or args.file}; it has: {known}")
    if "items" not in match[0]:
        raise SystemExit(f"row {spec!r} was scored before per-document results were kept; run it again")
    return spec, items_from_bits(match[0]["items"])


(name_a, a), (name_b, b) = find(args.a), find(args.b)
try:
    d = paired_difference(a, b)
except ValueError as err:
    raise SystemExit(f"{name_a} and {name_b}: {err}") from None
if args.json:
    print(json.dumps({"row_a": name_a, "row_b": name_b, **d}, indent=2))
else:
    z = f", z = {d['diff'] / d['stderr']:+.2f}" if d["stderr"] else ""
    print(f"{name_a}: {d['a']:.4f}\n{name_b}: {d['b']:.4f}\n"
          f"difference {d['diff']:+.4f}, paired standard error {d['stderr']:.4f} (unpaired {d['unpaired_stderr']:.4f}), "
          f"{d['items']} documents{z}")
