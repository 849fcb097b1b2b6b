"""Tiny datasets the tests write themselves: official CIFAR batch layout, tarballs, image folders."""
import os
import pickle
import json
import sys
import zipfile
import tarfile

import cv2
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root, per_batch=6, test_n=6, seed=0, labels=None):
    """cifar-10-batches-py with 5 train batches, a test batch and batches.meta (protocol 2, as upstream)."""
    rng = np.random.default_rng(seed)
    d = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(d, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        n = test_n if name == "test_batch" else per_batch
        y = list(labels) if labels is not None else [int(v) for v in (np.arange(n) + i) % 10]
        batch = {b"batch_label": name.encode(), b"labels": y,
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)]}
        with open(os.path.join(d, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(os.path.join(d, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}, f, protocol=2)
    return d


def write_image_folders(root, per_class=4, classes=("cat", "dog", "frog"), seed=0):
    """ROOT/{train,test}/CLASS/ with RGB PNG, grayscale PNG, RGBA PNG, odd-size JPEG and BMP."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in classes:
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            for j in range(per_class):
                kind = j % 4
                if kind == 0:
                    cv2.imwrite(os.path.join(d, f"{j:03d}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                elif kind == 1:
                    cv2.imwrite(os.path.join(d, f"{j:03d}.png"), rng.integers(0, 256, (32, 32), dtype=np.uint8))
                elif kind == 2:
                    cv2.imwrite(os.path.join(d, f"{j:03d}.png"), rng.integers(0, 256, (20, 28, 4), dtype=np.uint8))
                else:
                    cv2.imwrite(os.path.join(d, f"{j:03d}.jpg"), rng.integers(0, 256, (45, 37, 3), dtype=np.uint8))
    return root


def make_tar(src, out, arcname):
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return out


def pytest_addoption(parser):
    parser.addoption("--cpu-bf16", choices=("host", "yes", "no"), default="host",
                     help="simulate a CPU with (yes) or without (no) native bfloat16 for --precision auto; "
                          "the suite must pass either way")


@pytest.fixture(scope="session", autouse=True)
def simulated_cpu(request, tmp_path_factory):
    """With --cpu-bf16 yes|no, precision detection reads a /proc/cpuinfo of that CPU instead of this machine's."""
    choice = request.config.getoption("--cpu-bf16")
    if choice == "host":
        yield
        return
    from pipeline.features import precision
    fake = tmp_path_factory.mktemp("cpu") / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f" + (" avx512_bf16\n" if choice == "yes" else "\n"))
    real, precision.CPUINFO = precision.CPUINFO, str(fake)
    try:
        yield
    finally:
        precision.CPUINFO = real


@pytest.fixture(scope="session", autouse=True)
def terminal_logging():
    """The library's records on stderr as the program shows them (cli.configure_logging), whatever the order."""
    from pipeline.cli import configure_logging
    configure_logging()


@pytest.fixture(autouse=True)
def measured_precision(monkeypatch):
    """auto's probe answers without timing anything (as on a CPU where bfloat16 is the faster), so no
    test depends on the speed of the machine it runs on; test_precision.py measures for real."""
    from pipeline.features import precision
    monkeypatch.setattr(precision, "measure", lambda dtypes: {"float32": 1.0, "bfloat16": 2.0, "float16": 1.5})


@pytest.fixture
def cifar_dir(tmp_path):
    write_cifar10(str(tmp_path / "data"))
    return str(tmp_path / "data")


@pytest.fixture
def folder_dir(tmp_path):
    return write_image_folders(str(tmp_path / "imgs"))


def run_cli(*args):
    """Run `python -m pipeline` in this process; (exit code)."""
    from pipeline.cli import main
    return main([str(a) for a in args])


def run_captured(capsys, command, *args):
    """Run one subcommand in this process: (exit code, stdout lines, stderr text)."""
    code = run_cli(command, *args)
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err


def rewrite_zip(path, change, compression=zipfile.ZIP_STORED):
    """Craft a .keras file: read its members into a dict, let `change` edit it in place, write them back."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    change(members)
    with zipfile.ZipFile(path, "w", compression) as z:
        for n, b in members.items():
            z.writestr(n, b)


def vouch(run):
    """Craft a whole run folder: its metrics.json records the digests of the files it holds now, as
    whoever crafts a folder's files can record them (the check is against changes, not a signature)."""
    from pipeline.heads.run_files import FILE_SHA256, file_digests
    path = os.path.join(run, "metrics.json")
    m = json.load(open(path))
    m[FILE_SHA256] = file_digests(str(run), list(m[FILE_SHA256]))
    json.dump(m, open(path, "w"))


def set_layer_class(members, i, name):
    """In a .keras file's members: make layer i of its config ask for class `name`."""
    cfg = json.loads(members["config.json"])
    cfg["config"]["layers"][i]["class_name"] = name
    members["config.json"] = json.dumps(cfg).encode()


def is_one_line_error(code, err: str, needle: str) -> bool:
    """What a user's mistake must look like: exit status 1, one line on stderr, saying `needle`, no traceback."""
    lines = err.strip().splitlines()
    return code == 1 and len(lines) == 1 and needle in lines[0] and lines[0].startswith("error: ")


SMALL = ["--weights", "random", "--image-size", "32", "--precision", "float32", "--quiet"]  # fast VGG19 settings
PY = sys.executable


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """A small synthetic feature cache (600 train, 200 test, 32-d, 4 separable classes)."""
    from pipeline.features.synthetic import write_synthetic_cache
    return write_synthetic_cache(str(tmp_path_factory.mktemp("c") / "syn.h5"), 600, 200, dim=32, n_classes=4,
                                 separation=0.8)


@pytest.fixture(scope="module")
def syn_views(tmp_path_factory):
    """A small synthetic cache with 3 views per image (400 train, 100 test, 16-d float16, 4 classes)."""
    from pipeline.features.synthetic import write_synthetic_cache
    return write_synthetic_cache(str(tmp_path_factory.mktemp("v") / "v.h5"), 400, 100, dim=16, n_classes=4,
                                 separation=1.5, views=3, dtype="float16")


@pytest.fixture(scope="module")
def easy():
    """600 train and 300 validation rows of 32 separable features, 5 classes (in memory)."""
    from pipeline.features.synthetic import make_features
    X, y = make_features(900, 32, 5, seed=0, separation=0.8)
    return X[:600], y[:600], X[600:], y[600:]


@pytest.fixture
def unmakeable(monkeypatch, tmp_path):
    """A folder path under which os.makedirs fails as on a read-only or special file system (the tests
    may run as root, whom permissions do not stop); anything else is made as usual."""
    locked, real = tmp_path / "locked", os.makedirs

    def refuse(path, *a, **kw):
        if str(path).startswith(str(locked)):
            raise PermissionError(13, "Permission denied", path)
        return real(path, *a, **kw)
    monkeypatch.setattr(os, "makedirs", refuse)
    return locked
