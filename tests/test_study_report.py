"""The study's report: intervals, the plots."""
from pipeline.study_report import plot_study, wilson


def test_wilson_interval():
    lo, hi = wilson(0.8, 1000)
    assert 0.774 < lo < 0.775 and 0.823 < hi < 0.824          # about +-2.5 points on 1,000 images


def test_the_plot_takes_any_number_of_layer_values(tmp_path):
    rows = [{"layer": f"l{i}", "interpolation": "cubic", "head": "softmax", "extract_img_per_s": 10.0 + i,
             "cache_mb": 1.0 + i, "val_accuracy": 0.5, "test_accuracy": 0.5, "val_ci95": [0.4, 0.6],
             "test_ci95": [0.4, 0.6], "test_n": 10} for i in range(14)]
    plot_study(str(tmp_path / "s.png"), rows)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_a_row_is_ranked_by_its_views_average_where_it_has_one_even_at_zero():
    from pipeline.study_report import accuracy
    assert accuracy({"val_accuracy": 0.4, "val_tta_accuracy": 0.5}, "val") == 0.5
    assert accuracy({"val_accuracy": 0.4, "val_tta_accuracy": 0.0}, "val") == 0.0
    assert accuracy({"val_accuracy": 0.4}, "val") == accuracy({"val_accuracy": 0.4, "val_tta_accuracy": None}, "val") == 0.4


def test_the_best_rows_arrow_points_at_its_drawn_test_point():
    from matplotlib.figure import Figure
    from pipeline.study_report import _study_points
    rows = [{"layer": "l", "interpolation": "cubic", "head": "softmax", "extract_img_per_s": 10.0 * (i + 1),
             "cache_mb": 5.0, "val_accuracy": 0.5 + i / 100, "test_accuracy": 0.6 - i / 100, "val_ci95": [0.4, 0.7],
             "test_ci95": [0.4, 0.7], "test_n": 10} for i in range(3)]
    fig = Figure()
    _study_points(fig, rows)
    for ax in fig.axes:
        (arrow,) = ax.texts
        drawn = [tuple(line.get_xydata()[0]) for line in ax.lines if len(line.get_xydata())]
        assert tuple(arrow.xy) in drawn, (arrow.xy, drawn)           # on the point, not beside it
