"""Evaluation: base vs shortened model on held-out prompts (default: the 80 MT-Bench first turns).

- length: mean output tokens (EOS included) of each model, greedy -> shortening % = 1 - short/base;
- offline proxy quality: cosine similarity (sentence embedding) of each shortened answer to the
  base model's answer to the same prompt; the base scores 1 against itself, so the proxy quality
  change is (mean cosine - 1) in %;
- checkable accuracy: for MT-Bench questions with a GPT-4 reference answer whose last line holds
  a number (math, some reasoning), whether that number appears in the answer;
- judge (optional): an OpenAI-compatible endpoint scoring every answer 1-10 with MT-Bench's own
  single-answer prompts (single-v1; single-math-v1 with the reference for math, reasoning and
  coding) and MT-Bench's `[[rating]]` parsing (score -1 when it finds none).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from llmslim.core.data import data_dir, read_records
from llmslim.core.errors import DataError, LlmslimError
from llmslim.core.generate import Generation, generate

log = logging.getLogger(__name__)

NEED_REF_CATS = ("math", "reasoning", "coding")  # as FastChat's gen_judgment.py
# FastChat llm_judge/common.py
ONE_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


@dataclass
class Question:
    prompt: str
    qid: str | int | None = None
    category: str | None = None
    reference: str | None = None  # a reference answer (MT-Bench: GPT-4's, for math/reasoning/coding)


def mt_bench_questions(root: Path | None = None) -> list[Question]:
    folder = (root or data_dir()) / "mt_bench"
    rows = read_records(folder / "question.jsonl")
    refs = {}
    ref_file = folder / "reference_answer_gpt-4.jsonl"
    if ref_file.is_file():
        for r in read_records(ref_file):
            refs[r["question_id"]] = r["choices"][0]["turns"][0]
    out = []
    for r in rows:
        ref = refs.get(r["question_id"])
        if ref is None and r.get("reference"):
            ref = r["reference"][0]
        out.append(Question(r["turns"][0], r["question_id"], r.get("category"), ref))
    return out


def questions_from(source: str | None, limit: int | None = None) -> list[Question]:
    """MT-Bench first turns for None/'mt-bench', else prompts from a records file."""
    from llmslim.core.data import read_prompts

    if source in (None, "mt-bench", "mt_bench"):
        qs = mt_bench_questions()
    else:
        qs = [Question(p, i) for i, p in enumerate(read_prompts(source))]
    return qs[:limit] if limit else qs


def answer(model, tokenizer, questions: list[Question], *, max_new_tokens: int, batch_size: int = 8, progress=None) -> list[Generation]:
    return generate(model, tokenizer, [q.prompt for q in questions], max_new_tokens=max_new_tokens,
                    batch_size=batch_size, do_sample=False, progress=progress)


def mean_tokens(gens: list[Generation]) -> float:
    return sum(g.n_tokens for g in gens) / max(len(gens), 1)


_NUM = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def reference_number(reference: str | None) -> str | None:
    """The last number of a reference answer, if it ends in one (math-style answers)."""
    if not reference:
        return None
    nums = _NUM.findall(reference.strip().splitlines()[-1]) or []
    return nums[-1].replace(",", "") if nums else None


def checkable_accuracy(questions: list[Question], texts: list[str]) -> dict:
    hits, n = 0, 0
    for q, text in zip(questions, texts):
        num = reference_number(q.reference) if q.category in ("math", "reasoning") else None
        if num is None:
            continue
        n += 1
        found = {x.replace(",", "") for x in _NUM.findall(text)}
        hits += num in found
    return {"n": n, "accuracy": hits / n if n else None}


def compare(questions: list[Question], base: list[Generation], short: list[Generation], embedder) -> dict:
    """Shortening and proxy quality of `short` against `base` answers to the same questions."""
    if len(base) != len(short):
        raise ValueError("base and shortened answers differ in number")
    cos = embedder.cosine([g.text for g in base], [g.text for g in short])
    base_len, short_len = mean_tokens(base), mean_tokens(short)
    return {
        "n": len(base),
        "base_mean_tokens": base_len,
        "short_mean_tokens": short_len,
        "shortening_pct": 100.0 * (1.0 - short_len / base_len) if base_len else 0.0,
        "base_finished": sum(g.finished for g in base) / max(len(base), 1),
        "short_finished": sum(g.finished for g in short) / max(len(short), 1),
        "proxy_similarity": cos.mean().item(),
        "proxy_quality_change_pct": 100.0 * (cos.mean().item() - 1.0),
        "base_checkable": checkable_accuracy(questions, [g.text for g in base]),
        "short_checkable": checkable_accuracy(questions, [g.text for g in short]),
        "per_question": [
            {"id": q.qid, "category": q.category, "base_tokens": b.n_tokens, "short_tokens": s.n_tokens, "similarity": c}
            for q, b, s, c in zip(questions, base, short, cos.tolist())
        ],
    }


# ---------------------------------------------------------------- MT-Bench judge
def judge_prompts(path: Path | None = None) -> dict[str, dict]:
    path = path or data_dir() / "mt_bench" / "judge_prompts.jsonl"
    if not Path(path).is_file():
        raise DataError(f"MT-Bench judge prompts not found: {path}")
    return {r["name"]: r for r in read_records(path)}


def judge_messages(q: Question, text: str, prompts: dict[str, dict]) -> list[dict]:
    """MT-Bench single-answer grading: single-math-v1 with the reference where it needs one."""
    if q.category in NEED_REF_CATS and q.reference is not None:
        tpl = prompts["single-math-v1"]
        user = tpl["prompt_template"].format(question=q.prompt, answer=text, ref_answer_1=q.reference)
    else:
        tpl = prompts["single-v1"]
        user = tpl["prompt_template"].format(question=q.prompt, answer=text)
    return [{"role": "system", "content": tpl["system_prompt"]}, {"role": "user", "content": user}]


def parse_rating(judgment: str) -> float:
    """MT-Bench's parsing: [[x]], else [x], else -1."""
    match = ONE_SCORE_PATTERN.search(judgment) or ONE_SCORE_PATTERN_BACKUP.search(judgment)
    return float(match.groups()[0]) if match else -1.0


@dataclass
class Judge:
    url: str  # base URL of an OpenAI-compatible API (…/v1) or the full …/chat/completions
    model: str  # no default: the endpoint's judge is named by the user
    api_key: str | None = None
    timeout: float = 120.0
    prompts: dict = field(default_factory=dict)
    retries: int = 3  # after the first try, on a network error, a timeout, HTTP 429 or 5xx
    backoff: float = 2.0  # seconds before the first retry, doubled each time

    def endpoint(self) -> str:
        u = self.url.rstrip("/")
        return u if u.endswith("/chat/completions") else u + "/chat/completions"

    def _post(self, body: dict) -> dict:
        req = urllib.request.Request(self.endpoint(), data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})})
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as err:
                if err.code != 429 and err.code < 500 or attempt == self.retries:
                    raise LlmslimError(f"judge at {self.endpoint()} failed: HTTP {err.code} {err.reason}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException, json.JSONDecodeError) as err:
                # URLError: sending; OSError / HTTPException: the reply cut (connection reset, incomplete read)
                if attempt == self.retries:
                    raise LlmslimError(f"judge at {self.endpoint()} failed after {self.retries + 1} tries: {err}") from None
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def score(self, q: Question, text: str) -> dict:
        body = {"model": self.model, "messages": judge_messages(q, text, self.prompts), "temperature": 0, "max_tokens": 2048}
        data = self._post(body)
        try:
            judgment = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LlmslimError(f"judge at {self.endpoint()} returned no choices[0].message.content") from None
        return {"rating": parse_rating(judgment), "judgment": judgment}


def judge_answers(judge: Judge, questions: list[Question], gens: list[Generation], progress=None,
                  journal: Path | None = None) -> dict:
    """Each answer's rating. With a `journal` (a jsonl file), every judgment is appended as it
    arrives and the ones already there (same judge, prompt and answer) are not asked again: a
    run that failed part-way is resumed by running it again with the same journal."""
    done = {}
    if journal is not None and Path(journal).is_file():
        for line in Path(journal).read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill mid-write
                continue
            done[entry["key"]] = entry["rating"]
    scores = []
    for q, g in zip(questions, gens):
        messages = judge_messages(q, g.text, judge.prompts)  # the exact request: template, reference and answer
        key = hashlib.sha256(json.dumps([judge.endpoint(), judge.model, messages]).encode()).hexdigest()[:20]
        if key not in done:
            done[key] = judge.score(q, g.text)["rating"]
            if journal is not None and done[key] >= 0:  # an unparsed judgment (-1) is asked again next time
                Path(journal).parent.mkdir(parents=True, exist_ok=True)
                with Path(journal).open("a") as f:
                    f.write(json.dumps({"key": key, "rating": done[key]}) + "\n")
        scores.append(done[key])
        if progress:
            progress(1)
    valid = [s for s in scores if s >= 0]
    return {"scores": scores, "mean": sum(valid) / len(valid) if valid else None, "unparsed": len(scores) - len(valid)}
