"""Our Wanda / SparseGPT against llm-compressor's one-shot ones: same model, calibration, sparsity, machine.

1. Loads the model (default: the embedded SmolLM2, whose converted checkpoint folder both sides
   read), draws the calibration windows with this project's C4 sampler and saves them for the peer.
2. Per method (``--methods``): prunes a fresh copy in-process with ``lib.prune.prune_model``
   (uniform ratio, unstructured), timing only that call; then runs llm-compressor's ``oneshot`` with
   ``WandaPruningModifier`` / ``SparseGPTModifier`` on the same ids in a worker process in a separate
   virtual environment, timing only the ``oneshot`` call; the worker saves the pruned checkpoint.
3. Evaluates both pruned models (and the dense one) with this project's WikiText-2 perplexity, and
   measures the actual sparsity of the decoder blocks' linears of both (a no-op run cannot pass as
   fast: ``sparsity_ok`` is false and the exit status 1 when a result misses the target).
Prints a table per method, then the figures as one JSON object on the last line:
``wanda_time_ratio`` / ``sparsegpt_time_ratio`` = our seconds / theirs (< 1: we are faster),
``seconds_ours`` / ``seconds_theirs``, ``ppl_ours`` / ``ppl_theirs`` / ``sparsity_*`` per method.
With ``--repeats N`` each side prunes N fresh copies per method (theirs: N worker processes):
``seconds_*`` are then the medians, ``seconds_*_runs`` every run, and the ratio is of medians;
perplexity and sparsity come from the first run of each side. ``timing_scope`` says what each
side's seconds include; ``load_average`` is the machine's 1-minute load before and after.

The peer environment: llm-compressor is never a dependency of this project. The first run creates
a virtual environment (``python -m venv``, default ~/.cache/alp/peers-venv, ``--venv PATH``) and
installs the pinned CPU torch and llmcompressor into it (about a minute; its time is recorded in
the venv and reported as ``venv_install_seconds``); later runs reuse it. ``--python PATH`` uses an
existing interpreter that already has llmcompressor instead. The worker runs offline.

Settings on both sides: the same dtype (``--dtype``, auto as main.py), calibration sequences per
forward (``--calib_batch_size``), torch threads (the machine's default); block-by-block (sequential)
calibration where block l+1 sees the outputs of the pruned block l (their ``propagate_error``
default); only the decoder blocks' linears are pruned (theirs: ``targets=Linear``,
``ignore=re:.*lm_head``; SmolLM2's head is tied to the embeddings); Wanda scores |W| * ||X_j||,
floor(C_in * s) per output row; SparseGPT with 128-column blocks, 1 % damping of the mean Hessian
diagonal, fp32 maths (on the same fp32 ``W`` and ``H`` of a SmolLM2 layer the two kernels give the same
reconstruction error to 2e-4 relative: ``results/bench/sparsegpt_kernel_pair.json``). What differs:
  - timing scope: ours is the whole ``prune_model`` (block-0 input capture, statistics, pruning,
    propagation); theirs the whole ``oneshot`` (session and dataloader set-up, torch.fx tracing
    of the model into per-block subgraphs, calibration, pruning, propagation, finalize). Model
    loading, saving and evaluation are outside both;
  - SparseGPT mask: they prune every weight whose score is <= the value at rank
    floor(n * s) of each 128-column block (floor(n * s) + 1 weights, more on ties); we prune
    exactly floor(n * s). A Hessian that fails Cholesky: we re-damp x10, they use the identity;
  - statistics: they keep one Hessian / norm per linear (q, k, v separately); we share one
    per input tensor (same values);
  - inputs: they get an all-ones attention mask and batch the sequences in their length-sorted
    order (all lengths equal, so any order: same data, other bf16 rounding); we pass the ids alone;
  - attention: their calibration forces eager attention (softmax in fp32), ours runs the model's
    default (SDPA): the same maths, other rounding in bf16;
  - the peer venv holds a CPU torch, so on a CUDA machine their side runs on the CPU unless
    ``--python`` points at an interpreter with CUDA torch (untested here).

Examples:
  python scripts/bench_peers.py                                        # reference settings
  python scripts/bench_peers.py --nsamples 8 --seqlen 256 --eval_windows 2   # quick check
  python scripts/bench_peers.py --dtype float32 --nsamples 16 --seqlen 512   # fp32 quality pair
  python scripts/bench_peers.py --kernel_block 5 --dtype float32 --nsamples 8   # the two kernels, one block
  python scripts/bench_peers.py --repeats 3 --nsamples 8 --seqlen 512 --eval_windows 4   # speed medians
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("wanda", "sparsegpt")
PEER_PINS = {"torch": "2.13.0", "llmcompressor": "0.14.0.1"}
CPU_TORCH_FIND_LINKS = Path("/opt/wheels")  # local CPU torch wheel on this kind of machine
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # elsewhere: the CPU build from pytorch.org
DEFAULT_VENV = Path.home() / ".cache" / "alp" / "peers-venv"
MARKER = "alp-peers.json"  # written into the venv once its install succeeded
BLOCKSIZE, PERCDAMP = 128, 0.01  # SparseGPT settings, ours and theirs
TIMING_SCOPE = {
    "ours": "lib.prune.prune_model only: block-0 input capture, statistics, pruning, propagation "
    "(model loading, evaluation outside)",
    "theirs": "llmcompressor.oneshot only: session and dataloader set-up, torch.fx tracing into per-block "
    "subgraphs, calibration, pruning, propagation, finalize (model loading, saving, evaluation outside)",
}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONNOUSERSITE": "1"}  # fmt: skip


class BenchError(Exception):
    """A failure with a message that says what went wrong (printed without a traceback)."""


# ----------------------------------------------------------------------------- peer environment


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_logged(cmd: list[str], what: str, env: dict | None = None) -> str:
    """Run ``cmd``, return its output; on failure raise with the command and its last lines."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if proc.returncode != 0:
        raise BenchError(
            f"{what} failed (exit {proc.returncode}):\n  $ {' '.join(cmd)}\n--- last lines ---\n{_tail(proc.stdout)}"
        )
    return proc.stdout


PROBE = (
    "import json, torch, transformers, datasets, llmcompressor; "
    "print(json.dumps({'torch': torch.__version__, 'transformers': transformers.__version__, "
    "'datasets': datasets.__version__, 'llmcompressor': llmcompressor.__version__, "
    "'cuda': torch.cuda.is_available()}))"
)


def probe(python: str) -> dict:
    """Versions of the peer interpreter's packages (raises when llmcompressor is not importable)."""
    env = {**os.environ, **OFFLINE_ENV}
    env.pop("PYTHONPATH", None)
    out = _run_logged([python, "-c", PROBE], f"importing llmcompressor with {python}", env=env)
    return json.loads(out.strip().splitlines()[-1])


def install_venv(venv: Path) -> float:
    """Create ``venv`` and install the pinned CPU torch, then llmcompressor; return the seconds."""
    if venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").is_file():
        raise BenchError(f"--venv {venv} exists, is not empty and is not a virtual environment; choose another path")
    print(f"[peers] creating {venv} and installing llmcompressor=={PEER_PINS['llmcompressor']} (once)", flush=True)
    start = time.perf_counter()
    _run_logged([sys.executable, "-m", "venv", "--clear", str(venv)], "creating the virtual environment")
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    if any(CPU_TORCH_FIND_LINKS.glob(f"torch-{PEER_PINS['torch']}+cpu-*.whl")):
        torch_source = ["--find-links", str(CPU_TORCH_FIND_LINKS)]
    else:
        torch_source = ["--extra-index-url", CPU_TORCH_INDEX]
    _run_logged([*pip, *torch_source, f"torch=={PEER_PINS['torch']}"], "installing CPU torch into the peer venv")
    # torch is already satisfied, so llmcompressor cannot pull another (CUDA) build
    _run_logged([*pip, f"llmcompressor=={PEER_PINS['llmcompressor']}"], "installing llmcompressor into the peer venv")
    seconds = time.perf_counter() - start
    versions = probe(python)
    (venv / MARKER).write_text(json.dumps({"pins": PEER_PINS, "install_seconds": seconds, "versions": versions}))
    print(f"[peers] installed in {seconds:.1f} s: {versions}", flush=True)
    return seconds


def peer_python(args) -> tuple[str, dict, dict]:
    """``(interpreter, versions, install record)`` of the peer side, installing the venv if needed."""
    if args.python:
        python = shutil.which(args.python) or args.python
        if not Path(python).is_file():
            raise BenchError(f"--python {args.python}: no such interpreter")
        return python, probe(python), {"venv": None, "install_seconds": None, "installed_now": False}
    venv = Path(args.venv).expanduser().resolve() if args.venv else DEFAULT_VENV
    python = str(venv / "bin" / "python")
    marker = venv / MARKER
    record = json.loads(marker.read_text()) if marker.is_file() else {}
    installed_now = record.get("pins") != PEER_PINS or not Path(python).is_file()
    if installed_now:
        install_venv(venv)
        record = json.loads(marker.read_text())
    versions = probe(python)
    if versions["llmcompressor"] != PEER_PINS["llmcompressor"]:
        raise BenchError(f"{venv} has llmcompressor {versions['llmcompressor']}, expected {PEER_PINS['llmcompressor']}")
    install = {"venv": str(venv), "install_seconds": record["install_seconds"], "installed_now": installed_now}
    return python, versions, install


# ----------------------------------------------------------------------------- worker (peer venv)


def kernel_worker(spec: dict) -> int:
    """Run in the peer venv: llm-compressor's SparseGPT kernel (``sparsify_weight``, an internal
    function of the pinned version) on each saved fp32 ``W`` / ``H``; saves the pruned weights."""
    import torch
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight

    layers = torch.load(spec["layers"], weights_only=True)
    pruned = {}
    for name, layer in layers.items():
        linear = torch.nn.Linear(layer["W"].shape[1], layer["W"].shape[0], bias=False)
        linear.weight.data = layer["W"].clone()
        hessians = {linear: layer["H"].clone()}
        _, pruned[name] = sparsify_weight(linear, hessians, spec["sparsity"], 0, 0, spec["blocksize"],
                                          spec["percdamp"], False)  # fmt: skip
    torch.save({name: w.detach() for name, w in pruned.items()}, spec["out"])
    Path(spec["result"]).write_text(json.dumps({"layers": list(pruned)}))
    return 0


def worker(spec_path: str) -> int:
    """Run in the peer venv: llm-compressor one-shot pruning of the checkpoint, timed, then saved.

    Imports only torch, transformers, datasets and llmcompressor (never this project's lib).
    """
    import torch
    import transformers
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    spec = json.loads(Path(spec_path).read_text())
    if spec["method"] == "kernel":
        return kernel_worker(spec)
    dtype = getattr(torch, spec["dtype"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec["checkpoint"])
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["checkpoint"], dtype=dtype)
    if spec["device"] != "cpu":
        model.to(spec["device"])
    model.eval()
    model.config.use_cache = False
    ids = torch.load(spec["calib"], weights_only=True)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    common = {"sparsity": spec["sparsity"], "mask_structure": "0:0", "targets": ["Linear"], "ignore": ["re:.*lm_head"]}
    if spec["method"] == "wanda":
        modifier = WandaPruningModifier(**common)
    else:
        modifier = SparseGPTModifier(**common, block_size=spec["blocksize"], dampening_frac=spec["percdamp"])

    start = time.perf_counter()
    oneshot(
        model=model,
        processor=tokenizer,
        recipe=modifier,
        dataset=dataset,
        num_calibration_samples=ids.shape[0],
        max_seq_length=ids.shape[1],
        batch_size=spec["batch_size"],
        shuffle_calibration_samples=False,
        pipeline="sequential",
        output_dir=None,
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    # oneshot wraps model.save_pretrained to write compressed-tensors formats; the class's own
    # method writes a plain dense checkpoint that the project's transformers loads as is.
    type(model).save_pretrained(model, spec["out_dir"])
    tokenizer.save_pretrained(spec["out_dir"])
    result = {"seconds": seconds, "threads": torch.get_num_threads(), "device": spec["device"]}
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- driver (project env)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder or .gguf (default: the embedded SmolLM2)")
    p.add_argument("--methods", default="wanda,sparsegpt", help="comma-separated subset of wanda,sparsegpt")
    p.add_argument("--sparsity_ratio", type=float, default=0.7, help="uniform unstructured sparsity in (0, 1)")
    p.add_argument("--nsamples", type=int, default=128, help="calibration sequences")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration sequence")
    p.add_argument("--seed", type=int, default=0, help="calibration sampler seed")
    p.add_argument("--calib_batch_size", type=int, default=4, help="calibration sequences per forward, both sides")
    p.add_argument("--eval_seqlen", type=int, default=2048, help="perplexity window")
    p.add_argument("--eval_windows", type=int, default=None, help="first N WikiText-2 windows (default: all)")
    p.add_argument("--skip_dense", action="store_true", help="skip the dense perplexity")
    p.add_argument("--device", default="cpu", help="cpu (the peer venv's torch is CPU-only), or cuda with --python")
    p.add_argument("--dtype", default="auto", help="auto (as main.py), float32, bfloat16, float16")
    p.add_argument("--data_dir", default=None, help="local data folder (default: $ALP_DATA_DIR)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--venv", default=None, help=f"peer virtual environment (default {DEFAULT_VENV}; created once)")
    g.add_argument("--python", default=None, help="existing interpreter with llmcompressor (no venv is created)")
    p.add_argument("--repeats", type=int, default=1, help="prunings per method and side; seconds are medians")
    p.add_argument("--blocks", type=int, default=None,
                   help="keep only the first N decoder blocks (a truncated checkpoint that both sides read), "
                        "to fit a slow machine; perplexities are then of that truncated model")  # fmt: skip
    p.add_argument("--kernel_block", type=int, default=None,
                   help="instead: both SparseGPT kernels on the fp32 W and H of this decoder block's linears "
                        "(dense model, the calibration ids); compares masks and reconstruction errors")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (calibration ids, peer models, logs)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def check_args(args) -> list[str]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise BenchError(f"--methods {args.methods}: choose among {','.join(METHODS)}")
    if not 0 < args.sparsity_ratio < 1:
        raise BenchError("--sparsity_ratio must be in (0, 1)")
    for flag in ("nsamples", "seqlen", "calib_batch_size", "eval_seqlen", "repeats"):
        if getattr(args, flag) < 1:
            raise BenchError(f"--{flag} must be a positive integer")
    if args.blocks is not None and args.blocks < 1:
        raise BenchError("--blocks must be a positive integer")
    if args.eval_windows is not None and args.eval_windows < 1:
        raise BenchError("--eval_windows must be a positive integer")
    return list(dict.fromkeys(methods))


def run_worker(python: str, spec: dict, work: Path) -> dict:
    """Run the peer worker for one method; return its result (raises with its log's tail on failure)."""
    tag = Path(spec["result"]).stem.replace("result-", "")
    spec_path = work / f"spec-{tag}.json"
    spec_path.write_text(json.dumps(spec))
    log = work / f"worker-{tag}.log"
    env = {**os.environ, **OFFLINE_ENV}
    env.pop("PYTHONPATH", None)
    cmd = [python, str(Path(__file__).resolve()), "--worker", str(spec_path)]
    print(f"[peers] llm-compressor {spec['method']} (log: {log})", flush=True)
    start = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=work).returncode
    wall = time.perf_counter() - start
    if code != 0 or not Path(spec["result"]).is_file():
        raise BenchError(
            f"llm-compressor {spec['method']} worker failed (exit {code}):\n  $ {' '.join(cmd)}\n"
            f"--- last lines of {log} ---\n{_tail(log.read_text(), 40)}"
        )
    return {**json.loads(Path(spec["result"]).read_text()), "wall": wall}


def truncated_checkpoint(model, tokenizer, source, blocks: int, work: Path):
    """Save ``model`` cut to its first ``blocks`` decoder blocks under ``work``; ``(source, folder)``."""
    from lib.arch import decoder_blocks
    from lib.models import ModelSource

    layers = decoder_blocks(model)
    if blocks >= len(layers):
        raise BenchError(f"--blocks {blocks}: the model has only {len(layers)} decoder blocks")
    del layers[blocks:]
    model.config.num_hidden_layers = blocks
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = model.config.layer_types[:blocks]
    folder = work / f"truncated-{blocks}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return ModelSource("dir", str(folder), f"{source.name}-first{blocks}blocks"), str(folder)


def pruned_masks(model) -> list[list]:
    """``weight == 0`` of every decoder-block linear: one list of bool tensors per block, in module order."""
    from lib.arch import prunable_linears

    return [[lin.weight.detach() == 0 for lin in block.values()] for block in prunable_linears(model)]


def agreement(ours: list[list], theirs: list[list]) -> dict:
    """Fraction of decoder-linear weights pruned on both sides or kept on both: overall and per block."""
    same = [
        [int((a == b.to(a.device)).sum()) for a, b in zip(x, y, strict=True)] for x, y in zip(ours, theirs, strict=True)
    ]
    sizes = [[a.numel() for a in x] for x in ours]
    per_block = [round(sum(s) / sum(n), 6) for s, n in zip(same, sizes, strict=True)]
    return {"all": round(sum(map(sum, same)) / sum(map(sum, sizes)), 6), "per_block": per_block}


def drive(args) -> int:
    methods = check_args(args)
    import torch

    sys.path.insert(0, str(ROOT))
    from lib.data import evaluation_stream, load_texts, resolve_data_dir, sample_calibration
    from lib.eval import perplexity
    from lib.masks import SparsityPattern
    from lib.models import ModelSource, gguf_checkpoint, load_model, resolve_model_source
    from lib.prune import measure_sparsity, prune_model
    from lib.pruners import PrunerOptions
    from lib.utils import free_memory, print_figures, resolve_device, resolve_dtype

    try:
        data_dir = resolve_data_dir(args.data_dir, needed=("wikitext2", "c4"))
        source = resolve_model_source(args.model)
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
    except ValueError as err:
        raise BenchError(str(err)) from err
    if source.kind == "hub":
        raise BenchError(f"--model {args.model}: the offline peer worker needs a local checkpoint folder or .gguf")
    checkpoint = str(gguf_checkpoint(source.location)) if source.kind == "gguf" else source.location
    python, versions, install = peer_python(args)
    if device.type == "cuda" and not versions["cuda"]:
        raise BenchError(f"--device {args.device}: the peer interpreter {python} has a CPU-only torch; pass --python")
    dtype_name = str(dtype).replace("torch.", "")
    print(f"[bench] {source.name} on {device} in {dtype_name}, {torch.get_num_threads()} threads; peer: {versions}")

    model, tokenizer = load_model(source, device=device, dtype=dtype)
    work = Path(tempfile.mkdtemp(prefix="alp-peers-"))
    if args.blocks is not None:
        source, checkpoint = truncated_checkpoint(model, tokenizer, source, args.blocks, work)
        model, tokenizer = load_model(source, device=device, dtype=dtype)
    ids, calib_note = sample_calibration(
        tokenizer, load_texts("c4", data_dir), nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed
    )
    print(f"[calibration] {calib_note}")
    if args.kernel_block is not None:
        shutil.rmtree(work, ignore_errors=True)
        return kernel_pair(args, model, ids, python, versions)
    stream, _ = evaluation_stream("wikitext2", tokenizer, data_dir, args.eval_seqlen)

    def ppl(m) -> float:
        return perplexity(m, stream, seqlen=args.eval_seqlen, max_windows=args.eval_windows)["ppl"]

    windows = min(stream.shape[1] // args.eval_seqlen, args.eval_windows or stream.shape[1])
    ppl_dense = None if args.skip_dense else ppl(model)
    del model
    free_memory()

    load_before = os.getloadavg()[0]
    seconds_ours, seconds_theirs, wall_theirs, peer_threads = {}, {}, {}, None
    runs_ours, runs_theirs, obs_ours, masks_ours, mask_agreement = {}, {}, {}, {}, {}
    ppl_ours, ppl_theirs, sparsity_ours, sparsity_theirs = {}, {}, {}, {}
    try:
        calib_path = work / "calib.pt"
        torch.save(ids, calib_path)
        for method in methods:
            runs_ours[method], runs_theirs[method], wall_theirs[method] = [], [], []
            out_dir = work / f"theirs-{method}"
            for repeat in range(args.repeats):  # ours, theirs, ours, ...: both sides see the same load drift
                model, _ = load_model(source, device=device, dtype=dtype)
                blocks = len(measure_sparsity(model)[1])
                start = time.perf_counter()
                sweeps = prune_model(
                    model,
                    pruner_name=method,
                    ratios=[args.sparsity_ratio] * blocks,
                    calib_ids=ids,
                    pattern=SparsityPattern(),
                    micro_batch=args.calib_batch_size,
                    device=device,
                    options=PrunerOptions(blocksize=BLOCKSIZE, percdamp=PERCDAMP),
                )
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                runs_ours[method].append(time.perf_counter() - start)
                if repeat == 0:
                    obs_ours[method] = {"redamped": len(sweeps["redamped"]), "dead_zeroed": sweeps["dead_zeroed"]}
                    masks_ours[method] = pruned_masks(model)
                    sparsity_ours[method] = measure_sparsity(model)[0]
                    ppl_ours[method] = ppl(model)
                del model
                free_memory()
                print(
                    f"[bench] {method} ours run {repeat + 1}/{args.repeats}: {runs_ours[method][-1]:.1f} s", flush=True
                )
                run_dir = out_dir if repeat == 0 else work / f"theirs-{method}-{repeat}"
                spec = {"method": method, "checkpoint": checkpoint, "calib": str(calib_path), "dtype": dtype_name,
                        "device": str(device), "sparsity": args.sparsity_ratio, "batch_size": args.calib_batch_size,
                        "blocksize": BLOCKSIZE, "percdamp": PERCDAMP, "out_dir": str(run_dir),
                        "result": str(work / f"result-{method}-{repeat}.json")}  # fmt: skip
                result = run_worker(python, spec, work)
                runs_theirs[method].append(result["seconds"])
                wall_theirs[method].append(result["wall"])
                peer_threads = result["threads"]
                if repeat:  # only the first run's model is evaluated
                    shutil.rmtree(spec["out_dir"], ignore_errors=True)
                print(f"[bench] {method} theirs run {repeat + 1}/{args.repeats}: {result['seconds']:.1f} s", flush=True)
            seconds_ours[method] = statistics.median(runs_ours[method])
            seconds_theirs[method] = statistics.median(runs_theirs[method])
            config = json.loads((out_dir / "config.json").read_text())
            if "quantization_config" in config:
                raise BenchError(f"peer checkpoint {out_dir} saved compressed: {config['quantization_config']}")
            peer_source = ModelSource("dir", str(out_dir), f"{source.name}-llmc-{method}")
            model, _ = load_model(peer_source, device=device, dtype=dtype)
            sparsity_theirs[method] = measure_sparsity(model)[0]
            mask_agreement[method] = agreement(masks_ours.pop(method), pruned_masks(model))
            ppl_theirs[method] = ppl(model)
            del model
            free_memory()
            print(
                f"[bench] {method}: ours {seconds_ours[method]:.1f} s, ppl {ppl_ours[method]:.3f}, sparsity "
                f"{sparsity_ours[method]:.4f} | theirs {seconds_theirs[method]:.1f} s, ppl {ppl_theirs[method]:.3f}, "
                f"sparsity {sparsity_theirs[method]:.4f}",
                flush=True,
            )
    finally:
        if args.keep:
            print(f"[bench] kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    tolerance = 0.01
    sparsity_ok = all(
        abs(s[m] - args.sparsity_ratio) <= tolerance for s in (sparsity_ours, sparsity_theirs) for m in methods
    )
    print("\n| method | seconds ours | seconds theirs | ours/theirs | ppl ours | ppl theirs | sparsity ours | "
          "sparsity theirs |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for m in methods:
        cells = [f"{seconds_ours[m]:.2f}", f"{seconds_theirs[m]:.2f}", f"{seconds_ours[m] / seconds_theirs[m]:.3f}",
                 f"{ppl_ours[m]:.3f}", f"{ppl_theirs[m]:.3f}", f"{sparsity_ours[m]:.4f}",
                 f"{sparsity_theirs[m]:.4f}"]  # fmt: skip
        print(f"| {m} | {' | '.join(cells)} |")
    print()

    def rounded(values: dict, digits: int) -> dict:
        return {k: round(v, digits) for k, v in values.items()}

    figures = {f"{m}_time_ratio": seconds_ours[m] / seconds_theirs[m] for m in methods}
    figures.update({
        "seconds_ours": rounded(seconds_ours, 3),
        "seconds_theirs": rounded(seconds_theirs, 3),
        "repeats": args.repeats,
        "seconds_ours_runs": {m: [round(x, 3) for x in v] for m, v in runs_ours.items()},
        "seconds_theirs_runs": {m: [round(x, 3) for x in v] for m, v in runs_theirs.items()},
        "worker_wall_seconds": {m: [round(x, 3) for x in v] for m, v in wall_theirs.items()},
        "timing_scope": TIMING_SCOPE,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "ppl_ours": rounded(ppl_ours, 4),
        "ppl_theirs": rounded(ppl_theirs, 4),
        "ppl_dense": ppl_dense,
        "sparsity_ours": rounded(sparsity_ours, 5),
        "sparsity_theirs": rounded(sparsity_theirs, 5),
        "sparsity_ok": sparsity_ok,
        "obs_sweeps_ours": obs_ours,
        "mask_agreement": mask_agreement,
        "blocks": args.blocks,
        "model": source.name,
        "sparsity_ratio": args.sparsity_ratio,
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "calib_batch_size": args.calib_batch_size,
        "eval_windows": windows,
        "eval_seqlen": args.eval_seqlen,
        "device": str(device),
        "dtype": dtype_name,
        "threads": torch.get_num_threads(),
        "versions_ours": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "peer_threads": peer_threads,
        "peer_versions": versions,
        "venv": install["venv"],
        "venv_install_seconds": install["install_seconds"],
        "venv_installed_now": install["installed_now"],
    })  # fmt: skip
    print_figures(figures)
    if not sparsity_ok:
        print(f"[bench] a result misses the target sparsity {args.sparsity_ratio} by more than {tolerance}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def kernel_pair(args, model, ids, python: str, versions: dict) -> int:
    """Our ``obs_sweep`` and llm-compressor's ``sparsify_weight`` on the same fp32 ``W`` and ``H``
    (``2/n X X^T`` over the calibration ids, dense model) of every linear of one decoder block."""
    import torch

    from lib.arch import block_linears, decoder_blocks
    from lib.obs import obs_sweep
    from lib.stats import InputStatistics

    blocks = decoder_blocks(model)
    if not 0 <= args.kernel_block < len(blocks):
        raise BenchError(f"--kernel_block {args.kernel_block}: the model has blocks 0..{len(blocks) - 1}")
    linears = block_linears(blocks[args.kernel_block])

    class Stop(Exception):
        pass

    def stop(*_):
        raise Stop

    handle = blocks[args.kernel_block].register_forward_hook(stop)
    with torch.no_grad(), InputStatistics(linears, {"hessian"}) as collected:
        for chunk in ids.split(args.calib_batch_size):
            with contextlib.suppress(Stop):
                model(chunk.to(model.device), use_cache=False)
    handle.remove()
    hessians = collected.hessians()
    layers = {
        name: {"W": lin.weight.detach().float().cpu(), "H": hessians[name].cpu()} for name, lin in linears.items()
    }
    work = Path(tempfile.mkdtemp(prefix="alp-kernel-"))
    try:
        torch.save(layers, work / "layers.pt")
        spec = {"method": "kernel", "layers": str(work / "layers.pt"), "out": str(work / "theirs.pt"),
                "sparsity": args.sparsity_ratio, "blocksize": BLOCKSIZE, "percdamp": PERCDAMP,
                "result": str(work / "result-kernel.json")}  # fmt: skip
        run_worker(python, spec, work)
        theirs = torch.load(work / "theirs.pt", weights_only=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def error(W, pruned, H) -> float:  # tr((W - W') H (W - W')^T), float64
        D = (W - pruned).double()
        return float(torch.einsum("ij,jk,ik->", D, H.double(), D))

    rows = {}
    for name, layer in layers.items():
        W, H = layer["W"], layer["H"]
        ours = obs_sweep(W, H, percdamp=PERCDAMP, blocksize=BLOCKSIZE, sparsity=args.sparsity_ratio)
        mask_ours, mask_theirs = ours == 0, theirs[name] == 0
        rows[name] = {"shape": list(W.shape), "pruned_ours": int(mask_ours.sum()),
                      "pruned_theirs": int(mask_theirs.sum()), "mask_disagree": int((mask_ours != mask_theirs).sum()),
                      "error_ours": error(W, ours, H), "error_theirs": error(W, theirs[name], H)}  # fmt: skip
        rows[name]["error_ratio"] = rows[name]["error_ours"] / rows[name]["error_theirs"]
        print(f"[kernel] {name}: {rows[name]}", flush=True)
    ratios = [r["error_ratio"] for r in rows.values()]
    figures = {"max_error_ratio": max(ratios), "min_error_ratio": min(ratios), "layers": rows,
               "block": args.kernel_block, "sparsity_ratio": args.sparsity_ratio, "nsamples": args.nsamples,
               "seqlen": args.seqlen, "forward_dtype": str(model.dtype).replace("torch.", ""),
               "kernel_dtype": "float32",
               "blocksize": BLOCKSIZE, "percdamp": PERCDAMP, "peer_versions": versions,
               "torch": torch.__version__}  # fmt: skip
    print(json.dumps(figures))
    return 0


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # so a running worker is killed and temp files removed


def main() -> int:
    args = build_parser().parse_args()
    if args.worker:
        return worker(args.worker)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return drive(args)
    except BenchError as err:
        print(f"[bench] error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
