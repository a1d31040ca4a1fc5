"""The client side of a round: local training on the client's own batches; the only code that sees its data.

``client_update`` runs E local steps of the ordinary train step (training/step.py) from the
global parameters and returns the parameter delta ``w_local - w_global``, the client's optimizer
state and its mean training loss. FedAvg / FedSGD (McMahan et al. 2017) use plain SGD locally;
FedProx (Li et al. 2020, arXiv:1812.06127) adds ``mu / 2 * ||w - w_global||^2`` to the loss;
DiLoCo (Douillard et al. 2023, arXiv:2311.08105) runs H steps of AdamW whose state each replica
keeps across rounds. Batches of a client are drawn from its tokens alone, seeded by
(seed, round, client), so a round is reproducible and resumable from its index.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from slm_jax.array_typing import Array, PyTree
from slm_jax.training.step import make_loss_fn, make_train_step


def client_batches(tokens: np.ndarray, round_idx: int, client: int, steps: int, batch: int, seq_len: int, seed: int):
    """i32[steps, batch, seq_len + 1]: random windows of one client's ``tokens`` for one round."""
    rng = np.random.default_rng([seed, round_idx, client])
    offsets = rng.integers(0, len(tokens) - seq_len, size=(steps, batch))
    return np.asarray(tokens)[offsets[..., None] + np.arange(seq_len + 1)].astype(np.int32)


def proximal_loss(loss_fn: Callable, mu: float) -> Callable:
    """FedProx: ``loss_fn(params, batch) + mu / 2 * ||params - anchor||^2``; metrics keep the plain loss."""

    def loss(params: PyTree, batch: Array, anchor: PyTree) -> tuple[Array, dict]:
        value, metrics = loss_fn(params, batch)
        gap = jax.tree.map(jnp.subtract, params, anchor)
        return value + 0.5 * mu * optax.tree.norm(gap, squared=True), metrics

    return loss


def make_client_update(
    model: nn.Module, optimizer: optax.GradientTransformation, mu: float = 0.0, z_loss: float = 0.0
) -> Callable:
    """``client_update(global_params, opt_state, batches i32[E, b, t + 1]) -> (delta, opt_state, loss)``.

    Pure and jittable; vmap it over a leading ``clients`` axis of ``opt_state`` and ``batches``.
    ``opt_state`` is ``optimizer.init(global_params)`` for a stateless client optimizer.
    """
    loss_fn = make_loss_fn(model, z_loss)
    if mu:
        loss_fn = proximal_loss(loss_fn, mu)
    step = make_train_step(model, optimizer, lambda _: 0.0, loss_fn=loss_fn)

    def client_update(global_params: PyTree, opt_state: PyTree, batches: Array) -> tuple[PyTree, PyTree, Array]:
        anchor = (global_params,) if mu else ()

        def body(state, batch):
            state, metrics = step(state, batch, *anchor)
            return state, metrics["loss"]

        start = {"params": global_params, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}
        state, losses = jax.lax.scan(body, start, batches)
        delta = jax.tree.map(jnp.subtract, state["params"], global_params)
        return delta, state["opt_state"], losses.mean()

    return client_update
