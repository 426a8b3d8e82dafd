"""lib/searched: the equal-weight level grid, the DP, mutation, the evolutionary search, the
level weights, and dp / evo end to end on a tiny model (CLI), with the cost cache."""

import itertools
import json
import random

import pytest
import torch

import main as main_cli
from lib.arch import block_linears, decoder_blocks, prunable_linears
from lib.masks import SparsityPattern
from lib.prune import prune_model
from lib.pruners import PRUNERS, LayerStats, PrunerOptions
from lib.searched.allocate import evo_rounds
from lib.searched.dp import dp_levels
from lib.searched.evo import evolve
from lib.searched.fitness import ProfileFitness
from lib.searched.forward import HeldOut, head_logits, weights_checksum
from lib.searched.levels import level_grid, mutate, snap_to_grid
from lib.searched.stores import DatabaseLevels, ScoreLevels, score_and_group, score_ranks
from tests.conftest import FAMILIES, tiny_model

UNEQUAL = (1000, 3000, 1700, 2500, 800)


def test_level_grid_keeps_the_exact_budget_for_unequal_blocks():
    grid = level_grid(UNEQUAL, 0.6, step_fraction=0.05, max_level=4)
    target = 0.6 * sum(UNEQUAL)
    assert grid.step == round(0.05 * sum(UNEQUAL) / len(UNEQUAL))
    for levels in [(0,) * 5, (1, -1, 0, 0, 0), (-3, 2, 1, 2, -2), (4, -4, 3, -1, -2)]:
        ok = all(grid.lo[b] <= k <= grid.hi[b] for b, k in enumerate(levels))
        if ok:
            assert grid.pruned_weights(levels) == pytest.approx(target, abs=1e-6)
    # one step down in one block and up in another moves Delta weights each way
    assert grid.ratio(0, 1) * UNEQUAL[0] - grid.ratio(0, 0) * UNEQUAL[0] == pytest.approx(grid.step)
    assert grid.ratio(1, -1) * UNEQUAL[1] - grid.ratio(1, 0) * UNEQUAL[1] == pytest.approx(-grid.step)
    with pytest.raises(ValueError, match="sum to"):
        grid.ratios((1, 0, 0, 0, 0))


def test_level_grid_clamps_ratios_into_bounds():
    grid = level_grid((100, 10000), 0.05, step_fraction=0.01, max_level=20)
    for b in range(2):
        ratios = [grid.ratio(b, k) for k in grid.levels_of(b)]
        assert min(ratios) >= 0 and max(ratios) < 1
    assert grid.lo[0] > -20  # the small block hits 0 % before 20 levels


def test_snap_to_grid_returns_grid_profiles_and_the_nearest_for_others():
    grid = level_grid(UNEQUAL, 0.6, step_fraction=0.05, max_level=4)
    for levels in [(0,) * 5, (1, -1, 0, 0, 0), (-3, 2, 1, 2, -2)]:  # a profile of the grid comes back exactly
        assert snap_to_grid(grid, grid.ratios(levels)) == levels
    rng = random.Random(0)
    for _ in range(50):
        real = [rng.uniform(-1.5, 1.5) for _ in UNEQUAL]  # real levels at the target, inside the bounds
        real = [x - sum(real) / len(real) for x in real]
        levels = snap_to_grid(grid, [0.6 + x * grid.step / n for x, n in zip(real, UNEQUAL, strict=True)])
        grid.ratios(levels)  # raises unless the sum is 0 and each level within its bounds
        assert all(abs(k - x) < 1 for k, x in zip(levels, real, strict=True))
        off_target = snap_to_grid(grid, [rng.uniform(0.0, 0.99) for _ in UNEQUAL])  # clipped, still at the target
        grid.ratios(off_target)
    with pytest.raises(ValueError, match="4 ratios for 5 blocks"):
        snap_to_grid(grid, [0.6] * 4)


def brute_force(rows, grid):
    best = None
    for levels in itertools.product(*[list(grid.levels_of(b)) for b in range(len(rows))]):
        if sum(levels) == 0:
            cost = sum(rows[b][k] for b, k in enumerate(levels))
            if best is None or cost < best[1] - 1e-12:
                best = (levels, cost)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_dp_finds_the_brute_force_optimum(seed):
    g = torch.Generator().manual_seed(seed)
    grid = level_grid(UNEQUAL, 0.5, step_fraction=0.1, max_level=3)
    rows = [{k: float(torch.rand((), generator=g)) * (1 + k) ** 2 for k in grid.levels_of(b)} for b in range(5)]
    levels, cost = dp_levels(rows, grid)
    expected_levels, expected = brute_force(rows, grid)
    assert sum(levels) == 0 and cost == pytest.approx(expected)
    assert sum(rows[b][k] for b, k in enumerate(levels)) == pytest.approx(expected)


def test_mutation_never_changes_the_total():
    grid = level_grid(UNEQUAL, 0.7, step_fraction=0.05, max_level=3)
    rng = random.Random(0)
    levels = (0,) * 5
    for _ in range(500):
        levels = mutate(levels, grid, rng, max_moves=4)
        assert sum(levels) == 0
        assert all(grid.lo[b] <= k <= grid.hi[b] for b, k in enumerate(levels))
        assert grid.pruned_weights(levels) == pytest.approx(0.7 * sum(UNEQUAL), abs=1e-6)


def quadratic_fitness(target):
    calls = []

    def fitness(levels, stage):
        calls.append(stage)
        noise = 0.0 if stage == 2 else 0.3 * ((hash(levels) % 7) / 7)  # cheap stages are noisy
        return sum((k - t) ** 2 for k, t in zip(levels, target, strict=True)) + noise

    return fitness, calls


def test_evo_is_deterministic_never_worse_and_improves():
    grid = level_grid(UNEQUAL, 0.5, step_fraction=0.05, max_level=4)
    target = (2, -1, 1, -3, 1)
    fitness, calls = quadratic_fitness(target)
    kw = dict(generations=30, offspring=8, survivors=(4, 2), max_moves=2, seed=3, progress=False)
    first = evolve((0,) * 5, grid, fitness, **kw)
    second = evolve((0,) * 5, grid, fitness, **kw)
    assert first.levels == second.levels and first.history == second.history
    assert first.fitness <= first.start_fitness
    values = [h["best_fitness"] for h in first.history]
    assert all(b <= a for a, b in itertools.pairwise([first.start_fitness, *values]))
    assert first.fitness < first.start_fitness and sum(first.levels) == 0
    assert 0 in calls and 1 in calls  # every stage was used
    other = evolve((0,) * 5, grid, fitness, **{**kw, "seed": 4})
    assert other.history != first.history


def test_evo_keeps_the_parent_when_no_offspring_beats_it():
    grid = level_grid(UNEQUAL, 0.5, step_fraction=0.05, max_level=4)
    fitness, _ = quadratic_fitness((0,) * 5)  # the start is the optimum
    result = evolve(
        (0,) * 5, grid, fitness, generations=10, offspring=6, survivors=(3, 1), max_moves=2, seed=0, progress=False
    )
    assert result.levels == (0,) * 5 and result.fitness == result.start_fitness


@pytest.mark.parametrize("family", FAMILIES)
def test_head_reproduces_the_model_logits(family):
    model = tiny_model(family)
    ids = torch.randint(3, 128, (2, 12))
    held = HeldOut(model, ids, micro_batch=2)  # raises if the head differs
    full = model(ids, use_cache=False).logits
    torch.testing.assert_close(head_logits(model, held.dense_out[0]), full, rtol=1e-4, atol=1e-4)
    assert held.kl_from(0, list(held.inputs.hidden), lambda i: None) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("pruner,per_matrix", [("wanda", False), ("ria", False), ("ria", True), ("magnitude", False)])
def test_score_levels_equal_the_pruner(pruner, per_matrix):
    model = tiny_model("llama", layers=2)
    ids = torch.randint(3, 128, (4, 16))
    options = PrunerOptions(ria_per_matrix=per_matrix)
    store = ScoreLevels(model, pruner, ids, options=options, micro_batch=2)
    block0 = block_linears(decoder_blocks(model)[0])
    from lib.stats import InputStatistics

    with InputStatistics(block0, {"col_sq_norm"}) as stats:
        model(ids[:2], use_cache=False)
        model(ids[2:], use_cache=False)
    for ratio in (0.3, 0.55):
        ours = store.weights(0, ratio)
        for name, lin in block0.items():
            expected = PRUNERS[pruner].prune(
                lin.weight.data, LayerStats(col_sq_norm=stats.col_sq_norm.get(name)), ratio, SparsityPattern(), options
            )
            torch.testing.assert_close(ours[name], expected, rtol=0, atol=0)


@pytest.mark.parametrize("pruner", ["wanda", "sparsegpt"])
def test_statistics_at_a_profile_are_what_the_pruning_run_sees(pruner):
    """Built at a profile, every block's level weights at the profile's ratio equal the weights
    the block-by-block pruning run gives it (its inputs: the earlier blocks' pruned outputs)."""
    model = tiny_model("llama", layers=3)
    ids = torch.randint(3, 128, (4, 16))
    sizes = [sum(lin.weight.numel() for lin in b.values()) for b in prunable_linears(model)]
    grid = level_grid(sizes, 0.5, step_fraction=0.1, max_level=2)
    ratios = grid.ratios((2, -1, -1))
    before = weights_checksum(model)
    if pruner == "wanda":
        at_profile = ScoreLevels(model, pruner, ids, options=PrunerOptions(), micro_batch=2, ratios=ratios)
        dense = ScoreLevels(model, pruner, ids, options=PrunerOptions(), micro_batch=2)
    else:
        common = dict(pattern=SparsityPattern(), options=PrunerOptions(), micro_batch=2, memory_bytes=2**40)
        at_profile = DatabaseLevels(model, pruner, ids, grid, **common, ratios=ratios)
        dense = DatabaseLevels(model, pruner, ids, grid, **common)
    assert weights_checksum(model) == before  # the profile's weights were swapped in and put back
    prune_model(model, pruner_name=pruner, ratios=ratios, calib_ids=ids, pattern=SparsityPattern(), micro_batch=2)
    for index, block in enumerate(prunable_linears(model)):
        ours, first = at_profile.weights(index, ratios[index]), dense.weights(index, ratios[index])
        for name, lin in block.items():
            torch.testing.assert_close(ours[name], lin.weight.data, rtol=0, atol=1e-6)
            if index == 0:  # block 0's inputs are the embeddings either way
                torch.testing.assert_close(first[name], lin.weight.data, rtol=0, atol=1e-6)
    differs = [
        not torch.equal(dense.weights(index, ratios[index])[name], lin.weight.data)
        for index, block in enumerate(prunable_linears(model))
        for name, lin in block.items()
        if index > 0
    ]
    assert any(differs)  # dense statistics give later blocks other weights: what --evo_restats corrects


def test_evo_rounds_split_the_generations():
    assert evo_rounds(24, 0) == [24] and evo_rounds(0, 5) == [0]
    assert evo_rounds(24, 8) == [8, 8, 8] and evo_rounds(10, 4) == [4, 4, 2]


def test_score_ranks_int16_rows():
    score = torch.tensor([[3.0, 1.0, 2.0, 1.0]])
    ranks = score_ranks(score, "row")
    assert ranks.dtype == torch.int16 and ranks.tolist() == [[3, 0, 2, 1]]  # ties: lower column first
    assert score_and_group("magnitude", score, LayerStats(), PrunerOptions())[1] == "matrix"


@pytest.mark.parametrize("memory", [2**40, 0])
def test_sparsegpt_database_in_memory_and_on_disk(memory, tmp_path, capsys):
    model = tiny_model("llama", layers=2)
    ids = torch.randint(3, 128, (4, 16))
    grid = level_grid(
        [sum(lin.weight.numel() for lin in b.values()) for b in prunable_linears(model)],
        0.5,
        step_fraction=0.1,
        max_level=2,
    )
    db = DatabaseLevels(
        model,
        "sparsegpt",
        ids,
        grid,
        pattern=SparsityPattern(),
        options=PrunerOptions(),
        micro_batch=2,
        memory_bytes=memory,
        folder=tmp_path,
    )
    assert "level database" in capsys.readouterr().out
    assert db.in_memory == (memory > 0)
    w = db.weights(1, grid.ratio(1, 1))
    total = sum(t.numel() for t in w.values())
    zeros = sum(int((t == 0).sum()) for t in w.values())
    assert zeros / total == pytest.approx(grid.ratio(1, 1), abs=0.02)
    db.close()
    assert not any(tmp_path.glob("level-db-*"))


def test_profile_fitness_reuses_parent_states_exactly():
    model = tiny_model("qwen2", layers=3)
    ids = torch.randint(3, 128, (4, 16))
    sizes = [sum(lin.weight.numel() for lin in b.values()) for b in prunable_linears(model)]
    grid = level_grid(sizes, 0.5, step_fraction=0.1, max_level=2)
    store = ScoreLevels(model, "wanda", ids, options=PrunerOptions(), micro_batch=2)
    before = weights_checksum(model)
    held = HeldOut(model, ids, micro_batch=2)
    fresh = ProfileFitness(held, grid, store.weights, [1, 2])
    cached = ProfileFitness(held, grid, store.weights, [1, 2])
    parent = (0, 0, 0)
    cached.set_parent(parent)
    for child in [(0, 1, -1), (1, -1, 0), (0, 0, 0)]:
        for stage in (0, 1):
            assert cached(child, stage) == pytest.approx(fresh(child, stage), rel=1e-5)
    assert weights_checksum(model) == before


def tiny_run(tiny_checkpoint, tmp_path, data_dir, name, extra):
    log = tmp_path / f"{name}.json"
    argv = [
        "--model", str(tiny_checkpoint), "--data_dir", str(data_dir), "--prune_method", "wanda",
        "--sparsity_ratio", "0.6", "--nsamples", "4", "--seqlen", "32", "--eval_seqlen", "32",
        "--eval_windows", "2", "--skip_dense", "--dtype", "float32", "--searched_seqlen", "32",
        "--searched_nsamples", "2", "--level_step", "0.05", "--log_json", str(log), *extra,
    ]  # fmt: skip
    code = main_cli.main(argv)
    return code, (json.loads(log.read_text()) if log.exists() else None)


def test_dp_and_evo_end_to_end_with_cost_cache(tiny_checkpoint, tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("ALP_DATA_DIR", str(data_dir))
    cache = tmp_path / "costs.json"
    dp = ["--allocation", "dp", "--dp_levels", "2", "--dp_tokens", "64", "--cost_cache", str(cache)]
    code, result = tiny_run(tiny_checkpoint, tmp_path, data_dir, "dp", dp)
    assert code == 0
    info = result["ratio_info"]
    ratios, dp_levels = result["layer_ratios"], info["levels"]
    assert info["allocation"] == "dp" and ratios == info["searched_ratios"]
    assert sum(ratios) / len(ratios) == pytest.approx(0.6)
    assert result["actual_sparsity"] == pytest.approx(0.6, abs=0.03)  # 32-wide rows round each row down
    assert info["dp"]["measured"] == 4 * 5 and cache.is_file()
    # same settings: everything from the cache; another target reuses the shared grid points
    code, again = tiny_run(tiny_checkpoint, tmp_path, data_dir, "dp2", dp)
    assert code == 0 and again["ratio_info"]["dp"]["measured"] == 0 and again["layer_ratios"] == ratios
    code, other = tiny_run(tiny_checkpoint, tmp_path, data_dir, "dp3", [*dp, "--sparsity_ratio", "0.65"])
    assert code == 0 and other["ratio_info"]["dp"]["measured"] == 4  # one new level per block
    # other settings: refused
    code, _ = tiny_run(tiny_checkpoint, tmp_path, data_dir, "dp4", [*dp, "--dp_tokens", "32"])
    assert code == 2 and "measured for other settings" in capsys.readouterr().err

    evo = [
        "--allocation",
        "evo",
        "--evo_generations",
        "3",
        "--evo_offspring",
        "4",
        "--evo_tokens",
        "32,64",
        "--evo_survivors",
        "2",
        "--evo_levels",
        "3",
    ]
    code, result = tiny_run(tiny_checkpoint, tmp_path, data_dir, "evo", evo)
    assert code == 0
    info = result["ratio_info"]["evo"]
    assert len(info["history"]) == 3 and info["fitness_best"] <= info["fitness_start"]
    assert info["held_out"]["stage_tokens"] == [32, 64]  # each stage its own budget, not a micro-batch of 4
    assert sum(result["layer_ratios"]) / 4 == pytest.approx(0.6)
    code, again = tiny_run(tiny_checkpoint, tmp_path, data_dir, "evo2", evo)
    assert again["ratio_info"]["evo"]["history"] == info["history"]  # deterministic for the seed
    assert [r["statistics"] for r in info["rounds"]] == ["at the round's first parent"]  # --evo_restats 8
    code, restats = tiny_run(tiny_checkpoint, tmp_path, data_dir, "evo3", [*evo, "--evo_restats", "2"])
    rounds = restats["ratio_info"]["evo"]["rounds"]
    assert code == 0 and [r["generations"] for r in rounds] == [2, 1]
    assert [(h["round"], h["generation"]) for h in restats["ratio_info"]["evo"]["history"]] == [(0, 0), (0, 1), (1, 2)]
    assert all(r["fitness_best"] <= r["fitness_start"] for r in rounds)
    assert sum(restats["layer_ratios"]) / 4 == pytest.approx(0.6)
    # from an earlier run's ratios (here dp's, on a coarser grid): they are the first parent
    code, started = tiny_run(
        tiny_checkpoint,
        tmp_path,
        data_dir,
        "evo4",
        [*evo, "--evo_start", str(tmp_path / "dp.json"), "--evo_restats", "0"],
    )
    assert code == 0 and started["ratio_info"]["evo_start"]["ratios"] == ratios
    assert [r["statistics"] for r in started["ratio_info"]["evo"]["rounds"]] == ["dense"]
    start = started["ratio_info"]["evo"]["start_levels"]
    assert start == dp_levels  # both grids step by the same Delta: dp's profile is a profile of evo's grid
    code, _ = tiny_run(tiny_checkpoint, tmp_path, data_dir, "evo5", [*evo, "--evo_start", str(tmp_path / "dp3.json")])
    assert code == 2 and "that run's target sparsity is 0.65, this run's 0.6" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,reason",
    [
        (["--allocation", "evo", "--evo_tokens", "512,128"], "positive and growing"),
        (["--allocation", "evo", "--evo_survivors", "1,4"], "non-increasing"),
        (["--allocation", "dp", "--level_step", "0.9"], "--level_step 0.9"),
        (["--allocation", "evo", "--evo_start", "dp", "--dp_levels", "12"], "--dp_levels <= --evo_levels"),
        (["--allocation", "evo", "--evo_restats", "-1"], "--evo_restats must be >= 0"),
        (["--allocation", "evo", "--evo_start", "missing.json"], "an existing --log_json file"),
        (["--allocation", "evo", "--evo_start", "owl"], "give uniform, dp, or an existing"),
    ],
)
def test_bad_search_flags_fail_fast(argv, reason, capsys, monkeypatch):
    monkeypatch.setattr(main_cli, "run", lambda *a: pytest.fail("heavy work started"))
    assert main_cli.main(["--prune_method", "wanda", *argv]) == 2
    assert reason in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,restats",
    [
        (["--prune_method", "wanda"], 8),
        (["--prune_method", "ria"], 8),
        (["--prune_method", "sparsegpt"], 0),  # a round would rebuild its level database
        (["--prune_method", "magnitude"], 0),
        (["--prune_method", "sparsegpt", "--evo_restats", "4"], 4),
        (["--prune_method", "wanda", "--evo_restats", "0"], 0),
    ],
)
def test_evo_restats_default_depends_on_the_pruner(argv, restats, data_dir, monkeypatch):
    seen = []

    def stop(options, args):
        seen.append(options)
        raise ValueError("stopped before loading the model")

    monkeypatch.setattr(main_cli, "run", stop)
    assert main_cli.main([*argv, "--allocation", "evo", "--sparsity_ratio", "0.7", "--data_dir", str(data_dir)]) == 2
    assert seen[0].allocation.searched_options.restats == restats
