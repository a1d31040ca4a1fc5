"""`slm plan`: its memory matches the arrays a real step leaves on a device, its FLOPs the closed-form count."""

import json
import os
import subprocess
import sys

import pytest

from slm_jax.cli import main
from slm_jax.errors import ConfigError
from slm_jax.training.planner import mesh_devices, parse_mesh

HERE = os.path.dirname(__file__)
CONFIG = """name: plansmall
model: {n_layers: 1, d_model: 128, n_heads: 4, vocab_size: 512}
train: {batch_size: 16, seq_len: 64}
"""


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "plan.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def measured(config_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "planner_runs.py"), str(config_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_planned_bytes_match_a_real_step_within_20_percent(measured):
    plan, real = measured["plan"], measured["real_state_bytes"]
    # 1-layer d=128 model with vocab 512: ~200k params; fsdp x tensor = 4 splits -> ~0.27 MB params per device.
    assert 200_000 < plan["params_bytes"] < 350_000
    assert abs(plan["params_bytes"] + plan["opt_state_bytes"] - real) <= 0.2 * real, (plan, real)
    assert abs(plan["argument_bytes"] - real) <= 0.2 * real, (plan, real)
    assert plan["activation_bytes"] > 0 and plan["peak_bytes"] >= plan["argument_bytes"]


def test_planned_flops_match_the_analytic_count_within_10_percent(measured):
    plan = measured["plan"]
    assert 0.9 <= plan["flops_ratio"] <= 1.1, plan
    tokens_per_step = plan["batch_size"] * plan["seq_len"]
    expected = 8 * 100e12 * 0.5 / (plan["analytic_flops_per_step"] / tokens_per_step)
    assert plan["tokens_per_s"] == pytest.approx(expected)


def test_cli_replans_on_fake_devices_in_a_subprocess(config_path, capfd, monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/slm_jax/jax_tests"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    assert (
        main(
            [
                "plan",
                str(config_path),
                "--mesh",
                "data=2,fsdp=2,tensor=2",
                "--peak-tflops",
                "100",
                "--mfu",
                "0.5",
                "--json",
            ]
        )
        == 0
    )
    out = capfd.readouterr().out
    result = json.loads(out[out.index("{") :])
    assert result["devices"] == 8 and result["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert 0.9 <= result["flops_ratio"] <= 1.1


def test_mesh_argument_errors():
    assert parse_mesh("fsdp=4,tensor=2") == {"data": -1, "fsdp": 4, "tensor": 2}
    assert mesh_devices(parse_mesh("data=-1,tensor=2"), 8) == 8
    with pytest.raises(ConfigError, match="AXIS=SIZE"):
        parse_mesh("pipeline=2")
    with pytest.raises(ConfigError, match="--devices"):
        mesh_devices(parse_mesh("tensor=2"), 0)
