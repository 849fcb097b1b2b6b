import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from pipeline.heads import kernels
from pipeline.heads.kernels import NOISE_LEVELS


def test_draws_are_uniform_and_independent():
    d = kernels.draws(12345, 200, 1001).astype(np.float64) / NOISE_LEVELS
    assert d.shape == (200, 1001)
    assert abs(d.mean() - 0.5) < 0.005 and abs(d.var() - 1 / 12) < 0.002
    for p in (0.2, 0.5, 0.9):
        assert abs((d >= p).mean() - (1 - p)) < 0.005
    assert abs(np.corrcoef(d[:, :-1].ravel(), d[:, 1:].ravel())[0, 1]) < 0.01      # neighbouring features
    assert abs(np.corrcoef(d[:-1].ravel(), d[1:].ravel())[0, 1]) < 0.01            # neighbouring rows
    assert np.array_equal(kernels.draws(12345, 3, 8), kernels.draws(12345, 3, 8))
    assert not np.array_equal(kernels.draws(12345, 3, 8), kernels.draws(12346, 3, 8))


def test_float16_widening_is_numpys_for_every_bit_pattern():
    """kernels.widen (integer arithmetic + a bit cast, as in the training kernels) gives numpy's
    float16 -> float32 value for all 65,536 patterns: zeros, subnormals, normals, infinities, NaN."""
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16).reshape(4, -1)
    out = np.full(bits.shape, 7.0, np.float32)
    kernels.widen(bits, np.array([3, 0, 2, 1]), out)
    want = bits.view(np.float16).astype(np.float32)[[3, 0, 2, 1]]
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(out), nan) and nan.sum() == 2 * 1023     # exponent 31, mantissa != 0, either sign
    assert np.array_equal(out[~nan].view(np.uint32), want[~nan].view(np.uint32))     # bit for bit, -0.0 too


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_column_stats_match_numpy_on_any_number_of_threads(dtype):
    rng = np.random.default_rng(1)
    X = (rng.normal(size=(101, 37)) * 50).astype(dtype)
    rows = np.sort(rng.choice(101, 61, replace=False))      # parts of 20, 20 and 21 rows: a partial row block
    Xk = X.view(np.uint16) if dtype == np.float16 else X
    sums = kernels.column_stats(Xk, rows, 3)
    sel = X[rows].astype(np.float64)
    np.testing.assert_allclose(sums.sum(0), [sel.sum(0), (sel ** 2).sum(0)], rtol=1e-12)
    for p, part in enumerate(np.array_split(sel, [20, 40])):   # each part's sums added row after row, exactly
        assert np.array_equal(sums[p], [np.add.accumulate(part)[-1], np.add.accumulate(part ** 2)[-1]])
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert np.array_equal(kernels.column_stats(Xk, rows, 3), sums)
    finally:
        numba.set_num_threads(before)


RATES = (0.25, 0.6)


def problem(D, B, seed=0, C=3):
    """Two dropout groups (rates 0.25 with 2 heads, 0.6 with 1), C classes, weights padded to KP (3
    classes: 6 rows, blocks of 2 outputs; 11: 22 rows, 4 blocks of 5 where WIDE_BLOCKS, then one of 2)."""
    rng = np.random.default_rng(seed)
    n_heads = np.array([2, 1])
    G, KP = 2, kernels.padded(2, C)
    N = max(50, B)
    X = rng.normal(size=(N, D)).astype(np.float32)
    idx, y = rng.choice(N, B, replace=False), rng.integers(0, C, N)
    W = rng.normal(scale=0.1, size=(G, KP, D)).astype(np.float32)
    b = rng.normal(scale=0.1, size=(G, KP)).astype(np.float32)
    W[1, C:], b[1, C:] = 0, 0                                      # group 1's padding rows
    thr = np.round(np.array(RATES) * NOISE_LEVELS).astype(np.uint16)
    return X, idx, y, W, b, thr, n_heads, C


def reference(X, idx, y, W, b, thr, n_heads, C, key):
    """NumPy: keep feature j of row i where its draw >= the group's threshold, scale by 1 / (1 - rate)."""
    draws = kernels.draws(key, len(idx), X.shape[1])
    gW, gb, loss = np.zeros_like(W), np.zeros_like(b), []
    for g in range(len(W)):
        s = NOISE_LEVELS / (NOISE_LEVELS - float(thr[g]))
        xm = X[idx] * (draws >= thr[g]) * s
        for h in range(n_heads[g]):
            r = slice(h * C, (h + 1) * C)
            z = xm @ W[g, r].T + b[g, r]
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            loss.append(-np.log(p[np.arange(len(idx)), y[idx]]).sum())
            p[np.arange(len(idx)), y[idx]] -= 1
            gW[g, r], gb[g, r] = p.T @ xm / len(idx), p.sum(0) / len(idx)
    return gW, gb, np.array(loss)


def run(by_rows, X, idx, y, W, b, thr, n_heads, C, key):
    """One step's gradient (summed over parts) and per-head stats, by rows or by feature chunks."""
    s = kernels.allocate(W.copy(), b.copy(), RATES, n_heads, C, np.zeros(W.shape[0] * W.shape[1]), len(idx), 1,
                         (0.9, 0.999, 1e-7))
    if s.by_rows != by_rows:     # these weights are small: force the split under test
        old = kernels.ROWS_KERNEL_BYTES
        kernels.ROWS_KERNEL_BYTES = -1 if not by_rows else 1 << 40
        try:
            s = kernels.allocate(W.copy(), b.copy(), RATES, n_heads, C, np.zeros(W.shape[0] * W.shape[1]), len(idx), 1,
                                 (0.9, 0.999, 1e-7))
        finally:
            kernels.ROWS_KERNEL_BYTES = old
    assert np.array_equal(s.thr, thr) and s.by_rows == by_rows
    Xr = X.view()
    Xr.flags.writeable = False
    kernels.train_step(Xr, idx, y[idx], key, s)
    return s.gW.sum(0), s.gb.sum(0), s.stats.sum(0)


@pytest.mark.parametrize("by_rows", [True, False])
@pytest.mark.parametrize("D,B,C", [(37, 10, 3), (1100, 9, 3), (1100, 9, 11),   # odd sizes: partial noise words, row blocks, chunks
                                   (1100, 1300, 11)])     # and several panels of rows (by rows: parts of 324-328 rows, panels of 296)
def test_step_gradients_match_numpy(by_rows, D, B, C):
    args = problem(D, B, C=C)
    gW, gb, stats = run(by_rows, *args, key=987654321)
    rW, rb, rloss = reference(*args, key=987654321)
    np.testing.assert_allclose(gW, rW, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gb, rb, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([stats[0, 0, 0], stats[0, 1, 0], stats[1, 0, 0]], rloss, rtol=1e-4)
    assert np.all(gW[1, C:] == 0) and np.all(gb[1, C:] == 0)         # padding rows stay untouched


@numba.njit(fastmath=True)
def _backward(xm, dz, kp, n, gW, rows, wide):
    kernels._backward_rows(xm, 2, rows, dz, 1, kp, 3, n, gW, wide)


@pytest.mark.parametrize("kp,n", [(10, 128), (22, 1100), (40, 64), (6, 200)])
def test_the_panel_gradient_adds_the_same_sums_as_the_row_blocks(kp, n):
    """_gradient_panel (20 vector sums carried over every row, LLVM IR) against _backward_block alone (4 rows
    at a time): the same rows in the same order, so the same weights to the bit where the CPU fuses multiply
    and add (all this project runs on); columns past the last 64 and outputs past the last 10 go by blocks."""
    rng = np.random.default_rng(4)
    rows = 24
    xm = rng.normal(size=(rows + 5, n)).astype(np.float32)
    dz = rng.normal(size=(rows + 3, kp)).astype(np.float32)
    gW = rng.normal(size=(kp + 1, n + 9)).astype(np.float32)
    panel, blocks = gW.copy(), gW.copy()
    _backward(xm, dz, kp, n, panel, rows, True)
    _backward(xm, dz, kp, n, blocks, rows, False)
    want = gW.astype(np.float64)
    want[:kp, 3:3 + n] += dz[1:1 + rows].T.astype(np.float64) @ xm[2:2 + rows]
    np.testing.assert_allclose(panel, want, rtol=1e-5, atol=1e-5)
    outside = np.ones(gW.shape, bool)
    outside[:kp, 3:3 + n] = False
    assert np.array_equal(panel[outside], gW[outside]) and np.array_equal(blocks[outside], gW[outside])   # nothing else written
    if kernels._FEATURES.get("fma", False):
        assert np.array_equal(panel, blocks)


@pytest.mark.parametrize("by_rows", [True, False])
def test_results_do_not_depend_on_the_number_of_threads(by_rows):
    args = problem(1100, 37)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run(by_rows, *args, key=5)
    finally:
        numba.set_num_threads(before)
    many = run(by_rows, *args, key=5)
    assert all(np.array_equal(a, b) for a, b in zip(one, many))


@pytest.mark.parametrize("l2", [0.0, 0.05])
def test_adam_matches_keras_adam(l2):
    """kernels.adam (gradient given in two parts, an L2 penalty per row) against keras.optimizers.Adam on
    the gradient plus that of keras.regularizers.L2(l2) (l2 * sum(w^2): 2 * l2 * w), step by step."""
    import keras
    from pipeline.heads.joint import BETA_1, BETA_2, EPSILON
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(6, 4)).astype(np.float32)
    assert np.isclose(float(keras.regularizers.L2(0.05)(w0)), 0.05 * np.square(w0.astype(np.float64)).sum(), rtol=1e-5)
    grads = [rng.normal(size=(6, 4)).astype(np.float32) for _ in range(5)]
    mine, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    var, kopt = keras.Variable(w0.copy()), keras.optimizers.Adam(3e-3)
    for t, g in enumerate(grads, 1):
        alpha = np.full(6, 3e-3 * np.sqrt(1 - BETA_2 ** t) / (1 - BETA_1 ** t), np.float32)
        kernels.adam(mine, np.stack([g * 0.25, g * 0.75]), m, v, alpha, np.full(6, 2 * l2, np.float32),
                     np.float32(1 - BETA_1), np.float32(1 - BETA_2), np.float32(EPSILON))
        kopt.apply([keras.ops.convert_to_tensor(g + 2 * l2 * np.asarray(var))], [var])
    np.testing.assert_allclose(mine, np.asarray(var), rtol=1e-5, atol=1e-7)


def test_make_kernels_compiles_what_a_later_training_loads(tmp_path):
    """`make kernels` (python -m pipeline.heads.kernels) fills Numba's cache with the signatures training
    and evaluation use, so a fresh process compiles nothing: float32 and float16 features, standardised
    or not."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-m", "pipeline.heads.kernels"], env=env, check=True, capture_output=True)
    train = ("import numpy as np\n"
             "from pipeline.heads.softmax import SoftmaxHead\n"
             "from pipeline.heads.kernels import affine, column_stats, train_epoch\n"
             "X, y = np.random.default_rng(0).random((40, 16), np.float32), np.arange(40) % 3\n"
             "for dtype in (np.float32, np.float16):\n"
             "    for standardize in (True, False):\n"
             "        SoftmaxHead(epochs=1, batch_size=8, standardize=standardize).fit(X.astype(dtype), y).predict(X.astype(dtype))\n"
             "for f in (train_epoch, column_stats, affine):\n"
             "    print(sum(f.stats.cache_misses.values()), sum(f.stats.cache_hits.values()))")
    out = subprocess.run([sys.executable, "-c", train], env=env, check=True, capture_output=True, text=True).stdout
    # no compile; both feature dtypes loaded from the cache
    assert out.split() == ["0", "2", "0", "2", "0", "2"]


def test_the_integer_widening_for_cpus_without_f16c_is_exact_too():
    """kernels._half_by_bits (used where LLVM has no float16 conversion instruction) for every pattern."""
    from numba import njit

    @njit
    def widen_by_bits(bits, out):
        for j in range(bits.shape[0]):
            out[j] = kernels._half_by_bits(bits[j])
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    out = np.empty(65536, np.float32)
    widen_by_bits(bits, out)
    want = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(out), nan)
    assert np.array_equal(out[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_narrowing_to_float16_is_numpys():
    """kernels.narrow (float32 -> float16, ties to even) bit for bit as numpy's astype: every float16
    value, the midpoints between neighbours (ties), overflow, subnormals, infinities, random values."""
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)].astype(np.float32)
    f = np.sort(finite)
    mids = (f[:-1].astype(np.float64) + f[1:]) / 2
    rng = np.random.default_rng(0)
    x = np.concatenate([finite, mids.astype(np.float32), np.nextafter(mids.astype(np.float32), np.float32(np.inf)),
                        [np.inf, -np.inf, 65520.0, 65519.99, 1e6, -1e6, 1e-8, -1e-8, 2.0 ** -25, 2.0 ** -24 * 1.5],
                        rng.normal(size=20000) * 10.0 ** rng.integers(-9, 6, 20000)]).astype(np.float32)
    x = x[:len(x) // 8 * 8].reshape(-1, 8)
    out = np.zeros(x.shape, np.uint16)
    kernels.narrow(x, out)
    assert np.array_equal(out, x.astype(np.float16).view(np.uint16))
    nan = np.full((1, 8), np.nan, np.float32)
    kernels.narrow(nan, out[:1])
    assert np.isnan(out[:1].view(np.float16)).all()


@pytest.mark.parametrize("kp", [6, 12])      # blocks of 2 outputs; of 5 where WIDE_BLOCKS, then 2
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_affine_is_the_matrix_product(dtype, kp):
    """kernels.affine (inference): X @ W.T + b over several column chunks, the last one partial, and a
    partial block of rows; float16 widened as numpy widens it."""
    rng = np.random.default_rng(3)
    n, d = 2 * kernels.AFFINE_ROWS + 5, 2 * kernels.CHUNK + 77
    X = rng.normal(size=(n, d)).astype(dtype)
    W, b = rng.normal(size=(kp, d)).astype(np.float32), rng.normal(size=kp).astype(np.float32)
    out = np.empty((n, kp), np.float32)
    kernels.affine(X.view(np.uint16) if dtype == np.float16 else X, W, b, out)
    np.testing.assert_allclose(out, X.astype(np.float64) @ W.T.astype(np.float64) + b, rtol=1e-4, atol=1e-3)


def test_the_split_follows_the_l2_cache_linux_describes(tmp_path, monkeypatch):
    """Heads whose weights fit in half a core's L2 train by rows; the L2 read from a sysfs-like tree."""
    for index, level, size in (("index0", "1", "48K"), ("index2", "2", "2048K"), ("index3", "3", "491520K")):
        os.makedirs(tmp_path / "cache" / index)
        (tmp_path / "cache" / index / "level").write_text(level + "\n")
        (tmp_path / "cache" / index / "size").write_text(size + "\n")
    assert kernels.l2_cache_bytes(str(tmp_path)) == 2 << 20
    (tmp_path / "cache" / "index2" / "size").write_text("1M\n")
    assert kernels.l2_cache_bytes(str(tmp_path)) == 1 << 20
    assert kernels.l2_cache_bytes(str(tmp_path / "nowhere"), default=123) == 123
    (tmp_path / "cache" / "index2" / "size").write_text("lots\n")
    assert kernels.l2_cache_bytes(str(tmp_path), default=123) == 123

    def split(d):
        W = np.zeros((1, 10, d), np.float32)
        return kernels.allocate(W, np.zeros((1, 10), np.float32), [0.5], [1], 10, np.zeros(10), 8, 1,
                                (0.9, 0.999, 1e-7)).by_rows
    monkeypatch.setattr(kernels, "ROWS_KERNEL_BYTES", None)
    monkeypatch.setattr(kernels, "l2_cache_bytes", lambda: 2 << 20)
    assert split(25_088) and not split(26_215)           # 1,003,520 and 1,048,600 bytes of weights against 1 MiB
    monkeypatch.setattr(kernels, "l2_cache_bytes", lambda: 1 << 20)
    assert split(10_752) and not split(25_088)
