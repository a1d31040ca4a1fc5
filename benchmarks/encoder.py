"""Encoder throughput (issue #22): sequences/s of each encoder preset with a classification head.

    python benchmarks/encoder.py                       # every encoder preset, d_model 256, 128 tokens, batch 1 and 32
    python benchmarks/encoder.py --onnx                # also the exported ONNX graph in onnxruntime
    python benchmarks/encoder.py --presets bert_like,hybrid_encoder --n-layers 6
    python benchmarks/encoder.py --quick --onnx        # tiny shapes (the smoke test)

Each preset (``slm_jax.presets.is_encoder``) is built at ``--d-model`` with its default depth (or
``--n-layers``), random weights, and a mean-pooled sequence-classification head (modules/heads.py):
the deployment path of docs/encoders.md, whose vocabulary head is skipped. JAX: the jitted forward
``(weights, tokens i32[b, t], lengths i32[b]) -> f32[b, c]`` of ``slm_jax/export/encoder.py``.
ONNX (``--onnx``): the same function exported with ``slm export``'s encoder path at a fixed batch and
run by ``slm_jax/export/runner.py`` ``EncoderArtifact`` in onnxruntime with one intra-op thread per
CPU. Every row is full-length sequences of ``--seq-len`` tokens; one compile / session warm-up call
is not timed. JAX and ONNX alternate (A B A B, ``--repeats`` times, ``--iters`` calls each) so their
ratio comes from the same minutes of a shared machine; the medians are reported. Prints one JSON
line per row, then a markdown table.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build(preset: str, opts) -> tuple:
    """(model, params {"backbone", "head"}, head) of ``preset`` at the benchmark's shape, random weights."""
    import jax
    import jax.numpy as jnp

    from slm_jax.config import config_from_dict
    from slm_jax.models.lm import CausalLM
    from slm_jax.modules.heads import SequenceHead

    raw = {"preset": preset, "d_model": opts.d_model, "n_heads": opts.n_heads, "vocab_size": opts.vocab_size}
    if opts.n_layers:
        raw["n_layers"] = opts.n_layers
    model = CausalLM(config_from_dict({"model": raw}).model)
    head = SequenceHead(opts.labels, "mean")
    backbone = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    head_params = head.init(jax.random.key(1), jnp.zeros((1, 1, opts.d_model)), jnp.ones((1,), jnp.int32))
    return model, {"backbone": backbone, "head": head_params}, head


def seconds(fn, tokens, lengths, iters: int) -> float:
    """Wall seconds of ``iters`` calls of ``fn`` (its outputs fetched to numpy)."""
    import numpy as np

    start = time.perf_counter()
    for _ in range(iters):
        np.asarray(fn(tokens, lengths))
    return time.perf_counter() - start


def measure(preset: str, opts, workdir: Path) -> list[dict]:
    """One row per batch size: JAX (and ONNX) sequences/s of ``preset``."""
    import jax
    import numpy as np

    from slm_jax.export.encoder import encoder_fn, write_encoder_export
    from slm_jax.export.runner import EncoderArtifact

    model, params, head = build(preset, opts)
    weights = jax.tree.leaves(params)
    jitted = jax.jit(encoder_fn(model, head, jax.tree.structure(params)))
    rows = []
    for batch in opts.batches:
        rng = np.random.default_rng(batch)
        tokens = rng.integers(0, opts.vocab_size, (batch, opts.seq_len)).astype(np.int32)
        lengths = np.full((batch,), opts.seq_len, np.int32)
        backends = {"jax": lambda t, n: jitted(weights, t, n)}
        if opts.onnx:
            out = workdir / f"{preset}_b{batch}"
            write_encoder_export(out, model, params, head, "onnx", opts.seq_len, batch)
            backends["onnx"] = EncoderArtifact(out, threads=os.cpu_count() or 1).run
        times = {name: [] for name in backends}
        for fn in backends.values():
            seconds(fn, tokens, lengths, 1)  # compile / first run
        for _ in range(opts.repeats):  # alternate: A B A B ...
            for name, fn in backends.items():
                times[name].append(seconds(fn, tokens, lengths, opts.iters))
        row = {
            "preset": preset,
            "layers": model.cfg.n_layers,
            "params": int(sum(np.size(w) for w in jax.tree.leaves(params["backbone"]))),
            "batch": batch,
            "seq_len": opts.seq_len,
        }
        for name, ts in times.items():
            row[f"{name}_seq_per_s"] = batch * opts.iters / statistics.median(ts)
        if opts.onnx:
            row["onnx_over_jax"] = row["onnx_seq_per_s"] / row["jax_seq_per_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], onnx: bool) -> str:
    head = "| preset | layers | params | batch | JAX seq/s |" + (" ONNX seq/s | ONNX / JAX |" if onnx else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = f"| {r['preset']} | {r['layers']} | {r['params']:,} | {r['batch']} | {r['jax_seq_per_s']:,.1f} |"
        if onnx:
            line += f" {r['onnx_seq_per_s']:,.1f} | {r['onnx_over_jax']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="all", help="comma-separated encoder presets, or 'all'")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--n-layers", type=int, default=0, help="layers (default: each preset's own depth)")
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--labels", type=int, default=2, help="classes of the head")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    ap.add_argument("--iters", type=int, default=3, help="calls per timing")
    ap.add_argument("--repeats", type=int, default=3, help="alternating timings per backend (median)")
    ap.add_argument("--onnx", action="store_true", help="also the exported ONNX graph in onnxruntime")
    ap.add_argument("--quick", action="store_true", help="tiny shapes: d_model 32, 1 layer, 16 tokens, batch 1 and 2")
    opts = ap.parse_args(argv)
    if opts.quick:
        opts.d_model, opts.n_heads, opts.n_layers, opts.vocab_size = 32, 2, 1, 64
        opts.seq_len, opts.batches, opts.iters, opts.repeats = 16, "1,2", 1, 1
    opts.batches = [int(b) for b in opts.batches.split(",")]
    return opts


def main(argv: list[str] | None = None) -> list[dict]:
    from slm_jax.presets import PRESETS, is_encoder

    opts = parse(argv)
    encoders = sorted(p for p in PRESETS if is_encoder(p))
    presets = encoders if opts.presets == "all" else opts.presets.split(",")
    unknown = [p for p in presets if p not in encoders]
    if unknown:
        sys.exit(f"error: {unknown[0]!r} is not an encoder preset; choose from {', '.join(encoders)} or 'all'.")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for p in presets for row in measure(p, opts, Path(tmp))]
    print(table(rows, opts.onnx))
    return rows


if __name__ == "__main__":
    main()
