import csv
import json
import os

import numpy as np
import pytest
from conftest import run_captured, is_one_line_error



def train(capsys, *args):
    return run_captured(capsys, "train-head", *args)


def test_softmax_run_folder(syn, tmp_path, capsys):
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "r1", "--epochs", "4",
                           "--lr", "0.01", "--head-batch-size", "50", "--no-refit")
    assert code == 0 and out[-1] == str(tmp_path / "r1")
    files = set(os.listdir(out[-1]))
    assert files == {"metrics.json", "head.keras", "history.csv", "learning_curves.png", "confusion_matrix.png"}
    m = json.load(open(tmp_path / "r1" / "metrics.json"))
    assert m["hyperparameters"]["dropout"] == 0.5 and m["hyperparameters"]["epochs"] == 4
    assert m["hyperparameters"]["epochs_trained"] == 4
    assert m["train"]["n"] == 540 and m["val"]["n"] == 60 and m["test"]["n"] == 200
    assert m["test"]["accuracy"] > 0.5 and len(m["test"]["per_class_accuracy"]) == 4
    assert np.array(m["test"]["confusion_matrix"]).sum() == 200
    assert set(m["timings"]) >= {"startup_s", "load_s", "train_s", "evaluate_s"} and m["cache"].endswith("syn.h5")
    assert m["provenance"]["dataset"] == "synthetic"
    assert len(open(tmp_path / "r1" / "history.csv").read().strip().splitlines()) == 5
    assert open(tmp_path / "r1" / "learning_curves.png", "rb").read(4) == b"\x89PNG"
    assert "test" in err and "accuracy" in err


def test_default_epochs_are_auto_and_the_run_says_how_many_it_trained(syn, tmp_path, capsys):
    """epochs=auto on the 540 training rows of `syn` (3 steps an epoch at the default batch of 250): 1,000 steps
    would be 334 passes, so the 200 at most; metrics.json records both the setting and the passes made."""
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "auto", "--quiet")
    assert code == 0, err
    m = json.load(open(tmp_path / "auto" / "metrics.json"))
    assert m["hyperparameters"]["epochs"] == "auto" and m["hyperparameters"]["epochs_trained"] == 200
    assert len(open(tmp_path / "auto" / "history.csv").read().strip().splitlines()) == 201
    assert "epochs=auto (200)" in err                             # the log line says what auto came to


def test_default_lr_is_auto_and_the_run_records_the_rate_it_came_to(syn, tmp_path, capsys):
    """lr=auto on `syn`'s 32 features is Adam's 1e-3 (narrower than 1,280); metrics.json and the log line say so."""
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "lr", "--epochs", "2", "--quiet")
    assert code == 0, err
    m = json.load(open(tmp_path / "lr" / "metrics.json"))["hyperparameters"]
    assert m["lr"] == "auto" and m["lr_used"] == 1e-3 and "lr=auto (0.001)" in err


def test_default_refit_is_auto_and_the_run_says_whether_it_refit(syn, syn_views, tmp_path, capsys, monkeypatch):
    """`syn`'s 600 labelled images are at most AUTO_REFIT_IMAGES: the default head is refit on train + validation
    (its validation probabilities as chosen kept, as any refit run's); where they are more, it is not. A cache's
    views are not more images: 3 views of 400 labelled images refit at 400, though they are 1,200 rows."""
    from pipeline.heads import config
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "few", "--epochs", "2", "--quiet")
    assert code == 0, err
    m = json.load(open(tmp_path / "few" / "metrics.json"))["hyperparameters"]
    assert m["refit"] == "auto" and m["refit_used"] is True and "refit=auto (True)" in err
    assert os.path.exists(tmp_path / "few" / "val_proba.npy")
    monkeypatch.setattr(config, "AUTO_REFIT_IMAGES", 599)
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "many", "--epochs", "2", "--quiet")
    m = json.load(open(tmp_path / "many" / "metrics.json"))["hyperparameters"]
    assert code == 0 and m["refit_used"] is False and "refit=auto (False)" in err
    assert not os.path.exists(tmp_path / "many" / "val_proba.npy")
    monkeypatch.setattr(config, "AUTO_REFIT_IMAGES", 400)
    code, out, err = train(capsys, "--cache", syn_views, "--runs-dir", tmp_path, "--name", "views", "--epochs", "2",
                           "--quiet")
    m = json.load(open(tmp_path / "views" / "metrics.json"))
    assert code == 0 and m["views"] == 3 and m["train"]["n"] + m["val"]["n"] == 400, err
    assert m["hyperparameters"]["refit_used"] is True
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "none", "--epochs", "2", "--quiet",
                           "--val-fraction", "0")                 # no validation images: nothing to refit on
    m = json.load(open(tmp_path / "none" / "metrics.json"))["hyperparameters"]
    assert code == 0 and m["refit"] == "auto" and m["refit_used"] is False, err


def test_logreg_run_and_reproducible_seed(syn, tmp_path, capsys):
    for name in ("a", "b"):
        assert train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", name, "--head", "logreg")[0] == 0
    ma, mb = (json.load(open(tmp_path / n / "metrics.json")) for n in ("a", "b"))
    assert os.path.exists(tmp_path / "a" / "head.keras") and ma["test"]["accuracy"] > 0.5
    assert ma["test"] == mb["test"]


@pytest.mark.parametrize("args,needle", [
    (["--dropout", "1.0"], "dropout: expected a number in [0, 1), got 1.0"),
    (["--lr", "0"], "lr: expected a number in (0, inf)"),
    (["--epochs", "0"], "epochs: expected an integer in [1, 100000]"),
    (["--epochs", "9223372036854775807"], "epochs: expected an integer in [1, 100000]"),
    (["--head-batch-size", "1" * 30], "--head-batch-size: expected an integer in [1, 2^31-1], got 1111"),
    (["--val-fraction", "1.5"], "--val-fraction: expected a number in [0, 1), got 1.5"),
])
def test_values_out_of_range(syn, tmp_path, capsys, args, needle):
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, *args)
    assert is_one_line_error(code, err, needle)


def test_missing_and_incomplete_cache(tmp_path, capsys):
    code, _, err = train(capsys, "--cache", tmp_path / "nope.h5", "--runs-dir", tmp_path)
    assert code == 1 and "not found" in err and "the features command" in err
    import h5py
    with h5py.File(tmp_path / "half.h5", "w") as f:
        f.attrs["key"] = "x"
    code, _, err = train(capsys, "--cache", tmp_path / "half.h5", "--runs-dir", tmp_path)
    assert code == 1 and "incomplete" in err


def test_cache_selected_by_settings_says_how_to_build_it(cifar_dir, tmp_path, capsys):
    code, _, err = train(capsys, "--data-dir", cifar_dir, "--weights", "random", "--image-size", "32",
                         "--cache-dir", tmp_path / "c", "--runs-dir", tmp_path)
    assert code == 1 and "no cache for these settings" in err and "the features command" in err


def test_existing_run_name_is_never_overwritten(syn, tmp_path, capsys):
    args = ("--cache", syn, "--runs-dir", tmp_path, "--name", "same", "--head", "logreg", "--max-iter", "20")
    assert train(capsys, *args)[0] == 0
    code, _, err = train(capsys, *args)
    assert code == 1 and "exists" in err


@pytest.mark.parametrize("args,needle", [
    (["--seed", "-1"], "seed: expected an integer in [0, 2^32-1], got -1"),
    (["--lr", "inf"], "lr: expected a number in (0, inf) or auto, got inf"),
    (["--lr", "nan"], "lr: expected a number in (0, inf) or auto, got nan"),
    (["--lr", "fast"], "lr: expected a number in (0, inf) or auto, got 'fast'"),
    (["--l2", "-0.1"], "l2: expected a number in [0, inf) or auto, got -0.1"),
    (["--epochs", "many"], "epochs: expected an integer in [1, 100000] or auto, got 'many'"),
    (["--head", "logreg", "--C", "inf"], "C: expected a number in (0, inf) or auto, got inf"),
    (["--head", "logreg", "--val-fraction", "0.999"], "--val-fraction: 0.999: cannot hold out"),
    (["--name", "a/b"], "--name: 'a/b': expected a plain folder name"),
])
def test_bad_head_options_are_one_line(syn, tmp_path, capsys, args, needle):
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, *args)
    assert is_one_line_error(code, err, needle) and os.listdir(tmp_path) == []


@pytest.mark.parametrize("args,needle", [
    (["--head", "logreg", "--dropout", "0.3"], "--dropout: applies to the softmax head, not to --head logreg; "
                                               "remove it or pass --head softmax"),
    (["--head", "logreg", "--no-standardize"], "--standardize: applies to the softmax head"),
    (["--head", "logreg", "--epochs", "5"], "--epochs: applies to the softmax head"),
    (["--C", "0.1"], "--C: applies to the logreg head, not to --head softmax; remove it or pass --head logreg"),
    (["--max-iter", "50"], "--max-iter: applies to the logreg head"),
    (["--head", "logreg", "--early-stopping"], "--early-stopping: applies to the softmax head"),
    (["--head", "logreg", "--patience", "2"], "--patience: applies to the softmax head"),
])
def test_an_option_the_head_does_not_take_is_refused_not_ignored(syn, tmp_path, capsys, monkeypatch, args, needle):
    from pipeline.heads import data
    monkeypatch.setattr(data, "load_training_data", lambda *a: pytest.fail("loaded features"))
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, *args)
    assert is_one_line_error(code, err, needle) and os.listdir(tmp_path) == []


def test_options_every_head_takes_and_defaults_typed_for_the_right_head_train(syn, tmp_path, capsys):
    """--normalize is both heads'; a softmax option typed at its default is still the softmax head's."""
    assert train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "lr", "--head", "logreg", "--normalize",
                 "l2", "--C", "0.5", "--max-iter", "20", "--quiet")[0] == 0
    assert train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "sm", "--dropout", "0.5", "--epochs", "1",
                 "--standardize", "--quiet")[0] == 0


def test_runs_dir_that_is_a_file_fails_before_training(syn, tmp_path, capsys, monkeypatch):
    (tmp_path / "f").write_text("x")
    from pipeline.heads import data
    monkeypatch.setattr(data, "load_training_data", lambda *a: pytest.fail("loaded features"))
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path / "f")
    assert code == 1 and "--runs-dir" in err and "is a file, not a folder" in err


@pytest.mark.parametrize("args,needle", [
    (["--name", "n" * 240], "at most 200 bytes"),
    (["--name", "tab\there"], "printable"),
    (["--runs-dir", ""], "--runs-dir: empty"),
])
def test_names_and_paths_are_checked_before_training(syn, tmp_path, capsys, args, needle):
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, *args)
    assert is_one_line_error(code, err, needle) and os.listdir(tmp_path) == []


def test_runs_dir_under_a_file_fails_before_training(syn, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path / "f" / "sub")
    assert is_one_line_error(code, err, "is a file, not a folder")


def test_a_finished_run_named_like_a_temp_folder_is_kept(syn, tmp_path, capsys):
    kept = tmp_path / "X.tmp"
    kept.mkdir()
    (kept / "metrics.json").write_text("{}")
    assert train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "X", "--head", "logreg",
                 "--max-iter", "20")[0] == 0
    assert (kept / "metrics.json").read_text() == "{}" and (tmp_path / "X" / "head.keras").exists()
    assert sorted(os.listdir(tmp_path)) == ["X", "X.tmp"]        # no temp folder left behind


def test_logreg_protocol_run_records_its_choice(syn, tmp_path, capsys):
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "p", "--head", "logreg", "--C", "auto")
    assert code == 0, err
    m = json.load(open(tmp_path / "p" / "metrics.json"))
    sel = m["selection"]
    assert sel["chosen_C"] in sel["grid"] and len(sel["curve"]) == len(sel["grid"]) == 15
    assert m["hyperparameters"]["C"] == "auto" and (tmp_path / "p" / "validation_curve.png").exists()
    chosen = next(r for r in sel["curve"] if r["C"] == sel["chosen_C"])
    assert m["val"]["accuracy"] == chosen["val_accuracy"]          # val as it was chosen, before the refit


def test_softmax_l2_auto_run_and_bad_auto_values(syn, tmp_path, capsys):
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "s", "--l2", "auto", "--epochs", "3")
    assert code == 0, err
    m = json.load(open(tmp_path / "s" / "metrics.json"))
    assert m["selection"]["chosen_l2"] in m["selection"]["grid"] and (tmp_path / "s" / "validation_curve.png").exists()
    for args, needle in ((["--C", "often", "--head", "logreg"], "C: expected a number in (0, inf) or auto"),
                         (["--l2", "auto", "--val-fraction", "0"], "l2='auto' chooses the penalty on validation data")):
        code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path / "x", *args)
        assert is_one_line_error(code, err, needle), err


def test_refit_run_reports_validation_before_the_refit(syn, tmp_path, capsys):
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "r", "--refit", "--epochs", "3")
    assert code == 0, err
    assert "refit on train + validation for 3 epochs" in err
    m = json.load(open(tmp_path / "r" / "metrics.json"))
    assert m["hyperparameters"]["refit"] is True
    history = list(csv.DictReader(open(tmp_path / "r" / "history.csv")))
    assert len(history) == 3 and float(history[-1]["val_accuracy"]) == pytest.approx(m["val"]["accuracy"])
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path / "x", "--refit", "--val-fraction", "0")
    assert is_one_line_error(code, err, "refit=True scores the head on validation data"), err


def test_an_existing_run_name_fails_before_training(syn, tmp_path, capsys, monkeypatch):
    (tmp_path / "same").mkdir()
    from pipeline.heads import train as train_module
    monkeypatch.setattr(train_module, "fit_head", lambda *a: pytest.fail("trained"))
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "same")
    assert is_one_line_error(code, err, "--name: same: run folder") and "exists" in err


def test_a_runs_dir_that_cannot_be_created_fails_before_training(syn, capsys, monkeypatch, unmakeable):
    from pipeline.heads import train as train_module
    monkeypatch.setattr(train_module, "fit_head", lambda *a: pytest.fail("trained"))
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", unmakeable)
    assert is_one_line_error(code, err, f"--runs-dir: {unmakeable}: cannot create it (Permission denied)")


def test_a_full_disk_while_writing_the_run_is_one_line_and_leaves_nothing(syn, tmp_path, capsys, monkeypatch):
    import errno
    from pipeline.heads import runs

    def full(*a):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(runs, "write_history", full)
    code, out, err = train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "r", "--epochs", "2", "--quiet",
                           "--no-refit")                     # a refit says so on a line of its own
    assert is_one_line_error(code, err, f"no space left on the device while writing {tmp_path / 'r'}")
    assert "runs_dir" in err and os.listdir(tmp_path) == []


def test_heads_never_scan_a_verified_cache_again_but_check_other_features(syn, tmp_path, capsys, monkeypatch):
    """The cache's load checks its features once per version of the file; train-head, sweep and study
    heads do not pass over them again. A TrainingData that did not come from a load is still checked."""
    import dataclasses

    from pipeline.errors import PipelineError
    from pipeline.heads import validation
    from pipeline.heads.config import DEFAULTS, RunOptions, head_params
    from pipeline.heads.data import load_training_data
    from pipeline.heads.train import train_head
    scans = []
    real = validation.all_finite
    monkeypatch.setattr(validation, "all_finite", lambda a: scans.append(a.shape) or real(a))
    assert train(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "r", "--epochs", "2")[0] == 0
    assert run_captured(capsys, "sweep", "--cache", syn, "--runs-dir", tmp_path, "--name", "s", "--epochs", "2",
                        "--param", "dropout=0.2,0.5", "--refit-best")[0] == 0
    assert scans == []
    data = load_training_data(syn, 0.1, 0)
    X = np.array(data.X)
    X[7, 3] = np.inf
    opts = RunOptions(runs_dir=str(tmp_path), name="bad")
    with pytest.raises(PipelineError, match="NaN or infinity"):
        train_head(dataclasses.replace(data, X=X, verified=False), "softmax", head_params("softmax", DEFAULTS), opts, {})
    assert scans and not os.path.exists(tmp_path / "bad")
