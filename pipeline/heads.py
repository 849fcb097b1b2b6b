"""Heads on cached features, scikit-learn style: `__init__` stores parameters, `fit` sets the
trailing-underscore state.

- `SoftmaxHeads`: K copies of the notebook's head, Dropout(p_k) -> Dense(C, softmax) trained with
  Adam(lr_k), all in one pass over the data per epoch. Training follows Keras' Dropout and Adam
  update rules (Adam tested against keras.optimizers.Adam), but each step is one fused, multi-core
  Numba kernel (`kernels.train_step`) for every head at once: Keras' own `fit` spends most of its
  time generating dropout noise and in per-step overhead (README: bench).
  One uniform draw per feature and step serves every head (head k keeps U >= p_k): each head sees
  i.i.d. Bernoulli masks, as it would alone; heads sharing a dropout rate share one mask.
  The trained head is exported as the Keras model Dropout(p) -> Dense(C, softmax).
- `LogRegHead`: StandardScaler + LogisticRegression (scikit-learn).
"""
from __future__ import annotations

import time

import numpy as np

BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7   # keras.optimizers.Adam defaults
NOISE_LEVELS = 65536                         # dropout rates are realised to 1/65536


def softmax_np(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_loss(proba, y):
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None))))


def glorot_uniform(fan_in, fan_out, seed):
    """keras.initializers.GlorotUniform's distribution (Dense's default kernel initializer)."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return np.random.default_rng(seed).uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)


class SoftmaxHeads:
    def __init__(self, dropouts=(0.5,), lrs=(1e-3,), epochs=20, batch_size=250, early_stopping=False,
                 patience=3, seed=0):
        self.dropouts, self.lrs, self.epochs, self.batch_size = dropouts, lrs, epochs, batch_size
        self.early_stopping, self.patience, self.seed = early_stopping, patience, seed

    def fit(self, X, y, X_val=None, y_val=None, n_classes=None, rows=None):
        """Train on X[rows] (all rows by default; rows avoid copying a big array)."""
        from threadpoolctl import threadpool_limits
        X = np.ascontiguousarray(X, dtype=np.float32).view()
        X.flags.writeable = False        # one compiled signature, whether X is a mapped cache or not
        rows = np.arange(len(X)) if rows is None else np.asarray(rows, np.int64)
        y = np.array(y, np.int64)
        epoch_fn, state = self._setup(X.shape[1], n_classes or int(y[rows].max()) + 1)
        stats = state[8]                 # per part, group, head: the epoch's summed loss, number right
        rng = np.random.Generator(np.random.SFC64(self.seed))
        key0 = np.uint64(rng.integers(0, 2 ** 63))
        validate = self.early_stopping and X_val is not None and len(X_val)
        self.history_, self.best_epoch_ = [[] for _ in self.dropouts], [0] * len(self.dropouts)
        best_loss, stale, t = np.full(len(self.dropouts), np.inf), 0, 0
        best = (self.W_.copy(), self.b_.copy()) if validate else None
        t0 = time.perf_counter()
        with threadpool_limits(1, user_api="blas"):   # BLAS threads spinning after a val pass slow the kernels
            for epoch in range(1, self.epochs + 1):
                t = epoch_fn(X, rng.permutation(rows), y, self.batch_size, key0, t, *state)
                improved = self._end_epoch(epoch, stats.sum(0) / len(rows), X_val, y_val, best_loss)
                if validate:
                    self._keep_best(best, improved)
                    stale = 0 if improved else stale + 1
                    if stale >= self.patience:
                        break
        if validate:
            self.W_[...], self.b_[...] = best
        self.train_seconds_ = time.perf_counter() - t0
        return self

    def _setup(self, d, c):
        """Initial weights (W_, b_, groups_); the epoch kernel for heads this size and its other arguments."""
        from . import kernels
        rates = list(dict.fromkeys(float(p) for p in self.dropouts))      # one group per dropout rate
        self.groups_ = [[k for k, p in enumerate(self.dropouts) if float(p) == r] for r in rates]
        n_heads = np.array([len(ks) for ks in self.groups_], np.int64)
        G, kp, bs = len(rates), (max(n_heads) * c + 1) // 2 * 2, self.batch_size
        self.n_classes_, self.W_, self.b_ = c, np.zeros((G, kp, d), np.float32), np.zeros((G, kp), np.float32)
        init = glorot_uniform(d, c, self.seed).T                          # every head starts where Dense(C) would
        lr = np.zeros((G, kp))
        for g, ks in enumerate(self.groups_):
            for h, k in enumerate(ks):
                self.W_[g, h * c:(h + 1) * c], lr[g, h * c:(h + 1) * c] = init, self.lrs[k]
        thr = np.minimum(np.round(np.asarray(rates) * NOISE_LEVELS), NOISE_LEVELS - 1).astype(np.uint16)
        scale = (NOISE_LEVELS / (NOISE_LEVELS - thr.astype(np.float64))).astype(np.float32)   # Keras' 1 / (1 - rate)
        by_rows = self.W_.nbytes <= kernels.ROWS_KERNEL_BYTES      # small heads: rows split over cores
        parts = kernels.ROW_PARTS if by_rows else 1                # big ones: feature columns split over cores
        n_chunks, b4 = 0 if by_rows else (d + kernels.CHUNK - 1) // kernels.CHUNK, -(-bs // kernels.ROWS) * kernels.ROWS
        scratch = (np.empty((bs if n_chunks else 0, (d + 3) // 4), np.uint64),
                   np.zeros((n_chunks, G, b4, kp), np.float32), np.zeros((G, b4 if n_chunks else 0, kp), np.float32))
        epoch_fn = kernels.train_epoch_rows if by_rows else kernels.train_epoch_chunks
        return epoch_fn, (thr, scale, n_heads, c, self.W_, self.b_, np.empty((parts, G, kp, d), np.float32),
                          np.empty((parts, G, kp), np.float32), np.zeros((parts, G, max(n_heads), 2)), scratch,
                          tuple(np.zeros((G * kp, n), np.float32) for n in (d, d, 1, 1)),   # Adam's m, v of W, then b
                          lr.ravel(), (BETA_1, BETA_2, EPSILON))

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

    def _end_epoch(self, epoch, train, Xv, yv, best_loss):
        """Record per-head train metrics (train: G x H x (mean loss, accuracy) over the epoch's
        batches, with dropout, as Keras reports them) and val metrics; return the heads that improved."""
        va = self._metrics(Xv, yv) if Xv is not None and len(Xv) else None
        improved = []
        for k in range(len(self.dropouts)):
            g, h = self._place(k)
            row = {"epoch": epoch, "train_loss": float(train[g, h, 0]), "train_accuracy": float(train[g, h, 1])}
            if va:
                row.update(val_loss=va[k][0], val_accuracy=va[k][1])
                if va[k][0] < best_loss[k]:
                    best_loss[k], self.best_epoch_[k] = va[k][0], epoch
                    improved.append(k)
            self.history_[k].append(row)
        return improved

    def _metrics(self, X, y):
        return [(log_loss(pk, y), float((pk.argmax(1) == y).mean())) for pk in self.predict_proba(X)]

    def predict_proba(self, X) -> np.ndarray:
        """K x N x C probabilities (inference: no dropout), heads in the order given to __init__."""
        X, c = np.asarray(X, np.float32), self.n_classes_
        out = np.empty((len(self.dropouts), len(X), c), np.float32)
        for g, ks in enumerate(self.groups_):
            z = X @ self.W_[g, :len(ks) * c].T + self.b_[g, :len(ks) * c]
            out[ks] = softmax_np(np.transpose(z.reshape(len(X), len(ks), c), (1, 0, 2)))
        return out

    def head_proba(self, X, k) -> np.ndarray:
        """N x C probabilities of head k alone (its own product only, not every head's)."""
        g, r = self._rows(k)
        return softmax_np(np.asarray(X, np.float32) @ self.W_[g, r].T + self.b_[g, r])

    def head_weights(self, k):
        """Head k's Dense kernel (D x C) and bias."""
        g, r = self._rows(k)
        return self.W_[g, r].T.copy(), self.b_[g, r].copy()

    def head_file(self, k=0) -> dict:
        """Head k as write_head's arguments: Dense kernel (D x C), bias, dropout rate."""
        w, b = self.head_weights(k)
        return {"kernel": w, "bias": b, "dropout": float(self.dropouts[k])}

    def export_head(self, k=0):
        """Head k alone as the notebook's Keras head: Dropout(p) -> Dense(C, softmax)."""
        import keras
        w, b = self.head_weights(k)
        head = keras.Sequential([keras.Input((w.shape[0],)), keras.layers.Dropout(float(self.dropouts[k]), name="dropout"),
                                 keras.layers.Dense(self.n_classes_, activation="softmax", name="predictions")],
                                name="softmax_head")
        head.get_layer("predictions").set_weights([w, b])
        return head


class LogRegHead:
    def __init__(self, C=1.0, max_iter=200, seed=0):
        self.C, self.max_iter, self.seed = C, max_iter, seed

    def fit(self, X, y, X_val=None, y_val=None, n_classes=None, rows=None):
        if rows is not None:
            X, y = X[rows], y[rows]
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        t = time.perf_counter()
        self.model_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter,
                                                                         random_state=self.seed))
        self.model_.fit(X, y)
        self.train_seconds_ = time.perf_counter() - t
        self.n_classes_ = n_classes or int(y.max()) + 1
        self.history_ = [[{"epoch": int(self.model_[-1].n_iter_.max()), **_point(self, X, y, X_val, y_val)}]]
        return self

    def predict_proba(self, X) -> np.ndarray:
        """1 x N x C, columns for every class even if one was absent from training."""
        p = self.model_.predict_proba(X)
        out = np.zeros((len(X), self.n_classes_), p.dtype)
        out[:, self.model_.classes_] = p
        return out[None]

    def head_proba(self, X, k=0) -> np.ndarray:
        return self.predict_proba(X)[0]

    def head_file(self, k=0) -> dict:
        """The fitted model as a softmax head over all n_classes_ (write_head's arguments): the scaler as
        standardisation, the coefficients as a Dense kernel whose column c is class c; a class absent
        from training gets bias -1e4 (probability 0), so a head always means the classes it says."""
        scaler, lr = self.model_[0], self.model_[-1]
        coef, intercept = lr.coef_, lr.intercept_
        if coef.shape[0] == 1:                            # binary: softmax([-z/2, z/2]) == sigmoid(z)
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        kernel = np.zeros((coef.shape[1], self.n_classes_), np.float32)
        bias = np.full(self.n_classes_, -1e4, np.float32)
        kernel[:, lr.classes_], bias[lr.classes_] = coef.T, intercept
        return {"kernel": kernel, "bias": bias, "mean": scaler.mean_, "variance": scaler.scale_ ** 2}


def _point(head, X, y, Xv, yv):
    p = head.predict_proba(X)[0]
    row = {"train_loss": log_loss(p, y), "train_accuracy": float((p.argmax(1) == y).mean())}
    if Xv is not None and len(Xv):
        pv = head.predict_proba(Xv)[0]
        row.update(val_loss=log_loss(pv, yv), val_accuracy=float((pv.argmax(1) == yv).mean()))
    return row
