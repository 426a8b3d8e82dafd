"""Zero-shot evaluation throughput: the harness path versus a plain forward of the same batches.

Runs ``lib.zero_shot.evaluate_zero_shot`` on the offline tasks while recording every batch the
harness sends to the model, then replays exactly those batches through a plain
``model(input_ids)`` call. ``ratio`` = plain forward time / harness wall time (1.0 = the
harness adds nothing); the wall time includes a fixed set-up per task (reading and converting the
local files, building and tokenizing the requests, metrics), so small ``--limit`` values lower it.
``scoring_ratio`` = plain forward time / time inside the harness's ``loglikelihood`` (the
forwards plus the per-request log-probability work). Also reports a plain forward of 2048-token
windows for reference.
The last line is one JSON object (``tokens_per_s``, ``plain_forward_tokens_per_s``, ...).

Example:
  python scripts/bench_zero_shot.py --limit 100 --batch_size 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.data import resolve_data_dir, resolve_tasks_dir  # noqa: E402
from lib.models import load_model, resolve_model_source  # noqa: E402
from lib.utils import print_figures, resolve_device, resolve_dtype  # noqa: E402
from lib.zero_shot import LOCAL_TASKS, evaluate_zero_shot  # noqa: E402


class LoglikelihoodTimer:
    """Accumulates the wall time spent inside lm-eval's ``HFLM.loglikelihood`` (the scoring of the
    requests: forwards, normalisation, per-request selection) until ``stop()``, which restores it."""

    def __init__(self):
        from lm_eval.models.huggingface import HFLM

        self.cls, self.original, self.seconds = HFLM, HFLM.loglikelihood, 0.0
        timer = self

        def timed(lm, *a, **k):
            start = time.perf_counter()
            try:
                return timer.original(lm, *a, **k)
            finally:
                timer.seconds += time.perf_counter() - start

        HFLM.loglikelihood = timed

    def stop(self) -> float:
        self.cls.loglikelihood = self.original
        return self.seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2")
    p.add_argument("--tasks", default=",".join(LOCAL_TASKS), help="comma-separated offline tasks")
    p.add_argument("--limit", type=int, default=100, help="documents per task")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--data_dir", default=None)
    args = p.parse_args()
    device = resolve_device(args.device)
    model, tokenizer = load_model(
        resolve_model_source(args.model), device=device, dtype=resolve_dtype(args.dtype, device)
    )
    tasks_dir = resolve_tasks_dir(resolve_data_dir(args.data_dir))

    batches: list[torch.Tensor] = []

    def record(module, fargs, kwargs):
        ids = fargs[0] if fargs else kwargs.get("input_ids")
        batches.append(ids.detach().clone())

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    scoring = LoglikelihoodTimer()
    start = time.perf_counter()
    try:
        result = evaluate_zero_shot(
            model, tokenizer, args.tasks.split(","), tasks_dir=tasks_dir, limit=args.limit, batch_size=args.batch_size
        )
    finally:
        harness_s = time.perf_counter() - start
        handle.remove()
        scoring_s = scoring.stop()
    tokens = sum(b.numel() for b in batches)  # as computed, padding included (the same in both paths)

    with torch.no_grad():
        start = time.perf_counter()
        for ids in batches:
            model(ids.to(device), use_cache=False)
        plain_s = time.perf_counter() - start
        window = torch.randint(0, len(tokenizer), (1, 2048), device=device)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            model(window, use_cache=False)
            times.append(time.perf_counter() - t)
        window_tps = 2048 / statistics.median(times)

    figures = {
        "tasks": args.tasks.split(","),
        "limit": args.limit,
        "batch_size": args.batch_size,
        "dtype": str(model.dtype).replace("torch.", ""),
        "forward_calls": len(batches),
        "tokens": tokens,
        "harness_seconds": harness_s,
        "scoring_seconds": scoring_s,
        "setup_seconds": harness_s - scoring_s,
        "plain_forward_seconds": plain_s,
        "tokens_per_s": tokens / harness_s,
        "scoring_tokens_per_s": tokens / scoring_s,
        "plain_forward_tokens_per_s": tokens / plain_s,
        "ratio": plain_s / harness_s,
        "scoring_ratio": plain_s / scoring_s,
        "window_2048_tokens_per_s": window_tps,
        "accuracy": {t: m["acc"] for t, m in result["tasks"].items()},
    }
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
