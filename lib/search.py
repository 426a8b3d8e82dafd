"""Choose an allocation's hyper-parameter (ALP/DLP alpha, OWL lambda, ramp beta) by the loss of
the pruned model on held-out calibration text, never on the evaluation set."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .arch import prunable_linears
from .eval import window_nll


def candidate_grid(limit: float, count: int, *, symmetric: bool = True) -> list[float]:
    """``count`` evenly spaced values in ``[-limit, limit]`` (or ``[0, limit]``), 0 included when odd."""
    if count < 2:
        raise ValueError("need at least two candidates")
    low = -limit if symmetric else 0.0
    return [round(low + (limit - low) * i / (count - 1), 6) for i in range(count)]


@torch.no_grad()
def mean_nll(model: nn.Module, ids: torch.Tensor) -> float:
    """Mean next-token NLL of ``model`` over the rows of ``ids`` ``(n, T)``."""
    device = model.get_input_embeddings().weight.device
    losses = [window_nll(model(row.unsqueeze(0).to(device), use_cache=False).logits, row.unsqueeze(0)) for row in ids]
    return float(torch.cat(losses).mean())


def search_parameter(
    model: nn.Module,
    candidates: list[float],
    ratios_for: Callable[[float], list[float]],
    prune_with: Callable[[list[float]], None],
    held_out_ids: torch.Tensor,
    *,
    name: str,
    placement: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[float, list[dict]]:
    """Prune with each candidate's ratios, score the held-out loss, restore the dense weights.
    ``placement()`` wraps each scoring forward (e.g. :func:`lib.placement.blocks_on_demand`).

    Returns ``(best candidate, [{name: value, "loss": ..., "ratios": [...]}, ...])``; a candidate
    whose ratios are invalid is recorded with ``loss: None`` and its error. The dense
    prunable weights are kept on the CPU between candidates (one copy).
    """
    backup = [
        {n: lin.weight.detach().to("cpu", copy=True) for n, lin in block.items()} for block in prunable_linears(model)
    ]
    records = []
    try:
        for value in tqdm(candidates, desc=f"search {name}", leave=False):
            try:
                ratios = ratios_for(value)
            except ValueError as err:  # e.g. a block pushed to sparsity >= 1: not a valid candidate
                records.append({name: value, "loss": None, "error": str(err)})
                continue
            prune_with(ratios)
            with placement():
                loss = mean_nll(model, held_out_ids)
            records.append({name: value, "loss": loss, "ratios": ratios})
            _restore(model, backup)
    finally:
        _restore(model, backup)
    valid = [r for r in records if r["loss"] is not None]
    if not valid:
        raise ValueError(f"no valid {name} among {candidates}: {records[0]['error']}")
    best = min(valid, key=lambda r: r["loss"])
    return best[name], records


@torch.no_grad()
def _restore(model: nn.Module, backup: list[dict[str, torch.Tensor]]) -> None:
    for block, saved in zip(prunable_linears(model), backup, strict=True):
        for n, lin in block.items():
            lin.weight.copy_(saved[n])
