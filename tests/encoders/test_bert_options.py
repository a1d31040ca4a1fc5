"""The BERT-family model options (LayerNorm, post-norm, learned positions, GELU MLP, MLM head transform)
on tiny encoders: padding invariance, closed-form parameter counts, defaults and config errors."""

import jax
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.models.accounting import param_count
from slm_jax.models.lm import CausalLM

BERT = {
    "preset": "bert_like",
    "n_layers": 2,
    "norm": "layer",
    "norm_bias": True,
    "norm_position": "post",
    "embed_norm": True,
    "position": "learned",
    "max_positions": 8,
    "mlp": "gelu",
    "mlp_bias": True,
    "qkv_bias": True,
    "attn_out_bias": True,
    "mlm_head_transform": True,
    "head_bias": True,
}
MODERNBERT = {
    "preset": "modernbert_like",
    "n_layers": 3,
    "norm": "layer",
    "embed_norm": True,
    "first_mixer_norm": False,
    "mlp": "geglu_erf",
    "mixers": {"local_attention": {"window": 2, "rope_theta": 100.0}},
    "mlm_head_transform": True,
    "mlm_head_transform_bias": False,
    "head_bias": True,
    "tie_embeddings": False,
}


def _model(fields):
    cfg = config_from_dict({"model": {"d_model": 16, "n_heads": 2, "d_ff": 24, "vocab_size": 11, **fields}}).model
    model = CausalLM(cfg)
    params = model.init(jax.random.key(0), np.zeros((1, 4), np.int32))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))  # move zero biases and unit scales off their init
    return cfg, model, jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("fields", [BERT, MODERNBERT], ids=["bert", "modernbert"])
def test_padded_rows_equal_each_row_alone(fields):
    cfg, model, params = _model(fields)
    tokens = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 0, 0, 0]], np.int32)
    lengths = np.array([6, 3], np.int32)
    batch = np.asarray(model.apply(params, tokens, lengths=lengths)[0])
    assert batch.shape == (2, 6, 11)
    for row, n in enumerate(lengths):
        alone = np.asarray(model.apply(params, tokens[row : row + 1, :n])[0])[0]
        np.testing.assert_allclose(batch[row, :n], alone, atol=1e-5)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    assert param_count(cfg) == n_params


def test_learned_positions_change_the_output_and_bound_the_length():
    cfg, model, params = _model(BERT)
    tokens = np.array([[3, 3, 3, 3]], np.int32)
    logits = np.asarray(model.apply(params, tokens)[0])
    assert np.abs(logits[0, 0] - logits[0, 1]).max() > 1e-3  # equal tokens, different positions
    with pytest.raises(ConfigError, match="max_positions"):
        model.apply(params, np.zeros((1, 9), np.int32))


def test_defaults_add_no_parameters():
    cfg, _, params = _model({"preset": "transformer", "n_layers": 2})
    assert set(params["params"]) == {"embed", "layers_0", "layers_1", "final_norm"}
    assert set(params["params"]["layers_0"]["mlp_norm"]) == {"scale"}


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"norm_bias": True}, "model.norm_bias"),
        ({"norm": "batch"}, "model.norm"),
        ({"max_positions": 16}, "model.max_positions"),
        ({"position": "learned"}, "model.max_positions"),
        ({"norm_position": "post", "first_mixer_norm": False}, "model.first_mixer_norm"),
        ({"norm": "layer", "norm_offset": 1.0}, "model.norm_offset"),
        ({"mlp": "relu"}, "model.mlp"),
    ],
)
def test_bad_options_are_one_sentence(fields, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"model": fields})
