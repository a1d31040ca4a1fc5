"""Hugging Face ``tokenizer.json`` files: load them for a run, and export our char/byte tokenizers as one.

A run imported from Hugging Face keeps the model's own ``tokenizer.json``; ``load_tokenizer``
(slm_jax/data/tokenizers.py) tells it apart from our ``{"type": "char" | "byte"}`` files and wraps it
in ``HFTokenizer`` (slm_jax/data/hf_tokenizer.py), the same wrapper a trained BPE uses.

Export: a char tokenizer becomes a BPE model with one token per character and no merges
(without a pre-tokenizer the whole text is one word, split into its characters; the ``Fuse``
decoder joins them back); the byte tokenizer becomes a byte-level BPE whose 256 tokens are the
GPT-2 byte alphabet, so token id == byte value in both libraries.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import tokenizers as t

from slm_jax.data.hf_tokenizer import HFTokenizer
from slm_jax.data.tokenizers import load_tokenizer
from slm_jax.errors import DataError

TOKENIZER_FILE = "tokenizer.json"


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
    tok = load_tokenizer(src)
    if isinstance(tok, HFTokenizer):
        shutil.copyfile(src, Path(out_dir) / TOKENIZER_FILE)
    else:
        (Path(out_dir) / TOKENIZER_FILE).write_text(hf_tokenizer_json(tok), encoding="utf-8")
    return True
