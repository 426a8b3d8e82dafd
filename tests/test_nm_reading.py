"""N:M means one thing: patterns the two readings disagree on need ``--nm_reading``; the pruners
hold every supported pattern, not only N:2N."""

import math

import pytest
import torch

from lib.masks import SparsityPattern, check_nm_target, parse_sparsity_type
from lib.pruners import PRUNERS, LayerStats, PrunerOptions


@pytest.mark.parametrize("text", ["1:4", "3:4", "1:8", "2:3"])
def test_disagreeing_patterns_are_refused_without_a_reading(text):
    with pytest.raises(ValueError, match="is ambiguous") as err:
        parse_sparsity_type(text)
    message = str(err.value)
    assert "--nm_reading keep" in message and "--nm_reading prune" in message and "\n" not in message


def test_ambiguity_message_states_both_sparsities():
    with pytest.raises(ValueError, match=r"keep 1 of every 4 \(75% sparse\).*prune 1 of every 4 \(25% sparse\)"):
        parse_sparsity_type("1:4")


@pytest.mark.parametrize("text,n,m", [("2:4", 2, 4), ("4:8", 4, 8), ("1:2", 1, 2)])
def test_agreeing_patterns_need_no_reading(text, n, m):
    for reading in (None, "keep", "prune"):
        pattern = parse_sparsity_type(text, reading)
        assert (pattern.n, pattern.m, pattern.sparsity) == (n, m, 0.5)


def test_spelled_out_readings():
    assert parse_sparsity_type("1:4", "keep") == SparsityPattern(1, 4)  # keeps 1: 75 % sparse
    assert parse_sparsity_type("1:4", "prune") == SparsityPattern(3, 4)  # prunes 1: 25 % sparse
    assert parse_sparsity_type("1:4", "keep").sparsity == 0.75
    assert parse_sparsity_type("1:4", "prune").sparsity == 0.25
    assert parse_sparsity_type("unstructured").sparsity is None


def test_bad_readings_refused():
    with pytest.raises(ValueError, match="--nm_reading 'drop'"):
        parse_sparsity_type("1:4", "drop")
    with pytest.raises(ValueError, match="drop it for unstructured"):
        parse_sparsity_type("unstructured", "keep")


def test_target_must_be_the_pattern_sparsity():
    keep_one = parse_sparsity_type("1:4", "keep")
    check_nm_target(keep_one, 0.75)
    with pytest.raises(ValueError, match="use --sparsity_ratio 0.75"):
        check_nm_target(keep_one, 0.5)
    check_nm_target(parse_sparsity_type("2:3", "prune"), 0.6667)  # 4 decimals are enough
    with pytest.raises(ValueError, match="use --sparsity_ratio 0.5"):
        check_nm_target(parse_sparsity_type("2:4"), 0.7)
    with pytest.raises(ValueError, match="--blocksize 128 must be a multiple of M = 3"):
        check_nm_target(parse_sparsity_type("1:3", "keep"), 2 / 3, blocksize=128)
    check_nm_target(parse_sparsity_type("1:4", "keep"), 0.75, blocksize=128)
    check_nm_target(SparsityPattern(), 0.7)  # unstructured: any target


@pytest.mark.parametrize("name", ["magnitude", "wanda", "ria", "sparsegpt"])
@pytest.mark.parametrize("text,reading,kept", [("1:4", "keep", 1), ("1:4", "prune", 3), ("3:8", "keep", 3)])
def test_pruners_hold_non_half_patterns(name, text, reading, kept):
    gen = torch.Generator().manual_seed(0)
    c_out, c_in, tokens = 32, 256, 1024
    W = torch.randn(c_out, c_in, generator=gen)
    X = torch.randn(tokens, c_in, generator=gen) * torch.exp(torch.randn(c_in, generator=gen))
    stats = LayerStats(col_sq_norm=X.square().sum(0), hessian=2 * X.T @ X / tokens)
    pattern = parse_sparsity_type(text, reading)
    pruned = PRUNERS[name].prune(W, stats, pattern.sparsity, pattern, PrunerOptions())
    nonzero = (pruned != 0).view(c_out, -1, pattern.m).sum(-1)
    assert (nonzero == kept).all()
    assert float((pruned == 0).float().mean()) == pytest.approx(pattern.sparsity)
    assert math.isclose(pattern.sparsity, 1 - kept / pattern.m)
