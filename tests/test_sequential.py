"""The sequential engine reproduces a plain forward, for every family and micro-batch size."""

import pytest
import torch

from lib.arch import block_linears, decoder_blocks
from lib.sequential import capture_block_inputs, run_sequential
from tests.conftest import tiny_model


@pytest.mark.parametrize("micro_batch", [1, 2, 5])
def test_engine_matches_full_forward(family, micro_batch):
    model = tiny_model(family)
    ids = torch.randint(3, 128, (5, 16))
    with torch.no_grad():
        reference = model(ids, output_hidden_states=True).hidden_states  # embeddings, block 0 out, ...
    outputs = {}

    def record(index, hidden):
        outputs[index] = torch.cat(hidden)

    visited = []
    run_sequential(model, ids, lambda i, block, fwd: visited.append(i), micro_batch=micro_batch, after_block=record)
    num_blocks = len(decoder_blocks(model))
    assert visited == list(range(num_blocks))
    # hidden_states[i + 1] is block i's output for all but the last block (the last is after the final norm)
    for index in range(num_blocks - 1):
        torch.testing.assert_close(outputs[index], reference[index + 1], rtol=1e-5, atol=1e-5)


def test_capture_keeps_kwargs_per_batch_size():
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (5, 8))
    inputs = capture_block_inputs(model, ids, micro_batch=2)
    assert [h.shape[0] for h in inputs.hidden] == [2, 2, 1]
    assert set(inputs.kwargs) == {1, 2}
    assert "position_embeddings" in inputs.kwargs[2]


def test_forward_all_feeds_hooks_every_sample():
    model = tiny_model("qwen2")
    ids = torch.randint(3, 128, (3, 8))
    seen = []

    def step(index, block, forward_all):
        if index == 1:
            lin = next(iter(block_linears(block).values()))
            handle = lin.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
            forward_all()
            handle.remove()

    run_sequential(model, ids, step, micro_batch=2)
    assert sum(seen) == 3


def test_block_sees_pruned_predecessor():
    """Zeroing block 0 inside the step must change what block 1 receives."""
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (2, 8))
    received = {}

    def step(index, block, forward_all):
        if index == 0:
            for lin in block_linears(block).values():
                lin.weight.data.zero_()

    def record(index, hidden):
        received[index] = torch.cat(hidden)

    run_sequential(model, ids, step, micro_batch=2, after_block=record)
    embeds = model.get_input_embeddings()(ids)
    # a block with all linears zeroed is the identity on the residual stream
    torch.testing.assert_close(received[0], embeds)
