"""The server side of a round: it receives only client updates (payloads) and counts, never data.

The aggregate is the weighted mean of the clients' deltas, ``sum_k w_k delta_k / D`` (FedAvg:
w_k = n_k, the client's data size, and D = sum of the w_k; DP-FedAvg: w_k = 1 and D = the number
sampled). Its negation is a pseudo-gradient that an optax transform applies to the global model
(Reddi et al. 2021, Adaptive Federated Optimization, arXiv:2003.00295): SGD with lr 1 is FedAvg,
SGD with momentum FedAvgM (Hsu et al. 2019), Adam FedAdam, Yogi FedYogi, and Nesterov momentum
DiLoCo's outer optimizer (Douillard et al. 2023).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from slm_jax.array_typing import Array, PyTree
from slm_jax.config import FederatedConfig
from slm_jax.federated.compression import decode_tree

DEFAULT_LR = {"sgd": 1.0, "momentum": 1.0, "nesterov": 0.7, "adam": 0.01, "yogi": 0.01}


def server_optimizer_name(f: FederatedConfig) -> str:
    """The configured server optimizer, or the algorithm's own (nesterov for DiLoCo, sgd otherwise)."""
    return f.server_optimizer or ("nesterov" if f.algorithm == "diloco" else "sgd")


def make_server_optimizer(f: FederatedConfig) -> optax.GradientTransformation:
    """The optax transform applied to the pseudo-gradient ``-mean delta``."""
    name = server_optimizer_name(f)
    lr = f.server_lr or DEFAULT_LR[name]
    if name == "sgd":
        return optax.sgd(lr)
    if name in ("momentum", "nesterov"):
        return optax.sgd(lr, momentum=f.server_momentum, nesterov=name == "nesterov")
    adaptive = optax.adam if name == "adam" else optax.yogi
    return adaptive(lr, b1=f.server_momentum, b2=f.server_beta2, eps=f.server_eps)


def decode_updates(payloads: PyTree, like: PyTree, method: str) -> PyTree:
    """Stacked payloads [m, ...] (compression.py) -> stacked float32 deltas shaped [m, *like]."""
    return jax.vmap(lambda p: decode_tree(p, like, method))(payloads)


def weighted_mean(updates: PyTree, weights: Array, denominator: Array) -> PyTree:
    """``sum_k weights[k] * updates[k] / denominator`` over the leading clients axis; weight-0 rows are skipped.

    updates: stacked f32[m, ...] leaves; weights f32[m]; a row with weight 0 (a dropped or failed
    client) contributes nothing even if it holds NaN.
    """

    def one(u):
        w = weights.reshape(-1, *([1] * (u.ndim - 1)))
        return jnp.sum(jnp.where(w > 0, u * w, 0.0), axis=0) / denominator

    return jax.tree.map(one, updates)


def server_step(
    tx: optax.GradientTransformation, params: PyTree, opt_state: PyTree, mean_delta: PyTree
) -> tuple[PyTree, PyTree]:
    """Apply the server optimizer to the pseudo-gradient ``-mean_delta``: the new global model and optimizer state."""
    pseudo_grad = jax.tree.map(jnp.negative, mean_delta)
    updates, opt_state = tx.update(pseudo_grad, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
