"""bench_heads: every stage-two row, --full's included, on tiny caches (timings are not asserted)."""
from pipeline import bench_heads


def test_full_stage_two_rows_on_tiny_caches(tmp_path, monkeypatch):
    for name, value in (("VIEW_DIM", 12), ("SEARCH_DIM", 12), ("TREE_FILES", 30), ("TARBALL_IMAGES", 60)):
        monkeypatch.setattr(bench_heads, name, value)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Prescott")    # an environment's choice of kernels (this process's are loaded)
    s2 = bench_heads.heads(300, 16, 24, str(tmp_path), gflops=100.0, gbps=10.0, full=True)
    assert {"softmax", "logreg", "sweep24", "softmax_conv", "softmax_views", "c_search", "source_identity",
            "tarball_identity"} <= set(s2)
    for row in ("softmax", "softmax_conv", "softmax_views", "sweep24"):
        assert s2[row]["train_s"] > 0 and s2[row]["floor_s"] > 0
        assert s2[row]["refit_used"] is False and "refit_s" not in s2[row]    # timed as labelled: 20 passes, no refit
    assert s2["sweep24"]["flops"] == 24 * s2["softmax"]["flops"]
    assert s2["softmax_views"]["flops"] == s2["softmax"]["flops"] * 6 * 12 // 16     # 6 views of 12 values
    assert s2["c_search"]["selection"]["chosen_C"] > 0 and s2["c_search"]["selection"]["seconds_per_fit"] >= 0
    assert s2["source_identity"]["files"] == 30 and s2["source_identity"]["decode_s"] > 0
    assert s2["tarball_identity"]["images"] == 60 and s2["tarball_identity"]["decode_s"] > 0
    assert s2["step_products"]["shape"] == [250, 16, 40] and s2["step_products"]["gflops"] > 0
    own = s2["step_products_own_kernels"]            # timed again where the environment does not choose the kernels
    assert own["shape"] == [250, 16, 40] and own["gflops"] > 0
    assert s2["step_products"]["blas"]["coretype_env"] == "Prescott" and own["blas"]["coretype_env"] is None
    rows = bench_heads.rows(s2, 100.0)
    assert len(rows) == 9 and all(len(r) == 3 for r in rows)
    assert "6 views" in rows[2][0] and "(250 rows x 16 x 40 outputs" in rows[5][0] and "search" in rows[6][0]
    assert "30-file image tree" in rows[7][0] and "python batches of 60 images as a .tar.gz" in rows[8][0]
    assert "kernels, OPENBLAS_CORETYPE=Prescott in the environment) on one step's products" in rows[5][0]
    assert "with the kernels OpenBLAS picks here itself" in rows[5][1]


def test_step_products_are_timed_once_where_the_environment_leaves_openblas_its_choice(monkeypatch):
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    assert bench_heads.step_products_own_kernels(8, 16, 4) is None


def test_floor_is_the_slower_of_compute_and_memory():
    f = bench_heads.softmax_floor(1000, 100, 4, gflops=1.0, gbps=1e9)       # compute-bound
    assert f["flops"] == 20 * 1000 * 100 * 10 * 4 and f["floor_s"] == f["flops"] / 1e9
    m = bench_heads.softmax_floor(1000, 100, 2, gflops=1e9, gbps=1e-3)      # memory-bound
    assert m["floor_s"] == 20 * 1000 * 100 * 2 / 1e6
