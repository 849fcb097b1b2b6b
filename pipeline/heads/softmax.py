"""The notebook's head on cached features, Dropout(p) -> Dense(C, softmax) trained with Adam, as a
scikit-learn estimator (`SoftmaxHead`): trained as a JointSoftmax of one head (joint.py: how, and
Keras' rules it follows), or by Keras' train step with a hidden layer (hidden.py); its l2 chosen on
validation and the head refit on train + validation when asked.
"""
from __future__ import annotations

import copy
import logging

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from .config import DEFAULTS, refit_for
from .joint import JointSoftmax
from .linear import logits
from .normalize import check_blocks
from .scores import log_loss
from .validation import SOFTMAX, check_fit, check_inputs

log = logging.getLogger(__name__)

L2_GRID = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 0.3, 1.0)   # l2="auto": the penalties tried, all at once


def search_settings() -> dict:
    """What l2="auto"'s choice depends on besides the data: a study keys its rows by it."""
    return {"grid": L2_GRID}


class SoftmaxHead(ClassifierMixin, BaseEstimator):
    """Dropout(dropout) -> Dense(C, softmax, kernel_regularizer=L2(l2), kernel_initializer=init), Adam(lr)
    ("auto": by the features' width, config.lr_for), its rate constant or CosineDecay(lr, every step)
    (lr_schedule), `epochs` passes in batches of `batch_size` ("auto": 20, more on few rows so that a run
    makes at least 1,000 steps, at most 200: config.epochs_for).
    l2 may be "auto" (chosen on X_val, then refit on train + validation); refit: train on X, score on X_val,
    then train the same head again on train + validation (as l2="auto" does); "auto": where the labelled rows
    (X[rows] and X_val) are few (config.refit_for) and there is validation data; early_stopping: stop when the
    validation loss has not improved for `patience` epochs and keep the best epoch's weights;
    normalize: "none", "l2" or "sqrt-l2" per layer block of `blocks` (widths; None: one block), first;
    standardize: scale features by the training rows' mean and standard deviation (inside the saved
    head); hidden: H > 0 puts Dense(H, relu) -> Dropout(dropout) before the softmax (hidden.py: trained by
    Keras' train step; hidden_kernel_/hidden_bias_ fitted, coef_ then H x C); seed: initial weights and dropout noise; classes: every class the head must know (its
    columns), also one absent from the training rows (default: those in y). Ranges: heads/config.PARAMS. Fitted: classes_, coef_ (D x C), intercept_, mean_/scale_ (standardize),
    epochs_ (the passes it made: epochs, or what "auto" came to), lr_ (the rate it trained with: lr, or what
    "auto" came to: config.lr_for), history_ (per epoch), best_epoch_
    (early_stopping keeps its weights), train_seconds_; after a refit
    (l2="auto", refit=True) before_refit_: the head as it was chosen, fitted on X[rows] only (None without a refit)."""

    _parameter_constraints = SOFTMAX       # checked in fit, scikit-learn's way: one line naming the parameter

    def __init__(self, dropout=DEFAULTS["dropout"], lr=DEFAULTS["lr"], epochs=DEFAULTS["epochs"],
                 batch_size=DEFAULTS["batch_size"], early_stopping=DEFAULTS["early_stopping"],
                 patience=DEFAULTS["patience"], standardize=DEFAULTS["standardize"], seed=DEFAULTS["seed"],
                 classes=None, l2=DEFAULTS["l2"], normalize=DEFAULTS["normalize"], blocks=None, init=DEFAULTS["init"],
                 lr_schedule=DEFAULTS["lr_schedule"], hidden=DEFAULTS["hidden"], refit=DEFAULTS["refit"]):
        self.dropout, self.lr, self.epochs, self.batch_size = dropout, lr, epochs, batch_size
        self.early_stopping, self.patience, self.standardize = early_stopping, patience, standardize
        self.seed, self.classes, self.l2, self.normalize, self.blocks = seed, classes, l2, normalize, blocks
        self.init, self.lr_schedule, self.hidden, self.refit = init, lr_schedule, hidden, refit

    def fit(self, X, y, X_val=None, y_val=None, rows=None, refit_rows=None):
        """Train on X[rows] (default all rows). l2="auto": every L2_GRID penalty trained at once, the
        best on (X_val, y_val) chosen, then one head refit with it on X[refit_rows] (default: X[rows]
        and X_val), for the epochs it was chosen at; refit=True: the same with the one penalty given.
        After a refit, val_proba_ holds the probabilities on X_val before it."""
        X, y, X_val, y_val = check_fit(self, X, y, X_val, y_val)
        if self.classes is not None:
            classes = np.unique(self.classes)
        else:
            classes = np.unique(y if rows is None else np.asarray(y)[rows])
        encode = lambda v: _encode(classes, v)  # noqa: E731
        yk, yv = encode(y), None if y_val is None else encode(y_val)
        has_val = X_val is not None and len(X_val) > 0
        asked = self.l2 == "auto" or self.refit != "auto" and bool(self.refit)      # a refit whatever the rows
        if asked and not has_val:
            raise ValueError(("l2='auto' chooses the penalty" if self.l2 == "auto" else "refit=True scores the head")
                             + " on validation data; pass X_val and y_val (--val-fraction > 0)")
        refit = asked or has_val and refit_for(self.refit, (len(X) if rows is None else len(rows)) + len(X_val))
        if self.hidden and self.l2 == "auto":
            raise ValueError("l2='auto' trains linear heads only; pass a number for l2 with hidden > 0, or hidden=0")
        self.classes_, self.val_proba_, self.selection_, self.before_refit_ = classes, None, None, None
        if not refit:
            self._fit_once(X, yk, X_val, yv, len(classes), rows, self.l2, self.epochs, self.early_stopping)
            return self
        if self.l2 == "auto":
            chosen = self._select(X, yk, X_val, yv, len(classes), rows)
        else:                                          # trained and scored as without the refit, then refit
            chosen = copy.copy(self).set_params(refit=False)                 # the refit replaces, never mutates
            chosen._fit_once(X, yk, X_val, yv, len(classes), rows, self.l2, self.epochs, self.early_stopping)
            self.val_proba_ = chosen.predict_proba(X_val)
        if refit_rows is None:                         # on train + validation: no validation data left
            X = np.concatenate([np.asarray(X[rows if rows is not None else slice(None)]), X_val])
            yk, rows = np.concatenate([yk if rows is None else yk[rows], yv]), None
        else:
            rows = refit_rows
        return self._refit_from(chosen, X, yk, rows)

    def refit_on(self, X, y, rows=None) -> "SoftmaxHead":
        """The protocol's second half for this head, fitted and chosen on validation: a new head (refit=True),
        its configuration trained again on X[rows] (e.g. every view of train + validation) as fit's refit
        does it. Its before_refit_ is this head (validation is scored as it was chosen)."""
        check_is_fitted(self)
        X, y = check_inputs(self, X, y, reset=False)
        head = copy.copy(self).set_params(refit=True)
        head.val_proba_ = head.selection_ = None
        return head._refit_from(self, X, _encode(self.classes_, y), rows)

    def _refit_from(self, chosen: "SoftmaxHead", X, y, rows) -> "SoftmaxHead":
        """Train self with `chosen`'s penalty on X[rows] (y: class indices), without validation data, for the
        epochs `chosen` was kept at; chosen becomes before_refit_ and its history_ and best_epoch_ this head's."""
        epochs = chosen._refit_epochs(chosen.best_epoch_)       # a number: as many as the head was scored at
        log.info(f"softmax head: refit on train + validation for {epochs} epochs")
        self._fit_once(X, y, None, None, len(self.classes_), rows, chosen.l2, epochs, False)
        self.history_, self.best_epoch_, self.before_refit_ = chosen.history_, chosen.best_epoch_, chosen
        self.train_seconds_ += chosen.train_seconds_
        return self

    def _fit_once(self, X, y, X_val, y_val, n_classes, rows, l2, epochs, early):
        """One training run with penalty l2 for `epochs` (the hidden layer's by Keras' train step); sets the fitted attributes."""
        self.l2_ = float(l2)
        if self.hidden:
            from .hidden import fit_hidden
            fit_hidden(self, X, y, X_val, y_val, n_classes, rows, l2, epochs, early)
            return
        sweep = JointSoftmax((self.dropout,), (self.lr,), epochs, self.batch_size, early,
                             self.patience, self.standardize, self.seed, (l2,), self.normalize, self.blocks, (self.init,),
                             (self.lr_schedule,))
        sweep.fit(X, y, X_val, y_val, n_classes=n_classes, rows=rows)
        self.__dict__.update(sweep.fitted(0))
        self.hidden_kernel_ = self.hidden_bias_ = None

    def _select(self, X, y, X_val, y_val, n_classes, rows) -> "SoftmaxHead":
        """The head chosen: every L2_GRID head trained at once on X[rows], scored on (X_val, y_val), the best
        one (a SoftmaxHead with its penalty); sets selection_ (the grid, the validation curve, the choice) and val_proba_."""
        n = len(L2_GRID)
        grid = JointSoftmax((self.dropout,) * n, (self.lr,) * n, self.epochs, self.batch_size, self.early_stopping,
                            self.patience, self.standardize, self.seed, L2_GRID, self.normalize, self.blocks,
                            (self.init,) * n, (self.lr_schedule,) * n)
        grid.fit(X, y, X_val, y_val, n_classes=n_classes, rows=rows)
        proba = grid.predict_proba(X_val)
        curve = [{"l2": l2, "val_accuracy": float((p.argmax(1) == y_val).mean()),
                  "val_loss": log_loss(y_val, p), "best_epoch": grid.best_epoch_[k]}
                 for k, (l2, p) in enumerate(zip(L2_GRID, proba))]
        for r in curve:
            log.info(f"softmax l2={r['l2']:g}: validation {r['val_accuracy']:.2%} (loss {r['val_loss']:.4f})")
        k = max(range(n), key=lambda i: (curve[i]["val_accuracy"], -curve[i]["val_loss"]))
        self.val_proba_ = proba[k]
        self.selection_ = {"protocol": "l2 chosen on validation, refit on train + validation", "grid": list(L2_GRID),
                           "curve": curve, "chosen_l2": L2_GRID[k]}
        return SoftmaxHead.from_joint(grid, k, self.classes_).set_params(refit=False)     # as chosen: not refit

    def _refit_epochs(self, best_epoch: int) -> int:
        """How long a refit trains: the epoch early stopping kept, else every epoch this head trained (epochs="auto":
        the number it came to on its own rows, not counted again on train + validation)."""
        return (best_epoch or self.epochs_) if self.early_stopping else self.epochs_

    @classmethod
    def from_joint(cls, joint: JointSoftmax, k: int, classes=None) -> "SoftmaxHead":
        """Head k of a fitted JointSoftmax as a fitted SoftmaxHead (its own copy of the weights)."""
        est = cls(classes=classes, **joint.params(k))
        est.classes_ = np.arange(joint.n_classes_) if classes is None else np.asarray(classes)
        est.__dict__.update(joint.fitted(k))
        est.val_proba_ = est.selection_ = est.before_refit_ = est.hidden_kernel_ = est.hidden_bias_ = None
        return est

    @classmethod
    def from_file(cls, head: dict, classes) -> "SoftmaxHead":
        """A fitted head, for inference, from a head file's numbers (keras_file.read_head): what the file
        computes in Keras, as plain arrays (a logreg run's file too: the same softmax of an affine map).
        The standardisation's scale is Keras' Normalization's, max(sqrt(variance), 1e-7)."""
        hidden = head.get("hidden_kernel")
        est = cls(classes=classes, dropout=float(head["dropout"] or 0.0), normalize=head["normalize"] or "none",
                  blocks=head["blocks"], standardize=head["mean"] is not None,
                  hidden=0 if hidden is None else int(hidden.shape[1]))
        est.classes_ = np.asarray(classes)
        est.coef_, est.intercept_ = head["kernel"], head["bias"]
        est.hidden_kernel_, est.hidden_bias_ = hidden, head.get("hidden_bias")
        est.mean_, est.scale_ = head["mean"], None
        if head["mean"] is not None:
            est.scale_ = np.maximum(np.sqrt(head["variance"]), np.float32(1e-7)).astype(np.float32)
        est.n_features_in_ = (head["kernel"] if hidden is None else hidden).shape[0]
        est.blocks_ = check_blocks(head["blocks"], est.n_features_in_)
        est.history_, est.best_epoch_, est.train_seconds_, est.epochs_, est.lr_ = [], None, 0.0, None, None
        est.val_proba_ = est.selection_ = est.before_refit_ = None
        return est

    def trained_with(self) -> dict:
        """What the "auto" settings came to in this fit, as runs, sweeps and studies record it."""
        return {"epochs_trained": self.epochs_, "lr_used": self.lr_,
                "refit_used": getattr(self, "before_refit_", None) is not None}

    def predict_proba(self, X) -> np.ndarray:
        """N x C probabilities (float64), columns in the order of classes_."""
        check_is_fitted(self)
        X = check_inputs(self, X, reset=False)
        if getattr(self, "hidden_kernel_", None) is not None:
            from .hidden import hidden_proba
            return hidden_proba(X, self)
        z = logits(X, self.coef_, self.intercept_, self.mean_, self.scale_, self.normalize, self.blocks_)
        return softmax(z.astype(np.float64), axis=1)

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)           # checks it is fitted first
        return self.classes_[proba.argmax(1)]

    def head_file(self) -> dict:
        """write_head's arguments: the Dense kernel and bias, the dropout rate, the standardisation."""
        out = {"kernel": self.coef_, "bias": self.intercept_, "dropout": float(self.dropout)}
        if getattr(self, "hidden_kernel_", None) is not None:
            out.update(hidden_kernel=self.hidden_kernel_, hidden_bias=self.hidden_bias_)
        if self.normalize != "none":
            out.update(normalize=self.normalize, blocks=self.blocks_)
        if self.mean_ is not None:
            out.update(mean=self.mean_, variance=np.square(self.scale_.astype(np.float64)))
        return out


def _encode(classes: np.ndarray, y) -> np.ndarray:
    """Labels as indices into classes; ValueError for a label that is not one of them."""
    y = np.asarray(y)
    idx = np.searchsorted(classes, y)
    bad = (idx >= len(classes)) | (classes[np.minimum(idx, len(classes) - 1)] != y)
    if bad.any():
        raise ValueError(f"label {y[bad][0]!r} is not one of the head's classes {list(classes)}")
    return idx.astype(np.int64)
