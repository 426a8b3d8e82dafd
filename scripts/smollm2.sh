#!/usr/bin/env bash
# SmolLM2-135M-Instruct (embedded): dense, Wanda and Wanda-ALP at 70 % unstructured.
# Usage: bash scripts/smollm2.sh            (ALP_DATA_DIR / MODEL / OUT from the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-logs/smollm2}"
MODEL_ARGS=()
[ -n "${MODEL:-}" ] && MODEL_ARGS=(--model "$MODEL")
mkdir -p "$OUT"
for method in dense wanda wanda_alp; do
  json="$OUT/${method}_0.7.json"
  if [ -f "$json" ]; then echo "skip $method (have $json)"; continue; fi
  python main.py "${MODEL_ARGS[@]}" --prune_method "$method" --sparsity_ratio 0.7 --alpha 0.15 \
    --log_json "$json" --save_log "$OUT"
done
