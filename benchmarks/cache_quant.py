"""Effect of the int8 decode cache (model.cache_quant=int8 / int8_kv) on trained runs: bytes, logits, loss,
greedy tokens.

    python benchmarks/cache_quant.py RUN_DIR [RUN_DIR ...] [--tokens 256] [--new-tokens 64]

For each run (e.g. the Shakespeare transformer and griffin that benchmarks/slm_tradeoffs.py
trains), on validation text:
  - cache bytes for one sequence at 2,048 tokens, float32 vs int8 (everything) and int8_kv
    (attention keys and values only, recurrent and conv states float);
  - teacher-forced decode (one token at a time through the cache, as generation runs) with
    the float and the quantized cache: loss of each, max and mean |logit difference|, argmax agreement;
  - greedy generation of ``--new-tokens`` tokens from validation prompts with each cache:
    share of positions with the same token, and tokens generated before the first difference.
Prints one JSON line per run and a markdown table (docs/deploy.md quotes it).
"""

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.data.source import load_dataset
from slm_jax.inference.generate import generate
from slm_jax.inference.run import load_run
from slm_jax.models.lm import CausalLM, cache_bytes


def teacher_forced(model, params, tokens):
    """Logits f32[b, t, v] of tokens i32[b, t] fed one at a time through ``model``'s cache (a compiled scan)."""
    b, t = tokens.shape

    @jax.jit
    def run(params, tokens):
        def one(cache, x):
            tok, pos = x
            logits, cache = model.apply(params, tok[:, None], jnp.broadcast_to(pos, (b, 1)), cache)
            return cache, logits[:, 0]

        _, logits = jax.lax.scan(one, model.init_cache(b, t), (tokens.T, jnp.arange(t)))
        return logits.transpose(1, 0, 2)

    return run(params, tokens)


def nll(logits, targets):
    return float(jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]))


def measure(run_dir: str, cache_quant: str, args) -> dict:
    run = load_run(run_dir)
    quant = CausalLM(dataclasses.replace(run.cfg.model, cache_quant=cache_quant))
    float_model = CausalLM(dataclasses.replace(run.cfg.model, cache_quant="none"))
    val = np.asarray(load_dataset(run.cfg.data).val)
    starts = np.random.default_rng(0).integers(0, len(val) - args.tokens - 1, args.batch)
    seqs = jnp.asarray(np.stack([val[s : s + args.tokens + 1] for s in starts]).astype(np.int32))
    ref = teacher_forced(float_model, run.params, seqs[:, :-1])
    got = teacher_forced(quant, run.params, seqs[:, :-1])
    diff = jnp.abs(got - ref)
    size = lambda m: cache_bytes(jax.eval_shape(lambda: m.init_cache(1, 2048)))
    prompts = np.asarray(seqs[:, : args.prompt])
    greedy = lambda m: next(generate(m, run.params, prompts, args.new_tokens, temperature=0.0))
    want, have = greedy(float_model), greedy(quant)
    same = want == have
    first_diff = np.where(same.all(1), args.new_tokens, np.argmin(same, axis=1))
    return {
        "run": run_dir,
        "preset": run.cfg.model.preset,
        "cache_quant": cache_quant,
        "params_step": run.step,
        "cache_bytes@2048": {"float32": size(float_model), cache_quant: size(quant)},
        "teacher_forced_tokens": int(seqs[:, 1:].size),
        "val_loss": {"float32": nll(ref, seqs[:, 1:]), cache_quant: nll(got, seqs[:, 1:])},
        "logit_abs_diff": {"max": float(diff.max()), "mean": float(diff.mean()), "logit_std": float(ref.std())},
        "argmax_agreement": float(jnp.mean(got.argmax(-1) == ref.argmax(-1))),
        "greedy_token_agreement": float(same.mean()),
        "greedy_tokens_before_first_difference": float(first_diff.mean()),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--tokens", type=int, default=256, help="teacher-forced tokens per sequence")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument(
        "--cache-quant", default="int8,int8_kv", help="model.cache_quant values to compare with the float cache"
    )
    args = ap.parse_args()
    rows = [measure(r, q, args) for r in args.runs for q in args.cache_quant.split(",")]
    for r in rows:
        print(json.dumps(r), flush=True)
    print(
        "\n| model | cache | cache bytes @2k f32 / quantized | val loss f32 / quantized (teacher-forced decode) "
        "| max / mean abs logit diff | argmax agree | greedy agree (64 tok) | tokens before 1st diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        c, v, d, q = r["cache_bytes@2048"], r["val_loss"], r["logit_abs_diff"], r["cache_quant"]
        print(
            f"| {r['preset']} | {q} | {c['float32']:,} / {c[q]:,} ({c['float32'] / c[q]:.1f}x) | {v['float32']:.4f} / "
            f"{v[q]:.4f} ({v[q] - v['float32']:+.4f}) | {d['max']:.3f} / {d['mean']:.4f} | {r['argmax_agreement']:.4f} "
            f"| {r['greedy_token_agreement']:.3f} | {r['greedy_tokens_before_first_difference']:.1f} |"
        )
