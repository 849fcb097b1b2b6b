"""ensemble: the mean of heads trained on one cache, scored as one head (views averaged), written as a
run folder of its own; members from another cache or split, or not single heads, are refused."""
import json
import os
import shutil

import numpy as np
import pytest
from conftest import is_one_line_error, run_captured

from pipeline.heads.keras_file import head_model, read_head


def train(capsys, cache, runs, name, *extra):
    code, out, err = run_captured(capsys, "train-head", "--cache", cache, "--runs-dir", runs, "--name", name,
                                  "--epochs", "3", "--quiet", *extra)
    assert code == 0, err
    return out[-1]


@pytest.fixture(scope="module")
def members(syn_views, tmp_path_factory):
    """Three heads of different kinds on the 3-view cache, none refit, and one refit."""
    from conftest import run_cli
    runs = tmp_path_factory.mktemp("runs")
    for name, extra in (("soft", ("--no-refit",)), ("hidden", ("--hidden", "8", "--normalize", "sqrt-l2", "--no-refit")),
                        ("logreg", ("--head", "logreg")), ("refit", ("--refit",))):
        epochs = () if name == "logreg" else ("--epochs", "3")          # a softmax option: logreg refuses it
        assert run_cli("train-head", "--cache", syn_views, "--runs-dir", runs, "--name", name, *epochs,
                       "--quiet", *extra) == 0
    return runs


def test_from_file_predicts_as_the_head_file(members, syn_views):
    """SoftmaxHead.from_file computes what the run's head.keras computes in Keras (a logreg's and a hidden
    layer's with the normalize step too)."""
    from pipeline.features.cache import load_cache
    from pipeline.heads.softmax import SoftmaxHead
    X = load_cache(syn_views)["test"][0].reshape(-1, 16)
    for name in ("soft", "hidden", "logreg"):
        head = read_head(str(members / name / "head.keras"))
        want = np.asarray(head_model(head).predict(X.astype(np.float32), verbose=0))
        got = SoftmaxHead.from_file(head, np.arange(4)).predict_proba(X)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_ensemble_is_the_mean_of_its_members(members, syn_views, tmp_path, capsys):
    from pipeline.features.cache import load_cache
    runs = [members / n for n in ("soft", "hidden", "logreg")]
    code, out, err = run_captured(capsys, "ensemble", *(a for r in runs for a in ("--run", r)), "--cache", syn_views,
                                  "--runs-dir", tmp_path, "--name", "ens")
    assert code == 0, err
    assert out[-1] == str(tmp_path / "ens") and "TTA" in err
    assert set(os.listdir(tmp_path / "ens")) == {"metrics.json", "member_0.keras", "member_1.keras",
                                                 "member_2.keras", "confusion_matrix.png"}
    m = json.load(open(tmp_path / "ens" / "metrics.json"))
    X, y, _ = load_cache(syn_views)["test"]
    proba = np.mean([head_model(read_head(str(r / "head.keras"))).predict(X.reshape(-1, 16).astype(np.float32),
                                                                          verbose=0) for r in runs], axis=0)
    proba = proba.reshape(len(y), 3, -1)
    assert m["head"] == "ensemble" and m["test"]["n"] == len(y) and m["train"] == {"n": 0}
    assert m["test"]["accuracy"] == pytest.approx((proba[:, 0].argmax(1) == y).mean(), abs=1.01 / len(y))
    assert m["test"]["tta"]["accuracy"] == pytest.approx((proba.mean(1).argmax(1) == y).mean(), abs=1.01 / len(y))
    from sklearn.metrics import log_loss                          # the mean itself, not one member's
    assert m["test"]["loss"] == pytest.approx(log_loss(y, proba[:, 0], labels=range(4)), rel=1e-4)
    assert m["test"]["tta"]["loss"] == pytest.approx(log_loss(y, proba.mean(1), labels=range(4)), rel=1e-4)
    assert m["val"]["n"] > 0 and "tta" in m["val"]              # no member refit: validation is scored
    assert [x["head"] for x in m["members"]] == ["softmax", "softmax", "logreg"]
    for i, r in enumerate(runs):                                  # the members' heads, copied as they were
        a, b = read_head(str(tmp_path / "ens" / f"member_{i}.keras")), read_head(str(r / "head.keras"))
        assert all(np.array_equal(a[k], b[k]) for k in ("kernel", "bias")) and a["normalize"] == b["normalize"]


def test_a_refit_member_is_validated_as_it_was_chosen(members, syn_views, tmp_path, capsys):
    """A refit run keeps its head's validation probabilities before the refit (its own validation score);
    the ensemble's validation averages those, as the member was scored; a run without them (made before
    they were kept) leaves the ensemble's validation unscored, and a crafted file is refused."""
    from sklearn.metrics import log_loss
    from pipeline.features.cache import load_cache
    refit, soft = members / "refit", members / "soft"
    assert not os.path.exists(soft / "val_proba.npy")
    kept = np.load(refit / "val_proba.npy", allow_pickle=False)
    own = json.load(open(refit / "metrics.json"))["val"]
    assert kept.shape == (own["n"], 3, 4) and kept.dtype == np.float32
    from pipeline.heads.data import load_training_data
    data = load_training_data(syn_views, 0.1, 0)                  # the split the runs used (the defaults)
    y_val = data.y[data.rows_val]
    assert own["loss"] == pytest.approx(log_loss(y_val, kept[:, 0], labels=range(4)), rel=1e-4)  # the same figures
    assert own["tta"]["accuracy"] == pytest.approx((kept.mean(1).argmax(1) == y_val).mean(), abs=1e-9)

    def ensemble(name, *runs):
        code, _, err = run_captured(capsys, "ensemble", *(a for r in runs for a in ("--run", r)), "--cache", syn_views,
                                    "--runs-dir", tmp_path, "--name", name)
        return code, err
    assert ensemble("e", soft, refit)[0] == 0
    m = json.load(open(tmp_path / "e" / "metrics.json"))
    assert [x["refit"] for x in m["members"]] == [False, True] and m["val"]["n"] == own["n"]
    X = load_cache(syn_views)["train"][0].reshape(-1, 16)
    soft_views = head_model(read_head(str(soft / "head.keras"))).predict(
        X[data.views_of(data.rows_val)].astype(np.float32), verbose=0).reshape(-1, 3, 4)
    want = (soft_views + kept) / 2
    assert m["val"]["tta"]["loss"] == pytest.approx(log_loss(y_val, want.mean(1), labels=range(4)), rel=1e-4)
    shutil.copytree(refit, tmp_path / "old")                     # a run from before they were kept (nor digests)
    os.remove(tmp_path / "old" / "val_proba.npy")
    meta = json.load(open(tmp_path / "old" / "metrics.json"))
    json.dump({k: v for k, v in meta.items() if k != "file_sha256"}, open(tmp_path / "old" / "metrics.json", "w"))
    assert ensemble("e2", soft, tmp_path / "old")[0] == 0
    val = json.load(open(tmp_path / "e2" / "metrics.json"))["val"]
    assert val["n"] == 0 and "keep no val_proba.npy" in val["not_scored"]
    for crafted in (np.array([{"a": 1}], dtype=object), kept[:, :2], kept.astype(np.float64), kept * 2):
        np.save(tmp_path / "old" / "val_proba.npy", crafted, allow_pickle=True)
        code, err = ensemble("e3", soft, tmp_path / "old")
        assert is_one_line_error(code, err, "val_proba.npy") and not os.path.exists(tmp_path / "e3"), err
    os.remove(tmp_path / "old" / "val_proba.npy")
    os.symlink(refit / "val_proba.npy", tmp_path / "old" / "val_proba.npy")   # the right numbers, through a link
    code, err = ensemble("e3", soft, tmp_path / "old")
    assert is_one_line_error(code, err, "val_proba.npy is a link") and not os.path.exists(tmp_path / "e3"), err


def test_a_member_refit_by_refit_auto_is_validated_as_it_was_chosen(members, syn_views, tmp_path, capsys):
    """A run at the defaults on few rows was refit (refit=auto, refit_used): a refit member, as --refit's."""
    from conftest import run_cli
    assert run_cli("train-head", "--cache", syn_views, "--runs-dir", tmp_path, "--name", "auto", "--epochs", "3",
                   "--quiet") == 0
    hp = json.load(open(tmp_path / "auto" / "metrics.json"))["hyperparameters"]
    assert hp["refit"] == "auto" and hp["refit_used"] is True
    code, _, err = run_captured(capsys, "ensemble", "--run", members / "soft", "--run", tmp_path / "auto", "--cache",
                                syn_views, "--runs-dir", tmp_path, "--name", "e")
    m = json.load(open(tmp_path / "e" / "metrics.json"))
    assert code == 0 and [x["refit"] for x in m["members"]] == [False, True] and m["val"]["n"] > 0, err


def test_members_must_share_cache_split_and_be_single_heads(members, syn_views, syn, tmp_path, capsys):
    other = train(capsys, syn, tmp_path / "o", "other")
    seeded = train(capsys, syn_views, tmp_path / "o", "seeded", "--seed", "1")
    shutil.copytree(members / "soft", tmp_path / "nested")
    meta = json.load(open(tmp_path / "nested" / "metrics.json"))
    json.dump({**meta, "head": "ensemble"}, open(tmp_path / "nested" / "metrics.json", "w"))
    soft = members / "soft"
    for runs, needle in (([soft], "expected 2 to 16"), ([soft, soft], "given twice"),
                         ([soft, other], "another cache"), ([soft, seeded], "validation split"),
                         ([soft, tmp_path / "nested"], "expected softmax or logreg"),
                         ([soft, tmp_path / "missing"], "missing: no such folder")):
        code, out, err = run_captured(capsys, "ensemble", *(a for r in runs for a in ("--run", r)), "--cache",
                                      syn_views, "--runs-dir", tmp_path / "e", "--name", "x")
        assert is_one_line_error(code, err, needle), err
        assert not os.path.exists(tmp_path / "e" / "x")


def test_a_members_files_changed_after_its_run_wrote_them_are_not_used(members, syn_views, tmp_path, capsys):
    """Each member's head.keras and val_proba.npy must be as its run wrote them (the SHA-256 its
    metrics.json records): another well-formed head, other valid probabilities, or a recorded file that
    is gone are refused in one line; the ensemble records its own member files' digests."""
    def ensemble(name, *runs):
        code, _, err = run_captured(capsys, "ensemble", *(a for r in runs for a in ("--run", r)), "--cache", syn_views,
                                    "--runs-dir", tmp_path, "--name", name)
        return code, err
    refit = shutil.copytree(members / "refit", tmp_path / "refit")
    assert set(json.load(open(refit / "metrics.json"))["file_sha256"]) == {"head.keras", "val_proba.npy"}
    kept = np.load(refit / "val_proba.npy")
    np.save(refit / "val_proba.npy", kept[::-1].copy())               # valid probabilities, other images' order
    code, err = ensemble("e", members / "soft", refit)
    assert is_one_line_error(code, err, "val_proba.npy changed after its run wrote it") and not os.path.exists(
        tmp_path / "e"), err
    os.remove(refit / "val_proba.npy")
    code, err = ensemble("e", members / "soft", refit)
    assert is_one_line_error(code, err, "val_proba.npy is missing, though its run wrote it"), err
    soft = shutil.copytree(members / "soft", tmp_path / "soft")
    shutil.copy(members / "hidden" / "head.keras", soft / "head.keras")
    code, err = ensemble("e", soft, members / "logreg")
    assert is_one_line_error(code, err, "head.keras: it changed after its run wrote it"), err
    assert ensemble("e", members / "soft", members / "logreg")[0] == 0
    digests = json.load(open(tmp_path / "e" / "metrics.json"))["file_sha256"]
    assert set(digests) == {"member_0.keras", "member_1.keras"}
    from pipeline.heads.run_files import file_digests
    assert digests == file_digests(str(tmp_path / "e"), ["member_0.keras", "member_1.keras"])
