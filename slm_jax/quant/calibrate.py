"""Input statistics of every ``Linear`` on calibration tokens: what GPTQ and AWQ need to see of the data.

For each projection with inputs x f[..., d_in] the statistics are summed over all calibration tokens:
``hessian = X^T X`` f32[d_in, d_in] and ``abs_sum = sum |x|`` f32[d_in], with the token ``count``. They are collected in
one compiled forward pass per batch by intercepting ``Linear.__call__`` (no model code knows about calibration).
"""

from collections.abc import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import Array, PyTree
from slm_jax.config import ModelConfig
from slm_jax.errors import ConfigError
from slm_jax.modules.linear import Linear


def _batch_statistics(model: nn.Module, params: PyTree, tokens: Array) -> dict[tuple[str, ...], dict[str, Array]]:
    found: dict[tuple[str, ...], dict[str, Array]] = {}
    inside: set[tuple[str, ...]] = set()  # a Linear subclass calling super().__call__ is one call, not two

    def record(next_fun, args, kwargs, context):
        if not (isinstance(context.module, Linear) and context.method_name == "__call__"):
            return next_fun(*args, **kwargs)
        path = tuple(context.module.path)
        if path in inside:
            return next_fun(*args, **kwargs)
        if path in found:
            raise ConfigError(f"The projection {'/'.join(path)} runs twice in one forward pass; calibrate it alone.")
        x = args[0].reshape(-1, args[0].shape[-1]).astype(jnp.float32)
        found[path] = {"hessian": x.T @ x, "abs_sum": jnp.sum(jnp.abs(x), axis=0)}
        inside.add(path)
        try:
            return next_fun(*args, **kwargs)
        finally:
            inside.discard(path)

    with nn.intercept_methods(record):
        model.apply(params, tokens)
    return found


def linear_input_statistics(
    cfg: ModelConfig, params: PyTree, batches: Iterable[np.ndarray]
) -> dict[tuple[str, ...], dict[str, np.ndarray]]:
    """``{module path: {"hessian", "abs_mean", "count"}}`` over i32[b, t] token ``batches``, for unstacked params.

    ``cfg.scan_layers`` must be off (stacked layers run one traced body for all layers; unstack them first).
    """
    from slm_jax.models.lm import CausalLM

    if cfg.scan_layers:
        raise ConfigError("Calibration needs per-layer parameters; unstack them (models.lm.unstack_layers) first.")
    model = CausalLM(cfg)
    step = jax.jit(lambda p, t: _batch_statistics(model, p, t))
    totals: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
    count = 0
    for tokens in batches:
        stats = jax.device_get(step(params, jnp.asarray(tokens, jnp.int32)))
        count += int(np.prod(np.shape(tokens)))
        for path, s in stats.items():
            into = totals.setdefault(path, {k: np.zeros(v.shape, np.float64) for k, v in s.items()})
            for k, v in s.items():
                into[k] += v
    if not count:
        raise ConfigError("The calibration data gave no tokens; pass a --calib file with text in it.")
    return {
        path: {"hessian": s["hessian"], "abs_mean": s["abs_sum"] / count, "count": count} for path, s in totals.items()
    }
