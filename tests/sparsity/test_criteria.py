"""Each criterion against a hand computation on a tiny model.

The hand path is independent of collect.py's retain_grad hooks: a gate x -> x * m + e (m = 1,
e = 0, both requiring grad) is put on the input of o_proj (heads) and of down_proj (neurons);
then dL/dm = A * g and dL/de = g elementwise, and each criterion is written out with loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from llmslim.core.arch import adapter_for, text_config
from llmslim.sparsity import criteria as C
from llmslim.sparsity.collect import trace_batch
from tests.conftest import tiny_model


def hand_scores(model, ids, loss_from: int = 1):
    adapter = adapter_for(model)
    config = text_config(model.config)
    layers = adapter.decoder_layers(model)
    gates, acts, handles = {}, {}, []
    for i, layer in enumerate(layers):
        for kind, lin in (("heads", adapter.attention(layer, config).o), ("neurons", adapter.ffn(layer, config).output)):
            def hook(module, args, key=(kind, i)):
                x = args[0]
                m = torch.ones_like(x, requires_grad=True)
                e = torch.zeros_like(x, requires_grad=True)
                gates[key] = (m, e)
                acts[key] = x.detach().clone()
                return (x * m + e,)
            handles.append(lin.register_forward_pre_hook(hook))
    logits = model(ids[None]).logits[0]
    loss = F.cross_entropy(logits[loss_from - 1 : -1], ids[loss_from:])  # the tokens from loss_from on
    loss.backward()
    for h in handles:
        h.remove()
    attn = adapter.attention(layers[0], config)
    out = {}
    for (kind, i), (m, e) in gates.items():
        T = ids.numel()  # OPT feeds fc2 a flattened [tokens, F]: reshape to [T, units*width]
        ag = m.grad.reshape(T, -1)  # = A * g
        g = e.grad.reshape(T, -1)
        a = acts[(kind, i)].reshape(T, -1)
        width = attn.head_dim if kind == "heads" else 1
        U = a.shape[1] // width
        res = {c: torch.zeros(U) for c in C.CRITERIA}
        for u in range(U):
            sl = slice(u * width, (u + 1) * width)
            res["plainact"][u] = sum(abs(float(ag[t, sl].sum())) for t in range(T))
            res["l2norm"][u] = math.sqrt(sum(float(a[t, k]) ** 2 for t in range(T) for k in range(sl.start, sl.stop)))
            res["fisher"][u] = sum(sum(float(ag[t, k]) ** 2 for t in range(T)) / T for k in range(sl.start, sl.stop))
            res["snip"][u] = abs(float(ag[:, sl].sum()))
            res["gradnorm"][u] = math.sqrt(sum(float(g[t, k]) ** 2 for t in range(T) for k in range(sl.start, sl.stop)))
        out[(kind, i)] = res
    out["context0"] = acts[("heads", 0)].reshape(ids.numel(), -1)  # layer 0's o_proj input
    return out


@pytest.mark.parametrize("family, loss_from", [("llama", 1), ("opt", 1), ("llama", 6)])
def test_every_criterion_matches_the_hand_computation(family, loss_from):
    """loss_from 6: the continuation importance, the loss on tokens 6-9 only."""
    model = tiny_model(family)
    ids = torch.randint(0, 128, (10,), generator=torch.Generator().manual_seed(1))
    hand = hand_scores(model, ids, loss_from)
    for p in model.parameters():
        p.requires_grad_(False)
    got = trace_batch(model, ids[None], [5], list(C.CRITERIA), [loss_from])
    assert torch.allclose(got["features_pre"][0], hand.pop("context0")[5], atol=1e-6)
    for (kind, i), res in hand.items():
        for c, expected in res.items():
            actual = got[kind][c][0, i]
            assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-7), (family, kind, i, c, actual, expected)
    # the scores are not degenerate: units differ
    assert got["neurons"]["plainact"][0, 0].std() > 0


def test_batched_examples_get_their_own_scores():
    model = tiny_model("llama")
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(0, 128, (3, 8), generator=torch.Generator().manual_seed(2))
    both = trace_batch(model, ids, [7, 7, 3], ["plainact", "l2norm"], [1, 5, 4])
    for b in range(3):
        one = trace_batch(model, ids[b : b + 1], [[7, 7, 3][b]], ["plainact", "l2norm"], [[1, 5, 4][b]])
        for kind in ("heads", "neurons"):
            assert torch.allclose(both[kind]["plainact"][b], one[kind]["plainact"][0], rtol=1e-4, atol=1e-7)
        assert torch.allclose(both["features"][b], one["features"][0], atol=1e-6)
        assert torch.allclose(both["layer_inputs"][b], one["layer_inputs"][0], atol=1e-6)


def test_l2norm_needs_no_gradient_and_unknown_names_are_refused():
    assert not C.NEEDS_GRAD["l2norm"] and C.NEEDS_GRAD["plainact"]
    with pytest.raises(Exception, match="did you mean plainact"):
        C.parse("plainac")
    assert C.parse("all") == list(C.CRITERIA)


def test_traces_record_the_loss_their_examples_score():
    """collect() reads the importance from the examples (the oracle at eval scores the same loss):
    a benchmark calling it directly used to save traces without it, read back as 'prompt'."""
    from llmslim.sparsity.collect import Example, collect

    model = tiny_model("llama")
    ids = [torch.randint(0, 128, (8,), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    continuation = [Example(x, 3, "text", loss_from=4) for x in ids]
    prompt = [Example(x, 7, "text") for x in ids]
    assert collect(model, continuation, ["plainact"]).meta["importance"] == "continuation"
    assert collect(model, prompt, ["plainact"]).meta["importance"] == "prompt"
    assert collect(model, [continuation[0], prompt[1]], ["plainact"]).meta["importance"] == "mixed"
