"""Gathered execution (smaller matmuls) equals the masked computation, prefill and decode."""

import pytest
import torch

from llmslim.core.arch import adapter_for, text_config
from llmslim.sparsity.execute import Gather, SparseRunner, SparsityConfig, gathered, masked
from tests.conftest import DEVICES, tiny_model


def random_keeps(model, frac_neurons=0.5, seed=0, heads=True):
    adapter = adapter_for(model)
    config = text_config(model.config)
    gen = torch.Generator().manual_seed(seed)
    neurons, groups = [], []
    for layer in adapter.decoder_layers(model):
        width = adapter.ffn(layer, config).width
        n_kv = adapter.attention(layer, config).n_kv_heads
        neurons.append(torch.randperm(width, generator=gen)[: int(width * frac_neurons)].sort().values)
        groups.append(torch.randperm(n_kv, generator=gen)[: max(1, n_kv // 2)].sort().values if heads else None)
    return neurons, groups


@pytest.mark.parametrize("family,transpose", [("llama", True), ("llama", False), ("qwen3", True), ("gemma2", True), ("phi3", True), ("opt", False)])
def test_gathered_equals_masked_prefill_and_decode(family, transpose):
    from transformers import DynamicCache

    model = tiny_model(family)
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(3))
    nxt = torch.randint(0, 128, (1, 1), generator=torch.Generator().manual_seed(4))
    neurons, groups = random_keeps(model)
    dense = model(ids).logits
    with torch.no_grad():
        with masked(model, neurons, groups):
            c1 = DynamicCache(config=model.config)
            ref = model(ids, past_key_values=c1, use_cache=True).logits
            ref_step = model(nxt, past_key_values=c1, use_cache=True).logits
        weights_before = {n: p.data_ptr() for n, p in model.named_parameters()}
        with gathered(model, neurons, groups, transpose_down=transpose):
            adapter = adapter_for(model)
            ffn = adapter.ffn(adapter.decoder_layers(model)[0], text_config(model.config))
            assert ffn.output.weight.shape[1] == neurons[0].numel()  # the matmul really is smaller
            c2 = DynamicCache(config=model.config)
            got = model(ids, past_key_values=c2, use_cache=True).logits
            got_step = model(nxt, past_key_values=c2, use_cache=True).logits
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(got_step, ref_step, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, dense, atol=1e-3)  # the masks changed something
    # restored: same Parameters as before, same output as dense
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == weights_before
    assert torch.allclose(model(ids).logits, dense, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_runner_decides_once_and_keeps_the_mask_for_decode(device):
    from transformers import DynamicCache

    from llmslim.sparsity.predictor import DejaVuNet, DejaVuPredictor, ShadowNet, ShadowPredictor

    model = tiny_model("llama").to(device)
    L, F, H, d = 2, 96, 4, 64
    torch.manual_seed(0)
    shadow = ShadowPredictor({"neurons": ShadowNet(d, L, F, 16, None), "heads": ShadowNet(d, L, H, 16, 4)}, torch.zeros(1, d), torch.ones(1, d))
    dejavu = DejaVuPredictor({"neurons": DejaVuNet(d, L, F, 8), "heads": DejaVuNet(d, L, H, 8)}, torch.zeros(L, d), torch.ones(L, d))
    ids = torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(5)).to(device)
    nxt = torch.randint(0, 128, (1, 1), generator=torch.Generator().manual_seed(6)).to(device)
    for method in ("shadow", "dejavu"):
        cfg = SparsityConfig(method, ffn_sparsity=0.5, head_sparsity=0.5)
        runner = SparseRunner(model, cfg, shadow=shadow, dejavu=dejavu)
        with torch.no_grad():
            with runner.input(decide_at=-1):
                cache = DynamicCache(config=model.config)
                a = model(ids, past_key_values=cache, use_cache=True).logits
                keep = runner.last_keep
                b = model(nxt, past_key_values=cache, use_cache=True).logits
                assert runner.last_keep is keep
            assert all(k is not None and k.numel() == 48 for k in keep["neurons"])
            if method == "shadow":
                assert keep["groups"][0] is None and keep["groups"][1].numel() == 1  # layer 0 heads made the feature
            with masked(model, keep["neurons"], keep["groups"]):
                cache = DynamicCache(config=model.config)
                ra = model(ids, past_key_values=cache, use_cache=True).logits
                rb = model(nxt, past_key_values=cache, use_cache=True).logits
        assert torch.allclose(a, ra, atol=1e-5) and torch.allclose(b, rb, atol=1e-5), method
        assert runner.stats["predict_s"] > 0
        predictor = runner.shadow if method == "shadow" else runner.dejavu  # moved to the model's device
        assert {p.device.type for net in predictor.nets.values() for p in net.parameters()} == {device}
        assert {k.device.type for k in keep["neurons"]} == {device}


def test_gather_restores_after_an_error():
    model = tiny_model("llama")
    neurons, groups = random_keeps(model)
    before = [p for p in model.parameters()]
    with pytest.raises(RuntimeError):
        with gathered(model, neurons, groups):
            raise RuntimeError("boom")
    assert all(a is b for a, b in zip(before, model.parameters()))
    g = Gather(model)
    g.apply(0, neurons[0], None)
    g.apply(0, None, None)  # re-applying restores first
    assert model.model.layers[0].mlp.down_proj.weight.shape[1] == 96


@pytest.mark.parametrize("feature", ["post", "pre"])
def test_shadow_reads_its_feature_where_it_was_trained(feature):
    """--feature pre: the predictor sees layer 0's attention context entering o_proj (the
    reference's input), post: o_proj's output; the collected traces hold the same vectors."""
    from llmslim.sparsity.collect import trace_batch
    from llmslim.sparsity.predictor import ShadowNet, ShadowPredictor

    model = tiny_model("llama")
    L, F, d = 2, 96, 64
    seen = []
    net = ShadowNet(d, L, F, 16, None)
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))  # standardised with mean 0, std 1
    spy = ShadowPredictor({"neurons": net}, torch.zeros(1, d), torch.ones(1, d), feature)
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(3))
    runner = SparseRunner(model, SparsityConfig("shadow", ffn_sparsity=0.5), shadow=spy)
    with torch.no_grad(), runner.input(decide_at=4):
        model(ids, use_cache=False)
    for p in model.parameters():
        p.requires_grad_(False)
    traced = trace_batch(model, ids, [4], ["l2norm"])
    expected = traced["features_pre" if feature == "pre" else "features"][0]
    assert len(seen) == 1 and torch.allclose(seen[0][0], expected, atol=1e-5)
    assert not torch.allclose(traced["features_pre"][0], traced["features"][0], atol=1e-3)


def test_fall_back_adds_units_near_the_boundary_and_runs_unsure_layers_dense():
    from llmslim.sparsity import masks as M

    scores = torch.tensor([[0.0, 0.1, 0.45, 0.5, 0.9, 1.0],    # boundary 0.5 (keep 3): 0.45 is within 0.1
                           [0.0, 0.05, 0.1, 0.8, 0.9, 1.0]])   # boundary 0.8: nothing within 0.1
    keep = M.select(scores, 0.5)
    out, rec = M.fall_back(scores, keep, margin=0.1, threshold=0.0)
    assert out[0].tolist() == [2, 3, 4, 5] and torch.equal(out[1], keep[1])
    assert [r["added"] for r in rec] == [1, 0] and [r["ran"] for r in rec] == [4, 3]
    assert rec[0]["confidence"] == pytest.approx(2 / 3) and rec[1]["confidence"] == 1.0
    out, rec = M.fall_back(scores, keep, margin=0.1, threshold=0.9)  # layer 0 is unsure: dense
    assert out[0] is None and rec[0]["dense"] and rec[0]["ran"] == 6 and torch.equal(out[1], keep[1])
    same, _ = M.fall_back(scores, keep, margin=0.0, threshold=0.0)
    assert all(torch.equal(a, b) for a, b in zip(same, keep))
    tied = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 2.0]])  # ties at the boundary: off means off
    kept, tied_rec = M.fall_back(tied, M.select(tied, 0.5), margin=0.0, threshold=0.0)
    assert kept[0].numel() == 3 and tied_rec[0]["added"] == 0
    summary = M.summarize([{"neurons": rec, "groups": []}])
    assert summary["neurons_skipped"] == pytest.approx(1 - 9 / 12) and summary["neurons_fallback_dense_layers"] == 0.5
    # a decision counts for the positions it covered: 3 positions at 9 of 12 run, 1 at 6 of 12
    _, half = M.fall_back(scores, keep, margin=0.0, threshold=0.0)
    summary = M.summarize([{"neurons": rec, "groups": [], "tokens": 3}, {"neurons": half, "groups": [], "tokens": 1}])
    assert summary["neurons_skipped"] == pytest.approx(1 - (3 * 9 + 6) / (4 * 12))
    assert summary["neurons_fallback_dense_layers"] == pytest.approx(3 * 1 / (4 * 2))


@pytest.mark.parametrize("method", ["shadow", "dejavu"])
def test_fallback_runs_dense_where_it_should_and_the_record_matches_what_ran(method):
    from llmslim.sparsity.predictor import DejaVuNet, DejaVuPredictor, ShadowNet, ShadowPredictor

    model = tiny_model("llama")
    L, F, d = 2, 96, 64
    torch.manual_seed(0)
    shadow = ShadowPredictor({"neurons": ShadowNet(d, L, F, 16, None)}, torch.zeros(1, d), torch.ones(1, d))
    dejavu = DejaVuPredictor({"neurons": DejaVuNet(d, L, F, 8)}, torch.zeros(L, d), torch.ones(L, d))
    for p in list(shadow.nets["neurons"].parameters()) + list(dejavu.nets["neurons"].parameters()):
        torch.nn.init.normal_(p)  # the nets start at the static prediction: give them an input-dependent output
    ids = torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        dense = model(ids, use_cache=False).logits
        for margin, threshold in ((0.0, 0.0), (0.1, 0.0), (1.0, 0.5)):
            cfg = SparsityConfig(method, ffn_sparsity=0.5, fallback_margin=margin, fallback_threshold=threshold)
            runner = SparseRunner(model, cfg, shadow=shadow, dejavu=dejavu)
            with runner.input(decide_at=-1):
                out = model(ids, use_cache=False).logits
                keep = runner.last_keep["neurons"]
            rec = runner.records[-1]["neurons"]
            assert [r["ran"] for r in rec] == [F if k is None else k.numel() for k in keep]
            if margin == 0.0:
                assert [r["ran"] for r in rec] == [48, 48] and not any(r["dense"] for r in rec)
            if margin == 1.0:  # every dropped unit is unsure: each layer's confidence 0 < 0.5, all dense
                assert all(k is None for k in keep) and all(r["dense"] for r in rec)
                assert torch.allclose(out, dense, atol=1e-5)


@pytest.mark.parametrize("method", ["shadow", "dejavu"])
def test_token_decisions_gathered_per_decode_step_equal_the_masked_forward(method):
    """decide=token: decoding token by token (the weights sliced again for each token's own FFN
    mask) gives the logits of one teacher-forced forward with a mask per position on the down_proj
    inputs (the prompt's positions with the prompt's mask)."""
    from transformers import DynamicCache

    from llmslim.sparsity.predictor import DejaVuNet, DejaVuPredictor, ShadowNet, ShadowPredictor

    model = tiny_model("llama")
    L, F, H, d = 2, 96, 4, 64
    torch.manual_seed(1)
    shadow = ShadowPredictor({"neurons": ShadowNet(d, L, F, 16, None), "heads": ShadowNet(d, L, H, 16, 4)}, torch.zeros(1, d), torch.ones(1, d))
    dejavu = DejaVuPredictor({"neurons": DejaVuNet(d, L, F, 8), "heads": DejaVuNet(d, L, H, 8)}, torch.zeros(L, d), torch.ones(L, d))
    for net in list(shadow.nets.values()) + list(dejavu.nets.values()):
        for p in net.parameters():
            torch.nn.init.normal_(p)  # input-dependent predictions (trained nets start at the static mean)
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(7))
    prompt = 7
    cfg = SparsityConfig(method, ffn_sparsity=0.5, head_sparsity=0.5, decide="token")
    with torch.no_grad():
        runner = SparseRunner(model, cfg, shadow=shadow, dejavu=dejavu)
        steps, masks = [], []
        with runner.input(decide_at=-1):
            cache = DynamicCache(config=model.config)
            steps.append(model(ids[:, :prompt], past_key_values=cache, use_cache=True).logits[0, -1])
            for t in range(prompt, ids.shape[1]):
                steps.append(model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits[0, -1])
                masks.append([k.tolist() for k in runner.last_keep["neurons"]])
        assert len({str(m) for m in masks}) > 1  # the tokens chose different masks
        # one record per decision (the prompt, then each decode step), the heads the prompt's in all
        steps_records = runner.records
        assert len(steps_records) == 1 + ids.shape[1] - prompt
        assert all([g["ran"] for g in r["groups"]] == [g["ran"] for g in steps_records[0]["groups"]] for r in steps_records)
        assert steps_records[0]["groups"][1]["ran"] == 1  # layer 1 kept one of its two kv groups
        assert [r["neurons"][0]["ran"] for r in steps_records] == [48] * len(steps_records)
        # each decision weighs the positions its mask ran in: the prompt's 7, each step its own token
        assert [r["tokens"] for r in steps_records] == [prompt] + [1] * (ids.shape[1] - prompt)
        runner = SparseRunner(model, cfg, shadow=shadow, dejavu=dejavu)
        with runner.input(decide_at=prompt - 1, per_position=True):
            full = model(ids, use_cache=False).logits[0, prompt - 1 :]
        assert [[g["ran"] for g in r["groups"]] for r in runner.records] == [[g["ran"] for g in r["groups"]] for r in steps_records]
        assert [r["tokens"] for r in runner.records] == [r["tokens"] for r in steps_records]
    assert torch.allclose(torch.stack(steps), full, atol=1e-4), (torch.stack(steps) - full).abs().max()
    # prompt mode keeps one mask: its decode differs from the token decisions
    runner = SparseRunner(model, SparsityConfig(method, ffn_sparsity=0.5, head_sparsity=0.5), shadow=shadow, dejavu=dejavu)
    with torch.no_grad(), runner.input(decide_at=prompt - 1):
        once = model(ids, use_cache=False).logits[0, prompt - 1 :]
    assert [r["tokens"] for r in runner.records] == [ids.shape[1]]  # one decision for every position
    assert torch.allclose(once[0], full[0], atol=1e-4) and not torch.allclose(once[1:], full[1:], atol=1e-3)


def test_sparse_lm_scores_as_lm_evals_hflm_when_nothing_is_dropped(tiny_llama_dir):
    """The sparse model's lm-eval LM gives HFLM's log-likelihoods and greedy flags for the same
    requests (shared contexts grouped, trailing spaces moved, an empty context = BOS) when the
    mask keeps everything; with 50% of the FFN dropped they differ."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from llmslim.core.load import load_model
    from llmslim.sparsity.lm import SparseLM

    loaded = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    pairs = [("w1 w2 w3", " w4"), ("w1 w2 w3", " w5 w6"), ("w7 w8 ", "w9"), ("", "w1 w2"), ("w3", " w3 w3 w3")]
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    expected = HFLM(pretrained=model, tokenizer=tok, batch_size=2).loglikelihood(reqs)
    F = model.config.intermediate_size
    static = {"neurons": torch.rand(model.config.num_hidden_layers, F), "heads": None}
    keep_all = SparseRunner(model, SparsityConfig("static", ffn_sparsity=0.0), static_scores=static)
    got = SparseLM(model, tok, keep_all).loglikelihood(reqs)
    for (ll, greedy), (want_ll, want_greedy) in zip(got, expected):
        assert ll == pytest.approx(want_ll, abs=1e-4) and greedy == want_greedy
    half = SparseRunner(model, SparsityConfig("static", ffn_sparsity=0.5), static_scores=static)
    assert any(abs(a[0] - b[0]) > 1e-3 for a, b in zip(SparseLM(model, tok, half).loglikelihood(reqs), expected))
    # one decision per context, counting its choices' real positions (no padding, no last token)
    real = sum(len(c) + len(x) - 1 for c, x in (SparseLM(model, tok, half)._encode(*p) for p in pairs))
    assert len(half.records) == 4 and sum(r["tokens"] for r in half.records) == real
    # an empty continuation beside another in its group: nothing to score, and the shared context still runs whole
    empty = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate([("w1 w2 w3", ""), ("w1 w2 w3", " w4")])]
    got = SparseLM(model, tok, half).loglikelihood(empty)
    assert got[0] == (0.0, True) and got[1][0] < 0

    # token decisions: each continuation runs alone, unpadded and without its last token (whose
    # prediction scores nothing), so the records cover exactly the positions lm-eval scores from
    from llmslim.sparsity.predictor import ShadowNet, ShadowPredictor

    d, L = model.config.hidden_size, model.config.num_hidden_layers
    shadow = ShadowPredictor({"neurons": ShadowNet(d, L, F, 16, None)}, torch.zeros(1, d), torch.ones(1, d))
    token = SparseRunner(model, SparsityConfig("shadow", ffn_sparsity=0.0, decide="token"), shadow=shadow)
    got = SparseLM(model, tok, token).loglikelihood(reqs)
    for (ll, greedy), (want_ll, want_greedy) in zip(got, expected):
        assert ll == pytest.approx(want_ll, abs=1e-4) and greedy == want_greedy
    lm = SparseLM(model, tok, token)
    assert sum(r["tokens"] for r in token.records) == sum(len(c) + len(x) - 1 for c, x in (lm._encode(*p) for p in pairs))


@pytest.mark.parametrize("family,transpose", [("llama", True), ("llama", False), ("phi3", True), ("opt", False)])
def test_update_ffn_rewrites_slots_and_equals_the_masked_layer(family, transpose):
    """Per-token decisions change only the FFN slots whose neuron changed: after each update in a
    sequence (two neurons swapped, mostly new and unsorted, another width, dense, sliced again)
    the model equals the masked one, the attention slices are left alone, and restoring gives
    the dense model back."""
    model, reference = tiny_model(family), tiny_model(family)  # same seed, same weights
    for m in (model, reference):  # biases start at zero: make them count (opt's fc1 has one)
        gen = torch.Generator().manual_seed(2)
        for lin in (x for x in m.modules() if isinstance(x, torch.nn.Linear) and x.bias is not None):
            torch.nn.init.normal_(lin.bias, std=0.5, generator=gen)
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(5))
    dense = model(ids).logits
    neurons, groups = random_keeps(model)
    width = adapter_for(model).ffn(adapter_for(model).decoder_layers(model)[0], text_config(model.config)).width
    gen = torch.Generator().manual_seed(11)
    swapped = [torch.cat([n[2:], torch.tensor([x for x in range(width) if x not in n.tolist()][:2])]) for n in neurons]
    sequence = [swapped,
                [torch.randperm(width, generator=gen)[: n.numel()] for n in neurons],
                [torch.randperm(width, generator=gen)[: n.numel() - 3] for n in neurons],
                [None] + [torch.randperm(width, generator=gen)[:5] for _ in neurons[1:]],
                [torch.randperm(width, generator=gen)[:7] for _ in neurons]]
    g = Gather(model, transpose_down=transpose)
    attn0 = adapter_for(model).attention(adapter_for(model).decoder_layers(model)[0], text_config(model.config))
    with torch.no_grad():
        for i, (n, k) in enumerate(zip(neurons, groups)):
            g.apply(i, n, k)
        q_weight = attn0.q.linear.weight
        for step in sequence:
            for i, n in enumerate(step):
                g.update_ffn(i, n)
            got = model(ids).logits
            with masked(reference, step, groups):
                ref = reference(ids).logits
            assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4), (got - ref).abs().max()
            assert attn0.q.linear.weight is q_weight  # attention untouched by FFN updates
        g.restore_all()
        assert torch.allclose(model(ids).logits, dense, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_update_all_ffn_across_layers_equals_per_layer_updates(family):
    """The stacked path (one set of ops for every layer) gives the model per-layer updates give,
    through a sequence that also leaves it (another width, a dense layer) and comes back."""
    model, reference = tiny_model(family), tiny_model(family)
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(5))
    neurons, groups = random_keeps(model)
    width = adapter_for(model).ffn(adapter_for(model).decoder_layers(model)[0], text_config(model.config)).width
    gen = torch.Generator().manual_seed(12)
    k = neurons[0].numel()
    sequence = [[torch.randperm(width, generator=gen)[:k] for _ in neurons] for _ in range(3)]
    sequence += [[torch.randperm(width, generator=gen)[: k - 2] for _ in neurons],  # per layer: a new width
                 [None] + [torch.randperm(width, generator=gen)[: k - 2] for _ in neurons[1:]],  # per layer: layer 0 dense
                 [torch.randperm(width, generator=gen)[: k - 2] for _ in neurons],
                 [torch.randperm(width, generator=gen)[: k - 2] for _ in neurons]]  # stacked again
    fast, slow = Gather(model), Gather(reference)
    with torch.no_grad():
        for i, (n, g) in enumerate(zip(neurons, groups)):
            fast.apply(i, n, g)
            slow.apply(i, n, g)
        for n_step, step in enumerate(sequence):
            fast.update_all_ffn(step)
            for i, n in enumerate(step):
                slow.update_ffn(i, n)
            assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-4)
            if n_step == 1:  # one layer updated on its own, in place in the stacked slices, then restacked
                layer1 = torch.randperm(width, generator=gen)[:k]
                fast.update_ffn(1, layer1)
                slow.update_ffn(1, layer1)
        assert fast._stacked is not None  # the last steps ran stacked
        fast.restore_all()
        slow.restore_all()
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-6)


@pytest.mark.parametrize("method", ["shadow", "dejavu"])
def test_predictor_time_leaves_out_the_gather(method):
    """The report splits a run into predictor and gather: the decision's counter must not also
    hold the weight slicing done inside it (it did: both shares counted the gather)."""
    import time

    from llmslim.sparsity.predictor import DejaVuNet, DejaVuPredictor, ShadowNet, ShadowPredictor

    model = tiny_model("llama")
    L, F, d = 2, 96, 64
    shadow = ShadowPredictor({"neurons": ShadowNet(d, L, F, 16, None)}, torch.zeros(1, d), torch.ones(1, d))
    dejavu = DejaVuPredictor({"neurons": DejaVuNet(d, L, F, 8)}, torch.zeros(L, d), torch.ones(L, d))
    runner = SparseRunner(model, SparsityConfig(method, ffn_sparsity=0.5), shadow=shadow, dejavu=dejavu)
    apply = runner.gather.apply

    def slow_apply(*args, **kwargs):  # a gather that takes 50 ms more, as the Gather counts it
        apply(*args, **kwargs)
        time.sleep(0.05)
        runner.gather.seconds += 0.05

    runner.gather.apply = slow_apply
    with torch.no_grad(), runner.input(decide_at=-1):
        model(torch.randint(0, 128, (1, 6)))
    assert runner.gather.seconds >= 0.1 and 0 < runner.stats["predict_s"] < 0.05


def test_a_head_sparsity_that_skips_no_kv_group_is_refused():
    """The per-layer kv-group count is floored: below 1 / groups a layer skips none, which used to
    run as a silently dense-attention configuration."""
    from llmslim.core.errors import BadOptionError

    model = tiny_model("llama")
    groups = text_config(model.config).num_key_value_heads
    assert groups >= 2
    with pytest.raises(BadOptionError, match=f"skips none of this model's {groups} kv groups"):
        SparseRunner(model, SparsityConfig("static", ffn_sparsity=0.5, head_sparsity=0.99 / groups), static_scores={})
    SparseRunner(model, SparsityConfig("static", ffn_sparsity=0.5, head_sparsity=1.01 / groups), static_scores={})
    # the global and hybrid allocations count over all layers' groups: no per-layer floor to refuse,
    # except for dejavu, which decides each layer's heads alone
    for allocation in ("global", "hybrid"):
        SparseRunner(model, SparsityConfig("static", ffn_sparsity=0.5, head_sparsity=0.99 / groups, allocation=allocation),
                     static_scores={})
    from llmslim.sparsity import masks as M

    with pytest.raises(BadOptionError, match="skips none"):
        M.check_heads_skipped(0.99 / groups, groups, "global", "dejavu")
