"""Run every point of a sweep: finished runs are skipped, interrupted ones resume.

Layout of the output directory::

    <out>/sweep.resolved.yaml   the sweep as read, paths absolute (for the record; never the source file)
    <out>/runs/<slug>[,lr=..]/  one ordinary run directory per point and learning rate
    <out>/runs/.../summary.json written when that run finished: the marker that it is done
    <out>/results.csv, results.md, all_runs.csv, *.png   (report.py)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from slm_jax.config import replace
from slm_jax.errors import SlmError
from slm_jax.sweep.spec import Point, Sweep, dump
from slm_jax.training.loop import exit_code
from slm_jax.training.train import train


class SweepInterrupted(SlmError):
    """A run stopped before its last step (Ctrl-C / SIGTERM); re-running the sweep resumes it.

    Its ``exit_code`` is the stopped run's: 128 + the signal (130, 143), as for ``slm train``.
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code or 2


def _runs_of(sweep: Sweep, point: Point) -> list[tuple[str, object]]:
    """(run directory name, config) for each learning rate of ``point``."""
    slug = point.slug or "base"
    if not sweep.lrs:
        return [(slug, point.cfg)]
    return [(f"{slug},lr={lr:g}", replace(point.cfg, **{"optim.lr": lr})) for lr in sweep.lrs]


def _fmt_s(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def run_sweep(sweep: Sweep, points: list[Point], out: Path, progress: bool = True) -> list[dict]:
    """Train every (point, lr) not yet finished; return one record per run, in order.

    A record is the run's summary (``train``'s return value) plus ``point`` (the point's
    index), ``values`` (its axis values) and ``lr``.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.resolved.yaml").write_text(dump(sweep))
    jobs = [(i, p, name, cfg) for i, p in enumerate(points) for name, cfg in _runs_of(sweep, p)]
    records, spent, trained = [], 0.0, 0
    for k, (i, point, name, cfg) in enumerate(jobs, 1):
        run_dir = out / "runs" / name
        done = run_dir / "summary.json"
        if done.is_file():
            summary = json.loads(done.read_text())
            print(f"[{k}/{len(jobs)}] {name}: done earlier, skipped", flush=True)
        else:
            left = sum(1 for j in jobs[k - 1 :] if not (out / "runs" / j[2] / "summary.json").is_file())
            eta = f", sweep ETA {_fmt_s(spent / trained * left)}" if trained else ""
            print(f"[{k}/{len(jobs)}] {name}{eta}", flush=True)
            t0 = time.perf_counter()
            summary = train(cfg, run_dir, progress=progress)
            if summary["step"] < cfg.train.steps:
                raise SweepInterrupted(
                    f"Run {name} stopped at step {summary['step']} of {cfg.train.steps}; "
                    "run the same sweep command again to resume it.",
                    exit_code(summary),
                )
            spent += time.perf_counter() - t0
            trained += 1
            done.write_text(json.dumps(summary, indent=1))
        records.append({**summary, "point": i, "values": point.values, "lr": cfg.optim.lr, "run": name})
    return records
