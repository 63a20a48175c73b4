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
evaluate.py   perplexity and multiple-choice accuracy with a mask chosen per input
tasks.py      ARC-Easy / PIQA / HellaSwag items from the local files, lm-eval prompt formats
run.py        the collect / train / eval jobs (config -> result dict, files written atomically)
cli.py        `llmslim sparsity collect | train | eval`
"""
