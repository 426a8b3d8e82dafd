"""Entry point of ``--allocation dp`` / ``evo``: level grid -> held-out text -> level weights ->
DP over measured costs or evolutionary search -> an :class:`~lib.allocation.Allocation`.

The ratios found are returned to :func:`lib.pipeline.block_ratios` and applied by the normal
block-by-block pruning run, so everything after it is unchanged. The model's dense weights are
never written during the search; a checksum taken before and after proves it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..allocation import Allocation, weighted_mean
from ..block_metrics import block_sizes
from ..data import load_texts, sample_calibration, source_id, text_source
from ..utils import cache_root
from .costs import cost_rows, default_cost_path, load_costs, measure_costs, missing_entries, save_costs
from .dp import dp_levels
from .evo import evolve
from .fitness import ProfileFitness
from .forward import HeldOut, weights_checksum
from .levels import LevelGrid, level_grid, snap_to_grid
from .stores import SCORE_PRUNERS, DatabaseLevels, ScoreLevels


def held_out_ids(tokenizer, calibration, data_dir, *, tokens: int, seqlen: int) -> tuple[torch.Tensor, str, int]:
    """``(ids (n, seqlen), note, seed)``: ``ceil(tokens / seqlen)`` calibration-text sequences drawn with
    seed ``calibration.seed + 1`` (as ``--alpha auto``), disjoint in intent from the pruning calibration
    and never the evaluation text."""
    seed = calibration.seed + 1
    docs = load_texts(calibration.dataset, data_dir)
    ids, note = sample_calibration(tokenizer, docs, nsamples=-(-tokens // seqlen), seqlen=seqlen, seed=seed)
    return ids, note, seed


def level_store(run, model, calib_ids, grid: LevelGrid, ratios: list[float] | None = None):
    """Per-block level weights of the run's pruner (score ranks, or a SparseGPT database), from
    statistics on the dense model, or at the profile ``ratios`` (:mod:`.stores`)."""
    pruning, searched = run.pruning, run.allocation.searched_options
    stats_ids = None if calib_ids is None else calib_ids[: searched.nsamples]
    micro = run.calibration.micro_batch
    if pruning.engine_pruner in SCORE_PRUNERS:
        return ScoreLevels(
            model, pruning.engine_pruner, stats_ids, options=pruning.kernel, micro_batch=micro, ratios=ratios
        )
    return DatabaseLevels(
        model,
        pruning.engine_pruner,
        stats_ids,
        grid,
        pattern=pruning.pattern,
        options=pruning.kernel,
        micro_batch=micro,
        memory_bytes=int(searched.db_memory_gib * 2**30),
        folder=searched.db_dir or cache_root() / "searched" / "db",
        ratios=ratios,
    )


def cost_metadata(run, calib_ids, held_note: str, held_seed: int) -> dict:
    """What a dp cost depends on (the cache is reused only when all of it matches)."""
    pruning, searched, calibration = run.pruning, run.allocation.searched_options, run.calibration
    kernel = pruning.kernel
    return {
        "model": run.model.source.name,
        "fingerprint": run.model.source.fingerprint(),
        "dtype": str(run.model.dtype).removeprefix("torch."),
        "pruner": pruning.engine_pruner,
        "pattern": str(pruning.pattern),
        "kernel": {
            "ria_a": kernel.ria_a,
            "ria_per_matrix": kernel.ria_per_matrix,
            "percdamp": kernel.percdamp,
            "blocksize": kernel.blocksize,
        },
        "cost": "kl_dense_pruned_mean_per_position",
        "statistics": {
            "dataset": calibration.dataset,
            "seed": calibration.seed,
            "seqlen": calibration.seqlen,
            "nsamples": 0 if calib_ids is None else int(min(searched.nsamples, len(calib_ids))),
        },
        "held_out": {"seed": held_seed, "seqlen": searched.seqlen, "tokens": searched.dp_tokens, "note": held_note},
        "data_source": source_id(text_source(calibration.dataset, run.data_dir)),
    }


def dp_profile(run, model, tokenizer, calib_ids, grid: LevelGrid) -> tuple[tuple[int, ...], dict]:
    """The dp levels on ``grid`` from the (cached, completed when needed) measured cost table."""
    searched = run.allocation.searched_options
    ids, note, seed = held_out_ids(
        tokenizer, run.calibration, run.data_dir, tokens=searched.dp_tokens, seqlen=searched.seqlen
    )
    metadata = cost_metadata(run, calib_ids, note, seed)
    path = Path(searched.cost_cache) if searched.cost_cache else default_cost_path(cache_root(), metadata)
    costs = load_costs(path, metadata)
    missing = missing_entries(costs, grid)
    start = time.perf_counter()
    entries = sum(len(grid.levels_of(b)) for b in range(len(grid.sizes)))
    print(f"[allocation] dp cost table {path}: {len(missing)} of {entries} entries to measure")
    if missing:
        store = level_store(run, model, calib_ids, grid)
        try:
            held = HeldOut(model, ids, micro_batch=run.calibration.micro_batch, keep_states=True)

            def save(new):
                for b, row in new.items():
                    costs.setdefault(b, {}).update(row)
                save_costs(path, metadata, costs)

            measure_costs(held, grid, missing, store.weights, save=save)
            del held
        finally:
            store.close()
    levels, total = dp_levels(cost_rows(costs, grid), grid)
    info = {
        "cost_cache": str(path),
        "measured": len(missing),
        "cost_seconds": time.perf_counter() - start,
        "dp_cost": total,
        "levels": list(levels),
        "costs": cost_rows(costs, grid),
        "held_out": metadata["held_out"],
    }
    return levels, info


def evo_rounds(generations: int, restats: int) -> list[int]:
    """Generations per round of statistics: one round without ``--evo_restats``, else rounds of
    ``restats`` generations (the last one shorter when it does not divide)."""
    if restats <= 0 or generations == 0:
        return [generations]
    return [min(restats, generations - done) for done in range(0, generations, restats)]


def evo_profile(run, model, tokenizer, calib_ids, grid: LevelGrid, start) -> tuple[tuple[int, ...], dict]:
    """EvoPress search on ``grid`` from ``start``; returns the levels and the search record.

    With ``--evo_restats N`` the search runs in rounds of N generations; each round's level
    weights come from statistics collected at its first parent, whose fitness is measured
    afresh (the rounds' fitnesses are not comparable), and each round keeps the parent unless beaten.
    """
    searched = run.allocation.searched_options
    T = searched.seqlen
    ids, note, seed = held_out_ids(tokenizer, run.calibration, run.data_dir, tokens=searched.stage_tokens[-1], seqlen=T)
    # stages score whole micro-batches: one no larger than the first stage's sequences keeps that
    # stage at its budget (128 tokens -> one sequence, not a micro-batch of four)
    micro = max(1, min(run.calibration.micro_batch, -(-searched.stage_tokens[0] // T)))
    held = HeldOut(model, ids, micro_batch=micro)
    stage_batches = [held.batches(-(-t // T)) for t in searched.stage_tokens]
    stage_positions = [held.tokens(b) for b in stage_batches]
    per_gen = searched.offspring * stage_positions[0] + sum(
        k * t for k, t in zip(searched.survivors, stage_positions[1:], strict=True)
    )
    parent, history, rounds, token_forwards, seconds, statistics_seconds = tuple(start), [], [], 0.0, 0.0, 0.0
    per_token = estimate = None
    for index, generations in enumerate(evo_rounds(searched.generations, searched.restats)):
        at_profile = grid.ratios(parent) if searched.restats else None
        clock = time.perf_counter()
        store = level_store(run, model, calib_ids, grid, ratios=at_profile)
        statistics_seconds += time.perf_counter() - clock
        try:
            fitness = ProfileFitness(held, grid, store.weights, stage_batches)
            clock = time.perf_counter()
            fitness.set_parent(parent)
            if per_token is None:
                per_token = (time.perf_counter() - clock) / held.tokens(stage_batches[-1])
                estimate = per_token * per_gen * searched.generations
                print(
                    f"[allocation] evo: one forward {per_token * 1e3:.2f} ms/token (full model + head twice); "
                    f"{searched.generations} generations x {per_gen} token-forwards <= {estimate / 60:.1f} min "
                    "(less: offspring reuse the parent's states up to their first changed block)"
                )
            clock = time.perf_counter()
            result = evolve(
                parent,
                grid,
                fitness,
                generations=generations,
                offspring=searched.offspring,
                survivors=searched.survivors,
                max_moves=searched.max_moves,
                seed=run.calibration.seed + index,
                set_parent=fitness.set_parent,
            )
            seconds += time.perf_counter() - clock
            token_forwards += fitness.token_forwards
        finally:
            store.close()
        history += [{**h, "generation": h["generation"] + len(history), "round": index} for h in result.history]
        rounds.append(
            {
                "generations": generations,
                "statistics": "dense" if at_profile is None else "at the round's first parent",
                "fitness_start": result.start_fitness,
                "fitness_best": result.fitness,
            }
        )
        parent = result.levels
    info = {
        "levels": list(parent),
        "start_levels": list(start),
        "fitness_start": rounds[0]["fitness_start"],
        "fitness_best": rounds[-1]["fitness_best"],
        "history": history,
        "rounds": rounds,
        "search_seconds": seconds,
        "statistics_seconds": statistics_seconds,  # building the level weights, every round
        "cost_model": {
            "seconds_per_token_forward": per_token,
            "token_forwards_per_generation_max": per_gen,
            "estimate_seconds_max": estimate,
            "token_forwards_run": token_forwards,
        },
        "held_out": {"seed": seed, "seqlen": T, "stage_tokens": stage_positions, "note": note},
    }
    print(
        f"[allocation] evo: fitness {info['fitness_start']:.4f} -> {info['fitness_best']:.4f} in {seconds / 60:.1f} min"
        + (f" ({len(rounds)} rounds of statistics)" if len(rounds) > 1 else "")
    )
    return parent, info


def searched_allocation(run, model, tokenizer, calib_ids) -> tuple[Allocation, dict]:
    """``--allocation dp`` or ``evo`` for ``run`` (a :class:`lib.options.RunOptions`); ``calib_ids``
    ``(n, T)``: the pruning calibration (statistics from its first ``--searched_nsamples``)."""
    name, searched, s = run.allocation.name, run.allocation.searched_options, run.pruning.sparsity
    sizes = block_sizes(model)
    before = weights_checksum(model)
    dp_grid = level_grid(sizes, s, step_fraction=searched.level_step, max_level=searched.dp_levels)
    info: dict = {"level_step_weights": dp_grid.step, "level_step": searched.level_step}
    with torch.no_grad():
        if name == "dp" or searched.start == "dp":
            levels, info["dp"] = dp_profile(run, model, tokenizer, calib_ids, dp_grid)
        else:
            levels = (0,) * len(sizes)
        grid = dp_grid
        if name == "evo":
            grid = level_grid(sizes, s, step_fraction=searched.level_step, max_level=searched.evo_levels)
            if searched.start_ratios is not None:
                if len(searched.start_ratios) != len(sizes):
                    raise ValueError(
                        f"--evo_start {searched.start}: {len(searched.start_ratios)} block ratios, this model has "
                        f"{len(sizes)} blocks; start from a run of the same model"
                    )
                levels = snap_to_grid(grid, searched.start_ratios)
                info["evo_start"] = {"log": searched.start, "ratios": list(searched.start_ratios)}
            levels, info["evo"] = evo_profile(run, model, tokenizer, calib_ids, grid, levels)
    if weights_checksum(model) != before:
        raise RuntimeError("the search changed the dense weights; this is a bug in lib/searched")
    ratios = grid.ratios(levels)
    info.update(
        {
            "grid": {"lo": list(grid.lo), "hi": list(grid.hi)},
            "levels": list(levels),
            "searched_ratios": ratios,
            "weighted_mean": weighted_mean(ratios, sizes),
        }
    )
    return Allocation(name, ratios), info
