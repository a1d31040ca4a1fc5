"""``quantize_run(run_dir, out_dir, bits, method=...)``: a float run directory -> a quantized run directory.

``method``: ``rtn`` (round to nearest, no data), ``gptq`` or ``awq`` (calibrated on ``calib_tokens`` tokens of
``calib``: a text file, a prepared directory in the run's vocabulary, or by default the run's own training data).

The output is an ordinary run directory that ``slm eval``, ``slm generate`` and ``slm export``
read like any other:

  config.yaml      the source's resolved config with ``model.quant.bits`` / ``group_size`` / ``method`` set
  tokenizer.json   copied from the source
  checkpoints/S/   Orbax, state ``{"params", "step"}`` at the source's step S: each ``Linear``
                   holds ``kernel_int8`` or ``kernel_int4`` plus ``kernel_scale`` instead of
                   ``kernel`` (AWQ adds ``kernel_in_scale``); no optimizer state (a quantized run is not trained
                   further)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from slm_jax.config import config_from_dict, replace
from slm_jax.data.run_tokens import calibration_batches, run_text_tokens
from slm_jax.errors import CheckpointError, ConfigError
from slm_jax.inference.run import load_run
from slm_jax.models.lm import stack_layers, unstack_layers
from slm_jax.quant.calibrate import linear_input_statistics
from slm_jax.quant.calibrated import METHODS, quantize_params_calibrated
from slm_jax.quant.kernels import LEAVES
from slm_jax.quant.params import linear_paths, quantize_params, tree_bytes
from slm_jax.rundir.checkpoint import read_run_config
from slm_jax.rundir.files import check_new_run_dir, copy_run_files, new_run_dir, write_config
from slm_jax.rundir.params import save_params


def directory_bytes(path: str | Path) -> int:
    """Total size of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def quantize_run(
    run_dir: str | Path,
    out_dir: str | Path,
    bits: int,
    group_size: int = 0,
    best: bool = False,
    method: str = "rtn",
    calib: str = "",
    calib_tokens: int = 32_768,
) -> dict:
    """Quantize the latest (or best) checkpoint of ``run_dir`` into the new run directory ``out_dir``; return a summary.

    ``out_dir`` is written atomically (rundir/files.py): a failure leaves none behind.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if bits not in LEAVES:
        raise ConfigError(f"--bits must be 4 or 8, got {bits}.")
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}.")
    if method == "rtn" and calib:
        raise ConfigError("--calib is read only by --method gptq or awq; drop it or pick a calibrated method.")
    cfg = config_from_dict(read_run_config(run_dir))
    if cfg.model.quant.bits:
        raise CheckpointError(
            f"{run_dir} is already quantized (int{cfg.model.quant.bits}); quantize the float run it was made from."
        )
    check_new_run_dir(out_dir)
    run = load_run(run_dir, best)
    params, step = run.params, run.step
    paths = linear_paths(cfg.model)
    if method == "rtn":
        qparams = jax.device_get(quantize_params(params, paths, bits, group_size))
    else:
        qparams = _calibrated(run, bits, group_size, method, calib, calib_tokens)
    qcfg = replace(
        cfg, **{"model.quant.bits": bits, "model.quant.group_size": group_size, "model.quant.method": method}
    )

    with new_run_dir(out_dir) as tmp:
        write_config(tmp, qcfg)
        copy_run_files(run_dir, tmp)
        save_params(tmp, qcfg, qparams, step)
    return {
        "run_dir": str(out_dir),
        "bits": bits,
        "group_size": group_size,
        "method": method,
        "step": step,
        "linear_layers": len(paths),
        "projection_bytes": {"float": tree_bytes(params, paths), "quantized": tree_bytes(qparams, paths)},
        "param_bytes": {"float": tree_bytes(params), "quantized": tree_bytes(qparams)},
        "checkpoint_bytes_on_disk": directory_bytes(out_dir / "checkpoints"),
    }


def _calibrated(run, bits: int, group_size: int, method: str, calib: str, calib_tokens: int) -> dict:
    """GPTQ / AWQ of ``run``'s params, calibrated per layer (scanned layers are unstacked for it and restacked)."""
    model_cfg = run.cfg.model
    params = run.params
    flat_cfg = dataclasses.replace(model_cfg, scan_layers=False)
    if model_cfg.scan_layers:
        params = unstack_layers(params, model_cfg)
    tokens = run_text_tokens(run.cfg, run.tokenizer, calib, "train", "--calib")
    batches = calibration_batches(tokens, calib_tokens, run.cfg.train.seq_len)
    stats = linear_input_statistics(flat_cfg, params, batches)
    qparams = quantize_params_calibrated(params, linear_paths(flat_cfg), bits, group_size, method, stats)
    return jax.device_get(stack_layers(qparams, model_cfg) if model_cfg.scan_layers else qparams)
