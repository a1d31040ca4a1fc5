"""Initializers shared by the state-space mixers (Mamba, Mamba-2)."""

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array


def dt_bias_init(dt_min: float, dt_max: float, floor: float = 1e-4) -> Callable:
    """Bias such that softplus(bias) is log-uniform in [dt_min, dt_max] (Mamba, Sec. 3.6 / App.).

    The inverse of softplus is dt + log(-expm1(-dt)); dt is floored at ``floor`` as in the
    reference implementation (state-spaces/mamba).
    """

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        u = jax.random.uniform(key, shape, jnp.float32)
        dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = jnp.maximum(dt, floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    return init
