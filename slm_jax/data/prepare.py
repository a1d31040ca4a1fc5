"""Text files -> a prepared data directory (``train.bin``, ``val.bin``, ``tokenizer.json``, ``meta.json``).

``prepare`` is what ``slm data prepare`` runs. ``resolve_data_dir`` lets a config point
``data.path`` straight at a raw text file: the file is prepared once into a cache directory
keyed by its SHA-256, the tokenizer and the validation fraction, and reused after that.
The cache lives under ``data.cache_dir``, ``$SLM_JAX_CACHE`` or ``~/.cache/slm_jax``, never
next to the input, because shared data directories are read-only.

The split is nanoGPT's: the input files are concatenated in order and the last
``val_fraction`` of the tokens is the validation split.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence, Union

from slm_jax.data.corpora import generate_corpus
from slm_jax.data.token_files import DTYPES, META_FILE, is_prepared_dir, load_meta, split_path, token_dtype
from slm_jax.data.tokenizers import TOKENIZER_NAMES, build_tokenizer, save_tokenizer
from slm_jax.errors import DataError

PathLike = Union[str, Path]
MIN_SPLIT_TOKENS = 2  # one (input, target) pair needs two tokens


def _check_val_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(
            f"val_fraction must be strictly between 0 and 1, got {val_fraction}; set data.val_fraction (e.g. 0.1)."
        )


def _read_sources(inputs: Sequence[PathLike]) -> tuple[list[bytes], list[dict]]:
    """Reads every input file; returns their bytes and ``{"path", "bytes", "sha256"}`` records."""
    blobs, sources = [], []
    for path in inputs:
        path = Path(path).expanduser()
        if not path.exists():
            raise DataError(f"Input file {path} does not exist; check the path.")
        if not path.is_file():
            raise DataError(
                f"Input {path} is not a regular file; pass text files (a prepared directory needs no preparing)."
            )
        blob = path.read_bytes()
        blobs.append(blob)
        sources.append({"path": str(path.resolve()), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})
    return blobs, sources


def _decode_utf8(blob: bytes, path: str) -> str:
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (byte 0x{blob[e.start]:02x} at offset {e.start}), "
            "which the char tokenizer needs; use --tokenizer byte (data.tokenizer=byte)."
        ) from None


def _write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temp file + rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def prepare(
    inputs: Union[PathLike, Sequence[PathLike]], tokenizer: str, out_dir: PathLike, val_fraction: float = 0.1
) -> dict:
    """Tokenizes text files into a prepared data directory.

    Args:
        inputs: text file(s), concatenated in order.
        tokenizer: "char" (vocabulary = the corpus's distinct characters; needs UTF-8) or "byte".
        out_dir: directory to write (created if needed). ``meta.json`` is written last, so a
            crashed run leaves a directory that is not taken for a prepared one.
        val_fraction: the last this-fraction of the tokens becomes the validation split.

    Returns:
        The ``meta.json`` dict: tokenizer, vocab_size, dtype, train_tokens, val_tokens,
        val_fraction, sources (path, bytes, sha256 per input).
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise DataError("No input files given; pass at least one text file.")
    if tokenizer not in TOKENIZER_NAMES:
        raise DataError(f"Unknown tokenizer {tokenizer!r}; use one of: {', '.join(TOKENIZER_NAMES)}.")
    _check_val_fraction(val_fraction)
    blobs, sources = _read_sources(inputs)
    if sum(len(b) for b in blobs) == 0:
        raise DataError(
            f"The input ({', '.join(s['path'] for s in sources)}) is empty; give it a file with text in it."
        )

    if tokenizer == "char":
        # Decode file by file so that an error names the file that is not UTF-8.
        corpus = "".join(_decode_utf8(b, s["path"]) for b, s in zip(blobs, sources))
    else:
        corpus = b"".join(blobs)  # bytes need no decoding: any file works
    tok = build_tokenizer(tokenizer, corpus)
    ids = tok.encode(corpus)  # (n,) int32

    n = len(ids)
    n_train = int(n * (1.0 - val_fraction))  # nanoGPT: train = ids[:n_train], val = the rest
    if n_train < MIN_SPLIT_TOKENS or n - n_train < MIN_SPLIT_TOKENS:
        raise DataError(
            f"The input has {n} tokens, which splits into {n_train} train and "
            f"{n - n_train} val tokens with val_fraction={val_fraction}; each split "
            f"needs at least {MIN_SPLIT_TOKENS}, so use more text or change val_fraction."
        )

    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype_name = token_dtype(tok.vocab_size)
    dtype = DTYPES[dtype_name]
    (out_dir / META_FILE).unlink(missing_ok=True)  # an overwrite in progress is not a prepared dir
    ids[:n_train].astype(dtype).tofile(split_path(out_dir, "train"))
    ids[n_train:].astype(dtype).tofile(split_path(out_dir, "val"))
    save_tokenizer(tok, out_dir)
    meta = {
        "tokenizer": tokenizer,
        "vocab_size": tok.vocab_size,
        "dtype": dtype_name,
        "train_tokens": n_train,
        "val_tokens": n - n_train,
        "val_fraction": val_fraction,
        "sources": sources,
    }
    _write_atomic(out_dir / META_FILE, json.dumps(meta, indent=2).encode("utf-8"))
    return meta


def cache_root(cache_dir: PathLike = "") -> Path:
    """``cache_dir`` if given, else ``$SLM_JAX_CACHE``, else ``~/.cache/slm_jax``."""
    return Path(cache_dir or os.environ.get("SLM_JAX_CACHE") or "~/.cache/slm_jax").expanduser()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_matches(d: Path, sha: str, tokenizer: str, val_fraction: float) -> bool:
    """Whether ``d`` is a finished prepare of the file with hash ``sha`` with these settings."""
    if not is_prepared_dir(d):
        return False
    try:
        meta = load_meta(d)
    except DataError:
        return False
    srcs = meta.get("sources", [])
    return (
        meta["tokenizer"] == tokenizer
        and meta.get("val_fraction") == val_fraction
        and len(srcs) == 1
        and srcs[0].get("sha256") == sha
    )


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"Cannot create the data cache directory {path} ({e.strerror}); "
            "set data.cache_dir or $SLM_JAX_CACHE to a writable directory."
        ) from None
    return path


def resolve_data_dir(
    path: PathLike, tokenizer: str = "char", val_fraction: float = 0.1, cache_dir: PathLike = ""
) -> Path:
    """Turns ``data.path`` into a prepared data directory.

    Args:
        path: a prepared directory (returned as is) or a raw text file (prepared into the cache,
            or reused from it when its SHA-256, tokenizer and val_fraction match).
        tokenizer: tokenizer for a raw file ("char" or "byte").
        val_fraction: validation fraction for a raw file.
        cache_dir: cache root; "" -> ``$SLM_JAX_CACHE`` or ``~/.cache/slm_jax``.

    Returns:
        A directory holding ``meta.json``, ``tokenizer.json``, ``train.bin``, ``val.bin``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"Data path {path} does not exist; set data.path to a text file or a prepared data directory.")
    if path.is_dir():
        if not is_prepared_dir(path):
            raise DataError(
                f"{path} is not a prepared data directory (no {META_FILE}); run `slm data prepare` or pass a text file."
            )
        return path
    if tokenizer not in TOKENIZER_NAMES:
        raise DataError(f"Unknown tokenizer {tokenizer!r}; use one of: {', '.join(TOKENIZER_NAMES)}.")
    _check_val_fraction(val_fraction)

    sha = _sha256_file(path)
    parent = _writable_dir(cache_root(cache_dir) / "prepared")
    target = parent / f"{path.stem}-{tokenizer}-{sha[:12]}-{val_fraction:g}"
    if _cache_matches(target, sha, tokenizer, val_fraction):
        return target

    # Prepare into a temp dir and rename it into place: a crash leaves only a .tmp dir, never a
    # half-written target that a later run would take for a finished one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    try:
        prepare([path], tokenizer, tmp, val_fraction)
        if target.exists():
            if _cache_matches(target, sha, tokenizer, val_fraction):
                return target  # another process finished first; use its copy
            shutil.rmtree(target)  # a stale or broken entry under the same key
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def prepare_synthetic(name: str, cache_dir: PathLike = "", val_fraction: float = 0.1, seed: int = 0) -> Path:
    """Generates corpus ``name`` (see ``corpora.py``) and prepares it with the char tokenizer, cached.

    The generated text is written to ``<cache>/corpora/<name>-seed<seed>-<sha12>.txt`` and prepared
    through ``resolve_data_dir``, so a changed generator gives a new cache entry, never a stale one.

    Returns:
        The prepared data directory.
    """
    blob = generate_corpus(name, seed).encode("utf-8")
    sha = hashlib.sha256(blob).hexdigest()
    text_path = _writable_dir(cache_root(cache_dir) / "corpora") / f"{name}-seed{seed}-{sha[:12]}.txt"
    if not text_path.is_file() or _sha256_file(text_path) != sha:
        _write_atomic(text_path, blob)
    return resolve_data_dir(text_path, "char", val_fraction, cache_dir)
