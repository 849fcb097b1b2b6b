"""A run folder's files are opened as the folder's own regular files, their size checked first."""
import os

import numpy as np
import pytest

from pipeline.heads.run_files import open_own, read_metrics, read_val_proba


class Refused(Exception):
    pass


def test_open_own_reads_a_regular_file_and_refuses_anything_else(tmp_path):
    (tmp_path / "f.json").write_bytes(b"{}")
    with open_own(str(tmp_path / "f.json"), Refused, 2) as f:
        assert f.read() == b"{}"
    with pytest.raises(Refused, match="f.json is larger than 1 bytes"):
        open_own(str(tmp_path / "f.json"), Refused, 1)
    os.symlink(tmp_path / "f.json", tmp_path / "link.json")         # even to a file beside it
    with pytest.raises(Refused, match="link.json is a link"):
        open_own(str(tmp_path / "link.json"), Refused, 100)
    os.mkfifo(tmp_path / "fifo.json")                               # opened without blocking, never read
    with pytest.raises(Refused, match="fifo.json is not a regular file"):
        open_own(str(tmp_path / "fifo.json"), Refused, 100)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(Refused, match="dir.json is not a regular file"):
        open_own(str(tmp_path / "dir.json"), Refused, 100)
    with pytest.raises(FileNotFoundError):
        open_own(str(tmp_path / "missing.json"), Refused, 100)


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
