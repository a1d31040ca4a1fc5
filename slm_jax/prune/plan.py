"""The pruned model's shape: ``PruneOptions`` checked against a ``ModelConfig``, as dotted config changes.

Every width that defaulted from another field (``d_ff``, ``head_dim``, the RG-LRU width and gate heads, Mamba's
``dt_rank``, the linear-attention mixers' head counts and head widths) is written out, so that changing ``d_model``
or ``n_heads`` changes only what was pruned. A request the model cannot take is one ConfigError, raised before
anything is computed or written.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from slm_jax.config import MLP_LAYER, ModelConfig
from slm_jax.errors import ConfigError
from slm_jax.mixers.registry import build_mixer, get_mixer
from slm_jax.prune.linear import HEADED, TIED
from slm_jax.prune.options import PruneOptions

ATTENTION = ("attention", "local_attention")


def inner_mixer(m: ModelConfig, name: str):
    """The unbound mixer module of a ``name`` layer of ``m``; in an encoder, one of the two copies that
    mixers/bidirectional.py wraps (``mixer/fwd``, ``mixer/bwd``: the same shapes)."""
    return build_mixer(dataclasses.replace(m, causal=True), name)


def wrapped(m: ModelConfig, name: str) -> bool:
    """Whether a ``name`` layer of ``m`` holds two copies of its mixer, ``mixer/fwd`` and ``mixer/bwd`` (an encoder's
    mixer that is not natively bidirectional, as attention is)."""
    return not m.causal and not getattr(get_mixer(name), "native_bidirectional", False)


@dataclass(frozen=True)
class Shapes:
    """Old and new sizes of every prunable structure (new == old: nothing to prune there)."""

    n_layers: tuple[int, int]
    d_model: tuple[int, int]
    d_ff: tuple[int, int]
    heads: tuple[int, int]  # query heads
    kv_heads: tuple[int, int]
    rglru_width: tuple[int, int]
    mamba_width: tuple[int, int]
    mamba2_heads: tuple[int, int]
    la_heads: tuple[int, int]  # heads of every HEADED linear-attention layer (prune/linear.py)

    def changes(self, name: str) -> bool:
        old, new = getattr(self, name)
        return old != new


def _at_most(key: str, new: int, old: int, what: str) -> int:
    if new > old:
        raise ConfigError(f"prune.{key} ({new}) keeps more {what} than the model has ({old}); pick at most {old}.")
    return new or old


def plan(m: ModelConfig, o: PruneOptions) -> tuple[Shapes, dict]:
    """(old and new sizes, dotted ``model.*`` changes for ``config.replace``) of pruning ``m`` as ``o`` asks."""
    layers = set(m.layers)
    composite = sorted(name for name in layers if "+" in name or name == MLP_LAYER)
    if composite or m.shared_block.n_blocks:
        what = f"layers {composite}" if composite else "model.shared_block"
        raise ConfigError(
            f"slm prune does not handle {what} (parallel, MLP-only or weight-shared blocks) yet; "
            "prune a model without them, or distill into a smaller one (slm distill)."
        )
    if o.n_layers and o.depth_unit == "period" and o.n_layers % len(m.pattern):
        raise ConfigError(
            f"prune.n_layers ({o.n_layers}) is not a whole number of {len(m.pattern)}-layer periods; "
            f"with prune.depth_unit=period pick a multiple of {len(m.pattern)} (a pattern cannot be emptied)."
        )
    n_layers = _at_most("n_layers", o.n_layers, m.n_layers, "layers")
    d = _at_most("d_model", o.d_model, m.d_model, "embedding channels")
    changes: dict = {"model.d_model": d, "model.head_dim": m.attn_head_dim}
    d_ff = m.ff_width
    if m.mlp != "none":
        d_ff = _at_most("d_ff", o.d_ff, m.ff_width, "MLP channels")
        changes["model.d_ff"] = d_ff
    elif o.d_ff:
        raise ConfigError("prune.d_ff is set but this model has no MLP (model.mlp: none); leave it at 0.")
    heads, kv = m.n_heads, m.kv_heads
    if o.n_heads or o.n_kv_heads:
        if not layers & set(ATTENTION):
            raise ConfigError("prune.n_heads / prune.n_kv_heads are set but the model has no attention layer.")
        heads = _at_most("n_heads", o.n_heads, m.n_heads, "attention heads")
        kv = _at_most("n_kv_heads", o.n_kv_heads, m.kv_heads, "key/value groups")
        if not o.n_kv_heads and not m.n_kv_heads:  # multi-head attention stays multi-head
            kv = heads
        if heads % kv:
            raise ConfigError(
                f"{heads} query heads do not divide into {kv} key/value groups; make prune.n_heads a multiple of "
                "prune.n_kv_heads."
            )
        if heads // kv > m.n_heads // m.kv_heads:
            raise ConfigError(
                f"{heads} query heads over {kv} key/value groups is {heads // kv} per group, more than the "
                f"{m.n_heads // m.kv_heads} each group has; keep more groups (prune.n_kv_heads) or fewer heads."
            )
    changes.update({"model.n_heads": heads, "model.n_kv_heads": 0 if kv == heads and not m.n_kv_heads else kv})
    rglru = mamba = mamba2 = (0, 0)
    if "rglru" in layers:
        mixer = inner_mixer(m, "rglru")
        w, h = mixer.rnn_width, mixer.num_heads
        new_w = _at_most("rglru_width", o.rglru_width, w, "RG-LRU channels")
        if new_w % h:
            raise ConfigError(
                f"prune.rglru_width ({new_w}) must be divisible by the RG-LRU gate heads ({h}); pick a multiple of {h}."
            )
        rglru = (w, new_w)
        changes.update({"model.mixers.rglru.width": new_w, "model.mixers.rglru.n_heads": h})
    elif o.rglru_width:
        raise ConfigError("prune.rglru_width is set but the model has no rglru layer; leave it at 0.")
    if "mamba" in layers:
        opts = m.mixers.mamba
        expand = _at_most("mamba_expand", o.mamba_expand, opts.expand, "Mamba expansion")
        mamba = (opts.expand * m.d_model, expand * d)
        changes.update(
            {"model.mixers.mamba.expand": expand, "model.mixers.mamba.dt_rank": inner_mixer(m, "mamba").dt_rank}
        )
    elif o.mamba_expand:
        raise ConfigError("prune.mamba_expand is set but the model has no mamba layer; leave it at 0.")
    if "mamba2" in layers:
        opts = m.mixers.mamba2
        expand = _at_most("mamba2_expand", o.mamba2_expand, opts.expand, "Mamba-2 expansion")
        new_w = expand * d
        if new_w % opts.head_dim or (new_w // opts.head_dim) % opts.n_groups:
            raise ConfigError(
                f"The pruned Mamba-2 width {expand} x {d} = {new_w} is not a whole number of heads of "
                f"{opts.head_dim} in {opts.n_groups} group(s); pick prune.d_model or prune.mamba2_expand so it is."
            )
        mamba2 = (opts.expand * m.d_model // opts.head_dim, new_w // opts.head_dim)
        changes["model.mixers.mamba2.expand"] = expand
    elif o.mamba2_expand:
        raise ConfigError("prune.mamba2_expand is set but the model has no mamba2 layer; leave it at 0.")
    la_heads, la_changes = _linear_mixers(m, o, d)
    changes.update(la_changes)
    shapes = Shapes(
        (m.n_layers, n_layers),
        (m.d_model, d),
        (m.ff_width, d_ff),
        (m.n_heads, heads),
        (m.kv_heads, kv),
        rglru,
        mamba,
        mamba2,
        la_heads,
    )
    return shapes, changes


def _factor(width: int, d: int) -> float:
    """The float f with int(f * d) == width, as the mixers compute their widths from a factor of d_model."""
    f = width / d
    return f if int(f * d) == width else math.nextafter(f, math.inf)


def _linear_mixers(m: ModelConfig, o: PruneOptions, d: int) -> tuple[tuple[int, int], dict]:
    """((old, new) heads of the HEADED layers, dotted changes writing out every linear-attention and convolution
    mixer's widths for d_model ``d``), so that only what was pruned changes (a mixer's own width tied to d_model
    shrinks with it: prune/linear.py ``TIED``)."""
    present = [n for n in dict.fromkeys(m.layers) if n in HEADED + TIED]
    headed = {n: inner_mixer(m, n).num_heads for n in present if n in HEADED}
    if o.la_heads and not headed:
        tied = [n for n in present if n in ("based", "rwkv7", "retnet")]
        why = (
            f"the model's {tied[0]} heads have d_model / n_heads channels each, so they shrink only with prune.d_model"
            if tied
            else "the model has no GLA, DeltaNet, Gated DeltaNet or mLSTM layer"
        )
        raise ConfigError(f"prune.la_heads is set but {why}; leave prune.la_heads at 0.")
    if o.la_heads and len(set(headed.values())) > 1:
        raise ConfigError(
            f"prune.la_heads keeps one head count in every linear-attention layer, but this model's "
            f"{' and '.join(f'{n} layers have {h}' for n, h in headed.items())} heads; leave prune.la_heads at 0."
        )
    old = next(iter(headed.values()), 0)
    if headed:
        _at_most("la_heads", o.la_heads, old, "linear-attention heads")
    changes: dict = {}
    for name in present:
        mixer, key = inner_mixer(m, name), f"model.mixers.{name}"
        new = (o.la_heads if name in headed and o.la_heads else mixer.num_heads) if hasattr(mixer, "num_heads") else 0
        if name == "gla":
            dk, dv = mixer.head_dims
            changes.update({f"{key}.expand_k": _factor(new * dk, d), f"{key}.expand_v": _factor(new * dv, d)})
        elif name == "deltanet":
            changes[f"{key}.head_dim"] = mixer.head_dim
        elif name == "gated_deltanet":
            r = mixer.num_v_heads // mixer.num_heads
            changes.update({f"{key}.n_v_heads": new * r, f"{key}.head_dim": mixer.head_dim})
            changes[f"{key}.v_head_dim"] = mixer.v_head_dim
        elif name == "mlstm":
            n, e = mixer.qk_dim // mixer.num_heads, mixer.v_dim // mixer.num_heads
            changes.update({f"{key}.qk_dim_factor": _factor(new * n, d), f"{key}.v_dim_factor": _factor(new * e, d)})
        elif name in ("based", "rwkv7", "retnet"):
            h = mixer.num_heads
            even = name == "retnet"
            if d % h or (even and (d // h) % 2):
                raise ConfigError(
                    f"The pruned d_model ({d}) does not split into the {h} {name} heads"
                    f"{' of an even key width (RoPE rotates pairs)' if even else ''}, whose width is d_model / heads; "
                    f"pick a prune.d_model that is a multiple of {2 * h if even else h}."
                )
            if name == "retnet":
                changes[f"{key}.expand_v"] = _factor(mixer.value_dim, d)
        if name in headed or name in ("based", "rwkv7", "retnet"):
            changes[f"{key}.n_heads"] = new
    return (old, o.la_heads or old), changes
