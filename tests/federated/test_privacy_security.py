"""Secure-aggregation masks, DP clipping and the accountant, update compression with error feedback."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.federated import compression, privacy, secure_agg
from tests.federated.helpers import assert_trees_close, federation, tiny_clients, tiny_config


def _masked(updates, ids, alive):
    peers = jnp.asarray(ids, jnp.int32)
    masks = secure_agg.client_masks(jax.tree.map(lambda x: x[0], updates), peers, jnp.asarray(alive), jax.random.key(3))
    return jax.vmap(secure_agg.mask_update)(updates, masks)


def test_each_client_mask_is_its_signed_pair_streams():
    """Generating each pair's stream once gives every client the mask it would expand itself."""
    like = {"a": jnp.zeros((3, 4)), "b": jnp.zeros((5,))}
    ids, alive = [2, 5, 8, 11], [True, False, True, True]
    key = jax.random.key(7)
    masks = secure_agg.client_masks(like, jnp.asarray(ids, jnp.int32), jnp.asarray(alive), key)
    for i, me in enumerate(ids):
        own = np.zeros(17, np.uint32)
        for j, peer in enumerate(ids):
            if peer != me and alive[i] and alive[j]:
                r = np.asarray(secure_agg.pair_stream(secure_agg.pair_key(key, me, peer), 17))
                own = own + r if me < peer else own - r
        got = np.concatenate([np.asarray(masks["a"][i]).ravel(), np.asarray(masks["b"][i])])
        np.testing.assert_array_equal(got, own)
    assert not np.any(np.asarray(masks["b"][1]))  # a non-participant is given no mask


def test_masks_cancel_exactly_and_hide_each_update():
    updates = {"w": jax.random.normal(jax.random.key(0), (4, 5000)) * 0.01}
    ids, alive = [3, 7, 9, 12], [True, True, False, True]
    masked = _masked(updates, ids, alive)
    live = np.array(alive)
    plain = jnp.sum(jnp.where(live[:, None], secure_agg.to_fixed(updates["w"]), 0), axis=0, dtype=jnp.uint32)
    received = {"w": jnp.where(live[:, None], masked["w"], jnp.uint32(0))}  # the dropped client sends nothing
    total = secure_agg.unmask_sum(received)["w"]
    np.testing.assert_array_equal(total, secure_agg.from_fixed(plain))  # exact: masks cancel modulo 2^32
    np.testing.assert_allclose(total, updates["w"][live].sum(0), atol=4 * 2.0**-24)
    one = secure_agg.from_fixed(masked["w"][0])
    assert abs(np.corrcoef(np.asarray(one), np.asarray(updates["w"][0]))[0, 1]) < 0.05
    assert float(jnp.std(one)) > 1e3 * float(jnp.std(updates["w"][0]))  # spread over the whole int32 range


def test_secure_aggregation_round_matches_plain_round():
    clients = tiny_clients([100, 150, 200, 250])
    states = []
    for secure in (False, True):
        cfg = tiny_config(n_clients=4, clients_per_round=3, local_steps=2, secure_agg=secure, drop_fraction=0.3)
        _, fed, state = federation(cfg, 4)
        for r in (1, 2, 3):
            state, _ = fed.run_round(state, r, clients)
        states.append(state["params"])
    assert_trees_close(states[1], states[0], atol=1e-6)


def test_clipping_bounds_the_update_norm():
    big = {"a": jnp.full((10,), 3.0), "b": jnp.full((5, 2), -4.0)}
    clipped, norm = privacy.clip_update(big, 1.5)
    assert float(norm) > 1.5
    assert float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(clipped)))) == pytest.approx(1.5, rel=1e-6)
    small = {"a": jnp.full((3,), 0.1)}
    assert_trees_close(privacy.clip_update(small, 1.5)[0], small, atol=0)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    eps = [privacy.epsilon(r, 0.1, 1.0, 1e-5) for r in (1, 5, 20, 100)]
    assert all(a < b for a, b in zip(eps, eps[1:]))
    assert privacy.epsilon(20, 0.1, 2.0, 1e-5) < eps[2]
    assert privacy.epsilon(0, 0.1, 1.0, 1e-5) == 0.0


def test_dp_rounds_clip_each_client_and_add_noise():
    clients = tiny_clients([100, 100, 100])
    cfg = tiny_config(n_clients=3, local_steps=3, client_lr=1.0, dp_clip=0.01)
    _, fed, state = federation(cfg, 3)
    _, m = fed.run_round(state, 1, clients)
    assert m["update_norm"] <= 0.01 + 1e-6  # a mean of clipped updates
    noisy = tiny_config(n_clients=3, local_steps=3, client_lr=1.0, dp_clip=0.01, dp_noise=1.0)
    _, fed, state = federation(noisy, 3)
    assert fed.run_round(state, 1, clients)[1]["update_norm"] > 0.01 + 1e-6


@pytest.mark.parametrize(
    "method, shape, expected",
    [
        ("none", (10, 100), 4000),
        ("int8", (10, 100), 1000 + 4),
        ("int4", (7, 143), 501 + 4),
        ("topk", (10, 100), 10 * 8),
    ],
)
def test_payload_bytes_are_the_sent_arrays_sizes(method, shape, expected):
    tree = {"w": jnp.zeros(shape), "b": jnp.zeros((3,))}
    small = {"none": 12, "int8": 3 + 4, "int4": 2 + 4, "topk": 1 * 8}[method]
    assert compression.payload_bytes(tree, method, 0.01) == expected + small


@pytest.mark.parametrize("method", ["int8", "int4", "topk"])
def test_decode_inverts_encode_up_to_its_loss(method):
    x = jax.random.normal(jax.random.key(1), (33, 7))
    y = compression.decode(compression.encode(x, method, 0.1), x.shape, method)
    if method == "topk":
        kept = np.asarray(y != 0)
        assert kept.sum() == compression.topk_count(x.size, 0.1)
        np.testing.assert_array_equal(np.asarray(y)[kept], np.asarray(x)[kept])
        assert np.abs(np.asarray(x)[~kept]).max() <= np.abs(np.asarray(x)[kept]).min()
    else:
        step = float(jnp.abs(x).max()) / (127 if method == "int8" else 7)
        assert float(jnp.abs(y - x).max()) <= step / 2 + 1e-6


def test_error_feedback_delays_but_loses_nothing():
    """Sent payloads plus the residual always add up to every update so far."""
    update = {"w": jax.random.normal(jax.random.key(2), (50,))}
    residual = {"w": jnp.zeros(50)}
    sent_total = jnp.zeros(50)
    for t in range(1, 6):
        payloads, residual = compression.with_error_feedback(update, residual, "topk", 0.1)
        sent_total += compression.decode_tree(payloads, update, "topk")["w"]
        np.testing.assert_allclose(sent_total + residual["w"], t * update["w"], atol=1e-5)
    assert float(jnp.abs(residual["w"]).max()) > 0  # something is still pending
