"""Token-branching SFT (the paper's second method).

For a reference answer y (greedy, frozen model) and a position t in its first `head_ratio`:
pick an alternative token v ≠ y_t from the top-p nucleus of p_ref(· | x, y_<t), let the current
model continue greedily from x + y_<t + v, and compare the branch's length with the reference's
remaining length: a = +1 if the branch ends sooner, -1 if later; a tie (or neither finished
within the budget) gets `tie_advantage`: -1 as in the reference code (only a shorter branch is
rewarded), or 0 (no push either way; llmslim's earlier behaviour). The loss at t is

    (1 - λ1 - λ2)·a·CE(v) + λ1·KL(p_ref ‖ p_act) + λ2·KL(p_act ‖ p_ref)

with both KL terms computed from log-probabilities over the full vocabulary (the reference code
computed them on probabilities; that is not a divergence and is not reproduced here).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llmslim.core import distributed
from llmslim.core.device import peak_memory_mb
from llmslim.core.errors import BadOptionError
from llmslim.core.generate import generate
from llmslim.core.training import mixed_bf16
from llmslim.shorten.params import DEFAULT_MODULES, count_trainable, freeze_except, lora_config, parse_modules
from llmslim.shorten.reference import ReferenceSet

log = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    lam1: float = 0.01  # λ1 on KL(p_ref ‖ p_act) (paper: λ1 = λ2, e.g. 0.01)
    lam2: float = 0.01  # λ2 on KL(p_act ‖ p_ref)
    head_ratio: float = 0.5  # branch positions in the first half of each answer (paper: 0.5)
    top_p: float = 0.9  # nucleus of p_ref the alternative is drawn from (paper: 0.6 and 0.9)
    branches_per_answer: int = 4  # positions per answer whose p_ref is cached
    learning_rate: float = 1e-5
    steps: int = 100
    batch_size: int = 4  # branches per optimizer step
    train_modules: str = DEFAULT_MODULES
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    eval_every: int = 0
    save_every: int = 0
    max_grad_norm: float = 1.0
    seed: int = 0
    tie_advantage: int = -1  # the reference's: a branch that is not shorter is pushed away

    def validate(self) -> None:
        if self.lam1 < 0 or self.lam2 < 0 or self.lam1 + self.lam2 >= 1:
            raise BadOptionError(f"--lam1 and --lam2 must be >= 0 with lam1 + lam2 < 1, got {self.lam1}, {self.lam2}")
        if not 0 < self.head_ratio <= 1:
            raise BadOptionError(f"--head-ratio must be in (0, 1], got {self.head_ratio}")
        if not 0 < self.top_p <= 1:
            raise BadOptionError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.tie_advantage not in (-1, 0):
            raise BadOptionError(f"--tie-advantage must be -1 (the reference) or 0, got {self.tie_advantage}")
        if self.steps < 1 or self.batch_size < 1 or self.branches_per_answer < 1:
            raise BadOptionError("--max-steps, --batch-size and --branches must be >= 1")
        if self.learning_rate <= 0:
            raise BadOptionError("--lr must be > 0")

    def branch_settings(self) -> dict:
        return {"head_ratio": self.head_ratio, "per_answer": self.branches_per_answer, "seed": self.seed}


# ---------------------------------------------------------------- the loss
def kl_terms(logp_ref: torch.Tensor, logp_act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(p_ref ‖ p_act), KL(p_act ‖ p_ref)) over the last dim, from log-probabilities.
    Terms with zero probability contribute 0 (x log x → 0)."""
    p_ref, p_act = logp_ref.exp(), logp_act.exp()
    fwd = torch.where(p_ref > 0, p_ref * (logp_ref - logp_act), torch.zeros_like(p_ref)).sum(-1)
    rev = torch.where(p_act > 0, p_act * (logp_act - logp_ref), torch.zeros_like(p_act)).sum(-1)
    return fwd, rev


def branch_loss(logits: torch.Tensor, logp_ref: torch.Tensor, alt: torch.Tensor, advantage: torch.Tensor,
                lam1: float, lam2: float) -> tuple[torch.Tensor, dict]:
    """Mean over the batch of (1-λ1-λ2)·a·CE(alt) + λ1·KL(ref‖act) + λ2·KL(act‖ref).

    logits: (B, V) current model at the branch positions; logp_ref: (B, V); alt: (B,) token ids;
    advantage: (B,) in {-1, 0, +1}.
    """
    logp_act = torch.log_softmax(logits.float(), dim=-1)
    ce = -logp_act.gather(-1, alt.view(-1, 1)).squeeze(-1)
    fwd, rev = kl_terms(logp_ref.float(), logp_act)
    per = (1.0 - lam1 - lam2) * advantage.float() * ce + lam1 * fwd + lam2 * rev
    return per.mean(), {"ce": ce.mean().item(), "kl_ref_act": fwd.mean().item(), "kl_act_ref": rev.mean().item()}


def nucleus_alternatives(logp_ref: torch.Tensor, top_p: float, exclude: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the smallest set holding `top_p` of p_ref (the top token always in), minus
    `exclude`, with their renormalised probabilities."""
    probs = logp_ref.float().exp()
    sorted_p, order = probs.sort(descending=True)
    keep = (sorted_p.cumsum(0) - sorted_p) < top_p  # mass before this token is still below top_p
    ids, p = order[keep], sorted_p[keep]
    mask = ids != exclude
    ids, p = ids[mask], p[mask]
    return ids, (p / p.sum() if p.numel() else p)


# ---------------------------------------------------------------- one step's branches
@dataclass
class Branch:
    ref: int  # index into the reference set
    pos: int  # branch position t in the answer
    alt: int  # alternative token
    context: list[int]  # prompt + answer[:t]
    logp_ref: torch.Tensor  # (V,)
    ref_remaining: int  # len(answer) - t: tokens the reference still spends (EOS included)
    ref_finished: bool
    branch_len: int = 0
    advantage: int = 0
    tied: bool = False  # neither shorter nor longer: its advantage is the config's tie_advantage


def sample_branches(refs: ReferenceSet, n: int, top_p: float, rng: random.Random, tries: int = 20) -> list[Branch]:
    out = []
    pool = [i for i, pos in enumerate(refs.dists.positions) if pos]
    if not pool:
        raise BadOptionError("no reference answer has a branch position (all answers empty?)")
    for _ in range(n * tries):
        if len(out) == n:
            break
        i = rng.choice(pool)
        k = rng.randrange(len(refs.dists.positions[i]))
        t = refs.dists.positions[i][k]
        ref = refs.refs[i]
        if t >= len(ref.answer_ids):
            continue
        logp = refs.dists.logprobs[i][k].float()
        ids, p = nucleus_alternatives(logp, top_p, exclude=ref.answer_ids[t])
        if ids.numel() == 0:
            continue  # the reference token holds the whole nucleus: nothing to branch to
        alt = int(ids[int(torch.multinomial(p, 1, generator=torch.Generator().manual_seed(rng.randrange(2**31))))])
        out.append(Branch(i, t, alt, ref.prompt_ids + ref.answer_ids[:t], logp, len(ref.answer_ids) - t, ref.finished))
    return out


@torch.no_grad()
def score_branches(model, tokenizer, branches: list[Branch], stop_ids: set[int], tie_advantage: int = -1) -> None:
    """Greedy continuation after each alternative, only as far as needed to tell shorter from
    longer; sets branch_len (alt + continuation, EOS included) and the advantage."""
    if not branches:
        return
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs = [b.context + [b.alt] for b in branches]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    budget = max(b.ref_remaining for b in branches)  # enough to see whether a branch outlasts the reference
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=budget, do_sample=False,
                         pad_token_id=pad, eos_token_id=sorted(stop_ids), temperature=None, top_p=None, top_k=None)
    if was_training:
        model.train()
    for b, row in zip(branches, out[:, width:].tolist()):
        # each branch only as far as its own reference's rest: the batch runs to the longest rest,
        # and a branch that ends past its own would otherwise count as shorter than an unfinished
        # reference in one batch and tie in another (its label would depend on its neighbours)
        row = row[: b.ref_remaining]
        if b.alt in stop_ids:
            end = 0
        else:
            end = next((j + 1 for j, tok in enumerate(row) if tok in stop_ids), None)
        b.branch_len = 1 + end if end is not None else 1 + len(row)
        finished = end is not None
        if finished and (b.branch_len < b.ref_remaining or not b.ref_finished):
            b.advantage = 1
        elif b.ref_finished and b.branch_len > b.ref_remaining:
            b.advantage = -1
        else:
            b.advantage, b.tied = tie_advantage, True  # a tie, or neither finished within the budget


def _stop_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


def _context_logits(model, contexts: list[list[int]], pad: int) -> torch.Tensor:
    """Logits at the last position of each context (right-padded batch)."""
    device = next(model.parameters()).device
    width = max(len(c) for c in contexts)
    ids = torch.tensor([c + [pad] * (width - len(c)) for c in contexts], device=device)
    mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in contexts], device=device)
    logits = model(input_ids=ids, attention_mask=mask).logits
    last = torch.tensor([len(c) - 1 for c in contexts], device=device)
    return logits[torch.arange(len(contexts), device=device), last]


# ---------------------------------------------------------------- checkpoints
def _trainable_state(model) -> dict:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, model, optimizer, step: int, rng: random.Random, history: list) -> Path:
    from llmslim.core.outputs import atomic_dir

    target = Path(folder) / f"checkpoint-{step}"
    with atomic_dir(target, force=True) as tmp:
        torch.save({"step": step, "params": _trainable_state(model), "optimizer": optimizer.state_dict(),
                    "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "history": history}, tmp / "state.pt")
    return target


def latest_checkpoint(folder: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(folder)) if Path(folder).is_dir() else None
    return Path(found) if found else None


# ---------------------------------------------------------------- training
def _warnings(history: list[dict], nothing_run: bool) -> list[str]:
    steps = [h for h in history if "shorter_frac" in h]
    if nothing_run or not steps:
        return []
    if not any(h["shorter_frac"] > 0 or h["longer_frac"] > 0 for h in steps):
        return ["every branch tied the reference's length: only the KL terms trained"
                + (" and the ties' -1 (--tie-advantage)" if any(h.get("tie_frac") for h in steps) else "")]
    if not any(h["shorter_frac"] > 0 for h in steps):
        return ["no branch was ever shorter than the reference: the CE term only pushed alternatives down"]
    return []


def _resume(work_dir: Path, model, optimizer, rng: random.Random) -> tuple[list[dict], int, str]:
    """Load the latest checkpoint-N of work_dir into the model, optimizer and generators."""
    ckpt = latest_checkpoint(work_dir)
    if ckpt is None:
        raise BadOptionError(f"--resume: no checkpoint-N folder in {work_dir}")
    state = torch.load(ckpt / "state.pt", weights_only=False)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state["params"].items():
            named[n].copy_(v.to(named[n].device))
    optimizer.load_state_dict(state["optimizer"])
    rng.setstate(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    return state["history"], state["step"], str(ckpt)


def _train_step(model, trained, tokenizer, refs: ReferenceSet, cfg: SFTConfig, optimizer, params, rng: random.Random, stop,
                pad) -> dict:
    """One optimizer step on cfg.batch_size branches per process; returns the step's history row.
    `trained` is `model`, or under torchrun its DDP wrapper: the loss's forward goes through it so
    that backward averages the gradients over the processes. Every process draws the same
    batch_size x processes branches from the shared generator and takes every world-th one, so
    together they train on the branches one process would draw at that batch size."""
    device = next(model.parameters()).device
    drawn = sample_branches(refs, cfg.batch_size * distributed.world(), cfg.top_p, rng)
    # an equal share each (DDP averages the processes' gradients with equal weights); the same
    # draw in every process, so all of them stop here together when nothing is left
    drawn = drawn[: len(drawn) // distributed.world() * distributed.world()]
    if not drawn:
        raise BadOptionError(f"no branch candidates at --top-p {cfg.top_p}: the reference token fills every nucleus")
    branches = distributed.shard(drawn)
    # Weights stay fp32 (an AdamW step below 2^-8 of a bf16 weight rounds away); on a bf16 CUDA
    # card the forward passes compute in bf16 by autocast, as the Trainer does for rl.
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_bf16(device, next(model.parameters()).dtype)):
        score_branches(model, tokenizer, branches, stop, cfg.tie_advantage)
        logits = _context_logits(trained, [b.context for b in branches], pad)
    loss, parts = branch_loss(
        # renormalised: the cache holds float16 log-probs, whose exp sums to 1 only to ~1e-3
        logits, torch.log_softmax(torch.stack([b.logp_ref for b in branches]).float(), -1).to(device),
        torch.tensor([b.alt for b in branches], device=device),
        torch.tensor([b.advantage for b in branches], device=device), cfg.lam1, cfg.lam2,
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm).item()
    optimizer.step()
    n = len(branches)
    row = {"loss": loss.item(), **parts, "grad_norm": grad_norm,
           "shorter_frac": sum(b.advantage > 0 for b in branches) / n,
           "longer_frac": sum(b.advantage < 0 and not b.tied for b in branches) / n, "tie_frac": sum(b.tied for b in branches) / n,
           "branch_len": sum(b.branch_len for b in branches) / n, "ref_remaining": sum(b.ref_remaining for b in branches) / n}
    return _mean_over_processes(row)


def _mean_over_processes(row: dict) -> dict:
    """The step's statistics averaged over the processes (each holds the mean of its branches;
    the grad norm is the same everywhere, taken after DDP averaged the gradients)."""
    if distributed.world() == 1:
        return row
    values = distributed.sum_(torch.tensor(list(row.values()), dtype=torch.float64, device=distributed.reduce_device()))
    return {k: v / distributed.world() for k, v in zip(row, values.tolist())}


def train_sft(model, tokenizer, refs: ReferenceSet, cfg: SFTConfig, *, work_dir: Path, resume: bool = False,
              val_prompts: list[str] | None = None, val_limit: int = 128, progress=None) -> dict:
    cfg.validate()
    if refs.dists is None:
        raise BadOptionError("token-branching needs the reference distributions (build them with branch settings)")
    device = next(model.parameters()).device
    names = parse_modules(cfg.train_modules)
    if cfg.lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(model, names, cfg.lora_r, cfg.lora_alpha))
        trainable = {"modules": list(model.peft_config["default"].target_modules), "lora_r": cfg.lora_r, **count_trainable(model)}
    else:
        trainable = freeze_except(model, names)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    history, start, resumed_from = _resume(work_dir, model, optimizer, rng) if resume else ([], 0, None)
    stop = _stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trained = model
    if distributed.world() > 1:  # torch's DDP (made after --resume loaded the weights): backward averages the gradients
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    t0 = time.perf_counter()
    model.train()
    for step in range(start + 1, cfg.steps + 1):
        row = {"step": step, **_train_step(model, trained, tokenizer, refs, cfg, optimizer, params, rng, stop, pad)}
        history.append(row)
        if not distributed.is_main():  # one process validates and writes checkpoints
            continue
        if cfg.eval_every and val_prompts and step % cfg.eval_every == 0:
            model.eval()
            gens = generate(model, tokenizer, val_prompts, max_new_tokens=val_limit, batch_size=len(val_prompts))
            model.train()
            history.append({"step": step, "val_mean_length": sum(g.n_tokens for g in gens) / len(gens),
                            "val_finished": sum(g.finished for g in gens) / len(gens)})
        if cfg.save_every and step % cfg.save_every == 0:
            save_checkpoint(work_dir, model, optimizer, step, rng, history)
        if progress:
            progress(row)
    model.eval()
    return {
        "model": model,
        "history": history,
        "trainable": trainable,
        "warnings": _warnings(history, start >= cfg.steps),
        "train_s": time.perf_counter() - t0,
        "peak_memory_mb": peak_memory_mb(device),
        "resumed_from": resumed_from,
        "config": asdict(cfg),
    }
