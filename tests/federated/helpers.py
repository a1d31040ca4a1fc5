"""A tiny model, config and clients shared by the federated tests."""

import jax
import numpy as np

from slm_jax.config import config_from_dict
from slm_jax.federated import rounds, server
from slm_jax.federated.partition import Client
from slm_jax.models.lm import CausalLM

SEQ = 8
VOCAB = 11


def tiny_config(**federated):
    return config_from_dict(
        {
            "model": {"n_layers": 1, "d_model": 16, "n_heads": 2, "vocab_size": VOCAB},
            "train": {"seq_len": SEQ, "batch_size": 2, "federated": {"algorithm": "fedavg", **federated}},
        }
    )


def tiny_clients(sizes, seed=0):
    """Clients of random tokens with the given training sizes (in tokens)."""
    rng = np.random.default_rng(seed)
    return [
        Client(f"c{k}", rng.integers(0, VOCAB, n).astype(np.int32), rng.integers(0, VOCAB, 40).astype(np.int32))
        for k, n in enumerate(sizes)
    ]


def federation(cfg, n_clients):
    """``(model, Federation, initial round state)`` for ``cfg`` and ``n_clients`` clients."""
    model = CausalLM(cfg.model)
    params = model.init(jax.random.key(0), np.zeros((1, SEQ), np.int32))
    plan = rounds.make_plan(cfg, n_clients)
    client_tx = rounds.make_client_optimizer(cfg, params)
    server_tx = server.make_server_optimizer(cfg.train.federated)
    fed = rounds.Federation(model, plan, client_tx, server_tx, cfg.train.federated.mu)
    return model, fed, rounds.init_round_state(params, plan, client_tx, server_tx)


def assert_trees_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)
