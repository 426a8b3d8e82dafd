"""Per-block scores that the baseline allocations (OWL, DLP, AlphaPruning) rank blocks by."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .arch import block_linears, prunable_linears
from .pruners.wanda import wanda_score
from .sequential import run_sequential
from .stats import InputStatistics

DLP_STATISTICS = ("mean", "median")  # DLP's block score: released code (mean) or paper (median)
XMIN_ESTIMATORS = ("peak", "median")  # AlphaPruning's x_min: released alpha_peak, or the median eigenvalue


@torch.no_grad()
def wanda_block_metrics(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    owl_m: float = 5.0,
    dlp_statistic: str = "mean",
    micro_batch: int = 4,
    device=None,
) -> dict[str, torch.Tensor]:
    """One dense calibration pass; per block ``(L,)`` float64 tensors over the concatenated
    Wanda scores ``|W| * ||X_j||`` (fp32) of all its linears:

    - ``outlier_share``: fraction of scores above ``owl_m`` times their mean (OWL's ``D_l``);
    - ``mean`` and ``median``: their mean and median;
    - ``dlp``: DLP's ``U_l``, the ``dlp_statistic`` of them: ``"mean"`` as the released
      ``get_dlp_ratios`` (ironartisan/DLP) computes it, or ``"median"`` as the paper describes.
    """
    if dlp_statistic not in DLP_STATISTICS:
        raise ValueError(f"dlp_statistic {dlp_statistic!r}: choose among {', '.join(DLP_STATISTICS)}")
    shares, means, medians = [], [], []

    def step(index, block, forward_all):
        linears = block_linears(block)
        with InputStatistics(linears, {"col_sq_norm"}) as stats:
            forward_all()
        scores = torch.cat([wanda_score(lin.weight, stats.col_sq_norm[n]).flatten() for n, lin in linears.items()])
        mean = scores.mean()
        shares.append(float((scores > owl_m * mean).double().mean()))
        means.append(float(mean))
        medians.append(float(scores.median()))

    run_sequential(model, calib_ids, step, micro_batch=micro_batch, device=device, desc="block metrics")
    metrics = {
        "outlier_share": torch.tensor(shares, dtype=torch.float64),
        "mean": torch.tensor(means, dtype=torch.float64),
        "median": torch.tensor(medians, dtype=torch.float64),
    }
    metrics["dlp"] = metrics[dlp_statistic]
    return metrics


def eigenvalues(W: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues of ``W^T W``, ``(min(C_out, C_in),)`` fp32: squared singular values of
    ``W`` taken in fp32 (as the released AlphaPruning computes its spectra)."""
    return torch.linalg.svdvals(W.detach().float()).square().sort().values


def hill_alpha(W: torch.Tensor) -> float:
    """Power-law exponent of the eigenvalue spectrum of ``W^T W`` (Hill estimator, ``x_min`` at
    the median eigenvalue): ``1 + (k - 1) / sum log(lambda_i / x_min)`` over the ``k`` upper-half
    eigenvalues. AlphaPruning's ``xmin_mid`` is the same fit with ``k`` in place of ``k - 1``."""
    eig = eigenvalues(W)
    tail = eig[len(eig) // 2 :]
    logs = torch.log(tail / tail[0])
    return float(1.0 + (len(tail) - 1) / logs.sum().clamp_min(1e-12))


class PowerLawFit(NamedTuple):
    """``alpha``: PL exponent; ``xmin``: the eigenvalue where the fitted tail starts; ``ks``: its
    Kolmogorov-Smirnov distance to the tail's empirical CDF (1.0 when no candidate fitted)."""

    alpha: float
    xmin: float
    ks: float


def fit_power_law_peak(eig: torch.Tensor, *, bins: int = 100, chunk: int = 256) -> PowerLawFit:
    """AlphaPruning's released ``alpha_peak`` (``xmin_peak``) fit of ascending eigenvalues ``eig`` ``(N,)``.

    1. Histogram ``log10(eig)`` in ``bins`` equal bins over its range (fp32, as released);
       ``p`` = left edge of the fullest bin (the first such bin), as an eigenvalue.
    2. Candidate ``x_min``: the eigenvalues ``lambda_i`` (all but the largest) with
       ``log10(0.95 p) <= lambda_i <= 1.5 p``. The lower bound mixes a log with a linear scale
       exactly as the released code does, so in practice it only bounds from above.
    3. For each candidate, the maximum-likelihood exponent of the ``n = N - i`` eigenvalues from
       ``lambda_i`` up: ``alpha_i = 1 + n / sum_j log(lambda_j / lambda_i)``, and (when
       ``alpha_i > 1``) the KS distance ``max_k |1 - (lambda_{i+k} / lambda_i)^(1 - alpha_i) - k / n|``.
    4. Keep the candidate with the smallest KS distance (the first on ties; none fitted: the
       released code returns its placeholder, ``alpha = 0`` unless ``lambda_0`` was a candidate).

    Steps 3-4 run in float64 (the released code: fp32), vectorised over ``chunk`` candidates.
    """
    eig = eig.detach().float().cpu()
    N = len(eig)
    if N < 2:
        raise ValueError(f"a power-law fit needs at least 2 eigenvalues, got {N}")
    log10 = torch.log10(eig)
    low, high = log10.min(), log10.max()
    counts = torch.histc(log10, bins, min=float(low), max=float(high))
    edges = torch.linspace(float(low), float(high), bins + 1)
    peak = 10 ** edges[torch.argmax(counts)]
    lower, upper = torch.log10(0.95 * peak), 1.5 * peak  # the released bounds, scales mixed as released
    candidate = (eig[:-1] >= lower) & (eig[:-1] <= upper)
    # the released loop stops at the first eigenvalue above `upper`; eig is ascending, so the
    # candidates are one contiguous run and the mask above selects the same ones
    e = eig.double()
    logs = torch.log(e)
    suffix = logs.flip(0).cumsum(0).flip(0)  # suffix[i] = sum_{j >= i} log lambda_j
    n = (N - torch.arange(N, dtype=torch.float64))[:-1]  # tail sizes for x_min = lambda_i
    alphas = torch.where(candidate, 1 + n / (suffix[:-1] - n * logs[:-1]), torch.zeros_like(n))
    ks = torch.ones(N - 1, dtype=torch.float64)
    fitted = (candidate & (alphas > 1)).nonzero().flatten()
    positions = torch.arange(N, dtype=torch.float64)
    for start in range(0, len(fitted), chunk):
        idx = fitted[start : start + chunk]  # (K,) candidate positions i
        offset = positions.unsqueeze(0) - idx.unsqueeze(1)  # (K, N): k = j - i
        ratio = (e.unsqueeze(0) / e[idx].unsqueeze(1)).clamp_min(1.0)  # (K, N), 1 where j < i
        model_cdf = 1 - ratio.pow(1 - alphas[idx].unsqueeze(1))
        gap = (model_cdf - offset / n[idx].unsqueeze(1)).abs().masked_fill(offset < 0, 0.0)
        ks[idx] = gap.amax(dim=1)
    best = int(torch.argmin(ks))
    return PowerLawFit(float(alphas[best]), float(eig[best]), float(ks[best]))


def peak_alpha(W: torch.Tensor, *, bins: int = 100) -> float:
    """PL exponent of the spectrum of ``W^T W`` by AlphaPruning's released ``alpha_peak`` fit
    (:func:`fit_power_law_peak`)."""
    return fit_power_law_peak(eigenvalues(W), bins=bins).alpha


def heavy_tail_alpha(model: nn.Module, *, xmin: str = "peak") -> torch.Tensor:
    """Mean PL exponent over the linears of each decoder block, ``(L,)`` float64 (the released
    ``block_wise`` mapping). ``xmin``: ``"peak"`` (released ``alpha_peak``, :func:`peak_alpha`) or
    ``"median"`` (:func:`hill_alpha`)."""
    if xmin not in XMIN_ESTIMATORS:
        raise ValueError(f"xmin {xmin!r}: choose among {', '.join(XMIN_ESTIMATORS)}")
    estimate = peak_alpha if xmin == "peak" else hill_alpha
    return torch.tensor(
        [sum(estimate(lin.weight) for lin in block.values()) / len(block) for block in prunable_linears(model)],
        dtype=torch.float64,
    )


def block_sizes(model: nn.Module) -> list[int]:
    """Prunable weights per decoder block (for parameter-weighted means)."""
    return [sum(lin.weight.numel() for lin in block.values()) for block in prunable_linears(model)]
