"""The softmax head with a hidden layer (hidden.py): it learns what a linear head cannot, its file is
the model it trained, and early stopping keeps its best epoch."""
import numpy as np
import pytest
from sklearn.metrics import log_loss

from pipeline.heads import SoftmaxHead


@pytest.fixture(scope="module")
def xor():
    """Four clusters at the corners of a square, opposite corners one class (XOR): no linear boundary."""
    rng = np.random.default_rng(0)
    corners = np.array([[1, 1], [-1, -1], [1, -1], [-1, 1]], np.float32)
    c = rng.integers(0, 4, 1200)
    X = np.hstack([corners[c] + 0.25 * rng.normal(size=(1200, 2)), rng.normal(size=(1200, 2))]).astype(np.float16)
    return X[:1000], (c[:1000] >= 2).astype(np.int64), X[1000:], (c[1000:] >= 2).astype(np.int64)


def test_a_hidden_layer_learns_what_the_linear_head_cannot(xor):
    X, y, Xv, yv = xor
    linear = SoftmaxHead(epochs=30, batch_size=50, lr=1e-2).fit(X, y)
    hidden = SoftmaxHead(hidden=32, dropout=0.1, epochs=30, batch_size=50, lr=1e-2).fit(X, y, Xv, yv)
    assert (linear.predict(Xv) == yv).mean() < 0.7                  # chance is 0.5
    assert (hidden.predict(Xv) == yv).mean() > 0.9
    assert hidden.hidden_kernel_.shape == (4, 32) and hidden.coef_.shape == (32, 2)
    best = int(np.argmin([r["val_loss"] for r in hidden.history_])) + 1
    assert hidden.best_epoch_ == best                     # recorded as the linear head records it
    proba = hidden.predict_proba(Xv)
    assert proba.shape == (200, 2) and np.allclose(proba.sum(1), 1)
    assert len(hidden.history_) == 30 and hidden.history_[-1]["val_accuracy"] == pytest.approx((proba.argmax(1) == yv).mean(), abs=1e-6)


def test_training_rows_are_the_ones_given_and_standardised_by_their_statistics(xor):
    X, y, _, _ = xor
    rows = np.arange(0, 1000, 2)
    head = SoftmaxHead(hidden=8, epochs=1, batch_size=100).fit(X, y, rows=rows)
    np.testing.assert_allclose(head.mean_, X[rows].astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
    assert head.history_[0]["epoch"] == 1


def test_its_head_file_is_the_model_it_trained_also_with_the_normalize_step(xor, tmp_path):
    import keras
    from pipeline.heads.keras_file import head_model, read_head, write_head
    import pipeline.heads.layers  # noqa: F401  (registers BlockNormalization for load_model)
    X, y, Xv, yv = xor
    head = SoftmaxHead(hidden=16, dropout=0.3, epochs=3, batch_size=100, normalize="sqrt-l2", blocks=[2, 2]).fit(X, y)
    path = str(tmp_path / "h.keras")
    write_head(path, **head.head_file())
    model = keras.saving.load_model(path)
    assert [type(layer).__name__ for layer in model.layers] == [
        "BlockNormalization", "Normalization", "Dropout", "Dense", "Dropout", "Dense"]
    assert model.layers[3].activation.__name__ == "relu" and model.layers[4].rate == 0.3
    want = head.predict_proba(Xv)
    np.testing.assert_allclose(np.asarray(model.predict(Xv.astype(np.float32), verbose=0)), want, rtol=1e-4, atol=1e-6)
    read = read_head(path)
    assert read["hidden_kernel"].shape == (4, 16) and read["dropout"] == 0.3
    np.testing.assert_allclose(np.asarray(head_model(read).predict(Xv.astype(np.float32), verbose=0)), want,
                               rtol=1e-4, atol=1e-6)


def test_early_stopping_keeps_the_best_epoch():
    """100 noisy rows of 60 features, no dropout, a big step: the validation loss turns up early."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    X = (rng.normal(size=(400, 60)) + 0.8 * y[:, None] * (np.arange(60) < 3)).astype(np.float32)
    X, y, Xv, yv = X[:100], y[:100], X[100:], y[100:]
    head = SoftmaxHead(hidden=256, dropout=0.0, lr=0.02, epochs=40, batch_size=20, early_stopping=True,
                       patience=2, lr_schedule="constant", refit=False).fit(X, y, Xv, yv)
    hist = head.history_
    best = int(np.argmin([r["val_loss"] for r in hist]))
    assert len(hist) < 40 and head.best_epoch_ == best + 1
    assert log_loss(yv, head.predict_proba(Xv)) == pytest.approx(hist[best]["val_loss"], rel=1e-3)


def test_refit_keeps_the_validation_scores_and_trains_again_on_train_and_validation(xor):
    """(The refit is checked against its own record: the first fit, as it was scored.)"""
    X, y, Xv, yv = xor
    head = SoftmaxHead(refit=True, hidden=16, dropout=0.1, epochs=6, batch_size=100, lr=1e-2).fit(X, y, Xv, yv)
    assert len(head.history_) == 6 and head.best_epoch_ >= 1     # the first fit's record, scored on validation
    assert head.history_[-1]["val_accuracy"] == pytest.approx((head.val_proba_.argmax(1) == yv).mean(), abs=1e-6)
    assert head.history_[-1]["val_loss"] == pytest.approx(log_loss(yv, head.val_proba_), rel=1e-4)
    both = np.concatenate([X, Xv])
    np.testing.assert_allclose(head.mean_, both.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)   # refit rows' statistics
    after = head.predict_proba(Xv)                                   # the refit head: it has seen these rows
    assert np.abs(after - head.val_proba_).max() > 1e-3 and (after.argmax(1) == yv).mean() > 0.9
    before = head.before_refit_                                     # the first fit, whole, as it was scored
    np.testing.assert_array_equal(before.predict_proba(Xv), head.val_proba_)
    assert before.hidden_kernel_ is not head.hidden_kernel_ and not before.refit


def test_a_penalty_chosen_on_validation_is_for_linear_heads_only(xor):
    X, y, Xv, yv = xor
    with pytest.raises(ValueError, match="l2='auto' trains linear heads only"):
        SoftmaxHead(hidden=4, l2="auto").fit(X, y, Xv, yv)
    with pytest.raises(ValueError, match="hidden"):
        SoftmaxHead(hidden=-1).fit(X, y)


def test_the_training_loop_is_keras_fit_step_for_step(xor):
    """fit_hidden's loop of train_on_batch (no tf.data generator: README, "A hidden layer") trains the
    head Keras' fit trains on the same batches in the same order: the same weights and history."""
    import keras
    from pipeline.heads.hidden import INFER_ROWS, _Batches, _standardized, build
    from pipeline.heads.joint import BETA_1, BETA_2, EPSILON
    from pipeline.heads.linear import feature_stats
    X, y, Xv, yv = xor
    head = SoftmaxHead(hidden=16, dropout=0.2, epochs=3, batch_size=100, lr=1e-2, seed=3, refit=False).fit(X, y, Xv, yv)
    mean, scale = feature_stats(X, np.arange(len(X)))
    batches = _Batches(X, y, np.arange(len(X)), mean, scale, 100, 3)
    model = build(keras, X.shape[1], 16, 2, 0.2, 0.0, "zeros", 3)
    lr = keras.optimizers.schedules.CosineDecay(1e-2, 3 * len(batches))
    model.compile(optimizer=keras.optimizers.Adam(lr, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    val, history = (_standardized(Xv.astype(np.float32), mean, scale), yv), []
    for _ in range(3):                                    # one epoch's batches, in order, as arrays
        xs, ys = zip(*(batches[i] for i in range(len(batches))))
        batches.on_epoch_end()
        fitted = model.fit(np.concatenate(xs), np.concatenate(ys), batch_size=100, shuffle=False, epochs=1,
                           validation_data=val, validation_batch_size=INFER_ROWS, verbose=0)
        history.append({k: v[0] for k, v in fitted.history.items()})
    np.testing.assert_allclose(head.hidden_kernel_, model.get_layer("hidden").get_weights()[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.coef_, model.get_layer("predictions").get_weights()[0], rtol=1e-5, atol=1e-6)
    for key, got in (("loss", "train_loss"), ("accuracy", "train_accuracy"), ("val_loss", "val_loss")):
        np.testing.assert_allclose([r[got] for r in head.history_], [r[key] for r in history], rtol=1e-5, atol=1e-6)
    again = SoftmaxHead(hidden=16, dropout=0.2, epochs=3, batch_size=100, lr=1e-2, seed=3, refit=False).fit(X, y, Xv, yv)
    np.testing.assert_array_equal(again.hidden_kernel_, head.hidden_kernel_)     # the seed decides the batches
