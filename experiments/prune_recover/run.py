"""Prune a 4.8M teacher to ~0.8M and recover it by distillation, against the same shapes trained from scratch.

    python experiments/prune_recover/run.py                          # everything (skips finished runs)
    python experiments/prune_recover/run.py --stage teachers         # teachers, stored top-8 logits, pruned runs
    python experiments/prune_recover/run.py --stage runs --arch griffin   # one family's students
    python experiments/prune_recover/run.py --stage report           # results.md, results.csv, plot.png

Minitron (Muralidharan et al. 2024, arXiv:2407.14679) and Sheared LLaMA (Xia et al. 2023,
arXiv:2310.06694): a pruned and distilled model beats the same shape trained from scratch at a
fraction of the tokens, and width pruning beats depth pruning after recovery. Run from anywhere;
paths are relative to the repository root, where the configs expect ../shared/data/tinyshakespeare.txt.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
from pathlib import Path

import jax
import yaml

from slm_jax.sweep.experiment import finished, mean_std, use_compile_cache, val_curve

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
ARCHS = ("transformer", "griffin")
SEEDS = (0, 1, 2)
RECOVERY_STEPS = 250  # the students of experiments/distill_shakespeare: 250 steps of 16 x 64 tokens
LONG_STEPS = 10 * RECOVERY_STEPS  # the from-scratch control at 10x the tokens
TEACHER_CONFIGS = {
    "transformer": ROOT / "experiments/distill_shakespeare/teacher.yaml",
    "griffin": HERE / "teacher_griffin.yaml",
}
# ~0.8M-parameter targets from the 6-layer, d_model 256, 8-head teachers (vocab 65):
#   depth: 1 layer of width 256;  width: 6 layers of width 112 (4 heads of 32, d_ff 224, RG-LRU 144);
#   both: 4 layers of width 128 (4 heads of 32, d_ff 352, RG-LRU 176), about distill_shakespeare's student shape.
PRUNE_TARGETS = {
    "depth": ["n_layers=1"],
    "width": ["d_model=112", "n_heads=4", "d_ff=224", "rglru_width=144"],
    "both": ["n_layers=4", "d_model=128", "n_heads=4", "d_ff=352", "rglru_width=176"],
}
ARMS = {  # arm -> (how it starts, trained by, steps, shapes it runs for)
    "pruned_distilled": ("pruned", "distill", RECOVERY_STEPS, tuple(PRUNE_TARGETS)),
    "scratch": ("scratch", "train", RECOVERY_STEPS, tuple(PRUNE_TARGETS)),
    "scratch_distilled": ("scratch", "distill", RECOVERY_STEPS, tuple(PRUNE_TARGETS)),
    # 2,500 steps take ~8 minutes per run on 2 shared cores: only the shape both teachers share with
    # distill_shakespeare's students gets the 10x control.
    "scratch_10x": ("scratch", "train", LONG_STEPS, ("both",)),
    "pruned_trained": ("pruned", "train", RECOVERY_STEPS, tuple(PRUNE_TARGETS)),  # recovery without the teacher
}
ARM_LABELS = {
    "pruned_distilled": "pruned + distilled",
    "scratch": "scratch",
    "scratch_distilled": "scratch, distilled",
    "scratch_10x": "scratch, 10x tokens",
    "pruned_trained": "pruned + trained (no teacher)",
}
TOKENS_PER_STEP = 16 * 64


def teacher_dir(arch: str) -> Path:
    return RUNS / f"teacher_{arch}"


def teacher_logits_dir(arch: str) -> Path:
    return RUNS / f"teacher_{arch}_top8"


def pruned_dir(arch: str, shape: str) -> Path:
    return RUNS / f"pruned_{arch}_{shape}"


def prepare_teachers(archs: tuple[str, ...]) -> None:
    """Train each teacher, store its top-8 logits and write its three pruned runs (calibrated on training text)."""
    from slm_jax.cli import main as slm
    from slm_jax.config import load_config
    from slm_jax.distill.precompute import precompute
    from slm_jax.training.train import train

    for arch in archs:
        cfg = load_config(TEACHER_CONFIGS[arch])
        if not finished(teacher_dir(arch), cfg.train.steps):
            train(cfg, teacher_dir(arch))
        if not (teacher_logits_dir(arch) / "meta.json").is_file():
            # Windows of 64 tokens every 56, as in distill_shakespeare: each position has >= 8 tokens of context.
            print(precompute(teacher_dir(arch), teacher_logits_dir(arch), k=8, context=64, stride=56, batch_size=64))
        for shape, targets in PRUNE_TARGETS.items():
            if not pruned_dir(arch, shape).is_dir():
                overrides = [f"prune.{t}" for t in targets if arch == "griffin" or not t.startswith("rglru")]
                args = [
                    "prune",
                    str(teacher_dir(arch)),
                    "--out",
                    str(pruned_dir(arch, shape)),
                    "--calib-tokens",
                    "16384",
                ]
                assert slm(args + [a for o in overrides for a in ("--set", o)]) in (0, None)


def student_config(arch: str, shape: str, arm: str, seed: int):
    """The Config of one student run: the pruned run's model shape, the arm's start, objective and steps."""
    from slm_jax.config import config_from_dict

    start, objective, steps, _ = ARMS[arm]
    raw = yaml.safe_load((HERE / "student.yaml").read_text())
    raw["model"] = yaml.safe_load((pruned_dir(arch, shape) / "config.yaml").read_text())["model"]
    raw["train"].update(seed=seed, steps=steps)
    if steps != RECOVERY_STEPS:
        raw["eval"]["every"] = steps // 10
    if start == "pruned":
        raw["train"]["init_from"] = str(pruned_dir(arch, shape))
    if objective == "distill":
        raw["distill"].update(teacher=str(teacher_dir(arch)), precomputed=str(teacher_logits_dir(arch)))
    else:
        del raw["distill"]
    return config_from_dict(raw), objective


def student_dir(arch: str, shape: str, arm: str, seed: int) -> Path:
    return RUNS / f"{arch}_{shape}_{arm}_seed{seed}"


def train_students(archs: tuple[str, ...], arms: tuple[str, ...]) -> None:
    from slm_jax.distill.train import distill
    from slm_jax.training.train import train

    for arm in arms:  # arm by arm, so the recovery runs (the main result) finish first
        for seed in SEEDS:
            for arch in archs:
                for shape in ARMS[arm][3]:
                    run_dir = student_dir(arch, shape, arm, seed)
                    cfg, objective = student_config(arch, shape, arm, seed)
                    if finished(run_dir, cfg.train.steps):
                        continue
                    print(f"--- {run_dir.name}", flush=True)
                    distill(cfg, run_dir=run_dir) if objective == "distill" else train(cfg, run_dir)


def pruned_loss(arch: str, shape: str) -> float:
    """Validation loss of a pruned run before any recovery, on the students' 20 validation batches."""
    from slm_jax.data.pipeline import eval_batches
    from slm_jax.data.run_tokens import run_text_tokens
    from slm_jax.eval.perplexity import evaluate
    from slm_jax.inference.run import load_run
    from slm_jax.training.step import make_eval_step

    run = load_run(pruned_dir(arch, shape))
    batches = eval_batches(run_text_tokens(run.cfg, run.tokenizer, None, "val"), 16, 64, 20)
    return evaluate(jax.jit(make_eval_step(run.model)), run.params, batches)["val_loss"]


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slm_jax.inference.run import load_run

    rows, curves = [], {}
    for arch in ARCHS:
        for shape in PRUNE_TARGETS:
            if not pruned_dir(arch, shape).is_dir():
                continue
            n_params = sum(x.size for x in jax.tree.leaves(load_run(pruned_dir(arch, shape)).params))
            for arm, (_, _, steps, _) in ARMS.items():
                for seed in SEEDS:
                    run_dir = student_dir(arch, shape, arm, seed)
                    if not finished(run_dir, steps):
                        continue
                    curve = val_curve(run_dir)
                    curves.setdefault((arch, shape, arm), []).append(curve)
                    rows.append(
                        {
                            "arch": arch,
                            "shape": shape,
                            "params": n_params,
                            "arm": arm,
                            "seed": seed,
                            "tokens": steps * TOKENS_PER_STEP,
                            "val_loss_at_fifth": round(curve.get(RECOVERY_STEPS // 5, float("nan")), 4),
                            "val_loss": round(curve[steps], 4),
                        }
                    )
    with open(HERE / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def losses(arch, shape, arm, key="val_loss"):
        return [r[key] for r in rows if (r["arch"], r["shape"], r["arm"]) == (arch, shape, arm)]

    fifth = RECOVERY_STEPS // 5
    lines = [
        "# prune_recover",
        "",
        f"Val loss (nats/char, 20 validation batches of 16 x 64) after {fifth} and {RECOVERY_STEPS} steps "
        f"({fifth * TOKENS_PER_STEP:,} and {RECOVERY_STEPS * TOKENS_PER_STEP:,} tokens); "
        f"from scratch also after {LONG_STEPS} steps (10x). Mean +- sample std over seeds {SEEDS}.",
        "",
        "| teacher | shape | params | pruned, no recovery | pruned + distilled @1/5 | "
        + " | ".join(ARM_LABELS[arm] for arm in ARMS)
        + " |",
        "|---" * (5 + len(ARMS)) + "|",
    ]
    for arch in ARCHS:
        teacher = val_curve(teacher_dir(arch))
        for shape in PRUNE_TARGETS:
            if not losses(arch, shape, "pruned_distilled"):
                continue
            params = next(r["params"] for r in rows if (r["arch"], r["shape"]) == (arch, shape))
            cells = [
                mean_std(losses(arch, shape, "pruned_distilled", "val_loss_at_fifth")),
                *(mean_std(losses(arch, shape, arm)) if losses(arch, shape, arm) else "-" for arm in ARMS),
            ]
            lines.append(
                f"| {arch} ({teacher[max(teacher)]:.3f}) | {shape} | {params / 1e6:.2f}M | "
                f"{pruned_loss(arch, shape):.3f} | " + " | ".join(cells) + " |"
            )
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, axes = plt.subplots(1, len(ARCHS), figsize=(12, 4.5), sharey=True)
    colors = {"depth": "tab:orange", "width": "tab:blue", "both": "tab:green"}
    styles = {
        "pruned_distilled": "-",
        "pruned_trained": ":",
        "scratch_distilled": "-.",
        "scratch": "--",
        "scratch_10x": "--",
    }
    for ax, arch in zip(axes, ARCHS, strict=True):
        for (a, shape, arm), runs in curves.items():
            if a != arch or arm == "pruned_trained":
                continue
            steps = sorted(set.intersection(*(set(c) for c in runs)))
            ax.plot(
                [s * TOKENS_PER_STEP for s in steps],
                [statistics.mean(c[s] for c in runs) for s in steps],
                ls=styles[arm],
                color=colors[shape],
                lw=1 if arm == "scratch_10x" else 1.8,
                label=f"{shape} {arm}",
            )
        teacher = val_curve(teacher_dir(arch))
        ax.axhline(teacher[max(teacher)], color="tab:red", ls=":", label="teacher (4.8M)")
        ax.set_xscale("log")
        ax.set_xlabel("training / recovery tokens")
        ax.set_title(f"{arch} teacher pruned to ~0.8M")
        ax.set_ylim(top=2.6)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val loss (nats/char, mean of 3 seeds)")
    axes[-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(HERE / "plot.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["all", "teachers", "runs", "report"], default="all")
    parser.add_argument("--arch", choices=ARCHS, action="append", help="only these teacher families (repeatable)")
    parser.add_argument("--arm", choices=list(ARMS), action="append", help="runs: only these arms (repeatable)")
    args = parser.parse_args()
    os.chdir(ROOT)
    use_compile_cache()
    archs = tuple(args.arch or ARCHS)
    if args.stage in ("all", "teachers"):
        prepare_teachers(archs)
    if args.stage in ("all", "runs"):
        train_students(archs, tuple(args.arm or ARMS))
    if args.stage in ("all", "report"):
        report()


if __name__ == "__main__":
    main()
