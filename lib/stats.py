"""Streaming fp32 statistics of the inputs of linear layers, collected with forward hooks."""

from __future__ import annotations

import torch
from torch import nn


class ColumnNormCollector:
    """Context manager accumulating ``||X_j||_2^2`` over all calibration tokens for each input
    column ``j`` of the given linear layers (fp32, shape ``(C_in,)``; Wanda's and RIA's statistic).

    Layers fed the same tensor (q/k/v, gate/up) share one computation. Hooks are removed on exit.
    """

    def __init__(self, linears: dict[str, nn.Linear]):
        self.linears = linears
        self.sq_norms: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self._handles = []
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def _column_sq_norms(self, x: torch.Tensor) -> torch.Tensor:
        if self._last is not None and self._last[0] is x:
            return self._last[1]
        x2d = x.reshape(-1, x.shape[-1])  # (tokens, C_in)
        sq = torch.linalg.vector_norm(x2d, ord=2, dim=0, dtype=torch.float32).square_()
        self._last = (x, sq)
        return sq

    def _hook(self, name: str):
        def hook(module, args, output):
            x = args[0]
            sq = self._column_sq_norms(x)
            if name in self.sq_norms:
                self.sq_norms[name] += sq
                self.tokens[name] += x.numel() // x.shape[-1]
            else:
                self.sq_norms[name] = sq.clone()
                self.tokens[name] = x.numel() // x.shape[-1]

        return hook

    def __enter__(self) -> ColumnNormCollector:
        self._handles = [lin.register_forward_hook(self._hook(name)) for name, lin in self.linears.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._last = None
