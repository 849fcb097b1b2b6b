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
    """Without dropout, head k of a batched fit follows the same path as a lone Adam(lr_k) fit."""
    X, y, _, _ = easy
    both = SoftmaxHeads(dropouts=(0.0, 0.0), lrs=(1e-3, 1e-2), epochs=3, batch_size=100, seed=1).fit(X, y)
    for k, lr in enumerate((1e-3, 1e-2)):
        alone = SoftmaxHeads(dropouts=(0.0,), lrs=(lr,), epochs=3, batch_size=100, seed=1).fit(X, y)
        w_both, b_both = both.head_weights(k)
        w_alone, b_alone = alone.head_weights(0)
        np.testing.assert_allclose(w_both, w_alone, rtol=2e-3, atol=2e-5)
        np.testing.assert_allclose(b_both, b_alone, rtol=2e-3, atol=2e-5)


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
    from pipeline.keras_file import write_softmax_head
    X, y, Xv, _ = easy
    heads = SoftmaxHeads(dropouts=(0.3,), lrs=(1e-2,), epochs=2, batch_size=100).fit(X, y)
    write_softmax_head(str(tmp_path / "h.keras"), *heads.head_weights(0), 0.3)
    model = keras.saving.load_model(str(tmp_path / "h.keras"))
    assert [type(layer).__name__ for layer in model.layers] == ["Dropout", "Dense"] and model.layers[0].rate == 0.3
    np.testing.assert_allclose(np.asarray(model.predict(Xv, verbose=0)), heads.predict_proba(Xv)[0], rtol=1e-4, atol=1e-6)


def test_adam_matches_keras_adam():
    import keras
    from pipeline.heads import Adam
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(6, 4)).astype(np.float32)
    grads = [rng.normal(size=(6, 4)).astype(np.float32) for _ in range(5)]
    mine, opt = w0.copy(), Adam([w0], np.full(4, 3e-3))
    var, kopt = keras.Variable(w0.copy()), keras.optimizers.Adam(3e-3)
    for g in grads:
        opt.step([mine], [g])
        kopt.apply([keras.ops.convert_to_tensor(g)], [var])
    np.testing.assert_allclose(mine, np.asarray(var), rtol=1e-5, atol=1e-7)


def test_dropout_keeps_the_right_fraction():
    from pipeline.heads import NOISE_LEVELS, _Group, glorot_uniform
    g = _Group(0.35, [0], [1e-3], glorot_uniform(64, 3, 0), 500)
    noise = np.random.default_rng(0).integers(0, NOISE_LEVELS, (500, 64), dtype=np.uint16)
    g.step(np.ones((500, 64), np.float32), noise, np.zeros(500, np.int64))
    kept = g.xm[:500] != 0
    assert abs(kept.mean() - 0.65) < 0.01 and g.scale == pytest.approx(1 / 0.65, rel=1e-4)
