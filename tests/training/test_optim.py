import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from slm_jax.config import OptimConfig
from slm_jax.errors import ConfigError
from slm_jax.training.loss import cross_entropy
from slm_jax.training.optim import make_optimizer, make_schedule, path_mask

PARAMS = {
    "params": {
        "embed": {"embedding": jnp.ones((5, 4))},
        "layers_0": {"mlp": {"up": {"kernel": jnp.ones((4, 4))}}, "mlp_norm": {"scale": jnp.ones(4)}},
    }
}


def test_cosine_schedule_shape():
    s = make_schedule(OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=10, schedule="cosine"), 110)
    assert float(s(0)) == pytest.approx(0.1)  # lr / warmup at the first step
    assert float(s(9)) == pytest.approx(1.0)
    assert float(s(10)) == pytest.approx(1.0)
    assert float(s(60)) == pytest.approx(0.55, abs=1e-3)  # half-way down the cosine
    assert float(s(110)) == pytest.approx(0.1)


def test_wsd_schedule_holds_then_decays():
    s = make_schedule(OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, schedule="wsd", decay_fraction=0.25), 100)
    assert float(s(0)) == float(s(74)) == 1.0
    assert float(s(75)) == 1.0 and float(s(100)) == pytest.approx(0.0)
    assert 0.0 < float(s(90)) < 1.0


def test_decay_mask_by_path():
    mask = path_mask(PARAMS, ("norm", "embed"))
    assert mask["params"]["embed"]["embedding"] and mask["params"]["layers_0"]["mlp_norm"]["scale"]
    assert not mask["params"]["layers_0"]["mlp"]["up"]["kernel"]


def test_weight_decay_skips_masked_params():
    cfg = OptimConfig(lr=0.1, warmup_steps=0, weight_decay=0.5, schedule="constant", grad_clip=0)
    tx, _ = make_optimizer(cfg, 10, PARAMS)
    zero = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zero, tx.init(PARAMS), PARAMS)
    u = updates["params"]
    assert float(jnp.abs(u["embed"]["embedding"]).max()) == 0.0  # no decay on embeddings
    assert float(jnp.abs(u["layers_0"]["mlp_norm"]["scale"]).max()) == 0.0
    np.testing.assert_allclose(u["layers_0"]["mlp"]["up"]["kernel"], -0.1 * 0.5 * np.ones((4, 4)), rtol=1e-6)


def test_frozen_params_do_not_move_and_bad_pattern_errors():
    cfg = OptimConfig(lr=0.1, warmup_steps=0, frozen=("embed",))
    tx, _ = make_optimizer(cfg, 10, PARAMS)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    assert float(jnp.abs(updates["params"]["embed"]["embedding"]).max()) == 0.0
    assert float(jnp.abs(updates["params"]["layers_0"]["mlp"]["up"]["kernel"]).max()) > 0
    with pytest.raises(ConfigError, match="match no parameter"):
        make_optimizer(OptimConfig(frozen=("nothing_like_this",)), 10, PARAMS)


def test_cross_entropy_matches_optax_and_masks():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 7))
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 7)
    loss, m = cross_entropy(logits, targets)
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    mask = jnp.zeros((2, 5)).at[0, 1].set(1)
    loss, m = cross_entropy(logits, targets, mask)
    assert float(loss) == pytest.approx(
        float(optax.softmax_cross_entropy_with_integer_labels(logits, targets)[0, 1]), rel=1e-6
    )
    assert float(m["tokens"]) == 1
    z, mz = cross_entropy(logits, targets, z_loss=1e-2)
    assert float(z) > float(mz["loss"])  # the z-loss adds log(Z)^2
