"""GPTQ: quantize a kernel one input row at a time, pushing each row's rounding error onto the rows not yet quantized.

Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers"
(arXiv:2210.17323), Algorithm 1. For ``y = x @ W`` with W f[d_in, f] and calibration inputs X [n, d_in], the layer error
``||X W - X Q||^2 = tr((W - Q)^T H (W - Q))`` with ``H = X^T X``. Rows are quantized in order; after row i the remaining
rows absorb the error through the upper Cholesky factor U of H^-1 (``H^-1 = U^T U``): ``W[j] -= U[i, j] / U[i, i] *
(W[i] - Q[i])`` for j > i. Group scales (``max|W_group| / qmax`` per output column, the format of quant/kernels.py) are
taken from the already-updated rows when a group starts, as in the paper's grouped variant.

The sequential row loop runs in NumPy float64: it is inherently serial, and the Cholesky factor of H^-1 needs the extra
precision on nearly singular calibration Hessians.
"""

import numpy as np

from slm_jax.quant.kernels import QMAX, even_group


def damped_hessian(hessian: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(H + damp * mean(diag H) * I with dead inputs' diagonal set to 1, bool[d_in] dead) in float64.

    A dead input (never non-zero in the calibration data) carries no information; its row is quantized to zero.
    """
    h = np.array(hessian, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
    return h, dead


def _round(rows: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    return np.clip(np.round(rows / scale), -qmax, qmax)


def _group_scale(rows: np.ndarray, qmax: int) -> np.ndarray:
    scale = np.max(np.abs(rows), axis=0) / qmax
    return np.where(scale > 0, scale, 1.0)


def gptq_kernel(
    w: np.ndarray, hessian: np.ndarray, bits: int, group: int, damp: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """f[d_in, f] kernel, f[d_in, d_in] input Hessian -> (i8[d_in, f] integers, f32[ceil(d_in / group), f] scales)."""
    qmax = QMAX[bits]
    h, dead = damped_hessian(hessian, damp)
    w = np.array(w, np.float64)
    w[dead] = 0.0
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: H^-1 = U^T U
    d_in = w.shape[0]
    group = even_group(d_in, group)
    q = np.zeros(w.shape, np.int8)
    scales = np.zeros((-(-d_in // group), w.shape[1]), np.float64)
    for i in range(d_in):
        if i % group == 0:
            scales[i // group] = _group_scale(w[i : i + group], qmax)
        qi = _round(w[i], scales[i // group], qmax)
        q[i] = qi
        err = (w[i] - qi * scales[i // group]) / u[i, i]
        w[i + 1 :] -= np.outer(u[i, i + 1 :], err)
    return q, scales.astype(np.float32)


def obq_reference(
    w: np.ndarray, hessian: np.ndarray, bits: int, group: int, damp: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """Slow reference for ``gptq_kernel``: the Optimal Brain Quantizer update with an explicit inverse.

    After row i is fixed, the remaining rows move by ``-H^-1[:, i] / H^-1[i, i] * err`` and i is eliminated from the
    inverse by a rank-one downdate (Frantar & Alistarh 2022, OBQ, arXiv:2208.11580, eqs. 3-4).
    """
    qmax = QMAX[bits]
    h, dead = damped_hessian(hessian, damp)
    w = np.array(w, np.float64)
    w[dead] = 0.0
    hinv = np.linalg.inv(h)
    group = even_group(w.shape[0], group)
    q = np.zeros(w.shape, np.int8)
    scales = np.zeros((-(-w.shape[0] // group), w.shape[1]), np.float64)
    for i in range(w.shape[0]):
        if i % group == 0:
            scales[i // group] = _group_scale(w[i : i + group], qmax)
        qi = _round(w[i], scales[i // group], qmax)
        q[i] = qi
        err = w[i] - qi * scales[i // group]
        w[i:] -= np.outer(hinv[i:, i] / hinv[i, i], err)
        hinv = hinv - np.outer(hinv[:, i], hinv[i, :]) / hinv[i, i]
    return q, scales.astype(np.float32)
