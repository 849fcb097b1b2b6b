"""A verified cache is remembered by its identity on disk: loaded again it is not hashed again, and
any change to the file (its ctime moves, whatever mtime says) brings the full verification back."""
import json
import os

import numpy as np
import pytest

from pipeline import hdf5_layout
from pipeline.features import cache as cache_mod
from pipeline.features import cache_memo
from pipeline.features.cache import DamagedCache, load_cache, write_cache

PROV = {"key": "k1", "settings": {"layer": "fc2", "image_size": 32}, "class_names": ["a", "b"]}


def build(tmp_path, n=300, d=64):
    feats = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    splits = {"train": (np.arange(n) % 2, np.arange(n), 0), "test": (np.arange(n) % 2, np.arange(n), 0)}
    path = str(tmp_path / "c.h5")
    write_cache(path, PROV, splits, lambda s: iter([(0, n, feats)]))
    return path, feats


@pytest.fixture
def count_hashing(monkeypatch):
    calls = []
    real = cache_mod._digest_finite
    monkeypatch.setattr(cache_mod, "_digest_finite", lambda a: calls.append(len(a)) or real(a))
    return calls


def test_an_unchanged_cache_is_verified_once(tmp_path, count_hashing):
    path, feats = build(tmp_path)
    first = load_cache(path)
    assert len(count_hashing) == 2                                  # both splits hashed
    again = load_cache(path)
    assert len(count_hashing) == 2 and np.array_equal(again["train"][0], first["train"][0])
    memo = json.load(open(tmp_path / cache_memo.MEMO))
    assert list(memo) == [os.path.abspath(path)] and memo[os.path.abspath(path)]["stamp"] == cache_memo.stamp(path)


def test_a_changed_file_is_noticed_even_with_its_mtime_put_back(tmp_path, count_hashing):
    path, feats = build(tmp_path)
    load_cache(path)
    st = os.stat(path)
    data = bytearray(open(path, "rb").read())
    pos = bytes(data).find(feats[100].tobytes())
    data[pos + 5] ^= 0xFF
    with open(path, "r+b") as f:                     # in place: same inode, same size
        f.write(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime as it was; ctime cannot be put back
    assert cache_memo.stamp(path)[:2] == [st.st_size, st.st_mtime_ns]
    with pytest.raises(DamagedCache, match="fail their SHA-256 check"):
        load_cache(path)
    assert len(count_hashing) == 4


def test_a_replaced_file_is_verified_again(tmp_path, count_hashing):
    path, _ = build(tmp_path)
    load_cache(path)
    (tmp_path / "other").mkdir()
    other, _ = build(tmp_path / "other", n=200)
    os.replace(other, path)                           # another file under the name: another inode
    assert len(load_cache(path)["train"][0]) == 200 and len(count_hashing) == 4


def test_loading_some_splits_does_not_vouch_for_the_file(tmp_path, count_hashing):
    path, _ = build(tmp_path)
    load_cache(path, splits=["train"])
    entry = json.loads((tmp_path / cache_memo.MEMO).read_text())[os.path.abspath(path)]
    assert "checksum" not in entry                    # its metadata was read; the file is not vouched for
    load_cache(path)
    assert len(count_hashing) == 3


@pytest.mark.parametrize("memo", ["not json", "[1, 2]", '{"%s": {"stamp": "x", "checksum": 3}}'])
def test_a_memo_it_cannot_use_is_ignored(tmp_path, count_hashing, memo):
    path, _ = build(tmp_path)
    (tmp_path / cache_memo.MEMO).write_text(memo.replace("%s", os.path.abspath(path)))
    load_cache(path)
    assert len(count_hashing) == 2                    # verified, then remembered properly
    load_cache(path)
    assert len(count_hashing) == 2


def test_a_read_only_cache_folder_still_loads(tmp_path, count_hashing, monkeypatch):
    path, _ = build(tmp_path)
    monkeypatch.setattr(cache_memo, "write_json", lambda *a: (_ for _ in ()).throw(PermissionError(13, "denied")))
    load_cache(path)
    load_cache(path)
    assert len(count_hashing) == 4


def test_a_file_not_read_before_is_read_in_a_child_first(tmp_path, monkeypatch):
    """A cache this folder's memo does not know as it is now is parsed in a child process first (libhdf5 can
    loop forever or crash on a damaged file); once read, and while it does not change, it is not."""
    path, _ = build(tmp_path)
    children = []
    real = cache_mod.parse_elsewhere
    monkeypatch.setattr(cache_mod, "parse_elsewhere", lambda *a: children.append(a) or real(*a))
    cache_mod.read_provenance(path)
    cache_mod.read_provenance(path)
    assert [c[0] for c in children] == [path]
    os.utime(path)                                    # any change to the file: read in a child again
    load_cache(path)
    assert len(children) == 2


def test_metadata_that_makes_libhdf5_loop_is_refused_in_one_line(tmp_path, monkeypatch):
    """A global heap collection (where h5py keeps string attributes) whose objects are zeroed: libhdf5 loops
    forever reading an attribute, and nothing in the process can stop it; the child is stopped instead."""
    path, _ = build(tmp_path)
    data = bytearray(open(path, "rb").read())
    heap = data.find(b"GCOL")
    assert heap > 0
    data[heap + 16:heap + 4096] = bytes(4096 - 16)   # the collection's objects, after its 16-byte header
    open(path, "wb").write(bytes(data))
    monkeypatch.setattr(cache_mod, "parse_elsewhere", lambda p, r: hdf5_layout.parse_elsewhere(p, r, seconds=5))
    with pytest.raises(DamagedCache, match="did not finish reading its metadata in 5 s"):
        cache_mod.read_provenance(path)
    assert not (tmp_path / cache_memo.MEMO).exists() or os.path.abspath(path) not in json.loads(
        (tmp_path / cache_memo.MEMO).read_text())     # a refused file is not remembered: it is read in a child again
