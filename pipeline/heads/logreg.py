"""Logistic regression on cached features: StandardScaler + LogisticRegression (scikit-learn), as an
estimator that knows every class of the cache, also one absent from its training rows."""
from __future__ import annotations

import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import log_loss

from sklearn.utils.validation import check_is_fitted

from .validation import LOGREG, check_inputs


class LogRegHead(ClassifierMixin, BaseEstimator):
    """classes: the columns of predict_proba (default: the classes in y). Fitted: classes_, model_
    (the scikit-learn pipeline), history_ (one row: iterations, train and val metrics), train_seconds_."""

    _parameter_constraints = LOGREG

    def __init__(self, C=1.0, max_iter=200, seed=0, classes=None):
        self.C, self.max_iter, self.seed, self.classes = C, max_iter, seed, classes

    def fit(self, X, y, X_val=None, y_val=None, rows=None):
        self._validate_params()
        X, y = check_inputs(self, X, y)
        if X_val is not None:
            X_val = check_inputs(self, X_val, reset=False)
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        y = np.asarray(y)
        if rows is not None:
            X, y = X[rows], y[rows]
        X = np.asarray(X, np.float32)
        self.classes_ = np.unique(y if self.classes is None else self.classes)
        t = time.perf_counter()
        self.model_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter,
                                                                         random_state=self.seed))
        self.model_.fit(X, y)
        self.train_seconds_ = time.perf_counter() - t
        self.n_iter_ = self.model_[-1].n_iter_
        row = {"epoch": int(self.n_iter_.max()), **self._point("train", X, y)}
        if X_val is not None and len(X_val):
            row.update(self._point("val", X_val, y_val))
        self.history_ = [row]
        return self

    def _point(self, split, X, y):
        p = self.predict_proba(X)
        return {f"{split}_loss": log_loss(y, p, labels=self.classes_),
                f"{split}_accuracy": float((self.classes_[p.argmax(1)] == np.asarray(y)).mean())}

    def predict_proba(self, X) -> np.ndarray:
        """N x C probabilities, columns in the order of classes_ (0 for a class absent from training)."""
        check_is_fitted(self)
        X = check_inputs(self, X, reset=False)
        p = self.model_.predict_proba(np.asarray(X, np.float32))
        out = np.zeros((len(X), len(self.classes_)), np.float64)
        out[:, np.searchsorted(self.classes_, self.model_.classes_)] = p
        return out / out.sum(1, keepdims=True)     # float32 inputs give float32 sums: exact in float64

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)           # checks it is fitted first
        return self.classes_[proba.argmax(1)]

    def head_file(self) -> dict:
        """The fitted model as a softmax head over classes_ (write_head's arguments): the scaler as
        standardisation, the coefficients as a Dense kernel with a column per class; a class absent
        from training gets bias -1e4 (probability 0), so a head always means the classes it says."""
        scaler, lr = self.model_[0], self.model_[-1]
        coef, intercept = lr.coef_, lr.intercept_
        if coef.shape[0] == 1:                            # binary: softmax([-z/2, z/2]) == sigmoid(z)
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        cols = np.searchsorted(self.classes_, lr.classes_)
        kernel = np.zeros((coef.shape[1], len(self.classes_)), np.float32)
        bias = np.full(len(self.classes_), -1e4, np.float32)
        kernel[:, cols], bias[cols] = coef.T, intercept
        return {"kernel": kernel, "bias": bias, "mean": scaler.mean_, "variance": scaler.scale_ ** 2}
