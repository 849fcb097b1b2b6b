"""Heads on cached features, scikit-learn style: `__init__` stores parameters, `fit` sets the
trailing-underscore state.

- `SoftmaxHeads`: K copies of the notebook's head, Dropout(p_k) -> Dense(C, softmax) trained with
  Adam(lr_k), all in one pass over the data per epoch. The training loop is fused NumPy that follows
  Keras' Dropout and Adam update rules exactly (tested against keras.optimizers.Adam); Keras' own
  `fit` spends most of its time generating dropout noise and in per-step overhead (README: bench).
  One uniform draw per step serves every head (head k keeps U >= p_k): each head sees i.i.d.
  Bernoulli masks, as it would alone; heads sharing a dropout rate share one GEMM.
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


class Adam:
    """keras.optimizers.Adam's update, in place (no temporaries), with a learning rate per column."""

    def __init__(self, params, lr_cols):
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.scratch = [np.empty_like(p) for p in params]
        self.lr, self.t = np.asarray(lr_cols, np.float64), 0

    def step(self, params, grads):
        self.t += 1
        alpha = (self.lr * np.sqrt(1 - BETA_2 ** self.t) / (1 - BETA_1 ** self.t)).astype(np.float32)
        for p, g, m, v, s in zip(params, grads, self.m, self.v, self.scratch):
            np.subtract(g, m, out=s)                 # m += (g - m) * (1 - beta_1)
            s *= np.float32(1 - BETA_1)
            m += s
            np.multiply(g, g, out=s)                 # v += (g^2 - v) * (1 - beta_2)
            s -= v
            s *= np.float32(1 - BETA_2)
            v += s
            np.sqrt(v, out=s)                        # p -= alpha * m / (sqrt(v) + epsilon)
            s += np.float32(EPSILON)
            np.divide(m, s, out=s)
            s *= alpha
            p -= s


class _Group:
    """Heads sharing one dropout rate: one mask, one contiguous weight block, one GEMM each way."""

    def __init__(self, rate, heads, lrs, init, batch_size):
        d, c = init.shape
        self.heads, self.c = heads, c
        self.thresh = int(round(rate * NOISE_LEVELS))           # keep where noise >= thresh
        self.scale = np.float32(NOISE_LEVELS / (NOISE_LEVELS - self.thresh))  # Keras' 1 / (1 - rate)
        self.W, self.b = np.tile(init, (1, len(heads))), np.zeros(len(heads) * c, np.float32)
        self.opt = Adam([self.W, self.b], np.repeat(np.asarray(lrs, np.float64), c))
        self.xm, self.keep = np.empty((batch_size, d), np.float32), np.empty((batch_size, d), bool)
        self.z, self.gW = np.empty((batch_size, len(heads) * c), np.float32), np.empty_like(self.W)

    def step(self, x, noise, y):
        n, k, c = len(x), len(self.heads), self.c
        xm, z = (self.xm[:n], self.z[:n]) if self.thresh else (x, self.z[:n])
        if self.thresh:
            np.greater_equal(noise, self.thresh, out=self.keep[:n])
            np.multiply(x, self.keep[:n], out=xm)
        np.matmul(xm, self.W, out=z)
        z *= self.scale
        z += self.b
        p = z.reshape(n, k, c)                                  # softmax in place
        p -= p.max(axis=2, keepdims=True)
        np.exp(p, out=p)
        p /= p.sum(axis=2, keepdims=True)
        p[np.arange(n), :, y] -= 1                              # d(cross-entropy)/d(logits)
        z *= np.float32(1 / n)
        np.matmul(xm.T, z, out=self.gW)
        self.gW *= self.scale
        self.opt.step([self.W, self.b], [self.gW, z.sum(axis=0)])

    def logits(self, X):
        return (X @ self.W + self.b).reshape(len(X), len(self.heads), self.c)


class SoftmaxHeads:
    def __init__(self, dropouts=(0.5,), lrs=(1e-3,), epochs=20, batch_size=250, early_stopping=False,
                 patience=3, seed=0, monitor_rows=5000):
        self.dropouts, self.lrs, self.epochs, self.batch_size = dropouts, lrs, epochs, batch_size
        self.early_stopping, self.patience, self.seed, self.monitor_rows = early_stopping, patience, seed, monitor_rows

    def fit(self, X, y, X_val=None, y_val=None, n_classes=None, rows=None):
        """Train on X[rows] (all rows by default; rows avoid copying a big array)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        rows = np.arange(len(X)) if rows is None else np.asarray(rows)
        c = n_classes or int(y[rows].max()) + 1
        by_rate = {}
        for k, p in enumerate(self.dropouts):
            by_rate.setdefault(float(p), []).append(k)
        init = glorot_uniform(X.shape[1], c, self.seed)          # every head starts where Dense(C) would
        self.groups_ = [_Group(p, ks, [self.lrs[k] for k in ks], init, self.batch_size) for p, ks in by_rate.items()]
        self.n_classes_ = c
        rng = np.random.Generator(np.random.SFC64(self.seed))
        mon = np.sort(rng.choice(rows, min(self.monitor_rows, len(rows)), replace=False))
        Xm, ym = X[mon], y[mon]
        validate = self.early_stopping and X_val is not None and len(X_val)
        self.history_, self.best_epoch_ = [[] for _ in self.dropouts], [0] * len(self.dropouts)
        best_loss, stale = np.full(len(self.dropouts), np.inf), 0
        best = [(g.W.copy(), g.b.copy()) for g in self.groups_] if validate else None
        d, t0 = X.shape[1], time.perf_counter()
        for epoch in range(1, self.epochs + 1):
            perm = rng.permutation(rows)
            for a in range(0, len(perm), self.batch_size):
                idx = perm[a:a + self.batch_size]
                x = np.take(X, idx, axis=0)
                # one uniform uint16 draw per step serves every group: head k keeps noise >= p_k
                noise = rng.bit_generator.random_raw((len(idx) * d + 3) // 4).view(np.uint16)[:len(idx) * d]
                for g in self.groups_:
                    g.step(x, noise.reshape(len(idx), d), y[idx])
            improved = self._end_epoch(epoch, Xm, ym, X_val, y_val, best_loss)
            if validate:
                self._keep_best(best, improved)
                stale = 0 if improved else stale + 1
                if stale >= self.patience:
                    break
        if validate:
            for g, (W, b) in zip(self.groups_, best):
                g.W[...], g.b[...] = W, b
        self.train_seconds_ = time.perf_counter() - t0
        return self

    def _keep_best(self, best, improved):
        for g, (W, b) in zip(self.groups_, best):
            for j, k in enumerate(g.heads):
                if k in improved:
                    cols = slice(j * g.c, (j + 1) * g.c)
                    W[:, cols], b[cols] = g.W[:, cols], g.b[cols]

    def _end_epoch(self, epoch, Xm, ym, Xv, yv, best_loss):
        """Record per-head train (monitor sample) and val metrics; return the heads that improved."""
        tr = self._metrics(Xm, ym)
        va = self._metrics(Xv, yv) if Xv is not None and len(Xv) else None
        improved = []
        for k in range(len(self.dropouts)):
            row = {"epoch": epoch, "train_loss": tr[k][0], "train_accuracy": tr[k][1]}
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
        X = np.asarray(X, np.float32)
        out = np.empty((len(self.dropouts), len(X), self.n_classes_), np.float32)
        for g in self.groups_:
            out[g.heads] = softmax_np(np.transpose(g.logits(X), (1, 0, 2)))
        return out

    def head_weights(self, k):
        """Head k's Dense kernel and bias."""
        g = next(g for g in self.groups_ if k in g.heads)
        cols = slice(g.heads.index(k) * g.c, (g.heads.index(k) + 1) * g.c)
        return g.W[:, cols].copy(), g.b[cols].copy()

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


def _point(head, X, y, Xv, yv):
    p = head.predict_proba(X)[0]
    row = {"train_loss": log_loss(p, y), "train_accuracy": float((p.argmax(1) == y).mean())}
    if Xv is not None and len(Xv):
        pv = head.predict_proba(Xv)[0]
        row.update(val_loss=log_loss(pv, yv), val_accuracy=float((pv.argmax(1) == yv).mean()))
    return row
