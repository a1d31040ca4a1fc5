"""Federated simulation speed: vmapped clients vs centralized training at the same total batch, and round overhead.

1. Throughput: one round of K clients, each E local SGD steps of B windows, vmapped over a
   ``clients`` axis (rounds.Federation.run_round, the trainer's code), against E centralized SGD
   steps of one K * B batch (training/step.py): the same tokens, timed interleaved (A B A B) in
   one process, so the ratio holds under machine load better than either number.
2. Overhead at K clients: a round's time split into the clients' compute (the vmapped client
   phase) and everything else: drawing batches on the host, secure-aggregation masking, the
   server's aggregation and optimizer step, the DP accountant's epsilon (privacy.epsilon, called
   once per round as federated/train.py does). The phases are timed by wrapping them with a
   ``block_until_ready``.

    python benchmarks/federated.py                      # K=16, B=4, E=2, a 2-layer d=64 transformer
    python benchmarks/federated.py --clients 16 --repeats 5 --set model.d_model=128

Prints one JSON line per measurement, then a table.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from slm_jax.config import load_config
from slm_jax.federated import privacy, rounds, server
from slm_jax.federated.partition import Client
from slm_jax.models.lm import CausalLM
from slm_jax.training.step import init_state, make_train_step


def make_config(args, **federated):
    """A small transformer; ``federated`` keys go to ``train.federated``; ``--set`` overrides apply last."""
    fed = {"algorithm": "fedavg", "n_clients": args.clients, "local_steps": args.local_steps, "rounds": 1000}
    fed.update(client_batch=args.batch, **federated)
    defaults = {"model.n_layers": 2, "model.d_model": 64, "model.n_heads": 4, "model.vocab_size": 256}
    defaults["train.seq_len"] = args.seq_len
    fed_keys = [(f"train.federated.{k}", v) for k, v in fed.items()]
    return load_config(None, [*defaults.items(), *fed_keys, *args.set])


def make_federation(cfg, clients):
    model = CausalLM(cfg.model)
    params = init_state(model, optax.identity(), 0, cfg.train.seq_len)["params"]
    plan = rounds.make_plan(cfg, len(clients))
    client_tx = rounds.make_client_optimizer(cfg, params)
    server_tx = server.make_server_optimizer(cfg.train.federated)
    fed = rounds.Federation(model, plan, client_tx, server_tx)
    return model, fed, rounds.init_round_state(params, plan, client_tx, server_tx)


def timed(fn, sink: dict, name: str):
    """``fn`` that adds its wall time (results ready) to ``sink[name]``."""

    def wrapper(*args):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        sink[name] = sink.get(name, 0.0) + time.perf_counter() - t0
        return out

    return wrapper


def throughput(args, clients) -> dict:
    """Interleaved rounds and centralized step groups: tokens/s of each and their ratio."""
    cfg = make_config(args, client_lr=0.1)
    model, fed, state = make_federation(cfg, clients)
    k, e, b, t = args.clients, args.local_steps, args.batch, args.seq_len
    step = jax.jit(make_train_step(model, optax.sgd(0.1), lambda _: 0.1))
    central = {"params": state["params"], "opt_state": optax.sgd(0.1).init(state["params"]), "step": jnp.int32(0)}
    rng = np.random.default_rng(0)
    big = [rng.integers(0, 256, (k * b, t + 1), np.int32) for _ in range(e)]

    def run_federated(r):
        nonlocal state
        state, _ = fed.run_round(state, r, clients)
        jax.block_until_ready(state["params"])

    def run_central(_):
        nonlocal central
        for batch in big:
            central, m = step(central, batch)
        jax.block_until_ready(m)

    run_federated(1), run_central(0)  # compile
    fed_s, central_s = [], []
    for r in range(2, 2 + args.repeats):
        for fn, sink in ((run_federated, fed_s), (run_central, central_s)):
            t0 = time.perf_counter()
            fn(r)
            sink.append(time.perf_counter() - t0)
    tokens = k * e * b * t
    fed_tps, central_tps = tokens / np.median(fed_s), tokens / np.median(central_s)
    return {
        "measure": "throughput",
        "clients": k,
        "tokens_per_round": tokens,
        "federated_tokens_per_s": round(fed_tps),
        "centralized_tokens_per_s": round(central_tps),
        "ratio": round(fed_tps / central_tps, 3),
    }


def overhead(args, clients, name: str, **federated) -> dict:
    """Median share of a round's time outside the clients' compute, with its parts."""
    cfg = make_config(args, **federated)
    _, fed, state = make_federation(cfg, clients)
    plan = fed.plan
    parts: dict = {}
    fed.client_phase = timed(fed.client_phase, parts, "client_s")
    fed.mask_phase = timed(fed.mask_phase, parts, "mask_s")
    fed.server_phase = timed(fed.server_phase, parts, "server_s")
    rows = []
    for r in range(1, 2 + args.repeats):
        parts.clear()
        t0 = time.perf_counter()
        if plan.dp_noise:
            t1 = time.perf_counter()
            privacy.epsilon(r, plan.sampling_rate, plan.dp_noise, 1e-5)
            parts["epsilon_s"] = time.perf_counter() - t1
        state, _ = fed.run_round(state, r, clients)
        jax.block_until_ready(state["params"])
        rows.append({"round_s": time.perf_counter() - t0, **parts})
    rows = rows[1:]  # round 1 compiles
    med = {key: float(np.median([row.get(key, 0.0) for row in rows])) for key in rows[0]}
    med["other_s"] = med["round_s"] - sum(v for key, v in med.items() if key != "round_s")
    return {
        "measure": "overhead",
        "setting": name,
        "clients": args.clients,
        **{key: round(v, 5) for key, v in med.items()},
        "overhead_fraction": round(1 - med["client_s"] / med["round_s"], 4),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--batch", type=int, default=4, help="B: windows per client per local step")
    p.add_argument("--local-steps", type=int, default=2, help="E")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    clients = [
        Client(f"c{i}", rng.integers(0, 256, 20_000, dtype=np.int32), rng.integers(0, 256, 2_000, dtype=np.int32))
        for i in range(args.clients)
    ]
    results = [
        throughput(args, clients),
        overhead(args, clients, "fedavg"),
        overhead(args, clients, "fedavg+int8", compression="int8"),
        overhead(args, clients, "fedavg+secure_agg+dp", secure_agg=True, dp_clip=1.0, dp_noise=1.0),
    ]
    for row in results:
        print(json.dumps(row), flush=True)
    t = results[0]
    print(f"\nthroughput, {t['clients']} clients, {t['tokens_per_round']:,} tokens per round (machine load applies):")
    print(
        f"  federated {t['federated_tokens_per_s']:,} tok/s | centralized {t['centralized_tokens_per_s']:,} tok/s | "
        f"ratio {t['ratio']:.2f}"
    )
    print("\n| setting | round ms | clients ms | mask ms | server ms | epsilon ms | other ms | overhead |")
    print("|---|---|---|---|---|---|---|---|")
    for row in results[1:]:
        ms = [f"{1000 * row.get(key, 0.0):.1f}" for key in ("round_s", "client_s", "mask_s", "server_s", "epsilon_s")]
        ms.append(f"{1000 * row['other_s']:.1f}")
        print(f"| {row['setting']} | {' | '.join(ms)} | {100 * row['overhead_fraction']:.1f}% |")


if __name__ == "__main__":
    main()
