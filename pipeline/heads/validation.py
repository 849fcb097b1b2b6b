"""The heads' one validation place, scikit-learn's way. Parameter ranges (declared once, config.PARAMS) as `_parameter_constraints`
(checked by `BaseEstimator._validate_params` in `fit`), so a Python user gets the same one-line
refusal as the CLI ("The 'dropout' parameter of SoftmaxHead must be a float in the range [0.0, 1.0).
Got -0.5 instead."); inputs through `validate_data` (2-D, no sparse or complex data, as many labels as
rows, the fitted width at predict time, classification targets) with finiteness checked from the
raw bits (finite.py: a mapped float16 cache is neither copied nor widened), unless scikit-learn's
`assume_finite` is set: the head commands set it (TrainingData.checked) for features their cache's
load has checked already, so a head never scans a verified cache again.
"""
from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn import get_config
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from ..finite import all_finite
from .config import HEAD_PARAMS, PARAMS

CLASSES = ["array-like", None]


def constraints(names) -> dict:
    """scikit-learn's `_parameter_constraints` for these parameters, from their one declaration
    (config.PARAMS): a float range stays finite (inf is outside it), "auto" where it is a value."""
    out = {}
    for name in names:
        p = PARAMS[name]
        if p.kind is bool:
            c = ["boolean"]
        elif p.kind is str:
            c = [StrOptions(set(p.choices))]
        elif p.kind is int:
            c = [Interval(Integral, p.low, p.high, closed=p.closed)]
        else:
            c = [Interval(Real, -np.inf if p.low is None else p.low, np.inf if p.high is None else p.high,
                          closed=p.closed)]
        out[name] = c + ([StrOptions({"auto"})] if p.auto else []) + ([None] if p.optional else [])
    return out


SOFTMAX = {**constraints(HEAD_PARAMS["softmax"] + ("early_stopping", "patience", "seed")), "classes": CLASSES,
           "blocks": CLASSES}
LOGREG = {**constraints(HEAD_PARAMS["logreg"] + ("seed",)), "classes": CLASSES, "blocks": CLASSES}


def check_inputs(est, X, y="no_validation", reset: bool = True):
    """X, or (X, y) when y is given (None included: fit requires it), as the estimator takes them:
    float32 or float16 kept as they are (no copy of a mapped cache), anything else as float32;
    ValueError/TypeError naming what is wrong."""
    kw = {"reset": reset, "dtype": (np.float32, np.float16), "ensure_all_finite": False}
    only_x = isinstance(y, str) and y == "no_validation"
    out = validate_data(est, X, y, **kw)
    X, y = (out, None) if only_x else out
    if not only_x:
        check_classification_targets(y)
    if not get_config()["assume_finite"] and not all_finite(X):
        raise ValueError(f"Input X contains NaN or infinity; {type(est).__name__} needs finite features")
    return X if only_x else (X, y)


def check_fit(est, X, y, X_val=None, y_val=None):
    """What `fit` starts with: the parameters checked, then the inputs (an empty validation split is none)."""
    est._validate_params()
    X, y = check_inputs(est, X, y)
    if X_val is not None and len(X_val) == 0:
        X_val = y_val = None
    if X_val is not None:
        X_val = check_inputs(est, X_val, reset=False)
    return X, y, X_val, y_val
