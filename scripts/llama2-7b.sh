#!/usr/bin/env bash
# LLaMA-2 7B: dense + {SparseGPT, Wanda, RIA} x {uniform, ALP} at 70 % unstructured (the paper's Table II column).
# Usage: bash scripts/llama2-7b.sh   (MODEL, DEVICE, OUT, EXTRA, ZERO_SHOT=1, DRY_RUN=1, ALP_DATA_DIR: see scripts/common.sh)
MODEL="${MODEL:-meta-llama/Llama-2-7b-hf}"
DEVICE="${DEVICE:-cuda}"
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
alp_setup llama2-7b
alp_paper_grid
