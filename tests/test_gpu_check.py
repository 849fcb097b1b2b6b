"""The prepared GPU check, exercised on this CPU in its quick mode: every part runs and reports."""
import json

from conftest import run_captured


def test_gpu_check_quick_runs_every_part(cifar_dir, tmp_path, capsys):
    code, out, err = run_captured(capsys, "gpu-check", "--quick", "--out-dir", tmp_path, "--data-dir", cifar_dir)
    assert code == 0, err
    r = json.load(open(out[-1]))
    assert r["device"].endswith("cpu:0") and r["batch_size"] == 32 and r["gpus"] == []
    assert {"224px_float32", "128px_float32"} <= set(r["stage_one"]) and all(
        v["images"] == 32 and v["img_per_s"] > 0 and v["warm_img_per_s"] > 0 and v["warm_model_s"] > 0
        for v in r["stage_one"].values())                       # cold, then warm: the same model again
    assert r["feeding_path"]["per_core_128px"] > 0 and r["full_extraction"]["images"] == 36     # 30 train + 6 test
    assert r["full_extraction"]["views_per_image"] == 6 and r["full_extraction"]["model_s"] > 0
    assert r["full_data"] == cifar_dir
    md = (tmp_path / "gpu-check.md").read_text()
    assert "| full extraction at the best configuration" in md and md.count("\n|") >= 7


def test_settings_it_could_not_use_or_write_are_refused_before_it_extracts(tmp_path, capsys, monkeypatch):
    """Each is one line before any work: --batch-size 0 ran the default, a missing --data-dir failed after
    minutes of stage one (with --no-full it was silently unused), an out-dir that is a file was a traceback at
    the end."""
    from conftest import is_one_line_error
    from pipeline import gpu_check
    monkeypatch.setattr(gpu_check.device, "nvidia_gpus", lambda: (_ for _ in ()).throw(AssertionError("it started")))
    (tmp_path / "file").write_text("x")
    for args, needle in [(["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
                         (["--data-dir", str(tmp_path / "none")], "--data-dir: " + str(tmp_path / "none") + ": not found"),
                         (["--data-dir", str(tmp_path), "--no-full"], "--data-dir: given for the full extraction, which "
                                                                      "--no-full skips"),
                         (["--out-dir", str(tmp_path / "file")], "--out-dir: " + str(tmp_path / "file") + ": cannot create it")]:
        code, _, err = run_captured(capsys, "gpu-check", "--quick", *args)
        assert is_one_line_error(code, err, needle), (args, err)
