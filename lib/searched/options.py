"""Options of the searched allocations (``--allocation dp`` / ``evo``): flags, checks, dataclass.

The flags are declared by :func:`add_searched_args` (called from ``main.build_parser``; the
defaults live there) and checked by :func:`searched_options` before any model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

SEARCHED_ALLOCATIONS = ("dp", "evo")
EVO_STARTS = ("uniform", "dp")


@dataclass(frozen=True)
class SearchedOptions:
    """Level grid, held-out text and search budget of ``--allocation dp`` / ``evo``."""

    level_step: float = 0.02  # Delta as a fraction of the mean block's prunable weights
    dp_levels: int = 5  # dp grid: levels -K..K
    evo_levels: int = 10  # evo: levels -K..K
    seqlen: int = 256  # tokens per held-out sequence
    nsamples: int = 16  # pruning-calibration sequences the scores / SparseGPT database are computed from
    dp_tokens: int = 512  # held-out tokens of each dp cost
    cost_cache: str | None = None  # None: one file per model and setting under cache_root()
    generations: int = 24
    offspring: int = 16
    stage_tokens: tuple[int, ...] = (128, 512, 2048)  # tokens of each selection stage (growing)
    survivors: tuple[int, ...] = (4, 1)  # offspring kept after each stage but the last
    max_moves: int = 3  # level switches per offspring: 1..max_moves
    start: str = "uniform"  # evo's first parent: uniform, the dp profile, or the path of a run's JSON log
    start_ratios: tuple[float, ...] | None = None  # that log's layer_ratios (snapped to the grid later)
    restats: int = 8  # evo: statistics re-collected at the parent every N generations (0: dense throughout)
    # (from the flags: RESTATS_DEFAULT[pruner] unless --evo_restats is given)
    db_memory_gib: float = 4.0  # SparseGPT level database: in memory up to this size, else on disk
    db_dir: str | None = None  # where an on-disk database goes (None: cache_root()/searched/db)


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def add_searched_args(g) -> None:
    """Declare the flags of ``--allocation dp`` / ``evo`` on argparse group ``g``."""
    g.add_argument(
        "--level_step",
        type=float,
        default=0.02,
        help="dp/evo level grid: one level moves Delta = level_step x (mean block's weights) weights, so block l "
        "moves by Delta/n_l in sparsity and a step down in one block and up in another keeps the target exactly",
    )
    g.add_argument("--dp_levels", type=int, default=5, help="dp: levels -K..K around the target (cost: 2K+1 per block)")
    g.add_argument("--evo_levels", type=int, default=10, help="evo: block levels limited to -K..K")
    g.add_argument(
        "--searched_seqlen", type=int, default=256, help="dp/evo: tokens per held-out calibration sequence (seed+1)"
    )
    g.add_argument(
        "--searched_nsamples",
        type=int,
        default=16,
        help="dp/evo: first N pruning-calibration sequences for the scores / SparseGPT database, taken on the "
        "dense model (capped at --nsamples)",
    )
    g.add_argument("--dp_tokens", type=int, default=512, help="dp: held-out tokens scored for each block cost")
    g.add_argument(
        "--cost_cache",
        default=None,
        metavar="PATH",
        help="dp cost table (JSON with metadata; reused across targets, refused when made for other settings; "
        "default: one file per model and setting under the cache folder)",
    )
    g.add_argument(
        "--evo_generations",
        type=int,
        default=24,
        help="evo: generations (default 24: Wanda 70 %% on SmolLM2 on 2 CPU cores took 14 min of search plus 2 min "
        "of --evo_restats statistics, results/smollm2/ladder/wanda_0.7_evo.json; the run prints its own estimate)",
    )
    g.add_argument("--evo_offspring", type=int, default=16, help="evo: offspring per generation (lambda)")
    g.add_argument(
        "--evo_tokens",
        type=_int_list,
        default=(128, 512, 2048),
        help="evo: held-out tokens of each selection stage, growing (the last stage's KL is the fitness)",
    )
    g.add_argument(
        "--evo_survivors",
        type=_int_list,
        default=(4, 1),
        help="evo: offspring kept after each stage but the last (one number fewer than --evo_tokens)",
    )
    g.add_argument("--evo_max_moves", type=int, default=3, help="evo: level switches per offspring, 1..N")
    g.add_argument(
        "--evo_start",
        default="uniform",
        metavar="{uniform,dp,LOG.json}",
        help="evo: first parent: uniform, the dp profile, or the per-block ratios (layer_ratios) of an earlier run's "
        "--log_json at the same sparsity (e.g. an --alpha auto run), moved to the nearest profile of the level grid",
    )
    g.add_argument(
        "--evo_restats",
        type=int,
        default=None,
        metavar="N",
        help="evo: collect the pruner's statistics on the outputs of the model pruned at the current parent (as "
        "the final block-by-block run sees them), again every N generations; 0: on the dense model throughout "
        "(EvoPress's level database). Default: 8 for wanda and ria (one calibration pass per round); 0 for "
        "sparsegpt, whose level database (2 x evo_levels + 1 SparseGPT passes) a round would rebuild, and for "
        "magnitude, whose scores need no statistics",
    )
    g.add_argument(
        "--level_db_memory",
        type=float,
        default=4.0,
        help="evo/dp with sparsegpt: GiB of pruned weights kept in memory; a larger level database goes to disk",
    )
    g.add_argument("--level_db_dir", default=None, help="folder for an on-disk level database (removed afterwards)")


# --evo_restats when not given, per pruner: re-collecting Wanda / RIA statistics costs one calibration
# pass per round and took evo from 391.8 to 333.2 (Wanda 70 %, SmolLM2, results/smollm2/searched/)
RESTATS_DEFAULT = {"wanda": 8, "ria": 8, "sparsegpt": 0, "magnitude": 0}


def searched_options(args, allocation: str, pruner: str) -> SearchedOptions:
    """Check the dp/evo flags (only when that allocation is chosen) and group them; ``pruner``
    picks the default of ``--evo_restats`` (:data:`RESTATS_DEFAULT`)."""
    options = SearchedOptions(
        level_step=args.level_step,
        dp_levels=args.dp_levels,
        evo_levels=args.evo_levels,
        seqlen=args.searched_seqlen,
        nsamples=args.searched_nsamples,
        dp_tokens=args.dp_tokens,
        cost_cache=args.cost_cache,
        generations=args.evo_generations,
        offspring=args.evo_offspring,
        stage_tokens=tuple(args.evo_tokens),
        survivors=tuple(args.evo_survivors),
        max_moves=args.evo_max_moves,
        start=args.evo_start,
        restats=RESTATS_DEFAULT.get(pruner, 0) if args.evo_restats is None else args.evo_restats,
        db_memory_gib=args.level_db_memory,
        db_dir=args.level_db_dir,
    )
    if allocation not in SEARCHED_ALLOCATIONS:
        return options
    if not 0 < options.level_step < 0.5:
        raise ValueError(f"--level_step {options.level_step}: must be in (0, 0.5), e.g. 0.02")
    for flag in ("dp_levels", "evo_levels", "searched_seqlen", "searched_nsamples", "dp_tokens", "evo_max_moves"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be a positive integer")
    if args.evo_generations < 0 or args.evo_offspring < 1 or args.level_db_memory < 0 or options.restats < 0:
        raise ValueError(
            "--evo_generations and --evo_restats must be >= 0, --evo_offspring >= 1 and --level_db_memory >= 0"
        )
    tokens, kept = options.stage_tokens, options.survivors
    if not tokens or any(t < 1 for t in tokens) or list(tokens) != sorted(tokens):
        raise ValueError(f"--evo_tokens {','.join(map(str, tokens))}: positive and growing, e.g. 128,512,2048")
    if len(kept) != len(tokens) - 1 or any(k < 1 for k in kept) or list(kept) != sorted(kept, reverse=True):
        raise ValueError(
            f"--evo_survivors {','.join(map(str, kept))}: one count fewer than --evo_tokens, positive and "
            "non-increasing, e.g. 4,1 for three stages"
        )
    if kept and kept[0] > options.offspring:
        raise ValueError(f"--evo_survivors {kept[0]} exceeds --evo_offspring {options.offspring}")
    if options.start == "dp" and options.dp_levels > options.evo_levels:
        raise ValueError("--evo_start dp needs --dp_levels <= --evo_levels (the dp profile must lie on evo's grid)")
    if options.start not in EVO_STARTS:
        options = replace(options, start_ratios=start_ratios_of(options.start, args.sparsity_ratio))
    return options


def start_ratios_of(log_path: str, target: float) -> tuple[float, ...]:
    """The per-block ratios ``(L,)`` of the run logged at ``log_path`` (``--evo_start LOG.json``),
    checked to be a log of a run at ``target`` sparsity."""
    path = Path(log_path)
    if path.suffix != ".json" or not path.is_file():
        raise ValueError(f"--evo_start {log_path}: give uniform, dp, or an existing --log_json file of an earlier run")
    try:
        log = json.loads(path.read_text())
        ratios, logged_target = tuple(float(r) for r in log["layer_ratios"]), float(log["sparsity_ratio"])
    except (ValueError, KeyError, TypeError) as bad:
        raise ValueError(f"--evo_start {log_path}: not a main.py --log_json log with layer_ratios ({bad!r})") from None
    if abs(logged_target - target) > 1e-9:
        raise ValueError(
            f"--evo_start {log_path}: that run's target sparsity is {logged_target}, this run's {target}; "
            "start from a run at the same target"
        )
    return ratios
