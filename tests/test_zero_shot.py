"""Zero-shot through lm-eval 0.4 on the local task files: documents, choices, gold labels, CLI."""

import json

import pytest
import torch

import main as main_cli
from lib.zero_shot import (
    ALL_TASKS,
    LOCAL_TASKS,
    PAPER_TASKS,
    evaluate_zero_shot,
    format_zero_shot,
    local_task,
    means,
    not_run,
    read_jsonl,
)


def raw_rows(tasks_dir, name):
    """The task's rows straight from its file, with the gold index computed independently."""
    d = tasks_dir / name
    if name in ("arc_easy", "arc_challenge", "openbookqa"):
        file = {"arc_easy": "ARC-Easy-Test.jsonl", "arc_challenge": "ARC-Challenge-Test.jsonl"}.get(name, "test.jsonl")
        rows = read_jsonl(d / file)
        return [
            (len(r["question"]["choices"]), [c["label"] for c in r["question"]["choices"]].index(r["answerKey"]), r)
            for r in rows
        ]
    if name == "boolq":
        return [(2, 1 if str(r["label"]).lower() == "true" else 0, r) for r in read_jsonl(d / "val.jsonl")]
    if name == "rte":
        return [(2, 0 if r["label"] == "entailment" else 1, r) for r in read_jsonl(d / "val.jsonl")]
    if name == "hellaswag":
        return [(4, int(r["label"]), r) for r in read_jsonl(d / "validation.jsonl")]
    if name == "winogrande":
        return [(2, int(r["answer"]) - 1, r) for r in read_jsonl(d / "dev.jsonl")]
    labels = (d / "valid-labels.lst").read_text().split()
    return [(2, int(a), r) for a, r in zip(labels, read_jsonl(d / "valid.jsonl"), strict=True)]


@pytest.mark.parametrize("name", sorted(LOCAL_TASKS))
def test_local_documents_parse_with_the_right_choices_and_gold(name, data_dir):
    tasks_dir = data_dir / "tasks"
    task = local_task(name, tasks_dir)
    docs = list(task.test_docs() if task.has_test_docs() else task.validation_docs())
    rows = raw_rows(tasks_dir, name)
    assert len(docs) == len(rows)
    picks = list(range(0, len(rows), max(1, len(rows) // 40)))
    if name.startswith("arc"):  # every row whose answer key is numeric ("1".."4") rather than a letter
        numeric = [i for i, (_, _, r) in enumerate(rows) if r["answerKey"].isdigit()]
        assert numeric, "the ARC files hold numeric answer keys"
        picks += numeric
    for i in picks:
        n_choices, gold, _ = rows[i]
        doc = docs[i]
        assert len(task.doc_to_choice(doc)) == n_choices
        # winogrande scores the continuation after each option: its gold is doc_to_text
        got = task.doc_to_text(doc) if name == "winogrande" else task.doc_to_target(doc)
        assert int(got) == gold, (name, i)


def test_harness_prompts_are_kept(data_dir):
    task = local_task("arc_easy", data_dir / "tasks")
    doc = next(iter(task.test_docs()))
    assert task.doc_to_text(doc) == f"Question: {doc['question']}\nAnswer:"
    assert [m["metric"] for m in task.config.metric_list] == ["acc", "acc_norm"]


def test_means_report_true_mean_and_paper_mean():
    summary = {t: {"acc": 0.5} for t in PAPER_TASKS}
    summary["piqa"] = {"acc": 0.8}
    result = means(summary)
    assert result["mean_acc"] == pytest.approx((6 * 0.5 + 0.8) / 7)
    assert result["paper_mean_sum_of_six_over_5"] == pytest.approx(6 * 0.5 / 5)
    assert means({"piqa": {"acc": 0.8}})["paper_mean_sum_of_six_over_5"] is None


def test_tasks_that_could_not_run_are_listed_with_a_reason():
    summary = {"piqa": {"acc": 0.6, "acc_stderr": 0.01}, "rte": {"acc_norm": 0.5}}
    reasons = not_run(["piqa", "rte", "boolq", "mnli"], summary, unavailable=["mnli"])
    assert list(reasons) == ["rte", "boolq", "mnli"]
    assert "no acc" in reasons["rte"] and "no result" in reasons["boolq"] and "no local copy" in reasons["mnli"]
    result = {"tasks": summary, "unavailable": ["mnli"], "not_run": reasons, "mean": means(summary), "limit": None}
    table = format_zero_shot(result)
    assert all(f"| {t} | not run:" in table for t in reasons)


def test_tiny_model_through_the_offline_path(tiny_checkpoint, data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    result = evaluate_zero_shot(model, tokenizer, list(ALL_TASKS), tasks_dir=data_dir / "tasks", limit=3, batch_size=4)
    assert result["unavailable"] == ["mnli"] and result["source"] == "local"
    assert result["not_run"] == {"mnli": "no local copy (offline task files lack it)"}
    assert set(result["tasks"]) == set(ALL_TASKS) - {"mnli"}
    for task, metrics in result["tasks"].items():
        assert 0.0 <= metrics["acc"] <= 1.0 and metrics["acc_stderr"] is not None, task
    assert result["mean"]["paper_mean_sum_of_six_over_5"] is None  # mnli missing


@pytest.mark.parametrize(
    "argv,reason",
    [
        (["--eval_zero_shot", "--tasks", "mnli"], "none of them is available offline"),
        (["--eval_zero_shot", "--num_fewshot", "5"], "--num_fewshot > 0"),
        (["--eval_zero_shot", "--tasks", "boolq,nope"], "unknown nope"),
        (["--eval_datasets", "ptb"], "--eval_datasets ptb"),
        (["--eval_zero_shot", "--limit", "0"], "--limit must be"),
    ],
)
def test_bad_zero_shot_flags_fail_fast(argv, reason, data_dir, capsys, monkeypatch):
    monkeypatch.setattr(main_cli, "run", lambda *a: pytest.fail("heavy work started"))
    assert main_cli.main(argv + ["--data_dir", str(data_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and len(err.splitlines()) == 1


def test_cli_zero_shot_and_c4(tiny_checkpoint, tmp_path, data_dir):
    log = tmp_path / "z.json"
    argv = ["--model", str(tiny_checkpoint), "--data_dir", str(data_dir), "--prune_method", "magnitude"]
    argv += ["--sparsity_ratio", "0.5", "--eval_seqlen", "32", "--eval_windows", "2", "--dtype", "float32"]
    argv += ["--eval_datasets", "wikitext2,c4", "--eval_zero_shot", "--tasks", "piqa,rte", "--limit", "4"]
    argv += ["--log_json", str(log), "--save_log", str(tmp_path / "logs")]
    assert main_cli.main(argv) == 0
    result = json.loads(log.read_text())
    assert set(result["ppl"]) == {"wikitext2", "c4"} == set(result["ppl_dense"])
    assert "train-shard sample" in result["eval_sets"]["c4"]["source"]
    assert set(result["zero_shot"]["tasks"]) == {"piqa", "rte"} and result["zero_shot"]["limit"] == 4
    saved = json.loads((tmp_path / "logs" / "results_zero_shot_magnitude_0.5.json").read_text())
    assert saved == result["zero_shot"]


def test_smollm2_beats_chance_on_arc_easy_and_piqa(smollm2_dir, data_dir):
    from lib.models import load_model, resolve_model_source
    from lib.utils import resolve_dtype

    # the dtype --dtype auto picks: bf16 only where the CPU has bf16 units (elsewhere it is emulated, ~8x slower)
    dtype = resolve_dtype("auto", torch.device("cpu"))
    model, tokenizer = load_model(resolve_model_source(None), device=torch.device("cpu"), dtype=dtype)
    result = evaluate_zero_shot(
        model, tokenizer, ["arc_easy", "piqa"], tasks_dir=data_dir / "tasks", limit=100, batch_size=16
    )
    # chance: 1/4 on ARC-Easy (4 choices), 1/2 on PIQA; SmolLM2-135M scores well above both
    assert result["tasks"]["arc_easy"]["acc"] > 0.35
    assert result["tasks"]["piqa"]["acc"] > 0.58
