#!/usr/bin/env bash
# The embedded SmolLM2 pipeline on one GPU at the reference settings (128 x 2048 C4 calibration,
# full WikiText-2), in three steps, each writing into OUT_DIR:
#   1. scripts/bench_pipeline.py: stage times, roofline ratio, evaluation vs a plain forward;
#   2. Wanda-ALP and SparseGPT-ALP under each placement (weights on the GPU, --offload,
#      --device_map auto): prune time, measured vs predicted GPU peak, perplexity;
#   3. the paper's 70 % grid (scripts/smollm2.sh) into OUT_DIR/paper.
# Usage: bash scripts/bench_gpu.sh OUT_DIR
# Environment: MODEL (default: the embedded SmolLM2), DEVICE (cuda), EXTRA (flags for every run,
# e.g. "--nsamples 8 --seqlen 256 --eval_windows 4" for a smoke test), STEPS ("1 2 3").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:?usage: bash scripts/bench_gpu.sh OUT_DIR}
mkdir -p "$out"
device=${DEVICE:-cuda}
read -r -a extra <<<"${EXTRA:-}"
model=()
if [ -n "${MODEL:-}" ]; then model=(--model "$MODEL"); fi
steps=" ${STEPS:-1 2 3} "

if [[ $steps == *" 1 "* ]]; then
  python scripts/bench_pipeline.py -- "${model[@]}" --device "$device" "${extra[@]}" 2>&1 | tee "$out/bench_pipeline.txt"
fi

if [[ $steps == *" 2 "* ]]; then
  for placement in device offload auto; do
    case $placement in
      device) where=(--device "$device") ;;
      offload) where=(--device "$device" --offload) ;;
      auto) where=(--device_map auto) ;;
    esac
    for method in wanda_alp sparsegpt_alp; do
      echo "+ python main.py --prune_method $method ${where[*]} ${extra[*]}"
      python main.py "${model[@]}" "${where[@]}" --prune_method "$method" --alpha 0.15 --grad_nsamples 10 \
        --skip_dense "${extra[@]}" --log_json "$out/placement_${placement}_${method}.json" --overwrite \
        >"$out/placement_${placement}_${method}.txt" 2>&1
    done
  done
  python - "$out" <<'EOF' | tee "$out/placements.md"
import json, sys
from pathlib import Path

print("| placement | method | prune s | measured GPU peak MiB | predicted MiB | wikitext2 ppl |")
print("|---|---|---|---|---|---|")
for log in sorted(Path(sys.argv[1]).glob("placement_*.json")):
    r = json.loads(log.read_text())
    peak = r["measured_prune_peak_bytes"]
    print(f"| {r['placement']} | {r['prune_method']} | {r['timings']['prune']:.1f} | {peak / 2**20:.0f} | "
          f"{r['predicted_memory_bytes']['device'] / 2**20:.0f} | {r['ppl']['wikitext2']:.2f} |")
EOF
fi

if [[ $steps == *" 3 "* ]]; then
  MODEL="${MODEL:-}" DEVICE="$device" OUT="$out/paper" EXTRA="${EXTRA:-}" bash scripts/smollm2.sh
  python scripts/collect_results.py "$out/paper" | tee "$out/paper.md"
fi
