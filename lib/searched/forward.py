"""Held-out forwards for the searched allocations: dense hidden states cached once, pruned
blocks swapped in without copying weights, KL(dense || pruned) of the next-token distribution.

The dense model is never written to: a level's weights are put into a linear's ``weight.data``
for the time of one block's forward and the original tensor object is put back in ``finally``,
so the dense weights are restored exactly by construction (:func:`weights_checksum` checks it).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..arch import block_linears, decoder_blocks, prunable_linears
from ..sequential import BlockInputs, block_forward, capture_block_inputs

_KL_CHUNK = 64  # positions per fp32 softmax: keeps the (chunk, V) copies in cache


@contextlib.contextmanager
def swapped_weights(block: nn.Module, weights: dict[str, torch.Tensor] | None):
    """For the duration, each linear ``name`` of ``block`` computes with ``weights[name]`` (same
    shape); the dense tensors are put back untouched afterwards. ``None``: the dense block."""
    linears = block_linears(block)
    saved = {name: linears[name].weight.data for name in weights or {}}
    try:
        for name, w in (weights or {}).items():
            linears[name].weight.data = w
        yield block
    finally:
        for name, w in saved.items():
            linears[name].weight.data = w


def _blocks_parent(model: nn.Module) -> nn.Module:
    blocks = decoder_blocks(model)
    for module in model.modules():
        if any(child is blocks for child in module.children()):
            return module
    raise ValueError("cannot find the module holding the decoder blocks")


def head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits ``(b, T, V)`` from the last block's output ``hidden`` ``(b, T, d)``: the final norm,
    OPT's ``project_out``, the output embedding and Gemma-2's logit soft-cap, as the model's own
    forward applies them (:class:`HeldOut` checks this against a full forward once)."""
    parent = _blocks_parent(model)
    for name in ("norm", "final_layer_norm", "final_norm", "ln_f"):
        norm = getattr(parent, name, None)
        if norm is not None:
            hidden = norm(hidden)
            break
    if getattr(parent, "project_out", None) is not None:
        hidden = parent.project_out(hidden)
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def kl_sum(dense_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """``sum_t KL(p_dense,t || p_t)`` over every position of ``(b, T, V)`` logits, in fp32 (nats)."""
    total = 0.0
    d2, p2 = dense_logits.flatten(0, 1), logits.flatten(0, 1)  # (b*T, V)
    for start in range(0, d2.shape[0], _KL_CHUNK):
        log_p = torch.log_softmax(d2[start : start + _KL_CHUNK].float(), dim=-1)
        log_q = torch.log_softmax(p2[start : start + _KL_CHUNK].float(), dim=-1)
        total += float((log_p.exp() * (log_p - log_q)).sum(dtype=torch.float64))
    return total


def weights_checksum(model: nn.Module) -> list[tuple[int, float, float]]:
    """Per decoder-block linear: ``(sum, sum of squares, sum of |w| * index)`` in float64, to
    check that a search left the dense weights exactly as they were (a moved weight still matches)."""
    weights = [lin.weight.detach() for block in prunable_linears(model) for lin in block.values()]
    return [
        (
            float(w.double().sum()),
            float(w.double().square().sum()),
            float((w.double().abs().flatten() * torch.arange(w.numel(), dtype=torch.float64)).sum()),
        )
        for w in weights
    ]


class HeldOut:
    """Held-out calibration sequences ``(n, T)`` and their dense forward, cached once.

    ``inputs``: the block-0 inputs per micro-batch; ``dense_states[l]`` (when ``keep_states``):
    the dense hidden states entering block ``l`` per micro-batch (what ``--allocation dp`` starts
    from); ``dense_out``: the dense last-block outputs (the dense logits are recomputed from
    them with :func:`head_logits`, cheaper in memory than storing ``(n, T, V)``).
    """

    @torch.no_grad()
    def __init__(self, model: nn.Module, ids: torch.Tensor, *, micro_batch: int, keep_states: bool = False):
        self.model, self.ids, self.micro_batch = model, ids, micro_batch
        self.inputs: BlockInputs = capture_block_inputs(model, ids, micro_batch=micro_batch)
        self.dense_states: list[list[torch.Tensor]] = []
        hidden = list(self.inputs.hidden)
        for block in decoder_blocks(model):
            if keep_states:
                self.dense_states.append(hidden)
            hidden = [block_forward(block, h, self.inputs) for h in hidden]
        self.dense_out = hidden
        self._check_head(ids[: min(len(ids), micro_batch)])

    def _check_head(self, ids: torch.Tensor) -> None:
        device = self.model.get_input_embeddings().weight.device
        full = self.model(ids.to(device), use_cache=False).logits
        ours = head_logits(self.model, self.dense_out[0][: len(ids)])
        if not torch.allclose(full.float(), ours.float(), rtol=1e-3, atol=1e-3):
            raise ValueError(
                "the searched allocation's head (final norm + lm_head) does not reproduce this model's "
                "logits; its family needs a row in lib/searched/forward.head_logits"
            )

    def batches(self, sequences: int) -> int:
        """Micro-batches covering the first ``sequences`` held-out sequences (whole micro-batches)."""
        return -(-sequences // self.micro_batch)

    def tokens(self, batches: int) -> int:
        """Positions scored over the first ``batches`` micro-batches."""
        return sum(h.shape[0] * h.shape[1] for h in self.inputs.hidden[:batches])

    @torch.no_grad()
    def kl_from(self, start: int, hidden: list[torch.Tensor], weights_for) -> float:
        """Mean KL (nats per position) after running blocks ``start..L-1`` on ``hidden`` (the
        states entering block ``start``, one per micro-batch) with ``weights_for(l)`` (``None``:
        dense) swapped into each block; scored against the first ``len(hidden)`` dense batches."""
        blocks = decoder_blocks(self.model)
        for index in range(start, len(blocks)):
            with swapped_weights(blocks[index], weights_for(index)):
                hidden = [block_forward(blocks[index], h, self.inputs) for h in hidden]
        total = 0.0
        for h, dense in zip(hidden, self.dense_out, strict=False):
            total += kl_sum(head_logits(self.model, dense), head_logits(self.model, h))
        return total / self.tokens(len(hidden))
