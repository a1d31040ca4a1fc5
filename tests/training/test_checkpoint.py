"""Checkpointer: round trip, retention with the best kept, gating, architecture mismatch, async safety."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from slm_jax.errors import CheckpointError
from slm_jax.rundir.checkpoint import Checkpointer, latest_checkpoint_step, read_run_config

CONFIG = {"name": "t", "model": {"d_model": 8, "n_layers": 1}, "train": {"steps": 100}}


def make_state(seed=0, width=8):
    """A trainer-shaped state: params, a real AdamW state (namedtuples), step, rng key data."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "embed": {"embedding": jax.random.normal(k1, (16, width))},
        "out": {"kernel": jax.random.normal(k2, (width, 16)), "bias": jnp.zeros(16)},
    }
    opt = optax.adamw(1e-3)
    opt_state = opt.init(params)
    # one real update so mu/nu/count are not all zeros (a zero restore would pass by luck)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)
    return {
        "params": params,
        "opt_state": opt_state,
        "step": jnp.array(7, jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed + 1)),
    }


def assert_tree_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_restores_state_data_state_and_config(tmp_path):
    state = make_state()
    expected = jax.tree.map(np.array, state)
    data_state = {"next_index": 123, "epoch": 2, "nested": {"a": [1, 2]}}
    with Checkpointer(tmp_path, every=1, keep=3) as ckpt:
        assert ckpt.save(7, state, data_state, CONFIG)
        ckpt.wait()
        restored, ds, cfg = ckpt.restore(jax.eval_shape(lambda: make_state()))
    assert_tree_equal(restored, expected)
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
    assert ds == data_state and cfg == CONFIG
    assert latest_checkpoint_step(tmp_path) == 7


def test_keep_rotation_keeps_best_beyond_window(tmp_path):
    losses = {10: 3.0, 20: 1.0, 30: 2.0, 40: None, 50: float("nan")}
    with Checkpointer(tmp_path, every=10, keep=2, async_save=True) as ckpt:
        for step, loss in losses.items():
            ckpt.save(step, make_state(step), {"i": step}, CONFIG, val_loss=loss)
        ckpt.wait()
        assert ckpt.all_steps() == [20, 40, 50]
        assert ckpt.latest_step() == 50 and ckpt.best_step() == 20
        best, ds, _ = ckpt.restore(jax.eval_shape(make_state), best=True)
    assert ds == {"i": 20}
    assert_tree_equal(best["params"], make_state(20)["params"])
    # a fresh Checkpointer (a resumed run) still knows the best from the metrics on disk
    with Checkpointer(tmp_path, every=10, keep=2) as ckpt:
        assert ckpt.best_step() == 20
        ckpt.save(60, make_state(60), {}, CONFIG, val_loss=0.5)
        assert ckpt.best_step() == 60  # no wait(): best_step must see the save in flight
        assert ckpt.best_step() == 60 and ckpt.all_steps() == [50, 60]


def test_without_keep_best_only_latest_survive(tmp_path):
    with Checkpointer(tmp_path, every=1, keep=2, keep_best=False, async_save=False) as ckpt:
        for step, loss in [(1, 0.1), (2, 5.0), (3, 6.0)]:
            ckpt.save(step, make_state(), {}, CONFIG, val_loss=loss)
        assert ckpt.all_steps() == [2, 3]


def test_every_gating_force_and_no_overwrite(tmp_path):
    with Checkpointer(tmp_path, every=5, keep=10, async_save=False) as ckpt:
        saved = [s for s in range(1, 13) if ckpt.save(s, make_state(), {}, CONFIG)]
        assert saved == [5, 10]
        assert ckpt.save(13, make_state(), {}, CONFIG, force=True)
        assert not ckpt.save(13, make_state(), {}, CONFIG, force=True)  # already on disk
        assert ckpt.all_steps() == [5, 10, 13]


def test_mismatched_architecture_raises_with_parameter_path(tmp_path):
    with Checkpointer(tmp_path, every=1, keep=2, async_save=False) as ckpt:
        ckpt.save(1, make_state(width=8), {}, CONFIG)
        with pytest.raises(
            CheckpointError, match=r"params/embed/embedding.*\(16, 8\).*\(16, 12\).*fresh run directory"
        ):
            ckpt.restore(jax.eval_shape(lambda: make_state(width=12)))
        wider = jax.eval_shape(
            lambda: {**make_state(), "params": {**make_state()["params"], "extra": {"w": jnp.zeros(3)}}}
        )
        with pytest.raises(CheckpointError, match="params/extra/w"):
            ckpt.restore(wider)


def test_restore_missing_step_or_empty_dir_is_clear(tmp_path):
    with Checkpointer(tmp_path, every=1, keep=2, async_save=False) as ckpt:
        with pytest.raises(CheckpointError, match="no checkpoint yet"):
            ckpt.restore(jax.eval_shape(make_state))
        ckpt.save(1, make_state(), {}, CONFIG)
        with pytest.raises(CheckpointError, match=r"step 9.*\[1\]"):
            ckpt.restore(jax.eval_shape(make_state), step=9)
        with pytest.raises(CheckpointError, match="validation loss"):
            ckpt.restore(jax.eval_shape(make_state), best=True)


def test_async_save_survives_deleting_and_mutating_sources(tmp_path):
    state = make_state()
    state["host"] = np.arange(1000, dtype=np.float32)
    expected = jax.tree.map(np.array, state)
    with Checkpointer(tmp_path, every=1, keep=2, async_save=True) as ckpt:
        assert ckpt.save(1, state, {}, CONFIG)
        # what a donated train step does to the old buffers, right after save returns
        for leaf in jax.tree.leaves(state):
            if isinstance(leaf, jax.Array):
                leaf.delete()
            else:
                leaf[:] = -1.0
        ckpt.wait()
        restored, _, _ = ckpt.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), expected))
    assert_tree_equal(restored, expected)


def test_restore_into_concrete_arrays(tmp_path):
    with Checkpointer(tmp_path, every=1, keep=2, async_save=False) as ckpt:
        ckpt.save(1, make_state(0), {}, CONFIG)
        restored, _, _ = ckpt.restore(make_state(5))
    assert_tree_equal(restored, jax.tree.map(np.array, make_state(0)))


def test_read_run_config_prefers_yaml_then_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a run directory"):
        read_run_config(tmp_path)
    assert latest_checkpoint_step(tmp_path) is None and not (tmp_path / "checkpoints").exists()
    with Checkpointer(tmp_path, every=1, keep=2, async_save=False) as ckpt:
        ckpt.save(3, make_state(), {}, CONFIG)
    assert read_run_config(tmp_path) == CONFIG
    (tmp_path / "config.yaml").write_text("name: from_yaml\nmodel:\n  d_model: 4\n")
    assert read_run_config(tmp_path) == {"name": "from_yaml", "model": {"d_model": 4}}
    (tmp_path / "config.yaml").write_text("- just\n- a list\n")
    with pytest.raises(CheckpointError, match="config.yaml"):
        read_run_config(tmp_path)


def test_no_pickle_files_written(tmp_path):
    with Checkpointer(tmp_path, every=1, keep=2, async_save=False) as ckpt:
        ckpt.save(1, make_state(), {"k": 1}, CONFIG)
    step_dir = tmp_path / "checkpoints" / "1"
    assert json.loads((step_dir / "config" / "metadata").read_text()) == CONFIG
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pkl", ".pickle")]
