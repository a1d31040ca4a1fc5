"""Helpers the reproduction scripts in experiments/ share: finished runs, val curves, mean +- std, compile cache."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import jax

from slm_jax.rundir.checkpoint import latest_checkpoint_step
from slm_jax.training.tracking import read_metrics


def use_compile_cache() -> None:
    """Share compiled programs between runs of one experiment (seeds and arms reuse the same shapes)."""
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/slm_jax/jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def finished(run_dir: Path, steps: int) -> bool:
    """Whether ``run_dir`` holds a checkpoint of step ``steps`` (a re-run skips it)."""
    return run_dir.is_dir() and latest_checkpoint_step(run_dir) == steps


def val_curve(run_dir: Path, metric: str = "val_loss") -> dict[int, float]:
    """{step: metric} of every evaluation in ``run_dir``'s metrics.jsonl."""
    return {m["step"]: m[metric] for m in read_metrics(run_dir) if metric in m}


def mean_std(values: list[float], digits: int = 4) -> str:
    """ "mean +- sample std" (std nan for one value)."""
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.{digits}f} +- {spread:.{digits}f}"
