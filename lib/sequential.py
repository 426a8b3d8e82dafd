"""Block-by-block forward over calibration data. Knows nothing about pruning.

The inputs of block 0 are captured with a forward pre-hook (keyword arguments included:
attention mask, position ids, rotary ``position_embeddings``...), so every family's own
embedding and mask code runs unchanged. Then each block is handed to a ``block_step``
callback and run once more to produce the inputs of the next block, so block ``l+1``
sees the (pruned) outputs of block ``l``. Only one block's activations are held.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .arch import decoder_blocks
from .placement import move_to, outside_blocks_on


class _BlockInputsCaptured(Exception):
    """Raised by the capture hook to stop the model forward at the first decoder block."""


@dataclass
class BlockInputs:
    """Calibration activations entering one decoder block.

    ``hidden``: one ``(b, T, d)`` tensor per micro-batch. ``extra_args`` / ``kwargs``: the other
    positional and keyword arguments of the block call, keyed by micro-batch size (they
    depend only on it, since all calibration sequences share one length).
    """

    hidden: list[torch.Tensor] = field(default_factory=list)
    extra_args: dict[int, tuple] = field(default_factory=dict)
    kwargs: dict[int, dict] = field(default_factory=dict)
    _moved: dict[tuple[int, torch.device], tuple[tuple, dict]] = field(default_factory=dict)

    def call_args(self, hidden: torch.Tensor) -> tuple[tuple, dict]:
        """The other arguments of the block call for ``hidden``, on ``hidden``'s device (moved once)."""
        key = (hidden.shape[0], hidden.device)
        if key not in self._moved:
            b = hidden.shape[0]
            self._moved[key] = (move_to(self.extra_args[b], hidden.device), move_to(self.kwargs[b], hidden.device))
        return self._moved[key]


def _input_device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, input_ids: torch.Tensor, *, micro_batch: int, store: torch.device | None = None
) -> BlockInputs:
    """Run the model up to its first decoder block on ``input_ids`` ``(n, T)``, in micro-batches;
    the hidden states are kept on ``store`` (default: where they were computed)."""
    first = decoder_blocks(model)[0]
    inputs = BlockInputs()

    def hook(module, positional, keywords):
        keywords = dict(keywords)
        if positional:
            hidden, extra = positional[0], tuple(positional[1:])
        else:
            hidden, extra = keywords.pop("hidden_states"), ()
        b = hidden.shape[0]
        inputs.hidden.append(hidden if store is None else hidden.to(store))
        if b not in inputs.kwargs:
            inputs.extra_args[b] = extra
            inputs.kwargs[b] = keywords
        raise _BlockInputsCaptured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        device = _input_device(model)
        for chunk in input_ids.split(micro_batch):
            try:
                model(chunk.to(device), use_cache=False)
            except _BlockInputsCaptured:
                pass
    finally:
        handle.remove()
    return inputs


def block_forward(block: nn.Module, hidden: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
    """One decoder-block call; returns the output hidden states ``(b, T, d)``."""
    args, kwargs = inputs.call_args(hidden)
    out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out  # older transformers return tuples


def _stored_like(out: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """``out`` kept where ``previous`` was kept (pinned again when that is the CPU of a GPU run)."""
    if out.device == previous.device:
        return out
    out = out.to(previous.device)
    return out.pin_memory() if previous.is_pinned() else out


BlockStep = Callable[[int, nn.Module, Callable[[], None]], None]


@torch.no_grad()
def run_sequential(
    model: nn.Module,
    input_ids: torch.Tensor,
    block_step: BlockStep,
    *,
    micro_batch: int,
    device: torch.device | None = None,
    after_block: Callable[[int, list[torch.Tensor]], None] | None = None,
    desc: str = "blocks",
) -> None:
    """Visit every decoder block in order with the calibration activations flowing through.

    ``block_step(index, block, forward_all)`` may call ``forward_all()`` (runs every micro-batch
    through the block, outputs discarded: the moment for hooks to collect statistics) and
    modify the block. Afterwards the block runs again to make the next block's inputs, which
    ``after_block(index, hidden)`` may inspect. A block stored elsewhere than ``device`` is
    moved there for its turn and back afterwards; the activations then stay where they were
    captured (the CPU for an offloaded model, pinned for fast copies to a GPU) and travel one
    micro-batch at a time.
    """
    store = _input_device(model)  # the CPU for an offloaded model: the activations stay there
    # The modules before the first block (embeddings, rotary tables) run on ``device`` too, so an
    # offloaded run computes what an on-device run does (the CPU's cos / sin can differ in the last bits).
    with outside_blocks_on(model, device):
        inputs = capture_block_inputs(model, input_ids, micro_batch=micro_batch, store=store)
    if device is not None and device.type == "cuda":
        inputs.hidden = [h.pin_memory() if h.device.type == "cpu" else h for h in inputs.hidden]
    for index, block in enumerate(tqdm(decoder_blocks(model), desc=desc, leave=False)):
        home = next(block.parameters()).device
        if device is not None and home != device:
            block.to(device)
        target = next(block.parameters()).device

        def forward_all(block=block, target=target):
            for hidden in inputs.hidden:
                block_forward(block, hidden.to(target), inputs)

        block_step(index, block, forward_all)
        for j, hidden in enumerate(inputs.hidden):
            inputs.hidden[j] = _stored_like(block_forward(block, hidden.to(target), inputs), hidden)
        if after_block is not None:
            after_block(index, inputs.hidden)
        if home != target:
            block.to(home)
