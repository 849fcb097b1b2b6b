"""The prepared GPU check, exercised on this CPU in its quick mode: every part runs and reports."""
import json

from conftest import run_captured


def test_gpu_check_quick_runs_every_part(cifar_dir, tmp_path, capsys):
    code, out, err = run_captured(capsys, "gpu-check", "--quick", "--out-dir", tmp_path, "--data-dir", cifar_dir)
    assert code == 0, err
    r = json.load(open(out[-1]))
    assert r["device"].endswith("cpu:0") and r["batch_size"] == 32 and r["gpus"] == []
    assert {"224px_float32", "128px_float32"} <= set(r["stage_one"]) and all(
        v["images"] == 32 and v["img_per_s"] > 0 for v in r["stage_one"].values())
    assert r["feeding_path"]["per_core_128px"] > 0 and r["full_extraction"]["images"] == 36     # 30 train + 6 test
    assert r["full_data"] == cifar_dir
    md = (tmp_path / "gpu-check.md").read_text()
    assert "| full extraction at the best configuration" in md and md.count("\n|") >= 7
