"""One ancestral sampling step's draw, the two ways of drawing it, in one process: the whole
[B, L, V] categorical (MASK as a category of weight mc_s, every position's vocabulary in float64,
the sampler until 2026-11-26) against sample.transition (reveal first, then a token only where one
is revealed). Same law (tests/diffuse: test_a_step_reveals_with_the_posterior_chance_and_draws_from_p).

    .venv/bin/python benchmarks/diffuse_draw.py            # SmolLM2's vocabulary, batch 4 x 128
"""

import argparse
import time

import torch

from llmslim.diffuse.sample import gumbel_categorical, transition

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--length", type=int, default=128)
ap.add_argument("--vocab", type=int, default=49153)
ap.add_argument("--steps", type=int, default=16, help="sampling steps (each reveals about 1/steps of the masks)")
ap.add_argument("--repeats", type=int, default=3)
args = ap.parse_args()


def whole(log_p, x, mask_id, mc_t, mc_s, generator):
    probs = log_p.double().exp() * (mc_t - mc_s)
    probs[..., mask_id] = mc_s
    return torch.where(x == mask_id, gumbel_categorical(probs, generator), x)


g = torch.Generator().manual_seed(0)
log_p = torch.randn(args.batch, args.length, args.vocab, generator=g).log_softmax(-1)
mask_id = args.vocab - 1
log_p[..., mask_id] = -1e6
x = torch.full((args.batch, args.length), mask_id)
mc_t, mc_s = torch.tensor(1.0, dtype=torch.float64), torch.tensor(1 - 1 / args.steps, dtype=torch.float64)
seconds = {}
for name, fn in (("whole", whole), ("transition", transition)):
    fn(log_p, x, mask_id, mc_t, mc_s, g)  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        fn(log_p, x, mask_id, mc_t, mc_s, g)
    seconds[name] = (time.perf_counter() - t0) / args.repeats
print(f"[{args.batch}, {args.length}, {args.vocab}], one step of {args.steps}: whole {seconds['whole'] * 1e3:.1f} ms, "
      f"transition {seconds['transition'] * 1e3:.1f} ms, {seconds['whole'] / seconds['transition']:.1f}x "
      f"({torch.get_num_threads()} threads)")
