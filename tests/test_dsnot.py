"""DSnoT (lib.recovery.dsnot): row counts kept, the expected error lowered, the engine hand-off."""

import pytest
import torch

import main as main_cli
from lib.arch import block_linears, decoder_blocks
from lib.masks import SparsityPattern, prune_lowest_nm, prune_lowest_per_row
from lib.prune import measure_sparsity, prune_model
from lib.recovery import RecoveryOptions
from lib.recovery.dsnot import dsnot, expected_error
from lib.stats import InputStatistics
from tests.conftest import tiny_model


def _layer(seed=0, c_out=32, c_in=64, tokens=500):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(c_out, c_in, generator=g)
    X = torch.randn(tokens, c_in, generator=g) * torch.rand(c_in, generator=g) * 3 + torch.randn(c_in, generator=g)
    return W, X, X.mean(0), X.var(0, unbiased=False), X.square().sum(0)


def test_known_swap_is_found():
    # pruning column 0 (W*E[x] = +2) left e = 2. The swap: regrow it and prune the only kept weight
    # whose W*E[x] has the other sign (column 3, -1): e = -1. Then no weight is left to move.
    W = torch.tensor([[2.0, 1.0, 0.01, -1.0]])
    mean = torch.tensor([1.0, 0.0, 1.0, 1.0])
    pruned = torch.tensor([[0.0, 1.0, 0.01, -1.0]])
    result = dsnot(W, pruned, mean, torch.ones(4), torch.ones(4), threshold=1e-3)
    assert result.mask.tolist() == [[False, False, False, True]]
    assert result.swaps.tolist() == [1]
    assert result.error_before[0] == pytest.approx(2.0) and result.error_after[0] == pytest.approx(1.0)


def test_rows_keep_their_zeros_and_the_error_drops():
    W, X, mean, var, sq = _layer()
    mask = prune_lowest_per_row(W.abs() * sq.sqrt(), 38)
    pruned = W.masked_fill(mask, 0)
    result = dsnot(W, pruned, mean, var, sq, max_cycles=50, threshold=0.0, rule="shrink")
    assert result.swaps.sum() > 0
    assert torch.equal(result.mask.sum(dim=1), mask.sum(dim=1))
    assert torch.equal(result.W == 0, result.mask)
    # kept weights carry their dense values, pruned ones are 0
    assert torch.equal(result.W[~result.mask], W[~result.mask])
    before = expected_error(W, pruned, mean).abs()
    after = expected_error(W, result.W, mean).abs()
    assert torch.allclose(after, result.error_after, atol=1e-4)
    assert (after <= before + 1e-6).all() and after.sum() < 0.5 * before.sum()


def test_nm_groups_keep_n():
    W, X, mean, var, sq = _layer(1)
    mask = prune_lowest_nm(W.abs() * sq.sqrt(), 2, 4)
    for rule in ("released", "shrink"):
        result = dsnot(W, W.masked_fill(mask, 0), mean, var, sq, threshold=0.0, nm_m=4, rule=rule)
        assert result.swaps.sum() > 0
        assert ((~result.mask).view(32, -1, 4).sum(dim=-1) == 2).all()
        assert result.error_after.sum() < result.error_before.sum()


def test_released_rule_overshoots_where_shrink_stops():
    # e = 1 (column 0 pruned, W*E[x] = +1). The only pair: regrow column 0 (-1), prune column 1
    # (W*E[x] = -3: e becomes 1 - 1 + 3 = 3). The released code takes it (unstructured: no check),
    # "shrink" refuses it.
    W = torch.tensor([[1.0, -3.0, 0.5]])
    mean = torch.tensor([1.0, 1.0, 0.0])
    pruned = torch.tensor([[0.0, -3.0, 0.5]])
    released = dsnot(W, pruned, mean, torch.ones(3), torch.ones(3), threshold=0.0, rule="released")
    shrink = dsnot(W, pruned, mean, torch.ones(3), torch.ones(3), threshold=0.0, rule="shrink")
    assert released.swaps.tolist() == [1] and released.error_after[0] == pytest.approx(3.0)
    assert shrink.swaps.tolist() == [0] and shrink.error_after[0] == pytest.approx(1.0)


def test_released_nm_rule_stops_before_the_sign_flips():
    # 1:2 groups. e = 1 (column 0 pruned). Regrowing column 0 in group (0, 1) means pruning column 1
    # (W*E[x] = -0.5): e = 1 - 1 - 0.5 = -0.5, the sign flips, so the released rule refuses it.
    W = torch.tensor([[1.0, -0.5, 0.2, 0.0]])
    mean = torch.tensor([1.0, 1.0, 0.0, 0.0])
    pruned = torch.tensor([[0.0, -0.5, 0.2, 0.0]])
    released = dsnot(W, pruned, mean, torch.ones(4), torch.ones(4), threshold=0.0, nm_m=2, rule="released")
    shrink = dsnot(W, pruned, mean, torch.ones(4), torch.ones(4), threshold=0.0, nm_m=2, rule="shrink")
    assert released.swaps.tolist() == [0]
    assert shrink.swaps.tolist() == [1] and shrink.error_after[0] == pytest.approx(0.5)


def test_threshold_is_per_sequence():
    from lib.pruners import LayerStats
    from lib.recovery.dsnot import dsnot_from_stats

    W, X, mean, var, sq = _layer(3, tokens=512)
    mask = prune_lowest_per_row(W.abs() * sq.sqrt(), 32)
    pruned = W.masked_fill(mask, 0)
    e = expected_error(W, pruned, mean).abs()
    threshold = float(e.median()) * 128  # the median row, in units of a sum over 128 tokens
    per_sequence = LayerStats(col_sq_norm=sq, col_mean=mean, tokens=512, sequences=4)  # 128 tokens each
    result = dsnot_from_stats(W, pruned, per_sequence, nm_m=None, max_cycles=50, threshold=threshold)
    below = e <= float(e.median())  # the rows already within the threshold never move, the others do
    assert (result.swaps[below] == 0).all() and (result.swaps[~below] > 0).all()
    per_token = LayerStats(col_sq_norm=sq, col_mean=mean, tokens=512, sequences=512)  # 1 token each
    assert dsnot_from_stats(W, pruned, per_token, nm_m=None, max_cycles=50, threshold=threshold).swaps.sum() == 0


def test_threshold_and_cycles_stop_rows():
    W, X, mean, var, sq = _layer(2)
    mask = prune_lowest_per_row(W.abs() * sq.sqrt(), 32)
    pruned = W.masked_fill(mask, 0)
    assert dsnot(W, pruned, mean, var, sq, threshold=1e9).swaps.sum() == 0
    assert dsnot(W, pruned, mean, var, sq, max_cycles=1, threshold=0.0).swaps.max() <= 1


def test_column_means_are_the_mean_inputs():
    model = tiny_model("llama")
    block = decoder_blocks(model)[0]
    linears = block_linears(block)
    x = torch.randn(3, 7, model.config.hidden_size)
    with InputStatistics({"mlp.gate_proj": linears["mlp.gate_proj"]}, {"col_sum"}) as stats:
        linears["mlp.gate_proj"](x)
    assert torch.allclose(stats.col_means()["mlp.gate_proj"], x.reshape(-1, x.shape[-1]).mean(0), atol=1e-6)
    assert stats.sequences["mlp.gate_proj"] == 3 and stats.tokens["mlp.gate_proj"] == 21  # DSnoT's error scale


@pytest.mark.parametrize("pruner", ["wanda", "ria", "magnitude", "sparsegpt"])
def test_engine_keeps_every_row_count(pruner):
    ids = torch.randint(3, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    plain, refined = tiny_model("llama"), tiny_model("llama")
    prune_model(plain, pruner_name=pruner, ratios=[0.6] * 3, calib_ids=ids, pattern=SparsityPattern())
    report = {}
    recovery = RecoveryOptions(refine="dsnot", dsnot_threshold=0.0, dsnot_skip="none", dsnot_rule="shrink")
    prune_model(
        refined,
        pruner_name=pruner,
        ratios=[0.6] * 3,
        calib_ids=ids,
        pattern=SparsityPattern(),
        recovery=recovery,
        report=report,
    )
    assert report["dsnot"]["swaps_total"] > 0
    assert report["dsnot"]["mean_error_after"] < report["dsnot"]["mean_error_before"]
    first_plain, first_refined = block_linears(decoder_blocks(plain)[0]), block_linears(decoder_blocks(refined)[0])
    for name, lin in first_plain.items():  # block 0 sees the same inputs: same row counts, other positions
        assert torch.equal((lin.weight == 0).sum(1), (first_refined[name].weight == 0).sum(1))
    if pruner != "sparsegpt":  # SparseGPT's later blocks may zero dead inputs beyond the target
        assert measure_sparsity(refined)[0] == measure_sparsity(plain)[0]


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_released_default_skips_the_mlp(family):
    ids = torch.randint(3, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    plain, refined = tiny_model(family), tiny_model(family)
    prune_model(plain, pruner_name="wanda", ratios=[0.6] * 3, calib_ids=ids, pattern=SparsityPattern())
    report = {}
    recovery = RecoveryOptions(refine="dsnot", dsnot_threshold=0.0)  # released defaults: skip mlp
    prune_model(refined, pruner_name="wanda", ratios=[0.6] * 3, calib_ids=ids, pattern=SparsityPattern(),
                recovery=recovery, report=report)  # fmt: skip
    mlp = ("mlp.", "fc1", "fc2")
    refined_names = set(report["dsnot"]["swaps"])
    assert refined_names and not any(name.split(".", 1)[1].startswith(mlp) for name in refined_names)
    assert report["dsnot"]["swaps_total"] > 0
    block_plain, block_refined = block_linears(decoder_blocks(plain)[0]), block_linears(decoder_blocks(refined)[0])
    for name, lin in block_plain.items():  # block 0 sees the same inputs: its MLP is plain Wanda's
        assert torch.equal(lin.weight, block_refined[name].weight) == name.startswith(mlp), name


def test_magnitude_refined_needs_calibration():
    with pytest.raises(ValueError, match="calibration"):
        prune_model(
            tiny_model("llama"),
            pruner_name="magnitude",
            ratios=[0.5] * 3,
            calib_ids=None,
            pattern=SparsityPattern(),
            recovery=RecoveryOptions(refine="dsnot"),
        )


@pytest.mark.parametrize(
    "argv,reason",
    [
        (["--prune_method", "dense", "--refine", "dsnot"], "not --prune_method dense"),
        (["--prune_method", "wanda", "--refine", "dsnot", "--dsnot_cycles", "0"], "--dsnot_cycles must be"),
    ],
)
def test_bad_flags_fail_before_loading(argv, reason, capsys, monkeypatch):
    monkeypatch.setattr(main_cli, "run", lambda *a: pytest.fail("heavy work started"))
    assert main_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and len(err.splitlines()) == 1
