"""Which dtype the backbone computes in (`--precision auto`).

auto = the fastest of the dtypes this device runs natively, by measurement, because a flag or a
capability does not tell which is faster. The candidates: on a CUDA GPU float32 and float16, and
bfloat16 from compute capability 8.0 (Ampere) on; on a CPU float32, and bfloat16 when its flags say
native bf16 (AVX512-BF16 or AMX; without them bfloat16 is emulated, ~0.2x float32, and float32 is
chosen without measuring): bfloat16 is ~2x float32 on an AMD EPYC with AVX512-BF16 and ~0.6x on an
Intel Xeon with AVX512-BF16 but no AMX. The probe runs
VGG19-shaped convolutions (two 3x3, 512-channel layers on a 28x28 map, block4's shape at 224 px) in
each dtype for about a second, once per machine: its answer is remembered by CPU model, flags, core
count, backend and versions, and by the environment variables that choose the backend's CPU kernels, in
`<cache-dir>/precision-probe.json`, and said once on the terminal. A dtype the backend cannot run here (oneDNN
held to AVX2 has no bfloat16 convolutions) measures 0 and is not chosen.
"""
from __future__ import annotations

import datetime
import functools
import importlib.metadata
import logging
import os
import time

import numpy as np

from ..durable import read_json, write_json
from ..errors import backend_reason
from ..hashing import tag
from ..device import gpu_capability
from ..keras_env import keras_backend_name

log = logging.getLogger(__name__)

CPUINFO = "/proc/cpuinfo"      # where auto reads this CPU's flags and model
MEMO = "precision-probe.json"
PROBE_SECONDS = 0.5            # timed per dtype, after a warm-up
GPU_PROBE_BATCH = 64           # images a probe call on a GPU (a CPU's 8 would leave most of it idle)
NATIVE_BF16 = {"avx512_bf16", "amx_bf16"}
TF32_FROM = 8.0                # CUDA compute capability from which float32 computes as TensorFloat-32
TF32 = "tensorfloat32"         # float32 asked where it computes so (computes_as)
COMPUTED = ("float32", TF32, "bfloat16", "float16")     # every value a resolved precision can take
KERNEL_ENV = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE",
              "XLA_FLAGS", "ATEN_CPU_CAPABILITY")   # choose the CPU kernels (TensorFlow's oneDNN and the
                               # instructions it may use, XLA's, PyTorch's), so which dtype is faster: on an AMD EPYC
                               # (Zen 4) the probe's bfloat16 is 1.9x float32, 1.0x with TF_ENABLE_ONEDNN_OPTS=0,
                               # 0.35x with ONEDNN_MAX_CPU_ISA=AVX512_CORE
measure = None                 # a function (dtypes) -> {dtype: rate} to use instead of the probe (tests)


def cuda_capability() -> float | None:
    """This machine's CUDA GPU compute capability (e.g. 9.0 for an H200), or None without a visible one."""
    if not (os.path.isdir("/proc/driver/nvidia/gpus") and os.listdir("/proc/driver/nvidia/gpus")) \
            or os.environ.get("CUDA_VISIBLE_DEVICES", "x") in ("", "-1"):
        return None
    return _capability_said()


@functools.cache
def _capability_said() -> float:
    """nvidia-smi's answer, asked once per process (every plan resolves its precision, cache hits too)."""
    return gpu_capability() or 7.0         # a GPU whose capability the tool does not say: float16 only


def cpuinfo_field(name: str, cpuinfo: str | None = None) -> str:
    """The first CPU's `name` field in /proc/cpuinfo (the key exactly: "model" is not "model name"), or ""."""
    try:
        with open(cpuinfo or CPUINFO) as f:
            return next((value.strip() for key, _, value in (line.partition(":") for line in f) if key.strip() == name), "")
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> set:
    return set(cpuinfo_field("flags", cpuinfo).split())


def machine(flags: set) -> dict:
    """What the probe's answer depends on: this CPU, its flags, the cores, the backend and versions, and the
    KERNEL_ENV variables that are set (none set: the key it had before they were part of it)."""
    versions = {}
    for pkg in ("keras", "tensorflow", "jax", "torch"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    env = {name: os.environ[name] for name in KERNEL_ENV if name in os.environ}
    return {"cpu": cpuinfo_field("model name"), "flags": tag(sorted(flags), 16), "cores": os.cpu_count(),
            "backend": keras_backend_name(), "versions": versions, **({"kernel_env": env} if env else {})}


def candidates(cuda: float | None, flags: set) -> tuple:
    """The dtypes worth measuring on this device (above): cuda is the GPU's compute capability or None."""
    if cuda:
        return ("float32", "float16") + (("bfloat16",) if cuda >= 8.0 else ())
    return ("float32", "bfloat16") if NATIVE_BF16 & flags else ("float32",)


def resolve_precision(precision: str, cuda: float | None | bool = None, flags: set | None = None,
                      memo_dir: str | None = None) -> str:
    """The dtype `precision` means here: itself, or for auto the fastest this machine runs (above).
    `cuda` (the GPU's compute capability; False: none) and `flags` default to this machine's; memo_dir
    keeps the probe's answer."""
    cuda = cuda_capability() if cuda is None else (7.0 if cuda is True else cuda or None)
    if precision != "auto":
        return computes_as(precision, cuda)
    flags = cpu_flags() if flags is None else flags
    dtypes = candidates(cuda, flags)
    if len(dtypes) == 1:
        return computes_as(dtypes[0], cuda)
    rates = probe_rates(dtypes, flags, memo_dir, cuda)
    return computes_as(max(dtypes, key=lambda d: rates[d]), cuda)


def computes_as(dtype: str, cuda: float | None) -> str:
    """What `dtype` computes as on this device: float32 on a CUDA GPU from compute capability 8.0 (Ampere)
    is TensorFloat-32 under every backend's defaults (TensorFlow's, JAX's, PyTorch's cuDNN convolutions),
    its products rounded to 10-bit mantissas: features 6e-4 apart from a CPU's float32 (an H200, JAX). So
    it is `tensorfloat32` in the key and the provenance, and such a cache is never taken for float32's."""
    return TF32 if dtype == "float32" and cuda and cuda >= TF32_FROM else dtype


def requested_as(dtype: str) -> str:
    """The --precision value that resolves to `dtype` (a resolved one) without probing: tensorfloat32 is
    float32 asked on a device that computes it so."""
    return "float32" if dtype == TF32 else dtype


def probe_rates(dtypes: tuple, flags: set, memo_dir: str | None, cuda: float | None = None) -> dict:
    """{dtype: rate} on this device: remembered, or measured now (and remembered)."""
    ident = {**machine(flags), **({"cuda_capability": cuda} if cuda else {})}
    key = tag(ident, 16)
    path = os.path.join(memo_dir, MEMO) if memo_dir else None
    memo = {}
    if path:
        memo = read_json(path) or {}
        entry = memo.get(key)
        rates = entry.get("rates") if isinstance(entry, dict) else None
        if isinstance(rates, dict) and set(dtypes) <= set(rates) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in rates.values()) \
                and max(rates.values()) > 0:
            return rates
    rates = measure(dtypes) if measure else measure_rates(dtypes, batch=GPU_PROBE_BATCH if cuda else 8)
    choice = max(dtypes, key=lambda d: rates[d])
    said = ", ".join(f"{computes_as(d, cuda)} {rates[d]:.1f}" for d in dtypes if rates[d])   # each as it computes here
    failed = "".join(f"; {computes_as(d, cuda)} cannot run here" for d in dtypes if not rates[d])
    log.info(f"precision auto: {computes_as(choice, cuda)} on this {'GPU' if cuda else 'CPU'} (probe: {said} images/s "
             f"of VGG19 block4{failed}; measured once, remembered in {path or 'no file'})")
    if path:
        os.makedirs(memo_dir, exist_ok=True)
        write_json(path, {**memo, key: {"machine": ident, "rates": rates, "choice": choice,
                                        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat()}})
    return rates


def policy_name(dtype: str) -> str:
    """The Keras dtype policy that computes in `dtype` and keeps float32 variables (tensorfloat32: float32's,
    on a device that runs it so)."""
    return "float32" if requested_as(dtype) == "float32" else f"mixed_{dtype}"


def probe_model(keras, dtype: str):
    """The probe's layers, computing in `dtype` (see measure_rates)."""
    policy = policy_name(dtype)
    return keras.Sequential([keras.Input((28, 28, 8)),
                             keras.layers.Conv2D(512, 1, activation="relu", dtype=policy),
                             keras.layers.Conv2D(512, 3, padding="same", activation="relu", dtype=policy),
                             keras.layers.Conv2D(512, 3, padding="same", activation="relu", dtype=policy),
                             keras.layers.GlobalMaxPooling2D(dtype=policy)])


def measure_rates(dtypes=("float32", "bfloat16"), seconds: float = PROBE_SECONDS, batch: int = 8) -> dict:
    """Images/s of two VGG19 block4-shaped 3x3 convolutions (28 x 28 x 512) in each of `dtypes`, each dtype
    local to its own layers (no global policy). Like stage one, little crosses to the device and back (8
    channels in, widened by a 1x1 convolution; 512 pooled values out), so on a GPU the probe times the
    convolutions rather than the copies; `batch` images a call (a GPU wants more than a CPU's 8). A dtype other
    than float32 that the backend fails to run here measures 0."""
    import keras
    x = np.random.default_rng(0).random((batch, 28, 28, 8), dtype=np.float32)
    rates = {}
    for dtype in dtypes:
        model = probe_model(keras, dtype)
        try:
            model.predict_on_batch(x)                    # build and trace outside the timing
        except Exception as e:  # noqa: BLE001 - each backend raises its own types for a kernel it lacks
            if dtype == "float32":
                raise
            log.debug(f"precision probe: {dtype} failed here: {backend_reason(e, 200)}")
            rates[dtype] = 0.0
            continue
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds or n < 2:
            np.asarray(model.predict_on_batch(x))        # on the host: the device's work is finished
            n += 1
        rates[dtype] = n * len(x) / (time.perf_counter() - t)
    return rates
