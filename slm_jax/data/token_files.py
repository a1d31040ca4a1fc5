"""Reading a prepared data directory: ``meta.json``, ``tokenizer.json`` and the token files.

The layout (written by ``slm_jax.data.prepare``) is nanoGPT's: each split is a raw
little-endian array of token ids with no header, so it can be memory-mapped and sliced
without reading the file. A split is one file (``train.bin``) or, when prepared with shards,
several (``train_000.bin``, ``train_001.bin``, ...) listed with their token counts under
``meta["shards"]``; ``ShardedTokens`` reads those as one concatenated array, memory-mapped.
``meta.json`` holds the dtype and token counts; a token file whose size disagrees with them
(e.g. a copy cut short) is refused rather than trained on. ``<split>.docs.npy`` (int64, counts
under ``meta["documents"]``) holds the offset of each document's first token in the split, for
packed rows (``data.pack``); directories prepared before it existed lack it and cannot be packed.
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
DOCS_SUFFIX = ".docs.npy"
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


def docs_path(data_dir: Union[str, Path], split: str) -> Path:
    """``data_dir/<split>.docs.npy``, the split's document index."""
    return split_path(data_dir, split).with_suffix(DOCS_SUFFIX)


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


class ShardedTokens:
    """Several memory-mapped token files read as their concatenation (nothing is loaded up front).

    Args:
        shards: the (n_i,) read-only memmaps, in order.

    Indexing with a slice or an integer array returns a numpy array of the ids at those positions of
    the concatenation; ``windows`` gathers fixed-length windows, which may cross shard boundaries.
    """

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.dtype = shards[0].dtype
        self.starts = np.cumsum([0] + [len(s) for s in shards])  # (k + 1,) first position of each shard, then n

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Ids at positions ``idx`` (any shape, in [0, n)) of the concatenation, same shape, file dtype."""
        idx = np.asarray(idx, np.int64)
        which = np.searchsorted(self.starts, idx, side="right") - 1  # shard of each position
        out = np.empty(idx.shape, self.dtype)
        for k in np.unique(which):
            sel = which == k
            out[sel] = self.shards[k][idx[sel] - self.starts[k]]
        return out

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            return self.take(np.arange(*key.indices(len(self))))
        return self.take(key)

    def windows(self, starts: np.ndarray, width: int) -> np.ndarray:
        """(len(starts), width) windows ``[s, s + width)`` of the concatenation."""
        return self.take(np.asarray(starts, np.int64)[:, None] + np.arange(width))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole concatenation in memory: only for small splits (e.g. tests)."""
        out = np.concatenate(self.shards)
        return out if dtype is None else out.astype(dtype)


def _map_file(path: Path, dtype: np.dtype, tokens: int, dtype_name: str) -> np.memmap:
    """Memory-maps one token file, refusing it when its size is not ``tokens`` ids."""
    if not path.is_file():
        raise DataError(f"{path} is missing from the prepared data directory; re-run `slm data prepare`.")
    size = path.stat().st_size
    if size != tokens * dtype.itemsize:
        # Truncation is the usual cause (an interrupted copy); either way the ids cannot be trusted.
        raise DataError(
            f"{path} holds {size} bytes but {META_FILE} promises {tokens} {dtype_name} tokens "
            f"({tokens * dtype.itemsize} bytes), so it is truncated or stale; re-run `slm data prepare`."
        )
    return np.memmap(path, dtype=dtype, mode="r", shape=(tokens,))


def load_split(data_dir: Union[str, Path], split: str, meta: dict | None = None) -> np.ndarray | ShardedTokens:
    """Memory-maps one split read-only.

    Args:
        data_dir: a prepared data directory.
        split: "train" or "val".
        meta: its ``meta.json`` if already loaded (read from ``data_dir`` otherwise).

    Returns:
        (n,) read-only memmap of token ids in the file dtype (uint16 or uint32), n = meta[f"{split}_tokens"];
        a ``ShardedTokens`` over the split's shards when the directory was prepared with shards.
    """
    if split not in SPLITS:
        raise DataError(f"Unknown data split {split!r}; use one of: {', '.join(SPLITS)}.")
    meta = load_meta(data_dir) if meta is None else meta
    dtype = DTYPES[meta["dtype"]]
    expected = int(meta[f"{split}_tokens"])
    if expected == 0:
        raise DataError(f"The {split} split in {data_dir} is empty; prepare it from more text.")
    if "shards" not in meta:
        return _map_file(split_path(data_dir, split), dtype, expected, meta["dtype"])
    shards = meta["shards"][split]
    if sum(int(s["tokens"]) for s in shards) != expected:
        raise DataError(
            f"{Path(data_dir) / META_FILE} lists {split} shards that do not add up to {expected} tokens; "
            "re-run `slm data prepare`."
        )
    maps = [_map_file(Path(data_dir) / s["file"], dtype, int(s["tokens"]), meta["dtype"]) for s in shards]
    return maps[0] if len(maps) == 1 else ShardedTokens(maps)


def load_doc_starts(data_dir: Union[str, Path], split: str, meta: dict | None = None) -> np.ndarray:
    """(d,) int64 read-only memmap: the offset in the split of each document's first token, nondecreasing from 0
    (the val split's first document may be the tail of one begun in train)."""
    meta = load_meta(data_dir) if meta is None else meta
    if "documents" not in meta:
        raise DataError(
            f"{data_dir} has no document index (it was prepared before documents were recorded), "
            "which data.pack needs; re-run `slm data prepare` on its sources or drop data.pack."
        )
    path = docs_path(data_dir, split)
    starts = np.load(path, mmap_mode="r") if path.is_file() else None
    if starts is None or starts.shape != (int(meta["documents"][split]),):
        raise DataError(
            f"{path} is missing or does not hold the {meta['documents'][split]} document offsets {META_FILE} "
            "promises; re-run `slm data prepare`."
        )
    return starts


def load_data_tokenizer(data_dir: Union[str, Path]) -> Tokenizer:
    """The tokenizer a prepared directory was encoded with (its ``tokenizer.json``)."""
    return load_tokenizer(Path(data_dir) / TOKENIZER_FILE)
