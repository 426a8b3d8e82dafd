"""Fitness of a whole level profile for ``--allocation evo``: KL(dense || pruned) on the first
held-out sequences, reusing the parent's hidden states up to the first block an offspring changes."""

from __future__ import annotations

import torch

from ..arch import decoder_blocks
from ..sequential import block_forward
from .forward import HeldOut, swapped_weights
from .levels import LevelGrid


class ProfileFitness:
    """``fitness(levels, stage)``: mean KL per position over the held-out micro-batches of ``stage``.

    ``stage_batches[i]``: micro-batches scored at stage ``i`` (nested prefixes, growing). The
    states entering every block under the current parent are kept for the largest stage (set by
    :meth:`set_parent`), so an offspring runs only from the first block where it differs.
    """

    def __init__(self, held_out: HeldOut, grid: LevelGrid, weights, stage_batches: list[int]):
        self.held_out, self.grid, self.weights, self.stage_batches = held_out, grid, weights, stage_batches
        self.parent: tuple[int, ...] | None = None
        self.parent_weights: list[dict[str, torch.Tensor]] = []  # the parent's pruned linears, per block
        self.parent_states: list[list[torch.Tensor]] = []
        self.evaluations = 0
        self.token_forwards = 0  # positions run through a block, in units of whole-model forwards

    def _weights_for(self, levels):
        """Block ``index``'s pruned linears at ``levels[index]``: the parent's when the level is the
        parent's (masking a block costs about as much as running a few hundred tokens through it)."""

        def weights(index):
            if self.parent is not None and levels[index] == self.parent[index]:
                return self.parent_weights[index]
            return self.weights(index, self.grid.ratio(index, levels[index]))

        return weights

    @torch.no_grad()
    def set_parent(self, levels) -> float:
        """Run ``levels`` on the largest stage, keep its states; returns its fitness there."""
        blocks = decoder_blocks(self.held_out.model)
        batches = self.stage_batches[-1]
        hidden = list(self.held_out.inputs.hidden[:batches])
        states, kept = [], []
        for index, block in enumerate(blocks):
            states.append(hidden)
            kept.append(self._weights_for(levels)(index))
            with swapped_weights(block, kept[-1]):
                hidden = [block_forward(block, h, self.held_out.inputs) for h in hidden]
        self.parent_weights = kept
        states.append(hidden)  # the last block's outputs: an offspring equal to the parent starts here
        self.parent, self.parent_states = tuple(levels), states
        value = self.held_out.kl_from(len(blocks), hidden, lambda index: None)
        self._count(batches, len(blocks), len(blocks))
        return value

    def _count(self, batches: int, run_blocks: int, num_blocks: int) -> None:
        self.evaluations += 1
        self.token_forwards += self.held_out.tokens(batches) * run_blocks / num_blocks

    def __call__(self, levels, stage: int) -> float:
        levels = tuple(levels)
        batches = self.stage_batches[stage]
        num_blocks = len(levels)
        first = 0
        if self.parent is not None:
            first = next((i for i, (a, b) in enumerate(zip(levels, self.parent, strict=True)) if a != b), num_blocks)
        hidden = (
            self.parent_states[first][:batches] if self.parent is not None else self.held_out.inputs.hidden[:batches]
        )
        self._count(batches, num_blocks - first, num_blocks)
        return self.held_out.kl_from(first, list(hidden), self._weights_for(levels))
