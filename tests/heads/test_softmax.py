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
        w_both, b_both = both.head(k).coef_, both.head(k).intercept_
        w_alone, b_alone = alone.head(0).coef_, alone.head(0).intercept_
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
    X, y = make_features(400, 8192, 10, seed=2, separation=0.5)
    big = JointSoftmax(epochs=2, batch_size=50).fit(X, y)
    assert big.W_.nbytes > kernels.ROWS_KERNEL_BYTES
    monkeypatch.setattr(kernels, "ROWS_KERNEL_BYTES", big.W_.nbytes)
    small = JointSoftmax(epochs=2, batch_size=50).fit(X, y)
    np.testing.assert_allclose(big.W_, small.W_, rtol=1e-3, atol=1e-6)
    assert big.history_[0][-1]["train_loss"] == pytest.approx(small.history_[0][-1]["train_loss"], rel=1e-4)


def test_exported_head_is_the_notebook_head(easy, tmp_path):
    import keras
    from pipeline.heads.keras_file import write_head
    X, y, Xv, _ = easy
    heads = JointSoftmax(dropouts=(0.2, 0.5), lrs=(1e-3, 3e-3), epochs=2, batch_size=100).fit(X, y)
    write_head(str(tmp_path / "h.keras"), **heads.head(1).head_file())
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
    write_head(str(tmp_path / "h.keras"), **heads.head(0).head_file())
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


# --- a real scikit-learn estimator ----------------------------------------------------------------------
def test_softmax_head_is_a_scikit_learn_classifier(easy):
    from sklearn.base import clone
    X, y, Xv, yv = easy
    names = np.array(["a", "b", "c", "d", "e"])[y]                 # any labels, not only 0..C-1
    head = SoftmaxHead(lr=1e-2, epochs=5, batch_size=50)
    assert head.get_params()["dropout"] == 0.5 and clone(head).get_params() == head.get_params()
    head.fit(X, names)
    p = head.predict_proba(Xv)
    assert p.shape == (300, 5) and np.allclose(p.sum(1), 1, atol=1e-5) and list(head.classes_) == list("abcde")
    assert (head.predict(Xv) == np.array(list("abcde"))[yv]).mean() > 0.8 and head.score(Xv, np.array(list("abcde"))[yv]) > 0.8
    with pytest.raises(ValueError, match="not one of the head's classes"):
        SoftmaxHead(epochs=1, classes=["a", "b"]).fit(X, names)


def test_grid_search_pipeline_and_cross_validation_over_a_tiny_cache(syn):
    """GridSearchCV over the softmax head's dropout, inside a Pipeline, on features from a cache."""
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline import load_cache
    X, y, _ = load_cache(syn)["train"]
    pipe = make_pipeline(StandardScaler(), SoftmaxHead(lr=1e-2, epochs=3, batch_size=50))
    search = GridSearchCV(pipe, {"softmaxhead__dropout": [0.0, 0.5, 0.9]}, cv=3).fit(X, y)
    assert search.best_params_["softmaxhead__dropout"] in (0.0, 0.5, 0.9) and search.best_score_ > 0.5  # chance: 0.25
    assert len(search.cv_results_["mean_test_score"]) == 3
    scores = cross_val_score(SoftmaxHead(lr=1e-2, epochs=3, batch_size=50), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.5


def test_sweep_head_is_the_estimator_a_lone_fit_gives(easy):
    X, y, Xv, _ = easy
    sweep = JointSoftmax(dropouts=(0.2, 0.5), lrs=(1e-3, 3e-3), epochs=2, batch_size=100, seed=4).fit(X, y)
    alone = SoftmaxHead(dropout=0.5, lr=3e-3, epochs=2, batch_size=100, seed=4).fit(X, y)
    np.testing.assert_allclose(sweep.head(1).predict_proba(Xv), alone.predict_proba(Xv), rtol=1e-4, atol=1e-6)


def test_each_head_of_a_sweep_starts_where_it_would_alone(easy):
    """init: glorot_uniform (Keras' Dense default, seeded) or zeros, per head of a sweep."""
    X, y, Xv, _ = easy
    kw = dict(dropout=0.5, lr=1e-3, epochs=2, batch_size=100, seed=4)
    sweep = JointSoftmax(dropouts=(0.5, 0.5), lrs=(1e-3, 1e-3), inits=("zeros", "glorot_uniform"), epochs=2,
                         batch_size=100, seed=4).fit(X, y)
    for k, init in enumerate(("zeros", "glorot_uniform")):
        alone = SoftmaxHead(**kw, init=init).fit(X, y)
        np.testing.assert_allclose(sweep.head(k).coef_, alone.coef_, rtol=1e-5, atol=1e-7)
        assert sweep.head(k).get_params()["init"] == init
    assert not np.allclose(sweep.head(0).coef_, sweep.head(1).coef_, atol=1e-3)
    with pytest.raises(ValueError, match="init"):
        SoftmaxHead(init="ones").fit(X, y)


# --- the noise schedule ------------------------------------------------------------------------------------
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
    np.testing.assert_allclose(sweep.head(2).coef_, alone.head(0).coef_, rtol=1e-5, atol=1e-7)  # same rate, same path


# --- float16 features and standardisation -------------------------------------------------------------------
def test_float16_features_train_without_a_float32_copy(easy):
    X, y, Xv, _ = easy
    X16 = X.astype(np.float16)
    a = SoftmaxHead(epochs=2, batch_size=50).fit(X16, y)
    b = SoftmaxHead(epochs=2, batch_size=50).fit(X16.astype(np.float32), y)    # the same values, widened
    assert np.array_equal(a.coef_, b.coef_)
    np.testing.assert_allclose(a.predict_proba(Xv.astype(np.float16)), b.predict_proba(Xv), rtol=1e-2, atol=1e-3)


def test_standardize_is_training_on_standardised_features(easy):
    from pipeline.heads.linear import feature_stats
    X, y, Xv, _ = easy
    X = X * np.linspace(0.1, 50, X.shape[1], dtype=np.float32) + 3       # unscaled, shifted columns
    X[:, 5] = 2.0                                                       # a constant column: scale 1
    mean, scale = feature_stats(X, np.arange(len(X)))
    assert scale[5] == 1 and abs(mean[5] - 2) < 1e-6
    a = SoftmaxHead(epochs=2, batch_size=50, standardize=True).fit(X, y)
    b = SoftmaxHead(epochs=2, batch_size=50, standardize=False).fit((X - mean) / scale, y)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-3, atol=1e-5)
    Xv = Xv * np.linspace(0.1, 50, X.shape[1], dtype=np.float32) + 3
    np.testing.assert_allclose(a.predict_proba(Xv), b.predict_proba((Xv - mean) / scale), rtol=1e-3, atol=1e-5)


# --- L2 penalty ---------------------------------------------------------------------------------------------
def test_l2_penalty_shrinks_the_kernel_only_and_trains_alike_alone_and_in_a_sweep(easy):
    """l2 is Keras' kernel_regularizer=L2(l2) (its Adam step is tested in test_kernels): it shrinks the
    kernel, not the bias; l2=0 is the head without it; each head of a sweep keeps its own l2."""
    X, y, _, _ = easy
    kw = dict(dropout=0.5, lr=3e-2, epochs=5, batch_size=100, seed=2)
    zero, strong = (SoftmaxHead(**kw, l2=l2).fit(X, y) for l2 in (0.0, 0.5))
    assert np.array_equal(SoftmaxHead(**kw).fit(X, y).coef_, zero.coef_)
    assert np.linalg.norm(strong.coef_) < 0.5 * np.linalg.norm(zero.coef_)
    assert abs(strong.intercept_).max() > 0.01                                       # the bias is free
    sweep = JointSoftmax(dropouts=(0.5, 0.5), lrs=(3e-2, 3e-2), l2s=(0.0, 0.5), epochs=5, batch_size=100, seed=2).fit(X, y)
    np.testing.assert_allclose(sweep.head(0).coef_, zero.coef_, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sweep.head(1).coef_, strong.coef_, rtol=1e-5, atol=1e-7)
    assert sweep.head(1).get_params()["l2"] == 0.5


def test_l2_auto_chooses_on_validation_and_refits_on_train_and_validation(easy):
    from pipeline.heads.softmax import L2_GRID
    X, y, Xv, yv = easy
    head = SoftmaxHead(l2="auto", epochs=5).fit(X, y, Xv, yv)
    sel = head.selection_
    assert sel["grid"] == list(L2_GRID) and len(sel["curve"]) == len(L2_GRID)
    best = max(sel["curve"], key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert head.l2_ == sel["chosen_l2"] == best["l2"]
    alone = SoftmaxHead(l2=head.l2_, epochs=5).fit(np.concatenate([X, Xv]), np.concatenate([y, yv]))
    np.testing.assert_allclose(head.coef_, alone.coef_, rtol=1e-5, atol=1e-6)      # the refit is that head, alone
    assert float((head.val_proba_.argmax(1) == yv).mean()) == best["val_accuracy"]


@pytest.mark.parametrize("early", [False, True])
def test_refit_scores_on_validation_then_trains_the_same_head_on_train_and_validation(easy, early):
    X, y, Xv, yv = easy
    kw = dict(lr=0.05, epochs=8, batch_size=100, early_stopping=early, patience=1, lr_schedule="constant")
    first = SoftmaxHead(**kw).fit(X, y, Xv, yv)
    head = SoftmaxHead(refit=True, **kw).fit(X, y, Xv, yv)
    np.testing.assert_allclose(head.val_proba_, first.predict_proba(Xv), rtol=1e-6)   # validation: before the refit
    assert head.history_ == first.history_ and head.best_epoch_ == first.best_epoch_
    epochs = first.best_epoch_ if early else 8
    assert not early or epochs < 8                                  # this run does stop early
    alone = SoftmaxHead(**{**kw, "epochs": epochs, "early_stopping": False}).fit(np.concatenate([X, Xv]),
                                                                                np.concatenate([y, yv]))
    np.testing.assert_array_equal(head.coef_, alone.coef_)         # the refit is that head, trained alone
    assert not np.array_equal(head.coef_, first.coef_)
    rows = np.arange(0, 600, 2)                                    # refit rows given (a cache's views): those
    mixed = np.concatenate([X, Xv])
    given = SoftmaxHead(refit=True, **kw).fit(mixed, np.concatenate([y, yv]), Xv, yv, rows=rows,
                                              refit_rows=np.concatenate([rows, np.arange(600, 900)]))
    on_rows = SoftmaxHead(**{**kw, "early_stopping": False, "epochs": given.best_epoch_ if early else 8}).fit(
        mixed, np.concatenate([y, yv]), rows=np.concatenate([rows, np.arange(600, 900)]))
    np.testing.assert_array_equal(given.coef_, on_rows.coef_)
    with pytest.raises(ValueError, match="refit=True scores the head on validation data; pass X_val"):
        SoftmaxHead(refit=True).fit(X, y)


def test_early_stopping_in_a_sweep_stops_each_head_where_it_would_stop_alone(easy):
    """Each head its own patience: a fast head stops (and keeps its best epoch) at the epoch it would
    alone, while a slow one trains on; before, one counter made the fast head train past its stop."""
    X, y, Xv, yv = easy
    kw = {"epochs": 30, "batch_size": 50, "early_stopping": True, "patience": 2, "seed": 3}
    sweep = JointSoftmax(dropouts=(0.5, 0.5), lrs=(0.3, 1e-4), **kw).fit(X, y, Xv, yv, n_classes=5)
    lens = [len(h) for h in sweep.history_]
    assert lens[0] < lens[1]                                   # the fast head stopped first
    for k, lr in enumerate((0.3, 1e-4)):
        alone = SoftmaxHead(lr=lr, **kw).fit(X, y, Xv, yv)
        assert len(alone.history_) == lens[k] and alone.best_epoch_ == sweep.best_epoch_[k]
        np.testing.assert_allclose(sweep.head(k).coef_, alone.coef_, rtol=1e-5, atol=1e-6)


def reference_fit(X, y, dropout, lr, l2, epochs, batch_size, seed, n_classes, init="glorot_uniform", schedule="cosine"):
    """The softmax head's training written plainly in NumPy (float64), from its definition: the
    training rows' standardisation, a Glorot-uniform (or zero) start, per epoch a permutation from the seed's
    SFC64 stream, per step dropout draws at the step's key (kernels.draws), Keras' Dropout scaling,
    softmax cross-entropy's gradient, Keras' L2 and Adam (its rate from Keras' own CosineDecay over the
    run's steps, or constant). Any restructuring of the kernels must
    reproduce it to float rounding (the numbers stay the same where the maths is)."""
    from pipeline.heads import kernels
    from pipeline.heads.linear import feature_stats
    from pipeline.heads.softmax import BETA_1, BETA_2, EPSILON, glorot_uniform
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
        np.testing.assert_allclose(sweep.head(k).coef_, W, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(sweep.head(k).intercept_, b, rtol=1e-4, atol=2e-5)


def _softmax_rows(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
