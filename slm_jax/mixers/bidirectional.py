"""Any causal mixer made bidirectional: a forward and a backward copy, combined (encoders, ``model.causal=false``).

The backward copy runs on each sequence reversed within its valid length, so right padding
stays at the end of the reversed sequence, where a causal mixer never lets it reach a real
token. The two outputs are summed, or concatenated and projected back to the model width.
This is the two-direction scheme of bidirectional RNNs (Schuster & Paliwal 1997) as used for
state-space encoders (Vim, Zhu et al. 2024, arXiv:2401.09417; Caduceus, Schiff et al. 2024).
Attention does not take this route: it drops its causal mask instead (``native_bidirectional``).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.mixers.contract import module_fields
from slm_jax.modules.linear import Linear, linear_params, scaled_init

NO_CACHE = (
    "An encoder (model.causal=false) has no decode cache, since every token sees the whole sequence; "
    "call it without a cache, or train a causal model to generate."
)


def reverse_within(x: Array, lengths: Array | None) -> Array:
    """x[b, t, ...] with each row's first ``lengths[b]`` entries reversed and the padding after them kept in place.

    Its own inverse. ``lengths`` None reverses whole rows.
    """
    if lengths is None:
        return jnp.flip(x, axis=1)
    i = jnp.arange(x.shape[1])[None, :]  # [1, t]
    index = jnp.where(i < lengths[:, None], lengths[:, None] - 1 - i, i)  # [b, t]
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


class Bidirectional(nn.Module):
    """f32[b, t, d] -> f32[b, t, d]: ``fwd(x) + rev(bwd(rev(x)))``, or a projection of the two concatenated.

    ``fwd`` and ``bwd`` are two unbound instances of the same mixer (separate parameters, under
    ``mixer/fwd`` and ``mixer/bwd``); ``rev`` reverses within ``lengths`` (``reverse_within``).
    """

    # Sharding axes of the combine projection; the wrapped mixers' own axes are looked up under fwd/ and bwd/.
    param_axes = {"combine/kernel": ("inner", "embed")}

    fwd: nn.Module
    bwd: nn.Module
    width: int
    combine: str = "sum"  # sum | concat
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1

    @classmethod
    def from_config(cls, cfg, mixer_cls: type, options) -> "Bidirectional":
        """Wrap two ``mixer_cls.from_config(cfg, options)`` copies with ``cfg.bidirectional_combine``."""
        return cls(
            fwd=mixer_cls.from_config(cfg, options),
            bwd=mixer_cls.from_config(cfg, options),
            width=cfg.d_model,
            combine=cfg.bidirectional_combine,
            **module_fields(cfg),
        )

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, lengths: Array | None = None
    ) -> tuple[Array, None]:
        """x f32[b, t, d], positions i32[b, t], lengths i32[b] (None: no padding) -> (f32[b, t, d], None).

        The backward pass gets the same positions: position 0 is the first token it reads.
        """
        if cache is not None:
            raise ConfigError(NO_CACHE)
        y_fwd, _ = self.fwd(x, positions)
        y_bwd, _ = self.bwd(reverse_within(x, lengths), positions)
        y_bwd = reverse_within(y_bwd, lengths)
        if self.combine == "sum":
            return y_fwd + y_bwd, None
        out = Linear(
            self.width,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=scaled_init(self.init_std, self.n_layers),
            name="combine",
        )
        return out(jnp.concatenate([y_fwd, y_bwd], axis=-1)), None

    def num_params(self) -> int:
        combine = linear_params(2 * self.width, self.width) if self.combine == "concat" else 0
        return self.fwd.num_params() + self.bwd.num_params() + combine

    def flops_per_token(self, seq_len: int) -> float:
        combine = 2 * linear_params(2 * self.width, self.width) if self.combine == "concat" else 0
        return self.fwd.flops_per_token(seq_len) + self.bwd.flops_per_token(seq_len) + combine
