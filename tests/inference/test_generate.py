import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.inference.generate import generate
from slm_jax.inference.sampling import sample
from slm_jax.mixers.registry import mixer_names
from slm_jax.models.lm import CausalLM
from slm_jax.presets import PRESETS, is_encoder


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


def _model(**model):
    cfg = config_from_dict({"model": {"vocab_size": 23, "d_model": 32, "n_heads": 2, "n_layers": 2, **model}}).model
    model = CausalLM(cfg)
    return model, model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))


@pytest.mark.parametrize(
    "chunk, preset",
    [(None, "transformer"), (4, "transformer"), (7, "transformer")]
    + [(5, p) for p in sorted(set(PRESETS) - {"transformer"})],
)
def test_compiled_greedy_decode_equals_naive_rerun(chunk, preset):
    missing = set(PRESETS[preset]["layer_pattern"]) - set(mixer_names())
    if missing:
        pytest.skip(f"preset {preset} needs mixers not implemented yet: {sorted(missing)}")
    if is_encoder(preset):
        pytest.skip(f"preset {preset} is an encoder, which does not generate (tests/encoders covers it)")
    model, params = _model(preset=preset, mixers={"attention": {"window": 6}, "local_attention": {"window": 4}})
    prompt = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], np.int32)
    out = np.concatenate(list(generate(model, params, prompt, 12, temperature=0.0, chunk=chunk)), axis=1)
    assert out.shape == (2, 12)
    # Re-run the whole (zero-padded) sequence each time, no cache involved: the model is causal,
    # so the logits at position i ignore the padding after it, and one compiled forward serves.
    forward = jax.jit(lambda seq: model.apply(params, seq)[0])
    seq = np.zeros((2, 17), np.int32)
    seq[:, :5] = prompt
    for i in range(5, 17):
        seq[:, i] = np.asarray(jnp.argmax(forward(seq)[:, i - 1], -1))
    np.testing.assert_array_equal(out, seq[:, 5:])


def test_sampling_is_seeded():
    model, params = _model(mixers={"attention": {"window": 6}})
    prompt = np.array([[1, 2, 3]], np.int32)
    run = lambda seed: np.concatenate(list(generate(model, params, prompt, 10, seed=seed, chunk=3)), axis=1)
    np.testing.assert_array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))


def test_bad_generation_arguments():
    model, params = _model(mixers={"attention": {"window": 6}})
    with pytest.raises(ConfigError, match="prompt is empty"):
        next(generate(model, params, np.zeros((1, 0), np.int32), 5))
    with pytest.raises(ConfigError, match="top_p"):
        next(generate(model, params, np.ones((1, 2), np.int32), 5, top_p=0.0))
