"""Stage two's training step for softmax heads, compiled with Numba: one fused pass per step
(gather rows, standardise, dropout, forward, softmax, backward) and Adam, on every core.

- The kernels own their state: `allocate()` builds a `TrainState` (weights, gradients, Adam's
  moments, scratch) and `train_epoch` drives one pass over the data with it.
- Two ways to split a step over cores, both into a fixed number of parts, so results do not depend
  on the number of threads: _step_rows (heads whose weights fit in half a core's L2, e.g. the
  notebook's 4096 x 10, the README's best 10,752 x 10, 25,088 x 10 where the L2 is 2 MiB) gives each
  part a quarter of the batch, carried through start to finish in panels of rows (ROWS_PANEL_BYTES)
  while they are in cache, and a gradient of its own (added in part order); _step_chunks (heads too big for that,
  e.g. a 24-head sweep, or 25,088 conv features on a 1 MiB L2) gives each part CHUNK feature
  columns: its slice of the gradient, with partial logits added in chunk order before the softmax.
- Features are float32, or float16 passed as their uint16 bits (Numba has no float16) and widened
  by the CPU's conversion instruction (`_half`: LLVM's fpext; integer arithmetic and a bit cast on a
  CPU without one; both vectorise, unlike a table lookup), so a float16
  cache trains without a float32 copy. Standardisation (x - mean) / scale, when asked for, happens
  in the same pass. `widen` and `column_stats` are the same conversion for evaluation and statistics.
- Dropout noise is counter-based: word w of row i at key k is SplitMix64(k + i * n_words + w), four
  16-bit draws per word; feature j is kept where its draw >= threshold. Step t of a run draws at
  step_key(key0, t, ...), so two steps never share a counter, and one draw per feature serves every
  group of heads (a head alone and in a sweep sees the same masks).
- Heads live in a (G, KP, D) block: group g (one dropout rate) holds its heads' C-class weight rows
  one after another, padded with zero rows to an even KP. The products run in register blocks of 4 rows
  x 5 outputs where the CPU has 32 vector registers (AVX-512; 20 sums, and a 10-class head reads its
  rows twice instead of five times: 19% faster on the 6-view full cache), else and for the rest 4 x 2.
  The weight gradient's blocks of 5 outputs x 64 columns carry their sums in registers over a whole panel
  of rows (_gradient_panel, in LLVM IR), so each is loaded and stored once a panel, not once every 4 rows:
  the same sums to the bit; on the AMD EPYC Zen 5 a 24-head sweep's epoch 25% faster, 25,088 float16 17%.
- Measured and not taken (2026-12-02, the Intel Xeon with AMX, 10,240 float16 features, one process
  timing both where it could): with the rows already in cache a step is as fast as with them streamed
  from memory (0.605 against 0.617 ns a row element), so memory is not what bounds it; a software
  prefetch of the next block's rows was 13% slower; a block of 16-32 rows carried through 256- to
  2,048-column chunks (W's and the gradient's chunk kept in L1) 5-40% slower; LLVM's 512-bit vectors
  instead of the 256 it prefers on Intel's AVX-512 cores (NUMBA_CPU_FEATURES=...,-prefer-256-bit) an
  epoch 12% slower to 20% faster in alternating processes (this VM's noise), the step's parts on rows in
  cache 2% faster in all, the forward products alike, the backward ones 15% slower: the forward products
  already run near this CPU's FMA rate. On the AMD EPYC Zen 5 (2026-12-03) the rows do cost: a step streams them at
  0.357 against 0.255 ns in cache (4,096 float32, two threads), and a prefetch of the next block's rows at once gained
  at most 6%, spread over a gradient loop cut into pieces lost its vectorisation (docs/benchmark-history.md).
Compiled code is cached next to this file (`cache=True`); `python -m pipeline.heads.kernels` compiles it.
All jitted code stays in this one file: Numba invalidates a cache only when the function's own file
changes, so a kernel split over files could run stale code of the other after an edit.
"""
from __future__ import annotations

import os
import platform
from typing import NamedTuple

import numpy as np

from llvmlite import binding as llvm, ir
from numba import njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

CHUNK = 512       # _step_chunks: feature columns per work item (a multiple of 4: a noise word = 4 draws)
PANEL = 64        # _step_chunks, one dropout group: batch rows whose masked features the backward pass reuses
ROWS = 4          # rows per register block
ROW_PARTS = 4     # _step_rows: parts of the batch (fixed, so results do not depend on the thread count)
ROWS_KERNEL_BYTES = None         # heads with weights up to this size use _step_rows; None: half of one core's L2 (l2_cache_bytes),
                                 # so a core keeps the weights and its part's gradient there. Measured on the Intel Xeon with AMX (L2
                                 # 2 MiB) against _step_chunks, an epoch: 10 x 25,088 float16 0.55-0.59 against 0.65-0.71 ns a row
                                 # element, float32 0.66 against 0.76, 10 x 16,384 float16 0.60 against 0.72 (2026-12-02); 10 x 10,240
                                 # float16 12% faster (2026-12-01); a 24-head sweep of 4,096 (3.9 MB) 7% slower
ROWS_PANEL_BYTES = 5 << 18       # _step_rows: masked rows (float32) a panel carries through the backward products (1.25 MiB: a part's
                                 # 60-64 rows at 4,096 features, 32 at 10,240, 12 at 25,088). Epochs, the AMD EPYC Zen 4 (L2 1 MiB),
                                 # one process alternating panel sizes, 12 rounds, the same weights to the bit (2026-12-05): against
                                 # 256 KiB (before: 16 rows at 4,096, 4 at 10,240) 0.963x at 4,096 float32, 0.967x at 10,240 float16,
                                 # 0.929x at 10,752; 16-64 rows at 10,240 within 1%; 25,088 float16 (the rows kernel forced, 4 rounds) 12 rows
                                 # 0.97x 4, 32 rows 1.06x (docs/benchmark-history.md). Zen 5, 4,096 float32: 16 rows against 4-row blocks 0.92x
AFFINE_ROWS = 16  # affine (inference): rows per work item, sharing each chunk of W
NOISE_LEVELS = 65536             # dropout rates are realised to 1/65536 (16-bit draws)
FEATURE_DTYPES = {"float32": np.float32, "float16": np.uint16}   # features by name, as the kernels take them (float16 as its bits)
GAMMA = np.uint64(0x9E3779B97F4A7C15)   # SplitMix64 constants
M1, M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


class TrainState(NamedTuple):
    """Everything a run of train_epoch reads and updates; made by allocate()."""
    thr: np.ndarray        # (G,) uint16: group g keeps a feature where its draw >= thr[g]
    drop_scale: np.ndarray  # (G,) float32: 1 / (1 - rate), Keras' Dropout scaling
    n_heads: np.ndarray    # (G,) int64: heads in group g
    n_classes: int
    by_rows: bool          # _step_rows (small heads) or _step_chunks (big ones)
    W: np.ndarray          # (G, KP, D) float32 weights, heads' C rows one after another, zero-padded
    b: np.ndarray          # (G, KP) float32 biases
    gW: np.ndarray         # (P, G, KP, D) gradient parts (P = ROW_PARTS by rows, 1 by chunks)
    gb: np.ndarray         # (P, G, KP)
    stats: np.ndarray      # (P, G, H, 2) float64: the epoch's summed loss and number right, per head
    zpart: np.ndarray      # (chunks, G, B4, KP) float32 partial logits (_step_chunks)
    panel: np.ndarray      # (1, chunks, PANEL, CHUNK) float32 a panel's masked features, chunk by chunk (_step_chunks
                           # with one group; several groups redraw their masks in the backward pass instead: measured faster)
    dz: np.ndarray         # (G, B4, KP) float32 logit gradients (_step_chunks)
    m_W: np.ndarray        # (G*KP, D) Adam's first and second moments of W, then of b (G*KP, 1)
    v_W: np.ndarray
    m_b: np.ndarray
    v_b: np.ndarray
    alpha: np.ndarray      # (G*KP,) float32 scratch: this step's Adam step size per weight row
    lr: np.ndarray         # (G*KP,) float64 learning rate per weight row
    cosine_steps: np.ndarray  # (G*KP,) float64: the rate decays as Keras' CosineDecay(lr, steps) (0: constant)
    decay: np.ndarray      # (G*KP,) float32 2 * l2 per weight row: Keras' L2 kernel_regularizer's gradient
    betas: np.ndarray      # (3,) float64: beta_1, beta_2, epsilon
    mean: np.ndarray       # (D,) float32 standardisation (empty: none)
    inv_scale: np.ndarray  # (D,) float32 1 / scale (empty: none)
    keys: np.ndarray       # (steps,) uint64: the noise key each step drew at (a record)


def l2_cache_bytes(cpu: str = "/sys/devices/system/cpu/cpu0", default: int = 1 << 20) -> int:
    """One core's L2 cache in bytes as Linux describes `cpu` (its cache/index*/level and size, e.g. "2048K"),
    or `default` (1 MiB) where that cannot be read."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        for index in sorted(os.listdir(os.path.join(cpu, "cache"))):
            folder = os.path.join(cpu, "cache", index)
            with open(os.path.join(folder, "level")) as f:
                if f.read().strip() != "2":
                    continue
            with open(os.path.join(folder, "size")) as f:
                size = f.read().strip()
            return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    except (OSError, ValueError):
        pass
    return default


@njit(inline="always", cache=True)
def padded(n_heads, n_classes):
    """Weight rows of a group of n_heads heads: n_heads * C rounded up to even (2-output register blocks)."""
    return (n_heads * n_classes + 1) // 2 * 2


def allocate(W, b, rates, n_heads, n_classes, lr_rows, batch_size, steps, betas, mean=None, scale=None,
             l2_rows=None, cosine_rows=None) -> TrainState:
    """The state for training W (G, KP, D), b (G, KP) in place: dropout rate and head count per group,
    lr (and L2 penalty, default none; cosine decay's steps, default none: constant) per weight row;
    mean/scale: standardise features on the fly (None: as they are)."""
    G, KP, D = W.shape
    thr = np.minimum(np.round(np.asarray(rates) * NOISE_LEVELS), NOISE_LEVELS - 1).astype(np.uint16)
    drop_scale = (NOISE_LEVELS / (NOISE_LEVELS - thr.astype(np.float64))).astype(np.float32)
    by_rows = W.nbytes <= (l2_cache_bytes() // 2 if ROWS_KERNEL_BYTES is None else ROWS_KERNEL_BYTES)
    parts, n_chunks = (ROW_PARTS, 0) if by_rows else (1, (D + CHUNK - 1) // CHUNK)
    b4 = -(-batch_size // ROWS) * ROWS
    bc = 0 if by_rows else b4
    f32 = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    std = mean is not None
    return TrainState(
        thr=thr, drop_scale=drop_scale, n_heads=np.asarray(n_heads, np.int64), n_classes=int(n_classes),
        by_rows=by_rows, W=W, b=b, gW=f32(parts, G, KP, D), gb=f32(parts, G, KP),
        stats=np.zeros((parts, G, max(n_heads), 2)),
        zpart=f32(n_chunks, G, bc, KP), panel=f32(int(G == 1 and n_chunks > 0), n_chunks, PANEL, CHUNK), dz=f32(G, bc, KP),
        m_W=f32(G * KP, D), v_W=f32(G * KP, D), m_b=f32(G * KP, 1), v_b=f32(G * KP, 1), alpha=f32(G * KP),
        lr=np.asarray(lr_rows, np.float64),
        cosine_steps=np.zeros(G * KP) if cosine_rows is None else np.asarray(cosine_rows, np.float64),
        decay=f32(G * KP) if l2_rows is None else (2 * np.asarray(l2_rows)).astype(np.float32),
        betas=np.asarray(betas, np.float64), mean=np.asarray(mean if std else [], np.float32),
        inv_scale=(1 / np.asarray(scale, np.float64)).astype(np.float32) if std else f32(0),
        keys=np.zeros(steps, np.uint64))


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
    """The 16-bit dropout draws a step at `key` uses for `rows` rows of `dim` features."""
    return _words(np.uint64(key), rows, (dim + 3) // 4).view(np.uint16)[:, :dim]


@njit(inline="always", cache=True)
def step_key(key0, t, batch_size, n_words):
    """Step t's key: steps t and t+1 draw from counters [k, k + B*n_words) that never overlap."""
    return key0 + np.uint64(t) * np.uint64(batch_size * n_words)


@intrinsic
def _bits_as_float32(typingctx, bits):
    """The float32 whose IEEE bits are the low 32 bits of the integer `bits` (Numba widens uint32
    arithmetic to 64 bits): a register bit cast, no memory."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = builder.trunc(args[0], ir.IntType(32)) if bits.bitwidth > 32 else args[0]
        return builder.bitcast(low, ir.FloatType())
    return types.float32(bits), codegen


@njit(inline="always", cache=True)
def _half_by_bits(h):
    """float16 bits (uint16) -> float32, exactly as numpy's astype, where the CPU has no conversion
    instruction (F. Giesen's half_to_float_fast): exponent and mantissa moved into place and rebiased;
    subnormals renormalised through a float subtraction, infinities and NaN kept. Branch-free."""
    u = np.uint32(h)
    o = (u & np.uint32(0x7FFF)) << np.uint32(13)
    exp = o & np.uint32(0x0F800000)
    special = np.uint32(exp == np.uint32(0x0F800000))      # inf, NaN: exponent 255
    sub = np.uint32(exp == np.uint32(0))                   # zero, subnormal: renormalised below
    o += np.uint32(112 << 23) + special * np.uint32(112 << 23) + sub * np.uint32(1 << 23)
    f = _bits_as_float32(o) - np.float32(sub) * np.float32(2.0 ** -14)
    return _bits_as_float32(_float32_bits(f) | ((u & np.uint32(0x8000)) << np.uint32(16)))


@intrinsic
def _float32_bits(typingctx, value):
    """The uint32 IEEE bits of a float32."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@intrinsic
def _half_by_instruction(typingctx, bits):
    """float16 bits -> float32 as LLVM's exact `fpext half to float`: one vcvtph2ps per 16 values on
    x86 with F16C (every AVX2 CPU), 5x faster than _half_by_bits in the kernels' loops."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = builder.trunc(args[0], ir.IntType(16)) if bits.bitwidth > 16 else args[0]
        return builder.fpext(builder.bitcast(v, ir.HalfType()), ir.FloatType())
    return types.float32(bits), codegen


@intrinsic
def _float_to_half_bits(typingctx, value):
    """float32 -> the uint16 bits of the nearest float16 (ties to even, as numpy's astype): LLVM's
    `fptrunc float to half` (vcvtps2ph with F16C)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


@intrinsic
def _gradient_panel(typingctx, gW, k, j0, ncols, dz, r0, rows, xm, x0):
    """gW[k:k+5, j0:j0+ncols] += dz[r0:r0+rows, k:k+5].T @ xm[x0:x0+rows, :ncols] for ncols a multiple of 64 (dz
    already scaled): 5 outputs x 64 columns at a time in 20 vector registers that carry every row, added in row
    order, so each weight gradient is loaded and stored once a panel instead of once every ROWS rows (the
    stores bound _backward_block at ~half _forward_block's rate on the AMD EPYC Zen 5). Written in LLVM IR:
    Numba has no vector type to keep the 20 sums in registers. The same sums as _backward_block's, to the bit."""
    if not all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" and a.dtype == types.float32 for a in (gW, dz, xm)):
        return None                       # rows of contiguous float32 only
    sig = types.void(gW, k, j0, ncols, dz, r0, rows, xm, x0)

    def codegen(context, builder, signature, args):
        i64, lanes = ir.IntType(64), 16
        vec = ir.VectorType(ir.FloatType(), lanes)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), "llvm.fma.v16f32")
        broadcast = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        undef = ir.Constant(vec, ir.Undefined)

        def matrix(i):    # data pointer and row stride in elements of a C-contiguous float32 matrix
            a = context.make_array(signature.args[i])(context, builder, args[i])
            return a.data, builder.sdiv(cgutils.unpack_tuple(builder, a.strides, 2)[0], ir.Constant(i64, 4))

        def at(data, stride, row, col):
            return builder.gep(data, [builder.add(builder.mul(row, stride), col)])

        def vector(pointer, v):
            return builder.bitcast(builder.gep(pointer, [ir.Constant(i64, v * lanes)]), vec.as_pointer())
        (gd, gs), (dd, ds), (xd, xs) = matrix(0), matrix(4), matrix(7)
        k, j0, n, r0, rows, x0 = (context.cast(builder, args[i], signature.args[i], types.int64) for i in (1, 2, 3, 5, 6, 8))
        sums = [[cgutils.alloca_once(builder, vec) for _ in range(4)] for _ in range(5)]
        with cgutils.for_range_slice(builder, ir.Constant(i64, 0), n, ir.Constant(i64, 4 * lanes)) as (c, _):
            g = [at(gd, gs, builder.add(k, ir.Constant(i64, q)), builder.add(j0, c)) for q in range(5)]
            for q in range(5):
                for v in range(4):
                    builder.store(builder.load(vector(g[q], v), align=4), sums[q][v])
            with cgutils.for_range(builder, rows) as loop:
                x = at(xd, xs, builder.add(x0, loop.index), c)
                xv = [builder.load(vector(x, v), align=4) for v in range(4)]
                d = at(dd, ds, builder.add(r0, loop.index), k)
                for q in range(5):
                    coefficient = builder.load(builder.gep(d, [ir.Constant(i64, q)]))
                    cv = builder.shuffle_vector(builder.insert_element(undef, coefficient, ir.Constant(ir.IntType(32), 0)), undef,
                                                broadcast)
                    for v in range(4):
                        builder.store(builder.call(fma, [cv, xv[v], builder.load(sums[q][v])]), sums[q][v])
            for q in range(5):
                for v in range(4):
                    builder.store(builder.load(sums[q][v]), vector(g[q], v), align=4)
        return context.get_dummy_value()
    return sig, codegen


_FEATURES = llvm.get_host_cpu_features()
WIDE_BLOCKS = _FEATURES.get("avx512f", False)   # 32 vector registers: _forward_block's 4 x 5 blocks (20 sums) fit
_half = _half_by_instruction if _FEATURES.get("f16c", False) or platform.machine() in ("aarch64", "arm64") else _half_by_bits


def _value(v):
    """A stored feature as float32 (float16 arrive as their uint16 bits)."""


@overload(_value, inline="always")
def _value_impl(v):
    if isinstance(v, types.Float):
        return lambda v: v
    return lambda v: _half(v)


@njit(parallel=True, nogil=True, cache=True)
def widen(X, rows, out):
    """out[i] = X[rows[i]] as float32 (X float32, or float16 as uint16 bits), rows in parallel."""
    for i in prange(rows.shape[0]):
        src, dst = X[rows[i]], out[i]
        for j in range(src.shape[0]):
            dst[j] = _value(src[j])


@njit(parallel=True, nogil=True, fastmath=True, cache=True)
def affine(X, W, b, out):
    """out = X @ W.T + b for X (N, D) float32 or float16 bits, W (KP, D) float32 with KP even: rows in
    parallel, AFFINE_ROWS at a time, each CHUNK of columns widened once and multiplied by the training
    kernels' register blocks while that chunk of W is in cache (no float32 copy of X)."""
    N, D, KP = X.shape[0], X.shape[1], W.shape[0]
    for item in prange((N + AFFINE_ROWS - 1) // AFFINE_ROWS):
        lo = item * AFFINE_ROWS
        hi = min(N, lo + AFFINE_ROWS)
        xm, z = np.zeros((AFFINE_ROWS, CHUNK), np.float32), np.empty((AFFINE_ROWS, KP), np.float32)
        acc = np.zeros((AFFINE_ROWS, KP), np.float32)
        for j0 in range(0, D, CHUNK):
            n = min(D, j0 + CHUNK) - j0
            for i in range(hi - lo):
                src = X[lo + i, j0:j0 + n]
                for j in range(n):
                    xm[i, j] = _value(src[j])
            for q in range(0, AFFINE_ROWS, ROWS):
                _forward_block(xm[q:q + ROWS], W, KP, j0, n, z, q)
            acc += z
        for i in range(hi - lo):
            for k in range(KP):
                out[lo + i, k] = acc[i, k] + b[k]


@njit(parallel=True, nogil=True, cache=True)
def narrow(src, dst):
    """dst (uint16 bits, N x D) = src (float32, N x D) as float16, rows in parallel."""
    for i in prange(src.shape[0]):
        s, d = src[i], dst[i]
        for j in range(s.shape[0]):
            d[j] = _float_to_half_bits(s[j])


@njit(parallel=True, nogil=True, cache=True)
def column_stats(X, rows, parts):
    """(parts, 2, D) float64: per part of `rows` (split in order), each column's sum and sum of squares
    of the float32 values; added in part order by the caller, so the result does not depend on threads."""
    D, n = X.shape[1], rows.shape[0]
    out = np.zeros((parts, 2, D))
    for p in prange(parts):
        s, q, v = np.zeros(D), np.zeros(D), np.empty((ROWS, D), np.float32)
        lo, hi = p * n // parts, (p + 1) * n // parts
        for i0 in range(lo, hi, ROWS):          # ROWS rows added to each column's sums while they are in registers
            m = min(ROWS, hi - i0)
            for i in range(m):
                src, vi = X[rows[i0 + i]], v[i]
                for j in range(D):
                    vi[j] = _value(src[j])
            for i in range(m, ROWS):
                v[i] = 0                        # a partial block adds zeros: the same sums
            for j in range(D):
                a, b = s[j], q[j]
                for i in range(ROWS):
                    x = np.float64(v[i, j])
                    a += x
                    b += x * x
                s[j], q[j] = a, b
        out[p, 0], out[p, 1] = s, q
    return out


@njit(inline="always", fastmath=True, cache=True)
def _mask_block(X, idx, words, w0, t, r0, hi, j0, n, xm, mean, inv_scale, dj):
    """xm[i, :n] = feature j0..j0+n of row X[idx[r0+i]] (standardised when mean is not empty) where
    its draw (words[r0+i-w0], whose first draw is feature dj's) >= t, else 0; rows from `hi` on are 0."""
    std = mean.shape[0] > 0
    for i in range(ROWS):
        r = r0 + i
        if r < hi:
            row = X[idx[r], j0:j0 + n]
            draws = words[r - w0].view(np.uint16)[j0 - dj:j0 - dj + n]
            if std:
                mu, inv = mean[j0:j0 + n], inv_scale[j0:j0 + n]
                for j in range(n):
                    v = (_value(row[j]) - mu[j]) * inv[j]
                    xm[i, j] = v if draws[j] >= t else np.float32(0)
            else:
                for j in range(n):
                    xm[i, j] = _value(row[j]) if draws[j] >= t else np.float32(0)
        else:
            for j in range(n):
                xm[i, j] = 0

@njit(inline="always", fastmath=True, cache=True)
def _forward_block(xm, W, kp, j0, n, zp, r0):
    """zp[r0:r0+4, :kp] = xm[:, :n] @ W[:kp, j0:j0+n].T: 4 rows x 5 outputs at a time where the CPU has
    32 vector registers (the first 10 * (kp // 10) outputs: a 10-class head reads its 4 rows twice, not
    five times), then 4 rows x 2 outputs."""
    k5 = kp // 10 * 10 if WIDE_BLOCKS else 0
    for k in range(0, k5, 5):
        w0, w1, w2, w3, w4 = W[k, j0:j0 + n], W[k + 1, j0:j0 + n], W[k + 2, j0:j0 + n], W[k + 3, j0:j0 + n], W[k + 4, j0:j0 + n]
        a00 = a01 = a02 = a03 = a04 = a10 = a11 = a12 = a13 = a14 = np.float32(0)
        a20 = a21 = a22 = a23 = a24 = a30 = a31 = a32 = a33 = a34 = np.float32(0)
        for j in range(n):
            u0, u1, u2, u3, u4 = w0[j], w1[j], w2[j], w3[j], w4[j]
            x = xm[0, j]
            a00, a01, a02, a03, a04 = a00 + x * u0, a01 + x * u1, a02 + x * u2, a03 + x * u3, a04 + x * u4
            x = xm[1, j]
            a10, a11, a12, a13, a14 = a10 + x * u0, a11 + x * u1, a12 + x * u2, a13 + x * u3, a14 + x * u4
            x = xm[2, j]
            a20, a21, a22, a23, a24 = a20 + x * u0, a21 + x * u1, a22 + x * u2, a23 + x * u3, a24 + x * u4
            x = xm[3, j]
            a30, a31, a32, a33, a34 = a30 + x * u0, a31 + x * u1, a32 + x * u2, a33 + x * u3, a34 + x * u4
        zp[r0, k], zp[r0, k + 1], zp[r0, k + 2], zp[r0, k + 3], zp[r0, k + 4] = a00, a01, a02, a03, a04
        zp[r0 + 1, k], zp[r0 + 1, k + 1], zp[r0 + 1, k + 2], zp[r0 + 1, k + 3], zp[r0 + 1, k + 4] = a10, a11, a12, a13, a14
        zp[r0 + 2, k], zp[r0 + 2, k + 1], zp[r0 + 2, k + 2], zp[r0 + 2, k + 3], zp[r0 + 2, k + 4] = a20, a21, a22, a23, a24
        zp[r0 + 3, k], zp[r0 + 3, k + 1], zp[r0 + 3, k + 2], zp[r0 + 3, k + 3], zp[r0 + 3, k + 4] = a30, a31, a32, a33, a34
    for k in range(k5, kp, 2):
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
def _add_rows(g, j, c0, c1, c2, c3, x0, x1, x2, x3):
    """g[j] += c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3, added in row order."""
    u = g[j]
    u += c0 * x0
    u += c1 * x1
    u += c2 * x2
    u += c3 * x3
    g[j] = u


@njit(inline="always", fastmath=True, cache=True)
def _backward_block(xm, dz, r0, k5, kp, j0, c5, n, gW):
    """gW[:kp, j0:j0+n] += dz[r0:r0+4, :kp].T @ xm[:, :n], but for the outputs below k5 (a multiple of 10, in blocks
    of 5) only from column c5 on (_gradient_panel did those before it); the rest in blocks of 2."""
    for k in range(0, k5, 5):
        g0, g1, g2, g3, g4 = gW[k, j0:j0 + n], gW[k + 1, j0:j0 + n], gW[k + 2, j0:j0 + n], gW[k + 3, j0:j0 + n], gW[k + 4, j0:j0 + n]
        c00, c10, c20, c30 = dz[r0, k], dz[r0 + 1, k], dz[r0 + 2, k], dz[r0 + 3, k]
        c01, c11, c21, c31 = dz[r0, k + 1], dz[r0 + 1, k + 1], dz[r0 + 2, k + 1], dz[r0 + 3, k + 1]
        c02, c12, c22, c32 = dz[r0, k + 2], dz[r0 + 1, k + 2], dz[r0 + 2, k + 2], dz[r0 + 3, k + 2]
        c03, c13, c23, c33 = dz[r0, k + 3], dz[r0 + 1, k + 3], dz[r0 + 2, k + 3], dz[r0 + 3, k + 3]
        c04, c14, c24, c34 = dz[r0, k + 4], dz[r0 + 1, k + 4], dz[r0 + 2, k + 4], dz[r0 + 3, k + 4]
        for j in range(c5, n):
            x0, x1, x2, x3 = xm[0, j], xm[1, j], xm[2, j], xm[3, j]
            _add_rows(g0, j, c00, c10, c20, c30, x0, x1, x2, x3)
            _add_rows(g1, j, c01, c11, c21, c31, x0, x1, x2, x3)
            _add_rows(g2, j, c02, c12, c22, c32, x0, x1, x2, x3)
            _add_rows(g3, j, c03, c13, c23, c33, x0, x1, x2, x3)
            _add_rows(g4, j, c04, c14, c24, c34, x0, x1, x2, x3)
    for k in range(k5, kp, 2):
        g0, g1 = gW[k, j0:j0 + n], gW[k + 1, j0:j0 + n]
        c00, c10, c20, c30 = dz[r0, k], dz[r0 + 1, k], dz[r0 + 2, k], dz[r0 + 3, k]
        c01, c11, c21, c31 = dz[r0, k + 1], dz[r0 + 1, k + 1], dz[r0 + 2, k + 1], dz[r0 + 3, k + 1]
        for j in range(n):
            x0, x1, x2, x3 = xm[0, j], xm[1, j], xm[2, j], xm[3, j]
            _add_rows(g0, j, c00, c10, c20, c30, x0, x1, x2, x3)
            _add_rows(g1, j, c01, c11, c21, c31, x0, x1, x2, x3)


@njit(inline="always", fastmath=True, cache=True)
def _backward_rows(xm, x0, rows, dz, r0, kp, j0, n, gW, wide):
    """gW[:kp, j0:j0+n] += dz[r0:r0+rows, :kp].T @ xm[x0:x0+rows, :n], rows (a multiple of ROWS) added in order,
    dz already scaled by the dropout's 1 / (1 - rate): where `wide` (32 vector registers), the blocks of 5 outputs x
    64 columns by _gradient_panel; the rest by _backward_block, ROWS rows at a time (blocks of 5 outputs as
    _forward_block's where the CPU has the registers)."""
    k5 = kp // 10 * 10 if wide or WIDE_BLOCKS else 0
    n64 = n // 64 * 64 if wide else 0
    for k in range(0, k5 if wide else 0, 5):
        _gradient_panel(gW, k, j0, n64, dz, r0, rows, xm, x0)
    for r in range(0, rows, ROWS):
        _backward_block(xm[x0 + r:x0 + r + ROWS], dz, r0 + r, k5, kp, j0, n64, n, gW)


@njit(inline="always", fastmath=True, cache=True)
def _fill_words(key, words, w0, r0, r1, c0, c1, nw):
    """words[r - w0, c0:c1] = draws of rows r0..r1-1 (batch positions), words c0..c1-1."""
    for r in range(r0, r1):
        for w in range(c0, c1):
            words[r - w0, w] = _word(key, np.uint64(r * nw + w))


@njit(inline="always", fastmath=True, cache=True)
def _softmax_grad(z, b, drop_scale, heads, C, y, inv_n, gb, st):
    """In place on one row: logits z * drop_scale + b -> softmax per head -> d(mean cross-entropy)/d(logits)
    (inv_n = 1 / batch size) times drop_scale, the coefficient of the masked features in the weights' gradient;
    the row's bias gradient is added to gb, and per head its loss and whether it was right to st (heads x 2)."""
    for h in range(heads):
        k0 = h * C
        for k in range(k0, k0 + C):
            z[k] = z[k] * drop_scale + b[k]
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
            z[k] *= drop_scale           # the weights' gradient sees the features scaled as the logits did
    for k in range(heads * C, z.shape[0]):
        z[k] = 0


@njit(fastmath=True, cache=True)
def _rows_part(X, idx, yb, key, state, gW, gb, st, lo, hi):
    """Rows lo..hi-1 of the batch, a panel of ROWS_PANEL_BYTES at a time, start to finish (draws, mask, forward 4
    rows at a time, softmax, backward) while they are in cache; gradients summed into this part's gW, gb."""
    D, G, KP = X.shape[1], state.W.shape[0], state.W.shape[1]
    nw = (D + 3) // 4
    inv_n = np.float32(1.0) / np.float32(idx.shape[0])
    panel = max(ROWS, ROWS_PANEL_BYTES // (4 * D) // ROWS * ROWS)
    words, xm = np.empty((panel, nw), np.uint64), np.empty((panel, D), np.float32)
    z = np.zeros((panel, KP), np.float32)
    gW[...] = 0
    gb[...] = 0
    for p0 in range(lo, hi, panel):
        p1 = min(hi, p0 + panel)
        rows = -(-(p1 - p0) // ROWS) * ROWS
        _fill_words(key, words, p0, p0, p1, 0, nw, nw)
        for g in range(G):
            kp = padded(state.n_heads[g], state.n_classes)
            for r in range(0, rows, ROWS):
                block = xm[r:r + ROWS]
                _mask_block(X, idx, words, p0, state.thr[g], p0 + r, p1, 0, D, block, state.mean, state.inv_scale, 0)
                _forward_block(block, state.W[g], kp, 0, D, z, r)
            for i in range(rows):
                if p0 + i < p1:
                    _softmax_grad(z[i], state.b[g], state.drop_scale[g], state.n_heads[g], state.n_classes, yb[p0 + i], inv_n, gb[g], st[g])
                else:
                    z[i] = 0
            _backward_rows(xm, 0, rows, z, 0, kp, 0, D, gW[g], WIDE_BLOCKS)


@njit(parallel=True, nogil=True, cache=True)
def _step_rows(X, idx, yb, key, state):
    """Gradients of the mean cross-entropy of every head on rows X[idx] (labels yb), split into
    ROW_PARTS fixed parts of the batch: state.gW (P, G, KP, D), state.gb (P, G, KP); their sum is the gradient.
    state.stats (P, G, H, 2) gains each head's summed loss and number right."""
    P, blocks = state.gW.shape[0], (idx.shape[0] + ROWS - 1) // ROWS
    for p in prange(P):
        lo, hi = p * blocks // P * ROWS, min(idx.shape[0], (p + 1) * blocks // P * ROWS)
        _rows_part(X, idx, yb, key, state, state.gW[p], state.gb[p], state.stats[p], lo, hi)


@njit(inline="always", fastmath=True, cache=True)
def _block_words(key, words, r0, hi, j0, n, nw):
    """words[i, :] = the draws of batch row r0+i for features j0..j0+n (j0 a multiple of 4), rows < hi:
    computed where they are used (cheaper than a round trip through memory)."""
    for i in range(ROWS):
        r = r0 + i
        if r < hi:
            c0 = j0 // 4
            for w in range(c0, (j0 + n + 3) // 4):
                words[i, w - c0] = _word(key, np.uint64(r * nw + w))


@njit(fastmath=True, cache=True)
def _forward_chunk(X, idx, key, state, c, j0, n, p0, p1):
    """Each group's partial logits over feature columns j0:j0+n for batch rows p0..p1-1, 4 rows at a
    time; with one group the masked rows stay in state.panel for _backward_chunk."""
    nw = (X.shape[1] + 3) // 4
    words, local = np.empty((ROWS, CHUNK // 4), np.uint64), np.empty((ROWS, CHUNK), np.float32)
    keep = state.panel.shape[0] > 0
    for r0 in range(p0, p1, ROWS):
        _block_words(key, words, r0, p1, j0, n, nw)
        for g in range(state.W.shape[0]):
            kp = padded(state.n_heads[g], state.n_classes)
            xm = state.panel[0, c, r0 - p0:r0 - p0 + ROWS] if keep else local
            _mask_block(X, idx, words, r0, state.thr[g], r0, p1, j0, n, xm, state.mean, state.inv_scale, j0)
            _forward_block(xm, state.W[g], kp, j0, n, state.zpart[c, g], r0)


@njit(fastmath=True, cache=True)
def _backward_chunk(X, idx, key, state, c, j0, n, p0, p1):
    """Every group's weight gradient for columns j0:j0+n gains rows p0..p1-1's part (rows added in batch
    order, so panels change no sum): from the masked rows _forward_chunk kept, or with the draws and
    masks computed again (several groups), PANEL rows at a time, the draws once for all groups."""
    nw, keep = (X.shape[1] + 3) // 4, state.panel.shape[0] > 0
    gW = state.gW[0]
    if p0 == 0:
        for g in range(gW.shape[0]):
            gW[g, :, j0:j0 + n] = 0
    if keep:
        kp = padded(state.n_heads[0], state.n_classes)
        _backward_rows(state.panel[0, c], 0, -(-(p1 - p0) // ROWS) * ROWS, state.dz[0], p0, kp, j0, n, gW[0], WIDE_BLOCKS)
        return
    words, xm = np.empty((PANEL, CHUNK // 4), np.uint64), np.empty((PANEL, CHUNK), np.float32)
    for s0 in range(p0, p1, PANEL):
        s1 = min(p1, s0 + PANEL)
        rows = -(-(s1 - s0) // ROWS) * ROWS
        for r in range(0, rows, ROWS):
            _block_words(key, words[r:r + ROWS], s0 + r, s1, j0, n, nw)
        for g in range(gW.shape[0]):
            kp = padded(state.n_heads[g], state.n_classes)
            for r in range(0, rows, ROWS):
                _mask_block(X, idx, words, s0, state.thr[g], s0 + r, s1, j0, n, xm[r:r + ROWS], state.mean, state.inv_scale, j0)
            _backward_rows(xm, 0, rows, state.dz[g], s0, kp, j0, n, gW[g], WIDE_BLOCKS)


@njit(fastmath=True, cache=True)
def _logit_gradients(yb, state, p0, p1):
    """Rows p0..p1-1: partial logits summed in chunk order, then _softmax_grad row by row into state.dz."""
    inv_n = np.float32(1.0) / np.float32(yb.shape[0])
    for g in range(state.dz.shape[0]):
        for i in range(p0, p1):
            for k in range(state.dz.shape[2]):
                acc = np.float32(0)
                for c in range(state.zpart.shape[0]):
                    acc += state.zpart[c, g, i, k]
                state.dz[g, i, k] = acc
            _softmax_grad(state.dz[g, i], state.b[g], state.drop_scale[g], state.n_heads[g], state.n_classes, yb[i], inv_n, state.gb[0, g],
                          state.stats[0, g])


@njit(parallel=True, nogil=True, cache=True)
def _step_chunks(X, idx, yb, key, state):
    """_step_rows' gradients and stats, for heads too big for it, split by feature columns into
    state.gW (1, G, KP, D), state.gb (1, G, KP): forward, softmax and backward a panel of rows at a time
    (PANEL rows with one group, so the backward pass reuses their masked rows while they are in cache;
    the whole batch with several)."""
    D, B = X.shape[1], idx.shape[0]
    n_chunks = (D + CHUNK - 1) // CHUNK
    rows = PANEL if state.panel.shape[0] > 0 else B
    state.dz[...] = 0
    state.gb[...] = 0
    for p0 in range(0, B, rows):
        p1 = min(B, p0 + rows)
        for c in prange(n_chunks):
            j0 = c * CHUNK
            _forward_chunk(X, idx, key, state, c, j0, min(D, j0 + CHUNK) - j0, p0, p1)
        _logit_gradients(yb, state, p0, p1)
        for c in prange(n_chunks):
            j0 = c * CHUNK
            _backward_chunk(X, idx, key, state, c, j0, min(D, j0 + CHUNK) - j0, p0, p1)


def train_step(X, idx, yb, key, state):
    """One step's gradients (no update), by whichever split s was allocated for: for tests."""
    (_step_rows if state.by_rows else _step_chunks)(X, idx, yb, np.uint64(key), state)


@njit(inline="always", error_model="numpy", cache=True)
def _adam_row(p, g, m, v, a, d, r, one_minus_beta_1, one_minus_beta_2, epsilon):
    """Row r, its gradient plus d * p (an L2 penalty; d = 0: none); error_model="numpy" (no
    ZeroDivisionError check) lets the loop vectorise."""
    pr, mr, vr, gr = p[r], m[r], v[r], g[0, r]
    for q in range(1, g.shape[0]):          # parts added in order, by a plain loop (an array += took ~2x as long)
        gq = g[q, r]
        for j in range(gr.shape[0]):
            gr[j] += gq[j]
    for j in range(p.shape[1]):
        gj = gr[j] + d * pr[j]
        mj = mr[j] + (gj - mr[j]) * one_minus_beta_1
        vj = vr[j] + (gj * gj - vr[j]) * one_minus_beta_2
        mr[j], vr[j] = mj, vj
        pr[j] -= a * mj / (np.sqrt(vj) + epsilon)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def adam(p, g, m, v, alpha, decay, one_minus_beta_1, one_minus_beta_2, epsilon):
    """keras.optimizers.Adam's update in place on (R, n) arrays p, m, v with gradient g.sum(0) + decay * p, g
    (P, R, n) (parts added in order, into g[0]); alpha (R,) is each row's lr * sqrt(1 - beta_2^t) / (1 - beta_1^t),
    decay (R,) each row's 2 * l2."""
    for r in prange(p.shape[0]):
        _adam_row(p, g, m, v, alpha[r], decay[r], r, one_minus_beta_1, one_minus_beta_2, epsilon)


@njit(nogil=True, error_model="numpy", cache=True)
def adam_small(p, g, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
    """adam on one core without a penalty, for small arrays (the biases: Keras regularises the kernel only)."""
    for r in range(p.shape[0]):
        _adam_row(p, g, m, v, alpha[r], np.float32(0), r, one_minus_beta_1, one_minus_beta_2, epsilon)


@njit(inline="always", cache=True)
def _adam_update(state, t):
    """Adam step t on state.W (G, KP, D) and state.b (G, KP) from the gradient parts state.gW, state.gb."""
    (G, KP, D), P = state.W.shape, state.gW.shape[0]
    b1, b2, eps = state.betas[0], state.betas[1], state.betas[2]
    c = np.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    for r in range(G * KP):
        lr, n = state.lr[r], state.cosine_steps[r]
        if n > 0:                  # Keras' CosineDecay at the optimizer's step count before this update (t - 1)
            lr *= 0.5 * (1.0 + np.cos(np.pi * min(t - 1, n) / n))
        state.alpha[r] = np.float32(lr * c)
    adam(state.W.reshape((G * KP, D)), state.gW.reshape((P, G * KP, D)), state.m_W, state.v_W, state.alpha, state.decay,
         np.float32(1 - b1), np.float32(1 - b2), np.float32(eps))
    adam_small(state.b.reshape((G * KP, 1)), state.gb.reshape((P, G * KP, 1)), state.m_b, state.v_b, state.alpha,
               np.float32(1 - b1), np.float32(1 - b2), np.float32(eps))


@njit(nogil=True, cache=True)
def train_epoch(X, perm, y, batch_size, key0, t, state):
    """One pass over X[perm] in batches: a fused step and an Adam update per batch. t counts steps
    before this epoch; returns t after it. state.stats holds the epoch's summed training loss and number
    right per head (with dropout, as Keras reports them), by part; state.keys[t] the key step t drew at."""
    nw = (X.shape[1] + 3) // 4
    state.stats[...] = 0
    for a in range(0, perm.shape[0], batch_size):
        idx = perm[a:a + batch_size]
        key = step_key(key0, t, batch_size, nw)
        state.keys[t] = key
        if state.by_rows:
            _step_rows(X, idx, y[idx], key, state)
        else:
            _step_chunks(X, idx, y[idx], key, state)
        t += 1
        _adam_update(state, t)
    return t


def warm_up(names=()):
    """Compile every kernel for features of the dtypes `names` (FEATURE_DTYPES' names; none given: all of them; both
    splits in one driver): once, e.g. after install."""
    dtypes = [FEATURE_DTYPES[name] for name in names or FEATURE_DTYPES]
    for dtype in dtypes:
        X = np.zeros((8, 8), dtype)
        X.flags.writeable = False
        state = allocate(np.zeros((1, 2, 8), np.float32), np.zeros((1, 2), np.float32), [0.5], [1], 2, np.ones(2), 8, 1,
                     (0.9, 0.999, 1e-7), np.zeros(8), np.ones(8))
        train_epoch(X, np.arange(8), np.zeros(8, np.int64), 8, np.uint64(1), 0, state)
    draws(0, 1, 4)
    for dtype in dtypes:
        X = np.zeros((4, 8), dtype)
        X.flags.writeable = False
        widen(X, np.arange(4), np.empty((4, 8), np.float32))
        affine(X, np.zeros((2, 8), np.float32), np.zeros(2, np.float32), np.empty((4, 2), np.float32))
        column_stats(X, np.arange(4), 2)
    narrow(np.zeros((4, 8), np.float32), np.zeros((4, 8), np.uint16))


if __name__ == "__main__":
    # Compile through the module as the program imports it: run as a script this file is `__main__`, and
    # Numba keys the cache by TrainState's class, so `__main__.TrainState` entries would never serve it.
    # Arguments: the feature dtypes to compile for (FEATURE_DTYPES' names; default all).
    import logging
    import sys
    from pipeline.heads import kernels
    logging.basicConfig(level=logging.INFO, format="%(message)s")      # this script's own process
    if unknown := set(sys.argv[1:]) - set(kernels.FEATURE_DTYPES):
        sys.exit(f"pipeline.heads.kernels: expected feature dtypes among {', '.join(kernels.FEATURE_DTYPES)}, "
                 f"got {' '.join(sorted(unknown))}")
    kernels.warm_up(sys.argv[1:])
    logging.getLogger("pipeline.heads.kernels").info("pipeline.heads.kernels: compiled")
