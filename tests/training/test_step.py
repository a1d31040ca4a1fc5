"""The three batch forms of the train/eval step agree, and gathering logits changes nothing."""

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.config import config_from_dict
from slm_jax.models.lm import CausalLM
from slm_jax.training.optim import make_optimizer
from slm_jax.training.step import init_state, make_eval_step, make_loss_fn, make_train_step

CFG = config_from_dict({"model": {"vocab_size": 29, "d_model": 32, "n_heads": 2, "n_layers": 2}})


def setup():
    model = CausalLM(CFG.model)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    window = jax.random.randint(jax.random.key(1), (4, 17), 0, 29)
    return model, params, window


def task_forms(window):
    """The window as a full-target dict with 3 scored positions per row, and its compact form."""
    inputs, targets = window[:, :-1], np.asarray(window[:, 1:])
    positions = np.array([[2, 5, 15], [0, 1, 2], [7, 9, 11], [3, 4, 14]])
    masked = np.full_like(targets, -1)
    np.put_along_axis(masked, positions, np.take_along_axis(targets, positions, 1), 1)
    labels = np.take_along_axis(targets, positions, 1)
    return {"inputs": inputs, "targets": masked}, {"inputs": inputs, "label_positions": positions, "labels": labels}


def test_text_window_equals_all_scored_dict():
    model, params, window = setup()
    loss_fn = make_loss_fn(model)
    as_dict = {"inputs": window[:, :-1], "targets": window[:, 1:]}
    np.testing.assert_allclose(loss_fn(params, window)[0], loss_fn(params, as_dict)[0], rtol=1e-6)


def test_compact_labels_equal_masked_targets():
    model, params, window = setup()
    masked, compact = task_forms(window)
    eval_step = jax.jit(make_eval_step(model))
    a, b = eval_step(params, masked), eval_step(params, compact)
    assert float(a["tokens"]) == float(b["tokens"]) == 12
    np.testing.assert_allclose(a["loss_sum"], b["loss_sum"], rtol=1e-5)
    np.testing.assert_allclose(a["correct"], b["correct"])
    full = make_loss_fn(model)(params, window)[0]
    assert abs(float(a["loss_sum"]) / 12 - float(full)) > 1e-4  # the mask really selects


def test_grad_accumulation_with_dict_batches():
    model, params, window = setup()
    _, compact = task_forms(window)
    optimizer, schedule = make_optimizer(CFG.optim, 10, params)
    state = init_state(model, optimizer, 0, 8)
    one = jax.jit(make_train_step(model, optimizer, schedule))(state, compact)[1]
    two = jax.jit(make_train_step(model, optimizer, schedule, grad_accum=2))(state, compact)[1]
    np.testing.assert_allclose(one["loss"], two["loss"], rtol=1e-5)
    np.testing.assert_allclose(one["grad_norm"], two["grad_norm"], rtol=1e-4)
