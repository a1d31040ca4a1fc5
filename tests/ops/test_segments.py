"""slm_jax/ops/segments.py on a hand-checked row: documents [0, 0, 0], [1, 1]."""

import jax.numpy as jnp
import numpy as np

from slm_jax.ops.segments import lagged_in_segment, same_as_lagged, same_segment, segment_starts

SEG = jnp.array([[0, 0, 0, 1, 1]])


def test_lags_stay_inside_a_document_for_every_lag():
    want = {0: [1, 1, 1, 1, 1], 1: [0, 1, 1, 0, 1], 2: [0, 0, 1, 0, 0], 3: [0] * 5, 4: [0] * 5, 6: [0] * 5}
    for lag, row in want.items():
        np.testing.assert_array_equal(same_as_lagged(SEG, lag), [row], err_msg=f"lag {lag}")


def test_shifted_values_and_masks():
    x = jnp.arange(1.0, 6.0)[None, :, None] * jnp.ones((1, 1, 2))
    np.testing.assert_array_equal(lagged_in_segment(x, SEG, 1)[0, :, 0], [0, 1, 2, 0, 4])
    np.testing.assert_array_equal(segment_starts(SEG), [[1, 0, 0, 1, 0]])
    mask = same_segment(SEG, SEG)[0]
    assert mask[2, 0] and mask[4, 3] and not mask[3, 2] and not mask[0, 4]
