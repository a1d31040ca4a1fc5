"""Gated MLPs: SwiGLU and GeGLU (Shazeer 2020, "GLU Variants Improve Transformer")."""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array
from slm_jax.modules.linear import Linear, linear_params

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "swiglu": jax.nn.silu,
    "geglu": lambda x: jax.nn.gelu(x, approximate=True),
}


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): f32[b, t, d] -> f32[b, t, d] with hidden width f."""

    hidden: int
    kind: str = "swiglu"
    use_bias: bool = False  # biases on gate/up and down (RecurrentGemma, Llama's mlp_bias)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    out_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dense = lambda f, name, init: Linear(
            f, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init, name=name
        )
        init = nn.initializers.normal(self.init_std)
        gate, up = jnp.split(dense(2 * self.hidden, "gate_up", init)(x), 2, axis=-1)
        h = ACTIVATIONS[self.kind](gate) * up
        return dense(x.shape[-1], "down", self.out_init)(h)


def gated_mlp_params(d: int, f: int, bias: bool = False) -> int:
    return 2 * linear_params(d, f, bias) + linear_params(f, d, bias)
