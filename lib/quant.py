"""Weight quantization grid (GPTQ's asymmetric / symmetric min-max grid), round-to-nearest,
and the storage accounting of a sparse + quantized model.

A grid maps a real weight ``w`` of row ``r`` and column group ``g`` to
``scale[r, g] * (clamp(round(w / scale) + zero, 0, 2^b - 1) - zero)``. The range of every
group always contains 0 and ``zero`` is an integer, so 0 maps exactly to 0: a pruned weight
stays pruned through quantization. GPTQ itself (error compensation) lives in :mod:`lib.obs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .masks import SparsityPattern


@dataclass(frozen=True)
class QuantConfig:
    """Quantization settings (``wbits`` 2..8; ``groupsize`` -1 = one group per row)."""

    wbits: int = 4
    groupsize: int = -1
    sym: bool = False
    act_order: bool = False  # GPTQ: visit columns by decreasing Hessian diagonal
    static_groups: bool = False  # with act_order: fit every group's grid before any update
    method: str = "gptq"  # "gptq" (error compensation) or "rtn" (round to nearest)

    @property
    def maxq(self) -> int:
        return 2**self.wbits - 1

    def group_width(self, columns: int) -> int:
        """Columns per group for a weight with ``columns`` inputs."""
        return columns if self.groupsize == -1 else self.groupsize


def fit_grid(W: torch.Tensor, config: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max grid of each row of ``W`` ``(C_out, k)``: ``(scale, zero)`` fp32 ``(C_out,)``.

    The range is widened to contain 0; a symmetric grid is centred on ``zero = 2^(b-1)``.
    """
    W = W.float()
    xmin = W.amin(dim=1).clamp(max=0)
    xmax = W.amax(dim=1).clamp(min=0)
    if config.sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    flat = (xmin == 0) & (xmax == 0)  # an all-zero row: any positive scale will do
    xmin, xmax = xmin.masked_fill(flat, -1.0), xmax.masked_fill(flat, 1.0)
    scale = (xmax - xmin) / config.maxq
    if config.sym:
        zero = torch.full_like(scale, (config.maxq + 1) // 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale, zero


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Round ``w`` to the grid, fp32 (fake-quantized: same shape, real values on the grid).

    ``w`` ``(C_out,)`` or ``(C_out, k)``; ``scale`` and ``zero`` ``(C_out,)``.
    """
    if w.dim() == 2:
        scale, zero = scale.unsqueeze(1), zero.unsqueeze(1)
    q = torch.clamp(torch.round(w.float() / scale) + zero, 0, maxq)
    return scale * (q - zero)


def static_grids(W: torch.Tensor, config: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Grids of every column group of ``W`` ``(C_out, C_in)`` in its original column order:
    ``(scale, zero)`` fp32 ``(C_out, n_groups)``."""
    width = config.group_width(W.shape[1])
    grids = [fit_grid(W[:, start : start + width], config) for start in range(0, W.shape[1], width)]
    return torch.stack([s for s, _ in grids], dim=1), torch.stack([z for _, z in grids], dim=1)


def rtn_quantize(W: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Round-to-nearest quantization of ``W`` ``(C_out, C_in)`` on its per-group grids (same dtype).

    Zeros (pruned weights) stay exactly zero.
    """
    scale, zero = static_grids(W, config)
    width = config.group_width(W.shape[1])
    group_of_column = torch.arange(W.shape[1], device=W.device) // width
    q = torch.clamp(torch.round(W.float() / scale[:, group_of_column]) + zero[:, group_of_column], 0, config.maxq)
    return (scale[:, group_of_column] * (q - zero[:, group_of_column])).to(W.dtype)


@dataclass(frozen=True)
class StorageFigures:
    """Size of the prunable linear weights and of the whole model, in MiB and bits per weight."""

    dense_fp16_mib: float  # whole model, every parameter in fp16
    packed_mib: float  # whole model, prunable weights packed (values + mask/index + grids)
    linear_dense_fp16_mib: float
    linear_packed_mib: float
    bits_per_weight: float  # prunable linear weights: packed bits / number of weights
    mask_format: str  # "dense", "bitmask", "n:m index", or several joined by "+" (per layer)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def storage_figures(
    linear_weights: list[torch.Tensor],
    other_params: int,
    *,
    config: QuantConfig | None,
    pattern: SparsityPattern,
) -> StorageFigures:
    """Packed size of pruned (and quantized) linear weights ``(C_out, C_in)`` next to fp16.

    Values: ``wbits`` per surviving weight (16 without quantization). Positions: a 1-bit mask per
    weight, or for N:M ``ceil(log2 M)`` bits per kept weight when smaller. A layer is stored dense
    (every value, zeros included, no positions) when that is smaller, e.g. a few zeros from rounding.
    Grids: a fp16 scale per row and group plus a ``wbits`` zero point (none when symmetric).
    ``other_params`` (embeddings, norms...) count at 16 bits in both totals.
    """
    value_bits = 16 if config is None else config.wbits
    total_weights, total_bits, formats = 0, 0, set()
    for W in linear_weights:
        c_out, c_in = W.shape
        kept, numel = int((W != 0).sum()), W.numel()
        bits, fmt = numel * value_bits, "dense"  # zeros stored as values: no positions needed
        if kept < numel:
            sparse_bits, sparse_fmt = kept * value_bits + numel, "bitmask"
            if pattern.is_nm and kept * math.ceil(math.log2(pattern.m)) < numel:
                sparse_bits, sparse_fmt = kept * value_bits + kept * math.ceil(math.log2(pattern.m)), "n:m index"
            if sparse_bits < bits:
                bits, fmt = sparse_bits, sparse_fmt
        formats.add(fmt)
        if config is not None:
            groups = math.ceil(c_in / config.group_width(c_in))
            bits += c_out * groups * (16 + (0 if config.sym else config.wbits))
        total_weights += numel
        total_bits += bits
    mib = 8 * 2**20
    linear_dense, linear_packed = total_weights * 16 / mib, total_bits / mib
    return StorageFigures(
        dense_fp16_mib=linear_dense + other_params * 16 / mib,
        packed_mib=linear_packed + other_params * 16 / mib,
        linear_dense_fp16_mib=linear_dense,
        linear_packed_mib=linear_packed,
        bits_per_weight=total_bits / max(total_weights, 1),
        mask_format="+".join(sorted(formats)),
    )
