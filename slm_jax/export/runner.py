"""Standalone greedy generation from an ``slm export`` artifact: numpy and json, plus jax or onnxruntime.

    python slm_jax/export/runner.py ARTIFACT_DIR --prompt "ROMEO:" --max-new-tokens 100

Nothing from slm_jax is imported (the model code travels as StableHLO inside the
``*.jax_export`` files, or as ONNX graphs in ``*.onnx``), so this file can be copied next to an
artifact and run with only ``pip install jax`` (``--format stablehlo``) or only
``pip install onnxruntime`` (``--format onnx``: jax is never imported). The calling convention
is the one stablehlo.py documents: whole ``prefill_chunk``-token chunks of the prompt go
through ``prefill``, the rest of the prompt and every generated token through ``decode``, the
cache going in and out of every call (with onnxruntime it stays in onnxruntime's memory: IOBinding).
Tokenizers: the char and byte kinds of slm_jax's ``tokenizer.json``, reimplemented below.

An encoder or classifier export (encoder.py) is one graph, run by ``EncoderArtifact``: ``--prompt``
is then the text to classify (prints the label and probabilities) or to fill (an encoder's most
likely token at each position).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

LEGACY_LOCATION = b"weights.npz-arrays"  # external-data location of the first initializer exports: weights.npz


def _jax_steps(d: Path, manifest: dict) -> tuple:
    import jax

    load = lambda name: jax.jit(jax.export.deserialize((d / f"{name}.jax_export").read_bytes()).call)
    return _load_flat(d / "weights.npz", manifest["weights"]["dtypes"]), load("prefill"), load("decode")


def _onnx_steps(d: Path, manifest: dict) -> tuple:
    """onnxruntime sessions whose weights are constants and whose cache stays in onnxruntime between steps.

    The weights are the models' initializers, in ONNX's external-data file next to them
    (onnx_export.py), so onnxruntime folds their dequantization at load. Each step runs through an
    IOBinding: the cache outputs are onnxruntime values that the next step binds as inputs, never
    copied out to numpy. Older exports keep the weights in weights.npz: as graph inputs (fed on every
    step), or as initializers at the location ``LEGACY_LOCATION`` (handed over when a session opens).
    """
    import onnxruntime as ort

    old = (d / "weights.npz").is_file()
    if not old and not (d / "weights.onnx.data").is_file():
        raise SystemExit(f"error: {d} has no weights.onnx.data (nor weights.npz); copy the whole export directory.")
    weights = _load_flat(d / "weights.npz", manifest["weights"]["dtypes"]) if old else []
    values = [ort.OrtValue.ortvalue_from_numpy(w) for w in weights]  # (they must outlive the sessions)

    def load(name):
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        # idle pool threads sleep instead of spinning: a batch-1 step is many tiny kernels, and spinning
        # threads took the cores from the step itself (2x slower decode on a shared 2-core machine)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if old and LEGACY_LOCATION in (d / f"{name}.onnx").read_bytes():
            options.add_external_initializers(manifest["weights"]["paths"], values)
        session = ort.InferenceSession(str(d / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]  # [weights,] tokens, start, cache
        outputs = [o.name for o in session.get_outputs()]  # logits, new cache
        as_inputs = names[0] != "tokens"

        def step(weights, tokens, start, cache):
            binding = session.io_binding()
            fed = [*(values if as_inputs else []), tokens, start, *cache]
            for n, a in zip(names, fed):
                binding.bind_ortvalue_input(
                    n, a if isinstance(a, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(a)
                )
            for n in outputs:
                binding.bind_output(n, "cpu")
            session.run_with_iobinding(binding)
            logits, *new_cache = binding.get_outputs()
            return logits.numpy(), new_cache

        return step

    return weights, load("prefill"), load("decode")


# manifest "format" -> backend(directory, manifest) -> (weights, prefill, decode), the steps each
# (weights, tokens i32[1, t], start i32[], cache) -> (logits f32[1, v], cache); the cache is opaque between steps
BACKENDS = {"slm_jax.stablehlo/1": _jax_steps, "slm_jax.onnx/1": _onnx_steps}


class Artifact:
    """An exported model: the two compiled steps, the weights (none for ONNX: the graphs hold them), the empty cache
    and the manifest."""

    def __init__(self, directory: str | Path):
        d = Path(directory)
        if not (d / "manifest.json").is_file():
            raise SystemExit(f"error: {d} has no manifest.json; pass a directory written by `slm export`.")
        self.manifest = json.loads((d / "manifest.json").read_text())
        fmt = self.manifest.get("format")
        if fmt not in BACKENDS:
            raise SystemExit(
                f"error: {d} holds format {fmt!r}, this runner reads {' and '.join(map(repr, BACKENDS))}; re-export it."
            )
        self.max_len, self.chunk = self.manifest["max_len"], self.manifest["prefill_chunk"]
        self.empty_cache = _load_flat(d / "cache.npz", self.manifest["cache"]["dtypes"])
        self.weights, self.prefill, self.decode = BACKENDS[fmt](d, self.manifest)
        tok = d / "tokenizer.json"
        self.tokenizer = json.loads(tok.read_text(encoding="utf-8")) if tok.is_file() else None

    def generate(self, prompt: list[int], max_new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
        """Greedy continuation of ``prompt`` (token ids): (new ids, logits f32[v] before each new id)."""
        if not prompt or len(prompt) + max_new_tokens > self.max_len:
            raise SystemExit(
                f"error: the prompt ({len(prompt)} tokens) plus --max-new-tokens ({max_new_tokens}) must be between "
                f"1 and the exported max length {self.max_len}; shorten them or re-export with a larger --max-len."
            )
        cache, pos = self.empty_cache, 0
        n_full = len(prompt) // self.chunk * self.chunk
        for i in range(0, n_full, self.chunk):
            logits, cache = self.prefill(
                self.weights, np.asarray([prompt[i : i + self.chunk]], np.int32), np.asarray(i, np.int32), cache
            )
        for pos in range(n_full, len(prompt)):
            logits, cache = self.decode(
                self.weights, np.asarray([[prompt[pos]]], np.int32), np.asarray(pos, np.int32), cache
            )
        new, seen = [], []
        for pos in range(len(prompt), len(prompt) + max_new_tokens):
            seen.append(np.asarray(logits[0]))
            new.append(int(np.argmax(seen[-1])))
            if pos < len(prompt) + max_new_tokens - 1:  # the last token needs no step
                logits, cache = self.decode(
                    self.weights, np.asarray([[new[-1]]], np.int32), np.asarray(pos, np.int32), cache
                )
        return new, seen

    def encode(self, text: str) -> list[int]:
        kind = (self.tokenizer or {}).get("type")
        if kind == "byte":
            return list(text.encode("utf-8"))
        if kind == "char":
            index = {c: i for i, c in enumerate(self.tokenizer["chars"])}
            missing = [c for c in text if c not in index]
            if missing:
                raise SystemExit(
                    f"error: character {missing[0]!r} is not in the model's vocabulary; "
                    "use characters of its training text."
                )
            return [index[c] for c in text]
        raise SystemExit(
            "error: this runner reads only slm_jax's char and byte tokenizers; pass token ids with --ids instead."
        )

    def decode_text(self, ids: list[int]) -> str:
        kind = (self.tokenizer or {}).get("type")
        if kind == "byte":
            return bytes(i if 0 <= i < 256 else ord("?") for i in ids).decode("utf-8", errors="replace")
        chars = self.tokenizer["chars"] if kind == "char" else ""
        return "".join(chars[i] if 0 <= i < len(chars) else "\ufffd" for i in ids)


class EncoderArtifact:
    """An exported encoder or classifier (encoder.py): ``logits(rows)`` for token rows of any count and length <= t.

    ``threads``: onnxruntime's intra-op threads (0: its default, one per physical core).
    """

    def __init__(self, directory: str | Path, threads: int = 0):
        d = Path(directory)
        self.manifest = json.loads((d / "manifest.json").read_text()) if (d / "manifest.json").is_file() else {}
        fmt = self.manifest.get("format")
        if fmt not in ("slm_jax.encoder.stablehlo/1", "slm_jax.encoder.onnx/1"):
            raise SystemExit(f"error: {d} holds no encoder export (format {fmt!r}); pass a directory of `slm export`.")
        self.seq_len, self.batch, self.kind = self.manifest["seq_len"], self.manifest["batch"], self.manifest["kind"]
        if fmt == "slm_jax.encoder.onnx/1":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only
            options.intra_op_num_threads = threads
            # idle pool threads sleep instead of spinning, as in the decode runner: on a shared 2-core machine a
            # spinning pool made an encoder call 1.5x slower (benchmarks/encoder.py, docs/encoders.md)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(d / "encoder.onnx"), options, providers=["CPUExecutionProvider"])
            self.run = lambda tokens, lengths: session.run(["logits"], {"tokens": tokens, "lengths": lengths})[0]
        else:
            import jax

            call = jax.jit(jax.export.deserialize((d / "encoder.jax_export").read_bytes()).call)
            weights = _load_flat(d / "weights.npz", self.manifest["weights"]["dtypes"])
            self.run = lambda tokens, lengths: np.asarray(call(weights, tokens, lengths))
        tok = d / "tokenizer.json"
        self.tokenizer = json.loads(tok.read_text(encoding="utf-8")) if tok.is_file() else None

    encode = Artifact.encode
    decode_text = Artifact.decode_text

    def logits(self, rows: list[list[int]]) -> np.ndarray:
        """Token rows -> the exported logits, one per row (f32[n, c], or f32[n, t, v or c] at the padded length t).

        Rows are right-padded with 0 to ``seq_len`` and run ``batch`` at a time (the last group filled with
        one-token rows); a StableHLO export takes them all in one call.
        """
        if not rows or any(not 1 <= len(r) <= self.seq_len for r in rows):
            raise SystemExit(
                f"error: every text must have 1 to {self.seq_len} tokens (the exported length); "
                "shorten it or re-export with a larger --max-len."
            )
        size = self.batch or len(rows)
        n = -(-len(rows) // size) * size
        tokens, lengths = np.zeros((n, self.seq_len), np.int32), np.ones((n,), np.int32)
        for i, r in enumerate(rows):
            tokens[i, : len(r)], lengths[i] = r, len(r)
        out = [self.run(tokens[i : i + size], lengths[i : i + size]) for i in range(0, n, size)]
        return np.concatenate(out)[: len(rows)]


def _encoder_main(args) -> int:
    """Print the label and class probabilities of a classifier, or an encoder's most likely token at each position."""
    art = EncoderArtifact(args.artifact)
    ids = [int(i) for i in args.ids.split(",")] if args.ids is not None else art.encode(args.prompt or "")
    logits = art.logits([ids])[0]
    if art.kind == "mlm":
        best = logits[: len(ids)].argmax(-1).tolist()
        print(json.dumps({"ids": best} if args.ids is not None else {"predicted": art.decode_text(best)}))
        return 0
    labels = art.manifest["labels"]
    if art.kind == "token":
        print(json.dumps({"labels": [labels[int(c)] for c in logits[: len(ids)].argmax(-1)]}))
        return 0
    p = np.exp(logits - logits.max())
    p /= p.sum()
    print(
        json.dumps({"label": labels[int(p.argmax())], "probabilities": {str(k): float(v) for k, v in zip(labels, p)}})
    )
    return 0


def _load_flat(path: Path, dtypes: list[str]) -> list[np.ndarray]:
    """Arrays "0000", "0001", ... of an .npz (no pickle), raw-bit dtypes such as bfloat16 viewed back."""
    with np.load(path, allow_pickle=False) as z:
        return [z[f"{i:04d}"].view(_dtype(name)) for i, name in enumerate(dtypes)]


def _dtype(name: str) -> np.dtype:
    """A numpy dtype by name; bfloat16 and other ML types come from ml_dtypes (installed with jax)."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Greedy generation from an `slm export` directory (stablehlo or onnx).")
    ap.add_argument("artifact")
    ap.add_argument(
        "--prompt", default=None, help="text (char/byte tokenizers); for an encoder export, the text to read"
    )
    ap.add_argument("--ids", default=None, help="comma-separated prompt token ids instead of --prompt; prints ids")
    ap.add_argument("--max-new-tokens", type=int, default=100)
    args = ap.parse_args(argv)
    manifest = Path(args.artifact) / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("format", "").startswith("slm_jax.encoder."):
        return _encoder_main(args)
    art = Artifact(args.artifact)
    if args.ids is not None:
        new, _ = art.generate([int(i) for i in args.ids.split(",")], args.max_new_tokens)
        print(",".join(map(str, new)))
    else:
        prompt = args.prompt or ""
        new, _ = art.generate(art.encode(prompt), args.max_new_tokens)
        print(prompt + art.decode_text(new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
