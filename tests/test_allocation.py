"""ALP Stage B on synthetic block scores."""

import pytest
import torch

from lib.allocation import ALP_MIN_SPARSITY, alp, uniform


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
