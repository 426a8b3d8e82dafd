"""ALP Stage B on synthetic block scores."""

import pytest
import torch

from lib.allocation import (
    ALP_MIN_SPARSITY,
    MAX_SPARSITY,
    alp,
    alphapruning,
    dlp,
    owl,
    ramp,
    rebalance,
    uniform,
    weighted_mean,
)


def test_hand_computed_example():
    # Z = [1, 2, 3, 4]: r = 1 - Z/10 = [.9, .8, .7, .6]; d = (r - .6)/.3 * 0.3 = [.3, .2, .1, 0]
    # keep = d - .15 + 0.4 = [.55, .45, .35, .25] -> s_l = [.45, .55, .65, .75]
    result = alp(torch.tensor([1.0, 2.0, 3.0, 4.0]), 0.6, 0.15)
    assert result.ratios == pytest.approx([0.45, 0.55, 0.65, 0.75])
    assert result.clamped == []


def test_mean_spread_and_direction():
    Z = torch.rand(30, generator=torch.Generator().manual_seed(0)) * 1e5
    s, alpha = 0.7, 0.15
    ratios = torch.tensor(alp(Z, s, alpha).ratios, dtype=torch.float64)
    assert ratios.mean().item() == pytest.approx(s, abs=1e-12)
    assert (ratios.max() - ratios.min()).item() == pytest.approx(2 * alpha, abs=1e-12)
    # lighter-tailed blocks (larger Z) are pruned more: the ratios are sorted like Z
    assert torch.equal(torch.argsort(ratios), torch.argsort(Z.double()))


def test_closed_form():
    Z = torch.tensor([5.0, 1.0, 9.0, 4.0, 4.5])
    u = (Z - Z.min()) / (Z.max() - Z.min())
    expected = 0.5 + 2 * 0.1 * (u - u.mean())
    assert alp(Z, 0.5, 0.1).ratios == pytest.approx(expected.tolist())


def test_non_positive_ratio_clamped_to_reference_floor():
    result = alp(torch.tensor([0.0, 10.0, 10.0, 10.0]), 0.1, 0.2)
    assert result.ratios[0] == ALP_MIN_SPARSITY
    assert result.clamped and result.clamped[0][0] == 0 and result.clamped[0][1] <= 0


def test_ratio_reaching_one_is_refused():
    with pytest.raises(ValueError, match="lower --alpha"):
        alp(torch.tensor([10.0, 0.0, 0.0, 0.0]), 0.9, 0.2)


def test_equal_blocks_fall_back_to_uniform():
    assert alp(torch.ones(4), 0.7, 0.15).ratios == [0.7] * 4
    assert uniform(3, 0.5).ratios == [0.5, 0.5, 0.5]


def test_negative_alpha_reverses_direction():
    Z = torch.tensor([1.0, 5.0, 3.0])
    forward, reverse = alp(Z, 0.5, 0.1).ratios, alp(Z, 0.5, -0.1).ratios
    assert forward == pytest.approx([0.5 - (r - 0.5) for r in reverse])


def test_unequal_blocks_use_the_parameter_weighted_mean():
    sizes = [100, 300, 600]
    result = alp(torch.tensor([1.0, 2.0, 4.0]), 0.6, 0.1, sizes)
    assert weighted_mean(result.ratios, sizes) == pytest.approx(0.6)
    ramped = ramp(3, 0.5, 0.2, sizes)
    assert weighted_mean(ramped.ratios, sizes) == pytest.approx(0.5)
    assert ramped.ratios[2] - ramped.ratios[1] == pytest.approx(0.2)


def test_rebalance_clamps_without_moving_the_mean():
    result = rebalance("test", [0.2, 0.9, 1.3, 0.6], 0.75)
    assert max(result.ratios) <= MAX_SPARSITY and min(result.ratios) >= 0
    assert sum(result.ratios) / 4 == pytest.approx(0.75)
    assert [c[0] for c in result.clamped] == [1, 2]  # 1.3 clamps, and the shift then pushes 0.9 over


def test_owl_more_outliers_less_pruning():
    D = torch.tensor([0.01, 0.05, 0.03, 0.02])
    result = owl(D, 0.7, 0.08)
    assert sum(result.ratios) / 4 == pytest.approx(0.7)
    assert max(result.ratios) - min(result.ratios) == pytest.approx(0.16)
    assert torch.equal(torch.argsort(torch.tensor(result.ratios)), torch.argsort(-D))


def test_dlp_higher_median_more_pruning():
    U = torch.tensor([1.0, 3.0, 2.0])
    result = dlp(U, 0.7, 0.15)
    assert sum(result.ratios) / 3 == pytest.approx(0.7)
    assert torch.equal(torch.argsort(torch.tensor(result.ratios)), torch.argsort(U))


def test_alphapruning_maps_exponents_into_epsilon_band():
    a = torch.tensor([2.0, 4.0, 3.0, 6.0])
    result = alphapruning(a, 0.6, 0.2)
    r = torch.tensor(result.ratios)
    assert r.mean().item() == pytest.approx(0.6)
    assert (r.max() / r.min()).item() == pytest.approx(1.2 / 0.8)  # factors span [1 - eps, 1 + eps]
    assert torch.equal(torch.argsort(r), torch.argsort(a))  # heavier tail (smaller alpha) pruned less


def test_ramp_is_linear_in_depth():
    assert ramp(5, 0.5, 0.05).ratios == pytest.approx([0.4, 0.45, 0.5, 0.55, 0.6])


def test_rebalance_terminates_with_large_block_sizes():
    sizes = [3_538_944] * 30  # SmolLM2-sized blocks: float rounding must not stall the loop
    ratios = [0.7 + 0.01 * ((i * 7) % 5 - 2) for i in range(30)]
    result = rebalance("test", ratios, 0.7, sizes)
    assert weighted_mean(result.ratios, sizes) == pytest.approx(0.7, abs=1e-12)


@pytest.mark.parametrize(
    "name,allocate",
    [
        ("alp", lambda s: alp(torch.full((4,), 3.0), s, 0.15)),
        ("dlp", lambda s: dlp(torch.full((4,), 0.2), s, 0.15)),
        ("owl", lambda s: owl(torch.full((4,), 0.01), s, 0.08)),
        ("alphapruning", lambda s: alphapruning(torch.full((4,), 3.5), s, 0.3)),
    ],
)
def test_equal_scores_fallback_is_recorded(name, allocate):
    result = allocate(0.7)
    assert result.ratios == [0.7] * 4
    assert result.name == name and result.fallback == "uniform: all block scores are equal"
    assert alp(torch.tensor([1.0, 2.0, 3.0, 4.0]), 0.7, 0.15).fallback is None
    assert uniform(4, 0.7).fallback is None  # asked-for uniform is no fallback


def test_rebalance_refuses_an_unreachable_target():
    with pytest.raises(ValueError, match=r"owl: target sparsity 0.995 lies outside the block bounds \[0.0, 0.99\]"):
        rebalance("owl", [0.9, 0.95, 0.99], 0.995)
    with pytest.raises(ValueError, match="ramp: target sparsity 0.0 lies outside"):
        rebalance("ramp", [0.1, 0.2], 0.0, low=0.01)


def test_rebalance_refuses_non_finite_ratios():
    # a NaN block score (e.g. a degenerate spectrum) used to come back as NaN ratios, silently
    with pytest.raises(ValueError, match="alphapruning: block ratios are not all finite"):
        rebalance("alphapruning", [0.6, float("nan"), 0.8], 0.7)
    with pytest.raises(ValueError, match="not all finite"):
        alphapruning(torch.tensor([2.0, float("nan"), 3.0]), 0.7, 0.3)
