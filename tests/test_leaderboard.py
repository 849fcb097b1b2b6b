"""`pipeline runs`: every run folder in one table, best on validation first."""
import json
import os

import pytest
from conftest import is_one_line_error, run_captured

from pipeline.leaderboard import leaderboard, table
from pipeline.study_report import wilson


@pytest.fixture(scope="module")
def runs_dir(syn, tmp_path_factory):
    """Two train-head runs on the synthetic cache (lr 1e-5 barely learns in 2 epochs) and a sweep."""
    from pipeline.cli import main
    d = tmp_path_factory.mktemp("runs")
    common = ["--cache", syn, "--runs-dir", str(d), "--quiet", "--epochs", "2", "--head-batch-size", "50"]
    assert main(["train-head", *common, "--name", "slow", "--lr", "1e-5", "--no-refit"]) == 0
    assert main(["train-head", *common, "--name", "fast", "--lr", "0.03", "--dropout", "0.2", "--no-refit"]) == 0
    assert main(["sweep", *common, "--name", "sw", "--param", "dropout=0.3,0.6", "--lr", "0.03", "--no-refit"]) == 0
    return str(d)


def test_runs_are_ranked_on_validation_with_their_test_interval(runs_dir):
    runs, others = leaderboard(runs_dir)
    names = [r["name"] for r in runs]
    assert set(names) == {"slow", "fast", "sw-best"} and names[-1] == "slow"
    vals = [r["val"] for r in runs]
    assert vals == sorted(vals, reverse=True)
    fast = runs[names.index("fast")]
    metrics = json.load(open(os.path.join(runs_dir, "fast", "metrics.json")))
    assert fast["val"] == metrics["val"]["accuracy"] and fast["test"] == metrics["test"]["accuracy"]
    assert fast["parameters"] == "dropout=0.2 lr=0.03 refit=False epochs=2 batch_size=50" and fast["key"] == metrics["provenance"]["key"][:16]
    assert others == [{"name": "sw", "kind": "sweep", "created": others[0]["created"]}]
    lines = table(runs, others)
    lo, hi = wilson(fast["test"], fast["test_n"])
    line = lines[1 + names.index("fast")]
    assert f"{100 * fast['test']:.2f} ({100 * lo:.2f}..{100 * hi:.2f}; 200)" in line and line.endswith("fast")
    assert lines[-1] == "sw: a sweep (its results.md ranks its heads)"


def test_equal_validation_lists_the_newest_first(runs_dir, tmp_path):
    import shutil
    for name, when in (("old", 1_000_000_000), ("new", 1_500_000_000)):
        shutil.copytree(os.path.join(runs_dir, "fast"), tmp_path / name)
        os.utime(tmp_path / name, (when, when))
    assert [r["name"] for r in leaderboard(str(tmp_path))[0]] == ["new", "old"]


def test_a_crafted_run_folder_is_listed_as_unreadable_and_not_followed(runs_dir, tmp_path):
    import shutil
    shutil.copytree(os.path.join(runs_dir, "fast"), tmp_path / "good")
    os.makedirs(tmp_path / "linked")
    secret = tmp_path / "secret.json"
    secret.write_text(open(os.path.join(runs_dir, "fast", "metrics.json")).read())
    os.symlink(secret, tmp_path / "linked" / "metrics.json")
    os.makedirs(tmp_path / "garbage")
    (tmp_path / "garbage" / "metrics.json").write_text('{"head": "softmax"}')
    runs, others = leaderboard(str(tmp_path))
    assert [r["name"] for r in runs] == ["good"]
    why = {o["name"]: o["unreadable"] for o in others}
    assert why["linked"].startswith("metrics.json is a link") and "not a run's" in why["garbage"]


@pytest.mark.parametrize("where,value", [(("test", "n"), float("inf")), (("val", "n"), 1e300), (("train", "n"), -1),
                                         (("views",), 0), (("test", "n"), 2.5), (("views",), "3")])
def test_a_count_that_is_not_one_lists_the_run_as_unreadable(runs_dir, tmp_path, capsys, where, value):
    """Found by fuzzing: JSON may hold Infinity or 1e300 where a run counts images, which made `runs`
    stop with a traceback (int(inf); the interval of 1e300 images); such a run is listed as unreadable."""
    import shutil
    shutil.copytree(os.path.join(runs_dir, "fast"), tmp_path / "good")
    bad = shutil.copytree(os.path.join(runs_dir, "fast"), tmp_path / "bad")
    m = json.load(open(bad / "metrics.json"))
    (m[where[0]] if len(where) == 2 else m)[where[-1]] = value
    json.dump(m, open(bad / "metrics.json", "w"))
    runs, others = leaderboard(str(tmp_path))
    assert [r["name"] for r in runs] == ["good"] and [o["name"] for o in others] == ["bad"]
    assert "in metrics.json, expected a whole number from" in others[0]["unreadable"]
    code, out, err = run_captured(capsys, "runs", "--runs-dir", tmp_path)
    assert code == 0 and out[-1].startswith("bad: not listed: its ") and not err, err


def test_the_command(runs_dir, capsys, tmp_path):
    code, out, err = run_captured(capsys, "runs", "--runs-dir", runs_dir)
    assert code == 0 and out[0].split()[:2] == ["rank", "val"] and out[1].split()[0] == "1"
    key = leaderboard(runs_dir)[0][0]["key"]
    code, out, err = run_captured(capsys, "runs", "--runs-dir", runs_dir, "--cache-key", key[:6], "--json")
    assert code == 0 and len(json.loads("\n".join(out))["runs"]) == 3
    code, out, err = run_captured(capsys, "runs", "--runs-dir", runs_dir, "--cache-key", "zz")
    assert code == 0 and out == [f"no runs in {runs_dir} on a cache whose key starts with zz"]
    code, out, err = run_captured(capsys, "runs", "--runs-dir", tmp_path / "missing")
    assert is_one_line_error(code, err, "is not a folder; give the --runs-dir") and out == []


def test_names_and_values_from_files_cannot_forge_a_line(runs_dir, tmp_path):
    import shutil
    shutil.copytree(os.path.join(runs_dir, "fast"), tmp_path / "a\nrank 1 forged")
    path = tmp_path / "a\nrank 1 forged" / "metrics.json"
    metrics = json.load(open(path))
    metrics["hyperparameters"]["dropout"] = "0.5\n1  99.99"
    json.dump(metrics, open(path, "w"))
    lines = table(*leaderboard(str(tmp_path)))
    assert len(lines) == 3 and lines[1].endswith("a\\nrank 1 forged") and "dropout=0.5\\n1  99.99" in lines[1]


def test_runs_validated_on_other_images_are_ranked_in_a_section_of_their_own(runs_dir, tmp_path):
    """Another seed (or data, val_fraction, train_images) is another validation set: its runs are ranked among
    themselves, under a line that says which; the set with the best run first. One set: no such line."""
    import shutil
    for name in ("fast", "slow"):
        shutil.copytree(os.path.join(runs_dir, name), tmp_path / name)
    assert len(table(*leaderboard(str(tmp_path)))) == 4                # header, two runs, the closing line
    for name, seed, val in (("seed1-best", 1, 0.999), ("seed1-worst", 1, 0.001), ("fraction", 0, 0.5)):
        shutil.copytree(os.path.join(runs_dir, "fast"), tmp_path / name)
        path = tmp_path / name / "metrics.json"
        metrics = json.load(open(path))
        metrics["hyperparameters"]["seed"], metrics["val"]["accuracy"] = seed, val
        if name == "fraction":
            metrics["hyperparameters"]["val_fraction"] = 0.3
        json.dump(metrics, open(path, "w"))
    runs, _ = leaderboard(str(tmp_path))
    assert [r["name"] for r in runs] == ["seed1-best", "seed1-worst", "fast", "slow", "fraction"]
    lines = table(runs, [])
    n = json.load(open(tmp_path / "fast" / "metrics.json"))["val"]["n"]
    assert [line.split()[0] for line in lines[1:-1]] == ["validation", "1", "2", "validation", "1", "2", "validation", "1"]
    assert lines[1].startswith(f"validation set 1 of 3: {n:,} images of ") and lines[1].endswith("val_fraction 0.1, seed 1)")
    assert lines[7].startswith("validation set 3 of 3: ") and "val_fraction 0.3, seed 0" in lines[7]
    assert lines[-1].endswith("each against the runs of its validation set (3); test is scored once per run")
