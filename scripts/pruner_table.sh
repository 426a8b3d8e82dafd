#!/usr/bin/env bash
# Every pruner, uniform and ALP, at 50 % and 70 % unstructured and at 2:4 (RIA also with channel
# permutation), on one model. Quick settings by default: EXTRA="--nsamples 32 --seqlen 512 --eval_windows 20";
# OUT (default logs/pruners), MODEL, DEVICE, DRY_RUN=1: see scripts/common.sh. Existing results are skipped.
EXTRA="${EXTRA:---nsamples 32 --seqlen 512 --eval_windows 20}"
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
alp_setup pruners
for s in 0.5 0.7; do
  for m in magnitude wanda sparsegpt ria; do
    alp_run "${m}_${s}" --prune_method "$m" --sparsity_ratio "$s"
    alp_run "${m}_alp_${s}" --prune_method "${m}_alp" --sparsity_ratio "$s"
  done
done
for m in magnitude wanda sparsegpt ria; do
  alp_run "${m}_2-4" --prune_method "$m" --sparsity_type 2:4 --sparsity_ratio 0.5
done
alp_run "ria_2-4_permuted" --prune_method ria --sparsity_type 2:4 --sparsity_ratio 0.5 --reallocation
alp_run "ria_2-4_permuted_lsa" --prune_method ria --sparsity_type 2:4 --sparsity_ratio 0.5 --reallocation --lsa
alp_dry_run || python scripts/collect_results.py "$OUT"
