"""Client-level differential privacy: DP-FedAvg (McMahan et al. 2018, arXiv:1710.06963).

Each client clips its update to L2 norm S (:func:`clip_update`); the server adds Gaussian noise
of standard deviation z * S to the *sum* of the clipped updates and divides by the number m of
sampled clients, which is noise of std z * S / m on their mean (:func:`add_noise`). With clients
sampled at rate q per round, one round is a sampled Gaussian mechanism; :func:`epsilon` composes
the rounds with the RDP accountant of ``dp-accounting`` (Mironov 2017), treating the sampling as
Poisson at rate q, as is standard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError

# Orders below ~2 make dp-accounting's series fail to converge (and log warnings) for small q.
_ORDERS = (2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0)


def clip_update(update: PyTree, clip: float) -> tuple[PyTree, Array]:
    """``(update * min(1, clip / ||update||), ||update||)``: the L2 norm over the whole pytree is at most ``clip``."""
    norm = optax.tree.norm(update)
    factor = jnp.minimum(1.0, clip / jnp.maximum(norm, 1e-12))
    return jax.tree.map(lambda x: x * factor, update), norm


def add_noise(mean: PyTree, std: float, key: Array) -> PyTree:
    """``mean + N(0, std^2 I)``; DP-FedAvg's std on the mean of m clipped updates is ``noise * clip / m``."""
    leaves, treedef = jax.tree.flatten(mean)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [x + std * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def epsilon(rounds: int, sampling_rate: float, noise: float, delta: float) -> float:
    """epsilon of ``rounds`` rounds of the sampled Gaussian mechanism at ``delta`` (RDP accountant)."""
    try:
        import dp_accounting
        from dp_accounting import rdp
    except ImportError:
        raise ConfigError(
            "train.federated.dp_noise needs the dp-accounting package to track epsilon; "
            "install it with `pip install -e '.[federated]'` or `pip install dp-accounting`."
        ) from None
    if rounds == 0:
        return 0.0
    accountant = rdp.RdpAccountant(orders=list(_ORDERS))
    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise))
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))
