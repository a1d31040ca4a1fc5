"""Read and write safetensors files, single or sharded, as numpy arrays (no torch, no pickle).

The format (https://github.com/huggingface/safetensors) is an 8-byte little-endian header
length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}``, then the raw little-endian tensor bytes. It is simple enough to
read directly, which also covers bfloat16 (most published checkpoints) through ``ml_dtypes``,
a dtype the ``safetensors.numpy`` API does not map. A sharded checkpoint is several such files
plus ``model.safetensors.index.json`` whose ``weight_map`` names the file of every tensor.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from slm_jax.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 2**20


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file, name -> array (memory-mapped, read-only)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path} is too short to be a safetensors file; re-save it with safetensors.")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise CheckpointError(
                f"{path} has a {n}-byte header, so it is not a safetensors file; re-save it with safetensors."
            )
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(
                f"{path} has no valid JSON header, so it is not a safetensors file; re-save it with safetensors."
            ) from None
    data = (
        np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
        if path.stat().st_size > 8 + n
        else np.zeros(0, np.uint8)
    )
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise CheckpointError(
                f"Tensor {name} in {path} has dtype {info['dtype']}, which slm_jax cannot read; save it as F32, F16 or BF16."
            )
        begin, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise CheckpointError(
                f"Tensor {name} in {path} has {end - begin} bytes for shape {shape}; the file is corrupt, re-download it."
            )
        out[name] = data[begin:end].view(dtype).reshape(shape)
    return out


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write name -> array as one ``.safetensors`` file (tensors laid out in sorted-name order)."""
    header: dict = {"__metadata__": dict(metadata or {})} if metadata else {}
    arrays, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _NAMES:
            raise CheckpointError(
                f"Tensor {name} has dtype {a.dtype}, which safetensors cannot store; cast it to float32."
            )
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for a in arrays:
            f.write(a.tobytes())


def read_checkpoint(directory: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face model directory: ``model.safetensors`` or the shards of its index.

    Raises:
      CheckpointError: no safetensors weights (e.g. only ``pytorch_model.bin``, which is a
        pickle and is never read), or an index naming a missing shard.
    """
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(f"{index} has no valid weight_map; re-save the model with save_pretrained.") from None
        out = {}
        for shard in sorted(set(weight_map.values())):
            if not (directory / shard).is_file():
                raise CheckpointError(
                    f"{index} names the shard {shard}, which is missing from {directory}; download it."
                )
            out.update(read_safetensors(directory / shard))
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise CheckpointError(
                f"{index} lists tensor {missing[0]} but no shard holds it; re-download the checkpoint."
            )
        return out
    if (directory / SINGLE_FILE).is_file():
        return read_safetensors(directory / SINGLE_FILE)
    files = sorted(directory.glob("*.safetensors"))
    if len(files) == 1:
        return read_safetensors(files[0])
    pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt*"))
    hint = (
        f" (it holds {pickles[0]}, a pickle, which slm_jax never loads; convert it with transformers' save_pretrained(safe_serialization=True))"
        if pickles
        else ""
    )
    raise CheckpointError(
        f"{directory} has no {SINGLE_FILE} or {INDEX_FILE}{hint}; pass a directory with safetensors weights."
    )


def write_checkpoint(
    directory: str | Path, tensors: dict[str, np.ndarray], max_shard_bytes: int = 2 * 2**30
) -> list[str]:
    """Write tensors as ``model.safetensors``, or as shards plus an index when over ``max_shard_bytes``.

    Returns the file names written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt"}  # transformers checks this tag to accept the file
    total = sum(np.asarray(a).nbytes for a in tensors.values())
    if total <= max_shard_bytes:
        write_safetensors(directory / SINGLE_FILE, tensors, meta)
        return [SINGLE_FILE]
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = np.asarray(tensors[name]).nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for file, shard in zip(names, shards):
        write_safetensors(directory / file, shard, meta)
        weight_map.update({name: file for name in shard})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return names + [INDEX_FILE]
