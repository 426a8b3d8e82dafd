#!/usr/bin/env bash
# SmolLM2-135M-Instruct (embedded, on the CPU): dense + {SparseGPT, Wanda, RIA} x {uniform, ALP} at 70 %
# unstructured, the paper's Table II settings. MODEL (empty: the embedded model) and DEVICE (cpu) override.
# Usage: bash scripts/smollm2.sh   (OUT, EXTRA, ZERO_SHOT=1, DRY_RUN=1, ALP_DATA_DIR: see scripts/common.sh)
# Quick look: EXTRA="--eval_windows 20 --nsamples 32 --seqlen 512" bash scripts/smollm2.sh
MODEL="${MODEL:-}"
DEVICE="${DEVICE:-cpu}"
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
alp_setup smollm2
alp_paper_grid
