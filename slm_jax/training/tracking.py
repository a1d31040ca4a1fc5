"""Run tracking: ``metrics.jsonl`` + TensorBoard scalars and a progress bar (``run.json``: rundir/record.py).

``metrics.jsonl`` holds one JSON object per line, each with at least ``"step"``. It is strict
JSON: non-finite floats are written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``
(which ``float()`` parses back; :func:`read_metrics` does so). On resume, lines past the resumed
step are dropped (and TensorBoard purges them), so the history reads as one uninterrupted run.
In multi-host runs only process 0 writes files; other processes get no-op loggers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from slm_jax.errors import CheckpointError
from slm_jax.rundir.record import atomic_write_text, plain_json

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _parse_lines(path: Path) -> list[dict]:
    """Metric records of ``path``; a torn last line (a kill mid-write) is ignored."""
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise CheckpointError(f"{path} line {i + 1} is not valid JSON; fix or delete that line.") from None
    return records


# ---------------------------------------------------------------------- metrics
class MetricsLog:
    """Appends scalar metrics to ``<run_dir>/metrics.jsonl`` and TensorBoard (``<run_dir>/tb``).

    Args:
      run_dir: the run directory (created if missing).
      resume_step: the step the run resumes from; earlier records with a larger step are
        dropped first (0 for a fresh start in a reused directory drops all).
      tensorboard: also write TensorBoard scalars.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        if jax.process_index() != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [r for r in _parse_lines(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter  # imported here: only runs that log pay for it

            # purge_step tells TensorBoard to discard events a killed run wrote past the resume.
            purge = resume_step + 1 if resume_step is not None else None
            self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge)

    def write(self, step: int, **scalars: Any) -> None:
        """Record ``scalars`` at ``step`` (one JSON line; numeric ones also to TensorBoard)."""
        if self._file is None:
            return
        record = {"step": int(step), **{k: plain_json(v) for k, v in scalars.items()}}
        # allow_nan=False: a stray non-finite value must fail here, not corrupt the file.
        line = json.dumps(record, allow_nan=False) + "\n"
        try:
            self._file.write(line)
            self._file.flush()  # a killed run keeps every line it logged
        except OSError as e:  # a full disk: name the file (a failed write() carries no file name)
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        if self._tb is not None:
            for name, value in scalars.items():
                if isinstance(value, (int, float, np.number, jax.Array, np.ndarray)) and np.ndim(value) == 0:
                    self._tb.add_scalar(name, float(value), int(step))

    def close(self) -> None:
        """Flush and close the file and the TensorBoard writer."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of ``<run_dir>/metrics.jsonl`` in order, non-finite strings back as floats.

    Returns [] when the run has logged nothing yet.

    Raises:
      CheckpointError: ``run_dir`` does not exist.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"Run directory {run_dir} does not exist; pass the directory that `slm train` wrote.")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [{k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in r.items()} for r in _parse_lines(path)]


# ---------------------------------------------------------------------- progress bar
class Progress:
    """A tqdm bar over training steps with a loss / tokens-per-second postfix and an ETA.

    Args:
      total: the run's total number of steps.
      initial: the step a resumed run starts from (the ETA counts only the steps left).
      disable: hide the bar (messages from :meth:`write` are still printed).
      file: where the bar is drawn (default stderr).
    """

    def __init__(self, total: int, initial: int = 0, disable: bool = False, file: Any = None):
        self.disable = disable or jax.process_index() != 0
        self._bar = tqdm(
            total=total,
            initial=initial,
            disable=self.disable,
            unit="step",
            dynamic_ncols=True,
            smoothing=0.1,
            file=file,
        )
        self.step = initial  # kept here too: a disabled tqdm does not count

    def update(self, step: int, **postfix: Any) -> None:
        """Move the bar to ``step`` and show ``postfix`` (e.g. ``loss="2.31"``, ``tok_s="12,000"``)."""
        if step > self.step:
            self._bar.update(step - self.step)
            self.step = step
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.refresh()

    def write(self, message: str) -> None:
        """Print ``message`` above the bar without breaking it."""
        if jax.process_index() == 0:
            tqdm.write(message)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
