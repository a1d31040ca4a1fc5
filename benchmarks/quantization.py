"""Measure `slm quantize` on small trained models: bytes on disk and validation loss, float vs int8 vs int4.

    python benchmarks/quantization.py [--steps 500] [--out /tmp/slm_quant] [--data ../shared/data/tinyshakespeare.txt]
    python benchmarks/quantization.py --presets all --methods rtn gptq awq --steps 300 --batches 40   # docs/deploy.md
    python benchmarks/quantization.py --presets griffin mamba --methods rtn gptq --groups 32 128 --seeds 0 1 2

Trains each preset at shakespeare_char's shape on Tiny Shakespeare (char level, ~1 min each on
2 CPU cores), quantizes it with each method at int8 and int4 (``--groups``; 0 = the default group) and
evaluates all on the same validation batches. Prints one JSON object per model and markdown tables: bytes
(round to nearest) and the validation-loss change per method (docs/deploy.md quotes both).
"""

import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np

from slm_jax.cli import main
from slm_jax.config import config_from_dict
from slm_jax.inference.run import restore_params
from slm_jax.quant.params import linear_paths, tree_bytes
from slm_jax.quant.run import directory_bytes
from slm_jax.rundir.checkpoint import Checkpointer, read_run_config


class QuantizeRefused(Exception):
    """`slm` exited 2 with its one-sentence error."""


def slm(*argv) -> dict:
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    out = buf.getvalue()
    if code == 2:
        raise QuantizeRefused(err.getvalue().strip())
    assert code == 0, out + err.getvalue()
    return json.loads(out[out.index("{") :])


def params_only_bytes(run_dir: Path, tmp: Path) -> tuple[int, int, int]:
    """(on-disk bytes of a params-only float checkpoint, param bytes, projection bytes) of a float run."""
    cfg = config_from_dict(read_run_config(run_dir))
    params, step = restore_params(run_dir, cfg)
    with Checkpointer(tmp, 1, 1, keep_best=False, async_save=False) as ckpt:
        ckpt.save(step, {"params": params, "step": np.asarray(step, np.int32)}, {}, {}, force=True)
    return directory_bytes(tmp / "checkpoints"), tree_bytes(params), tree_bytes(params, linear_paths(cfg.model))


def measure(preset: str, args, seed: int = 0) -> dict:
    out = Path(args.out) / preset / (f"seed{seed}" if seed else "")
    run_dir = out / "float"
    overrides = [
        f"model.preset={preset}",
        f"train.seed={seed}",
        f"train.steps={args.steps}",
        "eval.every=0",
        f"checkpoint.every={args.steps}",
        f"data.path={Path(args.data).absolute()}",
        f"name={preset}",
    ]
    if not (run_dir / "checkpoints").exists():
        slm(
            "train",
            "configs/experiments/shakespeare_char.yaml",
            "--run-dir",
            run_dir,
            "--no-progress",
            *sum((["--set", o] for o in overrides), []),
        )
    row = {"preset": preset, "steps": args.steps, "seed": seed}
    row["val_loss_float"] = slm("eval", run_dir, "--batches", args.batches)["val_loss"]
    disk, params, proj = params_only_bytes(run_dir, out / "float_params_only")
    row["bytes"] = {
        "float": {
            "params_checkpoint_on_disk": disk,
            "params": params,
            "projections": proj,
            "run_checkpoint_on_disk_with_adam_state": directory_bytes(run_dir / "checkpoints"),
        }
    }
    row["val_loss"] = {}
    for method in args.methods:
        for bits, group in [(8, 0)] + [(4, g) for g in args.groups]:
            name = f"int{bits}" if not group else f"int{bits}_g{group}"
            q_dir = out / f"{name}_{method}"
            flags = ["--bits", bits, "--group-size", group, "--method", method, "--out", q_dir]
            if method != "rtn":
                flags += ["--calib-tokens", args.calib_tokens]  # from the run's own training split
            try:
                summary = slm("quantize", run_dir, *flags) if not q_dir.exists() else {}
            except QuantizeRefused as e:  # e.g. a group size that does not divide a projection's width
                row["val_loss"][f"{name}_{method}"] = str(e)
                continue
            row["val_loss"][f"{name}_{method}"] = slm("eval", q_dir, "--batches", args.batches)["val_loss"]
            if method == "rtn" and group in (0, args.groups[0]):
                row["bytes"][f"int{bits}"] = {
                    "params_checkpoint_on_disk": directory_bytes(q_dir / "checkpoints"),
                    "params": summary.get("param_bytes", {}).get("quantized"),
                    "projections": summary.get("projection_bytes", {}).get("quantized"),
                }
    return row


def bytes_table(rows: list[dict]) -> str:
    lines = [
        "| model | projection bytes f32 / int8 / int4 | params-only checkpoint on disk f32 / int8 / int4 |",
        "|---|---|---|",
    ]
    for r in rows:
        b = r["bytes"]
        if not {"int8", "int4"} <= set(b):
            continue
        proj = " / ".join(f"{b[k]['projections'] or 0:,}" for k in ("float", "int8", "int4"))
        disk = " / ".join(f"{b[k]['params_checkpoint_on_disk']:,}" for k in ("float", "int8", "int4"))
        lines.append(f"| {r['preset']} | {proj} | {disk} |")
    return "\n".join(lines)


def quality_table(rows: list[dict], methods: list[str], groups: list[int]) -> str:
    """Validation-loss change vs float per (bits, group) and method; best int4 method in bold."""
    settings = ["int8"] + [f"int4_g{g}" if g else "int4" for g in groups]
    head = " | ".join(f"{s} {m}" for s in settings for m in methods)
    lines = [f"| model | val loss f32 | {head} |", "|---" * (2 + len(settings) * len(methods)) + "|"]
    for r in rows:
        cells = []
        for setting in settings:
            values = {m: r["val_loss"].get(f"{setting}_{m}") for m in methods}
            numbers = {m: v for m, v in values.items() if isinstance(v, float)}
            best = min(numbers.values()) if numbers else None
            for m in methods:
                v = values[m]
                if not isinstance(v, float):
                    cells.append("n/a")
                    continue
                cell = f"{v - r['val_loss_float']:+.4f}"
                cells.append(f"**{cell}**" if setting != "int8" and v == best and len(numbers) > 1 else cell)
        lines.append(f"| {r['preset']} | {r['val_loss_float']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table(rows: list[dict], methods: list[str], groups: list[int]) -> str:
    """Per preset and int4 group: each calibrated method's val loss minus RTN's, mean +- std over the seeds, and
    on how many seeds it was at least as good as RTN."""
    settings = [f"int4_g{g}" if g else "int4" for g in groups]
    others = [m for m in methods if m != "rtn"]
    head = " | ".join(f"{s} {m} - rtn" for s in settings for m in others)
    lines = [f"| model | seeds | {head} |", "|---" * (2 + len(settings) * len(others)) + "|"]
    for preset in dict.fromkeys(r["preset"] for r in rows):
        mine = [r["val_loss"] for r in rows if r["preset"] == preset]
        cells = []
        for setting in settings:
            for m in others:
                d = np.array([v[f"{setting}_{m}"] - v[f"{setting}_rtn"] for v in mine])
                spread = d.std(ddof=1) if len(d) > 1 else float("nan")
                cells.append(f"{d.mean():+.4f} +- {spread:.4f} ({(d <= 0).sum()}/{len(d)})")
        lines.append(f"| {preset} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    from slm_jax.presets import PRESETS, is_encoder

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--out", default="/tmp/slm_quant")
    ap.add_argument("--data", default="../shared/data/tinyshakespeare.txt")
    ap.add_argument("--presets", nargs="+", default=["transformer", "griffin"], help="preset names, or 'all'")
    ap.add_argument("--methods", nargs="+", default=["rtn"], choices=["rtn", "gptq", "awq"])
    ap.add_argument("--groups", nargs="+", type=int, default=[0], help="int4 group sizes (0: the default, <= 64)")
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (train.seed) per preset")
    args = ap.parse_args()
    # 'all': the decoders, which train on next-token loss at shakespeare_char's config (encoders need mlm)
    presets = [p for p in PRESETS if not is_encoder(p)] if args.presets == ["all"] else args.presets
    rows = []
    for p in presets:
        for seed in args.seeds:
            rows.append(measure(p, args, seed))
            print(json.dumps(rows[-1]), flush=True)
    print(bytes_table(rows))
    print()
    print(quality_table(rows, args.methods, args.groups))
    if len(args.seeds) > 1 and "rtn" in args.methods:
        print()
        print(seed_table(rows, args.methods, args.groups))
