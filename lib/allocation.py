"""Per-block sparsity allocations: pure formulas on per-block scores, no model code.

Every allocation returns an :class:`Allocation`: one sparsity per decoder block whose
parameter-weighted mean is the target (blocks of equal size: the plain mean), plus a
record of any clamping. The per-block scores come from elsewhere: ALP's ``Z_l`` from the
sensitivity cache, OWL's outlier shares and DLP's mean (or median) Wanda scores from
:mod:`lib.block_metrics`,
AlphaPruning's heavy-tail exponents from :func:`lib.block_metrics.heavy_tail_alpha`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

ALP_MIN_SPARSITY = 0.01  # the reference sets a non-positive block sparsity to this
MAX_SPARSITY = 0.99  # no block may lose (nearly) all its weights
ALLOCATIONS = ("uniform", "alp", "owl", "dlp", "alphapruning", "ramp")


@dataclass
class Allocation:
    """``ratios[l]`` is the sparsity of decoder block ``l``; ``clamped`` lists ``(l, before, after)``;
    ``fallback`` says why a non-uniform allocation gave every block the target (``None``: it did not)."""

    name: str
    ratios: list[float]
    clamped: list[tuple[int, float, float]] = field(default_factory=list)
    fallback: str | None = None


def weighted_mean(ratios, sizes=None) -> float:
    """Parameter-weighted mean sparsity (``sizes[l]``: prunable weights of block ``l``)."""
    r = torch.as_tensor(ratios, dtype=torch.float64)
    w = torch.ones_like(r) if sizes is None else torch.as_tensor(sizes, dtype=torch.float64)
    return float((r * w).sum() / w.sum())


def rebalance(name: str, ratios, sparsity: float, sizes=None, *, low: float = 0.0, high: float = MAX_SPARSITY):
    """Shift ``ratios`` so their weighted mean is ``sparsity``, clamping to ``[low, high]``.

    Clamped blocks are held at the bound and the others shifted again until the mean holds,
    so clamping never changes the overall sparsity. Returns an :class:`Allocation`; raises
    ``ValueError`` when no ratios within the bounds have that mean (never a silent miss).
    """
    r = torch.as_tensor(ratios, dtype=torch.float64).clone()
    w = torch.ones_like(r) if sizes is None else torch.as_tensor(sizes, dtype=torch.float64)
    if not low <= sparsity <= high:
        raise ValueError(f"{name}: target sparsity {sparsity} lies outside the block bounds [{low}, {high}]")
    if not bool(torch.isfinite(r).all()):
        raise ValueError(f"{name}: block ratios are not all finite ({r.tolist()}); check the block scores")
    free = torch.ones_like(r, dtype=torch.bool)
    original = r.clone()
    tolerance = 1e-12 * float(w.sum())
    for _ in range(len(r) + 2):  # each round either ends or fixes at least one more block
        over, under = free & (r > high), free & (r < low)
        r[over], r[under] = high, low
        free &= ~(over | under)
        excess = sparsity * w.sum() - (r * w).sum()
        if abs(float(excess)) <= tolerance:
            break
        if not free.any():
            raise ValueError(f"{name}: no allocation within [{low}, {high}] has mean {sparsity}")
        r[free] += excess / w[free].sum()
    else:  # rounds exhausted: the last shift was never checked against the bounds or the mean
        missed = float(sparsity * w.sum() - (r * w).sum()) / float(w.sum())
        if not abs(missed) <= 1e-9 or bool((r > high).any() or (r < low).any()):
            raise ValueError(
                f"{name}: could not reach mean sparsity {sparsity} within [{low}, {high}] "
                f"(missed by {missed:.3g} after {len(r) + 2} rounds)"
            )
    clamped = [(i, float(original[i]), float(r[i])) for i in range(len(r)) if not free[i]]
    return Allocation(name, r.tolist(), clamped)


def uniform(num_blocks: int, sparsity: float) -> Allocation:
    """``s_l = s`` for every block."""
    return Allocation("uniform", [float(sparsity)] * num_blocks)


def _equal_scores(name: str, num_blocks: int, sparsity: float) -> Allocation:
    """The uniform ratios an allocation falls back to when every block scores the same, recorded as such."""
    return Allocation(name, [float(sparsity)] * num_blocks, fallback="uniform: all block scores are equal")


def _minmax(x: torch.Tensor) -> torch.Tensor | None:
    spread = x.max() - x.min()
    return None if spread <= 0 else (x - x.min()) / spread


def _alp_steps(name: str, importance: torch.Tensor, sparsity: float, alpha: float, sizes) -> Allocation:
    """ALP steps 4-5 from an importance ``r`` (higher = keep more), with the reference's clamp."""
    r = importance.double()
    u = _minmax(r)
    if u is None:  # all blocks alike: no information to allocate with
        return _equal_scores(name, len(r), sparsity)
    d = u * (2.0 * alpha)
    keep = d - d.mean() + (1.0 - sparsity)
    ratios = (1.0 - keep).tolist()
    clamped = []
    for index, value in enumerate(ratios):
        if value <= 0:
            clamped.append((index, value, ALP_MIN_SPARSITY))
            ratios[index] = ALP_MIN_SPARSITY
        elif value >= 1:
            raise ValueError(
                f"{name} gives block {index} sparsity {value:.3f} >= 1 at target {sparsity} and alpha {alpha}; "
                "lower --alpha or --sparsity_ratio"
            )
    if sizes is not None and len(set(map(float, sizes))) > 1:
        return rebalance(name, ratios, sparsity, sizes, low=ALP_MIN_SPARSITY)
    return Allocation(name, ratios, clamped)


def alp(block_scores: torch.Tensor, sparsity: float, alpha: float, sizes=None) -> Allocation:
    """ALP Stage B. ``block_scores`` ``(L,)``: ``Z_l = sum_i |z_i|`` of each block's standardised
    sensitivities (:func:`lib.sensitivity.block_summary`).

    1. ``r_l = 1 - Z_l / sum_m Z_m``
    2. ``d_l = (r_l - min r) / (max r - min r) * 2 alpha``
    3. keep ``k_l = d_l - mean(d) + (1 - s)``; ``s_l = 1 - k_l``; non-positive ``s_l`` -> 0.01.

    Equivalently ``s_l = s + 2 alpha (u_l - mean u)`` with ``u`` the min-max normalised ``Z``:
    lighter-tailed blocks (larger ``Z``) are pruned more. A negative ``alpha`` reverses the
    direction. Blocks of unequal ``sizes`` are re-centred on the parameter-weighted mean.
    """
    Z = block_scores.double()
    return _alp_steps("alp", 1.0 - Z / Z.sum(), sparsity, alpha, sizes)


def dlp(block_scores: torch.Tensor, sparsity: float, alpha: float, sizes=None) -> Allocation:
    """DLP: importance ``1 - U_l / sum U`` from the Wanda metric statistic ``U_l`` of each block
    (the mean in the released code, the median in the paper; see
    :func:`lib.block_metrics.wanda_block_metrics`), then ALP's steps 2-3 with ``alpha``."""
    U = block_scores.double()
    return _alp_steps("dlp", 1.0 - U / U.sum(), sparsity, alpha, sizes)


def owl(outlier_share: torch.Tensor, sparsity: float, lam: float, sizes=None) -> Allocation:
    """OWL: ``s_l = s - 2 lambda (v_l - mean v)``, ``v`` the min-max normalised share of
    outlier Wanda scores (``> M * mean``) per block: more outliers, less pruning."""
    v = _minmax(outlier_share.double())
    if v is None:
        return _equal_scores("owl", len(outlier_share), sparsity)
    return rebalance("owl", (sparsity - 2.0 * lam * (v - v.mean())).tolist(), sparsity, sizes)


def alphapruning(heavy_tail_alpha: torch.Tensor, sparsity: float, epsilon: float, sizes=None) -> Allocation:
    """AlphaPruning: the per-block mean PL exponent ``alpha_hat`` mapped linearly onto
    ``[1 - eps, 1 + eps]`` and scaled so the weighted mean is ``s``: heavier-tailed
    (better-trained, smaller ``alpha_hat``) blocks are pruned less (released ``eps``: 0.3)."""
    a = _minmax(heavy_tail_alpha.double())
    if a is None:
        return _equal_scores("alphapruning", len(heavy_tail_alpha), sparsity)
    factor = (1.0 - epsilon) + 2.0 * epsilon * a
    ratios = factor * (sparsity / weighted_mean(factor, sizes))
    return rebalance("alphapruning", ratios.tolist(), sparsity, sizes)


def ramp(num_blocks: int, sparsity: float, beta: float, sizes=None) -> Allocation:
    """Linear in depth (ATP-style): ``s_l = s - beta (L-1)/2 + beta l`` for ``l = 0..L-1``."""
    ratios = [sparsity - beta * (num_blocks - 1) / 2 + beta * index for index in range(num_blocks)]
    return rebalance("ramp", ratios, sparsity, sizes)
