import csv
import json
import os

import pytest
from conftest import run_captured, is_one_line_error



def sweep(capsys, *args):
    return run_captured(capsys, "sweep", *args)


def test_grid_table_is_ranked_and_best_is_a_run(syn, tmp_path, capsys):
    code, out, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "s", "--epochs", "3",
                           "--head-batch-size", "50", "--param", "dropout=0.2,0.8", "--param", "lr=0.0001,0.03")
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
    assert os.path.exists(tmp_path / "t-best" / "head.keras")


@pytest.mark.parametrize("args,needle", [
    (["--param", "momentum=0.9"], "--param: momentum: unknown for the softmax head"),
    (["--param", "dropout"], "expected KEY=V1,V2"),
    (["--param", "dropout=0.5,1.2"], "dropout: expected a number in [0, 1), got 1.2"),
    (["--param", "lr=-1"], "lr: expected a number in (0, inf)"),
    ([], "nothing to sweep"),
    (["--head", "logreg", "--param", "C=0.1,1", "--dropout", "0.3"], "--dropout: applies to the softmax head, not to "
                                                                    "--head logreg"),
])
def test_bad_sweeps(syn, tmp_path, capsys, args, needle):
    code, out, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path, *args)
    assert is_one_line_error(code, err, needle)


def test_a_head_option_the_toml_head_does_not_take_is_refused_naming_the_file(syn, tmp_path, capsys):
    toml = tmp_path / "s.toml"
    toml.write_text('head = "logreg"\n[params]\nC = [0.1, 1.0]\n')
    code, _, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path / "runs", "--config", toml, "--lr", "0.01")
    assert is_one_line_error(code, err, f'--lr: applies to the softmax head, not to head = "logreg" in {toml}; '
                             'remove it or set head = "softmax" there')
    assert not os.path.exists(tmp_path / "runs")


def test_unknown_toml_key(syn, tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text('head = "softmax"\nlearning_rate = 3\n[params]\nlr = [0.1]\n')
    code, _, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path, "--config", toml)
    assert code == 1 and "unknown key(s) learning_rate" in err


@pytest.mark.parametrize("toml,needle", [
    ('[params]\ndropout = []\n', "dropout: no values to try"),
    ('params = 3\n', "params must be a table"),
    ('random = "x"\n[params]\nlr = [0.1]\n', "random must be a whole number of configurations, got 'x'"),
    ('random = 0\n[params]\nlr = [0.1]\n', "--random: expected N >= 1, got 0"),
    ('[params]\nlr = [inf]\n', "lr: expected a number in (0, inf) or auto, got inf"),
    ('[params]\nepochs = [2.5]\n', "epochs: expected an integer in [1, 100000] or auto, got 2.5"),
    ('[params\n', "); expected e.g. `[params]` and under it `dropout = [0.2, 0.5]` (the README's sweep.toml)"),
    ('{"dropout": [0.2, 0.5]}\n', "s.toml: not TOML ("),                                     # JSON for TOML
    ("random = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply; fix the TOML"),   # found by fuzzing
])
def test_bad_toml_is_one_line_and_leaves_no_folder(syn, tmp_path, capsys, toml, needle):
    (tmp_path / "s.toml").write_text(toml)
    code, _, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path / "runs", "--config", tmp_path / "s.toml")
    assert is_one_line_error(code, err, needle)
    assert not os.path.exists(tmp_path / "runs") or os.listdir(tmp_path / "runs") == []


def test_a_config_that_cannot_be_read_says_why(syn, tmp_path, capsys, monkeypatch):
    """A config that cannot be opened (here: as if without permission, which root would not see) is one line
    with the system's reason, not a TOML complaint."""
    from pipeline.heads import sweep as sweep_module
    (tmp_path / "s.toml").write_text("[params]\ndropout = [0.5]\n")

    def refuse(path, mode="r"):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(sweep_module, "open", refuse, raising=False)
    code, _, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path / "runs", "--config", tmp_path / "s.toml")
    assert is_one_line_error(code, err, "s.toml: cannot read (Permission denied); pass a readable TOML file"), err


def test_a_config_that_is_not_a_regular_file_is_refused_unread(syn, tmp_path, capsys):
    """A FIFO given as --config is refused without opening it (opening would wait for a writer for ever)."""
    os.mkfifo(tmp_path / "s.toml")
    code, _, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path / "runs", "--config", tmp_path / "s.toml")
    assert is_one_line_error(code, err, "s.toml: not a regular file of at most 1,048,576 bytes"), err


@pytest.mark.parametrize("args,needle", [(["--param", "dropout=,"], "--param: dropout=,: expected KEY=V1,V2"),
                                         (["--param", "=0.5"], "expected KEY=V1,V2"),
                                         (["--param", "dropout=0.5", "--seed", "-1"], "seed: expected an integer in [0, 2^32-1], got -1")])
def test_bad_params_leave_no_folder(syn, tmp_path, capsys, args, needle):
    code, _, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path / "runs", *args)
    assert is_one_line_error(code, err, needle)
    assert not os.path.exists(tmp_path / "runs") or os.listdir(tmp_path / "runs") == []


def test_taken_best_name_is_refused_before_training(syn, tmp_path, capsys):
    (tmp_path / "s-best").mkdir()
    code, _, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "s", "--param", "dropout=0.2,0.5")
    assert code == 1 and "s-best exists" in err and sorted(os.listdir(tmp_path)) == ["s-best"]


def test_auto_values_in_a_sweep(syn, tmp_path, capsys):
    for args in (["--param", "l2=auto,0", "--epochs", "2"], ["--head", "logreg", "--param", "C=auto,1"]):
        code, out, err = run_captured(capsys, "sweep", "--cache", syn, "--runs-dir", tmp_path, *args)
        assert code == 0, err
        rows = open(out[-1].removesuffix("-best") + "/results.csv").read()
        assert "auto" in rows
    code, out, err = run_captured(capsys, "sweep", "--cache", syn, "--runs-dir", tmp_path, "--param", "epochs=auto,3")
    assert code == 0, err                               # 540 rows, 3 steps a pass: auto is the 200 at most
    with open(out[-1].removesuffix("-best") + "/results.csv") as f:
        trained = {r["epochs"]: r["epochs_trained"] for r in csv.DictReader(f)}
    assert trained == {"auto": "200", "3": "3"}
    code, out, err = run_captured(capsys, "sweep", "--cache", syn, "--runs-dir", tmp_path, "--param", "lr=auto,3e-3",
                                  "--epochs", "2")
    assert code == 0, err                               # 32 features: auto is 1e-3
    with open(out[-1].removesuffix("-best") + "/results.csv") as f:
        assert {r["lr"]: float(r["lr_used"]) for r in csv.DictReader(f)} == {"auto": 1e-3, "0.003": 3e-3}


def test_a_sweep_over_the_normalize_step_trains_each_on_its_own_features(syn, tmp_path, capsys):
    """Configurations that differ in --normalize are trained in groups of their own (the features
    differ), and each is the head a lone train-head with that step gives."""
    code, _, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "n", "--epochs", "2",
                         "--head-batch-size", "50", "--param", "normalize=none,sqrt-l2", "--param", "dropout=0.3")
    assert code == 0, err
    rows = {r["normalize"]: float(r["val_accuracy"]) for r in csv.DictReader(open(tmp_path / "n" / "results.csv"))}
    assert set(rows) == {"none", "sqrt-l2"}
    for step in rows:
        code, _, err = run_captured(capsys, "train-head", "--cache", syn, "--runs-dir", tmp_path, "--name", f"alone-{step}",
                                    "--epochs", "2", "--head-batch-size", "50", "--dropout", "0.3", "--normalize", step)
        assert code == 0, err
        alone = json.load(open(tmp_path / f"alone-{step}" / "metrics.json"))
        assert alone["val"]["accuracy"] == pytest.approx(rows[step], abs=1e-9)


def test_a_sweep_over_the_hidden_layer_trains_those_heads_alone_and_records_them(syn, tmp_path, capsys):
    code, _, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "h", "--epochs", "2",
                         "--head-batch-size", "50", "--param", "hidden=0,16", "--param", "dropout=0.2,0.5")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "h" / "results.csv")))
    assert sorted((r["hidden"], r["dropout"]) for r in rows) == [("0", "0.2"), ("0", "0.5"), ("16", "0.2"), ("16", "0.5")]
    best = json.load(open(tmp_path / "h-best" / "metrics.json"))
    assert best["hyperparameters"]["hidden"] == int(rows[0]["hidden"])


def test_a_hidden_layer_with_a_penalty_chosen_on_validation_is_one_line(syn, tmp_path, capsys):
    code, _, err = run_captured(capsys, "train-head", "--cache", syn, "--runs-dir", tmp_path, "--hidden", "8",
                                "--l2", "auto")
    assert is_one_line_error(code, err, "l2='auto' trains linear heads only") and not os.listdir(tmp_path)


def test_a_full_disk_while_writing_the_sweep_is_one_line_and_leaves_nothing(syn, tmp_path, capsys, monkeypatch):
    import errno
    from pipeline.heads import sweep as sweep_module

    def full(*a):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(sweep_module, "write_table", full)
    code, _, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "s", "--epochs", "2",
                         "--param", "dropout=0.2,0.5")
    assert is_one_line_error(code, err, f"no space left on the device while writing {tmp_path / 's'}")
    assert os.listdir(tmp_path) == []


def test_a_refit_head_on_views_is_ranked_with_test_time_augmentation_as_it_was_chosen(syn_views, tmp_path, capsys):
    """A refit head is scored on validation before its refit, averaged over views like every other row:
    it ties with its twin that is not refit (the same first fit) and wins the tie (more images)."""
    code, _, err = sweep(capsys, "--cache", syn_views, "--runs-dir", tmp_path, "--name", "s", "--epochs", "3",
                         "--param", "refit=false,true", "--param", "dropout=0.2,0.5")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "s" / "results.csv")))
    for p in ("0.2", "0.5"):
        twins = {r["refit"]: r for r in rows if r["dropout"] == p}
        assert twins["True"]["val_tta_accuracy"] == twins["False"]["val_tta_accuracy"]
        assert twins["True"]["val_accuracy"] == twins["False"]["val_accuracy"]
        assert int(twins["True"]["rank"]) < int(twins["False"]["rank"])
    m = json.load(open(tmp_path / "s-best" / "metrics.json"))
    assert m["hyperparameters"]["refit"] and m["val"]["tta"]["accuracy"] == float(rows[0]["val_tta_accuracy"])


def test_refit_best_trains_the_chosen_head_again_as_train_head_refit_does(syn_views, tmp_path, capsys):
    """--refit-best: the best configuration, ranked as without it, is refit on every view of train +
    validation: the same head, to the last digit, as train-head --refit with its parameters."""
    code, _, err = sweep(capsys, "--cache", syn_views, "--runs-dir", tmp_path, "--name", "s", "--epochs", "3",
                         "--param", "dropout=0.2,0.6", "--param", "lr=0.0003,0.01", "--refit-best")
    assert code == 0, err
    assert "the configuration best on validation, refit on train + validation" in err
    rows = list(csv.DictReader(open(tmp_path / "s" / "results.csv")))
    m = json.load(open(tmp_path / "s-best" / "metrics.json"))
    assert m["hyperparameters"]["refit"] is True and "refit" in m and m["timings"]["refit_s"] > 0
    assert m["val"]["tta"]["accuracy"] == float(rows[0]["val_tta_accuracy"])     # scored as it was chosen
    assert m["val"]["accuracy"] == float(rows[0]["val_accuracy"])
    code, _, err = run_captured(capsys, "train-head", "--cache", syn_views, "--runs-dir", tmp_path, "--name", "t",
                                "--epochs", "3", "--dropout", rows[0]["dropout"], "--lr", rows[0]["lr"], "--refit")
    assert code == 0, err
    t = json.load(open(tmp_path / "t" / "metrics.json"))
    for split in ("train", "test"):
        assert t[split]["loss"] == pytest.approx(m[split]["loss"], rel=1e-6, abs=0)
        assert t[split]["tta"]["accuracy"] == m[split]["tta"]["accuracy"]
    code, _, err = sweep(capsys, "--cache", syn_views, "--runs-dir", tmp_path, "--name", "plain", "--epochs", "3",
                         "--param", "dropout=0.2,0.6", "--param", "lr=0.0003,0.01", "--no-refit")
    plain = json.load(open(tmp_path / "plain-best" / "metrics.json"))
    assert plain["val"] == m["val"] and plain["test"]["loss"] != pytest.approx(m["test"]["loss"], rel=1e-6)


def test_refit_auto_in_a_sweep_refits_the_configuration_chosen(syn_views, tmp_path, capsys):
    """refit=auto (the default) on few training rows: each configuration trained and ranked as without a
    refit (a hidden-layer one, trained alone, too), then the one chosen refit, as --refit-best does."""
    args = ["--cache", syn_views, "--runs-dir", tmp_path, "--epochs", "3", "--param", "dropout=0.2,0.6",
            "--param", "hidden=0,8"]
    code, _, err = sweep(capsys, *args, "--name", "auto")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "auto" / "results.csv")))
    assert {r["refit"] for r in rows} == {"auto"} and {r["refit_used"] for r in rows} == {"False"}
    m = json.load(open(tmp_path / "auto-best" / "metrics.json"))
    assert m["hyperparameters"]["refit"] is True and "refit=auto" in m["refit"]
    code, _, err = sweep(capsys, *args, "--name", "best", "--no-refit", "--refit-best")
    b = json.load(open(tmp_path / "best-best" / "metrics.json"))
    assert code == 0 and b["val"] == m["val"] and b["test"] == m["test"]


def test_refit_best_of_a_logreg_sweep_and_of_a_best_that_refits_already(syn, tmp_path, capsys):
    args = ["--cache", syn, "--runs-dir", tmp_path, "--head", "logreg", "--max-iter", "50", "--param", "C=0.01,1"]
    assert sweep(capsys, *args, "--name", "plain")[0] == 0
    code, _, err = sweep(capsys, *args, "--name", "r", "--refit-best")
    assert code == 0, err
    plain, m = (json.load(open(tmp_path / f"{n}-best" / "metrics.json")) for n in ("plain", "r"))
    assert "refit" in m and "refit" not in plain and plain["val"] == m["val"]
    assert plain["test"]["loss"] != pytest.approx(m["test"]["loss"], rel=1e-6)     # trained on 10% more images
    code, _, err = sweep(capsys, "--cache", syn, "--runs-dir", tmp_path, "--name", "a", "--epochs", "2",
                         "--param", "l2=auto", "--refit-best")                   # l2=auto refits already: once
    assert code == 0, err
    assert "refit_s" not in json.load(open(tmp_path / "a-best" / "metrics.json"))["timings"]


def test_a_long_sweep_says_how_far_it_is(syn, tmp_path, capsys, monkeypatch):
    """With the heartbeat at every configuration (PROGRESS_EVERY_S 0): a line after each but the last,
    configurations trained and ETA, unless --quiet; at the default (a sweep this small) none."""
    from pipeline.heads import config
    args = ("--cache", syn, "--runs-dir", tmp_path, "--head", "logreg", "--param", "C=0.01,0.1,1")
    code, _, err = sweep(capsys, *args, "--name", "quiet")
    assert code == 0 and "configurations trained" not in err
    monkeypatch.setattr(config, "PROGRESS_EVERY_S", 0.0)
    code, _, err = sweep(capsys, *args, "--name", "told")
    said = [line.split(" in ")[0] for line in err.splitlines() if "configurations trained" in line]
    assert code == 0 and said == ["sweep: 1/3 configurations trained", "sweep: 2/3 configurations trained"]
    code, _, err = sweep(capsys, *args, "--name", "hushed", "--quiet")          # --quiet: no heartbeat
    assert code == 0 and "configurations trained" not in err
