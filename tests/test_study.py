"""The study: a grid over stage-one and head settings, each cache once, one table and plot, resumable."""
import csv
import json
import os

import pytest
from conftest import run_captured, write_cifar10

from pipeline.study import wilson


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("s")
    write_cifar10(str(root / "d"), per_batch=12, test_n=20)
    return str(root / "d"), root


GRID = ["--grid", "interpolation=cubic,area", "--grid", "layer=block5_pool;block4_pool:avg,block5_pool:max",
        "--grid", "views=none;flip", "--grid", "dropout=0.2,0.5"]


def study(capsys, root, data, *extra):
    return run_captured(capsys, "study", "--data-dir", data, "--weights", "random", "--image-size", "32",
                        "--precision", "float32", "--cache-dir", root / "c", "--runs-dir", root / "runs", "--name", "st",
                        "--epochs", "2", "--val-fraction", "0.5", "--quiet", *GRID, *extra)


def test_grid_builds_each_cache_once_and_ranks_on_validation(data, capsys):
    d, root = data
    code, out, err = study(capsys, root, d)
    assert code == 0, err
    rows = list(csv.DictReader(open(root / "runs" / "st" / "results.csv")))
    assert len(rows) == 2 * 2 * 2 * (2 + 1)                      # caches x (2 softmax + 1 logreg)
    assert len({r["cache"] for r in rows}) == 8 and err.count("caches: ") == 4   # 4 passes (layers share one)
    assert "views=none" not in err and {r["views"] for r in rows} == {"none", "flip"}
    key = [float(r["val_tta_accuracy"] or r["val_accuracy"]) for r in rows]
    assert key == sorted(key, reverse=True)                      # ranked on validation, never on test
    flip = next(r for r in rows if r["views"] == "flip")
    assert flip["test_tta_accuracy"] and json.loads(flip["test_ci95"])[0] <= float(flip["test_tta_accuracy"])
    assert os.path.exists(root / "runs" / "st" / "study.png") and os.path.exists(root / "runs" / "st" / "results.md")
    assert os.path.exists(root / "runs" / "st-best" / "head.keras") and "best on validation" in err
    code, out, err = study(capsys, root, d)                     # again: every cache a hit, every row kept
    assert code == 0 and err.count("cache hit") == 8 and "pass 1" not in err
    again = list(csv.DictReader(open(root / "runs" / "st" / "results.csv")))
    assert [r["val_accuracy"] for r in again] == [r["val_accuracy"] for r in rows]


@pytest.mark.parametrize("grid,needle", [("foo=1,2", "--grid foo: unknown"), ("interpolation", "expected KEY=V1,V2"),
                                         ("image_size=a", "expected int values"),
                                         ("interpolation=cubic,bogus", "--interpolation: expected one of")])
def test_bad_grids_are_one_line(data, capsys, grid, needle):
    d, root = data
    code, out, err = run_captured(capsys, "study", "--data-dir", d, "--weights", "random", "--cache-dir", root / "c",
                                  "--runs-dir", root / "bad", "--grid", grid)
    assert code == 1 and needle in err and len(err.strip().splitlines()) == 1


def test_wilson_interval():
    lo, hi = wilson(0.8, 1000)
    assert 0.774 < lo < 0.775 and 0.823 < hi < 0.824          # about +-2.5 points on 1,000 images
