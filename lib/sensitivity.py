"""ALP Stage A: connection sensitivities from loss gradients on a few calibration samples,
reduced to the per-block summary Stage B needs, and cached with metadata.

Statistics over the per-sample fp32 gradients ``g_k`` (k = 1..N) of every decoder-block
linear weight:

- ``l2_total``: ``sum_k g_k^2``;  ``l2``: ``sqrt(sum_k g_k^2)``;  ``l1``: ``sum_k |g_k|``
- ``l2_hundred_total`` (the reference default): ``sum_k g_k^2 + 1e4 * g_N^2``, which is what
  the released code saves (its accumulator is overwritten with the running sum plus
  ``(100 g_k)^2`` at every step, so the last sample dominates).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .arch import decoder_blocks, prunable_linears

GRAD_TYPES = ("l2_hundred_total", "l2_total", "l2", "l1")
LOSSES = ("last_token", "full_sequence")
CACHE_FORMAT = 1


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss: str) -> torch.Tensor:
    """Next-token cross-entropy. ``logits`` ``(b, T, V)``, ``input_ids`` ``(b, T)``.

    ``last_token``: only the prediction of the final token counts (the reference labels every
    other position -100); ``full_sequence``: the mean over all ``T-1`` predictions.
    """
    if loss == "last_token":
        pred, target = logits[:, -2, :], input_ids[:, -1]
    elif loss == "full_sequence":
        pred, target = logits[:, :-1, :].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1)
    else:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    return nn.functional.cross_entropy(pred.float(), target.to(pred.device))


class _GradientStatistic:
    """Per-weight fp32 accumulators fed by post-accumulate-grad hooks (``.grad`` freed at once).

    One fp32 buffer per weight: ``l2_hundred_total`` folds the last sample's extra ``1e4 g_N^2``
    into the running sum when that sample arrives (``nsamples`` says which one is last), instead
    of keeping a second copy of every weight's ``g^2`` until the end.
    """

    def __init__(self, weights: dict[str, nn.Parameter], grad_type: str, nsamples: int):
        self.grad_type, self.nsamples = grad_type, nsamples
        self.total = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
        self.seen = dict.fromkeys(weights, 0)
        self._handles = [w.register_post_accumulate_grad_hook(self._hook(n)) for n, w in weights.items()]

    def _hook(self, name: str):
        def hook(param: torch.Tensor) -> None:
            g = param.grad.float()
            self.seen[name] += 1
            if self.grad_type == "l1":
                self.total[name].add_(g.abs())
            else:
                last = self.grad_type == "l2_hundred_total" and self.seen[name] == self.nsamples
                self.total[name].addcmul_(g, g, value=1.0 + 1e4 if last else 1.0)
            param.grad = None

        return hook

    def finish(self) -> dict[str, torch.Tensor]:
        for handle in self._handles:
            handle.remove()
        if self.grad_type == "l2":
            return {n: t.sqrt_() for n, t in self.total.items()}
        return self.total


@contextlib.contextmanager
def checkpointed_blocks(model: nn.Module):
    """Recompute each decoder block's activations during backward instead of storing them
    (activation memory of one block instead of all). Works in eval mode, so dropout stays off."""
    blocks = list(decoder_blocks(model))
    for block in blocks:
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            return torch.utils.checkpoint.checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed
    try:
        yield
    finally:
        for block in blocks:
            del block.forward  # back to the class's forward


def gradient_sensitivities(
    model: nn.Module, samples: torch.Tensor, *, grad_type: str, loss: str, checkpointing: bool = False
) -> list[dict[str, torch.Tensor]]:
    """Per-weight sensitivity ``S`` of every decoder-block linear, one backward per sample.

    ``samples`` ``(N, T)`` token ids. Returns, per block, ``{linear name: S (C_out, C_in) fp32}``.
    Only block-linear weights get gradients, each folded into its fp32 accumulator and freed
    as soon as it is computed; no optimizer state is created. ``checkpointing`` trades a
    second forward per block for activation memory.
    """
    if grad_type not in GRAD_TYPES:
        raise ValueError(f"unknown grad_type {grad_type!r}; choose one of {', '.join(GRAD_TYPES)}")
    blocks = prunable_linears(model)
    weights = {f"{b}.{name}": lin.weight for b, block in enumerate(blocks) for name, lin in block.items()}
    saved_flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    statistic = _GradientStatistic(weights, grad_type, len(samples))
    device = model.get_input_embeddings().weight.device
    try:
        with checkpointed_blocks(model) if checkpointing else contextlib.nullcontext():
            for ids in tqdm(samples, desc="gradients", leave=False):
                ids = ids.unsqueeze(0).to(device)
                causal_lm_loss(model(ids, use_cache=False).logits, ids, loss).backward()
    finally:
        result = statistic.finish()
        for p, flag in saved_flags.items():
            p.requires_grad_(flag)
    return [{name: result[f"{b}.{name}"] for name in block} for b, block in enumerate(blocks)]


@dataclass(frozen=True)
class BlockSummary:
    """Per-block moments of the concatenated sensitivities ``S^l`` (all ``(L,)`` float64).

    ``abs_z_sum[l] = sum_i |S_i - mean| / std`` is Stage B's ``Z_l`` (unbiased std).
    """

    count: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    abs_z_sum: torch.Tensor


def block_summary(sensitivities: list[dict[str, torch.Tensor]]) -> BlockSummary:
    """Reduce per-weight sensitivities to :class:`BlockSummary`, one linear at a time in float64."""
    count, mean, std, abs_z = [], [], [], []
    for block in sensitivities:
        n = sum(t.numel() for t in block.values())
        mu = sum(t.double().sum().item() for t in block.values()) / n
        var = sum((t.double() - mu).square().sum().item() for t in block.values()) / (n - 1)
        sigma = math.sqrt(var)
        dev = sum((t.double() - mu).abs().sum().item() for t in block.values())
        count.append(n)
        mean.append(mu)
        std.append(sigma)
        abs_z.append(dev / sigma if sigma > 0 else 0.0)
    as_t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return BlockSummary(as_t(count), as_t(mean), as_t(std), as_t(abs_z))


def save_cache(
    path: str | Path,
    summary: BlockSummary,
    metadata: dict,
    full: list[dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write a safetensors cache: the block summary, optional per-weight tensors
    (``block.{l}.{linear}``) and ``metadata`` as JSON in the header. Atomic."""
    from safetensors.torch import save

    from .utils import atomic_write_bytes

    tensors = {f"summary.{k}": getattr(summary, k) for k in ("count", "mean", "std", "abs_z_sum")}
    for b, block in enumerate(full or []):
        for name, t in block.items():
            tensors[f"block.{b}.{name}"] = t.contiguous().cpu()
    header = {"alp_sensitivity": json.dumps({**metadata, "format": CACHE_FORMAT}, sort_keys=True)}
    return atomic_write_bytes(path, save(tensors, metadata=header))


class CacheMismatch(ValueError):
    """A sensitivity cache exists but was made for another model or other settings."""


def load_cache(path: str | Path, expected: dict | None = None) -> tuple[BlockSummary, dict]:
    """Read a cache written by :func:`save_cache`; check its metadata against ``expected``.

    Raises ``CacheMismatch`` naming every differing field, or ``ValueError`` for a file that
    is truncated, corrupt or not a sensitivity cache.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            if "alp_sensitivity" not in header:
                raise ValueError("no alp_sensitivity metadata")
            metadata = json.loads(header["alp_sensitivity"])
            summary = BlockSummary(*(fh.get_tensor(f"summary.{k}") for k in ("count", "mean", "std", "abs_z_sum")))
    except Exception as err:  # safetensors raises several types for damaged files
        raise ValueError(
            f"sensitivity cache {path} is unreadable ({err}); delete it to recompute, or run save_gradient.py"
        ) from err
    if expected:
        diffs = [f"{k}: cache {metadata.get(k)!r} vs run {v!r}" for k, v in expected.items() if metadata.get(k) != v]
        if diffs:
            raise CacheMismatch(
                f"sensitivity cache {path} was made for other settings ({'; '.join(diffs)}); "
                "remove --gradient_path or recompute it with save_gradient.py"
            )
    return summary, metadata


def cache_metadata(
    *,
    model: str,
    fingerprint: str,
    grad_type: str,
    loss: str,
    nsamples: int,
    seqlen: int,
    seed: int,
    dataset: str,
    grad_dtype: torch.dtype | str,
    data_source: str,
) -> dict:
    """The fields that identify a sensitivity cache; a cache is reused only when all match.

    ``grad_dtype``: the dtype the model ran in for the backward pass (a cache made in bf16 is
    not an fp32 one); ``data_source``: :func:`lib.data.source_id` of the text the samples came
    from (a local file's checksum, or the hub id and revision).
    """
    return {
        "model": model,
        "fingerprint": fingerprint,
        "grad_type": grad_type,
        "loss": loss,
        "nsamples": nsamples,
        "seqlen": seqlen,
        "seed": seed,
        "dataset": dataset,
        "grad_dtype": str(grad_dtype).removeprefix("torch."),
        "data_source": data_source,
    }


_SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def default_cache_path(root: Path, metadata: dict) -> Path:
    """``root/gradients/{model}/{grad_type}_{loss}_n{N}_t{T}_seed{S}_{dataset}-{data}_{dtype}_{fingerprint}.safetensors``
    (``data``: 8 hex digits of the data source's id, ``dtype``: ``fp32``, ``bf16`` or ``fp16``)."""
    m = metadata
    data = hashlib.sha256(m["data_source"].encode()).hexdigest()[:8]
    dtype = _SHORT_DTYPES.get(m["grad_dtype"], m["grad_dtype"])
    name = (
        f"{m['grad_type']}_{m['loss']}_n{m['nsamples']}_t{m['seqlen']}_seed{m['seed']}_{m['dataset']}-{data}"
        f"_{dtype}_{m['fingerprint']}.safetensors"
    )
    return Path(root) / "gradients" / m["model"].replace("/", "--") / name


def gradient_provenance(metadata: dict, path: str | Path) -> dict:
    """The ``gradients`` entry of the run log's ``data_provenance`` from a cache's metadata:
    the cache file, the dtype of the pass and what :func:`lib.data.calibration_provenance`
    recorded when the cache was made (``None`` for a cache written without it)."""
    return {
        "cache": str(path),
        "grad_dtype": metadata.get("grad_dtype"),
        "data_source": metadata.get("data_source"),
        "samples": metadata.get("provenance"),
    }
