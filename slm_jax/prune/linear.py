"""Where the heads and the d_model-tied channels of the linear-attention and convolution mixers lie in their weights.

A layout maps a mixer leaf (its path inside ``mixer/``) to ``(axis, parts)``: along ``axis`` the leaf holds, for
each part ``(offset, units)``, the channels ``offset + units[u]`` of every unit u (a head, or one channel), where
``units`` is i64[n_units, width], or ``units`` channels kept whole when it is an int. Keeping units ``keep`` keeps,
in every part, the channels of those units in their original order (RoPE pairs stay rotate-half); a leaf not in the
layout (a norm scale shared by the heads, a low-rank down projection) is kept whole.

Heads (``prune.la_heads``) of GLA, DeltaNet, Gated DeltaNet (key heads, each with its value heads) and mLSTM, whose
heads are independent up to the per-head output norm (Yang et al. 2024; Beck et al. 2024). Tied channels: mixers
whose own width is d_model (H3, Hyena, short conv, RWKV-7 heads of d_model / n_heads, Based's value channels,
RetNet's query/key channels, kept in RoPE pairs) shrink with ``prune.d_model``, ranked by their own activations;
BaseConv's channels are the residual stream's (it convolves its input), so it keeps the embedding channels kept.
"""

from __future__ import annotations

import numpy as np
from flax import traverse_util

HEADED = ("gla", "deltanet", "gated_deltanet", "mlstm")  # prune.la_heads removes whole heads
TIED = ("h3", "hyena", "baseconv", "short_conv", "rwkv7", "based", "retnet")  # own width follows d_model
RESIDUAL = ("baseconv",)  # its channels are the residual stream's own (it convolves its input x): keep those
OUT = {"deltanet": "o_proj", "rwkv7": "o_proj"}  # the output projection (its input ranks units); else out_proj


def out_proj(name: str) -> str:
    """The name of mixer ``name``'s output projection, whose input activations rank its heads and channels."""
    return OUT.get(name, "out_proj")


def _units(n: int, width: int) -> np.ndarray:
    return np.arange(n * width).reshape(n, width)


def _same(leaves: tuple[str, ...], axis: int, parts: list) -> dict:
    return {leaf: (axis, parts) for leaf in leaves}


def head_layout(name: str, mixer) -> dict:
    """{leaf: (axis, parts)} of the heads of a HEADED ``mixer`` module (built by mixers.registry.build_mixer)."""
    h = mixer.num_heads
    if name == "gla":
        (dk, dv), kd, vd = mixer.head_dims, mixer.key_dim, mixer.value_dim
        k, v = _units(h, dk), _units(h, dv)
        return {
            "in_proj/kernel": (1, [(0, k), (kd, k), (2 * kd, v), (2 * kd + vd, v)]),
            **_same(("gk_proj_b/kernel", "gk_proj_b/bias"), -1, [(0, k)]),
            "out_proj/kernel": (0, [(0, v)]),
        }
    if name == "deltanet":
        e = _units(h, mixer.head_dim)
        proj = ("q_proj/kernel", "k_proj/kernel", "v_proj/kernel")
        conv = tuple(f"{c}_conv1d/{p}" for c in "qkv" for p in ("kernel", "bias"))
        return {
            **_same(proj + conv, -1, [(0, e)]),
            "b_proj/kernel": (1, [(0, _units(h, 1))]),
            "o_proj/kernel": (0, [(0, e)]),
        }
    if name == "gated_deltanet":  # key head j serves value heads j r .. j r + r - 1
        r = mixer.num_v_heads // h
        k, v, g = _units(h, mixer.head_dim), _units(h, r * mixer.v_head_dim), _units(h, r)
        kw = mixer.key_width
        qkv = [(0, k), (kw, k), (2 * kw, v)]
        return {
            **_same(("in_proj_qkv/kernel", "conv1d/kernel", "conv1d/bias"), -1, qkv),
            "in_proj_z/kernel": (1, [(0, v)]),
            **_same(("in_proj_b/kernel", "in_proj_a/kernel"), 1, [(0, g)]),
            **_same(("A_log", "dt_bias"), 0, [(0, g)]),
            "out_proj/kernel": (0, [(0, v)]),
        }
    if name == "mlstm":
        n, e, one = _units(h, mixer.qk_dim // h), _units(h, mixer.v_dim // h), _units(h, 1)
        return {
            **_same(("query/kernel", "key/kernel"), 1, [(0, n)]),
            **_same(("value/kernel", "ogate_preact/kernel"), 1, [(0, e)]),
            **_same(("igate_preact/kernel", "fgate_preact/kernel"), 1, [(0, one)]),
            **_same(("igate_bias", "fgate_bias"), 0, [(0, one)]),
            "multihead_norm/scale": (0, [(0, e)]),
            "out_proj/kernel": (0, [(0, e)]),
        }
    raise ValueError(f"{name} has no head layout")


def tied_layout(name: str, mixer) -> tuple[int, dict]:
    """(groups, {leaf: (axis, parts)}) of the d_model-tied channels of a TIED ``mixer``: units are single channels
    (RetNet: RoPE pairs of query/key channels) in ``groups`` equal groups (heads) that keep the same number each."""
    d = mixer.width
    c = _units(d, 1)
    if name == "h3":
        leaves = tuple(f"{p}_proj/{w}" for p in "qkv" for w in ("kernel", "bias"))
        leaves += ("shift_conv/kernel", "shift_conv/bias")
        return 1, {
            **_same(leaves, -1, [(0, c)]),
            **_same(("log_dt", "log_A_real", "A_imag", "ssm_C", "D", "out_proj/kernel"), 0, [(0, c)]),
        }
    if name == "hyena":
        n = mixer.order
        return 1, {
            **_same(
                ("in_proj/kernel", "in_proj/bias", "conv1d/kernel", "conv1d/bias"),
                -1,
                [(i * d, c) for i in range(n + 1)],
            ),
            "filter_out/kernel": (1, [(i * d, c) for i in range(n)]),
            "filter_bias": (1, [(0, c)]),
            "out_proj/kernel": (0, [(0, c)]),
        }
    if name == "baseconv":
        leaves = ("projection/kernel", "projection/bias", "filter", "filter_out/kernel", "filter_out/bias", "conv_bias")
        return 1, {**_same(leaves, -1, [(0, c)]), "out_proj/kernel": (0, [(0, c)])}
    if name == "short_conv":
        return 1, {
            **_same(("in_proj/kernel", "in_proj/bias"), -1, [(0, c), (d, c), (2 * d, c)]),
            **_same(("conv_kernel", "conv_bias"), -1, [(0, c)]),
            "out_proj/kernel": (0, [(0, c)]),
        }
    if name == "rwkv7":
        leaves = tuple(f"{p}/kernel" for p in ("r_proj", "k_proj", "v_proj", "w_lora_up", "a_lora_up", "g_lora_up"))
        leaves += ("w_bias", "a_bias", "k_k", "k_a", "g_norm/scale", "g_norm/bias")
        return mixer.num_heads, {
            **_same(leaves, -1, [(0, c)]),
            "r_k": (-1, [(0, c)]),  # [h, n]: taken flat (tied_take reshapes it)
            "o_proj/kernel": (0, [(0, c)]),
        }
    if name == "based":
        hf = mixer.num_heads * mixer.feature_dim
        return mixer.num_heads, {"in_proj/kernel": (1, [(0, 2 * hf), (2 * hf, c)]), "out_proj/kernel": (0, [(0, c)])}
    if name == "retnet":  # channel i of a head rotates with channel i + k/2 (modules/rope.py): keep both
        h = mixer.num_heads
        k = d // h
        pairs = np.stack([np.arange(k // 2), k // 2 + np.arange(k // 2)], -1)  # [k/2, 2]
        units = (np.arange(h)[:, None, None] * k + pairs[None]).reshape(-1, 2)
        return h, {"in_proj/kernel": (1, [(0, units), (d, units), (2 * d, 2 * mixer.value_dim)])}
    raise ValueError(f"{name} has no d_model-tied channels")


def retnet_pair_scores(mixer: dict, layout: dict) -> np.ndarray:
    """f32[h k / 2]: each RetNet query/key RoPE pair's summed |W_q column| |W_k column| (in_proj holds q, then k)."""
    w = mixer["in_proj"]["kernel"]
    pairs = layout["in_proj/kernel"][1][0][1]  # i64[h k / 2, 2]
    d = w.shape[0]
    return (np.linalg.norm(w[:, :d], axis=0) * np.linalg.norm(w[:, d : 2 * d], axis=0))[pairs].sum(-1)


def n_units(layout: dict) -> int:
    """How many units (heads, channels or channel pairs) ``layout`` indexes."""
    return next(len(u) for _, parts in layout.values() for _, u in parts if not isinstance(u, int))


def take(mixer: dict, layout: dict, keep: np.ndarray) -> dict:
    """The mixer's numpy param dict with only units ``keep`` (sorted indices) along every leaf of ``layout``."""
    flat = traverse_util.flatten_dict(mixer, sep="/")
    for leaf, (axis, parts) in layout.items():
        if leaf not in flat:  # an optional weight this layer lacks (a bias, an implicit filter)
            continue
        x = flat[leaf]
        shape = x.shape
        if leaf == "r_k":
            x = x.reshape(-1)
        cols = np.concatenate(
            [off + (np.arange(units) if isinstance(units, int) else np.sort(units[keep], None)) for off, units in parts]
        )
        x = np.take(x, cols, axis=axis)
        flat[leaf] = x.reshape(shape[0], -1) if leaf == "r_k" else x
    return traverse_util.unflatten_dict(flat, sep="/")
