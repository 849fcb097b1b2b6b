"""Stage two's training step for softmax heads, compiled with Numba: one fused pass per step
(gather rows, dropout, forward, softmax, backward) and Adam, on every core.

- Two ways to split a step over cores, both into a fixed number of parts, so results do not depend
  on the number of threads: train_step_rows (small heads, e.g. the notebook's 4096 x 10) gives each
  part a quarter of the batch, carried through start to finish in 4-row blocks while the rows are
  in cache, and a gradient of its own (added in part order); train_step_chunks (heads too big to
  stay in a core's cache, e.g. a 24-head sweep) gives each part CHUNK feature columns: its slice of
  the gradient, with partial logits added in chunk order before the softmax.
- Dropout noise is counter-based: word w of row i at key k is SplitMix64(k + i * n_words + w), four
  16-bit draws per word; feature j is kept where its draw >= threshold. One draw per feature serves
  every group of heads, as in `heads.SoftmaxHeads`.
- Heads live in a (G, KP, D) block: group g (one dropout rate) holds its heads' C-class weight rows
  one after another, padded with zero rows to an even KP (the register block is 4 rows x 2 outputs).
Compiled code is cached next to this file (`cache=True`); `python -m pipeline.kernels` compiles it.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

CHUNK = 512       # train_step_chunks: feature columns per work item (a multiple of 4: a noise word = 4 draws)
ROWS = 4          # rows per register block
ROW_PARTS = 4     # train_step_rows: parts of the batch (fixed, so results do not depend on the thread count)
ROWS_KERNEL_BYTES = 256 * 1024   # heads with weights up to this size use train_step_rows
GAMMA = np.uint64(0x9E3779B97F4A7C15)   # SplitMix64 constants
M1, M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@njit(inline="always", cache=True)
def _word(key, counter):
    z = (key + counter) * GAMMA
    z = (z ^ (z >> np.uint64(30))) * M1
    z = (z ^ (z >> np.uint64(27))) * M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def _words(key, rows, n_words):
    out = np.empty((rows, n_words), np.uint64)
    for i in range(rows):
        for w in range(n_words):
            out[i, w] = _word(key, np.uint64(i * n_words + w))
    return out


def draws(key: int, rows: int, dim: int) -> np.ndarray:
    """The 16-bit dropout draws train_step uses for `rows` rows of `dim` features at `key`."""
    return _words(np.uint64(key), rows, (dim + 3) // 4).view(np.uint16)[:, :dim]


@njit(inline="always", fastmath=True, cache=True)
def _mask_block(X, idx, words, w0, t, r0, hi, j0, n, xm):
    """xm[i, :n] = X[idx[r0+i], j0:j0+n] where row r0+i's draw (words[r0+i-w0]) >= t, else 0;
    rows from `hi` on are 0."""
    for i in range(ROWS):
        r = r0 + i
        if r < hi:
            row = X[idx[r], j0:j0 + n]
            draws = words[r - w0].view(np.uint16)[j0:j0 + n]
            for j in range(n):
                xm[i, j] = row[j] if draws[j] >= t else np.float32(0)
        else:
            for j in range(n):
                xm[i, j] = 0


@njit(inline="always", fastmath=True, cache=True)
def _forward_block(xm, W, kp, j0, n, zp, r0):
    """zp[r0:r0+4, :kp] = xm[:, :n] @ W[:kp, j0:j0+n].T, 4 rows x 2 outputs at a time."""
    for k in range(0, kp, 2):
        w0, w1 = W[k, j0:j0 + n], W[k + 1, j0:j0 + n]
        a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = np.float32(0)
        for j in range(n):
            u, v = w0[j], w1[j]
            x = xm[0, j]
            a00 += x * u
            a01 += x * v
            x = xm[1, j]
            a10 += x * u
            a11 += x * v
            x = xm[2, j]
            a20 += x * u
            a21 += x * v
            x = xm[3, j]
            a30 += x * u
            a31 += x * v
        zp[r0, k], zp[r0, k + 1], zp[r0 + 1, k], zp[r0 + 1, k + 1] = a00, a01, a10, a11
        zp[r0 + 2, k], zp[r0 + 2, k + 1], zp[r0 + 3, k], zp[r0 + 3, k + 1] = a20, a21, a30, a31


@njit(inline="always", fastmath=True, cache=True)
def _backward_block(xm, dz, kp, j0, n, gW, r0, s):
    """gW[:kp, j0:j0+n] += s * dz[r0:r0+4, :kp].T @ xm[:, :n]."""
    for k in range(0, kp, 2):
        g0, g1 = gW[k, j0:j0 + n], gW[k + 1, j0:j0 + n]
        c00, c10, c20, c30 = dz[r0, k] * s, dz[r0 + 1, k] * s, dz[r0 + 2, k] * s, dz[r0 + 3, k] * s
        c01, c11, c21, c31 = dz[r0, k + 1] * s, dz[r0 + 1, k + 1] * s, dz[r0 + 2, k + 1] * s, dz[r0 + 3, k + 1] * s
        for j in range(n):
            x0, x1, x2, x3 = xm[0, j], xm[1, j], xm[2, j], xm[3, j]
            u = g0[j]
            u += c00 * x0
            u += c10 * x1
            u += c20 * x2
            u += c30 * x3
            g0[j] = u
            v = g1[j]
            v += c01 * x0
            v += c11 * x1
            v += c21 * x2
            v += c31 * x3
            g1[j] = v


@njit(inline="always", fastmath=True, cache=True)
def _fill_words(key, words, w0, r0, r1, c0, c1, nw):
    """words[r - w0, c0:c1] = draws of rows r0..r1-1 (batch positions), words c0..c1-1."""
    for r in range(r0, r1):
        for w in range(c0, c1):
            words[r - w0, w] = _word(key, np.uint64(r * nw + w))


@njit(inline="always", fastmath=True, cache=True)
def _softmax_grad(z, b, s, heads, C, y, inv_n, gb, st):
    """In place on one row: logits z * s + b -> softmax per head -> d(mean cross-entropy)/d(logits)
    (inv_n = 1 / batch size); the row's bias gradient is added to gb, and per head its loss and
    whether it was right to st (heads x 2)."""
    for h in range(heads):
        k0 = h * C
        for k in range(k0, k0 + C):
            z[k] = z[k] * s + b[k]
        top, best = z[k0], k0
        for k in range(k0 + 1, k0 + C):
            if z[k] > top:
                top, best = z[k], k
        zy = z[k0 + y]
        total = np.float32(0)
        for k in range(k0, k0 + C):
            z[k] = np.exp(z[k] - top)
            total += z[k]
        st[h, 0] += np.log(total) - (zy - top)
        st[h, 1] += best == k0 + y
        inv = inv_n / total
        for k in range(k0, k0 + C):
            z[k] *= inv
        z[k0 + y] -= inv_n
        for k in range(k0, k0 + C):
            gb[k] += z[k]
    for k in range(heads * C, z.shape[0]):
        z[k] = 0


@njit(fastmath=True, cache=True)
def _rows_part(X, idx, yb, key, thr, scale, n_heads, C, W, b, gW, gb, st, lo, hi):
    """Rows lo..hi-1 of the batch, 4 at a time, start to finish (draws, mask, forward, softmax,
    backward) while they are in cache; gradients summed into this part's gW, gb."""
    D, G, KP = X.shape[1], W.shape[0], W.shape[1]
    nw = (D + 3) // 4
    inv_n = np.float32(1.0) / np.float32(idx.shape[0])
    words, xm = np.empty((ROWS, nw), np.uint64), np.empty((ROWS, D), np.float32)
    z = np.zeros((ROWS, KP), np.float32)
    gW[...] = 0
    gb[...] = 0
    for r0 in range(lo, hi, ROWS):
        _fill_words(key, words, r0, r0, min(hi, r0 + ROWS), 0, nw, nw)
        for g in range(G):
            kp = (n_heads[g] * C + 1) // 2 * 2
            _mask_block(X, idx, words, r0, thr[g], r0, hi, 0, D, xm)
            _forward_block(xm, W[g], kp, 0, D, z, 0)
            for i in range(ROWS):
                if r0 + i < hi:
                    _softmax_grad(z[i], b[g], scale[g], n_heads[g], C, yb[r0 + i], inv_n, gb[g], st[g])
                else:
                    z[i] = 0
            _backward_block(xm, z, kp, 0, D, gW[g], 0, scale[g])


@njit(parallel=True, nogil=True, cache=True)
def train_step_rows(X, idx, yb, key, thr, scale, n_heads, n_classes, W, b, gW, gb, stats, scratch):
    """Gradients of the mean cross-entropy of every head on rows X[idx] (labels yb), split into
    gW.shape[0] fixed parts of the batch: gW (P, G, KP, D), gb (P, G, KP); their sum is the gradient.
    stats (P, G, H, 2) gains each head's summed loss and number right. For heads whose weights fit
    in a core's cache with room to spare (see ROWS_KERNEL_BYTES); scratch is unused."""
    P, blocks = gW.shape[0], (idx.shape[0] + ROWS - 1) // ROWS
    for p in prange(P):
        lo, hi = p * blocks // P * ROWS, min(idx.shape[0], (p + 1) * blocks // P * ROWS)
        _rows_part(X, idx, yb, key, thr, scale, n_heads, n_classes, W, b, gW[p], gb[p], stats[p], lo, hi)


@njit(fastmath=True, cache=True)
def _forward_chunk(X, idx, key, thr, n_heads, C, W, words, zp, j0, n):
    """Draws for columns j0:j0+n of every row, then each group's partial logits over them."""
    B, nw = idx.shape[0], words.shape[1]
    _fill_words(key, words, 0, 0, B, j0 // 4, (j0 + n + 3) // 4, nw)
    xm = np.empty((ROWS, CHUNK), np.float32)
    for g in range(W.shape[0]):
        kp = (n_heads[g] * C + 1) // 2 * 2
        for r0 in range(0, B, ROWS):
            _mask_block(X, idx, words, 0, thr[g], r0, B, j0, n, xm)
            _forward_block(xm, W[g], kp, j0, n, zp[g], r0)


@njit(fastmath=True, cache=True)
def _backward_chunk(X, idx, thr, scale, n_heads, C, words, dz, gW, j0, n):
    """Every group's weight gradient for columns j0:j0+n."""
    xm = np.empty((ROWS, CHUNK), np.float32)
    for g in range(gW.shape[0]):
        kp = (n_heads[g] * C + 1) // 2 * 2
        gW[g, :, j0:j0 + n] = 0
        for r0 in range(0, idx.shape[0], ROWS):
            _mask_block(X, idx, words, 0, thr[g], r0, idx.shape[0], j0, n, xm)
            _backward_block(xm, dz[g], kp, j0, n, gW[g], r0, scale[g])


@njit(fastmath=True, cache=True)
def _logit_gradients(zpart, yb, scale, n_heads, C, b, dz, gb, st):
    """Sum partial logits in chunk order, then _softmax_grad row by row into dz."""
    inv_n = np.float32(1.0) / np.float32(yb.shape[0])
    dz[...] = 0
    gb[...] = 0
    for g in range(dz.shape[0]):
        for i in range(yb.shape[0]):
            for k in range(dz.shape[2]):
                acc = np.float32(0)
                for c in range(zpart.shape[0]):
                    acc += zpart[c, g, i, k]
                dz[g, i, k] = acc
            _softmax_grad(dz[g, i], b[g], scale[g], n_heads[g], C, yb[i], inv_n, gb[0, g], st[0, g])


@njit(parallel=True, nogil=True, cache=True)
def train_step_chunks(X, idx, yb, key, thr, scale, n_heads, n_classes, W, b, gW, gb, stats, scratch):
    """Gradients of the mean cross-entropy of every head on rows X[idx] (labels yb) into gW (1, G,
    KP, D) and gb (1, G, KP), stats (1, G, H, 2) as in train_step_rows, split by feature columns:
    for heads too big for train_step_rows.
    Scratch: words (B, ceil(D/4)) uint64; zpart (chunks, G, B4, KP), dz (G, B4, KP) float32, B4 = B
    rounded up to a multiple of 4."""
    D, (words, zpart, dz) = X.shape[1], scratch
    n_chunks = (D + CHUNK - 1) // CHUNK
    for c in prange(n_chunks):
        j0 = c * CHUNK
        _forward_chunk(X, idx, key, thr, n_heads, n_classes, W, words, zpart[c], j0, min(D, j0 + CHUNK) - j0)
    _logit_gradients(zpart, yb, scale, n_heads, n_classes, b, dz, gb, stats)
    for c in prange(n_chunks):
        j0 = c * CHUNK
        _backward_chunk(X, idx, thr, scale, n_heads, n_classes, words, dz, gW[0], j0, min(D, j0 + CHUNK) - j0)


@njit(inline="always", error_model="numpy", cache=True)
def _adam_row(p, g, m, v, a, r, one_minus_beta_1, one_minus_beta_2, epsilon):
    """Row r; error_model="numpy" (no ZeroDivisionError check) lets the loop vectorise."""
    pr, mr, vr = p[r], m[r], v[r]
    for q in range(1, g.shape[0]):
        g[0, r] += g[q, r]
    gr = g[0, r]
    for j in range(p.shape[1]):
        gj = gr[j]
        mj = mr[j] + (gj - mr[j]) * one_minus_beta_1
        vj = vr[j] + (gj * gj - vr[j]) * one_minus_beta_2
        mr[j], vr[j] = mj, vj
        pr[j] -= a * mj / (np.sqrt(vj) + epsilon)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def adam(p, g, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
    """keras.optimizers.Adam's update in place on (R, n) arrays p, m, v with gradient g.sum(0), g
    (P, R, n) (parts added in order, into g[0]); alpha (R,) is each row's lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)."""
    for r in prange(p.shape[0]):
        _adam_row(p, g, m, v, alpha[r], r, one_minus_beta_1, one_minus_beta_2, epsilon)


@njit(nogil=True, error_model="numpy", cache=True)
def adam_small(p, g, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
    """adam on one core, for small arrays (the biases)."""
    for r in range(p.shape[0]):
        _adam_row(p, g, m, v, alpha[r], r, one_minus_beta_1, one_minus_beta_2, epsilon)


@njit(inline="always", cache=True)
def _adam_update(W, b, gW, gb, moments, lr, betas, t, alpha):
    """Adam step t on W (G, KP, D) and b (G, KP) from the gradient parts gW, gb."""
    (G, KP, D), P = W.shape, gW.shape[0]
    b1, b2, eps = betas
    c = np.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    for r in range(G * KP):
        alpha[r] = np.float32(lr[r] * c)
    adam(W.reshape((G * KP, D)), gW.reshape((P, G * KP, D)), moments[0], moments[1], alpha,
         np.float32(1 - b1), np.float32(1 - b2), np.float32(eps))
    adam_small(b.reshape((G * KP, 1)), gb.reshape((P, G * KP, 1)), moments[2], moments[3], alpha,
               np.float32(1 - b1), np.float32(1 - b2), np.float32(eps))


@njit(nogil=True, cache=True)
def train_epoch_rows(X, perm, y, batch_size, key0, t, thr, scale, n_heads, n_classes, W, b, gW, gb, stats,
                     scratch, moments, lr, betas):
    """One pass over X[perm] in batches: train_step_rows and an Adam update per batch. t counts steps
    before this epoch; returns t after it. stats: the epoch's summed training loss and number right
    per head (with dropout, as Keras reports them), by part. moments: (m, v) of W then of b as
    (G*KP, D) and (G*KP, 1) arrays; lr: (G*KP,) per weight row; betas: (beta_1, beta_2, epsilon).
    Batch k of the run draws at key0 + k*B*ceil(D/4)."""
    nw, alpha = (X.shape[1] + 3) // 4, np.empty(lr.shape[0], np.float32)
    stats[...] = 0
    for a in range(0, perm.shape[0], batch_size):
        idx = perm[a:a + batch_size]
        train_step_rows(X, idx, y[idx], key0 + np.uint64(t) * np.uint64(batch_size * nw), thr, scale, n_heads,
                        n_classes, W, b, gW, gb, stats, scratch)
        t += 1
        _adam_update(W, b, gW, gb, moments, lr, betas, t, alpha)
    return t


@njit(nogil=True, cache=True)
def train_epoch_chunks(X, perm, y, batch_size, key0, t, thr, scale, n_heads, n_classes, W, b, gW, gb, stats,
                       scratch, moments, lr, betas):
    """train_epoch_rows with train_step_chunks. Two functions rather than one with a flag: each loads
    only its own step kernel from Numba's cache (~0.2 s less start-up); Numba caches no function
    that takes another as an argument."""
    nw, alpha = (X.shape[1] + 3) // 4, np.empty(lr.shape[0], np.float32)
    stats[...] = 0
    for a in range(0, perm.shape[0], batch_size):
        idx = perm[a:a + batch_size]
        train_step_chunks(X, idx, y[idx], key0 + np.uint64(t) * np.uint64(batch_size * nw), thr, scale, n_heads,
                          n_classes, W, b, gW, gb, stats, scratch)
        t += 1
        _adam_update(W, b, gW, gb, moments, lr, betas, t, alpha)
    return t


if __name__ == "__main__":      # compile (and cache) every kernel once, e.g. right after install
    from .heads import SoftmaxHeads
    rng = np.random.default_rng(0)
    for dim in (8, 8192):       # a small head (train_epoch_rows) and a big one (train_epoch_chunks)
        SoftmaxHeads(epochs=1, batch_size=8).fit(rng.random((16, dim), np.float32), np.arange(16) % 10)
    draws(0, 1, 4)
    print("pipeline.kernels: compiled")
