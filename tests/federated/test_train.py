"""`slm train` with train.federated: config mistakes, partitions, metrics, resume, the privacy budget."""

import json

import numpy as np
import pytest

from slm_jax.config import config_from_dict, load_config
from slm_jax.data.tokenizers import CharTokenizer
from slm_jax.errors import ConfigError
from slm_jax.federated import privacy
from slm_jax.federated.partition import iid_clients, role_clients, speaking_roles
from slm_jax.rundir.checkpoint import latest_checkpoint_step
from slm_jax.training.train import train

ROLE_TEXT = "ANNA:\nHello there.\nMore words.\n\nBOB:\nHi.\n\nANNA:\nAgain I speak.\n"


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"fraction": 0.0}, "train.federated.fraction"),
        ({"fraction": 1.5}, "train.federated.fraction"),
        ({"clients_per_round": 9}, "train.federated.clients_per_round"),
        ({"server_optimizer": "adamm"}, "train.federated.server_optimizer"),
        ({"algorithm": "fedavgg"}, "train.federated.algorithm"),
        ({"dp_noise": 1.0}, "train.federated.dp_clip"),
        ({"dp_epsilon": 3.0}, "train.federated.dp_noise"),
        ({"n_clients": 0}, "train.federated.n_clients"),
        ({"secure_agg": True, "compression": "int8"}, "train.federated.compression"),
        ({"algorithm": "fedsgd", "local_steps": 3}, "train.federated.local_steps"),
        ({"partition": "dirichlett"}, "train.federated.partition"),
        ({"partition": "dirichlet", "dirichlet_alpha": 0.0}, "train.federated.dirichlet_alpha"),
        ({"target_accuracy": 1.5}, "train.federated.target_accuracy"),
        ({"client_devices": -1}, "train.federated.client_devices"),
    ],
)
def test_each_config_mistake_is_one_sentence_naming_the_key(overrides, key):
    federated = {"algorithm": "fedavg", "n_clients": 4, **overrides}
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"federated": federated}})
    message = str(e.value)
    assert key in message and "\n" not in message and message.endswith(".")


def test_speaking_roles_and_role_clients():
    roles = speaking_roles(ROLE_TEXT)
    assert roles == {"ANNA": "Hello there.\nMore words.\nAgain I speak.\n", "BOB": "Hi.\n"}
    tok = CharTokenizer.from_text(ROLE_TEXT)
    clients = role_clients(ROLE_TEXT, tok, 0.2, 3)
    assert [c.name for c in clients] == ["ANNA"]  # BOB is too small for a split
    assert tok.decode(np.concatenate([clients[0].train, clients[0].val])) == roles["ANNA"]
    with pytest.raises(ConfigError, match="n_clients"):
        role_clients(ROLE_TEXT, tok, 0.2, 3, n_clients=2)


def test_shakespeare_roles_are_non_iid_clients(shakespeare_path):
    text = open(shakespeare_path, encoding="utf-8").read()
    clients = role_clients(text, CharTokenizer.from_text(text), 0.1, 65)
    sizes = [c.size for c in clients]
    assert len(clients) > 100 and sizes == sorted(sizes, reverse=True) and sizes[0] > 20 * sizes[-1]
    assert {"GLOUCESTER", "MENENIUS"} <= {c.name for c in clients}


def test_iid_clients_are_equal_disjoint_shares():
    train_tokens = np.arange(1000, dtype=np.int32)
    clients = iid_clients(train_tokens, np.arange(300, dtype=np.int32), 3, 50, 10, seed=0)
    assert [c.size for c in clients] == [300, 300, 300]
    joined = np.concatenate([c.train for c in clients])
    assert len(set(joined.tolist())) == 900


def _cfg(tmp_path, **federated):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    federated = {
        "algorithm": "fedavg",
        "n_clients": 4,
        "clients_per_round": 2,
        "rounds": 4,
        "local_steps": 2,
        **federated,
    }
    return load_config(
        None,
        [
            ("data.path", str(corpus)),
            ("data.cache_dir", str(tmp_path / "cache")),
            ("model.n_layers", 1),
            ("model.d_model", 16),
            ("model.n_heads", 2),
            ("train.seq_len", 16),
            ("train.batch_size", 2),
            ("eval.every", 2),
            ("eval.batches", 2),
            ("checkpoint.every", 2),
            ("checkpoint.async_save", False),
            *((f"train.federated.{k}", v) for k, v in federated.items()),
        ],
    )


def _rounds(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "round_s"} for line in lines]


def test_resume_after_a_stop_repeats_the_round_metrics(tmp_path):
    cfg = _cfg(tmp_path, server_optimizer="adam", compression="int8", drop_fraction=0.3)
    whole = train(cfg, tmp_path / "whole", progress=False)
    stopped = train(cfg, tmp_path / "parts", until_step=3, progress=False)
    assert stopped["round"] == 3
    resumed = train(cfg, tmp_path / "parts", progress=False)
    assert resumed["round"] == 4 and resumed["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-6)
    assert _rounds(tmp_path / "parts") == _rounds(tmp_path / "whole")
    first = _rounds(tmp_path / "whole")[0]
    assert first["bytes_up"] > 0 and first["bytes_down"] > 0 and first["step"] == 1
    assert resumed["bytes_up_total"] == sum(r.get("bytes_up", 0) for r in _rounds(tmp_path / "whole"))


def test_dp_run_logs_epsilon_and_stops_at_the_budget(tmp_path, capsys):
    noise, q = 1.0, 2 / 4
    budget = (privacy.epsilon(2, q, noise, 1e-5) + privacy.epsilon(3, q, noise, 1e-5)) / 2
    cfg = _cfg(tmp_path, dp_clip=0.5, dp_noise=noise, dp_epsilon=budget)
    summary = train(cfg, tmp_path / "dp", progress=True)
    assert summary["round"] == 2 and "dp_epsilon" in summary["stopped_reason"]
    printed = capsys.readouterr()
    assert "Stopped before round 3" in printed.out + printed.err
    eps = [r["epsilon"] for r in _rounds(tmp_path / "dp") if "epsilon" in r]
    assert len(eps) == 2 and eps[0] < eps[1] <= budget
    with pytest.raises(ConfigError, match="dp_epsilon"):
        train(_cfg(tmp_path, dp_clip=0.5, dp_noise=noise, dp_epsilon=0.01), tmp_path / "dp2", progress=False)


def test_target_accuracy_stops_at_the_first_eval_that_reaches_it(tmp_path):
    whole = train(_cfg(tmp_path, client_lr=0.5), tmp_path / "whole", progress=False)
    acc = {r["step"]: r["val_accuracy"] for r in _rounds(tmp_path / "whole") if "val_accuracy" in r}
    assert sorted(acc) == [2, 4] and whole["round"] == 4
    target = acc[2]
    summary = train(_cfg(tmp_path, client_lr=0.5, target_accuracy=target), tmp_path / "target", progress=False)
    assert summary["round"] == 2 and "reached val_accuracy" in summary["stopped_reason"]
    assert max(r["step"] for r in _rounds(tmp_path / "target")) == 2
    assert latest_checkpoint_step(tmp_path / "target") == 2
