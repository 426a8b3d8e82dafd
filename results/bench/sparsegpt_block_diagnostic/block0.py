"""Block-0 masks: our pipeline on the truncated checkpoint cut to 1 block vs their 4-block result's block 0."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout
from lib.arch import decoder_blocks, prunable_linears  # noqa: E402
from lib.masks import SparsityPattern  # noqa: E402
from lib.models import ModelSource, load_model  # noqa: E402
from lib.prune import prune_model  # noqa: E402
from lib.pruners import PrunerOptions  # noqa: E402

work = sys.argv[1]
dtype = getattr(torch, sys.argv[2])
ids = torch.load(f"{work}/calib.pt")
model, _ = load_model(ModelSource("dir", f"{work}/truncated-4", "t4"), device=torch.device("cpu"), dtype=dtype)
del decoder_blocks(model)[1:]
prune_model(
    model,
    pruner_name="sparsegpt",
    ratios=[0.7],
    calib_ids=ids,
    pattern=SparsityPattern(),
    micro_batch=4,
    options=PrunerOptions(blocksize=128, percdamp=0.01),
)
theirs, _ = load_model(ModelSource("dir", f"{work}/theirs-sparsegpt", "th"), device=torch.device("cpu"), dtype=dtype)
ob, tb = prunable_linears(model)[0], prunable_linears(theirs)[0]
for name in ob:
    a, b = ob[name].weight == 0, tb[name].weight == 0
    print(name, "disagree", int((a != b).sum()), "of", a.numel(), f"{float((a != b).float().mean()):.5f}")
