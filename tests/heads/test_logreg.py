import numpy as np

from pipeline.heads import LogRegHead


def test_logreg_beats_chance_and_records_its_fit(easy):
    X, y, Xv, yv = easy
    head = LogRegHead(C=1.0, max_iter=200).fit(X, y, Xv, yv)
    p = head.predict_proba(Xv)
    assert p.shape == (300, 5) and (head.predict(Xv) == yv).mean() > 0.8
    assert set(head.history_[0]) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"}


def test_a_class_absent_from_training_keeps_its_column(easy):
    X, y, Xv, _ = easy
    head = LogRegHead(classes=range(6)).fit(X, y)                   # class 5 never seen
    p = head.predict_proba(Xv)
    assert p.shape == (300, 6) and (p[:, 5] == 0).all() and list(head.classes_) == list(range(6))
    f = head.head_file()
    assert f["kernel"].shape == (32, 6) and f["bias"][5] == -1e4 and f["variance"].shape == (32,)


def test_float16_features(easy):
    X, y, Xv, yv = easy
    head = LogRegHead().fit(X.astype(np.float16), y)
    assert (head.predict(Xv.astype(np.float16)) == yv).mean() > 0.8


def test_predicting_never_writes_into_the_callers_array(easy):
    X, y, Xv, yv = easy
    before = Xv.copy()
    LogRegHead().fit(X, y, Xv, yv).predict_proba(Xv)
    assert np.array_equal(Xv, before)


def test_the_protocol_chooses_C_on_validation_only_and_refits_on_train_and_validation(easy):
    X, y, Xv, yv = easy
    head = LogRegHead(C="auto").fit(X, y, Xv, yv)
    sel = head.selection_
    assert head.C_ == sel["chosen_C"] and 5 <= len(sel["curve"]) <= 15 and sel["grid"] == sorted(sel["grid"])
    best = max(sel["curve"], key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert best["C"] == head.C_
    refit = LogRegHead(C=head.C_).fit(np.concatenate([X, Xv]), np.concatenate([y, yv]))
    np.testing.assert_allclose(head.predict_proba(Xv), refit.predict_proba(Xv), atol=0.02)   # refit on train+val (lbfgs tolerance)
    assert head.history_[0]["val_accuracy"] == float((head.val_proba_.argmax(1) == yv).mean())  # before the refit
    before = head.before_refit_                      # the head as it was chosen: trained on X only, at C_
    assert before.C == head.C_ and before.before_refit_ is None and LogRegHead().fit(X, y).before_refit_ is None
    np.testing.assert_allclose(before.predict_proba(Xv), head.val_proba_, rtol=1e-5, atol=1e-7)
    assert not np.allclose(before.predict_proba(Xv), head.predict_proba(Xv))


def test_refit_on_trains_a_chosen_C_again_on_more_rows_from_where_it_ended(easy):
    X, y, Xv, yv = easy
    both, yb = np.concatenate([X, Xv]), np.concatenate([y, yv])
    first = LogRegHead(C=0.1).fit(both, yb, Xv, yv, rows=np.arange(len(X)))
    head = first.refit_on(both, yb)
    alone = LogRegHead(C=0.1).fit(both, yb)
    np.testing.assert_allclose(head.predict_proba(Xv), alone.predict_proba(Xv), atol=0.02)   # lbfgs tolerance
    assert head.before_refit_ is first and head.history_ == first.history_ and head.C_ == first.C_ == 0.1
    assert not np.allclose(first.predict_proba(Xv), head.predict_proba(Xv))        # first itself untouched
    assert head.train_seconds_ > first.train_seconds_


def test_the_chosen_C_does_not_depend_on_test_data(easy):
    """The protocol sees no test data at all: what changes test labels cannot change the choice."""
    X, y, Xv, yv = easy
    from pipeline.heads.data import TrainingData
    from pipeline.heads.train import fit_head
    chosen = []
    for test_labels in (np.zeros(50, int), np.arange(50) % 5):
        data = TrainingData(np.concatenate([X, Xv]), np.concatenate([y, yv]), np.arange(600), np.arange(600, 900),
                            X[:50], test_labels, [str(i) for i in range(5)], "x.h5", {})
        chosen.append(fit_head(LogRegHead(C="auto"), data).C_)
    assert chosen[0] == chosen[1]


def test_the_coarse_path_stops_past_the_best_and_chooses_as_the_whole_grid(monkeypatch):
    """On noisy features weak regularisation overfits: the path stops PATH_PATIENCE steps past the best
    (the slowest fits skipped) and chooses the same C as a search over the whole grid."""
    from pipeline.features.synthetic import make_features
    from pipeline.heads import logreg
    X, y = make_features(700, 200, 5, seed=3, separation=0.08)
    args = (X[:400], y[:400], X[400:], y[400:])
    early = LogRegHead(C="auto").fit(*args)
    monkeypatch.setattr(logreg, "PATH_PATIENCE", len(logreg.C_GRID))
    whole = LogRegHead(C="auto").fit(*args)
    coarse = [r["C"] for r in early.selection_["curve"] if r["C"] in logreg.C_GRID]
    assert len(coarse) < len(logreg.C_GRID) and coarse == list(logreg.C_GRID[:len(coarse)])
    assert early.C_ == whole.C_ and early.selection_["seconds_per_fit"] > 0


def test_standardized_rows_are_the_scalers_fit_transform_block_by_block(easy, monkeypatch):
    """The protocol's standardised copy, filled in blocks from several parts (train rows, then the
    validation split), is StandardScaler's fit_transform of those rows; the caller's array is untouched."""
    import pipeline.heads.linear as linear
    from sklearn.preprocessing import StandardScaler
    from pipeline.heads.logreg import standardized
    X, _, Xv, _ = easy
    X = X * 3 + 5
    monkeypatch.setattr(linear, "INFER_BYTES", 4 * 32 * 7)        # blocks of 7 rows
    rows = np.arange(0, len(X), 3)
    for dtype in (np.float32, np.float16):
        Xd, Xvd = X.astype(dtype), Xv.astype(dtype)
        before = Xd.copy()
        Z, scaler = standardized([(Xd, rows), (Xvd, None)])
        want = StandardScaler().fit_transform(np.concatenate([Xd[rows], Xvd]).astype(np.float32))
        assert Z.dtype == np.float32 and Z.shape == want.shape and np.array_equal(Xd, before)
        np.testing.assert_allclose(Z, want, atol=2e-5)
        Zv, same = standardized([(Xvd, None)], scaler)
        assert same is scaler and np.array_equal(Zv, Z[len(rows):])


def test_a_big_fit_says_so_first(easy, monkeypatch, capsys):
    """A fit on SAY_FIT_VALUES feature values or more: a line before it (C, rows x features, iterations, and
    whether it starts from the last fit); a smaller one: none."""
    from pipeline.heads import logreg
    X, y, Xv, yv = easy
    both, yb = np.concatenate([X, Xv]), np.concatenate([y, yv])
    LogRegHead(C=0.1).fit(X, y)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(logreg, "SAY_FIT_VALUES", X.size)
    LogRegHead(C=0.1, max_iter=50).fit(both, yb, Xv, yv, rows=np.arange(len(X))).refit_on(both, yb)
    assert capsys.readouterr().err.splitlines() == [
        f"logreg C=0.1: fitting on {len(X):,} rows x {X.shape[1]:,} features (scikit-learn's lbfgs, at most 50 iterations)",
        f"logreg C=0.1: fitting on {len(both):,} rows x {X.shape[1]:,} features (scikit-learn's lbfgs, at most 50 "
        "iterations, from the last fit)"]
