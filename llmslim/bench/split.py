"""Where a forward pass spends its time: attention, FFN, lm_head and the rest.

Forward hooks on the modules the arch adapter names (each layer's attention and FFN module)
and on the output embedding take `perf_counter` before and after each call; a stack gives each
module its *exclusive* time (a module nested in another, as attention is in OPT's FFN "module",
the whole layer, is taken out of its parent). The model's own forward is timed the same way,
and `other` = total - attention - ffn - lm_head: embeddings, norms, rotary tables, residual
adds, masks and Python between modules. So the parts sum to the total by construction.

Hooks cost a few microseconds per call, so a split run is a separate, eager run (never
compiled) and its total is a little above the timed runs'. On CUDA each hook synchronizes.
The first model call of a run is the prefill, the rest are decode steps.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace

from torch import nn

from llmslim.bench.speed import SpeedConfig, gpus_to_sync, generate_once, prepare, synchronize

PARTS = ("attention", "ffn", "lm_head", "other")


def module_parts(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The modules timed as attention, ffn and lm_head, found through the arch adapter."""
    from llmslim.core.arch import adapter_for, text_config

    adapter = adapter_for(model)
    config = text_config(model.config)
    layers = adapter.decoder_layers(model)
    head = model.get_output_embeddings()
    return {
        "attention": [adapter.attention(layer, config).module for layer in layers],
        "ffn": [adapter.ffn(layer, config).module for layer in layers],
        "lm_head": [head] if head is not None else [],
    }


class _Timer:
    def __init__(self, device):
        self.device = device
        self.gpus = gpus_to_sync(device)  # listed once: the hooks synchronize inside the timed spans
        self.stack: list[list] = []  # [part, start, time spent in timed children]
        self.seconds = {"prefill": dict.fromkeys(PARTS, 0.0), "decode": dict.fromkeys(PARTS, 0.0)}
        self.totals = {"prefill": 0.0, "decode": 0.0}
        self.calls = {"prefill": 0, "decode": 0}
        self.phase = "prefill"

    def enter(self, part: str):
        def hook(module, args):
            synchronize(self.device, self.gpus)
            if part == "total":
                self.phase = "prefill" if self.calls["prefill"] == 0 else "decode"
            self.stack.append([part, time.perf_counter(), 0.0])

        return hook

    def leave(self, part: str):
        def hook(module, args, output):
            synchronize(self.device, self.gpus)
            name, start, children = self.stack.pop()
            assert name == part, f"hooks out of order: {name} closed by {part}"
            elapsed = time.perf_counter() - start
            if self.stack:
                self.stack[-1][2] += elapsed
            if part == "total":
                self.totals[self.phase] += elapsed
                self.calls[self.phase] += 1
            else:
                self.seconds[self.phase][part] += elapsed - children

        return hook


def _phase(seconds: dict, total: float, calls: int) -> dict:
    parts = {p: seconds[p] for p in PARTS if p != "other"}
    parts["other"] = total - sum(parts.values())
    return {
        "total_s": total,
        "calls": calls,
        "seconds": parts,
        "fraction": {p: (v / total if total else 0.0) for p, v in parts.items()},
        "ms_per_call": {p: 1000 * v / calls if calls else 0.0 for p, v in parts.items()},
    }


@contextmanager
def timed_parts(model: nn.Module, device):
    """Timing hooks on the model and its parts for the block; yields a function that returns,
    per phase (prefill, decode), seconds, fractions and ms per model call of each part."""
    timer = _Timer(device)
    handles = [model.register_forward_pre_hook(timer.enter("total")), model.register_forward_hook(timer.leave("total"))]
    for part, modules in module_parts(model).items():
        for module in modules:
            handles.append(module.register_forward_pre_hook(timer.enter(part)))
            handles.append(module.register_forward_hook(timer.leave(part)))
    try:
        yield lambda: {phase: _phase(timer.seconds[phase], timer.totals[phase], timer.calls[phase])
                       for phase in ("prefill", "decode")}
    finally:
        for h in handles:
            h.remove()


def time_split(model: nn.Module, tokenizer_or_vocab=None, cfg: SpeedConfig | None = None) -> dict:
    """One eager run with timing hooks; per phase (prefill, decode): seconds, fractions and ms
    per model call of attention, ffn, lm_head and other."""
    cfg = replace(cfg or SpeedConfig(), compile=False, cache="dynamic")
    session = prepare(model, tokenizer_or_vocab, cfg)
    with timed_parts(model, session.input_ids.device) as split:
        generate_once(session)
    return split()
