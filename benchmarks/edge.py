"""The on-device table (issue #18 part 4): what a compressed small model costs to run on a CPU box.

    python benchmarks/edge.py                                   # transformer, griffin: 100 steps on Tiny Shakespeare
    python benchmarks/edge.py --presets all
    python benchmarks/edge.py --runs runs/teacher runs/teacher_pruned   # any float runs, pruned ones included

Each float run (trained with configs/experiments/shakespeare_char.yaml for ``--steps`` steps, reused
when present, or passed with ``--runs``) is compressed the same way: int8 round-to-nearest and int4
GPTQ (Frantar et al. 2022, calibrated on the run's training split); a pruned run passed with
``--runs`` gives the pruned+int4 row. Every variant is exported with ``slm export`` as StableHLO and
as ONNX, and every number below is measured in a fresh child process that loads the export with
slm_jax/export/runner.py (our JAX runner: jax only; the ONNX runner: onnxruntime only):

- quality: the validation loss (``slm eval``, ``--eval-batches`` batches) of every variant, and the Pareto
  front of export bytes against it (the best quality per byte);
- bytes on disk: the params-only checkpoint, and each export without ``cache.npz`` (the zeros of the
  empty cache, whose size the manifest records and the JSON line reports);
- peak resident memory (the child's VmHWM) of decoding at batch 1 after a ``--prompt`` (128)-token
  prompt with an export sized for 1 and for ``--long`` (4,096) new tokens. The export allocates its
  whole cache before the first step, so the long child decodes only ``--decode-tokens`` (512) of them
  by default: on the transformer, decoding 64, 512 and all 4,096 gave peaks within 7% of each other
  (docs/deploy.md); ``--decode-tokens 4096`` decodes them all;
- time to first token of the prompt (one prefill call: ``--prefill-chunk`` defaults to the prompt);
- greedy decode tokens/s at batch 1 over ``--decode-tokens`` tokens in the long export, on all cores
  and on one core: the child's CPU affinity set to one CPU before jax or onnxruntime starts (taskset;
  both size their thread pools from it; XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
  intra_op_parallelism_threads=1 left jax's thread count unchanged on jax 0.10.2);
- energy per decoded token from the RAPL package counters where readable (the whole package: other
  processes' work counts too), else an estimate from the model's FLOPs and the bytes a step moves
  (``PJ_PER_FLOP``, ``PJ_PER_DRAM_BYTE`` below), labelled as such.

The two backends run alternately (jax, onnx, jax, onnx, ... ``--repeats`` times) so that their
speed ratio comes from the same minutes of a shared machine. Prints progress to stderr, one JSON
line per row, a markdown table and the issue's two checks.

slm_jax, and so jax, is imported inside the parent's functions only: a child measuring onnxruntime
must not load jax, whose memory would count in its peak.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BACKENDS = ("stablehlo", "onnx")  # our JAX runner on the StableHLO export; onnxruntime on the ONNX export

# Energy model for machines without readable RAPL counters (Horowitz, "Computing's energy problem",
# ISSCC 2014, 45 nm): a float32 add 0.9 pJ and multiply 3.7 pJ, so 2.3 pJ per FLOP of a multiply-add;
# a 32-bit DRAM read 640 pJ (1.3-2.6 nJ per 64-bit access), so 160 pJ per byte.
PJ_PER_FLOP = 2.3
PJ_PER_DRAM_BYTE = 160.0


# ---------------------------------------------------------------- child process (no slm_jax model code, no jax
# unless the export is StableHLO)


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def rapl_joules() -> float | None:
    """Sum of the CPU packages' RAPL energy counters (/sys/class/powercap/intel-rapl:N), or None if unreadable."""
    total = None
    for f in sorted(Path("/sys/class/powercap").glob("intel-rapl:*/energy_uj")):
        if f.parent.name.count(":") != 1:  # intel-rapl:0:0 and deeper are parts of a package
            continue
        try:
            total = (total or 0.0) + int(f.read_text()) * 1e-6
        except (OSError, ValueError):
            return None
    return total


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(spec: dict) -> dict:
    """Load one export, time to first token of a ``prompt``-token prompt and greedy decode of ``new`` tokens;
    returns the timings, this process's CPU use per wall second, threads and peak resident memory."""
    if spec["one_core"]:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before jax / onnxruntime size their thread pools
    from slm_jax.export.runner import Artifact  # standalone: imports jax only for a StableHLO export

    art = Artifact(spec["artifact"])
    prompt = [int(i) for i in np.random.default_rng(0).integers(0, art.manifest["vocab_size"], spec["prompt"])]
    art.generate(prompt, min(spec["new"], 2))  # compile (jax) / first run (onnxruntime) of the steps timed below
    t0 = time.perf_counter()
    art.generate(prompt, 1)
    out = {"ttft_s": time.perf_counter() - t0}
    if spec["new"] > 1:
        cpu, joules, t0 = cpu_seconds(), rapl_joules(), time.perf_counter()
        art.generate(prompt, spec["new"])
        wall = time.perf_counter() - t0
        decode_s = max(wall - out["ttft_s"], 1e-9)  # minus the prompt's share
        out["decode_tok_s"] = (spec["new"] - 1) / decode_s
        out["cpu_per_wall"] = (cpu_seconds() - cpu) / wall
        if joules is not None:
            out["rapl_j_per_token"] = (rapl_joules() - joules) / spec["new"]
    threads = [ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("Threads:")]
    return out | {"threads": int(threads[0].split()[1]), "peak_rss_bytes": peak_rss_bytes()}


def run_child(artifact: Path, prompt: int, new: int, one_core: bool) -> dict:
    """``child`` in a fresh Python process, so that its peak memory is its own."""
    spec = {"artifact": str(artifact), "prompt": prompt, "new": new, "one_core": one_core}
    env = os.environ | {"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"edge.py child failed on {artifact}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- parent


def compress(run_dir: Path, out: Path, calib_tokens: int, calib: str = "") -> dict[str, Path]:
    """{"float": run_dir, "int8": ..., "int4-gptq": ...}: ``slm quantize`` of ``run_dir`` under ``out`` (reused)."""
    from quantization import slm

    variants = {"float": run_dir}
    gptq = ["--bits", 4, "--method", "gptq", "--calib-tokens", calib_tokens, *(["--calib", calib] if calib else [])]
    for name, flags in (("int8", ["--bits", 8]), ("int4-gptq", gptq)):
        q_dir = out / name
        if not (q_dir / "checkpoints").exists():
            slm("quantize", run_dir, *flags, "--out", q_dir)
        variants[name] = q_dir
    return variants


def export(variant_dir: Path, out: Path, fmt: str, max_len: int, chunk: int) -> Path | str:
    """``slm export`` of ``variant_dir`` as ``fmt`` for ``max_len`` positions (reused); the refusal sentence if
    the format cannot take the model (ONNX: a bfloat16 run, or a JAX operation without a translation)."""
    from slm_jax.errors import ConfigError
    from slm_jax.export.stablehlo import export_run

    d = out / f"{fmt}_{max_len}"
    if not (d / "manifest.json").exists():
        try:
            export_run(variant_dir, d, fmt=fmt, max_len=max_len, prefill_chunk=chunk)
        except ConfigError as e:
            return str(e)
    return d


def artifact_bytes(d: Path) -> int:
    """Bytes of an export directory without cache.npz (the empty cache's zeros, reported separately)."""
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file() and f.name != "cache.npz")


def checkpoint_bytes(variant_dir: Path, compression: str) -> int:
    """On-disk bytes of a params-only checkpoint (a float run's own also holds AdamW's moments)."""
    from quantization import params_only_bytes

    from slm_jax.quant.run import directory_bytes

    if compression == "float":
        with tempfile.TemporaryDirectory() as scratch:
            return params_only_bytes(variant_dir, Path(scratch))[0]
    return directory_bytes(variant_dir / "checkpoints")


def estimated_j_per_token(variant_dir: Path, export_dir: Path, context: int) -> float:
    """``PJ_PER_FLOP`` x the model's FLOPs per token at mean context ``context`` (models/accounting.py) plus
    ``PJ_PER_DRAM_BYTE`` x the bytes one decode step moves: every stored weight read once, the cache read and
    written once."""
    from slm_jax.config import config_from_dict
    from slm_jax.models import accounting
    from slm_jax.rundir.checkpoint import read_run_config

    cfg = config_from_dict(read_run_config(variant_dir)).model
    flops = accounting.forward_flops_per_token(cfg, 2 * context - 1)  # a length whose mean context is `context`
    manifest = json.loads((export_dir / "manifest.json").read_text())
    moved = (export_dir / "weights.npz").stat().st_size + 2 * manifest["cache_bytes"]
    return 1e-12 * (PJ_PER_FLOP * flops + PJ_PER_DRAM_BYTE * moved)


def measure(label: str, compression: str, variant_dir: Path, work: Path, opts) -> dict:
    """One row of the table: ``variant_dir`` exported both ways and measured in child processes, the backends
    alternating."""
    short_len, long_len = opts.prompt + 1, opts.prompt + opts.long
    chunk = opts.prefill_chunk or opts.prompt
    from quantization import slm

    row = {"model": label, "compression": compression, "run_dir": str(variant_dir)}
    data = ["--data", opts.eval_data] if opts.eval_data else []  # default: the run's own validation split
    row["val_loss"] = slm("eval", variant_dir, "--batches", opts.eval_batches, *data)["val_loss"]
    row["checkpoint_bytes"] = checkpoint_bytes(variant_dir, compression)
    exports = {}
    for fmt in BACKENDS:
        short, long = export(variant_dir, work, fmt, short_len, chunk), export(variant_dir, work, fmt, long_len, chunk)
        if isinstance(long, str):
            row[f"{fmt}_unavailable"] = long
            continue
        exports[fmt] = (short, long)
        row[f"{fmt}_artifact_bytes"] = artifact_bytes(long)
        row[f"{fmt}_cache_bytes"] = json.loads((long / "manifest.json").read_text())["cache_bytes"]
    runs = {"short": [], "long": [], "one_core": []}
    for _ in range(opts.repeats):  # A B A B: each kind of run alternates the backends
        for fmt, (short, long) in exports.items():
            for kind, args in (
                ("short", (short, opts.prompt, 1, False)),
                ("long", (long, opts.prompt, opts.decode_tokens, False)),
                ("one_core", (long, opts.prompt, opts.decode_tokens, True)),
            ):
                t0 = time.perf_counter()
                r = run_child(*args) | {"fmt": fmt}
                runs[kind].append(r)
                print(f"[edge] {label} {compression} {fmt} {kind}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    median = lambda kind, fmt, key: float(np.median([r[key] for r in runs[kind] if r["fmt"] == fmt]))
    for fmt in exports:
        row[f"{fmt}_peak_rss_bytes@1"] = int(median("short", fmt, "peak_rss_bytes"))
        row[f"{fmt}_peak_rss_bytes@{opts.long}"] = int(median("long", fmt, "peak_rss_bytes"))
        row[f"{fmt}_ttft_ms"] = round(1e3 * median("short", fmt, "ttft_s"), 2)
        row[f"{fmt}_tok_s_all_cores"] = round(median("long", fmt, "decode_tok_s"), 1)
        row[f"{fmt}_tok_s_one_core"] = round(median("one_core", fmt, "decode_tok_s"), 1)
        row[f"{fmt}_cpu_per_wall_all_cores"] = round(median("long", fmt, "cpu_per_wall"), 2)
        row[f"{fmt}_cpu_per_wall_one_core"] = round(median("one_core", fmt, "cpu_per_wall"), 2)
    rapl = [r["rapl_j_per_token"] for r in runs["long"] if "rapl_j_per_token" in r]
    if rapl:
        row["energy_mj_per_token"], row["energy_source"] = round(1e3 * float(np.median(rapl)), 4), "RAPL"
    else:
        context = opts.prompt + opts.decode_tokens // 2
        joules = estimated_j_per_token(variant_dir, export(variant_dir, work, "stablehlo", long_len, chunk), context)
        row["energy_mj_per_token"], row["energy_source"] = round(1e3 * joules, 4), "estimate"
    return row


COLUMNS = (
    "model",
    "weights",
    "val loss (nats/token)",
    "params-only checkpoint bytes",
    "export bytes StableHLO / ONNX",
    "peak RSS MB, 1 token: JAX / ORT",
    "peak RSS MB, {long} tokens: JAX / ORT",
    "TTFT ms, {prompt}-token prompt: JAX / ORT",
    "decode tok/s 1 core: JAX / ORT",
    "decode tok/s all cores: JAX / ORT",
    "mJ / token",
)


def table(rows: list[dict], prompt: int, long: int) -> str:
    """The markdown table of ``rows`` (ORT: onnxruntime on the ONNX export; "n/a" where a preset has none)."""
    both = lambda r, key, f: " / ".join(f(r[k]) if (k := f"{fmt}_{key}") in r else "n/a" for fmt in BACKENDS)
    mb = lambda b: f"{b / 2**20:.0f}"
    lines = ["| " + " | ".join(c.format(long=long, prompt=prompt) for c in COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for r in rows:
        cells = [
            r["model"],
            r["compression"],
            f"{r['val_loss']:.3f}",
            f"{r['checkpoint_bytes']:,}",
            both(r, "artifact_bytes", lambda b: f"{b:,}"),
            both(r, "peak_rss_bytes@1", mb),
            both(r, f"peak_rss_bytes@{long}", mb),
            both(r, "ttft_ms", lambda t: f"{t:.1f}"),
            both(r, "tok_s_one_core", lambda s: f"{s:,.0f}"),
            both(r, "tok_s_all_cores", lambda s: f"{s:,.0f}"),
            f"{r['energy_mj_per_token']:.3f}" + (" (estimate)" if r["energy_source"] == "estimate" else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks(rows: list[dict]) -> list[str]:
    """The issue's numbers: int4 export <= 0.3x the float export; ONNX batch-1 decode within 1.5x of JAX."""
    lines = []
    floats = {r["model"]: r for r in rows if r["compression"] == "float"}
    for r in rows:
        f = floats.get(r["model"])
        if r["compression"] == "int4-gptq" and f:
            for fmt in BACKENDS:
                if f"{fmt}_artifact_bytes" in r:
                    ratio = r[f"{fmt}_artifact_bytes"] / f[f"{fmt}_artifact_bytes"]
                    verdict = "ok" if ratio <= 0.3 else "FAILS"
                    lines.append(f"{r['model']}: int4 {fmt} export / float = {ratio:.3f} (<= 0.3: {verdict})")
        if "onnx_tok_s_all_cores" in r:
            for cores in ("one_core", "all_cores"):
                ratio = r[f"stablehlo_tok_s_{cores}"] / r[f"onnx_tok_s_{cores}"]
                verdict = "ok" if ratio <= 1.5 else "FAILS"
                lines.append(
                    f"{r['model']} {r['compression']}: JAX / ONNX decode tok/s, {cores.replace('_', ' ')} = "
                    f"{ratio:.2f} (ONNX within 1.5x: {verdict})"
                )
    return lines


def pareto(rows: list[dict], fmt: str = "onnx") -> list[dict]:
    """The rows no other row beats on both export bytes (``fmt``, else StableHLO) and val loss, smallest first."""
    size = lambda r: r.get(f"{fmt}_artifact_bytes", r.get("stablehlo_artifact_bytes"))
    ranked = sorted(rows, key=lambda r: (size(r), r["val_loss"]))
    front = []
    for r in ranked:
        if not front or r["val_loss"] < front[-1]["val_loss"]:
            front.append(r)
    return front


def float_runs(args) -> list[tuple[str, Path]]:
    """(label, float run directory): ``--runs`` as given, else each preset trained (reused when present)."""
    if args.runs:
        return [(Path(r).name, Path(r)) for r in args.runs]
    from slm_tradeoffs import train_float

    from slm_jax.presets import PRESETS, is_encoder

    decoders = [p for p in PRESETS if not is_encoder(p)]  # encoders do not decode
    presets = decoders if args.presets == "all" else args.presets.split(",")
    return [(p, train_float(p, args)) for p in presets]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="*", default=None, help="float run directories (default: train --presets)")
    ap.add_argument("--presets", default="transformer,griffin", help="comma-separated preset names, or 'all'")
    ap.add_argument("--steps", type=int, default=100, help="training steps per preset (quality is not the point)")
    ap.add_argument("--out", default="/tmp/slm_edge")
    ap.add_argument("--data", default="../shared/data/tinyshakespeare.txt")
    ap.add_argument("--calib-tokens", type=int, default=4096, help="GPTQ calibration tokens (the run's train split)")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--long", type=int, default=4096, help="new tokens the long export has room for")
    ap.add_argument("--decode-tokens", type=int, default=512, help="tokens decoded in the long export (<= --long)")
    ap.add_argument("--prefill-chunk", type=int, default=0, help="export's prefill chunk (default: the prompt)")
    ap.add_argument("--eval-data", default="", help="text for the val loss (default: each run's own val split)")
    ap.add_argument("--eval-batches", type=int, default=20, help="validation batches for each variant's val loss")
    ap.add_argument("--repeats", type=int, default=1, help="child runs per measurement and backend (median)")
    args = ap.parse_args()
    rows = []
    for label, run_dir in float_runs(args):
        work = Path(args.out) / "edge" / label
        for compression, d in compress(run_dir, work / "quantized", args.calib_tokens).items():
            rows.append(measure(label, compression, d, work / compression, args))
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(table(rows, args.prompt, args.long))
    print()
    print("\n".join(checks(rows)))
    print("\nQuality per byte (Pareto front: no other row is both smaller and better):")
    for r in pareto(rows):
        size = r.get("onnx_artifact_bytes", r.get("stablehlo_artifact_bytes"))
        print(f"  {r['model']} {r['compression']}: {size:,} bytes, val loss {r['val_loss']:.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        main()
