"""Logistic regression on cached features: StandardScaler + LogisticRegression (scikit-learn), as an
estimator that knows every class of the cache, also one absent from its training rows.

C="auto" is the published linear-probe protocol (Kornblith et al. 2019; CLIP; DINOv2's
log_regression): the L2 strength chosen on the validation split over a log grid (coarse, then a
finer step around the best; each fit warm-started from the previous one, strong to weak), then the
model refit on train + validation with the chosen C. The coarse path stops once PATH_PATIENCE steps
have not beaten the best. The test split plays no part in the choice.
"""
from __future__ import annotations

import copy
import logging
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import log_loss
from sklearn.utils.validation import check_is_fitted

from .config import DEFAULTS
from .linear import float32_blocks, normalized
from .normalize import check_blocks
from .validation import LOGREG, check_fit, check_inputs

log = logging.getLogger(__name__)
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 13))   # half-decade steps, 1e-4 .. 1e2
C_FINE = 10 ** 0.25                                         # then the quarter-decades around the best
SEARCH_TOL = 1e-3       # the search's fits stop at this gradient tolerance (the refit at scikit-learn's 1e-4):
                        # 4-6x fewer iterations; at full scale the chosen model tests the same (85.85 vs 85.80%)
SAY_FIT_VALUES = 10 ** 8   # a fit on this many feature values or more says so first (45,000 x 10,752 took 1-3 min)
PATH_PATIENCE = 3       # the coarse path stops after this many steps without a better validation score:
                        # past the best, weaker regularisation only overfits more (and its fits are the slowest)


def search_settings() -> dict:
    """What C="auto"'s choice depends on besides the data: a study keys its rows by it."""
    return {"grid": C_GRID, "fine": C_FINE, "tol": SEARCH_TOL, "patience": PATH_PATIENCE}


def standardized(parts, scaler=None):
    """(Z, scaler): the rows of parts [(X, rows or None for all), ...] one after another as a float32
    array standardised by `scaler` (default: a StandardScaler fitted on those rows with partial_fit),
    filled block by block: no other full-size copy (StandardScaler.fit on the whole float32 array makes
    several), float16 widened on the fly."""
    from sklearn.preprocessing import StandardScaler
    parts = [(X, np.arange(len(X)) if rows is None else np.asarray(rows)) for X, rows in parts]
    if scaler is None:
        scaler = StandardScaler()
        for X, rows in parts:
            for _, block in float32_blocks(X, rows=rows):
                scaler.partial_fit(block)
    Z = np.empty((sum(len(rows) for _, rows in parts), parts[0][0].shape[1]), np.float32)
    at = 0
    for X, rows in parts:
        for a, block in float32_blocks(X, rows=rows):
            z = Z[at + a:at + a + len(block)]
            z[...] = block
            z[...] = scaler.transform(z, copy=False)     # in place (then a copy onto itself) or not: the same
        at += len(rows)
    return Z, scaler


class LogRegHead(ClassifierMixin, BaseEstimator):
    """C: inverse L2 strength, or "auto" (chosen on X_val over `C_GRID`, then refit on train +
    validation). classes: the columns of predict_proba (default: the classes in y). normalize: "none", "l2"
    or "sqrt-l2" per layer block of `blocks` (widths; None: one block) before the scaler. Fitted: classes_,
    model_ (the scikit-learn pipeline), C_ (the C used), selection_ (C="auto": the grid, the validation
    curve, the choice), val_proba_ (C="auto": validation probabilities before the refit), before_refit_
    (C="auto": the head as it was chosen, fitted on X[rows] only; else None), history_, n_iter_, train_seconds_."""

    _parameter_constraints = LOGREG

    def __init__(self, C=DEFAULTS["C"], max_iter=DEFAULTS["max_iter"], seed=DEFAULTS["seed"], classes=None,
                 normalize=DEFAULTS["normalize"], blocks=None):
        self.C, self.max_iter, self.seed, self.classes = C, max_iter, seed, classes
        self.normalize, self.blocks = normalize, blocks       # normalize.py: per layer block (None: one block)

    def fit(self, X, y, X_val=None, y_val=None, rows=None, refit_rows=None):
        """Train on X[rows] (default all rows). C="auto": choose C on (X_val, y_val), then refit on
        X[refit_rows] (default: X[rows] and X_val), e.g. every view of the train and validation images."""
        X, y, X_val, y_val = check_fit(self, X, y, X_val, y_val)
        y = np.asarray(y)
        self.classes_ = np.unique((y if rows is None else y[rows]) if self.classes is None else self.classes)
        t = time.perf_counter()
        self.blocks_ = check_blocks(self.blocks, X.shape[1])
        X = normalized(X, self.blocks_, self.normalize)       # every row (rows index X), and the validation rows
        X_val = None if X_val is None else normalized(X_val, self.blocks_, self.normalize)
        rows = np.arange(len(X)) if rows is None else np.asarray(rows)
        start, self.before_refit_ = None, None
        if self.C == "auto":
            if X_val is None or not len(X_val):
                raise ValueError("C='auto' chooses C on validation data; pass X_val and y_val (--val-fraction > 0)")
            self.C_, self.selection_, self.val_proba_, chosen = self._select(X, y, rows, X_val, np.asarray(y_val))
            self.before_refit_ = copy.copy(self).set_params(C=self.C_)      # the head as chosen: the refit replaces
            self.before_refit_.model_ = chosen                              # model_, never mutates it
            start = self.before_refit_._end()                               # the refit starts where it ended
            if refit_rows is None:
                parts, yr = [(X, rows), (X_val, None)], np.concatenate([y[rows], y_val])
            else:
                parts, yr = [(X, np.asarray(refit_rows))], y[np.asarray(refit_rows)]
        else:
            self.C_ = float(self.C)
            parts, yr = [(X, rows)], y[rows]
        Z, scaler = standardized(parts)
        self.model_ = self._fit(Z, yr, scaler, self.C_, start)
        self.train_seconds_ = time.perf_counter() - t
        self.n_iter_ = self.model_[-1].n_iter_
        row = {"epoch": int(self.n_iter_.max()), **self._point("train", yr, self._proba(self.model_[-1], Z))}
        del Z
        if X_val is not None and len(X_val):
            val_proba = self.val_proba_ if self.C == "auto" else self._proba(self.model_, X_val)
            row.update(self._point("val", y_val, val_proba))
        self.history_ = [row]
        return self

    def refit_on(self, X, y, rows=None) -> "LogRegHead":
        """The protocol's second half for this head, fitted and chosen on validation: a new head, its C trained
        again on X[rows] (e.g. every view of train + validation), starting where this one ended, as C="auto"
        refits. Its before_refit_ is this head and its history_ this head's (validation is scored as it was chosen)."""
        check_is_fitted(self)
        X, y = check_inputs(self, X, y, reset=False)
        t, rows = time.perf_counter(), np.arange(len(X)) if rows is None else np.asarray(rows)
        head = copy.copy(self)
        head.val_proba_, head.selection_, head.before_refit_ = None, None, self
        Z, scaler = standardized([(normalized(X, self.blocks_, self.normalize), rows)])
        head.model_ = self._fit(Z, np.asarray(y)[rows], scaler, self.C_, self._end())
        head.n_iter_, head.train_seconds_ = head.model_[-1].n_iter_, self.train_seconds_ + time.perf_counter() - t
        return head

    def _end(self) -> tuple:
        """(coef, intercept) where this fitted head's optimisation ended: a refit's warm start."""
        return self.model_[-1].coef_.copy(), self.model_[-1].intercept_.copy()

    def _fit(self, Z, y, scaler, C, start=None):
        """LogisticRegression(C) on Z (standardised by the fitted `scaler`), warm-started from `start`
        (coef, intercept) if given; the model is the pipeline of the two."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        lr = LogisticRegression(C=C, max_iter=self.max_iter, random_state=self.seed, warm_start=start is not None)
        if start is not None:
            lr.coef_, lr.intercept_ = start
        if Z.size >= SAY_FIT_VALUES:               # scikit-learn's fit says nothing until it ends
            log.info(f"logreg C={C:.3g}: fitting on {Z.shape[0]:,} rows x {Z.shape[1]:,} features (scikit-learn's "
                     f"lbfgs, at most {self.max_iter} iterations{', from the last fit' if start is not None else ''})")
        lr.fit(Z, y)
        return Pipeline([("standardscaler", scaler), ("logisticregression", lr)])

    def _select(self, X, y, rows, X_val, y_val):
        """(chosen C, the selection record, validation probabilities at the chosen C, its model: the
        pipeline of the scaler and the fit), trained on X[rows]."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        Z, scaler = standardized([(X, rows)])
        y = y[rows]
        Zv, _ = standardized([(X_val, None)], scaler)
        lr = LogisticRegression(max_iter=self.max_iter, random_state=self.seed, warm_start=True)
        curve = {}

        def score(c):
            t = time.perf_counter()
            lr.set_params(C=c, tol=SEARCH_TOL).fit(Z, y)   # n_iter 0: the previous C's solution meets the
                                                          # tolerance at this C too (a tie, the smaller C wins)
            p = self._columns(lr.predict_proba(Zv), lr.classes_)
            curve[c] = {"C": c, "val_accuracy": float((self.classes_[p.argmax(1)] == y_val).mean()),
                        "val_loss": float(log_loss(y_val, p, labels=self.classes_)), "n_iter": int(lr.n_iter_.max()),
                        "seconds": round(time.perf_counter() - t, 4), "proba": p,
                        "model": copy.deepcopy(lr)}
            r = curve[c]
            log.info(f"logreg C={c:.3g}: validation {r['val_accuracy']:.2%} (loss {r['val_loss']:.4f}; "
                     f"{r['n_iter']} iterations, {r['seconds']:.1f} s)")

        def best():
            return max(curve.values(), key=lambda r: (r["val_accuracy"], -r["val_loss"]))["C"]
        for i, c in enumerate(C_GRID):            # strong to weak: each fit starts where the last ended
            score(c)
            if i - C_GRID.index(best()) >= PATH_PATIENCE:
                break
        coarse = best()
        for c in (coarse / C_FINE, coarse * C_FINE):
            lr.coef_, lr.intercept_ = curve[coarse]["model"].coef_.copy(), curve[coarse]["model"].intercept_.copy()
            score(c)
        chosen = best()
        record = {"protocol": "C chosen on validation, refit on train + validation", "grid": sorted(curve),
                  "curve": [{k: v for k, v in curve[c].items() if k not in ("proba", "model")} for c in sorted(curve)],
                  "chosen_C": chosen, "coarse_C": coarse, "path_patience": PATH_PATIENCE, "search_tol": SEARCH_TOL,
                  "seconds_per_fit": round(float(np.mean([r["seconds"] for r in curve.values()])), 4)}
        model = Pipeline([("standardscaler", scaler), ("logisticregression", curve[chosen]["model"])])
        return chosen, record, curve[chosen]["proba"], model

    def _columns(self, p, fitted_classes):
        """Probabilities with a column per class of classes_ (0 for a class absent from training)."""
        out = np.zeros((len(p), len(self.classes_)), np.float64)
        out[:, np.searchsorted(self.classes_, fitted_classes)] = p
        return out / out.sum(1, keepdims=True)     # float32 inputs give float32 sums: exact in float64

    def _point(self, split, y, p):
        return {f"{split}_loss": log_loss(y, p, labels=self.classes_),
                f"{split}_accuracy": float((self.classes_[p.argmax(1)] == np.asarray(y)).mean())}

    def _proba(self, model, X):
        """`model`'s probabilities (the pipeline, or its last step for rows already standardised) of
        fit's own rows, already through the normalize step, in blocks of rows."""
        out = np.empty((len(X), len(self.classes_)))
        for a, block in float32_blocks(X):
            out[a:a + len(block)] = self._columns(model.predict_proba(block), model.classes_)
        return out

    def predict_proba(self, X) -> np.ndarray:
        """N x C probabilities, columns in the order of classes_ (0 for a class absent from training)."""
        check_is_fitted(self)
        X = check_inputs(self, X, reset=False)
        out = np.empty((len(X), len(self.classes_)))
        for a, block in float32_blocks(X, self.normalize, self.blocks_):    # bounded memory, float16 widened fast
            out[a:a + len(block)] = self._columns(self.model_.predict_proba(block), self.model_.classes_)
        return out

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
        out = {"kernel": kernel, "bias": bias, "mean": scaler.mean_, "variance": scaler.scale_ ** 2}
        if self.normalize != "none":
            out.update(normalize=self.normalize, blocks=self.blocks_)
        return out
