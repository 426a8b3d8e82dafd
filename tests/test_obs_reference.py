"""The OBS sweep (:func:`lib.obs.obs_sweep`) against a plain transcription of the published algorithms.

The reference below follows the papers' pseudo-code literally, in float64, one column at a time
and with no lazy batching: after each column ``j`` its error reaches *every* later column at
once, ``W[:, j+1:] -= err_j U[j, j+1:]``.

- SparseGPT (Frantar & Alistarh, 2023, Algorithm 1): ``H = 2/n X X^T + lambda I`` with
  ``lambda = percdamp * mean(diag H)``, ``U = chol(H^-1)^T`` (upper); at the start of each block of
  ``Bs`` columns the mask prunes the ``floor(Bs C_out s)`` lowest ``w^2 / U_jj^2`` of the block (with
  every earlier error already applied); N:M picks, when column ``j`` with ``j % M == 0`` is reached,
  the ``M - N`` lowest of those scores in columns ``j..j+M`` of each row.
- GPTQ (Frantar et al., 2023) with the mask held fixed: each kept weight is rounded to its row's
  min-max grid (refitted every ``groupsize`` columns on the current, masked weights), pruned ones
  are set to 0, and the error is spread the same way. Joint SparseGPT + GPTQ rounds the kept
  weights of the sweep on per-row grids fitted once on the dense weight.

The library's sweep is blocked (sub-blocks of 16 columns, lazy updates between blocks) and fp32;
both must give the same masks exactly and the same weights to fp32 round-off.
"""

import pytest
import torch

from lib.masks import SparsityPattern
from lib.obs import obs_sweep
from lib.quant import QuantConfig
from tests.test_pruners import layer_problem

UNSTRUCTURED = SparsityPattern()
PERCDAMP = 0.01


def reference_grid(w: torch.Tensor, wbits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's asymmetric min-max grid of each row of ``w`` ``(C_out, k)``: ``(scale, zero)`` ``(C_out,)``."""
    maxq = 2**wbits - 1
    lo = torch.clamp(w.min(dim=1).values, max=0)
    hi = torch.clamp(w.max(dim=1).values, min=0)
    flat = (lo == 0) & (hi == 0)
    lo, hi = torch.where(flat, -1.0, lo), torch.where(flat, 1.0, hi)
    scale = (hi - lo) / maxq
    return scale, torch.round(-lo / scale)


def reference_round(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, wbits: int) -> torch.Tensor:
    return scale * (torch.clamp(torch.round(w / scale) + zero, 0, 2**wbits - 1) - zero)


def reference_sweep(W, H, *, sparsity=0.0, blocksize=128, pattern=UNSTRUCTURED, fixed_mask=None, quant=None):
    """Plain column-by-column SparseGPT / GPTQ in float64: ``(W', mask, step)``, ``mask`` ``True`` =
    pruned, ``step`` ``(C_out, C_in)`` the grid step each weight was rounded with (0 unquantized)."""
    W = W.double().clone()
    H = H.double().clone()
    rows, columns = W.shape
    H += PERCDAMP * torch.mean(torch.diag(H)) * torch.eye(columns, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.linalg.inv(H)).T  # upper: H^-1 = U^T U
    mask = torch.zeros(rows, columns, dtype=torch.bool) if fixed_mask is None else fixed_mask.clone()
    if quant is not None and quant.groupsize == -1:
        start = W if fixed_mask is None else W.masked_fill(fixed_mask, 0)
        scale, zero = reference_grid(start, quant.wbits)
    step = torch.zeros_like(W)
    for j in range(columns):
        if fixed_mask is None and j % blocksize == 0 and not pattern.is_nm:
            block = slice(j, min(j + blocksize, columns))
            score = W[:, block] ** 2 / torch.diag(U)[block] ** 2
            count = int(score.numel() * sparsity)
            lowest = torch.argsort(score.flatten())[:count]
            block_mask = torch.zeros(score.numel(), dtype=torch.bool)
            block_mask[lowest] = True
            mask[:, block] = block_mask.view_as(score)
        if fixed_mask is None and pattern.is_nm and j % pattern.m == 0:
            score = W[:, j : j + pattern.m] ** 2 / torch.diag(U)[j : j + pattern.m] ** 2
            lowest = torch.topk(score, pattern.m - pattern.n, dim=1, largest=False).indices
            mask[torch.arange(rows).unsqueeze(1), j + lowest] = True
        if quant is not None and quant.groupsize != -1 and j % quant.groupsize == 0:
            group = W[:, j : j + quant.groupsize].masked_fill(mask[:, j : j + quant.groupsize], 0)
            scale, zero = reference_grid(group, quant.wbits)
        w = W[:, j].clone()
        q = w.masked_fill(mask[:, j], 0)
        if quant is not None:
            q = reference_round(q, scale, zero, quant.wbits).masked_fill(mask[:, j], 0)
            step[:, j] = scale
        err = (w - q) / U[j, j]
        W[:, j] = q
        W[:, j + 1 :] -= err.unsqueeze(1) * U[j, j + 1 :].unsqueeze(0)
    return W, mask, step


def problem(seed: int, c_out: int = 48, c_in: int = 192):
    """A weight and a known Hessian ``2/n X^T X`` of correlated, unevenly scaled inputs (fp32)."""
    W, _, stats = layer_problem(seed=seed, c_out=c_out, c_in=c_in, n=1024)
    return W, stats.hessian


def assert_same(ours: torch.Tensor, ref: torch.Tensor, ref_mask: torch.Tensor, step: torch.Tensor) -> None:
    """Same mask, same weights to fp32 round-off. Rounding to a grid may flip where fp32 and
    float64 fall on either side of a half step: then at most one row may differ, from a
    column where the two differ by exactly one grid step (the same mask before it)."""
    assert ref_mask.any()
    quantized = bool(step.any())
    if not quantized:
        assert torch.equal(ref == 0, ref_mask)  # nothing else is exactly 0
    close = (ours.double() - ref).abs() <= 2e-5 * float(ref.abs().max())
    flipped = (~close).any(dim=1)
    assert int(flipped.sum()) <= (1 if quantized else 0), f"rows {flipped.nonzero().flatten().tolist()} differ"
    assert torch.equal(ours[~flipped] == 0, ref[~flipped] == 0), "masks differ"
    for r in flipped.nonzero().flatten().tolist():
        j = int((~close[r]).nonzero()[0])
        assert abs(abs(float(ours[r, j]) - float(ref[r, j])) - float(step[r, j])) < 1e-3 * float(step[r, j])
        assert torch.equal(ours[r, :j] == 0, ref[r, :j] == 0)


# blocksize 64 with 192 columns: three blocks, each spanning four 16-column sub-blocks
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_sparsegpt_unstructured_matches_the_reference(sparsity):
    W, H = problem(seed=20)
    ours = obs_sweep(W, H, percdamp=PERCDAMP, blocksize=64, sparsity=sparsity)
    ref, ref_mask, step = reference_sweep(W, H, sparsity=sparsity, blocksize=64)
    assert_same(ours, ref, ref_mask, step)
    assert int((ours == 0).sum()) == 3 * int(64 * W.shape[0] * sparsity)  # floor per block, exactly


def test_sparsegpt_with_a_partial_last_block_matches_the_reference():
    W, H = problem(seed=21, c_in=200)  # 200 = 128 + 72
    ours = obs_sweep(W, H, percdamp=PERCDAMP, blocksize=128, sparsity=0.6)
    ref, ref_mask, step = reference_sweep(W, H, sparsity=0.6, blocksize=128)
    assert_same(ours, ref, ref_mask, step)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_sparsegpt_nm_matches_the_reference(n, m):
    W, H = problem(seed=22)
    pattern = SparsityPattern(n, m)
    ours = obs_sweep(W, H, percdamp=PERCDAMP, blocksize=64, pattern=pattern)
    ref, ref_mask, step = reference_sweep(W, H, blocksize=64, pattern=pattern)
    assert_same(ours, ref, ref_mask, step)
    assert ((ours != 0).view(W.shape[0], -1, m).sum(-1) == n).all()


@pytest.mark.parametrize("groupsize", [-1, 32])
def test_gptq_with_a_fixed_mask_matches_the_reference(groupsize):
    W, H = problem(seed=23)
    fixed = torch.rand(W.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    config = QuantConfig(wbits=4, groupsize=groupsize)
    ours = obs_sweep(W, H, percdamp=PERCDAMP, blocksize=64, fixed_mask=fixed, quant=config)
    ref, ref_mask, step = reference_sweep(W, H, blocksize=64, fixed_mask=fixed, quant=config)
    assert_same(ours, ref, ref_mask, step)
    assert len(torch.unique(ours[0, :32])) <= 2**4  # on a 4-bit grid


@pytest.mark.parametrize("pattern", [UNSTRUCTURED, SparsityPattern(2, 4)], ids=str)
def test_sparsegpt_joint_quantization_matches_the_reference(pattern):
    W, H = problem(seed=24)
    config = QuantConfig(wbits=4)
    ours = obs_sweep(W, H, percdamp=PERCDAMP, blocksize=64, sparsity=0.5, pattern=pattern, quant=config)
    ref, ref_mask, step = reference_sweep(W, H, sparsity=0.5, blocksize=64, pattern=pattern, quant=config)
    assert_same(ours, ref, ref_mask, step)
