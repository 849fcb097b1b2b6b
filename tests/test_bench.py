"""The bench runs on a tiny configuration and writes well-formed output (timings are not asserted)."""
import json
import os

from conftest import run_cli


def test_bench_tiny_writes_json_and_table(tmp_path, capsys, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:start -->\nold\n<!-- bench:end -->\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("pipeline.bench.FEED_IMAGES", 64)
    code = run_cli("bench", "--images", "32", "--image-size", "32", "--head-rows", "400", "--head-dim", "16", "--conv-dim", "24",
                   "--out-dir", tmp_path / "b", "--update-readme")
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.load(open(out.strip().splitlines()[-1]))
    s1, s2 = result["stage_one"], result["stage_two"]
    for key in ("bare_float32", "bare_bfloat16", "end_to_end_float32", "end_to_end_bfloat16", "notebook_float32"):
        assert s1[key] > 0
    assert s1["flops_per_image"] > 1e8 and result["matmul_gflops"]["float32"] > 0 and result["memory_gbps"] > 0
    assert {"softmax", "logreg", "sweep24", "softmax_conv"} <= set(s2) and s2["softmax"]["train_s"] > 0
    md = open(os.path.join(tmp_path / "b", [f for f in os.listdir(tmp_path / "b") if f.endswith(".md")][0])).read()
    assert "| end to end / bare, float32 |" in md and md.count("\n|") >= 16
    assert s2["l2_kib"] > 0 and f", L2 {s2['l2_kib']:,} KiB a core; " in md.splitlines()[0]
    feed = result["feeding_path"]
    assert feed["per_core_128px"] > 0 and feed["per_core_224px"] > 0 and "feeding path alone (null model), 128 px" in md
    png = [f for f in os.listdir(tmp_path / "b") if f.endswith(".png")]         # the run as a picture beside them
    assert len(png) == 1 and open(tmp_path / "b" / png[0], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    text = readme.read_text()
    assert "old" not in text and "| measure | value | target |" in text


def test_machine_names_the_cpus_family_and_model(tmp_path, monkeypatch):
    from pipeline import bench
    from pipeline.features import precision
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: fpu\n\nmodel\t\t: 9\n")
    monkeypatch.setattr(precision, "CPUINFO", str(info))
    assert bench.machine().startswith("AMD EPYC (family 26, model 2), ")      # "model" is its own key, not "model name"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert bench.machine().startswith("Some CPU, ")


def test_settings_bench_could_not_run_or_write_are_refused_before_it_measures(tmp_path, capsys, monkeypatch):
    """Each is one line before any measuring: a size or width VGG19 or the heads cannot take (an image size of 0
    was an OpenCV traceback, of 100,000 a NumPy one; --images 0 ran the default count), a synthetic cache bigger
    than the disk, results that could not be written at the end (after minutes of measuring)."""
    from conftest import is_one_line_error
    from pipeline import bench
    measured = []
    monkeypatch.setattr(bench, "matmul_gflops", lambda *a: measured.append(a))
    (tmp_path / "file").write_text("x")
    for args, needle in [(["--images", "0"], "--images: expected at least 32 (one batch), got 0"),
                         (["--image-size", "0"], "--image-size: expected 32..512, got 0"),
                         (["--image-size", "100000"], "--image-size: expected 32..512, got 100000"),
                         (["--head-rows", "199"], "--head-rows: expected at least 200"),
                         (["--head-dim", "0"], "--head-dim: expected a width of at least 1, got 0"),
                         (["--conv-dim", "-1"], "--conv-dim: expected a width of at least 1, got -1"),
                         (["--head-rows", str(10 ** 14)], "synthetic cache and"),
                         (["--out-dir", str(tmp_path / "file")], "--out-dir: " + str(tmp_path / "file") + ": cannot create it")]:
        code = run_cli("bench", *args)
        assert is_one_line_error(code, capsys.readouterr().err, needle), args
    assert not measured
