"""Reconstruction of a pruned decoder block that keeps its mask (``--reconstruct``).

As in "A Free Lunch in LLM Compression: Revisiting Retraining after Pruning" (arXiv 2510.14444),
the attention and the MLP of a block are fitted separately, each so that the pruned sub-module
reproduces the *dense* sub-module's output on the dense sub-module's own calibration inputs:

    min_{W' : W'_mask = 0}  sum_b || f(X_b; W') - f(X_b; W) ||^2 / numel

Inputs and outputs are captured with hooks while the dense block runs (the same forward that
collects the pruner's statistics, :class:`SublayerCapture`); after pruning, :func:`fit_sublayer`
runs AdamW on fp32 master copies of every parameter of the sub-module (linear weights, their
biases, and norms inside it such as Qwen3's ``q_norm``), computing in the model dtype. The
gradients of pruned weights are zeroed and the mask re-applied after every step, so each pruned
weight is exactly 0 throughout and the final zeros are the mask bit for bit.

Step size. AdamW moves a weight by about its learning rate per step whatever the weight's scale,
so one absolute rate cannot suit every model: 5e-3 fits SmolLM2 (linear-weight RMS about 0.2) but
drives Qwen2.5-0.5B (RMS about 0.016) into divergence. Each tensor therefore gets
``rel_lr x`` its RMS before pruning (recorded by :class:`SublayerCapture` while the dense block
runs; the survivors' RMS would grow with the sparsity). A fit that leaves the loss on a held-out
calibration sequence (the one after those fitted) higher than it found it is undone
(``FitResult.reverted``): 20 steps can fit the calibration text and still move away from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from . import RecoveryOptions


def _chain_modules(block: nn.Module, chain: tuple[str, ...]) -> list[nn.Module]:
    return [getattr(block, name) for name in chain]


@dataclass
class CapturedCalls:
    """One sub-module's calibration calls: per micro-batch, its input ``(b, T, d)`` (or
    ``(b T, d)``), the other call arguments, the dense output (same shape as the input), and
    ``b``, the sequences of the call."""

    inputs: list[torch.Tensor] = field(default_factory=list)
    args: list[tuple] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)
    targets: list[torch.Tensor] = field(default_factory=list)
    sequences: list[int] = field(default_factory=list)

    def first(self, n: int | None) -> CapturedCalls:
        """The first ``n`` calls (``None``: all)."""
        parts = (self.inputs, self.args, self.kwargs, self.targets, self.sequences)
        return CapturedCalls(*(part[:n] for part in parts))


def _one_sequence(x, s: int, b: int):
    """Sequence ``s`` of a call argument of ``b`` sequences: a tensor batched over dim 0 (``(b, ...)``,
    or ``(b T, d)`` rows as the MLP of some families sees them) is sliced, anything else shared."""
    if isinstance(x, (tuple, list)):
        return type(x)(_one_sequence(item, s, b) for item in x)
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or b == 1:
        return x  # masks and rotary tables built for one sequence broadcast over the batch
    if x.shape[0] == b:
        return x[s : s + 1]
    if x.shape[0] % b == 0 and x.ndim == 2:
        rows = x.shape[0] // b
        return x[s * rows : (s + 1) * rows]
    return x


def per_sequence(calls: CapturedCalls) -> CapturedCalls:
    """The same calls, one sequence each (views, no copies), so an AdamW step can take fewer
    sequences than a calibration micro-batch holds."""
    out = CapturedCalls()
    parts = (calls.inputs, calls.args, calls.kwargs, calls.targets, calls.sequences)
    for x, args, kwargs, y, b in zip(*parts, strict=True):
        for s in range(b):
            out.inputs.append(_one_sequence(x, s, b))
            out.args.append(_one_sequence(args, s, b))
            out.kwargs.append({k: _one_sequence(v, s, b) for k, v in kwargs.items()})
            out.targets.append(_one_sequence(y, s, b))
            out.sequences.append(1)
    return out


def step_calls(calls: CapturedCalls, batch: int, nsamples: int | None = None) -> tuple[CapturedCalls, int]:
    """The calls a fit of ``batch`` sequences per AdamW step on the first ``nsamples`` sequences
    (``None``: all) iterates, and how many of them make one step. Whole micro-batches when they
    divide both (one forward per micro-batch); single sequences otherwise."""
    sizes = set(calls.sequences)
    if len(sizes) == 1 and batch % (size := sizes.pop()) == 0 and (nsamples is None or nsamples % size == 0):
        return calls.first(None if nsamples is None else nsamples // size), batch // size
    return per_sequence(calls).first(nsamples), batch


def held_out_call(calls: CapturedCalls, nsamples: int | None) -> CapturedCalls | None:
    """The captured sequence right after the first ``nsamples`` (a call of one sequence), which a
    fit on those does not see; ``None`` when the fit takes every captured sequence."""
    if nsamples is None or sum(calls.sequences) <= nsamples:
        return None
    single = per_sequence(calls)
    held = CapturedCalls()
    held.inputs, held.args, held.kwargs = [single.inputs[nsamples]], [single.args[nsamples]], [single.kwargs[nsamples]]
    held.targets, held.sequences = [single.targets[nsamples]], [1]
    return held


class SublayerCapture:
    """Context manager: while the dense block runs, record each sub-module's calls.

    ``chains``: ``{name: attribute chain}`` from :func:`lib.arch.block_sublayers`. The hidden
    states and outputs are kept on ``store`` (the CPU for an offloaded model, like the engine's
    activations; default: where computed); the other arguments (masks, rotary tables) are shared
    references. ``max_calls``: keep only the first calls (calibration micro-batches) of each
    sub-module, the ones the fit will use (``None``: all). Hooks are removed on exit.
    """

    def __init__(
        self,
        block: nn.Module,
        chains: dict[str, tuple[str, ...]],
        store: torch.device | None = None,
        max_calls: int | None = None,
    ):
        self.block, self.chains, self.store, self.max_calls = block, chains, store, max_calls
        self.calls = {name: CapturedCalls() for name in chains}
        self.scales: dict[str, float] = {}  # RMS of each sub-module parameter while dense (set on entry)
        self._handles = []
        self._block_sequences = 0  # sequences of the block call in progress

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()  # the block makes new tensors from these (residual adds), so no copy is needed
        return x if self.store is None else x.to(self.store)

    def __enter__(self) -> SublayerCapture:
        def block_call(module, args, kwargs):
            self._block_sequences = (args[0] if args else kwargs["hidden_states"]).shape[0]

        self.scales = tensor_scales(self.block, self.chains.values())
        self._handles.append(self.block.register_forward_pre_hook(block_call, with_kwargs=True))
        for name, chain in self.chains.items():
            modules = _chain_modules(self.block, chain)
            calls = self.calls[name]

            def before(module, args, kwargs, calls=calls):
                if self._full(calls):
                    return
                kwargs = dict(kwargs)
                hidden = args[0] if args else kwargs.pop("hidden_states")
                calls.inputs.append(self._keep(hidden))
                calls.args.append(tuple(args[1:]))
                calls.kwargs.append(kwargs)
                calls.sequences.append(self._block_sequences)

            def after(module, args, output, calls=calls):
                if len(calls.targets) == len(calls.inputs):  # a call beyond max_calls
                    return
                calls.targets.append(self._keep(output[0] if isinstance(output, tuple) else output))

            self._handles.append(modules[0].register_forward_pre_hook(before, with_kwargs=True))
            self._handles.append(modules[-1].register_forward_hook(after))
        return self

    def _full(self, calls: CapturedCalls) -> bool:
        return self.max_calls is not None and len(calls.inputs) >= self.max_calls

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _run_chain(modules, params, hidden, args, kwargs):
    """The sub-module's forward with its parameters replaced by ``params`` (one dict per module)."""
    out = functional_call(modules[0], params[0], (hidden, *args), kwargs)
    out = out[0] if isinstance(out, tuple) else out
    for module, p in zip(modules[1:], params[1:], strict=True):
        out = functional_call(module, p, (out,))
    return out


@dataclass(frozen=True)
class FitResult:
    """Mean squared error against the dense sub-module before and after fitting (fp32 scalars as
    floats) on the held-out calls (``held_out``) or else the first ``loss_calls`` fitted calls,
    and the AdamW steps taken. ``loss_fitted``: the fitted weights' loss; when it exceeded
    ``loss_before`` the fit was undone (``reverted``) and ``loss_after`` is ``loss_before``."""

    loss_before: float
    loss_after: float
    steps: int
    loss_calls: int
    loss_fitted: float
    reverted: bool
    held_out: bool = False

    def as_dict(self) -> dict:
        return {
            "loss_before": self.loss_before,
            "loss_after": self.loss_after,
            "loss_fitted": self.loss_fitted,
            "reverted": self.reverted,
            "held_out": self.held_out,
            "steps": self.steps,
            "loss_calls": self.loss_calls,
        }


def tensor_scales(block: nn.Module, chains) -> dict[str, float]:
    """RMS (fp32, over every entry) of each parameter of the sub-modules ``chains`` (attribute
    chains) of ``block``, keyed ``"<attribute>.<parameter>"`` like ``"mlp.up_proj.weight"``."""
    return {
        f"{part}.{name}": float(p.detach().float().square().mean().sqrt()) if p.numel() else 0.0
        for chain in chains
        for part in chain
        for name, p in getattr(block, part).named_parameters()
    }


def step_size_groups(tensors: list[torch.Tensor], scales: list[float], rel_lr: float, lr: float | None) -> list[dict]:
    """AdamW parameter groups, one per tensor: learning rate ``lr`` when given (absolute, the same
    for all), else ``rel_lr x`` the tensor's scale (its RMS before pruning, same order)."""
    rates = [lr if lr is not None else rel_lr * scale for scale in scales]
    return [{"params": [t], "lr": rate} for t, rate in zip(tensors, rates, strict=True)]


def _calibration_loss(modules, params, calls: CapturedCalls, device, limit: int) -> float:
    total, count = 0.0, 0
    kept = zip(calls.inputs[:limit], calls.args[:limit], calls.kwargs[:limit], calls.targets[:limit], strict=True)
    for x, args, kwargs, y in kept:
        out = _run_chain(modules, params, x.to(device), args, kwargs)
        total += float((out.float() - y.to(device).float()).square().sum())
        count += y.numel()
    return total / max(count, 1)


def fit_sublayer(
    block: nn.Module,
    chain: tuple[str, ...],
    calls: CapturedCalls,
    *,
    epochs: int,
    rel_lr: float = RecoveryOptions.rel_lr,
    lr: float | None = None,
    scales: dict[str, float] | None = None,
    check: CapturedCalls | None = None,
    accumulate: int = 1,
    weight_decay: float = 0.0,
    loss_calls: int | None = 1,
    desc: str = "reconstruct",
) -> FitResult:
    """Fit the parameters of the sub-module ``chain`` of ``block`` in place (AdamW, fp32 masters,
    compute in the parameters' dtype) to the captured dense ``calls``; every weight of an
    ``nn.Linear`` inside that is exactly 0 stays exactly 0. Step size: ``rel_lr`` times each
    tensor's scale (``scales``, from :func:`tensor_scales` of the dense block; ``None``: the RMS of
    the tensors as given), or ``lr`` for every tensor when given (:func:`step_size_groups`). The fitted
    weights replace the block's only when their loss is not above ``loss_before``. ``accumulate``: calibration
    micro-batches per step; ``epochs``: passes over ``calls``. Loss: MSE against the dense output.
    ``check``: held-out calls the before / after loss is measured on (all of them); without it, the
    first ``loss_calls`` fitted micro-batches (``None``: all)."""
    modules = _chain_modules(block, chain)
    live = [dict(m.named_parameters()) for m in modules]
    device = next(p for ps in live for p in ps.values()).device
    masters = [{n: p.detach().float().clone().requires_grad_(True) for n, p in ps.items()} for ps in live]
    keep = {}  # id(master) -> fp32 keep mask (0. = pruned) of every linear weight
    for module, ms in zip(modules, masters, strict=True):
        for name, sub in module.named_modules():
            if isinstance(sub, nn.Linear):
                key = f"{name}.weight" if name else "weight"
                keep[id(ms[key])] = (ms[key].detach() != 0).float()
    flat = [p for ms in masters for p in ms.values()]

    def compute_params():
        return [{n: m.to(live_p[n].dtype) for n, m in ms.items()} for ms, live_p in zip(masters, live, strict=True)]

    n = len(calls.inputs)
    if check is not None and check.inputs:
        measured, loss_calls = check, len(check.inputs)
    else:
        measured, loss_calls = calls, n if loss_calls is None else min(loss_calls, n)
    with torch.no_grad():
        before = _calibration_loss(modules, [dict(ps) for ps in live], measured, device, loss_calls)
    scales = scales if scales is not None else tensor_scales(block, [chain])
    names = [f"{part}.{name}" for part, ms in zip(chain, masters, strict=True) for name in ms]
    groups = step_size_groups(flat, [scales[name] for name in names], rel_lr, lr)
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)  # 4x the default on a CPU
    steps = 0
    with torch.enable_grad(), tqdm(total=epochs * n, desc=desc, leave=False) as bar:
        for _ in range(epochs):
            for start in range(0, n, accumulate):
                chunk = range(start, min(start + accumulate, n))
                weight = sum(calls.targets[i].numel() for i in chunk)
                params = compute_params()
                for i in chunk:
                    out = _run_chain(modules, params, calls.inputs[i].to(device), calls.args[i], calls.kwargs[i])
                    target = calls.targets[i].to(device)
                    loss = (out.float() - target.float()).square().sum() / weight
                    loss.backward(retain_graph=i != chunk[-1])  # the casts of the masters are shared
                    bar.update()
                # Multiplying by the keep mask is 20x faster than masked_fill_ on a CPU.
                for p in flat:
                    if id(p) in keep and p.grad is not None:
                        p.grad.mul_(keep[id(p)])  # pruned weights get no update
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for p in flat:
                        if id(p) in keep:
                            p.mul_(keep[id(p)])  # and are 0 after every step
                steps += 1
    with torch.no_grad():
        fitted = []
        for ms, live_p in zip(masters, live, strict=True):
            fitted.append({})
            for name, master in ms.items():
                new = master.to(live_p[name].dtype)
                if id(master) in keep:
                    pruned = keep[id(master)] == 0
                    # a surviving weight rounded to 0 would look pruned: keep its previous value there
                    new = torch.where((new == 0) & ~pruned, live_p[name], new)
                    new = new.masked_fill(pruned, 0.0)  # +0 exactly, whatever the steps left (-0, NaN)
                fitted[-1][name] = new
        loss_fitted = _calibration_loss(modules, fitted, measured, device, loss_calls)
        reverted = not loss_fitted <= before  # NaN counts as worse
        if not reverted:
            for new_p, live_p in zip(fitted, live, strict=True):
                for name, new in new_p.items():
                    live_p[name].copy_(new)
    after = before if reverted else loss_fitted
    return FitResult(before, after, steps, loss_calls, loss_fitted, reverted, held_out=measured is check)


def reconstruct_block(
    block: nn.Module,
    capture: SublayerCapture,
    *,
    rel_lr: float,
    epochs: int,
    lr: float | None = None,
    batch: int = 1,
    nsamples: int | None = None,
    desc: str = "reconstruct",
) -> dict[str, FitResult]:
    """Fit each captured sub-module of ``block`` (attention first, then the MLP) to its dense
    outputs with :func:`fit_sublayer`, ``batch`` sequences per AdamW step on the first
    ``nsamples`` captured sequences (``None``: all), whatever the calibration micro-batch;
    frees each one's captured activations when done; steps follow ``capture.scales`` (the dense
    tensors' RMS), and the sequence after the fitted ones, when captured, checks each fit.
    Returns ``{sub-module: FitResult}``."""
    results = {}
    for name, chain in capture.chains.items():
        calls, accumulate = step_calls(capture.calls[name], batch, nsamples)
        results[name] = fit_sublayer(
            block,
            chain,
            calls,
            rel_lr=rel_lr,
            lr=lr,
            scales=capture.scales,
            check=held_out_call(capture.calls[name], nsamples),
            epochs=epochs,
            accumulate=accumulate,
            desc=f"{desc} {name}",
        )
        capture.calls[name] = CapturedCalls()
    return results
