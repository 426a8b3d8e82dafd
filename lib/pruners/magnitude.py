"""Magnitude pruning: score ``|W_ij|``, one threshold per matrix; needs no calibration data."""

from __future__ import annotations

from . import register, score_pruner

MAGNITUDE = register(score_pruner("magnitude", set(), lambda W, stats, options: W.abs().float(), lambda o: "matrix"))
