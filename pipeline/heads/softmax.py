"""The notebook's head on cached features, Dropout(p) -> Dense(C, softmax) trained with Adam, as a
scikit-learn estimator (`SoftmaxHead`), and many of them trained at once (`JointSoftmax`).

Training follows Keras' rules: Dropout(p) keeps a feature with probability 1-p and scales it by
1/(1-p); Dense starts from zeros (init="zeros", where logistic regression starts: README) or Glorot-uniform
(Keras' default); the update is keras.optimizers.Adam's (tested against it), its learning rate
constant or decayed as keras.optimizers.schedules.CosineDecay over the run's steps (lr_schedule).
Each step is one fused, multi-core Numba kernel for every head at once (kernels.py): Keras' own
`fit` spends most of its time generating dropout noise and in per-step overhead (README: bench).
With standardize=True, features are standardised with the mean and scale of the training rows
(a zero-variance feature gets scale 1, as in StandardScaler), on the fly, inside the same kernel.
"""
from __future__ import annotations

import logging
import time

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import log_loss

from sklearn.utils.validation import check_is_fitted

from .config import DEFAULTS
from .linear import feature_stats, kernel_view, logits, normalized
from .normalize import check_blocks
from .validation import SOFTMAX, check_fit, check_inputs

log = logging.getLogger(__name__)

BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7   # keras.optimizers.Adam defaults
L2_GRID = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 0.3, 1.0)   # l2="auto": the penalties tried, all at once


def search_settings() -> dict:
    """What l2="auto"'s choice depends on besides the data: a study keys its rows by it."""
    return {"grid": L2_GRID}


def glorot_uniform(fan_in, fan_out, seed):
    """keras.initializers.GlorotUniform's distribution (Dense's default kernel initializer)."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return np.random.default_rng(seed).uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)


class JointSoftmax:
    """K softmax heads (dropout rate p_k, learning rate lr_k, L2 penalty l2_k) trained at once, in one pass over the data
    per epoch: one uniform draw per feature and step serves every head (head k keeps U >= p_k), so
    each head sees i.i.d. Bernoulli masks exactly as it would alone; heads sharing a rate share one."""

    def __init__(self, dropouts=(DEFAULTS["dropout"],), lrs=(DEFAULTS["lr"],), epochs=DEFAULTS["epochs"],
                 batch_size=DEFAULTS["batch_size"], early_stopping=DEFAULTS["early_stopping"],
                 patience=DEFAULTS["patience"], standardize=DEFAULTS["standardize"], seed=DEFAULTS["seed"], l2s=None,
                 normalize=DEFAULTS["normalize"], blocks=None, inits=None, schedules=None):
        self.dropouts, self.lrs, self.epochs, self.batch_size = dropouts, lrs, epochs, batch_size
        self.early_stopping, self.patience, self.standardize, self.seed = early_stopping, patience, standardize, seed
        self.l2s = l2s                       # None: no penalty on any head
        self.normalize, self.blocks = normalize, blocks   # normalize.py: per layer block (None: one block)
        self.inits = inits                   # per head: glorot_uniform or zeros (None: the default for all)
        self.schedules = schedules           # per head: cosine or constant (None: the default for all)

    def fit(self, X, y, X_val=None, y_val=None, n_classes=None, rows=None):
        """Train on X[rows] (all rows by default; rows avoid copying a big array); y: 0..C-1."""
        from threadpoolctl import threadpool_limits
        t0 = time.perf_counter()
        self.blocks_ = check_blocks(self.blocks, X.shape[1])
        X = normalized(X, self.blocks_, self.normalize)      # every row: rows index X
        if X_val is not None:                 # once, not again for every epoch's scoring
            X_val = normalized(X_val, self.blocks_, self.normalize)
        Xk = kernel_view(X)
        rows = np.arange(len(X)) if rows is None else np.asarray(rows, np.int64)
        y = np.array(y, np.int64)
        self.mean_, self.scale_ = feature_stats(X, rows) if self.standardize else (None, None)
        state = self._allocate(X.shape[1], n_classes or int(y[rows].max()) + 1, len(rows))
        rng = np.random.Generator(np.random.SFC64(self.seed))
        key0 = np.uint64(rng.integers(0, 2 ** 63))
        validate = self.early_stopping and X_val is not None and len(X_val)
        H = len(self.dropouts)
        self.history_, self.best_epoch_ = [[] for _ in range(H)], [0] * H
        best_loss, stale, active, t = np.full(H, np.inf), np.zeros(H, np.int64), np.ones(H, bool), 0
        best = (self.W_.copy(), self.b_.copy()) if validate else None
        from .kernels import train_epoch
        with threadpool_limits(1, user_api="blas"):   # BLAS threads spinning after a val pass slow the kernels
            for epoch in range(1, self.epochs + 1):
                t = train_epoch(Xk, rng.permutation(rows), y, self.batch_size, key0, t, state)
                improved = self._end_epoch(epoch, state.stats.sum(0) / len(rows), X_val, y_val, best_loss, active)
                if validate:
                    self._keep_best(best, improved)
                    for k in np.flatnonzero(active):      # each head its own patience, as it would alone
                        stale[k] = 0 if k in improved else stale[k] + 1
                        if stale[k] >= self.patience:
                            active[k] = False
                            self._freeze(state, k)
                    if not active.any():
                        break
        if validate:
            self.W_[...], self.b_[...] = best
        self.keys_ = state.keys[:t]
        self.train_seconds_ = time.perf_counter() - t0
        return self

    def _allocate(self, d, c, n_rows):
        """Initial weights (W_, b_, groups_) and the kernels' state for them."""
        from . import kernels
        rates = list(dict.fromkeys(float(p) for p in self.dropouts))      # one group per dropout rate
        self.groups_ = [[k for k, p in enumerate(self.dropouts) if float(p) == r] for r in rates]
        n_heads = [len(ks) for ks in self.groups_]
        G, kp = len(rates), int(kernels.padded(max(n_heads), c))
        self.n_classes_, self.W_, self.b_ = c, np.zeros((G, kp, d), np.float32), np.zeros((G, kp), np.float32)
        glorot = glorot_uniform(d, c, self.seed).T        # every such head starts where Dense(C) would, seeded
        lr, l2, cosine = np.zeros((G, kp)), np.zeros((G, kp)), np.zeros((G, kp))
        steps = self.epochs * -(-n_rows // self.batch_size)
        for g, ks in enumerate(self.groups_):
            for h, k in enumerate(ks):
                self.W_[g, h * c:(h + 1) * c] = glorot if self._init(k) == "glorot_uniform" else 0.0
                lr[g, h * c:(h + 1) * c] = self.lrs[k]
                l2[g, h * c:(h + 1) * c] = self._l2(k)
                cosine[g, h * c:(h + 1) * c] = steps if self._schedule(k) == "cosine" else 0
        return kernels.allocate(self.W_, self.b_, rates, n_heads, c, lr.ravel(), self.batch_size, steps,
                                (BETA_1, BETA_2, EPSILON), self.mean_, self.scale_, l2.ravel(), cosine.ravel())

    def _l2(self, k) -> float:
        return 0.0 if self.l2s is None else float(self.l2s[k])

    def _init(self, k) -> str:
        return DEFAULTS["init"] if self.inits is None else self.inits[k]

    def _schedule(self, k) -> str:
        return DEFAULTS["lr_schedule"] if self.schedules is None else self.schedules[k]

    def _place(self, k):
        """(group, index in group) of head k."""
        g = next(g for g, ks in enumerate(self.groups_) if k in ks)
        return g, self.groups_[g].index(k)

    def _rows(self, k):
        """(group, row slice) of head k in W_ and b_."""
        g, h = self._place(k)
        return g, slice(h * self.n_classes_, (h + 1) * self.n_classes_)

    def _keep_best(self, best, improved):
        for k in improved:
            g, r = self._rows(k)
            best[0][g, r], best[1][g, r] = self.W_[g, r], self.b_[g, r]

    def _freeze(self, state, k):
        """Head k stopped early: its learning rate 0 from now on (its weights stay; the shared dropout
        draws, and so every other head's path, do not change)."""
        g, r = self._rows(k)
        state.lr.reshape(self.W_.shape[:2])[g, r] = 0.0

    def _end_epoch(self, epoch, train, Xv, yv, best_loss, active):
        """Record the active heads' train metrics (train: G x H x (mean loss, accuracy) over the epoch's
        batches, with dropout, as Keras reports them) and val metrics; return the heads that improved."""
        va = None
        if Xv is not None and len(Xv):
            labels = np.arange(self.n_classes_)
            va = [(log_loss(yv, pk, labels=labels), float((pk.argmax(1) == yv).mean()))
                  for pk in self._proba(Xv, "none")]             # Xv is through the step already
        improved = []
        for k in np.flatnonzero(active):
            g, h = self._place(k)
            row = {"epoch": epoch, "train_loss": float(train[g, h, 0]), "train_accuracy": float(train[g, h, 1])}
            if va:
                row.update(val_loss=va[k][0], val_accuracy=va[k][1])
                if va[k][0] < best_loss[k]:
                    best_loss[k], self.best_epoch_[k] = va[k][0], epoch
                    improved.append(k)
            self.history_[k].append(row)
        return improved

    def predict_proba(self, X) -> np.ndarray:
        """K x N x C probabilities (float64; inference: no dropout), heads in the order given to __init__."""
        return self._proba(X, self.normalize)

    def _proba(self, X, normalize):
        """predict_proba with the given normalize step (none: X went through it already)."""
        c, out = self.n_classes_, np.empty((len(self.dropouts), len(X), self.n_classes_))
        for g, ks in enumerate(self.groups_):
            z = logits(X, self.W_[g, :len(ks) * c].T, self.b_[g, :len(ks) * c], self.mean_, self.scale_,
                       normalize, self.blocks_).astype(np.float64)
            out[ks] = softmax(np.transpose(z.reshape(len(X), len(ks), c), (1, 0, 2)), axis=-1)
        return out

    def head(self, k: int, classes=None) -> "SoftmaxHead":
        """Head k as a fitted SoftmaxHead (its own copy of the weights)."""
        g, r = self._rows(k)
        est = SoftmaxHead(dropout=self.dropouts[k], lr=self.lrs[k], epochs=self.epochs, batch_size=self.batch_size,
                          early_stopping=self.early_stopping, patience=self.patience, standardize=self.standardize,
                          seed=self.seed, classes=classes, l2=self._l2(k), normalize=self.normalize, blocks=self.blocks,
                          init=self._init(k), lr_schedule=self._schedule(k))
        est.classes_ = np.arange(self.n_classes_) if classes is None else np.asarray(classes)
        est.coef_, est.intercept_ = self.W_[g, r].T.copy(), self.b_[g, r].copy()
        est.mean_, est.scale_, est.n_features_in_, est.blocks_ = self.mean_, self.scale_, self.W_.shape[2], self.blocks_
        est.history_, est.best_epoch_ = self.history_[k], self.best_epoch_[k]
        est.train_seconds_, est.keys_ = self.train_seconds_, self.keys_
        return est


class SoftmaxHead(ClassifierMixin, BaseEstimator):
    """Dropout(dropout) -> Dense(C, softmax, kernel_regularizer=L2(l2), kernel_initializer=init), Adam(lr), its rate
    constant or CosineDecay(lr, every step) (lr_schedule), `epochs` passes in batches of `batch_size`.
    l2 may be "auto" (chosen on X_val, then refit on train + validation); refit: train on X, score on X_val,
    then train the same head again on train + validation (as l2="auto" does); early_stopping: stop when the
    validation loss has not improved for `patience` epochs and keep the best epoch's weights;
    normalize: "none", "l2" or "sqrt-l2" per layer block of `blocks` (widths; None: one block), first;
    standardize: scale features by the training rows' mean and standard deviation (inside the saved
    head); hidden: H > 0 puts Dense(H, relu) -> Dropout(dropout) before the softmax (hidden.py: trained by
    Keras' fit; hidden_kernel_/hidden_bias_ fitted, coef_ then H x C); seed: initial weights and dropout noise; classes: every class the head must know (its
    columns), also one absent from the training rows (default: those in y). Ranges: heads/config.PARAMS. Fitted: classes_, coef_ (D x C), intercept_, mean_/scale_ (standardize),
    history_ (per epoch), best_epoch_ (early_stopping keeps its weights), train_seconds_."""

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
        l2, epochs, early = self.l2, self.epochs, self.early_stopping
        refit = self.refit or self.l2 == "auto"
        if refit and (X_val is None or not len(X_val)):
            raise ValueError(("l2='auto' chooses the penalty" if self.l2 == "auto" else "refit=True scores the head")
                             + " on validation data; pass X_val and y_val (--val-fraction > 0)")
        if self.hidden and self.l2 == "auto":
            raise ValueError("l2='auto' trains linear heads only; pass a number for l2 with hidden > 0, or hidden=0")
        self.classes_, self.val_proba_, self.selection_ = classes, None, None
        if self.l2 == "auto":
            l2, epochs = self._select(X, yk, X_val, yv, len(classes), rows)
        elif refit:                                    # trained and scored as without the refit, then refit
            self._fit_once(X, yk, X_val, yv, len(classes), rows, l2, epochs, early)
            self.val_proba_, first = self.predict_proba(X_val), (self.history_, self.best_epoch_, self.train_seconds_)
            epochs = self._refit_epochs(self.best_epoch_)
        if refit:                                      # on train + validation: no validation data left
            log.info(f"softmax head: refit on train + validation for {epochs} epochs")
            if refit_rows is None:
                X = np.concatenate([np.asarray(X[rows if rows is not None else slice(None)]), X_val])
                yk, rows = np.concatenate([yk if rows is None else yk[rows], yv]), None
            else:
                rows = refit_rows
            X_val = yv = None
            early = False
        self._fit_once(X, yk, X_val, yv, len(classes), rows, l2, epochs, early)
        if self.l2 == "auto":
            self.history_ = self.selection_.pop("history")
        elif refit:
            self.history_, self.best_epoch_, seconds = first
            self.train_seconds_ += seconds
        return self

    def _fit_once(self, X, y, X_val, y_val, n_classes, rows, l2, epochs, early):
        """One training run with penalty l2 for `epochs` (the hidden layer's by Keras' fit); sets the fitted attributes."""
        self.l2_ = float(l2)
        if self.hidden:
            from .hidden import fit_hidden
            fit_hidden(self, X, y, X_val, y_val, n_classes, rows, l2, epochs, early)
            return
        sweep = JointSoftmax((self.dropout,), (self.lr,), epochs, self.batch_size, early,
                             self.patience, self.standardize, self.seed, (l2,), self.normalize, self.blocks, (self.init,),
                             (self.lr_schedule,))
        sweep.fit(X, y, X_val, y_val, n_classes=n_classes, rows=rows)
        fitted = sweep.head(0, self.classes_)
        self.__dict__.update({k: v for k, v in vars(fitted).items() if k.endswith("_") and k != "classes_"})
        self.hidden_kernel_ = self.hidden_bias_ = None

    def _select(self, X, y, X_val, y_val, n_classes, rows):
        """(chosen penalty, epochs to refit for): every L2_GRID head trained at once on X[rows], scored on
        (X_val, y_val); sets selection_ (the grid, the validation curve, the choice) and val_proba_."""
        n = len(L2_GRID)
        grid = JointSoftmax((self.dropout,) * n, (self.lr,) * n, self.epochs, self.batch_size, self.early_stopping,
                            self.patience, self.standardize, self.seed, L2_GRID, self.normalize, self.blocks,
                            (self.init,) * n, (self.lr_schedule,) * n)
        grid.fit(X, y, X_val, y_val, n_classes=n_classes, rows=rows)
        proba, labels = grid.predict_proba(X_val), np.arange(n_classes)
        curve = [{"l2": l2, "val_accuracy": float((p.argmax(1) == y_val).mean()),
                  "val_loss": float(log_loss(y_val, p, labels=labels)), "best_epoch": grid.best_epoch_[k]}
                 for k, (l2, p) in enumerate(zip(L2_GRID, proba))]
        for r in curve:
            log.info(f"softmax l2={r['l2']:g}: validation {r['val_accuracy']:.2%} (loss {r['val_loss']:.4f})")
        k = max(range(n), key=lambda i: (curve[i]["val_accuracy"], -curve[i]["val_loss"]))
        self.val_proba_ = proba[k]
        self.selection_ = {"protocol": "l2 chosen on validation, refit on train + validation", "grid": list(L2_GRID),
                           "curve": curve, "chosen_l2": L2_GRID[k], "history": grid.history_[k]}
        return L2_GRID[k], self._refit_epochs(grid.best_epoch_[k])

    def _refit_epochs(self, best_epoch: int) -> int:
        """How long a refit trains: the epoch early stopping kept, else every epoch."""
        return (best_epoch or self.epochs) if self.early_stopping else self.epochs

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
