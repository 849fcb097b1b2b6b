"""linear: statistics and logits on float32 and float16 features, in blocks, without a float32 copy."""
import numpy as np
import pytest

from pipeline.heads import linear


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_logits_and_statistics_are_numpys(dtype, monkeypatch):
    monkeypatch.setattr(linear, "INFER_BYTES", 4 * 37 * 5)            # 5 rows a block: blocks and a remainder
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(23, 37)) * 3 + 1).astype(dtype)
    X[:, 4] = 2                                                        # constant: scale 1
    rows = np.array([1, 3, 4, 8, 9, 15, 22])
    mean, scale = linear.feature_stats(X, rows)
    Xs = X[rows].astype(np.float64)
    np.testing.assert_allclose(mean, Xs.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.where(Xs.std(0) > 1e-6, scale, 1), np.where(Xs.std(0) > 1e-6, Xs.std(0), 1), rtol=1e-4)
    assert scale[4] == 1
    W, b = rng.normal(size=(37, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    want = ((X.astype(np.float64) - mean) / scale) @ W + b
    np.testing.assert_allclose(linear.logits(X, W, b, mean, scale), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(linear.logits(X, W, b), X.astype(np.float64) @ W + b, rtol=1e-4, atol=1e-4)
    view = linear.kernel_view(X)
    assert view.dtype == (np.uint16 if dtype == np.float16 else np.float32) and not view.flags.writeable
