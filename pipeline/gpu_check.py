"""`python -m pipeline gpu-check` (via `gpu/check.sh`, which first installs what is missing from wheels
carried in gpu/wheels): stage one where a GPU is, in one prepared run of a few minutes.

Measures, on whatever Keras backend and device this process has: stage one end to end (a
real extraction into a cache, random weights: the speed is the weights') at 224 px (fc2, the
notebook) and at 128 px (the README's best layers, block4 quadrants + block5) in float32 and in the
dtype auto picks; the feeding path alone with a null model (bench.feeding_path); and the full
CIFAR-10 extraction (60,000 images, the official python tarball when it is there, else 60,000
synthetic images of the same shape) at the best configuration, with its wall time. Writes
`<out>/gpu-check.json` and `<out>/gpu-check.md` and returns the table.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time

from . import device
from .bench import feed_rows, feeding_path, machine
from .durable import make_folder, write_text
from .errors import SettingError
from .features import FeatureConfig, extract
from .features.synthetic import write_cifar_batches
from .features.precision import resolve_precision
from .keras_env import keras_backend_name

log = logging.getLogger(__name__)

# --- defaults: a GPU run of a few minutes; --quick exercises every part on a CPU in well under a minute --
FULL_DATA = ("../shared/data/cifar10-full-python.tar.gz", "shared/data/cifar10-full-python.tar.gz")
BEST_LAYERS = "block4_pool:avg2x2,block5_pool"     # the README's best configuration, at 128 px
STAGE_ONE_IMAGES = 4096        # images per stage-one row (quick: 64)
GPU_BATCH, CPU_BATCH = 256, 32
# ---------------------------------------------------------------------------------------------------------


def timed_extract(cfg: FeatureConfig) -> dict:
    """Stage one end to end for `cfg` (a fresh cache): images, wall seconds, images/s."""
    from .features.cache import read_provenance
    t = time.perf_counter()
    path = extract(cfg, quiet=True)
    wall = time.perf_counter() - t
    n = sum(read_provenance(path)["split_sizes"].values())
    return {"images": n, "wall_s": round(wall, 2), "img_per_s": round(n / wall, 1)}


def check_settings(out_dir: str, data_dir: str | None, batch_size: int | None, full: bool):
    """Refuse, before minutes of extracting, what the run could not use or write at its end: one line each."""
    if batch_size is not None and batch_size < 1:
        raise SettingError("batch_size", f"expected a positive integer, got {batch_size}", "gpu-check")
    if data_dir is not None and not full:
        raise SettingError("data_dir", "given for the full extraction, which --no-full skips; drop one of them",
                           "gpu-check")
    if data_dir is not None and not os.path.exists(data_dir):
        raise SettingError("data_dir", f"{data_dir}: not found; pass the full CIFAR-10 python tarball "
                           "(cifar-10-python.tar.gz) or its folder", "gpu-check")
    make_folder(out_dir, "out_dir", "gpu-check", will_write=True)


def run(out_dir: str = "data/gpu-check", quick: bool = False, data_dir: str | None = None,
        batch_size: int | None = None, full: bool = True) -> str:
    check_settings(out_dir, data_dir, batch_size, full)
    gpus = device.nvidia_gpus()
    where, warning = device.where(gpus, device.keras_devices(), keras_backend_name())
    if warning:
        log.warning(warning)
    batch = batch_size if batch_size is not None else (GPU_BATCH if "gpu" in where or "cuda" in where else CPU_BATCH)
    n = 32 if quick else STAGE_ONE_IMAGES
    auto = resolve_precision("auto", memo_dir=out_dir)
    r = {"machine": machine(), "gpus": gpus, "device": where, "backend": keras_backend_name(), "batch_size": batch,
         "auto_precision": auto, "stage_one": {}}
    tmp = tempfile.mkdtemp(prefix="pipeline-gpu-check-")
    try:
        data = write_cifar_batches(os.path.join(tmp, "cifar"), n)
        for size, layer in ((224, "fc2"), (128, BEST_LAYERS)):
            for precision in dict.fromkeys(("float32", auto)):
                log.info(f"gpu-check: stage one, {size} px, {layer}, {precision} ...")
                r["stage_one"][f"{size}px_{precision}"] = timed_extract(FeatureConfig(
                    data_dir=data, splits=("train",), weights="random", image_size=size, layer=layer,
                    precision=precision, store_dtype="float16", batch_size=batch,
                    cache_dir=os.path.join(tmp, f"s{size}{precision}")))
        log.info("gpu-check: the feeding path alone ...")
        r["feeding_path"] = feeding_path(1024 if quick else 16384)
        if full:
            full_data = data_dir or next((p for p in FULL_DATA if os.path.exists(p)), None)
            r["full_data"] = full_data or "60,000 synthetic CIFAR-size images (the official tarball is not here)"
            if full_data is None:
                full_data = write_cifar_batches(os.path.join(tmp, "full"), 100 if quick else 50_000,
                                                n_test=20 if quick else 10_000)
            log.info(f"gpu-check: full CIFAR-10 extraction at the best configuration ({r['full_data']}) ...")
            cfg = FeatureConfig(data_dir=full_data, weights="random", image_size=128, layer=BEST_LAYERS,
                                precision=auto, store_dtype="float16", batch_size=batch,
                                cache_dir=os.path.join(tmp, "full-cache"), limit=(100 if quick else None))
            r["full_extraction"] = {**timed_extract(cfg), "layers": BEST_LAYERS, "image_size": 128, "precision": auto}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    md = table(r)
    os.makedirs(out_dir, exist_ok=True)
    write_text(os.path.join(out_dir, "gpu-check.json"), json.dumps(r, indent=1))
    write_text(os.path.join(out_dir, "gpu-check.md"), md)
    log.info(md)
    return os.path.join(out_dir, "gpu-check.json")


def table(r: dict) -> str:
    rows = [(f"stage one end to end, {k.replace('_', ', ')}", f"{v['img_per_s']:,.1f} img/s ({v['images']} images)",
             ">= 3,000 img/s at 224 px on a GPU" if k.startswith("224") else "")
            for k, v in r["stage_one"].items()]
    rows += feed_rows(r["feeding_path"])
    if "full_extraction" in r:
        e = r["full_extraction"]
        rows.append((f"full extraction at the best configuration ({r['full_data']})",
                     f"{e['wall_s']:,.1f} s for {e['images']:,} images ({e['img_per_s']:,.0f} img/s)",
                     "< 120 s on a GPU"))
    head = (f"Device: {r['device']}; machine: {r['machine']}; backend {r['backend']}; batch {r['batch_size']}; "
            f"auto precision {r['auto_precision']}.\n\n")
    return head + "\n".join(["| measure | value | target |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]) + "\n"
