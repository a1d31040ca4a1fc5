"""Peak FLOP/s of the device, for model FLOPs utilisation (MFU, Chowdhery et al. 2022).

Accelerators use published dense peaks by device kind; CPUs have no useful spec sheet, so
their peak is a measured large matmul (the practical ceiling for our workloads).
"""

import time

import jax
import jax.numpy as jnp

# Dense peak FLOP/s by jax device_kind substring, (float32, bfloat16); vendor spec sheets.
_PUBLISHED = {
    "H100": (67e12, 989e12),
    "H200": (67e12, 989e12),
    "A100": (19.5e12, 312e12),
    "L4": (30e12, 121e12),
    "TPU v4": (275e12, 275e12),
    "TPU v5 lite": (197e12, 197e12),
    "TPU v5e": (197e12, 197e12),
    "TPU v5p": (459e12, 459e12),
    "TPU v6": (918e12, 918e12),
}


def measured_matmul_peak(dtype=jnp.float32, n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` n x n x n matmuls (float32 accumulation)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(dtype: str = "float32", configured: float = 0.0) -> float:
    """Peak FLOP/s of one device: ``configured`` if set, a published figure, else measured."""
    if configured:
        return configured
    device = jax.devices()[0]
    for kind, (f32, bf16) in _PUBLISHED.items():
        if kind.lower() in device.device_kind.lower():
            return f32 if dtype == "float32" else bf16
    return measured_matmul_peak(jnp.dtype(dtype))
