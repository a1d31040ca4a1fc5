"""``load_dataset(cfg.data)``: the one place the trainer gets its tokens from.

``data.path`` (a raw text file or a prepared directory) wins; else ``data.synthetic`` names a
generated corpus; with neither there is no data and the error says how to give some.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slm_jax.config import DataConfig
from slm_jax.data.corpora import CORPORA
from slm_jax.data.prepare import prepare_synthetic, resolve_data_dir
from slm_jax.data.token_files import load_data_tokenizer, load_doc_starts, load_meta, load_split
from slm_jax.data.tokenizers import Tokenizer
from slm_jax.errors import DataError


@dataclass(frozen=True)
class Dataset:
    """A prepared data directory, opened.

    Attributes:
        data_dir: the prepared directory the splits were read from.
        train: (n_train,) read-only memmap of token ids (uint16 or uint32).
        val: (n_val,) read-only memmap of token ids.
        tokenizer: the tokenizer the ids were made with.
        meta: the directory's ``meta.json`` (vocab_size, tokenizer name, counts, sources).
        train_docs, val_docs: (d,) int64 memmaps of each document's first-token offset when opened for
            packing (``data.pack``), else None.
    """

    data_dir: Path
    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    meta: dict
    train_docs: np.ndarray | None = None
    val_docs: np.ndarray | None = None


def open_dataset(data_dir: Path, pack: bool = False) -> Dataset:
    """Opens a prepared directory: both splits memory-mapped, tokenizer and meta loaded, with ``pack`` the
    document indexes too (refused with one sentence when the directory has none)."""
    meta = load_meta(data_dir)
    tokenizer = load_data_tokenizer(data_dir)
    if tokenizer.vocab_size != meta["vocab_size"]:
        raise DataError(
            f"{data_dir}: tokenizer.json has {tokenizer.vocab_size} tokens but meta.json says {meta['vocab_size']}; "
            "the files come from different prepares, re-run `slm data prepare`."
        )
    docs = [load_doc_starts(data_dir, split, meta) if pack else None for split in ("train", "val")]
    return Dataset(
        Path(data_dir), load_split(data_dir, "train", meta), load_split(data_dir, "val", meta), tokenizer, meta, *docs
    )


def load_dataset(cfg: DataConfig) -> Dataset:
    """Resolves ``cfg`` to a prepared directory (preparing and caching raw text) and opens it.

    Args:
        cfg: ``path`` (text file or prepared directory) if set, else ``synthetic`` (a corpus name);
            ``pack`` also opens the document indexes.
    """
    if cfg.path:
        data_dir = resolve_data_dir(cfg.path, cfg.tokenizer, cfg.val_fraction, cfg.cache_dir)
    elif cfg.synthetic:
        data_dir = prepare_synthetic(cfg.synthetic, cfg.cache_dir, cfg.val_fraction)
    else:
        raise DataError(
            "No data: set data.path to a text file or prepared directory, or data.synthetic to one of "
            f"{', '.join(sorted(CORPORA))}."
        )
    return open_dataset(data_dir, cfg.pack)
