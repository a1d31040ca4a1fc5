"""The Flower adapter: a server and two clients as separate processes equal the simulation bit for bit."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr is not installed; `pip install -e '.[federated]'` to run the Flower test")

from slm_jax.cli import main  # noqa: E402
from slm_jax.config import load_config  # noqa: E402
from slm_jax.errors import ConfigError  # noqa: E402
from slm_jax.federated import flower  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(address: str, server: subprocess.Popen, timeout: float = 60.0) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the Flower server did not listen on {address} (exit code {server.poll()})")


def _config(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    corpus = tmp_path / "lines.txt"
    corpus.write_text("".join(f"{w}>{w[::-1]}\n" for w in ("".join(rng.choice(list("abcdef"), 4)) for _ in range(400))))
    path = tmp_path / "fed.yaml"
    path.write_text(
        f"""name: flower
data: {{path: {corpus}, cache_dir: {tmp_path / "cache"}}}
model: {{n_layers: 1, d_model: 16, n_heads: 2}}
train:
  seq_len: 8
  batch_size: 2
  federated:
    algorithm: fedavg
    partition: dirichlet
    dirichlet_alpha: 1.0
    n_clients: 2
    rounds: {ROUNDS}
    local_steps: 2
    compression: int8
    server_optimizer: adam
    clients_in_parallel: 1
"""
    )
    return path


def test_two_flower_clients_in_their_own_processes_equal_the_simulation(tmp_path):
    config = _config(tmp_path)
    shards = tmp_path / "shards"
    assert main(["data", "partition", str(config), "--out", str(shards)]) == 0
    address = f"127.0.0.1:{_free_port()}"
    common = [str(config), "--shards", str(shards), "--address", address]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = [sys.executable, "-m", "slm_jax.federated.flower"]
    out = tmp_path / "flower.npz"
    procs = [subprocess.Popen([*run, "server", *common, "--out", str(out)], env=env, cwd=ROOT)]
    try:
        _wait_for_port(address, procs[0])  # clients that find no server back off for many seconds
        procs += [subprocess.Popen([*run, "client", *common, "--index", str(k)], env=env, cwd=ROOT) for k in (0, 1)]
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0, 0]

    cfg = load_config(config)
    clients = [flower.load_shard(shards, k) for k in (0, 1)]
    fed, state = flower.build(cfg, shards)
    for r in range(1, ROUNDS + 1):
        state, _ = fed.run_round(state, r, clients)
    received = np.load(out, allow_pickle=False)
    simulated = {
        jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state["params"])
    }
    assert sorted(received.files) == sorted(simulated)
    initial = jax.tree.leaves(flower.build(cfg, shards)[1]["params"])
    assert not np.array_equal(jax.tree.leaves(state["params"])[0], initial[0])  # it trained
    for name, x in simulated.items():
        np.testing.assert_array_equal(received[name], x)  # same jitted phases on the same inputs: exact


def test_secure_aggregation_over_flower_is_one_sentence(tmp_path):
    config = _config(tmp_path)
    shards = tmp_path / "shards"
    assert main(["data", "partition", str(config), "--out", str(shards)]) == 0
    with pytest.raises(ConfigError, match="train.federated.secure_agg"):
        flower.build(load_config(config, ["train.federated.secure_agg=true"]), shards)
