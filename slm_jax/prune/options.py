"""What ``slm prune`` removes: ``PruneOptions``, read from ``--set prune.<key>=value`` and a YAML ``prune:`` section.

Every size is the size to keep; 0 keeps the model's own. Widths are ranked by activation importance on calibration
data (``importance``), layers by ``depth_metric`` (slm_jax/prune/importance.py).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Sequence

from slm_jax.config import parse_override
from slm_jax.errors import ConfigError


@dataclass(frozen=True)
class PruneOptions:
    """Target shapes of the pruned model (0: unchanged) and how channels and layers are ranked."""

    n_layers: int = 0  # layers kept
    depth_unit: str = "layer"  # layer: drop single layers | period: drop whole repeats of the layer pattern
    depth_metric: str = "cosine"  # cosine: block input/output similarity | loss: calibration loss without it
    d_model: int = 0  # embedding channels kept (embedding, every norm, every in/out projection, the head)
    d_ff: int = 0  # MLP hidden channels kept in every layer
    n_heads: int = 0  # attention query heads kept in every attention layer
    n_kv_heads: int = 0  # attention key/value groups kept (GQA); 0: all groups of a GQA model, = n_heads for MHA
    rglru_width: int = 0  # RG-LRU recurrence channels kept (a multiple of its gate heads)
    mamba_expand: int = 0  # Mamba inner width = this * d_model
    mamba2_expand: int = 0  # Mamba-2 inner width = this * d_model (whole heads are kept)
    la_heads: int = 0  # heads kept in every GLA / DeltaNet / Gated DeltaNet (key heads) / mLSTM layer
    importance: str = "mean_sq"  # mean_sq: mean squared activation (Minitron) | mean_abs: mean |activation|


CHOICES = {
    "depth_unit": ("layer", "period"),
    "depth_metric": ("cosine", "loss"),
    "importance": ("mean_sq", "mean_abs"),
}


def prune_options(section: dict | None, overrides: Sequence[str] = ()) -> PruneOptions:
    """Options from a ``prune:`` mapping plus ``prune.<key>=value`` overrides (later wins); one ConfigError per
    mistake."""
    raw: dict[str, Any] = dict(section or {})
    for text in overrides:
        key, value = parse_override(text)
        if not key.startswith("prune."):
            raise ConfigError(f"slm prune reads only prune.<key> overrides, got {key!r}; e.g. --set prune.d_ff=128.")
        raw[key.removeprefix("prune.")] = value
    names = [f.name for f in dataclasses.fields(PruneOptions)]
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean prune.{close[0]}?" if close else f"valid keys: {', '.join(names)}."
            raise ConfigError(f"Unknown prune option prune.{key}; {hint}")
        want = type(getattr(PruneOptions(), key))
        if not isinstance(value, want) or isinstance(value, bool):
            raise ConfigError(f"prune.{key} expects {want.__name__}, got {value!r}.")
        if want is int and value < 0:
            raise ConfigError(f"prune.{key} is a size to keep and must be >= 0 (0 keeps it), got {value}.")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"prune.{key} must be one of {', '.join(CHOICES[key])}, got {value!r}.")
    return PruneOptions(**raw)
