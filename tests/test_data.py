"""Local data sets, the calibration sampler and the evaluation stream."""

import random

import pytest
import torch

import lib.data
from lib.data import (
    eval_token_stream,
    evaluation_stream,
    load_texts,
    resolve_data_dir,
    resolve_tasks_dir,
    sample_calibration,
)


def test_resolve_data_dir(tmp_path, monkeypatch, data_dir):
    monkeypatch.delenv("ALP_DATA_DIR", raising=False)
    monkeypatch.setattr(lib.data, "hub_reachable", lambda: True)
    assert resolve_data_dir(None) is None
    assert resolve_data_dir(None, needed=("c4",)) is None  # the hub will serve it
    with pytest.raises(ValueError, match="does not exist"):
        resolve_data_dir(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="lacks c4/"):
        resolve_data_dir(str(tmp_path), needed=("c4",))
    monkeypatch.setenv("ALP_DATA_DIR", str(data_dir))
    assert resolve_data_dir(None, needed=("c4", "wikitext2")) == data_dir


def test_local_sets(data_dir):
    rows = load_texts("wikitext2", data_dir)
    assert len(rows) == 4358 and rows[0] == "" and rows[1] == " = Robert Boulter = \n"
    assert len(load_texts("c4", data_dir)) == 1000
    with pytest.raises(ValueError, match="unknown data set"):
        load_texts("ptb", data_dir)


def reference_sampler(tokenizer, docs, nsamples, seqlen, seed):
    """The SparseGPT/Wanda get_c4 loop, verbatim in behaviour (global random, lazy tokenization)."""
    random.seed(seed)
    out = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(docs) - 1)
            ids = tokenizer(docs[i], return_tensors="pt").input_ids
            if ids.shape[1] > seqlen:
                break
        i = random.randint(0, ids.shape[1] - seqlen - 1)
        out.append(ids[:, i : i + seqlen])
    return torch.cat(out)


def test_classic_sampler_matches_reference(data_dir, smollm2_tokenizer):
    docs = load_texts("c4", data_dir)
    ids, note = sample_calibration(smollm2_tokenizer, docs, nsamples=10, seqlen=64, seed=0)
    assert note.startswith("classic sampler")
    torch.testing.assert_close(ids, reference_sampler(smollm2_tokenizer, docs, 10, 64, 0))


def test_sampler_is_deterministic_and_seeded(data_dir, smollm2_tokenizer):
    docs = load_texts("c4", data_dir)[:200]
    a, _ = sample_calibration(smollm2_tokenizer, docs, nsamples=6, seqlen=128, seed=3)
    b, _ = sample_calibration(smollm2_tokenizer, docs, nsamples=6, seqlen=128, seed=3)
    c, _ = sample_calibration(smollm2_tokenizer, docs, nsamples=6, seqlen=128, seed=4)
    assert a.shape == (6, 128) and torch.equal(a, b) and not torch.equal(a, c)


def test_small_pool_switches_to_concatenation_and_says_so(data_dir, smollm2_tokenizer):
    docs = load_texts("c4", data_dir)
    ids, note = sample_calibration(smollm2_tokenizer, docs, nsamples=128, seqlen=2048, seed=0)
    assert ids.shape == (128, 2048)
    assert "documents exceed 2048 tokens" in note and "concatenated" in note
    assert len({tuple(row[:16].tolist()) for row in ids}) == 128  # distinct windows


def test_wikitext_stream(data_dir, smollm2_tokenizer):
    stream = eval_token_stream(smollm2_tokenizer, load_texts("wikitext2", data_dir))
    assert stream.shape == (1, 304_986)  # the count stated in shared/data/README.md


@pytest.mark.parametrize("how", ["unreachable", "offline_env"])
def test_no_silent_fallback_without_local_data(how, monkeypatch):
    """No folder beside the checkout is used when the hub is unusable and none is named: one line
    saying how to point at local data (even though ../shared/data exists on this machine)."""
    monkeypatch.delenv("ALP_DATA_DIR", raising=False)
    if how == "unreachable":
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(lib.data, "hub_reachable", lambda: False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for call in (
        lambda: resolve_data_dir(None, needed=("wikitext2",)),
        lambda: load_texts("c4", None),
        lambda: resolve_tasks_dir(None),
        lambda: evaluation_stream("c4", None, None, 32),
    ):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert "--data_dir" in message and "ALP_DATA_DIR" in message and "\n" not in message
    assert resolve_data_dir(None) is None  # nothing needed: nothing to complain about
