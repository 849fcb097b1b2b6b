import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import log_loss as sklearn_log_loss

from pipeline.heads.scores import log_loss


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n, c, spread", [(5000, 10, 3.0), (997, 10, 40.0), (1, 2, 1.0), (333, 100, 8.0)])
def test_log_loss_is_scikit_learns_to_the_bit(n, c, spread, dtype):
    rng = np.random.default_rng(n + c)
    proba = softmax(spread * rng.standard_normal((n, c)), axis=1).astype(dtype)   # spread 40: probabilities of 0 and 1
    y = rng.integers(0, c, n)
    assert log_loss(y, proba) == sklearn_log_loss(y, proba, labels=np.arange(c))


def test_log_loss_clips_certainty():
    proba = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert log_loss([1, 1], proba) == pytest.approx(-np.log(np.finfo(float).eps) / 2)
    assert np.isfinite(log_loss([1, 0], proba))
