"""``export_run(run_dir, out_dir)``: a run as two StableHLO functions with an explicit cache.

Both functions are one model step, ``step(weights, tokens, start, cache) -> (logits, cache)``,
serialized with ``jax.export`` (https://docs.jax.dev/en/latest/export/export.html) at two
fixed shapes:

  prefill: tokens i32[1, c]  (c = --prefill-chunk)   decode: tokens i32[1, 1]
  weights: list of arrays (weights.npz order)        start: i32[] position of tokens[:, 0]
  cache:   list of arrays (cache.npz order), sized for --max-len, passed in and returned
  logits:  f32[1, v] at the last of the tokens

Fixed shapes rather than a symbolic prompt length: the attention ring buffer (``min(t, L)``)
and Mamba-2's chunking compare the length with constants, which ``jax.export``'s shape
polymorphism cannot decide. A runner feeds whole chunks of the prompt to ``prefill`` and the
rest, then every generated token, to ``decode``; chunked prefill with a cache is exact in
this codebase (docs/architecture.md). Recurrent mixers (RG-LRU, Mamba, Mamba-2) and
local attention keep a cache whose size does not grow with --max-len (``constant_memory``).

The weights are inputs, not constants baked into the program: the artifact stays small, a
quantized run exports its int8/int4 leaves unchanged (``Linear`` dequantizes inside the
graph), and ``weights.npz`` is read with ``allow_pickle=False``. Files written:

  prefill.jax_export, decode.jax_export   jax.export serialized (StableHLO + calling convention)
  weights.npz, cache.npz                  flat arrays "0000", "0001", ... (dtype names in the manifest)
  manifest.json                           shapes, dtypes, parameter paths, max_len, tokenizer kind
  tokenizer.json                          copied from the run

An encoder run or a classifier has no cache and exports one graph instead (encoder.py).

With ``fmt="onnx"`` the two steps are ``prefill.onnx`` and ``decode.onnx`` instead (onnx_export.py),
and the weights are their ``weights.onnx.data``, not weights.npz; runner.py reads both formats.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import PyTree
from slm_jax.errors import CheckpointError, ConfigError
from slm_jax.models.lm import CausalLM, cache_bytes
from slm_jax.tree_paths import path_str

FORMATS = ("stablehlo", "onnx")  # onnx: the same two steps as ONNX models (onnx_export.py)


def make_step(model: CausalLM, params_def: PyTree, cache_def: PyTree) -> Callable:
    """The exported function over flat lists: (weights, tokens i32[1, t], start i32[], cache) -> (f32[1, v], cache)."""

    def step(weights: list, tokens: jax.Array, start: jax.Array, cache: list) -> tuple[jax.Array, list]:
        params = jax.tree.unflatten(params_def, weights)
        positions = start + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]  # [1, t]
        logits, new_cache = model.apply(params, tokens, positions, jax.tree.unflatten(cache_def, cache))
        return logits[:, -1], jax.tree.leaves(new_cache)

    return step


def export_step(
    step: Callable, weights: list, cache: list, tokens: int, platforms: tuple[str, ...] = ("cpu",)
) -> bytes:
    """Serialized ``jax.export`` of ``step`` at ``tokens`` tokens per call."""
    spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    args = (
        [spec(a) for a in weights],
        jax.ShapeDtypeStruct((1, tokens), jnp.int32),
        jax.ShapeDtypeStruct((), jnp.int32),
        [spec(a) for a in cache],
    )
    return jax.export.export(jax.jit(step), platforms=platforms)(*args).serialize()


def _save_flat(path: Path, arrays: list) -> list[str]:
    """Write arrays as "0000", "0001", ... to an .npz; dtypes numpy cannot name (bfloat16) are stored as raw bits."""
    dtypes, stored = [], {}
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        dtypes.append(a.dtype.name)
        stored[f"{i:04d}"] = a if a.dtype.kind in "biuf" else a.view(f"u{a.dtype.itemsize}")
    np.savez(path, **stored)
    return dtypes


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    fmt: str = "stablehlo",
    max_len: int | None = None,
    prefill_chunk: int = 16,
    best: bool = False,
    batch: int = 1,
) -> dict:
    """Export the latest (or best) checkpoint of ``run_dir`` to the new directory ``out_dir``; returns the manifest.

    An encoder run exports as one graph instead (encoder.py; ``max_len`` None: its train.seq_len, ``batch`` rows
    per call; a classifier directory goes to ``encoder.export_classifier``); a decoder's ``max_len`` defaults to
    256 and its batch is 1.
    """
    from slm_jax.export.encoder import export_encoder_run, is_encoder_run
    from slm_jax.inference.run import load_run

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if fmt not in FORMATS:
        raise ConfigError(f"Export format {fmt!r} is not supported; use --format stablehlo or --format onnx.")
    if is_encoder_run(run_dir):
        return export_encoder_run(run_dir, out_dir, fmt, max_len, batch, best)
    if batch != 1:
        raise ConfigError(f"--batch {batch} applies to encoder and classifier exports; a decoder exports batch 1.")
    max_len = 256 if max_len is None else max_len
    if max_len <= 0 or not 0 < prefill_chunk <= max_len:
        raise ConfigError(
            f"--max-len must be positive and --prefill-chunk in [1, max-len], got {max_len} and {prefill_chunk}."
        )
    if (out_dir / "manifest.json").exists():
        raise CheckpointError(f"{out_dir} already holds an export (manifest.json); pass a new output directory.")
    run = load_run(run_dir, best=best)
    cache = run.model.init_cache(1, max_len)
    weight_leaves, params_def = jax.tree_util.tree_flatten_with_path(run.params)
    weights = [leaf for _, leaf in weight_leaves]
    cache_leaves, cache_def = jax.tree_util.tree_flatten_with_path(cache)
    cache_list = [leaf for _, leaf in cache_leaves]
    step = make_step(run.model, jax.tree.structure(run.params), jax.tree.structure(cache))
    if fmt == "onnx":
        from slm_jax.export.onnx_export import onnx_steps

        files = onnx_steps(
            step,
            weights,
            cache_list,
            prefill_chunk,
            [path_str(p) for p, _ in weight_leaves],
            [path_str(p) for p, _ in cache_leaves],
        )
    else:
        files = {
            f"{name}.jax_export": export_step(step, weights, cache_list, t)
            for name, t in (("prefill", prefill_chunk), ("decode", 1))
        }

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out_dir / name).write_bytes(data)
    tokenizer = None
    if (run_dir / "tokenizer.json").is_file():
        shutil.copyfile(run_dir / "tokenizer.json", out_dir / "tokenizer.json")
        tokenizer = json.loads((run_dir / "tokenizer.json").read_text()).get("type", "hf")
    m = run.cfg.model
    manifest = {
        "format": f"slm_jax.{fmt}/1",
        "run_dir": str(run_dir),
        "step": run.step,
        "layer_pattern": list(m.layers),
        "vocab_size": m.vocab_size,
        "quant_bits": m.quant.bits,
        "max_len": max_len,
        "prefill_chunk": prefill_chunk,
        "batch": 1,
        "tokenizer": tokenizer,
        "weights": {
            "paths": [path_str(p) for p, _ in weight_leaves],
            "dtypes": [np.asarray(w).dtype.name for w in weights]  # onnx: the weights are in weights.onnx.data
            if fmt == "onnx"
            else _save_flat(out_dir / "weights.npz", weights),
        },
        "cache": {
            "paths": [path_str(p) for p, _ in cache_leaves],
            "dtypes": _save_flat(out_dir / "cache.npz", cache_list),
        },
        "cache_bytes": cache_bytes(cache),
        "constant_memory": cache_bytes(run.model.init_cache(1, 2 * max_len)) == cache_bytes(cache),
        "jax_version": jax.__version__,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return {k: v for k, v in manifest.items() if k not in ("weights", "cache")} | {"out_dir": str(out_dir)}
