import json
import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.heads.runs import (evaluate, new_run_dir, plot_confusion, plot_learning_curves, plot_validation_curve,
                                 png_figure, process_age, summary_table)


def test_evaluate_counts_and_per_class():
    proba = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.6, 0.4, 0], [0.1, 0.9, 0]])
    m = evaluate(proba, np.array([0, 1, 1, 1]), 3)
    assert m["accuracy"] == 0.75 and m["confusion_matrix"] == [[1, 0, 0], [1, 2, 0], [0, 0, 0]]
    assert m["per_class_accuracy"][:2] == [1.0, pytest.approx(2 / 3)] and m["per_class_accuracy"][2] is None
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.9])))


def test_run_dirs_are_new(tmp_path):
    a, b = new_run_dir(str(tmp_path), None), None
    (tmp_path / a.split("/")[-1]).mkdir()
    b = new_run_dir(str(tmp_path), None)
    assert a != b
    (tmp_path / "x").mkdir()
    with pytest.raises(PipelineError, match="exists"):
        new_run_dir(str(tmp_path), "x")


def test_summary_and_plot(tmp_path):
    m = {"train": {"n": 4, "loss": 0.5, "accuracy": 0.75}, "val": {"n": 0}, "timings": {"load_s": 1.0, "train_s": 2.0}}
    text = summary_table(m)
    assert "train" in text and "75.00%" in text and "val" not in text.splitlines()[1:3][-1] and "load 1.00 s" in text
    plot_confusion(str(tmp_path / "c.png"), [[3, 1], [0, 4]], ["cat", "dog"], "t")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert 0 <= process_age() < 3600


def _run_args(tag):
    m = {"head": "softmax", "test": {"accuracy": 0.5, "n": 2, "confusion_matrix": [[1, 0], [1, 0]]}, "timings": {},
         "tag": tag}
    head = {"kernel": np.full((3, 2), tag, np.float32), "bias": np.zeros(2, np.float32)}
    return m, [{"epoch": 1, "train_loss": 1.0}], ["a", "b"], head


def test_runs_finishing_together_never_share_a_folder(tmp_path):
    """Two runs finishing in the same second with one name: each writes its own temp folder; one
    takes the name, the other the next (timestamp names) or keeps its results aside (--name)."""
    from concurrent.futures import ThreadPoolExecutor
    from pipeline.heads.keras_file import read_head
    from pipeline.heads.runs import write_run
    target = str(tmp_path / "20260101-000000")
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda t: write_run(target, *_run_args(t), auto_name=True), range(4)))
    assert sorted(done) == sorted([target] + [f"{target}-{i}" for i in range(2, 5)])
    for folder in done:                                   # each folder pairs its own metrics and head
        tag = json.load(open(f"{folder}/metrics.json"))["tag"]
        assert read_head(f"{folder}/head.keras")["kernel"][0, 0] == tag
    with pytest.raises(PipelineError, match="created by another run") as e:
        write_run(target, *_run_args(9))                  # a chosen name that was taken meanwhile
    kept = str(e.value).split("kept in ")[1].split(" ")[0]
    assert json.load(open(f"{kept}/metrics.json"))["tag"] == 9 and json.load(open(f"{target}/metrics.json"))["tag"] != 9


def test_plot_labels_are_plain_text(tmp_path):
    plot_confusion(str(tmp_path / "c.png"), [[3, 1], [0, 4]], ["$\\foo$", "a$b"], "t $\\bar$")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_plots_leave_the_callers_matplotlib_alone(tmp_path, monkeypatch):
    """A run's plots neither choose a backend (a notebook's stays its own) nor keep settings or figures."""
    import matplotlib
    monkeypatch.setitem(matplotlib.rcParams, "backend", "svg")
    before = {k: v for k, v in matplotlib.rcParams.items() if k != "backend"}
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "train_accuracy": 0.5, "val_accuracy": 0.4}
               for e in (1, 2)]
    plot_learning_curves(str(tmp_path / "l.png"), history, "$x$")
    plot_validation_curve(str(tmp_path / "v.png"), {"chosen_C": 0.1, "curve": [
        {"C": c, "val_accuracy": 0.5, "val_loss": 1.0} for c in (0.01, 0.1, 1.0)]})
    plot_confusion(str(tmp_path / "c.png"), [[3, 1], [0, 4]], ["a", "b"], "t")
    assert dict.__getitem__(matplotlib.rcParams, "backend") == "svg"
    assert {k: v for k, v in matplotlib.rcParams.items() if k != "backend"} == before
    assert all((tmp_path / f).read_bytes()[:4] == b"\x89PNG" for f in ("l.png", "v.png", "c.png"))
    pyplot = __import__("sys").modules.get("matplotlib.pyplot")
    assert pyplot is None or not pyplot.get_fignums()


@pytest.mark.parametrize("scale", [{"value": "log"}, {"value": "symlog", "linthresh": 1e-4}])
def test_log_axes_are_labelled_with_plain_numbers(tmp_path, scale):
    """Labels are plain text in the plots, so a log axis's ticks must not be Matplotlib's mathtext ($10^{2}$)."""
    with png_figure(str(tmp_path / "p.png"), figsize=(4, 3)) as fig:
        ax = fig.subplots()
        ax.plot([0 if scale["value"] == "symlog" else 1e-4, 10], [0, 1])
        ax.set_xscale(**scale)
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert "10" in labels and not any("$" in t or "mathdefault" in t for t in labels), labels
