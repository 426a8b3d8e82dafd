"""Allocations found by measuring the model: ``--allocation dp`` (per-block cost curves and a
dynamic programme) and ``--allocation evo`` (EvoPress-style evolutionary search).

Modules: :mod:`levels` (the equal-weight level grid, mutation), :mod:`dp` (knapsack),
:mod:`evo` ((1 + lambda) search), :mod:`forward` (held-out forwards, KL), :mod:`stores` (level
weights from score ranks or a SparseGPT database), :mod:`fitness`, :mod:`costs` (dp cost table
and cache), :mod:`options` (flags), :mod:`allocate` (entry point). Kept free of imports here so
``lib.options`` can import :mod:`options` without loading the model code.
"""
