"""diffuse: MDLM's loss and SUBS, the bidirectional forward, the sampler, SDTT's targets and loss,
and adapt -> distill -> sample -> eval through the CLI on a tiny random llama."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from llmslim.cli import app
from llmslim.diffuse.mdlm import NEG, add_noise, antithetic_times, denoise, mdlm_loss, subs
from llmslim.diffuse.sample import sample
from llmslim.diffuse.sdtt import divergence, sdtt_loss, teacher_targets

from tests.conftest import tiny_model

MASK = 127  # the tiny llama's last id stands in for MASK in the unit tests


def test_subs_gives_mask_no_mass_and_carries_unmasked_tokens():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 128, generator=g)
    xt = torch.tensor([[5, MASK, 7, MASK, MASK, 9], [3, 4, MASK, 6, MASK, MASK]])
    log_p = subs(logits, xt, MASK)
    p = log_p.exp()
    assert torch.all(p[..., MASK] == 0)
    assert torch.allclose(p.sum(-1), torch.ones(2, 6))
    unmasked = xt != MASK
    assert torch.all(p[unmasked].argmax(-1) == xt[unmasked]) and torch.all(p[unmasked].max(-1).values == 1)
    # the shift: position j's distribution is logit j - 1's (MASK excluded)
    expected = torch.log_softmax(torch.cat([logits[0, 0, :MASK], torch.tensor([NEG])]), -1)
    assert torch.allclose(log_p[0, 1], expected, atol=1e-5)


def test_mdlm_loss_counts_masked_positions_only_weighted_by_one_over_t():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 128, generator=g)
    x0 = torch.randint(0, 100, (2, 5), generator=g)
    xt = x0.clone()
    xt[0, 2], xt[1, 1], xt[1, 4] = MASK, MASK, MASK
    t = torch.tensor([0.25, 0.5])
    loss = mdlm_loss(subs(logits, xt, MASK), x0, t)
    by_hand = 0.0
    for b, j in ((0, 2), (1, 1), (1, 4)):
        row = torch.log_softmax(logits[b, j - 1, :MASK], -1)  # the shift; MASK gets no mass
        by_hand += -row[x0[b, j]].item() / t[b].item()
    assert loss.item() == pytest.approx(by_hand / x0.numel(), rel=1e-5)
    changed = logits.clone()
    changed[0, 0] += 5 * torch.randn(128, generator=g)  # predicts position 1, which is unmasked in row 0
    assert mdlm_loss(subs(changed, xt, MASK), x0, t).item() == pytest.approx(loss.item(), rel=1e-6)


def test_noise_keeps_position_zero_and_masks_about_t():
    g = torch.Generator().manual_seed(2)
    x0 = torch.randint(0, 100, (64, 200), generator=g)
    t = antithetic_times(64, g)
    lows = 1e-3 + (1 - 1e-3) * torch.arange(64) / 64  # one time in each of 64 equal strata (iid times fail this)
    assert torch.all(t.sort().values >= lows - 1e-6) and torch.all(t.sort().values <= lows + (1 - 1e-3) / 64 + 1e-6)
    xt = add_noise(x0, t, MASK, g)
    assert torch.all(xt[:, 0] == x0[:, 0])
    frac = (xt[:, 1:] == MASK).float().mean(1)
    assert torch.allclose(frac, (1 - 1e-3) * t, atol=0.12)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_denoise_attends_both_ways_and_anneals_from_causal(attn):
    """A token changed late in the sequence changes the prediction early on (the model was
    causal); with the causal fraction at 1 the mask is exactly the causal one."""
    from llmslim.diffuse.mdlm import attention_mask

    model = tiny_model("llama")
    model.config._attn_implementation = attn
    x = torch.tensor([[1, MASK, MASK, 4, 5, 6, 7, 8]])
    y = x.clone()
    y[0, 6] = 50
    assert not torch.allclose(denoise(model, x, MASK)[0, 1], denoise(model, y, MASK)[0, 1])
    causal = attention_mask(1, 8, torch.float32, "cpu", attn, causal_fraction=1.0)
    assert torch.allclose(model(input_ids=x, attention_mask=causal).logits, model(input_ids=x).logits, atol=1e-5)
    half = attention_mask(1, 8, torch.float32, "cpu", attn, causal_fraction=0.5, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(model(input_ids=y, attention_mask=half).logits, model(input_ids=y).logits, atol=1e-5)


def test_sampler_unmasks_everything_and_the_cache_changes_no_sample():
    model = tiny_model("llama")
    prefix = torch.tensor([125, 3])
    outs = {cache: sample(model, MASK, steps=16, length=12, batch=3, prefix=prefix, seed=3, cache=cache) for cache in (True, False)}
    tokens = outs[True].tokens
    assert torch.equal(tokens, outs[False].tokens)
    assert not (tokens == MASK).any() and torch.all(tokens[:, :2] == prefix)
    # the cache skips exactly the passes after a step that revealed nothing (this seed has one),
    # plus the final noise-removal pass where nothing was left masked or the last step changed nothing
    revealed = outs[True].unmasked_per_step
    assert revealed == outs[False].unmasked_per_step and 0 in revealed[:-1]
    left = sum(revealed) < 3 * 10  # masked positions: 3 rows x (12 - 2 prefix)
    assert outs[False].forward_passes == 16 + left
    assert outs[True].forward_passes == 1 + sum(c > 0 for c in revealed[:-1]) + (left and revealed[-1] > 0)
    one = sample(model, MASK, steps=1, length=12, batch=2, prefix=prefix, seed=0)
    assert not (one.tokens == MASK).any() and one.forward_passes <= 2


def test_each_step_unmasks_the_posterior_fraction():
    """From t to s a masked position is revealed with probability (mc_t - mc_s) / mc_t: with 4
    steps a quarter of the masks in the first step, a third of the rest in the second."""
    model = tiny_model("llama")
    out = sample(model, MASK, steps=4, length=101, batch=20, prefix=torch.tensor([125]), seed=0)
    counts, masked = out.unmasked_per_step, 20 * 100
    expected = [masked * 0.25, masked * 0.75 / 3, masked * 0.5 / 2]
    for got, want in zip(counts, expected):
        assert abs(got - want) < 4 * math.sqrt(want), (counts, expected)


def test_a_step_reveals_with_the_posterior_chance_and_draws_from_p():
    """From t to s a masked position is revealed with chance (mc_t - mc_s) / mc_t, its token drawn
    from p (MASK has none of it); unmasked positions are copied."""
    from llmslim.diffuse.sample import transition

    p = torch.tensor([0.5, 0.3, 0.2, 0.0, 0.0])  # id 4 is MASK
    n = 20000
    log_p = p.clamp_min(1e-300).log().expand(1, n, 5).clone()
    log_p[..., 4] = -1e6
    x = torch.full((1, n), 4)
    x[0, :100] = 3  # already a token: kept
    out = transition(log_p, x, 4, torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64),
                     torch.Generator().manual_seed(0))[0]
    assert (out[:100] == 3).all()
    masked = n - 100
    revealed = out[100:] != 4
    assert abs(revealed.sum().item() - masked * 0.75) < 4 * math.sqrt(masked * 0.75 * 0.25)
    counts = torch.bincount(out[100:][revealed], minlength=5)
    total = revealed.sum().item()
    for v in range(3):
        want = total * p[v].item()
        assert abs(counts[v].item() - want) < 4 * math.sqrt(want * (1 - p[v].item())), (counts, total)
    assert counts[3] == 0


def test_teacher_targets_are_the_prediction_at_the_step_that_revealed_a_position():
    """k = 2 replayed by hand with the same draws: a position revealed in step 1 carries step 1's
    x_0 distribution, one revealed in step 2 (or still masked) step 2's, made on the partly
    revealed sequence."""
    from llmslim.diffuse.mdlm import move_chance
    from llmslim.diffuse.sample import transition

    model = tiny_model("llama")
    g = torch.Generator().manual_seed(4)
    t = torch.tensor([0.6, 0.9])
    xt = add_noise(torch.randint(0, 100, (2, 40), generator=g), t, MASK, g)
    dt = 0.2
    targets = teacher_targets(model, xt, t, dt, MASK, k=2, generator=torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    p1 = denoise(model, xt, MASK)
    x1 = transition(p1, xt, MASK, move_chance(t.double()), move_chance((t - dt).double()), replay)
    p2 = denoise(model, x1, MASK)
    x2 = transition(p2, x1, MASK, move_chance((t - dt).double()), move_chance((t - 2 * dt).double()), replay)
    first, second, still = (xt == MASK) & (x1 != MASK), (x1 == MASK) & (x2 != MASK), x2 == MASK
    assert first.sum() > 0 and second.sum() > 0 and still.sum() > 0
    assert torch.allclose(targets[first], p1[first]) and not torch.allclose(p1[second], p2[second])
    assert torch.allclose(targets[second], p2[second]) and torch.allclose(targets[still], p2[still])


def test_gen_ppl_counts_the_first_eos_of_a_sample_and_no_later_one():
    """MDLM's count: every generated token but EOS, plus each sample's first EOS."""
    from llmslim.diffuse.evaluate import generative_perplexity

    model = tiny_model("llama")
    eos = 3
    tokens = torch.tensor([[5, 7, eos, eos, 9, eos], [5, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(tokens).logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    counted = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert generative_perplexity(model, tokens, 1, eos) == pytest.approx(math.exp(nll[counted].mean().item()), rel=1e-5)
    assert generative_perplexity(model, tokens, 1) == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)


def test_ema_by_hand():
    from llmslim.diffuse.train import EMA

    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.constant_(model.weight, 1.0)
    ema = EMA(model, decay=0.9999)
    torch.nn.init.constant_(model.weight, 3.0)
    ema.update(model)  # decay = min(0.9999, 2 / 11)
    d1 = 2 / 11
    assert ema.shadow["weight"][0, 0].item() == pytest.approx(d1 * 1 + (1 - d1) * 3)
    assert torch.all(ema.copy_to(model).weight == ema.shadow["weight"]) and torch.all(model.weight == 3.0)


def test_divergences_by_hand():
    g = torch.Generator().manual_seed(5)
    s, t = torch.log_softmax(torch.randn(3, 6, generator=g), -1), torch.log_softmax(torch.randn(3, 6, generator=g), -1)
    s[:, 5], t[:, 5] = NEG, NEG  # the MASK column
    ps, pt = s[:, :5].exp(), t[:, :5].exp()
    assert divergence(s, t, "kl", 5).item() == pytest.approx((ps * (ps / pt).log()).sum(-1).mean().item(), rel=1e-5)
    assert divergence(s, t, "kl-fwd", 5).item() == pytest.approx((pt * (pt / ps).log()).sum(-1).mean().item(), rel=1e-5)
    assert divergence(s, t, "tvd", 5).item() == pytest.approx(0.5 * (ps - pt).abs().sum(-1).mean().item(), rel=1e-5)
    assert 0 < divergence(s, t, "tvd", 5).item() <= 1
    assert divergence(s, s, "kl", 5).item() == pytest.approx(0, abs=1e-6)


def test_one_distillation_step_lowers_the_divergence():
    teacher, student = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    x0 = torch.randint(0, 100, (4, 16), generator=torch.Generator().manual_seed(6))
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)

    def loss():
        return sdtt_loss(student, teacher, x0, 1 / 8, MASK, "kl", generator=torch.Generator().manual_seed(7))

    before = loss()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss()
    assert after.item() < before.item()


def test_a_batch_with_nothing_masked_still_runs_the_student():
    """Position 0 is never masked, so one-token windows leave nothing to distil: the loss is 0 but
    comes from the student's forward, with a (zero) gradient on every weight. Under DDP a process
    whose loss skipped the student would leave the others waiting in the gradient sync."""
    teacher, student = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    loss = sdtt_loss(student, teacher, torch.randint(0, 100, (2, 1)), 1 / 8, MASK, "kl")
    assert loss.item() == 0.0
    loss.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in grads) and all(torch.count_nonzero(g) == 0 for g in grads)


def test_adapt_distill_sample_eval_through_the_cli(tmp_path, tiny_llama_dir, data_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"w{(i * 7) % 40}" for i in range(3000)))
    common = ["--device", "cpu", "--json", "--quiet"]
    res = CliRunner().invoke(app, ["diffuse", "adapt", str(tiny_llama_dir), "--data", str(corpus), "--seqlen", "16",
                                   "--max-steps", "12", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "0",
                                   "--out", str(tmp_path / "teacher"), *common])
    assert res.exit_code == 0, res.output
    adapted = json.loads(res.stdout)
    assert adapted["steps"] == 12 and adapted["mask_token_id"] == 128  # a new token: the tokenizer had no mask token
    assert sum(adapted["losses"][-3:]) < sum(adapted["losses"][:3])
    config = json.loads((tmp_path / "teacher" / "config.json").read_text())
    assert config["llmslim_diffusion"]["mask_token_id"] == 128 and config["vocab_size"] == 129

    res = CliRunner().invoke(app, ["diffuse", "distill", str(tmp_path / "teacher"), "--data", str(corpus), "--rounds", "2",
                                   "--steps-per-round", "3", "--start-sampling-steps", "8", "--batch-size", "4",
                                   "--out", str(tmp_path / "students"), *common])
    assert res.exit_code == 0, res.output
    rounds = json.loads(res.stdout)["rounds"]
    assert [(r["teacher_sampling_steps"], r["student_sampling_steps"]) for r in rounds] == [(8, 4), (4, 2)]
    assert (tmp_path / "students" / "round-1" / "config.json").is_file()
    assert not (tmp_path / "students-checkpoints").exists()

    # a run stopped after round 0 resumes at round 1 (round 0's record kept), with the same settings only
    import shutil

    shutil.copytree(tmp_path / "students" / "round-0", tmp_path / "stopped" / "round-0")
    distill = ["diffuse", "distill", str(tmp_path / "teacher"), "--data", str(corpus), "--rounds", "2", "--steps-per-round", "3",
               "--start-sampling-steps", "8", "--batch-size", "4", "--checkpoint-dir", str(tmp_path / "stopped"), "--resume",
               "--out", str(tmp_path / "resumed"), *common]
    for other in (["--divergence", "tvd"], ["--lr", "3e-4"]):  # the method, or only its training budget
        res = CliRunner().invoke(app, [*distill, *other])
        assert res.exit_code != 0 and "was made with" in str(res.exception)
    res = CliRunner().invoke(app, distill)
    assert res.exit_code == 0, res.output
    resumed = json.loads(res.stdout)["rounds"]
    assert resumed[0] == rounds[0] and resumed[1]["round"] == 1 and (tmp_path / "resumed" / "round-1").is_dir()

    res = CliRunner().invoke(app, ["diffuse", "sample", str(tmp_path / "students" / "round-1"), "--sampling-steps", "2",
                                   "--length", "10", "-n", "2", "--prompt", "w3 w10", *common])
    assert res.exit_code == 0, res.output
    sampled = json.loads(res.stdout)
    assert len(sampled["samples"]) == 2 and sampled["forward_passes"] <= 3
    assert all(len(text.split()) == 7 and "mdlm_mask" not in text for text in sampled["samples"])

    res = CliRunner().invoke(app, ["diffuse", "eval", str(tmp_path / "teacher"), "--sampling-steps", "2,4", "-n", "4", "--length", "12",
                                   "--evaluator", str(tiny_llama_dir), "--lambada", "3", "--latency-batch", "2",
                                   "--out", str(tmp_path / "eval"), *common])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)
    assert [r["steps"] for r in ev["rows"]] == [2, 4]
    assert all(1 < r["gen_ppl"] < 1000 and 0 < r["entropy"] <= math.log(11) for r in ev["rows"])
    assert ev["lambada"]["items"] == 3 and [r["steps"] for r in ev["latency"]["diffusion"]] == [2, 4]
