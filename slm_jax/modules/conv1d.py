"""Causal depthwise 1-D convolution with a decode cache (Mamba, Griffin's recurrent block).

y_t = bias + sum_{j < k} kernel[j] * x_{t - (k - 1) + j}, per channel. Positions before the
sequence start are zeros, or the last ``k - 1`` inputs held in the cache when the call
continues a cached sequence, so prefill, one-token steps and the full pass agree exactly.
With ``segment_ids`` (packed rows, ops/segments.py) a tap that reads another document reads zero.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array
from slm_jax.ops.segments import same_as_lagged


def _symmetric_uniform(bound: float):
    """Uniform in [-bound, bound): torch's Conv1d default for a depthwise tap set (fan-in k)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class CausalConv1D(nn.Module):
    """x [b, t, c] (+ cache [b, k - 1, c]) -> (y [b, t, c], new cache or None); ``segment_ids``
    i32[b, t] (parallel path only) keeps every window inside its own document.

    Computed as ``k`` shifted multiply-adds rather than ``lax.conv``: for the short widths
    used here (k = 4) this is what XLA fuses best on every backend, and it is exact in the
    order of summation the reference tests use. Parameters: ``kernel`` [k, c], ``bias`` [c] (unless ``use_bias``
    is false: Qwen3-Next's and Qwen3.5's convolutions have none).
    """

    features: int
    kernel_size: int = 4
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: Array, cache: Array | None = None, segment_ids: Array | None = None
    ) -> tuple[Array, Array | None]:
        k, t = self.kernel_size, x.shape[1]
        kernel = self.param("kernel", _symmetric_uniform(k**-0.5), (k, self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype) if self.use_bias else 0.0
        x = x.astype(self.dtype)
        if cache is None:
            history = jnp.zeros((x.shape[0], k - 1, x.shape[2]), self.dtype)
        else:
            history = cache.astype(self.dtype)
        padded = jnp.concatenate([history, x], axis=1)  # [b, k - 1 + t, c]
        kernel = kernel.astype(self.dtype)
        taps = [padded[:, j : j + t] for j in range(k)]  # taps[j] reads k - 1 - j steps back
        if segment_ids is not None:
            taps = [jnp.where(same_as_lagged(segment_ids, k - 1 - j)[..., None], tap, 0) for j, tap in enumerate(taps)]
        y = jnp.asarray(bias, self.dtype) + sum(kernel[j] * taps[j] for j in range(k))
        new_cache = None if cache is None else padded[:, t:].astype(cache.dtype)
        return y, new_cache


def conv_params(channels: int, kernel_size: int, bias: bool = True) -> int:
    """Parameters of a depthwise ``CausalConv1D``: one kernel tap per channel and position, plus a bias."""
    return channels * kernel_size + channels * bias


def causal_conv_reference(params: dict, x: Array) -> Array:
    """The convolution written out, for mixers' references: y_t = bias + sum_j kernel[j] x_{t - (k - 1) + j}.

    params: {"kernel": [k, c], "bias": [c] (optional)}; x: [b, t, c] from zero history.
    """
    kernel, bias = params["kernel"], params.get("bias", 0.0)
    k, t = kernel.shape[0], x.shape[1]
    xp = jnp.pad(x, ((0, 0), (k - 1, 0), (0, 0)))
    return bias + sum(kernel[j] * xp[:, j : j + t] for j in range(k))
