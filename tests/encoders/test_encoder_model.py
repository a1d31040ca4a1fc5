"""Encoder models (``model.causal=false``) end to end through CausalLM: every encoder preset gives each
sequence of a right-padded batch its own logits, refuses a decode cache, never predicts its mask id,
and the accounting counts its parameters (mask-id row and combine projections included)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM
from slm_jax.presets import PRESETS, is_encoder

ENCODERS = sorted(p for p in PRESETS if is_encoder(p))
VOCAB = 19


def encoder(preset, **model):
    raw = {"preset": preset, "vocab_size": VOCAB, "d_model": 24, "n_heads": 2, "n_layers": 3, **model}
    raw.setdefault("mixers", {"local_attention": {"window": 3}})
    return CausalLM(config_from_dict({"model": raw}).model)


def test_the_encoder_presets():
    assert ENCODERS == ["bert_like", "bimamba_like", "distilbert_like", "hybrid_encoder", "modernbert_like"]
    assert PRESETS["distilbert_like"]["n_layers"] * 2 == PRESETS["bert_like"]["n_layers"]
    assert not any(is_encoder(p) for p in ("transformer", "griffin", "mamba"))


@pytest.mark.parametrize("preset", ENCODERS)
def test_padded_batch_equals_each_sequence_alone(preset):
    model = encoder(preset, scan_layers=preset == "hybrid_encoder")  # scan_layers broadcasts lengths too
    t, n = 10, 4
    toks = jax.random.randint(jax.random.key(0), (2, t), 0, VOCAB)
    params = model.init(jax.random.key(1), toks)
    logits, cache = model.apply(params, toks, lengths=jnp.array([t, n]))
    assert cache is None and logits.shape == (2, t, VOCAB)
    np.testing.assert_allclose(logits[:1], model.apply(params, toks[:1])[0], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(logits[1:, :n], model.apply(params, toks[1:, :n])[0], rtol=2e-5, atol=2e-5)
    # Without lengths the padding is read as tokens: the short row's logits change (the test can fail).
    assert not np.allclose(model.apply(params, toks)[0][1, :n], logits[1, :n], atol=1e-4)


def test_an_encoder_refuses_a_cache():
    model = encoder("bert_like")
    toks = jnp.zeros((1, 4), jnp.int32)
    params = model.init(jax.random.key(0), toks)
    with pytest.raises(ConfigError, match="no decode cache"):
        model.init_cache(1, 8)
    with pytest.raises(ConfigError, match="no decode cache"):
        model.apply(params, toks, cache={"layers": ()})


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_mask_id_row_and_parameter_count(combine):
    model = encoder("hybrid_encoder", bidirectional_combine=combine, tie_embeddings=combine == "sum")
    toks = jnp.full((1, 5), VOCAB, jnp.int32)  # every input is the mask id
    params = model.init(jax.random.key(0), toks)
    assert params["params"]["embed"]["embedding"].shape == (VOCAB + 1, 24)
    assert model.apply(params, toks)[0].shape == (1, 5, VOCAB)
    assert accounting.param_count(model.cfg) == sum(a.size for a in jax.tree.leaves(params))
    assert accounting.decode_state_bytes(model.cfg, 1, 64) == 0
    assert ("combine" in params["params"]["layers_0"]["mixer"]) == (combine == "concat")
