"""Sharded extraction merges into exactly the unsharded cache; bad shard sets block the merge."""
import os
import shutil

import h5py
import numpy as np
import pytest
from conftest import SMALL, run_captured, write_cifar10

from pipeline.cache import load_cache
from pipeline.shards import shard_ranges

ARGS = ["--splits", "train,test", "--layer", "block5_pool", "--batch-size", "4", *SMALL]


@pytest.fixture
def data(tmp_path):
    write_cifar10(str(tmp_path / "d"), per_batch=7, test_n=9)
    return str(tmp_path / "d")


def features(capsys, *args):
    return run_captured(capsys, "features", *args)


def same_cache(a, b):
    A, B = load_cache(a), load_cache(b)
    assert set(A) == set(B)
    for s in A:
        assert np.array_equal(A[s][0], B[s][0]) and np.array_equal(A[s][1], B[s][1])
        assert [str(i) for i in A[s][2]["ids"]] == [str(i) for i in B[s][2]["ids"]]
    assert A["train"][2]["key"] == B["train"][2]["key"]


def test_shard_ranges_cover_once():
    assert shard_ranges(10, 4) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    assert shard_ranges(3, 5) == [(0, 1), (1, 2), (2, 3)]
    assert shard_ranges(200, 4, align=32) == [(0, 64), (64, 96), (96, 160), (160, 200)]


def test_sharded_and_merged_equals_unsharded(data, tmp_path, capsys):
    code, one, _ = features(capsys, "--data-dir", data, "--cache-dir", tmp_path / "one", *ARGS)
    code2, many, err = features(capsys, "--data-dir", data, "--cache-dir", tmp_path / "many", "--shards", "4", *ARGS)
    assert code == code2 == 0 and "0 of 7 already done" in err
    same_cache(one[-1], many[-1])
    assert [f for f in os.listdir(tmp_path / "many") if ".shard-" in f] == []  # shards removed after the merge
    code, again, err = features(capsys, "--data-dir", data, "--cache-dir", tmp_path / "many", "--shards", "4", *ARGS)
    assert "cache hit" in err


def keep_shards(tmp_path, data, capsys):
    """Extract 3 shards per split but stop before the merge: returns the cache dir."""
    from pipeline import shards
    real = shards.merge

    def stop(p, jobs):
        raise KeyboardInterrupt  # as if stopped between the last shard and the merge
    shards.merge = stop
    try:
        assert features(capsys, "--data-dir", data, "--cache-dir", tmp_path / "c", "--shards", "3", *ARGS)[0] == 130
    finally:
        shards.merge = real
    return tmp_path / "c"


def test_missing_duplicated_or_foreign_shard_blocks_merge(data, tmp_path, capsys):
    c = keep_shards(tmp_path, data, capsys)
    names = sorted(f for f in os.listdir(c) if ".shard-train-" in f and f.endswith(".h5"))
    assert len(names) == 3
    moved = shutil.move(str(c / names[1]), str(tmp_path / names[1]))
    from pipeline import shards
    real_run = shards.ShardWorker.run
    shards.ShardWorker.run = lambda *a, **k: (_ for _ in ()).throw(AssertionError("no extraction"))
    try:  # with extraction disabled, the merge itself must notice the hole
        from pipeline.features import plan
        from pipeline.cli import build_parser, feature_config
        p = plan(feature_config(build_parser().parse_args(["features", "--data-dir", data, "--cache-dir", str(c), *ARGS])))
        with pytest.raises(Exception, match=r"rows \d+..\d+ of train are in no shard"):
            shards.merge(p, [])
        shutil.move(moved, str(c / names[1]))
        dup = str(c / names[1]).split(".shard-")[0] + ".shard-train-000000001-000000004.h5"
        shutil.copy(str(c / names[1]), dup)
        with pytest.raises(Exception, match="overlaps"):
            shards.merge(p, [])
        os.remove(dup)
        with h5py.File(c / names[0], "r+") as f:
            f.attrs["key"] = "someone-else"
        with pytest.raises(Exception, match="another configuration"):
            shards.merge(p, [])
    finally:
        shards.ShardWorker.run = real_run


def test_rerun_extracts_only_missing_shards(data, tmp_path, capsys):
    c = keep_shards(tmp_path, data, capsys)
    os.remove(c / sorted(f for f in os.listdir(c) if ".shard-test-" in f and f.endswith(".h5"))[0])
    code, out, err = features(capsys, "--data-dir", data, "--cache-dir", c, "--shards", "3", *ARGS)
    assert code == 0 and "5 of 6 already done; 1 to extract" in err
    code, one, _ = features(capsys, "--data-dir", data, "--cache-dir", tmp_path / "one", *ARGS)
    same_cache(out[-1], one[-1])


ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra (make install-ray)")


def test_ray_engine_on_local_ray_equals_local(data, tmp_path, capsys):
    code, one, _ = features(capsys, "--data-dir", data, "--cache-dir", tmp_path / "one", *ARGS)
    code, out, err = features(capsys, "--data-dir", data, "--cache-dir", tmp_path / "ray", "--shards", "2",
                              "--engine", "ray", *ARGS)
    assert code == 0, err
    same_cache(one[-1], out[-1])
