import os

import h5py
import numpy as np
import pytest

from pipeline.features.cache import (NOT_A_CACHE, REBUILD, DamagedCache, NotACache, load_cache, read_provenance, write_cache,
                                     writer_lock)
from pipeline.errors import PipelineError
from tests.conftest import is_one_line_error, run_captured

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


def test_a_damaged_group_is_refused_in_one_line(tmp_path):
    """A group's symbol table node damaged: h5py raises RuntimeError (not an OSError) walking the tree."""
    path, _ = build(tmp_path)
    data = open(path, "rb").read()
    assert b"SNOD" in data
    open(path, "wb").write(data.replace(b"SNOD", bytes(4)))
    for read in (load_cache, read_provenance):
        with pytest.raises(DamagedCache, match="truncated or corrupt .*bad symbol table node signature"):
            read(path)


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


def forge(path, make_features, labels=(0, 1, 0, 1), class_names=("a", "b"), test=None, **attrs):
    """A cache whose checksums are all valid (as a crafted file's would be) around `make_features(group)`,
    which creates the train features and returns the bytes they will read as."""
    import hashlib
    from pipeline.features.cache import _checksum, _stored, ids_sha256
    from pipeline.hashing import array_sha256 as sha256_of
    with h5py.File(path, "w") as f:
        sums = {}
        for split, make in (("train", make_features), ("test", test)):
            if make is None:
                continue
            g = f.create_group(split)
            data = make(g)
            y, ids = np.asarray(labels, np.int64), np.arange(len(labels))
            g.create_dataset("labels", data=y)
            g.create_dataset("ids", data=ids)
            sums[split] = {"n": len(y), "first_row": 0, "features_sha256": hashlib.sha256(data).hexdigest(),
                           "labels_sha256": sha256_of(y.astype("<i8")), "ids_sha256": ids_sha256(ids)}
            g.attrs.update(sums[split])
        root = _stored({"key": "k", "settings": {"layer": "fc2"}, "class_names": class_names if isinstance(class_names, int) else list(class_names),
                         **attrs})
        f.attrs.update(root)
        f.attrs["checksum"] = _checksum(root, sums)
        f.attrs["complete"] = True
    return path


def plain(x):
    def make(g):
        g.create_dataset("features", data=x)
        return np.ascontiguousarray(x).tobytes()
    return make


def test_forged_but_plain_cache_loads(tmp_path):
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = load_cache(forge(str(tmp_path / "c.h5"), plain(x), test=plain(x)))
    assert np.array_equal(out["train"][0], x)      # the helper itself makes a loadable cache


def test_data_from_another_file_is_refused_before_it_is_read(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(16, dtype=np.float32).tobytes())

    def external(g):
        g.create_dataset("features", (4, 4), "f4", external=[(str(secret), 0, 64)])
        return secret.read_bytes()                  # a forger can sum the target's bytes
    with pytest.raises(DamagedCache, match="external storage"):
        load_cache(forge(str(tmp_path / "e.h5"), external))
    with pytest.raises(DamagedCache, match="not in the file"):     # 100 KB declaring 40 GB: refused unread
        load_cache(forge(str(tmp_path / "big.h5"), lambda g: (g.create_dataset("features", (10 ** 6, 10 ** 4), "f4"), b"")[1],
                         labels=[0] * 10 ** 6))


def test_a_fifo_or_an_unknown_file_is_refused_unread(tmp_path):
    import signal

    def hung(*_):
        raise TimeoutError("load_cache blocked on a FIFO")
    os.mkfifo(tmp_path / "fifo.h5")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with pytest.raises(DamagedCache, match="not a regular file"):
            load_cache(str(tmp_path / "fifo.h5"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("weights", data=np.zeros(3))
    with pytest.raises(NotACache, match="an HDF5 file without a cache's attributes"):
        load_cache(str(tmp_path / "other.h5"))
    with h5py.File(tmp_path / "other.h5", "a") as f:      # a cache's attributes, a cache's layout not
        f.attrs["key"] = "0" * 64
    with pytest.raises(DamagedCache, match="expected train and/or test groups") as e:
        load_cache(str(tmp_path / "other.h5"))
    assert not isinstance(e.value, NotACache) and REBUILD in str(e.value)


@pytest.mark.parametrize("make,needle", [
    (lambda p: p.write_text("root:x:0:0:root:/root:/bin/bash\n"), "not an HDF5 file"),
    (lambda p: h5py.File(p, "w").close(), "an HDF5 file without a cache's attributes"),
    (lambda p: p.mkdir(), "not a regular file")])
def test_a_file_that_never_was_a_cache_gets_advice_to_pass_one(tmp_path, capsys, make, needle):
    """Not "rebuild it" (the features command would never write there): which file a cache is, and where."""
    make(tmp_path / "x.h5")
    with pytest.raises(NotACache, match=needle) as e:
        load_cache(str(tmp_path / "x.h5"))
    assert NOT_A_CACHE in str(e.value) and REBUILD not in str(e.value)
    code, out, err = run_captured(capsys, "train-head", "--cache", tmp_path / "x.h5", "--runs-dir", tmp_path / "runs")
    assert is_one_line_error(code, err, needle) and "data/features" in err


@pytest.mark.parametrize("kw,needle", [
    ({"labels": (0, 5, 0, 1)}, "outside the 2 class names"),
    ({"class_names": 5}, "class_names is not a list"),
    ({"settings": 3}, "settings is not a JSON object"),
    ({"test": plain(np.zeros((4, 2, 4), np.float32))}, "differ in shape"),        # views on test only
])
def test_inconsistent_content_with_valid_checksums_is_refused(tmp_path, kw, needle):
    x = np.zeros((4, 4), np.float32)
    kw = {"test": plain(x), **kw}
    with pytest.raises(DamagedCache, match=needle):
        load_cache(forge(str(tmp_path / "c.h5"), plain(x), **kw))


@pytest.mark.parametrize("x,needle", [(np.zeros((4, 4), np.int32), "expected N x D"),
                                      (np.array([[0, np.inf]] * 4, np.float16), "inf or NaN"),
                                      (np.array([[np.nan, 0]] * 4, np.float32), "inf or NaN")])
def test_feature_dtypes_and_values(tmp_path, x, needle):
    with pytest.raises(DamagedCache, match=needle):
        load_cache(forge(str(tmp_path / "c.h5"), plain(x)))


def test_train_head_on_a_crafted_cache_is_one_line(tmp_path, capsys):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(64))
    path = forge(str(tmp_path / "e.h5"), lambda g: (g.create_dataset("features", (4, 4), "f4",
                                                                     external=[(str(secret), 0, 64)]), bytes(64))[1])
    code, out, err = run_captured(capsys, "train-head", "--cache", path, "--runs-dir", tmp_path / "runs")
    assert code == 1 and err.count("\n") == 1 and "external storage" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")


def test_file_names_stay_short_for_any_layer_list():
    from pipeline.features.cache import cache_stem
    from pipeline.features.pooling import CONV_LAYERS, POOLINGS, parse_layers, slug
    every = ",".join(f"{layer}:{p}" for layer in CONV_LAYERS for p in POOLINGS[:3])       # 15 items, all valid
    name = os.path.basename(cache_stem("c", "imagefolder:" + "x" * 200, slug(parse_layers(every, "flatten")), "k" * 64))
    assert len(name.encode()) + len(".partial.h5.tmp") < 255 and name.endswith("-" + "k" * 16)
    assert cache_stem("c", "cifar10", "fc2", "k" * 64) == os.path.join("c", "cifar10-vgg19-fc2-" + "k" * 16)


def test_a_cache_hit_maps_the_file_without_reading_it_in(tmp_path, monkeypatch):
    """The heads' load reads every page in up front (MAP_POPULATE); a cache hit's check reads none (a 7.7 GB
    cache's hit took seconds and its size in memory), and still refuses a damaged file."""
    import mmap
    from pipeline.features.build import is_finished
    path, _ = build(tmp_path)
    populated, real = [], mmap.mmap
    monkeypatch.setattr(mmap, "mmap", lambda *a, **k: populated.append(bool(k["flags"] & mmap.MAP_POPULATE)) or
                        real(*a, **k))
    load_cache(path)
    assert is_finished(path, "k1", full=True) and populated == [True, False]
    with h5py.File(path, "r+") as f:
        f["train"]["features"][0, 0] += 1                 # features changed, checksums not
    assert not is_finished(path, "k1", full=True)


def test_a_stopped_writes_temp_file_is_removed_by_the_next_write_of_that_cache(tmp_path, capsys):
    from tests.test_durable import killed_writer
    other = killed_writer(tmp_path / "other.h5")
    left = killed_writer(tmp_path / "c.h5", size=5_000_000)
    path, feats = build(tmp_path)
    assert not os.path.exists(left) and os.path.exists(other)           # another cache's is not this one's to remove
    assert f"removed {left}, left by a write of this cache that was stopped (5.0 MB)" in capsys.readouterr().err
    assert np.array_equal(load_cache(path)["train"][0], feats)


def test_a_big_load_says_so_first(tmp_path, monkeypatch, capsys):
    """A file of SAY_LOAD_BYTES or more: a line before it is read, saying whether its checksums are checked
    (the first load of this version of the file) or not; a hit's check that reads nothing and a small file: none."""
    from pipeline.features import cache
    load_cache(build(tmp_path)[0])
    assert capsys.readouterr().err == ""                        # below the size
    monkeypatch.setattr(cache, "SAY_LOAD_BYTES", 0)
    os.makedirs(tmp_path / "b")
    path, _ = build(tmp_path / "b")
    size = cache.file_size(os.path.getsize(path))
    load_cache(path)
    assert capsys.readouterr().err == f"cache c.h5: reading {size} and checking its SHA-256 (once per version of the file)\n"
    load_cache(path)
    assert capsys.readouterr().err == f"cache c.h5: reading {size}\n"
    load_cache(path, populate=False)
    assert capsys.readouterr().err == ""
