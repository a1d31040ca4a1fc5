"""The clients axis sharded over a device mesh gives the single-device round (8 fake CPU devices, a subprocess)."""

import json
import os
import subprocess
import sys

import pytest

from slm_jax.errors import ConfigError
from slm_jax.federated import rounds
from tests.federated.helpers import tiny_config

HERE = os.path.dirname(__file__)
# float32: a device sums its share of clients, then the devices' partial sums are added, so the
# weighted mean is summed in another order than on one device; 2 rounds of tiny updates stay
# within a few ulps of parameters of size ~0.1-1.
TOL = 1e-6


@pytest.fixture(scope="module")
def sharded():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "sharded_rounds.py")], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "name, devices, group",
    [
        ("fedavg_8_on_8", 8, 8),
        ("fedavg_6_padded_to_8_on_4", 4, 8),
        ("groups_of_4_on_4", 4, 4),
        ("diloco_int8_dropped", 8, 8),
        ("secure_agg_dp", 8, 8),
    ],
)
def test_sharded_round_equals_single_device_round(sharded, name, devices, group):
    got = sharded[name]
    assert (got["plan_devices"], got["group"]) == (devices, group)
    assert got["devices"] == devices and got["reference_devices"] == 1  # the client phase really ran spread out
    assert got["max_abs_diff"] < TOL
    assert got["losses"] == pytest.approx(got["reference_losses"], abs=TOL)


def test_more_client_devices_than_the_host_has_is_refused():
    with pytest.raises(ConfigError, match="client_devices=64"):
        rounds.make_plan(tiny_config(n_clients=4, client_devices=64), 4)
