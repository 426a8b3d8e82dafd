"""Magnitude, Wanda, RIA and SparseGPT: exact counts, N:M, channel permutation, reconstruction."""

import math

import pytest
import torch

from lib.arch import block_linears, decoder_blocks
from lib.masks import SparsityPattern, prune_lowest_nm
from lib.obs import gptq_keep_mask, recording_sweeps, summarize_sweeps, sweep_note
from lib.permutation import permuted_nm_mask, retained_nm_score, zigzag_permutation
from lib.prune import measure_sparsity, prune_model
from lib.pruners import PRUNERS, LayerStats, PrunerOptions
from lib.pruners.ria import ria_score
from lib.pruners.sparsegpt import sparsegpt_prune
from lib.quant import QuantConfig
from tests.conftest import FAMILIES, tiny_model

UNSTRUCTURED = SparsityPattern()


def layer_problem(seed=0, c_out=64, c_in=256, n=2048):
    """A weight and correlated, unevenly scaled inputs, with the statistics every pruner needs."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(c_out, c_in, generator=gen)
    mix = torch.eye(c_in) + 0.3 * torch.randn(c_in, c_in, generator=gen) / math.sqrt(c_in)
    X = torch.randn(n, c_in, generator=gen) @ mix * torch.exp(torch.randn(c_in, generator=gen))
    stats = LayerStats(col_sq_norm=X.square().sum(0), hessian=2 * X.T @ X / n)
    return W, X, stats


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_exact_counts_per_comparison_group(sparsity):
    W, _, stats = layer_problem()
    options = PrunerOptions()
    c_out, c_in = W.shape
    for name in ("wanda", "ria"):
        zeros_per_row = (PRUNERS[name].prune(W, stats, sparsity, UNSTRUCTURED, options) == 0).sum(1)
        assert (zeros_per_row == int(c_in * sparsity)).all(), name
    ria_matrix = PRUNERS["ria"].prune(W, stats, sparsity, UNSTRUCTURED, PrunerOptions(ria_per_matrix=True))
    assert int((ria_matrix == 0).sum()) == int(W.numel() * sparsity)
    assert int((PRUNERS["magnitude"].prune(W, stats, sparsity, UNSTRUCTURED, options) == 0).sum()) == int(
        W.numel() * sparsity
    )
    pruned = PRUNERS["sparsegpt"].prune(W, stats, sparsity, UNSTRUCTURED, options)
    for start in range(0, c_in, 128):  # SparseGPT's comparison group: each 128-column block
        block = pruned[:, start : start + 128]
        assert int((block == 0).sum()) == int(block.numel() * sparsity)


@pytest.mark.parametrize("name", ["magnitude", "wanda", "ria", "sparsegpt"])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_groups_hold_exactly_n(name, n, m):
    W, _, stats = layer_problem(seed=1)
    pruned = PRUNERS[name].prune(W, stats, 0.5, SparsityPattern(n, m), PrunerOptions())
    nonzero = (pruned != 0).view(W.shape[0], -1, m).sum(-1)
    assert (nonzero == n).all()


def test_ria_score_by_hand():
    W = torch.tensor([[1.0, -3.0], [2.0, 0.0]])
    sq = torch.tensor([16.0, 1.0])  # ||X_j|| = 4, 1
    # |W|/colsum + |W|/rowsum: [[1/3 + 1/4, 3/3 + 3/4], [2/3 + 2/2, 0]] times ||X_j||^0.5 = [2, 1]
    expected = torch.tensor([[(1 / 3 + 1 / 4) * 2, 1 + 3 / 4], [(2 / 3 + 1) * 2, 0.0]])
    torch.testing.assert_close(ria_score(W, sq, 0.5), expected)


@pytest.mark.parametrize("seed", range(5))
def test_permutation_never_lowers_retained_score(seed):
    gen = torch.Generator().manual_seed(seed)
    score = torch.rand(32, 64, generator=gen) * torch.exp(2 * torch.randn(64, generator=gen))
    base = retained_nm_score(score, 2, 4)
    for lsa in (False, True):
        mask = permuted_nm_mask(score, 2, 4, lsa=lsa)
        assert ((~mask).view(32, -1).sum(1) == 32).all()  # still 50 % per row
        assert float(score[~mask].sum(dtype=torch.float64)) >= base - 1e-6


def test_permutation_helps_when_important_channels_share_a_group():
    score = torch.ones(8, 16)
    score[:, :4] = 100.0  # the four important channels all in group 0
    base = retained_nm_score(score, 2, 4)
    perm = zigzag_permutation(score, 4)
    assert sorted(perm.tolist()) == list(range(16))
    kept = float(score[~permuted_nm_mask(score, 2, 4)].sum())
    assert kept > base
    lsa_kept = float(score[~permuted_nm_mask(score, 2, 4, lsa=True)].sum())
    assert lsa_kept >= kept


def test_ria_with_reallocation_keeps_nm_in_permuted_order():
    W, _, stats = layer_problem(seed=2)
    pruned = PRUNERS["ria"].prune(W, stats, 0.5, SparsityPattern(2, 4), PrunerOptions(reallocation=True))
    assert int((pruned == 0).sum()) == W.numel() // 2
    plain = PRUNERS["ria"].prune(W, stats, 0.5, SparsityPattern(2, 4), PrunerOptions())
    score = ria_score(W, stats.col_sq_norm, 0.5)
    assert float(score[pruned != 0].sum()) >= float(score[plain != 0].sum()) - 1e-4


def reconstruction_error(W, W_pruned, X):
    return float(torch.linalg.matrix_norm(X @ W.T - X @ W_pruned.T))


@pytest.mark.parametrize("pattern", [UNSTRUCTURED, SparsityPattern(2, 4)])
def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude(pattern):
    W, X, stats = layer_problem(seed=3)
    errors = {
        name: reconstruction_error(W, PRUNERS[name].prune(W, stats, 0.5, pattern, PrunerOptions()), X)
        for name in ("sparsegpt", "wanda", "magnitude")
    }
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_sparsegpt_dead_inputs_and_singular_hessian():
    W, X, _ = layer_problem(seed=4, c_in=128, n=64)  # n < C_in: X^T X is singular
    X[:, 5] = 0  # a dead input channel
    H = 2 * X.T @ X / X.shape[0]
    with pytest.warns(UserWarning, match="re-damping"):
        pruned = sparsegpt_prune(W, LayerStats(hessian=H), 0.5, UNSTRUCTURED, PrunerOptions(percdamp=0.0))
    assert torch.isfinite(pruned).all()
    assert (pruned[:, 5] == 0).all()
    assert pruned.dtype == W.dtype


def test_sweep_record_of_a_clean_sweep_says_nothing_changed():
    W, _, stats = layer_problem(seed=5)
    with recording_sweeps() as records:
        sparsegpt_prune(W, stats, 0.5, UNSTRUCTURED, PrunerOptions())
    (record,) = records
    assert (record.redamps, record.dead_columns, record.dead_zeroed) == (0, 0, 0) and not record.changed
    assert record.damp_used == record.damp_requested == pytest.approx(0.01 * float(stats.hessian.diagonal().mean()))
    assert sweep_note(summarize_sweeps({"a": records})) is None


def test_sweep_record_counts_the_redamping_of_a_singular_hessian():
    W, X, _ = layer_problem(seed=4, c_in=128, n=16)  # rank 16 of 128: fails Cholesky at a tiny damping
    H = 2 * X.T @ X / X.shape[0]
    with recording_sweeps() as records, pytest.warns(UserWarning, match="re-damping"):
        sparsegpt_prune(W, LayerStats(hessian=H), 0.5, UNSTRUCTURED, PrunerOptions(percdamp=1e-12))
    (record,) = records
    assert record.redamps >= 1 and record.changed
    assert record.damp_used == pytest.approx(record.damp_requested * 10**record.redamps, rel=1e-4)
    summary = summarize_sweeps({"block0.q_proj": records})
    assert summary["redamped"]["block0.q_proj"]["times"] == record.redamps
    assert f"up to {record.redamps} x10" in sweep_note(summary)


def test_sweep_record_counts_dead_input_weights_zeroed_beyond_the_target():
    W, X, _ = layer_problem(seed=6, c_out=64, c_in=128)
    X[:, :80] = 0  # 80 of 128 inputs never active: 80 * 64 = 5120 weights > the 4096 that 50 % prunes
    H = 2 * X.T @ X / X.shape[0]
    with recording_sweeps() as records:
        pruned = sparsegpt_prune(W, LayerStats(hessian=H), 0.5, UNSTRUCTURED, PrunerOptions(blocksize=128))
    (record,) = records
    assert record.dead_columns == 80
    assert record.dead_zeroed == int((pruned == 0).sum()) - W.numel() // 2 == 80 * 64 - W.numel() // 2
    X[:, 40:80] = torch.randn(X.shape[0], 40)  # 40 dead inputs: 2560 weights, within the target
    with recording_sweeps() as records:
        pruned = sparsegpt_prune(W, LayerStats(hessian=2 * X.T @ X / X.shape[0]), 0.5, UNSTRUCTURED, PrunerOptions())
    assert (records[0].dead_columns, records[0].dead_zeroed) == (40, 0)
    assert int((pruned == 0).sum()) == W.numel() // 2


@pytest.mark.parametrize("act_order", [False, True])  # act-order moves the dead input elsewhere in the sweep
def test_sweep_record_of_gptq_counts_kept_weights_on_dead_inputs(act_order):
    W, X, _ = layer_problem(seed=7, c_out=32, c_in=64)
    X[:, 3] = 0
    W[torch.rand(W.shape, generator=torch.Generator().manual_seed(0)) < 0.5] = 0  # a pruned weight
    W[:, 3], W[:5, 3] = 1.0, 0  # the 5 pruned on the dead input stay 0 anyway: 27 zeroed beyond the mask
    config = QuantConfig(wbits=4, groupsize=16, act_order=act_order, static_groups=act_order)
    with recording_sweeps() as records:
        gptq_keep_mask(W, 2 * X.T @ X / X.shape[0], config, percdamp=0.01, blocksize=32)
    assert (records[0].dead_columns, records[0].dead_zeroed) == (1, 32 - 5)
    assert "27 weight(s) on 1 dead input(s)" in sweep_note(summarize_sweeps({"x": records}))


def test_prune_model_returns_and_prints_what_the_sweeps_changed(capsys):
    model = tiny_model("llama")
    calib = torch.randint(3, 128, (1, 8))  # 8 tokens: every Hessian (32 or 64 inputs) is singular
    options = PrunerOptions(percdamp=1e-12)
    with pytest.warns(UserWarning, match="re-damping"):
        summary = prune_model(model, pruner_name="sparsegpt", ratios=[0.5] * 3, calib_ids=calib, pattern=UNSTRUCTURED,
                              options=options)  # fmt: skip
    linears = sum(len(block_linears(block)) for block in decoder_blocks(model))
    assert summary["sweeps"] == linears
    assert summary["redamped"] and all(name.split(".")[0] in "012" for name in summary["redamped"])
    assert "re-damped" in capsys.readouterr().out
    clean = prune_model(
        tiny_model("llama"), pruner_name="wanda", ratios=[0.5] * 3, calib_ids=calib, pattern=UNSTRUCTURED
    )
    assert clean == {"sweeps": 0, "redamped": {}, "dead_columns": 0, "dead_zeroed": 0}


def test_magnitude_needs_no_calibration():
    model = tiny_model("llama")
    prune_model(model, pruner_name="magnitude", ratios=[0.5] * 3, calib_ids=None, pattern=UNSTRUCTURED)
    assert measure_sparsity(model)[0] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="needs calibration data"):
        prune_model(tiny_model("llama"), pruner_name="wanda", ratios=[0.5] * 3, calib_ids=None, pattern=UNSTRUCTURED)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["magnitude", "ria", "sparsegpt"])
def test_every_pruner_on_every_family(family, name):
    model = tiny_model(family)
    ratios = [0.4, 0.6, 0.8]
    prune_model(
        model,
        pruner_name=name,
        ratios=ratios,
        calib_ids=torch.randint(3, 128, (3, 16)),
        pattern=UNSTRUCTURED,
        micro_batch=2,
    )
    _, per_block = measure_sparsity(model)
    assert per_block == pytest.approx(ratios, abs=0.03)
    for block in decoder_blocks(model):
        for lin in block_linears(block).values():
            assert torch.isfinite(lin.weight).all()


def test_nm_selection_is_the_same_as_prune_lowest_nm_for_wanda():
    W, _, stats = layer_problem(seed=5)
    pruned = PRUNERS["wanda"].prune(W, stats, 0.5, SparsityPattern(2, 4), PrunerOptions())
    score = W.abs() * stats.col_sq_norm.sqrt()
    assert torch.equal(pruned == 0, prune_lowest_nm(score, 2, 4))
