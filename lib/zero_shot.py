"""Zero-shot accuracy of the in-memory model through lm-evaluation-harness 0.4.

Online, the harness's own tasks are used by name. Offline (or with a data directory), each
task reads the local files under ``<data_dir>/tasks/`` (layout: ``shared/data/README``): the
harness's own task definition for that task (prompt, target, choices, metrics, from its YAML
file) is loaded unchanged, and only its data source is replaced by the local documents,
converted to the schema of the hub data set, so numbers stay comparable with the built-in task.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The paper's six tasks (Table IV), then the other usual three.
PAPER_TASKS = ("boolq", "rte", "hellaswag", "arc_challenge", "mnli", "openbookqa")
ALL_TASKS = PAPER_TASKS + ("arc_easy", "winogrande", "piqa")


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_labels(path: Path) -> list[str]:
    """One label per non-empty line."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def arc_docs(rows: list[dict], stem_key: str = "question") -> list[dict]:
    """AI2 files (``question{stem, choices[{text,label}]}``) -> hub schema (``choices{text[], label[]}``)."""
    return [
        {
            "id": r["id"],
            stem_key: r["question"]["stem"],
            "choices": {
                "text": [c["text"] for c in r["question"]["choices"]],
                "label": [c["label"] for c in r["question"]["choices"]],
            },
            "answerKey": r["answerKey"],
        }
        for r in rows
    ]


def boolq_docs(d: Path) -> list[dict]:
    rows = read_jsonl(d / "boolq" / "val.jsonl")
    return [{**r, "label": {"false": 0, "true": 1}[str(r["label"]).lower()]} for r in rows]


def rte_docs(d: Path) -> list[dict]:  # GLUE RTE as the harness's ``rte``: entailment = 0
    rows = read_jsonl(d / "rte" / "val.jsonl")
    labels = {"entailment": 0, "not_entailment": 1}
    return [
        {"sentence1": r["premise"], "sentence2": r["hypothesis"], "label": labels[r["label"]], "idx": r["idx"]}
        for r in rows
    ]


def hellaswag_docs(d: Path) -> list[dict]:
    # The local copy only has ctx = ctx_a + " " + ctx_b, so the harness's capitalisation of
    # ctx_b cannot be redone (see the data README): close to, not identical with, lm-eval.
    rows = read_jsonl(d / "hellaswag" / "validation.jsonl")
    return [
        {
            "ind": r["idx"],
            "activity_label": r["activity_label"],
            "ctx_a": r["ctx"],
            "ctx_b": "",
            "ctx": r["ctx"],
            "endings": r["endings"],
            "label": str(r["label"]),
        }
        for r in rows
    ]


def winogrande_docs(d: Path) -> list[dict]:
    rows = read_jsonl(d / "winogrande" / "dev.jsonl")
    labels = read_labels(d / "winogrande" / "dev-labels.lst")
    if len(labels) != len(rows) or any(r["answer"] != a for r, a in zip(rows, labels, strict=True)):
        raise ValueError("winogrande: dev.jsonl answers disagree with dev-labels.lst")
    return [{k: r[k] for k in ("sentence", "option1", "option2", "answer")} for r in rows]


def piqa_docs(d: Path) -> list[dict]:
    rows = read_jsonl(d / "piqa" / "valid.jsonl")
    labels = read_labels(d / "piqa" / "valid-labels.lst")
    if len(labels) != len(rows):
        raise ValueError(f"piqa: {len(rows)} questions but {len(labels)} labels")
    return [
        {"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(a)}
        for r, a in zip(rows, labels, strict=True)
    ]


@dataclass(frozen=True)
class LocalTask:
    """Where the harness defines a task, and how to read its local copy."""

    yaml: str  # path of the harness's task YAML, relative to lm_eval/tasks
    split: str  # the split the harness evaluates (the local docs are served under this name)
    docs: Callable[[Path], list[dict]]  # tasks folder -> documents in the hub schema


LOCAL_TASKS = {
    "boolq": LocalTask("super_glue/boolq/default.yaml", "validation", boolq_docs),
    "rte": LocalTask("glue/rte/default.yaml", "validation", rte_docs),
    "hellaswag": LocalTask("hellaswag/hellaswag.yaml", "validation", hellaswag_docs),
    "arc_challenge": LocalTask(
        "arc/arc_challenge.yaml",
        "test",
        lambda d: arc_docs(read_jsonl(d / "arc_challenge" / "ARC-Challenge-Test.jsonl")),
    ),
    "arc_easy": LocalTask(
        "arc/arc_easy.yaml", "test", lambda d: arc_docs(read_jsonl(d / "arc_easy" / "ARC-Easy-Test.jsonl"))
    ),
    "openbookqa": LocalTask(
        "openbookqa/openbookqa.yaml",
        "test",
        lambda d: arc_docs(read_jsonl(d / "openbookqa" / "test.jsonl"), stem_key="question_stem"),
    ),
    "winogrande": LocalTask("winogrande/default.yaml", "validation", winogrande_docs),
    "piqa": LocalTask("piqa/piqa.yaml", "validation", piqa_docs),
}


def harness_task_config(name: str) -> dict:
    """The harness's own configuration of task ``name`` (its YAML, functions resolved)."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml  # pinned lm-eval: see requirements.txt

    return load_yaml(Path(lm_eval.tasks.__file__).parent / LOCAL_TASKS[name].yaml)


def local_task(name: str, tasks_dir: Path):
    """A harness task ``name`` reading its documents from ``tasks_dir`` (see :data:`LOCAL_TASKS`)."""
    import datasets
    from lm_eval.api.task import ConfigurableTask

    spec = LOCAL_TASKS[name]
    docs = spec.docs(tasks_dir)
    config = harness_task_config(name)
    config.update(
        custom_dataset=lambda **_: datasets.DatasetDict({spec.split: datasets.Dataset.from_list(docs)}),
        training_split=None,  # no local training docs: zero-shot only
        validation_split=spec.split if spec.split == "validation" else None,
        test_split=spec.split if spec.split == "test" else None,
    )
    config.pop("tag", None)
    return ConfigurableTask(config=config)


def unavailable_offline(tasks: list[str]) -> list[str]:
    """The tasks that have no local copy (mnli)."""
    return [t for t in tasks if t not in LOCAL_TASKS]


def summarize(results: dict, tasks: list[str]) -> dict:
    """Harness results -> ``{task: {acc, acc_stderr, acc_norm, acc_norm_stderr}}`` (fractions);
    a task missing from ``results`` is left out here and listed by :func:`not_run`."""
    summary = {}
    for task in tasks:
        if task not in results:
            continue
        metrics = results[task]
        entry = {}
        for metric in ("acc", "acc_norm"):
            if f"{metric},none" in metrics:
                entry[metric] = float(metrics[f"{metric},none"])
                stderr = metrics.get(f"{metric}_stderr,none")
                entry[f"{metric}_stderr"] = float(stderr) if isinstance(stderr, (int, float)) else None
        summary[task] = entry
    return summary


def not_run(tasks: list[str], summary: dict, unavailable: list[str]) -> dict:
    """``{task: reason}`` for every requested task without an accuracy: no local copy, no result
    from the harness, or a result without ``acc`` (nothing is dropped silently)."""
    reasons = {}
    for task in tasks:
        if task in unavailable:
            reasons[task] = "no local copy (offline task files lack it)"
        elif task not in summary:
            reasons[task] = "the harness returned no result for it"
        elif "acc" not in summary[task]:
            reasons[task] = "the harness result has no acc metric"
    return reasons


def means(summary: dict) -> dict:
    """The true mean accuracy over the evaluated tasks, and the paper's "Mean" (sum of its six
    accuracies / 5, as printed in its tables; ``None`` unless all six were evaluated)."""
    accs = {task: m["acc"] for task, m in summary.items() if "acc" in m}
    true_mean = sum(accs.values()) / len(accs) if accs else math.nan
    paper = sum(accs[t] for t in PAPER_TASKS) / 5 if all(t in accs for t in PAPER_TASKS) else None
    return {"mean_acc": true_mean, "paper_mean_sum_of_six_over_5": paper, "tasks_in_mean": sorted(accs)}


def evaluate_zero_shot(
    model,
    tokenizer,
    tasks: list[str],
    *,
    tasks_dir: Path | None,
    num_fewshot: int = 0,
    limit: int | None = None,
    batch_size: int = 16,
) -> dict:
    """Accuracy of ``model`` (in memory, not re-loaded) on ``tasks``.

    ``tasks_dir`` set: the local copies (tasks without one are listed under ``unavailable``);
    ``None``: the harness's hub tasks by name. Returns ``{"tasks": summary, "unavailable": [...],
    "not_run": {task: reason}, "mean": ..., "limit": limit, "num_fewshot": num_fewshot,
    "source": "local" | "hub"}``; every task in ``not_run`` is also printed.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    if tasks_dir is not None and num_fewshot > 0:
        raise ValueError("few-shot examples come from training splits, which are not available offline")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, dtype=model.dtype)
    if tasks_dir is None:
        runnable, unavailable, task_objects = list(tasks), [], list(tasks)
    else:
        unavailable = unavailable_offline(tasks)
        runnable = [t for t in tasks if t in LOCAL_TASKS]
        task_objects = [local_task(t, tasks_dir) for t in runnable]
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=task_objects,
        num_fewshot=num_fewshot,
        limit=limit,
        bootstrap_iters=1000,  # acc and acc_norm stderrs are closed-form; this only switches them on
        log_samples=False,
    )
    summary = summarize(out["results"], runnable)
    skipped = not_run(list(tasks), summary, unavailable)
    for task, reason in skipped.items():
        print(f"[zero-shot] {task} not run: {reason}")
    return {
        "tasks": summary,
        "unavailable": unavailable,
        "not_run": skipped,
        "mean": means(summary),
        "limit": limit,
        "num_fewshot": num_fewshot,
        "source": "hub" if tasks_dir is None else "local",
    }


def format_zero_shot(result: dict) -> str:
    """Markdown table: task, acc, acc_norm (with stderr), then the means."""
    rows = ["| task | acc | acc_norm |", "|---|---|---|"]

    def cell(m: dict, key: str) -> str:
        if key not in m:
            return ""
        err = m.get(f"{key}_stderr")
        return f"{100 * m[key]:.2f}" + ("" if err is None else f" +- {100 * err:.2f}")

    for task, m in result["tasks"].items():
        rows.append(f"| {task} | {cell(m, 'acc')} | {cell(m, 'acc_norm')} |")
    for task, reason in result.get("not_run", {t: "unavailable offline" for t in result["unavailable"]}).items():
        rows.append(f"| {task} | not run: {reason} | |")
    mean = result["mean"]
    rows.append(f"| mean acc ({len(mean['tasks_in_mean'])} tasks) | {100 * mean['mean_acc']:.2f} | |")
    if mean["paper_mean_sum_of_six_over_5"] is not None:
        rows.append(f"| paper's 'Mean' (sum of six / 5) | {100 * mean['paper_mean_sum_of_six_over_5']:.2f} | |")
    if result["limit"]:
        rows.append(f"\n(first {result['limit']} documents per task)")
    return "\n".join(rows)
