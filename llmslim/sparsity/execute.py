"""Gathered execution: the work of dropped units is skipped, not multiplied by zero.

`Gather.apply(layer, neurons, groups)` swaps smaller weights into the layer's Linear modules
(heads with core.surgery, the code `llmslim prune` uses to cut a model for good): the kept rows of
gate/up (fc1 and its bias), the kept columns of down (fc2), and for attention the q/k/v rows and
o columns of the kept kv groups with all their query heads. Every matmul of the layer is then
smaller, in the prefill and in every decode step, and the KV cache holds only the kept kv heads.
`restore` puts the original Parameters back (nothing is copied back; the originals were never
touched). Only one set of slices lives at a time, so a model runs one input's masks at a time
(rows of a batch share them).

`masked(...)` is the reference: the same units zeroed by hooks on the dense model (their inputs
to down_proj / o_proj multiplied by 0), used to check that gathering changes nothing else.

`SparseRunner.input(...)` chooses the masks for one input while its first forward runs:

    static   one mask from the mean of the training traces' normalised scores (no per-input cost)
    shadow   after layer 0's attention: the ShadowLLM predictor on its output at `decide_at`
             (or on the context entering its o_proj, `--feature pre`) gives every layer's scores; all layers are gathered at once (layer 0's heads stay
             dense: they made the feature)
    dejavu   before each layer: that layer's own predictor on the layer's input at `decide_at`
    oracle   the input's true scores (a forward + backward on it first; an upper bound)

and keeps them for the calls that follow (decode steps) until the `with` block ends.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from llmslim.core.arch import adapter_for, text_config
from llmslim.core.errors import BadOptionError
from llmslim.core.surgery import keep_kv_groups
from llmslim.sparsity import masks as M

METHODS = ("dense", "static", "shadow", "dejavu", "oracle")
DECISIONS = ("prompt", "token")


class Gather:
    """Per-layer weight slicing with exact restore.

    FFN slices are written into buffers kept per layer and reused by every input (a fresh
    allocation per input cost 5-8x more on CPU: page faults), and down_proj is sliced from a
    transposed copy made once per layer, so kept neurons are contiguous rows there (a column
    gather of the [hidden, ffn] matrix was 20x slower for SmolLM2's shapes). Memory: the
    transposed copy (+1/3 of the FFN weights) and the slices ((1 - sparsity) x the FFN weights).
    `transpose_down=False` skips the copy and gathers columns."""

    def __init__(self, model: nn.Module, transpose_down: bool = True):
        self.model = model
        self.adapter = adapter_for(model)
        self.config = text_config(model.config)
        self.layers = self.adapter.decoder_layers(model)
        self.transpose_down = transpose_down
        self._saved: dict[int, list] = {}
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._down_t: dict[int, torch.Tensor] = {}
        # per sliced layer: which neuron each slot of the FFN slices holds, and the original
        # weights (update_ffn rewrites only the slots whose neuron changed)
        self._ffn_slices: dict[int, dict] = {}
        self.seconds = 0.0
        self.slots_updated = self.slots_rewritten = 0  # update_ffn's same-width calls: slots seen, slots rewritten
        self._stacked: dict | None = None  # update_all_ffn's one-tensor view of every layer's FFN slices
        self._stacked_sources: dict | None = None  # ...and of the original weights (built once)

    def _snapshot(self, i: int) -> list:
        layer = self.layers[i]
        ffn = self.adapter.ffn(layer, self.config)
        attn = self.adapter.attention(layer, self.config)
        linears = {id(l): l for l in [b.linear for b in ffn.inputs] + [ffn.output, attn.q.linear, attn.k.linear, attn.v.linear, attn.o]}
        state = [("linear", l, l.weight, l.bias, l.in_features, l.out_features) for l in linears.values()]
        for module, names in ((ffn.module, ("intermediate_size",)), (attn.module, ("num_heads", "num_key_value_heads"))):
            for name in names:
                if isinstance(getattr(module, name, None), int):
                    state.append(("attr", module, name, getattr(module, name)))
        return state

    def _buffer(self, key: tuple, shape: tuple, like: torch.Tensor, avoid: list = ()) -> torch.Tensor:
        """A contiguous `shape` view of a buffer kept under `key` and reused while it is big enough
        (allocating per input costs page faults); a fresh one where it shares storage with a
        tensor in `avoid` (the data about to be copied into it)."""
        n = math.prod(shape)
        buf = self._buffers.get(key)
        stale = buf is None or buf.numel() < n or buf.dtype != like.dtype
        if stale or any(x.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr() for x in avoid):
            buf = self._buffers[key] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)

    def _rows(self, key: tuple, src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """src[index] (rows) written into a reused buffer; a contiguous [k, cols] view."""
        out = self._buffer(key, (index.numel(), src.shape[1]), src)
        torch.index_select(src, 0, index, out=out)
        return out

    def _keep_ffn(self, i: int, ffn, keep: torch.Tensor) -> None:
        """Slice layer i's (whole) FFN to `keep`, slot j holding neuron keep[j]."""
        self._stacked = None
        keep = keep.to(ffn.output.weight.device)
        grouped: dict[int, tuple[nn.Linear, list]] = {}
        for block in ffn.inputs:  # a fused gate_up (phi3) is sliced once with both parts
            grouped.setdefault(id(block.linear), (block.linear, []))[1].append(block.offset)
        down = ffn.output
        self._ffn_slices[i] = {"slots": keep.clone(), "width": ffn.width, "module": ffn.module,
                               "inputs": [(lin, offsets, lin.weight, lin.bias, lin.out_features) for lin, offsets in grouped.values()],
                               "down": (down, down.weight, down.in_features)}
        for n, (lin, offsets) in enumerate(grouped.values()):
            index = torch.cat([keep + offset for offset in offsets])
            lin.weight = nn.Parameter(self._rows((i, "in", n), lin.weight.detach(), index), requires_grad=False)
            if lin.bias is not None:
                lin.bias = nn.Parameter(lin.bias.detach().index_select(0, index), requires_grad=False)
            lin.out_features = index.numel()
        if self.transpose_down:
            if i not in self._down_t:
                self._down_t[i] = down.weight.detach().t().contiguous()
            down.weight = nn.Parameter(self._rows((i, "down"), self._down_t[i], keep).t(), requires_grad=False)
        else:
            out = self._buffer((i, "down"), (down.weight.shape[0], keep.numel()), down.weight)
            torch.index_select(down.weight.detach(), 1, keep, out=out)
            down.weight = nn.Parameter(out, requires_grad=False)
        down.in_features = keep.numel()
        if hasattr(ffn.module, "intermediate_size"):
            ffn.module.intermediate_size = keep.numel()

    def apply(self, i: int, neurons: torch.Tensor | None = None, groups: torch.Tensor | None = None) -> None:
        """Layer i keeps only FFN `neurons` and kv `groups` (None: all of that part)."""
        t0 = time.perf_counter()
        self.restore(i)
        if neurons is None and groups is None:
            return
        self._saved[i] = self._snapshot(i)
        layer = self.layers[i]
        with torch.no_grad():
            if neurons is not None:
                self._keep_ffn(i, self.adapter.ffn(layer, self.config), torch.as_tensor(neurons, dtype=torch.long).sort().values)
            if groups is not None:
                attn = self.adapter.attention(layer, self.config)
                keep_kv_groups(attn, groups)
                # some forwards read head counts from the (shared) config (phi3 splits its fused
                # qkv by config.num_attention_heads): give this module its own shallow copy
                if getattr(attn.module, "config", None) is not None:
                    own = copy.copy(attn.module.config)
                    own.num_attention_heads, own.num_key_value_heads = attn.n_heads, attn.n_kv_heads
                    self._saved[i].append(("attr", attn.module, "config", attn.module.config))
                    attn.module.config = own
        self.seconds += time.perf_counter() - t0

    def update_all_ffn(self, neurons: list) -> None:
        """update_ffn for every layer, in one set of tensor ops across layers when every layer's
        FFN is sliced to the same width and keeps that width (the per-layer path costs ~15 small
        ops per layer, 0.5 ms each on SmolLM2, more than the rows it copies). The slices of all
        layers then live in one [layers, k, hidden] tensor per weight and are updated from a
        stacked copy of the original weights (made once: memory + the FFN weights, gate and up;
        down shares the transposed copy)."""
        t0 = time.perf_counter()
        stacked = self._stack(neurons)
        if stacked is None:
            for i, n in enumerate(neurons):
                self.update_ffn(i, n)  # counts its own time
            return
        with torch.no_grad():
            slots, held, k = stacked["slots"], stacked["held"], stacked["k"]
            keep = torch.stack([torch.as_tensor(n, dtype=torch.long) for n in neurons]).to(slots.device)
            wanted = torch.zeros_like(held).scatter_(1, keep, True)
            free = (~wanted.gather(1, slots)).nonzero()  # (layer, slot) whose neuron left, by layer
            added = (wanted & ~held).nonzero()  # (layer, neuron) that came in: as many per layer
            self.slots_updated += slots.numel()
            self.slots_rewritten += free.shape[0]
            if free.shape[0]:
                for buf, src, offsets in stacked["weights"]:
                    rows_per_layer, src_rows = buf.shape[1], src.shape[1]
                    for part, offset in enumerate(offsets):  # a fused gate_up: gate slots, then up slots
                        dst = free[:, 0] * rows_per_layer + part * k + free[:, 1]
                        buf.view(-1, buf.shape[2]).index_copy_(0, dst, src.view(-1, src.shape[2]).index_select(
                            0, added[:, 0] * src_rows + offset + added[:, 1]))
                slots[free[:, 0], free[:, 1]] = added[:, 1]
                stacked["held"] = wanted
        self.seconds += time.perf_counter() - t0

    def _stack(self, neurons: list) -> dict | None:
        """The stacked slices (built from the per-layer ones when missing), or None where the
        layers cannot share one tensor: a layer without an FFN slice, unequal widths or kept
        counts, biases on the FFN inputs (opt), or down_proj gathered by columns."""
        L = len(self.layers)
        sliced = [self._ffn_slices.get(i) for i in range(L)]
        if len(neurons) != L or any(n is None for n in neurons) or any(s is None for s in sliced) or not self.transpose_down:
            return None
        k, width = sliced[0]["slots"].numel(), sliced[0]["width"]
        if any(s["width"] != width or s["slots"].numel() != k for s in sliced) or any(len(n) != k for n in neurons):
            return None
        if any(bias is not None for s in sliced for _, _, _, bias, _ in s["inputs"]):
            return None
        if self._stacked is not None and self._stacked["k"] == k:
            return self._stacked
        if len({s["slots"].device for s in sliced}) > 1:  # layers spread over devices (device_map): per layer
            return None
        if self._stacked_sources is None:  # the original weights, one tensor per kind of weight
            self._stacked_sources = {
                "inputs": [torch.stack([s["inputs"][n][2].detach() for s in sliced]) for n in range(len(sliced[0]["inputs"]))],
                "down": torch.stack([self._down_t[i] for i in range(L)]),
            }
            for i in range(L):  # the transposed copies become views of the stacked one (no second copy)
                self._down_t[i] = self._stacked_sources["down"][i]
        weights = []
        for n, src in enumerate(self._stacked_sources["inputs"]):
            buf = self._stacked_buffer(("in", n), [s["inputs"][n][0].weight.detach() for s in sliced])
            for i, s in enumerate(sliced):
                s["inputs"][n][0].weight = nn.Parameter(buf[i], requires_grad=False)
            weights.append((buf, src, sliced[0]["inputs"][n][1]))
        down = self._stacked_buffer(("down",), [s["down"][0].weight.detach().t() for s in sliced])
        for i, s in enumerate(sliced):
            s["down"][0].weight = nn.Parameter(down[i].t(), requires_grad=False)
        weights.append((down, self._stacked_sources["down"], [0]))
        slots = torch.stack([s["slots"] for s in sliced])
        for i, s in enumerate(sliced):
            s["slots"] = slots[i]  # per-layer updates see (and keep) the same assignment
        held = torch.zeros(L, width, dtype=torch.bool, device=slots.device).scatter_(1, slots, True)
        self._stacked = {"k": k, "width": width, "slots": slots, "held": held, "weights": weights}
        return self._stacked

    def _stacked_buffer(self, key: tuple, slices: list) -> torch.Tensor:
        """The slices stacked into a buffer kept for the next input of the same shape (a fresh
        160 MB allocation per input on SmolLM2 cost ~110 ms in page faults, 7 ms per decode step)."""
        buf = self._buffer(("stacked", *key), (len(slices), *slices[0].shape), slices[0], avoid=slices)  # not its own views
        return torch.stack(slices, out=buf)

    def update_ffn(self, i: int, neurons: torch.Tensor | None) -> None:
        """Layer i's FFN now keeps `neurons` (None: all); its attention stays as it is. The path of
        per-token decisions: consecutive tokens keep mostly the same neurons, so only the slots
        whose neuron left are rewritten with the newcomers' rows (a full re-slice copies
        (1 - sparsity) of the FFN weights every token, more than the matmuls it saves)."""
        self._stacked = None  # its held-neuron masks would go stale
        if i not in self._saved:  # nothing sliced in this layer yet (apply counts its own time)
            self.apply(i, neurons, None)
            return
        t0 = time.perf_counter()
        with torch.no_grad():
            if neurons is None:
                self._restore_ffn(i)
            else:
                keep = torch.as_tensor(neurons, dtype=torch.long)
                sliced = self._ffn_slices.get(i)
                if sliced is None or sliced["slots"].numel() != keep.numel():  # first slice, or a fallback changed the width
                    self._restore_ffn(i)
                    self._keep_ffn(i, self.adapter.ffn(self.layers[i], self.config), keep.sort().values)
                else:
                    self._swap_ffn(i, sliced, keep.to(sliced["slots"].device))
        self.seconds += time.perf_counter() - t0

    def _swap_ffn(self, i: int, sliced: dict, keep: torch.Tensor) -> None:
        slots = sliced["slots"]
        wanted = torch.zeros(sliced["width"], dtype=torch.bool, device=keep.device)
        wanted[keep] = True
        held = torch.zeros_like(wanted)
        held[slots] = True
        free = (~wanted[slots]).nonzero().squeeze(1)  # slots whose neuron left
        self.slots_updated += slots.numel()
        self.slots_rewritten += free.numel()
        if free.numel() == 0:
            return
        added = (wanted & ~held).nonzero().squeeze(1)  # as many as left: the widths are equal
        k = slots.numel()
        for lin, offsets, weight, bias, _ in sliced["inputs"]:
            for part, offset in enumerate(offsets):  # a fused gate_up holds gate slots, then up slots
                lin.weight.data.index_copy_(0, free + part * k, weight.index_select(0, added + offset))
                if bias is not None:
                    lin.bias.data.index_copy_(0, free + part * k, bias.index_select(0, added + offset))
        down, weight, _ = sliced["down"]
        if self.transpose_down:  # down.weight is the transpose of [k, hidden] rows of the copy
            down.weight.data.t().index_copy_(0, free, self._down_t[i].index_select(0, added))
        else:
            down.weight.data.index_copy_(1, free, weight.index_select(1, added))
        slots[free] = added

    def _restore_ffn(self, i: int) -> None:
        """Layer i's FFN back to its own weights (its attention keeps its slices)."""
        self._stacked = None
        sliced = self._ffn_slices.pop(i, None)
        if sliced is None:
            return
        for lin, _, weight, bias, out_features in sliced["inputs"]:
            lin.weight, lin.out_features = weight, out_features
            if bias is not None:
                lin.bias = bias
        down, weight, in_features = sliced["down"]
        down.weight, down.in_features = weight, in_features
        if hasattr(sliced["module"], "intermediate_size"):
            sliced["module"].intermediate_size = sliced["width"]

    def restore(self, i: int) -> None:
        self._stacked = None
        self._ffn_slices.pop(i, None)
        for entry in self._saved.pop(i, []):
            if entry[0] == "linear":
                _, lin, weight, bias, fin, fout = entry
                lin.weight = weight
                if bias is not None:
                    lin.bias = bias
                lin.in_features, lin.out_features = fin, fout
            else:
                _, module, name, value = entry
                setattr(module, name, value)

    def restore_all(self) -> None:
        for i in list(self._saved):
            self.restore(i)


@contextmanager
def gathered(model: nn.Module, neurons: list, groups: list | None = None, transpose_down: bool = True):
    """Run the block with layer i keeping `neurons[i]` and kv `groups[i]` (None: dense part)."""
    g = Gather(model, transpose_down)
    groups = groups or [None] * len(g.layers)
    try:
        for i, (n, k) in enumerate(zip(neurons, groups)):
            g.apply(i, n, k)
        yield g
    finally:
        g.restore_all()


@contextmanager
def masked(model: nn.Module, neurons: list, groups: list | None = None):
    """The reference: dropped units zeroed at the inputs of down_proj / o_proj, weights untouched."""
    adapter = adapter_for(model)
    config = text_config(model.config)
    layers = adapter.decoder_layers(model)
    groups = groups or [None] * len(layers)
    handles = []

    def scale(mask):
        def hook(module, args):
            return (args[0] * mask.to(args[0].dtype).to(args[0].device),) + tuple(args[1:])
        return hook

    try:
        for layer, n, k in zip(layers, neurons, groups):
            ffn = adapter.ffn(layer, config)
            attn = adapter.attention(layer, config)
            if n is not None:
                handles.append(ffn.output.register_forward_pre_hook(scale(M.unit_mask(n, ffn.width))))
            if k is not None:
                per = attn.n_heads // attn.n_kv_heads
                head = M.unit_mask(k, attn.n_kv_heads).repeat_interleave(per).repeat_interleave(attn.head_dim)
                handles.append(attn.o.register_forward_pre_hook(scale(head)))
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class SparsityConfig:
    method: str = "shadow"
    ffn_sparsity: float = 0.5
    head_sparsity: float = 0.0
    allocation: str = "perlayer"
    min_keep: float = 0.5  # hybrid: each layer keeps at least this share of its perlayer count
    # the dense fallback for predicted masks (masks.fall_back): dropped units within this margin of
    # the keep boundary (normalised scores) run after all; a layer whose confidence (the share of
    # its dropped units outside the margin) is below the threshold runs dense. 0, 0: off
    fallback_margin: float = 0.0
    fallback_threshold: float = 0.0
    # "prompt": one FFN mask per input, chosen at its decision token and kept for every later
    # token; "token": shadow and dejavu choose a new FFN mask for every token after it (heads keep
    # the prompt's: a kv group skipped for one token would leave a hole in the KV cache)
    decide: str = "prompt"

    def __post_init__(self):
        if self.method not in METHODS:
            raise BadOptionError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        M.check_sparsity(self.ffn_sparsity, "--ffn-sparsity")
        M.check_sparsity(self.head_sparsity, "--head-sparsity")
        if self.allocation not in M.ALLOCATIONS:
            raise BadOptionError(f"unknown allocation {self.allocation!r}; choose from {', '.join(M.ALLOCATIONS)}")
        if self.decide not in DECISIONS:
            raise BadOptionError(f"unknown --decide {self.decide!r}; use {' or '.join(DECISIONS)}")
        if not 0.0 <= self.fallback_margin <= 1.0 or not 0.0 <= self.fallback_threshold <= 1.0:
            raise BadOptionError("--fallback-margin and --fallback-threshold must be in [0, 1]")


def _hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


class SparseRunner:
    """Chooses and applies masks per input (see the module docstring).

    static_scores: {"heads": [L, H], "neurons": [L, F]} (for static)
    shadow:        a ShadowPredictor (predictor.py); dejavu: a DejaVuPredictor
    """

    def __init__(self, model: nn.Module, cfg: SparsityConfig, *, static_scores: dict | None = None, shadow=None, dejavu=None):
        self.model, self.cfg = model, cfg
        self.gather = Gather(model)
        device = next(model.parameters()).device
        self.static_scores = static_scores
        self.shadow = shadow.to(device) if shadow is not None else None  # predictions stay on the model's device
        self.dejavu = dejavu.to(device) if dejavu is not None else None
        attn = self.gather.adapter.attention(self.gather.layers[0], self.gather.config)
        self.n_heads, self.n_kv = attn.n_heads, attn.n_kv_heads
        if cfg.method != "dense":
            M.check_heads_skipped(cfg.head_sparsity, self.n_kv, cfg.allocation, cfg.method)
        need = {"static": static_scores, "shadow": shadow, "dejavu": dejavu}.get(cfg.method, True)
        if need is None:
            raise BadOptionError(f"method {cfg.method!r} needs its {'traces' if cfg.method == 'static' else 'predictor'}")
        self.stats = {"predict_s": 0.0, "oracle_s": 0.0, "inputs": 0}
        self.last_keep: dict | None = None
        self.records: list[dict] = []  # per input: per layer, FFN neurons and kv groups run (masks.fall_back's record)

    def _count_predict(self, t0: float, gathered_before: float) -> None:
        """The decision's time without the weight gather inside it (counted by the Gather)."""
        self.stats["predict_s"] += time.perf_counter() - t0 - (self.gather.seconds - gathered_before)

    # ------------------------------------------------------------ scores -> keep lists
    def _fallback(self, scores: torch.Tensor | None, keep: list, units: int) -> tuple[list, list[dict]]:
        """Predicted masks get the configured fallback; static and oracle masks are recorded as they are."""
        predicted = self.cfg.method in ("shadow", "dejavu")
        if scores is None:
            return keep, [M.dense_record(units) for _ in keep]
        return M.fall_back(scores, keep, self.cfg.fallback_margin if predicted else 0.0,
                           self.cfg.fallback_threshold if predicted else 0.0)

    def _keeps(self, heads: torch.Tensor | None, neurons: torch.Tensor | None, skip_heads=()) -> tuple[list, list]:
        cfg = self.cfg
        L = len(self.gather.layers)
        nk = M.select(neurons, cfg.ffn_sparsity, cfg.allocation, cfg.min_keep) if neurons is not None and cfg.ffn_sparsity > 0 else [None] * L
        hk = (M.head_keep(heads, cfg.head_sparsity, self.n_heads, self.n_kv, cfg.allocation, cfg.min_keep, skip_heads)
              if heads is not None and cfg.head_sparsity > 0 else [None] * L)
        ffn_units = self.gather.adapter.ffn(self.gather.layers[0], self.gather.config).width
        nk, n_rec = self._fallback(neurons if cfg.ffn_sparsity > 0 else None, nk, ffn_units)
        groups = M.group_heads(heads.float(), self.n_heads, self.n_kv) if heads is not None and cfg.head_sparsity > 0 else None
        hk, h_rec = self._fallback(groups, hk, self.n_kv)
        self.records.append({"neurons": n_rec, "groups": h_rec})
        return nk, hk

    def _apply_all(self, nk: list, hk: list, layers=None) -> None:
        for i in layers if layers is not None else range(len(nk)):
            self.gather.apply(i, nk[i], hk[i])
        self.last_keep = {"neurons": nk, "groups": hk}

    def _token_masks(self, scores: torch.Tensor) -> list[torch.Tensor | None]:
        """shadow, per position: [P, L, F] predicted scores -> per layer a [P, F] 0/1 mask (None:
        dense), each position selected, fallen back and recorded as one input is."""
        P, L, F = scores.shape
        masks = [torch.ones(P, F, device=scores.device) for _ in range(L)]
        for p in range(P):
            nk, _ = self._keeps(None, scores[p])
            for i, k in enumerate(nk):
                if k is not None:
                    masks[i][p] = M.unit_mask(k, F).to(scores.device)
        return masks

    def _layer_token_masks(self, i: int, scores: torch.Tensor, records: list[dict]) -> torch.Tensor:
        """dejavu, per position: layer i's [P, F] predicted scores -> a [P, F] 0/1 mask; position p's
        record of layer i goes into records[p]."""
        P, F = scores.shape
        mask = torch.ones(P, F, device=scores.device)
        for p in range(P):
            k = M.select(scores[p][None], self.cfg.ffn_sparsity, "perlayer")[0]
            (k,), (rec,) = self._fallback(scores[p][None], [k], F)
            if k is not None:
                mask[p] = M.unit_mask(k, F).to(scores.device)
            records[p]["neurons"][i] = rec
        return mask

    def _mask_ffn_inputs(self, masks: dict[int, torch.Tensor], handles: list, start: int) -> None:
        """Per-position masks on the inputs of down_proj (positions >= start; earlier positions
        keep what ran for them): the quality path of token decisions, one forward."""
        for i, mask in masks.items():
            ffn = self.gather.adapter.ffn(self.gather.layers[i], self.gather.config)

            def scale(module, args, mask=mask):
                x = args[0]
                full = torch.ones(x.shape[-2], mask.shape[-1], dtype=x.dtype, device=x.device)
                full[start : start + mask.shape[0]] = mask.to(x.dtype)
                return (x * full,) + tuple(args[1:])

            handles.append(ffn.output.register_forward_pre_hook(scale))

    @contextmanager
    def input(self, decide_at: int = -1, oracle_scores: dict | None = None, per_position: bool = False,
              positions: int | None = None):
        """Masks for one input, chosen during the first forward inside the block, kept for the
        rest of it (decode steps), restored at its end. With `decide="token"` (shadow, dejavu),
        every later decode step (a forward of one token) chooses its own FFN mask and the
        weights are sliced again; `per_position=True` is the same decisions for a teacher-forced
        forward: the positions up to decide_at run the prompt's mask (gathered), each later one
        its own (masks on the down_proj inputs, nothing saved: for quality, not speed).
        `positions`: how many of a padded batch's positions are real, for the record (default:
        every position a forward runs)."""
        method = self.cfg.method
        token = self.cfg.decide == "token" and method in ("shadow", "dejavu")
        handles = []
        state = {"decided": False}
        self.stats["inputs"] += 1
        first = len(self.records)
        records_before = {}
        layer0 = self.gather.layers[0]
        # registered first, so they run before a method's own hooks on layer 0 (dejavu decides there)
        handles.append(layer0.register_forward_pre_hook(lambda m, a, k: records_before.update(n=len(self.records)), with_kwargs=True))
        handles.append(layer0.register_forward_hook(
            lambda m, a, k, out: self._count_positions(first, records_before["n"], positions or _hidden(a, k).shape[:2].numel()),
            with_kwargs=True))
        try:
            if method == "static":
                nk, hk = self._keeps(self.static_scores.get("heads"), self.static_scores.get("neurons"))
                self._apply_all(nk, hk)
            elif method == "oracle":
                if oracle_scores is None:
                    raise BadOptionError("the oracle method needs the input's true scores")
                nk, hk = self._keeps(oracle_scores.get("heads"), oracle_scores.get("neurons"))
                self._apply_all(nk, hk)
            elif method == "shadow":
                attn0 = self.gather.adapter.attention(self.gather.layers[0], self.gather.config)

                def decide(feature):
                    t0, gathered_before = time.perf_counter(), self.gather.seconds
                    if not state["decided"]:  # the prompt's decision (the first forward)
                        at = decide_at % feature.shape[1]
                        pred = self.shadow.predict(feature[0:1, at].detach())
                        nk, hk = self._keeps(pred.get("heads"), pred.get("neurons"), skip_heads=(0,))
                        state["decided"] = True
                        if token and per_position and feature.shape[0] > 1:
                            raise ValueError("per-position token decisions take one sequence at a time")
                        if token and per_position and feature.shape[1] > at + 1 and "neurons" in self.shadow.nets:
                            later = self.shadow.predict_rows(feature[0, at + 1 :].detach())["neurons"]  # [P, L, F]
                            self._apply_all([None] * len(nk), hk)  # whole FFN weights: the masks go on the down_proj inputs
                            self.last_keep["neurons"] = nk
                            prompt_groups = self.records[-1]["groups"]
                            self._mask_ffn_inputs(dict(enumerate(self._token_masks(later))), handles, at + 1)
                            for r in self.records[-later.shape[0]:]:  # the heads kept the prompt's decision
                                r["groups"] = prompt_groups
                            self._prompt_masks(nk, handles, at + 1)
                        else:
                            self._apply_all(nk, hk)
                    elif token and feature.shape[1] == 1 and "neurons" in self.shadow.nets:  # a decode step: its own mask
                        pred = self.shadow.predict(feature[0:1, -1].detach())
                        prompt_groups = self.records[-1]["groups"]
                        nk, _ = self._keeps(None, pred["neurons"])
                        self.records[-1]["groups"] = prompt_groups  # the heads keep the prompt's decision
                        self.gather.update_all_ffn(nk)
                        self.last_keep = {"neurons": nk, "groups": self.last_keep["groups"]}
                    self._count_predict(t0, gathered_before)

                if self.shadow.feature == "pre":  # the attention context entering o_proj (the reference's input)
                    handles.append(attn0.o.register_forward_pre_hook(lambda module, args: decide(args[0])))
                else:  # layer 0's attention output
                    handles.append(attn0.o.register_forward_hook(lambda module, args, out: decide(out)))
            elif method == "dejavu":
                L = len(self.gather.layers)
                keeps = {"neurons": [None] * L, "groups": [None] * L}
                ffn_units = self.gather.adapter.ffn(self.gather.layers[0], self.gather.config).width
                for i, layer in enumerate(self.gather.layers):
                    def before_layer(module, args, kwargs, i=i):
                        t0, gathered_before = time.perf_counter(), self.gather.seconds
                        hidden = _hidden(args, kwargs)
                        if i not in state:  # the prompt's decision
                            at = decide_at % hidden.shape[1]
                            nk, hk, record = self._dejavu_layer(i, hidden[0:1, at].detach(), ffn_units)
                            if i == 0:
                                state["record"] = {"neurons": [None] * L, "groups": [None] * L}
                                self.records.append(state["record"])
                            state["record"]["neurons"][i], state["record"]["groups"][i] = record
                            keeps["neurons"][i], keeps["groups"][i] = nk, hk
                            state[i] = True
                            if token and per_position and hidden.shape[0] > 1:
                                raise ValueError("per-position token decisions take one sequence at a time")
                            if token and per_position and hidden.shape[1] > at + 1 and "neurons" in self.dejavu.nets:
                                later = self.dejavu.predict_layer_rows(i, hidden[0, at + 1 :].detach())["neurons"]  # [P, F]
                                if i == 0:
                                    state["token_records"] = [{"neurons": [M.dense_record(ffn_units)] * L,
                                                               "groups": [M.dense_record(self.n_kv)] * L}
                                                              for _ in range(later.shape[0])]
                                    self.records += state["token_records"]
                                mask = self._layer_token_masks(i, later, state["token_records"])
                                for r in state["token_records"]:  # the heads keep the prompt's decision
                                    r["groups"][i] = record[1]
                                self.gather.apply(i, None, hk)
                                self._mask_ffn_inputs({i: mask}, handles, at + 1)
                                self._prompt_masks({i: nk}, handles, at + 1)
                            else:
                                self.gather.apply(i, nk, hk)
                        elif token and hidden.shape[1] == 1 and "neurons" in self.dejavu.nets:  # a decode step
                            if i == 0:  # one record per decode step, its heads the prompt's
                                state["step"] = {"neurons": [None] * L, "groups": list(state["record"]["groups"])}
                                self.records.append(state["step"])
                            nk, _, (n_rec, _) = self._dejavu_layer(i, hidden[0:1, -1].detach(), ffn_units, heads=False)
                            state["step"]["neurons"][i] = n_rec
                            self.gather.update_ffn(i, nk)
                            keeps["neurons"][i] = nk
                        self._count_predict(t0, gathered_before)

                    handles.append(layer.register_forward_pre_hook(before_layer, with_kwargs=True))
                self.last_keep = keeps
            yield self
        finally:
            for h in handles:
                h.remove()
            self.gather.restore_all()

    def _count_positions(self, first: int, before: int, positions: int) -> None:
        """Each record's "tokens": the positions its mask ran in, so summarize() weighs a mask by the
        work it governed. A forward that made several records is one sequence with per-position
        decisions (the prompt's record, then one per later position); one that made none ran under
        the input's latest record (static and oracle masks, prompt decisions while decoding)."""
        made = self.records[before:]
        if len(made) > 1:
            made[0]["tokens"] = made[0].get("tokens", 0) + positions - (len(made) - 1)
            for r in made[1:]:
                r["tokens"] = r.get("tokens", 0) + 1
        elif made or len(self.records) > first:
            target = self.records[-1]
            target["tokens"] = target.get("tokens", 0) + positions

    def _dejavu_layer(self, i: int, x: torch.Tensor, ffn_units: int, heads: bool = True):
        """Layer i's DejaVu decision from its input at one token: (neurons, groups, records)."""
        pred = self.dejavu.predict_layer(i, x)
        nk = hk = None
        n_rec, h_rec = M.dense_record(ffn_units), M.dense_record(self.n_kv)
        if pred.get("neurons") is not None and self.cfg.ffn_sparsity > 0:
            nk = M.select(pred["neurons"][None], self.cfg.ffn_sparsity, "perlayer")[0]
            (nk,), (n_rec,) = self._fallback(pred["neurons"][None], [nk], ffn_units)
        if heads and pred.get("heads") is not None and self.cfg.head_sparsity > 0:
            hk = M.head_keep(pred["heads"][None], self.cfg.head_sparsity, self.n_heads, self.n_kv, "perlayer")[0]
            groups = M.group_heads(pred["heads"][None].float(), self.n_heads, self.n_kv)
            (hk,), (h_rec,) = self._fallback(groups, [hk], self.n_kv)
        return nk, hk, (n_rec, h_rec)

    def _prompt_masks(self, keeps, handles: list, until: int) -> None:
        """Positions before `until` run the prompt's FFN mask (with token decisions in one forward,
        the weights stay whole and the prompt's mask is applied as a mask too)."""
        items = keeps.items() if isinstance(keeps, dict) else enumerate(keeps)
        ffn_units = self.gather.adapter.ffn(self.gather.layers[0], self.gather.config).width
        masks = {i: M.unit_mask(k, ffn_units)[None].expand(until, -1) for i, k in items if k is not None}
        self._mask_ffn_inputs(masks, handles, 0)
