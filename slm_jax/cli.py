"""The ``slm`` command: train, eval, generate, sweep, data prepare, convert, quantize, export, config show.

Mistakes a user can fix (``SlmError``) print one line and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slm_jax.errors import SlmError


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.steps=100 (repeatable)")


def cmd_train(args) -> None:
    from slm_jax.config import load_config
    from slm_jax.training.train import train

    cfg = load_config(args.config, args.overrides)
    if cfg.model.quant.bits:
        from slm_jax.errors import ConfigError

        raise ConfigError("This config has model.quant.bits set, and a quantized run cannot be trained; train the float config and run `slm quantize` afterwards.")
    summary = train(cfg, args.run_dir, until_step=args.until_step, progress=not args.no_progress)
    print(json.dumps(summary, indent=1))


def cmd_eval(args) -> None:
    import jax
    import numpy as np

    from slm_jax.config import replace
    from slm_jax.data.pipeline import eval_batches
    from slm_jax.data.source import load_dataset
    from slm_jax.errors import DataError
    from slm_jax.eval.perplexity import evaluate
    from slm_jax.inference.run import load_run
    from slm_jax.training.step import make_eval_step

    run = load_run(args.run_dir, best=args.best)
    tc = run.cfg.train
    eval_fn = jax.jit(make_eval_step(run.model))
    if run.cfg.data.task.name:  # a generated task: its validation sets at every eval length
        from slm_jax.data.task_data import load_task, val_sets

        if args.data:
            raise DataError(f"{args.run_dir} was trained on the generated task {run.cfg.data.task.name!r}, which has no text; drop --data.")
        result = {}
        for suffix, batches in val_sets(load_task(run.cfg), run.cfg.eval.batch_size or tc.batch_size, args.batches).items():
            result.update({k + suffix: v for k, v in evaluate(eval_fn, run.params, batches).items()})
        print(json.dumps({"run_dir": str(args.run_dir), "step": run.step, **result}, indent=1))
        return
    if args.data and Path(args.data).is_file():
        # A raw text file is encoded with the run's own tokenizer and evaluated whole.
        tokens = np.asarray(run.tokenizer.encode(Path(args.data).read_text(encoding="utf-8")), np.int32)
    else:
        data = load_dataset(replace(run.cfg, **{"data.path": args.data}).data if args.data else run.cfg.data)
        if data.tokenizer.to_dict() != run.tokenizer.to_dict():
            raise DataError(
                f"The data in {data.data_dir} was tokenized with another vocabulary than the run; "
                "pass a raw text file with --data instead."
            )
        tokens = data.val
    batches = eval_batches(tokens, run.cfg.eval.batch_size or tc.batch_size, tc.seq_len, args.batches)
    unit = {"char": "char", "byte": "byte"}.get(run.tokenizer.to_dict().get("type"), "token")
    result = evaluate(eval_fn, run.params, batches, unit)
    print(json.dumps({"run_dir": str(args.run_dir), "step": run.step, **result}, indent=1))


def cmd_generate(args) -> None:
    import numpy as np

    from slm_jax.errors import DataError
    from slm_jax.inference.generate import generate
    from slm_jax.inference.run import load_run

    run = load_run(args.run_dir, best=args.best)
    if run.tokenizer is None:
        raise DataError(f"{args.run_dir} was trained on the generated task {run.cfg.data.task.name!r} and has no tokenizer to read a text prompt; evaluate it with `slm eval {args.run_dir}`.")
    prompt = np.asarray(run.tokenizer.encode(args.prompt), np.int32)[None]
    print(args.prompt, end="", flush=True)
    for tokens in generate(run.model, run.params, prompt, args.max_new_tokens, seed=args.seed,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, chunk=args.chunk):
        print(run.tokenizer.decode(tokens[0]), end="", flush=True)
    print()


def cmd_sweep(args) -> None:
    from slm_jax.sweep.report import write_report
    from slm_jax.sweep.runner import run_sweep
    from slm_jax.sweep.spec import describe, expand, load_sweep

    sweep = load_sweep(args.sweep)
    points = expand(sweep)
    print(f"{sweep.name}: {len(points)} points x {max(len(sweep.lrs), 1)} learning rate(s)\n{describe(points)}", flush=True)
    if args.dry_run:
        return
    out = Path(args.out or Path("runs") / "sweeps" / sweep.name)
    records = run_sweep(sweep, points, out, progress=not args.no_progress)
    print(write_report(sweep, records, out))
    print(f"results: {out / 'results.md'}, {out / 'results.csv'} and plots in {out}")


def cmd_data_prepare(args) -> None:
    from slm_jax.data.prepare import prepare

    meta = prepare(args.input, args.tokenizer, args.out, args.val_fraction)
    print(json.dumps(meta, indent=1))


def cmd_convert_from_hf(args) -> None:
    from slm_jax.interop.convert import from_hf

    print(json.dumps(from_hf(args.hf_dir, args.run_dir, name=args.name), indent=1))


def cmd_convert_to_hf(args) -> None:
    from slm_jax.interop.convert import to_hf

    from slm_jax.config import config_from_dict
    from slm_jax.training.checkpoint import read_run_config

    if config_from_dict(read_run_config(args.run_dir)).model.quant.bits:
        from slm_jax.errors import CheckpointError

        raise CheckpointError(f"{args.run_dir} is quantized and Hugging Face export needs float weights; convert the float run it was made from.")
    summary = to_hf(args.run_dir, args.hf_dir, family=args.family, best=args.best, max_shard_bytes=int(args.max_shard_mb * 2**20))
    print(json.dumps(summary, indent=1))


def cmd_quantize(args) -> None:
    from slm_jax.quant.run import quantize_run

    print(json.dumps(quantize_run(args.run_dir, args.out, args.bits, args.group_size, best=args.best), indent=1))


def cmd_export(args) -> None:
    from slm_jax.export.stablehlo import export_run

    summary = export_run(args.run_dir, args.out, args.format, max_len=args.max_len, prefill_chunk=args.prefill_chunk, best=args.best)
    print(json.dumps(summary, indent=1))


def cmd_config_show(args) -> None:
    from slm_jax.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm", description="Small language models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a config")
    _add_config_args(p)
    p.add_argument("--run-dir", default=None, help="run directory (default runs/<name>); resumes if it has checkpoints")
    p.add_argument("--until-step", type=int, default=None, help="stop after this step with a checkpoint (resume later)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="validation loss and bits per char/byte of a run")
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help="text file or prepared directory (default: the run's val split)")
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--best", action="store_true", help="use the best checkpoint by validation loss")
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
    p.add_argument("--best", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("sweep", help="train every point of a sweep file; write results.csv/.md and plots")
    p.add_argument("sweep", help="sweep YAML (see configs/sweeps/)")
    p.add_argument("--out", default=None, help="output directory (default runs/sweeps/<name>); re-running resumes")
    p.add_argument("--dry-run", action="store_true", help="list the points and their budgets, train nothing")
    p.add_argument("--no-progress", action="store_true", help="no per-run progress bar")
    p.set_defaults(func=cmd_sweep)

    data = sub.add_parser("data", help="data preparation").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", help="tokenize text files into train.bin / val.bin / meta.json")
    p.add_argument("--input", nargs="+", required=True)
    p.add_argument("--tokenizer", choices=["char", "byte"], default="char")
    p.add_argument("--out", required=True)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.set_defaults(func=cmd_data_prepare)

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
    p.add_argument("--family", default=None,
                   help="llama, qwen2, qwen3, phi3, gemma, mamba, mamba2 or recurrent_gemma (default: the imported family, else inferred)")
    p.add_argument("--best", action="store_true", help="export the best checkpoint by validation loss")
    p.add_argument("--max-shard-mb", type=float, default=2048, help="shard the safetensors above this size")
    p.set_defaults(func=cmd_convert_to_hf)

    p = sub.add_parser("quantize", help="weight-only int8/int4 quantization of a run's projections into a new run directory")
    p.add_argument("run_dir")
    p.add_argument("--bits", type=int, required=True, help="8 (per output channel) or 4 (group-wise, two per byte)")
    p.add_argument("--out", required=True, help="new run directory to write")
    p.add_argument("--group-size", type=int, default=0, help="inputs per scale (default: int8 per channel, int4 the largest divisor <= 64)")
    p.add_argument("--best", action="store_true", help="quantize the best checkpoint by validation loss")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("export", help="export prefill and one-token decode (cache in, cache out) for a standalone runner")
    p.add_argument("run_dir")
    p.add_argument("--format", default="stablehlo", help="stablehlo (jax.export); the only format so far")
    p.add_argument("--out", required=True, help="new output directory")
    p.add_argument("--max-len", type=int, default=256, help="fixed maximum sequence length (prompt + generated tokens)")
    p.add_argument("--prefill-chunk", type=int, default=16, help="tokens per exported prefill call")
    p.add_argument("--best", action="store_true", help="export the best checkpoint by validation loss")
    p.set_defaults(func=cmd_export)

    config = sub.add_parser("config", help="configs").add_subparsers(dest="config_command", required=True)
    p = config.add_parser("show", help="print the resolved config")
    _add_config_args(p, required=False)
    p.set_defaults(func=cmd_config_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
