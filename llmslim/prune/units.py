"""What a prunable *unit* is, per pruning target, so calibration, scores and surgery share one loop.

- `ffn`: a FFN neuron j = row j of every input projection + column j of the output projection.
  Its group of weights: [gate row j, up row j, down column j] (3 x hidden values).
- `attn`: a kv group g (GQA-aware: a kv head goes with all the query heads that read it) =
  the q rows of its query heads, its k and v rows, and the o_proj columns of its query heads.
  Its group of weights: [q rows, k rows, v rows, o columns transposed], flattened.

Both expose the same small interface: the weight matrices to score, the per-unit weight group of
any per-weight quantity, the output projection whose input channels carry the unit's activation
(for Wanda-sp / FLAP), and the surgery that keeps a subset of units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmslim.core.arch import Attention, FFN, adapter_for, text_config
from llmslim.core.errors import BadOptionError
from llmslim.core.surgery import keep_ffn_neurons, keep_kv_groups

TARGETS = ("ffn", "attn")


@dataclass
class FFNUnits:
    part: FFN

    @property
    def count(self) -> int:
        return self.part.width

    @property
    def channels_per_unit(self) -> int:
        return 1

    def linears(self) -> list[nn.Linear]:
        return list({id(b.linear): b.linear for b in self.part.inputs}.values()) + [self.part.output]

    @property
    def output(self) -> nn.Linear:
        return self.part.output

    def part_sizes(self, hidden: int) -> list[int]:
        return [hidden] * (len(self.part.inputs) + 1)

    def group(self, per_linear: dict[int, torch.Tensor]) -> torch.Tensor:
        """[units, values]: row j = [input rows j ..., output column j] of a per-weight tensor."""
        w = self.part.width
        parts = [per_linear[id(b.linear)][b.offset : b.offset + w] for b in self.part.inputs]
        parts.append(per_linear[id(self.part.output)].T)
        return torch.cat(parts, dim=1)

    def keep(self, index: torch.Tensor) -> None:
        keep_ffn_neurons(self.part, index)


@dataclass
class HeadUnits:
    part: Attention

    @property
    def per_group(self) -> int:
        return self.part.n_heads // self.part.n_kv_heads

    @property
    def count(self) -> int:
        return self.part.n_kv_heads

    @property
    def channels_per_unit(self) -> int:
        return self.per_group * self.part.head_dim

    def linears(self) -> list[nn.Linear]:
        blocks = [self.part.q, self.part.k, self.part.v]
        return list({id(b.linear): b.linear for b in blocks}.values()) + [self.part.o]

    @property
    def output(self) -> nn.Linear:
        return self.part.o

    def part_sizes(self, hidden: int) -> list[int]:
        hd, g = self.part.head_dim, self.per_group
        return [g * hd * hidden, hd * hidden, hd * hidden, g * hd * hidden]

    def group(self, per_linear: dict[int, torch.Tensor]) -> torch.Tensor:
        """[kv groups, values]: row g = q rows of its heads, k rows, v rows, o columns (transposed)."""
        a, n = self.part, self.part.n_kv_heads
        q_rows = self.channels_per_unit
        def rows(block, per):
            return per_linear[id(block.linear)][block.offset : block.offset + n * per].reshape(n, -1)
        o = per_linear[id(a.o)].T.reshape(n, -1)  # o columns of group g are channels [g*q_rows, (g+1)*q_rows)
        return torch.cat([rows(a.q, q_rows), rows(a.k, a.head_dim), rows(a.v, a.head_dim), o], dim=1)

    def keep(self, index: torch.Tensor) -> None:
        keep_kv_groups(self.part, index)


def layer_units(model, target: str) -> list[FFNUnits | HeadUnits]:
    if target not in TARGETS:
        raise BadOptionError(f"unknown --target {target!r}; use {' or '.join(TARGETS)}")
    adapter = adapter_for(model)
    config = text_config(model.config)
    layers = adapter.decoder_layers(model)
    if target == "ffn":
        return [FFNUnits(adapter.ffn(layer, config)) for layer in layers]
    return [HeadUnits(adapter.attention(layer, config)) for layer in layers]


def weight_groups(units: FFNUnits | HeadUnits) -> torch.Tensor:
    return units.group({id(lin): lin.weight.detach() for lin in units.linears()})
