"""Subprocess for tests/test_placement.py: load a checkpoint folder from disk, prune it with the
sequential engine, and print (as JSON) the model's size, one block's size, the predicted working
set of pruning (``lib.placement.predicted_peak_memory`` less the weights) and the process's peak
RSS growth while pruning. Run in a fresh process so nothing else shares the RSS figure.

Method: a warm-up run on 2 x 16 tokens sets up BLAS / LAPACK and the allocator; every weight is
made resident; ``/proc/self/clear_refs`` resets the peak (VmHWM) to the current RSS; the growth
is VmHWM after pruning minus VmRSS before it. Calibration tokens are random (memory does not
depend on their values).

Usage: python tests/memory_probe.py CHECKPOINT PRUNER [--nsamples N --seqlen T --micro_batch M
       --dtype float32|bfloat16]   (CHECKPOINT ``smollm2``: the embedded SmolLM2, converted)
"""

import argparse
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
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("pruner")
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--micro_batch", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--layers", type=int, default=None, help="keep the first N decoder blocks (LLaMA-like)")
    args = parser.parse_args()
    folder, pruner, dtype = args.checkpoint, args.pruner, getattr(torch, args.dtype)
    if folder == "smollm2":
        from lib.models import embedded_gguf, gguf_checkpoint

        folder = gguf_checkpoint(embedded_gguf())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map="cpu").eval()
    if args.layers is not None:  # the working set is per block: fewer blocks, the same figure, less time
        model.model.layers = model.model.layers[: args.layers]
        model.config.num_hidden_layers = args.layers
    calib = torch.randint(3, model.config.vocab_size, (args.nsamples, args.seqlen))
    blocks = decoder_blocks(model)
    ratios = [0.5] * len(blocks)
    # Warm-up run on a few tokens: BLAS / LAPACK and the allocator set up their buffers once.
    prune_model(model, pruner_name=pruner, ratios=ratios, calib_ids=calib[:2, :16], pattern=SparsityPattern())
    with torch.no_grad():  # every weight resident in private memory, as a model loaded from any format
        for p in model.parameters():
            p.add_(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = status_bytes("VmRSS")
    m = args.micro_batch
    prune_model(model, pruner_name=pruner, ratios=ratios, calib_ids=calib, pattern=SparsityPattern(), micro_batch=m)
    predicted = predicted_peak_memory(
        model,
        nsamples=calib.shape[0],
        seqlen=calib.shape[1],
        micro_batch=m,
        dtype=dtype,
        needs=PRUNERS[pruner].needs,
        placement="device",
        device=torch.device("cpu"),
    )
    figures = {
        "command": "python tests/memory_probe.py " + " ".join(sys.argv[1:]),
        "method": "peak RSS growth while pruning: VmHWM after minus VmRSS before (clear_refs 5), after a warm-up",
        "settings": {**vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "predicted": predicted.as_dict(),
        "model_bytes": predicted.weights,
        "block_bytes": predicted.block,
        "predicted_working_set": predicted.device - predicted.weights,
        "rss_before": before,
        "peak_growth": status_bytes("VmHWM") - before,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
