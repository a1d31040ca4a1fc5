"""Data parallel (pmap) and sharded (mesh) training match one device; checkpoints move across topologies.

The multi-device runs need 8 fake CPU devices, which must be set before JAX starts, so they
run in a subprocess (tests/training/parallel_runs.py) once per session.
"""

import json
import os
import subprocess
import sys

import jax
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from slm_jax.config import MeshConfig, config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.models.lm import CausalLM
from slm_jax.presets import PRESETS
from slm_jax.training.optim import make_optimizer
from slm_jax.training.sharding import MESH_AXES, param_axes, resolve_mesh_shape, state_specs
from slm_jax.training.step import init_state

HERE = os.path.dirname(__file__)
TOL = 2e-5  # float32 sums in another order


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "parallel_runs.py"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: {int(s): v for s, v in d.items()} if k != "presets" else d for k, d in result.items()}


def close(a, b, steps):
    return all(abs(a[s] - b[s]) < TOL for s in steps)


def test_single_pmap_and_mesh_give_the_same_losses(runs):
    single = runs["single"]
    assert sorted(single) == [1, 2, 3, 4, 5] and single[5] < single[1]
    assert sorted(runs["pmap8"]) == sorted(runs["mesh8"]) == [1, 2, 3]
    assert close(runs["pmap8"], single, [1, 2, 3]), (runs["pmap8"], single)
    assert close(runs["mesh8"], single, [1, 2, 3]), (runs["mesh8"], single)


@pytest.mark.parametrize("name", ["mesh8_to_single", "mesh8_to_pmap2", "pmap8_to_mesh4"])
def test_eight_device_checkpoint_continues_on_another_topology(runs, name):
    resumed = runs[name]
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    assert close(resumed, runs["single"], [4, 5]), (resumed, runs["single"])


@pytest.mark.parametrize("name", ["griffin", "moe"])  # a recurrent mixer; experts sharded over the tensor axis
def test_a_recurrent_or_moe_model_trains_the_same_on_a_mesh(runs, name):
    r = runs["presets"][name]
    assert len(r["single"]) == 2 and all(abs(a - b) < TOL for a, b in zip(r["single"], r["mesh"])), r


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_shards_its_weights(preset):
    cfg = config_from_dict(
        {
            "model": {
                "preset": preset,
                "d_model": 32,
                "n_heads": 4,
                "n_layers": len(PRESETS[preset]["layer_pattern"]),
                "vocab_size": 64,
            }
        }
    )
    model = CausalLM(cfg.model)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 8), "int32")))
    optimizer, _ = make_optimizer(cfg.optim, 10, abstract)
    state = jax.eval_shape(lambda: init_state(model, optimizer, 0, 8))
    specs = state_specs(state, AbstractMesh((2, 2, 2), MESH_AXES))
    flat = {
        jax.tree_util.keystr(p): s
        for p, s in jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
    }
    params = {k[len("['params']") :]: s for k, s in flat.items() if k.startswith("['params']")}
    # Every 2-D weight is split over fsdp (d_model side) and the mixer's in-projection over tensor too.
    kernels = {k: s for k, s in params.items() if "kernel" in k}
    assert all("fsdp" in tuple(s) for k, s in kernels.items() if ("in_proj" in k or "qkv" in k or "gate_up" in k)), (
        kernels
    )
    assert any("tensor" in tuple(s) for k, s in params.items() if "mixer" in k), params
    # Adam moments are placed like their parameters.
    mu = {k[k.index("['params']") :]: s for k, s in flat.items() if ".mu" in k}
    assert len(mu) == len(params) and all(params[k] == s for k, s in mu.items())
    assert flat["['step']"] == P()


def test_param_axes_and_mesh_sizes():
    assert param_axes("params/layers_0/mlp/down/kernel", 2) == ("mlp", "embed")
    assert param_axes("params/periods/block_0/mixer/qkv/kernel", 3) == ("layers", "embed", "heads")
    assert param_axes("params/layers_0/mixer/A_log", 2) == ("inner", None)
    assert param_axes("params/unknown/thing", 2) == (None, None)
    assert resolve_mesh_shape(MeshConfig(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
    assert resolve_mesh_shape(MeshConfig(data=1, fsdp=-1, tensor=1), 4) == (1, 4, 1)
    with pytest.raises(ConfigError, match="needs 12 devices"):
        resolve_mesh_shape(MeshConfig(data=3, fsdp=2, tensor=2), 8)


def test_bad_parallel_config_is_one_clear_error():
    with pytest.raises(ConfigError, match="strategy must be none, pmap or mesh"):
        config_from_dict({"train": {"parallel": {"strategy": "ddp"}}})
    with pytest.raises(ConfigError, match="at most one -1"):
        config_from_dict({"train": {"parallel": {"mesh": {"data": -1, "fsdp": -1}}}})
