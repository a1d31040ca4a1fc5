"""``slm plan``: compile the train step ahead of time for a mesh and report memory, FLOPs and implied throughput.

Nothing is allocated or run: the step is lowered on abstract values (``jax.ShapeDtypeStruct``)
with the shardings of training/sharding.py and compiled by XLA, whose memory analysis gives the
bytes each device needs and whose cost analysis gives the FLOPs of one step. Those are set
beside the closed-form count of models/accounting.py and turned into the tokens/s that a given
peak FLOP/s and model FLOPs utilisation (MFU, Chowdhery et al. 2022) would give.

On a machine with fewer devices than the mesh, ``cmd_plan`` re-runs itself on fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``): the program and its per-device shapes
are the real ones, but byte counts are XLA:CPU's (no GPU/TPU padding or fusion differences).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np

from slm_jax.config import Config, replace
from slm_jax.errors import ConfigError
from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM, abstract_params
from slm_jax.training.optim import make_optimizer
from slm_jax.training.parallel import make_parallel
from slm_jax.training.sharding import MESH_AXES, sharded_bytes
from slm_jax.training.step import init_state, make_train_step


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=2,fsdp=2,tensor=2"`` -> ``{"data": 2, "fsdp": 2, "tensor": 2}`` (missing axes: data -1, others 1)."""
    sizes = {"data": -1, "fsdp": 1, "tensor": 1}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        if key not in sizes or not value.lstrip("-").isdigit():
            raise ConfigError(
                f"--mesh item {item!r} is not AXIS=SIZE with AXIS one of {', '.join(MESH_AXES)}; "
                "write e.g. data=2,fsdp=2,tensor=2."
            )
        sizes[key] = int(value)
    return sizes


def mesh_devices(sizes: dict[str, int], devices: int | None) -> int:
    """The device count a mesh needs: the product of its sizes, or ``devices`` when one size is -1."""
    if devices:
        return devices
    if -1 in sizes.values():
        raise ConfigError(
            "--mesh leaves an axis at -1 (the rest), so give --devices N as well, or set every axis size."
        )
    return int(np.prod(list(sizes.values())))


def plan_config(cfg: Config, sizes: dict[str, int], devices: int) -> Config:
    """``cfg`` set to train on a ``sizes`` mesh over ``devices`` devices."""
    if cfg.model.vocab_size <= 0:
        raise ConfigError(
            "The planner needs model.vocab_size (it reads no data); pass e.g. --set model.vocab_size=50304."
        )
    return replace(
        cfg,
        **{
            "train.parallel.strategy": "mesh",
            "train.parallel.devices": devices,
            **{f"train.parallel.mesh.{k}": v for k, v in sizes.items()},
        },
    )


def _step_parts(cfg: Config):
    """(make_step, abstract state, global batch spec) of ``cfg``'s train step, from abstract values only."""
    tc = cfg.train
    model = CausalLM(cfg.model)
    optimizer, schedule = make_optimizer(cfg.optim, tc.steps, abstract_params(cfg.model))
    abstract_state = jax.eval_shape(lambda: init_state(model, optimizer, tc.seed, tc.seq_len))
    make_step = lambda sync: make_train_step(model, optimizer, schedule, tc.z_loss, tc.grad_accum, sync)
    return make_step, abstract_state, jax.ShapeDtypeStruct((tc.batch_size, tc.seq_len + 1), np.int32)


def compile_step(cfg: Config):
    """(compiled train step, abstract state, placement) for ``cfg``'s mesh."""
    make_step, abstract_state, batch = _step_parts(cfg)
    par = make_parallel(cfg.train, abstract_state)
    return par.compile(make_step, abstract_state, batch), abstract_state, par


def step_flops(cfg: Config) -> float:
    """FLOPs of one train step over all devices, from XLA's cost analysis of the lowered program.

    XLA counts a loop body once, so the step is lowered with layers unrolled and one micro-batch
    (the same arithmetic as ``nn.scan`` over layers and ``grad_accum`` micro-batches).
    """
    make_step, abstract_state, batch = _step_parts(replace(cfg, **{"model.scan_layers": False, "train.grad_accum": 1}))
    cost = jax.jit(make_step(None)).lower(abstract_state, batch).cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    return float(cost.get("flops", 0.0))


def plan(cfg: Config, peak_tflops: float = 0.0, mfu: float = 0.4) -> dict:
    """Per-device memory, FLOPs per step and implied tokens/s of ``cfg`` (already set to a mesh, see ``plan_config``).

    Returns a dict of plain numbers: ``*_bytes`` are per device; ``xla_flops_per_step`` is summed
    over devices (``step_flops``); ``tokens_per_s`` assumes ``peak_tflops`` per device at ``mfu``.
    """
    tc = cfg.train
    compiled, abstract_state, par = compile_step(cfg)
    mem = compiled.memory_analysis()
    n = par.mesh.size
    tokens = tc.batch_size * tc.seq_len
    params_bytes = sharded_bytes(abstract_state["params"], par.mesh)
    opt_bytes = sharded_bytes(abstract_state["opt_state"], par.mesh)
    xla_flops = step_flops(cfg)
    analytic = accounting.train_flops_per_token(cfg.model, tc.seq_len) * tokens
    peak = peak_tflops * 1e12 * n
    return {
        "name": cfg.name,
        "mesh": dict(zip(MESH_AXES, par.mesh.devices.shape)),
        "devices": n,
        "params": accounting.param_count(cfg.model),
        "batch_size": tc.batch_size,
        "seq_len": tc.seq_len,
        "params_bytes": params_bytes,
        "opt_state_bytes": opt_bytes,
        "argument_bytes": mem.argument_size_in_bytes,
        "activation_bytes": mem.temp_size_in_bytes,  # XLA temporaries: activations, gradients, workspace
        "peak_bytes": mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes,
        "xla_flops_per_step": xla_flops,
        "analytic_flops_per_step": analytic,
        "flops_ratio": xla_flops / analytic if analytic else None,
        "peak_tflops_per_device": peak_tflops,
        "mfu": mfu,
        "tokens_per_s": peak * mfu / (analytic / tokens) if peak else None,
    }


def _gib(b: float) -> str:
    return f"{b / 2**30:.3f} GiB" if b >= 2**27 else f"{b / 2**20:.2f} MiB"


def format_plan(p: dict) -> str:
    """The human-readable table ``slm plan`` prints."""
    mesh = ", ".join(f"{k}={v}" for k, v in p["mesh"].items())
    rows = [
        ("model", f"{p['name']}: {p['params']:,} params, batch {p['batch_size']} x {p['seq_len']} tokens"),
        ("mesh", f"{mesh} ({p['devices']} devices)"),
        ("params / device", _gib(p["params_bytes"])),
        ("optimizer state / device", _gib(p["opt_state_bytes"])),
        ("activations + temporaries / device", _gib(p["activation_bytes"])),
        ("peak / device (XLA)", _gib(p["peak_bytes"])),
        ("FLOPs / step (XLA)", f"{p['xla_flops_per_step']:.4g}"),
        ("FLOPs / step (analytic)", f"{p['analytic_flops_per_step']:.4g} (XLA / analytic = {p['flops_ratio']:.3f})"),
    ]
    if p["tokens_per_s"]:
        rows.append(
            (
                f"tokens/s at {p['peak_tflops_per_device']:g} TFLOP/s/device, MFU {p['mfu']:.0%}",
                f"{p['tokens_per_s']:,.0f}",
            )
        )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def reexec_with_fake_devices(argv: list[str], devices: int) -> int:
    """Run ``slm <argv>`` again in a subprocess that has ``devices`` fake CPU devices; return its exit status."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "SLM_PLAN_REEXEC": "1",
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip(),
    }
    code = "import sys; from slm_jax.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], env=env).returncode
