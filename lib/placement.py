"""Where a model's weights live during a run, and how a forward still reaches the compute device.

Three placements (``--offload`` / ``--device_map`` in ``main.py``):

- ``device``: every weight on the compute device (the default; fastest when it fits).
- ``offload``: the weights stay in CPU memory; the pruning engine moves one decoder block at a
  time to the device (``lib.sequential``) and evaluation does the same through
  :func:`blocks_on_demand`. The device then holds one block, its calibration micro-batch and
  the small modules around the blocks, so a model larger than the GPU can be pruned on it.
- ``auto``: accelerate's ``device_map="auto"`` spreads the blocks over the visible GPUs; each
  block is pruned where it lives and forwards cross devices through accelerate's hooks.

Also the predicted peak memory of a pruning run (:func:`predicted_peak_memory`), printed
before any heavy work starts; INSTALL.md states the same formula.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
from accelerate.utils import send_to_device
from torch import nn

from .arch import block_sublayers, decoder_blocks, prunable_linears
from .recovery import fitted_micro_batches


def move_to(obj, device: torch.device):
    """``obj`` with every tensor inside it (nested tuples, lists, dicts) moved to ``device``;
    asynchronous only towards a GPU (a copy to the CPU must be complete when it is read)."""
    return send_to_device(obj, device, non_blocking=device.type == "cuda")


def _outside_blocks(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(module, attribute name, kind)`` of every parameter and buffer not inside a decoder block."""
    inside = {id(m) for block in decoder_blocks(model) for m in block.modules()}
    found, seen = [], set()
    for module in model.modules():
        if id(module) in inside:
            continue
        for kind, table in (("param", module._parameters), ("buffer", module._buffers)):
            for name, tensor in table.items():
                if tensor is not None and id(tensor) not in seen:  # tied weights: move once
                    seen.add(id(tensor))
                    found.append((module, name, kind))
    return found


def _move_entries(entries, device: torch.device) -> None:
    for module, name, kind in entries:
        tensor = getattr(module, name)
        if kind == "param":
            tensor.data = tensor.data.to(device)
        else:
            module._buffers[name] = tensor.to(device)


@contextlib.contextmanager
def outside_blocks_on(model: nn.Module, device: torch.device | None):
    """For the duration, every parameter and buffer outside the decoder blocks (embeddings, final
    norm, ``lm_head``, rotary tables) sits on ``device``; afterwards each is back where it was.
    No-op for ``device=None``."""
    outside = [] if device is None else _outside_blocks(model)
    homes = [getattr(m, n).device for m, n, _ in outside]
    _move_entries(outside, device)
    try:
        yield model
    finally:
        for entry, home in zip(outside, homes, strict=True):
            _move_entries([entry], home)


@contextlib.contextmanager
def blocks_on_demand(model: nn.Module, device: torch.device, *, force: bool = False):
    """Run forwards of a CPU-resident ``model`` on ``device`` holding one decoder block there at a time.

    For the duration, the modules outside the blocks (embeddings, final norm, ``lm_head``,
    rotary tables) move to ``device``; each block moves there right before its own call (with
    its tensor arguments) and back to where it was right after. The result of every forward is
    the same as with the whole model on ``device``. No-op when the blocks already sit on ``device``,
    unless ``force`` (tests: the hooks then run even where nothing has to move).
    """
    blocks = decoder_blocks(model)
    homes = [next(block.parameters()).device for block in blocks]
    if all(home == device for home in homes) and not force:
        yield model
        return
    handles = []

    def before(block, args, kwargs):
        block.to(device)
        return move_to(args, device), move_to(kwargs, device)

    def after(block, _args, _output, home):
        block.to(home)  # returns None: a forward hook's return value would replace the output

    for block, home in zip(blocks, homes, strict=True):
        handles.append(block.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(block.register_forward_hook(functools.partial(after, home=home)))
    try:
        with outside_blocks_on(model, device):
            yield model
    finally:
        for handle in handles:
            handle.remove()
        for block, home in zip(blocks, homes, strict=True):
            block.to(home)


def offloaded_parameters(model: nn.Module) -> list[str]:
    """Names of parameters accelerate left on the ``meta`` device (their data lives elsewhere)."""
    return [name for name, p in model.named_parameters() if p.device.type == "meta"]


CUDA_WORKSPACE = 64 * 2**20  # cuBLAS / cuBLASLt workspaces (32 MiB per handle on Hopper) and allocator slack


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak bytes of a pruning run, by place. ``device`` is the compute device,
    ``host`` the CPU memory (equal to ``device`` when the device is the CPU)."""

    weights: int  # model weights held on the device
    block: int  # the largest decoder block's weights (moved there one at a time when offloaded)
    activations: int  # calibration activations entering one block (where they are kept)
    micro_batch: int  # one micro-batch through a block: the block's transient activations
    statistics: int  # the largest block's pruner statistics (fp32)
    workspace: int  # the GPU libraries' workspaces (0 on a CPU)
    host: int  # CPU memory: weights kept there, plus the calibration activations when offloaded
    device: int  # the compute device's predicted peak
    captured: int = 0  # --reconstruct: dense sub-module inputs and outputs (kept with the activations)
    reconstruction: int = 0  # --reconstruct: AdamW state of the largest sub-module and one step's tensors

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def predicted_peak_memory(
    model: nn.Module,
    *,
    nsamples: int,
    seqlen: int,
    micro_batch: int,
    dtype: torch.dtype,
    needs: frozenset[str],
    placement: str,
    device: torch.device,
    reconstruct_batch: int | None = None,
    reconstruct_nsamples: int | None = None,
) -> MemoryEstimate:
    """The peak memory of pruning ``model`` block by block (bytes), from its shapes (``b`` bytes
    per value of ``dtype``, ``m = micro_batch``, ``T = seqlen``):

    - activations ``= nsamples x T x d x b``: the hidden states entering the current block (each
      micro-batch's output replaces its input);
    - micro-batch working set ``= m T (8 d + 3 d_ff) b``: its input and output copies, the
      attention's and the MLP's intermediate tensors; plus ``m h T^2 (2 b + 4)`` for eager
      attention (scores and their fp32 softmax; SDPA's fused kernels never build them);
    - statistics: per linear ``4 C_in`` bytes (column norms) or ``4 C_in^2`` (Hessian, SparseGPT
      and GPTQ, plus ``3 x 4 max(C_in)^2`` of sweep workspace and the ``4 m T max(C_in)`` fp32
      copy of the input the Hessian is built from), summed over the largest block;
    - weights: the whole model on the device (``device``), or one block (``offload``: the rest
      stays on the CPU, and so do the activations; the modules around the blocks visit the
      device only to embed the calibration set, one micro-batch at a time);
    - workspace: 64 MiB on a GPU (cuBLAS handles of the forward and backward threads, allocator
      rounding).
    - reconstruction (``--reconstruct``; ``reconstruct_batch`` not ``None``): the captured dense
      inputs and outputs of the attention and the MLP, ``4 x n_fit x T x d x b`` (``n_fit``:
      ``reconstruct_nsamples`` rounded up to whole micro-batches, default ``nsamples``; kept where the
      activations are), and on the device the fitting of the largest sub-module (``P``
      parameters): ``P (16 + 4 + b)`` bytes (fp32 master, gradient and AdamW's two moments, the
      fp32 keep mask, the compute-dtype copy) plus one step's autograd tensors, taken as another micro-batch
      working set and the fp32 error ``4 m T d`` (the step runs one calibration micro-batch at a time).
    Without calibration statistics (magnitude pruning) there is no calibration forward, unless
    reconstructing.

    An estimate, not a bound: the workspace term and the present micro-batch and statistics terms
    were set after the H200 runs INSTALL.md lists (``results/h200/``: measured 0.84-1.02 times this
    prediction), so those runs do not validate it. Measured on a CPU (``results/memory/``, peak RSS
    growth while pruning SmolLM2 in fp32), the working set ``A + M + S`` was 0.75-1.62 times the
    predicted one: SparseGPT below it (layers reading one input share a Hessian), Wanda above it
    by 22-32 MiB (per-layer transients such as the pruning scores, which the formula leaves out).
    """
    width = torch.finfo(dtype).bits // 8
    config = model.config
    d = config.hidden_size
    heads = config.num_attention_heads
    blocks = decoder_blocks(model)
    block_bytes = [sum(p.numel() for p in b.parameters()) * width for b in blocks]
    total = sum(p.numel() for p in model.parameters()) * width
    outside = total - sum(block_bytes)
    stats = 0
    for block in blocks:
        inputs = [m.in_features for m in block.modules() if isinstance(m, nn.Linear)]
        per = 0
        if "hessian" in needs:
            # Hessians of every linear (an upper bound: layers reading one input share it), the
            # sweep's working copies of the largest (lib.obs: a clone, the factor, the inverse)
            # and the fp32 copy of one micro-batch's widest input
            per += sum(4 * c * c for c in inputs) + 3 * 4 * max(inputs) ** 2
            per += 4 * micro_batch * seqlen * max(inputs)
        per += sum(4 * c for c in inputs) if "col_sq_norm" in needs else 0
        per += sum(4 * c for c in inputs) if "col_sum" in needs else 0
        stats = max(stats, per)
    activations = micro = 0
    if needs or reconstruct_batch is not None:
        activations = nsamples * seqlen * d * width
        micro = _block_activation_bytes(config, micro_batch * seqlen, width)
        if getattr(config, "_attn_implementation", "eager") == "eager":
            micro += micro_batch * heads * seqlen**2 * (2 * width + 4)
    captured = fitting = 0
    if reconstruct_batch is not None:
        fitted = fitted_micro_batches(reconstruct_nsamples, micro_batch)
        kept = nsamples if fitted is None else fitted * micro_batch
        captured = 4 * min(kept, nsamples) * seqlen * d * width  # whole micro-batches are captured
        chains = block_sublayers(model).values()
        largest_sublayer = max(
            sum(p.numel() for name in chain for p in getattr(b, name).parameters()) for b in blocks for chain in chains
        )
        fitting = largest_sublayer * (16 + 4 + width) + micro + 4 * micro_batch * seqlen * d
    workspace = CUDA_WORKSPACE if device.type == "cuda" else 0
    largest = max(block_bytes)
    if placement == "offload" and device.type != "cpu":
        embedding = outside + 2 * micro_batch * seqlen * d * width
        on_device = max(embedding, largest + micro + stats + fitting) + workspace
        host = total + activations + captured
    else:
        on_device = total + activations + captured + micro + stats + fitting + workspace
        host = on_device if device.type == "cpu" else 0
    return MemoryEstimate(
        total, largest, activations, micro, stats, workspace, host, on_device, captured=captured, reconstruction=fitting
    )


def format_estimate(estimate: MemoryEstimate, device: torch.device) -> str:
    """One line for the log: the predicted peaks and their largest parts, in GiB."""
    gib = 2**30
    shown = ("weights", "block", "activations", "micro_batch", "statistics", "workspace")
    shown += ("captured", "reconstruction") if estimate.reconstruction else ()
    parts = ", ".join(f"{k} {getattr(estimate, k) / gib:.2f}" for k in shown)
    host = f"; CPU {estimate.host / gib:.2f} GiB" if device.type != "cpu" else ""
    return f"predicted peak: {device} {estimate.device / gib:.2f} GiB{host} (GiB: {parts})"


CPU_RUNTIME = 261 * 2**20  # process RSS after importing torch, transformers and lib/ (measured, 2-core CPU)


def _block_activation_bytes(config, tokens: int, width: int) -> int:
    """One decoder block's transient activations for ``tokens`` positions (as the micro-batch term)."""
    d = config.hidden_size
    d_ff = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None) or 4 * d
    return tokens * (8 * d + 3 * d_ff) * width


def predicted_gradient_pass_memory(
    model: nn.Module, *, seqlen: int, dtype: torch.dtype, reuses_model: bool, checkpointing: bool
) -> int:
    """Peak bytes of ALP's gradient pass (one sample of ``seqlen`` tokens per backward): the
    weights in the pass's ``dtype`` (a second copy beside the run's model unless ``reuses_model``),
    one fp32 accumulator per decoder-block linear weight, the largest linear's gradient (its
    ``dtype`` plus an fp32 copy), the logits of one sample, and the activations autograd keeps:
    every block's (``checkpointing``: every block's input plus one block's)."""
    width = torch.finfo(dtype).bits // 8
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    linears = [m.weight.numel() for block in decoder_blocks(model) for m in block.modules() if isinstance(m, nn.Linear)]
    weights = params * width * (1 if reuses_model else 2)
    blocks = len(decoder_blocks(model))
    one_block = _block_activation_bytes(config, seqlen, width)
    kept = blocks * seqlen * config.hidden_size * width + one_block if checkpointing else blocks * one_block
    logits = seqlen * config.vocab_size * (width + 4)
    return weights + 4 * sum(linears) + (width + 4) * max(linears) + kept + logits


def predicted_evaluation_memory(
    model: nn.Module,
    *,
    seqlen: int,
    batch_size: int,
    dtype: torch.dtype,
    offloaded: bool = False,
    attention_scores: bool = False,
) -> int:
    """Peak bytes of a perplexity forward (:func:`lib.eval.perplexity`): the weights on the device
    (``offloaded``: the modules around the blocks and the largest block), the logits ``b x T x V``
    of one batch of windows, one block's activations and the fp32 cross-entropy chunk. With a
    large vocabulary the logits weigh (Qwen2.5: 151,936 x 2048 x 4 B = 1.2 GB).
    ``attention_scores``: the attention builds its ``b h T^2`` scores and their softmax (eager
    attention; measured on a CPU with SDPA too: one 2048-token SmolLM2 forward grew the peak RSS
    by 0.9 GiB, 0.4 of it logits)."""
    width = torch.finfo(dtype).bits // 8
    config = model.config
    weights = sum(p.numel() for p in model.parameters()) * width
    if offloaded:
        block_bytes = [sum(p.numel() for p in b.parameters()) * width for b in decoder_blocks(model)]
        weights = weights - sum(block_bytes) + max(block_bytes)
    logits = batch_size * seqlen * config.vocab_size * width
    scores = batch_size * config.num_attention_heads * seqlen**2 * (2 * width + 4) if attention_scores else 0
    block = _block_activation_bytes(config, batch_size * seqlen, width) + scores
    return weights + logits + block + 64 * config.vocab_size * 8


def predicted_search_backup(model: nn.Module, *, dtype: torch.dtype) -> int:
    """Bytes of the dense copy an ``auto`` search keeps on the CPU between its candidates
    (:func:`lib.search.search_parameter`): every prunable linear weight of the decoder blocks in
    the model's ``dtype``."""
    width = torch.finfo(dtype).bits // 8
    return sum(lin.weight.numel() for block in prunable_linears(model) for lin in block.values()) * width


@dataclass(frozen=True)
class RunMemoryEstimate:
    """Predicted peak bytes of each phase of one ``main.py`` run on the compute device (on a CPU,
    plus :data:`CPU_RUNTIME`); ``gradient_pass`` is 0 when the run computes no gradients;
    ``search`` (an ``auto`` hyper-parameter on a CPU) is pruning plus the search's dense backup,
    else 0."""

    pruning: int
    gradient_pass: int
    evaluation: int
    runtime: int
    search: int = 0

    @property
    def peak(self) -> int:
        return max(self.pruning, self.search, self.gradient_pass, self.evaluation) + self.runtime

    def as_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "peak": self.peak}


def format_run_estimate(run: RunMemoryEstimate, device: torch.device) -> str:
    """One line: the run's predicted peak and each phase's, in GiB."""
    gib = 2**30
    phases = f"pruning {run.pruning / gib:.2f}, evaluation {run.evaluation / gib:.2f}"
    if run.gradient_pass:
        phases += f", gradient pass {run.gradient_pass / gib:.2f}"
    if run.search:
        phases += f", auto search {run.search / gib:.2f}"
    runtime = f", runtime {run.runtime / gib:.2f}" if run.runtime else ""
    return f"predicted run peak: {device} {run.peak / gib:.2f} GiB (GiB: {phases}{runtime})"
