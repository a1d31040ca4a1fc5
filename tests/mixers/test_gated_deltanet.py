"""Gated DeltaNet without the convolution bias (``conv_bias: false``, Qwen3-Next / Qwen3.5's layout): no bias
parameter, and the chunked, cached and step paths still equal the reference loop."""

import jax
import numpy as np

from tests.mixers.test_contract import close, setup


def test_without_conv_bias_paths_equal_the_reference():
    mixer, params, x, pos = setup("gated_deltanet", 21, seed=3, conv_bias=False, chunk_size=8)
    assert set(params["params"]["conv1d"]) == {"kernel"}
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
