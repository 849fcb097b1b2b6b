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
