"""``run.json``: what produced a run (git state, package versions, platform, devices, command), written by
``write_run_record`` at every launch; and the JSON helpers the run directory's text files share.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "slm_jax")


def plain_json(value: Any) -> Any:
    """A JSON-safe plain Python value: numpy/jax scalars unwrapped, non-finite floats as strings."""
    if isinstance(value, (jax.Array, np.ndarray, np.generic)) and np.ndim(value) == 0:
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # e.g. a dtype or a Path: readable, never an unserialisable object


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _git(source: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(source: Path | None = None) -> dict:
    """``{"commit", "dirty"}`` of the git checkout holding ``source`` (default: this package).

    Both are None when the package is not tracked by git (e.g. installed from a wheel), so a
    virtualenv inside some other repository does not report that repository's commit.
    """
    source = source or Path(__file__).resolve().parents[1]
    if _git(source, "ls-files", "--error-unmatch", "__init__.py") is None:
        return {"commit": None, "dirty": None}
    commit = (_git(source, "rev-parse", "HEAD") or "").strip() or None
    # Dirty: modified tracked files anywhere, or untracked files in the package itself
    # (new source a run may depend on); untracked outputs elsewhere (runs/) do not count.
    tracked = _git(source, "status", "--porcelain", "--untracked-files=no")
    untracked = _git(source, "status", "--porcelain", "--untracked-files=normal", "--", ".")
    dirty = None if tracked is None or untracked is None else bool(tracked.strip() or untracked.strip())
    return {"commit": commit, "dirty": dirty}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a run's numbers depend on (None when missing)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info() -> dict:
    """Backend, process layout and a description of every device."""
    return {
        "backend": jax.default_backend(),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": [
            {"id": d.id, "kind": d.device_kind, "platform": d.platform, "process_index": d.process_index, "str": str(d)}
            for d in jax.devices()
        ],
    }


def write_run_record(run_dir: str | Path, extra: dict | None = None) -> dict:
    """Write ``<run_dir>/run.json``: git state, versions, platform, devices, command, time, ``extra``.

    ``extra`` keys are merged at the top level. A record already there (an earlier launch of
    a resumed run) is kept, shortened, under ``"previous_launches"``. Returns the record.
    """
    path = Path(run_dir) / "run.json"
    record = {
        "git": git_state(),
        "versions": package_versions(),
        "platform": platform.platform(),
        **device_info(),
        "command": shlex.join(sys.argv),
        "argv": list(sys.argv),
        "python_executable": sys.executable,
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    record.update(plain_json(dict(extra or {})))
    if jax.process_index() != 0:
        return record
    previous: list = []
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            previous = old.get("previous_launches", []) + [
                {k: old.get(k) for k in ("time_utc", "git", "command", "resumed_from")}
            ]
        except (json.JSONDecodeError, AttributeError):
            previous = []  # an unreadable old record is replaced, not fatal
    if previous:
        record["previous_launches"] = previous
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2, allow_nan=False) + "\n")
    return record
