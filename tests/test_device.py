"""The device probe and what `make` installs, on a CPU machine: nvidia-smi simulated."""
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from pipeline import device


def fake_nvidia_smi(folder, lines="GPU 0: NVIDIA H200 (UUID: GPU-1234)\n", code=0):
    path = os.path.join(folder, "nvidia-smi")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nprintf '{lines}'\nexit {code}\n")
    os.chmod(path, 0o755)
    return path


def test_gpus_are_read_from_nvidia_smi(tmp_path):
    assert device.nvidia_gpus(fake_nvidia_smi(tmp_path)) == ["GPU 0: NVIDIA H200"]
    assert device.nvidia_gpus(str(tmp_path / "absent")) == []
    assert device.nvidia_gpus(fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed\n", 9)) == []   # driver not loaded


@pytest.mark.parametrize("backend,gpu,extras", [
    ("tensorflow", False, "dev,ray"), ("tensorflow", True, "dev,ray,cuda"), ("jax", True, "dev,ray,jax-cuda"),
    ("jax", False, "dev,ray"), ("torch", True, "dev,ray,torch"), ("torch", False, "dev,ray,torch")])
def test_make_installs_the_backends_cuda_build_on_a_gpu_host(backend, gpu, extras):
    assert device.install_extras(backend, gpu) == extras
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    assert all(f"\n{e} = [" in text for e in extras.split(","))          # every extra exists in pyproject


def test_the_makefile_asks_the_probe(tmp_path):
    """`make` on a host where nvidia-smi works installs the CUDA build; without one the plain build."""
    fake_nvidia_smi(tmp_path)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    for backend, want in (("tensorflow", "'.[dev,ray,cuda]'"), ("jax", "'.[dev,ray,jax-cuda]'")):
        out = subprocess.run(["make", "-n", "-B", ".venv/.installed", f"BACKEND={backend}", f"PYTHON={sys.executable}"],
                             cwd=ROOT, env=env, capture_output=True, text=True).stdout
        assert want in out, out
    no_gpu = {**os.environ, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["make", "-n", "-B", ".venv/.installed", f"PYTHON={sys.executable}"], cwd=ROOT, env=no_gpu,
                         capture_output=True, text=True).stdout
    assert "'.[dev,ray]'" in out, out


def test_a_gpu_the_backend_cannot_see_is_a_loud_warning():
    said, warning = device.where(["GPU 0: NVIDIA H200"], ["cpu:0"], "tensorflow")
    assert said == "tensorflow on cpu:0" and warning.startswith("WARNING: 1 NVIDIA GPU(s) here (GPU 0: NVIDIA H200)")
    said, warning = device.where(["GPU 0: NVIDIA H200"], ["gpu:0"], "jax")
    assert said == "jax on gpu:0 (GPU 0: NVIDIA H200)" and warning is None
    assert device.where([], ["cpu:0"], "tensorflow") == ("tensorflow on cpu:0", None)


def test_features_says_where_it_runs_and_records_it(cifar_dir, tmp_path, capsys, monkeypatch):
    from conftest import SMALL, run_captured

    from pipeline.features.cache import read_provenance
    monkeypatch.setattr(device, "nvidia_gpus", lambda binary="nvidia-smi": ["GPU 0: NVIDIA H200"])
    code, out, err = run_captured(capsys, "features", "--data-dir", cifar_dir, "--cache-dir", tmp_path, "--splits",
                                  "test", *SMALL)
    assert code == 0 and "features: tensorflow on cpu:0, computing in float32" in err
    assert "WARNING: 1 NVIDIA GPU(s) here" in err and "runs on the CPU" in err
    assert read_provenance(out[-1])["extraction"]["device"] == "tensorflow on cpu:0"


def test_the_devices_of_pytorchs_backend_come_from_pytorch(monkeypatch):
    """Keras' distribution API has no PyTorch implementation (list_devices raised AttributeError on an H200,
    Keras 3.15.1): for that backend PyTorch says which CUDA devices it sees; for another the error stands."""
    import types

    import keras

    def no_distribution():
        raise AttributeError("'NoneType' object has no attribute 'list_devices'")
    monkeypatch.setattr(keras.distribution, "list_devices", no_distribution)
    cuda = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 2)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    assert device.keras_devices() == ["cuda:0", "cuda:1"]
    cuda.is_available = lambda: False
    assert device.keras_devices() == ["cpu:0"]
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(AttributeError):
        device.keras_devices()
