"""gpt-4 (cl100k_base) counts where the BPE file is available offline; a clear 'unavailable' otherwise."""

import pytest

from llmslim.budget import counting
from llmslim.budget.counting import UNAVAILABLE, Counter


def test_gpt4_count_is_cl100k_when_available():
    enc, source = counting.gpt4_encoding()
    if enc is None:
        pytest.skip(f"cl100k_base not available offline here: {source}")
    c = Counter(None)
    # known cl100k_base encodings: 'hello world' is 2 tokens, ' 1234' splits digits in runs of 3
    assert enc.encode("hello world") == [15339, 1917]
    assert c.gpt4_tokens("hello world") == 2 and c.model_tokens("hello world") is None


def test_unavailable_is_reported_not_raised(monkeypatch):
    import tiktoken
    import tiktoken.registry

    monkeypatch.setattr(tiktoken.registry, "list_encoding_names", lambda: ["gpt2"])

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "encoding_for_model", offline)
    c = Counter(None)
    assert not c.gpt4_available and c.gpt4_source == UNAVAILABLE
    assert c.gpt4_tokens("anything") is None
