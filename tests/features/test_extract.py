"""Stage one end to end through the command line, on tiny data the tests write."""
import errno
import json
import os
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
from conftest import PY, ROOT, SMALL, run_captured, run_cli, is_one_line_error

from pipeline.features import backbone

BLOCK5, FC2 = [("block5_pool", "flatten")], [("fc2", None)]
from pipeline.features.journal import BATCH
from pipeline.features.cache import FORMAT_VERSION, NOT_A_CACHE, REBUILD, DamagedCache, load_cache, writer_lock


def features(capsys, *args):
    return run_captured(capsys, "features", *args)


def test_builds_a_complete_cache_with_provenance(cifar_dir, tmp_path, capsys):
    code, out, err = features(capsys, "--data-dir", cifar_dir, "--cache-dir", tmp_path / "c", *SMALL)
    assert code == 0 and out[-1].endswith(".h5") and os.path.exists(out[-1])
    assert "features: 36 images" in err and "img/s" in err and "WARNING: --weights random" in err
    data = load_cache(out[-1])
    f, y, meta = data["train"]
    assert f.shape == (30, 4096) and f.dtype == np.float32 and len(y) == 30
    assert data["test"][0].shape == (6, 4096)
    assert meta["weights"]["kind"] == "random" and meta["weights"]["seed"] == 0 and len(meta["weights_sha256"]) == 64
    assert meta["dataset"] == "cifar10" and len(meta["dataset_fingerprint"]) == 64
    assert meta["settings"]["interpolation"] == "cubic" and meta["settings"]["precision"] == "float32"
    assert meta["format_version"] == FORMAT_VERSION and "keras" in meta["versions"] and meta["created"]
    with h5py.File(out[-1]) as h:
        assert set(h["train"]) == {"features", "labels", "ids"} and h.attrs["complete"]


@pytest.mark.parametrize("flags,want", [({"avx2", "fma"}, "float32"), ({"avx512f", "avx512_bf16"}, "bfloat16")])
def test_auto_precision_is_resolved_recorded_and_keyed(cifar_dir, tmp_path, capsys, monkeypatch, flags, want):
    """--precision auto on a CPU without and with native bf16 (simulated): the resolved dtype is what
    the backbone computes in, what the file records, and what the key holds (an explicit request for
    the same dtype is a hit)."""
    from pipeline.features import precision
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: flags)
    monkeypatch.setattr(precision, "cuda_capability", lambda: None)
    small = [a for a in SMALL if a not in ("--precision", "float32")]
    args = ("--data-dir", cifar_dir, "--cache-dir", tmp_path / "c", "--splits", "test", "--limit", "2", *small)
    code, out, err = features(capsys, *args, "--precision", "auto")
    assert code == 0 and f"precision: auto -> {want}" in err
    meta = load_cache(out[-1])["test"][2]
    assert meta["settings"]["precision"] == want and meta["settings"]["precision_requested"] == "auto"
    code, again, err = features(capsys, *args, "--precision", want)
    assert code == 0 and again[-1] == out[-1] and "cache hit" in err


def test_same_settings_is_a_hit_without_backbone_work(cifar_dir, tmp_path, capsys, monkeypatch):
    args = ("--data-dir", cifar_dir, "--cache-dir", tmp_path / "c", "--splits", "test", *SMALL)
    first = features(capsys, *args)[1][-1]

    def no_model(*a, **k):
        raise AssertionError("a cache hit must not build the backbone")
    from pipeline.features import build
    monkeypatch.setattr(build, "build_backbone", no_model)
    code, out, err = features(capsys, *args, "--batch-size", "2")  # batch size is not in the key
    assert code == 0 and out[-1] == first and "cache hit" in err


def test_a_changed_setting_makes_a_new_cache(cifar_dir, tmp_path, capsys):
    """End to end, once: every setting's effect on the key is checked without a model in test_plan."""
    base = ("--data-dir", cifar_dir, "--cache-dir", tmp_path / "c", "--splits", "test", *SMALL)
    a = features(capsys, *base)[1][-1]
    code, out, err = features(capsys, *base, "--interpolation", "area")
    assert code == 0 and out[-1] != a and "cache hit" not in err
    assert len([p for p in os.listdir(tmp_path / "c") if p.endswith(".h5")]) == 2


def test_changed_pixels_make_a_new_cache(folder_dir, tmp_path, capsys):
    import cv2
    base = ("--data-dir", folder_dir, "--cache-dir", tmp_path / "c", "--splits", "test", *SMALL)
    a = features(capsys, *base)[1][-1]
    path = os.path.join(folder_dir, "test", "cat", "000.png")
    img = cv2.imread(path)
    img[3, 3] = 255 - img[3, 3]
    cv2.imwrite(path, img)
    assert features(capsys, *base)[1][-1] != a


def test_features_equal_a_direct_forward_pass_at_224(cifar_dir, tmp_path, capsys):
    """The real VGG19 to fc2 at 224, random weights: the pipeline's rows equal model(preprocessed batch)."""
    code, out, _ = features(capsys, "--data-dir", cifar_dir, "--cache-dir", tmp_path / "c", "--splits", "test",
                            "--limit", "3", "--weights", "random", "--precision", "float32", "--batch-size", "2", "--quiet")
    assert code == 0
    f, _, meta = load_cache(out[-1])["test"]
    from pipeline.features.preprocess import preprocess
    from pipeline.features.sources import open_dataset
    images = open_dataset("cifar10", cifar_dir, ("test",), 3).splits["test"].images
    model = backbone.build_backbone(FC2, 224, "random", 0, "float32")      # the host's preprocessing
    want = np.asarray(model.predict_on_batch(preprocess(images, 224, "cubic"))["fc2"])
    assert f.shape == (3, 4096) and np.abs(want).max() > 0
    # tolerance: float32 GEMMs blocked differently for batch 2 vs 3 round differently (~1e-6 relative)
    np.testing.assert_allclose(f, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_pooled_layers_and_views_in_one_cache(cifar_dir, tmp_path, capsys):
    """block4 (2x2 quadrants) + block5 (avg) from one pass, 1 + flip + 2 shifted views per image: rows
    are images, the view an axis; view 0 equals the cache made without views."""
    small = ["--weights", "random", "--precision", "float32", "--quiet"]
    base = ("--data-dir", cifar_dir, "--cache-dir", tmp_path / "c", "--splits", "test", *small, "--image-size", "64",
            "--layer", "block4_pool:avg2x2,block5_pool", "--pooling", "avg")
    code, out, err = features(capsys, *base, "--views", "flip,shift2")
    assert code == 0 and "block4_pool-avg2x2+block5_pool-avg" in out[-1]
    f, y, meta = load_cache(out[-1])["test"]
    assert f.shape == (6, 4, 4 * 512 + 512) and meta["settings"]["views"] == "flip,shift2"
    assert meta["settings"]["layer"] == "block4_pool:avg2x2,block5_pool:avg" and meta["settings"]["shift_range"] == 0.125
    plain = load_cache(features(capsys, *base)[1][-1])["test"][0]
    assert plain.shape == (6, 2560) and np.allclose(f[:, 0], plain, rtol=1e-5, atol=1e-6)
    assert not np.allclose(f[:, 1], plain)
    code, out2, err = features(capsys, *base, "--views", "shift2,flip")          # the same views, spelled otherwise
    assert out2[-1] == out[-1] and "cache hit" in err
    code, out3, err = features(capsys, *base, "--views", "flip,shift2", "--views-seed", "1")
    assert out3[-1] != out[-1]


def test_caches_that_share_a_pass_are_built_from_one(cifar_dir, tmp_path, capsys, monkeypatch):
    from pipeline.features import FeatureConfig
    from pipeline.features.extract import extract_many
    calls = []
    from pipeline.features import build
    real = build.build_backbone
    monkeypatch.setattr(build, "build_backbone", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    cfgs = [FeatureConfig(data_dir=cifar_dir, splits=("test",), weights="random", image_size=64, precision="float32",
                          cache_dir=str(tmp_path / "c"), layer=layer, pooling=pooling)
            for layer, pooling in (("block5_pool", "flatten"), ("block5_pool", "avg"), ("block4_pool,block5_pool", "max"))]
    paths = extract_many(cfgs, quiet=True)
    assert len(set(paths)) == 3 and len(calls) == 1                            # three caches, one backbone, one pass
    one = load_cache(paths[0])["test"][0]
    alone = load_cache(features(capsys, "--data-dir", cifar_dir, "--cache-dir", tmp_path / "alone", "--splits", "test",
                                "--weights", "random", "--image-size", "64", "--precision", "float32", "--quiet",
                                "--layer", "block5_pool")[1][-1])["test"][0]
    assert np.array_equal(one, alone)
    assert load_cache(paths[2])["test"][0].shape == (6, 1024) and extract_many(cfgs, quiet=True) == paths


@pytest.mark.parametrize("damage", ["none", "journal"])
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, capsys, damage):
    """SIGKILL mid-run, then resume; with damage="journal" one finished batch is also cut short (as a
    power loss after its rename could leave it): it is found, redone, and the cache is still exact."""
    from conftest import write_cifar10
    data = str(tmp_path / "d")
    write_cifar10(data, per_batch=80, test_n=4)
    cmd = [PY, "-m", "pipeline", "features", "--data-dir", data, "--splits", "train", "--weights", "random",
           "--image-size", "64", "--layer", "block5_pool", "--batch-size", "8", "--precision", "float32", "--quiet"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(cmd + ["--cache-dir", killed], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, parts = time.time() + 120, []
    while time.time() < deadline:
        parts = [os.path.join(killed, p, "train") for p in os.listdir(killed) if ".partial" in p] if os.path.isdir(killed) else []
        if any(os.path.isdir(p) and len([f for f in os.listdir(p) if BATCH.fullmatch(f)]) >= 3 for p in parts):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not [p for p in os.listdir(killed) if p.endswith(".h5")], "the run finished before it was killed"
    if damage == "journal":
        first = sorted(f for f in os.listdir(parts[0]) if BATCH.fullmatch(f))[1]    # not a writer's temp file
        path = os.path.join(parts[0], first)
        open(path, "r+b").truncate(os.path.getsize(path) - 100)
    code = run_cli(*cmd[3:], "--cache-dir", killed)  # resume in this process (saves a start-up)
    resumed_out, resumed_err = capsys.readouterr()
    assert code == 0 and "train: resuming at row" in resumed_err, resumed_err
    if damage == "journal":
        assert f"journal: batch {first} of train is damaged" in resumed_err and "train: resuming at row 8 of" in resumed_err
    assert run_cli(*cmd[3:], "--cache-dir", str(tmp_path / "whole")) == 0
    whole_out, _ = capsys.readouterr()
    a = load_cache(resumed_out.strip().splitlines()[-1])["train"]
    b = load_cache(whole_out.strip().splitlines()[-1])["train"]
    assert a[0].shape == (400, 2048) and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_second_writer_is_refused(cifar_dir, tmp_path, capsys):
    from pipeline.features.plan import plan
    from pipeline.cli import feature_config, build_parser
    args = ["--data-dir", cifar_dir, "--cache-dir", str(tmp_path / "c"), "--splits", "test", *SMALL]
    stem = plan(feature_config(build_parser().parse_args(["features", *args]))).stem
    with writer_lock(stem):
        code, out, err = features(capsys, *args)
    assert code == 1 and "another process" in err and "is writing" in err and not out


@pytest.mark.parametrize("full", [OSError(errno.ENOSPC, "No space left on device"),
                                  OSError("Not enough free space to write 8192 bytes after offset 128")])   # NumPy's
def test_disk_full_is_said_up_front_then_one_line_and_resumable(cifar_dir, tmp_path, capsys, monkeypatch, full):
    import pipeline.durable
    import pipeline.features.build
    args = ("--data-dir", cifar_dir, "--cache-dir", tmp_path / "c", "--splits", "train", "--batch-size", "8", *SMALL)
    real_save, calls = np.save, []

    def save(f, arr, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise full
        return real_save(f, arr, *a, **k)
    monkeypatch.setattr(np, "save", save)
    for module in (pipeline.durable, pipeline.features.build):
        monkeypatch.setattr(module, "free_bytes", lambda path: 100_000)       # the disk: 0.1 MB free
    code, out, err = features(capsys, *args)
    # 30 rows x 4,096 float32 to write as batches, then as the .h5 beside them: 60 x 16,384 bytes
    assert "this build needs about 1.0 MB more (its remaining batches, then the finished file beside them) and the " \
           "disk has 0.1 MB free" in err
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: no space left") and "Traceback" not in err
    monkeypatch.setattr(np, "save", real_save)
    code, out, err = features(capsys, *args)
    assert code == 0 and "train: resuming at row 16 of 30" in err
    assert "needs about 0.7 MB more" in err                                   # 14 rows left + the 30 of the .h5


def tamper_labels(path):
    with h5py.File(path, "r+") as f:
        f["test"]["labels"][0] = (f["test"]["labels"][0] + 1) % 10


def tamper_class_names(path):
    with h5py.File(path, "r+") as f:
        f.attrs["class_names"] = json.dumps(list(reversed(json.loads(f.attrs["class_names"]))))


def tamper_features(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF                    # the middle of the file: inside the features
    open(path, "wb").write(bytes(data))


def truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])


def unmark(path):
    with h5py.File(path, "r+") as f:
        del f.attrs["complete"]


def overwrite(path):
    with open(path, "wb") as f:
        f.write(b"not a cache at all")


@pytest.mark.parametrize("damage,needle", [(truncate, "truncated or corrupt"), (unmark, "incomplete"),
                                           (tamper_labels, "labels or ids fail"),
                                           (tamper_class_names, "attributes (provenance, class names"),
                                           (tamper_features, "features fail their SHA-256 check"),
                                           (overwrite, "not an HDF5 file")])
def test_damaged_cache_is_refused_then_moved_aside_and_rebuilt(cifar_dir, tmp_path, capsys, damage, needle):
    """A cache damaged or edited after it was written is never used: loading it (train-head) refuses
    it with advice that works, and the same extraction moves it aside (kept) and rebuilds it."""
    args = ("--data-dir", cifar_dir, "--cache-dir", tmp_path / "c", *SMALL)
    path = features(capsys, *args)[1][-1]
    good = load_cache(path)["test"][0].copy()
    damage(path)
    with pytest.raises(DamagedCache) as e:
        load_cache(path)
    advice = NOT_A_CACHE if damage is overwrite else REBUILD        # nothing of the cache left: which file to pass
    assert needle in str(e.value) and advice in str(e.value)
    code, _, err = run_captured(capsys, "train-head", "--cache", path, "--runs-dir", tmp_path / "runs")
    assert is_one_line_error(code, err, needle)
    code, out, err = features(capsys, *args)
    assert code == 0 and out[-1] == path and "cache hit" not in err
    assert f"moved it to {path}.corrupt and rebuilding it" in err and os.path.exists(path + ".corrupt")
    assert np.array_equal(load_cache(path)["test"][0], good)


def test_empty_split_gets_one_line_before_any_backbone_work(tmp_path, capsys, monkeypatch):
    from conftest import write_cifar10
    write_cifar10(str(tmp_path / "d"), test_n=0)
    monkeypatch.setattr("pipeline.features.build.build_backbone", lambda *a, **k: pytest.fail("backbone built"))
    code, out, err = features(capsys, "--data-dir", tmp_path / "d", "--cache-dir", tmp_path / "c", *SMALL)
    assert is_one_line_error(code, err, "the test split holds no images")


def test_file_name_not_utf8_is_refused_before_any_backbone_work(folder_dir, tmp_path, capsys, monkeypatch):
    bad = os.path.join(os.fsencode(folder_dir), b"test", b"cat", b"caf\xe9.png")
    with open(os.path.join(os.fsencode(folder_dir), b"test", b"cat", b"000.png"), "rb") as f, open(bad, "wb") as g:
        g.write(f.read())
    monkeypatch.setattr("pipeline.features.build.build_backbone", lambda *a, **k: pytest.fail("backbone built"))
    code, out, err = features(capsys, "--data-dir", folder_dir, "--cache-dir", tmp_path / "c", *SMALL)
    assert is_one_line_error(code, err, "caf\\xe9.png: the name is not valid UTF-8")
    assert not [f for f in os.listdir(tmp_path / "c") if ".h5" in f] if os.path.isdir(tmp_path / "c") else True


def test_skip_bad_images_is_recorded(folder_dir, tmp_path, capsys):
    open(os.path.join(folder_dir, "test", "dog", "broken.jpg"), "wb").write(b"\xff\xd8\xff\xe0 cut")
    args = ("--data-dir", folder_dir, "--cache-dir", tmp_path / "c", "--splits", "test", *SMALL)
    code, out, err = features(capsys, *args)
    assert code == 1 and "broken.jpg" in err and "on_bad_image skip" in err
    code, out, err = features(capsys, *args, "--on-bad-image", "skip")
    _, _, meta = load_cache(out[-1])["test"]
    assert meta["skipped"][0]["path"] == "test/dog/broken.jpg" and meta["split_sizes"]["test"] == 12
    said = [line for line in err.splitlines() if "left out" in line]                # and it says so
    assert len(said) == 1 and said[0].startswith("test: left out 1 bad image(s) (on_bad_image skip), the first ")
    assert "broken.jpg: " in said[0] and said[0].endswith("the cache's provenance lists them (skipped)")


@pytest.mark.parametrize("args,needle", [
    (["--data-dir", "/nonexistent/cifar"], "no such file or folder"),
    (["--weights-seed", "-1"], "--weights-seed: expected a seed >= 0, got -1"),
    (["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
    (["--ray-actors", "-1", "--engine", "ray"], "--ray-actors: expected N >= 1"),
    (["--image-size", "10000", "--weights", "random"], "--image-size: expected 32..512"),
    (["--max-image-pixels", "0"], "--max-image-pixels: expected a positive number"),
    (["--views", "mirror"], "--views: expected none, or a comma list of flip and shiftN"),
    (["--views", "shift2", "--shift-range", "0.9"], "--shift-range: expected a fraction of the image in (0, 0.5]"),
    (["--views", "shift2", "--views-seed", "-1"], "--views-seed: expected a seed >= 0, got -1"),
    (["--layer", "block5_pool:avg2x2", "--image-size", "32", "--weights", "random"], "its map is 1 x 1"),
    (["--layer", "block5_pool", "--pooling", "sum"], "--pooling: expected one of flatten, avg, max, avg2x2"),
    (["--layer", "fc9"], "--layer: expected a comma list of fc1, fc2, block1_pool"),
    (["--splits", "train,val"], "--splits"),
    (["--limit", "0"], "--limit"),
    (["--weights", "/nope.h5"], "no such file"),
    (["--image-size", "64", "--weights", "imagenet"], "need 224"),
])
def test_bad_options_get_one_line(tmp_path, capsys, args, needle):
    code, out, err = features(capsys, "--cache-dir", tmp_path, *args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and needle in lines[0] and lines[0].startswith("error: ")


def test_a_data_dir_that_is_a_fifo_is_refused_unopened(tmp_path, capsys):
    """Found by trying a FIFO: features and train-head opened it (as a tarball) and waited for ever."""
    os.mkfifo(tmp_path / "data.tar.gz")
    code, out, err = features(capsys, "--cache-dir", tmp_path / "c", "--data-dir", tmp_path / "data.tar.gz")
    assert is_one_line_error(code, err, "data.tar.gz: not a folder or a regular file (a FIFO or device"), err


def test_cache_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, out, err = features(capsys, "--cache-dir", tmp_path / "f", *SMALL)
    assert code == 1 and err.strip() == f"error: --cache-dir: {tmp_path / 'f'}: is a file, not a folder; pass a folder (created if missing)"


def test_a_cache_dir_that_cannot_be_created_is_one_line(capsys, unmakeable):
    code, out, err = features(capsys, "--cache-dir", unmakeable, *SMALL)
    assert code == 1 and err.strip() == (f"error: --cache-dir: {unmakeable}: cannot create it (Permission "
                                         "denied); pass a folder you can write to")
