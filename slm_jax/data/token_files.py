"""Reading a prepared data directory: ``meta.json``, ``tokenizer.json``, ``train.bin``, ``val.bin``.

The layout (written by ``slm_jax.data.prepare``) is nanoGPT's: each split is a raw
little-endian array of token ids with no header, so it can be memory-mapped and sliced
without reading the file. ``meta.json`` holds the dtype and token counts; a split file whose
size disagrees with them (e.g. a copy cut short) is refused rather than trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import numpy as np

from slm_jax.data.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer
from slm_jax.errors import DataError

META_FILE = "meta.json"
SPLITS = ("train", "val")
# Token files are little-endian whatever the machine, so they can be shared between hosts.
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def token_dtype(vocab_size: int) -> str:
    """The smallest file dtype name ("uint16" or "uint32") that holds ids below ``vocab_size``."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


def split_path(data_dir: Union[str, Path], split: str) -> Path:
    """``data_dir/<split>.bin``."""
    if split not in SPLITS:
        raise DataError(f"Unknown data split {split!r}; use one of: {', '.join(SPLITS)}.")
    return Path(data_dir) / f"{split}.bin"


def is_prepared_dir(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a directory holding ``meta.json`` (a finished prepare writes it last)."""
    return (Path(path) / META_FILE).is_file()


def load_meta(data_dir: Union[str, Path]) -> dict:
    """Reads ``data_dir/meta.json``.

    Returns:
        The dict written by ``prepare``: tokenizer, vocab_size, dtype, train_tokens, val_tokens,
        val_fraction, sources.
    """
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError(f"Data directory {data_dir} does not exist; check data.path or run `slm data prepare`.")
    if not is_prepared_dir(data_dir):
        raise DataError(
            f"{data_dir} is not a prepared data directory (no {META_FILE}); run `slm data prepare` or pass a text file."
        )
    try:
        meta = json.loads((data_dir / META_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{data_dir / META_FILE} is not valid JSON ({e}); re-run `slm data prepare`.") from None
    missing = [k for k in ("tokenizer", "vocab_size", "dtype", "train_tokens", "val_tokens") if k not in meta]
    if missing:
        raise DataError(f"{data_dir / META_FILE} lacks {', '.join(missing)}; re-run `slm data prepare` to rewrite it.")
    if meta["dtype"] not in DTYPES:
        raise DataError(
            f"{data_dir / META_FILE} names dtype {meta['dtype']!r}; "
            f"only {', '.join(DTYPES)} are supported, re-run `slm data prepare`."
        )
    return meta


def load_split(data_dir: Union[str, Path], split: str, meta: dict | None = None) -> np.memmap:
    """Memory-maps one split read-only.

    Args:
        data_dir: a prepared data directory.
        split: "train" or "val".
        meta: its ``meta.json`` if already loaded (read from ``data_dir`` otherwise).

    Returns:
        (n,) read-only memmap of token ids in the file dtype (uint16 or uint32), n = meta[f"{split}_tokens"].
    """
    path = split_path(data_dir, split)
    meta = load_meta(data_dir) if meta is None else meta
    dtype = DTYPES[meta["dtype"]]
    expected = int(meta[f"{split}_tokens"])
    if not path.is_file():
        raise DataError(f"{path} is missing from the prepared data directory; re-run `slm data prepare`.")
    size = path.stat().st_size
    if size != expected * dtype.itemsize:
        # Truncation is the usual cause (an interrupted copy); either way the ids cannot be trusted.
        raise DataError(
            f"{path} holds {size} bytes but {META_FILE} promises {expected} {meta['dtype']} tokens "
            f"({expected * dtype.itemsize} bytes), so it is truncated or stale; re-run `slm data prepare`."
        )
    if expected == 0:
        raise DataError(f"The {split} split in {data_dir} is empty; prepare it from more text.")
    return np.memmap(path, dtype=dtype, mode="r", shape=(expected,))


def load_data_tokenizer(data_dir: Union[str, Path]) -> Tokenizer:
    """The tokenizer a prepared directory was encoded with (its ``tokenizer.json``)."""
    return load_tokenizer(Path(data_dir) / TOKENIZER_FILE)
