"""DP-FedAvg on Tiny Shakespeare by speaking role: utility (val loss, accuracy) against the accountant's epsilon.

    python experiments/dp_fedavg/run.py                 # every run (skips finished ones), then the report
    python experiments/dp_fedavg/run.py --stage report  # table and plot from the finished runs
    python experiments/dp_fedavg/run.py --smoke         # a tiny end-to-end run into smoke/ (~2 min)

Runs: no DP at all, clipping only (z = 0), and Gaussian noise multipliers z in {0.5, 1, 2} on the
sum of clipped updates (DP-FedAvg, McMahan et al. 2018, arXiv:1710.06963), seeds 0, 1, 2. Each
DP run's epsilon at delta 1e-5 after its last round comes from the RDP accountant the trainer
logs (federated/privacy.py); utility is the final val loss and next-character accuracy.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
from pathlib import Path

from slm_jax.sweep.experiment import use_compile_cache

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NOISE = {"no_dp": None, "clip_only": 0.0, "z0.5": 0.5, "z1": 1.0, "z2": 2.0}
SEEDS = (0, 1, 2)


def plan(args) -> list[tuple[str, str, list[str]]]:
    """(run name, setting, overrides) of every run."""
    runs = []
    for seed in args.seeds:
        for setting, z in NOISE.items():
            overrides = [*args.set, f"train.seed={seed}"]
            if z is None:
                overrides.append("train.federated.dp_clip=0")
            else:
                overrides.append(f"train.federated.dp_noise={z}")
            runs.append((f"{setting}_seed{seed}", setting, overrides))
    return runs


def final(run_dir: Path, rounds: int) -> dict | None:
    """The last evaluation with the last logged epsilon, or None unless the run reached ``rounds``."""
    from slm_jax.training.tracking import read_metrics

    if not (run_dir / "metrics.jsonl").is_file():
        return None
    records = read_metrics(run_dir)
    evals = [m for m in records if "val_loss" in m]
    if not evals or evals[-1]["step"] < rounds:
        return None
    eps = [m["epsilon"] for m in records if "epsilon" in m]
    return {**evals[-1], "epsilon": eps[-1] if eps else math.inf}


def train_all(args, out: Path) -> None:
    from slm_jax.config import load_config
    from slm_jax.training.train import train

    for name, _, overrides in plan(args):
        cfg = load_config(HERE / "base.yaml", overrides)
        run_dir = out / "runs" / name
        if final(run_dir, cfg.train.federated.rounds) is not None:
            continue
        print(f"--- {name}", flush=True)
        train(cfg, run_dir)


def report(args, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slm_jax.config import load_config

    rounds = load_config(HERE / "base.yaml", args.set).train.federated.rounds
    rows = []
    for name, setting, _ in plan(args):
        got = final(out / "runs" / name, rounds)
        if got is None:
            continue
        rows.append(
            {
                "setting": setting,
                "z": NOISE[setting] if NOISE[setting] is not None else "",
                "seed": int(name.rsplit("seed", 1)[1]),
                "epsilon": round(got["epsilon"], 3) if math.isfinite(got["epsilon"]) else "inf",
                "val_loss": round(got["val_loss"], 4),
                "val_accuracy": round(got["val_accuracy"], 4),
            }
        )
    if not rows:
        raise SystemExit("error: no finished runs to report; run the training stage first.")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def stat(values):
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        return statistics.mean(values), sd

    lines = [
        "# dp_fedavg",
        "",
        f"After {rounds} rounds (mean +- sample std over seeds); epsilon at delta 1e-5 from the RDP accountant",
        "(the same for every seed: it depends on z, the sampling rate and the rounds only).",
        "",
        "| setting | z | epsilon | val loss | val accuracy |",
        "|---|---|---|---|---|",
    ]
    points, no_dp = [], None
    for setting in NOISE:
        group = [r for r in rows if r["setting"] == setting]
        if not group:
            continue
        (loss, loss_sd), (acc, acc_sd) = stat([r["val_loss"] for r in group]), stat([r["val_accuracy"] for r in group])
        lines.append(
            f"| {setting} | {group[0]['z']} | {group[0]['epsilon']} | {loss:.4f} +- {loss_sd:.4f} | "
            f"{acc:.4f} +- {acc_sd:.4f} (n={len(group)}) |"
        )
        if group[0]["epsilon"] != "inf":
            points.append((group[0]["epsilon"], acc, acc_sd, setting))
        elif setting == "no_dp":
            no_dp = acc
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(6, 4))
    for eps, acc, sd, setting in points:
        ax.errorbar([eps], [acc], yerr=[0 if math.isnan(sd) else sd], marker="o", capsize=3, label=setting)
    if no_dp is not None:
        ax.axhline(no_dp, color="black", ls="--", label="no DP")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon at delta 1e-5 (RDP accountant)")
    ax.set_ylabel("val next-char accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["all", "train", "report"], default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--smoke", action="store_true", help="20 clients, 3 rounds, seed 0: into smoke/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    args = parser.parse_args()
    out = HERE
    if args.smoke:
        out, args.seeds = HERE / "smoke", [0]
        smoke = ["train.federated.n_clients=20", "train.federated.clients_per_round=5", "train.federated.rounds=3"]
        smoke += ["train.federated.local_steps=2", "eval.every=3", "eval.batches=2", "checkpoint.every=3"]
        args.set = [*smoke, *args.set]
    os.chdir(ROOT)
    use_compile_cache()
    if args.stage in ("all", "train"):
        train_all(args, out)
    if args.stage in ("all", "report"):
        report(args, out)


if __name__ == "__main__":
    main()
