"""DistilBERT on Tiny Shakespeare: a 6-layer MLM teacher, half-depth students, corruption detection and latency.

    python experiments/distilbert/run.py                           # everything (skips finished runs)
    python experiments/distilbert/run.py --stage teacher           # the teacher and the labelled data set
    python experiments/distilbert/run.py --stage students --arm distilbert   # one arm's three seeds
    python experiments/distilbert/run.py --stage finetune          # classification fine-tunes + `slm eval`
    python experiments/distilbert/run.py --stage report            # latency, results.md, results.csv, plot.png

Sanh et al. 2019 (arXiv:1910.01108): a student of half the teacher's depth, started from one teacher layer
in two and trained with alpha_ce * KL + alpha_mlm * MLM + alpha_cos * cosine, keeps ~97% of the teacher's
downstream score at ~60% of its latency; Table 4 ablates the three terms and the initialisation. Run from
anywhere; paths are relative to the repository root, where the configs expect ../shared/data/tinyshakespeare.txt.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import statistics
import string
import time
from collections import Counter, defaultdict
from pathlib import Path

import jax
import numpy as np
import yaml

from slm_jax.sweep.experiment import finished, mean_std, use_compile_cache, val_curve

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
TEACHER = RUNS / "teacher"
CORPUS = ROOT.parent / "shared/data/tinyshakespeare.txt"
SEEDS = (0, 1, 2)
STEPS = 150  # every student: 150 steps of 16 x 128 chars (307,200 tokens)
TOKENS_PER_STEP = 16 * 128
# arm -> (trainer, model.* keys over student.yaml, distill.* keys); the first three are the students of the
# question, the rest DistilBERT's Table 4. The hybrid's RG-LRU width 80 (default ~4/3 d = 172) brings its
# forward + backward recurrences to about the attention student's parameters (0.62M against 0.61M).
BERT = {"preset": "bert_like"}
ARMS = {
    "distilbert": ("distill", BERT, {}),
    "scratch_mlm": ("train", BERT, {}),
    "hybrid_distilled": ("distill", {"preset": "hybrid_encoder", "mixers": {"rglru": {"width": 80}}}, {"init": ""}),
    "no_ce": ("distill", BERT, {"alpha_ce": 0.0}),
    "no_mlm": ("distill", BERT, {"alpha_mlm": 0.0}),
    "no_cos": ("distill", BERT, {"alpha_cos": 0.0}),
    "random_init": ("distill", BERT, {"init": ""}),
}
ABLATIONS = ("no_ce", "no_mlm", "no_cos", "random_init")
LABELS = {
    "teacher": "teacher (6 x attention)",
    "distilbert": "(a) DistilBERT: every-other-layer init + triple loss",
    "scratch_mlm": "(b) scratch, MLM only",
    "hybrid_distilled": "(c) hybrid (RG-LRU, RG-LRU, attention), triple loss",
    "no_ce": "(a) without L_ce",
    "no_mlm": "(a) without L_mlm",
    "no_cos": "(a) without L_cos",
    "random_init": "(a) random init instead of every-other-layer",
}
# Downstream task (a character-level analogue of GLUE's CoLA acceptability task): is this 128-character
# speech opening real, or has CORRUPT_RATE of its letters been replaced by random letters? Speeches of at
# least MIN_CHARS characters; val from the masked-LM validation split (the file's last 10%, unseen by every
# model), train every TRAIN_STRIDE-th speech before it. A seeded coin labels each text (majority ~50%).
# (Speaker identification among 8 speakers stayed at chance, 0.13-0.17, after 80 fine-tuning steps: README.)
MIN_CHARS = 40
MAX_CHARS = 128
CORRUPT_RATE = 0.05
TRAIN_STRIDE = 3
CLF_TRAIN = RUNS / "corrupt_train.jsonl"
CLF_VAL = RUNS / "corrupt_val.jsonl"
FT = {"steps": 150, "batch_size": 16, "lr": 5e-4, "warmup_steps": 20, "weight_decay": 0.0}
LATENCY_ROUNDS, LATENCY_CALLS = 15, 10


def speeches(text: str) -> list[tuple[float, str]]:
    """(position in the file as a fraction, speech) in file order: the lines after a block's 'NAME:' line."""
    out, offset = [], 0
    for block in text.split("\n\n"):
        head, _, body = block.partition("\n")
        if re.fullmatch(r"[A-Z][A-Za-z' ]*:", head) and len(body) >= MIN_CHARS:
            out.append((offset / len(text), body[:MAX_CHARS]))
        offset += len(block) + 2
    return out


def corrupt(text: str, rng: random.Random) -> str:
    """Each letter replaced by a random lowercase letter with probability CORRUPT_RATE."""
    return "".join(
        rng.choice(string.ascii_lowercase) if c.isalpha() and rng.random() < CORRUPT_RATE else c for c in text
    )


def write_corruption_set() -> dict:
    """Write the train/val JSONL files; their sizes and the validation majority-class share."""
    rng = random.Random(0)
    pairs = speeches(CORPUS.read_text())
    train = [t for pos, t in pairs if pos < 0.9][::TRAIN_STRIDE]
    val = [t for pos, t in pairs if pos >= 0.9]
    RUNS.mkdir(parents=True, exist_ok=True)
    majority = 0.0
    for path, texts in ((CLF_TRAIN, train), (CLF_VAL, val)):
        labels = [rng.random() < 0.5 for _ in texts]
        rows = [
            {"text": corrupt(t, rng) if bad else t, "label": "corrupted" if bad else "real"}
            for t, bad in zip(texts, labels)
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        majority = max(sum(labels), len(labels) - sum(labels)) / len(labels)
    return {"train": len(train), "val": len(val), "val_majority": majority}


def prepare_teacher() -> None:
    from slm_jax.config import load_config
    from slm_jax.training.train import train

    print(write_corruption_set(), flush=True)
    cfg = load_config(HERE / "teacher.yaml")
    if not finished(TEACHER, cfg.train.steps):
        train(cfg, TEACHER, progress=False)


def student_dir(arm: str, seed: int) -> Path:
    return RUNS / f"{arm}_seed{seed}"


def student_config(arm: str, seed: int):
    """The Config of one student run and its trainer ("train" or "distill")."""
    from slm_jax.config import config_from_dict

    trainer, model, keys = ARMS[arm]
    raw = yaml.safe_load((HERE / "student.yaml").read_text())
    raw["model"].update(model)
    raw["train"].update(seed=seed, steps=STEPS)
    if trainer == "distill":
        raw["distill"].update(teacher=str(TEACHER), **keys)
    else:
        del raw["distill"]
    return config_from_dict(raw), trainer


def train_students(arms: tuple[str, ...]) -> None:
    from slm_jax.distill.train import distill
    from slm_jax.training.train import train

    for arm in arms:
        for seed in SEEDS:
            run_dir = student_dir(arm, seed)
            cfg, trainer = student_config(arm, seed)
            if finished(run_dir, cfg.train.steps):
                continue
            print(f"--- {run_dir.name}", flush=True)
            distill(cfg, run_dir=run_dir, progress=False) if trainer == "distill" else train(
                cfg, run_dir, progress=False
            )


def models(arms: tuple[str, ...]) -> list[tuple[str, int, Path]]:
    """(arm, seed, run directory) of the teacher and every student run of ``arms``; the teacher has one run."""
    return [("teacher", 0, TEACHER)] + [(arm, seed, student_dir(arm, seed)) for arm in arms for seed in SEEDS]


def finetune_dir(arm: str, seed: int) -> Path:
    return RUNS / f"clf_{arm}_seed{seed}"


def finetune_all(arms: tuple[str, ...]) -> None:
    """`slm finetune --task classify` on every finished model (teacher: fine-tuning seeds 0-2), then `slm eval`."""
    from slm_jax.config import load_config
    from slm_jax.finetune.classify import ClassifyOptions, evaluate_file, finetune_classify
    from slm_jax.finetune.train import FinetuneOptions

    teacher_steps = load_config(HERE / "teacher.yaml").train.steps
    jobs = [("teacher", s, TEACHER) for s in SEEDS] + models(arms)[1:]
    for arm, seed, run_dir in jobs:
        out = finetune_dir(arm, seed)
        if not finished(run_dir, teacher_steps if arm == "teacher" else STEPS) or (out / "eval.json").is_file():
            continue
        print(f"--- {out.name}", flush=True)
        if not (out / "finetune.json").is_file():
            finetune_classify(run_dir, CLF_TRAIN, out, FinetuneOptions(seed=seed, **FT), ClassifyOptions())
        (out / "eval.json").write_text(json.dumps(evaluate_file(out, CLF_VAL), indent=1))


def mlm_eval(run_dir: Path, n_batches: int = 50) -> dict:
    """`slm eval` on an encoder run, with the teacher's masks for every model: masked-token accuracy and loss."""
    from slm_jax.config import config_from_dict
    from slm_jax.data.pipeline import eval_batches
    from slm_jax.data.run_tokens import run_text_tokens
    from slm_jax.eval.perplexity import evaluate
    from slm_jax.inference.run import load_run
    from slm_jax.rundir.checkpoint import read_run_config
    from slm_jax.training.mlm import mask_batch
    from slm_jax.training.step import make_eval_step

    run = load_run(run_dir)
    tc = config_from_dict(read_run_config(TEACHER)).train  # seed 0: the same masked positions for every model
    tokens = run_text_tokens(run.cfg, run.tokenizer, None, "val")
    batches = [mask_batch(b, tc, run.cfg.model.vocab_size) for b in eval_batches(tokens, 16, tc.seq_len, n_batches)]
    result = evaluate(jax.jit(make_eval_step(run.model)), run.params, batches)
    return {"mlm_accuracy": result["val_accuracy"], "mlm_loss": result["val_loss"]}


def latency(run_dirs: dict[str, Path]) -> dict[str, float]:
    """Median ms of one jitted forward pass (batch 1, 128 tokens) per model, A B A B interleaved in this process."""
    from slm_jax.inference.run import load_run

    fns = {}
    tokens = jax.numpy.asarray(np.random.default_rng(0).integers(0, 65, (1, 128)), jax.numpy.int32)
    for name, run_dir in run_dirs.items():
        run = load_run(run_dir)
        fn = jax.jit(run.model.apply)
        jax.block_until_ready(fn(run.params, tokens))
        fns[name] = (fn, run.params)
    times = defaultdict(list)
    for _ in range(LATENCY_ROUNDS):
        for name, (fn, params) in fns.items():
            t0 = time.perf_counter()
            for _ in range(LATENCY_CALLS):
                jax.block_until_ready(fn(params, tokens))
            times[name].append((time.perf_counter() - t0) / LATENCY_CALLS * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def n_params(run_dir: Path) -> int:
    from slm_jax.inference.run import load_run

    return sum(x.size for x in jax.tree.leaves(load_run(run_dir).params))


def report(arms: tuple[str, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tuned = lambda arm, seed: (finetune_dir(arm, seed) / "eval.json").is_file()
    # the ablation arms are scored by MLM accuracy only (their fine-tunes did not fit the compute budget)
    done = [(a, s, d) for a, s, d in models(arms) if tuned(a, s) or (a in ABLATIONS and finished(d, STEPS))]
    done += [("teacher", s, TEACHER) for s in SEEDS[1:] if (finetune_dir("teacher", s) / "eval.json").is_file()]
    # latency depends only on the architecture: the teacher, a 3-layer bert_like and a 3-layer hybrid student
    by_arch = {"teacher": TEACHER}
    by_arch |= {ARMS[arm][1]["preset"]: d for arm, seed, d in done if arm != "teacher" and seed == 0}
    ms = latency(by_arch)
    print({"latency_ms": ms}, flush=True)
    rows, mlm_cache = [], {}
    for arm, seed, run_dir in done:
        if run_dir not in mlm_cache:
            mlm_cache[run_dir] = mlm_eval(run_dir) | {"params": n_params(run_dir)}
        clf = json.loads((finetune_dir(arm, seed) / "eval.json").read_text()) if tuned(arm, seed) else {}
        arch = "teacher" if arm == "teacher" else ARMS[arm][1]["preset"]
        rows.append(
            {
                "model": arm,
                "seed": seed,
                "params": mlm_cache[run_dir]["params"],
                "mlm_accuracy": round(mlm_cache[run_dir]["mlm_accuracy"], 4),
                "mlm_loss": round(mlm_cache[run_dir]["mlm_loss"], 4),
                "clf_accuracy": round(clf["accuracy"], 4) if clf else None,
                "clf_macro_f1": round(clf["macro_f1"], 4) if clf else None,
                "latency_ms": round(ms[arch], 3),
            }
        )
    rows.sort(key=lambda r: (list(LABELS).index(r["model"]), r["seed"]))
    with open(HERE / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def values(model, key):
        return [r[key] for r in rows if r["model"] == model and r[key] is not None]

    def pretrained(model, key):  # one value per pretraining run: the teacher's three fine-tunes share one
        return values(model, key)[:1] if model == "teacher" else values(model, key)

    val_labels = Counter(json.loads(line)["label"] for line in CLF_VAL.open())
    n_val, majority = sum(val_labels.values()), max(val_labels.values()) / sum(val_labels.values())
    teacher_acc = statistics.mean(values("teacher", "clf_accuracy") or [float("nan")])  # nan until it is fine-tuned
    lines = [
        "# distilbert",
        "",
        f"Students: {STEPS} steps of 16 x 128 chars ({STEPS * TOKENS_PER_STEP:,} tokens). MLM accuracy: masked-token "
        "accuracy on 50 validation batches of 16 x 128 with the same masks for every model. Speaker classification: "
        f"real or {CORRUPT_RATE:.0%} of letters replaced, {n_val} validation speeches (majority class {majority:.3f}), "
        "full fine-tune of "
        f"{FT['steps']} steps of {FT['batch_size']} (lr {FT['lr']}). Mean +- sample std over seeds {SEEDS} "
        "(the teacher: one pretraining run, fine-tuning seeds 0-2). Latency: median ms of a jitted forward pass at "
        "batch 1 x 128 tokens, models interleaved in one process on 2 shared CPU cores.",
        "",
        "| model | params | MLM accuracy | corruption accuracy | of teacher | macro-F1 | latency ms | of teacher |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in LABELS:
        if not values(model, "mlm_accuracy"):
            continue
        acc = values(model, "clf_accuracy")
        lat = values(model, "latency_ms")[0]
        clf_cells = (
            f"{mean_std(acc, 3)} | {statistics.mean(acc) / teacher_acc:.0%} | "
            f"{mean_std(values(model, 'clf_macro_f1'), 3)}"
            if acc
            else "not run | | not run"
        )
        lines.append(
            f"| {LABELS[model]} | {values(model, 'params')[0] / 1e6:.2f}M | "
            f"{mean_std(pretrained(model, 'mlm_accuracy'), 3)} | {clf_cells} | {lat:.2f} | {lat / ms['teacher']:.0%} |"
        )
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.5))
    for model in LABELS:
        curves = [val_curve(d, "val_accuracy") for m, _, d in models(arms) if m == model and d.is_dir()]
        curves = [c for c in curves if c]
        if not curves or model == "teacher":
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        ax0.plot(steps, [statistics.mean(c[s] for c in curves) for s in steps], marker="o", label=LABELS[model])
    teacher_curve = val_curve(TEACHER, "val_accuracy")
    ax0.axhline(teacher_curve[max(teacher_curve)], color="k", ls=":", label="teacher (end of training)")
    ax0.set_xlabel("student step (16 x 128 chars)")
    ax0.set_ylabel("masked-token val accuracy (run's own eval, mean of seeds)")
    ax0.legend(fontsize=7)
    ax0.grid(alpha=0.3)
    names = [m for m in LABELS if values(m, "clf_accuracy")]
    means = [statistics.mean(values(m, "clf_accuracy")) for m in names]
    stds = [statistics.stdev(values(m, "clf_accuracy")) if len(values(m, "clf_accuracy")) > 1 else 0 for m in names]
    ax1.barh(range(len(names)), means, xerr=stds, color="tab:blue", alpha=0.7)
    ax1.axvline(majority, color="tab:red", ls=":", label="majority class")
    ax1.set_yticks(range(len(names)), [LABELS[m] for m in names], fontsize=7)
    ax1.invert_yaxis()
    ax1.set_xlabel("corruption-detection accuracy (mean +- std of 3 seeds)")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(HERE / "plot.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["all", "teacher", "students", "finetune", "report"], default="all")
    parser.add_argument("--arm", choices=list(ARMS), action="append", help="only these student arms (repeatable)")
    args = parser.parse_args()
    os.chdir(ROOT)
    use_compile_cache()
    arms = tuple(args.arm or ARMS)
    if args.stage in ("all", "teacher"):
        prepare_teacher()
    if args.stage == "all":  # the three students of the question first, fine-tuned, then the ablations
        train_students(arms[:3])  # the main result is written before the ablations run
        finetune_all(arms[:3])
        report(arms[:3])
        train_students(arms)  # the ablations: MLM accuracy only
        report(arms)
    if args.stage == "students":
        train_students(arms)
    if args.stage == "finetune":
        finetune_all(arms)
    if args.stage == "report":
        report(arms)


if __name__ == "__main__":
    main()
