"""The one place that knows where model families keep their decoder blocks.

Everything else (the sequential engine, the gradient pass, the pruners) asks this module
for ``decoder_blocks(model)`` and ``block_linears(block)`` and never matches model names.
A family missing from the table still works when its ``_no_split_modules`` names the
decoder-layer class (how accelerate finds blocks); add a row when it does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Family:
    """Layout of one model family, keyed by ``config.model_type``."""

    blocks: str  # dotted attribute path from the *ForCausalLM module to its decoder-block ModuleList
    # The block's sub-modules, each a chain of attribute names of the block applied in order to one
    # input (reconstruction fits each against its dense output): one module when the family has it
    # (Llama's ``self_attn``, ``mlp``), else the modules between (OPT's ``fc1 -> activation_fn -> fc2``).
    attention: tuple[str, ...] = ("self_attn",)
    mlp: tuple[str, ...] = ("mlp",)


FAMILIES: dict[str, Family] = {
    "llama": Family(blocks="model.layers"),
    "mistral": Family(blocks="model.layers"),
    "mixtral": Family(blocks="model.layers"),
    "qwen2": Family(blocks="model.layers"),
    "qwen3": Family(blocks="model.layers"),
    "gemma": Family(blocks="model.layers"),
    "gemma2": Family(blocks="model.layers"),
    "gemma3_text": Family(blocks="model.layers"),
    "phi3": Family(blocks="model.layers"),
    "opt": Family(blocks="model.decoder.layers", mlp=("fc1", "activation_fn", "fc2")),
    "gpt_neox": Family(blocks="gpt_neox.layers", attention=("attention",)),
}


def _get_path(root: nn.Module, dotted: str) -> nn.Module:
    module = root
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """Return the ``nn.ModuleList`` of decoder blocks of a causal LM, in depth order."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = FAMILIES.get(model_type)
    if family is not None:
        return _get_path(model, family.blocks)
    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and type(module[0]).__name__ in layer_classes:
            return module
    raise ValueError(
        f"cannot find the decoder blocks of model type {model_type!r}: add a row for it to "
        "lib/arch.py FAMILIES (the dotted path to its ModuleList of decoder layers)"
    )


def block_sublayers(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """``{"attention": chain, "mlp": chain}``: the attribute names (of every decoder block of
    ``model``) making up its attention and its MLP, from the family table (defaults for a family
    found by ``_no_split_modules``); ``ValueError`` naming the table when a block lacks one."""
    family = FAMILIES.get(getattr(getattr(model, "config", None), "model_type", None), Family(blocks=""))
    chains = {"attention": family.attention, "mlp": family.mlp}
    block = decoder_blocks(model)[0]
    for kind, chain in chains.items():
        missing = [name for name in chain if not isinstance(getattr(block, name, None), nn.Module)]
        if missing:
            raise ValueError(
                f"the decoder blocks of this model have no {'/'.join(missing)} ({kind}): set its {kind} "
                "chain in lib/arch.py FAMILIES"
            )
    return chains


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The prunable ``nn.Linear`` layers of one decoder block, by qualified name, in module order.

    This order is fixed: the sensitivity cache concatenates per-block statistics in it.
    """
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def prunable_linears(model: nn.Module) -> list[dict[str, nn.Linear]]:
    """``block_linears`` for every decoder block, in depth order."""
    return [block_linears(block) for block in decoder_blocks(model)]
