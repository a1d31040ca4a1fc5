"""Width pruning: keep the most important channels of each structure, channel-consistent across every weight.

All functions take numpy parameter dicts of one layer (or of the whole model, for the embedding) and sorted index
arrays of what to keep, and return new dicts; a structure that keeps everything comes back equal to the input.
Layouts (slm_jax/modules, slm_jax/mixers):

  MLP        gate_up [d, 2f] (gate columns, then up columns) or, not gated (BERT's gelu), up [d, f]; down [f, d]
  attention  qkv [d, (h + 2k) e] (query heads, key heads, value heads), o [h e, d]; query head j reads group
             j // (h / k)
  RG-LRU     in_proj [d, 2w] (GeLU branch, then recurrent branch), conv1d [c, w], gate_a/gate_x kernel
             [heads, w/heads, w/heads] (block-diagonal) and bias [w], a_param [w], out_proj [w, d]
  Mamba      in_proj [d, 2w] (x, then z), conv1d [c, w], x_proj [w, r + 2n], dt_proj [r, w], A_log [w, n], D [w],
             out_proj [w, d]
  Mamba-2    in_proj [d, 2w + 2gn + h] (z, x, B, C, dt), conv1d over [x, B, C], dt_bias / A_log / D [h],
             norm [w] in g groups, out_proj [w, d]

An encoder's non-attention mixer holds two such copies, ``mixer/fwd`` and ``mixer/bwd`` (mixers/bidirectional.py),
pruned each by its own ranking, and with ``model.bidirectional_combine: concat`` a ``mixer/combine`` [2d, d].
"""

from __future__ import annotations

import numpy as np
from flax import traverse_util

from slm_jax.errors import ConfigError
from slm_jax.mixers.registry import MIXERS


def top_indices(scores: np.ndarray, keep: int) -> np.ndarray:
    """Sorted indices of the ``keep`` largest ``scores`` (ties: the lower index wins)."""
    return np.sort(np.argsort(-np.asarray(scores), kind="stable")[:keep])


def top_per_group(scores: np.ndarray, n_groups: int, keep_per_group: int) -> np.ndarray:
    """Sorted indices keeping the ``keep_per_group`` largest scores inside each of ``n_groups`` equal slices."""
    size = len(scores) // n_groups
    return np.concatenate(
        [g * size + top_indices(scores[g * size : (g + 1) * size], keep_per_group) for g in range(n_groups)]
    )


def heads_to_keep(head_scores: np.ndarray, n_kv: int, new_heads: int, new_kv: int) -> tuple[np.ndarray, np.ndarray]:
    """(query heads, key/value groups) to keep, GQA-consistent: the ``new_kv`` groups with the largest summed query
    head scores, and inside each the ``new_heads / new_kv`` best query heads."""
    per = len(head_scores) // n_kv
    groups = top_indices(head_scores.reshape(n_kv, per).sum(-1), new_kv)
    inside = new_heads // new_kv
    heads = np.concatenate([g * per + top_indices(head_scores[g * per : (g + 1) * per], inside) for g in groups])
    return heads, groups


def channels_of(units: np.ndarray, width: int) -> np.ndarray:
    """Channel indices of whole units (heads) of ``width`` channels each."""
    return (units[:, None] * width + np.arange(width)).reshape(-1)


def _sub(tree: dict, path: str) -> dict:
    node = tree
    for part in path.split("/"):
        node = node[part]
    return node


def prune_mlp(mlp: dict, keep: np.ndarray) -> dict:
    """The MLP's hidden channels ``keep`` (of f): columns of ``gate_up`` (both halves) or ``up``, and their biases;
    rows of ``down``."""
    f = mlp["down"]["kernel"].shape[0]
    name, cols = ("gate_up", np.concatenate([keep, f + keep])) if "gate_up" in mlp else ("up", keep)
    return {
        name: {k: v[..., cols] for k, v in mlp[name].items()},
        "down": {**mlp["down"], "kernel": mlp["down"]["kernel"][keep]},
    }


def prune_attention(mixer: dict, heads: np.ndarray, groups: np.ndarray, n_heads: int, n_kv: int) -> dict:
    """Query ``heads`` and key/value ``groups`` of an attention mixer with ``n_heads`` / ``n_kv`` heads."""
    e = mixer["o"]["kernel"].shape[0] // n_heads
    q = channels_of(heads, e)
    kv = channels_of(groups, e)
    cols = np.concatenate([q, n_heads * e + kv, (n_heads + n_kv) * e + kv])
    out = dict(mixer)
    out["qkv"] = {k: v[..., cols] for k, v in mixer["qkv"].items()}
    out["o"] = {**mixer["o"], "kernel": mixer["o"]["kernel"][q]}
    return out


def prune_rglru(mixer: dict, keep: np.ndarray) -> dict:
    """RG-LRU channels ``keep`` (of w), the same number inside every block of the gates (``top_per_group``)."""
    w = mixer["a_param"].shape[0]
    heads, block = mixer["gate_a"]["kernel"].shape[:2]
    local = keep.reshape(heads, -1) - (np.arange(heads) * block)[:, None]  # [heads, kept per block]
    gate = lambda g: {
        "kernel": np.stack([g["kernel"][j][np.ix_(local[j], local[j])] for j in range(heads)]),
        "bias": g["bias"][keep],
    }
    both = np.concatenate([keep, w + keep])
    out = dict(mixer)
    out["in_proj"] = {k: v[..., both] for k, v in mixer["in_proj"].items()}
    out["conv1d"] = {k: v[..., keep] for k, v in mixer["conv1d"].items()}
    out["gate_a"], out["gate_x"] = gate(mixer["gate_a"]), gate(mixer["gate_x"])
    out["a_param"] = mixer["a_param"][keep]
    out["out_proj"] = {**mixer["out_proj"], "kernel": mixer["out_proj"]["kernel"][keep]}
    return out


def prune_mamba(mixer: dict, keep: np.ndarray) -> dict:
    """Mamba inner channels ``keep`` (of w): their in/out projections, conv taps, dt, A and D."""
    w = mixer["D"].shape[0]
    out = dict(mixer)
    out["in_proj"] = {"kernel": mixer["in_proj"]["kernel"][:, np.concatenate([keep, w + keep])]}
    out["conv1d"] = {k: v[..., keep] for k, v in mixer["conv1d"].items()}
    if "x_proj" in mixer:  # selective
        out["x_proj"] = {"kernel": mixer["x_proj"]["kernel"][keep]}
        out["dt_proj"] = {k: v[..., keep] for k, v in mixer["dt_proj"].items()}
    else:
        out["dt_bias"] = mixer["dt_bias"][keep]
    out["A_log"], out["D"] = mixer["A_log"][keep], mixer["D"][keep]
    out["out_proj"] = {"kernel": mixer["out_proj"]["kernel"][keep]}
    return out


def prune_mamba2(mixer: dict, heads: np.ndarray, head_dim: int) -> dict:
    """Mamba-2 ``heads`` (whole heads of ``head_dim`` channels); B and C (``state`` per group) are kept."""
    h = mixer["D"].shape[0]
    w = h * head_dim
    bc = mixer["conv1d"]["kernel"].shape[-1] - w  # 2 g n
    ch = channels_of(heads, head_dim)
    cols = np.concatenate([ch, w + ch, 2 * w + np.arange(bc), 2 * w + bc + heads])
    out = dict(mixer)
    out["in_proj"] = {"kernel": mixer["in_proj"]["kernel"][:, cols]}
    conv = np.concatenate([ch, w + np.arange(bc)])
    out["conv1d"] = {k: v[..., conv] for k, v in mixer["conv1d"].items()}
    for name in ("dt_bias", "A_log", "D"):
        out[name] = mixer[name][heads]
    out["norm"] = {"scale": mixer["norm"]["scale"][ch]}
    out["out_proj"] = {"kernel": mixer["out_proj"]["kernel"][ch]}
    return out


# Leaves outside the mixers with a d_model axis: path inside a layer (or at the top) -> axes. Every leaf of a norm
# over d_model channels (``_D_NORMS``: scale, and a LayerNorm's bias) is [d]. The encoder's MLM head transform maps
# the residual stream into the (tied) embedding's channels, so both of its axes are the embedding channels.
_BLOCK_AXES = {
    "mlp/gate_up/kernel": ("embed", None),
    "mlp/up/kernel": ("embed", None),
    "mlp/down/kernel": (None, "embed"),
    "mlp/down/bias": ("embed",),
    "mixer/combine/kernel": ("embed_x2", "embed"),  # an encoder's concat of its two directions, [2d, d]
}
_TOP_AXES = {
    "embed/embedding": (None, "embed"),  # an encoder's extra mask-token row is one more row
    "pos_embed/embedding": (None, "embed"),
    "mlm_transform/kernel": ("embed", "embed"),
    "mlm_transform/bias": ("embed",),
    "head/kernel": ("embed", None),
}
_D_NORMS = (
    "mixer_norm",
    "mlp_norm",
    "mixer_post_norm",
    "mlp_post_norm",
    "final_norm",
    "embed_norm",
    "mlm_transform_norm",
)


def _embed_axes(mixer_name: str, path: str) -> tuple | None:
    """The logical axes of the leaf ``path`` of a layer whose mixer is ``mixer_name``, or None if it has none."""
    if path in _BLOCK_AXES:
        return _BLOCK_AXES[path]
    if path.split("/")[0] in _D_NORMS:
        return ("embed",)
    if path.startswith("mixer/"):
        suffix = path.removeprefix("mixer/").removeprefix("fwd/").removeprefix("bwd/")
        return MIXERS[mixer_name].param_axes.get(suffix)
    return None


def _take(leaf: np.ndarray, axes: tuple | None, keep: np.ndarray, d: int, where: str) -> np.ndarray:
    if axes is None:
        return leaf
    for axis, name in enumerate(axes):
        if name == "embed_x2":  # two blocks of d channels, side by side
            leaf = np.take(leaf, np.concatenate([keep, d + keep]), axis=axis)
        elif name == "embed":
            if leaf.shape[axis] != d:
                raise ConfigError(
                    f"{where} has {leaf.shape[axis]} channels on its d_model axis, not {d}, so slm prune cannot prune "
                    "model.d_model of this model; leave prune.d_model at 0."
                )
            leaf = np.take(leaf, keep, axis=axis)
    return leaf


def prune_embedding(params: dict, layers: tuple[str, ...], keep: np.ndarray, d: int) -> dict:
    """Embedding channels ``keep`` (of d) in every weight with a d_model axis: the embedding and position tables,
    every norm over them (scale and bias), every projection reading or writing them (mixers via their
    ``param_axes``, both directions of an encoder's), the MLM head transform, the head. ``params`` is the unstacked
    {"params": ...} tree; ``layers`` the mixer name of each layer."""
    out = {}
    for path, leaf in traverse_util.flatten_dict(params["params"], sep="/").items():
        top, _, inner = path.partition("/")
        if top.startswith("layers_"):
            axes = _embed_axes(layers[int(top.removeprefix("layers_"))], inner)
        else:  # a top-level leaf: embedding and position tables, norms, MLM head transform, head (head_bias: none)
            axes = ("embed",) if top in _D_NORMS else _TOP_AXES.get(path)
        out[path] = _take(leaf, axes, keep, d, path)
    return {"params": traverse_util.unflatten_dict(out, sep="/")}
