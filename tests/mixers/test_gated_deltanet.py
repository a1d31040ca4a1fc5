"""Gated DeltaNet options the contract's variants cannot cover with one parameter tree: no convolution bias
(``conv_bias: false``, Qwen3-Next / Qwen3.5) and beta in (0, 2) (``neg_eigval``, OLMo hybrid): the chunked, cached
and step paths still equal the reference loop."""

import jax
import numpy as np
import pytest

from tests.mixers.test_contract import close, setup


@pytest.mark.parametrize("fields", [{"conv_bias": False}, {"neg_eigval": True}])
def test_option_paths_equal_the_reference(fields):
    mixer, params, x, pos = setup("gated_deltanet", 21, seed=3, chunk_size=8, **fields)
    assert ("bias" in params["params"]["conv1d"]) == mixer.conv_bias
    assert mixer.num_params() == sum(a.size for a in jax.tree.leaves(params))
    y_ref, state = mixer.reference(params, x, pos)
    close(mixer.apply(params, x, pos)[0], y_ref)
    cache, steps = mixer.init_cache(2, 21), []
    y_pre, cache = mixer.apply(params, x[:, :9], pos[:, :9], cache)
    for i in range(9, 21):  # one token at a time after a 9-token prefill
        y, cache = mixer.apply(params, x[:, i : i + 1], pos[:, i : i + 1], cache)
        steps.append(y)
    close(np.concatenate([y_pre, *steps], axis=1), y_ref)
    close(cache["state"], state["state"])


def test_neg_eigval_changes_the_output():
    mixer, params, x, pos = setup("gated_deltanet", 9, seed=4)
    diff = np.abs(np.asarray(mixer.clone(neg_eigval=True).apply(params, x, pos)[0] - mixer.apply(params, x, pos)[0]))
    assert diff.max() > 1e-2
