"""Task heads on a backbone's final hidden states, shared by encoders and decoders.

A backbone (models/lm.py ``CausalLM``, causal or not) gives final-norm hidden states
f32[b, t, d] for right-padded rows of ``lengths`` i32[b] valid tokens (:func:`final_hidden`).

- Sequence classification pools one vector per row, then a linear layer gives f32[b, c]:
  ``cls`` the first token (BERT's [CLS] position, Devlin et al. 2019, arXiv:1810.04805; it sees
  the whole row only in an encoder), ``mean`` the mean over the valid tokens (Sentence-BERT,
  Reimers & Gurevych 2019, arXiv:1908.10084), ``last`` the last valid token (the only one that
  has read the whole row in a decoder; GPT-1's classifier, Radford et al. 2018).
- Token classification is the same linear layer at every position: f32[b, t, c].
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.modules.linear import Linear

POOLINGS = ("cls", "mean", "last")


def default_pooling(causal: bool) -> str:
    """``last`` for a decoder (its last token has read everything), ``mean`` for an encoder."""
    return "last" if causal else "mean"


def check_pooling(pooling: str, causal: bool) -> None:
    """Refuse an unknown pooling, or ``cls`` on a decoder (its first token sees only itself)."""
    if pooling not in POOLINGS:
        raise ConfigError(f"--pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}.")
    if pooling == "cls" and causal:
        raise ConfigError(
            "--pooling cls reads the first token, which in a causal model has seen only itself; "
            "use --pooling last or mean on a decoder."
        )


def pool(hidden: Array, lengths: Array, pooling: str) -> Array:
    """hidden f32[b, t, d], lengths i32[b] (valid tokens, >= 1) -> f32[b, d] by ``pooling``."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        return jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
    valid = (jnp.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(hidden.dtype)  # [b, t]
    return jnp.einsum("btd,bt->bd", hidden, valid) / jnp.maximum(valid.sum(1), 1.0)[:, None]


class SequenceHead(nn.Module):
    """hidden f32[b, t, d], lengths i32[b] -> class logits f32[b, c] (pooling, then one linear layer)."""

    n_labels: int
    pooling: str

    @nn.compact
    def __call__(self, hidden: Array, lengths: Array) -> Array:
        pooled = pool(hidden.astype(jnp.float32), lengths, self.pooling)
        return Linear(self.n_labels, use_bias=True, name="out")(pooled)


class TokenHead(nn.Module):
    """hidden f32[b, t, d] -> per-token class logits f32[b, t, c] (tagging)."""

    n_labels: int

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        return Linear(self.n_labels, use_bias=True, name="out")(hidden.astype(jnp.float32))


def final_hidden(
    model: nn.Module, params: PyTree, tokens: Array, lengths: Array | None = None, logit_positions: Array | None = None
) -> tuple[Array, Array]:
    """(logits f32[b, t or m, v], hidden f32[b, t, d]) of a ``CausalLM`` in one pass (the hidden states it sows).

    The logits are at ``logit_positions`` i32[b, m] (all positions when None), as ``CausalLM`` gives them.
    """
    kwargs = {} if lengths is None else {"lengths": lengths}
    (logits, _), state = model.apply(params, tokens, logit_positions=logit_positions, mutable="intermediates", **kwargs)
    return logits, jax.tree.leaves(state["intermediates"]["final_hidden"])[0]
