"""A run folder's files are opened as the folder's own regular files, their size checked first."""
import os

import numpy as np
import pytest

from pipeline.heads.run_files import read_metrics, read_val_proba


class Refused(Exception):
    pass


def test_readers_refuse_links_and_say_what_is_missing(tmp_path):
    with pytest.raises(Refused, match="no metrics.json"):
        read_metrics(str(tmp_path), Refused)
    assert read_val_proba(str(tmp_path), (2, 1, 2), Refused) is None
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "metrics.json").write_text('{"class_names": ["a"], "provenance": {}, "head": "logreg"}')
    np.save(outside / "val_proba.npy", np.full((2, 1, 2), 0.5, np.float32))
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.json", "val_proba.npy"):
        os.symlink(outside / name, run / name)
    with pytest.raises(Refused, match="metrics.json is a link"):
        read_metrics(str(run), Refused)
    with pytest.raises(Refused, match="val_proba.npy is a link"):
        read_val_proba(str(run), (2, 1, 2), Refused)
    assert read_metrics(str(outside), Refused)["head"] == "logreg"         # the same files, as a folder's own
    assert read_val_proba(str(outside), (2, 1, 2), Refused).shape == (2, 1, 2)


def test_a_run_given_by_name_says_where_the_run_of_that_name_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Refused, match=r"^no such folder$"):
        read_metrics("best", Refused)
    os.makedirs(tmp_path / "data" / "runs" / "best")
    (tmp_path / "data" / "runs" / "best" / "metrics.json").write_text("{}")
    with pytest.raises(Refused, match=r"^no such folder \(the run of that name is data/runs/best: pass that path\)$"):
        read_metrics("best", Refused)


def test_a_sweep_or_study_folder_given_as_a_run_says_where_its_best_head_is(tmp_path):
    """A sweep's or a study's folder holds results, not a head: it says so and names its best run; a kind.json
    that is not one of theirs is a folder without metrics.json, as before."""
    for kind in ("sweep", "study"):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "kind.json").write_text(f'{{"kind": "{kind}"}}')
        with pytest.raises(Refused, match=rf"^a {kind}'s results, not a run \(its best head is the run "
                                          rf"{tmp_path / kind}-best\)$"):
            read_metrics(str(tmp_path / kind) + "/", Refused)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "kind.json").write_text('{"kind": "run"}')
    with pytest.raises(Refused, match=r"^no metrics.json$"):
        read_metrics(str(tmp_path / "other"), Refused)


def test_recorded_digests_are_digests_and_val_proba_must_match_its(tmp_path):
    from pipeline.heads.run_files import file_digests, recorded_sha256
    p = np.full((2, 1, 2), 0.5, np.float32)
    np.save(tmp_path / "val_proba.npy", p)
    digests = file_digests(str(tmp_path), ["val_proba.npy"])
    metrics = {"file_sha256": digests}
    assert recorded_sha256(metrics, "val_proba.npy", Refused) == digests["val_proba.npy"]
    assert recorded_sha256(metrics, "head.keras", Refused) is None and recorded_sha256({}, "x", Refused) is None
    for bad in ([digests["val_proba.npy"]], {"val_proba.npy": "abc"}, {"val_proba.npy": None}):
        with pytest.raises(Refused, match="not an object of SHA-256 digests"):
            recorded_sha256({"file_sha256": bad}, "val_proba.npy", Refused)
    assert read_val_proba(str(tmp_path), (2, 1, 2), Refused, digests["val_proba.npy"]).shape == (2, 1, 2)
    np.save(tmp_path / "val_proba.npy", np.array([[[0.25, 0.75]], [[1, 0]]], np.float32))   # valid, other numbers
    with pytest.raises(Refused, match="val_proba.npy changed after its run wrote it"):
        read_val_proba(str(tmp_path), (2, 1, 2), Refused, digests["val_proba.npy"])
    assert read_val_proba(str(tmp_path), (2, 1, 2), Refused)[0, 0, 1] == 0.75            # no digest: an older run
    os.remove(tmp_path / "val_proba.npy")
    with pytest.raises(Refused, match="val_proba.npy is missing, though its run wrote it"):
        read_val_proba(str(tmp_path), (2, 1, 2), Refused, digests["val_proba.npy"])
