"""Train a tiny char-level run on a repeated phrase through the CLI, for tests that need a finished run directory."""

from pathlib import Path

from slm_jax.cli import main


def train_text_run(tmp: Path, phrase: str, repeats: int, overrides: list[str], name: str = "run") -> Path:
    """``slm train`` on ``phrase * repeats`` with shakespeare_char.yaml plus ``overrides``; returns the run
    directory."""
    text = tmp / "corpus.txt"
    text.write_text(phrase * repeats)
    run_dir = tmp / name
    overrides = [*overrides, f"data.path={text}", f"data.cache_dir={tmp / 'cache'}"]
    args = ["train", "configs/experiments/shakespeare_char.yaml", "--run-dir", str(run_dir), "--no-progress"]
    assert main(args + sum((["--set", o] for o in overrides), [])) == 0
    return run_dir


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``slm *argv`` in this process; arguments may be paths or numbers."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err
