"""Speed of the linear-recurrence implementations in ``slm_jax.ops.scan``.

For each implementation (except REFERENCE) and size: compile time, then forward and
forward+backward wall time under jit (warm, median of ``--repeats`` runs), float32, with a
random decay a in (0, 1) and an initial state. Prints one JSON line per measurement, then a
table with each time's ratio to the fastest implementation at that size. These numbers are
what ``resolve_impl`` uses to pick AUTO on CPU.

    python benchmarks/scan.py                       # default sizes, ~1-2 min on 2 CPU cores
    python benchmarks/scan.py --sizes 8x1024x512,4x256x512x16 --repeats 10
    python benchmarks/scan.py --json-only > scan.jsonl
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.ops.scan import ScanImpl, linear_scan

DEFAULT_SIZES = "8x256x256,8x1024x512,16x256x1024,4x256x512x16"
IMPLS = [impl for impl in ScanImpl if impl not in (ScanImpl.REFERENCE, ScanImpl.AUTO)]


def parse_size(text: str) -> tuple[int, ...]:
    """'8x256x512' -> (8, 256, 512): batch x time x width (x trailing state dims)."""
    shape = tuple(int(part) for part in text.split("x"))
    if len(shape) < 3:
        raise SystemExit(f"--sizes entry {text!r} needs at least batch x time x width, e.g. 8x256x512.")
    return shape


def inputs(shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """a in (0, 1) like a gated recurrence, b normal, h0 normal [b, w...]."""
    ka, kb, kh = jax.random.split(jax.random.key(0), 3)
    a = jax.random.uniform(ka, shape, minval=0.5, maxval=1.0)
    b = jax.random.normal(kb, shape)
    h0 = jax.random.normal(kh, shape[:1] + shape[2:])
    return a, b, h0


def programs(impl: ScanImpl, chunk_size: int) -> dict:
    """The two jitted programs timed per implementation: forward, and forward+backward."""

    def forward(a, b, h0):
        return linear_scan(a, b, h0, impl=impl, chunk_size=chunk_size)

    def loss(a, b, h0):
        states, last = forward(a, b, h0)
        return jnp.sum(states) + jnp.sum(last)

    return {"fwd": jax.jit(forward), "fwd_bwd": jax.jit(jax.grad(loss, argnums=(0, 1, 2)))}


def measure(fn, args, repeats: int) -> tuple[float, float]:
    """(compile seconds, median run seconds) of a jitted ``fn`` on ``args``."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, float(np.median(times))


def table(rows: list[dict]) -> str:
    """Markdown table: ms per pass and the ratio to the fastest implementation at that size."""
    best = {}
    for row in rows:
        key = (row["size"], row["pass"])
        best[key] = min(best.get(key, float("inf")), row["ms"])
    lines = ["| size | pass | impl | ms | x fastest | compile s |", "|---|---|---|---:|---:|---:|"]
    for row in rows:
        ratio = row["ms"] / best[(row["size"], row["pass"])]
        lines.append(
            f"| {row['size']} | {row['pass']} | {row['impl']} | "
            f"{row['ms']:.2f} | {ratio:.2f} | {row['compile_s']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated b x t x w[x n...] shapes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--chunk-size", type=int, default=64, help="chunk length c for CHUNKED")
    parser.add_argument("--json-only", action="store_true", help="print the JSON lines only, no table")
    args = parser.parse_args()

    rows = []
    for size in args.sizes.split(","):
        shape = parse_size(size)
        arrays = inputs(shape)
        for impl in IMPLS:
            for name, fn in programs(impl, args.chunk_size).items():
                compile_s, run_s = measure(fn, arrays, args.repeats)
                row = {
                    "bench": "scan",
                    "size": size,
                    "impl": impl.name.lower(),
                    "pass": name,
                    "ms": round(run_s * 1e3, 3),
                    "compile_s": round(compile_s, 3),
                    "backend": jax.default_backend(),
                    "chunk_size": args.chunk_size,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    if not args.json_only:
        print()
        print(table(rows))


if __name__ == "__main__":
    main()
