import os

import h5py
import numpy as np
import pytest

from pipeline.cache import PartialRun, load_cache, read_provenance, write_cache, writer_lock
from pipeline.config import PipelineError

PROV = {"key": "k1", "settings": {"layer": "fc2", "image_size": 32}, "class_names": ["a", "b"]}


def build(tmp_path, n=10, d=6, batch=4):
    stem = str(tmp_path / "c")
    feats = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    journal = PartialRun(stem, PROV)
    for a in range(0, n, batch):
        journal.write("train", a, min(a + batch, n), feats[a:a + batch])
    splits = {"train": (np.arange(n) % 2, np.array([f"p{i}" for i in range(n)], dtype=object), 0)}
    write_cache(stem + ".h5", PROV, splits, lambda s: journal.read(s, 0, n))
    journal.remove()
    return stem + ".h5", feats


def test_roundtrip_layout_and_provenance(tmp_path):
    path, feats = build(tmp_path)
    out = load_cache(path)
    f, y, meta = out["train"]
    assert np.array_equal(f, feats) and list(y) == [0, 1] * 5
    assert not f.flags.writeable                    # mapped from the file, not copied: read-only
    with pytest.raises(ValueError):
        f[0, 0] = 1
    assert meta["class_names"] == ["a", "b"] and meta["settings"]["layer"] == "fc2"
    assert list(meta["ids"][:2]) == [b"p0", b"p1"] or list(meta["ids"][:2]) == ["p0", "p1"]
    assert not os.path.exists(str(tmp_path / "c.partial")) and not os.path.exists(path + ".tmp")


def test_journal_resumes_from_last_complete_batch(tmp_path):
    journal = PartialRun(str(tmp_path / "c"), PROV)
    journal.write("train", 0, 4, np.zeros((4, 2)))
    journal.write("train", 4, 8, np.zeros((4, 2)))
    journal.write("train", 12, 16, np.zeros((4, 2)))  # a gap: 8..12 not done
    open(os.path.join(journal.dir, "train", "0000000008-0000000012.npy.tmp"), "w").close()  # cut mid-write
    again = PartialRun(str(tmp_path / "c"), PROV)
    assert again.resumed and again.done("train") == 8
    other = PartialRun(str(tmp_path / "c"), {**PROV, "key": "k2"})  # other settings: start over
    assert not other.resumed and other.done("train") == 0


def test_missing_rows_block_the_finish(tmp_path):
    journal = PartialRun(str(tmp_path / "c"), PROV)
    journal.write("train", 0, 4, np.zeros((4, 2), np.float32))
    with pytest.raises(PipelineError, match="rows 4..10 of train are missing"):
        list(journal.read("train", 0, 10))


def test_incomplete_file_refused(tmp_path):
    path = str(tmp_path / "x.h5")
    with h5py.File(path, "w") as f:
        f.attrs["key"] = "k"
    with pytest.raises(PipelineError, match="incomplete"):
        load_cache(path)


def test_truncated_file_refused(tmp_path):
    path, _ = build(tmp_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(PipelineError, match="truncated or corrupt"):
        load_cache(path)


def test_flipped_bytes_detected(tmp_path):
    path, feats = build(tmp_path, n=300, d=64)
    data = bytearray(open(path, "rb").read())
    pos = bytes(data).find(feats[100].tobytes())
    assert pos > 0
    data[pos + 5] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(PipelineError, match="corrupt|SHA-256"):
        load_cache(path)


def test_settings_mismatch_refused(tmp_path):
    path, _ = build(tmp_path)
    assert read_provenance(path)["key"] == "k1"
    with pytest.raises(PipelineError, match="built with layer='fc2', asked for 'fc1'"):
        load_cache(path, expect={"layer": "fc1"})


def test_second_writer_refused(tmp_path):
    stem = str(tmp_path / "c")
    with writer_lock(stem):
        with pytest.raises(PipelineError, match=f"another process \\(pid {os.getpid()}\\) is writing"):
            with writer_lock(stem):
                pass
    with writer_lock(stem):  # released after the first one ends
        pass
