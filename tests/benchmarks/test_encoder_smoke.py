"""benchmarks/encoder.py at tiny shapes: a row for every encoder preset and batch, JAX and ONNX both measured."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import encoder  # noqa: E402

from slm_jax.presets import PRESETS, is_encoder  # noqa: E402


def test_every_encoder_preset_gets_a_row(capsys):
    rows = encoder.main(["--quick", "--onnx", "--presets", "all"])
    out = capsys.readouterr().out
    assert {(r["preset"], r["batch"]) for r in rows} == {(p, b) for p in PRESETS if is_encoder(p) for b in (1, 2)}
    for r in rows:
        assert r["jax_seq_per_s"] > 0 and r["onnx_seq_per_s"] > 0 and r["params"] > 0 and r["seq_len"] == 16
        assert r["onnx_over_jax"] == pytest.approx(r["onnx_seq_per_s"] / r["jax_seq_per_s"])
    assert out.count("\n| ") == len(rows) + 1  # header and one table line per row (the separator starts "|-")
    with pytest.raises(SystemExit, match="'transformer' is not an encoder preset"):
        encoder.main(["--quick", "--presets", "transformer"])
