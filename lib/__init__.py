"""ALP: one-shot LLM pruning with adaptive layerwise sparsity."""

__version__ = "0.1.0"
