"""DiLoCo vs synchronous data-parallel training at equal tokens on Tiny Shakespeare (Douillard et al. 2023).

    python experiments/diloco/run.py                  # every run (skips finished ones), then the report
    python experiments/diloco/run.py --seeds 0        # one seed
    python experiments/diloco/run.py --stage report   # table and plot from the finished runs
    python experiments/diloco/run.py --smoke          # a tiny end-to-end run into smoke/ (~2 min)

Grid: H in {1, 10, 50, 100, 500} inner steps x R in {2, 4, 8} replicas, against the ordinary
`slm train` of base.yaml (S steps of the same total batch B). A DiLoCo run has R replicas on IID
shares of the training text, each taking H AdamW steps of B / R windows per round for S / H
rounds (the inner schedule spans S steps as the baseline's does), and the outer Nesterov step
(lr 0.7, momentum 0.9) on the averaged delta. Bytes communicated: DiLoCo's are counted by the
trainer (every replica receives the model and sends its delta each round: 2 x 4 bytes x params
x R per round); the synchronous run's are those of an all-reduce-free data-parallel step with R
workers, each sending its gradient and receiving the mean every step: 2 x 4 x params x R x S.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
from pathlib import Path

from slm_jax.sweep.experiment import use_compile_cache

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
H_VALUES = (1, 10, 50, 100, 500)
REPLICAS = (2, 4, 8)
SEEDS = (0, 1, 2)


def diloco_overrides(cfg, h: int, replicas: int) -> list[str]:
    t = cfg.train
    fed = {
        "algorithm": "diloco",
        "partition": "iid",
        "n_clients": replicas,
        "clients_per_round": replicas,
        "local_steps": h,
        "client_batch": t.batch_size // replicas,
        "rounds": t.steps // h,
    }
    return [f"train.federated.{k}={v}" for k, v in fed.items()]


def plan(args) -> list[tuple[str, list[str], int, int]]:
    """(run name, overrides, H, R) of every run; H = R = 0 is the synchronous baseline."""
    from slm_jax.config import load_config

    cfg = load_config(HERE / "base.yaml", args.set)
    runs = []
    for seed in args.seeds:
        seed_set = [*args.set, f"train.seed={seed}"]
        runs.append((f"sync_seed{seed}", seed_set, 0, 0))
        for replicas in args.replicas:
            for h in args.h:
                if cfg.train.steps % h or cfg.train.batch_size % replicas:
                    raise SystemExit(f"error: H={h} must divide train.steps and R={replicas} train.batch_size.")
                runs.append(
                    (f"H{h}_R{replicas}_seed{seed}", [*seed_set, *diloco_overrides(cfg, h, replicas)], h, replicas)
                )
    return runs


def final(run_dir: Path) -> dict | None:
    """The last record holding val_loss, with the bytes totals, or None if the run has not finished."""
    from slm_jax.training.tracking import read_metrics

    if not (run_dir / "metrics.jsonl").is_file():
        return None
    records = read_metrics(run_dir)
    evals = [m for m in records if "val_loss" in m]
    totals = {k: v for m in records for k, v in m.items() if k.endswith("_total")}
    return {**evals[-1], **totals} if evals else None


def train_all(args, out: Path) -> None:
    from slm_jax.config import load_config
    from slm_jax.training.train import train

    for name, overrides, _, _ in plan(args):
        run_dir = out / "runs" / name
        if final(run_dir) is not None:
            continue
        print(f"--- {name}", flush=True)
        train(load_config(HERE / "base.yaml", overrides), run_dir)


def n_params(run_dir: Path) -> int:
    import json

    return json.loads((run_dir / "run.json").read_text())["params"]


def report(args, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slm_jax.config import load_config

    steps = load_config(HERE / "base.yaml", args.set).train.steps
    rows = []
    for name, _, h, replicas in plan(args):
        got = final(out / "runs" / name)
        if got is None:
            continue
        seed = int(name.rsplit("seed", 1)[1])
        if h:
            sent = got["bytes_up_total"] + got["bytes_down_total"]
            rows.append(
                {"run": "diloco", "H": h, "R": replicas, "seed": seed, "val_loss": got["val_loss"], "bytes": sent}
            )
        else:
            params = n_params(out / "runs" / name)
            for r in args.replicas:
                rows.append({"run": "sync", "H": 1, "R": r, "seed": seed, "val_loss": got["val_loss"]})
                rows[-1]["bytes"] = 2 * 4 * params * r * steps
    if not rows:
        raise SystemExit("error: no finished runs to report; run the training stage first.")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    groups: dict = {}
    for row in rows:
        groups.setdefault((row["run"], row["H"], row["R"]), []).append(row)
    lines = [
        "# diloco",
        "",
        f"Val loss (nats/char, mean +- sample std over seeds) after {steps} steps' worth of tokens, and bytes",
        "communicated in total (up + down, all replicas), against synchronous data-parallel training.",
        "",
        "| run | R | H | val loss | bytes | vs sync bytes |",
        "|---|---|---|---|---|---|",
    ]
    for (run, h, r), group in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0] != "sync", kv[0][1])):
        losses = [g["val_loss"] for g in group]
        sd = statistics.stdev(losses) if len(losses) > 1 else float("nan")
        sync = groups.get(("sync", 1, r))
        ratio = f"1/{sync[0]['bytes'] / group[0]['bytes']:.0f}" if sync else "-"
        lines.append(
            f"| {run} | {r} | {h} | {statistics.mean(losses):.4f} +- {sd:.4f} (n={len(losses)}) | "
            f"{group[0]['bytes']:,} | {ratio} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in args.replicas:
        points = sorted(
            (h, statistics.mean(g["val_loss"] for g in grp))
            for (run, h, rr), grp in groups.items()
            if run == "diloco" and rr == r
        )
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=f"DiLoCo R={r}")
    sync = [g["val_loss"] for (run, _, _), grp in groups.items() if run == "sync" for g in grp]
    if sync:
        ax.axhline(statistics.mean(sync), color="black", ls="--", label="synchronous")
    ax.set_xscale("log")
    ax.set_xlabel("H (inner steps per round)")
    ax.set_ylabel("val loss (nats/char)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["all", "train", "report"], default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--h", type=int, nargs="+", default=list(H_VALUES), help="inner steps per round")
    parser.add_argument("--replicas", type=int, nargs="+", default=list(REPLICAS))
    parser.add_argument("--smoke", action="store_true", help="20 steps, H 1 and 10, R 2, seed 0: into smoke/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    args = parser.parse_args()
    out = HERE
    if args.smoke:
        out, args.seeds, args.h, args.replicas = HERE / "smoke", [0], [1, 10], [2]
        args.set = ["train.steps=20", "train.batch_size=8", "eval.batches=2", "checkpoint.every=20", *args.set]
    os.chdir(ROOT)
    use_compile_cache()
    if args.stage in ("all", "train"):
        train_all(args, out)
    if args.stage in ("all", "report"):
        report(args, out)


if __name__ == "__main__":
    main()
