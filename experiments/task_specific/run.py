"""Small task-specific models against a larger general model prompted without fine-tuning, on two Shakespeare tasks.

    python experiments/task_specific/run.py [--data ../shared/data/tinyshakespeare.txt]   # everything, skips done work
    python experiments/task_specific/run.py --stage data|pretrain|finetune|prompt|latency|report

Tasks (tasks.py, written to runs/data/*.jsonl): three-way sentiment of 100-character passages
labelled by VADER's lexicon, and "Who speaks next?" after two speeches, scored by exact match.
Models: a 4.8M general transformer trained on the corpus's train blocks and only prompted (fewshot.py), and three
0.8M task-specific models, each fine-tuned with three seeds: (a) a full fine-tune of a small base
trained on the same corpus, (b) LoRA of that base, (c) the base's twin distilled from the general
model (`slm distill`), then fully fine-tuned. Classifiers are scored with `slm eval`'s function; QA
answers by greedy exact match (teacher-forced argmax, checked against `slm eval`'s real greedy
decoding on a subset). Writes results.csv, results.md and plot.png next to this file.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from pathlib import Path

import fewshot
import numpy as np
import tasks

from slm_jax.errors import ConfigError
from slm_jax.sweep.experiment import finished, mean_std, use_compile_cache

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
DATA = RUNS / "data"
PRETRAIN_TEXT = DATA / "pretrain.txt"  # the corpus without its val and test blocks (tasks.pretraining_text)
GENERAL, SMALL, DISTILLED = RUNS / "general", RUNS / "small", RUNS / "small_distilled"
SEEDS = (0, 1, 2)
TASKS = ("sentiment", "next_speaker")
# Fine-tuning: batches of 16 examples, AdamW with 10% warmup steps and a cosine to lr / 10, no weight decay;
# learning rates as in experiments/finetune_lora and experiments/distilbert (not tuned here). QA gets 4x the
# steps: copying a name out of the prompt emerges late (a full fine-tune probe: exact match 0.004 after 150
# steps, 0.318 after 600 at lr 1e-3), while sentiment has plateaued by 150.
FT = {"batch_size": 16, "weight_decay": 0.0}
FT_STEPS = {"sentiment": 150, "next_speaker": 600}
ARMS = {  # arm -> (pretrained run, LoRA rank or 0 for a full fine-tune, learning rate)
    "full": (SMALL, 0, 5e-4),
    "lora": (SMALL, 8, 3e-3),
    "distilled": (DISTILLED, 0, 5e-4),
}
QA_DEMOS = 2  # demonstrations in the general model's QA prompt (three would not fit its 512-character context)
LATENCY_EXAMPLES = 30
METRICS = ("accuracy", "macro_f1", "exact_match")
NAMES = {
    "general_fewshot": "general 4.8M, 3-shot (one per label)",
    "general_fewshot_calibrated": "general 4.8M, 3-shot, calibrated",
    "general_fewshot_qa": f"general 4.8M, {QA_DEMOS}-shot Q/A prompt",
    "general_zeroshot_corpus": "general 4.8M, 0-shot in the corpus's layout",
    "full": "(a) small 0.8M, full fine-tune",
    "lora": "(b) small 0.8M, LoRA r=8",
    "distilled": "(c) small 0.8M distilled from general, full fine-tune",
    "chance": "chance (balanced classes)",
    "two_back": "rule: the speaker two speeches back",
}


def data_file(task: str, split: str) -> Path:
    return DATA / f"{task}_{split}.jsonl"


def read_rows(task: str, split: str) -> list[dict]:
    return [json.loads(line) for line in data_file(task, split).read_text().splitlines()]


def vader_score():
    """VADER's compound score of a text (the lexicon ships inside the vaderSentiment package)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise ConfigError(
            "The sentiment labels need VADER's lexicon; install it: pip install vaderSentiment."
        ) from None
    analyzer = SentimentIntensityAnalyzer()
    return lambda text: analyzer.polarity_scores(text)["compound"]


def write_data(corpus: Path) -> dict:
    """Both tasks' train/val/test JSONL files and the pretraining text (the train blocks); the size of each."""
    text = corpus.read_text()
    DATA.mkdir(parents=True, exist_ok=True)
    PRETRAIN_TEXT.write_text(tasks.pretraining_text(text))
    sizes = {"pretrain_chars": len(PRETRAIN_TEXT.read_text())}
    for task, splits in (
        ("sentiment", tasks.sentiment_task(text, vader_score())),
        ("next_speaker", tasks.next_speaker_task(text)),
    ):
        for split, rows in splits.items():
            data_file(task, split).write_text("".join(json.dumps(r) + "\n" for r in rows))
            sizes[f"{task}_{split}"] = len(rows)
    return sizes


def pretrain() -> None:
    """The general model, the small base and its distilled twin (one run each), on the train blocks only."""
    from slm_jax.config import load_config, replace
    from slm_jax.distill.train import distill
    from slm_jax.training.train import train

    general = replace(load_config(HERE / "general.yaml"), **{"data.path": str(PRETRAIN_TEXT)})
    small = replace(load_config(HERE / "small.yaml"), **{"data.path": str(PRETRAIN_TEXT)})
    if not finished(GENERAL, general.train.steps):
        timed("pretrain general", lambda: train(general, GENERAL, progress=False))
    if not finished(SMALL, small.train.steps):
        timed("pretrain small", lambda: train(small, SMALL, progress=False))
    if not finished(DISTILLED, small.train.steps):
        timed("distill small", lambda: distill(small, GENERAL, DISTILLED, progress=False))


def finetune_dir(task: str, arm: str, seed: int) -> Path:
    return RUNS / "finetune" / f"{task}_{arm}_seed{seed}"


def finetune_all() -> None:
    """Every (task, arm, seed) fine-tune that has no eval.json yet."""
    for task in TASKS:
        for arm in ARMS:
            for seed in SEEDS:
                if not (finetune_dir(task, arm, seed) / "eval.json").is_file():
                    finetune_one(task, arm, seed)


def finetune_one(task: str, arm: str, seed: int) -> None:
    """Fine-tune one arm on one task with one seed (unless done), then score it on the test split (eval.json)."""
    from slm_jax.finetune.classify import ClassifyOptions, evaluate_file, finetune_classify
    from slm_jax.finetune.lora import LoraSpec
    from slm_jax.finetune.train import FinetuneOptions, finetune, merge_adapters
    from slm_jax.inference.run import load_run

    out, (base, rank, lr) = finetune_dir(task, arm, seed), ARMS[arm]
    steps = {"steps": FT_STEPS[task], "warmup_steps": FT_STEPS[task] // 10}
    print(f"--- {out.name}", flush=True)
    lora = LoraSpec(rank=rank, alpha=2.0 * rank) if rank else None
    train, test = data_file(task, "train"), data_file(task, "test")
    if task == "sentiment":
        if not (out / "finetune.json").is_file():
            opts = FinetuneOptions(lora, lr=lr, seed=seed, **steps, **FT)
            timed(out.name, lambda: finetune_classify(base, train, out, opts, ClassifyOptions()))
        result = evaluate_file(out, test)  # `slm eval OUT --data test.jsonl`
    else:
        if not (out / "finetune.json").is_file():
            opts = FinetuneOptions(lora, lr=lr, seed=seed, template="qa", **steps, **FT)
            timed(out.name, lambda: finetune(base, train, out, opts))
        model_dir = out
        if lora is not None:  # the adapters folded into the base (`slm finetune merge`): the model that is served
            model_dir = out.with_name(out.name + "_merged")
            if not model_dir.is_dir():
                merge_adapters(out, model_dir)
        hits = fewshot.qa_exact_match(load_run(model_dir), "", read_rows(task, "test"))
        result = {"exact_match": float(hits.mean()), "examples": len(hits)}
    summary = json.loads((out / "finetune.json").read_text())
    result |= {k: summary[k] for k in ("trainable_params", "base_params", "train_seconds")}
    (out / "eval.json").write_text(json.dumps(result, indent=1))


def prompt_general() -> dict:
    """The general model's test scores without training, per demonstration seed (runs/prompted.json)."""
    from slm_jax.finetune.classify import scores
    from slm_jax.inference.run import load_run

    path = RUNS / "prompted.json"
    if path.is_file():
        return json.loads(path.read_text())
    run = load_run(GENERAL)
    sentiment_train, sentiment_test = read_rows("sentiment", "train"), read_rows("sentiment", "test")
    qa_train, qa_test = read_rows("next_speaker", "train"), read_rows("next_speaker", "test")
    gold = np.asarray([tasks.LABELS.index(r["label"]) for r in sentiment_test])
    out = {"general_fewshot": [], "general_fewshot_calibrated": [], "general_fewshot_qa": []}
    for seed in SEEDS:
        demos = fewshot.sentiment_demos(sentiment_train, tasks.LABELS, seed)
        pred = fewshot.classify_fewshot(run, demos, [r["text"] for r in sentiment_test], tasks.LABELS)
        out["general_fewshot"].append(scores(pred["raw"], gold, len(tasks.LABELS)) | {"seed": seed})
        out["general_fewshot_calibrated"].append(scores(pred["calibrated"], gold, len(tasks.LABELS)) | {"seed": seed})
        hits = fewshot.qa_exact_match(run, fewshot.qa_demos(qa_train, QA_DEMOS, seed), qa_test)
        out["general_fewshot_qa"].append({"exact_match": float(hits.mean()), "seed": seed})
        print(json.dumps({k: v[-1] for k, v in out.items()}), flush=True)
    hits = fewshot.qa_exact_match(run, "", qa_test, layout="corpus")
    out["general_zeroshot_corpus"] = [{"exact_match": float(hits.mean()), "seed": 0}]
    out["two_back"] = [
        {"exact_match": float(np.mean([tasks.speaker_two_back(r["prompt"]) == r["completion"] for r in qa_test]))}
    ]
    path.write_text(json.dumps(out, indent=1))
    return out


def greedy_check(n: int = 200) -> dict:
    """Teacher-forced exact match vs `slm eval`'s greedy decoding on the first ``n`` QA test examples (check.json)."""
    from slm_jax.finetune.task_scores import score_task_file
    from slm_jax.inference.run import load_run

    path = RUNS / "check.json"
    if path.is_file():
        return json.loads(path.read_text())
    subset = RUNS / "data" / f"next_speaker_test_first{n}.jsonl"
    rows = read_rows("next_speaker", "test")[:n]
    subset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model_dir = finetune_dir("next_speaker", "full", 0)
    forced = float(fewshot.qa_exact_match(load_run(model_dir), "", rows).mean())
    greedy = score_task_file(model_dir, subset)["exact_match"]
    out = {"model": model_dir.name, "examples": n, "teacher_forced_em": forced, "slm_eval_greedy_em": greedy}
    path.write_text(json.dumps(out, indent=1))
    return out


def measure_latency() -> dict:
    """Median ms per test example at batch 1 for each architecture and way of answering (latency.json)."""
    import latency

    from slm_jax.finetune.classify import load_classifier
    from slm_jax.inference.run import load_run

    path = RUNS / "latency.json"
    if path.is_file():
        return json.loads(path.read_text())
    texts = [r["text"] for r in read_rows("sentiment", "test")[:LATENCY_EXAMPLES]]
    qa = [r["prompt"] for r in read_rows("next_speaker", "test")[:LATENCY_EXAMPLES]]
    general = load_run(GENERAL)
    demos = fewshot.sentiment_demos(read_rows("sentiment", "train"), tasks.LABELS, 0)
    qa_demos = fewshot.qa_demos(read_rows("next_speaker", "train"), QA_DEMOS, 0)
    qa_prompts = [fewshot.QA_TEMPLATE.format_prompt(p) for p in qa]
    small_qa = load_run(finetune_dir("next_speaker", "full", 0))
    out = {
        "sentiment_small": latency.classifier_ms(load_classifier(finetune_dir("sentiment", "full", 0)), texts),
        "sentiment_general": latency.scoring_ms(
            general, [demos + fewshot.sentiment_block(t) for t in texts], tasks.LABELS
        ),
        "next_speaker_small": latency.generation_ms(small_qa, qa_prompts, "\n"),
        "next_speaker_general_fewshot": latency.generation_ms(general, [qa_demos + p for p in qa_prompts], "\n"),
        "next_speaker_general_zeroshot": latency.generation_ms(general, [fewshot.corpus_layout(p)[0] for p in qa], ":"),
    }
    path.write_text(json.dumps(out, indent=1))
    return out


def timed(name: str, fn):
    """Run ``fn`` and add its wall-clock seconds to runs/timings.json."""
    t0 = time.perf_counter()
    result = fn()
    path = RUNS / "timings.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    record[name] = round(time.perf_counter() - t0, 1)
    path.write_text(json.dumps(record, indent=1))
    return result


def table_rows() -> list[dict]:
    """One row per (task, model, seed) with its parameters at inference, trained parameters, scores and latency."""
    from slm_jax.config import load_config
    from slm_jax.finetune.lora import count_params
    from slm_jax.inference.run import load_run

    prompted, ms = prompt_general(), measure_latency()
    n_general = count_params(load_run(GENERAL).params)
    head = len(tasks.LABELS) * (load_config(HERE / "small.yaml").model.d_model + 1)  # the classifier's kernel + bias
    latency_key = {
        "general_fewshot": "sentiment_general",
        "general_fewshot_calibrated": "sentiment_general",
        "general_fewshot_qa": "next_speaker_general_fewshot",
        "general_zeroshot_corpus": "next_speaker_general_zeroshot",
    }
    baselines = {"sentiment": "chance", "next_speaker": "two_back"}
    rows = []
    for task in TASKS:
        for model in NAMES:
            if model in ARMS:  # LoRA adapters are merged into the base for serving: no extra parameter
                for seed in SEEDS:
                    r = json.loads((finetune_dir(task, model, seed) / "eval.json").read_text())
                    params = r["base_params"] + (head if task == "sentiment" else 0)
                    rows.append(row(task, model, seed, params, r["trainable_params"], r, ms[f"{task}_small"]))
            elif model in latency_key and latency_key[model].startswith(task):
                for r in prompted[model]:
                    rows.append(row(task, model, r["seed"], n_general, 0, r, ms[latency_key[model]]))
            elif baselines[task] == model:
                r = prompted["two_back"][0] if model == "two_back" else {"accuracy": 1 / 3, "macro_f1": 1 / 3}
                rows.append(row(task, model, 0, 0, 0, r, None))
    return rows


def row(task: str, model: str, seed: int, params: int, trainable: int, scores: dict, latency_ms) -> dict:
    return {
        "task": task,
        "model": model,
        "seed": seed,
        "params": params,
        "trainable_params": trainable,
        "accuracy": scores.get("accuracy"),
        "macro_f1": scores.get("macro_f1"),
        "exact_match": scores.get("exact_match"),
        "latency_ms": None if latency_ms is None else round(latency_ms, 3),
    }


def report() -> None:
    rows = table_rows()
    with open(HERE / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    check, sizes = greedy_check(), json.loads((RUNS / "sizes.json").read_text())
    lines = [
        "# task_specific",
        "",
        f"Test sets: sentiment {sizes['sentiment_test']} passages (balanced, chance 1/3), next speaker "
        f"{sizes['next_speaker_test']} questions, both from every tenth {tasks.SPLIT_CHUNK:,}-character chunk "
        "of the file (tasks.py): text no model was trained on. Fine-tuning: "
        f"{FT_STEPS['sentiment']} steps for sentiment, {FT_STEPS['next_speaker']} for QA, 16 examples each. "
        f"Mean +- sample std over seeds {SEEDS} (fine-tuning seeds; for the prompted model, the draw of "
        "demonstrations). Latency: median ms per test example at batch 1 on 2 shared CPU cores "
        "(the three small models share one architecture and one measurement). "
        f"Exact match is teacher-forced greedy; `slm eval`'s real greedy decoding on the first {check['examples']} "
        f"test questions ({check['model']}): {check['slm_eval_greedy_em']:.3f} vs {check['teacher_forced_em']:.3f}.",
        "",
        "| task | model | params | trained params | accuracy | macro-F1 | exact match | latency ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        for model in NAMES:
            group = [r for r in rows if r["task"] == task and r["model"] == model]
            if group:
                lines.append(markdown_row(task, model, group))
    (HERE / "results.md").write_text("\n".join(lines).replace(" +- nan", "") + "\n")
    print("\n".join(lines))
    plot(rows)


def markdown_row(task: str, model: str, group: list[dict]) -> str:
    """One line of results.md: mean +- std over the group's seeds (a baseline has no parameters or latency)."""
    first = group[0]
    cells = [mean_std([r[k] for r in group], 3) if first[k] is not None else "" for k in METRICS]
    params = f"{first['params'] / 1e6:.2f}M | {first['trainable_params']:,}" if first["params"] else " | "
    ms = "" if first["latency_ms"] is None else f"{first['latency_ms']:.1f}"
    return f"| {task} | {NAMES[model]} | {params} | {' | '.join(cells)} | {ms} |"


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, task, metric in zip(axes, TASKS, ("accuracy", "exact_match")):
        for model in NAMES:
            group = [r for r in rows if r["task"] == task and r["model"] == model]
            if not group or group[0][metric] is None:
                continue
            values = [r[metric] for r in group]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            if group[0]["params"]:
                mean, label = statistics.mean(values), NAMES[model]
                ax.errorbar(group[0]["params"], mean, yerr=spread, fmt="o", capsize=3, label=label)
            else:
                ax.axhline(values[0], color="gray", ls=":", label=NAMES[model])
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel(f"test {metric.replace('_', ' ')} (mean +- std of 3 seeds)")
        ax.set_title(task)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE / "plot.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default="../shared/data/tinyshakespeare.txt", help="Tiny Shakespeare (relative to the repo root)"
    )
    parser.add_argument(
        "--stage", choices=["all", "data", "pretrain", "finetune", "prompt", "latency", "report"], default="all"
    )
    args = parser.parse_args()
    os.chdir(ROOT)
    corpus = Path(args.data)
    if not corpus.is_file():
        raise ConfigError(f"{corpus} does not exist; pass the Tiny Shakespeare text with --data.")
    use_compile_cache()
    if args.stage in ("all", "data"):
        sizes = write_data(corpus)
        (RUNS / "sizes.json").write_text(json.dumps(sizes, indent=1))
        print(sizes, flush=True)
    if args.stage in ("all", "pretrain"):
        pretrain()
    if args.stage in ("all", "finetune"):
        finetune_all()
    if args.stage in ("all", "prompt"):
        timed("prompt general", prompt_general)
    if args.stage in ("all", "latency"):
        measure_latency()
    if args.stage in ("all", "report"):
        report()


if __name__ == "__main__":
    main()
