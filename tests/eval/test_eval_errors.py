"""`slm eval` mistakes in the harness and sliding-window options: one `error:` line and exit status 2."""

import sys

import pytest

from slm_jax.cli import main
from tests.eval.tiny import make_char_run

TEXT = "a small text for a small model. "


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("errors") / "run"
    make_char_run(run_dir, TEXT, seq_len=8)
    return run_dir


def _error(capsys, *args) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_missing_lm_eval_names_the_extra(run_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm-eval were not installed
    monkeypatch.delitem(sys.modules, "slm_jax.eval.harness", raising=False)
    assert "install the eval extra" in _error(capsys, "eval", str(run_dir), "--tasks", "hellaswag")


def test_stride_longer_than_the_context(run_dir, tmp_path, capsys):
    text = tmp_path / "val.txt"
    text.write_text(TEXT)
    err = _error(capsys, "eval", str(run_dir), "--data", str(text), "--stride", "9", "--context", "8")
    assert "stride must be between 1 and the context (8)" in err
