#!/usr/bin/env bash
# LLaMA-1 7B: dense + {SparseGPT, Wanda, RIA} x {uniform, ALP} at 70 % unstructured (the paper's Table II column).
# Usage: bash scripts/llama-7b.sh   (MODEL, DEVICE, OUT, EXTRA, ZERO_SHOT=1, DRY_RUN=1, ALP_DATA_DIR: see scripts/common.sh)
MODEL="${MODEL:-huggyllama/llama-7b}"
DEVICE="${DEVICE:-cuda}"
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
alp_setup llama-7b
alp_paper_grid
