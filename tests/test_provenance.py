"""What a run records about its inputs: data provenance, cache keys, the hub revision, tasks not run."""

import hashlib
import json
import shutil

import pytest
import torch

import lib.data
import lib.hub
import main as main_cli
from lib.data import (
    CLASSIC_SAMPLER,
    CONCATENATED_SAMPLER,
    _sha256_of,
    calibration_provenance,
    evaluation_provenance,
    file_record,
    load_texts,
    sample_calibration,
    source_id,
    tasks_source,
    text_source,
)
from lib.models import ModelSource, resolve_model_source
from lib.options import GradientOptions
from lib.pipeline import compute_gradient_cache, gradient_cache_path, gradient_metadata
from lib.sensitivity import load_cache


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_record_hashes_once_and_again_after_an_edit(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a"}\n')
    first = file_record(path)
    assert first == {"path": str(path.resolve()), "bytes": 14, "sha256": sha256(path)}
    hits = _sha256_of.cache_info().hits
    assert file_record(path) == first and _sha256_of.cache_info().hits == hits + 1  # not read again
    path.write_text('{"text": "b"}\n')  # same size, new content and mtime
    assert file_record(path)["sha256"] == sha256(path) != first["sha256"]


def test_text_sources_local_and_hub(data_dir, monkeypatch):
    c4 = data_dir / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl"
    local = text_source("c4", data_dir, load_texts("c4", data_dir))
    assert local == {
        "kind": "local",
        "path": str(c4.resolve()),
        "bytes": c4.stat().st_size,
        "sha256": sha256(c4),
        "rows": 1000,
    }
    assert source_id(local) == f"sha256:{sha256(c4)[:16]}"
    monkeypatch.setattr(lib.hub, "resolved_revision", lambda repo, repo_type: f"{repo_type}-rev")
    hub = text_source("c4", None)
    assert hub["kind"] == "hub" and hub["id"] == "allenai/c4" and hub["revision"] == "dataset-rev"
    assert hub["data_files"] == "en/c4-train.00000-of-01024.json.gz" and hub["split"] == "train"
    assert source_id(hub).endswith("@dataset-rev")
    assert text_source("c4_validation", None)["split"] == "validation"


def test_calibration_and_evaluation_provenance(data_dir, smollm2_tokenizer):
    docs = load_texts("c4", data_dir)
    for nsamples, seqlen, sampler in ((10, 64, CLASSIC_SAMPLER), (128, 2048, CONCATENATED_SAMPLER)):
        ids, note = sample_calibration(smollm2_tokenizer, docs, nsamples=nsamples, seqlen=seqlen, seed=0)
        record = calibration_provenance("c4", data_dir, ids, note, seed=0, texts=docs)
        assert record["sampler"]["name"] == sampler and record["sampler"]["seed"] == 0
        assert (record["sampler"]["nsamples"], record["sampler"]["seqlen"]) == (nsamples, seqlen)
        assert record["token_ids"]["tokens"] == nsamples * seqlen
        assert record["token_ids"]["sha256"] == hashlib.sha256(ids.numpy().tobytes()).hexdigest()
        assert record["source"]["rows"] == 1000
    other, _ = sample_calibration(smollm2_tokenizer, docs, nsamples=10, seqlen=64, seed=1)
    assert (
        calibration_provenance("c4", data_dir, other, "classic sampler", seed=1)["token_ids"]["sha256"]
        != (calibration_provenance("c4", data_dir, ids[:10, :64], "classic sampler", seed=0)["token_ids"]["sha256"])
    )
    stream = torch.arange(7).view(1, 7)
    record = evaluation_provenance("wikitext2", data_dir, stream, "WikiText-2 test")
    assert record["source"]["sha256"] == sha256(data_dir / "wikitext2" / "wikitext-2-raw-v1.test.jsonl")
    assert record["token_ids"]["shape"] == [1, 7]


def test_tasks_source_lists_every_file(data_dir):
    record = tasks_source(data_dir / "tasks", ["piqa", "mnli"])
    files = record["tasks"]["piqa"]["files"]
    assert [f["path"].rsplit("/", 1)[1] for f in files] == ["valid-labels.lst", "valid.jsonl"]
    assert files[1]["sha256"] == sha256(data_dir / "tasks" / "piqa" / "valid.jsonl")
    assert record["tasks"]["mnli"] == {"files": []}  # asked for, no local copy: listed, empty
    assert tasks_source(None, ["mnli"]) == {"kind": "hub", "tasks": {"mnli": {"harness_task": "mnli"}}}


def test_hub_fingerprint_includes_the_revision(monkeypatch, tmp_path):
    source = ModelSource("hub", "org/model", "model")
    revisions = iter(["aaa", "bbb", None])
    monkeypatch.setattr(lib.hub, "resolved_revision", lambda repo, repo_type: next(revisions))
    assert len({source.fingerprint(), source.fingerprint(), source.fingerprint()}) == 3
    # offline, the revision is the one the local hub cache points at
    from huggingface_hub import constants

    monkeypatch.undo()
    lib.hub.resolved_revision.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert lib.hub.resolved_revision("org/model", repo_type="model") is None
    lib.hub.resolved_revision.cache_clear()
    (tmp_path / "models--org--model" / "refs").mkdir(parents=True)
    (tmp_path / "models--org--model" / "refs" / "main").write_text("c0ffee\n")
    assert lib.hub.resolved_revision("org/model", repo_type="model") == "c0ffee"
    lib.hub.resolved_revision.cache_clear()


def test_gradient_cache_keyed_by_dtype_and_data(tiny_checkpoint, data_dir, tmp_path):
    """bf16 vs fp32 and local text vs other local text: other cache files; two fresh passes
    into fresh caches give identical block scores and record what they read."""
    source = resolve_model_source(str(tiny_checkpoint))
    cpu = torch.device("cpu")
    options = GradientOptions(nsamples=2, seqlen=16)
    fp32 = gradient_metadata(options, source, data_dir=data_dir, device=cpu)
    bf16 = gradient_metadata(
        GradientOptions(nsamples=2, seqlen=16, dtype="bfloat16"), source, data_dir=data_dir, device=cpu
    )
    other_text = tmp_path / "data"
    (other_text / "c4").mkdir(parents=True)
    shutil.copy(data_dir / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl", other_text / "c4")
    with open(other_text / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl", "a") as fh:
        fh.write(json.dumps({"text": "one more document"}) + "\n")
    other = gradient_metadata(options, source, data_dir=other_text, device=cpu)
    assert (fp32["grad_dtype"], bf16["grad_dtype"]) == ("float32", "bfloat16")
    assert fp32["data_source"] != other["data_source"]
    assert len({gradient_cache_path(options, m) for m in (fp32, bf16, other)}) == 3
    with pytest.raises(ValueError, match="metadata says float32"):
        compute_gradient_cache(
            source, fp32, tmp_path / "x.safetensors", data_dir=data_dir, device=cpu, dtype=torch.bfloat16
        )
    summaries = []
    for i in range(2):
        path = tmp_path / f"fresh{i}.safetensors"
        compute_gradient_cache(source, fp32, path, data_dir=data_dir, device=cpu, dtype=torch.float32)
        summary, meta = load_cache(path, expected=fp32)
        summaries.append(summary.abs_z_sum)
    assert torch.equal(summaries[0], summaries[1])
    samples = meta["provenance"]
    assert samples["source"]["sha256"] == sha256(data_dir / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl")
    assert samples["sampler"]["name"] == CLASSIC_SAMPLER and samples["token_ids"]["tokens"] == 2 * 16


def test_run_log_records_data_provenance_and_tasks_not_run(tiny_checkpoint, data_dir, tmp_path, capsys):
    log = tmp_path / "run.json"
    argv = ["--model", str(tiny_checkpoint), "--data_dir", str(data_dir), "--prune_method", "wanda_alp"]
    argv += ["--nsamples", "2", "--seqlen", "32", "--grad_nsamples", "2", "--grad_seqlen", "16", "--skip_dense"]
    argv += ["--eval_seqlen", "32", "--eval_windows", "1", "--dtype", "float32", "--log_json", str(log)]
    argv += ["--eval_zero_shot", "--tasks", "piqa,mnli", "--limit", "2"]
    assert main_cli.main(argv) == 0
    assert "[zero-shot] mnli not run: no local copy" in capsys.readouterr().out
    result = json.loads(log.read_text())
    assert result["zero_shot"]["not_run"] == {"mnli": "no local copy (offline task files lack it)"}
    prov = result["data_provenance"]
    assert set(prov) == {"calibration", "gradients", "evaluation", "zero_shot"}
    c4_sha = sha256(data_dir / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl")
    assert prov["calibration"]["source"]["sha256"] == c4_sha
    assert prov["calibration"]["sampler"]["name"] == CLASSIC_SAMPLER  # 2 windows of 32 tokens: long documents abound
    assert prov["calibration"]["token_ids"]["tokens"] == 2 * 32
    grads = prov["gradients"]
    assert grads["grad_dtype"] == "float32" and grads["data_source"] == f"sha256:{c4_sha[:16]}"
    assert grads["samples"]["source"]["sha256"] == c4_sha and grads["samples"]["token_ids"]["tokens"] == 2 * 16
    assert prov["evaluation"]["wikitext2"]["token_ids"]["tokens"] == 304_986
    assert prov["zero_shot"]["tasks"]["piqa"]["files"][1]["sha256"] == sha256(
        data_dir / "tasks" / "piqa" / "valid.jsonl"
    )
    # a second run reads the gradient cache and still says what the pass read
    assert main_cli.main(argv + ["--overwrite"]) == 0
    again = json.loads(log.read_text())["data_provenance"]
    assert again["gradients"] == grads and again["calibration"] == prov["calibration"]
