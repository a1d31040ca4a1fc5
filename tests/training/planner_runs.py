"""Measurements for tests/training/test_planner.py, in a process of its own with 8 fake CPU devices.

``python tests/training/planner_runs.py CONFIG`` prints one JSON object: the planner's report
for CONFIG on a (2, 2, 2) mesh, and the bytes of live arrays on the fullest device after
initialising the state and running one real train step on that mesh.
"""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/slm_jax/jax_tests"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

from slm_jax.config import load_config  # noqa: E402
from slm_jax.models.lm import CausalLM  # noqa: E402
from slm_jax.training import planner  # noqa: E402
from slm_jax.training.optim import make_optimizer  # noqa: E402
from slm_jax.training.step import init_state  # noqa: E402


def live_bytes_per_device() -> int:
    """Bytes of all live jax arrays on the device that holds the most."""
    per_device: dict = {}
    for a in jax.live_arrays():
        for shard in a.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values())


def main(path):
    cfg = planner.plan_config(load_config(path), {"data": 2, "fsdp": 2, "tensor": 2}, 8)
    report = planner.plan(cfg, peak_tflops=100.0, mfu=0.5)
    compiled, _, par = planner.compile_step(cfg)
    tc, model = cfg.train, CausalLM(cfg.model)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, tc.seq_len), np.int32)))
    optimizer, _ = make_optimizer(cfg.optim, tc.steps, abstract)
    state = par.init(lambda opt: init_state(model, opt, tc.seed, tc.seq_len), optimizer)
    batch = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (tc.batch_size, tc.seq_len + 1), np.int32)
    state, metrics = compiled(state, par.batch(batch))
    jax.block_until_ready(state)
    del metrics
    print(json.dumps({"plan": report, "real_state_bytes": live_bytes_per_device()}))


if __name__ == "__main__":
    main(sys.argv[1])
