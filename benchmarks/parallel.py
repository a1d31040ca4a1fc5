"""Overhead of the parallel strategies: tokens/s of one device vs pmap vs a Mesh on 8 fake CPU devices.

The 8 "devices" share the same CPU cores, so this measures what data/FSDP/tensor parallelism
costs in extra work and copies, not a speed-up. Prints one JSON line per strategy, then a table:

    python benchmarks/parallel.py
    python benchmarks/parallel.py --set model.d_model=256 --steps 20
"""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.models.lm import CausalLM  # noqa: E402
from slm_jax.training.optim import make_optimizer  # noqa: E402
from slm_jax.training.parallel import make_parallel  # noqa: E402
from slm_jax.training.step import init_state, make_train_step  # noqa: E402

BASE = {
    "model": {"n_layers": 2, "d_model": 128, "n_heads": 4, "vocab_size": 256},
    "train": {"batch_size": 32, "seq_len": 128},
}
STRATEGIES = {
    "single": [],
    "pmap-8": ["train.parallel.strategy=pmap"],
    "mesh data=8": ["train.parallel.strategy=mesh", "train.parallel.mesh.data=8"],
    "mesh fsdp=8": ["train.parallel.strategy=mesh", "train.parallel.mesh.data=1", "train.parallel.mesh.fsdp=8"],
    "mesh 2x2x2": [
        "train.parallel.strategy=mesh",
        "train.parallel.mesh.data=2",
        "train.parallel.mesh.fsdp=2",
        "train.parallel.mesh.tensor=2",
    ],
}


def measure(name: str, overrides: list[str], steps: int) -> dict:
    cfg = config_from_dict(BASE, overrides)
    tc, model = cfg.train, CausalLM(cfg.model)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, tc.seq_len), np.int32)))
    optimizer, schedule = make_optimizer(cfg.optim, 1000, abstract)
    init = lambda opt: init_state(model, opt, 0, tc.seq_len)
    par = make_parallel(tc, jax.eval_shape(lambda: init(optimizer)))
    state = par.init(init, optimizer)
    batches = np.random.default_rng(0).integers(
        0, cfg.model.vocab_size, (steps + 2, tc.batch_size, tc.seq_len + 1), np.int32
    )
    t0 = time.perf_counter()
    step = par.compile(
        lambda sync: make_train_step(model, optimizer, schedule, sync=sync),
        state,
        jax.ShapeDtypeStruct(batches.shape[1:], np.int32),
    )
    compile_s = time.perf_counter() - t0
    for b in batches[:2]:  # warm-up
        state, m = step(state, par.batch(b))
    jax.block_until_ready(m)
    times = []
    for b in batches[2:]:
        t0 = time.perf_counter()
        state, m = step(state, par.batch(b))  # the host-to-device batch copy counts: it is part of the overhead
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    return {
        "strategy": name,
        "devices": getattr(getattr(par, "mesh", None), "size", 1),
        "batch": f"{tc.batch_size}x{tc.seq_len}",
        "compile_s": round(compile_s, 2),
        "ms_per_step": round(1e3 * sec, 2),
        "tokens_per_s": round(tc.batch_size * tc.seq_len / sec),
        "loss": round(float(par.host(m)["loss"]), 5),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    rows = []
    for name, overrides in STRATEGIES.items():
        row = measure(name, overrides + args.overrides, args.steps)
        print(json.dumps(row), flush=True)
        rows.append(row)
    base = rows[0]["tokens_per_s"]
    cols = ["strategy", "devices", "batch", "compile_s", "ms_per_step", "tokens_per_s", "vs_single", "loss"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        r = {**r, "vs_single": f"{r['tokens_per_s'] / base:.2f}x"}
        print("| " + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols) + " |")
    print(f"\n8 fake devices on {os.cpu_count()} CPU cores ({jax.devices()[0].device_kind}): overhead, not speed-up.")


if __name__ == "__main__":
    main()
