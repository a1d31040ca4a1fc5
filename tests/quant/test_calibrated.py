"""GPTQ and AWQ: exact against slow references and RTN where they must coincide, better than RTN where they should."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict, to_dict
from slm_jax.models.lm import CausalLM
from slm_jax.quant.awq import awq_scales, output_error, rtn_dequantized
from slm_jax.quant.calibrate import linear_input_statistics
from slm_jax.quant.calibrated import quantize_params_calibrated
from slm_jax.quant.gptq import gptq_kernel, obq_reference
from slm_jax.quant.kernels import IN_SCALE, QMAX, dequantize_kernel, group_for, quantize_kernel
from slm_jax.quant.params import abstract_quantized, linear_paths, quantize_params


def _correlated_inputs(seed: int, n: int, d: int, outliers: int = 0) -> np.ndarray:
    """x f[n, d] with strongly correlated channels (and ``outliers`` channels 20x larger), as LM activations are."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d // 4)) @ rng.normal(size=(d // 4, d)) + 0.1 * rng.normal(size=(n, d))
    x[:, :outliers] *= 20.0
    return x


def _dequant(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.asarray(dequantize_kernel({"kernel_int8": q, "kernel_scale": scale}, q.shape[0]), np.float64)


@pytest.mark.parametrize("bits, group", [(4, 8), (4, 32), (8, 16), (4, 12)])  # 12: groups of 11, 11, 10
def test_gptq_equals_the_obq_reference(bits, group):
    x = _correlated_inputs(0, 256, 32)
    w = np.random.default_rng(1).normal(size=(32, 12))
    q, scale = gptq_kernel(w, x.T @ x, bits, group)
    q_ref, scale_ref = obq_reference(w, x.T @ x, bits, group)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_allclose(scale, scale_ref, rtol=1e-6)
    assert np.abs(q).max() <= QMAX[bits]


def test_gptq_on_uncorrelated_inputs_is_round_to_nearest():
    w = np.random.default_rng(2).normal(size=(24, 10)).astype(np.float32)
    q, scale = gptq_kernel(w, 3.0 * np.eye(24), 4, 8)
    rtn = jax.device_get(quantize_kernel(jnp.asarray(w), 8, 8))  # int8 leaves are unpacked: compare in int4 below
    rtn4 = np.clip(np.round(w.reshape(3, 8, 10) / (np.abs(w.reshape(3, 8, 10)).max(1, keepdims=True) / 7)), -7, 7)
    np.testing.assert_array_equal(q, rtn4.reshape(24, 10))
    assert rtn["kernel_int8"].shape == (24, 10)
    np.testing.assert_allclose(scale, np.abs(w.reshape(3, 8, 10)).max(1) / 7, rtol=1e-6)


def test_gptq_reduces_the_layer_error_on_correlated_inputs():
    x = _correlated_inputs(3, 512, 64)
    h = x.T @ x
    w = np.random.default_rng(4).normal(size=(64, 16))
    q, scale = gptq_kernel(w, h, 4, 16)
    gptq_err = output_error(w, _dequant(q, scale), h)
    rtn_err = output_error(w, rtn_dequantized(w, 4, 16), h)
    assert gptq_err < 0.7 * rtn_err, (gptq_err, rtn_err)


def test_gptq_zeroes_dead_inputs():
    x = _correlated_inputs(5, 128, 16)
    x[:, 3] = 0.0
    q, _ = gptq_kernel(np.ones((16, 4)), x.T @ x, 4, 4)
    assert not q[3].any() and q[2].all()


def test_awq_never_loses_to_rtn_and_protects_outlier_channels():
    x = _correlated_inputs(6, 512, 64, outliers=2)
    h = x.T @ x
    w = np.random.default_rng(7).normal(size=(64, 16))
    s, alpha = awq_scales(w, h, np.abs(x).mean(0), 4, 32)
    awq_err = output_error(w, rtn_dequantized(w * s[:, None], 4, 32) / s[:, None], h)
    rtn_err = output_error(w, rtn_dequantized(w, 4, 32), h)
    assert alpha > 0 and awq_err < 0.8 * rtn_err, (alpha, awq_err, rtn_err)
    assert s[:2].min() > np.median(s)  # the large channels are scaled up before rounding


def test_awq_in_scale_leaf_dequantizes_to_w():
    w = jax.random.normal(jax.random.key(0), (16, 6))
    s = jnp.linspace(0.5, 2.0, 16)
    leaves = {**quantize_kernel(w * s[:, None], 8, 16), IN_SCALE: s}
    np.testing.assert_allclose(dequantize_kernel(leaves, 16), w, atol=0.02)


def _tiny(preset: str):
    cfg = config_from_dict(
        {"model": {"preset": preset, "n_layers": 2, "d_model": 32, "n_heads": 2, "vocab_size": 37}}
    ).model
    params = jax.jit(CausalLM(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    return cfg, params


def test_calibration_statistics_add_up_over_batches():
    cfg, params = _tiny("transformer")
    tokens = np.random.default_rng(0).integers(0, 37, size=(2, 16))
    one = linear_input_statistics(cfg, params, [tokens])
    two = linear_input_statistics(cfg, params, [tokens[:1], tokens[1:]])
    assert set(one) == linear_paths(cfg)
    for path, s in one.items():
        np.testing.assert_allclose(s["hessian"], two[path]["hessian"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s["abs_mean"], two[path]["abs_mean"], rtol=1e-5)
        assert s["count"] == 32
        np.testing.assert_allclose(s["hessian"], s["hessian"].T, rtol=1e-5, atol=1e-4)
        mean_square = np.diag(s["hessian"]) / s["count"]
        assert np.all(mean_square >= s["abs_mean"] ** 2 * (1 - 1e-5))  # Jensen: E[x^2] >= E[|x|]^2


def _node(tree, path):
    for key in path:
        tree = tree[key]
    return tree


@pytest.mark.parametrize("preset", ["transformer", "griffin", "gated_deltanet", "mamba"])  # mamba: a Linear subclass
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_model_runs_and_beats_rtn_layer_by_layer(preset, method):
    cfg, params = _tiny(preset)
    rng = np.random.default_rng(1)
    calib = [rng.integers(0, 37, size=(4, 32)) for _ in range(2)]
    stats = linear_input_statistics(cfg, params, calib)
    paths = linear_paths(cfg)
    q = quantize_params_calibrated(params, paths, 4, 0, method, stats)
    qcfg = config_from_dict({"model": {**to_dict(cfg), "quant": {"bits": 4, "group_size": 0, "method": method}}}).model
    shape = lambda t: jax.tree.map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), t)
    assert shape(q) == shape(abstract_quantized(qcfg))
    # The objective both methods minimise: each layer's output error on the calibration inputs.
    total = {"calibrated": 0.0, "rtn": 0.0}
    for path in paths:
        w = np.asarray(_node(params["params"], path)["kernel"], np.float64)
        group = group_for(w.shape[0], 4, 0)
        calibrated = output_error(
            w, np.asarray(dequantize_kernel(_node(q["params"], path), w.shape[0])), stats[path]["hessian"]
        )
        rtn = output_error(w, rtn_dequantized(w, 4, group), stats[path]["hessian"])
        if method == "awq":  # alpha = 0 is RTN, so the search can only improve on it
            assert calibrated <= rtn * (1 + 1e-4) + 1e-9, (path, calibrated, rtn)
        total["calibrated"] += calibrated
        total["rtn"] += rtn
    assert total["calibrated"] < total["rtn"], total
    # End to end the errors compound differently, so only a loose bound: the quantized model still tracks the float.
    apply = jax.jit(CausalLM(cfg).apply)
    tokens = jnp.asarray(np.concatenate(calib, 0))
    ref, _ = apply(params, tokens)
    err = lambda p: float(jnp.mean((apply(p, tokens)[0] - ref) ** 2))
    assert err(q) <= 1.5 * err(quantize_params(params, paths, 4, 0)), (method, err(q))
