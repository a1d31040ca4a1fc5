"""Generation speed and decode-state size per preset.

For each preset: prefill latency, per-token decode latency and tokens/s at batch 1 and 8
(the whole decode is one compiled ``lax.scan``), and cache bytes as the context grows from
256 to 8192 tokens. Prints one JSON line per measurement, then two tables.

Default shape = ../shared/peers (vocab 512, width 256, 4 layers, 4 heads; Griffin R,R,A,R):

    python benchmarks/generate.py
    python benchmarks/generate.py --presets transformer,griffin --new-tokens 256 --batches 1,8

``--prompt 1024`` makes ``prefill_ms`` the time to first token for a 1,024-token prompt.
``vs_first`` is decode tokens/s over the first preset's at the same batch, in the same process.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from peer_shapes import peer_config

from slm_jax.errors import ConfigError
from slm_jax.inference.generate import decode, prefill
from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM


def time_call(fn, repeats: int, setup=None) -> float:
    """Median seconds of ``fn()`` (already compiled), results blocked on; ``setup()``, untimed,
    makes its argument when given."""
    times = []
    for _ in range(repeats):
        args = (setup(),) if setup else ()
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(preset: str, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    cfg = peer_config(preset).model
    model = CausalLM(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, prompt_len)), jnp.int32)
    max_len = prompt_len + new_tokens
    fresh = lambda: model.init_cache(batch, max_len)
    logits, cache = prefill(model, params, prompt, fresh())  # compile
    prefill_s = time_call(lambda: prefill(model, params, prompt, fresh()), repeats)

    # Decode timed on its own, each run from a fresh copy of the prefilled cache (decode donates it).
    copy = lambda: jax.block_until_ready(jax.tree.map(jnp.copy, cache))
    run_decode = lambda c: decode(
        model, params, c, logits, jnp.int32(prompt_len), jax.random.key(0), new_tokens, 0.0, 0, 1.0
    )[0]
    run_decode(copy())  # compile
    decode_s = time_call(run_decode, repeats, setup=copy)
    return {
        "preset": preset,
        "batch": batch,
        "prompt": prompt_len,
        "new_tokens": new_tokens,
        "prefill_ms": round(1e3 * prefill_s, 2),
        "ms_per_token": round(1e3 * decode_s / new_tokens, 3),
        "decode_tokens_per_s": round(batch * new_tokens / decode_s),
    }


def cache_growth(preset: str, contexts: list[int]) -> dict:
    cfg = peer_config(preset).model
    return {"preset": preset, **{f"cache_bytes@{n}": accounting.decode_state_bytes(cfg, 1, n) for n in contexts}}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="transformer,hawk,griffin,mamba,mamba2,samba,jamba_like")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--contexts", default="256,1024,4096,8192")
    args = p.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    speed, sizes = [], []
    for preset in args.presets.split(","):
        try:
            sizes.append(cache_growth(preset, contexts))
        except ConfigError as e:  # a preset whose mixers are not available
            print(json.dumps({"preset": preset, "skipped": str(e)}))
            continue
        print(json.dumps(sizes[-1]), flush=True)
        for b in [int(x) for x in args.batches.split(",")]:
            speed.append(measure(preset, b, args.prompt, args.new_tokens, args.repeats))
            print(json.dumps(speed[-1]), flush=True)
    first = {}
    for r in speed:
        first.setdefault(r["batch"], r["decode_tokens_per_s"])
        r["vs_first"] = round(r["decode_tokens_per_s"] / first[r["batch"]], 2)
    cols = ["preset", "batch", "prefill_ms", "ms_per_token", "decode_tokens_per_s", "vs_first"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in speed:
        print("| " + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols) + " |")
    print("\n| preset | " + " | ".join(f"cache bytes @ {n}" for n in contexts) + " |\n|" + "---|" * (len(contexts) + 1))
    for r in sizes:
        print(f"| {r['preset']} | " + " | ".join(f"{r[f'cache_bytes@{n}']:,}" for n in contexts) + " |")


if __name__ == "__main__":
    main()
