"""Distillation on Tiny Shakespeare: trains what is missing, then writes results.md, results.csv and plot.png.

    python experiments/distill_shakespeare/run.py                  # everything, in order (skips finished runs)
    python experiments/distill_shakespeare/run.py --stage teacher  # teacher + its stored top-k logits only
    python experiments/distill_shakespeare/run.py --stage students --arch griffin   # one student family
    python experiments/distill_shakespeare/run.py --stage report   # tables and plot from finished runs

The stages let two student families train in two processes at once. Run from anywhere; paths
are relative to the repository root, where the configs expect ../shared/data/tinyshakespeare.txt.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
from pathlib import Path

from slm_jax.sweep.experiment import finished, use_compile_cache, val_curve

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
ARCHS = ("transformer", "griffin")
SEEDS = (0, 1, 2)
MODES = ("scratch", "distilled")


def train_teacher() -> None:
    from slm_jax.config import load_config
    from slm_jax.distill.precompute import precompute
    from slm_jax.training.train import train

    cfg = load_config(HERE / "teacher.yaml")
    if not finished(RUNS / "teacher", cfg.train.steps):
        train(cfg, RUNS / "teacher")
    student = load_config(HERE / "student_transformer.yaml").distill
    if not (ROOT / student.precomputed / "meta.json").is_file():
        # Windows of the teacher's 64 tokens every 56: each position has >= 8 tokens of context.
        print(
            precompute(
                RUNS / "teacher", ROOT / student.precomputed, k=student.top_k, context=64, stride=56, batch_size=64
            )
        )


def train_students(archs: tuple[str, ...]) -> None:
    from slm_jax.config import load_config
    from slm_jax.distill.train import distill
    from slm_jax.training.train import train

    for seed in SEEDS:
        for arch in archs:
            cfg = load_config(HERE / f"student_{arch}.yaml", [f"train.seed={seed}"])
            for mode in MODES:
                run_dir = RUNS / f"{arch}_{mode}_seed{seed}"
                if finished(run_dir, cfg.train.steps):
                    continue
                print(f"--- {run_dir.name}", flush=True)
                distill(cfg, run_dir=run_dir) if mode == "distilled" else train(cfg, run_dir)


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slm_jax.config import load_config

    teacher = val_curve(RUNS / "teacher")
    teacher_loss = teacher[max(teacher)]
    rows, curves = [], {}
    for arch in ARCHS:
        steps = load_config(HERE / f"student_{arch}.yaml").train.steps
        for mode in MODES:
            for seed in SEEDS:
                run_dir = RUNS / f"{arch}_{mode}_seed{seed}"
                if not finished(run_dir, steps):
                    continue
                curve = val_curve(run_dir)
                rows.append(
                    {"arch": arch, "mode": mode, "seed": seed, "steps": steps, "val_loss": round(curve[steps], 4)}
                )
                curves.setdefault((arch, mode), []).append(curve)
    with open(HERE / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    stats = {}
    for arch, mode in curves:
        losses = [r["val_loss"] for r in rows if (r["arch"], r["mode"]) == (arch, mode)]
        stats[arch, mode] = (
            statistics.mean(losses),
            statistics.stdev(losses) if len(losses) > 1 else float("nan"),
            len(losses),
        )
    lines = [
        "# distill_shakespeare",
        "",
        f"Teacher (transformer, 4.76M params): val loss {teacher_loss:.4f} nats/char at step {max(teacher)}.",
        "",
        "| student | from scratch | distilled | gain | gain / larger std | paired gain per seed |",
        "|---|---|---|---|---|---|",
    ]
    for arch in ARCHS:
        if (arch, "scratch") in stats and (arch, "distilled") in stats:
            (ms, ss, n1), (md, sd, n2) = stats[arch, "scratch"], stats[arch, "distilled"]
            loss = {(r["mode"], r["seed"]): r["val_loss"] for r in rows if r["arch"] == arch}
            paired = [
                loss["scratch", s] - loss["distilled", s]
                for s in SEEDS
                if ("scratch", s) in loss and ("distilled", s) in loss
            ]
            lines.append(
                f"| {arch} | {ms:.4f} +- {ss:.4f} (n={n1}) | {md:.4f} +- {sd:.4f} (n={n2}) | {ms - md:.4f} | "
                f"{(ms - md) / max(ss, sd):.1f} | {', '.join(f'{d:.4f}' for d in paired)} |"
            )
    lines += [
        "",
        "Val loss in nats/char at the last step (mean +- sample std over seeds 0, 1, 2); gain = scratch - distilled;",
        "a seed's twins share initialisation and batch order, so the paired gain compares like with like.",
    ]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, (bars, lines_ax) = plt.subplots(1, 2, figsize=(11, 4))
    labels, means, stds, colors = [], [], [], []
    for arch in ARCHS:
        for mode in MODES:
            if (arch, mode) in stats:
                labels.append(f"{arch}\n{mode}")
                means.append(stats[arch, mode][0])
                stds.append(stats[arch, mode][1])
                colors.append("tab:gray" if mode == "scratch" else "tab:blue")
    bars.bar(labels, means, yerr=stds, color=colors, capsize=4)
    bars.axhline(teacher_loss, color="tab:red", ls="--", label=f"teacher {teacher_loss:.3f}")
    bars.set_ylim(min(means + [teacher_loss]) - 0.1, max(means) + 0.05)
    bars.set_ylabel("val loss at the last step (nats/char)")
    bars.legend()
    for (arch, mode), runs in curves.items():
        steps = sorted(set.intersection(*(set(c) for c in runs)))
        mean = [statistics.mean(c[s] for c in runs) for s in steps]
        lines_ax.plot(
            steps,
            mean,
            marker="o",
            ls="-" if mode == "distilled" else "--",
            color="tab:blue" if arch == "transformer" else "tab:green",
            label=f"{arch} {mode}",
        )
    lines_ax.axhline(teacher_loss, color="tab:red", ls="--", label="teacher")
    lines_ax.set_xlabel("student step")
    lines_ax.set_ylabel("val loss (mean over seeds)")
    lines_ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "plot.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["all", "teacher", "students", "report"], default="all")
    parser.add_argument("--arch", choices=ARCHS, action="append", help="students: only these families (repeatable)")
    args = parser.parse_args()
    os.chdir(ROOT)
    use_compile_cache()  # seeds share programs
    if args.stage in ("all", "teacher"):
        train_teacher()
    if args.stage in ("all", "students"):
        train_students(tuple(args.arch or ARCHS))
    if args.stage in ("all", "report"):
        report()


if __name__ == "__main__":
    main()
