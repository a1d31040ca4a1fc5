"""AWQ: protect the input channels that carry large activations by scaling them up before rounding.

Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration" (arXiv:2306.00978),
Sec. 3.2. With per-input-channel scales ``s = mean|x|^alpha`` (normalised), the kernel is stored as
``Q(diag(s) W)`` and applied as ``(x / s) @ Q(diag(s) W)``; ``alpha`` in [0, 1] is searched on a grid to minimise the
layer's output error on calibration inputs, ``tr(E^T H E)`` with ``E = W - diag(1/s) Q(diag(s) W)`` and ``H = X^T X``
(alpha = 0 is plain round-to-nearest, so the search never does worse than RTN on the calibration set).

The paper folds 1/s into the preceding operator; here it is stored beside the kernel (``kernel_in_scale``
f32[d_in], quant/kernels.py), because a mixer's projections do not all follow an operator that could absorb it.
"""

import numpy as np

from slm_jax.quant.kernels import QMAX, even_group


def rtn_dequantized(w: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Round-to-nearest with group scales (quant/kernels.py's rule), dequantized: f[d_in, f] -> f64[d_in, f]."""
    d_in, f = w.shape
    group = even_group(d_in, group)
    n_groups = -(-d_in // group)
    wg = np.zeros((n_groups * group, f))  # the last group may be shorter: zero rows do not change its max
    wg[:d_in] = w
    wg = wg.reshape(n_groups, group, f)
    scale = np.max(np.abs(wg), axis=1, keepdims=True) / QMAX[bits]
    scale = np.where(scale > 0, scale, 1.0)
    return (np.clip(np.round(wg / scale), -QMAX[bits], QMAX[bits]) * scale).reshape(-1, f)[:d_in]


def output_error(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> float:
    """``||X W - X W_hat||_F^2`` from ``H = X^T X``: ``tr(E^T H E)``."""
    e = np.asarray(w, np.float64) - w_hat
    return float(np.einsum("if,ij,jf->", e, np.asarray(hessian, np.float64), e))


def awq_scales(
    w: np.ndarray, hessian: np.ndarray, abs_mean: np.ndarray, bits: int, group: int, grid: int = 20
) -> tuple[np.ndarray, float]:
    """(f32[d_in] input-channel scales s, chosen alpha) minimising the output error over ``alpha = k / grid``."""
    x_mag = np.maximum(np.asarray(abs_mean, np.float64), 1e-8)
    best = (np.inf, np.ones_like(x_mag), 0.0)
    for k in range(grid + 1):
        alpha = k / grid
        s = x_mag**alpha
        s = s / np.sqrt(s.max() * s.min())  # centre the scales around 1 so neither rounding range saturates
        w_hat = rtn_dequantized(w * s[:, None], bits, group) / s[:, None]
        err = output_error(w, w_hat, hessian)
        if err < best[0]:
            best = (err, s, alpha)
    return best[1].astype(np.float32), best[2]
