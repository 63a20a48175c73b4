"""Speed and memory benchmarks of in-memory models.

speed.py      measure / measure_many: prefill and decode tok/s, interleaved across models
memory.py     peak memory per model (CUDA max allocated; CPU resident-set high-water mark)
split.py      time_split: attention / FFN / lm_head / other, from forward hooks
synthetic.py  random_model: seeded random weights for a real architecture at any size
run.py        run: the CLI's call (sizes, every batch size, split, against/model ratios)
"""
