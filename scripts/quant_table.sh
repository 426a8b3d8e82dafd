#!/usr/bin/env bash
# Pruning + quantization that keeps the mask: {wanda, sparsegpt, ria} x {uniform, alp} at 50 % and
# 70 % with 16 (no quantization), 8, 4 and 3 bits, plus GPTQ of the dense model. sparsegpt
# quantizes inside its own sweep; wanda and ria run GPTQ afterwards with their mask held fixed.
# Quick settings by default (override through the environment):
#   CALIB="--nsamples 32 --seqlen 512"  EVAL="--eval_windows 20"  QUANT="--groupsize -1"
#   OUT=logs/quant  MODEL=...  BITS="16 8 4 3"
# Existing results are skipped, so an interrupted sweep resumes.
# Table: python scripts/collect_results.py --by_bits $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-logs/quant}"
CALIB="${CALIB:---nsamples 32 --seqlen 512}"
EVAL="${EVAL:---eval_windows 20}"
QUANT="${QUANT:---groupsize -1}"
BITS="${BITS:-16 8 4 3}"
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
for b in $BITS; do
  q=()
  [ "$b" != 16 ] && q=(--wbits "$b" $QUANT)
  [ "$b" != 16 ] && run "dense_w${b}" --prune_method dense "${q[@]}"
  for s in 0.7 0.5; do
    for m in wanda sparsegpt ria; do
      run "${m}_${s}_w${b}" --prune_method "$m" --sparsity_ratio "$s" "${q[@]}"
      run "${m}_alp_${s}_w${b}" --prune_method "${m}_alp" --sparsity_ratio "$s" "${q[@]}"
    done
  done
done
python scripts/collect_results.py --by_bits "$OUT"
