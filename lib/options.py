"""Typed options of one run, built once from the parsed command-line flags.

This is the only module of ``lib/`` that reads the argparse namespace: :func:`build_options`
validates the flags (every check that needs no model or data, raising ``ValueError`` with the
fix) and returns a :class:`RunOptions`. The stages (:mod:`lib.pipeline` and below) take the
option groups they need, never ``args``.

Adding a flag: declare it in ``main.build_parser`` (defaults live only there), add a field to
the option group it belongs to below, fill it in :func:`build_options` (with its check, if
any), and read the field in the stage that uses it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .data import EVAL_SETS, resolve_data_dir, resolve_tasks_dir
from .masks import SparsityPattern, check_nm_target, parse_sparsity_type
from .models import ModelSource, resolve_model_source
from .prune import split_method, statistics_needed
from .pruners import PRUNERS, PrunerOptions
from .quant import QuantConfig
from .recovery import RecoveryOptions
from .searched.options import SEARCHED_ALLOCATIONS, SearchedOptions, searched_options
from .utils import resolve_device, resolve_dtype
from .zero_shot import ALL_TASKS, LOCAL_TASKS

# allocation -> the AllocationOptions field holding the hyper-parameter that ``auto`` tunes
TUNED_FIELD = {"alp": "alpha", "dlp": "alpha", "owl": "owl_lambda", "ramp": "beta", "alphapruning": "epsilon"}


@dataclass(frozen=True)
class ModelOptions:
    """Which model, where it runs and in which dtype."""

    source: ModelSource
    device: torch.device
    dtype: torch.dtype
    placement: str = "device"  # "device": all on --device; "offload": one block at a time; "auto": accelerate


@dataclass(frozen=True)
class CalibrationOptions:
    """The pruner's calibration sequences (``nsamples x seqlen`` tokens of ``dataset``)."""

    dataset: str = "c4"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    micro_batch: int = 4  # sequences per block forward (memory vs speed; results do not depend on it)


@dataclass(frozen=True)
class GradientOptions:
    """ALP Stage A: the gradient pass and its cache (see ``save_gradient.py``)."""

    nsamples: int = 10
    seqlen: int = 64
    grad_type: str = "l2_hundred_total"
    loss: str = "last_token"
    dtype: str = "auto"  # model dtype of the backward pass; auto: fp32 on CPU, half on GPU
    checkpointing: bool = False
    cache_path: str | None = None  # None: one file per model and setting under cache_root()
    seed: int = 0
    dataset: str = "c4"
    save_full: bool = False


@dataclass(frozen=True)
class SearchOptions:
    """``auto`` hyper-parameters: candidates scored by held-out calibration loss."""

    alpha_max: float = 0.15
    beta_max: float = 0.02
    candidates: int = 5
    nsamples: int = 16
    seqlen: int = 512
    windows: int = 8


@dataclass(frozen=True)
class AllocationOptions:
    """How the target sparsity is spread over the decoder blocks."""

    name: str = "uniform"  # uniform, alp, owl, dlp, alphapruning, ramp; dp, evo (measured, lib.searched)
    alpha: float | str = 0.15  # ALP / DLP spread, or "auto"
    owl_lambda: float | str = 0.08
    owl_m: float = 5.0
    dlp_statistic: str = "mean"  # DLP block score: "mean" (released code) or "median" (paper)
    epsilon: float | str = 0.3
    alphapruning_xmin: str = "peak"  # AlphaPruning fit: "peak" (released alpha_peak) or "median"
    beta: float | str = 0.01
    search: SearchOptions = field(default_factory=SearchOptions)
    searched_options: SearchedOptions = field(default_factory=SearchedOptions)  # dp / evo

    def tuned_value(self) -> float | str | None:
        """The value of the hyper-parameter this allocation tunes (``"auto"`` to search it)."""
        name = TUNED_FIELD.get(self.name)
        return None if name is None else getattr(self, name)

    @property
    def searched(self) -> bool:
        """Whether the allocation's hyper-parameter is searched (``auto``)."""
        return self.tuned_value() == "auto"


@dataclass(frozen=True)
class PruningOptions:
    """What is pruned and how: the method name of the logs, the pruner, target and pattern."""

    method: str = "wanda_alp"  # --prune_method as given (logs, reference file names)
    pruner: str = "wanda"  # dense, magnitude, wanda, sparsegpt, ria
    sparsity: float = 0.7
    pattern: SparsityPattern = field(default_factory=lambda: parse_sparsity_type("unstructured"))
    kernel: PrunerOptions = field(default_factory=PrunerOptions)  # pruner hyper-parameters (+ quantizer)
    recovery: RecoveryOptions = field(default_factory=RecoveryOptions)  # --refine / --reconstruct

    @property
    def quant(self) -> QuantConfig | None:
        return self.kernel.quant

    def mask_only(self) -> PruningOptions:
        """These options without ``--refine``, ``--reconstruct`` and ``--wbits``: what an allocation
        search ranks. It compares the pruner's masks; recovery and quantization run once, on the
        ratios it chooses (recovery inside the search would multiply its cost by the candidates)."""
        return replace(self, kernel=replace(self.kernel, quant=None), recovery=RecoveryOptions())

    @property
    def engine_pruner(self) -> str:
        """The pruner the engine runs: ``dense`` with ``--wbits`` runs magnitude at sparsity 0,
        which prunes nothing and quantizes every layer."""
        return "magnitude" if self.pruner == "dense" else self.pruner

    @property
    def changes_weights(self) -> bool:
        return self.pruner != "dense" or self.quant is not None


@dataclass(frozen=True)
class EvalOptions:
    """Perplexity and zero-shot evaluation."""

    datasets: tuple[str, ...] = ("wikitext2",)
    seqlen: int = 2048
    windows: int | None = None  # first N windows only
    batch_size: int | None = None  # perplexity: windows per forward (1); zero-shot: requests (16)
    skip_dense: bool = False
    zero_shot: bool = False
    tasks: tuple[str, ...] = ()
    tasks_dir: Path | None = None
    num_fewshot: int = 0
    limit: int | None = None


@dataclass(frozen=True)
class OutputOptions:
    """Where results go; nothing existing is replaced unless ``overwrite``."""

    log_json: str | None = None  # None: a new file under log_dir
    log_dir: str = "logs"
    save_model: str | None = None
    save_log: str | None = None
    plot: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class RunOptions:
    """Everything one ``main.py`` run needs, grouped by stage."""

    model: ModelOptions
    pruning: PruningOptions
    allocation: AllocationOptions
    calibration: CalibrationOptions
    gradients: GradientOptions
    eval: EvalOptions
    outputs: OutputOptions
    data_dir: Path | None = None

    def as_dict(self) -> dict:
        """JSON-ready copy (paths, dtypes and devices as strings) for the run log."""
        return _jsonable(asdict(self))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj).replace("torch.", "")


def quant_config(args) -> QuantConfig | None:
    """The quantization settings of the flags, ``None`` for ``--wbits 16``."""
    if args.wbits >= 16:
        return None
    return QuantConfig(
        wbits=args.wbits,
        groupsize=args.groupsize,
        sym=args.sym,
        act_order=args.act_order,
        static_groups=args.static_groups,
        method=args.quantizer,
    )


def gradient_options(args) -> GradientOptions:
    """Stage-A options from the flags of ``save_gradient.add_gradient_args`` (+ ``--seed``, ``--dataset``)."""
    return GradientOptions(
        nsamples=args.grad_nsamples,
        seqlen=args.grad_seqlen,
        grad_type=args.grad_type,
        loss=args.grad_loss,
        dtype=args.grad_dtype,
        checkpointing=args.grad_checkpointing,
        cache_path=args.gradient_path,
        seed=args.seed,
        dataset=args.dataset,
        save_full=getattr(args, "save_full", False),
    )


def _check_pattern(args, pattern: SparsityPattern, pruner: str, allocation: str) -> None:
    if not (pattern.is_nm and pruner != "dense"):
        return
    check_nm_target(pattern, args.sparsity_ratio, blocksize=args.blocksize if pruner == "sparsegpt" else None)
    if allocation != "uniform":
        raise ValueError(
            f"{allocation} allocation with N:M: every block is exactly {pattern}, so per-block "
            f"ratios cannot apply; use --prune_method {pruner} with the uniform allocation"
        )


def _check_quant(args, quant: QuantConfig | None, pruner: str, pattern: SparsityPattern) -> None:
    if quant is None and (args.gptq or args.act_order or args.static_groups or args.quantizer != "gptq"):
        raise ValueError("--gptq / --quantizer / --act-order / --static-groups quantize: add --wbits 2..8")
    if quant is None:
        return
    if args.groupsize == 0 or args.groupsize < -1:
        raise ValueError(f"--groupsize {args.groupsize}: use -1 (one group per row) or a positive column count")
    if quant.method == "rtn" and (quant.act_order or args.gptq):
        raise ValueError("--act-order / --gptq are GPTQ options: drop them or use --quantizer gptq")
    if quant.act_order and pruner == "sparsegpt" and pattern.is_nm and quant.method == "gptq":
        raise ValueError("--act-order visits columns out of order, so sparsegpt cannot keep N:M groups with it")


def _check_allocation(args, allocation: str) -> None:
    if allocation in ("alp", "dlp") and args.alpha != "auto" and not -0.5 < args.alpha < 0.5:
        raise ValueError(f"--alpha {args.alpha}: must be in (-0.5, 0.5) or auto")
    if allocation == "owl" and (args.owl_m <= 0 or (args.owl_lambda != "auto" and not -0.5 < args.owl_lambda < 0.5)):
        raise ValueError("--owl_lambda must be in (-0.5, 0.5) or auto, and --owl_m > 0")
    if allocation == "alphapruning" and args.epsilon != "auto" and not 0 <= args.epsilon < 1:
        raise ValueError("--epsilon must be in [0, 1) or auto")
    if not 0 < args.alpha_max < 0.5 or args.search_candidates < 2:
        raise ValueError("--alpha_max must be in (0, 0.5) and --search_candidates >= 2")


def _check_counts(args) -> None:
    for flag in ("nsamples", "seqlen", "calib_batch_size", "grad_nsamples", "eval_seqlen"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be a positive integer")
    for flag in ("eval_windows", "eval_batch_size", "limit"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be a positive integer")
    if args.num_fewshot < 0:
        raise ValueError("--num_fewshot must be >= 0")


def _check_outputs(args) -> None:
    for flag in ("save_model", "log_json"):
        path = getattr(args, flag)
        if path and Path(path).exists() and not args.overwrite:
            if not (Path(path).is_dir() and not any(Path(path).iterdir())):
                raise ValueError(f"--{flag} {path} already exists; pass --overwrite or choose another path")


def _fit_nsamples(args) -> int | None:
    """``--reconstruct_nsamples``, or the default capped at ``--nsamples`` when it was not given."""
    if args.reconstruct_nsamples is not None:
        return args.reconstruct_nsamples
    default = RecoveryOptions.nsamples
    return None if default is None else min(default, args.nsamples)


def recovery_options(args, pruner: str) -> RecoveryOptions:
    """``--refine`` / ``--reconstruct`` settings, checked (``ValueError`` with the fix)."""
    recovery = RecoveryOptions(
        refine=args.refine,
        dsnot_cycles=args.dsnot_cycles,
        dsnot_threshold=args.dsnot_threshold,
        dsnot_skip=args.dsnot_skip,
        dsnot_rule=args.dsnot_rule,
        reconstruct=args.reconstruct,
        rel_lr=args.reconstruct_rel_lr,
        lr=args.reconstruct_lr,
        epochs=args.reconstruct_epochs,
        batch=args.reconstruct_batch,
        nsamples=_fit_nsamples(args),
    )
    if recovery.active and pruner == "dense":
        raise ValueError("--refine / --reconstruct change a pruned model: choose a pruner, not --prune_method dense")
    if args.dsnot_cycles < 1 or args.dsnot_threshold < 0:
        raise ValueError("--dsnot_cycles must be >= 1 and --dsnot_threshold >= 0")
    if not args.reconstruct_rel_lr > 0 or args.reconstruct_epochs < 1:
        raise ValueError("--reconstruct_rel_lr must be > 0 and --reconstruct_epochs >= 1")
    if args.reconstruct_lr is not None and not args.reconstruct_lr > 0:
        raise ValueError(f"--reconstruct_lr {args.reconstruct_lr}: an absolute AdamW learning rate must be > 0")
    if args.reconstruct and args.reconstruct_batch < 1:
        raise ValueError(f"--reconstruct_batch {args.reconstruct_batch}: sequences per AdamW step, a positive integer")
    fit = args.reconstruct_nsamples
    if args.reconstruct and fit is not None and not 0 < fit <= args.nsamples:
        raise ValueError(
            f"--reconstruct_nsamples {fit}: the calibration sequences the fit uses, "
            f"between 1 and --nsamples {args.nsamples}"
        )
    return recovery


def build_options(args) -> RunOptions:
    """Validate ``main.py``'s parsed flags and group them by stage; raises ``ValueError`` with the
    fix for anything wrong, before any model or data is loaded."""
    if not 0.0 <= args.sparsity_ratio < 1.0:
        raise ValueError(f"--sparsity_ratio {args.sparsity_ratio}: must be in [0, 1)")
    pattern = parse_sparsity_type(args.sparsity_type, args.nm_reading)
    pruner, allocation = split_method(args.prune_method)
    if args.allocation is not None:
        if allocation == "alp" and args.allocation != "alp":
            raise ValueError(
                f"{args.prune_method} means --allocation alp; use --prune_method {pruner} with "
                f"--allocation {args.allocation}"
            )
        allocation = args.allocation
    _check_pattern(args, pattern, pruner, allocation)
    if args.reallocation and not (pruner == "ria" and pattern.is_nm):
        raise ValueError("--reallocation permutes channels for N:M sparsity: use it with ria and --sparsity_type N:M")
    if args.lsa and not args.reallocation:
        raise ValueError("--lsa refines the channel permutation: add --reallocation")
    if not 0.0 <= args.percdamp or args.blocksize < 1:
        raise ValueError("--percdamp must be >= 0 and --blocksize >= 1")
    quant = quant_config(args)
    _check_quant(args, quant, pruner, pattern)
    _check_allocation(args, allocation)
    _check_counts(args)
    unknown = [d for d in args.eval_datasets if d not in EVAL_SETS]
    if unknown or not args.eval_datasets:
        raise ValueError(f"--eval_datasets {','.join(args.eval_datasets)}: choose among {','.join(EVAL_SETS)}")
    unknown = [t for t in args.tasks if t not in ALL_TASKS]
    if args.eval_zero_shot and (unknown or not args.tasks):
        raise ValueError(f"--tasks: unknown {','.join(unknown) or '(none given)'}; known: {','.join(ALL_TASKS)}")
    source = resolve_model_source(args.model)
    device = resolve_device(args.device)
    placement = "offload" if args.offload else "auto" if args.device_map else "device"
    if placement == "auto" and args.device not in ("auto", "cuda"):
        raise ValueError(f"--device_map auto picks the GPUs itself: drop --device {args.device}")
    kernel = PrunerOptions(
        ria_a=args.ria_a,
        ria_per_matrix=args.ria_per_matrix,
        reallocation=args.reallocation,
        lsa=args.lsa,
        blocksize=args.blocksize,
        percdamp=args.percdamp,
        quant=quant,
    )
    pruning = PruningOptions(
        method=args.prune_method,
        pruner=pruner,
        sparsity=args.sparsity_ratio,
        pattern=pattern,
        kernel=kernel,
        recovery=recovery_options(args, pruner),
    )
    allocation_options = AllocationOptions(
        name=allocation,
        alpha=args.alpha,
        owl_lambda=args.owl_lambda,
        owl_m=args.owl_m,
        dlp_statistic=args.dlp_statistic,
        epsilon=args.epsilon,
        alphapruning_xmin=args.alphapruning_xmin,
        beta=args.beta,
        search=SearchOptions(
            alpha_max=args.alpha_max,
            beta_max=args.beta_max,
            candidates=args.search_candidates,
            nsamples=args.search_nsamples,
            seqlen=args.search_seqlen,
            windows=args.search_windows,
        ),
        searched_options=searched_options(args, allocation, pruner),
    )
    reads_calibration_text = pruning.changes_weights and (
        needs_calibration_data(pruning, allocation_options) or allocation_options.name == "alp"  # alp: gradients
    )
    needed = ("wikitext2",) + ((args.dataset,) if reads_calibration_text or "c4" in args.eval_datasets else ())
    data_dir = resolve_data_dir(args.data_dir, needed=needed)
    tasks_dir = resolve_tasks_dir(data_dir) if args.eval_zero_shot else None
    if args.eval_zero_shot and tasks_dir is not None:
        if args.num_fewshot > 0:
            raise ValueError("--num_fewshot > 0 needs training splits, which the local task files lack: use 0")
        if not [t for t in args.tasks if t in LOCAL_TASKS]:
            raise ValueError(f"--tasks {','.join(args.tasks)}: none of them is available offline")
    _check_outputs(args)
    return RunOptions(
        model=ModelOptions(source=source, device=device, dtype=resolve_dtype(args.dtype, device), placement=placement),
        pruning=pruning,
        allocation=allocation_options,
        calibration=CalibrationOptions(
            dataset=args.dataset,
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            seed=args.seed,
            micro_batch=args.calib_batch_size,
        ),
        gradients=gradient_options(args),
        eval=EvalOptions(
            datasets=tuple(args.eval_datasets),
            seqlen=args.eval_seqlen,
            windows=args.eval_windows,
            batch_size=args.eval_batch_size,
            skip_dense=args.skip_dense,
            zero_shot=args.eval_zero_shot,
            tasks=tuple(args.tasks),
            tasks_dir=tasks_dir,
            num_fewshot=args.num_fewshot,
            limit=args.limit,
        ),
        outputs=OutputOptions(
            log_json=args.log_json,
            log_dir=args.log_dir,
            save_model=args.save_model,
            save_log=args.save_log,
            plot=args.plot,
            overwrite=args.overwrite,
        ),
        data_dir=data_dir,
    )


def needs_calibration_data(pruning: PruningOptions, allocation: AllocationOptions) -> bool:
    """Whether pruning, quantizing or the allocation reads calibration sequences."""
    needs = statistics_needed(PRUNERS[pruning.engine_pruner], pruning.kernel, pruning.recovery)
    measured = allocation.name in ("owl", "dlp", *SEARCHED_ALLOCATIONS)  # dp / evo: scores and held-out text
    return bool(needs) or pruning.recovery.reconstruct or measured or allocation.searched
