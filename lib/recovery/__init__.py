"""Recovery steps that change a pruned block between "mask chosen" and "outputs handed on".

- :mod:`.dsnot`: training-free mask refinement (DSnoT), per linear, keeping every row's zeros;
- :mod:`.reconstruct`: fit a block's surviving weights so its attention and MLP reproduce the
  dense block's, the mask held exactly.

:class:`RecoveryOptions` is the small typed group the engine (:mod:`lib.prune`) reads; the CLI
sets its fields (defaults live in ``main.build_parser``; the ones below mirror them).
"""

from __future__ import annotations

from dataclasses import dataclass

REFINERS = ("none", "dsnot")
DSNOT_SKIPS = ("mlp", "attention", "none")  # sub-modules DSnoT leaves as pruned (released: mlp)
DSNOT_RULES = ("released", "shrink")


@dataclass(frozen=True)
class RecoveryOptions:
    """What runs after a block's mask is chosen: ``refine`` (``"none"`` or ``"dsnot"``) and
    ``reconstruct`` (AdamW on the surviving weights)."""

    refine: str = "none"
    dsnot_cycles: int = 50  # DSnoT: at most this many grow / prune swaps per row
    dsnot_threshold: float = 0.1  # DSnoT: a row stops once |error summed over one sequence| is below this
    dsnot_skip: str = "mlp"  # DSnoT: the sub-module kind left as the pruner made it (released default)
    dsnot_rule: str = "released"  # DSnoT: per-swap acceptance (lib.recovery.dsnot.dsnot)
    reconstruct: bool = False
    # Defaults: SmolLM2 Wanda 70 %, 32 x 512 calibration, fp32 (results/smollm2/recovery/): one epoch
    # over 20 sequences, one per step, lr 5e-3 gave 236.0 in 51 s (no recovery 1,238.9); the earlier
    # defaults (all 32 sequences, two epochs, steps of 4, lr 3e-3) 292.6 in 347 s. Steps matter more than data.
    # Step size relative to each tensor's RMS before pruning (lib.recovery.reconstruct): 0.025 x the RMS of
    # SmolLM2's linear weights (median 0.19) is about the 5e-3 measured above, and gives 277.9 there
    # (results/smollm2/recovery/grid/); Qwen2.5-0.5B at 70 % and SmolLM2 at 50 % did better at 0.005 (README).
    rel_lr: float = 0.025
    lr: float | None = None  # absolute AdamW lr for every tensor instead of rel_lr (the behaviour before rel_lr)
    epochs: int = 1  # passes over the fitted sequences per sub-module
    batch: int = 1  # sequences per AdamW step (micro-batches split into sequences when it is not a multiple)
    nsamples: int | None = 20  # calibration sequences the fit uses (the first ones; fewer if --nsamples is); None: all

    @property
    def needs(self) -> frozenset[str]:
        """The input statistics the refinement reads (DSnoT: ``E[x_j]``, ``Var[x_j]`` and ``||X_j||^2``)."""
        return frozenset({"col_sq_norm", "col_sum"}) if self.refine == "dsnot" else frozenset()

    @property
    def active(self) -> bool:
        return self.refine != "none" or self.reconstruct

    @property
    def dsnot_skips_sublayer(self) -> bool:
        """DSnoT leaves one sub-module kind alone, so the engine needs the blocks' sub-module names."""
        return self.refine == "dsnot" and self.dsnot_skip != "none"


def fitted_micro_batches(nsamples: int | None, micro_batch: int) -> int | None:
    """Calibration micro-batches captured for the fit: its ``nsamples`` sequences and the one after
    them, held out to check the fit, rounded up to whole micro-batches of ``micro_batch`` sequences
    (None: every micro-batch)."""
    return None if nsamples is None else -(-(nsamples + 1) // micro_batch)
