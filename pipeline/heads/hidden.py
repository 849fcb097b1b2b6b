"""The softmax head with a hidden layer (SoftmaxHead(hidden=H), H > 0): Dropout(p) -> Dense(H, relu) ->
Dropout(p) -> Dense(C, softmax), trained by Keras' own train step (`train_on_batch`, any backend; each
epoch's validation by `evaluate`) with the linear head's rules: Adam(lr), constant or CosineDecay(lr,
every step), L2(l2) on both kernels, the hidden kernel Glorot-uniform and the output kernel `init`,
seeded; the normalize step and the standardisation with the training rows' statistics come first, as
for the linear head.

The rows stream from the cache (mapped float16 included) in shuffled batches, widened and
standardised per batch (`_Batches`): no float32 copy of a cache. Inference (`hidden_proba`) is
plain NumPy in blocks of rows, the standardisation folded into the hidden layer's product.
"""
from __future__ import annotations

import logging
import time

import numpy as np
from scipy.special import softmax

from .config import PROGRESS, epochs_for, lr_for
from .linear import feature_stats, kernel_view, normalized
from .normalize import check_blocks, transform

log = logging.getLogger(__name__)
INFER_ROWS = 2048          # rows per inference block (float32: 88 MB at 10,752 features)


class _Batches:
    """Standardised float32 batches of X[rows] (mapped float16 widened per batch), in an order reshuffled
    every epoch from `seed`: batch i of an epoch is `self[i]`."""

    def __init__(self, X, y, rows, mean, scale, batch_size, seed):
        self.Xk, self.y, self.rows, self.mean, self.scale = kernel_view(X), y, rows, mean, scale
        self.batch_size, self.rng = batch_size, np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self):
        return -(-len(self.rows) // self.batch_size)

    def __getitem__(self, i):
        idx = np.sort(self.order[i * self.batch_size:(i + 1) * self.batch_size])   # sorted: mapped reads in order
        return _standardized(_float32_rows(self.Xk, idx), self.mean, self.scale), self.y[idx]

    def on_epoch_end(self):
        self.order = self.rng.permutation(self.rows)


def _float32_rows(Xk, rows) -> np.ndarray:
    """Xk[rows] (linear.kernel_view's features) as a new float32 array, widened by kernels.widen."""
    from .kernels import widen
    out = np.empty((len(rows), Xk.shape[1]), np.float32)
    widen(Xk, np.asarray(rows, np.int64), out)
    return out


def _standardized(z: np.ndarray, mean, scale) -> np.ndarray:
    """float32 rows z standardised in place (mean None: as they are)."""
    if mean is not None:
        z -= mean
        z /= scale
    return z


def build(keras, d, hidden, n_classes, dropout, l2, init, seed):
    """The trained part of the head: Dropout -> Dense(hidden, relu) -> Dropout -> Dense softmax."""
    L = keras.layers
    reg = (lambda: keras.regularizers.L2(float(l2))) if l2 else (lambda: None)
    out_init = "zeros" if init == "zeros" else keras.initializers.GlorotUniform(seed=seed + 1)
    return keras.Sequential([
        keras.Input((d,)), L.Dropout(dropout, seed=seed, name="dropout"),
        L.Dense(hidden, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
                kernel_regularizer=reg(), name="hidden"),
        L.Dropout(dropout, seed=seed + 2, name="hidden_dropout"),
        L.Dense(n_classes, activation="softmax", kernel_initializer=out_init, kernel_regularizer=reg(),
                name="predictions")], name="softmax_head")


def fit_hidden(est, X, y, X_val, y_val, n_classes, rows, l2, epochs, early_stopping):
    """Train est's hidden-layer head on X[rows] (y: 0..C-1); sets its fitted attributes."""
    import keras
    from .joint import BETA_1, BETA_2, EPSILON
    t0 = time.perf_counter()
    est.blocks_ = check_blocks(est.blocks, X.shape[1])
    X = normalized(X, est.blocks_, est.normalize)
    rows = np.arange(len(X)) if rows is None else np.asarray(rows, np.int64)
    est.mean_, est.scale_ = feature_stats(X, rows) if est.standardize else (None, None)
    epochs = est.epochs_ = epochs_for(epochs, len(rows), est.batch_size)
    model = build(keras, X.shape[1], est.hidden, n_classes, est.dropout, l2, est.init, est.seed)
    train = _Batches(X, np.asarray(y, np.int64), rows, est.mean_, est.scale_, est.batch_size, est.seed)
    steps = epochs * len(train)
    rate = est.lr_ = lr_for(est.lr, X.shape[1], est.hidden)
    lr = keras.optimizers.schedules.CosineDecay(rate, steps) if est.lr_schedule == "cosine" else rate
    model.compile(optimizer=keras.optimizers.Adam(lr, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    val = None
    if X_val is not None and len(X_val):
        Xv = kernel_view(normalized(X_val, est.blocks_, est.normalize))
        val = (_standardized(_float32_rows(Xv, np.arange(len(Xv))), est.mean_, est.scale_), np.asarray(y_val))
    progress = _Progress(epochs, len(rows), early_stopping and val is not None, est.patience)
    for epoch in range(epochs):
        row = {"epoch": epoch + 1, **_train_epoch(model, train)}
        if val is not None:
            scores = model.evaluate(*val, batch_size=INFER_ROWS, verbose=0, return_dict=True)
            row.update(val_loss=float(scores["loss"]), val_accuracy=float(scores["accuracy"]))
        if progress.epoch_end(model, row):
            break
    if progress.best is not None:
        model.set_weights(progress.best)
    (w1, b1), (w2, b2) = model.get_layer("hidden").get_weights(), model.get_layer("predictions").get_weights()
    est.hidden_kernel_, est.hidden_bias_ = np.asarray(w1, np.float32), np.asarray(b1, np.float32)
    est.coef_, est.intercept_ = np.asarray(w2, np.float32), np.asarray(b2, np.float32)
    est.history_, est.best_epoch_, est.keys_ = progress.history, progress.best_epoch, None
    est.train_seconds_ = time.perf_counter() - t0


def _train_epoch(model, train: _Batches) -> dict:
    """One pass of Keras' train step over every batch, then a reshuffle; the epoch's train_loss and
    train_accuracy as `fit` reports them (the mean over its batches, weighted by their rows). A loop of `train_on_batch`
    rather than `fit` on a PyDataset: TensorFlow's fit wraps one in a tf.data generator whose iterator,
    deleted at an epoch's end with the GIL held, can wait forever on a thread that needs the GIL (seen
    here: a refit hung at its fourth epoch; docs/full-cifar10.md, "A hidden layer")."""
    loss = accuracy = 0.0
    for i in range(len(train)):
        xb, yb = train[i]
        logs = model.train_on_batch(xb, yb, return_dict=True)
        loss, accuracy = loss + float(logs["loss"]) * len(yb), accuracy + float(logs["accuracy"]) * len(yb)
    train.on_epoch_end()
    return {"train_loss": loss / len(train.rows), "train_accuracy": accuracy / len(train.rows)}


class _Progress:
    """Per epoch: a history row as the linear head records it, the best epoch (lowest validation loss),
    one log line (rows/s, ETA); with early stopping that epoch's weights kept and the stop decided."""

    def __init__(self, epochs, n_rows, early, patience):
        self.epochs, self.n_rows, self.early, self.patience = epochs, n_rows, early, patience
        self.history, self.best, self.best_epoch, self.best_loss, self.stale = [], None, 0, np.inf, 0
        self.t0 = time.perf_counter()

    def epoch_end(self, model, row) -> bool:
        """Record the epoch's history row (epoch, train_*, val_* with validation); True when early
        stopping ends the run."""
        e = row["epoch"]
        self.history.append(row)
        spent = time.perf_counter() - self.t0
        val = f", validation {row['val_accuracy']:.2%}" if "val_loss" in row else ""
        PROGRESS.info(f"hidden-layer head: epoch {e}/{self.epochs}, loss {row['train_loss']:.4f}{val}; "
                 f"{e * self.n_rows / spent:,.0f} rows/s, ETA {spent / e * (self.epochs - e):.0f} s")
        if "val_loss" not in row:
            return False
        if row["val_loss"] < self.best_loss:      # the best epoch is recorded as the linear head's is
            self.best_loss, self.best_epoch, self.stale = row["val_loss"], e, 0
            self.best = model.get_weights() if self.early else None
        elif self.early:
            self.stale += 1
            return self.stale >= self.patience
        return False


def hidden_proba(X, est) -> np.ndarray:
    """N x C probabilities (float64) of a fitted hidden-layer head: per block of rows, the normalize
    step, then relu(x @ W1' + b1') @ W2 + b2 with the standardisation folded into W1', b1'."""
    W1, b1 = est.hidden_kernel_, est.hidden_bias_
    if est.mean_ is not None:
        W1 = W1 / est.scale_[:, None]
        b1 = b1 - est.mean_ @ W1
    out, Xk = np.empty((len(X), est.coef_.shape[1]), np.float32), kernel_view(X)
    for a in range(0, len(X), INFER_ROWS):
        z = transform(_float32_rows(Xk, np.arange(a, min(a + INFER_ROWS, len(X)))), est.blocks_, est.normalize)
        h = z @ W1 + b1
        np.maximum(h, 0, out=h)
        out[a:a + len(z)] = h @ est.coef_ + est.intercept_
    return softmax(out.astype(np.float64), axis=1)
