"""The blocked Optimal-Brain-Surgeon column sweep shared by SparseGPT and GPTQ.

With ``H = 2/n X X^T`` (damped by ``percdamp`` times its mean diagonal) and ``U`` the upper
Cholesky factor of ``H^-1``, columns are visited left to right in blocks of ``blocksize``.
Each column ``j`` is replaced by its pruned and/or quantized value ``q`` and its error
``(w - q) / U_jj`` is spread onto the columns not yet visited: ``W[:, j:] -= err * U[j, j:]``
(inside the block at once, onto later blocks lazily). All maths in fp32.

- SparseGPT (Frantar & Alistarh, 2023): the mask is chosen during the sweep, per block by
  ``w^2 / U_jj^2`` (N:M: within every ``m`` columns as they are reached).
- GPTQ (Frantar et al., 2023) with a fixed mask: the mask is given (a pruner already chose
  it); pruned weights are set back to exactly 0 when their column is reached, so the error
  is compensated only into surviving weights.

What a sweep changes beyond what it was asked is kept in a :class:`SweepRecord` (a Hessian
re-damped, weights on dead inputs zeroed beyond the mask); the engine collects every sweep's
record with :func:`recording_sweeps` and reports them with :func:`summarize_sweeps`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass

import torch

from .masks import SparsityPattern, prune_lowest_per_matrix
from .quant import QuantConfig, fit_grid, quantize, static_grids

UNSTRUCTURED = SparsityPattern()
SUB = 16  # columns per inner sub-block of the sweep


@dataclass
class SweepRecord:
    """What one sweep over a ``(C_out, C_in)`` weight changed beyond what it was asked.

    - ``redamps``: times the damped Hessian failed a Cholesky factorisation and its damping was
      raised x10 (0 for a clean sweep); ``damp_requested`` / ``damp_used``: the damping added to
      the diagonal before and after that, absolute (``percdamp`` x mean diagonal of ``H``), and
      ``mean_diagonal`` that mean, so ``damp_used / mean_diagonal`` is the fraction really used;
    - ``dead_columns``: inputs whose Hessian diagonal is 0 (never active in the calibration data);
      every weight on them is set to 0, and ``dead_zeroed`` counts those that were non-zero and
      outside the mask (chosen at the target sparsity, or given), i.e. zeroed beyond it.
    """

    columns: int
    rows: int
    redamps: int = 0
    damp_requested: float = 0.0
    damp_used: float = 0.0
    mean_diagonal: float = 0.0
    dead_columns: int = 0
    dead_zeroed: int = 0

    @property
    def changed(self) -> bool:
        """True when the sweep did something it was not asked to (re-damped or zeroed extra)."""
        return self.redamps > 0 or self.dead_zeroed > 0

    def as_dict(self) -> dict:
        return asdict(self)


_ACTIVE: ContextVar[list[SweepRecord] | None] = ContextVar("obs_sweep_records", default=None)


@contextlib.contextmanager
def recording_sweeps() -> Iterator[list[SweepRecord]]:
    """Collect the :class:`SweepRecord` of every :func:`obs_sweep` run inside the ``with`` (in
    order; a SparseGPT layer gives one, a layer pruned then quantized with GPTQ one more)."""
    records: list[SweepRecord] = []
    token = _ACTIVE.set(records)
    try:
        yield records
    finally:
        _ACTIVE.reset(token)


def summarize_sweeps(records: dict[str, list[SweepRecord]]) -> dict:
    """JSON-ready summary of the sweeps of a run, ``records`` keyed by layer name.

    ``redamped``: ``{layer: {"times": k, "damp_fraction": damp_used / mean_diagonal}}`` for the
    layers whose Hessian was re-damped (the largest ``k`` when a layer had several sweeps);
    ``dead_columns`` and ``dead_zeroed``: totals over all layers; ``sweeps``: how many ran.
    """
    redamped: dict[str, dict] = {}
    dead_columns = dead_zeroed = sweeps = 0
    for name, layer_records in records.items():
        for r in layer_records:
            sweeps += 1
            dead_zeroed += r.dead_zeroed
            if r.redamps and r.redamps >= redamped.get(name, {}).get("times", 0):
                fraction = r.damp_used / r.mean_diagonal if r.mean_diagonal > 0 else math.inf
                redamped[name] = {"times": r.redamps, "damp_fraction": fraction}
        dead_columns += max((r.dead_columns for r in layer_records), default=0)
    return {"sweeps": sweeps, "redamped": redamped, "dead_columns": dead_columns, "dead_zeroed": dead_zeroed}


def sweep_note(summary: dict) -> str | None:
    """One printable line for a :func:`summarize_sweeps` summary; ``None`` when nothing changed."""
    parts = []
    if summary["redamped"]:
        most = max(v["times"] for v in summary["redamped"].values())
        fraction = max(v["damp_fraction"] for v in summary["redamped"].values())
        parts.append(
            f"{len(summary['redamped'])} Hessian(s) re-damped (up to {most} x10, damping up to "
            f"{fraction:.3g} of the mean diagonal)"
        )
    if summary["dead_zeroed"]:
        parts.append(
            f"{summary['dead_zeroed']} weight(s) on {summary['dead_columns']} dead input(s) zeroed beyond the target"
        )
    return "[obs] " + "; ".join(parts) if parts else None


def damped_inverse_cholesky(H: torch.Tensor, percdamp: float, record: SweepRecord | None = None) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp I)^-1`` with ``damp = percdamp * mean(diag H)``.

    A Hessian that is still not positive definite is re-damped (x10, with a warning) rather
    than failing; ``record`` (if given) gets how often and the damping used. ``H`` ``(C, C)`` fp32
    is damped **in place** (its diagonal raised), so that at most three ``C x C`` matrices exist
    at once: for a 7B model's ``down_proj`` each is 0.5 GB.
    """
    diagonal = H.diagonal()
    undamped = diagonal.clone()
    mean_diagonal = torch.mean(undamped)
    damp = percdamp * mean_diagonal
    if record is not None:
        record.damp_requested, record.mean_diagonal = float(damp), float(mean_diagonal)
    for attempt in range(8):
        torch.add(undamped, damp, out=diagonal)
        L, info = torch.linalg.cholesky_ex(H)
        if info == 0:
            Hinv = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            del Hinv
            if info == 0:
                if record is not None:
                    record.redamps, record.damp_used = attempt, float(damp)
                return U
        warnings.warn(
            f"OBS sweep: Hessian not positive definite at damping {float(damp):.3g}; re-damping x10", stacklevel=2
        )
        damp = damp * 10 if damp > 0 else torch.tensor(1e-6, device=H.device)
    raise RuntimeError("OBS sweep: Hessian could not be made positive definite")


def obs_sweep(
    W: torch.Tensor,
    H: torch.Tensor,
    *,
    percdamp: float,
    blocksize: int,
    sparsity: float = 0.0,
    pattern: SparsityPattern = UNSTRUCTURED,
    fixed_mask: torch.Tensor | None = None,
    quant: QuantConfig | None = None,
) -> torch.Tensor:
    """Prune and/or quantize ``W`` ``(C_out, C_in)`` given ``H`` ``(C_in, C_in)``; returns fp32.

    ``fixed_mask`` (``True`` = pruned) keeps a mask chosen elsewhere; otherwise SparseGPT chooses
    one at ``sparsity`` / ``pattern``. ``quant`` rounds every kept weight to its group's grid.
    A :class:`SweepRecord` of the sweep goes to the active :func:`recording_sweeps` list, if any.
    """
    W = W.float().clone()
    H = H.to(W.device, torch.float32).clone()
    columns = W.shape[1]
    record = SweepRecord(columns=columns, rows=W.shape[0])
    dead = torch.diag(H) == 0  # inputs never active: any weight on them is free to drop
    dead_columns = dead.nonzero().flatten()  # original indices
    live_on_dead = (W[:, dead_columns] != 0).T  # (n_dead, C_out): zeroed now; counted if the mask keeps them
    record.dead_columns = len(dead_columns)
    H[dead, dead] = 1
    W[:, dead] = 0
    act_order = quant is not None and quant.act_order
    if act_order and fixed_mask is None and pattern.is_nm:
        raise ValueError("act-order visits columns out of order, so it cannot keep N:M groups while pruning")
    width = quant.group_width(columns) if quant else columns
    # Grids fitted once up front: one per row (groupsize -1), or every group with static groups.
    static = static_grids(W if fixed_mask is None else W.masked_fill(fixed_mask, 0), quant) if quant else None
    refit = quant is not None and quant.groupsize != -1 and not quant.static_groups
    order = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else None
    if order is not None:
        W, H = W[:, order], H[order][:, order]
        fixed_mask = None if fixed_mask is None else fixed_mask[:, order]
    original_column = order if order is not None else torch.arange(columns, device=W.device)
    dead_rows = dead_columns if order is None else torch.argsort(order)[dead_columns]  # their sweep positions
    U = damped_inverse_cholesky(H, percdamp, record)
    # The sweep works on W^T, so that column j (the unit of every update) is contiguous row j.
    Wt = W.T.contiguous()  # (C_in, C_out)
    mask_t = None if fixed_mask is None else fixed_mask.T.contiguous()

    def quantize_row(j: int, q: torch.Tensor) -> torch.Tensor:
        nonlocal scale, zero
        if refit and j % width == 0:  # GPTQ: a group's grid from its current (updated) weights
            group = Wt[j : j + width]
            if mask_t is not None:
                group = group.masked_fill(mask_t[j : j + width], 0)
            scale, zero = fit_grid(group.T, quant)
        elif not refit:
            g = int(original_column[j]) // width
            scale, zero = static[0][:, g], static[1][:, g]
        return quantize(q, scale, zero, quant.maxq)

    scale = zero = None
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1, U1 = Wt[i1:i2], U[i1:i2, i1:i2]  # W1 is a view: updates land in Wt
        d = torch.diag(U1)
        Err1 = torch.zeros_like(W1)
        if mask_t is not None:
            mask1 = mask_t[i1:i2]
        elif pattern.is_nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            score = W1.square() / d.square().unsqueeze(1)
            mask1 = prune_lowest_per_matrix(score.T, int(W1.numel() * sparsity)).T
        # Within the block, rank-1 updates only reach the next SUB columns; every SUB columns
        # their errors reach the rest of the block in one matmul (same result, less traffic).
        for s1 in range(0, i2 - i1, SUB):
            s2 = min(s1 + SUB, i2 - i1)
            for i in range(s1, s2):
                if mask_t is None and pattern.is_nm and i % pattern.m == 0:
                    score = W1[i : i + pattern.m].square() / d[i : i + pattern.m].square().unsqueeze(1)
                    lowest = torch.topk(score, pattern.m - pattern.n, dim=0, largest=False).indices
                    mask1.scatter_(0, i + lowest, True)
                w = W1[i].clone()
                q = w.masked_fill(mask1[i], 0)
                if quant is not None:
                    q = quantize_row(i1 + i, q).masked_fill(mask1[i], 0)
                err = (w - q) / d[i]
                W1[i:s2] -= U1[i, i:s2].unsqueeze(1) * err.unsqueeze(0)
                W1[i] = q
                Err1[i] = err
            W1[s2:] -= U1[s1:s2, s2:].T @ Err1[s1:s2]
        Wt[i2:] -= U[i1:i2, i2:].T @ Err1
        if len(dead_rows):
            here = (dead_rows >= i1) & (dead_rows < i2)
            record.dead_zeroed += int((live_on_dead[here] & ~mask1[dead_rows[here] - i1]).sum())
    W = Wt.T
    if order is not None:
        W = W[:, torch.argsort(order)]
    active = _ACTIVE.get()
    if active is not None:
        active.append(record)
    return W.contiguous()


def gptq_keep_mask(
    W: torch.Tensor, H: torch.Tensor, config: QuantConfig, *, percdamp: float, blocksize: int
) -> torch.Tensor:
    """GPTQ of an already pruned ``W`` ``(C_out, C_in)``: its zeros stay exactly 0; same dtype."""
    return obs_sweep(W, H, percdamp=percdamp, blocksize=blocksize, fixed_mask=W == 0, quant=config).to(W.dtype)
