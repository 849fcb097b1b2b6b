"""`pipeline caches`: what a cache folder holds, read without changing anything."""
import json
import os
import shutil

import numpy as np
import pytest
from conftest import is_one_line_error, run_captured, write_cifar10

from pipeline.features import FeatureConfig, cache_memo, extract, load_cache
from pipeline.features.inventory import inventory, table
from pipeline.features.journal import Journal


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A real cache (random weights, 32 px, block5 with the mirror as a second view) in a folder of its own."""
    root = tmp_path_factory.mktemp("inv")
    write_cifar10(str(root / "data"))
    cfg = FeatureConfig(data_dir=str(root / "data"), weights="random", weights_seed=3, image_size=32,
                        precision="float32", layer="block5_pool", views="flip", cache_dir=str(root / "c"))
    return extract(cfg, quiet=True)


def folder_with(tmp_path, built):
    """A fresh folder holding a copy of the built cache: (folder, the copy's path)."""
    d = tmp_path / "caches"
    d.mkdir()
    path = str(d / os.path.basename(built))
    shutil.copyfile(built, path)
    return str(d), path


def test_a_cache_says_how_it_was_made(tmp_path, built):
    d, path = folder_with(tmp_path, built)
    (e,) = inventory(d)
    assert e["kind"] == "cache" and e["name"] == os.path.basename(path) and e["bytes"] == os.path.getsize(path)
    assert (e["dataset"], e["weights"], e["layer"], e["image_size"], e["interpolation"], e["views"]) == \
        ("cifar10", "random:3", "block5_pool:flatten", 32, "cubic", "flip")
    assert (e["precision"], e["store_dtype"], e["width"], e["n_views"]) == ("float32", "float32", 512, 2)
    assert e["rows"] == {"train": 30, "test": 6} and list(e["rows"]) == ["train", "test"]
    assert path.endswith(e["key"] + ".h5") and e["state"].startswith("complete")
    lines = table([e])
    assert "train:30 test:6" in lines[1] and "512 x2 views" in lines[1] and lines[1].endswith(e["name"])
    assert lines[-1].startswith("1 cache, ")


def test_verified_only_while_the_file_is_the_one_verified(tmp_path, built):
    d, path = folder_with(tmp_path, built)
    load_cache(path)                                   # a first load verifies its features and remembers it
    assert inventory(d)[0]["state"] == "verified"
    os.utime(path, ns=(1, 1))                          # another version of the file, as far as anyone can tell
    assert inventory(d)[0]["state"].startswith("complete")


def test_damaged_features_are_found_by_verify_and_the_file_is_left_as_it_was(tmp_path, built, capsys):
    d, path = folder_with(tmp_path, built)
    feats = np.array(load_cache(built)["train"][0][7])
    data = bytearray(open(path, "rb").read())
    pos = bytes(data).find(feats.tobytes())
    data[pos + 3] ^= 0x40
    open(path, "wb").write(bytes(data))
    assert inventory(d)[0]["state"].startswith("complete")        # the listing alone reads no features
    (e,) = inventory(d, verify=True)
    assert f"caches: verifying {os.path.basename(path)}" in capsys.readouterr().err
    assert e["state"] == "damaged: 'train' features fail their SHA-256 check"
    assert open(path, "rb").read() == bytes(data)            # nothing moved (beside it: the memo of files read)
    assert sorted(os.listdir(d)) == sorted([os.path.basename(path), cache_memo.MEMO])
    assert table([e])[-1].startswith("a damaged cache is never used")
    code, out, err = run_captured(capsys, "caches", "--cache-dir", d, "--verify")       # a check that finds damage
    said = err.strip().splitlines()              # which cache it verifies, then one line: what failed, what to do
    assert code == 1 and len(said) == 2 and said[0].startswith(f"caches: verifying {e['name']}")
    assert said[1].startswith(f"error: caches --verify: 1 damaged in {d} ({e['name']}); extract with the same")
    assert out[1].endswith(e["name"]) and "damaged: 'train' features" in out[1]                 # the table first


def test_a_truncated_cache_is_listed_as_damaged(tmp_path, built):
    d, path = folder_with(tmp_path, built)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    (e,) = inventory(d)
    assert e["kind"] == "cache" and e["state"].startswith("damaged: truncated or corrupt") and "rows" not in e


def test_a_build_in_progress_counts_its_contiguous_rows(tmp_path):
    d = tmp_path / "caches"
    d.mkdir()
    settings = {"dataset": "cifar10", "weights": "imagenet", "layer": "fc2", "image_size": 224,
                "interpolation": "cubic", "views": "none", "precision": "bfloat16", "store_dtype": "float16"}
    j = Journal(str(d / "cifar10-vgg19-fc2-0123456789abcdef"),
                {"key": "0123456789abcdef" * 4, "settings": settings, "ranges": {"train": [0, 10], "test": [0, 6]}},
                "float16")
    for a, b in ((0, 4), (4, 8)):
        j.write("train", a, b, np.zeros((b - a, 3), np.float16))
    j.write("test", 3, 6, np.zeros((3, 3), np.float16))           # after a gap: not counted until it is filled
    (e,) = inventory(str(d))
    assert e["kind"] == "building" and e["rows"] == {"train": 8, "test": 0} and e["weights"] == "imagenet"
    assert e["state"] == "8 of 16 rows (50%); the same features command resumes it" and e["bytes"] > 0


def test_set_aside_and_stale_temp_files_are_listed_with_what_to_do(tmp_path, built):
    d, path = folder_with(tmp_path, built)
    os.rename(path, path + ".corrupt")
    stale = os.path.join(d, ".cifar10-vgg19-x.2147483647.0123abcd.tmp.h5")      # a pid no process has
    open(stale, "wb").write(b"\0" * 100)
    open(os.path.join(d, "notes.txt"), "w").write("not listed")
    open(os.path.join(d, "mine.h5"), "w").write("a text file named as a cache")
    kinds = {e["kind"]: e for e in inventory(d)}
    assert set(kinds) == {"set aside", "temp", "other"}
    assert kinds["other"]["state"] == "not a feature cache: not an HDF5 file (no signature at its start)"
    assert "delete it when done" in kinds["set aside"]["state"]
    assert "process 2147483647 is gone); the next build" in kinds["temp"]["state"] and kinds["temp"]["bytes"] == 100
    assert table(list(kinds.values()))[-1].startswith("0 caches")


def test_the_command(tmp_path, built, capsys):
    d, path = folder_with(tmp_path, built)
    code, out, err = run_captured(capsys, "caches", "--cache-dir", d)
    assert code == 0 and out[0].split()[:3] == ["created", "kind", "dataset"] and out[1].endswith(os.path.basename(path))
    assert out[-1].startswith("1 cache, ") and out[-1].endswith(" free on its disk")       # room for the next build
    code, out, err = run_captured(capsys, "caches", "--cache-dir", d, "--json")
    assert code == 0 and json.loads("\n".join(out))[0]["rows"] == {"train": 30, "test": 6}
    os.makedirs(tmp_path / "empty")
    code, out, err = run_captured(capsys, "caches", "--cache-dir", tmp_path / "empty")
    assert code == 0 and out == [f"no caches in {tmp_path / 'empty'}"]
    code, out, err = run_captured(capsys, "caches", "--cache-dir", tmp_path / "missing")
    assert is_one_line_error(code, err, "is not a folder; give the --cache-dir") and out == []


def test_a_build_whose_provenance_is_a_link_is_not_followed(tmp_path):
    d = tmp_path / "caches"
    d.mkdir()
    j = Journal(str(d / "x-0123456789abcdef"), {"key": "k", "settings": {}, "ranges": {"train": [0, 4]}}, "float32")
    j.write("train", 0, 4, np.zeros((4, 2), np.float32))
    meta = os.path.join(j.dir, "provenance.json")
    os.rename(meta, tmp_path / "elsewhere.json")
    os.symlink(tmp_path / "elsewhere.json", meta)
    (e,) = inventory(str(d))
    assert e["kind"] == "building" and e["state"].startswith("a journal without its provenance") and "rows" not in e


def test_a_forged_cache_with_odd_attributes_is_listed_not_a_crash(tmp_path):
    """A cache file anyone wrote (its checksums recomputed, so it passes them) whose settings are not a mapping,
    and a temp file whose process number no system has."""
    from pipeline.features.cache import write_cache
    d = tmp_path / "caches"
    d.mkdir()
    prov = {"key": "k" * 64, "settings": ["not", "a", "dict"], "created": 12345, "class_names": ["a", "b"]}
    splits = {"train": (np.arange(4) % 2, np.arange(4), 0)}
    write_cache(str(d / "x.h5"), prov, splits, lambda s: iter([(0, 4, np.ones((4, 3), np.float32))]))
    open(d / ".x.99999999999999999999.0123abcd.tmp.h5", "wb").close()         # a pid no system has
    by_kind = {e["kind"]: e for e in inventory(str(d))}
    assert by_kind["cache"]["state"] == "damaged: refused, attribute settings is not a JSON object"
    assert "is gone" in by_kind["temp"]["state"]


def test_a_shard_of_a_sharded_build_is_listed_as_such(tmp_path, built):
    d, path = folder_with(tmp_path, built)
    os.rename(path, path[:-3] + ".shard-train-000000000-000000030.h5")
    (e,) = inventory(d)
    assert e["kind"] == "shard" and e["state"].endswith("merged into its cache when every shard is built")
    assert table([e])[-1].startswith("0 caches")


def test_memos_nested_too_deeply_are_done_without(tmp_path, built, capsys, monkeypatch):
    """Found by fuzzing the cache folder's memos: JSON nested deeper than Python's recursion limit in
    source-fingerprints.json, verified-caches.json, precision-probe.json or sources/file-sha256.json made
    `features` and `caches` stop with a traceback (RecursionError). Each is done without (computed again)."""
    from conftest import SMALL
    from pipeline.features import precision
    root = os.path.dirname(os.path.dirname(built))
    tree = root + "/data.tar.gz"
    if not os.path.exists(tree):
        import tarfile
        with tarfile.open(tree, "w:gz") as t:
            t.add(root + "/data/cifar-10-batches-py", arcname="cifar-10-batches-py")
    d = tmp_path / "c"
    args = ["features", "--data-dir", tree, "--cache-dir", d, *SMALL]
    code, out, err = run_captured(capsys, *args)
    assert code == 0, err
    deep = "[" * 200_000 + "]" * 200_000
    for name in ("source-fingerprints.json", "verified-caches.json", "precision-probe.json"):
        (d / name).write_text(deep)
    os.makedirs(d / "sources", exist_ok=True)
    (d / "sources" / "file-sha256.json").write_text(deep)
    code, out, err = run_captured(capsys, *args)
    assert code == 0 and "Traceback" not in err and out[-1].endswith(".h5"), err
    code, out, err = run_captured(capsys, "caches", "--cache-dir", d)
    assert code == 0 and "Traceback" not in err and "1 cache" in out[-1], (out, err)
    monkeypatch.setattr(precision, "measure", lambda dtypes: {"float32": 1.0, "bfloat16": 2.0})
    (d / "precision-probe.json").write_text(deep)
    assert precision.probe_rates(("float32", "bfloat16"), set(), str(d)) == {"float32": 1.0, "bfloat16": 2.0}
