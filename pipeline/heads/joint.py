"""Many softmax heads trained at once (`JointSoftmax`): Dropout(p) -> Dense(C, softmax) with Adam, one
pass over the data per epoch for every head; `SoftmaxHead` (softmax.py) is one of them as a
scikit-learn estimator.

Training follows Keras' rules: Dropout(p) keeps a feature with probability 1-p and scales it by
1/(1-p); Dense starts from zeros (init="zeros", where logistic regression starts: README) or Glorot-uniform
(Keras' default); the update is keras.optimizers.Adam's (tested against it), its learning rate
constant or decayed as keras.optimizers.schedules.CosineDecay over the run's steps (lr_schedule).
Each step is one fused, multi-core Numba kernel for every head at once (kernels.py): Keras' own
`fit` spends most of its time generating dropout noise and in per-step overhead (README, Benchmark).
With standardize=True, features are standardised with the mean and scale of the training rows
(a zero-variance feature gets scale 1, as in StandardScaler), on the fly, inside the same kernel.
"""
from __future__ import annotations

import time

import numpy as np
from scipy.special import softmax

from .config import DEFAULTS, PROGRESS, Heartbeat, epochs_for, lr_for
from .linear import feature_stats, kernel_view, logits, normalized
from .normalize import check_blocks
from .scores import log_loss

BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7   # keras.optimizers.Adam defaults


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
        from . import kernels
        from .kernel_cache import ensure_cached
        self._check_lengths()
        t0 = time.perf_counter()
        self.blocks_ = check_blocks(self.blocks, X.shape[1])
        X = normalized(X, self.blocks_, self.normalize)      # every row: rows index X
        if X_val is not None:                 # once, not again for every epoch's scoring
            X_val = normalized(X_val, self.blocks_, self.normalize)
        Xk = kernel_view(X)
        rows = np.arange(len(X)) if rows is None else np.asarray(rows, np.int64)
        y = np.array(y, np.int64)
        ensure_cached(kernels.train_epoch, Xk)    # the code every run loads, never compiled by this one (kernel_cache.py)
        self.mean_, self.scale_ = feature_stats(X, rows) if self.standardize else (None, None)
        self.epochs_ = epochs_for(self.epochs, len(rows), self.batch_size)
        state = self._allocate(X.shape[1], n_classes or int(y[rows].max()) + 1, len(rows))
        rng = np.random.Generator(np.random.SFC64(self.seed))
        key0 = np.uint64(rng.integers(0, 2 ** 63))
        validate = self.early_stopping and X_val is not None and len(X_val)
        H = len(self.dropouts)
        self.history_, self.best_epoch_ = [[] for _ in range(H)], [0] * H
        best_loss, stale, active, t = np.full(H, np.inf), np.zeros(H, np.int64), np.ones(H, bool), 0
        best = (self.W_.copy(), self.b_.copy()) if validate else None
        beat, what = Heartbeat(self.epochs_), "softmax head" if H == 1 else f"{H} softmax heads"
        with threadpool_limits(1, user_api="blas"):   # BLAS threads spinning after a val pass slow the kernels
            for epoch in range(1, self.epochs_ + 1):
                t = kernels.train_epoch(Xk, rng.permutation(rows), y, self.batch_size, key0, t, state)
                if pace := beat.due(epoch):                   # a long fit's line at most every PROGRESS_EVERY_S
                    PROGRESS.info(f"{what}: epoch {epoch}/{self.epochs_}, {epoch * len(rows) / pace[0]:,.0f} rows/s, "
                                  f"ETA {'at most ' if validate else ''}{pace[1]:.0f} s")   # early stopping may end it sooner
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
        self.lrs_ = [lr_for(self._lr(k), d) for k in range(len(self.dropouts))]   # "auto" by the feature width
        lr, l2, cosine = np.zeros((G, kp)), np.zeros((G, kp)), np.zeros((G, kp))
        steps = self.epochs_ * -(-n_rows // self.batch_size)
        for g, ks in enumerate(self.groups_):
            for h, k in enumerate(ks):
                self.W_[g, h * c:(h + 1) * c] = glorot if self._init(k) == "glorot_uniform" else 0.0
                lr[g, h * c:(h + 1) * c] = self.lrs_[k]
                l2[g, h * c:(h + 1) * c] = self._l2(k)
                cosine[g, h * c:(h + 1) * c] = steps if self._schedule(k) == "cosine" else 0
        return kernels.allocate(self.W_, self.b_, rates, n_heads, c, lr.ravel(), self.batch_size, steps,
                                (BETA_1, BETA_2, EPSILON), self.mean_, self.scale_, l2.ravel(), cosine.ravel())

    def _check_lengths(self):
        """Every per-head setting: one value for all heads, or one per head (dropouts sets the count)."""
        for name in ("lrs", "l2s", "inits", "schedules"):
            values = getattr(self, name)
            if values is not None and len(values) not in (1, len(self.dropouts)):
                raise ValueError(f"JointSoftmax {name}: expected 1 or {len(self.dropouts)} values (one per dropout "
                                 f"rate), got {len(values)}; give one value for all heads or one per head")

    @staticmethod
    def _each(values, k, default):
        """Head k's value of a per-head setting: `default` if None, the one value if one, else the k-th."""
        return default if values is None else values[0] if len(values) == 1 else values[k]

    def _lr(self, k):
        return self._each(self.lrs, k, DEFAULTS["lr"])

    def _l2(self, k) -> float:
        return float(self._each(self.l2s, k, 0.0))

    def _init(self, k) -> str:
        return self._each(self.inits, k, DEFAULTS["init"])

    def _schedule(self, k) -> str:
        return self._each(self.schedules, k, DEFAULTS["lr_schedule"])

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
            va = [(log_loss(yv, pk), float((pk.argmax(1) == yv).mean()))
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

    def params(self, k: int) -> dict:
        """Head k's parameters, as SoftmaxHead takes them."""
        return {"dropout": self.dropouts[k], "lr": self._lr(k), "epochs": self.epochs, "batch_size": self.batch_size,
                "early_stopping": self.early_stopping, "patience": self.patience, "standardize": self.standardize,
                "seed": self.seed, "l2": self._l2(k), "normalize": self.normalize, "blocks": self.blocks,
                "init": self._init(k), "lr_schedule": self._schedule(k)}

    def fitted(self, k: int) -> dict:
        """Head k's fitted attributes, as SoftmaxHead holds them (its own copy of the weights)."""
        g, r = self._rows(k)
        return {"coef_": self.W_[g, r].T.copy(), "intercept_": self.b_[g, r].copy(), "mean_": self.mean_,
                "scale_": self.scale_, "n_features_in_": self.W_.shape[2], "blocks_": self.blocks_,
                "history_": self.history_[k], "best_epoch_": self.best_epoch_[k], "epochs_": self.epochs_,
                "lr_": self.lrs_[k],
                "train_seconds_": self.train_seconds_, "keys_": self.keys_}

