"""Speculative decoding: acceptance rate and speedup over target-only decoding, batch 1, greedy.

For each (target, draft) pair: target-only and draft-only greedy decoding (one compiled
``lax.scan``, slm_jax/inference/generate.py) and speculative decoding (one compiled
``lax.while_loop``, slm_jax/inference/speculative.py) for each K, each timed end to end
(prefill included) after a warm-up run that compiles it. The timed runs are interleaved
(target, draft, K_1, K_2, ... then again, --repeats times) so that a machine shared with
other jobs slows them alike; the speedup is the median over repeats of the target-only time
over the speculative time of the same repeat. The speculative output is checked to equal the
target-only output. Prints one JSON line per (pair, K), then a markdown table; --out also
writes both (PATH and PATH with .md).

    python benchmarks/speculative.py                                    # a random pair
    python benchmarks/speculative.py --pair runs/big runs/small --k 2,3,4,6 --text "ROMEO:"
    python benchmarks/speculative.py --pair T_TRANSFORMER D_GRIFFIN --pair T_GRIFFIN D_TRANSFORMER --out spec.json

With no --pair the pair is random: the peer-shaped transformer target (vocab 512, width 256,
4 layers) and a 2-layer width-64 draft. Random models give a low acceptance rate (two
unrelated random functions rarely agree), so the speedup there is a lower bound showing the
machinery's overhead; real numbers need a trained target and a draft trained, better
distilled, on the same tokenizer and data.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from peer_shapes import peer_config

from slm_jax.config import config_from_dict
from slm_jax.inference.generate import generate
from slm_jax.inference.run import load_run
from slm_jax.inference.speculative import speculative_generate
from slm_jax.models.lm import CausalLM

COLUMNS = [
    "target",
    "draft",
    "k",
    "acceptance",
    "tokens_per_round",
    "target_ms_per_token",
    "speculative_ms_per_token",
    "speedup",
    "identical_to_target",
]


def random_pair(draft_preset: str) -> list[tuple[str, tuple]]:
    """[(name, (model, params))] of the random target and draft."""
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
    return [
        ("random transformer d256 l4", build(target_cfg, 0)),
        (f"random {draft_preset} d64 l2", build(draft_cfg, 1)),
    ]


def timed(fn) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def plain(model_params, prompt: np.ndarray, new_tokens: int):
    """A call of greedy decoding with one model: tokens i32[1, new_tokens]."""
    model, params = model_params
    return lambda: np.concatenate(list(generate(model, params, prompt, new_tokens, temperature=0.0)), axis=1)


def speculative(target, draft, prompt: np.ndarray, new_tokens: int, k: int):
    """A call of greedy speculative decoding: (tokens i32[1, new_tokens], drafts kept per round i32[r])."""
    (tm, tp), (dm, dp) = target, draft

    def run():
        chunks = list(speculative_generate(tm, tp, dm, dp, prompt, new_tokens, k=k, temperature=0.0))
        return np.concatenate([c[0] for c in chunks], axis=1), np.concatenate([c[1] for c in chunks])

    return run


def measure_pair(names, target, draft, prompt: np.ndarray, new_tokens: int, ks: list[int], repeats: int) -> list[dict]:
    """One row per K for this pair, from ``repeats`` interleaved timings after a warm-up of each."""
    calls = {"target": plain(target, prompt, new_tokens), "draft": plain(draft, prompt, new_tokens)}
    calls.update({k: speculative(target, draft, prompt, new_tokens, k) for k in ks})
    results = {name: call() for name, call in calls.items()}  # warm-up: compiles
    seconds = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            seconds[name].append(timed(call)[0])
    ms = lambda name: round(1e3 * statistics.median(seconds[name]) / new_tokens, 3)
    rows = []
    for k in ks:
        tokens, kept = results[k]
        rows.append(
            {
                "target": names[0],
                "draft": names[1],
                "k": k,
                "acceptance": round(float(kept.sum()) / (len(kept) * k), 3),
                "tokens_per_round": round(new_tokens / len(kept), 2),
                "target_ms_per_token": ms("target"),
                "draft_ms_per_token": ms("draft"),
                "speculative_ms_per_token": ms(k),
                "speedup": round(statistics.median(t / s for t, s in zip(seconds["target"], seconds[k])), 2),
                "identical_to_target": bool(np.array_equal(tokens, results["target"])),
                "device": jax.devices()[0].platform,
                "prompt": prompt.shape[1],
                "new_tokens": new_tokens,
                "repeats": repeats,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--pair",
        nargs=2,
        action="append",
        metavar=("TARGET_RUN", "DRAFT_RUN"),
        help="a target run and a draft run with its tokenizer; repeat for more pairs (none: a random pair)",
    )
    p.add_argument("--k", default="2,3,4,6", help="draft tokens per round, comma-separated")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--text", default=None, help="prompt text for run directories (default: random token ids)")
    p.add_argument("--draft-preset", default="transformer", help="architecture of the random draft")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here and the table next to it (.md)")
    args = p.parse_args()
    ks = [int(x) for x in args.k.split(",")]
    rows = []
    for pair in args.pair or [None]:
        if pair is None:
            (target_name, target), (draft_name, draft) = random_pair(args.draft_preset)
            tokenizer = None
        else:
            runs = [load_run(r) for r in pair]
            if runs[0].cfg.model.vocab_size != runs[1].cfg.model.vocab_size:
                p.error(f"{pair[1]} has another vocabulary than {pair[0]}; pair a draft trained on the same tokenizer")
            (target_name, draft_name), (target, draft) = pair, [(r.model, r.params) for r in runs]
            tokenizer = runs[0].tokenizer
        if args.text and tokenizer is not None:
            prompt = np.asarray(tokenizer.encode(args.text), np.int32)[None, : args.prompt]
        else:
            prompt = np.random.default_rng(0).integers(0, target[0].cfg.vocab_size, (1, args.prompt)).astype(np.int32)
        rows += measure_pair((target_name, draft_name), target, draft, prompt, args.new_tokens, ks, args.repeats)
    text = table(rows)
    print(f"\n{rows[0]['device']}, batch 1, greedy, {args.new_tokens} new tokens, median of {args.repeats} interleaved")
    print(text)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
