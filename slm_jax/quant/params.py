"""Quantize a model's whole parameter tree: every ``Linear`` kernel, nothing else.

Which kernels belong to ``Linear`` is asked of the model itself: an abstract ``init`` runs
under ``nn.intercept_methods`` and records the path of every ``Linear`` it calls. Other
arrays named ``kernel`` (depthwise convolutions, RG-LRU's block-diagonal gates) and the
embedding stay float; so does a tied output head, which is the embedding.
"""

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import PyTree
from slm_jax.config import ModelConfig
from slm_jax.errors import ConfigError
from slm_jax.modules.linear import Linear
from slm_jax.quant.kernels import IN_SCALE, LEAVES, group_for, quantize_kernel


def linear_paths(cfg: ModelConfig) -> set[tuple[str, ...]]:
    """Module paths (e.g. ``("layers_0", "mixer", "qkv")``) of every ``Linear`` in the model of ``cfg``."""
    from slm_jax.models.lm import CausalLM

    found = set()

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, Linear) and context.method_name == "__call__":
            found.add(tuple(context.module.path))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: CausalLM(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
    return found


def quantize_params(params: PyTree, paths: set[tuple[str, ...]], bits: int, group_size: int = 0) -> PyTree:
    """``{"params": ...}`` with each ``Linear`` kernel at ``paths`` replaced by ints and scales.

    Works on arrays and, under ``jax.eval_shape``, on shapes alone (checkpoint restore).
    """
    if bits not in LEAVES:
        raise ConfigError(f"--bits must be 4 or 8, got {bits}.")
    return _quantize_tree(dict(params), frozenset(paths), bits, group_size)


@partial(jax.jit, static_argnums=(1, 2, 3))
def _quantize_tree(params: PyTree, paths: frozenset, bits: int, group_size: int) -> PyTree:
    """One compiled program for the whole tree (eager ops would compile one small program per op and shape)."""

    def walk(node: Any, path: tuple[str, ...]) -> Any:
        if not isinstance(node, dict):
            return node
        if path in paths and "kernel" in node:
            rest = {k: v for k, v in node.items() if k != "kernel"}
            d_in = node["kernel"].shape[-2]
            group = group_for(d_in, bits, group_size)
            return {**rest, **quantize_kernel(node["kernel"], bits, group)}
        return {k: walk(v, path + (k,)) for k, v in node.items()}

    return {"params": walk(dict(params["params"]), ())}


def abstract_quantized(cfg: ModelConfig) -> PyTree:
    """Shapes and dtypes of the quantized params of the model of ``cfg`` (``cfg.quant`` set; AWQ adds ``IN_SCALE``)."""
    from slm_jax.models.lm import abstract_params

    q = cfg.quant
    paths = linear_paths(cfg)
    floats = abstract_params(cfg)
    quantized = jax.eval_shape(lambda: quantize_params(floats, paths, q.bits, q.group_size))
    if q.method != "awq":
        return quantized

    def add_in_scale(node: Any, float_node: Any, path: tuple[str, ...]) -> Any:
        if not isinstance(node, dict):
            return node
        if path in paths and "kernel" in float_node:
            return {**node, IN_SCALE: jax.ShapeDtypeStruct(float_node["kernel"].shape[:-1], jnp.float32)}
        return {k: add_in_scale(v, float_node[k], path + (k,)) for k, v in node.items()}

    return {"params": add_in_scale(quantized["params"], floats["params"], ())}


def tree_bytes(tree: PyTree, paths: set[tuple[str, ...]] | None = None) -> int:
    """Bytes of the arrays in ``tree`` ({"params": ...}); with ``paths``, only those modules' kernels (any format)."""
    total = 0
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = tuple(str(getattr(k, "key", k)) for k in key_path)[1:]  # drop the "params" root
        if paths is None or (names[:-1] in paths and names[-1] != "bias"):
            total += int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
    return total
