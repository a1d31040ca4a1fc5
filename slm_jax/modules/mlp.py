"""Gated MLPs: SwiGLU and GeGLU (Shazeer 2020, "GLU Variants Improve Transformer"), and plain (not gated) MLPs.

``geglu`` uses the tanh approximation of GELU (Gemma), ``geglu_erf`` and ``gelu`` the exact erf form
(ModernBERT's GeGLU and BERT's non-gated MLP, Devlin et al. 2019). ``relu2`` is Primer's squared ReLU,
down(relu(up(x))^2) (So et al. 2021, arXiv:2109.08668), not gated, as Nemotron-H uses it.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array
from slm_jax.modules.linear import Linear, linear_params

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "swiglu": jax.nn.silu,
    "geglu": lambda x: jax.nn.gelu(x, approximate=True),
    "geglu_erf": lambda x: jax.nn.gelu(x, approximate=False),
}
# The MLP kinds without a gate: down(act(up(x))).
PLAIN_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),
}


class MLP(nn.Module):
    """The block's MLP, f32[b, t, d] -> f32[b, t, d] with hidden width f: gated kinds (``ACTIVATIONS``) compute
    down(act(gate(x)) * up(x)) from one fused ``gate_up`` projection [d, 2f] (gate columns first); the plain
    kinds (``PLAIN_ACTIVATIONS``: gelu, relu2) compute down(act(up(x))) with ``up`` [d, f]."""

    hidden: int
    kind: str = "swiglu"
    use_bias: bool = False  # biases on the input and output projections (RecurrentGemma, BERT, Llama's mlp_bias)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    out_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: Array, up_delta: Array | None = None) -> Array:
        """``up_delta`` f32[..., 2f or f] is added to the input projection (a shared block's per-use adapter)."""
        dense = lambda f, name, init: Linear(
            f, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init, name=name
        )
        init = nn.initializers.normal(self.init_std)
        add = lambda y: y if up_delta is None else y + up_delta.astype(y.dtype)
        if self.kind in PLAIN_ACTIVATIONS:
            h = PLAIN_ACTIVATIONS[self.kind](add(dense(self.hidden, "up", init)(x)))
        else:
            gate, up = jnp.split(add(dense(2 * self.hidden, "gate_up", init)(x)), 2, axis=-1)
            h = ACTIVATIONS[self.kind](gate) * up
        return dense(x.shape[-1], "down", self.out_init)(h)


def mlp_params(kind: str, d: int, f: int, bias: bool = False) -> int:
    """Parameters of the MLP ``model.mlp = kind`` (0 for none)."""
    if kind == "none":
        return 0
    if kind in PLAIN_ACTIVATIONS:
        return linear_params(d, f, bias) + linear_params(f, d, bias)
    return gated_mlp_params(d, f, bias)


def gated_mlp_params(d: int, f: int, bias: bool = False) -> int:
    return 2 * linear_params(d, f, bias) + linear_params(f, d, bias)
