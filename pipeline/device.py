"""Which accelerator this machine has, which one Keras' backend sees, and what `make` installs for it.

Standalone on purpose (standard library only, no package imports): the Makefile runs it with the
system Python before any virtual environment exists, `python pipeline/device.py extras --backend B`,
to choose the pip extras; stage one imports it to say where it runs and to warn when a GPU is present
but the backend cannot see it (the plain `tensorflow` wheel brings no CUDA libraries).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess

BACKENDS = ("tensorflow", "jax", "torch")
BASE_EXTRAS = ("dev", "ray")
GPU_EXTRAS = {"tensorflow": "cuda", "jax": "jax-cuda", "torch": "torch"}   # pyproject's optional dependencies
CPU_EXTRAS = {"tensorflow": None, "jax": None, "torch": "torch"}          # (jax on CPU comes with dev)


def nvidia_gpus(binary: str = "nvidia-smi") -> list:
    """The NVIDIA GPUs `nvidia-smi -L` lists ("GPU 0: NVIDIA H200 (UUID: ...)"), [] without the tool."""
    if shutil.which(binary) is None:
        return []
    try:
        out = subprocess.run([binary, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split(" (UUID")[0] for line in out.stdout.splitlines() if line.startswith("GPU ")] \
        if out.returncode == 0 else []


def gpu_capability(binary: str = "nvidia-smi") -> float | None:
    """The first GPU's CUDA compute capability (e.g. 9.0), or None when the tool does not say."""
    if shutil.which(binary) is None:
        return None
    try:
        out = subprocess.run([binary, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return float(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.split() else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def install_extras(backend: str, gpu: bool) -> str:
    """The pip extras `make` installs: the project's own, plus the backend's CUDA build on a GPU host."""
    if backend not in BACKENDS:
        raise ValueError(f"BACKEND: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    extra = (GPU_EXTRAS if gpu else CPU_EXTRAS)[backend]
    return ",".join(BASE_EXTRAS + ((extra,) if extra else ()))


def keras_devices() -> list:
    """The devices Keras' backend will compute on, e.g. ['cpu:0'] or ['gpu:0', 'gpu:1'] (imports Keras).
    Keras' distribution API has no PyTorch implementation (`list_devices` fails there: seen on an H200
    with Keras 3.15.1), so for that backend PyTorch says which CUDA devices it sees."""
    import keras
    try:
        return [str(d).lower() for d in keras.distribution.list_devices()]
    except (AttributeError, NotImplementedError):
        if keras.backend.backend() != "torch":
            raise
        import torch
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu:0"]


def where(gpus: list, devices: list, backend: str) -> tuple[str, str | None]:
    """(what stage one runs on, a loud warning or None): a GPU on the machine that the backend does not
    see means a silent fall-back to the CPU, tens of times slower."""
    on_gpu = [d for d in devices if d.startswith(("gpu", "cuda"))]
    said = f"{backend} on {', '.join(devices) or 'cpu'}" + (f" ({'; '.join(gpus)})" if on_gpu and gpus else "")
    if gpus and not on_gpu:
        return said, (f"WARNING: {len(gpus)} NVIDIA GPU(s) here ({gpus[0]}) but Keras' {backend} backend sees only "
                      f"{', '.join(devices) or 'the CPU'}: stage one runs on the CPU. Install the CUDA build (make "
                      f"clean && make, which picks it when nvidia-smi works; BACKEND=jax or torch for another backend)")
    return said, None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("extras", "gpus"))
    parser.add_argument("--backend", default="tensorflow")
    args = parser.parse_args()
    gpus = nvidia_gpus()
    print(install_extras(args.backend, bool(gpus)) if args.what == "extras" else "\n".join(gpus))
