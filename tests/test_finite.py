"""inf and NaN found from the raw bits, for every float width, in blocks."""
import numpy as np
import pytest

from pipeline import finite


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_each_width(dtype, monkeypatch):
    a = np.linspace(-1e3, 1e3, 5000).astype(dtype).reshape(100, 50)
    assert finite.all_finite(a) and finite.block_finite(a)
    monkeypatch.setattr(finite, "BLOCK_BYTES", 64)                 # many blocks: the last one counts too
    for bad in (np.inf, -np.inf, np.nan):
        b = a.copy()
        b[-1, -1] = bad
        assert not finite.all_finite(b)
    assert finite.block_finite(np.arange(5)) and finite.all_finite(np.finfo(dtype).max * np.ones((3, 2), dtype))
