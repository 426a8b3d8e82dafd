#!/usr/bin/env bash
# Pruning + quantization that keeps the mask: {wanda, sparsegpt, ria} x {uniform, alp} at 50 % and
# 70 % with 16 (no quantization), 8, 4 and 3 bits, plus GPTQ of the dense model. sparsegpt
# quantizes inside its own sweep; wanda and ria run GPTQ afterwards with their mask held fixed.
# Quick settings by default: EXTRA="--nsamples 32 --seqlen 512 --eval_windows 20"; QUANT="--groupsize -1"
# (grid flags), BITS="16 8 4 3"; OUT (default logs/quant), MODEL, DEVICE, DRY_RUN=1: see scripts/common.sh.
# Existing results are skipped. Table: python scripts/collect_results.py --by_bits $OUT
EXTRA="${EXTRA:---nsamples 32 --seqlen 512 --eval_windows 20}"
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
alp_setup quant
read -r -a QUANT_FLAGS <<<"${QUANT:---groupsize -1}"
for b in ${BITS:-16 8 4 3}; do
  q=()
  if [ "$b" != 16 ]; then q=(--wbits "$b" "${QUANT_FLAGS[@]}"); fi
  alp_run "dense_w${b}" --prune_method dense "${q[@]}"
  for s in 0.7 0.5; do
    for m in wanda sparsegpt ria; do
      alp_run "${m}_${s}_w${b}" --prune_method "$m" --sparsity_ratio "$s" "${q[@]}"
      alp_run "${m}_alp_${s}_w${b}" --prune_method "${m}_alp" --sparsity_ratio "$s" "${q[@]}"
    done
  done
done
alp_dry_run || python scripts/collect_results.py --by_bits "$OUT"
