"""Batched generation that returns texts and exact output-token counts."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Generation:
    prompt: str
    text: str
    n_tokens: int  # generated tokens up to and including the first EOS; no padding
    finished: bool  # stopped on EOS rather than the token limit
    ids: list[int] = field(default_factory=list)  # those tokens as generated (decode + encode may not round-trip)


def render_prompt(tokenizer, prompt: str, chat: bool | None = None, system: str | None = None) -> str:
    """Apply the chat template when the tokenizer has one (or `chat` forces it)."""
    use_chat = bool(tokenizer.chat_template) if chat is None else chat
    if not use_chat:
        return prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _stop_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    chat: bool | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress=None,
) -> list[Generation]:
    """Generate for each prompt (left-padded batches); `progress(n)` is called after each batch."""
    device = next(model.parameters()).device
    stop = _stop_ids(model, tokenizer)
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    results: list[Generation] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            texts = [render_prompt(tokenizer, p, chat) for p in batch]
            # chat templates already contain BOS where the model wants one
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not (chat or (chat is None and tokenizer.chat_template))).to(device)
            torch.manual_seed(seed + start)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(stop), **sampling,
                **({} if do_sample else {"temperature": None, "top_p": None, "top_k": None}),
            )
            new = out[:, enc.input_ids.shape[1] :].tolist()
            for prompt, ids in zip(batch, new):
                end = next((i + 1 for i, t in enumerate(ids) if t in stop), None)
                kept = ids[:end] if end else ids
                text = tokenizer.decode([t for t in kept if t not in stop], skip_special_tokens=True)
                results.append(Generation(prompt, text, len(kept), end is not None, kept))
            if progress:
                progress(len(batch))
    finally:
        tokenizer.padding_side = pad_side
    return results
