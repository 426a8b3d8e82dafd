#!/usr/bin/env bash
# Sparsity x alpha sweep on one model: PRUNER_alp at sparsity 0.5 0.6 0.7 0.8 x alpha 0.05 .. 0.25, and the
# uniform PRUNER at each sparsity. Figures and tables: python scripts/make_tables.py $OUT
# Usage: bash scripts/sweep.sh
#   MODEL (default: the embedded SmolLM2), PRUNER (wanda; or magnitude, sparsegpt, ria), DEVICE (auto),
#   OUT (logs/sweep), EXTRA, ZERO_SHOT=1, DRY_RUN=1, ALP_DATA_DIR: see scripts/common.sh
MODEL="${MODEL:-}"
DEVICE="${DEVICE:-auto}"
PRUNER="${PRUNER:-wanda}"
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
case "$PRUNER" in
  magnitude | wanda | sparsegpt | ria) ;;
  *) echo "PRUNER=$PRUNER: use magnitude, wanda, sparsegpt or ria" >&2; exit 2 ;;
esac
name=smollm2
if [ -n "$MODEL" ]; then name=$(basename "$MODEL"); fi
OUT="${OUT:-logs/sweep}"
alp_setup "$name"
for s in 0.5 0.6 0.7 0.8; do
  alp_run "${name}_${PRUNER}_${s}" --prune_method "$PRUNER" --sparsity_ratio "$s" --grad_nsamples 10 --seed 0
  for a in 0.05 0.10 0.15 0.20 0.25; do
    alp_run "${name}_${PRUNER}_alp_${s}_a${a}" --prune_method "${PRUNER}_alp" --sparsity_ratio "$s" --alpha "$a" \
      --grad_nsamples 10 --seed 0
  done
done
alp_done
