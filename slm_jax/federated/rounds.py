"""One federated round: sample clients, train them in vmapped groups, aggregate on the server.

The round state is a plain dict: ``{"params", "server_opt"}`` plus, when clients keep state
between rounds, ``"clients": {"opt": [K, ...] (AdamW clients), "residual": [K, ...] (error
feedback)}`` stacked over all K clients. A round is a pure function of that state and the round
index: which clients are sampled, which drop out and every client's batches are seeded by
(seed, round), so a resumed run repeats the uninterrupted one.

With several devices the clients axis is sharded over a 1-D ``clients`` mesh of
``train.federated.client_devices`` devices (every local one by default): each group of clients
(padded to a multiple of the devices with copies of its last client, whose results are dropped)
is split along its leading axis, the global model and per-client state are replicated, and the
one compiled client phase runs ``group / devices`` clients per device; the server's sum over
clients becomes a cross-device reduction.

The phases keep the data flow one-way: client phase (client.py + clipping + compression: sees
the client's batches) -> the client's payload -> [secure aggregation masks, client side] ->
server phase (server.py: payloads, weights and a count, nothing else).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from slm_jax.array_typing import Array, PyTree
from slm_jax.config import Config
from slm_jax.errors import ConfigError
from slm_jax.federated import compression, privacy, secure_agg, server
from slm_jax.federated.client import client_batches, make_client_update
from slm_jax.federated.partition import Client
from slm_jax.training.optim import make_optimizer


@dataclass(frozen=True)
class Plan:
    """The static shape of every round, resolved from ``train.federated`` and the partition."""

    n_clients: int  # K
    per_round: int  # m sampled each round
    group: int  # clients vmapped together (a multiple of devices)
    devices: int  # devices the clients axis is sharded over (1: no mesh)
    local_steps: int
    batch: int
    seq_len: int
    seed: int
    compression: str
    topk_fraction: float
    drop_fraction: float
    dp_clip: float
    dp_noise: float
    secure_agg: bool
    stateful_clients: bool  # AdamW clients keep their optimizer state across rounds

    @property
    def sampling_rate(self) -> float:
        return self.per_round / self.n_clients


def make_plan(cfg: Config, n_clients: int) -> Plan:
    f, t = cfg.train.federated, cfg.train
    per_round = f.clients_per_round or max(1, round(f.fraction * n_clients))
    per_round = min(per_round, n_clients)
    group = min(f.clients_in_parallel or per_round, per_round)
    if f.client_devices > jax.local_device_count():
        raise ConfigError(
            f"train.federated.client_devices={f.client_devices} but this host has {jax.local_device_count()} "
            "devices; lower it (0 = every device)."
        )
    devices = min(f.client_devices or jax.local_device_count(), group)
    return Plan(
        n_clients=n_clients,
        per_round=per_round,
        group=-(-group // devices) * devices,
        devices=devices,
        local_steps=f.local_steps,
        batch=f.client_batch or t.batch_size,
        seq_len=t.seq_len,
        seed=t.seed,
        compression=f.compression,
        topk_fraction=f.topk_fraction,
        drop_fraction=f.drop_fraction,
        dp_clip=f.dp_clip,
        dp_noise=f.dp_noise,
        secure_agg=f.secure_agg,
        stateful_clients=client_optimizer_name(cfg) == "adamw",
    )


def client_optimizer_name(cfg: Config) -> str:
    f = cfg.train.federated
    return f.client_optimizer or ("adamw" if f.algorithm == "diloco" else "sgd")


def make_client_optimizer(cfg: Config, abstract_params: PyTree) -> optax.GradientTransformation:
    """Plain SGD at ``client_lr``, or the ``optim`` section's AdamW scheduled over ``rounds * local_steps`` steps."""
    f = cfg.train.federated
    if client_optimizer_name(cfg) == "sgd":
        return optax.sgd(f.client_lr)
    return make_optimizer(cfg.optim, f.rounds * f.local_steps, abstract_params)[0]


def sample_clients(plan: Plan, round_idx: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids i64[m] ascending, dropped bool[m])`` for round ``round_idx`` (1-based)."""
    rng = np.random.default_rng([plan.seed, round_idx, 1])
    ids = np.sort(rng.choice(plan.n_clients, plan.per_round, replace=False))
    return ids, rng.random(plan.per_round) < plan.drop_fraction


def init_round_state(params: PyTree, plan: Plan, client_tx, server_tx) -> PyTree:
    """The state before round 1: global params, server optimizer state, per-client state if any."""
    state = {"params": params, "server_opt": server_tx.init(params)}
    stack = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (plan.n_clients, *x.shape)), tree)
    clients = {}
    if plan.stateful_clients:
        clients["opt"] = stack(client_tx.init(params))
    if plan.compression != "none":
        clients["residual"] = stack(jax.tree.map(jnp.zeros_like, params))
    if clients:
        state["clients"] = clients
    return state


class Federation:
    """The compiled client and server phases of a round for one model and plan.

    Args:
      model: the CausalLM every client trains.
      plan: the round shape (make_plan).
      client_tx, server_tx: client optimizer and server optimizer (server.py).
      mu: FedProx proximal weight.
      z_loss: the train section's z-loss weight.
    """

    def __init__(self, model: nn.Module, plan: Plan, client_tx, server_tx, mu: float = 0.0, z_loss: float = 0.0):
        self.plan, self.client_tx, self.server_tx = plan, client_tx, server_tx
        update = make_client_update(model, client_tx, mu, z_loss)

        def client_phase(params, opt_state, residual, batches):
            if opt_state is None:
                opt_state = client_tx.init(params)
            delta, opt_state, loss = update(params, opt_state, batches)
            if plan.dp_clip:
                delta, _ = privacy.clip_update(delta, plan.dp_clip)
            finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(delta)]))
            if residual is None:
                payload = compression.encode_tree(delta, plan.compression, plan.topk_fraction)
            else:
                payload, residual = compression.with_error_feedback(
                    delta, residual, plan.compression, plan.topk_fraction
                )
            return payload, opt_state, residual, loss, finite

        self.client_phase = jax.jit(jax.vmap(client_phase, in_axes=(None, 0, 0, 0)))
        self.mask_phase = jax.jit(self._mask_phase)
        self.server_phase = jax.jit(self._server_phase)
        self._up_bytes = None
        self.mesh = Mesh(np.array(jax.local_devices()[: plan.devices]), ("clients",)) if plan.devices > 1 else None

    def _place(self, tree: PyTree, split: bool) -> PyTree:
        """On the ``clients`` mesh: leading axis split over its devices (``split``) or replicated; unchanged without."""
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, P("clients") if split else P()))

    # ------------------------------------------------------------------ client side
    @staticmethod
    def _mask_phase(payloads, coefs, peers, alive, round_key):
        """Each client weights its own update by its public coefficient and masks it (secure_agg.py).

        payloads: stacked f32 [m, ...]; coefs f32[m]; peers i32[m] (the round's client ids);
        alive bool[m]. Returns what reaches the server: the stacked u32 masked updates, with zero
        rows for the clients that sent nothing.
        """
        masks = secure_agg.client_masks(jax.tree.map(lambda x: x[0], payloads), peers, alive, round_key)
        weighted = jax.tree.map(lambda x: x * coefs.reshape(-1, *([1] * (x.ndim - 1))), payloads)
        masked = jax.vmap(secure_agg.mask_update)(weighted, masks)
        return jax.tree.map(lambda u: jnp.where(_rows(alive, u), u, jnp.uint32(0)), masked)

    # ------------------------------------------------------------------ server side
    def _server_phase(self, params, server_opt, received, weights, denominator, noise_key):
        """Aggregate what the clients sent and step the server optimizer; sees no client data.

        received: stacked payloads [m, ...] (plain), or stacked masked u32 updates (secure
        aggregation, already weighted by the clients); weights f32[m]; denominator f32[].
        """
        plan = self.plan
        if plan.secure_agg:
            mean = compression.decode_tree(secure_agg.unmask_sum(received), params, "none")
        else:
            updates = server.decode_updates(received, params, plan.compression)
            mean = server.weighted_mean(updates, weights, denominator)
        if plan.dp_noise:
            mean = privacy.add_noise(mean, plan.dp_noise * plan.dp_clip / plan.per_round, noise_key)
        params, server_opt = server.server_step(self.server_tx, params, server_opt, mean)
        return params, server_opt, optax.tree.norm(mean)

    # ------------------------------------------------------------------ one round
    def _batches(self, client: Client, round_idx: int, k: int) -> np.ndarray:
        """Client ``k``'s batches of this round, drawn from its own tokens: i32[E, B, t + 1]."""
        p = self.plan
        return client_batches(client.train, round_idx, k, p.local_steps, p.batch, p.seq_len, p.seed)

    def run_round(self, state: PyTree, round_idx: int, clients: list[Client]) -> tuple[PyTree, dict]:
        """Round ``round_idx`` (1-based) from ``state``: the next state and the round's metrics."""
        plan = self.plan
        ids, dropped = sample_clients(plan, round_idx)
        state = self._place(state, split=False)
        held = state.get("clients", {})
        n_groups = -(-plan.per_round // plan.group)
        padded = np.concatenate([ids, np.repeat(ids[-1:], n_groups * plan.group - plan.per_round)])  # last group full
        outs = []
        for rows in padded.reshape(n_groups, plan.group):
            batches = np.stack([self._batches(clients[k], round_idx, int(k)) for k in rows])
            gathered = {name: _gather(tree, rows) for name, tree in held.items()}
            batches, gathered = self._place((batches, gathered), split=True)  # each device trains group / devices
            outs.append(self.client_phase(state["params"], gathered.get("opt"), gathered.get("residual"), batches))
        stacked = _join(outs, plan.per_round)
        payloads, opt_states, residuals, losses, finite = stacked
        failed = ~np.asarray(finite)
        alive = ~dropped & ~failed
        sizes = np.array([clients[k].size for k in ids], np.float32)

        if plan.dp_noise or plan.dp_clip:
            weights, denominator = alive.astype(np.float32), float(plan.per_round)
        else:
            weights = sizes * alive
            denominator = float(weights.sum())
        new_state = dict(state)
        norm = 0.0
        if alive.any():
            if plan.secure_agg:
                round_key = jax.random.fold_in(jax.random.key(plan.seed), round_idx)
                coefs = weights / denominator
                peers = jnp.asarray(ids, jnp.int32)
                received = self.mask_phase(payloads, coefs, peers, jnp.asarray(alive), round_key)
            else:
                received = payloads
            noise_key = jax.random.fold_in(jax.random.key(plan.seed + 1), round_idx)
            params, server_opt, norm = self.server_phase(
                state["params"], state["server_opt"], received, weights, denominator, noise_key
            )
            new_state.update(params=params, server_opt=server_opt)
        new_state.update(_write_back(held, ids, alive, {"opt": opt_states, "residual": residuals}))

        n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
        if self._up_bytes is None:  # tracing the encoder costs more than a small model's aggregation: once
            self._up_bytes = compression.payload_bytes(state["params"], plan.compression, plan.topk_fraction)
        up = self._up_bytes
        per_client_up = (4 * n_params if plan.secure_agg else up) + 4  # + the client's count (int32)
        sent = int(alive.sum())
        loss = float(np.sum(np.asarray(losses) * sizes * alive) / max(np.sum(sizes * alive), 1.0))
        metrics = {
            "loss": loss if sent else math.nan,
            "clients": sent,
            "dropped": int(dropped.sum()),
            "failed": int((failed & ~dropped).sum()),
            "update_norm": float(norm),
            "bytes_up": sent * per_client_up,
            "bytes_down": plan.per_round * 4 * n_params,
        }
        return new_state, metrics


def _rows(mask: np.ndarray, like: Array) -> Array:
    """bool[m] -> broadcastable bool[m, 1, ...] for a stacked leaf ``like``."""
    return jnp.asarray(mask).reshape(-1, *([1] * (like.ndim - 1)))


@partial(jax.jit, static_argnums=1)
def _join(outs: list, m: int) -> PyTree:
    """The groups' outputs as one stack over the round's first ``m`` clients (padding dropped; one dispatch)."""
    return jax.tree.map(lambda *a: jnp.concatenate(a)[:m], *outs)


@jax.jit
def _gather(tree: PyTree, rows: Array) -> PyTree:
    """Rows ``rows`` of every stacked [K, ...] leaf (one compiled gather, not one dispatch per leaf)."""
    return jax.tree.map(lambda a: a[rows], tree)


@jax.jit
def _scatter(tree: PyTree, new: PyTree, ids: Array, alive: Array) -> PyTree:
    """``tree`` [K, ...] with rows ``ids`` replaced by ``new`` [m, ...] where ``alive`` (fixed shapes: one compile)."""

    def one(old, upd):
        return old.at[ids].set(jnp.where(_rows(alive, upd), upd, old[ids]))

    return jax.tree.map(one, tree, new)


def _write_back(held: dict, ids: np.ndarray, alive: np.ndarray, new: dict) -> dict:
    """Per-client state after the round: clients that finished keep their new state, others their old one."""
    if not held:
        return {}
    return {"clients": {name: _scatter(tree, new[name], ids, alive) for name, tree in held.items()}}
