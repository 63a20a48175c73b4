#!/usr/bin/env bash
# Here (the CPU machine, repo root): build .gpu/ (git-ignored), what a lent GPU machine needs and
# cannot download, in pieces that each fit one `run` call's 64 MiB carry:
#   .gpu/wheels   the packages of benchmarks/gpu/requirements.txt for Python 3.12 (~28 MB)
#   .gpu/data     the shared data files the GPU jobs read (~13 MB)
#   .gpu/model-a, .gpu/model-b   the two halves of SmolLM2's GGUF (47 MiB each)
# docs/gpu.md says which call carries which, and what runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${LLMSLIM_DATA:-../shared/data}
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/data .gpu/model-a .gpu/model-b
grep -v '^#' benchmarks/gpu/requirements.txt | while read -r req; do
    [ -n "$req" ] || continue
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/wheels "$req" 2>/dev/null && continue
    # no 3.12 wheel on PyPI (an sdist only): build one here, and refuse anything but pure Python
    .venv/bin/python -m pip wheel -q --no-deps -w .gpu/wheels "$req"
    ls .gpu/wheels/"$(echo "${req%%==*}" | tr '-' '_')"-*-py3-none-any.whl >/dev/null \
        || { echo "no pure-Python wheel for $req" >&2; exit 1; }
done
for f in wikitext2/wiki.test.raw alpaca/alpaca_200.json gsm8k/train.jsonl lambada mt_bench arc piqa hellaswag; do
    mkdir -p ".gpu/data/$(dirname "$f")" && cp -r "$data/$f" ".gpu/data/$(dirname "$f")/"
done
gguf=$(.venv/bin/python -c "from llmslim.core.load import _smollm2_gguf; print(_smollm2_gguf())")
half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
head -c "$half" "$gguf" > .gpu/model-a/smollm2.gguf.part1
tail -c +"$(( half + 1 ))" "$gguf" > .gpu/model-b/smollm2.gguf.part2
sha256sum "$gguf" | cut -d' ' -f1 > .gpu/model-b/smollm2.gguf.sha256
du -sh .gpu/*
