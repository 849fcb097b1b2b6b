"""Sharded extraction merges into exactly the unsharded cache; bad shard sets block the merge."""
import os
import shutil

import h5py
import numpy as np
import pytest
from conftest import SMALL, run_captured, write_cifar10

from pipeline.features.cache import load_cache
from pipeline.errors import PipelineError
from pipeline.features.shards import shard_ranges

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


def test_more_shards_than_batches_give_a_shard_per_batch_at_once():
    """Found by fuzzing the command line: --shards with 30 digits looped for ever over the shard count.
    At least as many shards as rows are a shard per batch at once, the ranges the loop gave."""
    def uncut(n, shards, align):
        edges = [min(n, round(i * n / shards / align) * align) for i in range(shards)] + [n]
        return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]
    for n in (1, 7, 250, 1000, 1001, 4999):
        for align in (1, 32, 250):
            for shards in (1, 2, 3, 5, 40, 999, 1000, 1001, 5000):
                assert shard_ranges(n, shards, align) == uncut(n, shards, align), (n, shards, align)
    assert shard_ranges(1000, int("1" * 30), 250) == [(0, 250), (250, 500), (500, 750), (750, 1000)]


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
    os.makedirs(tmp_path, exist_ok=True)
    from pipeline.features import shards
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
    from pipeline.features import shards
    real_run = shards.ShardWorker.run
    shards.ShardWorker.run = lambda *a, **k: (_ for _ in ()).throw(AssertionError("no extraction"))
    try:  # with extraction disabled, the merge itself must notice the hole
        from pipeline.features.plan import plan
        from pipeline.cli import build_parser, feature_config
        p = plan(feature_config(build_parser().parse_args(["features", "--data-dir", data, "--cache-dir", str(c), *ARGS])))
        with pytest.raises(PipelineError, match=r"rows \d+..\d+ of train are in no shard"):
            shards.merge(p, [])
        shutil.move(moved, str(c / names[1]))
        dup = str(c / names[1]).split(".shard-")[0] + ".shard-train-000000001-000000004.h5"
        shutil.copy(str(c / names[1]), dup)
        with pytest.raises(PipelineError, match="overlaps"):
            shards.merge(p, [])
        os.remove(dup)
        with h5py.File(c / names[0], "r+") as f:
            f.attrs["key"] = "someone-else"
        with pytest.raises(PipelineError, match="changed after it was written"):
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


def flip_feature_bytes(path):
    """Change one stored feature value in place (the file's checksums no longer match it)."""
    with h5py.File(path, "r") as f:
        ds = f["train"]["features"] if "train" in f else f["test"]["features"]
        offset, value = ds.id.get_offset(), ds[0, 0]
    data = bytearray(open(path, "rb").read())
    data[offset:offset + 4] = np.float32(value + 1).tobytes()
    open(path, "wb").write(bytes(data))


def test_damaged_shard_is_redone_never_merged(data, tmp_path, capsys):
    """Kill before the merge, damage one finished shard: the re-run moves it aside, extracts it
    again, and the merged cache equals an unsharded run; a shard damaged after that check is
    refused by the merge itself (each shard's features against their SHA-256)."""
    c = keep_shards(tmp_path, data, capsys)
    shard = str(c / sorted(f for f in os.listdir(c) if ".shard-train-" in f and f.endswith(".h5"))[1])
    flip_feature_bytes(shard)
    code, out, err = features(capsys, "--data-dir", data, "--cache-dir", c, "--shards", "3", *ARGS)
    assert code == 0 and "5 of 6 already done; 1 to extract" in err and f"moved it to {shard}.corrupt" in err
    code, one, _ = features(capsys, "--data-dir", data, "--cache-dir", tmp_path / "one", *ARGS)
    same_cache(out[-1], one[-1])

    c2 = keep_shards(tmp_path / "again", data, capsys)
    shard = str(c2 / sorted(f for f in os.listdir(c2) if ".shard-test-" in f and f.endswith(".h5"))[0])
    flip_feature_bytes(shard)
    from pipeline.features import shards
    from pipeline.cli import build_parser, feature_config
    from pipeline.features.plan import plan
    p = plan(feature_config(build_parser().parse_args(["features", "--data-dir", data, "--cache-dir", str(c2), *ARGS])))
    with pytest.raises(PipelineError, match="'test' features fail their SHA-256 check; moved it to"):
        shards.merge(p, [])
    assert not os.path.exists(p.path) and os.path.exists(shard + ".corrupt")


def test_ray_engine_on_local_ray_equals_local(data, tmp_path, capsys):
    pytest.importorskip("ray", reason="the Ray engine needs the ray extra (make install-ray)")
    code, one, _ = features(capsys, "--data-dir", data, "--cache-dir", tmp_path / "one", *ARGS)
    code, out, err = features(capsys, "--data-dir", data, "--cache-dir", tmp_path / "ray", "--shards", "2",
                              "--engine", "ray", *ARGS)
    assert code == 0, err
    same_cache(one[-1], out[-1])


def test_merging_says_up_front_when_the_disk_is_too_small(data, tmp_path, capsys, monkeypatch):
    import pipeline.features.build as build
    monkeypatch.setattr(build, "free_bytes", lambda path: 1000)                # the disk: 1 KB free
    code, out, err = features(capsys, "--data-dir", data, "--cache-dir", tmp_path / "c", "--shards", "2", *ARGS)
    assert code == 0 and "this build needs about" in err                       # each shard's build
    assert f"{tmp_path / 'c'}: merging the shards needs about " in err and "(the finished file, as large as the " \
        "shards together) and the disk has 0.0 MB free" in err
