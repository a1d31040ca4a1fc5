"""jax2onnx against slm_jax's own jaxpr -> ONNX translator, on every preset's prefill and one-token decode.

    PYTHONPATH=DIR python benchmarks/jax2onnx_eval.py [--cases transformer griffin/scan_layers ...] [--json FILE]

jax2onnx pins orbax-checkpoint < 0.11.37, older than slm_jax needs, so it goes in a folder of its own
rather than the project's environment: ``pip install --target DIR --no-deps jax2onnx onnx-ir``.
Without it only our translator is measured.

Cases: every preset (a tiny random model: d_model 32, 4 heads, one cycle of its layer pattern,
vocab 64), then ``VARIANTS``, the run options our exporter also handles (layers under ``nn.scan``,
int8/int4 weights, an int8 cache). Both converters export the step
that ``slm export --format onnx`` exports (``stablehlo.make_step``) at 8 tokens from an empty cache
(prefill) and at 1 token after it (decode). Each model runs in onnxruntime on the same inputs as
``jax.jit(step)``; reported per case and step: exported or not, the error (for jax2onnx usually
the primitive it has no plugin for), max |diff| over the logits and the new cache, and export time
in seconds (trace + translate + serialize). Prints one JSON line per case, then the versions and a
markdown table (docs/deploy.md quotes it).
"""

import argparse
import json
import time
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
from jax.extend import core

from slm_jax.config import config_from_dict
from slm_jax.export.onnx_graph import jaxpr_to_onnx
from slm_jax.export.stablehlo import make_step
from slm_jax.models.lm import CausalLM
from slm_jax.presets import PRESETS, is_encoder
from slm_jax.quant.params import linear_paths, quantize_params

CHUNK, MAX_LEN = 8, 32


VARIANTS = {  # what `slm export --format onnx` also handles beyond a preset's defaults
    "griffin/scan_layers": ("griffin", {"n_layers": 6, "scan_layers": True}),
    "transformer/int8_weights": ("transformer", {"quant": {"bits": 8}}),
    "mamba/int4_weights": ("mamba", {"quant": {"bits": 4}}),
    "griffin/int8_cache": ("griffin", {"cache_quant": "int8"}),
}


def tiny_step(case: str):
    """(step, weights, empty cache) of a tiny random model of a preset or a variant."""
    preset, overrides = VARIANTS.get(case, (case, {}))
    layers = len(PRESETS[preset]["layer_pattern"])
    raw = {"preset": preset, "n_layers": layers, "d_model": 32, "n_heads": 4, "vocab_size": 64, "init_std": 0.3}
    cfg = config_from_dict({"name": preset, "model": raw | overrides}).model
    float_cfg = config_from_dict({"name": preset, "model": raw | overrides | {"quant": {"bits": 0}}}).model
    params = CausalLM(float_cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    if cfg.quant.bits:
        params = quantize_params(params, linear_paths(float_cfg), cfg.quant.bits)
    model = CausalLM(cfg)
    cache = model.init_cache(1, MAX_LEN)
    step = make_step(model, jax.tree.structure(params), jax.tree.structure(cache))
    return step, jax.tree.leaves(params), jax.tree.leaves(cache)


def primitives(jaxpr) -> set[str]:
    """Names of every primitive in ``jaxpr`` and the jaxprs inside it."""
    found = {e.primitive.name for e in jaxpr.eqns}
    for sub in core.subjaxprs(jaxpr):
        found |= primitives(sub)
    return found


def run_onnx(model_bytes: bytes, names: list[str], flat: list) -> list[np.ndarray]:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    feed = dict(zip(names, (np.asarray(a) for a in flat)))
    return session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})


def max_diff(got: list, want: list) -> float:
    if len(got) != len(want) or any(np.shape(g) != np.shape(w) for g, w in zip(got, want)):
        return float("inf")
    return max(float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(w, np.float64)))) for g, w in zip(got, want))


def error_line(e: Exception) -> str:
    first = next((line for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first}"[:300]


def attempt(export: Callable[[], bytes], names: list[str], flat: list, want: list) -> dict:
    """Time ``export``, run its model in onnxruntime, compare with ``want``; any failure is the finding."""
    t0 = time.perf_counter()
    try:
        data = export()
        seconds = time.perf_counter() - t0
        got = run_onnx(data, names, flat)
    except Exception as e:  # noqa: BLE001
        return {"exported": False, "error": error_line(e)}
    return {"exported": True, "max_diff": max_diff(got, want), "export_s": round(seconds, 3)}


def ours(flat_step, flat: list, names: list[str]) -> bytes:
    """Our translator, as ``onnx_export.onnx_steps`` runs it for one step."""
    closed = jax.make_jaxpr(flat_step)(*(jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype) for a in flat))
    model = jaxpr_to_onnx(closed, names, [f"out{i}" for i in range(len(closed.jaxpr.outvars))])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def theirs(jax2onnx, flat_step, flat: list, names: list[str]) -> bytes:
    spec = [jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype) for a in flat]
    return jax2onnx.to_onnx(flat_step, spec, input_names=names).SerializeToString()


def evaluate(case: str, jax2onnx) -> dict:
    step, weights, cache = tiny_step(case)
    n_w, n_c = len(weights), len(cache)
    names = [f"w{i}" for i in range(n_w)] + ["tokens", "start"] + [f"c{i}" for i in range(n_c)]
    flat_step = lambda *a: (lambda lg, c: (lg, *c))(*step(list(a[:n_w]), a[n_w], a[n_w + 1], list(a[n_w + 2 :])))
    tokens = jax.random.randint(jax.random.key(1), (1, CHUNK + 1), 0, 64, jnp.int32)
    _, after_prefill = jax.jit(step)(weights, tokens[:, :CHUNK], jnp.int32(0), cache)
    steps = {"prefill": (tokens[:, :CHUNK], 0, cache), "decode": (tokens[:, CHUNK:], CHUNK, after_prefill)}
    out, found = {"case": case}, set()
    for name, (tok, start, c) in steps.items():
        flat = [*weights, tok, jnp.int32(start), *c]
        want = jax.tree.leaves(jax.jit(flat_step)(*flat))
        found |= primitives(jax.make_jaxpr(flat_step)(*flat).jaxpr)
        out[name] = {
            "ours": attempt(partial(ours, flat_step, flat, names), names, flat, want),
            "jax2onnx": attempt(partial(theirs, jax2onnx, flat_step, flat, names), names, flat, want)
            if jax2onnx
            else {"exported": False, "error": "jax2onnx is not installed"},
        }
    out["primitives"] = sorted(found)
    return out


def table(results: list[dict]) -> str:
    fmt = lambda r: (
        f"yes, {r['max_diff']:.1e}, {r['export_s']:.2f} s" if r["exported"] else f"no: {r.get('error', '')[:90]}"
    )
    lines = [
        "| case | step | ours: max abs diff, export time | jax2onnx: exported, max abs diff, export time |",
        "|---|---|---|---|",
    ]
    for res in results:
        for name in ("prefill", "decode"):
            lines.append(f"| {res['case']} | {name} | {fmt(res[name]['ours'])} | {fmt(res[name]['jax2onnx'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cases = [*(p for p in PRESETS if not is_encoder(p)), *VARIANTS]  # decode export: decoders only
    ap.add_argument("--cases", nargs="*", default=cases, choices=cases, help="presets and variants (default: all)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    try:
        import jax2onnx
    except ImportError:
        jax2onnx = None
    else:  # the first export loads every plugin: keep that out of the timings
        jax2onnx.to_onnx(lambda x: x + 1, [jax.ShapeDtypeStruct((1,), jnp.float32)])
    results = []
    for case in args.cases:
        results.append(evaluate(case, jax2onnx))
        print(json.dumps(results[-1]), flush=True)
    versions = {"jax": jax.__version__, "onnxruntime": ort.__version__}
    if jax2onnx is not None:
        from importlib.metadata import version

        versions["jax2onnx"] = version("jax2onnx")
    report = {"versions": versions, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(json.dumps(versions))
    print(table(results))


if __name__ == "__main__":
    main()
