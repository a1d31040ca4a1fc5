"""Masked-LM training of encoders (training/mlm.py): the masking, the config's refusals, and
``slm train`` / ``slm eval`` / ``slm generate`` on a tiny encoder end to end."""

import json

import numpy as np
import pytest
import yaml

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.training.mlm import mask_batch, n_masked
from tests.tiny_runs import run_cli as run

VOCAB = 50


def train_cfg(**train):
    return config_from_dict({"model": {"preset": "bert_like"}, "train": {"objective": "mlm", **train}}).train


def test_masking_picks_m_positions_and_replaces_80_10_10():
    tc = train_cfg(seq_len=40, mask_rate=0.25)
    windows = np.random.default_rng(0).integers(0, VOCAB, (500, 41)).astype(np.int32)
    out = mask_batch(windows, tc, VOCAB)
    m = n_masked(40, 0.25)
    assert m == 10 and out["inputs"].shape == (500, 40) and out["labels"].shape == out["label_positions"].shape
    pos = out["label_positions"]
    assert (np.diff(pos, axis=1) > 0).all() and pos.min() >= 0 and pos.max() < 40  # distinct, in order
    np.testing.assert_array_equal(out["labels"], np.take_along_axis(windows, pos, axis=1))
    unmasked = np.ones((500, 40), bool)
    np.put_along_axis(unmasked, pos, False, axis=1)
    np.testing.assert_array_equal(out["inputs"][unmasked], windows[:, :40][unmasked])
    shown = np.take_along_axis(out["inputs"], pos, axis=1)
    as_mask = (shown == VOCAB).mean()
    kept = (shown == out["labels"]).mean()  # unchanged, plus random draws that hit the original (1 / 50 of 10%)
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - (0.1 + 0.1 / VOCAB)) < 0.02, (as_mask, kept)
    assert shown.max() <= VOCAB and (shown[shown != VOCAB] < VOCAB).all()


def test_masking_is_a_function_of_seed_and_tokens():
    tc = train_cfg(seq_len=16)
    windows = np.random.default_rng(1).integers(0, VOCAB, (4, 17)).astype(np.int32)
    a, b = mask_batch(windows, tc, VOCAB), mask_batch(windows.copy(), tc, VOCAB)
    assert all((a[k] == b[k]).all() for k in a)
    other = mask_batch(windows, train_cfg(seq_len=16, seed=1), VOCAB)
    assert not (other["label_positions"] == a["label_positions"]).all()


def test_mask_probabilities_are_configurable():
    tc = train_cfg(seq_len=30, mask_token_prob=0.0, random_token_prob=0.0)
    windows = np.random.default_rng(2).integers(0, VOCAB, (8, 31)).astype(np.int32)
    np.testing.assert_array_equal(mask_batch(windows, tc, VOCAB)["inputs"], windows[:, :30])  # all kept as is


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"objective": "mlm"}}, "needs an encoder"),
        ({"model": {"preset": "bert_like"}, "train": {"objective": "mlm", "mask_rate": 0.0}}, "mask_rate"),
        ({"model": {"preset": "bert_like"}, "train": {"objective": "mlm", "mask_rate": 1.0}}, "mask_rate"),
        ({"model": {"preset": "bert_like"}, "train": {"mask_token_prob": 0.9, "random_token_prob": 0.2}}, "sum"),
        ({"train": {"objective": "span"}}, "clm or mlm"),
        ({"model": {"bidirectional_combine": "max"}}, "sum or concat"),
    ],
)
def test_bad_mlm_settings_are_one_sentence(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_train_eval_and_refused_generate_on_an_encoder(capsys, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be, that is the question. " * 300)
    config = tmp_path / "encoder.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "tiny_encoder",
                "model": {"preset": "hybrid_encoder", "n_layers": 3, "d_model": 32, "n_heads": 2},
                "data": {"path": str(text)},
                "optim": {"lr": 3e-3, "warmup_steps": 2},
                "train": {
                    "objective": "mlm",
                    "steps": 60,
                    "batch_size": 8,
                    "seq_len": 32,
                    "log_every": 1,
                    "mask_rate": 0.3,
                },
                "eval": {"every": 60, "batches": 2},
                "checkpoint": {"every": 60},
            }
        )
    )
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", str(config), "--run-dir", str(run_dir), "--no-progress")
    assert code == 0, err
    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 60 and np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses

    code, out, err = run(capsys, "eval", str(run_dir), "--batches", "2")
    result = json.loads(out)
    assert code == 0 and result["objective"] == "mlm" and 0.0 < result["val_accuracy"] <= 1.0, (out, err)
    assert result["val_tokens"] == 2 * 8 * n_masked(32, 0.3)  # scored only where masked

    code, out, err = run(capsys, "generate", str(run_dir), "--prompt", "to be")
    assert code == 2 and err.startswith("error: ") and "encoder" in err and err.count("\n") == 1
