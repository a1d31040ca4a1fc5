"""The files of a run directory beside its checkpoints, and writing a new run atomically.

A run directory (``runs/<name>/`` by default) holds:

  config.yaml      the resolved config (``write_config``)
  tokenizer.json   the tokenizer, when the run reads text (``write_tokenizer``, ``copy_run_files``)
  hf_source.json   a run imported by ``slm convert from-hf``: the source model's family
  run.json         git state, versions and devices of each launch (training/tracking.py)
  .lock            the lock of the process writing it (rundir/run_lock.py)
  checkpoints/     Orbax steps (rundir/checkpoint.py), read and written by rundir/params.py

``slm train`` and ``slm distill`` grow their run in place (a checkpoint is the unit of
atomicity there). Tools that write a whole run at once (``slm convert``, ``slm finetune``,
``slm quantize``) write it through :func:`new_run_dir`: into a temporary sibling directory that
is renamed to the run's name only when complete, so a failure leaves no half-written run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from slm_jax.config import Config, to_yaml
from slm_jax.data.tokenizers import Tokenizer, save_tokenizer
from slm_jax.errors import CheckpointError
from slm_jax.rundir.run_lock import LOCK_FILE

CONFIG_FILE = "config.yaml"
TOKENIZER_FILE = "tokenizer.json"
SOURCE_FILE = "hf_source.json"


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` already holds a run (a config or checkpoints)."""
    run_dir = Path(run_dir)
    return (run_dir / CONFIG_FILE).exists() or (run_dir / "checkpoints").exists()


def check_new_run_dir(run_dir: str | Path) -> None:
    """Refuse an output directory that holds a run, anything but a lock file, or is a file.

    Raises:
      CheckpointError: with the fix (a new output directory).
    """
    run_dir = Path(run_dir)
    if holds_run(run_dir):
        raise CheckpointError(f"{run_dir} already holds a run; pass a new output directory.")
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is a file, not a directory; pass a new output directory.")
    if run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise CheckpointError(f"{run_dir} already exists and is not empty; pass a new output directory.")


@contextlib.contextmanager
def new_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``run_dir`` to write a whole run into; rename it to ``run_dir`` on success.

    When the block raises, the temporary directory is removed and ``run_dir`` is left as it was
    (absent, or empty but for the lock of the process writing it, which moves into the new run).
    """
    run_dir = Path(run_dir)
    check_new_run_dir(run_dir)
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.partial-", dir=run_dir.parent))
    except OSError as e:
        raise CheckpointError(f"Cannot create {run_dir} ({e.strerror}); pass a writable output directory.") from None
    try:
        yield tmp
        if (run_dir / LOCK_FILE).exists():  # the lock's descriptor stays valid across the rename
            os.rename(run_dir / LOCK_FILE, tmp / LOCK_FILE)
        os.rename(tmp, run_dir)  # replaces an empty directory; fails if anything appeared in it
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def discard_unused_run_dir(run_dir: str | Path) -> None:
    """Remove ``run_dir`` if it holds nothing but its lock file: what a tool that locked it and then failed leaves."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and all(p.name == LOCK_FILE for p in run_dir.iterdir()):
        with contextlib.suppress(OSError):
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            run_dir.rmdir()


def write_config(run_dir: str | Path, cfg: Config) -> None:
    """``config.yaml``: the resolved config, which every reader of the run builds its model from."""
    (Path(run_dir) / CONFIG_FILE).write_text(to_yaml(cfg))


def write_tokenizer(run_dir: str | Path, tokenizer: Tokenizer) -> None:
    """``tokenizer.json`` of our char/byte tokenizer, so generate and eval need no data directory."""
    save_tokenizer(tokenizer, Path(run_dir) / TOKENIZER_FILE)


def copy_run_files(
    source: str | Path, run_dir: str | Path, names: tuple[str, ...] = (TOKENIZER_FILE, SOURCE_FILE)
) -> None:
    """Copy the files ``names`` that run (or model) directory ``source`` has into ``run_dir``."""
    for name in names:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, Path(run_dir) / name)
