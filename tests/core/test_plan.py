"""The memory plan: --dry-run prints it without loading anything; a job that will not fit is
refused before loading, with the option that would make it fit."""

import json

from typer.testing import CliRunner

from llmslim.cli import app
from llmslim.core import load
from llmslim.core import plan as P


def refuse(*args, **kwargs):
    raise AssertionError("the model was loaded")


def invoke(argv):
    result = CliRunner().invoke(app, [str(a) for a in argv])
    return result


def test_dry_run_prints_the_plan_and_loads_nothing(monkeypatch, tiny_llama_dir, tmp_path):
    monkeypatch.setattr(load, "load_model", refuse)
    result = invoke(["prune", tiny_llama_dir, "--seqlen", "64", "--dry-run", "--json", "--out", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    shapes = P.shapes_of(P.model_config(str(tiny_llama_dir)))
    parts = plan["memory"]["parts_bytes"]
    assert parts["window scores"] == 2 * shapes.ffn_params * 4  # SNIP + ReFer for AFR
    # the fold's copies (and the GMM's fit) are one layer's, not the model's (a deeper model adds none)
    layer = -(-shapes.ffn_params // shapes.layers)
    assert parts["fold (one layer)"] == P.FOLD_LAYER_COPIES * layer * 4
    assert parts["GMM fit (one layer)"] == int(P.GMM_BYTES_PER_SCORED_WEIGHT * layer)
    # no per-window fold: summed signed scores (one fold at the end), or a method without GMM clipping
    for extra, absent in ((["--accumulate", "signed-sum"], {"fold (one layer)", "GMM fit (one layer)"}),
                          (["--aggregate", "abs"], {"GMM fit (one layer)"})):
        result = invoke(["prune", tiny_llama_dir, "--seqlen", "64", "--dry-run", "--json", *extra])
        assert result.exit_code == 0, result.output
        kept = json.loads(result.output)["memory"]["parts_bytes"]
        assert absent.isdisjoint(kept) and "window scores" in kept
    assert plan["memory"]["phase"] == "calibration" and plan["memory"]["fits"] and plan["advice"] is None
    assert not (tmp_path / "out").exists()
    # a method without gradients has no backward: no scores, no activations
    result = invoke(["prune", tiny_llama_dir, "--method", "wanda-sp", "--dry-run", "--json"])
    assert set(json.loads(result.output)["memory"]["parts_gib"]) == {"runtime", "weights"}
    # recover's plan needs no --out
    result = invoke(["recover", tiny_llama_dir, "--teacher", tiny_llama_dir, "--full", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert {"gradients + AdamW", "teacher", "logits and loss"} <= set(json.loads(result.output)["memory"]["parts_gib"])
    # diffuse adapt trains every weight, no teacher
    result = invoke(["diffuse", "adapt", tiny_llama_dir, "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    parts = json.loads(result.output)["memory"]["parts_bytes"]
    assert "teacher" not in parts and parts["gradients + AdamW"] == shapes.params * 12


def test_a_job_that_will_not_fit_is_refused_with_the_option_that_fits(monkeypatch, tiny_llama_dir):
    monkeypatch.setattr(load, "load_model", refuse)
    shapes = P.shapes_of(P.model_config(str(tiny_llama_dir)))

    def total(seqlen):
        return sum(P.prune_parts(shapes, weight_bytes=4, seqlen=seqlen, batch=1, refer=True, snip=True, signed_kinds=0,
                                 device_type="cpu").values())

    # room for 256-token windows but not for 1024
    monkeypatch.setattr(P, "available_bytes", lambda device, **where: (total(256) + total(512)) // 2)
    result = invoke(["prune", tiny_llama_dir, "--seqlen", "1024"])
    assert result.exit_code != 0
    message = str(result.exception)
    assert "will not fit" in message and "--seqlen 256 would fit" in message and "\n" not in message
    result = invoke(["prune", tiny_llama_dir, "--seqlen", "1024", "--dry-run"])
    assert result.exit_code != 0 and "does not fit: --seqlen 256 would fit" in result.output
    monkeypatch.setattr(P, "available_bytes", lambda device, **where: 10)
    assert "use a device with more memory" in str(invoke(["prune", tiny_llama_dir]).exception)


def test_the_plan_is_the_largest_phase_and_scores_what_is_pruned(monkeypatch, tiny_llama_dir):
    monkeypatch.setattr(load, "load_model", refuse)
    shapes = P.shapes_of(P.model_config(str(tiny_llama_dir)))
    # --compare's model copies come after calibration (its scores folded by then): not added to it
    plan = json.loads(invoke(["prune", tiny_llama_dir, "--compare", "wanda-sp,flap", "--dry-run", "--json"]).output)["memory"]
    assert plan["phase"] == "calibration" and "copies for --compare" not in plan["parts_gib"]
    plan = json.loads(invoke(["prune", tiny_llama_dir, "--method", "wanda-sp", "--compare", "flap,magnitude", "--dry-run",
                              "--json"]).output)["memory"]
    assert plan["phase"] == "pruning (--compare copies)"
    assert plan["parts_bytes"]["copies for --compare"] == 2 * shapes.params * 4
    # --target attn scores the attention weights
    plan = json.loads(invoke(["prune", tiny_llama_dir, "--target", "attn", "--ratio", "0.5", "--dry-run", "--json"]).output)
    assert plan["memory"]["parts_bytes"]["window scores"] == 2 * shapes.attn_params * 4
    assert shapes.attn_params != shapes.ffn_params


def test_diffuse_distill_plans_a_round_at_the_diffusion_window(monkeypatch, tiny_llama_dir, tmp_path):
    """The student, its teacher copy and EMA, at the seqlen the diffusion folder was adapted at;
    too little memory names the batch that fits."""
    import shutil

    from llmslim.diffuse.jobs import SDTT_LOGIT_COPIES

    folder = tmp_path / "mdlm"
    shutil.copytree(tiny_llama_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["llmslim_diffusion"] = {"mask_token_id": 0, "seqlen": 48, "eps": 1e-3}
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(load, "load_model", refuse)
    shapes = P.shapes_of(P.model_config(str(folder)))
    result = invoke(["diffuse", "distill", folder, "--batch-size", "4", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    parts = json.loads(result.output)["memory"]["parts_bytes"]
    assert parts["teacher"] == parts["EMA weights"] == shapes.params * 4
    assert parts["logits and loss"] == SDTT_LOGIT_COPIES * 4 * 48 * shapes.vocab * 4

    def total(batch):
        return sum(json.loads(invoke(["diffuse", "distill", folder, "--batch-size", str(batch), "--dry-run", "--json"])
                              .output)["memory"]["parts_bytes"].values())

    room = (total(1) + total(2)) // 2
    monkeypatch.setattr(P, "available_bytes", lambda device, **where: room)
    result = invoke(["diffuse", "distill", folder, "--batch-size", "8", "--out", tmp_path / "students"])
    assert result.exit_code != 0 and "--batch-size 1 would fit" in str(result.exception)


def test_shorten_plans_its_step_and_trains_only_the_chosen_modules(monkeypatch, tiny_llama_dir, tmp_path):
    """rl: batch x generations sequences, TRL's reference copy (beta > 0, no LoRA) and the
    similarity model; sft: neither. Gradients and AdamW for q/k/v only (the default modules)."""
    monkeypatch.setattr(load, "load_model", refuse)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"instruction": "w1 w2 w3"} for _ in range(4)]))
    common = [tiny_llama_dir, "--prompts", prompts, "--val-size", "1", "--max-new-tokens", "16", "--dry-run", "--json"]
    shapes = P.shapes_of(P.model_config(str(tiny_llama_dir)))
    qkv = sum(i * o for (i, o), name in zip(shapes.linear_sizes, shapes.linear_names) if name in ("q_proj", "k_proj", "v_proj"))
    assert 0 < qkv < shapes.params

    rl = json.loads(invoke(["shorten", "rl", *common]).output)["memory"]["parts_bytes"]
    assert rl["gradients + AdamW"] == qkv * 12 and rl["reference model"] == shapes.params * 4 and rl["similarity model"] > 0
    assert "reference model" not in json.loads(invoke(["shorten", "rl", *common, "--lora"]).output)["memory"]["parts_bytes"]
    sft = json.loads(invoke(["shorten", "sft", *common]).output)["memory"]["parts_bytes"]
    assert sft["gradients + AdamW"] == qkv * 12 and "reference model" not in sft and "similarity model" not in sft
    assert sft["logits and loss"] < rl["logits and loss"]  # 4 contexts against 2 x 4 sampled answers

    def total(batch):
        return sum(json.loads(invoke(["shorten", "sft", *common, "--batch-size", str(batch)]).output)["memory"]["parts_bytes"].values())

    room = (total(1) + total(2)) // 2
    monkeypatch.setattr(P, "available_bytes", lambda device, **where: room)
    result = invoke(["shorten", "sft", tiny_llama_dir, "--prompts", prompts, "--val-size", "1", "--max-new-tokens", "16",
                     "--batch-size", "8", "--out", tmp_path / "short"])
    assert result.exit_code != 0 and "--batch-size 1 would fit" in str(result.exception)


def test_free_memory_is_one_gpus_unless_the_model_is_spread(monkeypatch):
    import torch

    free = {0: 10 * 2**30, 1: 20 * 2**30, 2: 30 * 2**30}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free[getattr(device, "index", device) or 0], 0))
    assert P.available_bytes(torch.device("cuda", 1)) == 20 * 2**30  # --device-map one: its own GPU
    assert P.available_bytes(torch.device("cuda"), spread=True) == 60 * 2**30  # auto: every GPU
    # --max-memory: only the GPUs it names, each at most its cap
    assert P.available_bytes(torch.device("cuda"), spread=True, max_memory={0: "5GiB", 2: "40GiB", "cpu": "100GiB"}) == 35 * 2**30


def test_a_prune_too_big_for_one_gpu_of_several_is_told_to_spread(monkeypatch, tiny_llama_dir):
    import torch

    from llmslim.prune.jobs import PruneJob, memory_plan

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    job = PruneJob(model=str(tiny_llama_dir), device="cuda", dtype="float32")
    monkeypatch.setattr(P, "available_bytes", lambda device, spread=False, **where: 10**12 if spread else 1000)
    plan, advice = memory_plan(job)
    assert not plan.fits and advice.startswith("--device-map auto would fit (the model over 4 GPUs")
    monkeypatch.setattr(P, "available_bytes", lambda device, spread=False, **where: 2000 if spread else 1000)
    assert not memory_plan(job)[1].startswith("--device-map auto")  # not even spread: the usual advice


def test_the_gram_pass_takes_as_many_layers_as_fit():
    """--reconstruct's Gram matrices have a forward pass of their own, after the scoring pass, in
    as few passes as the memory allows: on an 80 GB GPU Llama-3-8B's scoring (76 GiB planned) and
    its 49 GiB of Gram matrices are two phases, not one of 125 GiB. Catches a chunk that does not
    fit, or one smaller than what fits (more passes than needed)."""
    shapes = P.shapes_of(P.model_config("random:llama3-8b"))
    sizes = dict(weight_bytes=2, seqlen=1024, device_type="cuda")
    scoring = P.prune_parts(shapes, batch=1, refer=True, snip=True, signed_kinds=0, gmm=True, **sizes)
    h100 = 79 * P.GiB
    assert sum(scoring.values()) <= h100 < sum(scoring.values()) + shapes.layers * shapes.intermediate**2 * 8
    for available in (h100, 40 * P.GiB, 20 * P.GiB):
        per_pass = P.gram_layers_per_pass(shapes, available, **sizes)
        assert sum(P.gram_parts(shapes, layers_per_pass=per_pass, **sizes).values()) <= available
        assert per_pass == shapes.layers or sum(P.gram_parts(shapes, layers_per_pass=per_pass + 1, **sizes).values()) > available
    assert P.gram_layers_per_pass(shapes, h100, **sizes) == shapes.layers
    assert 1 < P.gram_layers_per_pass(shapes, 40 * P.GiB, **sizes) < shapes.layers
    assert P.gram_layers_per_pass(shapes, 10 * P.GiB, **sizes) == 1  # not even the weights: the plan says so
    assert P.gram_layers_per_pass(shapes, None, **sizes) == shapes.layers


def test_a_gram_pass_that_will_not_fit_names_reconstruct(monkeypatch, tiny_llama_dir):
    """Without gradients the Gram pass is the job's peak: where not even one layer's matrix fits
    beside the weights, the advice is to drop --reconstruct, not fewer --compare methods."""
    monkeypatch.setattr(load, "load_model", refuse)
    shapes = P.shapes_of(P.model_config(str(tiny_llama_dir)))
    one_layer = sum(P.gram_parts(shapes, weight_bytes=4, seqlen=64, device_type="cpu", layers_per_pass=1).values())
    monkeypatch.setattr(P, "available_bytes", lambda device, **where: one_layer - 1)
    result = invoke(["prune", tiny_llama_dir, "--method", "wanda-sp", "--reconstruct", "--seqlen", "64"])
    assert result.exit_code != 0
    message = str(result.exception)
    assert "the Gram pass (--reconstruct)" in message and "without --reconstruct it would fit" in message
    monkeypatch.setattr(P, "available_bytes", lambda device, **where: one_layer)
    plan = json.loads(invoke(["prune", tiny_llama_dir, "--method", "wanda-sp", "--reconstruct", "--seqlen", "64",
                              "--dry-run", "--json"]).output)["memory"]
    assert plan["phase"] == "the Gram pass (--reconstruct)" and plan["fits"]
    assert plan["parts_bytes"]["Gram matrices (--reconstruct)"] == shapes.intermediate**2 * 8  # one layer a pass
