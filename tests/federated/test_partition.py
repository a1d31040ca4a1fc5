"""Dirichlet label-skew partitions, their config errors and `slm data partition`."""

import json

import numpy as np
import pytest

from slm_jax.cli import main
from slm_jax.config import config_from_dict
from slm_jax.data.source import open_dataset
from slm_jax.errors import ConfigError
from slm_jax.federated.partition import dirichlet_clients, gini, line_labels

NL = 0


def _lines(n_lines, n_labels=4, seed=0):
    """Token ids of ``n_lines`` lines ``label x x x NL`` with labels 1..n_labels and random bodies."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, n_labels + 1, n_lines)
    body = rng.integers(5, 9, (n_lines, 3))
    return np.concatenate([labels[:, None], body, np.full((n_lines, 1), NL)], axis=1).reshape(-1).astype(np.int32)


def _label_mix(tokens, n_labels=4):
    _, labels = line_labels(tokens, NL)
    return np.bincount(labels, minlength=n_labels + 1)[1:] / len(labels)


def test_line_labels_are_first_tokens_and_cover_every_token():
    tokens = np.array([3, 1, 0, 4, 0, 2, 2])  # the last line has no newline
    lengths, labels = line_labels(tokens, 0)
    assert lengths.tolist() == [3, 2, 2] and labels.tolist() == [3, 4, 2]


@pytest.mark.parametrize("alpha", [0.05, 100.0])
def test_dirichlet_clients_split_every_line_and_skew_with_small_alpha(alpha):
    train, val = _lines(4000), _lines(1000, seed=1)
    clients = dirichlet_clients(train, val, NL, 4, alpha, 5, seed=0)
    assert sum(c.size for c in clients) == len(train)
    assert sum(len(c.val) for c in clients) == len(val)
    assert sorted(np.concatenate([c.train for c in clients]).tolist()) == sorted(train.tolist())
    # distance of each client's label mix from the global one (total variation)
    tv = [0.5 * np.abs(_label_mix(c.train) - _label_mix(train)).sum() for c in clients]
    assert (max(tv) > 0.3) if alpha < 1 else (max(tv) < 0.1)
    # a client's validation lines follow its own label mix
    if alpha < 1:
        for c in clients:
            if len(c.val) > 200:
                assert np.abs(_label_mix(c.val) - _label_mix(c.train)).max() < 0.2


def test_dirichlet_is_deterministic_in_the_seed():
    train, val = _lines(500), _lines(200, seed=1)
    a = dirichlet_clients(train, val, NL, 3, 0.5, 5, seed=0)
    b = dirichlet_clients(train, val, NL, 3, 0.5, 5, seed=0)
    c = dirichlet_clients(train, val, NL, 3, 0.5, 5, seed=1)
    assert all(np.array_equal(x.train, y.train) for x, y in zip(a, b))
    assert any(not np.array_equal(x.train, y.train) for x, y in zip(a, c))


def test_an_empty_client_is_one_sentence_naming_the_key():
    with pytest.raises(ConfigError) as e:
        dirichlet_clients(_lines(40), _lines(10, seed=1), NL, 30, 0.01, 5, seed=0)
    message = str(e.value)
    assert "train.federated.dirichlet_alpha" in message and "\n" not in message and message.endswith(".")


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_alpha_must_be_positive(alpha):
    with pytest.raises(ConfigError, match="train.federated.dirichlet_alpha"):
        config_from_dict({"train": {"federated": {"algorithm": "fedavg", "n_clients": 2, "dirichlet_alpha": alpha}}})


def test_gini_of_sizes():
    assert gini(np.array([5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 10])) == pytest.approx(0.75)


def test_slm_data_partition_writes_prepared_shards_and_a_manifest(tmp_path, capsys):
    rng = np.random.default_rng(0)
    corpus = tmp_path / "lines.txt"
    corpus.write_text("".join(f"{w}>{w[::-1]}\n" for w in ("".join(rng.choice(list("abcdef"), 5)) for _ in range(600))))
    overrides = [
        f"data.path={corpus}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.seq_len=8",
        "train.federated.partition=dirichlet",
        "train.federated.n_clients=3",
        "train.federated.dirichlet_alpha=0.3",
    ]
    args = ["data", "partition", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "shards")]
    (tmp_path / "none.yaml").write_text("name: part\n")
    assert main([*args, *(x for o in overrides for x in ("--set", o))]) == 0
    printed = capsys.readouterr().out
    assert "3 clients (dirichlet)" in printed and "Gini" in printed
    manifest = json.loads((tmp_path / "shards" / "partition.json").read_text())
    assert manifest["n_clients"] == 3 and manifest["dirichlet_alpha"] == 0.3
    sizes = [c["train"] for c in manifest["clients"]]
    assert manifest["stats"]["tokens_min"] == min(sizes) and f"max {max(sizes):,}" in printed
    text = corpus.read_text()  # every client line is a corpus line (or a piece cut at the val split)
    for entry in manifest["clients"]:
        data = open_dataset(tmp_path / "shards" / entry["dir"])
        assert len(data.train) == entry["train"] and len(data.val) == entry["val"]
        assert all(line in text for line in data.tokenizer.decode(np.asarray(data.train)).splitlines())


def test_slm_data_partition_without_n_clients_exits_2(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("data:\n  synthetic: reverse\n")
    assert main(["data", "partition", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "train.federated.n_clients" in capsys.readouterr().err
