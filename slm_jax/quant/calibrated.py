"""Calibrated weight quantization of a whole parameter tree: GPTQ or AWQ per ``Linear`` kernel.

Same stored format as round-to-nearest (quant/kernels.py), so every tool reads the result unchanged; AWQ adds its
input-channel scales as ``kernel_in_scale``.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import PyTree
from slm_jax.errors import ConfigError
from slm_jax.quant.awq import awq_scales
from slm_jax.quant.gptq import gptq_kernel
from slm_jax.quant.kernels import IN_SCALE, LEAVES, SCALE, group_for, quantize_kernel
from slm_jax.quant.packing import pack_int4

METHODS = ("rtn", "gptq", "awq")


def _kernel_leaves(w: np.ndarray, stats: dict, method: str, bits: int, group: int) -> dict[str, np.ndarray]:
    if method == "gptq":
        q, scale = gptq_kernel(w, stats["hessian"], bits, group)
        ints = np.asarray(pack_int4(jnp.asarray(q))) if bits == 4 else q
        return {LEAVES[bits]: ints, SCALE: scale}
    s, _ = awq_scales(w, stats["hessian"], stats["abs_mean"], bits, group)
    leaves = jax.device_get(quantize_kernel(jnp.asarray(w * s[:, None], jnp.float32), bits, group))
    return {**leaves, IN_SCALE: s}


def quantize_params_calibrated(
    params: PyTree, paths: set[tuple[str, ...]], bits: int, group_size: int, method: str, stats: dict
) -> PyTree:
    """``{"params": ...}`` (unstacked layers) with each ``Linear`` kernel at ``paths`` quantized by ``method``.

    ``stats``: ``calibrate.linear_input_statistics`` of the same model; every path needs its entry.
    """
    if method not in ("gptq", "awq"):
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}.")
    if bits not in LEAVES:
        raise ConfigError(f"--bits must be 4 or 8, got {bits}.")

    def walk(node: Any, path: tuple[str, ...]) -> Any:
        if not isinstance(node, dict):
            return node
        if path in paths and "kernel" in node:
            where = "/".join(path)
            if path not in stats:
                raise ConfigError(f"The calibration pass never ran {where}; calibrate with data that reaches it.")
            w = np.asarray(jax.device_get(node["kernel"]), np.float32)
            group = group_for(w.shape[0], bits, group_size)
            rest = {k: v for k, v in node.items() if k != "kernel"}
            return {**rest, **_kernel_leaves(w, stats[path], method, bits, group)}
        return {k: walk(v, path + (k,)) for k, v in node.items()}

    return {"params": walk(dict(params["params"]), ())}
