"""`llmslim sparsity`: ShadowLLM predictor-based contextual sparsity (issue #6).

criteria.py   per-example importance of every attention head and FFN neuron (plainact, l2norm,
              fisher, snip, gradnorm), from a unit's activation A and g = dL/dA
collect.py    traces: the layer-0 attention output at the decision token (ShadowLLM's input
              feature), every layer's input there (DejaVu's), and per-layer unit scores
predictor.py  ShadowLLM (one MLP from the layer-0 feature to all layers) and DejaVu-style
              per-layer low-rank predictors; Spearman rho on a held-out split
masks.py      scores -> kept units (perlayer / global / hybrid); GQA kv groups
execute.py    gathered execution: kept rows/columns (and kv groups) swapped in as smaller
              Linear weights while a call runs; the masked reference computation
evaluate.py   perplexity with a mask chosen per input (or per token); the oracle's true scores
lm.py         the sparse model as an lm-eval LM: accuracy through the task YAMLs `llmslim eval` runs
tasks.py      ARC-Easy / PIQA / HellaSwag items from the local files, split in the traces' half and lm-eval's
bench.py      dense vs sparse prefill and decode in one interleaved run, ratios, per-module split
jobs.py       the collect / train / eval / generate / bench jobs (config -> result dict, files
              written atomically)
cli.py        `llmslim sparsity collect | train | eval | generate | bench`
"""
