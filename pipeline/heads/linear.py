"""Linear algebra on cached features for the heads, float16 widened in blocks by the kernels'
conversion (never a float32 copy of a cache): the standardisation statistics, the kernels' view of
the features, and logits.
"""
from __future__ import annotations

import numpy as np

INFER_BYTES = 4 << 20      # float32 bytes per inference block: widened and multiplied in cache
STATS_PARTS = 8            # fixed parts of the standardisation statistics' sums (the same on any core count)


def feature_stats(X, rows) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale (standard deviation; 1 where it is 0) of X[rows]: float64 sums of the float32
    values over STATS_PARTS fixed parts of the rows (added in order: the same on any number of cores),
    float16 widened on the fly (kernels.column_stats)."""
    from .kernels import column_stats
    sums = column_stats(kernel_view(X), np.asarray(rows, np.int64), STATS_PARTS)
    total, sq = sums[:, 0].sum(0), sums[:, 1].sum(0)
    mean = total / len(rows)
    std = np.sqrt(np.maximum(sq / len(rows) - mean ** 2, 0))
    return mean.astype(np.float32), np.where(std > 1e-6 * np.maximum(np.abs(mean), 1), std, 1.0).astype(np.float32)


def kernel_view(X) -> np.ndarray:
    """X as the kernels take it, without a copy where possible: C-contiguous float32, or float16 as its
    uint16 bits; read-only either way (one compiled signature, mapped cache or not)."""
    X = np.asarray(X)
    X = X.view(np.uint16) if X.dtype == np.float16 and X.flags.c_contiguous else np.ascontiguousarray(X, np.float32)
    X = X.view()
    X.flags.writeable = False
    return X


def logits(X, W, b, mean=None, scale=None) -> np.ndarray:
    """Standardised X @ W + b (W: D x K), block by block: float16 X widened per block (kernels.widen),
    then one BLAS product per block."""
    if mean is not None:                     # fold the standardisation into the product
        W = W / scale[:, None]               # (x - mean) / scale @ W == x @ W' - mean @ W'
        b = b - mean @ W
    from .kernels import widen
    Xk, out = kernel_view(X), np.empty((len(X), W.shape[1]), np.float32)
    step = max(1, INFER_BYTES // (4 * X.shape[1]))
    block = np.empty((min(step, len(X)), X.shape[1]), np.float32) if Xk.dtype == np.uint16 else None
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1, user_api="blas"):   # BLAS threads spinning between blocks stall widen's (Numba's)
        for a in range(0, len(X), step):
            n = min(step, len(X) - a)
            if block is None:
                out[a:a + n] = Xk[a:a + n] @ W + b
            else:
                widen(Xk, np.arange(a, a + n), block[:n])
                out[a:a + n] = block[:n] @ W + b
    return out
