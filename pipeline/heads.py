"""Heads on cached features, scikit-learn style: `__init__` stores parameters, `fit` sets the
trailing-underscore state.

- `SoftmaxHeads`: K copies of the notebook's head, Dropout(p_k) -> Dense(C, softmax), trained with
  Adam(lr_k) in ONE Keras model: a single pass over the data per epoch for all K. Heads sharing a
  dropout rate share one GEMM. Per-head learning rates use Adam's scale invariance: head k's
  weights are W_k = s_k * V_k with s_k = lr_k / max(lr), and Adam(max lr) steps V_k, so W_k moves
  exactly as Adam(lr_k) would move it (epsilon scaled to stay <= Keras' 1e-7). K=1 is plain Adam.
- `LogRegHead`: StandardScaler + LogisticRegression (scikit-learn).
"""
from __future__ import annotations

import time

import numpy as np

ADAM_EPSILON = 1e-7  # Keras' default


def _keras():
    import keras
    return keras


def _heads_layer_class():
    keras = _keras()
    ops = keras.ops

    @keras.saving.register_keras_serializable(package="pipeline")
    class DropoutDenseHeads(keras.layers.Layer):
        """K heads: logits[:, k] = s_k * (dropout_{p_k}(x) @ V_k + c_k); heads ordered by dropout rate."""

        def __init__(self, n_classes, dropouts, scales, seed=0, **kw):
            super().__init__(**kw)
            self.n_classes, self.dropouts, self.scales, self.seed = n_classes, list(dropouts), list(scales), seed
            rates = sorted(set(self.dropouts), key=self.dropouts.index)
            self.groups = [(r, self.dropouts.index(r), self.dropouts.index(r) + self.dropouts.count(r)) for r in rates]
            self.drop = [keras.layers.Dropout(r, seed=seed + i) for i, (r, _, _) in enumerate(self.groups)]

        def build(self, input_shape):
            k, c, d = len(self.dropouts), self.n_classes, input_shape[-1]
            init = keras.initializers.GlorotUniform(seed=self.seed)
            glorot = np.asarray(init((d, c)))  # the same start as Dense(C), before the lr scaling
            v0 = np.concatenate([glorot / s for s in self.scales], axis=1)
            self.kernel = self.add_weight(shape=(d, k * c), initializer=keras.initializers.Constant(v0), name="kernel")
            self.bias = self.add_weight(shape=(k * c,), initializer="zeros", name="bias")

        def call(self, x, training=False):
            c, outs = self.n_classes, []
            for drop, (_, a, b) in zip(self.drop, self.groups):
                outs.append(ops.matmul(drop(x, training=training), self.kernel[:, a * c:b * c]))
            z = ops.concatenate(outs, axis=1) + self.bias
            scale = ops.repeat(ops.convert_to_tensor(np.asarray(self.scales, "float32")), c)
            return ops.reshape(z * scale, (-1, len(self.dropouts), c))

        def get_config(self):
            return {**super().get_config(), "n_classes": self.n_classes, "dropouts": self.dropouts,
                    "scales": self.scales, "seed": self.seed}

    return DropoutDenseHeads


def _per_head_loss(keras):
    ops = keras.ops

    def loss(y_true, logits):  # sum over heads of each head's mean cross-entropy
        k = ops.shape(logits)[1]
        y = ops.repeat(ops.reshape(ops.cast(y_true, "int32"), (-1, 1)), k, axis=1)
        ce = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        return ops.sum(ce, axis=-1)
    return loss


def softmax_np(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_loss(proba, y):
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None))))


class SoftmaxHeads:
    def __init__(self, dropouts=(0.5,), lrs=(1e-3,), epochs=20, batch_size=250, early_stopping=False,
                 patience=3, seed=0, monitor_rows=5000):
        self.dropouts, self.lrs, self.epochs, self.batch_size = dropouts, lrs, epochs, batch_size
        self.early_stopping, self.patience, self.seed, self.monitor_rows = early_stopping, patience, seed, monitor_rows

    def fit(self, X, y, X_val=None, y_val=None, n_classes=None):
        keras = _keras()
        keras.utils.set_random_seed(self.seed)
        n_classes = n_classes or int(y.max()) + 1
        order = np.argsort(np.asarray(self.dropouts), kind="stable")  # heads sharing a rate sit together
        lrs = np.asarray(self.lrs, "float64")
        base = float(lrs.max())
        scales = (lrs / base)[order]
        layer = _heads_layer_class()(n_classes, [float(self.dropouts[i]) for i in order], [float(s) for s in scales],
                                     seed=self.seed, name="heads")
        inp = keras.Input((X.shape[1],), name="features")
        model = keras.Model(inp, layer(inp))
        model.compile(optimizer=keras.optimizers.Adam(base, epsilon=ADAM_EPSILON * float(scales.min())),
                      loss=_per_head_loss(keras), jit_compile="auto", steps_per_execution=50)
        rng = np.random.default_rng(self.seed)
        mon = rng.choice(len(X), min(self.monitor_rows, len(X)), replace=False)
        monitor = _monitor(self, X[mon], y[mon], X_val, y_val, order)
        t = time.perf_counter()
        model.fit(X, y, batch_size=self.batch_size, epochs=self.epochs, shuffle=True, verbose=0, callbacks=[monitor])
        self.train_seconds_ = time.perf_counter() - t
        self.model_, self.order_, self.n_classes_ = model, order, n_classes
        self.history_ = monitor.history  # per head (original order): list of per-epoch dicts
        self.best_epoch_ = monitor.best_epoch
        if self.early_stopping and monitor.best_weights is not None:
            layer.kernel.assign(monitor.best_weights[0])
            layer.bias.assign(monitor.best_weights[1])
        return self

    def logits(self, X) -> np.ndarray:
        """K x N x C logits, heads in the order given to __init__."""
        z = np.asarray(self.model_.predict(X, batch_size=4096, verbose=0))
        inv = np.argsort(self.order_)
        return np.transpose(z, (1, 0, 2))[inv]

    def predict_proba(self, X) -> np.ndarray:
        return softmax_np(self.logits(X))

    def head_weights(self, k):
        """Head k's effective Dense kernel and bias (original order)."""
        layer = self.model_.get_layer("heads")
        j, c = int(np.flatnonzero(self.order_ == k)[0]), self.n_classes_
        s = layer.scales[j]
        return s * np.asarray(layer.kernel)[:, j * c:(j + 1) * c], s * np.asarray(layer.bias)[j * c:(j + 1) * c]

    def export_head(self, k=0):
        """Head k alone as the notebook's Keras head: Dropout(p) -> Dense(C, softmax)."""
        keras = _keras()
        w, b = self.head_weights(k)
        head = keras.Sequential([keras.Input((w.shape[0],)), keras.layers.Dropout(float(self.dropouts[k]), name="dropout"),
                                 keras.layers.Dense(self.n_classes_, activation="softmax", name="predictions")],
                                name="softmax_head")
        head.get_layer("predictions").set_weights([w, b])
        return head


def _monitor(heads, Xm, ym, Xv, yv, order):
    """A Keras callback: per-head train/val loss and accuracy after each epoch, the best epoch per
    head on val loss, and early stopping once no head has improved for `patience` epochs."""
    keras = _keras()

    class Monitor(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            k = len(order)
            self.history = [[] for _ in range(k)]
            self.best_loss, self.best_epoch, self.best_weights, self.stale = np.full(k, np.inf), [0] * k, None, 0

        def _eval(self, X, y):
            z = np.transpose(np.asarray(self.model.predict(X, batch_size=4096, verbose=0)), (1, 0, 2))
            return [(log_loss(pk, y), float((pk.argmax(1) == y).mean())) for pk in softmax_np(z)]

        def on_epoch_end(self, epoch, logs=None):
            tr = self._eval(Xm, ym)
            va = self._eval(Xv, yv) if Xv is not None and len(Xv) else None
            improved = []
            for j, k in enumerate(order):
                row = {"epoch": epoch + 1, "train_loss": tr[j][0], "train_accuracy": tr[j][1]}
                if va:
                    row.update(val_loss=va[j][0], val_accuracy=va[j][1])
                    if va[j][0] < self.best_loss[j]:
                        self.best_loss[j], self.best_epoch[k] = va[j][0], epoch + 1
                        improved.append(j)
                self.history[k].append(row)
            if va and heads.early_stopping:
                self._keep_best(improved)
                self.stale = 0 if improved else self.stale + 1
                if self.stale >= heads.patience:
                    self.model.stop_training = True

        def _keep_best(self, improved):
            layer = self.model.get_layer("heads")
            c = layer.n_classes
            kernel, bias = np.asarray(layer.kernel), np.asarray(layer.bias)
            if self.best_weights is None:
                self.best_weights = [kernel.copy(), bias.copy()]
            for j in improved:
                self.best_weights[0][:, j * c:(j + 1) * c] = kernel[:, j * c:(j + 1) * c]
                self.best_weights[1][j * c:(j + 1) * c] = bias[j * c:(j + 1) * c]

    return Monitor()


class LogRegHead:
    def __init__(self, C=1.0, max_iter=200, seed=0):
        self.C, self.max_iter, self.seed = C, max_iter, seed

    def fit(self, X, y, X_val=None, y_val=None, n_classes=None):
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
