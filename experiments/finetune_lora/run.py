"""LoRA vs full fine-tuning of a Shakespeare char transformer on a task it cannot know.

    python experiments/finetune_lora/run.py [--task class|upper] \\
        [--base experiments/finetune_lora/runs/base] [--steps 300]

Tasks (built here, written as prompt/completion JSONL): the prompt is a random lowercase
"word" of 3-6 letters and a colon. ``class``: the completion is a made-up label of the
word's first letter (a-f north, g-m east, n-s south, t-z west) and a newline, e.g. ``qtrm:``
-> ``south\\n``. ``upper``: the completion is the word in capitals, ``qtrm:`` -> ``QTRM\\n``
(copy every letter and map it to its capital). Words are random letter strings; train and
evaluation words are disjoint.

Trains the base (experiments/finetune_lora/base.yaml) if it is missing, then fine-tunes it
in full and with LoRA at a few ranks, and prints one JSON line per method and a markdown
table: exact-match accuracy of the greedy completion before and after, trainable parameters.
The LoRA run at the default rank is then merged (``slm finetune merge``) and the merged run's
logits are compared with base + adapters.
"""

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from slm_jax.cli import main as slm
from slm_jax.finetune.lora import DEFAULT_TARGETS, LoraSpec, apply_unmerged, merge
from slm_jax.finetune.train import FinetuneOptions, finetune, load_adapters
from slm_jax.inference.run import load_run

HERE = Path(__file__).parent


LABELS = {
    **dict.fromkeys("abcdef", "north"),
    **dict.fromkeys("ghijklm", "east"),
    **dict.fromkeys("nopqrs", "south"),
    **dict.fromkeys("tuvwxyz", "west"),
}


def write_task(path: Path, words: list[str], task: str) -> Path:
    completion = (lambda w: LABELS[w[0]]) if task == "class" else str.upper
    with open(path, "w") as f:
        for w in words:
            f.write(json.dumps({"prompt": w + ":", "completion": completion(w) + "\n"}) + "\n")
    return path


def random_words(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(3, 7))))
    return sorted(words)


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=["class", "upper"], default="class")
    ap.add_argument("--base", default=str(HERE / "runs" / "base"))
    ap.add_argument("--out", default=str(HERE / "runs"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train-examples", type=int, default=4000)
    ap.add_argument("--eval-examples", type=int, default=500)
    ap.add_argument("--ranks", default="1,4,8")
    args = ap.parse_args()
    base, out = Path(args.base), Path(args.out) / args.task
    out.mkdir(parents=True, exist_ok=True)
    if not (base / "checkpoints").exists():
        assert slm(["train", str(HERE / "base.yaml"), "--run-dir", str(base), "--no-progress"]) == 0
    words = random_words(args.train_examples + args.eval_examples, seed=0)
    perm = np.random.default_rng(1).permutation(len(words))
    train = write_task(out / "train.jsonl", [words[i] for i in perm[: args.train_examples]], args.task)
    val = write_task(out / "eval.jsonl", [words[i] for i in perm[args.train_examples :]], args.task)

    methods = [("full", None, 3e-4)] + [
        (f"lora r={r}", LoraSpec(rank=r, alpha=2.0 * r, targets=DEFAULT_TARGETS), 3e-3)
        for r in (int(x) for x in args.ranks.split(","))
    ]
    rows = []
    for name, spec, lr in methods:
        target = out / name.replace(" ", "_").replace("=", "")
        if (target / "finetune.json").is_file():
            summary = json.loads((target / "finetune.json").read_text())
        else:
            summary = finetune(
                base,
                train,
                target,
                FinetuneOptions(spec, args.steps, 32, lr),
                eval_data=val,
                log=lambda line: print(line, file=sys.stderr),
            )
        row = {
            "method": name,
            "lr": lr,
            "trainable_params": summary["trainable_params"],
            "trainable_fraction": summary["trainable_fraction"],
            "before": summary["before"]["exact_match"],
            "after": summary["after"]["exact_match"],
            "train_seconds": round(summary["train_seconds"], 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    # The merged run (written to disk by `slm finetune merge`) vs base + adapters (rank 4): as the
    # fine-tuning step computed it (merge in memory) and by the definition x W + (alpha / r) (x A) B.
    lora_dir = out / "lora_r4"
    merged_dir = out / "lora_r4_merged"
    if not (merged_dir / "checkpoints").exists():
        assert quiet(slm, ["finetune", "merge", str(lora_dir), "--out", str(merged_dir)]) == 0
    run, merged = load_run(base), load_run(merged_dir)
    adapters, spec, _ = load_adapters(lora_dir)
    tokens = jnp.asarray(np.stack([run.tokenizer.encode(w + ":" + w.upper()) for w in words[:200] if len(w) == 5]))
    got = merged.model.apply(merged.params, tokens)[0]
    as_trained = run.model.apply(merge(run.params, adapters, spec), tokens)[0]
    definition = apply_unmerged(run.model, run.params, adapters, spec, tokens)
    print(
        json.dumps(
            {
                "merged_run_vs_merge_in_memory_max_abs_diff": float(jnp.max(jnp.abs(got - as_trained))),
                "merged_run_vs_unmerged_definition_max_abs_diff": float(jnp.max(jnp.abs(got - definition))),
                "max_abs_logit": float(jnp.max(jnp.abs(definition))),
            }
        )
    )

    full = rows[0]["after"]
    print(
        "\n| method | lr | trainable params | share of base | "
        "exact match before | after | within 10% of full | train s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ok = "" if r["method"] == "full" else ("yes" if r["after"] >= 0.9 * full else "no")
        print(
            f"| {r['method']} | {r['lr']:g} | {r['trainable_params']:,} | {100 * r['trainable_fraction']:.2f}% | "
            f"{r['before']:.3f} | {r['after']:.3f} | {ok} | {r['train_seconds']} |"
        )
