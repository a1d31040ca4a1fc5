"""Input files -> a prepared data directory (token files, ``tokenizer.json``, ``meta.json``), streamed.

``prepare`` is what ``slm data prepare`` runs. Documents are read (``readers.py``), tokenized and
written in pieces, so memory stays bounded whatever the corpus size: one pass builds the tokenizer
(the char vocabulary, or a byte-level BPE trained on the first ``bpe_sample_mb`` MB), a second
encodes and writes. The output is one
``train.bin`` / ``val.bin`` pair, or with ``shard_tokens`` shards ``train_000.bin``, ... listed in
``meta["shards"]``; both hold the same ids. ``resolve_data_dir`` lets a config point ``data.path``
straight at a raw text file: the file is prepared once into a cache directory keyed by its SHA-256,
the tokenizer and the validation fraction, and reused after that. The cache lives under
``data.cache_dir``, ``$SLM_JAX_CACHE`` or ``~/.cache/slm_jax``, never next to the input, because
shared data directories are read-only.

The split is nanoGPT's: the documents are concatenated in order and the last ``val_fraction`` of
the tokens is the validation split. A tokenizer with an end-of-document token (a BPE's
``<|endoftext|>``) gets it after every document; char and byte ones get a newline after every
record (jsonl line, table row) that lacks one, and text files are concatenated as they are.
A document (a jsonl line's text, a table row, a text file) is recorded by its first token's offset in
``<split>.docs.npy``, streamed to disk while encoding, for packed rows (``data.pack``).
A Hugging Face tokenizer encodes through ``fast_encode_batch`` (a word -> ids cache where that is exact), in
``workers`` processes when the corpus is large (each with its own tokenizer and cache; batches come back in
order, so the files are byte-identical to one process's): the cache's lookups are Python and hold one core.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import tempfile
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from slm_jax.data.corpora import generate_corpus
from slm_jax.data.hf_tokenizer import HFTokenizer, fast_encode_batch, train_bpe
from slm_jax.data.readers import BadLines, expand_inputs, file_record, iter_pieces
from slm_jax.data.token_files import DOCS_SUFFIX, DTYPES, META_FILE, docs_path, is_prepared_dir, load_meta, token_dtype
from slm_jax.data.tokenizers import (
    TOKENIZER_NAMES,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    load_tokenizer,
    save_tokenizer,
)
from slm_jax.errors import DataError

PathLike = Union[str, Path]
MIN_SPLIT_TOKENS = 2  # one (input, target) pair needs two tokens
PREPARE_TOKENIZERS = ("char", "byte", "bpe")  # or a path to a Hugging Face tokenizer.json
BATCH_CHARS = 1 << 22  # pieces are encoded in batches of about this many characters
PIECE_CHARS = 1 << 16  # a text file is cut into pieces of about this many characters (many per batch: parallel)
BPE_SAMPLE_MB = 64.0  # a BPE is trained on the first this-many MB of the corpus (0: all of it)
_CUT = re.compile(r"\S( |\n)(?=\S)")  # see _safe_cut
_DOC_ENDS = ".docs.tmp"  # raw int64 offsets past each document, written while encoding
_DOC_CHUNK = 1 << 20  # document offsets copied per piece into the split indexes
_MAX_CARRY = 1 << 26  # a text with no line break for this long is cut anyway (BPE may then differ at the cut)
PARALLEL_MIN_BYTES = 32_000_000  # smaller corpora encode in one process (starting workers takes ~1 s)


def _check_val_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(
            f"val_fraction must be strictly between 0 and 1, got {val_fraction}; set data.val_fraction (e.g. 0.1)."
        )


def _safe_cut(text: str, start: int) -> int:
    """The first place at or after ``start`` where ``text`` may be cut without changing its BPE encoding; 0 if none.

    Before a single space, or after a single newline, between two non-spaces: GPT-2's pre-tokenizer
    regex (and Llama 3's) never joins the two sides there, so a byte-level BPE encodes the pieces
    exactly as it encodes the whole.
    """
    m = _CUT.search(text, max(start - 1, 0))
    if m is None:
        return 0
    j = m.start(1)
    return j if text[j] == " " else j + 1


def _str_pieces(pieces: Iterator, tokenizer: str, cut: bool) -> Iterator:
    """``iter_pieces`` with text files decoded as UTF-8 (errors name the file and byte offset) -> (str, end).

    With ``cut``, a document's pieces are re-cut where ``_safe_cut`` allows, about ``PIECE_CHARS`` each.
    """
    decoder, offset, carry, scanned = None, 0, "", 0
    for piece, end, path in pieces:
        if isinstance(piece, bytes):
            if decoder is None:
                decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
            at = offset - len(decoder.getstate()[0])  # file offset of the decoder's input
            try:
                text = decoder.decode(piece, final=end)
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {at + e.start}), "
                    f"which the {tokenizer} tokenizer needs; use --tokenizer byte (data.tokenizer=byte)."
                ) from None
            offset += len(piece)
            decoder = None if end else decoder
        else:
            text = piece
        if not cut:
            yield text, end
            continue
        carry += text
        while len(carry) > PIECE_CHARS:
            k = _safe_cut(carry, max(PIECE_CHARS, scanned - 2)) or (len(carry) if len(carry) > _MAX_CARRY else 0)
            if not k:
                scanned = len(carry)  # no cut up to here: the next search starts at the new text
                break
            yield carry[:k], False
            carry, scanned = carry[k:], 0
        if end:
            yield carry, True
            carry, scanned = "", 0


def _sample(texts: Iterator[str], max_bytes: int) -> Iterator[str]:
    """The first ``max_bytes`` bytes (UTF-8) of ``texts``, all when 0; the text crossing the bound is cut."""
    left = max_bytes
    for text in texts:
        if max_bytes:
            raw = text.encode("utf-8", "surrogatepass")
            if len(raw) >= left:
                yield raw[:left].decode("utf-8", "ignore")
                return
            left -= len(raw)
        yield text


def _batches(pieces: Iterator) -> Iterator[list]:
    """Groups ``(piece, end, ...)`` tuples into ``(piece, end)`` lists of about ``BATCH_CHARS`` characters."""
    batch, size = [], 0
    for piece, end, *_ in pieces:
        batch.append((piece, end))
        size += len(piece)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encode_batch(tok: Tokenizer, batch: list, encode_pieces: Optional[Callable]) -> tuple[np.ndarray, np.ndarray]:
    """A batch of pieces -> (n,) int32 ids (the end-of-document token after each document end when there is
    one) and (e,) int64 offsets into them just past each document that ends in the batch.

    ``encode_pieces`` encodes a Hugging Face tokenizer's pieces (``fast_encode_batch``); None for char and byte.
    """
    if isinstance(tok, ByteTokenizer):
        raw = [p if isinstance(p, bytes) else p.encode("utf-8") for p, _ in batch]
        ids, lengths = tok.encode(b"".join(raw)), [len(r) for r in raw]
    elif isinstance(tok, CharTokenizer):  # one id per character
        ids, lengths = tok.encode("".join(p for p, _ in batch)), [len(p) for p, _ in batch]
    else:
        encoded = encode_pieces([p for p, _ in batch])
        eos = tok.eos_id
        if eos is not None:
            encoded = [np.append(x, np.int32(eos)) if end else x for x, (_, end) in zip(encoded, batch)]
        ids, lengths = np.concatenate(encoded) if encoded else np.zeros(0, np.int32), [len(x) for x in encoded]
    return ids, np.cumsum(lengths, dtype=np.int64)[np.array([end for _, end in batch], bool)]


_WORKER: dict = {}  # in an encoding worker process: its tokenizer and encoder


def _start_worker(json_text: str) -> None:
    tok = HFTokenizer(json_text)
    _WORKER.update(tok=tok, encode=fast_encode_batch(tok))


def _encode_in_worker(batch: list) -> tuple[np.ndarray, np.ndarray]:
    return _encode_batch(_WORKER["tok"], batch, _WORKER["encode"])


def _encoded(tok: Tokenizer, batches: Iterator[list], workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``_encode_batch`` of each batch, in order: here, or for a Hugging Face tokenizer with ``workers`` > 1 in
    that many processes (fresh interpreters: forking a process that has started JAX can deadlock), at most two
    batches per worker in flight so memory stays bounded."""
    if workers <= 1 or not isinstance(tok, HFTokenizer):
        encode_pieces = fast_encode_batch(tok) if isinstance(tok, HFTokenizer) else None
        yield from (_encode_batch(tok, batch, encode_pieces) for batch in batches)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, context, initializer=_start_worker, initargs=(tok.json_text,)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(_encode_in_worker, batch))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def encode_workers(tokenizer: str, corpus_bytes: int, workers: int = 0) -> int:
    """Processes that encode a corpus of ``corpus_bytes``: ``workers`` if > 0, else every core for a BPE or
    ``tokenizer.json`` corpus of at least ``PARALLEL_MIN_BYTES`` and one otherwise (char and byte are numpy)."""
    if workers < 0:
        raise DataError(f"--workers must be >= 0 (0 = automatic, 1 = one process), got {workers}.")
    if workers:
        return workers
    parallel = tokenizer not in ("char", "byte") and corpus_bytes >= PARALLEL_MIN_BYTES
    return len(os.sched_getaffinity(0)) if parallel and hasattr(os, "sched_getaffinity") else 1


class _PartWriter:
    """Appends ids to part files of ``shard_tokens`` ids each (one part when 0) in ``out_dir``."""

    def __init__(self, out_dir: Path, dtype: np.dtype, shard_tokens: int):
        self.out_dir, self.dtype, self.shard_tokens = out_dir, dtype, shard_tokens
        self.parts: list[list] = []  # [path, tokens]
        self._f = None

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._f is None or (self.shard_tokens and self.parts[-1][1] == self.shard_tokens):
                self._open_next()
            room = self.shard_tokens - self.parts[-1][1] if self.shard_tokens else len(ids)
            ids[:room].astype(self.dtype).tofile(self._f)
            self.parts[-1][1] += len(ids[:room])
            ids = ids[room:]

    def _open_next(self) -> None:
        if self._f is not None:
            self._f.close()
        path = self.out_dir / f".part_{len(self.parts):05d}.tmp"
        self.parts.append([path, 0])
        self._f = path.open("wb")

    def close(self) -> list[list]:
        if self._f is not None:
            self._f.close()
        return self.parts


def _split_parts(parts: list[list], n_train: int, out_dir: Path, itemsize: int, sharded: bool) -> dict:
    """Renames the parts into ``train*.bin`` / ``val*.bin``, cutting the part that holds the split point in two.

    Returns:
        ``{"train": [{"file", "tokens"}, ...], "val": [...]}``.
    """
    out: dict = {"train": [], "val": []}

    def place(split: str, src: Path, tokens: int) -> None:
        name = f"{split}_{len(out[split]):03d}.bin" if sharded else f"{split}.bin"
        os.replace(src, out_dir / name)
        out[split].append({"file": name, "tokens": tokens})

    start = 0
    for path, n in parts:
        if start + n <= n_train:
            place("train", path, n)
        elif start >= n_train:
            place("val", path, n)
        else:
            k = n_train - start  # ids of this part that belong to train
            tail = path.with_name(path.name + ".val")
            with path.open("rb") as src, tail.open("wb") as dst:
                src.seek(k * itemsize)
                shutil.copyfileobj(src, dst, 1 << 24)
            os.truncate(path, k * itemsize)
            place("train", path, k)
            place("val", tail, n - k)
        start += n
    return out


def _write_doc_starts(doc_ends: Path, n_train: int, n: int, out_dir: Path) -> dict:
    """Writes ``{split}.docs.npy``, each split's (d,) int64 document start offsets (0 first: the val split
    may begin inside a document), from the raw int64 offsets past every document, copied in bounded pieces.

    Returns:
        ``{"train": d_train, "val": d_val}``, the number of documents (or document tails) per split.
    """
    ends = np.memmap(doc_ends, dtype="<i8", mode="r")  # (e,) nondecreasing, the last one n
    cut = int(np.searchsorted(ends, n_train, side="right"))  # an end at n_train starts val at 0 anyway
    spans = {"train": (0, int(np.searchsorted(ends, n_train)), 0), "val": (cut, int(np.searchsorted(ends, n)), n_train)}
    counts = {}
    for split, (lo, hi, shift) in spans.items():
        starts = np.lib.format.open_memmap(docs_path(out_dir, split), mode="w+", dtype="<i8", shape=(1 + hi - lo,))
        starts[0] = 0
        for a in range(lo, hi, _DOC_CHUNK):
            b = min(a + _DOC_CHUNK, hi)
            starts[1 + a - lo : 1 + b - lo] = ends[a:b] - shift
        starts.flush()
        counts[split] = 1 + hi - lo
    return counts


def _build_tokenizer(tokenizer: str, vocab_size: int, sample_bytes: int, str_pieces) -> Tokenizer:
    """The tokenizer named by ``--tokenizer``; char reads ``str_pieces()`` once, bpe its first ``sample_bytes``."""
    if tokenizer == "byte":
        return ByteTokenizer()
    if tokenizer == "bpe":
        return train_bpe(_sample((p for p, _ in str_pieces()), sample_bytes), vocab_size)
    if tokenizer == "char":
        seen = np.zeros(0x110000, bool)  # by code point: a scatter per piece, no sort
        for p, _ in str_pieces():
            if p.isascii():
                seen[np.frombuffer(p.encode("ascii"), np.uint8)] = True
            else:
                seen[np.frombuffer(p.encode("utf-32-le", "surrogatepass"), "<u4")] = True
        if not seen.any():
            raise DataError("The input holds no text; give it documents with text in them.")
        return CharTokenizer(np.flatnonzero(seen).astype("<u4").tobytes().decode("utf-32-le", "surrogatepass"))
    return load_tokenizer(tokenizer)


def _check_tokenizer_args(tokenizer: str, vocab_size: int, bpe_sample_mb: float) -> None:
    if tokenizer not in PREPARE_TOKENIZERS and not Path(tokenizer).suffix == ".json":
        raise DataError(
            f"Unknown tokenizer {tokenizer!r}; use one of: {', '.join(PREPARE_TOKENIZERS)} or a tokenizer.json path."
        )
    if tokenizer == "bpe" and vocab_size <= 0:
        raise DataError("--tokenizer bpe needs a vocabulary size; pass --vocab-size N (e.g. 8192).")
    if tokenizer != "bpe" and vocab_size:
        raise DataError(f"--vocab-size applies only to --tokenizer bpe, not {tokenizer}; drop it.")
    if not bpe_sample_mb >= 0:
        raise DataError(f"--bpe-sample-mb must be >= 0 (0 = train on the whole corpus), got {bpe_sample_mb}.")


def prepare(
    inputs: Union[PathLike, Sequence[PathLike]],
    tokenizer: str,
    out_dir: PathLike,
    val_fraction: float = 0.1,
    *,
    vocab_size: int = 0,
    text_field: str = "text",
    skip_bad_lines: bool = False,
    shard_tokens: int = 0,
    bpe_sample_mb: float = BPE_SAMPLE_MB,
    workers: int = 0,
) -> dict:
    """Tokenizes input files into a prepared data directory, streaming (bounded memory).

    Args:
        inputs: text files, directories, .jsonl, .parquet, .arrow files or ``save_to_disk`` directories,
            read in order (see ``readers.py``).
        tokenizer: "char" (vocabulary = the corpus's distinct characters; needs UTF-8), "byte", "bpe"
            (a byte-level BPE trained on the corpus) or a path to a Hugging Face ``tokenizer.json``.
        out_dir: directory to write (created if needed). ``meta.json`` is written last, so a
            crashed run leaves a directory that is not taken for a prepared one.
        val_fraction: the last this-fraction of the tokens becomes the validation split.
        vocab_size: vocabulary size of a trained BPE (only with "bpe").
        text_field: the JSON field or table column holding the text of a record source.
        skip_bad_lines: count bad records (corrupt JSON, missing field, empty text) instead of failing.
        shard_tokens: ids per token file; 0 writes one ``train.bin`` and one ``val.bin``.
        bpe_sample_mb: "bpe" is trained on the first this-many MB (UTF-8) of the corpus, the whole
            corpus when it is smaller or when 0; every document is encoded either way.
        workers: processes that encode with a BPE or ``tokenizer.json`` (``encode_workers``; 0 = automatic:
            every core from ``PARALLEL_MIN_BYTES`` of input). The output does not depend on it.

    Returns:
        The ``meta.json`` dict: tokenizer, vocab_size, dtype, train_tokens, val_tokens, val_fraction,
        sources (path, bytes, sha256 per input file), documents (per split, the length of ``<split>.docs.npy``),
        with shards: shards; with skip_bad_lines: bad_lines.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise DataError("No input files given; pass at least one text file.")
    _check_tokenizer_args(tokenizer, vocab_size, bpe_sample_mb)
    _check_val_fraction(val_fraction)
    if shard_tokens < 0:
        raise DataError(f"--shard-tokens must be >= 0 (0 = one file per split), got {shard_tokens}.")
    files = expand_inputs(inputs)
    sources = [file_record(p) for p, _ in files]
    if sum(s["bytes"] for s in sources) == 0:
        raise DataError(
            f"The input ({', '.join(s['path'] for s in sources)}) is empty; give it a file with text in it."
        )
    n_workers = encode_workers(tokenizer, sum(s["bytes"] for s in sources), workers)

    def pieces(bad: BadLines, record_newline: bool, cut: bool):
        raw = iter_pieces(files, text_field, bad, record_newline)
        return raw if tokenizer == "byte" else _str_pieces(raw, tokenizer, cut)

    tok = _build_tokenizer(
        tokenizer,
        vocab_size,
        int(bpe_sample_mb * 1e6),
        lambda: pieces(BadLines(skip_bad_lines), tokenizer == "char", tokenizer == "bpe"),
    )
    bad = BadLines(skip_bad_lines)
    is_hf = isinstance(tok, HFTokenizer)
    record_newline = not (is_hf and tok.eos_id is not None)

    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)  # an overwrite in progress is not a prepared dir
    stale = ("train*.bin", "val*.bin", f"*{DOCS_SUFFIX}", ".part_*", _DOC_ENDS)
    for old in [p for pattern in stale for p in out_dir.glob(pattern)]:
        old.unlink()
    dtype_name = token_dtype(tok.vocab_size)
    writer = _PartWriter(out_dir, DTYPES[dtype_name], shard_tokens)
    doc_ends = out_dir / _DOC_ENDS  # int64 offsets just past each document of the whole stream, streamed
    n = 0
    try:
        with doc_ends.open("wb") as f:
            for ids, ends in _encoded(tok, _batches(pieces(bad, record_newline, is_hf)), n_workers):
                writer.write(ids)
                (n + ends).astype("<i8").tofile(f)
                n += len(ids)
    finally:
        parts = writer.close()
    n_train = int(n * (1.0 - val_fraction))  # nanoGPT: train = ids[:n_train], val = the rest
    if n_train < MIN_SPLIT_TOKENS or n - n_train < MIN_SPLIT_TOKENS:
        for path in [doc_ends, *(path for path, _ in parts)]:
            path.unlink()
        raise DataError(
            f"The input has {n} tokens, which splits into {n_train} train and "
            f"{n - n_train} val tokens with val_fraction={val_fraction}; each split "
            f"needs at least {MIN_SPLIT_TOKENS}, so use more text or change val_fraction."
        )
    shards = _split_parts(parts, n_train, out_dir, DTYPES[dtype_name].itemsize, sharded=shard_tokens > 0)
    documents = _write_doc_starts(doc_ends, n_train, n, out_dir)
    doc_ends.unlink()
    save_tokenizer(tok, out_dir)
    meta = {
        "tokenizer": tokenizer if tokenizer in PREPARE_TOKENIZERS else tok.name,  # "hf" for a Hugging Face file
        "vocab_size": tok.vocab_size,
        "dtype": dtype_name,
        "train_tokens": n_train,
        "val_tokens": n - n_train,
        "val_fraction": val_fraction,
        "sources": sources,
        "documents": documents,
    }
    if shard_tokens:
        meta["shards"] = shards
    if skip_bad_lines:
        meta["bad_lines"] = {"skipped": bad.count, "first": bad.first}
    _write_atomic(out_dir / META_FILE, json.dumps(meta, indent=2).encode("utf-8"))
    return meta


def _write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temp file + rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def cache_root(cache_dir: PathLike = "") -> Path:
    """``cache_dir`` if given, else ``$SLM_JAX_CACHE``, else ``~/.cache/slm_jax``."""
    return Path(cache_dir or os.environ.get("SLM_JAX_CACHE") or "~/.cache/slm_jax").expanduser()


def _sha256_file(path: Path) -> str:
    return file_record(path)["sha256"]


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
        and "documents" in meta  # an entry from before document indexes is prepared again
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
