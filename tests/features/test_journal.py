import os

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.features.journal import Journal

PROV = {"key": "k1"}


def batch(a, b, d=3):
    return np.arange(a * d, b * d, dtype=np.float32).reshape(b - a, d)


def files(j, split="train"):
    d = os.path.join(j.dir, split)
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".npy"))


def test_resumes_from_last_complete_batch(tmp_path):
    journal = Journal(str(tmp_path / "c"), PROV, "float32")
    for a in (0, 4, 12):                      # a gap: 8..12 not done
        journal.write("train", a, a + 4, batch(a, a + 4))
    open(os.path.join(journal.dir, "train", "0000000008-0000000012.npy.tmp"), "w").close()  # cut mid-write
    again = Journal(str(tmp_path / "c"), PROV, "float32")
    assert again.resumed and again.done("train") == 8
    other = Journal(str(tmp_path / "c"), {**PROV, "key": "k2"}, "float32")  # other settings: start over
    assert not other.resumed and other.done("train") == 0


@pytest.mark.parametrize("damage,reason", [
    (lambda p: open(p, "r+b").truncate(os.path.getsize(p) - 8), "unreadable"),
    (lambda p: open(p, "r+b").truncate(0), "unreadable"),
    (lambda p: np.save(p, batch(4, 8).astype(np.float16)), "dtype float16, expected float32"),
    (lambda p: np.save(p, batch(4, 6)), "shape (2, 3), expected 4 rows"),
    (lambda p: np.save(p, batch(4, 8) + 1), "checksum mismatch"),
])
def test_damaged_batch_is_found_and_redone(tmp_path, capsys, damage, reason):
    journal = Journal(str(tmp_path / "c"), PROV, "float32")
    for a in (0, 4, 8):
        journal.write("train", a, a + 4, batch(a, a + 4))
    bad = files(journal)[1]
    damage(bad)
    assert Journal(str(tmp_path / "c"), PROV, "float32").done("train") == 4
    assert f"batch {os.path.basename(bad)} of train is damaged ({reason}" in capsys.readouterr().err
    assert not os.path.exists(bad)            # removed, so the run redoes rows 4..8
    journal.write("train", 4, 8, batch(4, 8))
    got = np.concatenate([f for _, _, f in journal.read("train", 0, 12)])
    assert np.array_equal(got, batch(0, 12))


def test_damage_found_while_assembling_is_removed_and_named(tmp_path):
    journal = Journal(str(tmp_path / "c"), PROV, "float32")
    for a in (0, 4):
        journal.write("train", a, a + 4, batch(a, a + 4))
    bad = files(journal)[1]
    np.save(open(bad, "wb"), batch(4, 8) * 2)
    with pytest.raises(PipelineError, match="was damaged \\(checksum mismatch\\); removed it: re-run"):
        list(journal.read("train", 0, 8))
    assert not os.path.exists(bad)


def test_missing_rows_block_the_finish(tmp_path):
    journal = Journal(str(tmp_path / "c"), PROV, "float32")
    journal.write("train", 0, 4, batch(0, 4))
    with pytest.raises(PipelineError, match="rows 4..10 of train are missing"):
        list(journal.read("train", 0, 10))


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_a_provenance_that_is_not_the_journals_own_file_starts_it_over(tmp_path, kind):
    """A link (to a journal of the same key elsewhere) is not followed; a FIFO is never read (it would block)."""
    journal = Journal(str(tmp_path / "c"), PROV, "float32")
    journal.write("train", 0, 4, batch(0, 4))
    meta = os.path.join(journal.dir, "provenance.json")
    os.rename(meta, tmp_path / "elsewhere.json")
    os.symlink(tmp_path / "elsewhere.json", meta) if kind == "link" else os.mkfifo(meta)
    again = Journal(str(tmp_path / "c"), PROV, "float32")
    assert not again.resumed and again.done("train") == 0
