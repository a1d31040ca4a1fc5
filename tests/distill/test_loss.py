"""The distillation loss against hand-computed values; top-k against full; the teacher gets no gradient."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.distill.loss import distill_loss, kl_full, kl_topk, make_distill_loss_fn
from slm_jax.models.lm import CausalLM

# Student uniform over 2 tokens, teacher logits [log 3, 0], label 0 (by hand: see each value).
STUDENT = jnp.zeros((1, 1, 2))
TEACHER = jnp.array([[[math.log(3.0), 0.0]]])
LABEL = jnp.array([[0]])
# T = 2: p = softmax([log 3 / 2, 0]) = [sqrt3, 1] / (sqrt3 + 1), q = [1/2, 1/2]: KL = sum p log(2p) = 0.036341
KL_T2 = sum(p * math.log(2 * p) for p in (3**0.5 / (3**0.5 + 1), 1 / (3**0.5 + 1)))


@pytest.mark.parametrize(
    "alpha, temperature, expected",
    [
        (1.0, 1.0, math.log(2)),  # CE only: -log(1/2)
        (0.0, 1.0, 0.75 * math.log(1.5) + 0.25 * math.log(0.5)),  # KL([3/4, 1/4] || [1/2, 1/2]) = 0.130812
        # T = 2: p = softmax([log 3 / 2, 0]) = [sqrt3, 1] / (sqrt3 + 1); T^2 * KL = 4 * 0.036360
        (0.0, 2.0, 4 * KL_T2),  # 0.145364
        (0.5, 2.0, 0.5 * math.log(2) + 0.5 * 4 * KL_T2),
    ],
)
def test_loss_equals_hand_computed_value(alpha, temperature, expected):
    loss, m = distill_loss(STUDENT, LABEL, TEACHER, alpha, temperature)
    assert float(loss) == pytest.approx(expected, abs=2e-6)
    assert float(m["ce"]) == pytest.approx(math.log(2), abs=1e-6)
    assert float(loss) == pytest.approx(
        alpha * float(m["ce"]) + (1 - alpha) * temperature**2 * float(m["kl"]), abs=1e-6
    )
    assert 0.1308 < float(distill_loss(STUDENT, LABEL, TEACHER, 0.0, 1.0)[1]["kl"]) < 0.1309


def test_topk_with_k_equal_vocab_is_the_full_kl_and_smaller_k_follows_the_formula():
    ks, kt = jax.random.split(jax.random.key(0))
    student, teacher = jax.random.normal(ks, (2, 5, 7)) * 2, jax.random.normal(kt, (2, 5, 7)) * 2
    values, indices = jax.lax.top_k(teacher, 7)
    np.testing.assert_allclose(
        kl_topk(student, values, indices, 1.5), kl_full(student, teacher, 1.5), rtol=1e-5, atol=1e-6
    )
    # k = 3: teacher renormalised over its top 3; student log-probs over the whole vocabulary
    values, indices = jax.lax.top_k(teacher, 3)
    p = np.exp(values / 1.5) / np.exp(values / 1.5).sum(-1, keepdims=True)
    log_q = np.asarray(jax.nn.log_softmax(student / 1.5, -1))
    expected = (p * (np.log(p) - np.take_along_axis(log_q, np.asarray(indices), -1))).sum(-1)
    got = kl_topk(student, values, indices, 1.5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert (np.asarray(got) >= 0).all()


def tiny_model(d_model, seed, vocab=11):
    cfg = config_from_dict({"model": {"n_layers": 1, "d_model": d_model, "n_heads": 2, "vocab_size": vocab}})
    model = CausalLM(cfg.model)
    return model, model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))


def test_teacher_parameters_get_no_gradient():
    # Cross-architecture teaching (a Griffin student) is covered by tests/distill/test_distill.py.
    teacher, t_params = tiny_model(32, seed=1)
    student, s_params = tiny_model(16, seed=2)
    tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, 11)
    loss_fn = make_distill_loss_fn(student, teacher, alpha=0.3, temperature=2.0)
    g_student, g_teacher = jax.grad(lambda s, t: loss_fn(s, tokens, t)[0], argnums=(0, 1))(s_params, t_params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_teacher))
    assert sum(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_student)) > 0
