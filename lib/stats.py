"""Streaming fp32 statistics of the inputs of linear layers, collected with forward hooks."""

from __future__ import annotations

import torch
from torch import nn

STATISTICS = ("col_sq_norm", "col_sum", "hessian")


class InputStatistics:
    """Context manager accumulating, for each given linear layer, over all calibration tokens:

    - ``col_sq_norm[name]``: ``||X_j||_2^2`` per input column, fp32 ``(C_in,)`` (Wanda, RIA);
    - ``col_sum[name]``: ``sum_tokens x_j`` per input column, fp32 ``(C_in,)``; :meth:`col_means`
      divides it by the token count (DSnoT's ``E[x_j]``);
    - ``hessian[name]``: ``2/n X X^T``, fp32 ``(C_in, C_in)`` (SparseGPT), via :meth:`hessians`.

    Only the statistics named in ``needs`` are computed. Layers fed the same tensor (q/k/v,
    gate/up) share one computation and one buffer. Hooks are removed on exit.
    """

    def __init__(self, linears: dict[str, nn.Linear], needs: frozenset[str] | set[str]):
        unknown = set(needs) - set(STATISTICS)
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}; known: {STATISTICS}")
        self.linears = linears
        self.needs = set(needs)
        self.col_sq_norm: dict[str, torch.Tensor] = {}
        self.col_sum: dict[str, torch.Tensor] = {}
        self._xtx: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.sequences: dict[str, int] = {}  # calibration sequences seen (DSnoT's error scale)
        self._handles = []
        self._last_input: torch.Tensor | None = None
        self._last_owner: str | None = None

    def _hook(self, name: str):
        def hook(module, args, output):
            x = args[0]
            if self._last_input is x:  # same tensor as the previous layer: share its buffers
                owner = self._last_owner
                for store in (self.col_sq_norm, self.col_sum, self._xtx):
                    if owner in store and name not in store:
                        store[name] = store[owner]
                self.tokens[name] = self.tokens[owner]
                self.sequences[name] = self.sequences[owner]
                return
            x2d = x.reshape(-1, x.shape[-1])  # (tokens, C_in)
            if "col_sq_norm" in self.needs:
                sq = torch.linalg.vector_norm(x2d, ord=2, dim=0, dtype=torch.float32).square_()
                self._accumulate(self.col_sq_norm, name, sq)
            if "col_sum" in self.needs:
                self._accumulate(self.col_sum, name, x2d.sum(dim=0, dtype=torch.float32))
            if "hessian" in self.needs:
                xf = x2d.float()
                self._accumulate(self._xtx, name, xf.T @ xf)
            self.tokens[name] = self.tokens.get(name, 0) + x2d.shape[0]
            self.sequences[name] = self.sequences.get(name, 0) + (x.shape[0] if x.dim() == 3 else 1)
            self._last_input, self._last_owner = x, name

        return hook

    @staticmethod
    def _accumulate(store: dict, name: str, value: torch.Tensor) -> None:
        if name in store:
            store[name] += value
        else:
            store[name] = value

    def col_means(self) -> dict[str, torch.Tensor]:
        """``E[x_j]`` per layer, fp32 ``(C_in,)``: the column sums over the calibration tokens seen."""
        return {name: total / self.tokens[name] for name, total in self.col_sum.items()}

    def hessians(self) -> dict[str, torch.Tensor]:
        """``2/n X X^T`` per layer (``n`` = calibration tokens seen), handed over: the accumulators
        are scaled in place (once per shared input) and dropped from this object, so the caller
        holds the only reference and can free each Hessian as soon as its layer is done."""
        scaled = set()
        for name, xtx in self._xtx.items():
            if id(xtx) not in scaled:
                xtx.mul_(2.0 / self.tokens[name])
                scaled.add(id(xtx))
        handed, self._xtx = self._xtx, {}
        return handed

    def __enter__(self) -> InputStatistics:
        self._handles = [lin.register_forward_hook(self._hook(name)) for name, lin in self.linears.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._last_input = self._last_owner = None
