import csv
import json
import os

import pytest
from conftest import run_captured



def sweep(capsys, *args):
    return run_captured(capsys, "sweep", *args)


def test_grid_table_is_ranked_and_best_is_a_run(syn, tmp_path, capsys):
    code, out, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "s", "--epochs", "3",
                           "--batch-size", "50", "--param", "dropout=0.2,0.8", "--param", "lr=0.0001,0.03")
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "s" / "results.csv")))
    assert len(rows) == 4
    accs = [float(r["val_accuracy"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    assert float(rows[0]["lr"]) == 0.03  # lr 1e-4 for 3 epochs barely moves: the grid must rank it last
    assert os.path.exists(tmp_path / "s" / "results.md") and os.path.exists(tmp_path / "s" / "sweep.png")
    best = json.load(open(tmp_path / "s-best" / "metrics.json"))
    assert out[-1] == str(tmp_path / "s-best")
    assert best["hyperparameters"]["lr"] == 0.03 and best["hyperparameters"]["dropout"] == float(rows[0]["dropout"])
    assert best["test"]["n"] == 200 and best["val"]["accuracy"] == pytest.approx(accs[0], abs=0.02)


def test_random_subset_and_toml(syn, tmp_path, capsys):
    toml = tmp_path / "s.toml"
    toml.write_text('head = "logreg"\nrandom = 2\n[params]\nC = [0.01, 0.1, 1.0]\n')
    code, out, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "t", "--config", toml)
    assert code == 0 and len(list(csv.DictReader(open(tmp_path / "t" / "results.csv")))) == 2
    assert os.path.exists(tmp_path / "t-best" / "head.joblib")


@pytest.mark.parametrize("args,needle", [
    (["--param", "momentum=0.9"], "--param momentum: unknown for the softmax head"),
    (["--param", "dropout"], "expected KEY=V1,V2"),
    (["--param", "dropout=0.5,1.2"], "dropout: expected in [0, 1), got 1.2"),
    (["--param", "lr=-1"], "lr: expected > 0"),
    ([], "nothing to sweep"),
])
def test_bad_sweeps(syn, tmp_path, capsys, args, needle):
    code, out, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path, *args)
    assert code == 1 and needle in err and len(err.strip().splitlines()) == 1


def test_unknown_toml_key(syn, tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text('head = "softmax"\nlearning_rate = 3\n[params]\nlr = [0.1]\n')
    code, _, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path, "--config", toml)
    assert code == 1 and "unknown key(s) learning_rate" in err
