"""Predictors of per-layer unit scores, trained on traces (collect.py).

ShadowLLM (arXiv 2406.16635, Sec. 4): ONE predictor at the first layer. Its input is layer 0's
attention output at the decision token; its outputs are the scores of every layer's units,
each layer's targets min-max normalised (per example) to [0, 1]; loss MSE, AdamW with a
cosine learning-rate schedule. One network for heads and one for neurons. The neuron output
layer is layers x d_ffn wide (SmolLM2: 30 x 1536 = 46k outputs; Llama-1B: 16 x 8192 = 131k),
so the output head can be
    full       hidden -> L*U                     (the paper's)
    lowrank:R  hidden -> R -> L*U (no bias in the middle): far fewer parameters for R << hidden.

DejaVu (Liu et al. 2023, Sec. 3): a small low-rank predictor PER LAYER, on that layer's own
input (here the residual stream entering the layer at the decision token): d -> R -> U.

`evaluate` reports Spearman's rho between predicted and true scores on a held-out split, per
example and layer, averaged (what ShadowLLM plots), plus the MSE on the normalised targets.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from llmslim.core.data import read_torch_file
from llmslim.core.errors import BadOptionError, DataError
from llmslim.sparsity.collect import Traces
from llmslim.sparsity.masks import minmax

KINDS = ("neurons", "heads")


FEATURES = ("post", "pre")


@dataclass
class TrainConfig:
    hidden: int = 256  # the MLP's hidden width (ShadowLLM uses a small MLP)
    # output head: full | lowrank:R. On ~130 SmolLM2 traces the full head (hidden x 46k outputs)
    # did not beat the static mask's rank correlation (0.49 vs 0.49), lowrank:16 did (0.56)
    head: str = "lowrank:16"
    feature: str = "post"  # ShadowLLM's input: layer 0's attention output after o_proj, or "pre" (its context)
    dejavu_rank: int = 16  # DejaVu's per-layer low-rank predictor width (8-16 did best here)
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3  # AdamW, cosine schedule to 0
    weight_decay: float = 1e-2
    holdout: float = 0.2  # share of examples held out for Spearman's rho
    seed: int = 0

    def check(self) -> None:
        if self.hidden < 1 or self.epochs < 1 or self.batch_size < 1 or self.dejavu_rank < 1:
            raise BadOptionError("--hidden, --epochs, --batch-size and --dejavu-rank must be >= 1")
        if not 0.0 < self.holdout < 1.0:
            raise BadOptionError(f"--holdout must be in (0, 1), got {self.holdout}")
        head_rank(self.head)
        if self.feature not in FEATURES:
            raise BadOptionError(f"unknown --feature {self.feature!r}; use {' or '.join(FEATURES)}")


def head_rank(head: str) -> int | None:
    if head == "full":
        return None
    if head.startswith("lowrank:"):
        try:
            r = int(head.split(":", 1)[1])
        except ValueError:
            r = 0
        if r >= 1:
            return r
    raise BadOptionError(f"unknown output head {head!r}; use 'full' or 'lowrank:R' (R >= 1)")


class ShadowNet(nn.Module):
    """feature [B, d] -> scores [B, L, U]: Linear-ReLU-Linear-ReLU-(full | low-rank) head."""

    def __init__(self, d: int, layers: int, units: int, hidden: int, rank: int | None):
        super().__init__()
        self.layers, self.units = layers, units
        self.body = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        out = layers * units
        self.head = nn.Linear(hidden, out) if rank is None else nn.Sequential(nn.Linear(hidden, rank, bias=False), nn.Linear(rank, out))

    def forward(self, x):
        return self.head(self.body(x)).view(x.shape[0], self.layers, self.units)


class DejaVuNet(nn.Module):
    """layer inputs [B, L, d] -> scores [B, L, U]: per layer d -> R -> U (low rank)."""

    def __init__(self, d: int, layers: int, units: int, rank: int):
        super().__init__()
        self.down = nn.Parameter(torch.randn(layers, d, rank) / math.sqrt(d))
        self.up = nn.Parameter(torch.randn(layers, rank, units) / math.sqrt(rank))
        self.bias = nn.Parameter(torch.zeros(layers, units))

    def forward(self, x):  # x [B, L, d]
        return torch.einsum("bld,ldr,lru->blu", x, self.down, self.up) + self.bias

    def layer(self, i: int, x):  # x [B, d]
        return x @ self.down[i] @ self.up[i] + self.bias[i]


def _standardize(x: torch.Tensor):
    mean = x.mean(0, keepdim=True)
    std = x.std(0, keepdim=True).clamp_min(1e-6)
    return mean, std


def split(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n < 2:
        raise DataError(f"need at least 2 traced examples to hold some out, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = min(n - 1, max(1, int(round(holdout * n))))
    return perm[k:], perm[:k]


@torch.no_grad()
def start_at_mean(net: nn.Module, y: torch.Tensor) -> None:
    """Output bias = the mean training target (the static mask's scores), last weights zero:
    training starts exactly at the static prediction and learns the input-dependent part.
    With a few hundred traces and 10^4-10^5 outputs, a net started from random outputs ranks
    units worse than the static mean long into training (our choice, not the paper's)."""
    mean = y.mean(0)
    if isinstance(net, ShadowNet):
        last = net.head if isinstance(net.head, nn.Linear) else net.head[-1]
        last.bias.copy_(mean.flatten())
        last.weight.zero_()
    elif isinstance(net, DejaVuNet):
        net.bias.copy_(mean)
        net.up.zero_()


def _fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, progress=None) -> list[float]:
    start_at_mean(net, y)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(x.shape[0] / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    losses = []
    net.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for s in range(0, x.shape[0], cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            loss = nn.functional.mse_loss(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * idx.numel()
        losses.append(total / x.shape[0])
        if progress:
            progress(1)
    net.eval()
    return losses


def spearman(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Spearman's rho along the last dim ([..., U] -> [...]); ties get arbitrary order."""
    def ranks(v):
        return v.argsort(-1).argsort(-1).float()

    rp, rt = ranks(pred), ranks(true)
    rp = rp - rp.mean(-1, keepdim=True)
    rt = rt - rt.mean(-1, keepdim=True)
    return (rp * rt).sum(-1) / (rp.norm(dim=-1) * rt.norm(dim=-1)).clamp_min(1e-12)


class ShadowPredictor:
    """Trained ShadowNets for heads and/or neurons, with their input standardisation and where
    their input is read (`feature`: layer 0's attention output "post" o_proj, or "pre")."""

    def __init__(self, nets: dict[str, ShadowNet], mean: torch.Tensor, std: torch.Tensor, feature: str = "post"):
        self.nets, self.mean, self.std, self.feature = nets, mean, std, feature

    def to(self, device) -> "ShadowPredictor":
        """Move to the model's device: a prediction then needs no copy to the host."""
        return ShadowPredictor({k: net.to(device) for k, net in self.nets.items()}, self.mean.to(device), self.std.to(device),
                               self.feature)

    @torch.no_grad()
    def predict(self, feature: torch.Tensor) -> dict:
        return {k: v[0] for k, v in self.predict_rows(feature).items()}

    @torch.no_grad()
    def predict_rows(self, features: torch.Tensor) -> dict:
        """[N, d] features (N tokens) -> {kind: [N, L, U]} scores."""
        x = (features.to(self.mean.device, torch.float32) - self.mean) / self.std
        return {k: net(x) for k, net in self.nets.items()}


class DejaVuPredictor:
    def __init__(self, nets: dict[str, DejaVuNet], mean: torch.Tensor, std: torch.Tensor):
        self.nets, self.mean, self.std = nets, mean, std  # mean/std: [L, d]

    def to(self, device) -> "DejaVuPredictor":
        return DejaVuPredictor({k: net.to(device) for k, net in self.nets.items()}, self.mean.to(device), self.std.to(device))

    @torch.no_grad()
    def predict_layer(self, i: int, x: torch.Tensor) -> dict:
        return {k: v[0] for k, v in self.predict_layer_rows(i, x).items()}

    @torch.no_grad()
    def predict_layer_rows(self, i: int, x: torch.Tensor) -> dict:
        """[N, d] inputs of layer i (N tokens) -> {kind: [N, U]} scores."""
        x = (x.to(self.mean.device, torch.float32) - self.mean[i]) / self.std[i]
        return {k: net.layer(i, x) for k, net in self.nets.items()}


def targets(traces: Traces, kind: str, criterion: str) -> torch.Tensor:
    return minmax(traces.scores(kind, criterion).float())


def static_scores(traces: Traces, criterion: str, index: torch.Tensor | None = None) -> dict:
    """The static method's one mask: mean normalised scores over (training) examples."""
    sel = (lambda t: t if index is None else t[index])  # noqa: E731
    return {k: sel(targets(traces, k, criterion)).mean(0) for k in KINDS}


def train(traces: Traces, criterion: str, cfg: TrainConfig, kinds=KINDS, which=("shadow", "dejavu"), progress=None) -> dict:
    """Train ShadowLLM and DejaVu predictors for `kinds`; returns predictors, metrics, split."""
    cfg.check()
    n = len(traces)
    tr, te = split(n, cfg.holdout, cfg.seed)
    torch.manual_seed(cfg.seed)
    feat = traces.feature(cfg.feature).float()
    f_mean, f_std = _standardize(feat[tr])
    xs = (feat - f_mean) / f_std
    li = traces.layer_inputs.float()
    l_mean, l_std = li[tr].mean(0), li[tr].std(0).clamp_min(1e-6)
    xl = (li - l_mean) / l_std
    out = {"split": {"train": tr.tolist(), "test": te.tolist()}, "metrics": {}, "criterion": criterion, "config": asdict(cfg)}
    shadow_nets, dejavu_nets = {}, {}
    static = static_scores(traces, criterion, tr)
    for kind in kinds:
        y = targets(traces, kind, criterion)
        L, U = y.shape[1:]
        metrics = {}
        # static: the training mean as the prediction for every held-out example
        metrics["static"] = _judge(static[kind].expand(te.numel(), L, U), y[te])
        if "shadow" in which:
            net = ShadowNet(feat.shape[1], L, U, cfg.hidden, head_rank(cfg.head))
            t0 = time.perf_counter()
            losses = _fit(net, xs[tr], y[tr], cfg, progress)
            with torch.no_grad():
                metrics["shadow"] = _judge(net(xs[te]), y[te]) | {"train_mse": losses[-1], "train_s": time.perf_counter() - t0,
                                                                   "params": sum(p.numel() for p in net.parameters())}
            shadow_nets[kind] = net
        if "dejavu" in which:
            net = DejaVuNet(li.shape[2], L, U, cfg.dejavu_rank)
            t0 = time.perf_counter()
            losses = _fit(net, xl[tr], y[tr], cfg, progress)
            with torch.no_grad():
                metrics["dejavu"] = _judge(net(xl[te]), y[te]) | {"train_mse": losses[-1], "train_s": time.perf_counter() - t0,
                                                                   "params": sum(p.numel() for p in net.parameters())}
            dejavu_nets[kind] = net
        out["metrics"][kind] = metrics
    out["shadow"] = ShadowPredictor(shadow_nets, f_mean, f_std, cfg.feature) if shadow_nets else None
    out["dejavu"] = DejaVuPredictor(dejavu_nets, l_mean, l_std) if dejavu_nets else None
    out["static"] = static
    return out


def _judge(pred: torch.Tensor, true: torch.Tensor) -> dict:
    rho = spearman(pred, true)  # [N, L]
    return {"spearman": rho.mean().item(), "spearman_per_layer": rho.mean(0).tolist(),
            "mse": nn.functional.mse_loss(pred, true).item()}


# ---------------------------------------------------------------- saving
PRED_FILE = "predictors.pt"


def save(result: dict, traces_meta: dict, folder) -> None:
    from pathlib import Path

    blob = {"criterion": result["criterion"], "config": result["config"], "meta": traces_meta, "static": result["static"],
            "split": result["split"]}
    if result["shadow"] is not None:
        s = result["shadow"]
        blob["shadow"] = {"mean": s.mean, "std": s.std, "nets": {k: n.state_dict() for k, n in s.nets.items()},
                          "shapes": {k: [n.layers, n.units] for k, n in s.nets.items()}}
    if result["dejavu"] is not None:
        d = result["dejavu"]
        blob["dejavu"] = {"mean": d.mean, "std": d.std, "nets": {k: n.state_dict() for k, n in d.nets.items()}}
    torch.save(blob, Path(folder) / PRED_FILE)


def load(folder) -> dict:
    from pathlib import Path

    path = Path(folder)
    path = path / PRED_FILE if path.is_dir() else path
    blob = read_torch_file(path, missing=f"no predictors at {path} (run `llmslim sparsity train ... --out DIR` first)",
                           unreadable=f"{path}: not a predictors file")
    cfg = blob["config"]
    out = {"criterion": blob["criterion"], "config": cfg, "meta": blob["meta"], "static": blob["static"], "shadow": None, "dejavu": None}
    if "shadow" in blob:
        nets = {}
        for k, sd in blob["shadow"]["nets"].items():
            L, U = blob["shadow"]["shapes"][k]
            net = ShadowNet(blob["shadow"]["mean"].shape[1], L, U, cfg["hidden"], head_rank(cfg["head"]))
            net.load_state_dict(sd)
            nets[k] = net.eval()
        out["shadow"] = ShadowPredictor(nets, blob["shadow"]["mean"], blob["shadow"]["std"], cfg.get("feature", "post"))
    if "dejavu" in blob:
        nets = {}
        for k, sd in blob["dejavu"]["nets"].items():
            L, d, r = sd["down"].shape
            net = DejaVuNet(d, L, sd["up"].shape[2], r)
            net.load_state_dict(sd)
            nets[k] = net.eval()
        out["dejavu"] = DejaVuPredictor(nets, blob["dejavu"]["mean"], blob["dejavu"]["std"])
    return out


def check_model(pred: dict, model, where) -> None:
    """Refuse predictors trained on another model's traces: their scores rank another model's
    units (a fingerprint of the config and FFN weights, recorded when the traces were collected)."""
    from llmslim.core.arch import model_fingerprint
    from llmslim.core.errors import DataError

    saved = pred["meta"].get("fingerprint")
    if saved is None:
        raise DataError(f"{where}: the predictors record no model fingerprint (made by an older llmslim); "
                        f"collect and train them again")
    if saved != model_fingerprint(model):
        raise DataError(f"{where}: these predictors were trained on another model's traces "
                        f"({pred['meta'].get('model', 'unknown')}; fingerprint mismatch)")
