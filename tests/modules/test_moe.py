"""Mixture-of-experts MLP (modules/moe.py): the dense dispatch equals a per-token loop over the chosen experts,
in outputs and gradients; the balancing loss; an MoE model's cached decode, scanned layers, parameter and FLOP
counts, training loss, sharding axes, quantization and LoRA; one clear error per bad option."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.finetune.lora import LoraSpec, apply_unmerged, init_adapters, merge, target_paths
from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM, stack_layers
from slm_jax.modules.moe import MoE, balance_loss, moe_reference, route
from slm_jax.quant.params import linear_paths, quantize_params
from slm_jax.training.sharding import MESH_AXES, logical_to_spec, param_axes
from slm_jax.training.step import make_loss_fn
from tests.models.test_model_options import _decode

D, F = 16, 24
MOES = {
    "softmax_top2": {"n_experts": 4, "top_k": 2},
    "sigmoid_normalized": {"n_experts": 5, "top_k": 3, "routing": "sigmoid", "normalize_top_k": True},
    "shared_gated_geglu": {"n_experts": 3, "top_k": 1, "shared_hidden": 8, "shared_gate": True, "kind": "geglu"},
    "every_expert": {"n_experts": 3, "top_k": 3, "shared_hidden": 8},
    "nemotron_h_like": {  # plain relu2 experts, a score bias for the choice, group-limited, scaled weights
        "n_experts": 8,
        "top_k": 2,
        "routing": "sigmoid",
        "normalize_top_k": True,
        "score_bias": True,
        "n_groups": 4,
        "top_groups": 2,
        "scale": 2.5,
        "shared_hidden": 8,
        "kind": "relu2",
    },
}
MODEL = {
    "vocab_size": 31,
    "d_model": 32,
    "n_heads": 4,
    "n_layers": 4,
    "d_ff": 40,
    "layer_pattern": ["attention", "rglru"],
    "moe": {"n_experts": 4, "top_k": 2, "period": 2, "offset": 1, "d_expert": 24, "d_shared": 16},
}


def _perturbed(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _moe(name):
    kw = MOES[name]
    return MoE(hidden=F, **{"kind": "swiglu", **kw})


@pytest.mark.parametrize("name", list(MOES))
def test_dense_dispatch_equals_the_per_token_loop(name):
    moe = _moe(name)
    x = jax.random.normal(jax.random.key(0), (2, 4, D))
    params = _perturbed(moe.init(jax.random.key(1), x), 2)  # large router logits: clear, varied choices
    got = moe.apply(params, x)
    np.testing.assert_allclose(got, moe_reference(moe, params, x), rtol=1e-5, atol=1e-5)
    # Gradients, with the loop's selection fixed to the one the forward pass made.
    logits = x.reshape(-1, D) @ params["params"]["router"]["kernel"]
    bias = params["params"].get("score_bias")
    _, _, chosen = route(
        logits, moe.top_k, moe.routing, moe.normalize_top_k, bias, moe.n_groups, moe.top_groups, moe.scale
    )
    w = jax.random.normal(jax.random.key(3), got.shape)
    grad = jax.grad(lambda p, u: jnp.sum(w * moe.apply(p, u)), argnums=(0, 1))(params, x)
    ref = jax.grad(lambda p, u: jnp.sum(w * moe_reference(moe, p, u, np.asarray(chosen))), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_routing_weights():
    logits = jnp.asarray([[2.0, 0.0, 1.0, -1.0], [0.0, 3.0, 0.0, 0.0]])
    weights, probs, chosen = route(logits, 2, "softmax", normalize=False)
    soft = jax.nn.softmax(logits, axis=-1)
    np.testing.assert_array_equal(chosen, [[0, 2], [1, 0]])
    np.testing.assert_allclose(weights[0], [soft[0, 0], 0, soft[0, 2], 0], rtol=1e-6)
    np.testing.assert_allclose(probs, soft, rtol=1e-6)
    weights, probs, _ = route(logits, 2, "sigmoid", normalize=True)
    np.testing.assert_allclose(weights.sum(-1), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(probs.sum(-1), [1.0, 1.0], rtol=1e-6)


def test_score_bias_groups_and_scale():
    """DeepSeek-V3 / Nemotron-H routing: the bias steers the choice only, groups limit it, the scale multiplies."""
    logits = jnp.asarray([[2.0, 1.5, -1.0, -2.0, 0.5, 0.0]])
    s = jax.nn.sigmoid(logits)[0]
    bias = jnp.asarray([0.0, 0.0, 0.0, 5.0, 0.0, 0.0])
    weights, _, chosen = route(logits, 2, "sigmoid", False, bias=bias, scale=3.0)
    assert set(np.asarray(chosen[0]).tolist()) == {3, 0}  # expert 3 only through its bias
    np.testing.assert_allclose(weights[0, [0, 3]], 3.0 * s[jnp.asarray([0, 3])], rtol=1e-6)  # weighed by scores
    # 3 groups of 2 experts, ranked by their score sums: group 0 (2, 1.5), then group 2 (0.5, 0), not group 1
    weights, _, chosen = route(logits, 3, "sigmoid", True, n_groups=3, top_groups=2)
    assert set(np.asarray(chosen[0]).tolist()) == {0, 1, 4}
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    weights, _, chosen = route(logits, 2, "sigmoid", False, bias=bias, n_groups=3, top_groups=1)
    assert set(np.asarray(chosen[0]).tolist()) == {2, 3}  # the bias lifts group 1 above group 0


def test_plain_experts_param_count():
    moe = {"n_experts": 4, "top_k": 2, "layers": [1, 3], "d_expert": 24, "d_shared": 16, "score_bias": True}
    cfg = _cfg(mlp="relu2", moe=moe)
    params = CausalLM(cfg).init(jax.random.key(0), _tokens())
    assert set(params["params"]["layers_1"]["moe"]) == {"router", "score_bias", "up", "down", "shared"}
    assert accounting.param_count(cfg) == sum(a.size for a in jax.tree.leaves(params))
    d, e, k, f = 32, 4, 2, 24  # a plain expert is up + down, 2 d f
    assert accounting.param_count(cfg) - accounting.param_count(cfg, active=True) == 2 * (e - k) * 2 * d * f
    plain = accounting.forward_flops_per_token(_cfg(mlp="relu2", moe={**moe, "score_bias": False}), 16)
    assert accounting.forward_flops_per_token(cfg, 16) == plain  # the bias is an add, not a multiply-add


def test_balance_loss_is_k_when_uniform_and_grows_with_imbalance():
    n, e, k = 12, 4, 2
    uniform = jnp.full((n, e), 1 / e)
    chosen = jnp.asarray([[i % e, (i + 1) % e] for i in range(n)])
    np.testing.assert_allclose(balance_loss(uniform, chosen), k, rtol=1e-6)
    skewed = jnp.tile(jnp.asarray([0.7, 0.1, 0.1, 0.1]), (n, 1))
    always_first = jnp.tile(jnp.asarray([0, 1]), (n, 1))
    assert float(balance_loss(skewed, always_first)) > k + 0.5
    # Only the probabilities carry a gradient (the counts are step functions).
    g = jax.grad(lambda p: balance_loss(p, always_first))(skewed)
    np.testing.assert_allclose(g, np.tile([e / n, e / n, 0, 0], (n, 1)), rtol=1e-6)


def _cfg(**model):
    return config_from_dict({"model": {**MODEL, **model}}).model


def _tokens(b=2, t=11):
    return jax.random.randint(jax.random.key(0), (b, t), 0, MODEL["vocab_size"])


def test_moe_model_decodes_like_the_full_sequence_and_scans():
    cfg, scan_cfg = _cfg(), _cfg(scan_layers=True)
    model, toks = CausalLM(cfg), _tokens()
    params = _perturbed(model.init(jax.random.key(1), toks), 3)
    layers = params["params"]
    assert [("moe" in layers[f"layers_{i}"], "mlp" in layers[f"layers_{i}"]) for i in range(4)] == [
        (False, True),
        (True, False),
    ] * 2
    full, _ = model.apply(params, toks)
    np.testing.assert_allclose(_decode(model, params, toks, 4), full, rtol=1e-5, atol=1e-5)
    stacked = stack_layers(params, scan_cfg)
    np.testing.assert_allclose(CausalLM(scan_cfg).apply(stacked, toks)[0], full, rtol=1e-5, atol=1e-5)
    # The training loss adds the balancing loss, averaged over layers (stacked ones included), times its weight.
    batch = jnp.concatenate([toks, toks[:, :1]], axis=1)
    loss, metrics = make_loss_fn(model)(params, batch)
    scan_loss, scan_metrics = make_loss_fn(CausalLM(scan_cfg))(stacked, batch)
    _, state = model.apply(params, batch[:, :-1], mutable="intermediates")
    sown = [
        float(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
        if "moe_balance_loss" in jax.tree_util.keystr(path)
    ]
    assert len(sown) == 2 and metrics["moe_aux_loss"] == pytest.approx(np.mean(sown), rel=1e-5)
    assert float(loss) == pytest.approx(float(metrics["loss"]) + 0.01 * np.mean(sown), rel=1e-5)
    assert float(scan_loss) == pytest.approx(float(loss), rel=1e-5)
    assert float(scan_metrics["moe_aux_loss"]) == pytest.approx(float(metrics["moe_aux_loss"]), rel=1e-5)


def test_param_and_flop_counts():
    cfg = _cfg()
    params = CausalLM(cfg).init(jax.random.key(0), _tokens())
    assert accounting.param_count(cfg) == sum(a.size for a in jax.tree.leaves(params))
    # By hand: an expert is a gated MLP (3 d f), the router d E, the shared expert 3 d f_shared.
    d, e, k, f, fs = 32, 4, 2, 24, 16
    n_moe = 2
    dense = accounting.param_count(_cfg(moe={}))
    dense_mlp = 3 * d * 40
    moe_all = d * e + e * 3 * d * f + 3 * d * fs
    moe_active = d * e + k * 3 * d * f + 3 * d * fs
    assert accounting.param_count(cfg) == dense + n_moe * (moe_all - dense_mlp)
    assert accounting.param_count(cfg, active=True) == dense + n_moe * (moe_active - dense_mlp)
    t = 16
    flops_dense = accounting.forward_flops_per_token(_cfg(moe={}), t)
    assert accounting.forward_flops_per_token(cfg, t) == flops_dense + n_moe * 2 * (moe_active - dense_mlp)
    assert accounting.forward_flops_per_token(cfg, t, all_experts=True) == flops_dense + n_moe * 2 * (
        moe_all - dense_mlp
    )


def test_experts_shard_over_the_tensor_axis():
    cfg = _cfg()
    params = jax.eval_shape(lambda: CausalLM(cfg).init(jax.random.key(0), _tokens()))
    mesh = AbstractMesh((2, 2, 2), MESH_AXES)
    specs = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        specs[name] = logical_to_spec(param_axes(name, leaf.ndim), leaf.shape, mesh)
    moe = "params/layers_1/moe/"
    assert specs[moe + "gate_up/kernel"] == P("tensor", "fsdp", None)  # experts split, hidden units whole
    assert specs[moe + "down/kernel"] == P("tensor", None, "fsdp")
    assert specs[moe + "router/kernel"] == P("fsdp", None)
    assert specs[moe + "shared/gate_up/kernel"] == P("fsdp", "tensor")  # the shared expert is a dense MLP
    assert param_axes("params/periods/block_1/moe/down/kernel", 4) == ("layers", "expert", "mlp", "embed")


@pytest.mark.parametrize("bits", [8, 4])
def test_expert_kernels_quantize(bits):
    cfg = _cfg()
    model, toks = CausalLM(cfg), _tokens()
    params = model.init(jax.random.key(1), toks)
    paths = linear_paths(cfg)
    assert ("layers_1", "moe", "gate_up") in paths and ("layers_1", "moe", "down") in paths
    quantized = quantize_params(params, paths, bits, group_size=8 if bits == 4 else 0)
    assert "kernel" not in quantized["params"]["layers_1"]["moe"]["gate_up"]
    qcfg = config_from_dict({"model": {**MODEL, "quant": {"bits": bits, "group_size": 8 if bits == 4 else 0}}}).model
    got, _ = CausalLM(qcfg).apply(quantized, toks)
    ref, _ = model.apply(params, toks)
    err = float(jnp.abs(got - ref).max())
    assert 0 < err < (0.01 if bits == 8 else 0.1), err


def test_lora_on_experts_merges_like_its_side_branch():
    cfg = _cfg()
    model, toks = CausalLM(cfg), _tokens()
    params = model.init(jax.random.key(1), toks)
    spec = LoraSpec(rank=2, alpha=4.0, targets=r"moe/(gate_up|down)$")
    paths = target_paths(cfg, spec)
    assert paths == ["layers_1/moe/down", "layers_1/moe/gate_up", "layers_3/moe/down", "layers_3/moe/gate_up"]
    adapters = init_adapters(params, paths, spec, jax.random.key(2))
    adapters = {
        p: {"a": a["a"], "b": 0.1 * jax.random.normal(jax.random.key(3), a["b"].shape)} for p, a in adapters.items()
    }
    assert adapters["layers_1/moe/down"]["a"].shape == (4, 24, 2)  # one adapter per expert
    merged, _ = model.apply(merge(params, adapters, spec), toks)
    np.testing.assert_allclose(merged, apply_unmerged(model, params, adapters, spec, toks), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(merged - model.apply(params, toks)[0]).max()) > 1e-3


@pytest.mark.parametrize(
    "moe,extra,key",
    [
        ({"n_experts": 4, "top_k": 5}, {}, "model.moe.top_k"),
        ({"n_experts": 4, "routing": "relu"}, {}, "model.moe.routing"),
        ({"n_experts": 4, "shared_gate": True}, {}, "model.moe.d_shared"),
        ({"n_experts": 4, "period": 2, "offset": 2}, {}, "model.moe.period"),
        ({"n_experts": 4, "layers": [0, 9]}, {}, "model.moe.layers"),
        ({"n_experts": 4, "layers": [1], "period": 2}, {}, "model.moe.layers"),
        ({"n_experts": 4}, {"mlp": "none"}, "model.moe.n_experts"),
        ({"n_experts": 6, "n_groups": 4}, {}, "model.moe.n_groups"),
        ({"n_experts": 6, "n_groups": 3, "top_groups": 4}, {}, "model.moe.top_groups"),
        ({"n_experts": 6, "n_groups": 6}, {}, "model.moe.n_groups"),  # one expert per group
        ({"n_experts": 8, "n_groups": 4, "top_k": 3}, {}, "model.moe.top_k"),  # top_groups 1 holds only 2
        ({"n_experts": 4, "scale": 0.0}, {}, "model.moe.scale"),
        ({"n_experts": 4, "period": 3}, {"scan_layers": True}, "model.scan_layers"),
        ({"n_experts": 4}, {"quant": {"bits": 4, "method": "gptq"}}, "quantize this model with rtn"),
    ],
)
def test_bad_moe_options_name_the_field(moe, extra, key):
    with pytest.raises(ConfigError, match=key):
        _cfg(moe=moe, **extra)
