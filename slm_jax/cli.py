"""The ``slm`` command: train, eval, generate, sweep, data prepare, convert, quantize, prune, export, config show.

Mistakes a user can fix (``SlmError``, a bad command line, a full or read-only disk) print one
line and exit with status 2, no traceback. A run stopped by SIGINT / SIGTERM exits with 130 / 143
after its checkpoint (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from slm_jax.errors import SlmError, write_errno, write_failure


class UsageError(SlmError):
    """A command line argparse cannot parse."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``UsageError``) instead of usage text and ``exit(2)``."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}; run `{self.prog} --help` for usage.")


def _positive_int(text: str) -> int:
    """argparse type for counts and step numbers."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML config file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.steps=100 (repeatable)",
    )


def cmd_train(args) -> int:
    from slm_jax.config import load_config
    from slm_jax.training.distributed import initialize
    from slm_jax.training.loop import exit_code
    from slm_jax.training.train import train

    initialize()  # joins jax.distributed when launched as one of several processes (docs/scaling.md)

    cfg = load_config(args.config, args.overrides)
    if cfg.model.quant.bits:
        from slm_jax.errors import ConfigError

        raise ConfigError(
            "This config has model.quant.bits set, and a quantized run cannot be trained; "
            "train the float config and run `slm quantize` afterwards."
        )
    summary = train(cfg, args.run_dir, until_step=args.until_step, progress=not args.no_progress)
    print(json.dumps(summary, indent=1))
    return exit_code(summary)


def _harness_eval(args, run) -> dict:
    """``slm eval --tasks``: lm-evaluation-harness tasks on a loaded causal run (slm_jax/eval/harness.py)."""
    from functools import partial

    from slm_jax.errors import ConfigError, DataError
    from slm_jax.inference.generate import generate
    from slm_jax.inference.run import missing_tokenizer

    try:
        from slm_jax.eval.harness import SlmLM, evaluate_tasks
    except ImportError as e:
        if not (e.name or "").startswith("lm_eval"):
            raise
        raise ConfigError(
            "`slm eval --tasks` needs lm-evaluation-harness; install the eval extra: pip install -e '.[eval]'."
        ) from None
    if not run.cfg.model.causal:
        raise ConfigError(
            f"{args.run_dir} is an encoder (model.causal=false), which harness tasks cannot score; drop --tasks."
        )
    if run.tokenizer is None:
        raise DataError(missing_tokenizer(args.run_dir, run.cfg))
    greedy = partial(generate, run.model, run.params, temperature=0.0, chunk=16)
    batch_size = run.cfg.eval.batch_size or run.cfg.train.batch_size
    lm = SlmLM(run.model, run.params, run.tokenizer, args.context or run.cfg.train.seq_len, greedy, batch_size)
    tasks = [t for t in args.tasks.split(",") if t]
    result = evaluate_tasks(lm, tasks, args.limit, args.num_fewshot, args.include_path)
    return {"run_dir": str(args.run_dir), "step": run.step, **result}


def _score_tokens(args, run, eval_fn, tokens, docs, unit: str) -> dict:
    """``slm eval``'s metrics on one token stream (with ``docs``, its document starts: packed windows):
    --stride/--context sliding windows or --batches spread windows; an encoder's masked-LM and pseudo-perplexity."""
    from slm_jax.data.pipeline import eval_batches
    from slm_jax.errors import DataError
    from slm_jax.eval.perplexity import evaluate

    tc = run.cfg.train
    if args.stride or args.context:  # sliding windows over the whole split, each token scored once
        from slm_jax.errors import ConfigError
        from slm_jax.eval.sliding import sliding_batches

        if not run.cfg.model.causal:
            raise ConfigError(f"{args.run_dir} is an encoder (model.causal=false); drop --stride and --context.")
        context = args.context or tc.seq_len
        batches = sliding_batches(tokens, run.cfg.eval.batch_size or tc.batch_size, context, args.stride or context)
    else:
        batches = eval_batches(tokens, run.cfg.eval.batch_size or tc.batch_size, tc.seq_len, args.batches, docs)
    pseudo = {}
    if not run.cfg.model.causal:  # an encoder: accuracy and loss on masked tokens (training/mlm.py), pseudo-perplexity
        import numpy as np

        from slm_jax.eval.pseudo_perplexity import pseudo_perplexity
        from slm_jax.training.mlm import mask_batch

        if args.pppl_seqs < 0:
            raise DataError(f"--pppl-seqs must be 0 (no pseudo-perplexity) or more, got {args.pppl_seqs}.")
        if args.pppl_seqs:  # seq_len forward passes per sequence: a few windows spread over the validation batches
            windows = np.concatenate(batches)[:, : tc.seq_len]
            windows = windows[:: max(1, len(windows) // args.pppl_seqs)][: args.pppl_seqs]
            pseudo = pseudo_perplexity(run.model, run.params, windows, unit=unit)
        batches = [mask_batch(b, tc, run.cfg.model.vocab_size) for b in batches]
    return evaluate(eval_fn, run.params, batches, unit) | pseudo


def cmd_eval(args) -> None:
    import jax

    from slm_jax.data.run_tokens import run_text_tokens
    from slm_jax.errors import DataError
    from slm_jax.eval.perplexity import evaluate
    from slm_jax.finetune.classify import evaluate_file, is_classifier
    from slm_jax.finetune.task_scores import is_task_file, score_task_file
    from slm_jax.inference.run import load_run
    from slm_jax.training.step import make_eval_step

    if is_classifier(args.run_dir):  # `slm finetune --task classify` output: accuracy and macro-F1
        if not args.data:
            raise DataError(f"{args.run_dir} is a classifier; pass labelled JSONL with --data.")
        print(json.dumps(evaluate_file(args.run_dir, args.data), indent=1))
        return
    if args.data and is_task_file(args.data):  # prompt/completion JSONL: exact match, chrF, completion loss
        print(json.dumps(score_task_file(args.run_dir, args.data, args.best, args.step), indent=1))
        return
    run = load_run(args.run_dir, best=args.best, step=args.step)
    if args.tasks:  # lm-evaluation-harness tasks
        print(json.dumps(_harness_eval(args, run), indent=1, default=str))
        return
    tc = run.cfg.train
    eval_fn = jax.jit(make_eval_step(run.model))
    if run.cfg.data.task.name:  # a generated task: its validation sets at every eval length
        from slm_jax.data.task_data import load_task, val_sets

        if args.data:
            raise DataError(
                f"{args.run_dir} was trained on the generated task {run.cfg.data.task.name!r}, which has no text; "
                "drop --data."
            )
        result = {}
        for suffix, batches in val_sets(
            load_task(run.cfg), run.cfg.eval.batch_size or tc.batch_size, args.batches
        ).items():
            result.update({k + suffix: v for k, v in evaluate(eval_fn, run.params, batches).items()})
        print(json.dumps({"run_dir": str(args.run_dir), "step": run.step, **result}, indent=1))
        return
    unit = (
        {"char": "char", "byte": "byte"}.get(run.tokenizer.to_dict().get("type"), "token") if run.tokenizer else "token"
    )
    if run.cfg.data.mixture and not args.data:  # each source's val split, then their weighted mixture
        from slm_jax.data.source import load_sources
        from slm_jax.eval.perplexity import mixture_metrics

        sources = load_sources(run.cfg.data)
        splits = {f"/{name}": (d.val, d.val_docs) for name, d in sources.items()}
        weights = dict(zip(splits, run.cfg.data.mixture.values()))
    else:  # a packed run's own split is scored as it trained: documents kept apart
        from slm_jax.data.source import load_dataset

        docs = load_dataset(run.cfg.data).val_docs if run.cfg.data.pack and not args.data else None
        splits, weights = {"": (run_text_tokens(run.cfg, run.tokenizer, args.data, "val"), docs)}, {}
    result = {}
    for suffix, (tokens, docs) in splits.items():
        result |= {k + suffix: v for k, v in _score_tokens(args, run, eval_fn, tokens, docs, unit).items()}
    if weights:
        result |= mixture_metrics(result, weights, unit)
    objective = {} if run.cfg.model.causal else {"objective": "mlm"}
    print(json.dumps({"run_dir": str(args.run_dir), "step": run.step, **objective, **result}, indent=1))


def cmd_generate(args) -> None:
    import numpy as np

    from slm_jax.errors import DataError
    from slm_jax.finetune.template import PLAIN, run_template, until_end
    from slm_jax.inference.generate import generate
    from slm_jax.inference.run import load_run, missing_tokenizer

    run = load_run(args.run_dir, best=args.best, step=args.step)
    if not run.cfg.model.causal:
        from slm_jax.errors import ConfigError

        raise ConfigError(
            f"{args.run_dir} is an encoder (model.causal=false), which cannot generate text; "
            "use `slm eval` for its masked-LM accuracy, or train a causal model to generate."
        )
    if run.tokenizer is None:
        raise DataError(missing_tokenizer(args.run_dir, run.cfg))
    template = PLAIN if args.raw else run_template(args.run_dir)  # a fine-tuned run's chat_template.json
    text = template.format_prompt(args.prompt)
    prompt = np.asarray(run.tokenizer.encode(text), np.int32)[None]
    model = run.model
    if args.cache_dtype:  # int8: KV / recurrent-state cache stored as int8 (slm_jax/quant/cache.py)
        import dataclasses

        from slm_jax.models.lm import CausalLM

        model = CausalLM(
            dataclasses.replace(run.cfg.model, cache_quant="none" if args.cache_dtype == "float" else args.cache_dtype)
        )
    if args.draft:  # speculative decoding: the draft run proposes, this run verifies
        chunks = _speculative_chunks(args, run, model, prompt)
    else:
        chunks = generate(
            model,
            run.params,
            prompt,
            args.max_new_tokens,
            seed=args.seed,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            chunk=args.chunk,
        )
    print(text, end="", flush=True)
    try:
        for piece in until_end((run.tokenizer.decode(tokens[0]) for tokens in chunks), template.end):
            print(piece, end="", flush=True)
    finally:
        print(flush=True)  # end the streamed line, so an error below starts a line of its own


def _speculative_chunks(args, run, model, prompt):
    """Tokens i32[1, n] of each chunk of speculative rounds (slm_jax/inference/speculative.py, one
    compiled loop per --chunk tokens); at the end, the acceptance rate and speed on stderr."""
    import time

    from slm_jax.errors import ConfigError
    from slm_jax.inference.run import load_run
    from slm_jax.inference.speculative import speculative_generate

    draft = load_run(args.draft)
    if draft.tokenizer is None or draft.tokenizer.to_dict() != run.tokenizer.to_dict():
        raise ConfigError(
            f"The draft {args.draft} ({draft.cfg.model.vocab_size} tokens) does not use the tokenizer of "
            f"{args.run_dir} ({run.cfg.model.vocab_size} tokens); pick a draft trained on the same tokenizer."
        )
    start, accepted, rounds, new = time.perf_counter(), 0, 0, 0
    for tokens, kept in speculative_generate(
        model,
        run.params,
        draft.model,
        draft.params,
        prompt,
        args.max_new_tokens,
        k=args.draft_tokens,
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        chunk=args.chunk,
    ):
        yield tokens
        accepted, rounds, new = accepted + int(kept.sum()), rounds + len(kept), new + tokens.shape[1]
    seconds = time.perf_counter() - start
    print(
        f"\nspeculative decoding: {accepted / (rounds * args.draft_tokens):.1%} of draft tokens accepted, "
        f"{new / rounds:.2f} tokens per round, {new / seconds:.1f} tokens/s (compilation included)",
        file=sys.stderr,
    )


def cmd_sweep(args) -> None:
    from slm_jax.sweep.report import write_report
    from slm_jax.sweep.runner import run_sweep
    from slm_jax.sweep.spec import describe, expand, load_sweep

    sweep = load_sweep(args.sweep)
    points = expand(sweep)
    print(
        f"{sweep.name}: {len(points)} points x {max(len(sweep.lrs), 1)} learning rate(s)\n{describe(points)}",
        flush=True,
    )
    if args.dry_run:
        return
    out = Path(args.out or Path("runs") / "sweeps" / sweep.name)
    records = run_sweep(sweep, points, out, progress=not args.no_progress)
    print(write_report(sweep, records, out))
    print(f"results: {out / 'results.md'}, {out / 'results.csv'} and plots in {out}")


def cmd_data_prepare(args) -> None:
    from slm_jax.data.prepare import prepare

    meta = prepare(
        args.input,
        args.tokenizer,
        args.out,
        args.val_fraction,
        vocab_size=args.vocab_size,
        text_field=args.text_field,
        skip_bad_lines=args.skip_bad_lines,
        shard_tokens=args.shard_tokens,
        bpe_sample_mb=args.bpe_sample_mb,
        workers=args.workers,
    )
    print(json.dumps(meta, indent=1))
    if args.skip_bad_lines and meta["bad_lines"]["skipped"]:
        print(
            f"skipped {meta['bad_lines']['skipped']} bad records, the first: {meta['bad_lines']['first']}",
            file=sys.stderr,
        )


def cmd_data_partition(args) -> None:
    from slm_jax.config import config_from_dict, load_config
    from slm_jax.federated.shards import MANIFEST, describe, write_partition
    from slm_jax.rundir.checkpoint import read_run_config

    source = Path(args.config_or_run)
    if source.is_dir():
        cfg = config_from_dict(read_run_config(source), args.overrides)
    else:
        cfg = load_config(source, args.overrides)
    print(describe(write_partition(cfg, args.out)))
    print(f"client shards and {MANIFEST} in {args.out}")


def cmd_convert_from_hf(args) -> None:
    from slm_jax.interop.convert import from_hf

    print(json.dumps(from_hf(args.hf_dir, args.run_dir, name=args.name), indent=1))


def cmd_convert_to_hf(args) -> None:
    from slm_jax.config import config_from_dict
    from slm_jax.interop.convert import to_hf
    from slm_jax.rundir.checkpoint import read_run_config

    if config_from_dict(read_run_config(args.run_dir)).model.quant.bits:
        from slm_jax.errors import CheckpointError

        raise CheckpointError(
            f"{args.run_dir} is quantized and Hugging Face export needs float weights; "
            "convert the float run it was made from."
        )
    summary = to_hf(
        args.run_dir, args.hf_dir, family=args.family, best=args.best, max_shard_bytes=int(args.max_shard_mb * 2**20)
    )
    print(json.dumps(summary, indent=1))


def cmd_quantize(args) -> None:
    from slm_jax.quant.run import quantize_run

    summary = quantize_run(
        args.run_dir,
        args.out,
        args.bits,
        args.group_size,
        best=args.best,
        method=args.method,
        calib=args.calib,
        calib_tokens=args.calib_tokens,
    )
    print(json.dumps(summary, indent=1))


def cmd_prune(args) -> None:
    from slm_jax.config import read_yaml_config
    from slm_jax.errors import ConfigError
    from slm_jax.prune.options import prune_options
    from slm_jax.prune.run import prune_run

    section = None
    if args.config:
        raw = read_yaml_config(args.config)
        if set(raw) - {"prune"}:
            raise ConfigError(f"{args.config} may hold only a prune: section for slm prune, got {sorted(raw)}.")
        section = raw.get("prune") or {}
        if not isinstance(section, dict):
            raise ConfigError(f"The prune: section of {args.config} must be a mapping of prune options.")
    options = prune_options(section, args.overrides)
    summary = prune_run(args.run_dir, args.out, options, args.calib, args.calib_tokens, best=args.best)
    print(json.dumps(summary, indent=1))


def cmd_export(args) -> None:
    from slm_jax.export.stablehlo import export_run
    from slm_jax.finetune.classify import is_classifier

    if is_classifier(args.run_dir):  # one graph (tokens, lengths) -> class logits (export/encoder.py)
        from slm_jax.errors import ConfigError
        from slm_jax.export.encoder import export_classifier
        from slm_jax.finetune.classify import load_classifier
        from slm_jax.finetune.train import ADAPTER_META

        if args.best:
            raise ConfigError(f"{args.run_dir} is a classifier, which holds one fine-tuned checkpoint; drop --best.")
        adapter = Path(args.run_dir) / ADAPTER_META  # a LoRA classifier: its base run holds the config
        config_dir = json.loads(adapter.read_text())["base_run"] if adapter.is_file() else args.run_dir
        clf = load_classifier(args.run_dir)
        summary = export_classifier(clf, args.run_dir, config_dir, args.out, args.format, args.max_len, args.batch)
        print(json.dumps(summary, indent=1))
        return
    summary = export_run(
        args.run_dir,
        args.out,
        args.format,
        max_len=args.max_len,
        prefill_chunk=args.prefill_chunk,
        best=args.best,
        batch=args.batch,
    )
    print(json.dumps(summary, indent=1))


def cmd_finetune(args) -> None:
    from slm_jax.errors import ConfigError
    from slm_jax.finetune.lora import DEFAULT_TARGETS, LoraSpec
    from slm_jax.finetune.train import FinetuneOptions, finetune, merge_adapters

    if args.target[0] == "merge":  # slm finetune merge ADAPTER_DIR --out RUN_DIR [--base BASE_RUN]
        if len(args.target) != 2:
            raise ConfigError(
                "Usage: slm finetune merge ADAPTER_DIR --out RUN_DIR; give exactly one adapter directory."
            )
        print(json.dumps(merge_adapters(args.target[1], args.out, args.base), indent=1))
        return
    if len(args.target) != 1 or not args.data:
        raise ConfigError(
            "Usage: slm finetune RUN_DIR --data FILE.jsonl --out DIR [--lora]; give one run directory and --data."
        )
    spec = LoraSpec(args.rank, args.alpha, args.lora_dropout, args.targets or DEFAULT_TARGETS) if args.lora else None
    options = FinetuneOptions(
        spec,
        args.steps,
        args.batch_size,
        args.lr,
        args.warmup_steps,
        args.weight_decay,
        args.seed,
        args.max_len,
        args.best,
        args.template,
    )
    log = lambda line: print(line, file=sys.stderr, flush=True)
    if args.task == "classify":  # a classification head on the final hidden states (finetune/classify.py)
        from slm_jax.finetune.classify import ClassifyOptions, finetune_classify

        if args.template:
            raise ConfigError("--template lays out prompt/completion pairs; drop it with --task classify.")

        task = ClassifyOptions(args.text_field, args.label_field, args.pooling)
        summary = finetune_classify(args.target[0], args.data, args.out, options, task, args.eval_data, log)
    else:
        summary = finetune(args.target[0], args.data, args.out, options, eval_data=args.eval_data, log=log)
    print(json.dumps(summary, indent=1))


def cmd_predict(args) -> None:
    from slm_jax.finetune.classify import predict_text

    print(json.dumps(predict_text(args.run_dir, args.text), indent=1))


def cmd_distill(args) -> int | None:
    from slm_jax.errors import ConfigError
    from slm_jax.training.loop import exit_code

    if args.target[0] == "precompute":  # slm distill precompute --teacher RUN_DIR --out DIR [--data PATH]
        from slm_jax.distill.precompute import precompute

        if len(args.target) != 1 or not args.teacher or not args.out:
            raise ConfigError(
                "Usage: slm distill precompute --teacher RUN_DIR --out DIR [--data PATH] [--top-k K]; "
                "give --teacher and --out."
            )
        summary = precompute(
            args.teacher,
            args.out,
            args.top_k,
            data=args.data,
            context=args.context,
            stride=args.stride,
            batch_size=args.batch_size,
            dtype=args.dtype,
            best=args.best,
        )
        print(json.dumps(summary, indent=1))
        return
    from slm_jax.config import load_config
    from slm_jax.distill.train import distill

    if len(args.target) != 1:
        raise ConfigError("Usage: slm distill CONFIG --teacher RUN_DIR [--run-dir DIR]; give exactly one config file.")
    cfg = load_config(args.target[0], args.overrides)
    summary = distill(cfg, args.teacher, args.run_dir, until_step=args.until_step, progress=not args.no_progress)
    print(json.dumps(summary, indent=1))
    return exit_code(summary)


def cmd_plan(args) -> None:
    import os

    from slm_jax.training import planner

    sizes = planner.parse_mesh(args.mesh)
    devices = planner.mesh_devices(sizes, args.devices)
    import jax

    if jax.device_count() < devices:  # not enough devices here: plan on fake CPU devices in a fresh process
        if os.environ.get("SLM_PLAN_REEXEC"):
            raise SystemExit(f"Could not create {devices} fake CPU devices; set JAX_PLATFORMS=cpu.")
        argv = [
            "plan",
            args.config,
            "--mesh",
            args.mesh,
            "--devices",
            str(devices),
            "--peak-tflops",
            str(args.peak_tflops),
            "--mfu",
            str(args.mfu),
            *[x for o in args.overrides for x in ("--set", o)],
            *(["--json"] if args.json else []),
        ]
        code = planner.reexec_with_fake_devices(argv, devices)
        if code:
            raise SystemExit(code)
        return
    from slm_jax.config import load_config

    result = planner.plan(
        planner.plan_config(load_config(args.config, args.overrides), sizes, devices), args.peak_tflops, args.mfu
    )
    print(json.dumps(result, indent=1) if args.json else planner.format_plan(result))


def cmd_config_show(args) -> None:
    from slm_jax.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="slm", description="Small language models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a config")
    _add_config_args(p)
    p.add_argument("--run-dir", default=None, help="run directory (default runs/<name>); resumes if it has checkpoints")
    p.add_argument(
        "--until-step", type=_positive_int, default=None, help="stop after this step with a checkpoint (resume later)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="validation loss and bits per char/byte of a run")
    p.add_argument("run_dir")
    p.add_argument(
        "--data",
        default=None,
        help="text file or prepared directory (default: the run's val split); labelled JSONL for a classifier; "
        "prompt/completion JSONL (.jsonl, first line has both fields): exact match, chrF, completion loss",
    )
    p.add_argument("--batches", type=_positive_int, default=50)
    p.add_argument("--best", action="store_true", help="use the best checkpoint by validation loss")
    p.add_argument("--step", type=int, default=None, help="use the checkpoint of this step (default: the latest)")
    p.add_argument(
        "--stride",
        type=_positive_int,
        default=None,
        help="sliding-window perplexity over the whole split: windows advance by this many tokens and score "
        "only their new ones (default: the context, non-overlapping windows)",
    )
    p.add_argument(
        "--context",
        type=_positive_int,
        default=None,
        help="tokens the model reads at once, for --stride and --tasks (default: the run's train.seq_len)",
    )
    p.add_argument(
        "--tasks",
        default=None,
        help="comma-separated lm-evaluation-harness tasks, e.g. hellaswag,arc_easy (eval extra)",
    )
    p.add_argument("--limit", type=_positive_int, default=None, help="--tasks: at most this many examples per task")
    p.add_argument("--num-fewshot", type=int, default=None, help="--tasks: examples per prompt (default: the task's)")
    p.add_argument("--include-path", default=None, help="--tasks: a directory of your own task YAMLs")
    p.add_argument(
        "--pppl-seqs",
        type=int,
        default=4,
        help="encoder: validation windows scored by pseudo-perplexity (seq_len forward passes each; 0: none)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="sample text from a run")
    p.add_argument("run_dir")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=16, help="tokens per compiled decode loop between prints")
    p.add_argument(
        "--cache-dtype",
        choices=["float", "int8", "int8_kv"],
        default=None,
        help="int8: store the KV cache and recurrent states as int8 with group-wise scales; "
        "int8_kv: only the KV cache (default: the run's model.cache_quant)",
    )
    p.add_argument("--best", action="store_true", help="use the best checkpoint by validation loss")
    p.add_argument("--step", type=int, default=None, help="use the checkpoint of this step (default: the latest)")
    p.add_argument(
        "--draft",
        metavar="RUN_DIR",
        default=None,
        help="speculative decoding: a smaller run with the same tokenizer proposes tokens, "
        "this run verifies them (same output distribution)",
    )
    p.add_argument(
        "--draft-tokens", metavar="K", type=int, default=4, help="tokens the draft proposes per round (with --draft)"
    )
    p.add_argument(
        "--raw", action="store_true", help="ignore the run's chat template: continue the prompt text as it is"
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("sweep", help="train every point of a sweep file; write results.csv/.md and plots")
    p.add_argument("sweep", help="sweep YAML (see configs/sweeps/)")
    p.add_argument("--out", default=None, help="output directory (default runs/sweeps/<name>); re-running resumes")
    p.add_argument("--dry-run", action="store_true", help="list the points and their budgets, train nothing")
    p.add_argument("--no-progress", action="store_true", help="no per-run progress bar")
    p.set_defaults(func=cmd_sweep)

    data = sub.add_parser("data", help="data preparation").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", help="tokenize text files into train.bin / val.bin / meta.json")
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="text files, directories (*.txt), .jsonl, .parquet, .arrow files or save_to_disk dataset directories",
    )
    p.add_argument(
        "--tokenizer",
        default="char",
        help="char, byte, bpe (trained on the input, with --vocab-size) or a Hugging Face tokenizer.json path",
    )
    p.add_argument("--vocab-size", type=int, default=0, help="vocabulary size of --tokenizer bpe")
    p.add_argument(
        "--bpe-sample-mb", type=float, default=64.0, help="train --tokenizer bpe on the first N MB only (0: all)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes encoding a BPE / tokenizer.json corpus (0: every core >= 32 MB)",
    )
    p.add_argument("--text-field", default="text", help="JSON field / column holding the text (jsonl, Parquet, Arrow)")
    p.add_argument("--skip-bad-lines", action="store_true", help="count and skip bad records instead of failing")
    p.add_argument(
        "--shard-tokens", type=int, default=0, help="tokens per shard file (train_000.bin, ...); 0: one file per split"
    )
    p.add_argument("--out", required=True)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.set_defaults(func=cmd_data_prepare)
    p = data.add_parser("partition", help="write train.federated's client shards (one prepared dir each) + manifest")
    p.add_argument("config_or_run", help="YAML config file or run directory")
    p.add_argument("--out", required=True, help="directory for client_000/ ... and partition.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    p.set_defaults(func=cmd_data_partition)

    convert = sub.add_parser("convert", help="Hugging Face checkpoints (safetensors) to and from run directories")
    convert = convert.add_subparsers(dest="convert_command", required=True)
    p = convert.add_parser("from-hf", help="import a Hugging Face model directory as a run directory")
    p.add_argument("hf_dir", help="directory with config.json and *.safetensors (save_pretrained output)")
    p.add_argument("run_dir", help="new run directory to write")
    p.add_argument("--name", default=None, help="config name (default: the run directory's name)")
    p.set_defaults(func=cmd_convert_from_hf)
    p = convert.add_parser("to-hf", help="export a run's checkpoint as a Hugging Face model directory")
    p.add_argument("run_dir")
    p.add_argument("hf_dir", help="new output directory")
    p.add_argument(
        "--family",
        default=None,
        help="llama, qwen2, qwen3, phi3, gemma, mamba, mamba2, recurrent_gemma, bert, distilbert or modernbert "
        "(default: the imported family, else inferred)",
    )
    p.add_argument("--best", action="store_true", help="export the best checkpoint by validation loss")
    p.add_argument("--max-shard-mb", type=float, default=2048, help="shard the safetensors above this size")
    p.set_defaults(func=cmd_convert_to_hf)

    p = sub.add_parser(
        "quantize", help="weight-only int8/int4 quantization of a run's projections into a new run directory"
    )
    p.add_argument("run_dir")
    p.add_argument("--bits", type=int, required=True, help="8 (per output channel) or 4 (group-wise, two per byte)")
    p.add_argument("--out", required=True, help="new run directory to write")
    p.add_argument(
        "--group-size",
        type=int,
        default=0,
        help="inputs per scale (default: int8 per channel, int4 the largest divisor <= 64)",
    )
    p.add_argument(
        "--method",
        default="rtn",
        choices=("rtn", "gptq", "awq"),
        help="rtn: round to nearest; gptq / awq: calibrated on --calib (Frantar et al. 2022; Lin et al. 2023)",
    )
    p.add_argument(
        "--calib",
        default="",
        help="calibration text for gptq/awq: a text file or a prepared directory (default: the run's training data)",
    )
    p.add_argument("--calib-tokens", type=int, default=32_768, help="calibration tokens for gptq/awq")
    p.add_argument("--best", action="store_true", help="quantize the best checkpoint by validation loss")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("prune", help="structured pruning: depth, heads, MLP, embedding, recurrent width; a new run")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="new run directory to write")
    p.add_argument("--config", default=None, help="YAML file with a prune: section (docs/pruning.md)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="prune.KEY=VALUE",
        help="a prune option, e.g. --set prune.d_ff=128 (repeatable; wins over --config)",
    )
    p.add_argument(
        "--calib",
        default="",
        help="calibration text: a text file or a prepared directory (default: the run's training data)",
    )
    p.add_argument("--calib-tokens", type=_positive_int, default=32_768, help="calibration tokens for the rankings")
    p.add_argument("--best", action="store_true", help="prune the best checkpoint by validation loss")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "export",
        help="export prefill and one-token decode (cache in, cache out) for a standalone runner; "
        "an encoder or classifier as one graph (tokens, lengths) -> logits",
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--format",
        default="stablehlo",
        help="stablehlo (jax.export) or onnx (opset 18, for onnxruntime; needs the onnx extra)",
    )
    p.add_argument("--out", required=True, help="new output directory")
    p.add_argument(
        "--max-len",
        type=int,
        default=None,
        help="fixed maximum sequence length (prompt + generated tokens; default 256); "
        "an encoder's fixed row length (default its train.seq_len)",
    )
    p.add_argument("--prefill-chunk", type=int, default=16, help="tokens per exported prefill call")
    p.add_argument(
        "--batch", type=_positive_int, default=1, help="encoder/classifier ONNX export: rows per call (fixed)"
    )
    p.add_argument("--best", action="store_true", help="export the best checkpoint by validation loss")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "finetune", help="full or LoRA fine-tuning on prompt/completion JSONL; `slm finetune merge` folds adapters in"
    )
    p.add_argument("target", nargs="+", metavar="RUN_DIR", help="the base run directory, or: merge ADAPTER_DIR")
    p.add_argument(
        "--data", default=None, help='training JSONL: {"prompt", "completion"} lines, or text + label (classify)'
    )
    p.add_argument("--eval-data", default=None, help="held-out JSONL: exact-match accuracy before and after")
    p.add_argument("--out", required=True, help="new directory: a run (full, merge) or the adapters (--lora)")
    p.add_argument("--lora", action="store_true", help="train low-rank adapters instead of every weight")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA scale is alpha / rank")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument(
        "--targets",
        default=None,
        help="regex searched in projection paths (default: the mixers' in/out projections), e.g. 'qkv|mlp'",
    )
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-len", type=int, default=0, help="refuse examples longer than this many tokens (0: no limit)")
    p.add_argument("--best", action="store_true", help="start from the base run's best checkpoint")
    p.add_argument("--base", default=None, help="merge: the base run directory, if it moved since fine-tuning")
    p.add_argument(
        "--template",
        default="",
        help="chat template: plain, qa, chatml, alpaca or a JSON/YAML file with prompt and completion "
        "(default: the base run's own, else plain)",
    )
    p.add_argument(
        "--task",
        choices=("lm", "classify"),
        default="lm",
        help="classify: a sequence-classification head (JSONL labels)",
    )
    p.add_argument("--text-field", default="text", help="classify: the JSONL field holding the text")
    p.add_argument("--label-field", default="label", help="classify: the JSONL field holding the label")
    p.add_argument(
        "--pooling",
        choices=("cls", "mean", "last"),
        default="",
        help="classify: default last (decoder), mean (encoder)",
    )
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("predict", help="the label and class probabilities of a text (`slm finetune --task classify`)")
    p.add_argument("run_dir", help="the --out directory of `slm finetune --task classify`")
    p.add_argument("--text", required=True)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "distill",
        help="train a student config against a teacher run; `slm distill precompute` stores the teacher's top-k logits",
    )
    p.add_argument("target", nargs="+", metavar="CONFIG", help="the student's YAML config, or: precompute")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )
    p.add_argument("--teacher", default=None, help="the teacher's run directory (default: distill.teacher)")
    p.add_argument(
        "--run-dir",
        default=None,
        help="the student's run directory (default runs/<name>); resumes if it has checkpoints",
    )
    p.add_argument(
        "--until-step", type=_positive_int, default=None, help="stop after this step with a checkpoint (resume later)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default=None, help="precompute: new directory for the logits")
    p.add_argument(
        "--data", default=None, help="precompute: text file or prepared directory (default: the teacher's data)"
    )
    p.add_argument("--top-k", type=int, default=16, help="precompute: logits kept per token")
    p.add_argument(
        "--context", type=int, default=0, help="precompute: teacher window length (default: its train.seq_len)"
    )
    p.add_argument(
        "--stride", type=int, default=0, help="precompute: tokens between teacher windows (default: context / 2)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="precompute: teacher windows per forward pass")
    p.add_argument("--dtype", default="float16", help="precompute: float16 or float32 values")
    p.add_argument(
        "--best", action="store_true", help="precompute: use the teacher's best checkpoint by validation loss"
    )
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser(
        "plan", help="compile the train step for a device mesh ahead of time: memory per device, FLOPs, tokens/s"
    )
    _add_config_args(p)
    p.add_argument(
        "--mesh", default="data=1", help="mesh axis sizes, e.g. data=2,fsdp=4,tensor=2 (-1: the rest of --devices)"
    )
    p.add_argument("--devices", type=int, default=0, help="device count (default: the product of the mesh sizes)")
    p.add_argument(
        "--peak-tflops", type=float, default=0.0, help="peak TFLOP/s of one device, for the implied tokens/s"
    )
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed for the implied tokens/s")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_plan)

    config = sub.add_parser("config", help="configs").add_subparsers(dest="config_command", required=True)
    p = config.add_parser("show", help="print the resolved config")
    _add_config_args(p, required=False)
    p.set_defaults(func=cmd_config_show)
    return parser


def _drop_closed_loop_reports(hook):
    """``hook`` without the "Exception ignored ... Event loop is closed" reports.

    Tensorstore's callbacks for the writes of a failed save can fire after Orbax closed their event
    loop; Python prints each as an unraisable exception, after the one-line error has said it all.
    """

    def quiet(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
            hook(unraisable)

    quiet.drops_closed_loop_reports = True
    return quiet


def main(argv: list[str] | None = None) -> int:
    """Run one ``slm`` command; return its exit code (0; 2: a user-fixable error; 130 / 143: stopped by a signal)."""
    # Orbax logs the failures of its background threads (a full disk, an unreadable file) with
    # tracebacks through absl, and asyncio reports each of their failed write tasks again when it
    # collects them, even after exit; every such failure reaches this function as an exception.
    for name in ("absl", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if not getattr(sys.unraisablehook, "drops_closed_loop_reports", False):
        sys.unraisablehook = _drop_closed_loop_reports(sys.unraisablehook)
    try:
        args = build_parser().parse_args(argv)
        return args.func(args) or 0
    except SlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a write outside the checkpointer: the run directory, metrics, an output folder
        code = write_errno(e)
        if code is None:
            raise
        where = e.filename or "a file"
        print(f"error: {write_failure(f'Writing {where}', code)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
