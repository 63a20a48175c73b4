"""Perplexity: the Wanda/SparseGPT protocol, the strided one, and their edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from llmslim.core.errors import BadOptionError, DataError
from llmslim.eval.perplexity import perplexity, windows


def test_non_overlapping_windows_drop_the_remainder():
    assert windows(10, 4) == [(0, 4, 3), (4, 8, 3)]
    assert windows(3, 4) == []


@pytest.mark.parametrize("n,seqlen,stride", [(10, 4, 2), (11, 4, 3), (5, 8, 2), (9, 3, 1)])
def test_strided_windows_score_every_token_but_the_first_once(n, seqlen, stride):
    spans = windows(n, seqlen, stride)
    scored = [t for b, e, k in spans for t in range(e - k, e)]
    assert sorted(scored) == list(range(1, n))
    assert all(e - b <= seqlen for b, e, _ in spans)


def test_stride_equal_to_seqlen_is_the_guide_without_overlap():
    # as in the transformers guide, a window's first token has no context and is not scored;
    # unlike the default protocol, the shorter tail window is kept
    assert windows(10, 4, 4) == [(0, 4, 3), (4, 8, 3), (8, 10, 1)]


@pytest.fixture(scope="module")
def corpus(fake_data):
    return (fake_data / "wikitext2" / "wiki.test.raw").read_text().replace("\r\n", "\n")


def _wanda(model, ids, seqlen):
    """Wanda's lib/eval.py eval_ppl_wikitext, batch of one."""
    nsamples = ids.numel() // seqlen
    nlls = []
    for i in range(nsamples):
        inputs = ids[i * seqlen : (i + 1) * seqlen][None]
        logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], inputs[0, 1:])
        nlls.append(loss.float() * seqlen)
    return torch.exp(torch.stack(nlls).sum() / (nsamples * seqlen)).item()


def _hf_guide(model, ids, seqlen, stride):
    """transformers docs, "Perplexity of fixed-length models" (sliding window)."""
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, ids.numel(), stride):
        end = min(begin + seqlen, ids.numel())
        trg_len = end - prev_end
        input_ids = ids[begin:end][None]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        loss = model(input_ids, labels=target_ids).loss
        valid = (target_ids != -100).sum().item() - 1  # labels are shifted inside the model
        nll_sum += loss.item() * valid
        n_tokens += valid
        prev_end = end
        if end == ids.numel():
            break
    return math.exp(nll_sum / n_tokens)


@torch.no_grad()
def test_matches_wanda_eval_ppl(bpe_llama, corpus):
    model, tok = bpe_llama.model, bpe_llama.tokenizer
    ids = tok(corpus, return_tensors="pt").input_ids[0]
    result = perplexity(model, tok, corpus, 64, batch_size=3)
    assert result["perplexity"] == pytest.approx(_wanda(model, ids, 64), rel=1e-5)
    assert result["windows"] == ids.numel() // 64
    assert result["tokens_scored"] == result["windows"] * 63
    assert result["corpus_tokens"] == ids.numel()


@torch.no_grad()
def test_strided_matches_the_transformers_guide(bpe_llama, corpus):
    model, tok = bpe_llama.model, bpe_llama.tokenizer
    ids = tok(corpus, return_tensors="pt").input_ids[0][:700]
    text = tok.decode(ids)
    ids = tok(text, return_tensors="pt").input_ids[0]
    result = perplexity(model, tok, text, 64, stride=24, batch_size=4)
    assert result["perplexity"] == pytest.approx(_hf_guide(model, ids, 64, 24), rel=1e-5)
    assert result["tokens_scored"] == ids.numel() - 1


def test_batch_size_and_limit(bpe_llama, corpus):
    model, tok = bpe_llama.model, bpe_llama.tokenizer
    one = perplexity(model, tok, corpus, 32, batch_size=1)
    many = perplexity(model, tok, corpus, 32, batch_size=5)
    assert one["perplexity"] == pytest.approx(many["perplexity"], rel=1e-5)
    calls = []
    two = perplexity(model, tok, corpus, 32, max_chunks=2, progress=lambda done, total: calls.append((done, total)))
    assert two["windows"] == 2 and calls[0] == (0, 2) and calls[-1] == (2, 2)


def test_bad_input(bpe_llama):
    model, tok = bpe_llama.model, bpe_llama.tokenizer
    with pytest.raises(DataError, match="fewer than one window"):
        perplexity(model, tok, "too short", 64)
    with pytest.raises(BadOptionError, match="--stride"):
        perplexity(model, tok, "text", 64, stride=65)
    with pytest.raises(BadOptionError, match="--ppl-limit"):
        perplexity(model, tok, "text", 64, max_chunks=0)
