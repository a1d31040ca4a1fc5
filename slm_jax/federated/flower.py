"""Flower adapter: our client phase as a Flower client, our server phase as a Flower Strategy.

Flower (Beutel et al. 2020, arXiv:2007.14390) moves the messages between real processes; the
arithmetic stays ours, so a Flower run equals the simulation (rounds.py) for the same config,
seed and client split. A client process holds one client's data (a shard of ``slm data
partition``), runs ``Federation.client_phase`` on it (local steps, clipping, compression with
error feedback) and sends the payload arrays; :class:`FederatedStrategy` samples clients with
``rounds.sample_clients``, stacks what they sent and applies ``Federation.server_phase``
(weighted mean, DP noise, server optimizer). Uses Flower's ``start_server`` / ``start_client``
(gRPC), run as::

    python -m slm_jax.federated.flower server CONFIG --shards DIR --address 127.0.0.1:8080 --out params.npz
    python -m slm_jax.federated.flower client CONFIG --shards DIR --address 127.0.0.1:8080 --index K

Secure aggregation is simulated only (its masks need every peer's liveness before sending);
the run refuses it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from slm_jax.array_typing import PyTree
from slm_jax.config import Config, load_config
from slm_jax.data.source import open_dataset
from slm_jax.errors import ConfigError
from slm_jax.federated import compression, rounds, server
from slm_jax.federated.client import client_batches
from slm_jax.federated.partition import Client
from slm_jax.federated.shards import MANIFEST
from slm_jax.models.lm import CausalLM
from slm_jax.training.step import init_state
from slm_jax.training.train import with_data_vocab

try:
    from flwr.client import NumPyClient, start_client
    from flwr.common import FitIns, GetPropertiesIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerConfig, start_server
    from flwr.server.strategy import Strategy
except ImportError:
    raise ConfigError(
        "The Flower adapter needs the flwr package; install it with `pip install -e '.[federated]'`."
    ) from None


def build(cfg: Config, shards: str | Path) -> tuple[rounds.Federation, PyTree]:
    """``(Federation, initial round state)`` for a partition, exactly as the simulated trainer builds them (train.py).

    ``model.vocab_size`` 0 is taken from the shards' tokenizer, as ``slm train`` takes it from the data.
    """
    manifest = json.loads((Path(shards) / MANIFEST).read_text(encoding="utf-8"))
    cfg = with_data_vocab(cfg, open_dataset(Path(shards) / manifest["clients"][0]["dir"]))
    f, t, n_clients = cfg.train.federated, cfg.train, manifest["n_clients"]
    if f.secure_agg:
        raise ConfigError(
            "train.federated.secure_agg is simulated only; unset it to run over Flower (or use `slm train`)."
        )
    model = CausalLM(cfg.model)
    params = init_state(model, optax.identity(), t.seed, t.seq_len)["params"]
    plan = rounds.make_plan(cfg, n_clients)
    client_tx = rounds.make_client_optimizer(cfg, params)
    server_tx = server.make_server_optimizer(f)
    fed = rounds.Federation(model, plan, client_tx, server_tx, f.mu, t.z_loss)
    return fed, rounds.init_round_state(params, plan, client_tx, server_tx)


def load_shard(shards: str | Path, index: int) -> Client:
    """Client ``index`` of a ``slm data partition`` directory."""
    entry = json.loads((Path(shards) / MANIFEST).read_text(encoding="utf-8"))["clients"][index]
    data = open_dataset(Path(shards) / entry["dir"])
    return Client(entry["name"], np.asarray(data.train), np.asarray(data.val))


def to_arrays(tree: PyTree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def from_arrays(arrays: list[np.ndarray], like: PyTree) -> PyTree:
    return jax.tree.unflatten(jax.tree.structure(like), [jnp.asarray(a) for a in arrays])


class FlowerClient(NumPyClient):
    """Client ``index`` of the partition: its data, and its state between rounds (AdamW moments, residual)."""

    def __init__(self, fed: rounds.Federation, state: PyTree, client: Client, index: int):
        self.fed, self.client, self.index = fed, client, index
        self.like = state["params"]
        self.held = jax.tree.map(lambda a: a[index : index + 1], state.get("clients", {}))  # [1, ...] leaves

    def get_properties(self, config):
        return {"client": self.index}

    def fit(self, parameters, config):
        params = from_arrays(parameters, self.like)
        plan = self.fed.plan
        batches = client_batches(
            self.client.train, int(config["round"]), self.index, plan.local_steps, plan.batch, plan.seq_len, plan.seed
        )
        payload, opt, residual, loss, finite = self.fed.client_phase(
            params, self.held.get("opt"), self.held.get("residual"), batches[None]
        )
        if bool(finite[0]):  # as in the simulation, a failed client keeps its old state
            self.held = {name: new for name, new in (("opt", opt), ("residual", residual)) if name in self.held}
        payload = jax.tree.map(lambda x: x[0], payload)
        return to_arrays(payload), self.client.size, {"loss": float(loss[0]), "finite": bool(finite[0])}


class FederatedStrategy(Strategy):
    """Our round on the server: sample clients, aggregate their payloads with ``Federation.server_phase``."""

    def __init__(self, fed: rounds.Federation, state: PyTree, timeout: float = 120.0):
        self.fed, self.timeout = fed, timeout
        self.params, self.server_opt = state["params"], state["server_opt"]
        self.payload_like = jax.eval_shape(
            lambda t: compression.encode_tree(t, fed.plan.compression, fed.plan.topk_fraction), self.params
        )
        self.proxies: dict[int, object] = {}  # our client index -> Flower's proxy
        self.history: list[dict] = []

    def initialize_parameters(self, client_manager):
        return ndarrays_to_parameters(to_arrays(self.params))

    def configure_fit(self, server_round, parameters, client_manager):
        plan = self.fed.plan
        if not client_manager.wait_for(plan.n_clients, int(self.timeout)):
            raise ConfigError(f"Only {client_manager.num_available()} of {plan.n_clients} Flower clients connected.")
        for proxy in client_manager.all().values():
            if proxy not in self.proxies.values():
                props = proxy.get_properties(GetPropertiesIns({}), timeout=self.timeout, group_id=server_round)
                self.proxies[int(props.properties["client"])] = proxy
        ids, dropped = rounds.sample_clients(plan, server_round)
        ins = FitIns(parameters, {"round": server_round})
        return [(self.proxies[int(k)], ins) for k in ids[~dropped]]

    def aggregate_fit(self, server_round, results, failures):
        plan = self.fed.plan
        ids, _ = rounds.sample_clients(plan, server_round)
        index = {proxy: k for k, proxy in self.proxies.items()}
        got = {index[proxy]: res for proxy, res in results}
        zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), self.payload_like)
        rows, sizes, alive, losses = [], [], [], []
        for k in ids:
            res = got.get(int(k))
            ok = res is not None and bool(res.metrics["finite"])
            rows.append(from_arrays(parameters_to_ndarrays(res.parameters), zeros) if res is not None else zeros)
            sizes.append(res.num_examples if res is not None else 0)
            alive.append(ok)
            losses.append(res.metrics["loss"] if ok else 0.0)
        sizes, alive = np.array(sizes, np.float32), np.array(alive)
        if plan.dp_noise or plan.dp_clip:
            weights, denominator = alive.astype(np.float32), float(plan.per_round)
        else:
            weights = sizes * alive
            denominator = float(weights.sum())
        if alive.any():
            received = jax.tree.map(lambda *r: jnp.stack(r), *rows)
            noise_key = jax.random.fold_in(jax.random.key(plan.seed + 1), server_round)
            self.params, self.server_opt, _ = self.fed.server_phase(
                self.params, self.server_opt, received, weights, denominator, noise_key
            )
        loss = float(np.sum(np.array(losses) * sizes * alive) / max(np.sum(sizes * alive), 1.0))
        self.history.append({"round": server_round, "loss": loss, "clients": int(alive.sum())})
        return ndarrays_to_parameters(to_arrays(self.params)), {"loss": loss, "clients": int(alive.sum())}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


def run_server(cfg: Config, shards: str | Path, address: str, out: str | Path) -> list[dict]:
    """Serve ``train.federated.rounds`` rounds to the partition's clients; save the final params as .npz."""
    fed, state = build(cfg, shards)
    strategy = FederatedStrategy(fed, state)
    start_server(server_address=address, config=ServerConfig(num_rounds=cfg.train.federated.rounds), strategy=strategy)
    flat = {
        jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(strategy.params)
    }
    np.savez(out, **flat)
    return strategy.history


def run_client(cfg: Config, shards: str | Path, address: str, index: int) -> None:
    """Client ``index`` of the partition: train when asked until the server ends the run."""
    fed, state = build(cfg, shards)
    client = FlowerClient(fed, state, load_shard(shards, index), index)
    start_client(server_address=address, client=client.to_client(), insecure=True, max_wait_time=60.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m slm_jax.federated.flower", description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("config", help="YAML config (train.federated as for `slm train`)")
    parser.add_argument("--shards", required=True, help="directory written by `slm data partition`")
    parser.add_argument("--address", default="127.0.0.1:8080")
    parser.add_argument("--index", type=int, default=0, help="client: which shard this process holds")
    parser.add_argument("--out", default="flower_params.npz", help="server: where the final parameters go")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.role == "server":
        print(json.dumps(run_server(cfg, args.shards, args.address, args.out)))
    else:
        run_client(cfg, args.shards, args.address, args.index)


if __name__ == "__main__":
    main()
