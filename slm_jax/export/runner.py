"""Standalone greedy generation from an ``slm export`` artifact: jax, numpy and json only.

    python slm_jax/export/runner.py ARTIFACT_DIR --prompt "ROMEO:" --max-new-tokens 100

Nothing from slm_jax is imported (the model code travels as StableHLO inside the
``*.jax_export`` files), so this file can be copied next to an artifact and run with only
``pip install jax``. The calling convention is the one stablehlo.py documents: whole
``prefill_chunk``-token chunks of the prompt go through ``prefill``, the rest of the prompt and
every generated token through ``decode``, the cache going in and out of every call.
Tokenizers: the char and byte kinds of slm_jax's ``tokenizer.json``, reimplemented below.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "slm_jax.stablehlo/1"


class Artifact:
    """An exported model: the two compiled steps, the weights, the empty cache and the manifest."""

    def __init__(self, directory: str | Path):
        d = Path(directory)
        if not (d / "manifest.json").is_file():
            raise SystemExit(f"error: {d} has no manifest.json; pass a directory written by `slm export`.")
        self.manifest = json.loads((d / "manifest.json").read_text())
        if self.manifest.get("format") != FORMAT:
            raise SystemExit(f"error: {d} holds format {self.manifest.get('format')!r}, this runner reads {FORMAT!r}; re-export it.")
        self.max_len, self.chunk = self.manifest["max_len"], self.manifest["prefill_chunk"]
        self.weights = _load_flat(d / "weights.npz", self.manifest["weights"]["dtypes"])
        self.empty_cache = _load_flat(d / "cache.npz", self.manifest["cache"]["dtypes"])
        self.prefill = jax.jit(jax.export.deserialize((d / "prefill.jax_export").read_bytes()).call)
        self.decode = jax.jit(jax.export.deserialize((d / "decode.jax_export").read_bytes()).call)
        tok = d / "tokenizer.json"
        self.tokenizer = json.loads(tok.read_text(encoding="utf-8")) if tok.is_file() else None

    def generate(self, prompt: list[int], max_new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
        """Greedy continuation of ``prompt`` (token ids): (new ids, logits f32[v] before each new id)."""
        if not prompt or len(prompt) + max_new_tokens > self.max_len:
            raise SystemExit(
                f"error: the prompt ({len(prompt)} tokens) plus --max-new-tokens ({max_new_tokens}) must be between 1 and the "
                f"exported max length {self.max_len}; shorten them or re-export with a larger --max-len."
            )
        cache, pos = self.empty_cache, 0
        n_full = len(prompt) // self.chunk * self.chunk
        for i in range(0, n_full, self.chunk):
            logits, cache = self.prefill(self.weights, np.asarray([prompt[i : i + self.chunk]], np.int32), np.int32(i), cache)
        for pos in range(n_full, len(prompt)):
            logits, cache = self.decode(self.weights, np.asarray([[prompt[pos]]], np.int32), np.int32(pos), cache)
        new, seen = [], []
        for pos in range(len(prompt), len(prompt) + max_new_tokens):
            seen.append(np.asarray(logits[0]))
            new.append(int(np.argmax(seen[-1])))
            if pos < len(prompt) + max_new_tokens - 1:  # the last token needs no step
                logits, cache = self.decode(self.weights, np.asarray([[new[-1]]], np.int32), np.int32(pos), cache)
        return new, seen

    def encode(self, text: str) -> list[int]:
        kind = (self.tokenizer or {}).get("type")
        if kind == "byte":
            return list(text.encode("utf-8"))
        if kind == "char":
            index = {c: i for i, c in enumerate(self.tokenizer["chars"])}
            missing = [c for c in text if c not in index]
            if missing:
                raise SystemExit(f"error: character {missing[0]!r} is not in the model's vocabulary; use characters of its training text.")
            return [index[c] for c in text]
        raise SystemExit("error: this runner reads only slm_jax's char and byte tokenizers; pass token ids with --ids instead.")

    def decode_text(self, ids: list[int]) -> str:
        kind = (self.tokenizer or {}).get("type")
        if kind == "byte":
            return bytes(i if 0 <= i < 256 else ord("?") for i in ids).decode("utf-8", errors="replace")
        chars = self.tokenizer["chars"] if kind == "char" else ""
        return "".join(chars[i] if 0 <= i < len(chars) else "\ufffd" for i in ids)


def _load_flat(path: Path, dtypes: list[str]) -> list[np.ndarray]:
    """Arrays "0000", "0001", ... of an .npz (no pickle), raw-bit dtypes such as bfloat16 viewed back."""
    with np.load(path, allow_pickle=False) as z:
        return [z[f"{i:04d}"].view(jnp.dtype(name)) for i, name in enumerate(dtypes)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Greedy generation from an `slm export --format stablehlo` directory.")
    ap.add_argument("artifact")
    ap.add_argument("--prompt", default=None, help="text (char/byte tokenizers)")
    ap.add_argument("--ids", default=None, help="comma-separated prompt token ids instead of --prompt; prints ids")
    ap.add_argument("--max-new-tokens", type=int, default=100)
    args = ap.parse_args(argv)
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
