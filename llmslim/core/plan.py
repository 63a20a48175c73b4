"""Peak memory of a job from the model's config alone (the model built on the meta device, no
weights read): what `--dry-run` prints, and what refuses a job that cannot fit before anything
loads, naming the option that would make it fit.

Terms, per process (bytes; b = the weights' dtype size, T = --seqlen, B = batch, L layers,
I the FFN width, H hidden, V vocabulary, F the FFN weights' count):

    runtime      torch + transformers in a CPU process (~0.45 GiB RSS before the weights),
                 or a CUDA context (~0.5 GiB)
    weights      parameters x b
    activations  what backward keeps, every layer: B x T x (4 I + 2 H) x b (SwiGLU's gate, up,
                 act(gate) and product, two norms), B x heads x T^2 x 2 bytes of attention, and
                 the logits with the loss's fp32 log-softmax (B x T x V x (b + 4))
    prune        a window's per-weight scores in fp32, one F x 4 per score kind (SNIP, ReFer:
                 both for AFR; grouped, z-scored and clipped one layer at a time); ReFer's fp32
                 copies of each projection output and their singular vectors, 2 x B x T x
                 (2 I + H) x 4 per layer; fp32 signed sums per kind for the signed-sum order
    Gram pass    --reconstruct's forward pass after scoring: the weights, one window's forward
                 and a float64 I x I sum per layer, as many layers a pass as fit
    training     trained weights in fp32, their gradients and AdamW's two moments; the layers'
                 activations as above; 4 fp32 B x T x V tensors at the loss (11 with
                 distillation: both models' logits, log-softmaxes and the KL terms); a teacher;
                 under torchrun DDP's gradient buckets (one more fp32 copy of the gradients)

The coefficients of the activation and score terms were fitted to peak RSS on SmolLM2
(benchmarks/memory_plan.py; the table and its spread are in docs/distributed.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import torch

from llmslim.core.errors import BadOptionError

GiB = 2**30
RUNTIME_BYTES = {"cpu": int(0.45 * GiB), "cuda": int(0.5 * GiB), "mps": int(0.5 * GiB)}
DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
FOLD_LAYER_COPIES = 5  # fp32 copies of one layer's scored weights alive while calibration folds a window
# the GMM clipping's working memory per scored weight of one layer: 0.87 GiB more than the same
# window without it on a 2-layer Llama-3-8B-shape slice (benchmarks/prune_big.py against
# memory_plan.py, CPU; docs/distributed.md)
GMM_BYTES_PER_SCORED_WEIGHT = 5.3


@dataclass
class Shapes:
    """What the estimate needs from a model: counted on a meta-device build of its config."""

    params: int
    ffn_params: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    attn_params: int = 0  # q, k, v, o weights of every layer (what --target attn scores)
    linear_sizes: list[tuple[int, int]] = field(default_factory=list)  # (in, out) of every decoder linear
    linear_names: list[str] = field(default_factory=list)  # their module names (q_proj, ...), in the same order


@dataclass
class MemoryPlan:
    device: str
    parts: dict[str, int]
    available: int | None  # bytes free on the device now (None: unknown)
    phase: str = ""  # the job's most demanding phase, which the parts describe

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= self.available

    def to_dict(self) -> dict:
        return {"phase": self.phase, "device": self.device, "parts_bytes": dict(self.parts),
                "parts_gib": {k: round(v / GiB, 3) for k, v in self.parts.items()},
                "total_gib": round(self.total / GiB, 3),
                "available_gib": None if self.available is None else round(self.available / GiB, 3), "fits": self.fits}

    def line(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items())
        free = "unknown" if self.available is None else f"{self.available / GiB:.1f} GiB free"
        return f"expected peak {self.total / GiB:.2f} GiB on {self.device} ({free}) in {self.phase}: {parts} (GiB)"


def model_config(spec: str):
    """The config of a model spec (alias, folder, .gguf, hub id, or `random:PRESET`) without its
    weights; a missing model or an unknown architecture is a one-line error, as in load_model."""
    from llmslim.bench.synthetic import is_random, random_config
    from llmslim.core.load import _gguf_cache_folder, read_config, resolve_model

    if is_random(spec):
        return random_config(spec)
    folder, gguf = resolve_model(spec)
    if gguf:
        cached = _gguf_cache_folder(folder, gguf)
        return read_config(spec, str(cached)) if (cached / "config.json").is_file() else read_config(spec, folder, gguf_file=gguf)
    return read_config(spec, folder)


def shapes_of(config) -> Shapes:
    from transformers import AutoModelForCausalLM

    from llmslim.core.arch import adapter_for, text_config
    from llmslim.core.params import count_params

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    adapter = adapter_for(model)
    tc = text_config(model.config)
    layers = adapter.decoder_layers(model)
    ffn = [adapter.ffn(layer, tc) for layer in layers]
    ffn_params = 0
    for f in ffn:
        mats = {id(b.linear): b.linear for b in f.inputs} | {id(f.output): f.output}  # a fused gate_up once
        ffn_params += sum(m.weight.numel() for m in mats.values())
    attn = adapter.attention(layers[0], tc)
    attn_params = 0
    for layer in layers:
        a = adapter.attention(layer, tc)
        mats = {id(b.linear): b.linear for b in (a.q, a.k, a.v)} | {id(a.o): a.o}  # a fused qkv once
        attn_params += sum(m.weight.numel() for m in mats.values())
    named = [(name.rsplit(".", 1)[-1], m) for layer in layers for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]
    linears = [(m.in_features, m.out_features) for _, m in named]
    return Shapes(params=count_params(model), ffn_params=ffn_params, attn_params=attn_params, layers=len(layers), hidden=tc.hidden_size,
                  intermediate=max(f.width for f in ffn), heads=attn.n_heads, kv_heads=attn.n_kv_heads,
                  head_dim=attn.head_dim, vocab=model.get_output_embeddings().weight.shape[0], linear_sizes=linears,
                  linear_names=[name for name, _ in named])


def activations(s: Shapes, tokens: int, seqlen: int, act_bytes: int) -> int:
    """What a backward pass through every layer keeps for `tokens` = batch x seqlen tokens,
    with the logits and the next-token loss's fp32 log-softmax."""
    return layer_activations(s, tokens, seqlen, act_bytes) + tokens * s.vocab * (act_bytes + 4)


def layer_activations(s: Shapes, tokens: int, seqlen: int, act_bytes: int) -> int:
    layer = tokens * (4 * s.intermediate + 2 * s.hidden) * act_bytes + (tokens // seqlen) * s.heads * seqlen * seqlen * 2
    return s.layers * layer


def prune_parts(s: Shapes, *, weight_bytes: int, seqlen: int, batch: int, refer: bool, snip: bool,
                signed_kinds: int, device_type: str, target: str = "ffn", fold: bool = True,
                gmm: bool = False) -> dict[str, int]:
    """Calibration's peak; `target` "attn" scores the attention weights instead of the FFN's.
    `fold`: the scores are folded per window (--accumulate per-window); `gmm`: with GMM clipping."""
    kinds = int(refer) + int(snip)
    tokens = batch * seqlen
    scored = s.attn_params if target == "attn" else s.ffn_params
    parts = {"runtime": RUNTIME_BYTES.get(device_type, RUNTIME_BYTES["cpu"]), "weights": s.params * weight_bytes}
    if kinds:
        parts["activations"] = activations(s, tokens, seqlen, weight_bytes)
        parts["window scores"] = kinds * scored * 4
        layer_scored = -(-scored // max(s.layers, 1))
        if fold:  # the per-window fold walks the layers (prune/calibrate._Grouped): one layer's
            # grouped, z-scored and clipped fp32 copies at a time. Fitted to measured peaks
            # (memory_plan.py): 4.9 such copies on a 1-layer Llama-3-8B-shape slice, 4.9-5.3 on
            # Llama-3.2-1B's shape. On a GPU small layers are clipped several at a time
            # (prune/accumulate._batches), up to a share of the memory free then: not planned,
            # it only takes what is left
            parts["fold (one layer)"] = FOLD_LAYER_COPIES * layer_scored * 4
            if gmm:  # one layer's batched mixture fit over its neurons' values (prune/gmm.py)
                parts["GMM fit (one layer)"] = int(GMM_BYTES_PER_SCORED_WEIGHT * layer_scored)
    if refer:  # 8 bytes per output value of the scored projections, kept for ReFer's backward:
        # the float64 rows of the flat feature's Gram matrix (prune/calibrate._wide_singular_values),
        # or with --feature-mode tokens an fp32 copy and its singular vectors
        width = (2 * s.heads * s.head_dim + 2 * s.kv_heads * s.head_dim) if target == "attn" else (2 * s.intermediate + s.hidden)
        parts["refer features"] = 2 * s.layers * tokens * width * 4
    if signed_kinds:
        parts["signed sums"] = signed_kinds * scored * 4
    return parts


def gram_parts(s: Shapes, *, weight_bytes: int, seqlen: int, device_type: str, target: str = "ffn",
               layers_per_pass: int) -> dict[str, int]:
    """--reconstruct's pass (prune/calibrate.collect_gram): the weights, one window's forward
    without gradients (a layer's activations, the float64 copy of a projection input, the
    logits) and `layers_per_pass` float64 width x width sums."""
    width = s.heads * s.head_dim if target == "attn" else s.intermediate
    return {"runtime": RUNTIME_BYTES.get(device_type, RUNTIME_BYTES["cpu"]), "weights": s.params * weight_bytes,
            "forward (one window)": layer_activations(replace(s, layers=1), seqlen, seqlen, weight_bytes)
            + seqlen * width * 8 + seqlen * s.vocab * weight_bytes,
            "Gram matrices (--reconstruct)": min(layers_per_pass, s.layers) * width * width * 8}


def gram_layers_per_pass(s: Shapes, available: int | None, **kwargs) -> int:
    """The most layers whose Gram sums fit `available` bytes in one pass (all where unknown;
    at least one, which the plan then shows does not fit). kwargs go to gram_parts."""
    if available is None:
        return s.layers
    fixed = sum(gram_parts(s, layers_per_pass=0, **kwargs).values())
    per_layer = gram_parts(s, layers_per_pass=1, **kwargs)["Gram matrices (--reconstruct)"]
    return max(1, min(s.layers, (available - fixed) // max(per_layer, 1)))


def compare_parts(s: Shapes, *, weight_bytes: int, copies: int, device_type: str) -> dict[str, int]:
    """Pruning after calibration (the scores are folded by then): the model and, with --compare,
    up to `copies` more whole models at once."""
    return {"runtime": RUNTIME_BYTES.get(device_type, RUNTIME_BYTES["cpu"]), "weights": s.params * weight_bytes,
            "copies for --compare": copies * s.params * weight_bytes}


def training_parts(s: Shapes, *, full: bool, lora_r: int, batch: int, seqlen: int,
                   teacher: Shapes | None, teacher_bytes: int, device_type: str, logit_copies: int | None = None,
                   modules: list[str] | None = None) -> dict[str, int]:
    """fp32 trained weights (core/device: "training"), AdamW, activations (bf16 by autocast on
    CUDA, fp32 elsewhere), a teacher for KD.
    `logit_copies`: the loss's fp32 [tokens, vocab] tensors alive at once, where a loss other
    than recover's keeps another number. `modules`: only the linears of these names train (in
    place, or their LoRA adapters), as shorten's --train-modules; None: all of them."""
    tokens = batch * seqlen
    act_bytes = 2 if device_type == "cuda" else 4
    sizes = [io for io, name in zip(s.linear_sizes, s.linear_names) if modules is None or name in modules]
    if full:
        trainable = s.params if modules is None else sum(i * o for i, o in sizes)
    else:
        trainable = sum(lora_r * (i + o) for i, o in sizes)
    # fp32 [tokens, vocab] tensors alive at recover's loss (recover/kd.py): logits, their fp32
    # slice and masked rows, CE's log-softmax; with distillation also the tempered student
    # log-softmax and the teacher's logits, slice, log-softmax, probabilities and the KL terms
    logit_copies = logit_copies or (11 if teacher is not None else 4)
    parts = {
        "runtime": RUNTIME_BYTES.get(device_type, RUNTIME_BYTES["cpu"]),
        "weights": s.params * 4 + (0 if full else trainable * 4),
        "gradients + AdamW": trainable * (4 + 8),
        "activations": layer_activations(s, tokens, seqlen, act_bytes),
        "logits and loss": logit_copies * tokens * s.vocab * 4,
    }
    if teacher is not None:
        parts["teacher"] = teacher.params * teacher_bytes
    from llmslim.core import distributed

    if distributed.launched():  # DDP's reduction buckets: another fp32 copy of the gradients
        parts["DDP gradient buckets"] = trainable * 4
    return parts


def smaller_batches(job, parts) -> list[tuple[str, dict[str, int]]]:
    """A training job's usual advice: its --batch-size halved down to 1, each with its parts
    (`parts(job with that batch size)`), the largest first."""
    from dataclasses import replace

    candidates, batch = [], job.batch_size
    while batch > 1:
        batch //= 2
        candidates.append((f"--batch-size {batch}", parts(replace(job, batch_size=batch))))
    return candidates


def available_bytes(device: torch.device, *, spread: bool = False, max_memory: dict | None = None) -> int | None:
    """Free memory for one process now. CUDA: its GPU's free bytes, or with `spread`
    (--device-map auto) the sum over the visible GPUs, each capped by `max_memory` where it names
    it. CPU: the machine's available RAM, shared by the launcher's processes on this node."""
    if device.type == "cuda":
        if not spread:
            return torch.cuda.mem_get_info(device)[0]
        from accelerate.utils import convert_file_size_to_int

        if max_memory is None:
            return sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
        # accelerate spreads over the GPUs max_memory names, and only those
        return sum(min(torch.cuda.mem_get_info(k)[0], convert_file_size_to_int(v) if isinstance(v, str) else v)
                   for k, v in max_memory.items() if k != "cpu")
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except OSError:
        pass
    return None


def check(plan: MemoryPlan, advice: str) -> None:
    """Refuse a job whose plan does not fit, naming the option that would make it fit."""
    if not plan.fits:
        raise BadOptionError(f"this job will not fit: {plan.line()}; {advice}")


def first_that_fits(device: str, available: int | None, candidates: list[tuple[str, dict[str, int]]]) -> str:
    """The first (option, parts) whose plan fits, as advice."""
    for option, parts in candidates:
        if MemoryPlan(device, parts, available).fits:
            return f"{option} would fit"
    return "no option tried fits (" + ", ".join(o for o, _ in candidates) + "): use a device with more memory or a smaller model"
