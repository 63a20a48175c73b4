"""Scores -> kept units per layer.

Allocation of a sparsity p (the fraction of units to drop) over the layers:
- `perlayer`  drop the bottom p of each layer (ShadowLLM's "local" masks);
- `global`    one threshold over all layers on per-layer min-max normalised scores (so layers
              with large raw scores do not take everything);
- `hybrid`    global, but every layer keeps at least `min_keep` x its perlayer share.

Heads under GQA: a kv group (k/v slices plus its query heads) is skipped only whole, so head
scores are summed per group and groups are ranked (for MHA a group is one head).
"""

from __future__ import annotations

import math

import torch

from llmslim.core.errors import BadOptionError

ALLOCATIONS = ("perlayer", "global", "hybrid")


def minmax(scores: torch.Tensor) -> torch.Tensor:
    """Min-max normalise over the last dim (units of one layer): [..., U] -> [0, 1]."""
    scores = scores.float()
    lo = scores.amin(-1, keepdim=True)
    hi = scores.amax(-1, keepdim=True)
    return (scores - lo) / (hi - lo).clamp_min(1e-12)


def group_heads(scores: torch.Tensor, n_heads: int, n_kv: int) -> torch.Tensor:
    """[..., H] head scores -> [..., n_kv] kv-group scores (sum of the group's query heads)."""
    per = n_heads // n_kv
    return scores.reshape(*scores.shape[:-1], n_kv, per).sum(-1)


def n_keep(units: int, sparsity: float) -> int:
    """Units kept at `sparsity` (at least one)."""
    return max(1, units - int(math.floor(sparsity * units + 1e-9)))


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    if not 0.0 <= sparsity < 1.0:
        raise BadOptionError(f"{what} must be in [0, 1), got {sparsity}")
    return sparsity


def check_heads_skipped(head_sparsity: float, kv_groups: int, allocation: str = "perlayer", method: str = "shadow") -> None:
    """Refuse a --head-sparsity whose floored per-layer count skips no kv group (it would run dense
    attention while reporting head sparsity). Global and hybrid allocations share one budget over
    all layers, so any share above zero skips something there; dejavu decides each layer's heads
    alone, so its count is per layer whatever the allocation."""
    per_layer = allocation == "perlayer" or method == "dejavu"
    if head_sparsity > 0 and per_layer and n_keep(kv_groups, head_sparsity) == kv_groups:
        why = " (dejavu decides each layer's heads alone, whatever --allocation)" if allocation != "perlayer" else ""
        raise BadOptionError(f"--head-sparsity {head_sparsity:g} skips none of this model's {kv_groups} kv groups "
                             f"per layer{why}; {1 / kv_groups + 1e-3:.3f} or more skips one")


def select(scores: torch.Tensor, sparsity: float, allocation: str = "perlayer", min_keep: float = 0.5,
           skip_layers: tuple[int, ...] = ()) -> list[torch.Tensor | None]:
    """[L, U] scores -> per layer the sorted kept unit indices, or None where nothing is dropped.

    `skip_layers` stay dense (ShadowLLM cannot sparsify layer 0's heads: its feature is their output).
    """
    check_sparsity(sparsity)
    if allocation not in ALLOCATIONS:
        raise BadOptionError(f"unknown allocation {allocation!r}; choose from {', '.join(ALLOCATIONS)}")
    L, U = scores.shape
    if sparsity == 0:
        return [None] * L
    active = [i for i in range(L) if i not in skip_layers]
    keep: list[torch.Tensor | None] = [None] * L
    if allocation == "perlayer":
        k = n_keep(U, sparsity)
        top = scores[active].float().topk(k, dim=1).indices.sort(dim=1).values  # one call for every layer
        for row, i in enumerate(active):
            keep[i] = top[row]
        return keep
    norm = minmax(scores[active])
    budget = n_keep(U * len(active), sparsity)
    floor = 1 if allocation == "global" else max(1, int(min_keep * n_keep(U, sparsity)))
    # every layer's best `floor` units first, then the rest by the global threshold
    order = norm.argsort(dim=1, descending=True)
    chosen = torch.zeros_like(norm, dtype=torch.bool)
    chosen.scatter_(1, order[:, :floor], True)
    left = budget - int(chosen.sum())
    if left > 0:
        rest = norm.masked_fill(chosen, -1.0).flatten()
        chosen.view(-1)[rest.topk(left).indices] = True
    for row, i in enumerate(active):
        idx = chosen[row].nonzero().flatten()
        keep[i] = None if idx.numel() == U else idx
    return keep


def head_keep(scores: torch.Tensor, sparsity: float, n_heads: int, n_kv: int, allocation: str = "perlayer",
              min_keep: float = 0.5, skip_layers: tuple[int, ...] = ()) -> list[torch.Tensor | None]:
    """[L, H] head scores -> kept kv groups per layer (GQA-aware; MHA: groups are heads)."""
    return select(group_heads(scores.float(), n_heads, n_kv), sparsity, allocation, min_keep, skip_layers)


def unit_mask(keep: torch.Tensor | None, units: int) -> torch.Tensor:
    """Kept indices -> a 0/1 float vector."""
    m = torch.zeros(units, device=keep.device if keep is not None else None)
    if keep is None:
        m += 1
    else:
        m[keep] = 1
    return m


def fall_back(scores: torch.Tensor, keep: list, margin: float, threshold: float) -> tuple[list, list[dict]]:
    """The dense fallback where the predictor is unsure. Per layer with a mask, on min-max
    normalised scores: a dropped unit within `margin` of the keep boundary (the lowest kept
    score) runs after all; the layer's confidence is the share of its dropped units outside the
    margin, and a layer below `threshold` runs dense. Returns (keep lists, per-layer record:
    units, kept by the mask, run, added back, whether the fallback made it dense, confidence)."""
    units = scores.shape[1]
    if margin == 0 and threshold == 0:  # off: the masks as selected (no ties added back, no device syncs)
        return list(keep), [dense_record(units) if k is None else
                            {"units": units, "mask": k.numel(), "ran": k.numel(), "added": 0, "dense": False, "confidence": None}
                            for k in keep]
    out, record = [], []
    for i, k in enumerate(keep):
        if k is None:  # dense by design (no sparsity here, or layer 0's heads under shadow)
            out.append(None)
            record.append(dense_record(units))
            continue
        norm = minmax(scores[i])
        kept = torch.zeros(units, dtype=torch.bool, device=norm.device)
        kept[k.to(norm.device)] = True
        unsure = ~kept & (norm >= norm[kept].min() - margin)
        confidence = 1.0 - int(unsure.sum()) / max(1, units - k.numel())
        if confidence < threshold:
            out.append(None)
            record.append({"units": units, "mask": k.numel(), "ran": units, "added": units - k.numel(), "dense": True,
                           "confidence": confidence})
            continue
        final = (kept | unsure).nonzero().flatten().to(k.device) if unsure.any() else k
        out.append(final)
        record.append({"units": units, "mask": k.numel(), "ran": final.numel(), "added": final.numel() - k.numel(),
                       "dense": False, "confidence": confidence})
    return out, record


def dense_record(units: int) -> dict:
    """fall_back's record of a layer that runs dense by design (not by the fallback)."""
    return {"units": units, "mask": units, "ran": units, "added": 0, "dense": False, "confidence": None}


def summarize(records: list[dict]) -> dict:
    """What a run skipped, from the runner's records (one per decision): the share of FFN neurons
    and of kv groups that did not run (= the share of those matmuls' FLOPs skipped), the share
    run only because of the fallback, and the share of (position, layer) pairs the fallback made
    dense. Each record counts for the positions its mask ran in ("tokens"; 1 where a record was
    made outside a forward), so a prompt's decision weighs as many tokens as it covered."""
    out = {}
    for kind in ("neurons", "groups"):
        layers = [(layer, r.get("tokens", 1)) for r in records for layer in r[kind]]
        if not layers:
            continue
        units = sum(x["units"] * w for x, w in layers)
        out[f"{kind}_skipped"] = 1.0 - sum(x["ran"] * w for x, w in layers) / units
        out[f"{kind}_fallback_added"] = sum(x["added"] * w for x, w in layers) / units
        out[f"{kind}_fallback_dense_layers"] = sum(x["dense"] * w for x, w in layers) / sum(w for _, w in layers)
    return out
