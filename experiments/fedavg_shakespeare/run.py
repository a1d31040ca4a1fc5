"""FedSGD vs FedAvg on Tiny Shakespeare by speaking role (McMahan et al. 2017, arXiv:1602.05629): rounds to a target.

    python experiments/fedavg_shakespeare/run.py                 # every run (skips finished ones), then the report
    python experiments/fedavg_shakespeare/run.py --stage report  # table and plot from the finished runs
    python experiments/fedavg_shakespeare/run.py --smoke         # a tiny end-to-end run into smoke/ (~2 min)

Arms: FedSGD (one gradient step per client per round on B=50 windows) and FedAvg with E in {1, 5}
epochs and B in {10, 50} windows; E epochs are ``local_steps = round(E * mean client windows / B)``
(the paper's u = E n / B), with the mean over the partition's clients. Each arm trains a
transformer and a hawk (recurrent) model of ~0.1M parameters, on the role split (non-IID) and an
IID split of the same 100 clients, seeds 0, 1, 2, and stops at the first evaluation (every 5
rounds) whose next-character accuracy reaches ``--target``: the round is the result.
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
MODELS = {"transformer": [], "hawk": ["model.preset=hawk"]}
PARTITIONS = ("role", "iid")
ARMS = {"fedsgd": (1, 50), "fedavg_E1_B50": (1, 50), "fedavg_E1_B10": (1, 10), "fedavg_E5_B50": (5, 50)}
ARMS["fedavg_E5_B10"] = (5, 10)
SEEDS = (0, 1, 2)
# McMahan et al. 2017, Table 2, Shakespeare char LSTM to 54% accuracy: rounds (speedup vs FedSGD), IID / non-IID.
PUBLISHED = {
    "fedsgd": ("2488", "3906"),
    "fedavg_E1_B50": ("1635 (1.5x)", "549 (7.1x)"),
    "fedavg_E1_B10": ("460 (5.4x)", "164 (23.8x)"),
    "fedavg_E5_B50": ("401 (6.2x)", "152 (25.7x)"),
    "fedavg_E5_B10": ("192 (13.0x)", "41 (95.3x)"),
}


def mean_windows(overrides: list[str]) -> float:
    """Mean client training windows (``seq_len`` characters) of a partition."""
    from slm_jax.config import load_config
    from slm_jax.federated.train import load_clients

    cfg, clients, _, _ = load_clients(load_config(HERE / "base.yaml", overrides))
    return statistics.mean(c.train.size for c in clients) / cfg.train.seq_len


def arm_overrides(arm: str, windows: float) -> list[str]:
    epochs, batch = ARMS[arm]
    steps = 1 if arm == "fedsgd" else max(1, round(epochs * windows / batch))
    algorithm = "fedsgd" if arm == "fedsgd" else "fedavg"
    return [
        f"train.federated.{k}={v}"
        for k, v in (("algorithm", algorithm), ("local_steps", steps), ("client_batch", batch))
    ]


def plan(args) -> list[tuple[str, list[str]]]:
    """(run name, config overrides) of every run."""
    runs = []
    for partition in PARTITIONS if not args.smoke else ("role",):
        part = [f"train.federated.partition={partition}", *args.set]
        windows = mean_windows(part)
        for model, model_set in MODELS.items():
            for arm in ARMS if not args.smoke else ("fedsgd", "fedavg_E1_B10"):
                for seed in args.seeds:
                    overrides = [*part, *model_set, *arm_overrides(arm, windows), f"train.seed={seed}"]
                    overrides.append(f"train.federated.target_accuracy={args.target}")
                    runs.append((f"{model}_{partition}_{arm}_seed{seed}", overrides))
    return runs


def curve(run_dir: Path) -> dict[int, float]:
    from slm_jax.training.tracking import read_metrics

    if not (run_dir / "metrics.jsonl").is_file():
        return {}
    return {m["step"]: m["val_accuracy"] for m in read_metrics(run_dir) if "val_accuracy" in m}


def done(run_dir: Path, rounds: int, target: float) -> bool:
    acc = curve(run_dir)
    return bool(acc) and (max(acc) >= rounds or max(acc.values()) >= target)


def train_all(args, out: Path) -> None:
    from slm_jax.config import load_config
    from slm_jax.training.train import train

    for name, overrides in plan(args):
        cfg = load_config(HERE / "base.yaml", overrides)
        run_dir = out / "runs" / name
        if done(run_dir, cfg.train.federated.rounds, args.target):
            continue
        print(f"--- {name}", flush=True)
        train(cfg, run_dir)


def rounds_to(acc: dict[int, float], target: float) -> int | None:
    hit = [r for r, a in sorted(acc.items()) if a >= target]
    return hit[0] if hit else None


def report(args, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slm_jax.config import load_config

    every = load_config(HERE / "base.yaml", args.set).eval.every
    rows, curves = [], {}
    for name, _ in plan(args):
        acc = curve(out / "runs" / name)
        if not acc:
            continue
        model, partition, *arm, seed = name.split("_")
        arm = "_".join(arm)
        reached = rounds_to(acc, args.target)
        rows.append(
            {
                "model": model,
                "partition": partition,
                "arm": arm,
                "seed": int(seed.removeprefix("seed")),
                "rounds_to_target": reached if reached is not None else "",
                "rounds_run": max(acc),
                "best_accuracy": round(max(acc.values()), 4),
            }
        )
        curves.setdefault((model, partition, arm), []).append(acc)
    if not rows:
        raise SystemExit("error: no finished runs to report; run the training stage first.")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def cell(model, partition, arm):
        hits = [
            r["rounds_to_target"] for r in rows if (r["model"], r["partition"], r["arm"]) == (model, partition, arm)
        ]
        if not hits:
            return None, "-"
        if "" in hits:
            ran = max(
                r["rounds_run"] for r in rows if (r["model"], r["partition"], r["arm"]) == (model, partition, arm)
            )
            return None, f"not reached by {ran} ({len(hits) - hits.count('')}/{len(hits)} seeds did)"
        sd = statistics.stdev(hits) if len(hits) > 1 else float("nan")
        return statistics.mean(hits), f"{statistics.mean(hits):.0f} +- {sd:.0f} (n={len(hits)})"

    lines = [
        "# fedavg_shakespeare",
        "",
        f"Rounds to {args.target:.0%} next-character accuracy (mean +- sample std over seeds; evaluated every",
        f"{every} rounds), speedup = FedSGD's mean rounds / the arm's, and McMahan et al.'s Table 2 (LSTM to 54%).",
        "",
        "| model | arm | role (non-IID) | speedup | IID | speedup | published IID | published non-IID |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        for arm in ARMS:
            cells = [cell(model, p, arm) for p in PARTITIONS]
            if all(text == "-" for _, text in cells):
                continue
            row = [model, arm]
            for partition, (mean, text) in zip(PARTITIONS, cells, strict=True):
                base = cell(model, partition, "fedsgd")[0]
                row += [text, f"{base / mean:.1f}x" if mean and base else "-"]
            row += [PUBLISHED[arm][0], PUBLISHED[arm][1]]
            lines.append("| " + " | ".join(row) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, axes = plt.subplots(1, len(MODELS), figsize=(6 * len(MODELS), 4), squeeze=False)
    for ax, model in zip(axes[0], MODELS, strict=True):
        for (m, partition, arm), runs in curves.items():
            if m != model:
                continue
            steps = sorted(set.intersection(*(set(c) for c in runs)))
            mean = [statistics.mean(c[s] for c in runs) for s in steps]
            ax.plot(steps, mean, ls="-" if partition == "role" else "--", label=f"{arm} {partition}")
        ax.axhline(args.target, color="gray", lw=0.8)
        ax.set_title(model)
        ax.set_xlabel("round")
        ax.set_ylabel("val next-char accuracy (mean over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["all", "train", "report"], default="all")
    parser.add_argument("--target", type=float, help="next-character accuracy to reach (default 0.45; smoke 0.15)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--smoke", action="store_true", help="10 clients, 4 rounds, 1 seed, 2 arms: into smoke/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    args = parser.parse_args()
    out = HERE
    if args.target is None:
        args.target = 0.15 if args.smoke else 0.45
    if args.smoke:
        out = HERE / "smoke"
        args.seeds = [0]
        smoke = ["train.federated.n_clients=10", "train.federated.fraction=0.3", "train.federated.rounds=4"]
        args.set = [*smoke, "eval.every=2", "eval.batches=2", "checkpoint.every=4", *args.set]
    os.chdir(ROOT)
    use_compile_cache()
    if args.stage in ("all", "train"):
        train_all(args, out)
    if args.stage in ("all", "report"):
        report(args, out)


if __name__ == "__main__":
    main()
