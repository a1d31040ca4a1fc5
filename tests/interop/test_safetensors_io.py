"""safetensors I/O through the safetensors package: bfloat16, interchange with the package itself, shards, damage."""

import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from slm_jax.errors import CheckpointError
from slm_jax.interop.safetensors_io import read_checkpoint, read_safetensors, write_checkpoint, write_safetensors


def _tensors():
    r = np.random.RandomState(0)
    f32 = r.randn(3, 5).astype(np.float32)
    return {"w.f32": f32, "w.bf16": (f32 * 7).astype(ml_dtypes.bfloat16), "w.t": f32.T}  # .T: a non-contiguous view


def test_bf16_and_f32_round_trip_and_are_read_by_safetensors(tmp_path):
    tensors = _tensors()
    write_safetensors(tmp_path / "a.safetensors", tensors, {"format": "pt"})
    ours = read_safetensors(tmp_path / "a.safetensors")
    theirs = load_file(tmp_path / "a.safetensors")
    with safe_open(tmp_path / "a.safetensors", framework="np") as f:
        assert f.metadata() == {"format": "pt"}
        assert f.get_slice("w.bf16").get_dtype() == "BF16" and f.get_slice("w.f32").get_dtype() == "F32"
    for name, want in tensors.items():
        for got in (ours[name], theirs[name]):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got.view(np.uint8), np.ascontiguousarray(want).view(np.uint8))


def test_files_written_by_safetensors_are_read(tmp_path):
    tensors = _tensors()
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp_path / "b.safetensors")
    back = read_safetensors(tmp_path / "b.safetensors")
    assert {k: v.dtype for k, v in back.items()} == {k: v.dtype for k, v in tensors.items()}
    np.testing.assert_array_equal(back["w.bf16"].astype(np.float32), tensors["w.bf16"].astype(np.float32))


def test_bf16_reads_in_a_fresh_process(tmp_path):
    """Only our module is imported: it must register bfloat16 with numpy itself."""
    write_safetensors(tmp_path / "c.safetensors", {"x": np.ones(3, ml_dtypes.bfloat16)})
    code = (
        "import sys; from slm_jax.interop.safetensors_io import read_safetensors; "
        "print(read_safetensors(sys.argv[1])['x'].dtype)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.safetensors")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "bfloat16"


def test_sharded_checkpoint_round_trips(tmp_path):
    tensors = {f"layer{i}.w": np.full((4, 4), i, np.float32) for i in range(4)} | {"bf": np.ones(8, ml_dtypes.bfloat16)}
    files = write_checkpoint(tmp_path, tensors, max_shard_bytes=80)
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in files
    weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(weight_map) == set(tensors) and set(weight_map.values()) == set(shards)
    back = read_checkpoint(tmp_path)
    for name, want in tensors.items():
        assert back[name].dtype == want.dtype
        np.testing.assert_array_equal(back[name], want)
    (tmp_path / shards[-1]).unlink()
    with pytest.raises(CheckpointError, match=f"names the shard {shards[-1]}, which is missing"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garble_header", "empty"])
def test_damaged_file_is_one_clear_error(tmp_path, damage):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, _tensors())
    data = path.read_bytes()
    path.write_bytes({"truncate": data[:-9], "garble_header": data[:8] + b"#" + data[9:], "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="is not a valid safetensors file .*; re-download or re-save it"):
        read_checkpoint(tmp_path)


def test_unreadable_and_unwritable_dtypes_are_named(tmp_path):
    header = json.dumps({"q": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}).encode()
    header += b" " * (-len(header) % 8)
    (tmp_path / "f8.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0")
    with pytest.raises(CheckpointError, match="Tensor q in .* has dtype F8_E4M3, which slm_jax cannot read"):
        read_safetensors(tmp_path / "f8.safetensors")
    with pytest.raises(CheckpointError, match="complex128.*; cast the tensors to float32"):
        write_safetensors(tmp_path / "c.safetensors", {"c": np.ones(2, np.complex128)})
