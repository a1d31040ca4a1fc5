"""The SLM trade-off table: for each preset trained on Tiny Shakespeare and its int8 / int4 versions,
parameters, bytes on disk, validation loss, batch-1 decode tokens/s and decode-state bytes at 2k context.

    python benchmarks/slm_tradeoffs.py [--presets transformer,griffin] [--steps 300] [--out /tmp/slm_tradeoffs]
    python benchmarks/slm_tradeoffs.py --runs runs/shakespeare_char runs/griffin   # already trained float runs

Without ``--runs`` it trains each preset with configs/experiments/shakespeare_char.yaml for
``--steps`` steps (reused when present), then quantizes every float run with ``slm quantize``
(int8 per channel, int4 group-wise). Bytes on disk are a params-only checkpoint (no optimizer
state). Decode speed is greedy batch-1 generation of ``--new-tokens`` tokens after a 16-token
prompt, one compiled scan, median of ``--repeats``. Decode-state bytes are for one sequence of
2,048 tokens with the float32 cache and with the int8 cache (model.cache_quant). Prints one
JSON line per row and a markdown table.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from generate import time_call
from quantization import params_only_bytes, slm

from slm_jax.inference.generate import decode, prefill
from slm_jax.inference.run import load_run
from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM, cache_bytes
from slm_jax.quant.run import directory_bytes


def train_float(preset: str, args) -> Path:
    run_dir = Path(args.out) / preset / "float"
    if not (run_dir / "checkpoints").exists():
        overrides = [
            f"model.preset={preset}",
            f"train.steps={args.steps}",
            "eval.every=0",
            f"checkpoint.every={args.steps}",
            f"data.path={Path(args.data).absolute()}",
            f"name={preset}",
        ]
        slm(
            "train",
            "configs/experiments/shakespeare_char.yaml",
            "--run-dir",
            run_dir,
            "--no-progress",
            *sum((["--set", o] for o in overrides), []),
        )
    return run_dir


def decode_tokens_per_s(run, new_tokens: int, repeats: int) -> float:
    model, prompt = run.model, jnp.zeros((1, 16), jnp.int32)
    logits, cache = prefill(model, run.params, prompt, model.init_cache(1, 16 + new_tokens))
    copy = lambda: jax.block_until_ready(jax.tree.map(jnp.copy, cache))
    go = lambda c: decode(model, run.params, c, logits, jnp.int32(16), jax.random.key(0), new_tokens, 0.0, 0, 1.0)[0]
    go(copy())  # compile
    return new_tokens / time_call(go, repeats, setup=copy)


def state_bytes(cfg, cache_quant: str) -> int:
    model = CausalLM(dataclasses.replace(cfg, cache_quant=cache_quant))
    return cache_bytes(jax.eval_shape(lambda: model.init_cache(1, 2048)))


def measure(run_dir: Path, variant: str, args) -> dict:
    run = load_run(run_dir)
    if variant == "float":
        disk = params_only_bytes(run_dir, Path(args.out) / "params_only" / run_dir.parent.name)[0]
    else:
        disk = directory_bytes(run_dir / "checkpoints")
    return {
        "preset": run.cfg.model.preset,
        "variant": variant,
        "steps": run.step,
        "params": accounting.param_count(run.cfg.model),
        "bytes_on_disk": disk,
        "val_loss": slm("eval", run_dir, "--batches", args.batches)["val_loss"],
        "decode_tok_s_b1": round(decode_tokens_per_s(run, args.new_tokens, args.repeats), 1),
        "state_bytes@2048": state_bytes(run.cfg.model, "none"),
        "state_bytes@2048_int8_cache": state_bytes(run.cfg.model, "int8"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="*", default=None, help="trained float run directories (default: train --presets)")
    ap.add_argument("--presets", default="transformer,griffin")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="/tmp/slm_tradeoffs")
    ap.add_argument("--data", default="../shared/data/tinyshakespeare.txt")
    ap.add_argument("--batches", type=int, default=50, help="validation batches per eval")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    floats = [Path(r) for r in args.runs] if args.runs else [train_float(p, args) for p in args.presets.split(",")]
    rows = []
    for run_dir in floats:
        variants = {"float": run_dir}
        for bits in (8, 4):
            q_dir = Path(args.out) / "quantized" / f"{run_dir.parent.name}_{run_dir.name}_int{bits}"
            if not (q_dir / "checkpoints").exists():
                slm("quantize", run_dir, "--bits", bits, "--out", q_dir)
            variants[f"int{bits}"] = q_dir
        for variant, d in variants.items():
            rows.append(measure(d, variant, args))
            print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| model | weights | params | bytes on disk | val loss | decode tok/s (b=1) "
        "| decode state @2k: f32 cache / int8 cache |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} ({r['steps']} steps) | {r['variant']} | {r['params']:,} | "
            f"{r['bytes_on_disk']:,} | {r['val_loss']:.4f} | {r['decode_tok_s_b1']:,.0f} "
            f"| {r['state_bytes@2048']:,} / {r['state_bytes@2048_int8_cache']:,} |"
        )


if __name__ == "__main__":
    main()
