"""A study's finished rows are reused only as this program wrote them, their settings never read back."""
import json
import logging
import os

import pytest

from pipeline.hashing import json_sha256
from pipeline.study_rows import ROWS, finished_row, row_path, write_row

ROW = {"cache": "c-0123.h5", "head": "softmax", "head_dropout": 0.5, "train_images": None, "row": "abc", "head_s": 0.3,
       "val_n": 30, "val_accuracy": 0.5, "val_loss": 1.2, "test_n": 20, "test_accuracy": 0.45, "test_loss": float("nan"),
       "epochs_trained": 2, "lr_used": 0.001, "refit_used": True, "views_k": 1, "train_n": 30, "labelled_n": 60}
SETTINGS = {"cache": "c-0123.h5", "head": "softmax", "head_dropout": 0.5, "train_images": None, "row": "abc"}


@pytest.fixture
def folder(tmp_path):
    os.makedirs(tmp_path / ROWS)
    write_row(str(tmp_path), "abc", ROW)
    return tmp_path


def craft(folder, checksum=True, **change):
    """Rewrite the saved row with `change`; with a checksum that holds (as a crafter can write), or the old one."""
    path = row_path(str(folder), "abc")
    row = json.load(open(path))
    row.update(change)
    if checksum:
        row["checksum"] = json_sha256({k: v for k, v in row.items() if k != "checksum"})
    json.dump(row, open(path, "w"))


def test_a_row_reads_back_as_written_with_this_runs_settings(folder):
    got = finished_row(str(folder), "abc", SETTINGS)
    assert {k: v for k, v in got.items() if k != "test_loss"} == {k: v for k, v in ROW.items() if k != "test_loss"}
    assert got["test_loss"] != got["test_loss"]                          # NaN survives
    assert finished_row(str(folder), "other", SETTINGS) is None           # never trained


def test_settings_come_from_the_run_not_the_file(folder):
    """A crafted row (checksum recomputed) that names another cache or head settings cannot point the
    study at another file or train another head: the row id is a hash of this run's settings."""
    craft(folder, cache="../../elsewhere.h5", head_dropout=0.9, head="logreg")
    got = finished_row(str(folder), "abc", SETTINGS)
    assert got["cache"] == "c-0123.h5" and got["head_dropout"] == 0.5 and got["head"] == "softmax"


@pytest.mark.parametrize("checksum,change,why", [
    (False, {"test_accuracy": 0.9}, "changed after it was written"),                 # a plausible edit
    (True, {"test_n": [1]}, "has test_n '[1]', expected a whole number from 0"),
    (True, {"val_n": float("inf")}, "has val_n 'inf', expected a whole number from 1"),
    (True, {"views_k": 0}, "has views_k '0', expected a whole number from 1"),
    (True, {"test_accuracy": "x"}, "has test_accuracy 'x', expected a number"),
    (True, {"val_accuracy": 1.5}, "has val_accuracy 1.5, expected a fraction from 0 to 1"),
    (True, {"head_s": None}, "has no head_s"),
    (True, {"epochs_trained": 2.5}, "has epochs_trained '2.5', expected a whole number"),
    (True, {"row": "abd"}, "is not this row's"),
])
def test_a_row_not_as_written_is_trained_again_with_why(folder, caplog, checksum, change, why):
    craft(folder, checksum, **change)
    with caplog.at_level(logging.WARNING):
        assert finished_row(str(folder), "abc", SETTINGS) is None
    assert f"study: row abc ({row_path(str(folder), 'abc')}) {why}" in caplog.text and "trained again" in caplog.text


def test_a_row_of_an_older_version_has_no_checksum_and_is_trained_again(folder, caplog):
    path = row_path(str(folder), "abc")
    row = json.load(open(path))
    del row["checksum"]
    json.dump(row, open(path, "w"))
    with caplog.at_level(logging.WARNING):
        assert finished_row(str(folder), "abc", SETTINGS) is None
    assert "or was written by an older version: trained again" in caplog.text


def test_a_file_that_is_not_a_row_is_trained_again(folder, caplog):
    path = row_path(str(folder), "abc")
    for content in ("{not json", "[" * 100_000 + "]" * 100_000, json.dumps([1, 2])):
        open(path, "w").write(content)
        with caplog.at_level(logging.WARNING):
            assert finished_row(str(folder), "abc", SETTINGS) is None
    assert caplog.text.count("trained again") == 3
