"""slm quantize end to end: a tiny trained run -> int8 / int4 runs that slm eval and slm generate read; its errors."""

import json

import pytest

from tests.tiny_runs import run_cli as run
from tests.tiny_runs import train_text_run


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    return train_text_run(
        tmp_path_factory.mktemp("quant"),
        "the cat sat on the mat. ",
        400,
        [
            "model.n_layers=1",
            "model.d_model=64",
            "model.n_heads=2",
            "model.tie_embeddings=false",
            "train.steps=40",
            "train.batch_size=8",
            "train.seq_len=32",
            "eval.every=40",
            "eval.batches=2",
            "checkpoint.every=40",
        ],
    )


def test_quantized_runs_eval_and_generate(capsys, float_run, tmp_path):
    code, out, _ = run(capsys, "eval", float_run, "--batches", "2")
    base = json.loads(out)["val_loss"]
    for bits, tol in ((8, 0.01), (4, 0.1)):
        out_dir = tmp_path / f"int{bits}"
        code, out, err = run(capsys, "quantize", float_run, "--bits", bits, "--out", out_dir)
        summary = json.loads(out)
        assert code == 0, err
        ratio = summary["projection_bytes"]["float"] / summary["projection_bytes"]["quantized"]
        assert ratio > (3.5 if bits == 8 else 6.5), summary  # scales: 4 bytes per column (int8), per 64 inputs (int4)
        code, out, _ = run(capsys, "eval", out_dir, "--batches", "2")
        assert code == 0 and abs(json.loads(out)["val_loss"] - base) < tol
    code, out, _ = run(
        capsys, "generate", out_dir, "--prompt", "the ", "--max-new-tokens", "8", "--temperature", "0"
    )  # int4
    assert code == 0 and out.startswith("the ") and len(out.rstrip("\n")) == 12


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--bits", "3"], "--bits must be 4 or 8"),
        (["--bits", "4", "--group-size", "-4"], "--group-size must be positive"),
    ],
)
def test_quantize_errors(capsys, float_run, tmp_path, extra, message):
    code, out, err = run(capsys, "quantize", float_run, "--out", tmp_path / "q", *extra)
    assert code == 2 and out == "" and message in err and err.count("\n") == 1


def test_quantizing_a_quantized_run_is_an_error(capsys, float_run, tmp_path):
    assert run(capsys, "quantize", float_run, "--bits", "8", "--out", tmp_path / "q8")[0] == 0
    code, _, err = run(capsys, "quantize", tmp_path / "q8", "--bits", "4", "--out", tmp_path / "q4")
    assert code == 2 and "already quantized (int8)" in err and err.count("\n") == 1
    code, _, err = run(capsys, "convert", "to-hf", tmp_path / "q8", tmp_path / "hf")
    assert code == 2 and "needs float weights" in err


@pytest.fixture(scope="module")
def scanned_run(tmp_path_factory):
    """Two scanned layers: calibration unstacks them and the quantized run restacks them."""
    return train_text_run(
        tmp_path_factory.mktemp("quant_scan"),
        "a bad dog ran far. ",
        400,
        [
            "model.n_layers=2",
            "model.d_model=32",
            "model.n_heads=2",
            "model.scan_layers=true",
            "train.steps=30",
            "train.batch_size=8",
            "train.seq_len=32",
            "eval.every=30",
            "eval.batches=2",
            "checkpoint.every=30",
        ],
    )


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_quantization_through_the_cli(capsys, float_run, scanned_run, tmp_path, method):
    calib = tmp_path / "calib.txt"
    calib.write_text("the cat sat on the mat. " * 60)
    sources = {"text_file": (float_run, ["--calib", calib]), "own_data": (scanned_run, [])}
    for name, (source, extra) in sources.items():
        base = json.loads(run(capsys, "eval", source, "--batches", "2")[1])["val_loss"]
        out_dir = tmp_path / name
        code, out, err = run(
            capsys, "quantize", source, "--bits", 4, "--method", method, "--calib-tokens", 512, "--out", out_dir, *extra
        )
        assert code == 0, err
        assert json.loads(out)["method"] == method
        assert f"method: {method}" in (out_dir / "config.yaml").read_text()
        code, out, err = run(capsys, "eval", out_dir, "--batches", "2")
        assert code == 0 and abs(json.loads(out)["val_loss"] - base) < 0.1, (out, err)
    code, out, _ = run(capsys, "generate", out_dir, "--prompt", "a ", "--max-new-tokens", "6", "--temperature", "0")
    assert code == 0 and out.startswith("a ")


def test_calibration_errors(capsys, float_run, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("zzzz yyyy xxxx " * 50)
    cases = [
        (["--calib", other], "is not in the char tokenizer's vocabulary"),
        (["--method", "rtn", "--calib", other], "--calib is read only by --method gptq or awq"),
        (["--calib-tokens", "8"], "--calib-tokens 8 is below one sequence (32 tokens)"),
    ]
    for extra, message in cases:
        argv = ["quantize", float_run, "--bits", "4", "--out", tmp_path / "q", *extra]
        if "--method" not in extra:
            argv += ["--method", "gptq"]
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "q").exists()
