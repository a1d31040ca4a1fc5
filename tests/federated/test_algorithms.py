"""FedAvg / FedSGD against centralized training, vmapped clients against sequential ones, FedProx, drops."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from slm_jax.federated import rounds, server
from slm_jax.federated.client import client_batches
from slm_jax.training.step import make_loss_fn, make_train_step
from tests.federated.helpers import SEQ, assert_trees_close, federation, tiny_clients, tiny_config


def test_fedavg_one_client_equals_centralized_local_steps():
    """One client, E SGD steps, server SGD lr 1: the new global model is the client's model after E steps."""
    cfg = tiny_config(n_clients=1, local_steps=3, client_lr=0.3)
    clients = tiny_clients([200])
    model, fed, state = federation(cfg, 1)
    new_state, metrics = fed.run_round(state, 1, clients)

    step = jax.jit(make_train_step(model, optax.sgd(0.3), lambda _: 0.3))
    central = {"params": state["params"], "opt_state": optax.sgd(0.3).init(state["params"]), "step": jnp.int32(0)}
    batches = client_batches(clients[0].train, 1, 0, 3, 2, SEQ, cfg.train.seed)
    losses = []
    for b in batches:
        central, m = step(central, b)
        losses.append(float(m["loss"]))
    # global + (local - global) differs from local by float rounding only
    assert_trees_close(new_state["params"], central["params"], atol=1e-6)
    assert metrics["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert not np.allclose(jax.tree.leaves(new_state["params"])[0], jax.tree.leaves(state["params"])[0])


def test_fedsgd_all_clients_equals_one_weighted_centralized_step():
    """FedSGD (one local step, every client): one SGD step on the data-size-weighted mean of client gradients."""
    sizes = [60, 150, 300]
    cfg = tiny_config(algorithm="fedsgd", n_clients=3, client_lr=0.5)
    clients = tiny_clients(sizes)
    model, fed, state = federation(cfg, 3)
    new_state, _ = fed.run_round(state, 1, clients)

    grad = jax.grad(lambda p, b: make_loss_fn(model)(p, b)[0])
    weights = np.array(sizes) / sum(sizes)
    grads = [
        grad(state["params"], client_batches(c.train, 1, k, 1, 2, SEQ, cfg.train.seed)[0])
        for k, c in enumerate(clients)
    ]
    mean = jax.tree.map(lambda *g: sum(w * x for w, x in zip(weights, g)), *grads)
    expected = jax.tree.map(lambda p, g: p - 0.5 * g, state["params"], mean)
    assert_trees_close(new_state["params"], expected, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["diloco", "fedprox"])
def test_vmapped_clients_equal_sequential_groups(algorithm):
    """All clients in one vmap, one at a time, and in groups of 3 (a padded last group) give the same rounds."""
    clients = tiny_clients([100, 120, 140, 160, 180])
    extra = {"mu": 0.1, "server_optimizer": "adam", "compression": "topk", "topk_fraction": 0.2}
    extra = extra if algorithm == "fedprox" else {}
    results = []
    for group in (0, 1, 3):
        cfg = tiny_config(
            algorithm=algorithm, n_clients=5, clients_per_round=4, local_steps=2, clients_in_parallel=group, **extra
        )
        _, fed, state = federation(cfg, 5)
        for r in (1, 2):
            state, metrics = fed.run_round(state, r, clients)
        results.append((state, metrics["loss"]))
    for state, loss in results[1:]:
        assert_trees_close(state, results[0][0], atol=2e-6)
        assert loss == pytest.approx(results[0][1], rel=1e-5)


def test_fedprox_term_pulls_towards_the_global_model():
    """A larger mu keeps the client closer to the global model (at a step size stable for the proximal term)."""
    clients = tiny_clients([200])
    norms = []
    for mu in (0.0, 2.0, 5.0):
        cfg = tiny_config(algorithm="fedprox", n_clients=1, local_steps=6, client_lr=0.1, mu=mu)
        _, fed, state = federation(cfg, 1)
        norms.append(fed.run_round(state, 1, clients)[1]["update_norm"])
    assert norms[0] > norms[1] > norms[2]


def test_dropped_clients_leave_the_round_and_bytes_count_senders():
    cfg = tiny_config(n_clients=6, drop_fraction=0.5, local_steps=1)
    clients = tiny_clients([100] * 6)
    _, fed, state = federation(cfg, 6)
    n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    seen_drop = False
    for r in range(1, 6):
        state, m = fed.run_round(state, r, clients)
        assert m["clients"] + m["dropped"] == 6
        assert m["bytes_up"] == m["clients"] * (4 * n_params + 4)
        assert m["bytes_down"] == 6 * 4 * n_params
        seen_drop |= m["dropped"] > 0
    assert seen_drop
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_weighted_mean_skips_failed_clients_holding_nan():
    updates = {"w": jnp.array([[1.0, 2.0], [np.nan, np.nan], [3.0, 6.0]])}
    mean = server.weighted_mean(updates, jnp.array([1.0, 0.0, 3.0]), jnp.float32(4.0))
    np.testing.assert_allclose(mean["w"], [2.5, 5.0])


def test_server_phase_receives_only_updates_and_counts():
    """Structure: the server function's inputs are the model, its optimizer state, what clients sent, weights."""
    names = tuple(inspect.signature(rounds.Federation._server_phase).parameters)
    assert names == ("self", "params", "server_opt", "received", "weights", "denominator", "noise_key")
    cfg = tiny_config(n_clients=3, local_steps=2)
    clients = tiny_clients([100, 100, 100])
    _, fed, state = federation(cfg, 3)
    seen = []
    real = fed.server_phase
    fed.server_phase = lambda *args: seen.append(args) or real(*args)
    fed.run_round(state, 1, clients)
    (params, _, received, weights, _, _) = seen[0]
    tokens = {c.train.tobytes() for c in clients}
    for leaf in jax.tree.leaves(received):
        assert jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.shape[-1] != SEQ + 1
        assert np.asarray(leaf).tobytes() not in tokens
    np.testing.assert_array_equal(weights, [100, 100, 100])
