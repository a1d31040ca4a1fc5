"""Runs for tests/federated/test_sharding.py, in a process of its own with 8 fake CPU devices.

``python tests/federated/sharded_rounds.py`` prints one JSON object: for each setting, the
largest difference of the global parameters after 2 rounds between the clients axis on one
device and sharded over a ``clients`` mesh, the devices the client phase's outputs lived on,
and the round metrics' losses of both.
"""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from tests.federated.helpers import federation, tiny_clients, tiny_config  # noqa: E402

SETTINGS = {
    # name: train.federated keys; every one also runs with client_devices=1 as the reference
    "fedavg_8_on_8": dict(n_clients=10, clients_per_round=8, local_steps=2),
    "fedavg_6_padded_to_8_on_4": dict(n_clients=10, clients_per_round=6, local_steps=2, client_devices=4),
    "groups_of_4_on_4": dict(n_clients=10, clients_per_round=8, local_steps=2, clients_in_parallel=4, client_devices=4),
    "diloco_int8_dropped": dict(
        algorithm="diloco", n_clients=10, clients_per_round=8, local_steps=2, compression="int8", drop_fraction=0.3
    ),
    "secure_agg_dp": dict(n_clients=10, clients_per_round=8, local_steps=2, secure_agg=True, dp_clip=0.5, dp_noise=0.3),
}


def run(keys):
    clients = tiny_clients([60 + 20 * k for k in range(keys["n_clients"])])
    _, fed, state = federation(tiny_config(**keys), keys["n_clients"])
    seen = set()
    real = fed.client_phase

    def spy(*args):
        out = real(*args)
        seen.update(d.id for d in jax.tree.leaves(out)[0].sharding.device_set)
        return out

    fed.client_phase = spy
    losses = []
    for r in (1, 2):
        state, m = fed.run_round(state, r, clients)
        losses.append(m["loss"])
    return state, losses, len(seen), fed.plan


def main():
    assert jax.device_count() == 8, jax.devices()
    result = {}
    for name, keys in SETTINGS.items():
        ref, ref_losses, ref_devices, _ = run({**keys, "client_devices": 1})
        got, losses, devices, plan = run(keys)
        diff = max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves(ref["params"]), jax.tree.leaves(got["params"]), strict=True)
        )
        result[name] = {
            "max_abs_diff": diff,
            "devices": devices,
            "reference_devices": ref_devices,
            "plan_devices": plan.devices,
            "group": plan.group,
            "losses": losses,
            "reference_losses": ref_losses,
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
