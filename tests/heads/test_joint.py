"""JointSoftmax: many heads trained at once, each as it would train alone, by the plain numpy definition."""
import numpy as np
import pytest
from sklearn.metrics import log_loss

from pipeline.heads import SoftmaxHead, JointSoftmax


def test_softmax_head_beats_chance(easy):
    X, y, Xv, yv = easy
    head = JointSoftmax(lrs=(1e-2,), epochs=10, batch_size=50).fit(X, y, Xv, yv, n_classes=5)
    acc = (head.predict_proba(Xv)[0].argmax(1) == yv).mean()
    assert acc > 0.8, acc  # chance is 0.2
    assert len(head.history_[0]) == 10 and {"train_loss", "val_accuracy"} <= set(head.history_[0][0])


def test_batched_heads_train_like_separate_heads(easy):
    """Head k of a batched fit follows the path of a lone fit with the same seed: same batches, same
    dropout draws (its rate applied to them), same Adam(lr_k), whichever kernel trains the batch."""
    X, y, _, _ = easy
    dropouts, lrs = (0.2, 0.5, 0.5), (1e-3, 1e-2, 3e-3)
    both = JointSoftmax(dropouts=dropouts, lrs=lrs, epochs=3, batch_size=100, seed=1).fit(X, y)
    for k, (p, lr) in enumerate(zip(dropouts, lrs)):
        alone = JointSoftmax(dropouts=(p,), lrs=(lr,), epochs=3, batch_size=100, seed=1).fit(X, y)
        w_both, b_both = SoftmaxHead.from_joint(both, k).coef_, SoftmaxHead.from_joint(both, k).intercept_
        w_alone, b_alone = SoftmaxHead.from_joint(alone, 0).coef_, SoftmaxHead.from_joint(alone, 0).intercept_
        np.testing.assert_allclose(w_both, w_alone, rtol=2e-3, atol=2e-5)
        np.testing.assert_allclose(b_both, b_alone, rtol=2e-3, atol=2e-5)
        assert both.history_[k][-1]["train_loss"] == pytest.approx(alone.history_[0][-1]["train_loss"], rel=1e-4)


def test_a_seed_reproduces_a_run_and_another_seed_does_not(easy):
    X, y, _, _ = easy
    a, b, c = (JointSoftmax(epochs=2, batch_size=64, seed=s).fit(X, y) for s in (3, 3, 4))
    assert np.array_equal(a.W_, b.W_) and not np.array_equal(a.W_, c.W_)


def test_big_heads_train_like_small_ones(monkeypatch):
    """_step_chunks (heads too big for one core's cache) learns what _step_rows does."""
    from pipeline.features.synthetic import make_features
    from pipeline.heads import kernels
    X, y = make_features(400, 16384, 10, seed=2, separation=0.5)
    monkeypatch.setattr(kernels, "ROWS_KERNEL_BYTES", 16384 * 10 * 4 - 1)     # whatever this machine's L2
    big = JointSoftmax(epochs=2, batch_size=50).fit(X, y)
    monkeypatch.setattr(kernels, "ROWS_KERNEL_BYTES", 16384 * 10 * 4)
    small = JointSoftmax(epochs=2, batch_size=50).fit(X, y)
    np.testing.assert_allclose(big.W_, small.W_, rtol=1e-3, atol=1e-6)
    assert big.history_[0][-1]["train_loss"] == pytest.approx(small.history_[0][-1]["train_loss"], rel=1e-4)


def test_exported_head_is_the_notebook_head(easy, tmp_path):
    import keras
    from pipeline.heads.keras_file import write_head
    X, y, Xv, _ = easy
    heads = JointSoftmax(dropouts=(0.2, 0.5), lrs=(1e-3, 3e-3), epochs=2, batch_size=100).fit(X, y)
    write_head(str(tmp_path / "h.keras"), **SoftmaxHead.from_joint(heads, 1).head_file())
    model = keras.saving.load_model(str(tmp_path / "h.keras"))
    assert [type(layer).__name__ for layer in model.layers] == ["Normalization", "Dropout", "Dense"]
    assert model.layers[1].rate == 0.5 and model.layers[2].compute_dtype == "float32"
    np.testing.assert_allclose(np.asarray(model.predict(Xv, verbose=0)), heads.predict_proba(Xv)[1], rtol=1e-4, atol=1e-6)


def test_early_stopping_keeps_the_best_epoch(easy):
    X, y, Xv, yv = easy
    head = JointSoftmax(lrs=(0.5,), epochs=30, batch_size=50, early_stopping=True, patience=2).fit(X, y, Xv, yv)
    hist = head.history_[0]
    assert len(hist) < 30
    best = int(np.argmin([r["val_loss"] for r in hist]))
    assert head.best_epoch_[0] == best + 1
    assert log_loss(yv, head.predict_proba(Xv)[0].astype(np.float64)) == pytest.approx(hist[best]["val_loss"], rel=1e-4)


def test_head_file_written_without_keras_loads_in_keras(easy, tmp_path):
    import keras
    from pipeline.heads.keras_file import head_model, read_head, write_head
    X, y, Xv, _ = easy
    heads = JointSoftmax(dropouts=(0.3,), lrs=(1e-2,), epochs=2, batch_size=100, standardize=False).fit(X, y)
    write_head(str(tmp_path / "h.keras"), **SoftmaxHead.from_joint(heads, 0).head_file())
    model = keras.saving.load_model(str(tmp_path / "h.keras"))
    assert [type(layer).__name__ for layer in model.layers] == ["Dropout", "Dense"] and model.layers[0].rate == 0.3
    np.testing.assert_allclose(np.asarray(model.predict(Xv, verbose=0)), heads.predict_proba(Xv)[0], rtol=1e-4, atol=1e-6)
    ours = head_model(read_head(str(tmp_path / "h.keras")))      # what predict builds: the same numbers
    np.testing.assert_allclose(np.asarray(ours.predict(Xv, verbose=0)), heads.predict_proba(Xv)[0], rtol=1e-4, atol=1e-6)


def test_training_metrics_are_keras_style_running_means(easy):
    """history's train_loss/accuracy: the epoch's mean over its batches, with dropout, as Keras's fit
    reports them; without dropout and with lr ~ 0 that is the loss of the (unchanged) head."""
    X, y, _, _ = easy
    head = JointSoftmax(dropouts=(0.0,), lrs=(1e-12,), epochs=1, batch_size=64, inits=("glorot_uniform",)).fit(X, y)
    p = head.predict_proba(X)[0]
    assert head.history_[0][0]["train_loss"] == pytest.approx(log_loss(y, p.astype(np.float64)), rel=1e-4)
    assert head.history_[0][0]["train_accuracy"] == pytest.approx((p.argmax(1) == y).mean(), abs=1e-9)


def test_two_steps_never_share_a_mask_and_a_head_sees_the_same_masks_alone_and_in_a_sweep(easy):
    from pipeline.heads import kernels
    X, y, _, _ = easy
    alone = JointSoftmax(dropouts=(0.5,), lrs=(1e-3,), epochs=3, batch_size=64, seed=9).fit(X, y)
    sweep = JointSoftmax(dropouts=(0.2, 0.5, 0.5, 0.8), lrs=(1e-3, 1e-2, 1e-3, 1e-3), epochs=3, batch_size=64,
                         seed=9).fit(X, y)
    steps = 3 * -(-len(X) // 64)
    assert len(alone.keys_) == steps and np.array_equal(alone.keys_, sweep.keys_)     # the same draws, step by step
    n_words = (X.shape[1] + 3) // 4
    counters = np.diff(alone.keys_.astype(np.int64))                                   # each step's counter range
    assert (counters == 64 * n_words).all()                   # starts exactly where the last one ended: no overlap
    a, b = kernels.draws(int(alone.keys_[0]), 64, X.shape[1]), kernels.draws(int(alone.keys_[1]), 64, X.shape[1])
    assert not np.array_equal(a >= 0.5 * 65536, b >= 0.5 * 65536)
    np.testing.assert_allclose(SoftmaxHead.from_joint(sweep, 2).coef_, SoftmaxHead.from_joint(alone, 0).coef_, rtol=1e-5, atol=1e-7)  # same rate, same path


def reference_fit(X, y, dropout, lr, l2, epochs, batch_size, seed, n_classes, init="glorot_uniform", schedule="cosine"):
    """The softmax head's training written plainly in NumPy (float64), from its definition: the
    training rows' standardisation, a Glorot-uniform (or zero) start, per epoch a permutation from the seed's
    SFC64 stream, per step dropout draws at the step's key (kernels.draws), Keras' Dropout scaling,
    softmax cross-entropy's gradient, Keras' L2 and Adam (its rate from Keras' own CosineDecay over the
    run's steps, or constant). Any restructuring of the kernels must
    reproduce it to float rounding (the numbers stay the same where the maths is)."""
    from pipeline.heads import kernels
    from pipeline.heads.linear import feature_stats
    from pipeline.heads.joint import BETA_1, BETA_2, EPSILON, glorot_uniform
    mean, scale = feature_stats(X, np.arange(len(X)))
    Z = (X.astype(np.float64) - mean) / scale
    W, b = glorot_uniform(X.shape[1], n_classes, seed).astype(np.float64), np.zeros(n_classes)
    W *= init == "glorot_uniform"
    mW, vW, mb, vb = np.zeros_like(W), np.zeros_like(W), np.zeros_like(b), np.zeros_like(b)
    rng = np.random.Generator(np.random.SFC64(seed))
    key0, t = int(rng.integers(0, 2 ** 63)), 0
    thr = min(round(dropout * kernels.NOISE_LEVELS), kernels.NOISE_LEVELS - 1)
    keep_scale = kernels.NOISE_LEVELS / (kernels.NOISE_LEVELS - thr)
    n_words = (X.shape[1] + 3) // 4
    if schedule == "cosine":
        import keras
        decay = keras.optimizers.schedules.CosineDecay(lr, epochs * -(-len(X) // batch_size))
    for _ in range(epochs):
        perm = rng.permutation(len(X))
        for a in range(0, len(X), batch_size):
            idx = perm[a:a + batch_size]
            key = (key0 + t * batch_size * n_words) % 2 ** 64
            xm = Z[idx] * (kernels.draws(key, len(idx), X.shape[1]) >= thr) * keep_scale
            p = np.exp(xm @ W + b - (xm @ W + b).max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1
            gW, gb = xm.T @ p / len(idx) + 2 * l2 * W, p.sum(0) / len(idx)
            t += 1
            rate = lr if schedule == "constant" else float(keras.ops.convert_to_numpy(decay(t - 1)))
            alpha = rate * np.sqrt(1 - BETA_2 ** t) / (1 - BETA_1 ** t)
            for w, g, m, v in ((W, gW, mW, vW), (b, gb, mb, vb)):
                m += (g - m) * (1 - BETA_1)
                v += (g * g - v) * (1 - BETA_2)
                w -= alpha * m / (np.sqrt(v) + EPSILON)
    return W, b


@pytest.mark.parametrize("dim,dtype,by_rows,init,batch,schedule", [(32, np.float32, True, "glorot_uniform", 64, "cosine"),
                                                                   (1030, np.float16, True, "zeros", 64, "constant"),
                                                                   (1030, np.float16, False, "glorot_uniform", 100, "constant"),
                                                                   (600, np.float32, False, "zeros", 70, "cosine")])
def test_training_is_the_plain_numpy_definition(dim, dtype, by_rows, init, batch, schedule, monkeypatch):
    """Batches of 100 and 70 rows: the chunks kernel's panels of 64 rows, the last one partial."""
    from pipeline.features.synthetic import make_features
    from pipeline.heads import kernels
    if not by_rows:
        monkeypatch.setattr(kernels, "ROWS_KERNEL_BYTES", -1)      # the chunks kernel, as for wide heads
    X, y = make_features(300, dim, 4, seed=5, separation=0.6)
    X = X.astype(dtype)
    head = SoftmaxHead(dropout=0.3, lr=3e-3, l2=1e-3, epochs=3, batch_size=batch, seed=7, init=init,
                       lr_schedule=schedule).fit(X, y)
    W, b = reference_fit(X, y, 0.3, 3e-3, 1e-3, 3, batch, 7, 4, init, schedule)
    np.testing.assert_allclose(head.coef_, W, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(head.intercept_, b, rtol=1e-4, atol=2e-5)
    Xt = X[:50]
    mean, scale = head.mean_, head.scale_
    np.testing.assert_allclose(head.predict_proba(Xt)[:, 0], _softmax_rows(((Xt.astype(np.float64) - mean) / scale) @ W + b)[:, 0],
                               rtol=1e-4, atol=1e-6)


def test_a_sweep_over_dropout_rates_is_the_plain_numpy_definition_for_every_head(monkeypatch):
    """Several dropout groups in the chunks kernel (the masks drawn again for the backward pass, the whole
    batch as one panel): each head as the plain definition trains it alone."""
    from pipeline.features.synthetic import make_features
    from pipeline.heads import kernels
    monkeypatch.setattr(kernels, "ROWS_KERNEL_BYTES", -1)
    X, y = make_features(300, 700, 4, seed=5, separation=0.6)
    X = X.astype(np.float16)
    sweep = JointSoftmax(dropouts=(0.3, 0.6), lrs=(3e-3, 1e-3), l2s=(1e-3, 0.0), inits=("zeros", "glorot_uniform"),
                         schedules=("constant", "cosine"), epochs=2, batch_size=100, seed=7).fit(X, y)
    for k, (p, lr, l2, init, schedule) in enumerate([(0.3, 3e-3, 1e-3, "zeros", "constant"),
                                                     (0.6, 1e-3, 0.0, "glorot_uniform", "cosine")]):
        W, b = reference_fit(X, y, p, lr, l2, 2, 100, 7, 4, init, schedule)
        np.testing.assert_allclose(SoftmaxHead.from_joint(sweep, k).coef_, W, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(SoftmaxHead.from_joint(sweep, k).intercept_, b, rtol=1e-4, atol=2e-5)


def _softmax_rows(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_one_value_of_a_per_head_setting_serves_every_head(easy):
    """As the README's example writes it: three dropout rates, the default learning rate for all."""
    X, y, _, _ = easy
    short = JointSoftmax(dropouts=(0.2, 0.5, 0.8), lrs=(3e-3,), l2s=(1e-3,), epochs=2, batch_size=100).fit(X, y)
    spelt = JointSoftmax(dropouts=(0.2, 0.5, 0.8), lrs=(3e-3,) * 3, l2s=(1e-3,) * 3, epochs=2, batch_size=100).fit(X, y)
    np.testing.assert_array_equal(short.W_, spelt.W_)
    assert [short.params(k) for k in range(3)] == [spelt.params(k) for k in range(3)]
    default = JointSoftmax(dropouts=(0.2, 0.5, 0.8), epochs=1).fit(X, y)
    assert default.params(2)["lr"] == "auto" and default.lrs_ == [1e-3] * 3        # 32 features: 1e-3 for every head
    with pytest.raises(ValueError, match=r"JointSoftmax lrs: expected 1 or 3 values .*got 2"):
        JointSoftmax(dropouts=(0.2, 0.5, 0.8), lrs=(1e-3, 1e-2)).fit(X, y)


def test_a_long_fit_logs_its_progress_and_a_short_one_does_not(easy, monkeypatch, capsys):
    """Every PROGRESS_EVERY_S a line (epoch, rows/s, ETA) after an epoch, never after the last; none before.
    With early stopping the ETA is what the epochs left would take at most."""
    from pipeline.heads import config
    X, y, _, _ = easy
    monkeypatch.setattr(config, "PROGRESS_EVERY_S", float("inf"))
    JointSoftmax(epochs=3, batch_size=64).fit(X, y)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(config, "PROGRESS_EVERY_S", 0.0)
    JointSoftmax(dropouts=(0.2, 0.5), epochs=3, batch_size=64).fit(X, y)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == ["2 softmax heads: epoch 1/3", "2 softmax heads: epoch 2/3"]
    assert all(" rows/s, ETA " in line and line.endswith(" s") for line in lines)
    JointSoftmax(epochs=3, batch_size=64, early_stopping=True, patience=5).fit(X, y, X[:50], y[:50])
    lines = capsys.readouterr().err.strip().splitlines()         # early stopping may end it sooner: a bound
    assert len(lines) == 2 and all(" rows/s, ETA at most " in line for line in lines)
