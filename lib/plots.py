"""Figures: per-block sparsity curves (with the block scores they came from)."""

from __future__ import annotations

import io
from pathlib import Path

from .utils import atomic_write_bytes


def plot_block_ratios(
    path: str | Path,
    curves: dict[str, list[float]],
    *,
    title: str,
    target: float | None = None,
    scores: list[float] | None = None,
    score_label: str = "block score",
    overwrite: bool = True,
) -> Path:
    """Line plot of per-block sparsity for each curve (label -> ratios), optionally with the
    per-block score on a second axis; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    for label, ratios in curves.items():
        ax.plot(range(len(ratios)), ratios, marker="o", markersize=3, label=label)
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel("decoder block")
    ax.set_ylabel("sparsity")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if scores is not None:
        ax2 = ax.twinx()
        ax2.bar(range(len(scores)), scores, alpha=0.2, color="tab:grey", label=score_label)
        ax2.set_ylabel(score_label)
        lines, labels = ax.get_legend_handles_labels()
        bars, bar_labels = ax2.get_legend_handles_labels()
        ax.legend(lines + bars, labels + bar_labels, fontsize=8, loc="best")
    else:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue(), overwrite=overwrite)
