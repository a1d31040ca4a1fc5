"""slm_jax/ops/segments.py on hand-checked rows: documents [0, 0, 0], [1, 1], and the chunk masks below."""

import jax.numpy as jnp
import numpy as np

from slm_jax.ops.segments import (
    ChunkMasks,
    chunk_masks,
    lagged_in_segment,
    same_as_lagged,
    same_segment,
    segment_starts,
    where_kept,
)

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


def test_chunk_masks_on_hand_checked_rows():
    # Row 0: documents [0, 0], [1, 1, 1], [2]; row 1: [0, 0], [1], [0, 0, 0] (a repeated id is a new document).
    # Chunks of 4, the tail padded by continuing the last document: documents 1 1 2 2 | 2 3 3 3 and 1 1 2 3 | 3 3 3 3.
    masks = chunk_masks(jnp.array([[0, 0, 1, 1, 1, 2], [0, 0, 1, 0, 0, 0]]), 2, 4)
    assert isinstance(masks, ChunkMasks)
    pairs = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]  # documents 1 1 2 2
    one_three = [[1, 0, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]]  # documents 2 3 3 3
    two_one_one = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # documents 1 1 2 3
    np.testing.assert_array_equal(masks.same, [[pairs, one_three], [two_one_one, np.ones((4, 4), int)]])
    np.testing.assert_array_equal(masks.writes, [[[0, 0, 1, 1], [0, 1, 1, 1]], [[0, 0, 0, 1], [1, 1, 1, 1]]])
    np.testing.assert_array_equal(masks.survives, [[0, 0], [0, 1]])
    np.testing.assert_array_equal(masks.reaches, [[[1, 1, 0, 0], [1, 0, 0, 0]], [[1, 1, 0, 0], [1, 1, 1, 1]]])


def test_where_kept_broadcasts_over_trailing_axes():
    v = jnp.ones((2, 3, 4))
    np.testing.assert_array_equal(where_kept(v, jnp.array([True, False]))[:, 0, 0], [1, 0])
    np.testing.assert_array_equal(where_kept(v, jnp.array([[True, False, True]] * 2), -1.0)[0, :, 0], [1, -1, 1])
    assert where_kept(v, None) is v
