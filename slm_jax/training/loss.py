"""Next-token cross-entropy in float32, with an optional z-loss (PaLM, Chowdhery et al. 2022)."""

import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array


def cross_entropy(logits: Array, targets: Array, mask: Array | None = None, z_loss: float = 0.0) -> tuple[Array, dict]:
    """Mean token loss over ``mask``: logits f32[b, t, v], targets i32[b, t], mask bool/f32[b, t].

    Returns (loss to differentiate, metrics) where metrics["loss"] is the plain cross-entropy
    (without z-loss) and ``tokens`` the number of scored tokens.
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [b, t]
    nll = log_z - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    weights = jnp.ones_like(nll) if mask is None else mask.astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    ce = (nll * weights).sum() / count
    total = ce + z_loss * ((log_z**2) * weights).sum() / count if z_loss else ce
    accuracy = ((jnp.argmax(logits, -1) == targets) * weights).sum() / count
    return total, {"loss": ce, "accuracy": accuracy, "tokens": weights.sum()}
