"""The one projection layer: every dense map in slm_jax goes through ``Linear``.

Keeping a single projection means LoRA, weight quantization and sharding annotations have
exactly one place to hook in. A run written by ``slm quantize`` holds, in place of a
``kernel``, its int8 or packed int4 integers and scales (slm_jax/quant/kernels.py); ``Linear``
sees them in its params and dequantizes the kernel at apply time (weight-only quantization).
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from slm_jax.array_typing import Array
from slm_jax.quant.kernels import dequantize_kernel, quantized_leaf_names


def dtype_of(name: str) -> Any:
    """``"bfloat16"`` -> ``jnp.bfloat16`` (config strings to dtypes)."""
    return jnp.dtype(name)


class Linear(nn.Module):
    """y = x @ W (+ b) over the last axis: f32[..., d_in] -> f32[..., features].

    The matmul accumulates in float32 (``preferred_element_type``), which is both more
    accurate and, on CPU, the only way bfloat16 reaches the matmul peak. Leading axes are
    flattened first: a 2-D matmul's weight gradient contracts one axis instead of (b, t),
    which XLA:CPU runs ~30% faster in the backward pass (benchmarks/train_throughput.py).
    """

    features: int
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = kernel_param(self, (x.shape[-1], self.features))
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).astype(self.dtype)  # [b * t, d_in]
        y = jnp.dot(x2, kernel.astype(self.dtype), preferred_element_type=jnp.float32).reshape(*lead, self.features)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        return y.astype(self.dtype)


def kernel_param(module: Linear, shape: tuple[int, ...]) -> Array:
    """The float kernel [..., d_in, f] of ``module``: its ``kernel`` parameter (``shape``), or, in a quantized run,
    dequantized from the leaves that replace it."""
    names = [n for n in quantized_leaf_names() if module.has_variable("params", n)]
    if names:  # a quantized run: dequantize here, so every model runs it unchanged
        return dequantize_kernel({n: module.get_variable("params", n) for n in names}, shape[-2])
    return module.param("kernel", module.kernel_init, shape, module.param_dtype)


def linear_params(d_in: int, d_out: int, bias: bool = False) -> int:
    """Parameter count of a ``Linear`` (used by models/accounting.py)."""
    return d_in * d_out + (d_out if bias else 0)


def scaled_init(std: float, n_layers: int) -> Callable:
    """GPT-2's residual-output init: std / sqrt(2 * n_layers) keeps the residual stream's scale."""
    return nn.initializers.normal(std / (2 * n_layers) ** 0.5)
