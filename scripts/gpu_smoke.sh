#!/usr/bin/env bash
# One short step of every recipe at GPU scale, on one GPU, in under 10 minutes (designed to; see below).
#
#   bash scripts/gpu_smoke.sh                  # run the plan, print a table (stage, sharding, vLLM, rc, s, peak GB)
#   bash scripts/gpu_smoke.sh --dry-run        # print the plan only (works on a CPU-only machine; CI checks it)
#   bash scripts/gpu_smoke.sh --out DIR --only grpo --no-vllm
#
# The model is built here, never downloaded: a randomly initialised Qwen3-shaped model of ~0.45B parameters
# (28 layers, hidden 1024, 16 query / 8 key-value heads of 128, FFN 3072: Qwen3-0.6B's body, with the arithmetic
# world's character vocabulary) and the arithmetic world's data (train.world.tiny, scripts/make_arithmetic_data.py).
# Each recipe runs its tiny YAML with the model, output folder and a one-step budget overridden, in bf16, under
# `accelerate launch --num_processes 1` with recipes/accelerate/zero3.yaml (DeepSpeed ZeRO-3) or fsdp2.yaml
# (FSDP2), with and without vLLM (GRPO colocated; distillation's pass rates), and merge on the CPU. Each step has a
# time limit (STEP_TIMEOUT, 150 s); a failed step is reported and the next one runs. Peak GPU memory is sampled with
# nvidia-smi once a second. Needs: the `deepspeed` and `vllm` extras, one CUDA GPU with >= 40 GB.
#
# STATUS: written without a GPU and never run on one. The plan prints on a CPU (tests/test_gpu_smoke.py); the
# first GPU run is the test of this script itself.
set -uo pipefail

DRY_RUN=0
OUT=outputs/gpu-smoke
ONLY=""
USE_VLLM=1
PY=${PYTHON:-python}
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        --no-vllm) USE_VLLM=0 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_smoke.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

MODEL="$OUT/model-0.5b"
DATA="$OUT/data"
ACC="accelerate launch --num_processes 1 --num_machines 1"
# Overrides every training step shares: the local model, bf16, one optimizer step, nothing saved mid-run.
COMMON="--model_name_or_path $MODEL --dtype bfloat16 --bf16 true --max_steps 1 --logging_steps 1 --report_to none"
COMMON="$COMMON --save_strategy no --gradient_checkpointing true --seed 0"

# name | sharding | vllm | command
STEPS=()
add() { STEPS+=("$1|$2|$3|$4"); }

add prepare - - "$PY -c \"from train.core.modes import QWEN3_THINK; from train.world.tiny import make_tiny; \
make_tiny('$MODEL', size='base', think=QWEN3_THINK, seed=0, hidden_size=1024, num_hidden_layers=28, \
num_attention_heads=16, num_key_value_heads=8, head_dim=128, intermediate_size=3072, max_position_embeddings=4096)\" \
&& $PY scripts/make_arithmetic_data.py --out $DATA --n-train 512 --n-test 32 --think-format qwen3"
for acc in zero3 fsdp2; do
    add "sft-$acc" "$acc" no "$ACC --config_file recipes/accelerate/$acc.yaml recipes/sft.py \
--config recipes/configs/tiny/sft.yaml $COMMON --train_files $DATA/train.jsonl --output_dir $OUT/sft-$acc \
--per_device_train_batch_size 8 --max_length 1024"
done
DISTILL="recipes/distill.py --config recipes/configs/tiny/distill.yaml $COMMON --train_file $DATA/train.jsonl \
--eval_file $DATA/test.jsonl --iterations 1 --candidates_per_iteration 16 --complexity_samples 2 \
--eval_max_samples 16 --track_first_iteration 0 --target_size 16 --max_new_tokens 64 --generation_batch_size 16"
add distill-zero3 zero3 no "$ACC --config_file recipes/accelerate/zero3.yaml $DISTILL --output_dir $OUT/distill-zero3 \
--complexity_backend transformers"
add distill-fsdp2-vllm fsdp2 yes "$ACC --config_file recipes/accelerate/fsdp2.yaml $DISTILL \
--output_dir $OUT/distill-fsdp2-vllm --complexity_backend vllm --complexity_gpu_memory_utilization 0.3"
GRPO="recipes/grpo.py --config recipes/configs/tiny/grpo_arithmetic.yaml $COMMON --train_files $DATA/train.jsonl \
--per_device_train_batch_size 8 --num_generations 4 --max_completion_length 64 --auto_resume false"
add grpo-zero3-vllm zero3 yes "$ACC --config_file recipes/accelerate/zero3.yaml $GRPO --output_dir $OUT/grpo-zero3-vllm \
--use_vllm true --vllm_mode colocate --vllm_gpu_memory_utilization 0.3 --vllm_max_model_length 1024"
add grpo-fsdp2 fsdp2 no "$ACC --config_file recipes/accelerate/fsdp2.yaml $GRPO --output_dir $OUT/grpo-fsdp2"
DUAL="recipes/dual_system.py --config recipes/configs/tiny/dual_system.yaml $COMMON --train_files $DATA/train.jsonl \
--max_prompts 16 --num_samples 2 --max_new_tokens 64 --batch_size 16 --phase1_steps 1 --phase2_steps 1 --rl_steps 0"
for acc in zero3 fsdp2; do
    add "dual_system-$acc" "$acc" no "$ACC --config_file recipes/accelerate/$acc.yaml $DUAL \
--output_dir $OUT/dual_system-$acc"
done
add merge cpu no "$PY recipes/merge.py --config recipes/configs/tiny/merge_linear.yaml --out $OUT/merged \
--models '[{\"model\": \"$OUT/sft-zero3\", \"parameters\": {\"weight\": 0.5}}, \
{\"model\": \"$OUT/sft-fsdp2\", \"parameters\": {\"weight\": 0.5}}]' --dtype bfloat16"

selected() {  # name vllm
    [[ -n "$ONLY" && "$1" != prepare && "$1" != *"$ONLY"* ]] && return 1
    [[ "$USE_VLLM" == 0 && "$2" == yes ]] && return 1
    return 0
}

echo "gpu_smoke plan: outputs in $OUT, ${STEP_TIMEOUT}s limit per step"
n=0
for s in "${STEPS[@]}"; do
    IFS='|' read -r name shard vllm cmd <<<"$s"
    selected "$name" "$vllm" || continue
    n=$((n + 1))
    printf '\n[%d] %s (sharding: %s, vLLM: %s)\n    $ %s\n' "$n" "$name" "$shard" "$vllm" "$cmd"
done
echo; echo "$n steps"
if [[ "$DRY_RUN" == 1 ]]; then
    echo "dry run: nothing executed"
    exit 0
fi

command -v nvidia-smi >/dev/null || { echo "gpu_smoke.sh: no nvidia-smi: this needs a CUDA GPU" >&2; exit 2; }
mkdir -p "$OUT/logs"
ROWS=()
failed=0
for s in "${STEPS[@]}"; do
    IFS='|' read -r name shard vllm cmd <<<"$s"
    selected "$name" "$vllm" || continue
    mem="$OUT/logs/$name.mem"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 1000 >"$mem" 2>/dev/null &
    poll=$!
    start=$(date +%s)
    echo "== $name"
    timeout "$STEP_TIMEOUT" bash -c "$cmd" >"$OUT/logs/$name.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    kill "$poll" 2>/dev/null; wait "$poll" 2>/dev/null
    peak=$(sort -n "$mem" 2>/dev/null | tail -n 1)
    peak_gb=$(awk -v m="${peak:-0}" 'BEGIN { printf "%.1f", m * 1048576 / 1e9 }')
    [[ $rc -ne 0 ]] && { failed=$((failed + 1)); tail -n 5 "$OUT/logs/$name.log"; }
    ROWS+=("| $name | $shard | $vllm | $rc | $secs | $peak_gb |")
done

echo
echo "| step | sharding | vLLM | rc | seconds | peak GPU GB |"
echo "|---|---|---|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo "logs: $OUT/logs/<step>.log (rc 124: the step ran past ${STEP_TIMEOUT}s)"
exit $(( failed > 0 ))
