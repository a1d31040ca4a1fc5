"""slm export --format onnx: the jaxpr -> ONNX translation, checked in onnxruntime against JAX."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from slm_jax.cli import main  # noqa: E402
from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.errors import ConfigError  # noqa: E402
from slm_jax.export.onnx_export import onnx_steps  # noqa: E402
from slm_jax.export.onnx_graph import jaxpr_to_onnx  # noqa: E402
from slm_jax.export.runner import Artifact  # noqa: E402
from slm_jax.export.stablehlo import export_run, make_step  # noqa: E402
from slm_jax.inference.run import load_run  # noqa: E402
from slm_jax.models.lm import CausalLM  # noqa: E402
from slm_jax.ops import scan as scan_ops  # noqa: E402
from tests.export.test_stablehlo import N_NEW, PROMPT, make_run, reference_logits  # noqa: E402


def run_onnx(fn, *args):
    """fn(*args) through jaxpr -> ONNX -> onnxruntime; returns the flat outputs."""
    closed = jax.make_jaxpr(fn)(*args)
    flat = jax.tree.leaves(args)
    model = jaxpr_to_onnx(
        closed, [f"in{i}" for i in range(len(flat))], [f"out{i}" for i in range(len(closed.jaxpr.outvars))]
    )
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {f"in{i}": np.asarray(a) for i, a in enumerate(flat)})


def assert_same(fn, *args, atol=1e-6, rtol=1e-5):
    want = jax.tree.leaves(jax.jit(fn)(*args))
    got = run_onnx(fn, *args)
    assert len(got) == len(want)
    for w, g in zip(want, got):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, np.asarray(w), atol=atol, rtol=rtol)


def test_primitives_keep_jax_semantics():
    r = np.random.RandomState(0)
    x = jnp.asarray(r.randn(3, 4, 5), jnp.float32)
    i = jnp.asarray([-7, -1, 0, 5, 9], jnp.int32)
    # rem truncates and dynamic slices clamp out-of-range starts, unlike ONNX's defaults
    assert_same(lambda i: (jax.lax.rem(i, 4), i // 4, i % 4), i)
    assert_same(lambda x, s: jax.lax.dynamic_slice(x, (s, 0, s), (2, 4, 3)), x, jnp.int32(7))
    assert_same(lambda x, s: jax.lax.dynamic_update_slice(x, jnp.ones((1, 2, 5)), (s, s, 0)), x, jnp.int32(-2))
    # dot_general with batch dims in the middle, gathers in JAX's dimension order, scatter, pad, cumsum
    assert_same(lambda a, b: jnp.einsum("bij,jbk->bik", a, b), x, jnp.asarray(r.randn(5, 3, 2), jnp.float32))
    assert_same(
        lambda x, k: (x[:, k], jnp.take(x, k, axis=2), jnp.stack([x, -x], axis=1)),
        x,
        jnp.asarray([[3, 0], [1, 1]], jnp.int32),
    )
    assert_same(lambda x, k: x.at[:, k].set(-1.0).at[0, :, 1].add(2.0), x, jnp.asarray([2, 0], jnp.int32))
    # gathers over several axes at once (diagonals, as in DeltaNet's chunked prefill)
    assert_same(
        lambda x, k: (x[k, :, k], x[:, k, k], jnp.diagonal(x, 0, 1, 2)), x, jnp.asarray([[2, 0], [1, 1]], jnp.int32)
    )
    assert_same(lambda x: jax.lax.pad(x, 0.5, [(1, -1, 0), (0, 2, 1), (-2, 0, 2)]), x)
    assert_same(
        lambda x: (jnp.cumsum(x, 1), jax.lax.cumsum(x[::-1], 2, reverse=True), jnp.argmax(x, -1), x.max((0, 2))), x
    )
    # top_k (the MoE router; distinct values: XLA and onnxruntime may order tied values differently)
    assert_same(lambda x: jax.lax.top_k(x, 3), x)
    assert_same(
        lambda x: (
            jnp.where(x > 0, x > 1, x < -1),
            jax.nn.softplus(x),
            jax.lax.integer_pow(x, -2),
            jax.lax.rsqrt(x * x),
        ),
        x,
    )
    assert_same(
        lambda x, k: (jax.lax.select_n(k, x, -x, 2 * x), jax.lax.clamp(-0.5, x, 0.5)),
        x,
        jnp.asarray(r.randint(0, 3, x.shape), jnp.int32),
    )
    halves = jnp.asarray([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.7, -0.2], jnp.float32)
    assert_same(lambda h: (jnp.round(h), jax.lax.round(h)), halves, atol=0)
    # log1p / expm1 stay accurate near 0 (RG-LRU's sqrt(1 - a^2) and softplus need it) and at the extremes
    tiny = jnp.asarray([-1e-3, -3e-7, -1e-9, 0.0, 2e-8, 5e-6, 0.3, -20.0, 100.0, -200.0], jnp.float32)
    assert_same(lambda t: (jnp.log1p(t), jnp.expm1(t)), tiny, atol=0, rtol=2e-6)
    assert_same(lambda x: jax.lax.fori_loop(0, 3, lambda k, c: c * 0.5 + k, x), x)  # a scan without xs
    assert_same(lambda x: jax.lax.scan(lambda c, r: (c + r, c * r), x[0], x, reverse=True), x)
    assert_same(lambda x: (x, *(lambda y: (y, y))(2 * x), x[0] + 1), x)  # an input and a repeated value as outputs


def test_complex_values_and_ffts_keep_jax_semantics():
    """Complex values are [..., 2] real pairs in the graph; FFTs are ONNX DFTs (power-of-2 lengths) or Bluestein
    chirp-z transforms (any other length). Graph inputs and outputs stay real, so each case builds and splits."""
    r = np.random.RandomState(2)
    a, b = (jnp.asarray(r.randn(3, 4, 6), jnp.float32) for _ in range(2))
    out = lambda *zs: tuple(p for z in zs for p in (z.real, z.imag))
    small = jnp.asarray(r.uniform(-1e-4, 1e-4, (3, 4, 6)), jnp.float32)  # expm1 near 0 (H3's dB = expm1(dt A) / A)

    def arithmetic(a, b, s):
        z, w = jax.lax.complex(a, b), jax.lax.complex(b, -a)
        return out(z * w, z / w, z + w, z - w, -z, jnp.exp(z), jnp.expm1(jax.lax.complex(s, 3 * s)), jnp.expm1(z))

    assert_same(arithmetic, a, b, small, atol=1e-5, rtol=1e-5)

    def structure(a, b, k, i):
        z = jax.lax.complex(a, b)
        return (
            *out(
                z.T, z.reshape(4, 18)[1:3, ::-1], jnp.broadcast_to(z[:, :1], (3, 4, 6)), jnp.concatenate([z, 2 * z], 1)
            ),
            *out(jnp.pad(z, ((1, 0), (0, 2), (0, 0))), jnp.where(a > 0, z, 1j * z), z[k], z.sum(1), jnp.cumsum(z, 2)),
            *out(
                jax.lax.dynamic_slice(z, (i, 0, i), (2, 4, 3)),
                jax.lax.dynamic_update_slice(z, z[:1, :2] * 2, (i, i, 0)),
            ),
            *out(a.astype(jnp.complex64), k.astype(jnp.complex64)),
            z.real + z.imag,
        )

    assert_same(structure, a, b, jnp.asarray([2, 0, 2], jnp.int32), jnp.int32(1))
    # a scan carrying a complex state, as H3's chunked prefill does
    decay = lambda a, b: jnp.exp(jax.lax.complex(-jnp.abs(a[0]), b[0]))
    scan = lambda a, b: out(jax.lax.scan(lambda h, x: (decay(a, b) * h + x, h), jnp.zeros((4, 6), jnp.complex64), a)[0])
    assert_same(scan, a, b, atol=1e-5)
    for n in (16, 30, 7):  # a power of 2; Bluestein for an even and an odd length
        x = jnp.asarray(r.randn(2, 3, n), jnp.float32)
        spec = jnp.fft.rfft(x)
        assert_same(lambda x: out(jnp.fft.rfft(x)), x, atol=1e-5, rtol=1e-5)
        assert_same(lambda re, im, n=n: jnp.fft.irfft(jax.lax.complex(re, im), n=n), spec.real, spec.imag, atol=1e-5)
        assert_same(
            lambda x, y: out(*(f(jax.lax.complex(x, y)) for f in (jnp.fft.fft, jnp.fft.ifft))), x, -x[::-1], atol=2e-5
        )


def test_outputs_are_named_at_their_producer():
    """Graph outputs are the computing nodes' own outputs: an Identity would copy a whole cache every step."""
    x = jnp.ones((2, 3), jnp.float32)
    twice = lambda y: (y, y)
    model = jaxpr_to_onnx(jax.make_jaxpr(lambda x: (x, *twice(x * 2)))(x), ["x"], ["a", "b", "c"])
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert producers == {"b": "Mul", "a": "Identity", "c": "Identity"} | {
        o: "Constant" for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }


@pytest.mark.parametrize("impl", ["linear", "associative", "chunked"])
def test_every_scan_impl_translates(impl):
    r = np.random.RandomState(1)
    a, b = (jnp.asarray(r.rand(2, 16, 3), jnp.float32) for _ in range(2))
    h0 = jnp.asarray(r.randn(2, 3), jnp.float32)
    fn = lambda a, b, h0: scan_ops.linear_scan(a, b, h0, impl=scan_ops.ScanImpl(impl), chunk_size=4)
    assert_same(fn, a, b, h0, atol=1e-5)


def test_layers_under_nn_scan_become_an_onnx_scan():
    """Flax nn.scan over layers (scan_layers) translates to one Scan node: prefill then decode on its cache."""
    cfg = config_from_dict(
        {
            "name": "g",
            "model": {
                "preset": "griffin",
                "n_layers": 6,
                "d_model": 16,
                "n_heads": 2,
                "vocab_size": 11,
                "mixers": {"local_attention": {"window": 8}},
                "init_std": 0.3,
                "scan_layers": True,
            },
        }
    )
    model = CausalLM(cfg.model)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    cache = model.init_cache(1, 32)
    step = make_step(model, jax.tree.structure(params), jax.tree.structure(cache))
    weights, tokens = jax.tree.leaves(params), jnp.asarray([[1, 5, 2, 7, 3, 9, 4, 10, 0, 6]], jnp.int32)
    _, cache = jax.jit(step)(weights, tokens, jnp.int32(0), jax.tree.leaves(cache))
    assert_same(step, weights, tokens, jnp.int32(10), cache, atol=1e-4)
    assert_same(step, weights, tokens[:, :1], jnp.int32(20), cache, atol=1e-4)


@pytest.mark.parametrize("preset, n_layers", [("transformer", 1), ("griffin", 3), ("mamba", 1)])
def test_onnx_steps_reproduce_the_model(tmp_path, preset, n_layers):
    cfg, params, tok = make_run(tmp_path / "run", preset, n_layers=n_layers)  # griffin: RG-LRU, RG-LRU, local attention
    manifest = export_run(tmp_path / "run", tmp_path / "export", fmt="onnx", max_len=96, prefill_chunk=16)
    assert manifest["format"] == "slm_jax.onnx/1" and manifest["constant_memory"] == (preset != "transformer")
    art = Artifact(tmp_path / "export")
    decode = onnx.load(tmp_path / "export" / "decode.onnx", load_external_data=False)  # weights: weights.onnx.data
    cache_inputs = [i for i in decode.graph.input if i.name.startswith("cache/")]
    assert [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in cache_inputs] == [
        list(a.shape) for a in art.empty_cache
    ]
    prompt = [int(i) for i in tok.encode(PROMPT)]
    new, seen = art.generate(prompt, N_NEW)
    ref = reference_logits(cfg, params, prompt, new)
    assert float(np.max(np.abs(np.stack(seen) - ref))) < 1e-3
    assert new == [int(i) for i in ref.argmax(-1)]


def test_int4_run_exports_to_onnx(tmp_path):
    """The packed int4 kernels are unpacked inside the graph (bit ops on uint8, int8 arithmetic widened)."""
    make_run(tmp_path / "run", "mamba", n_layers=1)
    assert main(["quantize", str(tmp_path / "run"), "--bits", "4", "--out", str(tmp_path / "q")]) == 0
    export_run(tmp_path / "q", tmp_path / "export", fmt="onnx", max_len=48)
    run = load_run(tmp_path / "q")
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    new, seen = Artifact(tmp_path / "export").generate(prompt, 8)
    ref = reference_logits(run.cfg, run.params, prompt, new)
    assert float(np.max(np.abs(np.stack(seen) - ref))) < 1e-3


@pytest.mark.parametrize("preset", ["h3", "hyena", "baseconv"])
def test_complex_and_fft_presets_match_jax(tmp_path, preset):
    """H3 (complex64 diagonal SSM) and the FFT long convolutions of Hyena and BaseConv, float, int8 and int4: the
    prompt's 16-token chunk through prefill (FFT length 2 (15 + 16) = 62: Bluestein) and the rest and 6 greedy
    tokens through decode give the JAX model's logits (measured max |diff| 1e-6 to 1e-5)."""
    mixers = {"hyena": {"max_len": 16, "filter_hidden": 8}, "baseconv": {"max_len": 16}, "h3": {"chunk_size": 8}}
    _, _, tok = make_run(tmp_path / "run", preset, n_layers=1, mixers=mixers)
    prompt = [int(i) for i in tok.encode(PROMPT)]
    for bits in (None, 8, 4):
        run = tmp_path / "run"
        if bits:
            run = tmp_path / f"int{bits}"
            assert main(["quantize", str(tmp_path / "run"), "--bits", str(bits), "--out", str(run)]) == 0
        export_run(run, tmp_path / f"export{bits}", fmt="onnx", max_len=32, prefill_chunk=16)
        new, seen = Artifact(tmp_path / f"export{bits}").generate(prompt, 6)
        loaded = load_run(run)
        ref = reference_logits(loaded.cfg, loaded.params, prompt, new)
        np.testing.assert_allclose(np.stack(seen), ref, atol=5e-5, rtol=0)
        assert new == [int(i) for i in ref.argmax(-1)]


def _constants(graph):
    """Every Constant node's value in ``graph`` and its loop bodies."""
    for node in graph.node:
        if node.op_type == "Constant":
            yield onnx.numpy_helper.to_array(node.attribute[0].t)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _constants(attr.g)


@pytest.mark.parametrize("preset", ["deltanet", "transformer"])
def test_index_tables_are_computed_not_stored(tmp_path, preset):
    """iota masks (DeltaNet's 64 x 64 chunk masks), the element indices of the cache writes and of scatters are
    Range/Expand nodes, not constants: stored, they were 400 KB of DeltaNet's 570 KB int4 prefill graph at the
    on-device table's size, enough to put its int4 export over 0.3x the float one."""
    make_run(tmp_path / "run", preset, n_layers=1)
    assert main(["quantize", str(tmp_path / "run"), "--bits", "4", "--out", str(tmp_path / "q")]) == 0
    export_run(tmp_path / "q", tmp_path / "export", fmt="onnx", max_len=96, prefill_chunk=64)
    for name in ("prefill", "decode"):
        values = list(_constants(onnx.load(tmp_path / "export" / f"{name}.onnx", load_external_data=False).graph))
        assert max(v.size for v in values) <= 16  # shapes, axes, scalars
        assert sum(v.nbytes for v in values) < 4096


def test_bfloat16_run_is_refused(tmp_path, capsys):
    make_run(tmp_path / "run", "transformer", n_layers=1, dtype="bfloat16")
    code = main(["export", str(tmp_path / "run"), "--format", "onnx", "--out", str(tmp_path / "export")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "ONNX export supports float32 models only, and this run computes or stores bfloat16" in err
    assert not (tmp_path / "export").exists()


def test_missing_onnx_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(ConfigError, match=r"install it with `pip install -e '.\[onnx\]'`"):
        onnx_steps(lambda *a: a, [], [], 1, [], [])


def _plain_step(session, tokens, start, cache):
    """One step through a session's plain ``run`` with numpy inputs: (logits f32[v], new cache)."""
    feed = [np.asarray([tokens], np.int32), np.asarray(start, np.int32), *cache]
    logits, *cache = session.run(None, dict(zip([i.name for i in session.get_inputs()], feed)))
    return logits[0], cache


@pytest.mark.parametrize("preset, n_layers", [("transformer", 1), ("griffin", 3)])
@pytest.mark.parametrize("bits", [None, 4])
def test_plain_onnxruntime_opens_the_graphs_alone(tmp_path, preset, n_layers, bits):
    """Standard external data: both graphs point into one weights.onnx.data; no weights.npz; a bare
    InferenceSession reproduces the runner's logits (prefill over the whole prompt, then decode)."""
    _, _, tok = make_run(tmp_path / "run", preset, n_layers=n_layers)
    run = tmp_path / "run"
    if bits:
        assert main(["quantize", str(run), "--bits", str(bits), "--out", str(tmp_path / "q")]) == 0
        run = tmp_path / "q"
    prompt = [int(i) for i in tok.encode(PROMPT)]
    d = tmp_path / "export"
    export_run(run, d, fmt="onnx", max_len=48, prefill_chunk=len(prompt))
    assert sorted(f.name for f in d.iterdir()) == [
        "cache.npz",
        "decode.onnx",
        "manifest.json",
        "prefill.onnx",
        "tokenizer.json",
        "weights.onnx.data",
    ]
    art = Artifact(d)
    for name in ("prefill", "decode"):
        onnx.checker.check_model(str(d / f"{name}.onnx"), full_check=True)  # reads the data file
        graph = onnx.load(d / f"{name}.onnx", load_external_data=False).graph
        assert [i.name for i in graph.initializer] == art.manifest["weights"]["paths"]
        assert {e.value for t in graph.initializer for e in t.external_data if e.key == "location"} == {
            "weights.onnx.data"
        }
        assert [i.name for i in graph.input] == [
            "tokens",
            "start",
            *(f"cache/{p}" for p in art.manifest["cache"]["paths"]),
        ]
    want_new, want_seen = art.generate(prompt, 8)  # the prompt is one chunk: prefill, then decode
    prefill, decode = (ort.InferenceSession(str(d / f"{name}.onnx")) for name in ("prefill", "decode"))
    logits, _ = _plain_step(prefill, prompt, 0, art.empty_cache)
    np.testing.assert_allclose(logits, want_seen[0], atol=1e-5, rtol=0)
    cache, tokens, seen = art.empty_cache, list(prompt), []
    for pos in range(len(prompt) + len(want_new) - 1):  # decode alone: the prompt one token at a time, then greedy
        logits, cache = _plain_step(decode, tokens[pos : pos + 1], pos, cache)
        if pos >= len(prompt) - 1:
            seen.append(logits)
            tokens.append(int(np.argmax(logits)))
    assert tokens[len(prompt) :] == want_new
    np.testing.assert_allclose(np.stack(seen), np.stack(want_seen), atol=1e-5, rtol=0)
    loaded = load_run(run)
    ref = reference_logits(loaded.cfg, loaded.params, prompt, want_new)
    assert float(np.max(np.abs(np.stack(want_seen) - ref))) < 1e-3


def _to_legacy(d, layout):
    """Rewrite a new ONNX export as an older one: weights.npz, and weights as graph inputs ("inputs") or as
    initializers at the external location "weights.npz-arrays" ("npz-initializers")."""
    art = Artifact(d)
    weights = []
    for name in ("prefill", "decode"):
        path = d / f"{name}.onnx"
        model = onnx.load(path)  # reads weights.onnx.data
        graph = model.graph
        weights = [onnx.numpy_helper.to_array(t) for t in graph.initializer]
        if layout == "inputs":
            info = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.initializer]
            inputs = [*info, *graph.input]
            del graph.initializer[:], graph.input[:]
            graph.input.extend(inputs)
        else:
            for t in graph.initializer:
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
                entry = t.external_data.add()
                entry.key, entry.value = "location", "weights.npz-arrays"
        path.write_bytes(model.SerializeToString())
    np.savez(d / "weights.npz", **{f"{i:04d}": w for i, w in enumerate(weights)})
    (d / "weights.onnx.data").unlink()
    assert [w.dtype.name for w in weights] == art.manifest["weights"]["dtypes"]


@pytest.mark.parametrize("layout", ["inputs", "npz-initializers"])
def test_runner_still_reads_older_exports(tmp_path, layout):
    """Exports made before weights.onnx.data kept the weights in weights.npz (see ``_to_legacy``)."""
    _, _, tok = make_run(tmp_path / "run", "transformer", n_layers=1)
    export_run(tmp_path / "run", tmp_path / "export", fmt="onnx", max_len=40, prefill_chunk=16)
    prompt = [int(i) for i in tok.encode(PROMPT)]
    want = Artifact(tmp_path / "export").generate(prompt, 6)
    _to_legacy(tmp_path / "export", layout)
    art = Artifact(tmp_path / "export")
    assert len(art.weights) == len(art.manifest["weights"]["paths"])
    got = art.generate(prompt, 6)
    assert got[0] == want[0]
    np.testing.assert_allclose(np.stack(got[1]), np.stack(want[1]), atol=1e-5, rtol=0)  # inputs: nothing folded


def test_a_missing_weights_file_is_named(tmp_path):
    make_run(tmp_path / "run", "transformer", n_layers=1)
    export_run(tmp_path / "run", tmp_path / "export", fmt="onnx", max_len=16, prefill_chunk=4)
    (tmp_path / "export" / "weights.onnx.data").unlink()
    with pytest.raises(SystemExit, match="has no weights.onnx.data .nor weights.npz.; copy the whole export directory"):
        Artifact(tmp_path / "export")
