"""What a checkpoint records so that a restore can tell a damaged step from a good one.

``Checkpointer.save`` (rundir/checkpoint.py) writes two records per step:

- ``checksums``, an Orbax JSON item saved atomically with the state: for every array of the
  state its path, shape, dtype and the CRC-32 of its bytes, computed on the host at save time.
  Cost: one device-to-host copy of the state (Orbax makes one as well) and one CRC-32 pass
  (zlib, roughly 1 GB/s on one core), so well under a second per GB of train state, and the
  same again at restore. Arrays spread over several hosts (not fully addressable from one
  process) are recorded without a CRC.
- ``files.json``, written once the save is on disk: the size of every file in the step
  directory and the CRC-32 of each that is not array data (Orbax's metadata, tensorstore's
  manifests, the JSON items: kilobytes), so a deleted, truncated or garbled file is caught
  before Orbax parses it, even where a restore would not read it.

A restore checks the file list, then the state's metadata against the checksummed structure,
then every restored array's CRC; any failure raises :class:`Damaged`. ``set_aside`` renames a
damaged step to ``<step>.damaged-<reason>`` (Orbax ignores such names): nothing is deleted.
Tensorstore (OCDBT) checksums its own index and small inline values, but flipped bytes in a
large array's data file read back silently; the CRC is what catches those.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import zlib
from pathlib import Path
from typing import Iterator

import jax
import numpy as np

from slm_jax.array_typing import PyTree
from slm_jax.tree_paths import path_str

CHECKSUMS = "checksums"  # the Orbax item name
FILE_LIST = "files.json"  # in the step directory, beside Orbax's items


class Damaged(Exception):
    """A checkpoint step cannot be restored as it was saved.

    Attributes:
      reason: a short slug for the step's new name (``checksum``, ``missing-file``, ...).
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def array_leaves(tree: PyTree) -> list[tuple[str, object]]:
    """(path, leaf) of every array-like leaf, in flattening order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    return [(path_str(p), leaf) for p, leaf in leaves]


def _local(leaf) -> bool:
    return getattr(leaf, "is_fully_addressable", True)


def _crc32(host: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(host).reshape(-1).view(np.uint8))


def checksums(tree: PyTree) -> dict[str, dict]:
    """Path -> ``{"shape", "dtype", "crc32"}`` of every array in ``tree`` (crc32 None when not on this host)."""
    leaves = array_leaves(tree)
    host = iter(jax.device_get([leaf for _, leaf in leaves if _local(leaf)]))  # one batched copy
    return {
        path: {
            "shape": list(leaf.shape),
            "dtype": str(leaf.dtype),
            "crc32": _crc32(np.asarray(next(host))) if _local(leaf) else None,
        }
        for path, leaf in leaves
    }


def check_structure(record: dict[str, dict], saved_shapes: dict[str, tuple]) -> None:
    """Raise Damaged unless the state metadata lists exactly the arrays the checksums recorded."""
    recorded = {path: tuple(entry["shape"]) for path, entry in record.items()}
    if saved_shapes == recorded:
        return
    odd = sorted(set(recorded) ^ set(saved_shapes)) or sorted(p for p in recorded if recorded[p] != saved_shapes[p])
    raise Damaged("metadata", f"its state metadata disagrees with the arrays written at save time (first at {odd[0]})")


def check_arrays(record: dict[str, dict], tree: PyTree) -> None:
    """Raise Damaged at the first restored array whose CRC-32 differs from the one recorded at save time."""
    todo = [
        (p, leaf)
        for p, leaf in array_leaves(tree)
        if _local(leaf) and record.get(p, {}).get("crc32") is not None and str(leaf.dtype) == record[p]["dtype"]
    ]
    for (path, _), host in zip(todo, jax.device_get([leaf for _, leaf in todo])):
        if _crc32(np.asarray(host)) != record[path]["crc32"]:
            raise Damaged("checksum", f"the bytes of {path} differ from those written at save time (CRC-32 mismatch)")


def _is_array_data(name: str) -> bool:
    """Whether a step file holds array bytes (tensorstore's ``d/`` folders), which the array CRCs cover."""
    return "d" in Path(name).parts[:-1]


def _file_record(path: Path, name: str) -> list:
    """``[size, crc32]`` of a step file; array data files get ``[size, None]`` (checked per array instead)."""
    return [path.stat().st_size, None if _is_array_data(name) else zlib.crc32(path.read_bytes())]


def write_file_list(step_dir: Path) -> None:
    """Record each file of a finished step in ``<step_dir>/files.json`` (atomically): size, CRC-32 unless array data."""
    names = sorted(str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file() and p.name != FILE_LIST)
    tmp = step_dir / (FILE_LIST + ".tmp")
    tmp.write_text(json.dumps({name: _file_record(step_dir / name, name) for name in names}))
    os.replace(tmp, step_dir / FILE_LIST)


def check_file_list(step_dir: Path) -> None:
    """Raise Damaged if a file in ``files.json`` is gone, changed size or (metadata) changed bytes.

    A step without the list passes: saved before lists existed, or killed between its save and its list.
    """
    listing = step_dir / FILE_LIST
    if not listing.is_file():
        return
    try:
        files = json.loads(listing.read_text())
    except (ValueError, UnicodeDecodeError):
        raise Damaged("metadata", f"its {FILE_LIST} is not valid JSON") from None
    for name, (size, crc) in files.items():
        path = step_dir / name
        if not path.is_file():
            raise Damaged("missing-file", f"its file {name} is missing")
        now = _file_record(path, name)
        if now[0] != size:
            raise Damaged(
                "truncated" if now[0] < size else "resized",
                f"its file {name} has {now[0]} bytes but had {size} when saved",
            )
        if now[1] != crc:
            raise Damaged("metadata", f"the bytes of its file {name} changed since it was saved (CRC-32 mismatch)")


def unreadable_metrics(directory: Path) -> dict[int, Damaged]:
    """Steps under ``directory`` whose Orbax ``metrics/metrics`` is not valid JSON.

    Orbax reads every step's metrics when it opens a checkpoint directory and stops at the first
    bad one, so these must be found before the directory is opened.
    """
    bad = {}
    for metrics in sorted(directory.glob("*/metrics/metrics")):
        if metrics.parent.parent.name.isdigit():
            try:
                json.loads(metrics.read_text())
            except (ValueError, UnicodeDecodeError):
                bad[int(metrics.parent.parent.name)] = Damaged("metadata", "its metrics/metrics is not valid JSON")
    return bad


@contextlib.contextmanager
def quiet_failed_io() -> Iterator[None]:
    """Silence the reports a failed tensorstore read or write leaves behind, until they are collected.

    When one fails, tensorstore's pending callbacks and coroutines fail again as their event loop
    closes; Python prints each ("Exception ignored in ...", with the whole TensorStore spec)
    through ``sys.unraisablehook``, and asyncio logs "Task exception was never retrieved". They
    repeat the error the caller reports in one line. When the block fails, the garbage collector
    runs before it is left, so they are finalised while silenced.
    """
    hook, asyncio_log = sys.unraisablehook, logging.getLogger("asyncio")
    level = asyncio_log.level
    sys.unraisablehook = lambda unraisable: None
    asyncio_log.setLevel(logging.CRITICAL)
    try:
        yield
    except BaseException:
        gc.collect()
        raise
    finally:
        sys.unraisablehook = hook
        asyncio_log.setLevel(level)


def describe(exc: BaseException) -> str:
    """A short account of an exception raised while reading a checkpoint: its type and first line."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def set_aside(step_dir: Path, reason: str) -> Path:
    """Rename ``step_dir`` to ``<step>.damaged-<reason>`` (``-2``, ``-3``... if taken); return the new path."""
    target, n = step_dir.with_name(f"{step_dir.name}.damaged-{reason}"), 1
    while target.exists():
        n += 1
        target = step_dir.with_name(f"{step_dir.name}.damaged-{reason}-{n}")
    os.rename(step_dir, target)
    return target
