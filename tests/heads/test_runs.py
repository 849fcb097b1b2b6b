import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.heads.runs import evaluate, new_run_dir, plot_confusion, process_age, summary_table


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
