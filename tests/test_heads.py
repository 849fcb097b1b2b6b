import numpy as np
import pytest

from pipeline.heads import LogRegHead, SoftmaxHeads
from pipeline.synthetic import make_features


@pytest.fixture(scope="module")
def easy():
    X, y = make_features(900, 32, 5, seed=0, separation=0.8)
    return X[:600], y[:600], X[600:], y[600:]


def test_softmax_head_beats_chance(easy):
    X, y, Xv, yv = easy
    head = SoftmaxHeads(lrs=(1e-2,), epochs=10, batch_size=50).fit(X, y, Xv, yv, n_classes=5)
    acc = (head.predict_proba(Xv)[0].argmax(1) == yv).mean()
    assert acc > 0.8, acc  # chance is 0.2
    assert len(head.history_[0]) == 10 and {"train_loss", "val_accuracy"} <= set(head.history_[0][0])


def test_batched_heads_train_like_separate_heads(easy):
    """Head k of a batched fit follows the path of a lone fit with the same seed: same batches, same
    dropout draws (its rate applied to them), same Adam(lr_k), whichever kernel trains the batch."""
    X, y, _, _ = easy
    dropouts, lrs = (0.2, 0.5, 0.5), (1e-3, 1e-2, 3e-3)
    both = SoftmaxHeads(dropouts=dropouts, lrs=lrs, epochs=3, batch_size=100, seed=1).fit(X, y)
    for k, (p, lr) in enumerate(zip(dropouts, lrs)):
        alone = SoftmaxHeads(dropouts=(p,), lrs=(lr,), epochs=3, batch_size=100, seed=1).fit(X, y)
        w_both, b_both = both.head_weights(k)
        w_alone, b_alone = alone.head_weights(0)
        np.testing.assert_allclose(w_both, w_alone, rtol=2e-3, atol=2e-5)
        np.testing.assert_allclose(b_both, b_alone, rtol=2e-3, atol=2e-5)
        assert both.history_[k][-1]["train_loss"] == pytest.approx(alone.history_[0][-1]["train_loss"], rel=1e-4)


def test_a_seed_reproduces_a_run_and_another_seed_does_not(easy):
    X, y, _, _ = easy
    a, b, c = (SoftmaxHeads(epochs=2, batch_size=64, seed=s).fit(X, y) for s in (3, 3, 4))
    assert np.array_equal(a.W_, b.W_) and not np.array_equal(a.W_, c.W_)


def test_big_heads_train_like_small_ones(monkeypatch):
    """train_epoch_chunks (heads too big for one core's cache) learns what train_epoch_rows does."""
    from pipeline import kernels
    X, y = make_features(400, 8192, 10, seed=2, separation=0.5)
    big = SoftmaxHeads(epochs=2, batch_size=50).fit(X, y)
    assert big.W_.nbytes > kernels.ROWS_KERNEL_BYTES
    monkeypatch.setattr(kernels, "ROWS_KERNEL_BYTES", big.W_.nbytes)
    small = SoftmaxHeads(epochs=2, batch_size=50).fit(X, y)
    np.testing.assert_allclose(big.W_, small.W_, rtol=1e-3, atol=1e-6)
    assert big.history_[0][-1]["train_loss"] == pytest.approx(small.history_[0][-1]["train_loss"], rel=1e-4)


def test_exported_head_is_the_notebook_head(easy):
    X, y, Xv, _ = easy
    heads = SoftmaxHeads(dropouts=(0.2, 0.5), lrs=(1e-3, 3e-3), epochs=2, batch_size=100).fit(X, y)
    model = heads.export_head(1)
    assert [type(layer).__name__ for layer in model.layers] == ["Dropout", "Dense"]
    assert model.layers[0].rate == 0.5
    np.testing.assert_allclose(np.asarray(model.predict(Xv, verbose=0)), heads.predict_proba(Xv)[1], rtol=1e-4, atol=1e-6)


def test_early_stopping_keeps_the_best_epoch(easy):
    X, y, Xv, yv = easy
    head = SoftmaxHeads(lrs=(0.5,), epochs=30, batch_size=50, early_stopping=True, patience=2).fit(X, y, Xv, yv)
    hist = head.history_[0]
    assert len(hist) < 30
    best = int(np.argmin([r["val_loss"] for r in hist]))
    assert head.best_epoch_[0] == best + 1
    from pipeline.heads import log_loss
    assert log_loss(head.predict_proba(Xv)[0], yv) == pytest.approx(hist[best]["val_loss"], rel=1e-4)


def test_logreg_beats_chance(easy):
    X, y, Xv, yv = easy
    head = LogRegHead(C=1.0, max_iter=200).fit(X, y, Xv, yv, n_classes=5)
    p = head.predict_proba(Xv)
    assert p.shape == (1, 300, 5) and (p[0].argmax(1) == yv).mean() > 0.8


def test_head_file_written_without_keras_loads_in_keras(easy, tmp_path):
    import keras
    from pipeline.keras_file import head_model, read_head, write_head
    X, y, Xv, _ = easy
    heads = SoftmaxHeads(dropouts=(0.3,), lrs=(1e-2,), epochs=2, batch_size=100).fit(X, y)
    write_head(str(tmp_path / "h.keras"), **heads.head_file(0))
    model = keras.saving.load_model(str(tmp_path / "h.keras"))
    assert [type(layer).__name__ for layer in model.layers] == ["Dropout", "Dense"] and model.layers[0].rate == 0.3
    np.testing.assert_allclose(np.asarray(model.predict(Xv, verbose=0)), heads.predict_proba(Xv)[0], rtol=1e-4, atol=1e-6)
    ours = head_model(read_head(str(tmp_path / "h.keras")))      # what predict builds: the same numbers
    np.testing.assert_allclose(np.asarray(ours.predict(Xv, verbose=0)), heads.predict_proba(Xv)[0], rtol=1e-4, atol=1e-6)


def test_training_metrics_are_keras_style_running_means(easy):
    """history's train_loss/accuracy: the epoch's mean over its batches, with dropout, as Keras's fit
    reports them; without dropout and with lr ~ 0 that is the loss of the (unchanged) head."""
    X, y, _, _ = easy
    head = SoftmaxHeads(dropouts=(0.0,), lrs=(1e-12,), epochs=1, batch_size=64).fit(X, y)
    from pipeline.heads import log_loss
    p = head.predict_proba(X)[0]
    assert head.history_[0][0]["train_loss"] == pytest.approx(log_loss(p, y), rel=1e-4)
    assert head.history_[0][0]["train_accuracy"] == pytest.approx((p.argmax(1) == y).mean(), abs=1e-9)
