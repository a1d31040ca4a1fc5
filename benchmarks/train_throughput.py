"""Training throughput: tokens/s, FLOPs per token, achieved FLOP/s and MFU against a matmul
peak measured in the same process. Prints one JSON line per model, then a table.

Default shapes = the peers' (benchmarks/peer_shapes.py: HF Llama, recurrentgemma's Griffin;
batch 16 x 256, float32, AdamW), for a side-by-side comparison:

    python benchmarks/train_throughput.py
    python benchmarks/train_throughput.py --presets transformer,griffin,mamba
    python benchmarks/train_throughput.py --presets transformer,gla --set model.n_layers=24 \\
        --set model.scan_layers=true --steps 2

The ``vs_first`` column is each preset's tokens/s over the first preset's, measured in the same
process (ratios hold across machine load better than absolute numbers).
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from peer_shapes import peer_config

from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM
from slm_jax.training.hardware import measured_matmul_peak
from slm_jax.training.optim import make_optimizer
from slm_jax.training.step import init_state, make_train_step


def measure(cfg, steps: int, peak: float) -> dict:
    tc = cfg.train
    model = CausalLM(cfg.model)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, tc.seq_len), jnp.int32)))
    optimizer, schedule = make_optimizer(cfg.optim, 1000, abstract)
    state = jax.jit(lambda: init_state(model, optimizer, 0, tc.seq_len))()
    batches = np.random.default_rng(0).integers(
        0, cfg.model.vocab_size, (steps + 3, tc.batch_size, tc.seq_len + 1), np.int32
    )
    t0 = time.perf_counter()
    step = jax.jit(make_train_step(model, optimizer, schedule, grad_accum=tc.grad_accum), donate_argnums=0)
    step = step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    for i in range(3):  # warm-up
        state, m = step(state, batches[i])
    jax.block_until_ready(m)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batches[3 + i])
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    tok_s = tc.batch_size * tc.seq_len / sec
    fpt = accounting.train_flops_per_token(cfg.model, tc.seq_len)
    return {
        "preset": cfg.model.preset,
        "pattern": ",".join(cfg.model.pattern),
        "params": accounting.param_count(cfg.model),
        "batch": f"{tc.batch_size}x{tc.seq_len}",
        "dtype": cfg.model.dtype,
        "compile_s": round(compile_s, 2),
        "ms_per_step": round(1e3 * sec, 2),
        "tokens_per_s": round(tok_s),
        "flops_per_token": fpt,
        "achieved_gflops": round(fpt * tok_s / 1e9, 1),
        "peak_gflops": round(peak / 1e9, 1),
        "mfu": round(fpt * tok_s / peak, 3),
        "loss": float(m["loss"]),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    p.add_argument("--presets", default="", help="comma-separated presets to compare (default: the config's)")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    peak = measured_matmul_peak(jnp.float32, n=2048, repeats=3)
    rows = []
    for preset in args.presets.split(",") if args.presets else [None]:
        cfg = peer_config(preset, args.overrides)
        row = measure(cfg, args.steps, peak)
        print(json.dumps(row), flush=True)
        rows.append(row)
    for row in rows:
        row["vs_first"] = round(row["tokens_per_s"] / rows[0]["tokens_per_s"], 2)
    cols = [
        "preset",
        "params",
        "batch",
        "compile_s",
        "ms_per_step",
        "tokens_per_s",
        "vs_first",
        "achieved_gflops",
        "mfu",
    ]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols) + " |")
    print(f"\nmatmul peak (2048^3 f32, this process): {peak / 1e9:.0f} GFLOP/s on {jax.devices()[0].device_kind}")


if __name__ == "__main__":
    main()
