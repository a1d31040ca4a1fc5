"""Read and write safetensors files, single or sharded, as numpy arrays (no torch, no pickle).

Single files go through the maintained ``safetensors`` package's numpy API
(https://huggingface.co/docs/safetensors); bfloat16 works there once ``ml_dtypes`` has registered
the dtype with numpy, which importing it here does. Sharding is ours, as the package has none: a
sharded checkpoint is several files plus ``model.safetensors.index.json`` whose ``weight_map``
names the file of every tensor (the layout of transformers' ``save_pretrained``).
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors' numpy loader needs)
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from slm_jax.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_READABLE = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file, name -> array."""
    try:
        with safe_open(path, framework="np") as f:
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype not in _READABLE:
                    raise CheckpointError(
                        f"Tensor {name} in {path} has dtype {dtype}, which slm_jax cannot read; "
                        "save it as F32, F16 or BF16."
                    )
            return {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({e}); re-download or re-save it.") from None


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write name -> array (numpy or JAX) as one ``.safetensors`` file."""
    # The package reads each array's memory as is: a transposed view would be written in the wrong order.
    arrays = {name: np.ascontiguousarray(np.asarray(a)) for name, a in tensors.items()}
    try:
        save_file(arrays, path, metadata=dict(metadata) if metadata else None)
    except SafetensorError as e:
        raise CheckpointError(f"Cannot write {path}: {e}; cast the tensors to float32.") from None


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
        f" (it holds {pickles[0]}, a pickle, which slm_jax never loads; "
        "convert it with transformers' save_pretrained(safe_serialization=True))"
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
