"""The heads validate their own parameters and inputs, scikit-learn's way; scikit-learn's own
estimator checks run on both."""
import numpy as np
import pytest
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import check_classifiers_train, parametrize_with_checks

from pipeline.heads.logreg import LogRegHead
from pipeline.heads.softmax import SoftmaxHead

@parametrize_with_checks([SoftmaxHead(), LogRegHead()])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_softmax_passes_the_training_check_from_either_start():
    """The default head (a zero start) passes scikit-learn's training check in its 40 Adam steps on the
    check's 300 rows (above); from Keras' Glorot-uniform start it takes more (the README's case for zeros):
    1,000 epochs at a constant rate, 3,000 with the cosine decay's half as large mean rate."""
    check_classifiers_train("SoftmaxHead", SoftmaxHead(init="glorot_uniform", epochs=1000, lr_schedule="constant"))
    with pytest.raises(AssertionError):
        check_classifiers_train("SoftmaxHead", SoftmaxHead(init="glorot_uniform"))


@pytest.mark.parametrize("est,needle", [
    (SoftmaxHead(dropout=-0.5), "'dropout' parameter of SoftmaxHead must be a float in the range [0.0, 1.0)"),
    (SoftmaxHead(dropout=1.0), "Got 1.0 instead"),
    (SoftmaxHead(lr=float("inf")), "'lr' parameter"),
    (SoftmaxHead(epochs=0), "'epochs' parameter"),
    (SoftmaxHead(seed=-1), "'seed' parameter"),
    (LogRegHead(C=0.0), "'C' parameter of LogRegHead"),
    (LogRegHead(max_iter=0), "'max_iter' parameter"),
])
def test_parameters_out_of_range_are_refused_in_fit(est, needle):
    X, y = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32), np.arange(20) % 2
    with pytest.raises(InvalidParameterError) as e:
        est.fit(X, y)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_float16_features_are_neither_copied_nor_widened_by_validation(monkeypatch):
    from pipeline.heads import validation
    X = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float16)
    X.flags.writeable = False                                  # as a mapped cache is
    seen = []
    real = validation.all_finite
    monkeypatch.setattr(validation, "all_finite", lambda a: seen.append(a) or real(a))
    SoftmaxHead(epochs=1).fit(X, np.arange(40) % 2)
    assert seen[0].dtype == np.float16 and np.shares_memory(seen[0], X)
    X2 = X.copy()
    X2[3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        SoftmaxHead(epochs=1).fit(X2, np.arange(40) % 2)


def test_the_finiteness_pass_is_skipped_only_where_scikit_learn_is_told_to_assume_finite(monkeypatch):
    """scikit-learn's `assume_finite` (the head commands set it for a verified cache's features) skips the
    pass over X; without it a NaN is refused, in fit and in predict_proba."""
    from sklearn import config_context
    from pipeline.heads import validation
    X, y = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32), np.arange(40) % 2
    scans = []
    real = validation.all_finite
    monkeypatch.setattr(validation, "all_finite", lambda a: scans.append(len(a)) or real(a))
    with config_context(assume_finite=True):
        head = SoftmaxHead(epochs=1).fit(X, y)
        head.predict_proba(X)
    assert scans == []
    head.predict_proba(X)
    assert scans == [40]
    bad = X.copy()
    bad[5, 2] = np.nan
    for call in (lambda: SoftmaxHead(epochs=1).fit(bad, y), lambda: head.predict_proba(bad),
                 lambda: LogRegHead().fit(bad, y)):
        with pytest.raises(ValueError, match="NaN or infinity"):
            call()
