"""The mixer contract (slm_jax/mixers/contract.py), checked for every registered mixer.

For each mixer, on awkward shapes (widths that are not powers of two, sequences that are not a
multiple of any chunk, 1-token prompts): the parallel path, every ``test_variants`` path, a
one-shot prefill and token-by-token decoding (from an empty cache and after prefills of 1 and
of several tokens) give the reference's outputs and final state; gradients of the parallel
path equal the reference's; and the declarations hold: every weight has sharding axes, LoRA
finds the declared projections, the int8 cache covers the state and ``kv_leaves`` covers what
grows with the context, the decode state's size is derived from ``init_cache``, and the
closed-form parameter count and FLOPs agree with the parameter tree and an independent count.
"""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.finetune.lora import LoraSpec, target_paths
from slm_jax.mixers.contract import state_bytes
from slm_jax.mixers.registry import MIXERS, build_mixer, mixer_names, parallel_parts
from slm_jax.models.lm import cache_bytes
from slm_jax.quant.cache import Int8Leaf, quantize_cache
from slm_jax.training.sharding import PARAM_AXES
from slm_jax.tree_paths import path_str
from tests.mixers.flop_count import count_flops

D, HEADS = 24, 3
# Every registered mixer, and parallel layers (mixers/parallel.py) held to the same contract.
NAMES = mixer_names() + ("attention+mamba2",)


def model_cfg(name: str, d_model: int = D, n_heads: int = HEADS, **model):
    raw = {
        "layer_pattern": [name],
        "d_model": d_model,
        "n_heads": n_heads,
        "n_layers": 2,
        "vocab_size": 29,
        "mixers": {part: dict(MIXERS[part].test_options) for part in parallel_parts(name)},
        **model,
    }
    return config_from_dict({"model": raw}).model


def declared(name: str):
    """The built mixer ``name``, whose attributes are its declarations (a parallel layer's come from its parts)."""
    return build_mixer(model_cfg(name), name)


def o1_params(params, key):
    """Projections rescaled to unit gain (N(0, 1 / fan_in)) and biases spread, so that gates and
    nonlinearities run in their nonlinear range instead of near zero as at init."""

    def one(path, leaf):
        name = path_str(path)
        k = jax.random.fold_in(key, zlib.crc32(name.encode()))  # str hash() changes between processes
        if name.endswith("kernel") and leaf.ndim == 2:
            return jax.random.normal(k, leaf.shape) / np.sqrt(leaf.shape[0])
        if name.endswith("/bias") and "dt_proj" not in name:
            return 0.5 * jax.random.normal(k, leaf.shape)
        return leaf

    return jax.tree_util.tree_map_with_path(one, params)


def setup(name, t, seed=0, **fields):
    cfg = model_cfg(name)
    mixer = build_mixer(cfg, name)
    if fields:
        mixer = mixer.clone(**fields)
    x = jax.random.normal(jax.random.key(seed), (2, t, D))
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (2, t))
    params = o1_params(mixer.init(jax.random.key(seed + 1), x, pos), jax.random.key(seed + 2))
    return mixer, params, x, pos


def close(a, b, tol=2e-5):
    """|a - b| <= tol * (|b| + max|b|), leaf by leaf."""
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        np.testing.assert_allclose(u, v, rtol=tol, atol=tol * max(np.abs(v).max(), 1e-6))


def decode(mixer, params, x, pos, prefill=0):
    """Prefill x[:, :prefill] (if > 0), then one token at a time through the cache."""
    cache = mixer.init_cache(x.shape[0], x.shape[1])
    outs = []
    if prefill:
        out, cache = mixer.apply(params, x[:, :prefill], pos[:, :prefill], cache)
        outs.append(out)
    step = jax.jit(lambda p, xt, pt, c: mixer.apply(p, xt, pt, c))
    for i in range(prefill, x.shape[1]):
        out, cache = step(params, x[:, i : i + 1], pos[:, i : i + 1], cache)
        outs.append(out)
    return jnp.concatenate(outs, axis=1), cache


def check_state(cache, state):
    """The reference's final state equals the matching leaves of a cache."""
    assert set(state) <= set(cache), f"reference state {sorted(state)} not in the cache {sorted(cache)}"
    close({k: cache[k] for k in state}, state)


def check_against_reference(mixer, params, x, pos):
    """Parallel, one-shot prefill and token-by-token decoding (after prefills of 0, 1 and t // 2 + 1
    tokens) give the reference's outputs; every cache path ends in the reference's state."""
    t = x.shape[1]
    y_ref, state = jax.jit(mixer.reference)(params, x, pos)
    y_par, none = mixer.apply(params, x, pos)
    assert none is None and y_par.shape == x.shape
    close(y_par, y_ref)
    y_pre, cache_pre = mixer.apply(params, x, pos, mixer.init_cache(x.shape[0], t))
    close(y_pre, y_ref)
    check_state(cache_pre, state)
    for prefill in sorted({0, 1, t // 2 + 1} - {t}):
        y_dec, cache = decode(mixer, params, x, pos, prefill)
        close(y_dec, y_ref)
        close(cache, cache_pre)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t", [21, 1])
def test_paths_equal_the_reference(name, t):
    check_against_reference(*setup(name, t))


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_close_to_the_reference(name):
    """bfloat16 compute (float32 state and statistics) stays within 3% of the output scale."""
    mixer, params, x, pos = setup(name, 21, seed=4)
    y_ref, _ = jax.jit(mixer.reference)(params, x, pos)
    y = mixer.clone(dtype=jnp.bfloat16).apply(params, x, pos)[0]
    assert y.dtype == jnp.bfloat16
    scale = float(jnp.abs(y_ref).max())
    np.testing.assert_allclose(np.asarray(y, np.float32), y_ref, atol=0.03 * scale)


@pytest.mark.parametrize("name", [n for n in NAMES if declared(n).test_variants])
def test_variants_equal_the_reference(name):
    mixer, params, x, pos = setup(name, 21, seed=3)
    y_ref, state = jax.jit(mixer.reference)(params, x, pos)
    for fields in mixer.test_variants:
        variant = mixer.clone(**fields)
        close(variant.apply(params, x, pos)[0], y_ref)
        y_pre, cache = variant.apply(params, x, pos, variant.init_cache(2, 21))
        close(y_pre, y_ref)
        check_state(cache, state)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_equal_the_reference(name):
    mixer, params, x, pos = setup(name, 13, seed=5)
    w = jax.random.normal(jax.random.key(7), x.shape)
    grad = lambda f: jax.jit(jax.grad(lambda p, x: jnp.sum(f(p, x) * w), argnums=(0, 1)))(params, x)
    g_par = grad(lambda p, x: mixer.apply(p, x, pos)[0])
    g_ref = grad(lambda p, x: mixer.reference(p, x, pos)[0])
    close(g_par, g_ref, tol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_declarations_cover_the_parameters(name):
    """Every weight has sharding axes; LoRA finds the declared projections in every layer."""
    cfg = model_cfg(name)
    cls = mixer = build_mixer(cfg, name)
    x, pos = jnp.zeros((1, 5, D)), jnp.zeros((1, 5), jnp.int32)
    shapes = jax.eval_shape(mixer.init, jax.random.key(0), x, pos)
    suffixes = [s for s, _ in PARAM_AXES]
    for path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        p = "params/layers_0/mixer/" + path_str(path).removeprefix("params/")
        matched = [s for s in suffixes if p.endswith("/" + s)]
        assert matched, f"{name}: weight {p} has no sharding axes; add it to {type(cls).__name__}.param_axes"
    assert cls.lora_targets, f"{name} declares no LoRA targets"
    found = target_paths(cfg, LoraSpec())
    for layer in range(cfg.n_layers):
        for target in cls.lora_targets:
            assert f"layers_{layer}/mixer/{target}" in found, (
                f"{name}: LoRA target {target} is not a Linear of layer {layer}"
            )


@pytest.mark.parametrize("name", NAMES)
def test_cache_declarations(name):
    """int8 covers every float state leaf; what grows with max_len is declared KV; bytes are derived."""
    cls = mixer = declared(name)
    small, large = mixer.init_cache(2, 8), mixer.init_cache(2, 16)
    assert set(cls.kv_leaves) <= set(small), f"{name}: kv_leaves {cls.kv_leaves} are not cache leaves"
    floats = {k for k, v in small.items() if jnp.issubdtype(v.dtype, jnp.floating)}
    grows = {k for k in floats if np.shape(small[k]) != np.shape(large[k])}
    assert grows <= set(cls.kv_leaves), (
        f"{name}: cache leaves {sorted(grows)} grow with the context; declare them in kv_leaves"
    )
    quantized = quantize_cache(small)
    for k, leaf in small.items():
        assert isinstance(quantized[k], Int8Leaf) == jnp.issubdtype(leaf.dtype, jnp.floating), k
    kv = quantize_cache(small, leaves=cls.kv_leaves)
    assert {k for k, v in kv.items() if isinstance(v, Int8Leaf)} == {
        k for k in cls.kv_leaves if jnp.issubdtype(small[k].dtype, jnp.floating)
    }
    assert state_bytes(mixer, 2, 8) == cache_bytes(small)
    assert state_bytes(mixer, 2, 16) == cache_bytes(large)


@pytest.mark.parametrize("name", NAMES)
def test_param_count_and_flops_are_right(name):
    """Closed forms vs the real parameter tree and vs FLOPs counted from the parallel path's jaxpr.

    The jaxpr count charges every primitive of softplus, GeLU, softmax, ... and every score of
    the causal square that attention masks out, where the closed forms count each nonlinearity
    once and only the causal half; at this width the matmuls dominate, so the two agree within
    the band (a forgotten projection moves the ratio far outside it).
    """
    cfg = model_cfg(name, d_model=48, n_heads=3)
    mixer, t = build_mixer(cfg, name), 32
    x, pos = jnp.zeros((1, t, 48)), jnp.broadcast_to(jnp.arange(t), (1, t))
    params = mixer.init(jax.random.key(0), x, pos)
    assert mixer.num_params() == sum(a.size for a in jax.tree.leaves(params))
    for variant in [{}, *mixer.test_variants]:
        m = mixer.clone(**variant)
        try:
            counted = count_flops(lambda p, x, m=m: m.apply(p, x, pos)[0], params, x) / t
        except ValueError:  # a while loop: this variant has no static count
            continue
        ratio = counted / m.flops_per_token(t)
        assert 0.75 <= ratio <= 1.4, f"{name} {variant}: jaxpr FLOPs / closed form = {ratio:.3f}"


# Two packed rows: documents of awkward lengths (1-token ones, one longer than the 8-token chunks
# of the test options), summing to 21 tokens each.
PACKED_DOCS = ((5, 1, 9, 6), (13, 1, 1, 6))


def packed_inputs(docs=PACKED_DOCS):
    """segment_ids and restarting positions i32[len(docs), t] for rows of documents of the given lengths."""
    seg = np.stack([np.repeat(np.arange(len(row)), row) for row in docs]).astype(np.int32)
    pos = np.stack([np.concatenate([np.arange(n) for n in row]) for row in docs]).astype(np.int32)
    return jnp.asarray(seg), jnp.asarray(pos)


def run_separately(f, x, docs=PACKED_DOCS):
    """f(x_docs [n_docs, longest, ...], positions [n_docs, longest]) -> y_docs: every document alone in
    its own row of one batch, right-padded with whatever follows it (which a causal mixer never reads;
    zeros could make 0/0 in a key norm), its outputs put back where the document sits in the packed rows."""
    rows = np.concatenate([[r] * len(lengths) for r, lengths in enumerate(docs)])
    starts = np.concatenate([np.cumsum((0,) + tuple(lengths))[:-1] for lengths in docs])
    sizes = np.concatenate(docs)
    longest = int(sizes.max())
    offsets = np.arange(longest)
    x_docs = x[rows[:, None], np.minimum(starts[:, None] + offsets, x.shape[1] - 1)]
    y_docs = f(x_docs, jnp.asarray(np.broadcast_to(offsets, (len(sizes), longest)), jnp.int32))
    doc_of = np.stack([np.repeat(np.arange(len(lengths)), lengths) for lengths in docs])  # [b, t] within the row
    first_doc = np.cumsum([0] + [len(lengths) for lengths in docs])[:-1]
    pos = np.stack([np.concatenate([np.arange(n) for n in lengths]) for lengths in docs])
    return y_docs[first_doc[:, None] + doc_of, pos]


@pytest.mark.parametrize("name", NAMES)
def test_packed_rows_equal_documents_run_alone(name):
    """Issue #19: a packed row gives each document's outputs as if it ran alone, on every path
    (default and ``test_variants``), and so do the gradients of a loss over the packed row."""
    mixer, params, x, _ = setup(name, sum(PACKED_DOCS[0]), seed=6)
    seg, pos = packed_inputs()
    w = jax.random.normal(jax.random.key(8), x.shape)
    for fields in ({},) + tuple(mixer.test_variants):
        check_packed(mixer.clone(**fields), params, x, seg, pos, w)
    with pytest.raises(ConfigError, match="decode one document per row"):
        mixer.apply(params, x, pos, mixer.init_cache(2, x.shape[1]), segment_ids=seg)


def check_packed(mixer, params, x, seg, pos, w):
    packed = lambda p, x: mixer.apply(p, x, pos, segment_ids=seg)[0]
    alone = lambda p, x: run_separately(lambda xd, pd: mixer.apply(p, xd, pd)[0], x)
    close(jax.jit(packed)(params, x), jax.jit(alone)(params, x))
    grad = lambda f: jax.jit(jax.grad(lambda p, x: jnp.sum(f(p, x) * w), argnums=(0, 1)))(params, x)
    close(grad(packed), grad(alone), tol=1e-4)
