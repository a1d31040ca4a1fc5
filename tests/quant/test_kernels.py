"""int4 packing, quantize/dequantize error bounds and the quantized model's logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict, to_dict
from slm_jax.errors import ConfigError
from slm_jax.models.lm import CausalLM
from slm_jax.quant.kernels import SCALE, dequantize_kernel, group_for, quantize_kernel, rows_per_group
from slm_jax.quant.packing import pack_int4, unpack_int4
from slm_jax.quant.params import abstract_quantized, linear_paths, quantize_params


@pytest.mark.parametrize("rows", [1, 6, 7])
def test_int4_packing_is_exact_for_every_value(rows):
    q = jnp.asarray(np.random.default_rng(rows).integers(-8, 8, size=(3, rows, 5)), jnp.int8)
    packed = pack_int4(q)
    assert packed.dtype == jnp.uint8 and packed.shape == (3, (rows + 1) // 2, 5)
    np.testing.assert_array_equal(unpack_int4(packed, rows), q)


def test_int4_nibble_layout():
    packed = pack_int4(jnp.asarray([[-1], [2]], jnp.int8))  # low nibble = row 0, high = row 1
    assert int(packed[0, 0]) == 0x2F


@pytest.mark.parametrize(
    "bits, d_in, group", [(8, 48, 48), (8, 48, 16), (4, 48, 16), (4, 48, 48), (4, 43, 11), (8, 45, 16)]
)
def test_round_trip_error_is_at_most_half_a_step(bits, d_in, group):
    w = jax.random.normal(jax.random.key(0), (2, d_in, 24)) * jnp.linspace(0.1, 3.0, 24)  # stacked, uneven columns
    leaves = quantize_kernel(w, bits, group)
    n_groups = -(-d_in // group)
    assert leaves[SCALE].shape == (2, n_groups, 24)
    group = rows_per_group(d_in, n_groups)  # at most the requested rows, split evenly
    back = dequantize_kernel(leaves, d_in)
    step = jnp.repeat(leaves[SCALE], group, axis=-2)[:, :d_in]  # the scale of every entry (the last group shorter)
    assert bool(jnp.all(jnp.abs(back - w) <= 0.5 * step + 1e-7))
    rel = float(jnp.linalg.norm(back - w) / jnp.linalg.norm(w))
    assert rel < (0.01 if bits == 8 else 0.15)
    # each group's scale is the max of exactly its own rows
    for g in range(n_groups):
        rows = w[:, g * group : (g + 1) * group]
        np.testing.assert_allclose(
            leaves[SCALE][:, g], jnp.max(jnp.abs(rows), axis=1) / (127 if bits == 8 else 7), rtol=1e-6
        )


def test_group_defaults_and_uneven_sizes():
    assert group_for(128, 8, 0) == 128 and group_for(128, 4, 0) == 64 and group_for(96, 4, 0) == 48
    assert group_for(8, 4, 0) == 8 and group_for(96, 4, 32) == 32 and group_for(96, 4, 500) == 96
    # a size that does not divide the width: ceil(d_in / size) groups, split as evenly as possible
    assert group_for(352, 4, 128) == 118 and group_for(172, 4, 32) == 29 and group_for(172, 4, 0) == 58
    with pytest.raises(ConfigError, match="--group-size must be positive"):
        group_for(96, 4, -4)


def _model(preset, **extra):
    cfg = config_from_dict(
        {"model": {"preset": preset, "n_layers": 1, "d_model": 64, "n_heads": 2, "vocab_size": 40, **extra}}
    ).model
    model = CausalLM(cfg)
    params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 8), jnp.int32))
    return cfg, jax.jit(model.apply), params  # jitted: eager op-by-op dispatch compiles every op on a cold cache


@pytest.mark.parametrize(
    "preset, n_layers", [("griffin", 3), ("mamba", 1)]
)  # every Linear kind: attention, MLP, RG-LRU, Mamba
def test_quantized_logits_are_close_to_float(preset, n_layers):
    cfg, apply, params = _model(preset, n_layers=n_layers, tie_embeddings=False)
    tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 40)
    ref, _ = apply(params, tokens)
    paths = linear_paths(cfg)
    assert ("head",) in paths and all("embed" not in p for p in paths)
    for bits, tol in ((8, 0.02), (4, 0.3)):
        q = quantize_params(params, paths, bits)
        flat = {"/".join(str(k.key) for k in kp) for kp, _ in jax.tree_util.tree_flatten_with_path(q)[0]}
        assert not any(p.endswith("qkv/kernel") or p.endswith("in_proj/kernel") for p in flat)
        assert "params/embed/embedding" in flat  # embeddings stay float
        out, _ = apply(q, tokens)
        err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
        assert err < tol, (bits, err)


def test_quantized_tree_matches_abstract_and_scan_layers():
    cfg, apply, stacked = _model(
        "hawk", n_layers=3, layer_pattern=["rglru", "attention"], scan_layers=True
    )  # 1 scanned period + 1 unrolled
    assert "periods" in stacked["params"] and "layers_2" in stacked["params"]
    q = quantize_params(stacked, linear_paths(cfg), 4)
    qcfg = config_from_dict({"model": {**to_dict(cfg), "quant": {"bits": 4}}}).model
    shape = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)
    assert shape(q) == shape(abstract_quantized(qcfg))
    tokens = jnp.arange(10, dtype=jnp.int32)[None] % 40
    a, _ = apply(stacked, tokens)
    b, _ = apply(q, tokens)
    assert float(jnp.max(jnp.abs(a - b))) < 0.3 * float(jnp.max(jnp.abs(a)))


def test_bad_bits_is_a_clear_error():
    cfg, _, params = _model("transformer")
    with pytest.raises(ConfigError, match="--bits must be 4 or 8, got 3"):
        quantize_params(params, linear_paths(cfg), 3)
