"""Runs for tests/training/test_parallel.py, in a process of its own with 8 fake CPU devices.

``python tests/training/parallel_runs.py OUT_DIR`` prints one JSON object: per-step losses of
the same tiny run trained single-device, with pmap over 8 devices and on a (2, 2, 2) mesh, and
of runs resumed from 8-device checkpoints on 1, 2 and 4 devices with another strategy; plus
two steps of a recurrent preset and of an MoE model, single-device vs mesh.
"""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402
import shutil  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/slm_jax/jax_tests"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.models.lm import CausalLM  # noqa: E402
from slm_jax.training.optim import make_optimizer  # noqa: E402
from slm_jax.training.parallel import make_parallel  # noqa: E402
from slm_jax.training.step import init_state, make_train_step  # noqa: E402
from slm_jax.training.tracking import read_metrics  # noqa: E402
from slm_jax.training.train import train  # noqa: E402

MESH8 = [
    "train.parallel.strategy=mesh",
    "train.parallel.mesh.data=2",
    "train.parallel.mesh.fsdp=2",
    "train.parallel.mesh.tensor=2",
]


def config(out, *overrides, **model):
    raw = {
        "name": "p",
        "model": {"n_layers": 1, "d_model": 32, "n_heads": 4, "d_ff": 64, **model},
        "data": {"synthetic": "arithmetic", "cache_dir": os.path.join(out, "cache")},
        "train": {"steps": 5, "batch_size": 16, "seq_len": 16, "log_every": 1, "grad_accum": 2, "peak_flops": 1e9},
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        "eval": {"every": 0, "batches": 1},
        "checkpoint": {"every": 100, "async_save": False},
    }
    return config_from_dict(raw, list(overrides))


def losses(run_dir):
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


def run(out, name, *overrides, until=None, start_from=None):
    run_dir = os.path.join(out, name)
    if start_from:
        shutil.copytree(os.path.join(out, start_from), run_dir)
    train(config(out, *overrides), run_dir, until_step=until, progress=False)
    return losses(run_dir)


def preset_step_losses(out, preset, *extra):
    """Losses of 2 steps of ``preset`` (with ``extra`` overrides) on one device and on the (2, 2, 2) mesh, from
    the same init and batches."""
    cfg = config(out, f"model.preset={preset}", "model.vocab_size=64", "train.grad_accum=1", *extra)
    tc, results = cfg.train, {}
    model = CausalLM(cfg.model)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, tc.seq_len), np.int32)))
    optimizer, schedule = make_optimizer(cfg.optim, tc.steps, abstract)
    init = lambda opt: init_state(model, opt, 0, tc.seq_len)
    batches = np.random.default_rng(0).integers(0, 64, (2, tc.batch_size, tc.seq_len + 1), np.int32)
    spec = jax.ShapeDtypeStruct(batches.shape[1:], np.int32)
    for name, overrides in (("single", []), ("mesh", MESH8)):
        tcfg = config(
            out, f"model.preset={preset}", "model.vocab_size=64", "train.grad_accum=1", *extra, *overrides
        ).train
        par = make_parallel(tcfg, jax.eval_shape(lambda: init(optimizer)))
        state = par.init(init, optimizer)
        step = par.compile(
            lambda sync: make_train_step(model, optimizer, schedule, grad_accum=tc.grad_accum, sync=sync), state, spec
        )
        results[name] = []
        for b in batches:
            state, m = step(state, par.batch(b))
            results[name].append(float(par.host(m)["loss"]))
    return results


def main(out):
    result = {
        "single": run(out, "single"),
        "pmap8": run(out, "pmap8", "train.parallel.strategy=pmap", until=3),
        "mesh8": run(out, "mesh8", *MESH8, until=3),
    }
    # Topology changes: 8-device checkpoints at step 3, continued on 1, 2 and 4 devices.
    result["mesh8_to_single"] = run(out, "mesh8_to_single", start_from="mesh8")
    result["mesh8_to_pmap2"] = run(
        out, "mesh8_to_pmap2", "train.parallel.strategy=pmap", "train.parallel.devices=2", start_from="mesh8"
    )
    result["pmap8_to_mesh4"] = run(
        out,
        "pmap8_to_mesh4",
        "train.parallel.strategy=mesh",
        "train.parallel.devices=4",
        "train.parallel.mesh.fsdp=2",
        "train.parallel.mesh.tensor=2",
        start_from="pmap8",
    )
    result["presets"] = {
        "griffin": preset_step_losses(out, "griffin"),  # its 1 layer is RG-LRU: a recurrent mixer
        # 4 experts split 2-way over the tensor axis (expert parallelism), with the balancing loss in the loss
        "moe": preset_step_losses(out, "transformer", "model.moe.n_experts=4", "model.moe.d_expert=32"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
