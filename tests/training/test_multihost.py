"""Two processes x 4 CPU devices train in lockstep, like one process with 8 devices, and write one checkpoint.

`slm train` joins jax.distributed from the usual environment (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID); JAX_NUM_CPU_DEVICES gives each process 4 CPU devices.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.models.lm import CausalLM
from slm_jax.rundir.checkpoint import Checkpointer, read_run_config
from slm_jax.training.distributed import launched_distributed
from slm_jax.training.optim import make_optimizer
from slm_jax.training.step import init_state
from slm_jax.training.tracking import read_metrics

SLM = os.path.join(os.path.dirname(sys.executable), "slm")
CONFIG = """name: multihost
model: {n_layers: 1, d_model: 32, n_heads: 4, d_ff: 64}
data: {synthetic: arithmetic, cache_dir: CACHE}
train: {steps: 4, batch_size: 16, seq_len: 16, log_every: 1, grad_accum: 2, peak_flops: 1.0e9,
        parallel: {strategy: mesh, mesh: {data: 2, fsdp: 2, tensor: 2}}}
optim: {lr: 1.0e-2, warmup_steps: 1}
eval: {every: 0, batches: 1}
checkpoint: {every: 100}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config, run_dir, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    base.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=os.path.expanduser("~/.cache/slm_jax/jax_tests"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        **env,
    )
    return subprocess.Popen(
        [SLM, "train", str(config), "--run-dir", str(run_dir), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base,
    )


def summary(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out[out.index("{") :])


def restore_params(run_dir):
    cfg = config_from_dict(read_run_config(run_dir))
    model = CausalLM(cfg.model)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 16), np.int32)))
    optimizer, _ = make_optimizer(cfg.optim, cfg.train.steps, abstract)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
        jax.eval_shape(lambda: init_state(model, optimizer, 0, 16)),
    )
    with Checkpointer(run_dir, 100, 2) as ckpt:
        assert ckpt.all_steps() == [4]
        state, data_state, _ = ckpt.restore(target)
    return state, data_state


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    config = tmp / "config.yaml"
    config.write_text(CONFIG.replace("CACHE", str(tmp / "cache")))
    port = free_port()
    dist = dict(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_NUM_CPU_DEVICES="4")
    procs = [launch(config, tmp / "two", JAX_PROCESS_ID=str(i), **dist) for i in range(2)]
    single = launch(config, tmp / "one", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    return {"two": [summary(p) for p in procs], "one": summary(single), "dirs": (tmp / "one", tmp / "two")}


def test_two_processes_train_in_lockstep_like_one_process(runs):
    first, second = runs["two"]
    assert first["step"] == second["step"] == 4
    assert first["loss"] == second["loss"] and first["val_loss"] == second["val_loss"]
    one_dir, two_dir = runs["dirs"]
    one = {m["step"]: m["loss"] for m in read_metrics(one_dir) if "loss" in m}
    two = {m["step"]: m["loss"] for m in read_metrics(two_dir) if "loss" in m}
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    assert all(abs(one[s] - two[s]) < 2e-5 for s in one), (one, two)
    assert abs(first["loss"] - runs["one"]["loss"]) < 2e-5


def test_two_processes_write_one_consistent_checkpoint(runs):
    one_dir, two_dir = runs["dirs"]
    one, one_data = restore_params(one_dir)
    two, two_data = restore_params(two_dir)
    assert one_data == two_data == {"next_index": 4}
    for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(two["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert not (two_dir / "process_1").exists()


def test_launch_environment_detection():
    assert not launched_distributed({})
    assert launched_distributed({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert launched_distributed({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"})
    assert not launched_distributed({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"})
    assert launched_distributed({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"})
