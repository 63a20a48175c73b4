"""Where answers come from: a local HF model (batched generation through `core.generate`) or any
OpenAI-compatible HTTP endpoint (`/chat/completions`, stdlib urllib: no extra dependency).

Both take a list of prompts (each sent as one user turn) and return one `Completion` per prompt,
in order. `progress(n)` is called as answers arrive.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Protocol

from llmslim.core.errors import BadOptionError, LlmslimError

log = logging.getLogger(__name__)


@dataclass
class Completion:
    text: str
    n_tokens: int | None  # output tokens as the backend counts them (None: the endpoint gave no usage)
    finished: bool  # stopped by itself rather than at max_tokens
    prompt_tokens: int | None = None


class Backend(Protocol):
    name: str

    def complete(self, prompts: list[str], max_new_tokens: int, progress: Callable[[int], None] | None = None) -> list[Completion]:
        ...


# ---------------------------------------------------------------- local
@dataclass
class LocalBackend:
    model: object
    tokenizer: object
    name: str = "local"
    batch_size: int = 8
    chat: bool | None = None  # None: use the chat template when the tokenizer has one
    seed: int = 0

    def complete(self, prompts, max_new_tokens, progress=None):
        from llmslim.core.generate import generate, render_prompt

        gens = generate(
            self.model, self.tokenizer, list(prompts), max_new_tokens=max_new_tokens,
            batch_size=self.batch_size, chat=self.chat, seed=self.seed, progress=progress,
        )
        out = []
        for g in gens:
            rendered = render_prompt(self.tokenizer, g.prompt, self.chat)
            out.append(Completion(g.text, g.n_tokens, g.finished, len(self.tokenizer(rendered, add_special_tokens=False).input_ids)))
        return out


# ---------------------------------------------------------------- OpenAI-compatible HTTP
class HTTPError(LlmslimError):
    pass


RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class HTTPBackend:
    """POST {api_base}/chat/completions, `concurrency` requests at a time, each retried up to
    `retries` times on connection errors, timeouts, 408/409/429/5xx with exponential backoff
    (`backoff` * 2**attempt seconds, jittered, honouring Retry-After)."""

    api_base: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    retries: int = 3
    timeout: float = 60.0
    backoff: float = 1.0
    temperature: float = 0.0
    seed: int | None = 0
    name: str = "http"

    def __post_init__(self):
        if not self.api_base.startswith(("http://", "https://")):
            raise BadOptionError(f"--api-base must start with http:// or https://, got {self.api_base!r}")
        if self.concurrency < 1 or self.retries < 0 or self.timeout <= 0:
            raise BadOptionError("--concurrency must be >= 1, --retries >= 0 and --timeout > 0")
        self.api_base = self.api_base.rstrip("/")
        self._key = os.environ.get(self.api_key_env) if self.api_key_env else None
        self._jitter = random.Random(self.seed or 0)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"{self.api_base}/chat/completions"

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = None
        for attempt in range(self.retries + 1):
            wait = None
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", "replace")[:200]
                last = f"HTTP {err.code} from {self.url}: {detail}"
                if err.code not in RETRY_STATUS:
                    raise HTTPError(last) from None
                retry_after = err.headers.get("Retry-After") if err.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = float(retry_after)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                reason = getattr(err, "reason", err)
                last = f"cannot reach {self.url}: {reason}"
                if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                    # a busy local server with many requests in flight answers slower than an API
                    last = f"{self.url} did not answer within --timeout {self.timeout:g}s"
            except json.JSONDecodeError:
                last = f"{self.url} answered with something that is not JSON"
            if attempt < self.retries:
                with self._lock:
                    jitter = self._jitter.uniform(0.5, 1.0)
                delay = wait if wait is not None else self.backoff * (2**attempt) * jitter
                log.info("request failed (%s); retry %d/%d in %.1fs", last, attempt + 1, self.retries, delay)
                time.sleep(delay)
        raise HTTPError(f"{last} (after {self.retries + 1} attempts)")

    def _one(self, prompt: str, max_new_tokens: int) -> Completion:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_new_tokens, "temperature": self.temperature}
        if self.seed is not None:
            body["seed"] = self.seed
        out = self._post(body)
        try:
            choice = out["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise HTTPError(f"{self.url}: unexpected response shape: {json.dumps(out)[:200]}") from None
        usage = out.get("usage") or {}
        return Completion(text, usage.get("completion_tokens"), choice.get("finish_reason") != "length", usage.get("prompt_tokens"))

    def complete(self, prompts, max_new_tokens, progress=None):
        def run(prompt):
            result = self._one(prompt, max_new_tokens)
            if progress:
                progress(1)
            return result

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(run, prompts))
