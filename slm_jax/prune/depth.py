"""Depth pruning: which layers to keep, and the config and parameters of the shorter stack.

Candidates are single layers (``prune.depth_unit: layer``) or whole periods of the layer pattern (``period``), ranked
by slm_jax/prune/importance.py's ``depth_scores``; the best are kept in their original order. The pruned config
states the mixer of every kept layer as the shortest pattern that cycles to them (the original pattern when whole
periods were dropped, so ``scan_layers`` still stacks periods), with the new ``n_layers``.
"""

from __future__ import annotations

import numpy as np

from slm_jax.errors import ConfigError


def candidate_groups(n_layers: int, period: int, unit: str) -> list[list[int]]:
    """Layer indices of each candidate for removal: every layer, or every whole period."""
    if unit == "layer":
        return [[i] for i in range(n_layers)]
    if n_layers % period:
        raise ConfigError(
            f"prune.depth_unit=period drops whole periods, but model.n_layers ({n_layers}) is not a multiple of the "
            f"{period}-layer pattern; use prune.depth_unit=layer."
        )
    return [list(range(r * period, (r + 1) * period)) for r in range(n_layers // period)]


def kept_layers(groups: list[list[int]], scores: np.ndarray, n_keep: int) -> list[int]:
    """Sorted layer indices of the ``n_keep`` layers in the best-scoring groups (higher score = more important)."""
    size = len(groups[0])
    order = np.argsort(-np.asarray(scores), kind="stable")[: n_keep // size]
    return sorted(i for g in order for i in groups[g])


def shortest_pattern(layers: tuple[str, ...]) -> tuple[str, ...]:
    """The shortest prefix of ``layers`` whose cycling gives all of ``layers``."""
    for p in range(1, len(layers) + 1):
        if all(layers[i] == layers[i % p] for i in range(len(layers))):
            return layers[:p]
    raise AssertionError("unreachable: the whole sequence is a pattern of itself")


def keep_layer_params(params: dict, keep: list[int]) -> dict:
    """Unstacked ``{"params": ...}`` with only the layers ``keep``, renumbered ``layers_0 ..``."""
    p = {k: v for k, v in params["params"].items() if not k.startswith("layers_")}
    p.update({f"layers_{new}": params["params"][f"layers_{old}"] for new, old in enumerate(keep)})
    return {"params": p}
