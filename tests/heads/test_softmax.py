"""SoftmaxHead: the scikit-learn estimator, alone and as a head of a JointSoftmax; l2 chosen on validation; the refit."""
import numpy as np
import pytest

from pipeline.heads import SoftmaxHead, JointSoftmax


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


def test_epochs_auto_is_20_or_enough_passes_for_1000_steps_and_a_refit_makes_as_many(easy):
    from pipeline.heads.config import epochs_for
    assert [epochs_for("auto", n, 250) for n in (45_000, 270_000, 4_500, 9_000, 450, 1)] == [20, 20, 56, 28, 200, 200]
    assert epochs_for(7, 4_500, 250) == 7 and epochs_for("auto", 4_500, 50) == 20        # a number is what it says
    X, y, Xv, yv = easy                                           # 600 rows in batches of 100: 6 steps a pass
    head = SoftmaxHead(batch_size=100, seed=3).fit(X, y)
    assert head.get_params()["epochs"] == "auto" and head.epochs_ == 167 and len(head.history_) == 167
    same = SoftmaxHead(batch_size=100, seed=3, epochs=167).fit(X, y)
    np.testing.assert_array_equal(head.coef_, same.coef_)          # auto is that number of passes, nothing else
    refit = SoftmaxHead(batch_size=100, seed=3, refit=True).fit(X, y, Xv, yv)   # refit on 900 rows (9 steps a pass)
    alone = SoftmaxHead(batch_size=100, seed=3, epochs=167).fit(np.concatenate([X, Xv]), np.concatenate([y, yv]))
    assert refit.epochs_ == 167                   # the first fit's passes, not auto counted again (112 on 900 rows)
    np.testing.assert_array_equal(refit.coef_, alone.coef_)
    hidden = SoftmaxHead(hidden=4, batch_size=600, seed=3).fit(X, y)    # one step a pass: the 200 at most
    assert hidden.epochs_ == 200 and len(hidden.history_) == 200


def test_refit_auto_refits_where_the_training_rows_are_few_and_there_is_validation(easy, monkeypatch):
    """refit="auto" (the default): refit up to config.AUTO_REFIT_IMAGES labelled rows (training and validation),
    the same head as refit=True; beyond it, the same head as refit=False; never without validation data (and
    no error then)."""
    from pipeline.heads import config
    from pipeline.heads.config import AUTO_REFIT_IMAGES, refit_for
    assert [refit_for("auto", n) for n in (500, 5_000, AUTO_REFIT_IMAGES, AUTO_REFIT_IMAGES + 1, 50_000)] == \
        [True, True, True, False, False]
    assert refit_for(True, 10 ** 6) and not refit_for(False, 1)            # a true or false is what it says
    X, y, Xv, yv = easy                                                    # 600 training + 300 validation rows
    kw = dict(epochs=4, batch_size=100, seed=2)
    auto = SoftmaxHead(**kw).fit(X, y, Xv, yv)
    assert auto.get_params()["refit"] == "auto" and auto.before_refit_ is not None
    assert auto.trained_with()["refit_used"] is True
    np.testing.assert_array_equal(auto.coef_, SoftmaxHead(refit=True, **kw).fit(X, y, Xv, yv).coef_)
    alone = SoftmaxHead(**kw).fit(X, y)                                    # no validation: nothing to refit on
    assert alone.before_refit_ is None and alone.trained_with()["refit_used"] is False
    monkeypatch.setattr(config, "AUTO_REFIT_IMAGES", 899)                  # 900 labelled rows: more
    many = SoftmaxHead(**kw).fit(X, y, Xv, yv)
    assert many.before_refit_ is None and many.trained_with()["refit_used"] is False
    np.testing.assert_array_equal(many.coef_, SoftmaxHead(refit=False, **kw).fit(X, y, Xv, yv).coef_)
    assert SoftmaxHead(**kw).fit(X, y, Xv, yv, rows=np.arange(599)).before_refit_ is not None    # rows given count


def test_lr_auto_is_1e_3_up_to_1280_features_then_falls_with_the_square_root_of_the_width():
    from pipeline.heads.config import lr_for
    from pipeline.features.synthetic import make_features
    assert [round(lr_for("auto", d), 6) for d in (1, 512, 1_280, 5_120, 8_192, 10_240, 25_088)] == \
        [1e-3, 1e-3, 1e-3, 5e-4, 3.95e-4, 3.54e-4, 2.26e-4]
    assert lr_for(3e-3, 25_088) == 3e-3 and lr_for("auto", 25_088, hidden=64) == 1e-3   # a number; the hidden head
    X, y = make_features(300, 5_120, 3, seed=1, separation=0.5)
    head = SoftmaxHead(epochs=2, batch_size=100, seed=2).fit(X, y)
    same = SoftmaxHead(lr=5e-4, epochs=2, batch_size=100, seed=2).fit(X, y)
    assert SoftmaxHead().get_params()["lr"] == "auto"                # the default
    assert head.get_params()["lr"] == "auto" and head.lr_ == same.lr_ == 5e-4
    np.testing.assert_array_equal(head.coef_, same.coef_)           # auto is that rate, nothing else
    narrow = SoftmaxHead(epochs=2, batch_size=100, seed=2).fit(X[:, :64], y)
    assert narrow.lr_ == 1e-3
    np.testing.assert_array_equal(narrow.coef_, SoftmaxHead(lr=1e-3, epochs=2, batch_size=100, seed=2).fit(X[:, :64], y).coef_)
    assert SoftmaxHead(hidden=4, epochs=1, batch_size=100).fit(X, y).lr_ == 1e-3     # not by width


def test_sweep_head_is_the_estimator_a_lone_fit_gives(easy):
    X, y, Xv, _ = easy
    sweep = JointSoftmax(dropouts=(0.2, 0.5), lrs=(1e-3, 3e-3), epochs=2, batch_size=100, seed=4).fit(X, y)
    alone = SoftmaxHead(dropout=0.5, lr=3e-3, epochs=2, batch_size=100, seed=4).fit(X, y)
    np.testing.assert_allclose(SoftmaxHead.from_joint(sweep, 1).predict_proba(Xv), alone.predict_proba(Xv), rtol=1e-4, atol=1e-6)


def test_each_head_of_a_sweep_starts_where_it_would_alone(easy):
    """init: glorot_uniform (Keras' Dense default, seeded) or zeros, per head of a sweep."""
    X, y, Xv, _ = easy
    kw = dict(dropout=0.5, lr=1e-3, epochs=2, batch_size=100, seed=4)
    sweep = JointSoftmax(dropouts=(0.5, 0.5), lrs=(1e-3, 1e-3), inits=("zeros", "glorot_uniform"), epochs=2,
                         batch_size=100, seed=4).fit(X, y)
    for k, init in enumerate(("zeros", "glorot_uniform")):
        alone = SoftmaxHead(**kw, init=init).fit(X, y)
        np.testing.assert_allclose(SoftmaxHead.from_joint(sweep, k).coef_, alone.coef_, rtol=1e-5, atol=1e-7)
        assert SoftmaxHead.from_joint(sweep, k).get_params()["init"] == init
    assert not np.allclose(SoftmaxHead.from_joint(sweep, 0).coef_, SoftmaxHead.from_joint(sweep, 1).coef_, atol=1e-3)
    with pytest.raises(ValueError, match="init"):
        SoftmaxHead(init="ones").fit(X, y)


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
    np.testing.assert_allclose(SoftmaxHead.from_joint(sweep, 0).coef_, zero.coef_, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(SoftmaxHead.from_joint(sweep, 1).coef_, strong.coef_, rtol=1e-5, atol=1e-7)
    assert SoftmaxHead.from_joint(sweep, 1).get_params()["l2"] == 0.5


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
    before = head.before_refit_                                     # the head as it was chosen, on X only
    assert before.l2 == head.l2_ and not before.refit and before.before_refit_ is None
    np.testing.assert_allclose(before.predict_proba(Xv), head.val_proba_, rtol=1e-6)
    assert SoftmaxHead(epochs=5).fit(X, y).before_refit_ is None


@pytest.mark.parametrize("early", [False, True])
def test_refit_scores_on_validation_then_trains_the_same_head_on_train_and_validation(easy, early):
    X, y, Xv, yv = easy
    kw = dict(lr=0.05, epochs=8, batch_size=100, early_stopping=early, patience=1, lr_schedule="constant")
    first = SoftmaxHead(refit=False, **kw).fit(X, y, Xv, yv)
    head = SoftmaxHead(refit=True, **kw).fit(X, y, Xv, yv)
    np.testing.assert_allclose(head.val_proba_, first.predict_proba(Xv), rtol=1e-6)   # validation: before the refit
    assert head.history_ == first.history_ and head.best_epoch_ == first.best_epoch_
    before = head.before_refit_                                     # that first fit, kept whole
    np.testing.assert_array_equal(before.coef_, first.coef_)
    assert before.get_params() == first.get_params() and before.before_refit_ is None
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
    later = first.refit_on(mixed, np.concatenate([y, yv]))         # a head chosen elsewhere (a sweep), refit:
    np.testing.assert_array_equal(later.coef_, head.coef_)          # fit(refit=True)'s refit, to the last bit
    assert later.before_refit_ is first and later.history_ == first.history_ and later.get_params()["refit"]
    assert not first.get_params()["refit"] and first.before_refit_ is None             # first itself untouched


def test_early_stopping_in_a_sweep_stops_each_head_where_it_would_stop_alone(easy):
    """Each head its own patience: a fast head stops (and keeps its best epoch) at the epoch it would
    alone, while a slow one trains on; before, one counter made the fast head train past its stop."""
    X, y, Xv, yv = easy
    kw = {"epochs": 30, "batch_size": 50, "early_stopping": True, "patience": 2, "seed": 3}
    sweep = JointSoftmax(dropouts=(0.5, 0.5), lrs=(0.3, 1e-4), **kw).fit(X, y, Xv, yv, n_classes=5)
    lens = [len(h) for h in sweep.history_]
    assert lens[0] < lens[1]                                   # the fast head stopped first
    for k, lr in enumerate((0.3, 1e-4)):
        alone = SoftmaxHead(lr=lr, refit=False, **kw).fit(X, y, Xv, yv)
        assert len(alone.history_) == lens[k] and alone.best_epoch_ == sweep.best_epoch_[k]
        np.testing.assert_allclose(SoftmaxHead.from_joint(sweep, k).coef_, alone.coef_, rtol=1e-5, atol=1e-6)
