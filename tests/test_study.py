"""The study: a grid over stage-one and head settings, each cache once, one table and plot, resumable."""
import csv
import json
import os

import pytest
from conftest import run_captured, write_cifar10, is_one_line_error



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


@pytest.mark.parametrize("grid,needle", [("foo=1,2", "--grid: foo: unknown"), ("interpolation", "expected KEY=V1,V2"),
                                         ("image_size=a", "expected size values"),
                                         ("interpolation=cubic,bogus", "--interpolation: expected one of")])
def test_bad_grids_are_one_line(data, capsys, grid, needle):
    d, root = data
    code, out, err = run_captured(capsys, "study", "--data-dir", d, "--weights", "random", "--cache-dir", root / "c",
                                  "--runs-dir", root / "bad", "--grid", grid)
    assert is_one_line_error(code, err, needle)


def test_a_head_option_no_head_of_the_study_takes_is_refused(data, capsys):
    d, root = data
    code, out, err = run_captured(capsys, "study", "--data-dir", d, "--weights", "random", "--cache-dir", root / "c",
                                  "--runs-dir", root / "bad", "--heads", "logreg", "--dropout", "0.3")
    assert is_one_line_error(code, err, "--dropout: applies to the softmax head, not to --heads logreg; remove it "
                             "or add softmax to --heads")
    assert not os.path.exists(root / "bad") or os.listdir(root / "bad") == []


def small_study(capsys, root, data, name, *extra, grid=("--grid", "dropout=0.2,0.5")):
    return run_captured(capsys, "study", "--data-dir", data, "--weights", "random", "--image-size", "32",
                        "--precision", "float32", "--cache-dir", root / "c", "--runs-dir", root / "runs", "--name", name,
                        "--epochs", "2", "--val-fraction", "0.5", "--quiet", "--heads", "softmax", *grid, *extra)


def best_row(root, name):
    rows = list(csv.DictReader(open(root / "runs" / name / "results.csv")))
    return rows[0]["row"], json.load(open(root / "runs" / f"{name}-best" / "metrics.json"))["study_row"]


def test_rows_are_reused_only_with_the_same_settings_and_best_follows_the_study(data, capsys):
    d, root = data
    assert small_study(capsys, root, d, "keyed")[0] == 0
    rows = root / "runs" / "keyed" / "rows"
    assert len(os.listdir(rows)) == 2
    first, best = best_row(root, "keyed")
    assert first == best
    for extra in (["--seed", "1"], ["--val-fraction", "0.4"], ["--early-stopping"], ["--early-stopping", "--patience", "2"]):
        code, _, err = small_study(capsys, root, d, "keyed", *extra)     # the last --val-fraction counts
        assert code == 0, err
        first, best = best_row(root, "keyed")
        assert first == best                                   # -best holds the study's best as it now stands
    assert len(os.listdir(rows)) == 2 * 5                      # every changed setting trained its rows anew
    assert small_study(capsys, root, d, "keyed", grid=("--grid", "dropout=0.2,0.5,0.9"))[0] == 0
    first, best = best_row(root, "keyed")
    assert first == best and len(os.listdir(rows)) == 11


def test_row_keys_hold_every_setting_that_changes_a_row():
    from pipeline.heads.config import RunOptions
    from pipeline.study import row_tag
    base = RunOptions()
    tags = {row_tag("c.h5", "softmax", {"dropout": 0.5}, o) for o in (
        base, RunOptions(seed=1), RunOptions(val_fraction=0.2), RunOptions(early_stopping=True),
        RunOptions(early_stopping=True, patience=5))}
    assert len(tags) == 5
    assert row_tag("c.h5", "softmax", {"dropout": 0.5}, RunOptions(patience=5)) == row_tag(
        "c.h5", "softmax", {"dropout": 0.5}, base)             # patience without early stopping changes nothing


def test_a_row_chosen_on_validation_is_keyed_by_its_search(monkeypatch):
    """Another grid for C or l2 "auto" (a new version of the search) trains the row again, not reuse it."""
    from pipeline.heads import logreg, softmax
    from pipeline.heads.config import RunOptions
    from pipeline.study import row_tag
    o = RunOptions()
    before = [row_tag("c.h5", "logreg", {"C": "auto"}, o), row_tag("c.h5", "softmax", {"l2": "auto"}, o),
              row_tag("c.h5", "logreg", {"C": 1.0}, o)]
    monkeypatch.setattr(logreg, "C_GRID", logreg.C_GRID[:-1])
    monkeypatch.setattr(softmax, "L2_GRID", softmax.L2_GRID + (1.0,))
    after = [row_tag("c.h5", "logreg", {"C": "auto"}, o), row_tag("c.h5", "softmax", {"l2": "auto"}, o),
             row_tag("c.h5", "logreg", {"C": 1.0}, o)]
    assert before[0] != after[0] and before[1] != after[1]
    assert before[2] == after[2]                     # a fixed C does not depend on the search


def test_a_row_with_an_auto_setting_is_keyed_by_its_rule(monkeypatch):
    """epochs, lr or refit "auto" follow rules with constants (config.epochs_for, lr_for, refit_for): another
    constant trains the row again; a row that set the value itself does not depend on it."""
    from pipeline.heads import config
    from pipeline.heads.config import RunOptions
    from pipeline.study import row_tag
    o = RunOptions()
    rows = [{"epochs": "auto"}, {"lr": "auto"}, {"refit": "auto"}, {"epochs": 20, "lr": 0.001, "refit": False}]
    before = [row_tag("c.h5", "softmax", p, o) for p in rows]
    for name, value in (("AUTO_STEPS", 2000), ("AUTO_LR_WIDTH", 512), ("AUTO_REFIT_IMAGES", 1000)):
        monkeypatch.setattr(config, name, value)
        after = [row_tag("c.h5", "softmax", p, o) for p in rows]
        changed = [b != a for b, a in zip(before, after)]
        assert changed == [name == "AUTO_STEPS", name == "AUTO_LR_WIDTH", name == "AUTO_REFIT_IMAGES", False], name
        monkeypatch.undo()


def test_a_refit_row_is_keyed_by_how_its_validation_is_scored(monkeypatch):
    """A row trained by an older version that scored a refit head's validation otherwise (before its views
    were averaged) is trained again, not ranked beside the new ones; rows without a refit are kept."""
    from pipeline import study
    from pipeline.heads.config import RunOptions
    o, heads = RunOptions(), [("softmax", {"refit": True}), ("softmax", {"l2": "auto"}), ("logreg", {"C": "auto"}),
                              ("softmax", {"refit": False, "l2": 0.0}), ("logreg", {"C": 1.0})]
    before = [study.row_tag("c.h5", kind, p, o) for kind, p in heads]
    monkeypatch.setattr(study, "REFIT_VALIDATION", study.REFIT_VALIDATION + 1)
    after = [study.row_tag("c.h5", kind, p, o) for kind, p in heads]
    assert [b != a for b, a in zip(before, after)] == [True, True, True, False, False]


def test_a_name_that_holds_something_else_is_refused(data, capsys, syn):
    d, root = data
    runs = root / "runs"
    assert run_captured(capsys, "sweep", "--cache", syn, "--runs-dir", runs, "--name", "sw", "--param",
                        "dropout=0.2,0.5", "--epochs", "2")[0] == 0
    before = open(runs / "sw" / "results.csv").read()
    code, _, err = small_study(capsys, root, d, "sw")
    assert is_one_line_error(code, err, "not a study")
    assert open(runs / "sw" / "results.csv").read() == before
    (runs / "own-best").mkdir()
    (runs / "own-best" / "metrics.json").write_text("{}")      # a run of someone else's under the best's name
    code, _, err = small_study(capsys, root, d, "own")
    assert code == 1 and "not this study's best" in err


@pytest.mark.parametrize("extra,needle", [(["--val-fraction", "0"], "--val-fraction: 0: a study chooses"),
                                          (["--heads", ","], "--heads: expected softmax and/or logreg, got none"),
                                          (["--heads", "x", "--grid", "dropout=0.2,0.5"],     # a traceback (KeyError)
                                           "--heads: expected softmax and/or logreg, got 'x'"),
                                          (["--cache", "x.h5"], "study: --cache is not a study option"),
                                          (["--head", "logreg"], "study: --head is not a study option")])
def test_study_refuses_up_front(data, capsys, extra, needle):
    d, root = data
    code, _, err = run_captured(capsys, "study", "--data-dir", d, "--weights", "random", "--cache-dir", root / "c",
                                "--runs-dir", root / "up", *extra)
    assert is_one_line_error(code, err, needle) and not (root / "up").exists()


def test_spellings_of_one_setting_are_one_configuration():
    from pipeline.features import FeatureConfig
    from pipeline.study import feature_configs, head_configs, parse_grid
    axes, heads, _ = parse_grid(["views=flip,shift2;shift2,flip", "dropout=0.5,.5,0.50", "image_size=32,32"], ["softmax"])
    assert len(feature_configs(FeatureConfig(weights="random"), axes)) == 1
    axes, _, _ = parse_grid(["image_size=32,48+32,32+48"], ["softmax"])      # several sizes: smallest first
    assert [c.image_size for c in feature_configs(FeatureConfig(weights="random"), axes)] == [32, "32+48"]
    from pipeline.heads.config import DEFAULTS, HEAD_PARAMS
    base = {p: DEFAULTS[p] for p in HEAD_PARAMS["softmax"]}
    assert len(head_configs(heads, base)) == 1


def test_learning_curve_labels_name_what_tells_the_lines_apart():
    from pipeline.study_report import line_labels
    soft = lambda e: json.dumps({"head_dropout": 0.5, "head_epochs": e}, sort_keys=True)  # noqa: E731
    keys = [("a.h5", "softmax", soft(20)), ("a.h5", "softmax", soft("auto")), ("a.h5", "logreg", json.dumps({"head_C": "auto"}))]
    assert line_labels(keys) == ["softmax epochs=20", "softmax epochs=auto", "logreg"]
    assert line_labels([("a.h5", "softmax", soft(20)), ("b.h5", "softmax", soft(20))]) == ["softmax a.h5", "softmax b.h5"]


def test_a_grid_over_training_images_is_a_learning_curve(data, capsys):
    d, root = data
    code, _, err = small_study(capsys, root, d, "curve", grid=("--grid", "train_images=20,1000"))
    assert code == 0, err
    rows = list(csv.DictReader(open(root / "runs" / "curve" / "results.csv")))
    assert sorted(int(r["labelled_n"]) for r in rows) == [20, 60]           # 1000 is more than there are: all 60
    assert sorted(int(r["train_n"]) for r in rows) == [10, 30]              # validation (half) carved from them
    assert [r["epochs_trained"] for r in rows] == ["2", "2"]                # the passes each head made
    rate = 1e-3 * (1280 / 4096) ** 0.5                                     # fc2's 4,096 features: lr=auto's rate
    assert [float(r["lr_used"]) for r in rows] == [pytest.approx(rate)] * 2  # the rate each trained with
    assert os.path.exists(root / "runs" / "curve" / "learning_curve.png")
    m = json.load(open(root / "runs" / "curve-best" / "metrics.json"))
    assert m["train"]["n"] == int(rows[0]["train_n"])                      # the best run trained as its row did


def test_without_a_name_each_setting_that_changes_rows_gets_its_own_study(data, capsys):
    d, root = data
    folders = []
    for extra in ([], ["--early-stopping"]):
        code, out, err = run_captured(capsys, "study", "--data-dir", d, "--weights", "random", "--image-size", "32",
                                      "--precision", "float32", "--cache-dir", root / "c", "--runs-dir", root / "unnamed",
                                      "--epochs", "2", "--val-fraction", "0.5", "--quiet", "--heads", "softmax", *extra)
        assert code == 0, err
        folders.append(out[-1])
    assert folders[0] != folders[1] and all(os.path.basename(f).startswith("study-") for f in folders)


def test_a_runs_dir_that_cannot_be_created_is_one_line_before_any_cache(data, capsys, monkeypatch, unmakeable):
    d, root = data
    from pipeline import study as study_module
    monkeypatch.setattr(study_module, "extract_many", lambda *a, **kw: pytest.fail("extracted"))
    code, _, err = run_captured(capsys, "study", "--data-dir", d, "--weights", "random", "--cache-dir", root / "c",
                                "--runs-dir", unmakeable, "--name", "st", "--grid", "dropout=0.2,0.5")
    assert is_one_line_error(code, err, f"--runs-dir: {unmakeable / 'st' / 'rows'}: cannot create it")


def test_a_grid_over_seeds_ranks_each_configuration_by_its_mean(data, capsys):
    d, root = data
    code, _, err = small_study(capsys, root, d, "seeds", grid=("--grid", "dropout=0.2,0.5", "--grid", "seed=3,1"))
    assert code == 0, err
    rows = list(csv.DictReader(open(root / "runs" / "seeds" / "results.csv")))
    assert len(rows) == 4 and len({r["row"] for r in rows}) == 4                # every seed's row its own
    assert len(os.listdir(root / "runs" / "seeds" / "rows")) == 4
    val = lambda r: float(r["val_accuracy"])                                     # noqa: E731
    by_config = {}
    for r in rows:
        by_config.setdefault(r["head_dropout"], []).append(r)
    for group in by_config.values():
        assert sorted(r["seed"] for r in group) == ["1", "3"] and all(r["seeds_n"] == "2" for r in group)
        mean = (val(group[0]) + val(group[1])) / 2
        assert all(float(r["val_seeds_mean"]) == pytest.approx(mean) for r in group)
        test = [float(r["test_accuracy"]) for r in group]
        assert float(group[0]["test_seeds_mean"]) == pytest.approx(sum(test) / 2)
        assert float(group[0]["test_seeds_sd"]) == pytest.approx(abs(test[0] - test[1]) / 2 ** 0.5)
    means = [float(r["val_seeds_mean"]) for r in rows]
    assert means == sorted(means, reverse=True)                                  # ranked by the mean over seeds
    assert rows[0]["seed"] == "3" and rows[1]["seed"] == "1"                     # a configuration's rows in the order given
    m = json.load(open(root / "runs" / "seeds-best" / "metrics.json"))
    assert m["study_row"] == rows[0]["row"] and m["hyperparameters"]["seed"] == 3   # the best trained as its row
    assert all(g[0]["val_loss"] != g[1]["val_loss"] for g in by_config.values())   # other splits, other heads
    assert "over 2 seeds" in err and "| seed |" in open(root / "runs" / "seeds" / "results.md").readline()
    code, _, err = small_study(capsys, root, d, "one-seed", "--seed", "3")
    assert code == 0, err
    one = list(csv.DictReader(open(root / "runs" / "one-seed" / "results.csv")))
    assert {r["row"] for r in one} == {r["row"] for r in rows if r["seed"] == "3"}   # the same rows as seed 3's
    assert all(not r.get("seeds_n") for r in one) and "| seed |" not in open(root / "runs" / "one-seed" / "results.md").readline()
    code, _, err = small_study(capsys, root, d, "seed-curve", grid=("--grid", "train_images=20,1000", "--grid", "seed=0,1"))
    assert code == 0, err                                                        # a learning curve of seed means
    assert len(list(csv.DictReader(open(root / "runs" / "seed-curve" / "results.csv")))) == 4
    assert os.path.exists(root / "runs" / "seed-curve" / "learning_curve.png")


@pytest.mark.parametrize("grid,needle", [("seed=a", "--seed: expected an integer"), ("seed=-1", "--seed: ")])
def test_bad_seed_grids_are_one_line(data, capsys, grid, needle):
    d, root = data
    code, out, err = run_captured(capsys, "study", "--data-dir", d, "--weights", "random", "--cache-dir", root / "c",
                                  "--runs-dir", root / "bad", "--grid", grid)
    assert is_one_line_error(code, err, needle)


def test_on_equal_validation_the_refit_head_is_best_and_a_configurations_rows_stay_together(data, capsys):
    d, root = data
    code, _, err = small_study(capsys, root, d, "tie", grid=("--grid", "refit=false,true", "--grid", "seed=0,1"))
    assert code == 0, err
    rows = list(csv.DictReader(open(root / "runs" / "tie" / "results.csv")))
    assert len({r["val_seeds_mean"] for r in rows}) == 1                        # the twins share validation
    assert [r["head_refit"] for r in rows] == ["True", "True", "False", "False"]  # the refit one first, rows together
    assert [r["seed"] for r in rows] == ["0", "1", "0", "1"]
    m = json.load(open(root / "runs" / "tie-best" / "metrics.json"))
    assert m["study_row"] == rows[0]["row"] and m["hyperparameters"]["refit_used"] is True


def test_the_best_configuration_over_seeds_is_not_trained_again(data, capsys, monkeypatch):
    """The best run is the best configuration's first-seed row; that head is kept from the study's own
    training even where another configuration has the single best row (here dropout 0.2, seed 0)."""
    import pipeline.study as study_module
    val = {(0.2, 0): 0.9, (0.2, 1): 0.1, (0.5, 0): 0.6, (0.5, 1): 0.6}   # dropout 0.5 best on the mean over seeds
    calls, real = [], study_module.run_head

    def scored(data, kind, params, opts):
        calls.append((params["dropout"], opts.seed))
        row, head = real(data, kind, params, opts)
        return {**row, "val_accuracy": val[params["dropout"], opts.seed]}, head
    monkeypatch.setattr(study_module, "run_head", scored)
    code, _, err = small_study(capsys, root := data[1], data[0], "kept-seed", grid=("--grid", "dropout=0.2,0.5",
                                                                                     "--grid", "seed=0,1"))
    assert code == 0, err
    rows = list(csv.DictReader(open(root / "runs" / "kept-seed" / "results.csv")))
    assert [(r["head_dropout"], r["seed"]) for r in rows] == [("0.5", "0"), ("0.5", "1"), ("0.2", "0"), ("0.2", "1")]
    assert sorted(calls) == sorted(val)                                      # each row once, the best not again
    m = json.load(open(root / "runs" / "kept-seed-best" / "metrics.json"))
    assert m["study_row"] == rows[0]["row"] and m["hyperparameters"]["dropout"] == 0.5


def test_a_row_edited_after_it_was_written_is_trained_again_not_reported(data, capsys):
    """A study reports only rows as it wrote them: a finished row whose accuracy was edited (its checksum
    no longer holds) is trained again, and the table shows what the head scores, not the edit."""
    d, root = data
    assert small_study(capsys, root, d, "edited")[0] == 0
    rows = root / "runs" / "edited" / "rows"
    before = {r["row"]: r["test_accuracy"] for r in csv.DictReader(open(root / "runs" / "edited" / "results.csv"))}
    name = sorted(os.listdir(rows))[0]
    row = json.load(open(rows / name))
    json.dump({**row, "test_accuracy": 0.999}, open(rows / name, "w"))
    code, _, err = small_study(capsys, root, d, "edited")
    assert code == 0 and f"row {row['row']} ({rows / name}) changed after it was written" in err, err
    after = {r["row"]: r["test_accuracy"] for r in csv.DictReader(open(root / "runs" / "edited" / "results.csv"))}
    assert after == before and "0.999" not in after.values()
    assert json.load(open(rows / name))["test_accuracy"] == row["test_accuracy"]         # written again, as trained
