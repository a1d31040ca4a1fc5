import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.inference.generate import generate
from slm_jax.inference.sampling import sample
from slm_jax.models.lm import CausalLM


def test_greedy_is_argmax():
    logits = jax.random.normal(jax.random.key(0), (4, 11))
    assert (sample(logits, jax.random.key(1), temperature=0.0) == jnp.argmax(logits, -1)).all()


def test_top_k_and_top_p_restrict_support():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 400)
    top2 = {int(sample(logits, k, 1.0, top_k=2)[0]) for k in keys}
    assert top2 == {0, 1}
    top_p = {int(sample(logits, k, 1.0, top_p=0.7)[0]) for k in keys}  # 0.5 + 0.3 reaches 0.7
    assert top_p == {0, 1}
    full = {int(sample(logits, k, 1.0)[0]) for k in keys}
    assert full == {0, 1, 2, 3}


def _model():
    cfg = config_from_dict({"model": {"vocab_size": 23, "d_model": 32, "n_heads": 2, "n_layers": 2, "window": 6}}).model
    model = CausalLM(cfg)
    return model, model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))


@pytest.mark.parametrize("chunk", [None, 4, 7])
def test_compiled_greedy_decode_equals_naive_rerun(chunk):
    model, params = _model()
    prompt = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], np.int32)
    out = np.concatenate(list(generate(model, params, prompt, 12, temperature=0.0, chunk=chunk)), axis=1)
    assert out.shape == (2, 12)
    seq = prompt
    for _ in range(12):  # re-run the whole sequence each time: no cache involved
        logits, _ = model.apply(params, jnp.asarray(seq))
        seq = np.concatenate([seq, np.asarray(jnp.argmax(logits[:, -1], -1))[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq[:, 5:])


def test_sampling_is_seeded():
    model, params = _model()
    prompt = np.array([[1, 2, 3]], np.int32)
    run = lambda seed: np.concatenate(list(generate(model, params, prompt, 10, seed=seed, chunk=3)), axis=1)
    np.testing.assert_array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))


def test_bad_generation_arguments():
    model, params = _model()
    with pytest.raises(ConfigError, match="prompt is empty"):
        next(generate(model, params, np.zeros((1, 0), np.int32), 5))
    with pytest.raises(ConfigError, match="top_p"):
        next(generate(model, params, np.ones((1, 2), np.int32), 5, top_p=0.0))
