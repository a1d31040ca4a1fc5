"""Packed rows through whole models (issue #19): for every decoder preset, a row of several
documents (``segment_ids``, positions restarting at 0) gives each document's logits as if it ran
alone; and the refusals of slm_jax/models/lm.py ``check_packing``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.models.lm import CausalLM
from slm_jax.presets import PRESETS, is_encoder
from tests.mixers.test_contract import packed_inputs, run_separately
from tests.sampling import default_sample

DECODERS = sorted(p for p in PRESETS if not is_encoder(p))
DOCS = ((4, 1, 7), (2, 10))  # two rows of 12 tokens


def tiny(preset: str, **model) -> tuple[CausalLM, dict]:
    mixers = {"mamba2": {"head_dim": 8, "chunk_size": 4}}  # whole heads of a 24-wide model; chunks inside documents
    raw = {"preset": preset, "vocab_size": 19, "d_model": 24, "n_heads": 2, "n_layers": 2, "mixers": mixers, **model}
    cfg = config_from_dict({"model": raw}).model
    model = CausalLM(cfg)
    return model, model.init(jax.random.key(0), jnp.zeros((1, 12), jnp.int32))


# Every mixer is held to this alone in tests/mixers/test_contract.py; by default, the presets that mix
# families (and scan repeated periods); every preset with -m slow.
@pytest.mark.parametrize("preset", default_sample(DECODERS, {"griffin", "samba", "qwen35_like", "lfm2_like", "based"}))
def test_packed_row_logits_equal_each_document_alone(preset):
    model, params = tiny(preset)
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 19)
    seg, pos = packed_inputs(DOCS)
    packed = jax.jit(lambda t: model.apply(params, t, pos, segment_ids=seg)[0])(tokens)
    alone = run_separately(lambda t, p: model.apply(params, t[..., 0], p)[0], tokens[..., None], DOCS)
    scale = float(jnp.abs(alone).max())
    np.testing.assert_allclose(packed, alone, rtol=1e-5, atol=1e-5 * scale)
    # Without segment ids the documents do see each other (a test that can fail).
    unpacked = model.apply(params, tokens, pos)[0]
    assert float(jnp.abs(unpacked - alone).max()) > 1e-4 * scale


def test_packing_refusals_are_one_sentence():
    model, params = tiny("transformer")
    tokens = jnp.zeros((2, 12), jnp.int32)
    seg, pos = packed_inputs(DOCS)
    with pytest.raises(ConfigError, match="restart at 0"):
        model.apply(params, tokens, segment_ids=seg)
    with pytest.raises(ConfigError, match="decode one document per row"):
        model.apply(params, tokens, pos, model.init_cache(2, 12), segment_ids=seg)
    encoder, enc_params = tiny("distilbert_like")
    with pytest.raises(ConfigError, match="for causal models"):
        encoder.apply(enc_params, tokens, pos, segment_ids=seg)
