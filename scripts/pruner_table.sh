#!/usr/bin/env bash
# Every pruner, uniform and ALP, at 50 % and 70 % unstructured and at 2:4 (RIA also with channel
# permutation), on one model. Quick settings by default (override through the environment):
#   CALIB="--nsamples 32 --seqlen 512"  EVAL="--eval_windows 20"  OUT=logs/pruners  MODEL=...
# Existing results are skipped, so an interrupted sweep resumes. Table: scripts/collect_results.py $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-logs/pruners}"
CALIB="${CALIB:---nsamples 32 --seqlen 512}"
EVAL="${EVAL:---eval_windows 20}"
MODEL_ARGS=()
[ -n "${MODEL:-}" ] && MODEL_ARGS=(--model "$MODEL")
mkdir -p "$OUT"
run() {  # run NAME ARGS...
  local name=$1; shift
  if [ -f "$OUT/$name.json" ]; then echo "skip $name"; return; fi
  echo "== $name"
  # shellcheck disable=SC2086
  python main.py "${MODEL_ARGS[@]}" $CALIB $EVAL --log_json "$OUT/$name.json" "$@"
}
for s in 0.5 0.7; do
  for m in magnitude wanda sparsegpt ria; do
    run "${m}_${s}" --prune_method "$m" --sparsity_ratio "$s"
    run "${m}_alp_${s}" --prune_method "${m}_alp" --sparsity_ratio "$s"
  done
done
for m in magnitude wanda sparsegpt ria; do
  run "${m}_2-4" --prune_method "$m" --sparsity_type 2:4 --sparsity_ratio 0.5
done
run "ria_2-4_permuted" --prune_method ria --sparsity_type 2:4 --sparsity_ratio 0.5 --reallocation
run "ria_2-4_permuted_lsa" --prune_method ria --sparsity_type 2:4 --sparsity_ratio 0.5 --reallocation --lsa
python scripts/collect_results.py "$OUT"
