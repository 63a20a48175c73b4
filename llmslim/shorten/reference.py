"""Reference answers: the frozen input model answers every training prompt once (greedy, chat
template applied). Answers, token ids and counts are cached to disk, and for token-branching SFT
also the reference's full next-token log-distributions at a few seeded positions in the head of
each answer, so training and evaluation never regenerate them.

Cache layout (one folder per model + prompts + settings, keyed by a hash):
    refs.jsonl   {prompt, text, n_tokens, finished, prompt_ids, answer_ids}
    dists.pt     {"positions": [[int]], "logprobs": [float16 tensor (n_pos, vocab)]}  (SFT only)
    meta.json    what the key was made of
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from llmslim.core.generate import generate, render_prompt
from llmslim.core.outputs import atomic_dir

log = logging.getLogger(__name__)


@dataclass
class Reference:
    prompt: str
    text: str
    n_tokens: int  # answer tokens including the closing EOS, as core.generate counts them
    finished: bool
    prompt_ids: list[int] = field(default_factory=list)  # the chat-rendered prompt
    answer_ids: list[int] = field(default_factory=list)  # the answer, EOS included when finished


@dataclass
class BranchDists:
    """Reference next-token log-probabilities at sampled positions of each answer's head."""

    positions: list[list[int]]  # per reference: positions p (0-based into answer_ids)
    logprobs: list[torch.Tensor]  # per reference: (len(positions), vocab) float16 log p_ref(. | prompt, answer[:p])


@dataclass
class ReferenceSet:
    refs: list[Reference]
    dists: BranchDists | None = None
    folder: Path | None = None

    @property
    def mean_tokens(self) -> float:
        return sum(r.n_tokens for r in self.refs) / max(len(self.refs), 1)

    @property
    def max_tokens(self) -> int:
        return max((r.n_tokens for r in self.refs), default=0)

    @property
    def finished_frac(self) -> float:
        return sum(r.finished for r in self.refs) / max(len(self.refs), 1)


CACHE_VERSION = 2  # 2: answer ids as generated (1 re-encoded them from the text)


def cache_key(model_id: str, prompts: list[str], max_new_tokens: int, chat: bool | None, extra: dict | None = None) -> str:
    blob = json.dumps({"model": model_id, "prompts": prompts, "max_new_tokens": max_new_tokens, "chat": chat,
                       "version": CACHE_VERSION, **(extra or {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _prompt_ids(tokenizer, prompt: str, chat: bool | None) -> list[int]:
    text = render_prompt(tokenizer, prompt, chat)
    templated = chat or (chat is None and bool(tokenizer.chat_template))
    return tokenizer(text, add_special_tokens=not templated).input_ids


def generate_references(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int = 8,
                        chat: bool | None = None, progress=None) -> list[Reference]:
    """Greedy answers of the frozen model, with the token ids as generated (EOS included when it
    finished): re-encoding the decoded text can give other ids (another merge of the same
    characters), and branching SFT must branch on the tokens the model actually produced."""
    gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat,
                    do_sample=False, progress=progress)
    return [Reference(g.prompt, g.text, g.n_tokens, g.finished, _prompt_ids(tokenizer, g.prompt, chat), list(g.ids))
            for g in gens]


@torch.no_grad()
def branch_distributions(model, refs: list[Reference], *, head_ratio: float, per_answer: int, seed: int,
                         progress=None) -> BranchDists:
    """Log p_ref at `per_answer` seeded positions in the first `head_ratio` of each answer
    (one forward pass per answer)."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    positions, logprobs = [], []
    for ref in refs:
        head = max(1, int(len(ref.answer_ids) * head_ratio)) if ref.answer_ids else 0
        if head == 0:
            positions.append([])
            logprobs.append(torch.zeros(0, 1, dtype=torch.float16))
            if progress:
                progress(1)
            continue
        k = min(per_answer, head)
        pos = sorted(torch.randperm(head, generator=gen)[:k].tolist())
        ids = torch.tensor([ref.prompt_ids + ref.answer_ids], device=device)
        logits = model(input_ids=ids).logits[0].float()
        start = len(ref.prompt_ids) - 1  # logits at t predict token t+1
        lp = torch.log_softmax(logits[[start + p for p in pos]], dim=-1)
        positions.append(pos)
        logprobs.append(lp.to(torch.float16).cpu())
        if progress:
            progress(1)
    return BranchDists(positions, logprobs)


def save(folder: Path, refs: list[Reference], dists: BranchDists | None, meta: dict, force: bool = True) -> None:
    with atomic_dir(folder, force=force) as tmp:
        with (tmp / "refs.jsonl").open("w", encoding="utf-8") as f:
            for r in refs:
                f.write(json.dumps(asdict(r)) + "\n")
        if dists is not None:
            torch.save({"positions": dists.positions, "logprobs": dists.logprobs}, tmp / "dists.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def load(folder: Path, need_dists: bool) -> ReferenceSet | None:
    path = Path(folder)
    if not (path / "refs.jsonl").is_file() or (need_dists and not (path / "dists.pt").is_file()):
        return None
    refs = [Reference(**json.loads(line)) for line in (path / "refs.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    dists = None
    if (path / "dists.pt").is_file() and need_dists:
        raw = torch.load(path / "dists.pt")
        dists = BranchDists(raw["positions"], raw["logprobs"])
    return ReferenceSet(refs, dists, path)


def get_references(model, tokenizer, prompts: list[str], *, model_id: str, cache_root: Path, max_new_tokens: int,
                   batch_size: int = 8, chat: bool | None = None, branch: dict | None = None, progress=None,
                   regenerate: bool = False) -> ReferenceSet:
    """Load the cached reference set for these settings, or build and cache it.

    `branch` = {"head_ratio", "per_answer", "seed"} also caches the SFT branch distributions.
    """
    key = cache_key(model_id, prompts, max_new_tokens, chat)
    folder = Path(cache_root) / f"refs-{key}"
    dist_key = None
    if branch is not None:
        dist_key = cache_key(model_id, prompts, max_new_tokens, chat, {"branch": branch})
    cached = None if regenerate else load(folder, need_dists=False)
    if cached is not None and branch is not None:
        meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else {}
        if meta.get("dist_key") == dist_key and (folder / "dists.pt").is_file():
            cached = load(folder, need_dists=True)
        else:
            log.info("computing branch distributions for %d cached references", len(cached.refs))
            dists = branch_distributions(model, cached.refs, progress=progress, **branch)
            meta = {**meta, "dist_key": dist_key, "branch": branch}
            save(folder, cached.refs, dists, meta)
            cached = ReferenceSet(cached.refs, dists, folder)
    if cached is not None:
        log.info("reference answers from the cache %s", folder)
        return cached
    log.info("generating %d reference answers (greedy, once) into %s", len(prompts), folder)
    refs = generate_references(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               chat=chat, progress=progress)
    dists = branch_distributions(model, refs, progress=None, **branch) if branch is not None else None
    meta = {"model": model_id, "n": len(prompts), "max_new_tokens": max_new_tokens, "chat": chat, "key": key,
            "dist_key": dist_key, "branch": branch}
    save(folder, refs, dists, meta)
    return ReferenceSet(refs, dists, folder)
