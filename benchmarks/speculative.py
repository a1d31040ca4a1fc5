"""Speculative decoding: acceptance rate and speedup over target-only decoding, batch 1, greedy.

Target-only and draft-only greedy decoding (one compiled ``lax.scan``, slm_jax/inference/generate.py),
then speculative decoding (slm_jax/inference/speculative.py) for each K, each timed end to end
(prefill included, best of --repeats) after a warm-up run that compiles it. Prints JSON lines
(the baselines, then one per K), then a table. The speculative output is checked to equal the target-only output.

    python benchmarks/speculative.py                              # random target and draft
    python benchmarks/speculative.py runs/big runs/small --k 2,4,8 --text "To be, or not"

With no run directories the pair is random: the peer-shaped transformer target (vocab 512,
width 256, 4 layers) and a 2-layer width-64 transformer draft. Random models give a low
acceptance rate (two unrelated random functions rarely agree), so the speedup there is a
lower bound showing the machinery's overhead; real numbers need a trained target and a draft
trained, better distilled, on the same tokenizer and data.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from peer_shapes import peer_config

from slm_jax.config import config_from_dict
from slm_jax.inference.generate import generate
from slm_jax.inference.run import load_run
from slm_jax.inference.speculative import speculative_generate
from slm_jax.models.lm import CausalLM


def random_pair(draft_preset: str) -> tuple[str, tuple, str, tuple]:
    """(name, (model, params)) of the random target and draft."""
    target_cfg = peer_config(None).model
    draft_cfg = config_from_dict(
        {
            "model": {
                "preset": draft_preset,
                "vocab_size": target_cfg.vocab_size,
                "d_model": 64,
                "n_layers": 2,
                "n_heads": 2,
            }
        }
    ).model
    build = lambda cfg, seed: (CausalLM(cfg), CausalLM(cfg).init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32)))
    return "random transformer d256 l4", build(target_cfg, 0), f"random {draft_preset} d64 l2", build(draft_cfg, 1)


def best_of(fn, repeats: int) -> tuple[float, object]:
    """(fastest seconds of ``fn()`` over ``repeats`` runs after one untimed warm-up, its result)."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def decode_only(model_params, prompt: np.ndarray, new_tokens: int, repeats: int) -> tuple[float, np.ndarray]:
    """(seconds, tokens i32[1, new_tokens]) of plain greedy decoding with one model."""
    model, params = model_params
    return best_of(
        lambda: np.concatenate(list(generate(model, params, prompt, new_tokens, temperature=0.0)), axis=1), repeats
    )


def measure(
    target, draft, prompt: np.ndarray, new_tokens: int, k: int, repeats: int, target_s: float, want: np.ndarray
) -> dict:
    (tm, tp), (dm, dp) = target, draft
    spec_s, rounds = best_of(
        lambda: list(speculative_generate(tm, tp, dm, dp, prompt, new_tokens, k=k, temperature=0.0)), repeats
    )
    got = np.concatenate([tokens for tokens, _ in rounds], axis=1)
    return {
        "k": k,
        "acceptance": round(sum(kept for _, kept in rounds) / (len(rounds) * k), 3),
        "tokens_per_round": round(new_tokens / len(rounds), 2),
        "speculative_ms_per_token": round(1e3 * spec_s / new_tokens, 3),
        "speedup": round(target_s / spec_s, 2),
        "identical_to_target": bool(np.array_equal(got, want)),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="target run, then draft run (none: a random pair)")
    p.add_argument("--k", default="1,2,4,8", help="draft tokens per round, comma-separated")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--text", default=None, help="prompt text for run directories (default: random token ids)")
    p.add_argument("--draft-preset", default="transformer", help="architecture of the random draft")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if len(args.runs) not in (0, 2):
        p.error("give both a target and a draft run directory, or neither")
    tokenizer = None
    if args.runs:
        runs = [load_run(r) for r in args.runs]
        target_name, draft_name = args.runs
        target, draft = [(r.model, r.params) for r in runs]
        tokenizer = runs[0].tokenizer
    else:
        target_name, target, draft_name, draft = random_pair(args.draft_preset)
    if args.text and tokenizer is not None:
        prompt = np.asarray(tokenizer.encode(args.text), np.int32)[None, : args.prompt]
    else:
        prompt = np.random.default_rng(0).integers(0, target[0].cfg.vocab_size, (1, args.prompt)).astype(np.int32)
    target_s, want = decode_only(target, prompt, args.new_tokens, args.repeats)
    draft_s, _ = decode_only(draft, prompt, args.new_tokens, args.repeats)
    base = {
        "target": target_name,
        "draft": draft_name,
        "device": jax.devices()[0].platform,
        "prompt": prompt.shape[1],
        "new_tokens": args.new_tokens,
        "target_ms_per_token": round(1e3 * target_s / args.new_tokens, 3),
        "draft_ms_per_token": round(1e3 * draft_s / args.new_tokens, 3),
    }
    print(json.dumps(base), flush=True)
    rows = []
    for k in [int(x) for x in args.k.split(",")]:
        rows.append(measure(target, draft, prompt, args.new_tokens, k, args.repeats, target_s, want))
        print(json.dumps({**base, **rows[-1]}), flush=True)
    cols = ["k", "acceptance", "tokens_per_round", "speculative_ms_per_token", "speedup", "identical_to_target"]
    print(
        f"\ntarget: {target_name} ({base['target_ms_per_token']} ms/token alone); draft: {draft_name} "
        f"({base['draft_ms_per_token']} ms/token alone); {base['device']}, batch 1, greedy, prompt {prompt.shape[1]}, "
        f"{args.new_tokens} new tokens"
    )
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
