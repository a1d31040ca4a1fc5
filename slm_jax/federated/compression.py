"""Uplink compression of client updates: int8 / int4 quantization and top-k sparsification, with error feedback.

A client ``encode``s each tensor of its update into a payload (the arrays it would send) and the
server ``decode``s it; bytes on the wire are the payload arrays' ``nbytes``, so they are exact.

- int8 / int4: symmetric per-tensor quantization, one float32 scale per tensor; int4 is packed
  two values per byte (quant/packing.py).
- top-k: the k = ceil(fraction * n) largest-magnitude entries of each tensor as float32 values
  plus int32 indices (Aji & Heafield 2017; Lin et al. 2018, Deep Gradient Compression).
- Error feedback (Seide et al. 2014; Karimireddy et al. 2019, EF-SGD): what compression dropped
  is kept by the client and added to its next update, so nothing is lost, only delayed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import Array, PyTree
from slm_jax.quant.packing import pack_int4, unpack_int4

METHODS = ("none", "int8", "int4", "topk")


def _levels(bits: int) -> int:
    return 2 ** (bits - 1) - 1  # symmetric: int8 -> [-127, 127], int4 -> [-7, 7]


def topk_count(size: int, fraction: float) -> int:
    """Entries top-k keeps of a tensor of ``size`` entries (at least one)."""
    return max(1, min(size, math.ceil(fraction * size)))


def encode(x: Array, method: str, fraction: float = 0.01) -> dict:
    """One tensor -> its payload: ``{"x"}`` (none), ``{"q", "scale"}`` (int8/int4), ``{"values", "indices"}`` (topk)."""
    flat = x.reshape(-1).astype(jnp.float32)
    if method == "none":
        return {"x": flat}
    if method in ("int8", "int4"):
        bits = 8 if method == "int8" else 4
        scale = jnp.max(jnp.abs(flat)) / _levels(bits)
        q = jnp.clip(jnp.round(flat / jnp.where(scale > 0, scale, 1.0)), -_levels(bits), _levels(bits)).astype(jnp.int8)
        return {"q": q if bits == 8 else pack_int4(q[:, None])[:, 0], "scale": scale}
    if method == "topk":
        _, indices = jax.lax.top_k(jnp.abs(flat), topk_count(flat.size, fraction))
        return {"values": flat[indices], "indices": indices.astype(jnp.int32)}
    raise ValueError(f"unknown compression {method!r}")


def decode(payload: dict, shape: tuple[int, ...], method: str) -> Array:
    """A payload back to a float32 tensor of ``shape`` (inverse of :func:`encode` up to its loss)."""
    size = int(np.prod(shape))
    if method == "none":
        flat = payload["x"]
    elif method == "int8":
        flat = payload["q"].astype(jnp.float32) * payload["scale"]
    elif method == "int4":
        flat = unpack_int4(payload["q"][:, None], size)[:, 0].astype(jnp.float32) * payload["scale"]
    else:
        flat = jnp.zeros(size, jnp.float32).at[payload["indices"]].set(payload["values"])
    return flat.reshape(shape)


def encode_tree(tree: PyTree, method: str, fraction: float) -> PyTree:
    return jax.tree.map(lambda x: encode(x, method, fraction), tree)


def decode_tree(payloads: PyTree, like: PyTree, method: str) -> PyTree:
    """Payloads (one dict per leaf of ``like``) back to float32 tensors shaped like ``like``."""
    leaves, treedef = jax.tree.flatten(like)
    parts = treedef.flatten_up_to(payloads)
    return treedef.unflatten([decode(p, leaf.shape, method) for p, leaf in zip(parts, leaves)])


def with_error_feedback(update: PyTree, residual: PyTree, method: str, fraction: float) -> tuple[PyTree, PyTree]:
    """``(payloads, new_residual)``: encode ``update + residual``; the new residual is what the encoding lost."""
    corrected = jax.tree.map(jnp.add, update, residual)
    payloads = encode_tree(corrected, method, fraction)
    sent = decode_tree(payloads, corrected, method)
    return payloads, jax.tree.map(jnp.subtract, corrected, sent)


def payload_bytes(like: PyTree, method: str, fraction: float) -> int:
    """Exact bytes one client sends for an update shaped like ``like``: the payload arrays' sizes."""
    shapes = jax.eval_shape(lambda t: encode_tree(t, method, fraction), like)
    return int(sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(shapes)))
