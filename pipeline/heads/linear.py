"""Linear algebra on cached features for the heads, in blocks of rows widened to float32 by the
kernels' conversion (never a float32 copy of a cache) and put through the normalize step: the
standardisation statistics, the kernels' view of the features, normalised copies, logits.
"""
from __future__ import annotations

import numpy as np

from .normalize import transform

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


def float32_blocks(X, normalize: str = "none", blocks=None, rows=None, block_bytes: int | None = None):
    """Yield (position, float32 rows) for X[rows] (all rows by default), a block of about INFER_BYTES
    at a time, after the normalize step; one buffer reused, so use each block before the next. BLAS
    runs on one thread meanwhile: its threads spinning between blocks stall the Numba widening."""
    from threadpoolctl import threadpool_limits
    from .kernels import widen
    whole, rows = rows is None, np.arange(len(X)) if rows is None else np.asarray(rows, np.int64)
    Xk = kernel_view(X)
    step = max(1, (block_bytes or INFER_BYTES) // (4 * X.shape[1]))
    plain = Xk.dtype == np.float32 and normalize == "none"
    buffer = None if plain else np.empty((min(step, len(rows)), X.shape[1]), np.float32)
    with threadpool_limits(1, user_api="blas"):
        for a in range(0, len(rows), step):
            r = rows[a:a + step]
            if plain:
                yield a, Xk[a:a + len(r)] if whole else Xk[r]
                continue
            widen(Xk, r, buffer[:len(r)])              # float32 rows are copied: the step works in place
            yield a, transform(buffer[:len(r)], blocks, normalize)


def normalized(X, blocks, mode: str, rows=None) -> np.ndarray:
    """X[rows] after the normalize step as a new array: float16 for float16 features (the copy stays
    half the size; narrowed by kernels.narrow, numpy's cast is ~10x slower), else float32. Mode
    "none" with all rows: X itself, no copy."""
    if mode == "none" and rows is None:
        return X
    from .kernels import narrow
    half = X.dtype == np.float16
    n = len(X) if rows is None else len(rows)
    out = np.empty((n, X.shape[1]), np.uint16 if half else np.float32)
    for a, z in float32_blocks(X, mode, blocks, rows):
        if half:
            narrow(z, out[a:a + len(z)])
        else:
            out[a:a + len(z)] = z
    return out.view(np.float16) if half else out


def logits(X, W, b, mean=None, scale=None, normalize: str = "none", blocks=None) -> np.ndarray:
    """X (after the normalize step, then standardised) @ W + b (W: D x K): without a normalize step in one
    pass of kernels.affine (float16 widened in cache), else one BLAS product per normalised block."""
    if mean is not None:                     # fold the standardisation into the product
        W = W / scale[:, None]               # (x - mean) / scale @ W == x @ W' - mean @ W'
        b = b - mean @ W
    if normalize == "none":
        from .kernel_cache import ensure_cached
        from .kernels import affine, padded
        Xk = kernel_view(X)
        ensure_cached(affine, Xk)                   # the code every run loads (kernel_cache.py)
        K, KP = W.shape[1], padded(1, W.shape[1])   # outputs padded as the kernels' 2-output blocks need
        Wt, bp = np.zeros((KP, W.shape[0]), np.float32), np.zeros(KP, np.float32)
        Wt[:K], bp[:K] = W.T, b
        out = np.empty((len(X), len(bp)), np.float32)
        affine(Xk, Wt, bp, out)
        return out[:, :K]
    out = np.empty((len(X), W.shape[1]), np.float32)
    for a, block in float32_blocks(X, normalize, blocks):
        out[a:a + len(block)] = block @ W + b
    return out
