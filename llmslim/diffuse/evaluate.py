"""What `diffuse eval` measures: generative perplexity of samples under an AR evaluator, per-sample
unigram entropy, LAMBADA last-word accuracy, and latency against AR decoding with a KV cache."""

from __future__ import annotations

import math
import time

import torch

from llmslim.diffuse.mdlm import denoise


@torch.no_grad()
def generative_perplexity(evaluator, tokens: torch.Tensor, prefix_len: int, eos_id: int | None = None,
                          batch_size: int = 8) -> float:
    """exp(mean NLL) of the generated tokens (positions >= prefix_len) under the AR evaluator,
    which reads the whole sample (MDLM's gen-PPL; here on the same token ids, no retokenising,
    when the evaluator shares the tokenizer). As MDLM counts them: every token but EOS, and the
    first EOS of a sample (a run of EOS tokens is easy to predict and would flatter the score)."""
    device = next(evaluator.parameters()).device
    total, count = 0.0, 0
    for i in range(0, tokens.shape[0], batch_size):
        batch = tokens[i : i + batch_size].to(device)
        logits = evaluator(input_ids=batch).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, prefix_len - 1 : -1].transpose(1, 2), batch[:, prefix_len:],
                                                reduction="none")
        generated = batch[:, prefix_len:]
        counted = torch.ones_like(generated, dtype=torch.bool)
        if eos_id is not None:
            is_eos = generated == eos_id
            counted = ~is_eos | (is_eos & (is_eos.cumsum(-1) == 1))
        total, count = total + nll[counted].sum().item(), count + int(counted.sum())
    return math.exp(total / count)


def unigram_entropy(tokens: torch.Tensor) -> float:
    """Mean over samples of the entropy (nats) of each sample's token histogram: a sample that
    repeats a few tokens (mode collapse) scores low."""
    values = []
    for row in tokens:
        counts = torch.bincount(row).float()
        p = counts[counts > 0] / row.numel()
        values.append(float(-(p * p.log()).sum()))
    return sum(values) / len(values)


def lambada_items(tokenizer, texts: list[str], max_context: int = 1024) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(context ids, last-word ids) per passage: the target is the last space-separated word,
    tokenized with its leading space as lm-eval's lambada does."""
    items = []
    for text in texts:
        context, _, word = text.rstrip().rpartition(" ")
        ctx = tokenizer(context, add_special_tokens=False).input_ids[-max_context:]
        target = tokenizer(" " + word, add_special_tokens=False).input_ids
        items.append((torch.tensor(ctx), torch.tensor(target)))
    return items


@torch.no_grad()
def lambada_diffusion(model, items, mask_id: int, first_token: int) -> float:
    """The passage after the start token every training window had, all tokens of the last
    word masked, one forward pass, argmax at each: correct when every token matches."""
    device = next(model.parameters()).device
    correct = 0
    for ctx, target in items:
        ctx = torch.cat([torch.tensor([first_token]), ctx])
        x = torch.cat([ctx, torch.full_like(target, mask_id)])[None].to(device)
        guess = denoise(model, x, mask_id)[0, ctx.numel():].argmax(-1).cpu()
        correct += bool(torch.equal(guess, target))
    return correct / len(items)


@torch.no_grad()
def lambada_ar(model, items) -> float:
    """lm-eval's lambada accuracy for an AR model: the greedy next token at every target
    position (teacher-forced) equals the target."""
    device = next(model.parameters()).device
    correct = 0
    for ctx, target in items:
        x = torch.cat([ctx, target])[None].to(device)
        guess = model(input_ids=x).logits[0, ctx.numel() - 1 : -1].argmax(-1).cpu()
        correct += bool(torch.equal(guess, target))
    return correct / len(items)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency(fn, device: torch.device, repeats: int = 3) -> float:
    """Median wall seconds of fn() over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def ar_decode(model, prefix: torch.Tensor, new_tokens: int, batch: int, do_sample: bool = False, top_p: float = 1.0,
              generator_seed: int | None = None) -> torch.Tensor:
    """The AR model's own continuation with its KV cache: exactly new_tokens tokens (EOS ignored)."""
    device = next(model.parameters()).device
    ids = prefix.to(device).reshape(1, -1).expand(batch, -1)
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=do_sample, top_p=top_p if do_sample else None,
                          top_k=0 if do_sample else None, temperature=1.0 if do_sample else None, use_cache=True,
                          pad_token_id=model.config.eos_token_id if model.config.pad_token_id is None else model.config.pad_token_id)
