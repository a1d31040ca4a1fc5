"""Measure `slm quantize` on small trained models: bytes on disk and validation loss, float vs int8 vs int4.

    python benchmarks/quantization.py [--steps 500] [--out /tmp/slm_quant] [--data ../shared/data/tinyshakespeare.txt]

Trains a tiny transformer and a tiny griffin on Tiny Shakespeare (char level, ~1 min each on
2 CPU cores), quantizes each to int8 and int4 and evaluates all three on the same validation
batches. Prints one JSON object per model and a markdown table (docs/deploy.md quotes it).
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
from slm_jax.training.checkpoint import Checkpointer, read_run_config


def slm(*argv) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([str(a) for a in argv])
    out = buf.getvalue()
    assert code == 0, out
    return json.loads(out[out.index("{") :])


def params_only_bytes(run_dir: Path, tmp: Path) -> tuple[int, int, int]:
    """(on-disk bytes of a params-only float checkpoint, param bytes, projection bytes) of a float run."""
    cfg = config_from_dict(read_run_config(run_dir))
    params, step = restore_params(run_dir, cfg)
    with Checkpointer(tmp, 1, 1, keep_best=False, async_save=False) as ckpt:
        ckpt.save(step, {"params": params, "step": np.asarray(step, np.int32)}, {}, {}, force=True)
    return directory_bytes(tmp / "checkpoints"), tree_bytes(params), tree_bytes(params, linear_paths(cfg.model))


def measure(preset: str, args) -> dict:
    out = Path(args.out) / preset
    run_dir = out / "float"
    overrides = [
        f"model.preset={preset}",
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
    row = {"preset": preset, "steps": args.steps}
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
    for bits in (8, 4):
        q_dir = out / f"int{bits}"
        if not q_dir.exists():
            summary = slm("quantize", run_dir, "--bits", bits, "--out", q_dir)
        else:
            summary = {"param_bytes": {}, "projection_bytes": {}}
        row[f"val_loss_int{bits}"] = slm("eval", q_dir, "--batches", args.batches)["val_loss"]
        row["bytes"][f"int{bits}"] = {
            "params_checkpoint_on_disk": directory_bytes(q_dir / "checkpoints"),
            "params": summary["param_bytes"].get("quantized"),
            "projections": summary["projection_bytes"].get("quantized"),
        }
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| model | val loss f32 | int8 (delta) | int4 (delta) | projection bytes f32 / int8 / int4 | checkpoint on disk f32 / int8 / int4 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["bytes"]
        d8, d4 = r["val_loss_int8"] - r["val_loss_float"], r["val_loss_int4"] - r["val_loss_float"]
        proj = " / ".join(f"{b[k]['projections']:,}" for k in ("float", "int8", "int4"))
        disk = " / ".join(f"{b[k]['params_checkpoint_on_disk']:,}" for k in ("float", "int8", "int4"))
        lines.append(
            f"| {r['preset']} ({r['steps']} steps) | {r['val_loss_float']:.4f} | {r['val_loss_int8']:.4f} ({d8:+.4f}) "
            f"| {r['val_loss_int4']:.4f} ({d4:+.4f}) | {proj} | {disk} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--out", default="/tmp/slm_quant")
    ap.add_argument("--data", default="../shared/data/tinyshakespeare.txt")
    ap.add_argument("--presets", nargs="+", default=["transformer", "griffin"])
    args = ap.parse_args()
    rows = [measure(p, args) for p in args.presets]
    for r in rows:
        print(json.dumps(r))
    print(table(rows))
