"""`python -m pipeline gpu-check` (via `gpu/check.sh`, which first installs what is missing from wheels
carried in gpu/wheels): stage one where a GPU is, in one prepared run of a few minutes.

Measures, on whatever Keras backend and device this process has: stage one end to end (a
real extraction into a cache, random weights: the speed is the weights') at 224 px (fc2, the
notebook) and at 128 px (the README's best layers, block4 quadrants and max + block5) in float32 and
in the dtype auto picks, each cold (a first run: building and compiling the model) and warm (the same
model again); the feeding path alone with a null model (bench.feeding_path); and the full CIFAR-10
extraction (60,000 images, the official python tarball when it is there, else 60,000 synthetic images
of the same shape) at the best configuration (six views), with its wall time. Writes
`<out>/gpu-check.json` and `<out>/gpu-check.md` after each part (a run cut short keeps what it
measured) and returns the path of the JSON.
"""
from __future__ import annotations

import dataclasses
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
from .features.config import validate
from .features.synthetic import write_cifar_batches
from .features.precision import requested_as, resolve_precision
from .keras_env import keras_backend_name

log = logging.getLogger(__name__)

# --- defaults: a GPU run of a few minutes; --quick exercises every part on a CPU in well under a minute --
FULL_DATA = ("../shared/data/cifar10-full-python.tar.gz", "shared/data/cifar10-full-python.tar.gz")
BEST_LAYERS = "block4_pool:avg2x2,block4_pool:max,block5_pool"   # the README's best configuration: at 128 px,
BEST_VIEWS = "flip,shift4"                                       # six views (the original, its mirror, 4 shifts)
STAGE_ONE_IMAGES = {"gpu": 16384, "cpu": 4096, "quick": 32}     # images per stage-one row, each run twice
GPU_BATCH, CPU_BATCH = 256, 32
# ---------------------------------------------------------------------------------------------------------


def timed_extract(cfg: FeatureConfig, models=None) -> dict:
    """Stage one end to end for `cfg` (a fresh cache): images, wall seconds, images/s, and the seconds the
    model took (the rest is start-up, and waiting for input or for the writer). `models`: a BuiltBackbone
    to reuse (built and compiled by an earlier call: the warm rate)."""
    from .features.cache import read_provenance
    t = time.perf_counter()
    path = extract(cfg, quiet=True, models=models)
    wall = time.perf_counter() - t
    prov = read_provenance(path)
    n = sum(prov["split_sizes"].values())
    return {"images": n, "wall_s": round(wall, 2), "img_per_s": round(n / wall, 1),
            "model_s": prov.get("extraction", {}).get("model_s")}


def cold_and_warm(cfg: FeatureConfig) -> dict:
    """`cfg` extracted twice into fresh caches in one process: cold (the model built and compiled, as a
    user's first run) and warm (the same model again: the rate a long extraction runs at)."""
    from .features.build import BuiltBackbone
    models = BuiltBackbone()
    cold = timed_extract(cfg, models)
    warm = timed_extract(dataclasses.replace(cfg, cache_dir=cfg.cache_dir + "-warm"), models)
    return {**cold, "warm_wall_s": warm["wall_s"], "warm_img_per_s": warm["img_per_s"], "warm_model_s": warm["model_s"]}


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
    os.makedirs(out_dir, exist_ok=True)
    gpus = device.nvidia_gpus()
    where, warning = device.where(gpus, device.keras_devices(), keras_backend_name())
    if warning:
        log.warning(warning)
    on_gpu = "gpu" in where or "cuda" in where
    batch = batch_size if batch_size is not None else (GPU_BATCH if on_gpu else CPU_BATCH)
    n = STAGE_ONE_IMAGES["quick" if quick else "gpu" if on_gpu else "cpu"]
    auto = resolve_precision("auto", memo_dir=out_dir)
    r = {"machine": machine(), "gpus": gpus, "device": where, "backend": keras_backend_name(), "batch_size": batch,
         "auto_precision": auto, "stage_one": {}}
    tmp = tempfile.mkdtemp(prefix="pipeline-gpu-check-")
    try:
        data = write_cifar_batches(os.path.join(tmp, "cifar"), n)
        for size, layer in ((224, "fc2"), (128, BEST_LAYERS)):
            for precision in dict.fromkeys((resolve_precision("float32"), auto)):      # as they compute here
                log.info(f"gpu-check: stage one, {size} px, {layer}, {precision}, cold and warm ...")
                r["stage_one"][f"{size}px_{precision}"] = cold_and_warm(FeatureConfig(
                    data_dir=data, splits=("train",), weights="random", image_size=size, layer=layer,
                    precision=requested_as(precision), store_dtype="float16", batch_size=batch,
                    cache_dir=os.path.join(tmp, f"s{size}{precision}")))
                save(r, out_dir)                      # each part as it finishes: a run cut short keeps them
        log.info("gpu-check: the feeding path alone ...")
        r["feeding_path"] = feeding_path(1024 if quick else 16384)
        save(r, out_dir)
        if full:
            full_data = data_dir or next((p for p in FULL_DATA if os.path.exists(p)), None)
            r["full_data"] = full_data or "60,000 synthetic CIFAR-size images (the official tarball is not here)"
            if full_data is None:
                full_data = write_cifar_batches(os.path.join(tmp, "full"), 100 if quick else 50_000,
                                                n_test=20 if quick else 10_000)
            log.info(f"gpu-check: full CIFAR-10 extraction at the best configuration ({r['full_data']}) ...")
            cfg = FeatureConfig(data_dir=full_data, weights="random", image_size=128, layer=BEST_LAYERS,
                                views=BEST_VIEWS, precision=requested_as(auto), store_dtype="float16", batch_size=batch,
                                cache_dir=os.path.join(tmp, "full-cache"), limit=(100 if quick else None))
            r["full_extraction"] = {**timed_extract(cfg), "layers": BEST_LAYERS, "views": BEST_VIEWS,
                                    "views_per_image": len(validate(cfg).view_names), "image_size": 128,
                                    "precision": auto}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(save(r, out_dir))
    return os.path.join(out_dir, "gpu-check.json")


def save(r: dict, out_dir: str) -> str:
    """Write what `r` holds so far as gpu-check.json and .md; the table."""
    md = table(r)
    write_text(os.path.join(out_dir, "gpu-check.json"), json.dumps(r, indent=1))
    write_text(os.path.join(out_dir, "gpu-check.md"), md)
    return md


def table(r: dict) -> str:
    rows = [(f"stage one end to end, {k.replace('_', ', ')}: cold (a first run, compiling) / warm (the same model "
             f"again; its model seconds)", f"{v['img_per_s']:,.1f} / {v['warm_img_per_s']:,.1f} img/s ({v['images']:,} "
             f"images; {v['warm_model_s']} s of {v['warm_wall_s']} s)",
             ">= 3,000 img/s at 224 px on a GPU" if k.startswith("224") else "")
            for k, v in r["stage_one"].items()]
    rows += feed_rows(r.get("feeding_path"))
    if "full_extraction" in r:
        e = r["full_extraction"]
        rows.append((f"full extraction at the best configuration ({e['image_size']} px, {e['layers']}, views "
                     f"{e['views']}, {e['precision']}; {r['full_data']})",
                     f"{e['wall_s']:,.1f} s for {e['images']:,} images x {e['views_per_image']} views ({e['img_per_s']:,.0f} "
                     f"images/s; model {e['model_s']} s)", "< 120 s on a GPU"))
    head = (f"Device: {r['device']}; machine: {r['machine']}; backend {r['backend']}; batch {r['batch_size']}; "
            f"auto precision {r['auto_precision']}.\n\n")
    return head + "\n".join(["| measure | value | target |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]) + "\n"
