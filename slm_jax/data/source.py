"""``load_dataset(cfg.data)`` and ``load_sources(cfg.data)``: the one place the trainer gets its tokens from.

``data.path`` (a raw text file or a prepared directory) wins; else ``data.synthetic`` names a
generated corpus; with neither there is no data and the error says how to give some.
``data.mixture`` maps several such sources to weights; they must share one tokenizer.
"""

from __future__ import annotations

import dataclasses
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
    if cfg.mixture:
        raise DataError(
            "This command reads one data source, but data.mixture names several; set data.path to one of them "
            "(`slm train` and `slm eval` read mixtures)."
        )
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


def source_name(source: str) -> str:
    """The metric name of a mixture source: a corpus name as is, a path's file or directory name without suffix."""
    return source if source in CORPORA and not Path(source).exists() else Path(source).stem


def load_sources(cfg: DataConfig) -> dict[str, Dataset]:
    """Every source of ``cfg`` opened: ``{name: dataset}`` for a mixture (``source_name``), ``{"": dataset}`` else.

    Raises:
        DataError: two sources with one name, or sources tokenized differently (their ids would not mean the same).
    """
    if not cfg.mixture:
        return {"": load_dataset(cfg)}
    names = [source_name(s) for s in cfg.mixture]
    if len(set(names)) < len(names):
        raise DataError(
            f"data.mixture sources {list(cfg.mixture)} share a name ({names}), which names their metrics; "
            "rename a file or directory so their names differ."
        )
    sources = {}
    for source, name in zip(cfg.mixture, names):
        corpus = source in CORPORA and not Path(source).exists()
        one = dataclasses.replace(cfg, mixture={}, **{"synthetic" if corpus else "path": source})
        sources[name] = load_dataset(one)
    (first, data), *rest = sources.items()
    for name, other in rest:
        if other.tokenizer.to_dict() != data.tokenizer.to_dict():
            raise DataError(
                f"The data.mixture sources {first!r} ({data.data_dir}) and {name!r} ({other.data_dir}) use different "
                "tokenizers; prepare them with one, e.g. `slm data prepare ... --tokenizer "
                f"{data.data_dir}/tokenizer.json`."
            )
    return sources
