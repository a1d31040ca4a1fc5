"""Input files -> a stream of document pieces, for ``prepare``.

Inputs are text files, directories (every ``*.txt`` below them, sorted), ``.jsonl`` files (one JSON
object per line, its ``text_field`` the document), Parquet and Arrow files (the ``text_field``
column, one document per row; needs ``pyarrow``, extra ``[data]``) and Hugging Face ``datasets``
directories written by ``save_to_disk`` (their Arrow files, read with pyarrow: ``datasets`` itself
is not needed). A text file is one document, read in 1 MiB pieces; a record is one document.

``iter_pieces`` yields ``(piece, end, path)``: ``piece`` is ``bytes`` from a text file (decoded by
the consumer, so the byte tokenizer takes any file) or ``str`` from a record; ``end`` marks the last
piece of a document; ``path`` is the file it comes from. Nothing holds more than one piece or one
record batch in memory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

from slm_jax.errors import DataError

PathLike = Union[str, Path]
PIECE_BYTES = 1 << 20  # a text file is read in pieces of this size
_RECORD_BATCH = 4096  # Parquet / Arrow rows per batch
_KINDS = {".jsonl": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}


@dataclass
class BadLines:
    """What ``--skip-bad-lines`` skipped: a count and the first reason (``file:line: why``)."""

    skip: bool
    count: int = 0
    first: str = ""

    def report(self, reason: str, fix: str) -> None:
        """Raises ``reason; fix`` as one DataError sentence, or counts it when skipping."""
        if not self.skip:
            raise DataError(f"{reason}; {fix}, or pass --skip-bad-lines to skip such records.")
        self.count += 1
        self.first = self.first or reason


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise DataError(
            "Reading Parquet, Arrow and `datasets` directories needs pyarrow; pip install 'slm_jax[data]'."
        ) from None
    return pyarrow


def _hf_dataset_files(d: Path) -> list[Path] | None:
    """The Arrow files of a ``save_to_disk`` directory in order (``state.json``), None if ``d`` is not one."""
    if (d / "dataset_dict.json").is_file():
        splits = json.loads((d / "dataset_dict.json").read_text()).get("splits", [])
        raise DataError(
            f"{d} is a DatasetDict with splits {', '.join(splits)}; pass one split's directory, e.g. {d / splits[0]}."
            if splits
            else f"{d} is a DatasetDict without splits; pass a directory saved from one Dataset."
        )
    if not (d / "state.json").is_file():
        return None
    files = [d / f["filename"] for f in json.loads((d / "state.json").read_text()).get("_data_files", [])]
    missing = [f.name for f in files if not f.is_file()]
    if not files or missing:
        raise DataError(
            f"{d}/state.json lists {'missing data files ' + ', '.join(missing) if missing else 'no data files'}; "
            "save the dataset again with save_to_disk."
        )
    return files


def expand_inputs(inputs: Sequence[PathLike]) -> list[tuple[Path, str]]:
    """Input paths -> ``(file, kind)`` in reading order; kind is text, jsonl, parquet or arrow."""
    files = []
    for path in inputs:
        path = Path(path).expanduser()
        if not path.exists():
            raise DataError(f"Input {path} does not exist; check the path.")
        if path.is_dir():
            arrow = _hf_dataset_files(path)
            found = [(f, "arrow") for f in arrow] if arrow else [(f, "text") for f in sorted(path.rglob("*.txt"))]
            if not found:
                raise DataError(f"Directory {path} holds no *.txt files and is no saved dataset; pass text files.")
            files += found
        elif path.is_file():
            files.append((path, _KINDS.get(path.suffix.lower(), "text")))
        else:
            raise DataError(
                f"Input {path} is not a regular file or directory; pass text, jsonl, Parquet or Arrow files."
            )
    return files


def file_record(path: Path) -> dict:
    """``{"path", "bytes", "sha256"}`` of one input file, hashed in 1 MiB pieces."""
    h, n = hashlib.sha256(), 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(PIECE_BYTES), b""):
            h.update(chunk)
            n += len(chunk)
    return {"path": str(path.resolve()), "bytes": n, "sha256": h.hexdigest()}


def _text_pieces(path: Path) -> Iterator[tuple[bytes, bool, Path]]:
    with path.open("rb") as f:
        chunk = f.read(PIECE_BYTES)
        while chunk:
            nxt = f.read(PIECE_BYTES)
            yield chunk, not nxt, path
            chunk = nxt


def _check_doc(value, where: str, text_field: str, bad: BadLines) -> str | None:
    """The document text of one record, or None (reported to ``bad``) when it is missing, not text or empty."""
    if value is None:
        bad.report(f"{where} has no {text_field!r} field", "set --text-field to the field holding the text")
    elif not isinstance(value, str):
        bad.report(
            f"{where}: field {text_field!r} holds {type(value).__name__}, not text",
            "set --text-field to the field holding the text",
        )
    elif not value:
        bad.report(f"{where}: field {text_field!r} is empty", "remove the empty document")
    else:
        return value
    return None


def _jsonl_docs(path: Path, text_field: str, bad: BadLines) -> Iterator[str]:
    with path.open("rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue  # blank lines (e.g. a trailing one) separate nothing
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                bad.report(f"{where} is not valid JSON ({e})", "fix or remove that line")
                continue
            if not isinstance(record, dict):
                bad.report(f"{where} is a JSON {type(record).__name__}, not an object", "write one object per line")
                continue
            doc = _check_doc(record.get(text_field), where, text_field, bad)
            if doc is not None:
                yield doc


def _record_batches(path: Path, kind: str, column: str):
    """(column names, iterator of record batches) of a Parquet file (only ``column`` read) or an Arrow stream / file."""
    pa = _pyarrow()
    try:
        if kind == "parquet":
            pf = pa.parquet.ParquetFile(path)
            names = pf.schema_arrow.names
            return names, pf.iter_batches(_RECORD_BATCH, columns=[column] if column in names else None)
        try:
            reader = pa.ipc.open_stream(pa.memory_map(str(path)))  # what datasets' save_to_disk writes
            return reader.schema.names, iter(reader)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(pa.memory_map(str(path)))
            return reader.schema.names, (reader.get_batch(i) for i in range(reader.num_record_batches))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path} is not a readable {kind} file ({e}); check that the file is complete.") from None


def _table_docs(path: Path, kind: str, text_field: str, bad: BadLines) -> Iterator[str]:
    names, batches = _record_batches(path, kind, text_field)
    if text_field not in names:
        raise DataError(
            f"{path} has no column {text_field!r} (its columns: {', '.join(names)}); set --text-field to one of them."
        )
    row = 0
    for batch in batches:
        for value in batch.column(text_field).to_pylist():
            row += 1
            doc = _check_doc(value, f"{path} row {row} column {text_field!r}", text_field, bad)
            if doc is not None:
                yield doc


def iter_pieces(
    files: Sequence[tuple[Path, str]], text_field: str, bad: BadLines, record_newline: bool
) -> Iterator[tuple[Union[bytes, str], bool, Path]]:
    """Every document of ``files`` as ``(piece, end, path)`` triples (see the module docstring).

    Args:
        files: ``expand_inputs``'s output.
        text_field: the JSON field / column of a record source holding the text.
        bad: where bad records are raised or counted.
        record_newline: end every record that does not end in a newline with one (for tokenizers
            without an end-of-document token, so records do not run into each other).
    """
    for path, kind in files:
        if kind == "text":
            yield from _text_pieces(path)
            continue
        docs = _jsonl_docs(path, text_field, bad) if kind == "jsonl" else _table_docs(path, kind, text_field, bad)
        for doc in docs:
            yield (doc + "\n" if record_newline and not doc.endswith("\n") else doc), True, path
