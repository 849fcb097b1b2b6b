import os

import h5py
import numpy as np
import pytest

from pipeline.features.cache import DamagedCache, load_cache, read_provenance, write_cache, writer_lock
from pipeline.errors import PipelineError

PROV = {"key": "k1", "settings": {"layer": "fc2", "image_size": 32}, "class_names": ["a", "b"]}


def build(tmp_path, n=10, d=6, batch=4):
    feats = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    splits = {"train": (np.arange(n) % 2, np.array([f"p{i}" for i in range(n)], dtype=object), 0)}
    path = str(tmp_path / "c.h5")
    write_cache(path, PROV, splits, lambda s: ((a, min(a + batch, n), feats[a:a + batch]) for a in range(0, n, batch)))
    return path, feats


def test_roundtrip_layout_and_provenance(tmp_path):
    path, feats = build(tmp_path)
    out = load_cache(path)
    f, y, meta = out["train"]
    assert np.array_equal(f, feats) and list(y) == [0, 1] * 5
    assert not f.flags.writeable                    # mapped from the file, not copied: read-only
    with pytest.raises(ValueError):
        f[0, 0] = 1
    assert meta["class_names"] == ["a", "b"] and meta["settings"]["layer"] == "fc2"
    assert list(meta["ids"][:2]) == ["p0", "p1"] and not os.path.exists(path + ".tmp")


def test_incomplete_file_refused(tmp_path):
    path = str(tmp_path / "x.h5")
    with h5py.File(path, "w") as f:
        f.attrs["key"] = "k"
    with pytest.raises(DamagedCache, match="incomplete"):
        load_cache(path)


def test_truncated_file_refused(tmp_path):
    path, _ = build(tmp_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(DamagedCache, match="truncated or corrupt"):
        load_cache(path)


def test_flipped_bytes_detected(tmp_path):
    path, feats = build(tmp_path, n=300, d=64)
    data = bytearray(open(path, "rb").read())
    pos = bytes(data).find(feats[100].tobytes())
    assert pos > 0
    data[pos + 5] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(DamagedCache, match="'train' features fail their SHA-256 check"):
        load_cache(path)
    assert load_cache(path, verify=False)["train"][0].shape == (300, 64)    # only when asked not to check


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


@pytest.mark.parametrize("edit,needle", [
    (lambda f: f["train"]["labels"].__setitem__(0, 1), "labels or ids fail"),
    (lambda f: f["train"]["ids"].__setitem__(0, "other"), "labels or ids fail"),
    (lambda f: f.attrs.__setitem__("class_names", '["b", "a"]'), "attributes (provenance, class names"),
    (lambda f: f.attrs.__setitem__("key", "k2"), "attributes (provenance, class names"),
    (lambda f: f["train"].attrs.__setitem__("features_sha256", "0" * 64), "attributes (provenance, class names"),
])
def test_edited_labels_ids_or_provenance_refused(tmp_path, edit, needle):
    path, _ = build(tmp_path)
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(DamagedCache) as e:
        read_provenance(path)
    assert needle in str(e.value)


def test_split_without_rows_is_not_written(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        write_cache(str(tmp_path / "e.h5"), PROV, {"train": (np.zeros(0, int), np.zeros(0, int), 0)}, lambda s: iter(()))
    assert os.listdir(tmp_path) == []
