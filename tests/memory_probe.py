"""Subprocess for tests/test_placement.py: load a checkpoint folder from disk, prune it with the
sequential engine, and print (as JSON) the model's size, one block's size and the process's
peak RSS growth while pruning. Run in a fresh process so nothing else shares the RSS figure.

Usage: python tests/memory_probe.py CHECKPOINT PRUNER
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import AutoModelForCausalLM  # noqa: E402

from lib.arch import decoder_blocks  # noqa: E402
from lib.masks import SparsityPattern  # noqa: E402
from lib.placement import predicted_peak_memory  # noqa: E402
from lib.prune import prune_model  # noqa: E402
from lib.pruners import PRUNERS  # noqa: E402


def status_bytes(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process from /proc, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def main() -> None:
    folder, pruner = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu").eval()
    calib = torch.randint(3, model.config.vocab_size, (8, 128))
    blocks = decoder_blocks(model)
    ratios = [0.5] * len(blocks)
    # Warm-up run on a few tokens: BLAS / LAPACK and the allocator set up their buffers once.
    prune_model(model, pruner_name=pruner, ratios=ratios, calib_ids=calib[:2, :16], pattern=SparsityPattern())
    with torch.no_grad():  # every weight resident in private memory, as a model loaded from any format
        for p in model.parameters():
            p.add_(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = status_bytes("VmRSS")
    prune_model(model, pruner_name=pruner, ratios=ratios, calib_ids=calib, pattern=SparsityPattern(), micro_batch=2)
    predicted = predicted_peak_memory(
        model,
        nsamples=calib.shape[0],
        seqlen=calib.shape[1],
        micro_batch=2,
        dtype=torch.float32,
        needs=PRUNERS[pruner].needs,
        placement="device",
        device=torch.device("cpu"),
    )
    figures = {
        "model_bytes": predicted.weights,
        "block_bytes": predicted.block,
        "predicted_working_set": predicted.device - predicted.weights,
        "rss_before": before,
        "peak_growth": status_bytes("VmHWM") - before,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
