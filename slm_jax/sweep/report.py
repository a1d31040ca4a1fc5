"""Sweep results: one row per point (best learning rate), as CSV, Markdown and plots.

Files written into the sweep directory:
  results.csv / results.md   one row per point: axis values, best lr, params, FLOPs per token,
                             decode-state bytes, the metrics, tokens/s
  all_runs.csv               every (point, lr) run
  metric_vs_<x>.png          the metric against a numeric axis, one line per series
  metric_vs_state.png        the metric against decode-state bytes (log scale)
  metric_vs_length.png       the metric at each evaluation length (data.task.eval_lengths), one line per point
  loss_curves.png            training loss of each point's best run, overlaid
"""

from __future__ import annotations

import csv
from pathlib import Path

from slm_jax.sweep.spec import Sweep
from slm_jax.training.tracking import read_metrics

NUMBERS = ("params", "flops_per_token", "decode_state_bytes_per_seq", "tokens_per_s", "compile_s")


def best_per_point(sweep: Sweep, records: list[dict]) -> list[dict]:
    """The record with the best ``sweep.metric`` for each point (Zoology reports max over lr)."""
    sign = -1.0 if sweep.maximize else 1.0
    best: dict[int, dict] = {}
    for r in records:
        score = r.get(sweep.metric)
        if score is None:
            continue
        if r["point"] not in best or sign * score < sign * best[r["point"]][sweep.metric]:
            best[r["point"]] = r
    return [best[i] for i in sorted(best)]


def _redundant(key: str) -> bool:
    """Token counts, perplexity, and bits at extra eval lengths: derivable from the loss columns."""
    return key.startswith(("val_tokens", "val_ppl")) or (key.startswith("val_bits") and "@" in key)


def _lengths(metric: str, r: dict) -> list[tuple[int, float]]:
    """(eval length, value) for ``metric`` at the training length and every ``metric@L`` of run ``r``."""
    pts = [(r["seq_len"], r[metric])] if r.get(metric) is not None and "seq_len" in r else []
    pts += [(int(k.split("@")[1]), v) for k, v in r.items() if k.startswith(metric + "@") and v is not None]
    return sorted(pts)


def _columns(sweep: Sweep, rows: list[dict]) -> list[str]:
    metrics = sorted({k for r in rows for k in r if k.startswith("val_") and not _redundant(k)})
    metrics.sort(key=lambda k: k != sweep.metric)  # the sweep's metric first
    lr = [] if "optim.lr" in sweep.axes else ["lr"]  # a swept lr is already an axis column
    return sweep.axes + lr + metrics + list(NUMBERS) + ["run"]


def _flat(r: dict, columns: list[str]) -> dict:
    value = lambda c: r["values"][c] if c in r["values"] else r.get("lr" if c == "optim.lr" else c, "")
    return {c: value(c) for c in columns}


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow(_flat(r, columns))


def _cell(value) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(sweep: Sweep, rows: list[dict]) -> str:
    columns = [c for c in _columns(sweep, rows) if c not in ("run", "compile_s")]
    head = [c.split(".")[-1].replace("decode_state_bytes_per_seq", "state_bytes") for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(v) for v in _flat(r, columns).values()) + " |")
    return "\n".join(lines)


def _series_key(sweep: Sweep) -> str | None:
    key = sweep.plot.get("series")
    if key:
        return key
    return "model.preset" if "model.preset" in sweep.axes else (sweep.axes[0] if sweep.axes else None)


def _x_key(sweep: Sweep, rows: list[dict], series: str | None) -> str | None:
    key = sweep.plot.get("x")
    if key:
        return key
    for axis in sweep.axes:
        if axis != series and all(isinstance(r["values"].get(axis), (int, float)) for r in rows):
            return axis
    return None


def plot(sweep: Sweep, rows: list[dict], out: Path) -> list[Path]:
    """The three plots (module docstring); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _series_key(sweep)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r["values"].get(series, "")) if series else "", []).append(r)
    written = []

    def scatter(x_of, xlabel: str, name: str, logx: bool = False):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, rs in groups.items():
            pts = sorted((x_of(r), r[sweep.metric]) for r in rs if r.get(sweep.metric) is not None)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label or None)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(sweep.metric)
        if logx:
            ax.set_xscale("log")
        if any(groups):
            ax.legend(title=series.split(".")[-1] if series else None)
        ax.set_title(f"{sweep.name}: {sweep.metric}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)

    x = _x_key(sweep, rows, series)
    if x:
        scatter(lambda r: r["values"][x], x, f"metric_vs_{x.split('.')[-1]}.png")
    scatter(
        lambda r: max(r["decode_state_bytes_per_seq"], 1),
        "decode-state bytes per sequence",
        "metric_vs_state.png",
        logx=True,
    )
    if any(len(_lengths(sweep.metric, r)) > 1 for r in rows):  # evaluated at several lengths: extrapolation
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            ax.plot(*zip(*_lengths(sweep.metric, r)), marker="o", label=r["run"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("evaluation sequence length")
        ax.set_ylabel(sweep.metric)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        ax.set_title(f"{sweep.name}: {sweep.metric} by length")
        fig.tight_layout()
        fig.savefig(out / "metric_vs_length.png", dpi=120)
        plt.close(fig)
        written.append(out / "metric_vs_length.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        curve = [(m["step"], m["loss"]) for m in read_metrics(r["run_dir"]) if "loss" in m]
        if curve:
            ax.plot(*zip(*curve), label=r["run"], linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_yscale("log")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    plt.close(fig)
    written.append(out / "loss_curves.png")
    return written


def write_report(sweep: Sweep, records: list[dict], out: Path) -> str:
    """Write every results file; return the Markdown table."""
    rows = best_per_point(sweep, records)
    write_csv(out / "results.csv", rows, _columns(sweep, rows))
    write_csv(out / "all_runs.csv", records, _columns(sweep, records))
    table = markdown_table(sweep, rows)
    best_note = f" (best of lr in {list(sweep.lrs)} by {sweep.metric})" if sweep.lrs else ""
    (out / "results.md").write_text(f"# {sweep.name}\n\nOne row per point{best_note}.\n\n{table}\n")
    plot(sweep, rows, out)
    return table
