"""Per-block scores that the baseline allocations (OWL, DLP, AlphaPruning) rank blocks by."""

from __future__ import annotations

import torch
from torch import nn

from .arch import block_linears, prunable_linears
from .pruners.wanda import wanda_score
from .sequential import run_sequential
from .stats import InputStatistics


@torch.no_grad()
def wanda_block_metrics(
    model: nn.Module, calib_ids: torch.Tensor, *, owl_m: float = 5.0, micro_batch: int = 4, device=None
) -> dict[str, torch.Tensor]:
    """One dense calibration pass; per block ``(L,)`` float64 tensors over the concatenated
    Wanda scores ``|W| * ||X_j||`` of all its linears:

    - ``outlier_share``: fraction of scores above ``owl_m`` times their mean (OWL's ``D_l``);
    - ``median``: their median (DLP's ``U_l``).
    """
    shares, medians = [], []

    def step(index, block, forward_all):
        linears = block_linears(block)
        with InputStatistics(linears, {"col_sq_norm"}) as stats:
            forward_all()
        scores = torch.cat([wanda_score(lin.weight, stats.col_sq_norm[n]).flatten() for n, lin in linears.items()])
        shares.append(float((scores > owl_m * scores.mean()).double().mean()))
        medians.append(float(scores.median()))

    run_sequential(model, calib_ids, step, micro_batch=micro_batch, device=device, desc="block metrics")
    return {
        "outlier_share": torch.tensor(shares, dtype=torch.float64),
        "median": torch.tensor(medians, dtype=torch.float64),
    }


def hill_alpha(W: torch.Tensor) -> float:
    """Power-law exponent of the eigenvalue spectrum of ``W^T W`` (Hill estimator, ``x_min`` at
    the median eigenvalue, as AlphaPruning's ``xmin_mid``): ``1 + k / sum log(lambda_i / x_min)``."""
    eig = torch.linalg.svdvals(W.detach().float()).square().sort().values  # ascending eigenvalues
    tail = eig[len(eig) // 2 :]
    logs = torch.log(tail / tail[0])
    return float(1.0 + (len(tail) - 1) / logs.sum().clamp_min(1e-12))


def heavy_tail_alpha(model: nn.Module) -> torch.Tensor:
    """Mean Hill exponent over the linears of each decoder block, ``(L,)`` float64."""
    return torch.tensor(
        [sum(hill_alpha(lin.weight) for lin in block.values()) / len(block) for block in prunable_linears(model)],
        dtype=torch.float64,
    )


def block_sizes(model: nn.Module) -> list[int]:
    """Prunable weights per decoder block (for parameter-weighted means)."""
    return [sum(lin.weight.numel() for lin in block.values()) for block in prunable_linears(model)]
