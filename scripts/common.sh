# shellcheck shell=bash
# Shared logic of the reproduction scripts; sourced by scripts/<model>.sh and scripts/sweep.sh, never run.
# The sourcing script sets MODEL and DEVICE defaults, then calls alp_setup NAME and alp_run / alp_paper_grid.
# Environment:
#   MODEL         hub id or local checkpoint (empty: the embedded SmolLM2)
#   DEVICE        main.py --device
#   OUT           folder for the JSON logs and log_<method>.txt (default logs/<name>)
#   EXTRA         flags appended to every main.py call, e.g. "--eval_windows 20 --nsamples 32 --seqlen 512"
#   ZERO_SHOT=1   add --eval_zero_shot
#   DRY_RUN=1     print every command ("+ python main.py ...") and run nothing
#   METHODS       space-separated methods for alp_paper_grid, e.g. "dense wanda_alp" (default: the paper grid)
#   ALP_DATA_DIR  local data folder (main.py reads it from the environment)
# Relative paths are taken from the repository root. A run whose JSON log exists is skipped, so an
# interrupted script resumes where it stopped; the first failing run stops the script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The paper's settings besides main.py's defaults (70 % unstructured, 128 x 2048 C4 calibration).
ALP_PAPER_FLAGS=(--alpha 0.15 --grad_nsamples 10 --seed 0)
ALP_PAPER_METHODS=(dense sparsegpt sparsegpt_alp wanda wanda_alp ria ria_alp)

alp_dry_run() {  # true when DRY_RUN=1
  [ "${DRY_RUN:-0}" = 1 ]
}

alp_setup() {  # alp_setup NAME: OUT default and the flags every main.py call gets
  ALP_NAME=$1
  OUT="${OUT:-logs/$ALP_NAME}"
  read -r -a ALP_EXTRA <<<"${EXTRA:-}"
  ALP_COMMON=()
  if [ -n "${MODEL:-}" ]; then ALP_COMMON+=(--model "$MODEL"); fi
  ALP_COMMON+=(--device "${DEVICE:-auto}")
  if [ "${ZERO_SHOT:-0}" = 1 ]; then ALP_COMMON+=(--eval_zero_shot); fi
  if ! alp_dry_run; then mkdir -p "$OUT"; fi
}

alp_run() {  # alp_run LOG_NAME MAIN_FLAGS...: one main.py run logged to $OUT/LOG_NAME.json
  local name=$1 json="$OUT/$1.json" line rc=0
  shift
  if [ -f "$json" ]; then
    echo "skip $name (have $json)"
    return 0
  fi
  local cmd=(python main.py "$@" "${ALP_COMMON[@]}" --log_json "$json" --save_log "$OUT" "${ALP_EXTRA[@]}")
  printf -v line '%q ' "${cmd[@]}"
  echo "+ ${line% }"
  if alp_dry_run; then return 0; fi
  "${cmd[@]}" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "stopped: $name failed (exit $rc); rerun the script to resume" >&2
    exit "$rc"
  fi
}

alp_paper_grid() {  # dense + {sparsegpt, wanda, ria} x {uniform, alp} at 70 %, the paper's Table II row set
  local method methods
  read -r -a methods <<<"${METHODS:-${ALP_PAPER_METHODS[*]}}"
  for method in "${methods[@]}"; do  # refuse a typo before the first (long) run starts
    if ! [[ $method =~ ^(dense|(magnitude|wanda|sparsegpt|ria)(_alp)?)$ ]]; then
      echo "METHODS: unknown method '$method' (dense, magnitude, wanda, sparsegpt, ria, each also with _alp)" >&2
      exit 2
    fi
  done
  for method in "${methods[@]}"; do
    alp_run "${ALP_NAME}_${method}_0.7" --prune_method "$method" --sparsity_ratio 0.7 "${ALP_PAPER_FLAGS[@]}"
  done
  alp_done
}

alp_done() {  # where the tables come from
  if ! alp_dry_run; then echo "done; tables: python scripts/make_tables.py $OUT"; fi
}
