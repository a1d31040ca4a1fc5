"""benchmarks/edge.py's core on one tiny random model with tiny token counts: every column is filled, sizes are
positive, the int4 export is smaller than the float one."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import edge  # noqa: E402

from tests.export.test_stablehlo import TEXT, make_run  # noqa: E402


def test_edge_table_has_every_column(tmp_path):
    make_run(tmp_path / "run", "transformer", n_layers=1, d_model=64)
    calib = tmp_path / "calib.txt"
    calib.write_text(TEXT * 100)
    variants = edge.compress(tmp_path / "run", tmp_path / "quantized", calib_tokens=256, calib=str(calib))
    assert set(variants) == {"float", "int8", "int4-gptq"}
    opts = SimpleNamespace(
        prompt=8, long=8, decode_tokens=4, prefill_chunk=0, repeats=1, eval_batches=2, eval_data=str(calib)
    )
    rows = [edge.measure("tiny", c, variants[c], tmp_path / c, opts) for c in ("float", "int4-gptq")]

    for r in rows:
        for fmt in edge.BACKENDS:
            for key in ("artifact_bytes", "cache_bytes", "peak_rss_bytes@1", "peak_rss_bytes@8", "ttft_ms"):
                assert r[f"{fmt}_{key}"] > 0, (fmt, key)
            for key in ("tok_s_one_core", "tok_s_all_cores"):
                assert r[f"{fmt}_{key}"] > 0, (fmt, key)
        assert r["checkpoint_bytes"] > 0 and r["energy_mj_per_token"] > 0 and 0 < r["val_loss"] < 20
        assert r["energy_source"] in ("RAPL", "estimate")
    float_row, int4_row = rows
    for fmt in edge.BACKENDS:
        assert int4_row[f"{fmt}_artifact_bytes"] < float_row[f"{fmt}_artifact_bytes"]
    assert int4_row["checkpoint_bytes"] < float_row["checkpoint_bytes"]

    text = edge.table(rows, prompt=8, long=8)
    header, rule, *body = text.splitlines()
    assert header.count("|") - 1 == len(edge.COLUMNS) and len(body) == 2
    assert all(line.count("|") == header.count("|") and "n/a" not in line for line in body)
    assert any("int4 onnx export / float" in line for line in edge.checks(rows))


def test_pareto_keeps_rows_nothing_beats_on_size_and_loss():
    rows = [
        {"model": "a", "onnx_artifact_bytes": 100, "val_loss": 2.0},
        {"model": "b", "onnx_artifact_bytes": 50, "val_loss": 2.5},
        {"model": "c", "onnx_artifact_bytes": 80, "val_loss": 2.6},  # bigger and worse than b
        {"model": "d", "stablehlo_artifact_bytes": 120, "val_loss": 1.9},  # no ONNX export: its StableHLO size
    ]
    assert [r["model"] for r in edge.pareto(rows)] == ["b", "a", "d"]
