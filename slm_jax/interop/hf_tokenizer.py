"""Hugging Face ``tokenizer.json`` files: load them for a run, and export our char/byte tokenizers as one.

A run imported from Hugging Face keeps the model's own ``tokenizer.json``; ``load_run_tokenizer``
tells it apart from our ``{"type": "char" | "byte"}`` files and wraps it in ``HFTokenizer``,
which has the same ``encode`` / ``decode`` / ``vocab_size`` / ``to_dict`` surface as ours.
Only the JSON is read (through the ``tokenizers`` library), never Python code.

Export: a char tokenizer becomes a BPE model with one token per character and no merges
(without a pre-tokenizer the whole text is one word, split into its characters; the ``Fuse``
decoder joins them back); the byte tokenizer becomes a byte-level BPE whose 256 tokens are the
GPT-2 byte alphabet, so token id == byte value in both libraries.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from slm_jax.errors import DataError

TOKENIZER_FILE = "tokenizer.json"


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise DataError(
            "This run uses a Hugging Face tokenizer.json; install the tokenizers package (pip install tokenizers)."
        ) from None
    return tokenizers


def is_hf_tokenizer(d: Any) -> bool:
    """Whether a parsed tokenizer.json is a Hugging Face ``tokenizers`` file (ours carry a ``type`` key)."""
    return isinstance(d, dict) and "model" in d and "type" not in d


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` behind our tokenizer interface; ids are int32 numpy arrays."""

    name = "hf"

    def __init__(self, json_text: str):
        self._tok = _tokenizers().Tokenizer.from_str(json_text)
        self.json_text = json_text

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        """Text -> (t,) int32 ids, with the special tokens (e.g. BOS) the tokenizer's post-processor adds."""
        return np.asarray(self._tok.encode(text, add_special_tokens=True).ids, np.int32)

    def decode(self, ids: Any) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False)

    def to_dict(self) -> dict:
        return {"type": self.name, "vocab_size": self.vocab_size}

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size})"


def load_run_tokenizer(path: str | Path):
    """Our char/byte tokenizer or an ``HFTokenizer``, whichever ``path`` (a tokenizer.json) holds."""
    from slm_jax.data.tokenizers import load_tokenizer

    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return load_tokenizer(path)  # its own error messages
    return HFTokenizer(path.read_text(encoding="utf-8")) if is_hf_tokenizer(d) else load_tokenizer(path)


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte value 0..255 (what a ByteLevel pre-tokenizer emits)."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def hf_tokenizer_json(tok) -> str:
    """Our char/byte tokenizer (or an HFTokenizer) as the text of an HF ``tokenizer.json``."""
    if isinstance(tok, HFTokenizer):
        return tok.json_text
    t = _tokenizers()
    kind = tok.to_dict()["type"]
    if kind == "char":
        hf = t.Tokenizer(t.models.BPE(vocab={ch: i for i, ch in enumerate(tok.chars)}, merges=[]))
        hf.decoder = t.decoders.Fuse()
    elif kind == "byte":
        hf = t.Tokenizer(t.models.BPE(vocab={ch: i for i, ch in enumerate(_byte_alphabet())}, merges=[]))
        hf.pre_tokenizer = t.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = t.decoders.ByteLevel()
    else:
        raise DataError(f"Tokenizer type {kind!r} cannot be exported to tokenizer.json; use a char or byte tokenizer.")
    return hf.to_str()


def export_run_tokenizer(run_dir: str | Path, out_dir: str | Path) -> bool:
    """Write ``out_dir/tokenizer.json`` for the run's tokenizer; False when the run has none."""
    src = Path(run_dir) / TOKENIZER_FILE
    if not src.is_file():
        return False
    tok = load_run_tokenizer(src)
    if isinstance(tok, HFTokenizer):
        shutil.copyfile(src, Path(out_dir) / TOKENIZER_FILE)
    else:
        (Path(out_dir) / TOKENIZER_FILE).write_text(hf_tokenizer_json(tok), encoding="utf-8")
    return True
